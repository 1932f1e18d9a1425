"""`torchrun --nproc_per_node 2 -m tests.integrations.zero_play <runs> <setup>...`: DeepSpeed
setups of sharded_play.py one after the other in one launch (DeepSpeed's import and its CPU
accelerator's start-up are paid once), for test_sharded.py."""

from __future__ import annotations

import sys

import torch.distributed as dist

from tests.integrations.sharded_play import play


def main() -> None:
    runs, setups = sys.argv[1], sys.argv[2:]
    dist.init_process_group("gloo")
    try:
        for setup in setups:
            play(dist.get_rank(), dist.get_world_size(), setup, runs)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
