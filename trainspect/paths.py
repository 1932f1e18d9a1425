"""Where runs live on disk: the runs directory, project folders and run files.

A run is one SQLite file, `<dir>/<project>/<run_id>.db`. Project names and run ids
become path components, so both are checked here and nowhere else: nothing a user
or a URL supplies can climb out of the runs directory.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from pathlib import Path

from trainspect.errors import TrainspectError

ENV_DIR = "TRAINSPECT_DIR"
DEFAULT_DIR = "trainspect-runs"
RUN_SUFFIX = ".db"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def runs_dir(dir: str | os.PathLike | None = None) -> Path:
    """The runs directory: `dir`, else $TRAINSPECT_DIR, else ./trainspect-runs."""
    if dir is not None:
        return Path(dir)
    return Path(os.environ.get(ENV_DIR) or DEFAULT_DIR)


def check_name(value: str, argument: str) -> str:
    """Return `value` if it is a safe path component, else raise naming `argument`."""
    if not isinstance(value, str) or not _NAME.match(value) or ".." in value:
        raise TrainspectError(
            f"expected `{argument}` to be 1-128 letters, digits, '.', '_' or '-' "
            f"(starting with a letter or digit), got {value!r}"
        )
    return value


def new_run_id(now: float | None = None) -> str:
    """A sortable run id: UTC start time plus 6 random hex digits.

    Unique by construction only together with the exclusive create of its file
    (`store/claim.py`); the 24 random bits keep redraws rare (100 runs started in
    one second collide with probability about 3e-4).
    """
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() if now is None else now))
    return f"{stamp}-{secrets.token_hex(3)}"


def run_path(root: Path, project: str, run_id: str) -> Path:
    return root / check_name(project, "project") / (check_name(run_id, "run_id") + RUN_SUFFIX)


def run_files(root: Path, project: str | None = None) -> list[Path]:
    """Every run file under `root` (optionally one project's), unsorted."""
    if project is not None:
        folders = [root / check_name(project, "project")]
    else:
        folders = [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    return [f for d in folders if d.is_dir() for f in d.glob("*" + RUN_SUFFIX)]
