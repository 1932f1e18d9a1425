"""`trainspect report`: one self-contained HTML file with the dashboard's views of a run.

The page is the dashboard's own `index.html` with its CSS and JS (uPlot included)
inlined and every panel's data embedded as JSON, so it opens from a mail
attachment with no server and no network. Parameterised views (step sliders,
streams, followed samples) are precomputed for their recent values. The JSON is
escaped so no string in it can close its script element, and a Content Security
Policy admits only the page's own scripts, by hash.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

from trainspect.dashboard.panels import PANELS, runs
from trainspect.dashboard.panels.base import ClientError, jsonable
from trainspect.errors import TrainspectError
from trainspect.store.reader import Reader, RunView

log = logging.getLogger("trainspect.dashboard")
STATIC = Path(__file__).parent / "static"
REPORT_BUCKETS = 400  # per series: the file stays small, spikes still show
_ASSET = re.compile(r'<link rel="stylesheet" href="/static/([^"]+)">|'
                    r'<script src="/static/([^"]+)"></script>')


def param_key(params: dict[str, str]) -> str:
    """Parameters as the report keys them (mirrors TS.paramKey in source.js)."""
    return "&".join(f"{k}={v}" for k, v in sorted(params.items()) if v not in ("", None))


def report_data(view: RunView, buckets: int = REPORT_BUCKETS) -> dict[str, Any]:
    """Every panel's data for `view`, for each of its report variants."""
    ref = runs.run_ref(view)
    panels: dict[str, dict[str, Any]] = {}
    for panel in PANELS.values():
        stored: dict[str, Any] = {}
        for params in panel.variants(view):
            try:
                stored[param_key(params)] = panel.query(view, {**params, "buckets": str(buckets)})
            except ClientError as err:
                log.debug("trainspect: report skips %s %s: %s", panel.name, params, err)
            except Exception as err:  # one broken panel must not lose the report
                log.exception("trainspect: the %s panel failed for the report: %s",
                              panel.name, err)
        panels[panel.name] = stored
    return {
        "panels": [p.meta() for p in PANELS.values()],
        "runs": [runs.describe(view.refresh())],
        "data": {ref: panels},
        "generated_at": time.time(),
    }


def safe_json(data: Any) -> str:
    """JSON that cannot end its <script> element or open a comment inside it."""
    text = json.dumps(jsonable(data), allow_nan=False, separators=(",", ":"), default=str)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _asset(path: str) -> str:
    target = (STATIC / path).resolve()
    if STATIC.resolve() not in target.parents:
        raise TrainspectError(f"report asset outside the static folder: {path}")
    text = target.read_text(encoding="utf-8")
    if path.endswith(".js") and "</script" in text.lower():
        raise TrainspectError(f"{path} contains '</script' and cannot be inlined")
    return text


def _sha256(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode()


def build_report(view: RunView, buckets: int = REPORT_BUCKETS) -> str:
    """The report page for one run, as a string."""
    page = (STATIC / "index.html").read_text(encoding="utf-8")
    hashes: list[str] = []

    def inline(match: re.Match) -> str:
        css, js = match.group(1), match.group(2)
        if css:
            return "<style>\n" + _asset(css) + "\n</style>"
        code = _asset(js)
        hashes.append(_sha256(code))
        return "<script>" + code + "</script>"

    page = _ASSET.sub(inline, page)
    data = '<script type="application/json" id="ts-report-data">' + safe_json(
        report_data(view, buckets)) + "</script>\n"
    first_script = page.index("<script>")
    page = page[:first_script] + data + page[first_script:]
    csp = ("default-src 'none'; img-src data: blob:; style-src 'unsafe-inline'; "
           "script-src " + " ".join(f"'sha256-{h}'" for h in hashes) + "; base-uri 'none'; "
           "form-action 'none'")
    head = (f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n'
            f"<title>trainspect report: {html.escape(view.project)} / "
            f"{html.escape(view.name)}</title>")
    return page.replace("<title>trainspect</title>", head, 1)


def write_report(run: RunView | str, output: str | Path, dir: str | Path | None = None,
                 buckets: int = REPORT_BUCKETS) -> Path:
    """Write the report of `run` (a RunView, or a run id / prefix / project/id under `dir`)."""
    view = run if isinstance(run, RunView) else Reader(dir).run(run)
    out = Path(output)
    try:
        out.write_text(build_report(view, buckets), encoding="utf-8")
    except OSError as err:
        raise TrainspectError(f"cannot write the report to {out}: {err}") from err
    return out
