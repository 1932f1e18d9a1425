"""The chart controls in a real browser (Debian's Chromium through Playwright): smoothing,
log axes, the metric filter, per-run colours and visibility, the system tab, links by bare
id, suffix or name, a short run's samples, empty panels that say why, and LoRA bars drawn
on one scale. One browser and one set of runs for the whole module."""

from __future__ import annotations

import math

import pytest
import torch

import trainspect as ts
from tests.dashboard.conftest import browser_missing, open_run, wait_js
from tests.dashboard.synthetic import make_run
from trainspect import Matrix

pytestmark = pytest.mark.browser
SIGNED = [-2.0, -0.5, 0.0, 0.25, 1.0, 3.0, 10.0]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if browser_missing():
        pytest.skip(browser_missing())
    from trainspect.dashboard.server import start

    root = tmp_path_factory.mktemp("views")
    r16 = make_run(root, name="r16", steps=300)
    r8 = make_run(root, name="r8", steps=300, seed=3, rate=0.6)
    with ts.init(project="demo", name="signed", dir=root, system_metrics=False) as run:
        for step, value in enumerate(SIGNED, start=1):
            run.log({"loss": 1.0, "custom/signed": value, "custom/narrow": 0.9240 + step / 2e4},
                    step=step)
    signed = f"demo/{run.id}"
    with ts.init(project="demo", name="short", dir=root, samples_every=200, num_samples=2,
                 system_metrics=False) as run:  # 30 steps, samples_every 200
        g = torch.Generator().manual_seed(0)
        for step in range(1, 31):
            logits = torch.randn(2, 6, 17, generator=g)
            run.observe(step, logits, logits.argmax(-1).roll(1, dims=1))
            run.log({"loss": 2.0 - step / 30}, step=step)
    short = f"demo/{run.id}"
    with ts.init(project="demo", name="bars", dir=root, system_metrics=False) as run:
        run.log({"loss": 1.0}, step=1)  # 11.65 has the longer note: narrower before the fix
        third = 11.65 / math.sqrt(3)  # a layer's total is the norm over its blocks
        run.emit(Matrix("lora/layers", 1, [[third, third, third], [11.61, 0.0, 0.0],
                                           [1.0, 0.5, 0.25]],
                        ["long", "short", "small"], ["qkv", "o", "mlp"]))
    bars = f"demo/{run.id}"
    server = start(root, port=0, poll_s=0.1)
    yield {"url": server.url, "r16": r16, "r8": r8, "signed": signed, "short": short,
           "bars": bars}
    server.stop()


def drawn(page, panel: str, chart: str, series: int = 1) -> list:
    """The y values a uPlot chart draws for one series (index 0 is x)."""
    return page.evaluate(f"TS.app.card({panel!r}).charts.find(c => c.spec.id === {chart!r})"
                         f".plot.data[{series}]")


def set_control(page, selector: str, value) -> None:
    """Set an input as a user would: its value, then input and change events."""
    page.locator(selector).evaluate(
        "(el, v) => { if (el.type === 'checkbox') el.checked = v; else el.value = String(v);"
        " el.dispatchEvent(new Event('input')); el.dispatchEvent(new Event('change')); }",
        value)


def reference_ema(values: list[float], weight: float) -> list[float]:
    """TensorBoard's debiased EMA in float64."""
    out, last = [], 0.0
    for n, v in enumerate(values, start=1):
        last = last * weight + (1 - weight) * v
        out.append(last / (1 - weight**n))
    return out


def test_smoothing_draws_a_debiased_ema_over_the_raw_line(page, site):
    open_run(page, site["url"], site["r16"])
    raw = drawn(page, "loss", "loss")
    lines = page.evaluate("TS.app.card('loss').charts[0].spec.series.length")
    set_control(page, "#toolbar .smoothing", 0.9)
    # x, then a (raw, smoothed) pair per line
    wait_js(page, f"TS.app.card('loss').charts[0].plot.series.length === {1 + 2 * lines}")
    assert drawn(page, "loss", "loss", 1) == raw  # the raw line stays, faint
    smooth = [v for v in drawn(page, "loss", "loss", 2) if v is not None]
    finite = [v for v in raw if v is not None]
    assert smooth == pytest.approx(reference_ema(finite, 0.9), rel=1e-9)
    assert page.evaluate("TS.app.card('loss').charts[0].plot.series[1].class") == "raw"
    page.reload()  # remembered
    page.wait_for_selector("#panel-loss .uplot")
    assert page.locator("#toolbar .smoothing").input_value() == "0.9"
    set_control(page, "#toolbar .smoothing", 0)
    wait_js(page, f"TS.app.card('loss').charts[0].plot.series.length === {1 + lines}")
    assert page.problems == []


def test_log_axes_leave_gaps_where_they_cannot_draw(page, site):
    open_run(page, site["url"], site["signed"])
    page.wait_for_selector("#panel-scalars .uplot")
    set_control(page, "#toolbar .axis-logY", True)
    wait_js(page, "TS.app.card('scalars').charts[0].plot.scales.y.distr === 3")
    assert drawn(page, "scalars", "custom/signed") == [v if v > 0 else None for v in SIGNED]
    set_control(page, "#toolbar .axis-logX", True)
    wait_js(page, "TS.app.card('scalars').charts[0].plot.scales.x.distr === 3")
    assert page.evaluate("TS.app.card('scalars').charts[0].plot.data[0]") == [1, 2, 3, 4, 5, 6, 7]
    for name in ("logY", "logX"):
        set_control(page, f"#toolbar .axis-{name}", False)
    wait_js(page, "TS.app.card('scalars').charts[0].plot.scales.y.distr === 1")
    assert drawn(page, "scalars", "custom/signed") == SIGNED
    ticks = page.evaluate("TS.app.card('scalars').charts.find(c => c.spec.id === 'custom/narrow')"
                          ".plot.axes[1]._values")
    assert len(ticks) > 2 and len(set(ticks)) == len(ticks)  # 0.9241, 0.9242: not 0.924 twice
    assert page.problems == []


def test_metric_filter_keeps_matching_charts_and_their_cards(page, site):
    open_run(page, site["url"], site["r16"])
    page.wait_for_selector("#panel-gradients .uplot")
    page.locator("#toolbar .metric-filter").fill("entropy")
    wait_js(page, "document.querySelector('#panel-gradients').offsetParent === null")
    shown = page.evaluate(
        "TS.app.cards.flatMap(card => card.charts.filter(c => c.root.offsetParent).map(c =>"
        " [c.spec.id, [c.spec.title, ...c.spec.series.map(s => s.key)].join(' ')]))")
    assert shown and all("entropy" in hay.lower() for _, hay in shown)
    assert {"text/entropy", "entropy", "ce"} <= {cid for cid, _ in shown}  # "Cross-entropy"
    hidden = page.evaluate("TS.app.card('loss').charts.filter(c => !c.root.offsetParent)"
                           ".map(c => c.spec.id)")
    assert hidden == ["loss", "lr"]
    assert page.locator("#panel-alerts").is_visible()  # panels without charts stay
    page.locator("#toolbar .metric-filter").fill("")
    wait_js(page, "document.querySelector('#panel-gradients .chart').offsetParent !== null")


def test_each_run_has_a_colour_and_a_toggle(page, site):
    open_run(page, site["url"], site["r16"], compare=site["r8"])
    page.wait_for_selector("#compare-list .run-chip")
    lines = "TS.app.card('loss').charts[0]"
    wait_js(page, f"{lines}.spec.series.length === 6")  # loss, loss/total, eval/ce per run
    chips = page.locator("#compare-list .run-chip")
    assert chips.count() == 2 and "vs r8" in chips.nth(1).inner_text()
    colours = page.evaluate(f"{lines}.seriesOpts().map(o => o.stroke)")
    assert len(set(colours[:3])) == 1 and len(set(colours[3:])) == 1  # one colour per run
    assert colours[0] != colours[3]
    chips.nth(1).locator(".run-toggle").click()
    shows = f"{lines}.plot.series.slice(1).map(s => s.show)"
    wait_js(page, f"JSON.stringify({shows}) === '[true,true,true,false,false,false]'")
    assert page.evaluate("TS.app.card('tokens').charts[0].plot.series.slice(1)"
                         ".filter(s => !s.show).length") > 0  # every chart, not one
    chips.nth(1).locator(".run-toggle").click()
    wait_js(page, f"{shows}.every(Boolean)")
    set_control(page, "#compare-list .run-chip:nth-child(2) .swatch", "#00aa00")
    wait_js(page, f"{lines}.seriesOpts()[3].stroke === '#00aa00'")
    assert page.evaluate(f"{lines}.seriesOpts()[0].stroke") == colours[0]
    assert page.problems == []


def test_the_system_tab_shows_system_metrics_only(page, site):
    open_run(page, site["url"], site["r16"])
    assert not page.locator("#panel-system").is_visible()
    page.locator("#toolbar .tab[data-tab=system]").click()
    page.wait_for_selector("#panel-system .uplot")
    assert not page.locator("#panel-loss").is_visible() and "tab=system" in page.url
    titles = page.locator("#panel-system .chart-title").all_inner_texts()
    assert "GPU utilisation (%)" in titles and "CPU busy (%)" in titles
    cpu = "TS.app.card('system').charts.find(c => c.spec.id === 'cpu').plot.scales.y"
    assert page.evaluate(f"[{cpu}.min, {cpu}.max]") == [0, 100]  # percentages: 0-100
    page.reload()  # the tab is in the link
    page.wait_for_selector("#panel-system .uplot")
    page.locator("#toolbar .tab[data-tab=training]").click()
    page.wait_for_selector("#panel-loss .uplot")
    page.locator("#toolbar .tab[data-tab=system]").click()
    page.evaluate(f"location.hash = 'run={site['r8']}'")  # a pasted link without a tab
    page.wait_for_selector("#panel-loss .uplot")
    assert not page.locator("#panel-system").is_visible()
    assert page.problems == []


@pytest.mark.parametrize("how", ["bare id", "suffix", "name"])
def test_a_link_by_bare_id_suffix_or_name_opens_every_panel(page, site, how):
    project, run_id = site["r8"].split("/")
    ref = {"bare id": run_id, "suffix": run_id[-7:], "name": "r8"}[how]
    open_run(page, site["url"], site["r8"].replace(site["r8"], ref))
    assert page.evaluate("TS.app.primary") == site["r8"]
    wait_js(page, "TS.app.cards.every(c => c.tab !== 'training' || c.data !== null)")
    assert page.locator(".card .error").count() == 0
    assert page.evaluate("TS.app.cards.filter(c => c.tab === 'training' && c.data.empty)"
                         ".map(c => c.name)") == ["scalars"]  # every key has its own panel
    assert page.locator("#run-title").inner_text() == "demo / r8"


def test_an_unknown_run_says_so_in_every_panel(page, site):
    page.goto(site["url"] + "#run=no-such-run")
    page.wait_for_selector("#panel-loss .empty")
    assert "No such run: run no-such-run" in page.locator("#panel-loss").inner_text()


def test_a_30_step_run_shows_its_samples_and_empty_panels_say_why(page, site):
    open_run(page, site["url"], site["short"])
    page.wait_for_selector("#panel-predictions .sample")
    assert page.locator("#panel-predictions .sample-step").first.inner_text() == "step 1"
    fixed = page.locator("#panel-fixed_eval .empty").inner_text()
    assert "This run ran no fixed eval" in fixed and "samples_every" not in fixed
    assert "run.watch was not called" in page.locator("#panel-lora .empty").inner_text()


def test_lora_bars_share_one_scale(page, site):
    open_run(page, site["url"], site["bars"])
    page.wait_for_selector("#panel-lora .bar-row")
    rows = page.evaluate("[...document.querySelectorAll('#panel-lora .bar-row')].map(r => ({"
                         "label: r.querySelector('.bar-label').textContent,"
                         "fill: r.querySelector('.bar-fill').getBoundingClientRect().width,"
                         "track: r.querySelector('.bar-track').getBoundingClientRect().width}))")
    by = {r["label"]: r for r in rows}
    assert len({round(r["track"], 1) for r in rows}) == 1  # one track width for all bars
    assert by["layer long"]["fill"] > by["layer short"]["fill"]  # 11.65 > 11.61
    for label, total in (("layer long", 11.65), ("layer short", 11.61),
                         ("layer small", math.sqrt(1.3125))):
        assert by[label]["fill"] / by[label]["track"] == pytest.approx(total / 11.65, abs=0.002)
    assert math.isclose(by["layer long"]["fill"], by["layer long"]["track"], rel_tol=1e-3)
