"""The LLaMA configurations of the SLTrain paper (and GaLore before it), with
SLTrain's per-size defaults, shipped as JSON: ``llama_60m.json`` and so on."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PAPER_LEARNING_RATES", "LlamaConfig", "available", "learning_rates", "load"]

_DIR = Path(__file__).parent

# Peak learning rates of the SLTrain paper's runs (full-rank: GaLore's baseline, which the paper compares with).
PAPER_LEARNING_RATES = {"full": 1e-3, "lowrank": 3e-3, "sltrain": 3e-3}


@dataclass(frozen=True)
class LlamaConfig:
    name: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    vocab_size: int
    max_position_embeddings: int
    rms_norm_eps: float
    tie_word_embeddings: bool
    rank: int
    alpha: float
    density: float

    def linear_shapes(self) -> dict[tuple[int, int], int]:
        """(out, in) -> count of the projections SLTrain replaces: q, k, v, o, gate, up, down."""
        h, i, layers = self.hidden_size, self.intermediate_size, self.num_hidden_layers
        return {(h, h): 4 * layers, (i, h): 2 * layers, (h, i): layers}

    def parameter_numels(self, sltrain: bool) -> list[int]:
        """Element counts of every trainable tensor: embeddings, head, norms, and
        per projection either its weight or SLTrain's A, B and values."""
        h = self.hidden_size
        numels = [self.vocab_size * h] + ([] if self.tie_word_embeddings else [self.vocab_size * h])
        numels += [h] * (2 * self.num_hidden_layers + 1)
        for (m, n), count in self.linear_shapes().items():
            per_matrix = [self.rank * n, m * self.rank, round(self.density * m * n)] if sltrain else [m * n]
            numels += per_matrix * count
        return numels

    def dense_parameters(self) -> int:
        """Parameters outside the replaced projections: embeddings, head, norms."""
        h = self.hidden_size
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return self.vocab_size * h + head + (2 * self.num_hidden_layers + 1) * h

    def full_rank_parameters(self) -> int:
        return self.dense_parameters() + sum(m * n * c for (m, n), c in self.linear_shapes().items())

    def sltrain_parameters(self, rank: int | None = None, density: float | None = None) -> int:
        """Trainable parameters with every projection as SLLinear (no biases)."""
        rank = self.rank if rank is None else rank
        density = self.density if density is None else density
        per_shape = (rank * (m + n) + round(density * m * n) for (m, n) in self.linear_shapes())
        return self.dense_parameters() + sum(p * c for p, c in zip(per_shape, self.linear_shapes().values()))

    def sltrain_nnz(self, density: float | None = None) -> int:
        density = self.density if density is None else density
        return sum(round(density * m * n) * c for (m, n), c in self.linear_shapes().items())


def available() -> list[str]:
    """Config names, smallest first: '9m', '20m', ..., '7b'."""
    names = [p.stem.removeprefix("llama_") for p in _DIR.glob("llama_*.json")]
    return sorted(names, key=lambda n: float(n[:-1]) * (1000 if n.endswith("b") else 1))


def _read(name: str) -> dict:
    path = Path(name)
    if not path.suffix:
        path = _DIR / f"llama_{name.lower().removeprefix('llama_')}.json"
    if not path.exists():
        raise ValueError(f"unknown config {name!r}: choose one of {available()} or give a JSON path")
    return json.loads(path.read_text())


def learning_rates(name: str) -> dict[str, tuple[float, str]]:
    """Each method's default peak learning rate for a config, and where it
    comes from: the config's `learning_rates` (with `learning_rates_source`
    saying how they were chosen) where it has them, else the paper's."""
    raw = _read(name)
    chosen = raw.get("learning_rates", {})
    if not isinstance(chosen, dict) or any(method not in PAPER_LEARNING_RATES for method in chosen):
        raise ValueError(f"'learning_rates' must map methods of {', '.join(PAPER_LEARNING_RATES)} to numbers")
    for method, lr in chosen.items():
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr >= 0):
            raise ValueError(f"'learning_rates' of {method} must be a finite number >= 0, got {lr!r}")
    source = str(raw.get("learning_rates_source", "the config's"))
    return {method: (float(chosen[method]), source) if method in chosen else (paper, "the SLTrain paper's")
            for method, paper in PAPER_LEARNING_RATES.items()}


def load(name: str) -> LlamaConfig:
    """A config by name ('60m', 'llama_60m', '1B') or by path to a JSON file of the same form."""
    raw = _read(name)
    sltrain = raw.get("sltrain", {})
    return LlamaConfig(
        name=raw["name"], hidden_size=raw["hidden_size"], intermediate_size=raw["intermediate_size"],
        num_hidden_layers=raw["num_hidden_layers"], num_attention_heads=raw["num_attention_heads"],
        vocab_size=raw["vocab_size"], max_position_embeddings=raw["max_position_embeddings"],
        rms_norm_eps=raw["rms_norm_eps"], tie_word_embeddings=raw["tie_word_embeddings"],
        rank=sltrain.get("rank", 128), alpha=sltrain.get("alpha", 32.0), density=sltrain.get("density", 0.03),
    )
