"""Screenshots of the dashboard's main views into docs/screenshots/*.png, from real demo runs.

Trains the CPU demo twice into a runs directory (a healthy run and one with planted
faults, `trainspect demo --plant-faults`), serves them on a free loopback port, and
photographs the page with Debian's Chromium via Playwright. With `--dir` the runs are
kept there, and a directory that already holds both is photographed without training:

    python tools/screenshots.py [--out docs/screenshots] [--steps 240] [--dir D]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.dashboard.conftest import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from trainspect.dashboard.server import start  # noqa: E402
from trainspect.demo.command import run_demo  # noqa: E402

# (file name, panel to photograph or None for the top of the page, parameters to set)
SHOTS = [
    ("overview", None, None),
    ("tokens", "tokens", None),
    ("fixed_eval", "fixed_eval", None),
    ("patterns", "patterns", None),
    ("calibration", "calibration", None),
    ("predictions", "predictions", None),
    ("losses", "losses", None),
    ("lora", "lora", None),
    ("gradients", "gradients", None),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    parser.add_argument("--steps", type=int, default=240)
    parser.add_argument("--dir", default=None, help="keep (or reuse) the demo runs here")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import sync_playwright

    import trainspect as ts

    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.dir or scratch
        demos = [v for v in ts.open(tmp).runs() if v.project == "demo"] if Path(tmp).is_dir() \
            else []
        if len(demos) < 2:
            run_demo(steps=args.steps, dir=tmp, plant_faults=True)
            run_demo(steps=args.steps, dir=tmp)
            demos = [v for v in ts.open(tmp).runs() if v.project == "demo"]
        healthy, faulty = sorted(demos[:2], key=lambda v: v.name == "planted-faults")
        ref, other = f"{healthy.project}/{healthy.id}", f"{faulty.project}/{faulty.id}"
        server = start(tmp, port=0)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 950})
                page.goto(f"{server.url}#run={healthy.id}")  # a bare id, as the CLI prints it
                page.wait_for_selector("#panel-lora .heatmap canvas", timeout=30_000)
                time.sleep(0.5)
                for name, panel, params in SHOTS:
                    if params:
                        page.evaluate(f"TS.app.card({panel!r}).setParams({params!r})")
                        time.sleep(0.8)
                    target = page if panel is None else page.locator(f"#panel-{panel}")
                    target.screenshot(path=str(out / f"{name}.png"))
                page.locator("#toolbar .tab[data-tab=system]").click()
                page.wait_for_selector("#panel-system .uplot", timeout=20_000)
                time.sleep(0.5)
                page.locator("#panel-system").screenshot(path=str(out / "system.png"))
                page.goto(f"{server.url}#run={ref}&compare={other}")
                page.wait_for_selector("#compare-list .chip", timeout=20_000)
                page.locator("#toolbar .smoothing").evaluate(
                    "el => { el.value = '0.6'; el.dispatchEvent(new Event('change')); }")
                time.sleep(1.0)
                page.locator("#panel-loss").screenshot(path=str(out / "compare.png"))
                browser.close()
        finally:
            server.stop()
    logging.getLogger("trainspect.tools").info("wrote %d screenshots to %s", len(SHOTS) + 2, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
