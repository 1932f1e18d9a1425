"""The recipes in docs/integrations.md run as written: the torchrun one on two CPU ranks
(gloo), the Accelerate one in one process; each stores the global batch's token counts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import trainspect as ts  # noqa: E402
from tests.integrations.ranks import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "integrations.md"



def recipe(name: str) -> str:
    """The ```python block after `<!-- recipe: name -->` in the docs."""
    found = re.search(rf"<!-- recipe: {name} -->\s*```python\n(.*?)```", DOCS.read_text(),
                      re.DOTALL)
    assert found, f"no recipe {name!r} in {DOCS}"
    return found.group(1)


def launch(tmp_path, runs, name: str, *launcher: str) -> ts.RunView:
    script = tmp_path / f"recipe_{name}.py"  # not accelerate.py: it would shadow the package
    script.write_text(recipe(name))
    env = {**os.environ, "TRAINSPECT_DIR": str(runs), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    done = subprocess.run([sys.executable, *launcher, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (view,) = ts.open(runs).runs()  # one run, whatever the number of ranks
    assert view.status == "finished"
    return view


def test_the_torchrun_recipe_pools_two_ranks(runs, tmp_path):
    view = launch(tmp_path, runs, "torchrun", "-m", "torch.distributed.run",
                  "--nproc_per_node", "2", "--master_port", str(free_port()))
    # each window: 5 steps x 2 ranks x 4 sequences x 15 supervised positions
    assert view.series("text/supervised_tokens") == [(s, 600.0) for s in (5, 10, 15, 20)]
    assert view.config == {"world": 2}
    for rank in (0, 1):
        assert len(view.series(f"speed/rank{rank}/step_s")) == 3  # from the second flush on
        assert len(view.series(f"speed/rank{rank}/late_s")) == 4
    assert "grad/norm" in view.keys() and len(view.series("loss")) == 20


def test_the_accelerate_recipe_observes_every_micro_batch(runs, tmp_path):
    import accelerate  # noqa: F401 - the dev extra installs it
    view = launch(tmp_path, runs, "accelerate")
    # 8 micro-batches of 4 x 15 positions, 2 per step, windows of 2 steps
    assert view.series("text/supervised_tokens") == [(2, 240.0), (4, 240.0)]
    assert [s for s, _ in view.series("loss")] == [1, 2, 3, 4]
