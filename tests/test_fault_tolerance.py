"""Faults of a training run: non-finite gradients under --per-layer, a SIGKILL
in the middle of a save, and SIGTERM reaching one rank of two."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sltrain_ext import train
from sltrain_ext.preemption import PREEMPTED_EXIT_STATUS
from test_train import SMALL, NanGradient, checkpoint_step, metrics, poison_losses

ROOT = Path(__file__).resolve().parents[1]


def final_model(out, method="sltrain"):
    return load_file(out / method / "model" / "model.safetensors")


def assert_same_models(a, b):
    assert a.keys() == b.keys()
    for name, tensor in a.items():
        assert torch.equal(tensor, b[name]), name


def without_rates(records):
    """The training trajectory of the records: timings, memory and the global
    gradient norm (which --per-layer does not have) left out."""
    trajectory = ("step", "loss", "lr", "tokens", "skipped", "val_loss", "val_ppl", "val_bpb")
    return [{k: r[k] for k in trajectory if k in r} for r in records]


# ---- non-finite gradients under --per-layer ------------------------------------------


def poison_embedding_gradient(monkeypatch, calls_to_poison):
    """On the given training calls, a NaN in the embedding's gradient alone:
    the loss is finite and backward reaches the embedding last, so with
    --per-layer every other parameter has been updated when the NaN shows."""
    calls = {"n": 0}
    real = train.causal_lm_loss

    def causal_lm_loss(model, tokens, **kwargs):
        calls["n"] += 1
        if calls["n"] not in calls_to_poison:
            return real(model, tokens, **kwargs)
        embedding = model.model.embed_tokens
        hook = embedding.register_forward_hook(lambda module, args, out: out + NanGradient.apply(out))
        try:
            return real(model, tokens, **kwargs)
        finally:
            hook.remove()

    monkeypatch.setattr(train, "causal_lm_loss", causal_lm_loss)


@pytest.mark.parametrize("save_every", ["2", "100"], ids=["from-a-checkpoint", "from-step-0"])
def test_per_layer_replays_without_a_step_whose_gradient_turned_non_finite(tmp_path, monkeypatch, capsys,
                                                                           save_every):
    """The state after the bad step equals that of a run that skipped it
    before any update (the default mode, which checks every gradient first)."""
    common = SMALL + ["--steps", "5", "--method", "sltrain", "--max-grad-norm", "0", "--save-every", save_every]
    poison_embedding_gradient(monkeypatch, {3})
    train.main(common + ["--per-layer", "--out", str(tmp_path / "per_layer")])
    out = capsys.readouterr().out
    assert "step 3: a non-finite gradient after --per-layer had updated" in out
    assert "replay without step 3" in out
    monkeypatch.undo()
    poison_embedding_gradient(monkeypatch, {3})
    train.main(common + ["--out", str(tmp_path / "default")])
    records = metrics(tmp_path / "per_layer" / "sltrain")
    assert [r["step"] for r in records if "skipped" in r] == [3]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 4, 5]
    assert without_rates(records) == without_rates(metrics(tmp_path / "default" / "sltrain"))
    assert_same_models(final_model(tmp_path / "per_layer"), final_model(tmp_path / "default"))


def test_a_replay_in_a_resumed_command_keeps_its_stop_after_end(tmp_path, monkeypatch):
    """--stop-after 3 from step 3 ends at step 6, even when a replay starts
    again from the step-4 checkpoint this command wrote."""
    argv = SMALL + ["--steps", "10", "--method", "sltrain", "--per-layer", "--max-grad-norm", "0", "--save-every", "1",
                    "--stop-after", "3", "--out", str(tmp_path)]
    train.main(argv)
    poison_embedding_gradient(monkeypatch, {2})  # the second training call of the next command: step 5
    train.main(argv + ["--resume"])
    assert checkpoint_step(tmp_path / "sltrain") == 6
    assert [r["step"] for r in metrics(tmp_path / "sltrain") if "skipped" in r] == [5]


def test_per_layer_skips_a_non_finite_loss_or_gradients_before_any_update(tmp_path, monkeypatch, capsys):
    """A non-finite loss is seen before its backward, and a gradient that is
    non-finite from the first parameter on stops every update: no replay."""
    common = SMALL + ["--steps", "5", "--method", "sltrain", "--max-grad-norm", "0"]
    for folder, extra in (("per_layer", ["--per-layer"]), ("default", [])):
        monkeypatch.undo()
        poison_losses(monkeypatch, {2})
        poison_losses(monkeypatch, {4}, gradients_only=True)
        train.main(common + extra + ["--out", str(tmp_path / folder)])
    assert "replay" not in capsys.readouterr().out
    records = metrics(tmp_path / "per_layer" / "sltrain")
    assert [r["step"] for r in records if "skipped" in r] == [2, 4]
    assert without_rates(records) == without_rates(metrics(tmp_path / "default" / "sltrain"))
    assert_same_models(final_model(tmp_path / "per_layer"), final_model(tmp_path / "default"))


def test_per_layer_stops_after_too_many_bad_steps_with_the_last_good_checkpoint(tmp_path, monkeypatch):
    argv = SMALL + ["--steps", "8", "--method", "sltrain", "--per-layer", "--save-every", "2", "--max-bad-steps", "2",
                    "--out", str(tmp_path)]
    poison_losses(monkeypatch, {5, 6, 7, 8})
    with pytest.raises(SystemExit, match="2 consecutive steps up to step 6 had a non-finite loss"):
        train.main(argv)
    assert checkpoint_step(tmp_path / "sltrain") == 4


# ---- SIGKILL in the middle of a save ---------------------------------------------------


def wait_for(path, process, timeout=300):
    """Waits until `path` exists; fails if the process ends first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def wait_until_training(log, processes, lines=3, timeout=300):
    """Waits until `log` (a metrics.jsonl) holds `lines` records; fails if a
    process ends first or the time runs out."""
    deadline = time.monotonic() + timeout
    while not (log.exists() and len(log.read_text().splitlines()) >= lines):
        for process in processes:
            assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.02)


def test_sigkill_mid_save_resumes_from_the_previous_checkpoint_exactly(tmp_path):
    """A real process is killed while saving its step-6 checkpoint, its shards
    written but not its manifest: --resume continues from step 3 and ends
    where an uninterrupted run ends, bitwise."""
    common = SMALL + ["--steps", "8", "--method", "sltrain", "--save-every", "3"]
    killed = tmp_path / "killed"
    # The test hook of sltrain_ext/checkpointing.py holds the save of step 6 midway.
    env = dict(os.environ, SLTRAIN_TEST_HOLD_SAVE="6", PYTHONPATH=str(ROOT))
    process = subprocess.Popen([sys.executable, "-m", "sltrain_ext.train", *common, "--out", str(killed)],
                               cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    staging = killed / "sltrain" / "checkpoints" / "step_00000006.partial"
    try:
        wait_for(staging / "held", process)
    finally:
        process.kill()
        process.communicate()
    assert process.returncode == -signal.SIGKILL
    assert (staging / "__0_0.distcp").exists() and not (staging / "manifest.json").exists()
    assert checkpoint_step(killed / "sltrain") == 3

    train.main(common + ["--out", str(killed), "--resume"])
    assert checkpoint_step(killed / "sltrain") == 8
    assert not list((killed / "sltrain" / "checkpoints").glob("*.partial"))
    train.main(common + ["--out", str(tmp_path / "straight")])
    assert without_rates(metrics(killed / "sltrain")) == without_rates(metrics(tmp_path / "straight" / "sltrain"))
    assert_same_models(final_model(killed), final_model(tmp_path / "straight"))


# ---- SIGTERM to one rank of two ---------------------------------------------------------


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_sigterm_to_one_rank_stops_every_rank_at_one_step_with_a_checkpoint(tmp_path):
    """Two CPU processes (gloo), started with the environment torchrun gives
    its workers; only rank 1 gets SIGTERM. Both stop after the same step,
    write one checkpoint together and exit with status 75; it resumes."""
    argv = SMALL + ["--steps", "30", "--method", "sltrain", "--save-every", "1000", "--dist", "ddp",
                    "--out", str(tmp_path)]
    rendezvous = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2",
                  "LOCAL_WORLD_SIZE": "2", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    ranks = [subprocess.Popen([sys.executable, "-m", "sltrain_ext.train", *argv], cwd=ROOT,
                              env=dict(os.environ, **rendezvous, RANK=str(rank), LOCAL_RANK=str(rank)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in range(2)]
    try:
        wait_until_training(tmp_path / "sltrain" / "metrics.jsonl", ranks)
        ranks[1].send_signal(signal.SIGTERM)
        outputs = [rank.communicate(timeout=300) for rank in ranks]
    finally:
        for rank in ranks:
            rank.kill()
    assert [rank.returncode for rank in ranks] == [PREEMPTED_EXIT_STATUS] * 2, outputs[0][1][-3000:]
    step = checkpoint_step(tmp_path / "sltrain")
    assert 3 <= step < 30
    assert f"stopped by a signal on another rank after step {step} of 30" in outputs[0][0]
    assert [r["step"] for r in metrics(tmp_path / "sltrain") if "loss" in r] == list(range(1, step + 1))
    single = [a for a in argv if a not in ("--dist", "ddp")]
    train.main(single + ["--resume"])  # the world-size-2 checkpoint continues in one process
    assert checkpoint_step(tmp_path / "sltrain") == 30


def test_sigterm_to_the_launcher_ends_in_status_75_with_a_checkpoint(tmp_path):
    """What a scheduler does: SIGTERM to the launcher of two CPU ranks.
    sltrain-torchrun forwards it through torchrun (which alone would exit 1
    with its own SignalException) and exits with 75 once the workers have
    checkpointed."""
    argv = SMALL + ["--steps", "30", "--method", "sltrain", "--save-every", "1000", "--dist", "ddp",
                    "--out", str(tmp_path)]
    launcher = subprocess.Popen(
        [sys.executable, "-m", "sltrain_ext.launch", "--standalone", "--nproc-per-node", "2",
         "-m", "sltrain_ext.train", *argv], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_training(tmp_path / "sltrain" / "metrics.jsonl", [launcher])
        launcher.send_signal(signal.SIGTERM)
        _, err = launcher.communicate(timeout=300)
    finally:
        launcher.kill()
    assert launcher.returncode == PREEMPTED_EXIT_STATUS, err[-3000:]
    assert 3 <= checkpoint_step(tmp_path / "sltrain") < 30


# ---- a full disk ---------------------------------------------------------------------------


def run_command(argv):
    """sltrain-train in a fresh process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "sltrain_ext.train", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, PYTHONPATH=str(ROOT)))


FULL_DISK_RUN = SMALL + ["--steps", "6", "--method", "full", "--save-every", "2"]


@pytest.mark.parametrize("small_disk", ["3M"], indirect=True)
def test_a_disk_too_small_for_the_first_checkpoint_stops_before_writing_it(small_disk):
    """The 9m model's checkpoint (weights and both Adam moments, about 13 MB)
    cannot fit in 3 MB: the run says so before writing anything."""
    done = run_command(FULL_DISK_RUN + ["--out", str(small_disk / "run")])
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert re.search(r"not enough free space for the step-2 checkpoint in .*: it needs about 1\d\.\d MB, the disk "
                     r"has [0-3]\.\d MB free; nothing was written and there is no checkpoint", done.stderr), done.stderr
    assert not list((small_disk / "run" / "full" / "checkpoints").iterdir())


@pytest.mark.parametrize("small_disk", ["16M"], indirect=True)
def test_a_disk_that_fills_at_the_second_checkpoint_keeps_the_first(small_disk):
    out = small_disk / "run"
    done = run_command(FULL_DISK_RUN + ["--out", str(out)])
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert re.search(r"not enough free space for the step-4 checkpoint .* the step-2 checkpoint "
                     r".*step_00000002 is intact; free some space", done.stderr), done.stderr
    assert sorted(p.name for p in (out / "full" / "checkpoints").iterdir()) == ["step_00000002"]
    assert checkpoint_step(out / "full") == 2


@pytest.mark.parametrize("small_disk", ["3M"], indirect=True)
def test_a_save_that_fills_the_disk_is_removed_and_named(small_disk, monkeypatch):
    """Where the size is not known beforehand (here: the check told it is
    nothing), dcp.save runs into the full disk itself and raises its
    CheckpointException (torch.save's 'unexpected pos' RuntimeError inside):
    the message says the disk is full and the partial folder goes."""
    from sltrain_ext import checkpointing

    monkeypatch.setattr(checkpointing, "_bytes_to_write", lambda state: 0)
    out = small_disk / "run"
    with pytest.raises(SystemExit, match=r"could not write the step-2 checkpoint in .*: the disk is full \(0\.\d MB "
                                         r"free .*\); the partial checkpoint was removed and there is no checkpoint"):
        train.main(FULL_DISK_RUN + ["--out", str(out)])
    assert not list((out / "full" / "checkpoints").iterdir())


# ---- a preempted run of several methods ------------------------------------------------------


def test_a_preempted_two_method_run_continues_with_the_same_command(tmp_path, capsys):
    """SIGTERM while the first of two methods trains; the same command with
    --resume finishes it and starts the second, which has no checkpoint
    yet, from step 0, then writes the summary and the plot."""
    argv = SMALL + ["--method", "sltrain,full", "--steps", "24", "--eval-every", "12", "--save-every", "1000",
                    "--out", str(tmp_path)]
    process = subprocess.Popen([sys.executable, "-m", "sltrain_ext.train", *argv], cwd=ROOT,
                               env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_until_training(tmp_path / "sltrain" / "metrics.jsonl", [process])
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == PREEMPTED_EXIT_STATUS, err
    stopped_at = checkpoint_step(tmp_path / "sltrain")
    assert stopped_at < 24 and not (tmp_path / "full").exists()

    results = train.main(argv + ["--resume"])
    out = capsys.readouterr().out
    assert f"sltrain: resuming from {tmp_path / 'sltrain' / 'checkpoints'}/step_{stopped_at:08d}" in out
    assert f"full: no checkpoint in {tmp_path / 'full'}, starting from step 0" in out
    assert [(r["method"], r["steps"]) for r in results] == [("sltrain", 24), ("full", 24)]
    assert [r["step"] for r in metrics(tmp_path / "full") if "loss" in r] == list(range(1, 25))
    assert (tmp_path / "summary.json").exists() and (tmp_path / "loss_curves.png").exists()
