"""The demo's terminal output: training and fixed-eval progress, with alerts on their own lines.

On a terminal, training is a tqdm bar and each fixed eval a second bar under it that
goes away when the eval ends; log records (trainspect's alerts, transformers' and
Python's warnings) are written through `tqdm.write` (tqdm's `logging_redirect_tqdm`),
so they print above the bars instead of into them. tqdm and not rich: transformers
already depends on tqdm, so the demo extra gains no package, and its logging redirect
is the one piece needed here.

Without a terminal (a pipe, a CI log) nothing rewrites itself: a line every few
steps, one line per finished fixed eval, and log records as they come.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:  # train.py imports torch; this module prints before torch is loaded
    from trainspect.demo.train import ProgressEvent

# Loggers whose records would otherwise cut the bars: our alerts, transformers' own
# handler, and Python warnings once captured into logging.
REDIRECTED = ("trainspect", "transformers", "py.warnings")


def step_line(event: ProgressEvent, bar_width: int = 24) -> str:
    """`step    50/100 [#####.....] loss  1.500  acc 0.500  lr 3.0e-03  7.2s  6,000 tok/s`."""
    done = (event.step + 1) / event.steps
    filled = round(done * bar_width)
    bar = "#" * filled + "." * (bar_width - filled)
    return (f"step {event.step + 1:>5}/{event.steps} [{bar}] {_numbers(event)}  "
            f"{event.elapsed_s:5.1f}s  {event.tokens_per_s:,.0f} tok/s")


def _numbers(event: ProgressEvent) -> str:
    return f"loss {event.loss:6.3f}  acc {event.acc:5.3f}  lr {event.lr:.1e}"


def eval_line(step: int, result: Any, seconds: float) -> str:
    """One line per finished fixed eval: where, exact match, CE, how many examples."""
    metrics = getattr(result, "metrics", {}) or {}
    n = int(metrics.get("n", 0))
    return (f"  fixed eval at step {step}: EM {100 * result.em:.1f}%  CE {result.ce:.3f}  "
            f"({n} examples, {seconds:.1f}s)")


class ProgressLine:
    """Prints `step_line` once per call: the output without a terminal."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def __call__(self, event: ProgressEvent) -> None:
        self.out.write(step_line(event) + "\n")
        self.out.flush()


class Console:
    """Where the demo prints, as a context manager around training.

    `step(event)` after training steps, `eval_progress(done, total)` during a fixed
    eval, `eval_done(step, result, seconds)` after it, `line(text)` for anything else.
    """

    def __init__(self, out: TextIO, steps: int) -> None:
        self.out = out
        self.steps = steps
        self.tty = out.isatty()
        self.every = 1 if self.tty else 50  # how often `train` reports a step
        self._bar: Any = None
        self._eval_bar: Any = None
        self._stack = contextlib.ExitStack()
        self._plain = ProgressLine(out)

    def __enter__(self) -> Console:
        if self.tty:
            from tqdm.auto import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._stack.enter_context(_warnings_to_logging())
            loggers = [logging.getLogger(name) for name in REDIRECTED]
            self._stack.enter_context(logging_redirect_tqdm(loggers=loggers))
            for logger in loggers:  # the handler tqdm added: to our stream, in order with it
                logger.handlers[-1].stream = self.out
            self._bar = self._stack.enter_context(tqdm(
                total=self.steps, desc="training", unit="step", file=self.out,
                bar_format="{desc} {n_fmt}/{total_fmt} |{bar:24}| {elapsed}<{remaining} "
                "{rate_fmt}{postfix}"))
        return self

    def __exit__(self, *exc: Any) -> None:
        self._close_eval_bar()
        self._stack.close()
        self._bar = None

    def line(self, text: str) -> None:
        """A line of its own, above the bars when there are any."""
        if self._bar is not None:
            self._bar.write(text, file=self.out)
        else:
            self.out.write(text + "\n")
            self.out.flush()

    def step(self, event: ProgressEvent) -> None:
        if self._bar is None:
            if (event.step + 1) % self.every == 0 or event.step + 1 == event.steps:
                self._plain(event)
            return
        self._bar.set_postfix_str(f"{_numbers(event)}  {event.tokens_per_s:,.0f} tok/s",
                                  refresh=False)
        self._bar.update(event.step + 1 - self._bar.n)

    def eval_progress(self, done: int, total: int) -> None:
        if self._bar is None:
            return
        if self._eval_bar is None:
            from tqdm.auto import tqdm

            self._eval_bar = tqdm(total=total, desc="  fixed eval", unit="example",
                                  file=self.out, leave=False,
                                  bar_format="{desc} {n_fmt}/{total_fmt} |{bar:24}| "
                                  "{elapsed}<{remaining}")
        self._eval_bar.update(done - self._eval_bar.n)

    def eval_done(self, step: int, result: Any, seconds: float) -> None:
        self._close_eval_bar()
        if result is not None:
            self.line(eval_line(step, result, seconds))

    def _close_eval_bar(self) -> None:
        if self._eval_bar is not None:
            self._eval_bar.close()
            self._eval_bar = None


@contextlib.contextmanager
def _warnings_to_logging():
    """Python warnings go through logging (and so above the bars) while training."""
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
