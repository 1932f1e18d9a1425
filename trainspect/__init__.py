"""trainspect: see what a model is really learning while it trains.

    import trainspect as ts
    with ts.init(project="qwen-lora", config=vars(args)) as run:
        run.log({"loss": loss, "lr": lr}, step=step)

`ts.open(dir)` reads runs back (`ts.open("postgresql://...")` from a team store).
Torch is imported only by the parts that need it.
"""

from __future__ import annotations

from trainspect.errors import TrainspectError
from trainspect.records import Alert, Matrix, SampleRow, Scalar
from trainspect.run import Run, init
from trainspect.store.backends import open
from trainspect.store.reader import Reader, RunView

__version__ = "0.1.0"

__all__ = [
    "Alert",
    "FixedEval",
    "Matrix",
    "Reader",
    "Run",
    "RunView",
    "SampleRow",
    "Scalar",
    "TrainspectError",
    "__version__",
    "init",
    "linear_cross_entropy",
    "open",
]


def __getattr__(name: str):
    """`ts.FixedEval` and `ts.linear_cross_entropy` without importing torch until used."""
    if name == "FixedEval":
        from trainspect.eval.dataset import FixedEval

        return FixedEval
    if name == "linear_cross_entropy":
        from trainspect.probes.linear_ce import linear_cross_entropy

        return linear_cross_entropy
    raise AttributeError(f"module 'trainspect' has no attribute {name!r}")
