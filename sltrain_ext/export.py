"""Export a finished run of sltrain-train for Hugging Face ``transformers``: ``sltrain-export``.

    sltrain-export runs/main --method sltrain --hf exported/
    python -c "import transformers; transformers.AutoModelForCausalLM.from_pretrained('exported')"

Writes ``config.json`` (a ``transformers`` LlamaConfig), ``model.safetensors``
with every SLTrain or low-rank projection merged into its dense weight
W = s * B @ A + S, and the run's tokenizer. ``--keep-sparse`` writes the SL
form instead (``sltrain_ext.load_pretrained`` loads it). Our LlamaForCausalLM
uses HF's module names, so the merged tensors keep their names.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from safetensors.torch import save_file

from .compare import SUMMARY, Run, RunError, read_run
from .convert import merge
from .corpus import BUILTIN, builtin_tag, cache_dir
from .llama import LlamaForCausalLM
from .prepare import BUILTIN_VOCAB
from .pretrained import _new_file_mode, load_pretrained, save_pretrained
from .shards import INDEX, read_index
from .tokenization import load_tokenizer, padded_vocab_size

__all__ = ["hf_config", "export", "main", "cli"]

ROPE_THETA = 10000.0  # llama.rotary_tables' base


def hf_config(model: LlamaForCausalLM, eos_token_id: int | None):
    """The ``transformers.LlamaConfig`` of the same network: multi-head (not
    grouped) attention, SiLU, no biases, rotary base 10000, and an untied
    head (llama.LlamaForCausalLM always has its own ``lm_head``)."""
    import inspect

    from transformers import LlamaConfig

    ours = model.config
    # transformers 5 takes the rotary base in rope_parameters, earlier versions as rope_theta
    rope = ({"rope_parameters": {"rope_type": "default", "rope_theta": ROPE_THETA}}
            if "rope_parameters" in inspect.signature(LlamaConfig.__init__).parameters else {"rope_theta": ROPE_THETA})
    return LlamaConfig(
        vocab_size=ours.vocab_size, hidden_size=ours.hidden_size, intermediate_size=ours.intermediate_size,
        num_hidden_layers=ours.num_hidden_layers, num_attention_heads=ours.num_attention_heads,
        num_key_value_heads=ours.num_attention_heads, head_dim=ours.hidden_size // ours.num_attention_heads,
        hidden_act="silu", max_position_embeddings=ours.max_position_embeddings, rms_norm_eps=ours.rms_norm_eps,
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
        bos_token_id=None, eos_token_id=eos_token_id, pad_token_id=None,
        architectures=["LlamaForCausalLM"], dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
        **rope)


def data_folder(run: Run, named: Path | None) -> Path:
    """The prepared data folder the run trained on (where sltrain-train's
    --data put it), or ``named`` (export's --data) where that is not found."""
    if named is not None:
        folder, source = named, "--data"
    elif run.summary is None:
        raise RunError(f"{run.folder / SUMMARY} does not exist (a method of the run has not finished), so its "
                       "--data is unknown: name the prepared data folder it used with --data")
    elif run.flags.data == BUILTIN:
        # as prepare.training_corpus names the cached built-in corpus
        try:
            tag = (f"bpe{run.flags.vocab_size or BUILTIN_VOCAB}" if run.flags.tokenizer is None
                   else load_tokenizer(run.flags.tokenizer).sha256[:16])
        except (OSError, ValueError) as error:
            raise RunError(f"the run's --tokenizer {run.flags.tokenizer} cannot be read here ({error}): name the "
                           "prepared data folder it used with --data") from None
        folder, source = cache_dir() / f"builtin_{builtin_tag()}_{tag}", "the built-in corpus's cache"
    elif (Path(run.flags.data) / INDEX).is_file():
        folder, source = Path(run.flags.data), "the run's --data"
    else:
        folder, source = run.folder / "data", "the run's prepared copy of its --data"
    if not (folder / INDEX).is_file():
        raise RunError(f"{folder} ({source}) holds no {INDEX}: name the prepared data folder the run used "
                       "with --data")
    return folder


def copy_tokenizer(folder: Path, model: LlamaForCausalLM, out: Path) -> tuple[str, int | None]:
    """Copies the run's tokenizer into ``out``; what was copied, in words, and
    the end-of-document token id (None where the separator is several tokens)."""
    recorded = read_index(folder)["tokenizer"]
    tokenizer = load_tokenizer(recorded["file"] if recorded["file"] == "byte" else folder / recorded["file"])
    if tokenizer.sha256 != recorded["sha256"]:
        raise RunError(f"{tokenizer.spec}: not the tokenizer {folder / INDEX} records (its SHA-256 differs)")
    if padded_vocab_size(tokenizer.vocab_size) != model.config.vocab_size:
        raise RunError(f"{folder}: its tokenizer has {tokenizer.vocab_size:,} tokens, the model "
                       f"{model.config.vocab_size:,} rows: not the data this run trained on; name it with --data")
    eos = tokenizer.separator[0] if len(tokenizer.separator) == 1 else None
    if recorded["file"] == "byte":
        return "no tokenizer file: the run used UTF-8 bytes as token ids", eos
    source = folder / recorded["file"]
    if source.suffix == ".json":
        shutil.copyfile(source, out / "tokenizer.json")
        from tokenizers import Tokenizer

        config = {"tokenizer_class": "PreTrainedTokenizerFast",
                  "model_max_length": model.config.max_position_embeddings}
        if eos is not None:
            config["eos_token"] = Tokenizer.from_file(str(source)).id_to_token(eos)
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        return f"{source} as tokenizer.json, with a tokenizer_config.json for AutoTokenizer", eos
    shutil.copyfile(source, out / "tokenizer.model")
    return f"{source} as tokenizer.model (a SentencePiece model; no tokenizer_config.json written)", eos


def export(run_folder: Path, out: Path, method: str | None = None, keep_sparse: bool = False,
           data: Path | None = None) -> list[str]:
    """Writes the run's ``method`` model to ``out`` (a new folder), merged
    for ``transformers`` or, with ``keep_sparse``, in the SL form; returns
    what was written, a line each. RunError names what is wrong."""
    run = read_run(run_folder)
    trained = [m for m in run.methods if (run.method_folder(m) / "model").is_dir()]
    if not trained:
        raise RunError(f"{run.folder} holds no final model (<method>/model): the run has not finished; "
                       "finish it with sltrain-train --resume")
    if method is None:
        if len(trained) > 1:
            raise RunError(f"{run.folder} holds the final models of {', '.join(trained)}: choose one with --method")
        method = trained[0]
    elif method not in trained:
        raise RunError(f"--method {method}: {run.method_folder(method) / 'model'} does not exist "
                       f"(this run's final models: {', '.join(trained)})")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunError(f"--hf {out}: exists and is not an empty folder; choose a new one")
    if not keep_sparse and not _transformers_installed():
        raise RunError("--hf writes a transformers LlamaConfig: install transformers (pip install transformers), "
                       "or keep the SL form with --keep-sparse")
    try:
        model = load_pretrained(run.method_folder(method) / "model")
    except (OSError, ValueError) as error:
        raise RunError(str(error)) from None
    folder = data_folder(run, data)
    out.parent.mkdir(parents=True, exist_ok=True)
    # written beside OUT under a new name and renamed: the folder appears whole or not at all
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        written = _write(model, method, folder, partial, keep_sparse)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    file_mode = _new_file_mode()
    partial.chmod(file_mode | (file_mode & 0o444) >> 2)  # mkdtemp's 0700 -> a new folder's mode (0755 under umask 022)
    if out.exists():
        out.rmdir()
    partial.rename(out)
    return written + [f"written to {out}"]


def _transformers_installed() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def _write(model: LlamaForCausalLM, method: str, data: Path, out: Path, keep_sparse: bool) -> list[str]:
    tokenizer_note, eos = copy_tokenizer(data, model, out)
    if keep_sparse:
        save_pretrained(model, out)
        written = [f"{method} in the SL form (sltrain_config.json, model.safetensors): "
                   "sltrain_ext.load_pretrained(folder) loads it"]
    else:
        merge(model)
        hf_config(model, eos).save_pretrained(out)
        save_file({name: t.contiguous() for name, t in model.state_dict().items()}, str(out / "model.safetensors"),
                  metadata={"format": "pt"})
        (out / "model.safetensors").chmod(_new_file_mode())  # safetensors writes 0600 whatever the umask
        written = [f"{method}, merged to dense weights: config.json (LlamaConfig), model.safetensors"]
    return written + [f"tokenizer: {tokenizer_note}"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sltrain-export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, metavar="RUN", help="the --out folder of a finished sltrain-train run")
    parser.add_argument("--hf", type=Path, required=True, metavar="OUT", help="a new folder to write")
    parser.add_argument("--method", help="the method to export, where the run trained several")
    parser.add_argument("--keep-sparse", action="store_true",
                        help="keep the SL form (factors, sparse values, support) instead of merging")
    parser.add_argument("--data", type=Path,
                        help="the prepared data folder the run used, where it is not where the run left it")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    try:
        written = export(args.run, args.hf, args.method, args.keep_sparse, args.data)
    except RunError as error:
        raise SystemExit(f"sltrain-export: {error}") from None
    print("\n".join(written))
    return args.hf


def cli() -> None:
    """The ``sltrain-export`` console script (exit status 0 on success)."""
    main()


if __name__ == "__main__":
    cli()
