"""`torchrun --nproc_per_node N -m tests.integrations.nccl_sharded_play <runs> <setup>...`:
sharded_play.py's Hugging Face Llama setups on CUDA with NCCL (run by
test_multigpu_sharded.py). The loop runs under `torch.cuda.set_sync_debug_mode("warn")`;
each rank writes the synchronising calls made from trainspect's own files to
<runs>/syncs.<rank>.json (FSDP2 and tensor parallelism may sync on their own: those are
not ours to count)."""

from __future__ import annotations

import json
import os
import sys
import traceback
import warnings

import torch
import torch.distributed as dist

from tests.integrations.sharded_play import play


def main() -> None:
    runs, setups = sys.argv[1], sys.argv[2:]
    local = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local)
    dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    ours: list[str] = []
    try:
        for setup in setups:
            torch.cuda.set_sync_debug_mode("warn")
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    play(dist.get_rank(), dist.get_world_size(), setup, runs,
                         device=f"cuda:{local}")
            finally:
                torch.cuda.set_sync_debug_mode(0)
            ours += [f"{setup}: {w.filename}:{w.lineno}" for w in caught
                     if "synchroniz" in str(w.message)
                     and f"trainspect{os.sep}" in w.filename]
    except BaseException:
        # torchrun's own report keeps only the exit code: the test shows this file
        with open(os.path.join(runs, f"error.{dist.get_rank()}.txt"), "w") as f:
            f.write(traceback.format_exc())
        raise
    finally:
        with open(os.path.join(runs, f"syncs.{dist.get_rank()}.json"), "w") as f:
            json.dump(ours, f)
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
