"""Helpers for fault tests that need whole processes: start a Python snippet, wait for
a line, kill it. The snippets import trainspect from this checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def env(**extra: str) -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join([str(ROOT), out.get("PYTHONPATH", "")])
    out.update(extra)
    return out


def start(code: str, *args: str, prefix: tuple[str, ...] = (), **popen) -> subprocess.Popen:
    return subprocess.Popen([*prefix, sys.executable, "-c", textwrap.dedent(code),
                             *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env(), **popen)


def run(code: str, *args: str, timeout: float = 60, prefix: tuple[str, ...] = (),
        **popen) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-c", textwrap.dedent(code),
                           *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=env(), **popen)


def unprivileged() -> tuple[str, ...] | None:
    """A command prefix under which file permissions apply: none needed unless we are
    root; as root, a user namespace (`unshare --user`: uid 0's files keep their owner
    bits, without root's override). None when neither is available."""
    if os.geteuid() != 0:
        return ()
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    probe = subprocess.run([unshare, "--user", sys.executable, "-c",
                            "import os; print(os.geteuid())"], capture_output=True, text=True)
    return (unshare, "--user") if probe.returncode == 0 else None
