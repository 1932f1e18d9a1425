"""Bad run files, made the way they happen: an empty file, a header with no tables (a
first commit that never reached the disk), a truncated copy, junk, a page overwritten."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import trainspect as ts


def good_run(root: Path, name: str, steps: int = 50) -> str:
    with ts.init(project="p", dir=root, name=name) as run:
        for step in range(steps):
            run.log({"loss": 2.0 - step / steps, "text/acc": step / steps}, step=step)
        run.alert("planted", action="none")
    return run.id


def header_only(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA page_size = 65536")
    conn.execute("PRAGMA journal_mode = WAL")  # writes the header page, nothing else
    conn.close()


def make_bad_files(root: Path, template: Path) -> dict[str, Path]:
    """One of each kind next to the good runs, in project `p`; returns kind -> path."""
    folder = root / "p"
    bad = {kind: folder / f"20990101-000000-{kind}.db" for kind in (
        "empty", "header", "junk", "truncated", "overwritten")}
    bad["empty"].write_bytes(b"")
    header_only(bad["header"])
    bad["junk"].write_bytes(os.urandom(20_000))
    data = template.read_bytes()
    bad["truncated"].write_bytes(data[: len(data) // 2])
    shutil.copy(template, bad["overwritten"])
    with bad["overwritten"].open("r+b") as f:  # every page after the first: junk
        f.seek(65536)
        f.write(os.urandom(len(data) - 65536))
    return bad
