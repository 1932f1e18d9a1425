"""`trainspect demo`: check the arguments, say what is loading, then run the session.

The first line is printed before torch and transformers are imported: on a fresh
install that import alone can take a minute, and a silent terminal looks hung. The
session (`session.py`) prepares the data and model, trains with progress bars and
prints what the model learned; the training itself (`train.py`) only logs to the run.
"""

from __future__ import annotations

import time

from trainspect.errors import TrainspectError

DEFAULT_STEPS = 700  # about 2 minutes on 2 idle CPU cores with every probe on (~6 steps/s)


def run_demo(steps: int | None = None, dir: str | None = None, ui: bool = False,
             seed: int = 0, plant_faults: bool = False) -> int:
    """Train the demo model for `steps` (default `DEFAULT_STEPS`) into a new run; exit code."""
    steps = DEFAULT_STEPS if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise TrainspectError(f"expected `--steps` to be a positive int, got {steps!r}")
    print("trainspect demo: loading torch, transformers and peft (the first start after an "
          "install can take a minute) ...", flush=True)
    started = time.perf_counter()
    try:
        from trainspect.demo import session
    except ImportError as err:
        raise TrainspectError(
            f"the demo needs torch, transformers, peft, tokenizers and tqdm ({err.name} is "
            "missing): pip install 'trainspect[demo]'") from err
    print(f"  loaded in {time.perf_counter() - started:.1f}s; generating the data, training "
          "a tokenizer, building the model ...", flush=True)
    return session.run(steps, dir, ui, seed, plant_faults)
