"""Is this file a run a reader can use? Checks that cost a stat and one 100-byte read.

A runs directory can hold files that are not whole runs: an empty file or a header
with no tables (a run that could not write its first commit, e.g. on a full disk),
a truncated copy, junk. `problem(path)` says what is wrong in one line, or None;
the reader then lists such a file as unreadable instead of failing the directory.
What cannot be seen from the header (a page overwritten in the middle) surfaces as a
TrainspectError on the first query that reads it.
"""

from __future__ import annotations

from pathlib import Path

MAGIC = b"SQLite format 3\x00"
HEADER_BYTES = 100


def problem(path: Path) -> str | None:
    """One line on what makes `path` unreadable as a run file, or None."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            header = f.read(HEADER_BYTES)
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    if size == 0:
        return ("empty file (a run that could not write its first page, e.g. on a full "
                "disk): delete it")
    if not header.startswith(MAGIC[: len(header)]):
        return "not a trainspect run file (not SQLite)"
    if len(header) < HEADER_BYTES:
        return f"truncated: {size} bytes, not even a whole header"
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    # the header's page count is valid only when its change counter matches (offset 92)
    counted = header[24:28] == header[92:96]
    if counted and pages * page_size > size:
        return f"truncated: {size:,} of {pages * page_size:,} bytes"
    return None
