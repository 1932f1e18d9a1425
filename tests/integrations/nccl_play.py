"""`torchrun --nproc_per_node 2 -m tests.integrations.nccl_play`: the two-rank scenario of
test_distributed.py on CUDA with NCCL (run by test_multigpu.py)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from tests.integrations.test_distributed import play


def main() -> None:
    local = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local)
    dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    torch.cuda.set_sync_debug_mode("error")  # the hot path and the flush never sync
    try:
        play(dist.get_rank(), dist.get_world_size(), "dual", 0.1, f"cuda:{local}")
    finally:
        torch.cuda.set_sync_debug_mode(0)
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
