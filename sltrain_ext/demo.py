"""A first run: train a small next-character model with SL layers and with
dense layers on the CPU, and compare them.

    python -m sltrain_ext.demo [--steps 1500]

The text is the Python standard library's own source, which every Python
installation ships: real text that this project did not write. The last 10 %
of it is held out for the perplexity.
"""

from __future__ import annotations

import argparse
import math
import sysconfig
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from .nn import SLLinear
from .optim import SLAdamW

CONTEXT = 16


def load_corpus(max_bytes: int = 4_000_000) -> torch.Tensor:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    chunks, size = [], 0
    for path in sorted(stdlib.glob("*.py")):
        data = path.read_bytes()
        chunks.append(data)
        size += len(data)
        if size >= max_bytes:
            break
    if size < 100_000:
        raise RuntimeError(f"found only {size} bytes of Python source under {stdlib}")
    return torch.frombuffer(bytearray(b"".join(chunks)), dtype=torch.uint8).long()


class CharModel(nn.Module):
    def __init__(self, sl_layers: bool, width: int = 512, rank: int = 64, density: float = 0.05) -> None:
        super().__init__()
        self.embed = nn.Embedding(256, 32)

        def linear(n_in: int, n_out: int) -> nn.Module:
            return SLLinear(n_in, n_out, rank, density, alpha=32) if sl_layers else nn.Linear(n_in, n_out)

        self.body = nn.Sequential(linear(32 * CONTEXT, width), nn.GELU(), linear(width, width), nn.GELU())
        self.head = nn.Linear(width, 256)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.embed(context).flatten(1)))


def batches(data: torch.Tensor, batch: int, generator: torch.Generator):
    while True:
        start = torch.randint(0, data.numel() - CONTEXT - 1, (batch,), generator=generator)
        offsets = start[:, None] + torch.arange(CONTEXT + 1)
        window = data[offsets]
        yield window[:, :-1], window[:, -1]


@torch.no_grad()
def held_out_perplexity(model: nn.Module, data: torch.Tensor, batches_to_use: int = 20) -> float:
    generator = torch.Generator().manual_seed(1234)
    stream = batches(data, 512, generator)
    loss = sum(nn.functional.cross_entropy(model(x), y).item() for x, y in (next(stream) for _ in range(batches_to_use)))
    return math.exp(loss / batches_to_use)


def train(name: str, sl_layers: bool, train_data, test_data, steps: int, seed: int) -> dict:
    torch.manual_seed(seed)
    model = CharModel(sl_layers)
    optimizer = SLAdamW(model.parameters(), lr=3e-3)
    stream = batches(train_data, 256, torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    progress = tqdm(range(steps), desc=name, unit="step", mininterval=0.5)
    for _ in progress:
        x, y = next(stream)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        progress.set_postfix(loss=f"{loss.item():.3f}")
    seconds = time.perf_counter() - start
    trainable = sum(p.numel() for p in model.body.parameters())
    return {"name": name, "perplexity": held_out_perplexity(model, test_data), "body_params": trainable,
            "seconds": seconds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500, help="training steps per model (default 1500)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")

    data = load_corpus()
    split = int(0.9 * data.numel())
    print(f"corpus: {data.numel():,} bytes of Python standard-library source ({split:,} train)")
    results = [train(name, sl_layers, data[:split], data[split:], args.steps, args.seed)
               for name, sl_layers in (("SLTrain", True), ("dense", False))]
    print(f"\n{'model':<8} {'hidden-layer params':>20} {'held-out perplexity':>20} {'train time':>11}")
    for r in results:
        print(f"{r['name']:<8} {r['body_params']:>20,} {r['perplexity']:>20.3f} {r['seconds']:>10.1f}s")


if __name__ == "__main__":
    main()
