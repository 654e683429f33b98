"""Where sltrain_ext deliberately differs from the original SLTrain code
(README, "Where we differ from the original code"): each decision pinned by
a test, so a change to it is a change on purpose."""

from __future__ import annotations

import pytest
import torch

import sltrain_ext as sl
from sltrain_ext import configs, train
from sltrain_ext.llama import LlamaForCausalLM
from sltrain_ext.schedule import LearningRateSchedule


@pytest.mark.parametrize("name,extra", [("60m", 0), ("130m", 84), ("350m", 72), ("1b", 72)])
def test_the_support_size_rounds_where_the_original_truncates(name, extra):
    # DESIGN.md's nnz = round(density * m * n); the original code takes int():
    # a few more trainable values per model, the same to the 0.1 M.
    config = configs.load(name)
    truncated = sum(count * int(config.density * m * n) for (m, n), count in config.linear_shapes().items())
    ours = sum(count * sl.nnz_for_density(m, n, config.density) for (m, n), count in config.linear_shapes().items())
    assert ours - truncated == extra


def test_warm_up_starts_at_one_steps_worth_not_at_zero():
    # The original's first step has lr 0 (a step that trains nothing).
    schedule = LearningRateSchedule.fresh(steps=100, warmup_fraction=0.1, floor=0.1)
    assert schedule(0) == pytest.approx(1 / 10)
    assert schedule(9) == pytest.approx(1.0)


def test_gradients_are_clipped_at_1_by_default_and_0_turns_clipping_off():
    # The original's 60M-1B scripts do not clip; --max-grad-norm 0 does as they do.
    assert train.parse_args([]).max_grad_norm == 1.0
    assert train.parse_args(["--max-grad-norm", "0"]).max_grad_norm == 0.0


def test_no_embedding_row_is_frozen():
    # The original's pad_token_id = -1 makes row vocab - 1 a padding index that
    # never trains; our tokenizers have no padding token there.
    model = LlamaForCausalLM(configs.load("9m"))
    assert model.model.embed_tokens.padding_idx is None


def test_bf16_parameters_keep_float32_moments():
    # torch.optim.AdamW keeps moments in the parameter's dtype (bf16).
    param = torch.nn.Parameter(torch.randn(64, dtype=torch.bfloat16))
    optimizer = sl.SLAdamW([param], lr=1e-3)
    param.grad = torch.randn(64, dtype=torch.bfloat16)
    optimizer.step()
    assert optimizer.state[param]["exp_avg"].dtype == torch.float32
    assert optimizer.state[param]["exp_avg_sq"].dtype == torch.float32
