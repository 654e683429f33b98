"""Recipes (`sltrain-train --recipe`): the shipped ones are the SLTrain
paper's runs, a user's file sets any flag, the command line overrides it,
run.json keeps it, and a bad one is refused naming the file and the key."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sltrain_ext import recipes, train
from sltrain_ext.schedule import LearningRateSchedule

ROOT = Path(__file__).resolve().parents[1]

# The original code's scripts/llm_pretrain/sltrain{60m,130m,350m,1b,7b}.sh: learning rate, rank, --sp_ratio,
# --lora_alpha, --num_training_steps, --warmup_steps, --grad_clipping, 8-bit Adam, and GPUs x --batch_size a GPU.
PAPER = {
    "60m": dict(lr=3e-3, rank=128, density=0.03, alpha=32, steps=11_000, warmup_steps=1_100, clip=0.0, bits=32,
                micro=(1, 256)),
    "130m": dict(lr=3e-3, rank=256, density=0.03, alpha=16, steps=22_000, warmup_steps=2_200, clip=0.0, bits=32,
                 micro=(1, 256)),
    "350m": dict(lr=3e-3, rank=256, density=0.03, alpha=16, steps=65_000, warmup_steps=6_500, clip=0.0, bits=32,
                 micro=(4, 128)),
    "1b": dict(lr=3e-3, rank=512, density=0.03, alpha=8, steps=140_000, warmup_steps=10_000, clip=0.0, bits=32,
               micro=(8, 32)),
    "7b": dict(lr=3e-3, rank=1024, density=0.05, alpha=8, steps=150_000, warmup_steps=15_000, clip=1.0, bits=8,
               micro=(8, 8)),
}


def test_every_size_of_the_paper_has_a_recipe():
    assert recipes.available() == list(PAPER)


@pytest.mark.parametrize("name", PAPER)
def test_a_shipped_recipe_parses_into_the_papers_settings(name):
    paper = PAPER[name]
    args = train.parse_args(["--recipe", name])
    assert args.llama.name == f"llama_{name}" and args.methods == ["sltrain"]
    assert (args.lr, args.rank, args.density, args.alpha) == (paper["lr"], paper["rank"], paper["density"],
                                                               paper["alpha"])
    assert args.steps == paper["steps"]
    assert LearningRateSchedule.fresh(args.steps, args.warmup, args.min_lr_ratio).warmup_steps == paper["warmup_steps"]
    assert (args.min_lr_ratio, args.weight_decay, args.max_grad_norm) == (0.1, 0.0, paper["clip"])
    assert (args.batch_size, args.seq_len, args.state_bits, args.dtype) == (512, 256, paper["bits"], torch.bfloat16)
    gpus, per_gpu = paper["micro"]
    assert args.batch_size // (gpus * args.accumulation) == per_gpu  # on the paper's number of GPUs
    # Every setting says where its value comes from.
    contents = json.loads((Path(recipes.__file__).parent / f"{name}.json").read_text())
    settings = {key for key in contents if key not in ("description", "notes")}
    assert set(contents["notes"]) == settings


def test_a_shipped_recipe_runs_end_to_end_with_the_command_line_overriding_it(tmp_path):
    tiny = ["--steps", "2", "--batch-size", "2", "--accumulation", "1", "--seq-len", "16", "--dtype", "float32",
            "--eval-every", "1", "--eval-batches", "1", "--out", str(tmp_path)]
    done = subprocess.run([sys.executable, "-m", "sltrain_ext.train", "--recipe", "60m", *tiny], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "run.json").read_text())
    shipped = Path(recipes.__file__).parent / "60m.json"
    assert record["recipe"]["path"] == str(shipped.resolve())
    assert record["recipe"]["sha256"] == hashlib.sha256(shipped.read_bytes()).hexdigest()
    assert record["recipe"]["contents"] == json.loads(shipped.read_text())
    assert record["recipe"]["overridden"] == sorted(["steps", "batch-size", "accumulation", "seq-len", "dtype",
                                                     "eval-every", "out"])
    settings = record["settings"]
    assert settings["--steps"] == 2 and settings["--rank"] == {"sltrain": 128} and settings["--lr"] == {
        "sltrain": 3e-3}
    assert settings["--config"]["hidden_size"] == 512 and settings["--max-grad-norm"] == 0.0
    assert [r["step"] for r in map(json.loads, (tmp_path / "sltrain" / "metrics.jsonl").read_text().splitlines())
            if "loss" in r] == [1, 2]


@pytest.mark.parametrize("suffix,text", [
    (".json", '{"method": "full", "steps": 3, "batch_size": 4, "seq-len": 32, "lr": 0.01, "per-layer": true,\n'
              ' "notes": {"lr": "mine"}}'),
    (".toml", 'method = "full"\nsteps = 3\nbatch_size = 4\nseq-len = 32\nlr = 0.01\nper-layer = true\n'
              '[notes]\nlr = "mine"\n'),
])
def test_a_users_recipe_sets_flags_in_either_spelling(tmp_path, suffix, text):
    path = tmp_path / f"mine{suffix}"
    path.write_text(text)
    args = train.parse_args(["--recipe", str(path), "--lr", "0.02"])
    assert (args.methods, args.steps, args.batch_size, args.seq_len, args.per_layer) == (["full"], 3, 4, 32, True)
    assert args.lr == 0.02  # the command line wins
    assert args.recipe_file.keys == {"method": "method", "steps": "steps", "batch_size": "batch_size",
                                     "seq_len": "seq-len", "per_layer": "per-layer"}


def write(tmp_path, text, name="bad.json"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text,message", [
    ('{"stepz": 3}', "unknown key 'stepz' (did you mean 'steps'?)"),
    ('{"steps": "3"}', "key 'steps' must be an integer, got \"3\""),
    ('{"lr": true}', "key 'lr' must be a number, got true"),
    ('{"per-layer": 1}', "key 'per-layer' must be true or false, got 1"),
    ('{"dtype": "half"}', "key 'dtype' must be one of auto, float32, bfloat16"),
    ('{"steps": 0}', "key 'steps': --steps must be at least 1, got 0"),
    ('{"density": 1.5}', "key 'density': --density must be in (0, 1]"),
    ('{"recipe": "60m"}', "key 'recipe': a recipe cannot name another recipe"),
    ('{"notes": "a string"}', "key 'notes' must be an object"),
    ('{"steps": 3,', "not valid JSON"),
    ('[1, 2]', "a recipe is a JSON object of flag: value, got list"),
])
def test_a_bad_recipe_is_refused_naming_the_file_and_the_key(tmp_path, capsys, text, message):
    path = write(tmp_path, text)
    with pytest.raises(SystemExit) as exit_:
        train.parse_args(["--recipe", path])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert f"--recipe {path}" in error and message in error, error


def test_a_bad_value_given_on_the_command_line_is_not_blamed_on_the_recipe(tmp_path, capsys):
    path = write(tmp_path, '{"steps": 4}')
    with pytest.raises(SystemExit):
        train.parse_args(["--recipe", path, "--stop-after", "9"])
    error = capsys.readouterr().err
    assert "--stop-after must be between 1 and --steps" in error and "--recipe" not in error.splitlines()[-1]


def test_a_missing_recipe_and_a_bad_toml_fail_as_a_user_sees_them(tmp_path):
    for argv, message in [(["--recipe", "9q"], "not a file, nor one of the shipped recipes 60m, 130m"),
                          (["--recipe", write(tmp_path, "steps = [", "bad.toml")], "not valid TOML")]:
        done = subprocess.run([sys.executable, "-m", "sltrain_ext.train", *argv], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
