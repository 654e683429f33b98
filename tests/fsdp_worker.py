"""Run by test_distributed.py under torchrun: a few SLAdamW steps of a small SL
model sharded with FSDP2 (fully_shard), parameters written by rank 0.

    fsdp_worker.py OUT [--per-layer]
"""

import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard

import sltrain_ext as sl
from sltrain_ext.launch import exit_without_finalizing


def make_model():
    torch.manual_seed(0)
    model = nn.Sequential(sl.SLLinear(16, 64, 4, 0.2, seed=1), nn.GELU(), sl.SLLinear(64, 8, 4, 0.2, seed=2))
    for layer in (model[0], model[2]):
        nn.init.normal_(layer.B, std=0.1)
    return model


def batches():
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 16, generator=gen), torch.randn(8, 8, generator=gen)) for _ in range(5)]


def train(model, sharded: bool, per_layer: bool = False):
    rank, world = (dist.get_rank(), dist.get_world_size()) if sharded else (0, 1)
    optimizer = sl.SLAdamW(model.parameters(), lr=1e-2, weight_decay=0.1, per_layer=per_layer,
                           max_grad_norm=0.5 if per_layer else None)
    for x, target in batches():
        share = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
        nn.functional.mse_loss(model(x[share]), target[share]).backward()
        if per_layer:  # the hooks updated every parameter inside backward, gradients freed
            unused = [name for name, p in model.named_parameters() if p.grad is not None]
            assert not unused, f"per-layer hooks did not run for {unused}"
        optimizer.step()
        optimizer.zero_grad()
    return model


def main():
    dist.init_process_group("gloo")
    model = make_model()
    for layer in (model[0], model[2]):
        fully_shard(layer)
    fully_shard(model)
    train(model, sharded=True, per_layer="--per-layer" in sys.argv)
    full = {name: p.full_tensor() for name, p in model.named_parameters()}
    if dist.get_rank() == 0:
        torch.save(full, sys.argv[1])
    dist.destroy_process_group()


if __name__ == "__main__":
    exit_without_finalizing(main)
