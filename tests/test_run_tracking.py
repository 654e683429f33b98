"""What a run records about itself: run.json from before its first step (and
--resume held to it), the metrics of every step (gradient norm, interval
throughput, time split, memory), the trackers, and the flops a token costs."""

import hashlib
import importlib.util
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from sltrain_ext import compare, ops, train
from sltrain_ext.configs import LlamaConfig
from sltrain_ext.convert import convert
from sltrain_ext.llama import LlamaForCausalLM
from sltrain_ext.nn import SLLinear
from sltrain_ext.throughput import linear_flops_per_token, training_flops_per_token

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--config", "9m", "--batch-size", "4", "--seq-len", "32", "--eval-every", "3", "--eval-batches", "1"]


def metrics(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_run_json_is_written_before_the_first_step(tmp_path, capsys):
    """A run killed (SIGKILL, no clean-up) right after step 1 has left its
    record, and sltrain-compare reads the tokens it had seen without a summary."""
    out = tmp_path / "run"
    argv = SMALL + ["--steps", "500", "--method", "sltrain", "--lr", "2e-3", "--eval-every", "1", "--out", str(out)]
    process = subprocess.Popen([sys.executable, "-m", "sltrain_ext.train", *argv], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = out / "sltrain" / "metrics.jsonl"
    try:
        while not (log.exists() and "val_bpb" in log.read_text()):
            assert process.poll() is None, process.stderr.read().decode()
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    record = json.loads((out / "run.json").read_text())
    settings = record["settings"]
    assert record["command"].startswith("sltrain-train --config 9m") and "--lr 2e-3" in record["command"]
    assert settings["--lr"] == {"sltrain": 2e-3} and settings["--rank"] == {"sltrain": 32}
    assert settings["--density"] == {"sltrain": 0.03} and settings["--dtype"] == "float32"
    assert settings["--config"]["hidden_size"] == 128 and settings["--steps"] == 500
    assert record["derived"]["tokens_per_step"] == 4 * 32 and record["derived"]["total_tokens"] == 500 * 4 * 32
    assert "warm-up over 50 steps" in record["derived"]["schedule"]
    data = record["data"]
    index = Path(data["folder"]) / "index.json"
    assert data["fingerprint"] == hashlib.sha256(index.read_bytes()).hexdigest()
    assert data["tokenizer"]["vocab_size"] == json.loads(index.read_text())["tokenizer"]["vocab_size"]
    software = record["software"]
    # null outside a git checkout (check_torch211.sh runs the suite in a plain copy)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    head = head or None
    assert software["git_commit"] == head and software["torch"] == torch.__version__
    assert record["devices"][-1].startswith("cpu")
    lines = log.read_text().splitlines()
    if not lines[-1].endswith("}"):  # torn by the kill
        lines.pop()
    evaluations = [json.loads(line) for line in lines if "val_bpb" in line]
    curve, = compare.main([str(out), "--plot", str(tmp_path / "curves.png")])
    assert curve.tokens == [r["step"] * 4 * 32 for r in evaluations] and curve.peak_memory_gib is None


def test_resume_names_each_changed_setting_and_accepts_the_ones_that_may_change(tmp_path, capsys):
    argv = SMALL + ["--steps", "4", "--method", "sltrain", "--out", str(tmp_path)]
    train.main(argv + ["--stop-after", "2"])
    with pytest.raises(SystemExit) as refused:
        train.main(argv + ["--resume", "--lr", "1e-2", "--warmup", "0.5"])
    error = capsys.readouterr().err
    assert refused.value.code == 2
    assert "another --lr (sltrain: 0.003, now 0.01)" in error and "another --warmup (0.1, now 0.5)" in error
    assert str(tmp_path / "run.json") in error
    # How often it evaluates and where trackers go may change; the run goes on.
    results = train.main(argv + ["--resume", "--eval-every", "2", "--save-every", "1"])
    assert results[0]["steps"] == 4


def test_resume_with_a_damaged_run_record_names_the_file(tmp_path, capsys):
    argv = SMALL + ["--steps", "3", "--method", "full", "--out", str(tmp_path)]
    train.main(argv + ["--stop-after", "1"])
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(SystemExit) as refused:
        train.main(argv + ["--resume"])
    assert refused.value.code == 2 and f"{tmp_path / 'run.json'} is not a run record" in capsys.readouterr().err


def test_step_records_carry_gradient_norm_interval_throughput_times_and_memory(tmp_path, capsys):
    train.main(SMALL + ["--steps", "6", "--method", "sltrain", "--max-grad-norm", "0.5", "--out", str(tmp_path)])
    records = metrics(tmp_path / "sltrain")
    steps = [r for r in records if "loss" in r]
    evaluations = [r for r in records if "val_loss" in r]
    assert [r["tokens"] for r in steps] == [step * 4 * 32 for step in range(1, 7)]
    assert [r["tokens"] for r in evaluations] == [3 * 4 * 32, 6 * 4 * 32]
    for record in steps:
        assert isinstance(record["grad_norm"], float) and record["grad_norm"] > 0
        assert record["clipped"] == (record["grad_norm"] > 0.5)
        assert record["interval_tokens_per_s"] > 0 and record["tokens_per_s"] > 0
        parts = [record[f"{phase}_s"] for phase in ("data", "compute", "optimizer")]
        assert all(isinstance(p, float) and p >= 0 for p in parts)
        assert record["step_s"] == pytest.approx(sum(parts))
        assert record["interval_tokens_per_s"] == pytest.approx(4 * 32 / record["step_s"])
        assert not {"mfu", "peak_memory_gib", "memory_other_gib"} & record.keys()  # not measurable on the CPU
    assert all(isinstance(r["eval_s"], float) and r["eval_s"] > 0 for r in evaluations)
    summary = json.loads((tmp_path / "summary.json").read_text())["results"][0]
    # The breakdown's known parts, by hand: a float32 gradient per parameter, two float32
    # AdamW moments per parameter, the parameters and the support indices besides.
    gib = 2**30
    assert steps[0]["memory_gradients_gib"] * gib == summary["parameters"] * 4
    assert steps[0]["memory_optimizer_gib"] * gib == pytest.approx(2 * summary["parameters"] * 4, rel=1e-3)
    assert steps[0]["memory_parameters_gib"] * gib > summary["parameters"] * 4
    captured = capsys.readouterr()
    assert "mfu=n/a (CPU)" in captured.err and "n/a (CPU)" in captured.out
    assert summary["mfu"] is None and summary["peak_memory_gib"] is None
    assert summary["flops_per_token"] == steps[-1]["flops_per_token"] > 0


def test_without_clipping_the_norm_is_logged_and_per_layer_has_none(tmp_path):
    train.main(SMALL + ["--steps", "2", "--method", "full", "--max-grad-norm", "0", "--out", str(tmp_path / "a")])
    assert all(isinstance(r["grad_norm"], float) and "clipped" not in r for r in metrics(tmp_path / "a" / "full")
               if "loss" in r)
    train.main(SMALL + ["--steps", "2", "--method", "full", "--per-layer", "--out", str(tmp_path / "b")])
    assert all(not {"grad_norm", "clipped"} & r.keys() for r in metrics(tmp_path / "b" / "full") if "loss" in r)


def test_a_tracker_whose_package_is_missing_is_named(capsys):
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    with pytest.raises(SystemExit) as refused:
        train.parse_args(["--tracker", "tensorboard,wandb" if importlib.util.find_spec("tensorboard") else "wandb"])
    assert refused.value.code == 2 and "--tracker wandb needs the wandb package" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.parse_args(["--tracker", "mlflow"])
    assert "unknown tracker 'mlflow'" in capsys.readouterr().err


def test_tensorboard_event_files_hold_the_scalars_of_the_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train.main(SMALL + ["--steps", "4", "--method", "full", "--tracker", "tensorboard", "--out", str(tmp_path)])
    events = EventAccumulator(str(tmp_path / "full" / "tensorboard"))
    events.Reload()
    records = metrics(tmp_path / "full")
    for key in ("loss", "lr", "grad_norm", "interval_tokens_per_s", "compute_s", "val_bpb", "eval_s", "tokens"):
        logged = [(e.step, e.value) for e in events.Scalars(key)]
        expected = [(r["step"], pytest.approx(float(r[key]), rel=1e-6)) for r in records if r.get(key) is not None]
        assert logged == expected, key


def test_wandb_gets_the_same_scalars_offline(tmp_path, monkeypatch):
    """Through a stand-in wandb module (the package is not installed here):
    what the tracker hands to wandb.init and run.log."""
    import importlib.machinery
    import types

    calls = {"logged": []}

    class Run:
        def log(self, scalars, step):
            calls["logged"].append((step, scalars))

        def finish(self):
            calls["finished"] = True

    fake = types.ModuleType("wandb")
    fake.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    fake.init = lambda **kwargs: calls.update(init=kwargs) or Run()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    train.main(SMALL + ["--steps", "2", "--method", "full", "--tracker", "wandb", "--out", str(tmp_path)])
    assert calls["init"]["mode"] == "offline" and calls["init"]["config"]["settings"]["--steps"] == 2
    assert calls["finished"]
    records = metrics(tmp_path / "full")
    assert [step for step, _ in calls["logged"]] == [r["step"] for r in records]
    assert calls["logged"][0][1]["loss"] == records[0]["loss"] and "step" not in calls["logged"][0][1]


# ---- flops a token -----------------------------------------------------------------------------------

TINY = LlamaConfig("tiny", hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                   vocab_size=32, max_position_embeddings=16, rms_norm_eps=1e-6, tie_word_embeddings=False,
                   rank=2, alpha=2.0, density=0.25)
SEQ = 4
ATTENTION = 12 * SEQ * 8 * 1  # QK^T and AV, 2 flops a multiply-add each, times 3 for backward: 12 T h L


@pytest.mark.parametrize("method,hand_count", [
    # q, k, v, o: 8x8; gate, up: 16x8; down: 8x16; head: 32x8 -> 896 weights, 6 flops each a token
    ("full", 6 * (4 * 64 + 3 * 128 + 256)),
    # the same projections at rank 2: 6 r (m + n) each, the head dense
    ("lowrank", 6 * 2 * (4 * 16 + 3 * 24) + 6 * 256),
])
def test_dense_and_low_rank_flops_match_a_hand_count_and_torch_flop_counter(method, hand_count):
    model = LlamaForCausalLM(TINY)
    if method == "lowrank":
        convert(model, rank=2, alpha=2.0, seed=0, density=None)
    tokens = torch.randint(0, TINY.vocab_size, (3, SEQ + 1))
    with FlopCounterMode(display=False) as counter:  # matrix products only: it does not see CPU attention
        model.loss(tokens).backward()
    counted = training_flops_per_token(model, 3 * SEQ, SEQ, torch.device("cpu"))
    assert counted == hand_count + ATTENTION
    assert counter.get_total_flops() / (3 * SEQ) == hand_count


@pytest.mark.parametrize("path,tokens,hand_count", [
    # 16x8, r 2, nnz 32: 2r(3m + 4n) dense + 3 sparse passes of 2 nnz
    ("factored", 4, 2 * 2 * (3 * 16 + 4 * 8) + 6 * 32),
    # W built twice (2mnr = 512 each), 3 GEMMs (6mn = 768 a token), dA/dB from the factors (4br(m+n) = 768 < 4mnr)
    ("materialized", 4, 768 + (2 * 512 + 768) / 4),
    # at 64 tokens dA/dB from the dW chunks is cheaper (4mnr = 1024 < 12288)
    ("materialized", 64, 768 + (2 * 512 + 1024) / 64),
])
def test_sl_flops_follow_the_path_sl_matmul_takes(path, tokens, hand_count):
    layer = SLLinear(8, 16, rank=2, alpha=2.0, density=0.25, seed=0)
    assert layer.nnz == 32
    with ops.matmul_config(path=path):
        assert ops.matmul_path(tokens, 16, 8, 2, 32) == path
        assert linear_flops_per_token(layer, tokens, torch.device("cpu")) == hand_count


@pytest.mark.gpu
def test_on_a_gpu_steps_record_mfu_and_a_peak_that_holds_its_parts(tmp_path, capsys):
    """Run by benchmarks/gpu_run.sh's pytest -m gpu; skipped without CUDA."""
    train.main(SMALL + ["--steps", "3", "--method", "sltrain,full", "--device", "cuda", "--out", str(tmp_path)])
    name = torch.cuda.get_device_name()
    for method in ("sltrain", "full"):
        for record in (r for r in metrics(tmp_path / method) if "loss" in r):
            parts = sum(record[f"memory_{part}_gib"] for part in ("parameters", "gradients", "optimizer", "other"))
            assert record["peak_memory_gib"] == pytest.approx(parts, rel=1e-6) and record["memory_other_gib"] > 0
            if any(key in name for key in ("H100", "H200", "A100")):
                assert 0 < record["mfu"] < 1
    assert "mfu=n/a (CPU)" not in capsys.readouterr().err
