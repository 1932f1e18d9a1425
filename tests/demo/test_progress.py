"""The demo's terminal output: on a terminal, the fixed eval's bar sits under the step
bar (never over it) and a log record in the middle of an eval prints on a line of its
own; without one, plain lines only."""

from __future__ import annotations

import io
import logging
import re
from types import SimpleNamespace

from trainspect.demo.progress import Console
from trainspect.demo.train import ProgressEvent

ESCAPES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def event(step: int, steps: int) -> ProgressEvent:
    return ProgressEvent(step=step, steps=steps, loss=2.0, acc=0.5, lr=1e-3, elapsed_s=1.0,
                         tokens_per_s=1000.0)


def drive(out: io.StringIO, steps: int = 30) -> None:
    with Console(out, steps) as console:
        for step in range(steps):
            console.step(event(step, steps))
            if step == 10:
                for done in range(0, 81, 8):
                    console.eval_progress(done, 80)
                    if done == 40:
                        logging.getLogger("trainspect").warning(
                            "trainspect [warning] step 10: an alert")
                console.eval_done(10, SimpleNamespace(em=0.25, ce=1.5, metrics={"n": 80}), 0.5)


def screen_lines(raw: str) -> list[str]:
    """What each written line ends up showing: the text after its last carriage return."""
    return [ESCAPES.sub("", line.split("\r")[-1]).rstrip() for line in raw.split("\n")]


def test_eval_bar_and_alerts_keep_their_own_lines():
    out = Terminal()
    drive(out)
    raw = out.getvalue()
    for line in raw.split("\n"):  # the eval bar is drawn one line below the step bar
        pieces = [ESCAPES.sub("", p) for p in line.split("\r")]
        assert not any("training" in p for p in pieces if "fixed eval" in p), line
        if any("fixed eval 4" in p for p in pieces):
            assert not any(p.startswith("training") for p in pieces), line
    lines = screen_lines(raw)
    assert "trainspect [warning] step 10: an alert" in lines  # whole, alone on its line
    assert "  fixed eval at step 10: EM 25.0%  CE 1.500  (80 examples, 0.5s)" in lines
    assert any(line.startswith("training 30/30 |") and "loss  2.000" in line for line in lines)
    assert "fixed eval" not in lines[-1]  # the eval bar went away


def test_without_a_terminal_lines_only():
    out = io.StringIO()
    drive(out, steps=100)
    assert out.getvalue().splitlines() == [
        "  fixed eval at step 10: EM 25.0%  CE 1.500  (80 examples, 0.5s)",
        "step    50/100 [############............] loss  2.000  acc 0.500  lr 1.0e-03    1.0s  "
        "1,000 tok/s",
        "step   100/100 [########################] loss  2.000  acc 0.500  lr 1.0e-03    1.0s  "
        "1,000 tok/s",
    ]
