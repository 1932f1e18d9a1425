"""Token statistics on the GPU, in one run: the fused pass against the one-read floor,
the seeds' fp32 code and torch.compile of it (benchmarks/token_stats_kernel.py), then
the cost of `observe` at every step of a 0.5B model's training (observe_step.py).

    python benchmarks/token_stats.py [--skip-compile]

Results, command and device are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import observe_step  # noqa: E402
import token_stats_kernel  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return token_stats_kernel.main(argv) or observe_step.main([])


if __name__ == "__main__":
    sys.exit(main())
