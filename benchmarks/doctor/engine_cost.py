"""What the built-in alert rules cost on the writer thread, per logged point.

Feeds one per-step `loss` series (the key most rules follow at every step) and, apart,
a flush window's worth of probe metrics every 10 steps, through an engine with the
built-in rules and through one with none, side by side in one process, in batches of
1,000 steps as the writer commits them; reports CPU microseconds per step.

    python benchmarks/doctor/engine_cost.py [--steps 200000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from trainspect.alerts import AlertEngine  # noqa: E402


def columns(steps: np.ndarray) -> dict:
    """The batch's columns: loss every step, and window metrics every 10th step."""
    rng = np.random.default_rng(int(steps[0]))
    loss = 1.0 / np.sqrt(steps + 1.0) * (1 + 0.05 * rng.standard_normal(steps.size))
    out = {"loss": [(steps, loss, np.zeros(steps.size))]}
    flush = steps[steps % 10 == 9]
    for key, value in (("text/ce", 2.0), ("text/acc", 0.5), ("text/conf_gap", -0.05),
                       ("text/ece", 0.05), ("text/supervised_tokens", 4096.0),
                       ("text/label_offset", 1.0), ("text/label_offset_share", 1.0),
                       ("grad/norm", 1.0), ("lora/total", 1.0), ("speed/tokens_per_s", 5e3)):
        out[key] = [(flush, np.full(flush.size, value), np.zeros(flush.size))]
    return out


def cost(engine: AlertEngine, n: int) -> float:
    """CPU microseconds per step for `n` steps through `engine`."""
    start = time.process_time()
    for first in range(0, n, 1000):
        engine.observe(columns(np.arange(first, first + 1000, dtype=np.int64)))
    return (time.process_time() - start) / n * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    none, rules = [], []
    for _ in range(args.rounds):  # alternate, so drifts of a shared machine hit both
        none.append(cost(AlertEngine([], console=False), args.steps))
        rules.append(cost(AlertEngine(console=False), args.steps))
    print(f"{args.steps} steps, median of {args.rounds} rounds, CPU us a step: "
          f"no rules {np.median(none):.1f}, built-in rules {np.median(rules):.1f} "
          f"({len(AlertEngine(console=False).rules)} rules)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
