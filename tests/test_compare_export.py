"""sltrain-compare and sltrain-export on real (tiny) runs of sltrain-train."""

import json
import os
import shutil
import sys

import pytest
import torch

from sltrain_ext import compare, export, load_pretrained, train
from sltrain_ext.tokenization import load_tokenizer

BATCH, SEQ = 2, 32
TINY = ["--config", "9m", "--batch-size", str(BATCH), "--seq-len", str(SEQ), "--eval-batches", "1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished runs (one with every method, one with another seed and
    learning rate) and one stopped before its first evaluation."""
    root = tmp_path_factory.mktemp("runs")
    train.main(TINY + ["--method", "sltrain,lowrank,full", "--steps", "4", "--eval-every", "2", "--out", str(root / "a")])
    train.main(TINY + ["--method", "sltrain", "--steps", "4", "--eval-every", "2", "--lr", "1e-2", "--seed", "1",
                       "--out", str(root / "b")])
    train.main(TINY + ["--method", "sltrain", "--steps", "4", "--eval-every", "4", "--stop-after", "1",
                       "--out", str(root / "stopped")])
    return root


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_compare_overlays_every_method_of_every_run_against_tokens_seen(runs, tmp_path, capsys):
    plot = tmp_path / "comparison.png"
    curves = compare.main([str(runs / "a"), str(runs / "b"), "--plot", str(plot)])
    assert [(c.run.name, c.method) for c in curves] == [("a", "full"), ("a", "lowrank"), ("a", "sltrain"),
                                                        ("b", "sltrain")]
    table = capsys.readouterr().out.splitlines()
    for curve, row in zip(curves, table[1:]):
        evaluations = [r for r in records(curve.run / curve.method / "metrics.jsonl") if "val_bpb" in r]
        assert curve.tokens == [r["step"] * BATCH * SEQ for r in evaluations]
        assert curve.bpb == [r["val_bpb"] for r in evaluations]
        summary = json.loads((curve.run / "summary.json").read_text())
        result = next(r for r in summary["results"] if r["method"] == curve.method)
        # run, method, final bpb, perplexity, parameters, tokens/s, peak memory (not recorded on the CPU)
        assert row.split() == [curve.run.name, curve.method, f"{result['val_bpb']:.4f}", f"{result['val_ppl']:.3f}",
                               f"{result['parameters']:,}", f"{result['tokens_per_s']:,.0f}", "-"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_single_run_is_titled_with_its_model_methods_data_and_tokens(runs):
    run = compare.read_run(runs / "a")
    title = compare._title(run, compare.curves(run))
    assert "LLaMA-9m" in title and "full, lowrank, sltrain" in title and "builtin" in title
    assert f"{4 * BATCH * SEQ:,} tokens ({BATCH} x {SEQ} a step)" in title


def test_compare_reads_a_log_whose_last_line_was_torn_by_a_kill(runs, tmp_path):
    run = tmp_path / "torn"
    shutil.copytree(runs / "b", run)
    with (run / "sltrain" / "metrics.jsonl").open("a") as log:
        log.write('{"step": 5, "lo')
    [curve] = compare.main([str(run), "--plot", str(tmp_path / "plot.png")])
    assert curve.final_bpb == records(runs / "b" / "sltrain" / "metrics.jsonl")[-1]["val_bpb"]


@pytest.mark.parametrize("case", ["missing", "empty", "stopped", "unfinished", "bad summary", "bad line",
                                  "plot folder"])
def test_compare_names_what_is_wrong(runs, tmp_path, capsys, case):
    run, plot = tmp_path / "run", tmp_path / "plot.png"
    if case in ("unfinished", "bad summary", "bad line"):
        shutil.copytree(runs / "b", run)
    if case == "unfinished":  # killed before the end, by a version whose records had no tokens seen
        (run / "summary.json").unlink()
        log = run / "sltrain" / "metrics.jsonl"
        log.write_text("".join(json.dumps({k: v for k, v in json.loads(line).items() if k != "tokens"}) + "\n"
                               for line in log.read_text().splitlines()))
    if case == "empty":
        run.mkdir()
    if case == "stopped":
        run = runs / "stopped"
    if case == "bad summary":
        (run / "summary.json").write_text("[1, 2")
    if case == "bad line":
        lines = (run / "sltrain" / "metrics.jsonl").read_text().splitlines()
        (run / "sltrain" / "metrics.jsonl").write_text("\n".join(lines[:1] + ["not json"] + lines[1:]) + "\n")
    if case == "plot folder":
        run, plot = runs / "a", tmp_path / "absent" / "plot.png"
    expected = {"missing": f"{run}: no such folder", "empty": f"{run} is not a run of sltrain-train",
                "stopped": f"{run / 'sltrain' / 'metrics.jsonl'} has no held-out evaluation",
                "unfinished": f"{run / 'summary.json'} does not exist (the run has not finished)",
                "bad summary": f"{run / 'summary.json'}: not a summary",
                "bad line": f"{run / 'sltrain' / 'metrics.jsonl'}, line 2", "plot folder": f"--plot {plot}"}[case]
    with pytest.raises(SystemExit) as exit:
        compare.main([str(run), "--plot", str(plot)])
    assert exit.value.code == 2
    assert expected in capsys.readouterr().err
    assert not plot.exists()


@pytest.mark.parametrize("method", ["sltrain", "lowrank", "full"])
def test_the_export_loads_in_transformers_with_our_logits_and_tokenizer(runs, tmp_path, method):
    transformers = pytest.importorskip("transformers")
    export.main([str(runs / "a"), "--method", method, "--hf", str(tmp_path / "hf")])
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    ours = load_pretrained(runs / "a" / method / "model").eval()
    tokens = torch.randint(0, ours.config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, ours(tokens), rtol=1e-5, atol=1e-5)
    # the modes of any folder and file made under the umask (0755 and 0644 under 022), not mkdtemp's or
    # safetensors' 0700 and 0600 that others could not read
    umask = os.umask(0o022)
    os.umask(umask)
    assert {p.name: p.stat().st_mode & 0o777 for p in [tmp_path / "hf", *(tmp_path / "hf").iterdir()]} == {
        "hf": 0o777 & ~umask, **{name: 0o666 & ~umask for name in
                                 ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")}}
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "def merge(model):\n    return model  # SLTrain"
    trained_with = load_tokenizer(tmp_path / "hf" / "tokenizer.json")
    assert tokenizer(text).input_ids == trained_with.encode_batch([text])[0].tolist()
    assert [tokenizer.eos_token_id] == trained_with.separator == [hf.config.eos_token_id]


def test_keep_sparse_writes_the_sl_form_that_load_pretrained_reads(runs, tmp_path):
    export.main([str(runs / "b"), "--hf", str(tmp_path / "sparse"), "--keep-sparse"])
    assert sorted(p.name for p in (tmp_path / "sparse").iterdir()) == [
        "model.safetensors", "sltrain_config.json", "tokenizer.json", "tokenizer_config.json"]
    loaded, trained = load_pretrained(tmp_path / "sparse"), load_pretrained(runs / "b" / "sltrain" / "model")
    assert hasattr(loaded, "sltrain_settings")
    for (name, tensor), (_, expected) in zip(loaded.state_dict().items(), trained.state_dict().items()):
        assert torch.equal(tensor, expected), name


@pytest.mark.parametrize("case", ["several methods", "absent method", "not empty", "stopped", "data"])
def test_export_names_what_is_wrong_and_writes_nothing(runs, tmp_path, capsys, case):
    out = tmp_path / "out"
    argv = {"several methods": [str(runs / "a")], "absent method": [str(runs / "b"), "--method", "lowrank"],
            "not empty": [str(runs / "b")], "stopped": [str(runs / "stopped")],
            "data": [str(runs / "b"), "--data", str(tmp_path)]}[case]
    expected = {"several methods": "choose one with --method",
                "absent method": f"--method lowrank: {runs / 'b' / 'lowrank' / 'model'} does not exist",
                "not empty": f"--hf {out}: exists and is not an empty folder",
                "stopped": "the run has not finished", "data": f"{tmp_path} (--data) holds no index.json"}[case]
    if case == "not empty":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit:
        export.main(argv + ["--hf", str(out)])
    assert expected in str(exit.value.code)
    if case == "not empty":
        assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    else:
        assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == (["out"] if case == "not empty" else [])


def test_export_of_a_run_killed_after_its_first_method_needs_the_data_folder_named(runs, tmp_path, capsys):
    run = tmp_path / "killed"
    shutil.copytree(runs / "a", run)
    (run / "summary.json").unlink()  # written only once every method has finished
    shutil.rmtree(run / "full" / "model")
    with pytest.raises(SystemExit) as exit:
        export.main([str(run), "--method", "sltrain", "--hf", str(tmp_path / "hf")])
    assert f"{run / 'summary.json'} does not exist" in exit.value.code and "--data" in exit.value.code
    data = export.data_folder(compare.read_run(runs / "a"), None)
    export.main([str(run), "--method", "sltrain", "--hf", str(tmp_path / "hf"), "--data", str(data)])
    assert (tmp_path / "hf" / "tokenizer.json").read_bytes() == (data / "tokenizer.json").read_bytes()


@pytest.mark.parametrize("tokenizer", ["byte", "sentencepiece"])
def test_a_run_on_raw_files_exports_its_tokenizer_as_it_can(tmp_path, tokenizer):
    """Byte-level: no file to copy, no single end-of-document token; a
    SentencePiece model: copied as tokenizer.model with its eos id."""
    transformers = pytest.importorskip("transformers")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(40):
        (corpus / f"doc{i}.txt").write_text(f"document {i}: " + "the quick brown fox jumps over the lazy dog. " * 5)
    spec = "byte"
    if tokenizer == "sentencepiece":
        sentencepiece = pytest.importorskip("sentencepiece")
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=(path.read_text() for path in sorted(corpus.iterdir())),
            model_prefix=str(tmp_path / "sp"), vocab_size=44, model_type="unigram", minloglevel=2)
        spec = str(tmp_path / "sp.model")
    run = tmp_path / "run"  # the raw files are prepared into run/data, where the export finds them
    train.main(TINY + ["--method", "sltrain", "--steps", "2", "--data", str(corpus), "--tokenizer", spec,
                       "--out", str(run)])
    export.main([str(run), "--hf", str(tmp_path / "hf")])
    files = sorted(p.name for p in (tmp_path / "hf").iterdir())
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    if tokenizer == "byte":
        assert files == ["config.json", "model.safetensors"]
        assert hf.config.eos_token_id is None  # documents end with two bytes, a blank line
    else:
        assert files == ["config.json", "model.safetensors", "tokenizer.model"]
        assert (tmp_path / "hf" / "tokenizer.model").read_bytes() == (tmp_path / "sp.model").read_bytes()
        assert [hf.config.eos_token_id] == load_tokenizer(tmp_path / "sp.model").separator
    tokens = torch.tensor([[5, 17, 3, 42, 9, 11]])
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, load_pretrained(run / "sltrain" / "model")(tokens),
                                   rtol=1e-5, atol=1e-5)


def test_without_transformers_the_export_says_what_to_install_or_keep_sparse(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # what `import transformers` meets when it is absent
    with pytest.raises(SystemExit) as exit:
        export.main([str(runs / "b"), "--hf", str(tmp_path / "hf")])
    assert "install transformers" in exit.value.code and "--keep-sparse" in exit.value.code
    assert not (tmp_path / "hf").exists()
    export.main([str(runs / "b"), "--hf", str(tmp_path / "hf"), "--keep-sparse"])
    assert (tmp_path / "hf" / "sltrain_config.json").is_file()
