"""A stand-in for a trainspect run: `train` needs only `log`."""

from __future__ import annotations


class FakeRun:
    """A recorder with the one method `train` needs: keeps what was logged."""

    def __init__(self) -> None:
        self.logged: list[tuple[int, dict]] = []

    def log(self, metrics: dict, step: int) -> None:
        self.logged.append((step, dict(metrics)))
