"""FSDP2 and tensor parallelism over NCCL on a small Hugging Face Llama: `watch` stores what
one process computes for the same global batch (sharded_play.py's float64 reference,
1e-5 relative), and trainspect's own code makes no synchronising call (sync-debug mode).

Run where two (or four) CUDA devices are:
    python -m pytest -q -m multigpu tests/integrations/test_multigpu_sharded.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch  # noqa: E402

from tests.integrations.ranks import free_port  # noqa: E402
from tests.integrations.test_sharded import check_against_reference, stored  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.multigpu,
    pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                       reason="needs 2 CUDA devices"),
]


def torchrun(runs: Path, gpus: int, *setups: str) -> None:
    runs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TRAINSPECT_DIR": str(runs),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(gpus),
         "--master_port", str(free_port()), "-m", "tests.integrations.nccl_sharded_play",
         str(runs), *setups], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    errors = "".join(f.read_text() for f in sorted(runs.glob("error.*.txt")))
    assert done.returncode == 0, errors + done.stdout[-3000:] + done.stderr[-3000:]
    for rank in range(gpus):
        assert json.loads((runs / f"syncs.{rank}.json").read_text()) == [], rank
    for setup in setups:
        check_against_reference(stored(runs, setup), setup)


def test_fsdp2_and_tensor_parallel_on_two_gpus(runs):
    torchrun(runs, 2, "llama_fsdp2", "llama_tp")


@pytest.mark.skipif(torch.cuda.device_count() < 4, reason="needs 4 CUDA devices")
def test_fsdp2_with_tensor_parallel_on_four_gpus(runs):
    torchrun(runs, 4, "llama_fsdp2_tp")
