"""Finding a run from what a person types: its id, a unique part of it, or its name.

Used by `Reader.run`, so by every CLI command, `ts.init(resume=...)` and the
dashboard's links. `project/<ref>` searches one project. A ref names a run when it
is the run's id (its file's name); otherwise when it is a prefix or a suffix of
exactly one id, or exactly one run's name. Ids start with the UTC date and end with
random hex digits, so the suffix is the distinctive part. Several matches give one
error listing them, with how to pick one (the full id, or project/id).
"""

from __future__ import annotations

from pathlib import Path

from trainspect.errors import TrainspectError
from trainspect.paths import run_files

MAX_LISTED = 10


def find_run(root: Path, ref: str) -> Path:
    """The run file that `ref` names under `root`; TrainspectError if none or several."""
    if not isinstance(ref, str) or not ref.strip("/ "):
        raise TrainspectError(f"expected a run id, a unique part of one, or a run name, "
                              f"got {ref!r}")
    project, _, wanted = ref.rpartition("/")
    if project and (root / project).is_dir() and not (root / project).is_symlink():
        files = run_files(root, project)
    else:
        files, wanted = run_files(root), ref  # a name may hold a '/'
    exact = [f for f in files if f.stem == wanted]
    if len(exact) == 1:
        return exact[0]
    matches = exact or _by_part_or_name(files, wanted)
    if not matches:
        raise TrainspectError(
            f"no run {ref!r} in {root}: give a run id, a unique part of one (its last "
            "digits), or a run name; `trainspect ls` lists them")
    if len(matches) > 1:
        listed = ", ".join(_label(f) for f in sorted(matches)[:MAX_LISTED])
        more = f" and {len(matches) - MAX_LISTED} more" if len(matches) > MAX_LISTED else ""
        raise TrainspectError(f"{ref!r} matches {len(matches)} runs in {root}: {listed}{more}; "
                              "give the full id, or project/id")
    return matches[0]


def _by_part_or_name(files: list[Path], wanted: str) -> list[Path]:
    by_id = [f for f in files if f.stem.startswith(wanted) or f.stem.endswith(wanted)]
    by_name = [f for f in files if f not in by_id and _name(f) == wanted]
    return by_id + by_name


def _name(path: Path) -> str | None:
    """The run's name from its meta; None for a file that cannot be read."""
    from trainspect.store.reader import RunView

    try:
        view = RunView(path)
    except TrainspectError:
        return None
    view.close()
    return view.meta.get("name")


def _label(path: Path) -> str:
    name = _name(path)
    ref = f"{path.parent.name}/{path.stem}"
    return f"{ref} ({name})" if name and name != path.stem else ref
