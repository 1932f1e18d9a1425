"""Starting test runs with the alert engine on or off, whether or not `ts.init` wires it.

Once Run takes `alerts=` (the engine on by default), `start(live=True)` uses the run's
own engine and `start(live=False)` turns it off; before that, the engine is attached
by hand the same way Run does it (`run.add_observer(engine.observe)`).
"""

from __future__ import annotations

import inspect
from typing import Any

import trainspect as ts
from trainspect.alerts import AlertEngine

WIRED = "alerts" in inspect.signature(ts.Run.__init__).parameters


def start(live: bool, **kwargs: Any) -> ts.Run:
    if WIRED:
        return ts.init(alerts=live, **kwargs)
    run = ts.init(**kwargs)
    if live:
        run.alerts = AlertEngine(config=run.config, console=False)
        run.add_observer(run.alerts.observe)
    return run
