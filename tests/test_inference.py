"""The inference path of SLLinear: one C++ op per layer call without grad
(sl_matmul_inference), the one-pass CPU decode kernel and the 16-bit columns
SLLinear keeps, all equal to the training path's forward."""

from __future__ import annotations

import copy
import dataclasses
import os
import pickle
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import sltrain_ext as sl
from helpers import DTYPES, assert_close, make_problem, reference_weight
from sltrain_ext.ops import sl_matmul_inference


class OpRecorder(TorchDispatchMode):
    """The ops a block dispatches, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def training_forward(p, x: torch.Tensor) -> torch.Tensor:
    """sl_matmul with grad on, as training calls it."""
    with torch.enable_grad():
        return sl.sl_matmul(x.requires_grad_(), *p.operands(), p.bias).detach()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens", [1, 2, 3, 4, 8, 16, 32, 33])
@pytest.mark.parametrize("path", ["factored", "materialized"])
@pytest.mark.parametrize("columns", [torch.int32, torch.uint16])
def test_inference_op_equals_the_training_forward(dtype, tokens, path, columns):
    # 1, 2, 4, 8 and 16 tokens run unrolled kernels, 3 and 32 the runtime-b one; 33 is
    # past the decode kernel's 32 and goes through sl_matmul's own code.
    p = make_problem(48, 40, 6, 300, dtype=dtype, seed=tokens, columns=columns)
    x = torch.randn(tokens, 40, dtype=torch.float64).to(dtype)
    with sl.matmul_config(path):
        expected = training_forward(p, x.clone())
        with torch.no_grad():
            actual = sl_matmul_inference(x, *p.operands(), p.bias)
    assert_close(actual, expected.double(), dtype)


def test_without_bias_and_with_leading_dimensions():
    p = make_problem(20, 24, 3, 90, bias=False, columns=torch.uint16)
    x = torch.randn(2, 3, 24)
    with sl.matmul_config("factored"):
        expected = training_forward(p, x.clone())
        actual = sl_matmul_inference(x, *p.operands(), None)
    assert actual.shape == (2, 3, 20)
    assert_close(actual, expected.double(), torch.float32)


def test_sllinear_without_grad_dispatches_one_op_and_keeps_the_training_path_with_grad():
    torch.manual_seed(0)
    layer = sl.SLLinear(32, 24, rank=4, density=0.1).eval()
    torch.nn.init.normal_(layer.B)
    x = torch.randn(1, 32)
    for no_grad in (torch.no_grad, torch.inference_mode):
        with no_grad(), OpRecorder() as recorder:
            y = layer(x)
        assert recorder.names == ["sltrain.sl_matmul_inference.default"]
        assert y.grad_fn is None
    with OpRecorder() as recorder:
        y_train = layer(x)
    assert recorder.names == ["sltrain.sl_matmul.default"] and y_train.requires_grad
    assert_close(y, y_train.detach().double(), torch.float32)


def test_a_layer_keeps_16_bit_columns_up_to_65536_inputs_and_loads_int32_ones():
    torch.manual_seed(0)
    layer = sl.SLLinear(40, 30, rank=4, density=0.2)
    torch.nn.init.normal_(layer.B)
    assert layer.row_ptr.dtype == torch.int32 and layer.col_idx.dtype == torch.uint16
    row_ptr, col_idx = sl.random_support(30, 40, layer.nnz, layer.seed)
    assert torch.equal(layer.row_ptr, row_ptr) and torch.equal(layer.col_idx.int(), col_idx)
    assert layer.state_dict()["col_idx"].dtype == torch.uint16

    # A state with int32 columns (saved before layers kept 16-bit ones) loads:
    # validated, then narrowed into the layer's buffer; the output is the
    # saved layer's, with grad and without.
    other = sl.SLLinear(40, 30, rank=4, density=0.2, seed=layer.seed + 1)
    torch.nn.init.normal_(other.B)
    state = {**other.state_dict(), "col_idx": other.col_idx.int()}
    layer.load_state_dict(state)
    assert layer.col_idx.dtype == torch.uint16 and torch.equal(layer.col_idx, other.col_idx)
    x = torch.randn(2, 40)
    with sl.matmul_config("factored"):
        expected = other(x).detach()
        assert torch.equal(layer(x).detach(), expected)
        with torch.no_grad():
            assert_close(layer(x), expected.double(), torch.float32)
    broken = {**state, "col_idx": state["col_idx"].clone()}
    broken["col_idx"][0] = 40
    with pytest.raises(ValueError, match="invalid support in state_dict"):
        layer.load_state_dict(broken)


def test_layers_wider_than_16_bit_columns_keep_int32_ones():
    layer = sl.SLLinear(sl.nn.COMPACT_INDEX_LIMIT + 1, 2, rank=1, density=1e-4)
    assert layer.col_idx.dtype == torch.int32
    x = torch.randn(1, layer.in_features)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), x @ layer.dense_weight().T + layer.bias)


def test_16_bit_columns_pickle_and_copy():
    # Plain pickle cannot rebuild a uint16 tensor (torch's unpickler): the
    # layer pickles its columns as int32 and narrows them back.
    layer = sl.SLLinear(24, 16, rank=2, density=0.3)
    for copied in (pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer)):
        assert copied.col_idx.dtype == torch.uint16 and torch.equal(copied.col_idx, layer.col_idx)
        assert not hasattr(copied, "_pickled_wide_columns")
    assert layer.col_idx.dtype == torch.uint16


def test_a_layer_built_under_inference_mode_runs_there():
    # Its buffers are inference tensors, which have no version counter.
    with torch.inference_mode():
        layer = sl.SLLinear(16, 8, rank=2, density=0.5).eval()
        x = torch.randn(3, 16)
        y = layer(x)
    torch.testing.assert_close(y, x @ layer.dense_weight().T + layer.bias)


@pytest.mark.parametrize("op", ["sl_matmul", "sl_matmul_inference", "sl_matmul_backward", "densify"])
def test_bad_columns_name_the_argument(op):
    def call(p, x):
        if op == "densify":
            return sl.densify(*p.operands())
        if op == "sl_matmul_backward":
            return sl.sl_matmul_backward(torch.randn(x.shape[0], p.m), x, *p.operands())
        return getattr(sl.ops, op)(x, *p.operands(), p.bias)

    p = make_problem(8, 10, 2, 20, columns=torch.uint16)
    x = torch.randn(1, 10)
    with pytest.raises(TypeError, match=f"{op}: `col_idx` must be int32 or uint16, got Long"):
        call(dataclasses.replace(p, col_idx=p.col_idx.long()), x)
    with pytest.raises(ValueError, match=f"{op}: `col_idx` must be 1-D with nnz = values.numel\\(\\) = 20"):
        call(dataclasses.replace(p, col_idx=p.col_idx[:5]), x)
    outside = p.col_idx.clone()
    outside[3] = 10
    with sl.matmul_config("factored"), pytest.raises(ValueError, match="`col_idx` has entries outside"):
        call(dataclasses.replace(p, col_idx=outside), x)
    wide = make_problem(2, sl.nn.COMPACT_INDEX_LIMIT + 1, 1, 4, columns=torch.uint16)
    with pytest.raises(ValueError, match=f"{op}: uint16 `col_idx` holds columns below 65536, but n = 65537"):
        call(wide, torch.randn(1, wide.n))


def decode_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(sl.SLLinear(64, 128, rank=8, density=0.1), torch.nn.GELU(),
                                sl.SLLinear(128, 64, rank=8, density=0.1))
    for layer in (model[0], model[2]):
        torch.nn.init.normal_(layer.B)
    return model.eval()


def test_compiled_reduce_overhead_decode_step_equals_eager():
    model = decode_model()
    step = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    with torch.no_grad(), sl.matmul_config("factored"):
        for tokens in (1, 1, 4):
            x = torch.randn(tokens, 64)
            torch.testing.assert_close(step(x), model(x), rtol=1e-5, atol=1e-5)  # inductor fuses GELU


@pytest.mark.parametrize("path", ["factored", "materialized"])
@pytest.mark.parametrize("tokens", [1, 40])
def test_opcheck_sl_matmul_inference(path, tokens):
    for dtype in (torch.float32, torch.bfloat16):
        for columns in (torch.int32, torch.uint16):
            p = make_problem(9, 12, 3, 30, dtype, columns=columns)
            x = torch.randn(tokens, 12, dtype=dtype)
            with sl.matmul_config(path):
                torch.library.opcheck(torch.ops.sltrain.sl_matmul_inference.default, (x, *p.operands(), p.bias))


def test_hugging_face_generate_through_a_converted_model_equals_its_merged_twin():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                      num_attention_heads=4, vocab_size=96, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config).double().eval()
    sl.convert(model, rank=8, density=0.1)
    for module in model.modules():
        if isinstance(module, sl.SLLinear):
            torch.nn.init.normal_(module.B, std=0.2)  # B = 0 at conversion would hide the low-rank part
    model.eval()
    merged = sl.merge(copy.deepcopy(model))
    prompt = torch.randint(0, 96, (2, 5))
    settings = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": 0}
    with OpRecorder() as recorder:
        tokens = model.generate(prompt, **settings)
    assert "sltrain.sl_matmul_inference.default" in recorder.names
    assert "sltrain.sl_matmul.default" not in recorder.names
    assert torch.equal(tokens, merged.generate(prompt, **settings))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tokens", [1, 5])
def test_the_cpu_decode_reads_16_bit_operands_as_stored(dtype, tokens):
    # A 16-bit decode call copies nothing of the size of A, B, values or the
    # columns (a float32 copy of each per call would triple the bytes a token
    # moves); the profiler sees every ATen op the C++ op calls.
    p = make_problem(64, 48, 8, 500, dtype=dtype, seed=tokens, columns=torch.uint16)
    x = torch.randn(tokens, 48, dtype=torch.float64).to(dtype)
    with sl.matmul_config("factored"), torch.no_grad():
        with torch.profiler.profile(record_shapes=True) as profile:
            y = sl_matmul_inference(x, *p.operands(), p.bias)
    expected = x.double() @ reference_weight(p).T + p.bias.double()
    operand_shapes = {(8, 48), (64, 8), (500,)}
    copies = [tuple(map(tuple, event.input_shapes[:1])) for event in profile.events()
              if event.name in ("aten::_to_copy", "aten::to", "aten::copy_", "aten::clone")]
    assert not [c for c in copies if c and c[0] in operand_shapes], copies
    assert y.dtype == dtype
    assert_close(y, expected, dtype)


def test_a_decode_layer_call_runs_little_python():
    # Host time is most of a small decode layer's time: the no-grad forward
    # reads its tensors from the module's dicts (nn.Module.__getattr__ costs
    # about a microsecond a name) and calls the op without a Python wrapper.
    import sys

    layer = sl.SLLinear(64, 64, rank=8, density=0.05).eval()
    x = torch.randn(1, 64)
    frames: list[tuple[str, str]] = []

    def record(frame, event, arg):
        if event == "call":
            frames.append((frame.f_code.co_filename, frame.f_code.co_name))

    with torch.inference_mode():
        expected = layer(x)
        sys.setprofile(record)
        try:
            actual = layer(x)
        finally:
            sys.setprofile(None)
    assert torch.equal(actual, expected)
    assert not [f for f in frames if f[1] == "__getattr__"], frames
    ours = [name for path, name in frames if "sltrain_ext" in path]
    # _has_autocast: a dict lookup (a functools.cache around it would be no
    # frame, but dynamo in torch 2.11 traces into that wrapper and fails).
    assert ours == ["forward", "_has_autocast", "scale"], ours


DECODE_IN_A_FRESH_PROCESS = """
import sys, torch, sltrain_ext as sl
torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
layer = sl.SLLinear(512, 1376, rank=128, density=0.05).eval()
torch.nn.init.normal_(layer.B)
with torch.inference_mode():
    y = layer(torch.randn(1, 512))
sys.stdout.write(y.view(torch.int32).numpy().tobytes().hex())
"""


def test_the_decode_result_does_not_depend_on_threads_or_the_wait_policy():
    # The decode kernel splits a layer into fewer chunks when OpenMP's threads
    # sleep (OMP_WAIT_POLICY=PASSIVE) than when they spin; each row's sums keep
    # one order, so every split gives the same bits. This layer (512 -> 1376,
    # r 128, b 1) is one chunk under PASSIVE and several otherwise.
    def decode(threads: int, policy: str | None) -> str:
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        if policy is not None:
            env["OMP_WAIT_POLICY"] = policy
        result = subprocess.run([sys.executable, "-c", DECODE_IN_A_FRESH_PROCESS, str(threads)],
                                capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout

    spinning = decode(2, None)
    assert len(spinning) == 1376 * 8
    assert decode(2, "PASSIVE") == spinning
    assert decode(1, None) == spinning
