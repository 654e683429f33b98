"""Multi-process training (DDP and FSDP2) on CPU processes with gloo, started by torchrun."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sltrain_ext import train

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--config", "9m", "--method", "sltrain", "--batch-size", "4", "--seq-len", "32", "--eval-every", "5",
         "--eval-batches", "2", "--steps", "10"]


def run_torchrun(processes, argv, succeed=True):
    """torchrun on CPU processes; a failure shows the workers' stderr (the
    launcher's own exit status alone says nothing of the cause)."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={processes}", *argv], env=env, cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=300)
    if succeed:
        assert done.returncode == 0, f"torchrun exited {done.returncode}:\n{done.stderr[-6000:]}"
    return done


def test_a_leader_that_cannot_prepare_the_data_stops_every_rank_with_its_error(tmp_path):
    # Only rank 0 prepares raw --data; the other rank used to wait at a
    # barrier for the default 30 minutes after rank 0 had failed.
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "empty.txt").write_text("")
    done = run_torchrun(2, ["-m", "sltrain_ext.train", "--dist", "ddp", "--data", str(corpus), "--steps", "1",
                            "--out", str(tmp_path / "run")], succeed=False)
    assert done.returncode != 0
    assert f"sltrain-train: --data {corpus}: no text found" in done.stderr, done.stderr[-3000:]
    assert f"sltrain-train: rank 0: --data {corpus}: no text found" in done.stderr, done.stderr[-3000:]


def torchrun(processes, argv, dist="ddp"):
    run_torchrun(processes, ["-m", "sltrain_ext.train", "--dist", dist, *argv])


@pytest.mark.parametrize("per_layer", [False, True])
def test_fsdp2_sharded_sladamw_equals_single_process(tmp_path, per_layer):
    import fsdp_worker

    run_torchrun(2, [str(ROOT / "tests" / "fsdp_worker.py"), str(tmp_path / "fsdp.pt")]
                 + (["--per-layer"] if per_layer else []))
    sharded = torch.load(tmp_path / "fsdp.pt")
    single = fsdp_worker.train(fsdp_worker.make_model(), sharded=False, per_layer=per_layer)
    for name, param in single.named_parameters():
        torch.testing.assert_close(sharded[name], param.detach(), rtol=1e-5, atol=1e-5, msg=name)


def final_model(out):
    return load_file(out / "sltrain" / "model" / "model.safetensors")


def assert_models_close(a, b, tolerance=1e-4):
    assert a.keys() == b.keys()
    for name, tensor in a.items():
        torch.testing.assert_close(tensor, b[name], rtol=tolerance, atol=tolerance, msg=name)


@pytest.mark.parametrize("dist,extra", [("ddp", []), ("ddp", ["--state-bits", "8"]), ("fsdp", []),
                                        ("fsdp", ["--per-layer", "--accumulation", "2"])],
                         ids=["ddp", "ddp-8bit", "fsdp", "fsdp-per-layer"])
def test_two_processes_equal_a_single_process(tmp_path, dist, extra):
    torchrun(2, SMALL + extra + ["--out", str(tmp_path / dist)], dist=dist)
    train.main(SMALL + extra + ["--out", str(tmp_path / "single")])
    # A rounding difference can move an 8-bit state by one code: a fraction of one lr-sized step.
    tolerance = 1e-3 if "8" in extra else 1e-4
    assert_models_close(final_model(tmp_path / dist), final_model(tmp_path / "single"), tolerance)


@pytest.mark.parametrize("dist", ["ddp", "fsdp"])
def test_a_world_size_2_checkpoint_resumes_in_one_process(tmp_path, dist):
    torchrun(2, SMALL + ["--out", str(tmp_path / "resumed"), "--stop-after", "5"], dist=dist)
    train.main(SMALL + ["--out", str(tmp_path / "resumed"), "--resume"])
    train.main(SMALL + ["--out", str(tmp_path / "straight")])
    assert_models_close(final_model(tmp_path / "resumed"), final_model(tmp_path / "straight"))


def test_fsdp2_resumes_bitwise_and_reads_a_single_process_checkpoint(tmp_path):
    torchrun(2, SMALL + ["--out", str(tmp_path / "straight")], dist="fsdp")
    torchrun(2, SMALL + ["--out", str(tmp_path / "resumed"), "--stop-after", "5"], dist="fsdp")
    torchrun(2, SMALL + ["--out", str(tmp_path / "resumed"), "--resume"], dist="fsdp")
    straight, resumed = final_model(tmp_path / "straight"), final_model(tmp_path / "resumed")
    assert straight.keys() == resumed.keys()
    for name, tensor in straight.items():
        assert torch.equal(tensor, resumed[name]), name
    train.main(SMALL + ["--out", str(tmp_path / "from_one"), "--stop-after", "5"])
    torchrun(2, SMALL + ["--out", str(tmp_path / "from_one"), "--resume"], dist="fsdp")
    train.main(SMALL + ["--out", str(tmp_path / "single")])
    assert_models_close(final_model(tmp_path / "from_one"), final_model(tmp_path / "single"))


def test_distributed_flags_need_torchrun_and_refuse_what_cannot_work(monkeypatch, capsys):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(SystemExit):
        train.main(["--dist", "ddp"])
    assert "runs under torchrun" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    for argv, message in ((["--dist", "ddp", "--per-layer"], "--per-layer cannot be combined with --dist ddp"),
                          (["--dist", "fsdp", "--state-bits", "8"], "--state-bits 8 cannot be combined"),
                          (["--dist", "fsdp", "--state-bits", "4"], "--state-bits 4 cannot be combined")):
        with pytest.raises(SystemExit):
            train.main(argv)
        assert message in capsys.readouterr().err
