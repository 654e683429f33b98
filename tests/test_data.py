"""Tokenizers, token shards and their use in training: deterministic,
resumable, memory-mapped, disjoint across ranks, and loud about bad input."""

import gzip
import hashlib
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sltrain_ext import shards, train
from sltrain_ext.prepare import main as prepare_main
from sltrain_ext.tokenization import (HFTokenizer, SentencePieceTokenizer, load_tokenizer, padded_vocab_size,
                                      train_bpe)

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--config", "9m", "--batch-size", "4", "--seq-len", "32", "--eval-every", "5", "--eval-batches", "2"]
WORDS = ("the quick brown fox jumps over the lazy dog while seven wizards quietly judge boxing matches "
         "under pale moonlight near ancient rivers and forgotten towns").split()


def documents(count, seed=0):
    """Varied English-like documents (different lengths, so shards cut mid-document)."""
    rng = np.random.default_rng(seed)
    return [f"Document {i}. " + " ".join(rng.choice(WORDS, size=int(rng.integers(5, 120)))) + "."
            for i in range(count)]


def write_jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def folder_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    return train_bpe(documents(300), 300, tmp_path_factory.mktemp("bpe") / "tokenizer.json")


# --- tokenizers -----------------------------------------------------------------------------------------------

def test_bpe_training_is_deterministic_and_round_trips(tmp_path, bpe):
    again = train_bpe(documents(300), 300, tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == Path(bpe.spec).read_bytes()
    assert bpe.vocab_size == 300 and bpe.sha256 == again.sha256
    text = "Document 7. The quick brown fox, naïvely: ünïcödé ✓"
    (ids,) = bpe.encode_batch([text])
    assert ids.max() < bpe.vocab_size and len(ids) < len(text.encode())  # merges were learned
    assert bpe.decode(ids) == text
    assert bpe.decode(bpe.separator) == "<|endoftext|>"


def test_a_hugging_face_tokenizer_json_loads_by_path(bpe):
    loaded = load_tokenizer(bpe.spec)
    assert isinstance(loaded, HFTokenizer) and loaded.sha256 == bpe.sha256
    assert [list(a) for a in loaded.encode_batch(["fox jumps"])] == [list(a) for a in bpe.encode_batch(["fox jumps"])]


def test_a_sentencepiece_model_loads_by_path(tmp_path):
    sentencepiece = pytest.importorskip("sentencepiece")
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(documents(200)), model_prefix=str(tmp_path / "sp"),
                                             vocab_size=80, model_type="unigram", minloglevel=2)
    tokenizer = load_tokenizer(tmp_path / "sp.model")
    assert isinstance(tokenizer, SentencePieceTokenizer) and tokenizer.vocab_size == 80
    (ids,) = tokenizer.encode_batch(["the lazy dog"])
    assert tokenizer.decode(ids) == "the lazy dog"
    assert tokenizer.separator == [tokenizer._backend.eos_id()]
    index = shards.prepare([write_jsonl(tmp_path / "c.jsonl", documents(60))], tmp_path / "out",
                           tokenizer=str(tmp_path / "sp.model"), progress=False)
    assert index["tokenizer"]["file"] == "tokenizer.model" and index["dtype"] == "uint16"
    assert shards.open_prepared(tmp_path / "out").tokenizer.sha256 == tokenizer.sha256


def test_vocabulary_is_padded_to_a_multiple_of_64():
    assert [padded_vocab_size(v) for v in (1, 64, 65, 256, 32100)] == [64, 64, 128, 256, 32128]


@pytest.mark.parametrize("spec,message", [("missing.json", "no such file"), ("tokenizer.txt", "unknown kind"),
                                          ("bad.json", "not a readable tokenizer.json")])
def test_bad_tokenizers_are_named(tmp_path, spec, message):
    (tmp_path / "tokenizer.txt").write_text("x")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=re.escape(f"--tokenizer {tmp_path / spec}") + ".*" + message):
        load_tokenizer(tmp_path / spec)


# --- preparing shards -----------------------------------------------------------------------------------------

def test_shards_hold_every_document_in_order_and_hold_out_whole_documents(tmp_path, bpe):
    texts = documents(100)
    index = shards.prepare([write_jsonl(tmp_path / "c.jsonl", texts)], tmp_path / "out", tokenizer=bpe.spec,
                           shard_tokens=500, validation_every=10, progress=False)
    corpus = shards.open_prepared(tmp_path / "out")
    separator = list(bpe.separator)
    for split, kept in (("train", [t for i, t in enumerate(texts) if i % 10 != 9]),
                        ("validation", [t for i, t in enumerate(texts) if i % 10 == 9])):
        expected = [i for ids in bpe.encode_batch(kept) for i in [*ids, *separator]]
        meta = index["splits"][split]
        assert meta["documents"] == len(kept) and meta["bytes"] == sum(len(t.encode()) for t in kept)
        assert meta["tokens"] == len(expected)
        assert all(s["tokens"] == 500 for s in meta["shards"][:-1]) and 0 < meta["shards"][-1]["tokens"] <= 500
        stream = getattr(corpus, split)
        assert all(isinstance(m, np.memmap) for m in stream._maps)  # read from disk, never loaded whole
        assert stream.read(0, stream.tokens).tolist() == expected
        assert stream.read(490, 20).tolist() == expected[490:510]  # across a shard end
    assert len(index["splits"]["train"]["shards"]) >= 4


def test_preparing_is_deterministic_whatever_the_number_of_workers(tmp_path, bpe, monkeypatch):
    monkeypatch.setattr(shards, "_CHUNK_BYTES", 2000)  # many tasks, so two workers interleave
    corpus = write_jsonl(tmp_path / "c.jsonl", documents(400))
    for name, workers in (("one", 1), ("two", 2)):
        shards.prepare([corpus], tmp_path / name, tokenizer=bpe.spec, shard_tokens=700, workers=workers,
                       progress=False)
    assert folder_bytes(tmp_path / "one") == folder_bytes(tmp_path / "two")
    trained = [shards.prepare([corpus], tmp_path / f"bpe{i}", vocab_size=280, shard_tokens=700, progress=False)
               for i in range(2)]
    assert trained[0] == trained[1] and folder_bytes(tmp_path / "bpe0") == folder_bytes(tmp_path / "bpe1")


def test_an_interrupted_preparation_continues_where_it_stopped(tmp_path, bpe, monkeypatch):
    monkeypatch.setattr(shards, "_CHUNK_BYTES", 1500)
    corpus = write_jsonl(tmp_path / "c.jsonl", documents(400))
    shards.prepare([corpus], tmp_path / "straight", tokenizer=bpe.spec, shard_tokens=600, progress=False)

    flush, written = shards._SplitWriter._flush, []

    def dies_at_the_fifth_shard(writer):
        if len(written) == 4:
            raise KeyboardInterrupt
        written.append(writer.name)
        flush(writer)

    monkeypatch.setattr(shards._SplitWriter, "_flush", dies_at_the_fifth_shard)
    with pytest.raises(KeyboardInterrupt):
        shards.prepare([corpus], tmp_path / "resumed", tokenizer=bpe.spec, shard_tokens=600, progress=False)
    monkeypatch.setattr(shards._SplitWriter, "_flush", flush)
    assert (tmp_path / "resumed" / shards.PROGRESS).exists() and not (tmp_path / "resumed" / shards.INDEX).exists()

    encoded = []
    original = HFTokenizer.encode_batch
    monkeypatch.setattr(HFTokenizer, "encode_batch", lambda self, texts: encoded.extend(texts) or original(self, texts))
    shards.prepare([corpus], tmp_path / "resumed", tokenizer=bpe.spec, shard_tokens=600, workers=1, progress=False)
    assert folder_bytes(tmp_path / "resumed") == folder_bytes(tmp_path / "straight")
    assert 0 < len(encoded) < 400  # the documents of finished shards were not tokenized again
    encoded.clear()
    shards.prepare([corpus], tmp_path / "resumed", tokenizer=bpe.spec, shard_tokens=600, workers=1, progress=False)
    assert encoded == []  # finished: nothing to do


def test_every_input_format_reads_the_same_documents(tmp_path, bpe):
    texts = documents(40)
    (tmp_path / "txt" / "sub").mkdir(parents=True)
    for i, text in enumerate(texts):
        (tmp_path / "txt" / ("sub" if i % 2 else "") / f"{i:03d}.txt").write_text(text)
    c4 = tmp_path / "c4" / "en"
    c4.mkdir(parents=True)
    for part in range(2):  # C4's layout: c4-train.0000N-of-01024.json.gz, a JSON object per line
        with gzip.open(c4 / f"c4-train.{part:05d}-of-01024.json.gz", "wt") as f:
            f.writelines(json.dumps({"text": t, "url": "u", "timestamp": "t"}) + "\n" for t in texts[part::2])
    inputs = {"txt": [tmp_path / "txt"], "jsonl": [write_jsonl(tmp_path / "c.jsonl", texts)], "c4": [tmp_path / "c4"]}
    try:
        import pyarrow
        import pyarrow.parquet as pq

        pq.write_table(pyarrow.table({"text": texts}), tmp_path / "c.parquet")
        inputs["parquet"] = [tmp_path / "c.parquet"]
    except ImportError:
        pass
    counts = {}
    for name, paths in inputs.items():
        index = shards.prepare(paths, tmp_path / f"out_{name}", tokenizer=bpe.spec, progress=False)
        counts[name] = (index["splits"]["train"]["documents"] + index["splits"]["validation"]["documents"],
                        index["splits"]["train"]["bytes"] + index["splits"]["validation"]["bytes"])
    assert set(counts.values()) == {(40, sum(len(t.encode()) for t in texts))}, counts


# --- sampling -------------------------------------------------------------------------------------------------

def test_each_window_comes_once_per_epoch_in_a_seeded_order(tmp_path):
    shards.prepare([write_jsonl(tmp_path / "c.jsonl", documents(200))], tmp_path / "out", tokenizer="byte",
                   shard_tokens=3000, progress=False)
    split = shards.open_prepared(tmp_path / "out").train
    sampler = shards.WindowSampler(split, 16, seed=3)
    stream = split.read(0, split.tokens)
    every_window = sorted(tuple(stream[s:s + 17]) for s in range(0, split.tokens - 16, 16))
    assert len(every_window) == sampler.count
    assert sorted(map(tuple, sampler.windows(0, sampler.count).tolist())) == every_window  # each once
    second_epoch = sampler.windows(sampler.count, sampler.count)
    assert not torch.equal(second_epoch, sampler.windows(0, sampler.count))
    assert torch.equal(shards.WindowSampler(split, 16, seed=3).windows(5, 7), sampler.windows(0, 12)[5:])
    assert not torch.equal(shards.WindowSampler(split, 16, seed=4).windows(0, 8), sampler.windows(0, 8))


def test_ranks_take_disjoint_slices_of_the_global_batch(tmp_path):
    """Two gloo processes, each asking for its own share, as sltrain-train does."""
    shards.prepare([write_jsonl(tmp_path / "c.jsonl", documents(200))], tmp_path / "out", tokenizer="byte",
                   progress=False)
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    str(ROOT / "tests" / "data_worker.py"), str(tmp_path / "out"), str(tmp_path / "batches.pt")],
                   check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
    per_rank = torch.load(tmp_path / "batches.pt")  # [rank][step] -> windows
    single = shards.WindowSampler(shards.open_prepared(tmp_path / "out").train, 32, seed=0)
    for step in range(len(per_rank[0])):
        a, b = per_rank[0][step], per_rank[1][step]
        assert a.shape == b.shape == (4, 33)
        assert not (a[:, None, :] == b[None, :, :]).all(-1).any()  # no window on both ranks
        assert torch.equal(torch.cat([a, b]), single.windows(step * 8, 8))  # together: the global batch


# --- training on shards ---------------------------------------------------------------------------------------

def test_training_reports_bits_per_byte_and_resume_continues_on_the_next_batch(tmp_path, bpe):
    corpus = write_jsonl(tmp_path / "c.jsonl", documents(300))
    data = ["--data", str(corpus), "--tokenizer", bpe.spec]
    argv = SMALL + data + ["--steps", "8", "--method", "full", "--save-every", "3"]
    train.main(argv + ["--out", str(tmp_path / "straight")])
    train.main(argv + ["--out", str(tmp_path / "resumed"), "--stop-after", "4"])
    train.main(argv + ["--out", str(tmp_path / "resumed"), "--resume"])
    records = [json.loads(line) for line in (tmp_path / "straight" / "full" / "metrics.jsonl").read_text().splitlines()]
    resumed = [json.loads(line) for line in (tmp_path / "resumed" / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in records if "loss" in r] == [r["loss"] for r in resumed if "loss" in r]
    prepared = shards.open_prepared(tmp_path / "straight" / "data")
    for record in (r for r in records if "val_loss" in r):
        ratio = prepared.validation.tokens / prepared.validation.bytes
        assert record["val_bpb"] == pytest.approx(record["val_loss"] * ratio / math.log(2))
    summary = json.loads((tmp_path / "straight" / "summary.json").read_text())
    assert summary["results"][0]["val_bpb"] == records[-1]["val_bpb"]

    with pytest.raises(SystemExit, match="another --seq-len"):
        train.main(SMALL + data + ["--steps", "8", "--method", "full", "--seq-len", "16",
                                   "--out", str(tmp_path / "resumed"), "--resume"])
    shards.prepare([write_jsonl(tmp_path / "other.jsonl", documents(300, seed=1))], tmp_path / "other",
                   tokenizer=bpe.spec, progress=False)
    with pytest.raises(SystemExit, match="another --data"):
        train.main(SMALL + ["--data", str(tmp_path / "other"), "--steps", "8", "--method", "full",
                            "--out", str(tmp_path / "resumed"), "--resume"])


def test_a_checkpoint_of_version_0_2_is_refused_with_a_reason(tmp_path):
    import torch.distributed.checkpoint as dcp

    from sltrain_ext import checkpointing

    with checkpointing._single_process_quiet():  # 0.2's trainer state: no data position
        dcp.save({"trainer": {"step": 2, "steps": 4}}, checkpoint_id=tmp_path / "full" / "checkpoint")
    with pytest.raises(SystemExit, match="written by sltrain_ext 0.2.*start the run again without --resume"):
        train.main(SMALL + ["--steps", "4", "--method", "full", "--out", str(tmp_path), "--resume"])


def test_a_prepared_folder_trains_with_the_vocabulary_of_its_tokenizer(tmp_path, bpe):
    shards.prepare([write_jsonl(tmp_path / "c.jsonl", documents(200))], tmp_path / "prepared", tokenizer=bpe.spec,
                   progress=False)
    train.main(SMALL + ["--data", str(tmp_path / "prepared"), "--steps", "2", "--method", "full",
                        "--out", str(tmp_path / "run")])
    config = json.loads((tmp_path / "run" / "full" / "model" / "sltrain_config.json").read_text())["llama_config"]
    assert config["vocab_size"] == padded_vocab_size(bpe.vocab_size) == 320
    assert not (tmp_path / "run" / "data").exists()  # used in place


# --- bad input ------------------------------------------------------------------------------------------------

def test_missing_and_empty_corpora_are_named(tmp_path):
    with pytest.raises(ValueError, match=f"--input {tmp_path / 'nowhere'}: no such file"):
        shards.prepare([tmp_path / "nowhere"], tmp_path / "out", tokenizer="byte", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="the folder has no .txt"):
        shards.prepare([tmp_path / "empty"], tmp_path / "out", tokenizer="byte", progress=False)
    (tmp_path / "empty" / "blank.txt").write_text("  \n\n ")
    with pytest.raises(ValueError, match="no text found"):
        shards.prepare([tmp_path / "empty"], tmp_path / "out", tokenizer="byte", progress=False)
    with pytest.raises(ValueError, match="needs at least 20 non-blank documents"):
        shards.prepare([write_jsonl(tmp_path / "few.jsonl", documents(5))], tmp_path / "few", tokenizer="byte",
                       progress=False)


def test_truncated_or_malformed_inputs_are_named(tmp_path):
    good = tmp_path / "c4.json.gz"
    with gzip.open(good, "wt") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in documents(300))
    cut = tmp_path / "cut.json.gz"
    cut.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
    with pytest.raises(ValueError, match=f"{cut}: truncated or corrupt gzip file"):
        shards.prepare([cut], tmp_path / "out", tokenizer="byte", progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "cut in the mid')
    with pytest.raises(ValueError, match=f"{bad}: line 2 is not a JSON object"):
        shards.prepare([bad], tmp_path / "out2", tokenizer="byte", progress=False)


def test_shards_that_do_not_match_their_index_are_named(tmp_path, bpe):
    out = tmp_path / "out"
    index = shards.prepare([write_jsonl(tmp_path / "c.jsonl", documents(200))], out, tokenizer=bpe.spec,
                           shard_tokens=1000, progress=False)
    first = out / index["splits"]["train"]["shards"][0]["file"]
    original = first.read_bytes()

    first.write_bytes(original[:-2])  # truncated
    with pytest.raises(ValueError, match=f"{first}: 1998 bytes, but index.json says 1000 uint16 tokens"):
        shards.open_prepared(out)
    first.unlink()
    with pytest.raises(ValueError, match=f"{first}: the shard is missing"):
        shards.open_prepared(out)

    first.write_bytes(b"\xff\xff" * 1000)  # right size, ids beyond the vocabulary
    with pytest.raises(ValueError, match=f"{first}: the shard does not match its SHA-256"):
        shards.open_prepared(out)
    sampler = shards.WindowSampler(shards.TokenShards(out, "train"), 32, 0, vocab_size=320)  # the last defence
    with pytest.raises(ValueError, match=f"{first}: token id 65535 is beyond the model's vocabulary of 320"):
        for position in range(0, sampler.count, 64):
            sampler.windows(position, 64)
    first.write_bytes(original)

    tokenizer = out / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text().replace('"fox"', '"f0x"', 1) + " ")
    with pytest.raises(ValueError, match="not the tokenizer the shards were made with"):
        shards.open_prepared(out)
    with pytest.raises(SystemExit, match="not the tokenizer the shards were made with"):
        train.main(SMALL + ["--data", str(out), "--steps", "1", "--method", "full", "--out", str(tmp_path / "r")])


def test_a_different_tokenizer_or_settings_never_overwrite_a_prepared_folder(tmp_path, bpe):
    corpus = write_jsonl(tmp_path / "c.jsonl", documents(200))
    shards.prepare([corpus], tmp_path / "out", tokenizer=bpe.spec, progress=False)
    before = folder_bytes(tmp_path / "out")
    with pytest.raises(ValueError, match="already holds shards prepared from other inputs or settings"):
        shards.prepare([corpus], tmp_path / "out", tokenizer="byte", progress=False)
    with pytest.raises(ValueError, match="already holds shards"):
        shards.prepare([corpus], tmp_path / "out", tokenizer=bpe.spec, shard_tokens=99, progress=False)
    assert folder_bytes(tmp_path / "out") == before
    shards.prepare([corpus], tmp_path / "bpe", vocab_size=280, progress=False)
    with pytest.raises(ValueError, match="tokenizer.json was trained with another --vocab-size"):
        shards.prepare([corpus], tmp_path / "bpe", vocab_size=290, progress=False)


def test_the_prepare_console_script_exits_0(tmp_path):
    module, function = re.search(r'"sltrain-prepare = ([\w.]+):(\w+)"', (ROOT / "setup.py").read_text()).groups()
    argv = ["--input", str(write_jsonl(tmp_path / "c.jsonl", documents(100))), "--out", str(tmp_path / "out"),
            "--vocab-size", "280", "--workers", "1"]
    script = f"import sys; from {module} import {function}; sys.argv[1:] = {argv!r}; sys.exit({function}())"
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "train:" in done.stdout and (tmp_path / "out" / "index.json").exists()
    with pytest.raises(SystemExit, match="sltrain-prepare: --input .*nowhere: no such file"):
        prepare_main(["--input", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")])


# --- damaged data (issue 20) ----------------------------------------------------------------------------------

@pytest.fixture
def prepared(tmp_path, bpe):
    out = tmp_path / "prepared"
    shards.prepare([write_jsonl(tmp_path / "c.jsonl", documents(300))], out, tokenizer=bpe.spec, shard_tokens=2000,
                   progress=False)
    return out


def flip_a_bit_keeping_the_file_times(path, position):
    """A bit flip that keeps every id within the vocabulary (the lowest bit
    of an even id) and sets the modification time back, as a silent disk
    error or a careless tool would."""
    before = path.stat()
    data = bytearray(path.read_bytes())
    position = next(i for i in range(position, len(data), 2) if data[i] % 2 == 0)
    data[position] ^= 1
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_a_bit_flip_that_keeps_ids_in_range_is_found_and_the_shard_named(prepared, tmp_path, capsys):
    shard = prepared / "train_000001.bin"
    flip_a_bit_keeping_the_file_times(shard, 100)
    with pytest.raises(SystemExit, match=f"{shard}: the shard does not match its SHA-256"):
        train.main(SMALL + ["--data", str(prepared), "--steps", "1", "--method", "full", "--out", str(tmp_path / "r")])
    index = json.loads((prepared / "index.json").read_text())
    with pytest.raises(SystemExit, match=f"{shard}: the shard does not match its SHA-256"):  # re-running prepare
        prepare_main(["--input", index["sources"][0]["path"], "--out", str(prepared), "--tokenizer",
                      str(prepared / "tokenizer.json"), "--shard-tokens", "2000", "--workers", "1"])
    with pytest.raises(SystemExit, match=f"--verify: {shard}: the shard does not match"):
        prepare_main(["--verify", "--out", str(prepared)])


def test_shards_are_hashed_once_per_file_state(prepared, monkeypatch, capsys):
    hashed = []
    real = shards.file_sha256
    monkeypatch.setattr(shards, "file_sha256", lambda path: hashed.append(Path(path).name) or real(path))
    count = len(list(prepared.glob("*.bin")))
    shards.open_prepared(prepared)
    assert sorted(n for n in hashed if n.endswith(".bin")) == sorted(p.name for p in prepared.glob("*.bin"))
    hashed.clear()
    shards.open_prepared(prepared)
    assert [n for n in hashed if n.endswith(".bin")] == []  # remembered
    (prepared / "train_000000.bin").touch()
    shards.open_prepared(prepared)
    assert [n for n in hashed if n.endswith(".bin")] == ["train_000000.bin"]  # only what changed
    hashed.clear()
    prepare_main(["--verify", "--out", str(prepared)])
    assert len([n for n in hashed if n.endswith(".bin")]) == count  # --verify hashes everything
    assert f"all {count} shards match index.json" in capsys.readouterr().out


def test_a_shard_whose_recorded_ids_exceed_the_vocabulary_is_refused_when_opened(prepared, tmp_path):
    index = json.loads((prepared / "index.json").read_text())
    index["splits"]["train"]["shards"][2]["max_id"] = 5000
    (prepared / "index.json").write_text(json.dumps(index))
    shard = prepared / index["splits"]["train"]["shards"][2]["file"]
    with pytest.raises(SystemExit, match=f"{shard}: its largest token id, 5000 \\(index.json\\), is beyond the "
                                         "vocabulary of 300"):
        train.main(SMALL + ["--data", str(prepared), "--steps", "1", "--method", "full", "--out", str(tmp_path / "r")])


def test_a_data_error_mid_run_says_which_checkpoint_is_intact(prepared, tmp_path):
    """A window drawn at step 4 holds an id beyond the vocabulary, in a shard
    whose index entry (checksum included) was rewritten to match it: the run
    stops there, naming the shard and the step-2 checkpoint to resume from."""
    corpus = shards.open_prepared(prepared)
    sampler = shards.WindowSampler(corpus.train, 32, 0)
    start = int(sampler._order(0, np.array([12]))[0]) * 32  # window 12: the first of step 4 (4 windows a step)
    path = corpus.train.file_at(start)
    offset = start - sum(f.stat().st_size // 2 for f in corpus.train.files[:corpus.train.files.index(path)])
    tokens = np.fromfile(path, dtype=np.uint16)
    tokens[offset] = 65535
    tokens.tofile(path)
    index = json.loads((prepared / "index.json").read_text())
    entry = next(s for s in index["splits"]["train"]["shards"] if s["file"] == path.name)
    entry["sha256"] = hashlib.sha256(tokens.tobytes()).hexdigest()
    (prepared / "index.json").write_text(json.dumps(index))
    out = tmp_path / "run"
    with pytest.raises(SystemExit, match=re.escape(f"{path}: token id 65535 is beyond the model's vocabulary of 320")
                       + ".*\n" + re.escape(f"the step-2 checkpoint {out / 'full' / 'checkpoints' / 'step_00000002'} "
                                            "is intact; once the cause is fixed, the same command with --resume")):
        train.main(SMALL + ["--data", str(prepared), "--steps", "6", "--method", "full", "--save-every", "2",
                            "--out", str(out)])


def test_an_index_without_splits_and_invalid_utf8_are_named(prepared, tmp_path):
    index = json.loads((prepared / "index.json").read_text())
    del index["splits"]
    (prepared / "index.json").write_text(json.dumps(index))
    with pytest.raises(SystemExit, match="index.json: incomplete, no 'splits' entry"):
        train.main(SMALL + ["--data", str(prepared), "--steps", "1", "--method", "full", "--out", str(tmp_path / "r")])
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"text": "fine"}\n{"text": "sch\xf6n"}\n')
    with pytest.raises(ValueError, match=f"{bad}: line 2 is not valid UTF-8 \\(byte 0xf6 at column 14\\)"):
        shards.prepare([bad], tmp_path / "out", tokenizer="byte", progress=False)


def test_sltrain_prepare_accepts_the_folder_sltrain_train_prepared_with_the_same_defaults(tmp_path):
    """Both train the BPE on the same default budget, so the recipes agree."""
    corpus = write_jsonl(tmp_path / "c.jsonl", documents(300))
    train.main(SMALL + ["--data", str(corpus), "--vocab-size", "280", "--steps", "1", "--method", "full",
                        "--out", str(tmp_path / "run")])
    index = prepare_main(["--input", str(corpus), "--out", str(tmp_path / "run" / "data"), "--vocab-size", "280"])
    assert index == json.loads((tmp_path / "run" / "data" / "index.json").read_text())


BAD_PREPARE_FLAGS = [
    (["--vocab-size", "100"], "--vocab-size must be at least 258"),
    (["--shard-tokens", "0"], "--shard-tokens must be at least 1"),
    (["--validation-every", "1"], "--validation-every must be at least 2"),
    (["--workers", "0"], "--workers must be at least 1"),
    (["--tokenizer-train-mb", "0"], "--tokenizer-train-mb must be above 0"),
    (["--tokenizer-train-mb", "nan"], "--tokenizer-train-mb must be a finite number"),
    (["--shard-tokens", "x"], "--shard-tokens: invalid int value"),
]


@pytest.mark.parametrize("argv,message", BAD_PREPARE_FLAGS, ids=[" ".join(a) for a, _ in BAD_PREPARE_FLAGS])
def test_every_prepare_flag_refuses_values_it_cannot_use(tmp_path, argv, message, capsys):
    corpus = write_jsonl(tmp_path / "c.jsonl", documents(30))
    with pytest.raises(SystemExit) as exit_info:
        prepare_main(["--input", str(corpus), "--out", str(tmp_path / "out"), *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_prepare_refuses_an_out_that_is_a_file_and_a_missing_input(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    for argv, message in ((["--input", "builtin", "--out", str(tmp_path / "afile")], "a file, not a folder"),
                          (["--out", str(tmp_path / "out")], "--input is required")):
        with pytest.raises(SystemExit) as exit_info:
            prepare_main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_resuming_on_data_with_another_vocabulary_names_data_and_a_missing_data_path_is_named(prepared, tmp_path):
    argv = SMALL + ["--steps", "4", "--method", "full", "--out", str(tmp_path / "run")]
    train.main(argv + ["--data", str(prepared), "--stop-after", "2"])
    shards.prepare([write_jsonl(tmp_path / "bytes.jsonl", documents(300))], tmp_path / "bytes", tokenizer="byte",
                   progress=False)
    with pytest.raises(SystemExit, match=r"another --data \(fingerprint: '\w+', now '\w+'; vocabulary: 300, now 256\)"):
        train.main(argv + ["--data", str(tmp_path / "bytes"), "--resume"])
    with pytest.raises(SystemExit, match=f"sltrain-train: --data {tmp_path / 'nowhere'}: no such file"):
        train.main(argv + ["--data", str(tmp_path / "nowhere")])
