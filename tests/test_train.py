"""The training command: runs, learns, resumes exactly, rejects bad input clearly."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file

from sltrain_ext import checkpointing, configs, train
from sltrain_ext.run_log import MEASURED
from sltrain_ext.schedule import LearningRateSchedule

SMALL = ["--config", "9m", "--batch-size", "4", "--seq-len", "32", "--eval-every", "5", "--eval-batches", "2"]


def metrics(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_trains_every_method_and_the_loss_decreases(tmp_path):
    results = train.main(SMALL + ["--steps", "12", "--method", "sltrain,lowrank,full", "--lr", "1e-2",
                                  "--out", str(tmp_path)])
    assert [r["method"] for r in results] == ["sltrain", "lowrank", "full"]
    for result in results:
        losses = [r["loss"] for r in metrics(tmp_path / result["method"]) if "loss" in r]
        assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3])
        assert (tmp_path / result["method"] / "model" / "model.safetensors").exists()
    sltrain, lowrank, full = results
    assert sltrain["parameters"] < full["parameters"] and lowrank["parameters"] < sltrain["parameters"]
    assert json.loads((tmp_path / "summary.json").read_text())["results"][0]["method"] == "sltrain"


@pytest.mark.parametrize("extra", [[], ["--state-bits", "8", "--per-layer", "--accumulation", "2"],
                                   ["--state-bits", "4"]])
def test_resume_continues_exactly(tmp_path, extra):
    common = SMALL + ["--steps", "20", "--method", "sltrain", "--save-every", "7"] + extra
    train.main(common + ["--out", str(tmp_path / "straight")])
    train.main(common + ["--out", str(tmp_path / "resumed"), "--stop-after", "10"])
    train.main(common + ["--out", str(tmp_path / "resumed"), "--resume"])
    straight = load_file(tmp_path / "straight" / "sltrain" / "model" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "sltrain" / "model" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for name, tensor in straight.items():
        assert torch.equal(tensor, resumed[name]), name
    def without_rates(records):
        return [{k: v for k, v in r.items() if k not in MEASURED} for r in records]

    assert without_rates(metrics(tmp_path / "straight" / "sltrain")) == without_rates(
        metrics(tmp_path / "resumed" / "sltrain"))


def test_held_out_evaluation_runs_in_training_micro_batches(tmp_path, monkeypatch):
    # --batch-size 8 in 4 accumulation steps: training forwards 2 sequences at
    # a time, and so must the evaluation (it used to forward all 8 at once).
    from sltrain_ext.llama import LlamaForCausalLM

    evaluated = []
    loss = LlamaForCausalLM.loss

    def recording_loss(self, tokens, *rest, **options):
        if not torch.is_grad_enabled():
            evaluated.append(tokens.shape[0])
        return loss(self, tokens, *rest, **options)

    monkeypatch.setattr(LlamaForCausalLM, "loss", recording_loss)
    train.main(SMALL + ["--batch-size", "8", "--accumulation", "4", "--steps", "5", "--method", "sltrain",
                        "--out", str(tmp_path)])
    assert evaluated == [2] * 4 * 2  # --eval-batches 2 of 4 micro-batches each, at step 5


@pytest.mark.parametrize("argv,message", [
    (["--method", "dense"], "unknown method 'dense'"),
    (["--config", "3b"], "unknown config '3b'"),
    (["--density", "1.5"], "--density must be in"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--batch-size", "6", "--accumulation", "4"], "multiple of --accumulation"),
    (["--steps", "5", "--stop-after", "9"], "--stop-after must be between"),
])
def test_bad_flags_are_rejected(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_data_path_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no such file or directory"):
        train.main(["--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path)])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\nnot json\n')
    with pytest.raises(SystemExit, match="line 2 is not a JSON object"):
        train.main(["--data", str(bad), "--out", str(tmp_path)])


def test_local_text_files_and_resume_guard(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(30):
        (corpus / f"doc{i}.txt").write_text(f"document {i}: " + "the quick brown fox jumps over the lazy dog. " * 20)
    out = tmp_path / "out"
    train.main(SMALL + ["--steps", "4", "--method", "full", "--data", str(corpus), "--out", str(out)])
    with pytest.raises(SystemExit, match=re.escape("--steps 3 is below the 4 steps of the run")):
        train.main(SMALL + ["--steps", "3", "--method", "full", "--data", str(corpus), "--out", str(out), "--resume"])


def checkpoint_step(folder):
    """The step of the newest intact checkpoint of a method's folder."""
    newest, _ = checkpointing.find_checkpoint(folder / "checkpoints")
    saved = {"trainer": {"step": -1}}
    with checkpointing._single_process_quiet():
        dcp.load(saved, checkpoint_id=newest)
    return saved["trainer"]["step"]


def test_a_save_that_dies_leaves_the_earlier_checkpoints(tmp_path, monkeypatch):
    argv = SMALL + ["--steps", "4", "--method", "full", "--save-every", "2", "--out", str(tmp_path)]
    train.main(argv + ["--stop-after", "2"])

    def dies_while_writing(state_dict, checkpoint_id):
        checkpoint_id.mkdir()
        (checkpoint_id / "__0_0.distcp").write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpointing.dcp, "save", dies_while_writing)
    with pytest.raises(KeyboardInterrupt):
        train.main(argv + ["--resume"])  # killed while writing the step-4 checkpoint
    monkeypatch.undo()
    assert checkpoint_step(tmp_path / "full") == 2
    train.main(argv + ["--resume"])
    assert checkpoint_step(tmp_path / "full") == 4
    assert not list((tmp_path / "full" / "checkpoints").glob("*.partial"))
    assert [r["step"] for r in metrics(tmp_path / "full") if "loss" in r] == [1, 2, 3, 4]


def test_only_the_newest_checkpoints_are_kept_each_with_a_manifest(tmp_path):
    train.main(SMALL + ["--steps", "8", "--method", "full", "--save-every", "2", "--keep-checkpoints", "3",
                        "--out", str(tmp_path)])
    kept = sorted(p.name for p in (tmp_path / "full" / "checkpoints").iterdir())
    assert kept == ["step_00000004", "step_00000006", "step_00000008"]
    for name in kept:
        folder = tmp_path / "full" / "checkpoints" / name
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["step"] == int(name[5:]) and "__0_0.distcp" in manifest["files"]
        assert checkpointing.damage(folder) is None


@pytest.mark.parametrize("harm", ["truncate", "flip", "delete_manifest"])
def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, capsys, harm):
    argv = SMALL + ["--steps", "6", "--method", "full", "--save-every", "2", "--out", str(tmp_path)]
    train.main(argv + ["--stop-after", "4"])
    newest = tmp_path / "full" / "checkpoints" / "step_00000004"
    shard = newest / "__0_0.distcp"
    if harm == "truncate":
        shard.write_bytes(shard.read_bytes()[:100])
    elif harm == "flip":
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 1
        shard.write_bytes(bytes(data))
    else:
        (newest / "manifest.json").unlink()
    capsys.readouterr()
    train.main(argv + ["--resume"])
    out = capsys.readouterr().out
    assert f"{newest} is damaged" in out and "falling back" in out
    # Resumed from step 2: steps 3 to 6 ran again.
    assert [r["step"] for r in metrics(tmp_path / "full") if "loss" in r] == [1, 2, 3, 4, 5, 6]


def test_a_full_disk_stops_with_a_clear_message_and_the_last_checkpoint_intact(tmp_path, monkeypatch):
    import errno

    argv = SMALL + ["--steps", "6", "--method", "full", "--save-every", "2", "--out", str(tmp_path)]
    real_save = checkpointing.dcp.save
    calls = {"n": 0}

    def disk_fills_on_the_second_save(state_dict, checkpoint_id):
        calls["n"] += 1
        if calls["n"] == 2:
            checkpoint_id.mkdir(parents=True, exist_ok=True)
            (checkpoint_id / "__0_0.distcp").write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(state_dict, checkpoint_id=checkpoint_id)

    monkeypatch.setattr(checkpointing.dcp, "save", disk_fills_on_the_second_save)
    with pytest.raises(SystemExit, match=r"could not write the step-4 checkpoint .*the disk is full .*the "
                                         r"partial checkpoint was removed and the step-2 checkpoint "
                                         r".*step_00000002 is intact"):
        train.main(argv)
    monkeypatch.undo()
    assert checkpoint_step(tmp_path / "full") == 2
    assert not list((tmp_path / "full" / "checkpoints").glob("*.partial"))


def test_a_save_that_dcp_fails_for_another_reason_names_it_and_removes_the_partial_folder(tmp_path, monkeypatch):
    """dcp.save wraps each rank's error in a CheckpointException (a
    BaseException, not an OSError); the message names the wrapped error."""
    import traceback

    from torch.distributed.checkpoint.api import CheckpointException

    def denied(state_dict, checkpoint_id):
        checkpoint_id.mkdir(parents=True)
        (checkpoint_id / "__0_0.distcp").write_bytes(b"partial")
        error = PermissionError(13, "Permission denied", str(checkpoint_id / "__0_0.distcp"))
        raise CheckpointException("save failed", {0: (error, traceback.StackSummary())})

    monkeypatch.setattr(checkpointing.dcp, "save", denied)
    with pytest.raises(SystemExit, match=r"could not write the step-2 checkpoint .*: PermissionError: \[Errno 13\] "
                                         r"Permission denied: .*; the partial checkpoint was removed"):
        train.main(SMALL + ["--steps", "2", "--method", "full", "--save-every", "2", "--out", str(tmp_path)])
    assert not list((tmp_path / "full" / "checkpoints").iterdir())


def test_resume_refuses_an_old_single_file_checkpoint(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(SystemExit, match="single-file checkpoint"):
        train.main(SMALL + ["--steps", "2", "--method", "full", "--out", str(tmp_path), "--resume"])


def test_resume_without_a_checkpoint_is_an_error_unless_if_exists(tmp_path, capsys):
    argv = SMALL + ["--steps", "2", "--method", "full", "--out", str(tmp_path)]
    with pytest.raises(SystemExit, match=r"--resume: no checkpoint of full in .*full/checkpoint"):
        train.main(argv + ["--resume"])
    train.main(argv + ["--resume", "if-exists"])
    assert "no checkpoint in" in capsys.readouterr().out
    assert checkpoint_step(tmp_path / "full") == 2


def test_rank_above_the_layer_size_is_refused(tmp_path):
    with pytest.raises(SystemExit, match=r"`rank` = 1000 exceeds min\(in, out\) = \d+ of `model.layers.0"):
        train.main(SMALL + ["--steps", "1", "--method", "sltrain", "--rank", "1000", "--out", str(tmp_path)])


def test_the_console_script_exits_0_and_prints_no_result_list(tmp_path):
    """Runs the target setup.py names for `sltrain-train` as the generated
    script does (sys.exit(target())), in a fresh process."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    module, function = re.search(r'"sltrain-train = ([\w.]+):(\w+)"', (root / "setup.py").read_text()).groups()
    argv = SMALL + ["--steps", "1", "--method", "full", "--out", str(tmp_path)]
    script = f"import sys; from {module} import {function}; sys.argv[1:] = {argv!r}; sys.exit({function}())"
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "'method'" not in done.stderr and "[{" not in done.stderr


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_a_signal_stops_after_the_step_with_a_checkpoint_and_resume_is_exact(tmp_path, signal_name):
    """A real process gets the signal mid-run; the resumed run equals an
    uninterrupted one bitwise."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from sltrain_ext.preemption import PREEMPTED_EXIT_STATUS

    common = SMALL + ["--steps", "24", "--method", "sltrain", "--save-every", "1000"]
    root = Path(__file__).resolve().parents[1]
    stopped = tmp_path / "stopped"
    process = subprocess.Popen([sys.executable, "-m", "sltrain_ext.train", *common, "--out", str(stopped)],
                               cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = stopped / "sltrain" / "metrics.jsonl"
    while process.poll() is None and not (log.exists() and len(log.read_text().splitlines()) >= 3):
        time.sleep(0.02)
    process.send_signal(getattr(signal, signal_name))
    out, err = process.communicate(timeout=300)
    assert process.returncode == PREEMPTED_EXIT_STATUS, err
    step = checkpoint_step(stopped / "sltrain")
    assert 3 <= step < 24
    assert f"stopped by {signal_name} after step {step} of 24" in out
    assert [r["step"] for r in metrics(stopped / "sltrain") if "loss" in r] == list(range(1, step + 1))

    if signal_name == "SIGINT":
        return  # the same path as SIGTERM from here on: resumed once, below
    train.main(common + ["--out", str(stopped), "--resume"])
    train.main(common + ["--out", str(tmp_path / "straight")])
    straight = load_file(tmp_path / "straight" / "sltrain" / "model" / "model.safetensors")
    resumed = load_file(stopped / "sltrain" / "model" / "model.safetensors")
    for name, tensor in straight.items():
        assert torch.equal(tensor, resumed[name]), name


class NanGradient(torch.autograd.Function):
    """Zero forward, NaN backward: a finite loss whose gradients are NaN."""

    @staticmethod
    def forward(ctx, x):
        return torch.zeros_like(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def poison_losses(monkeypatch, calls_to_poison, gradients_only=False):
    """Makes the training loss and every gradient (or only the gradients) NaN
    on the given calls; held-out evaluations, without gradients, stay clean."""
    calls = {"n": 0}
    real = train.causal_lm_loss

    def causal_lm_loss(*args, **kwargs):
        if not torch.is_grad_enabled():
            return real(*args, **kwargs)
        calls["n"] += 1
        loss = real(*args, **kwargs)
        if calls["n"] not in calls_to_poison:
            return loss
        return loss + NanGradient.apply(loss) if gradients_only else loss * float("nan")

    monkeypatch.setattr(train, "causal_lm_loss", causal_lm_loss)


def test_non_finite_steps_are_skipped_without_touching_the_state(tmp_path, monkeypatch):
    updates = {"n": 0}
    real_step = train.SLAdamW.step

    def counted_step(self, *args, **kwargs):
        updates["n"] += 1
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(train.SLAdamW, "step", counted_step)
    poison_losses(monkeypatch, {3})
    poison_losses(monkeypatch, {4}, gradients_only=True)  # the loss of step 4 is finite
    train.main(SMALL + ["--steps", "6", "--method", "sltrain", "--out", str(tmp_path)])
    records = metrics(tmp_path / "sltrain")
    assert [r["step"] for r in records if "skipped" in r] == [3, 4]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 5, 6]
    assert updates["n"] == 4
    model = load_file(tmp_path / "sltrain" / "model" / "model.safetensors")
    assert all(torch.isfinite(t.float()).all() for t in model.values())


def test_too_many_bad_steps_stop_with_the_last_good_checkpoint(tmp_path, monkeypatch):
    argv = SMALL + ["--steps", "8", "--method", "full", "--save-every", "2", "--max-bad-steps", "2",
                    "--out", str(tmp_path)]
    poison_losses(monkeypatch, {5, 6, 7, 8})
    with pytest.raises(SystemExit, match="2 consecutive steps up to step 6 had a non-finite loss"):
        train.main(argv)
    assert checkpoint_step(tmp_path / "full") == 4


# ---- what a user meets (issue 20) -----------------------------------------------------------


def sltrain_config(out, method="sltrain"):
    return json.loads((out / method / "model" / "sltrain_config.json").read_text())


def test_stop_after_counts_the_steps_of_each_command_so_the_same_command_goes_on(tmp_path, capsys):
    """`--stop-after 8` kept in the resumed command trains 8 more steps each
    time, up to --steps; it used to train nothing and ask for --resume again."""
    argv = SMALL + ["--steps", "20", "--stop-after", "8", "--method", "full", "--save-every", "100",
                    "--out", str(tmp_path)]
    train.main(argv)
    assert checkpoint_step(tmp_path / "full") == 8
    assert "stopped at step 8 of 20" in capsys.readouterr().out
    train.main(argv + ["--resume"])
    assert checkpoint_step(tmp_path / "full") == 16
    capsys.readouterr()
    train.main(argv + ["--resume"])
    assert checkpoint_step(tmp_path / "full") == 20
    assert [r["step"] for r in metrics(tmp_path / "full") if "loss" in r] == list(range(1, 21))
    assert (tmp_path / "full" / "model" / "model.safetensors").exists()
    assert "stopped at step" not in capsys.readouterr().out


def test_zero_learning_rate_and_zero_alpha_are_used_not_replaced_by_defaults(tmp_path):
    train.main(SMALL + ["--steps", "3", "--method", "sltrain", "--lr", "0", "--alpha", "0", "--out", str(tmp_path)])
    assert [r["lr"] for r in metrics(tmp_path / "sltrain") if "loss" in r] == [0.0, 0.0, 0.0]
    assert sltrain_config(tmp_path)["sltrain"]["alpha"] == 0.0
    model = load_file(tmp_path / "sltrain" / "model" / "model.safetensors")
    assert all(not t.any() for name, t in model.items() if name.endswith(".B"))  # B starts at zero, lr 0 keeps it


def test_metrics_log_the_learning_rate_each_step_used(tmp_path):
    steps, lr = 10, 1e-2
    train.main(SMALL + ["--steps", str(steps), "--method", "full", "--lr", str(lr), "--warmup", "0.2",
                        "--out", str(tmp_path)])
    logged = [r["lr"] for r in metrics(tmp_path / "full") if "loss" in r]
    schedule = LearningRateSchedule.fresh(steps, warmup_fraction=0.2, floor=0.1)
    expected = [lr * schedule(step) for step in range(steps)]
    assert logged == pytest.approx(expected)
    assert logged[0] == pytest.approx(lr / 2)  # step 1 of a 2-step warm-up: half the peak


@pytest.mark.parametrize("flag,value,message", [
    ("--rank", "1", "another --rank (sltrain: 8, now 1)"),
    ("--density", "0.5", "another --density (sltrain: 0.03, now 0.5)"),
    ("--alpha", "4", "another --alpha (sltrain: 32.0, now 4.0)"),
    ("--config", "20m", "another --config (name: 'llama_9m', now 'llama_20m'; hidden_size: 128, now 256"),
])
def test_resuming_with_another_model_shape_names_the_flag(tmp_path, flag, value, message, capsys):
    """It used to fail inside the checkpoint loader with `Size mismatch`;
    run.json names the flag (status 2) before any checkpoint is read."""
    first = {"--config": "9m", "--method": "sltrain", "--rank": "8"}
    rest = ["--batch-size", "4", "--seq-len", "32", "--eval-batches", "1", "--steps", "4", "--out", str(tmp_path)]
    train.main([x for item in first.items() for x in item] + rest + ["--stop-after", "2"])
    resumed = {**first, flag: value}
    with pytest.raises(SystemExit, match=re.escape(message)) as refused:
        train.main([x for item in resumed.items() for x in item] + rest + ["--resume"])
    assert refused.value.code == 2 and message in capsys.readouterr().err
    # A run begun before run.json existed: its checkpoint's settings still name the flag.
    (tmp_path / "run.json").unlink()
    with pytest.raises(SystemExit, match=re.escape(f"another {flag} (")):
        train.main([x for item in resumed.items() for x in item] + rest + ["--resume"])


def broken_configs(folder):
    """Hand-written --config files a user may give: missing a key, not JSON, a wrong type."""
    good = json.loads((Path(train.configs.__file__).parent / "llama_9m.json").read_text())
    missing = folder / "missing.json"
    missing.write_text(json.dumps({k: v for k, v in good.items() if k != "hidden_size"}))
    (folder / "notjson.json").write_text("{ hidden_size: 128")
    (folder / "text.json").write_text(json.dumps({**good, "num_hidden_layers": "four"}))
    return {"missing": (missing, "the JSON has no 'hidden_size' field"), "notjson": (folder / "notjson.json", "not valid JSON"),
            "type": (folder / "text.json", "'num_hidden_layers' must be of type int")}


# Every flag of sltrain-train with a value it cannot use: exit status 2 and a message that names the flag.
BAD_FLAGS = [
    (["--lr", "-1"], "--lr must be a finite number >= 0"),
    (["--lr", "nan"], "--lr must be a finite number >= 0"),
    (["--alpha", "-2"], "--alpha must be a finite number >= 0"),
    (["--alpha", "inf"], "--alpha must be a finite number >= 0"),
    (["--rank", "0"], "--rank must be at least 1"),
    (["--rank", "-4"], "--rank must be at least 1"),
    (["--density", "0"], "--density must be in (0, 1]"),
    (["--density", "nan"], "--density must be in (0, 1]"),
    (["--weight-decay", "-0.1"], "--weight-decay must be a finite number >= 0"),
    (["--max-grad-norm", "-1"], "--max-grad-norm must be a finite number >= 0"),
    (["--warmup", "1"], "--warmup must be in [0, 1)"),
    (["--min-lr-ratio", "1.5"], "--min-lr-ratio must be in [0, 1]"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--accumulation", "0"], "--accumulation must be at least 1"),
    (["--seq-len", "0"], "--seq-len must be at least 1"),
    (["--seq-len", "4096"], "--seq-len 4096 exceeds the 1024 positions of --config 9m"),
    (["--eval-every", "0"], "--eval-every must be at least 1"),
    (["--eval-batches", "-1"], "--eval-batches must be at least 1"),
    (["--save-every", "0"], "--save-every must be at least 1"),
    (["--keep-checkpoints", "0"], "--keep-checkpoints must be at least 1"),
    (["--max-bad-steps", "0"], "--max-bad-steps must be at least 1"),
    (["--stop-after", "0"], "--stop-after must be between"),
    (["--vocab-size", "100"], "--vocab-size must be at least 258"),
    (["--seed", "-1"], "--seed must be in [0, 2**63)"),
    (["--method", ","], "--method: no method given"),
    (["--device", "tpu"], "--device tpu: not a device of this program"),
    (["--device", "cuda:x"], "--device cuda:x: not a device"),
    (["--dist", "ddp"], "--dist ddp runs under torchrun"),
    (["--state-bits", "16"], "--state-bits: invalid choice"),
    (["--resume", "maybe"], "--resume: invalid choice"),
    (["--steps", "many"], "--steps: invalid int value"),
]


@pytest.mark.parametrize("argv,message", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_every_flag_refuses_values_it_cannot_use(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_config_files_and_an_out_that_is_a_file_are_refused_by_name(tmp_path, capsys):
    for path, message in broken_configs(tmp_path).values():
        with pytest.raises(SystemExit) as exit_info:
            train.main(["--config", str(path), "--out", str(tmp_path / "run")])
        assert exit_info.value.code == 2
        assert f"--config {path}: {message}" in capsys.readouterr().err
    (tmp_path / "afile").write_text("")
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--out", str(tmp_path / "afile")])
    assert exit_info.value.code == 2
    assert f"--out {tmp_path / 'afile'}: a file, not a folder" in capsys.readouterr().err


def test_a_resumed_run_says_where_it_continues_and_recreates_a_deleted_log(tmp_path, capsys):
    argv = SMALL + ["--steps", "6", "--method", "full", "--save-every", "100", "--out", str(tmp_path)]
    train.main(argv + ["--stop-after", "4"])
    (tmp_path / "full" / "metrics.jsonl").unlink()
    capsys.readouterr()
    train.main(argv + ["--resume"])
    out = capsys.readouterr().out
    windows = 4 * 4  # 4 steps of 4 windows
    assert re.search(rf"full: resuming from {re.escape(str(tmp_path))}/full/checkpoints/step_00000004 at step 4 "
                     rf"of 6; data position: training window {windows} \(window {windows} of [\d,]+ in epoch 1, "
                     rf"{windows * 32} tokens read\)", out), out
    assert "metrics.jsonl is missing; a new one starts at step 5" in out
    assert [r["step"] for r in metrics(tmp_path / "full") if "loss" in r] == [5, 6]
    assert checkpoint_step(tmp_path / "full") == 6


def test_when_every_checkpoint_is_damaged_the_message_says_so(tmp_path, capsys):
    argv = SMALL + ["--steps", "6", "--method", "full", "--save-every", "2", "--out", str(tmp_path)]
    train.main(argv + ["--stop-after", "4"])
    for folder in (tmp_path / "full" / "checkpoints").iterdir():
        (folder / "manifest.json").unlink()
    capsys.readouterr()
    with pytest.raises(SystemExit, match="every checkpoint of full in .* is damaged .*`--resume if-exists` starts"):
        train.main(argv + ["--resume"])
    out = capsys.readouterr().out
    assert "falling back" not in out and "full: all 2 checkpoints are damaged" in out


def test_the_final_progress_bar_shows_the_last_evaluation(tmp_path, capsys):
    train.main(SMALL + ["--steps", "10", "--method", "full", "--out", str(tmp_path)])
    last = [r for r in metrics(tmp_path / "full") if "val_bpb" in r][-1]
    assert last["step"] == 10
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert f"val_bpb={last['val_bpb']:.3f}" in bar, bar


@pytest.mark.parametrize("flag,reason", [("--data", "no such file or directory"), ("--tokenizer", "no such file")])
def test_flags_checked_when_the_data_is_opened_are_named(tmp_path, flag, reason):
    (tmp_path / "c.txt").write_text("some text " * 50)
    data = ["--data", str(tmp_path / "c.txt")] if flag == "--tokenizer" else []
    missing = tmp_path / "nowhere.json"
    with pytest.raises(SystemExit, match=re.escape(f"sltrain-train: {flag} {missing}: {reason}")):
        train.main(SMALL + ["--steps", "1", "--method", "full", "--out", str(tmp_path)] + data + [flag, str(missing)])


def train_process(argv, out):
    """sltrain-train as a user runs it: a process of its own."""
    root = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, "-m", "sltrain_ext.train", *argv, "--out", str(out)], cwd=root,
                          capture_output=True, text=True, timeout=600)


def base_schedule(step, steps, warmup_steps, floor):
    """The schedule README states, written out again here: linear warm-up from one step's worth, then a
    cosine from the peak to `floor` at `steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / (steps - warmup_steps)))


def refitted_cosine(step, start, start_factor, steps, floor):
    return floor + (start_factor - floor) * 0.5 * (1 + math.cos(math.pi * (step - start) / (steps - start)))


def test_a_stopped_run_extended_to_more_steps_refits_its_decay_and_records_it(tmp_path):
    lr, floor = 1e-2, 0.1
    common = SMALL + ["--method", "full", "--lr", str(lr), "--warmup", "0.2", "--save-every", "100"]
    stopped = train_process(common + ["--steps", "10", "--stop-after", "4"], tmp_path)
    assert stopped.returncode == 0, stopped.stderr
    extended = train_process(common + ["--steps", "16", "--resume"], tmp_path)
    assert extended.returncode == 0, extended.stderr
    logged = [r["lr"] for r in metrics(tmp_path / "full") if "loss" in r]
    before = [lr * base_schedule(step, 10, 2, floor) for step in range(4)]
    at_extension = base_schedule(4, 10, 2, floor)
    after = [lr * refitted_cosine(step, 4, at_extension, 16, floor) for step in range(4, 16)]
    assert logged == pytest.approx(before + after)
    assert logged[4] == pytest.approx(lr * at_extension)  # no jump where the run was extended
    assert "--steps 16: full extended from step 4 of 10" in extended.stdout
    assert f"cosine decay from {at_extension:.6g} of the peak learning rate to 0.1 of it at step 16" in extended.stdout
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["settings"]["--steps"] == 16
    assert "warm-up over 2 steps" in record["derived"]["schedule"] and "at step 10" in record["derived"]["schedule"]
    [extension] = record["extensions"]
    assert extension["method"] == "full" and extension["from_step"] == 4
    assert (extension["steps_before"], extension["steps_after"]) == (10, 16)
    assert "at step 16" in extension["schedule_after"] and "at step 10" in extension["schedule_before"]

    shorter = train_process(common + ["--steps", "12", "--resume"], tmp_path)
    assert shorter.returncode == 2
    assert "--steps 12 is below the 16 steps of the run" in shorter.stderr and "Traceback" not in shorter.stderr


def test_a_finished_run_extended_goes_on_at_the_floor(tmp_path):
    lr, floor = 1e-2, 0.1
    common = SMALL + ["--method", "sltrain", "--lr", str(lr), "--warmup", "0.2"]
    assert train_process(common + ["--steps", "6"], tmp_path).returncode == 0
    extended = train_process(common + ["--steps", "9", "--resume"], tmp_path)
    assert extended.returncode == 0, extended.stderr
    logged = [r["lr"] for r in metrics(tmp_path / "sltrain") if "loss" in r]
    assert logged[6:] == pytest.approx([lr * floor] * 3)
    assert "from step 6: constant at the floor, 0.1 of the peak learning rate, to step 9" in extended.stdout
    assert [r["step"] for r in metrics(tmp_path / "sltrain") if "val_bpb" in r][-1] == 9
    assert json.loads((tmp_path / "sltrain" / "model" / "sltrain_config.json").read_text())


def test_an_extension_during_the_warm_up_keeps_its_length():
    schedule = LearningRateSchedule.fresh(steps=100, warmup_fraction=0.1, floor=0.1)
    extended = schedule.extended(from_step=5, total=200)
    assert [extended(step) for step in range(10)] == [schedule(step) for step in range(10)]
    assert extended(10) == 1.0 and extended(199) == pytest.approx(0.1, abs=1e-3)
    with pytest.raises(ValueError, match="cannot be shortened"):
        schedule.extended(from_step=50, total=90)


def test_the_summary_says_which_learning_rates_it_compares_and_where_they_come_from(tmp_path, capsys):
    train.main(SMALL + ["--steps", "1", "--method", "sltrain,full", "--out", str(tmp_path / "a")])
    out = capsys.readouterr().out
    (sltrain, source), (full, _) = configs.learning_rates("9m")["sltrain"], configs.learning_rates("9m")["full"]
    assert f"learning rates: sltrain {sltrain:g}, full {full:g} ({source})" in out
    assert "one seed, 1 steps of LLaMA-9m: a small gap may be noise" in out
    train.main(SMALL + ["--steps", "1", "--method", "full", "--lr", "0.02", "--out", str(tmp_path / "b")])
    out = capsys.readouterr().out
    assert "learning rates: full 0.02 (--lr)" in out and "one seed" not in out
    train.main(SMALL + ["--steps", "1", "--method", "lowrank", "--config", "20m", "--out", str(tmp_path / "c")])
    assert "learning rates: lowrank 0.003 (the SLTrain paper's)" in capsys.readouterr().out


def test_the_main_jobs_learning_rates_are_the_best_of_the_committed_sweep():
    sweep = json.loads((Path(__file__).resolve().parents[1] / "benchmarks/results/lr_sweep.json").read_text())
    main_job = train.parse_args([])
    assert sweep["steps"] == main_job.steps and set(sweep["methods"]) == set(main_job.methods)
    for method in main_job.methods:
        runs = [run for run in sweep["runs"] if run["method"] == method]
        best = min(runs, key=lambda run: run["val_bpb"])
        assert train.learning_rate(main_job, method) == best["lr"] == sweep["best"][method]["lr"]
        assert "benchmarks/results/lr_sweep.md" in train.learning_rate_source(main_job, method)
