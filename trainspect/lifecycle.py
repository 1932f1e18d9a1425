"""Finishing runs when the process ends: at interpreter exit and on SIGTERM / SIGINT.

A run registers itself here when it starts and leaves when it finishes. The signal
handlers finish every live run, then hand the signal on to whatever handler was
there before (Python's KeyboardInterrupt for SIGINT, termination for SIGTERM), so
the program behaves as it would without trainspect, only with its data written.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
import weakref
from typing import Any, Protocol

log = logging.getLogger("trainspect")


class Finishable(Protocol):
    def finish(self, status: str = "finished", **meta: Any) -> None: ...


class _Registry:
    def __init__(self) -> None:
        self.runs: weakref.WeakSet[Finishable] = weakref.WeakSet()
        self.previous: dict[int, Any] = {}
        self.installed = False
        self.lock = threading.Lock()

    def add(self, run: Finishable) -> None:
        with self.lock:
            self.runs.add(run)
            if not self.installed:
                self.installed = True
                atexit.register(self.finish_all, "finished", None)
                self._install_signal_handlers()

    def discard(self, run: Finishable) -> None:
        self.runs.discard(run)

    def finish_all(self, status: str, signal_name: str | None) -> None:
        for run in list(self.runs):
            try:
                if signal_name is None:
                    run.finish(status)
                else:
                    run.finish(status, exit_signal=signal_name)
            except Exception as err:  # finish the other runs anyway
                log.exception("trainspect: could not finish a run at exit: %s", err)

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                self.previous[signum] = signal.getsignal(signum)
                signal.signal(signum, self._on_signal)
            except (ValueError, OSError) as err:
                log.debug("trainspect: cannot handle signal %s: %s", signum, err)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.finish_all("finished", signal.Signals(signum).name)
        previous = self.previous.get(signum, signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


_registry = _Registry()
register = _registry.add
unregister = _registry.discard
