"""The HTTP side, against a real server on a free loopback port: routes, errors, export,
SSE live updates, the token, the Host check, names that try to climb out."""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.parse
import urllib.request

import pytest

import trainspect as ts
from tests.dashboard.conftest import MILLION, get_json, http, view_of, wait_for
from tests.dashboard.synthetic import make_run
from trainspect.dashboard import auth, sse
from trainspect.dashboard.panels import PANELS


class SSE:
    """A minimal EventSource: yields (event, id, data) as they arrive."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        request = urllib.request.Request(url, headers=headers or {})
        self.response = urllib.request.urlopen(request, timeout=5)

    def next(self) -> tuple[str, str, dict]:
        name, event_id, data = "message", "", ""
        while True:
            line = self.response.readline().decode()
            if line in ("\n", ""):
                if data:
                    return name, event_id, json.loads(data)
                if line == "":
                    raise EOFError
                continue
            field, _, value = line.rstrip("\n").partition(": ")
            if field == "event":
                name = value
            elif field == "id":
                event_id = value
            elif field == "data":
                data += value

    def close(self) -> None:
        self.response.close()


def test_runs_panels_and_export(runs, serve):
    ref = make_run(runs, steps=100)
    server = serve()
    listing = get_json(server.url, "/api/runs")
    assert [r["ref"] for r in listing["runs"]] == [ref]
    assert listing["runs"][0]["status"] == "finished" and listing["runs"][0]["step"] == 100
    assert get_json(server.url, "/api/runs?q=nothing-matches")["runs"] == []
    assert get_json(server.url, "/api/runs?q=rank%3D16+lora")["runs"][0]["ref"] == ref
    names = [p["name"] for p in get_json(server.url, "/api/panels")]
    assert names == list(PANELS)
    for name in names:
        get_json(server.url, f"/api/runs/{ref}/panels/{name}")
    status, headers, body = http(server.url + f"api/runs/{ref}/export/loss?format=csv")
    assert status == 200 and headers["content-type"].startswith("text/csv")
    assert "attachment" in headers["content-disposition"]
    lines = body.decode().splitlines()
    assert lines[0] == "chart,series,step,min,max"
    assert sum(1 for line in lines if line.startswith("loss,loss,")) == 10  # every point
    exported = json.loads(http(server.url + f"api/runs/{ref}/export/alerts?format=json")[2])
    assert exported["alerts"][0]["rule"] == "eval_plateau"


def test_errors_carry_status_and_message(runs, serve, monkeypatch):
    ref = make_run(runs, steps=20)
    server = serve()
    status, _, body = http(server.url + f"api/runs/{ref}/panels/nope")
    assert status == 404 and "no panel" in json.loads(body)["error"]
    status, _, body = http(server.url + f"api/runs/{ref}/panels/predictions?step=abc")
    assert status == 400 and "`step`" in json.loads(body)["error"]
    status, _, body = http(server.url + f"api/runs/{ref}/export/loss?format=xml")
    assert status == 400
    status, _, body = http(server.url + "api/runs/demo/20990101-000000-ffff/panels/loss")
    assert status == 404

    def boom(view, params):
        raise RuntimeError("secret detail")

    monkeypatch.setitem(PANELS, "loss", dataclasses.replace(PANELS["loss"], query=boom))
    status, _, body = http(server.url + f"api/runs/{ref}/panels/loss")
    assert status == 500 and b"secret" not in body


@pytest.mark.parametrize("path", [
    "api/runs/..%2F..%2Fetc/passwd/panels/loss",
    "api/runs/demo/..%2F..%2Fsecret/panels/loss",
    "api/runs/%2E%2E/x/panels/loss",
    "api/runs/demo/%2E%2E/panels/loss",
    "api/runs/demo/..db/panels/loss",
    "api/runs/.hidden/x/series?key=loss",
    "api/events?run=../../etc/passwd",
    "api/events?run=demo/..%2Fx",
])
def test_names_cannot_climb_out_of_the_runs_directory(runs, serve, path):
    make_run(runs, steps=20)
    (runs.parent / "secret.db").write_bytes(b"not for you")
    server = serve()
    status, _, body = http(server.url + path)
    assert status in (400, 404), (status, body)


def test_run_ids_must_be_exact_in_urls(runs, serve):
    ref = make_run(runs, steps=20)
    server = serve()
    project, run_id = ref.split("/")
    status, _, _ = http(server.url + f"api/runs/{project}/{run_id[:8]}/panels/loss")
    assert status == 404


def test_resolve_names_a_run_by_any_reference(runs, serve):
    ref = make_run(runs, name="r16", steps=20)
    make_run(runs, name="r8", steps=20, seed=1)
    server = serve()
    project, run_id = ref.split("/")
    for given in (ref, run_id, run_id[-4:], "r16"):  # project/id, bare id, suffix, name
        found = get_json(server.url, "/api/resolve?run=" + urllib.parse.quote(given))
        assert found == {"ref": ref, "id": run_id, "project": project, "name": "r16"}, given
    status, _, body = http(server.url + "api/resolve?run=no-such-run")
    assert status == 404 and "no-such-run" in json.loads(body)["error"]
    status, _, body = http(server.url + "api/resolve?run=")
    assert status == 400 and "`run`" in json.loads(body)["error"]
    status, _, _ = http(server.url + "api/resolve?run=" + urllib.parse.quote("../../etc/passwd"))
    assert status == 404


def test_million_point_series_is_downsampled_on_the_server(million_run, serve):
    root, ref = million_run
    server = serve(root)
    start = time.perf_counter()
    data = get_json(server.url, f"/api/runs/{ref}/panels/loss?buckets=1000")
    elapsed = time.perf_counter() - start
    series = data["charts"][0]["series"][0]
    assert series["key"] == "loss" and len(series["points"]) <= 1000
    assert max(p[2] for p in series["points"]) > 5.0  # the one-step spike at 777,777 survives
    assert elapsed < 3.0, elapsed
    zoom = get_json(server.url, f"/api/runs/{ref}/series?key=loss&lo=777000&hi=778000")
    assert len(zoom["points"]) <= 1000 and zoom["points"][0][0] >= 777_000
    assert view_of(root, ref).series("loss", buckets=10)[0][0] == 0
    assert len(view_of(root, ref).arrays("loss")[0]) == MILLION


def test_fifty_runs_and_two_hundred_keys_stay_quick(runs, serve):
    for i in range(50):
        run = ts.init(project=f"p{i % 5}", name=f"run-{i}", dir=runs, config={"i": i})
        keys = {f"custom/k{j:03d}": float(j) for j in range(200 if i == 0 else 3)}
        for step in range(1, 21):
            run.log({**keys, "loss": 1.0 / step}, step=step)
        run.finish()
    server = serve()
    start = time.perf_counter()
    listing = get_json(server.url, "/api/runs")
    list_s = time.perf_counter() - start
    assert len(listing["runs"]) == 50 and list_s < 3.0, list_s
    big = next(r["ref"] for r in listing["runs"] if r["name"] == "run-0")
    start = time.perf_counter()
    for name in PANELS:
        get_json(server.url, f"/api/runs/{big}/panels/{name}")
    assert time.perf_counter() - start < 5.0
    page = get_json(server.url, f"/api/runs/{big}/panels/scalars?filter=k1&page=1")
    assert page["total"] == 200 and len(page["keys"]) == 100 and len(page["charts"]) == 12


def test_sse_delivers_new_points_within_two_seconds(runs, serve):
    run = ts.init(project="live", dir=runs)
    run.log({"loss": 1.0}, step=1)
    run.flush()
    server = serve()
    stream = SSE(server.url + f"api/events?run=live/{run.id}")
    try:
        name, event_id, hello = stream.next()
        assert name == "hello" and hello["status"][f"live/{run.id}"] == "running"
        start = time.monotonic()
        run.log({"loss": 0.5, "text/acc": 0.25}, step=2)
        run.emit(ts.Alert(step=2, rule="r", level="warning", message="m", action="a"))
        while True:
            name, event_id, event = stream.next()
            if name == "update" and "scalars" in event:
                break
        elapsed = time.monotonic() - start
        assert elapsed < 2.0, elapsed
        assert event["scalars"]["loss"] == [[2, 0.5, 0.5]]
        assert event["scalars"]["text/acc"] == [[2, 0.25, 0.25]]
        cursor = sse.decode_cursors(event_id)[f"live/{run.id}"]
        assert cursor == event["cursor"] > hello["cursors"][f"live/{run.id}"]
    finally:
        stream.close()
    # reconnecting with Last-Event-ID resumes after it: only what came later arrives
    run.log({"loss": 0.25}, step=3)
    run.flush()
    again = SSE(server.url + f"api/events?run=live/{run.id}", {"Last-Event-ID": event_id})
    try:
        assert again.next()[0] == "hello"
        name, _, event = again.next()
        while "scalars" not in event:
            name, _, event = again.next()
        assert event["scalars"] == {"loss": [[3, 0.25, 0.25]]}
    finally:
        again.close()
    run.finish()


def test_follower_bounds_bursts_and_skips_repeats(runs):
    run = ts.init(project="f", dir=runs)
    run.log({"loss": 0.0}, step=0)
    run.flush()
    view = view_of(runs, f"f/{run.id}")
    follower = sse.Follower("f/x", view)
    assert follower.poll() is None
    for step in range(1, 2001):
        run.log({"loss": float(step)}, step=step)
    run.emit(ts.Alert(step=2000, rule="r", level="info", message="<b>m</b>"))
    run.flush()
    event = follower.poll()
    points = event["scalars"]["loss"]
    assert len(points) <= sse.MAX_POINTS_PER_KEY and points[-1][2] == 2000.0
    assert points[0][0] == 1 and event["alerts"][0]["message"] == "<b>m</b>"
    assert follower.last_step["loss"] == 2000
    assert follower._fresh_points("loss", [(1999, 1.0), (2000, 2.0)]) == []  # merged repeats
    run.finish()


def test_token_is_required_everywhere_when_set(runs, serve):
    ref = make_run(runs, steps=20)
    server = serve(token="s3cret-token")
    assert server.url.endswith("/?token=s3cret-token")
    base = f"http://127.0.0.1:{server.port}/"
    for path in ("", "static/js/app.js", "api/runs", f"api/runs/{ref}/panels/loss",
                 f"api/events?run={ref}", f"api/runs/{ref}/export/loss?format=csv"):
        assert http(base + path)[0] == 401, path
        assert http(base + path + ("&" if "?" in path else "?") + "token=wrong")[0] == 401
    status, headers, _ = http(base + "?token=s3cret-token")
    assert status == 200
    cookie = headers["set-cookie"].split(";")[0]
    assert cookie.endswith("=s3cret-token") and "HttpOnly" in headers["set-cookie"]
    assert http(base + "api/runs", {"Cookie": cookie})[0] == 200
    assert http(base + "api/runs", {"Authorization": "Bearer s3cret-token"})[0] == 200
    stream = SSE(base + f"api/events?run={ref}", {"Cookie": cookie})
    assert stream.next()[0] == "hello"
    stream.close()


def test_token_generated_off_loopback_and_host_checked_on_it(runs, serve):
    assert auth.is_loopback("127.0.0.1") and auth.is_loopback("::1")
    assert auth.is_loopback("localhost") and not auth.is_loopback("0.0.0.0")
    assert not auth.is_loopback("192.168.1.5") and not auth.is_loopback("evil.example")
    assert auth.host_name("[::1]:7600") == "::1" and auth.host_name("localhost:80") == "localhost"
    from trainspect.dashboard.server import resolve_token, url_for

    assert resolve_token("127.0.0.1", None) is None
    token = resolve_token("0.0.0.0", None)
    assert token and len(token) >= 24 and resolve_token("0.0.0.0", None) != token
    assert resolve_token("0.0.0.0", "mine") == "mine"
    assert url_for("10.1.2.3", 7600, "abc") == "http://10.1.2.3:7600/?token=abc"
    make_run(runs, steps=20)
    server = serve()
    assert server.token is None and server.url.startswith("http://127.0.0.1:")
    assert http(server.url + "api/runs")[0] == 200
    assert http(server.url + "api/runs", {"Host": "localhost"})[0] == 200
    assert http(server.url + "api/runs", {"Host": "evil.example:7600"})[0] == 403


def test_security_headers(runs, serve):
    server = serve()
    status, headers, body = http(server.url)
    assert status == 200 and b"/static/js/app.js" in body
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert wait_for(lambda: http(server.url + "static/vendor/uPlot.LICENSE.txt")[0] == 200)
