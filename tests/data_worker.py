"""Run by tests/test_data.py under torchrun (gloo): each rank takes its share
of every global batch as sltrain-train does; rank 0 saves them all."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from sltrain_ext.shards import WindowSampler, open_prepared

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
sampler = WindowSampler(open_prepared(Path(sys.argv[1])).train, 32, seed=0)
mine = [sampler.batch(step * 8, 8, rank, world) for step in range(5)]
gathered = [None] * world
dist.all_gather_object(gathered, mine)
if rank == 0:
    torch.save(gathered, sys.argv[2])
dist.destroy_process_group()
