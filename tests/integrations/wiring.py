"""The run.py wiring that trainspect.distributed needs, patched in until run.py has it.

The integration brief asks the lead to add three calls to `Run` (see docs/integrations.md,
"Distributed"): a `RankSync` made in `__init__` (non-writers get the null writer), `agree`
and `parts` around the flush's parts, and `final_flush_ok` in `finish`. Once run.py has
them, `wire()` does nothing; this file can then be deleted.
"""

from __future__ import annotations

from typing import Any

from trainspect import run as run_module
from trainspect.distributed import RankSync

Run = run_module.Run


def wired() -> bool:
    return "_ranks" in Run._flush_device.__code__.co_names


def wire() -> None:
    """Give `Run` the distributed wiring (idempotent; a no-op once run.py has it)."""
    if wired():
        return
    original_init = Run.__init__
    original_open = Run._open_writer

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        self._ranks = RankSync()
        original_init(self, *args, **kwargs)

    def _open_writer(self: Any, attempt: int) -> Any:
        if not self._ranks.writes:
            return run_module._NullWriter()
        return original_open(self, attempt)

    def _flush_device(self: Any) -> None:
        if getattr(self, "_skip_flush", False):
            return
        try:
            probes = self._ranks.agree(self, list(self._probes.values()))
            parts = [self._probe_part(p) for p in probes]
            parts.extend(self._tensor_parts())
            parts = self._ranks.parts(self, [p for p in parts if p is not None])
            job = self._flusher.start(parts)
            for probe in list(self._probes.values()):
                try:
                    probe.reset()
                except Exception as err:
                    self.probe_failed(probe.name, "reset", err)
            if job is not None:
                self._writer.jobs.append(job)
        except Exception as err:
            self._internal_error("flush", err)

    original_finish = Run.finish

    def finish(self: Any, status: str = "finished", **meta: Any) -> None:
        if not self._finished and not self._ranks.final_flush_ok(status, meta):
            self._skip_flush = True  # run.py: `if self._ranks.final_flush_ok(...)`
        original_finish(self, status, **meta)

    Run.__init__ = __init__
    Run._open_writer = _open_writer
    Run._flush_device = _flush_device
    Run.finish = finish
