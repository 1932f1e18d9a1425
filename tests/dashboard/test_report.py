"""The self-contained HTML report and the two commands, without a browser."""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import subprocess
import sys

from tests.dashboard.conftest import view_of
from tests.dashboard.synthetic import HOSTILE, make_run
from trainspect.cli import report as report_cli
from trainspect.cli import ui as ui_cli
from trainspect.dashboard import report
from trainspect.dashboard.panels import PANELS

DATA = re.compile(r'<script type="application/json" id="ts-report-data">(.*?)</script>', re.S)


def test_param_key_is_sorted_and_skips_empty_values():
    assert report.param_key({}) == ""
    assert report.param_key({"step": "5", "stream": "text", "sample_id": ""}) == \
        "step=5&stream=text"


def test_report_is_self_contained_and_payloads_stay_inert(runs, tmp_path):
    ref = make_run(runs, hostile=True, steps=200)
    out = report.write_report(ref.split("/")[1][:15], tmp_path / "r.html", dir=runs)
    page = out.read_text()
    assert "src=\"/static" not in page and "href=\"/static" not in page  # all inlined
    assert "uPlot" in page and ".uplot" in page
    assert HOSTILE not in page  # not even inside the JSON: '<' is \u003c there
    assert "<img" not in page and page.count("<script") == page.count("</script>")
    data = json.loads(DATA.search(page).group(1))
    assert data["runs"][0]["name"] == "lora-demo" + HOSTILE
    stored = data["data"][ref]
    assert set(stored) == set(PANELS)
    assert {"", "step=100", "step=200", "sample_id=sample-0"} <= set(stored["predictions"])
    assert stored["loss"][""]["charts"][0]["series"][0]["points"][-1][0] == 200
    # the CSP admits exactly the inline scripts, by hash
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)
    allowed = set(re.findall(r"'sha256-([^']+)'", csp))
    inline = re.findall(r"<script>(.*?)</script>", page, re.S)
    digests = {base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() for s in inline}
    assert inline and digests == allowed
    assert "default-src 'none'" in csp


def test_report_needs_neither_starlette_nor_uvicorn(runs, tmp_path):
    ref = make_run(runs, steps=50)
    code = ("import sys; sys.modules['starlette'] = None; sys.modules['uvicorn'] = None\n"
            "from trainspect.dashboard import write_report\n"
            f"write_report({ref!r}, {str(tmp_path / 'x.html')!r}, dir={str(runs)!r})\n"
            "assert 'starlette' not in [m.split('.')[0] for m in sys.modules if sys.modules[m]]")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert (tmp_path / "x.html").stat().st_size > 50_000


def test_report_command(runs, tmp_path, capsys):
    ref = make_run(runs, steps=50)
    out = tmp_path / "shared.html"
    args = argparse.Namespace(run=ref, dir=str(runs), output=str(out))
    assert report_cli.run(args) == 0
    assert out.is_file() and f"to {out}" in capsys.readouterr().out
    assert view_of(runs, ref).id in out.read_text()


def test_commands_parse_their_arguments():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    ui_cli.add_parser(sub)
    report_cli.add_parser(sub)
    args = parser.parse_args(["ui"])
    assert (args.host, args.port, args.token, args.dir) == ("127.0.0.1", 7600, None, None)
    args = parser.parse_args(["ui", "--host", "0.0.0.0", "--port", "0", "--dir", "d"])
    assert (args.host, args.port, args.dir, args.handler) == ("0.0.0.0", 0, "d", ui_cli.run)
    args = parser.parse_args(["report", "abc", "-o", "x.html"])
    assert (args.run, args.output, args.handler) == ("abc", "x.html", report_cli.run)


def test_ui_command_prints_its_url_and_stops_on_ctrl_c(runs):
    import signal

    from tests.dashboard.conftest import http

    make_run(runs, steps=20)
    code = ("import argparse; from trainspect.cli import ui\n"
            f"ui.run(argparse.Namespace(dir={str(runs)!r}, host='127.0.0.1', port=0, "
            "token='tok123'))")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("trainspect dashboard: http://127.0.0.1:")
        url = line.split(": ", 1)[1].strip()
        assert url.endswith("/?token=tok123")
        assert http(url)[0] == 200 and http(url.split("?")[0] + "api/runs")[0] == 401
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
