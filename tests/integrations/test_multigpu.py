"""Two GPUs, NCCL, torchrun: the same numbers as one GPU for the same global batch.

Run where two CUDA devices are: python -m pytest -q -m multigpu tests/integrations/test_multigpu.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.integrations.ranks import free_port  # noqa: E402
from tests.integrations.test_distributed import _views, check_same_as_one_process, play  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.multigpu,
    pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                       reason="needs 2 CUDA devices"),
]


def test_two_gpus_over_nccl_store_what_one_gpu_stores(runs):
    play(0, 1, "single", device="cuda:0")
    env = {**os.environ, "TRAINSPECT_DIR": str(runs),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", str(free_port()), "-m", "tests.integrations.nccl_play"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    check_same_as_one_process(runs)
    view = _views(runs)["dual"]
    late = {r: [v for _, v in view.series(f"speed/rank{r}/late_s")] for r in (0, 1)}
    assert sum(late[1]) > sum(late[0])  # rank 1 sleeps 0.1 s a step: it comes last
