"""The dashboard in a real browser (Debian's Chromium through Playwright): panels render
with data, live points arrive, hostile text stays text, compare overlays, a million-point
series stays light, and the report opens offline. One browser for the whole module."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import trainspect as ts
from tests.dashboard.conftest import browser_missing, open_run, wait_js
from tests.dashboard.synthetic import HOSTILE, make_run

pytestmark = pytest.mark.browser

CHART_PANELS = ("loss", "tokens", "fixed_eval", "calibration", "losses", "gradients", "hidden",
                "speed")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Runs (hostile, plain, live) and a server over them, for the whole module."""
    if browser_missing():
        pytest.skip(browser_missing())
    from trainspect.dashboard.server import start

    root = tmp_path_factory.mktemp("site")
    hostile = make_run(root, name="hostile", hostile=True, steps=300)
    plain = make_run(root, name="plain", seed=1, steps=300)
    live = ts.init(project="demo", name="live", dir=root)
    live.log({"loss": 1.0}, step=1)
    live.flush()
    server = start(root, port=0, poll_s=0.1)
    yield {"root": root, "url": server.url, "hostile": hostile, "plain": plain, "live": live}
    server.stop()
    live.finish()


def test_panels_render_with_data(page, site):
    open_run(page, site["url"], site["plain"])
    for name in CHART_PANELS:
        page.wait_for_selector(f"#panel-{name} .uplot")
    assert page.locator("#panel-tokens .uplot").count() >= 10
    assert page.locator("#panel-predictions .tok.ok").count() > 0
    assert page.locator("#panel-predictions .tok.bad").count() > 0
    assert page.locator("#panel-patterns canvas").count() == 1
    assert page.locator("#panel-lora .bar-row").count() == 5
    assert page.locator("#panel-lora .heatmap canvas").count() == 1
    assert page.locator("#panel-calibration canvas.reliability").count() == 1
    assert page.locator("#panel-alerts li.alert").count() == 1
    assert "weight is 0" in page.locator("#panel-losses").inner_text()
    doctor = page.locator("#panel-doctor").inner_text()
    assert "doctor not available" in doctor or page.locator("#panel-doctor .verdict").count() == 1
    assert "No other metrics" in page.locator("#panel-scalars").inner_text()  # empty state
    # a step slider re-asks its panel: predictions at step 100
    page.evaluate("TS.app.card('predictions').setParams({step: 100})")
    wait_js(page, "document.querySelector('#panel-predictions .sample-step').textContent"
                  " === 'step 100'")
    assert page.problems == []


def test_payloads_stay_text(raw_page, site):
    page = raw_page
    open_run(page, site["url"], site["hostile"])
    page.wait_for_selector("#panel-alerts li.alert")
    page.wait_for_selector("#panel-predictions .sample")
    page.wait_for_selector("#panel-scalars .uplot")
    assert page.evaluate("window.__xss") is None
    assert page.locator("img").count() == 0  # no element was made from the payloads
    assert page.locator("#panels script, #sidebar script, header script").count() == 0
    assert HOSTILE in page.locator("#run-title").inner_text()
    assert HOSTILE in page.locator("#panel-alerts .alert-message").inner_text()
    assert HOSTILE in page.locator("#panel-alerts .alert-action").inner_text()
    assert HOSTILE in page.locator("#panel-predictions .context").first.inner_text()
    assert HOSTILE in page.locator("#sidebar .run.selected").inner_text()
    assert "custom/" + HOSTILE in page.locator("#panel-scalars .chart-title").first.inner_text()
    page.hover("#sidebar .run.selected")
    assert page.evaluate("window.__xss") is None
    assert page.problems == []


def test_live_update_arrives_within_two_seconds(page, site):
    run = site["live"]
    open_run(page, site["url"], f"demo/{run.id}")
    wait_js(page, "document.getElementById('live').textContent === 'live'")
    last = "(() => { const s = TS.app.card('loss').charts[0].spec.series[0].points;" \
           " return s[s.length - 1][0]; })()"
    assert page.evaluate(last) == 1
    for step in range(2, 12):
        run.log({"loss": 1.0 / step}, step=step)
    run.flush()
    start = time.monotonic()
    wait_js(page, last + " === 11", 5.0)
    assert time.monotonic() - start < 2.0
    # a key no chart showed yet makes the panels ask again
    run.log({"speed/tokens_per_s": 1234.0}, step=12)
    run.flush()
    page.wait_for_selector("#panel-speed .uplot", timeout=5_000)
    assert page.problems == []


def test_compare_overlays_runs(page, site):
    open_run(page, site["url"], site["plain"])
    single = page.evaluate("TS.app.card('loss').charts[0].spec.series.length")
    page.locator(f"#sidebar .run[data-ref='{site['hostile']}'] input[type=checkbox]").check()
    wait_js(page, f"TS.app.card('loss').charts.length && "
        f"TS.app.card('loss').charts[0].spec.series.length === {2 * single}")
    labels = page.evaluate("TS.app.card('loss').charts[0].spec.series.map(s => s.label)")
    assert labels == [f"{run} · {key}" for run in ("plain", "hostile" + HOSTILE)
                      for key in ("loss", "loss/total", "eval/ce")]
    lr = page.evaluate("TS.app.card('loss').charts.find(c => c.spec.id === 'lr')"
                       ".spec.series.map(s => s.label)")
    assert lr == ["plain", "hostile" + HOSTILE]  # one line per run: the run's name alone
    assert "compare=" in page.url and HOSTILE in page.locator("#compare-list").inner_text()
    assert page.evaluate("window.__xss") is None
    page.locator("#compare-list .run-remove").click()
    wait_js(page, f"TS.app.card('loss').charts[0].spec.series.length === {single}")


def test_collapse_and_export(page, site):
    open_run(page, site["url"], site["plain"])
    card = page.locator("#panel-loss")
    card.locator("button.toggle").click()
    assert not card.locator(".card-body").is_visible()
    page.reload()
    page.wait_for_selector("#panel-tokens .uplot")
    assert not page.locator("#panel-loss .card-body").is_visible()  # remembered
    page.locator("#panel-loss button.toggle").click()
    page.wait_for_selector("#panel-loss .uplot")
    with page.expect_download() as download:
        page.locator("#panel-loss button.export", has_text="CSV").click()
    text = Path(download.value.path()).read_text()
    assert text.splitlines()[0] == "chart,series,step,min,max" and "loss,loss,300," in text


def test_million_point_series_renders_light(page, million_run):
    from trainspect.dashboard.server import start

    root, ref = million_run
    server = start(root, port=0)
    try:
        started = time.monotonic()
        open_run(page, server.url, ref)
        elapsed = time.monotonic() - started
        n = page.evaluate("TS.app.card('loss').charts[0].data[0].length")
        assert 0 < n <= 4000 and elapsed < 10.0, (n, elapsed)
        assert page.evaluate("1 + 1") == 2  # the page still answers
    finally:
        server.stop()


def test_report_opens_offline(page, site, tmp_path):
    from trainspect.dashboard.report import write_report

    out = write_report(site["hostile"], tmp_path / "report.html", dir=site["root"])
    page.goto(out.as_uri())
    page.wait_for_selector("#panel-loss .uplot", timeout=15_000)
    page.wait_for_selector("#panel-predictions .sample")
    assert page.evaluate("window.__xss") is None and page.locator("img").count() == 0
    assert "report" in page.locator("#live").inner_text()
    page.evaluate("TS.app.card('predictions').setParams({step: 100})")
    wait_js(page, "document.querySelector('#panel-predictions .sample-step').textContent"
                  " === 'step 100'")
    with page.expect_download() as download:
        page.locator("#panel-alerts button.export", has_text="JSON").click()
    assert "eval_plateau" in Path(download.value.path()).read_text()
    assert page.problems == []  # CSP let every inlined script run, and nothing else
