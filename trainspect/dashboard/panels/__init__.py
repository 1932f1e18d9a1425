"""The dashboard's panels, in page order. Each module holds its query (`_impl`) and its
`PANEL`; its view is `static/js/panels/<name>.js`. The runs list is separate
(`panels/runs.py`): it reads every run, not one.
"""

from __future__ import annotations

from trainspect.dashboard.panels import (
    alerts,
    calibration,
    doctor,
    fixed_eval,
    gradients,
    hidden,
    lora,
    loss,
    losses,
    patterns,
    predictions,
    scalars,
    speed,
    system,
    tokens,
)
from trainspect.dashboard.panels.base import Panel

PANELS: dict[str, Panel] = {
    m.PANEL.name: m.PANEL
    for m in (doctor, alerts, loss, tokens, fixed_eval, patterns, calibration, predictions,
              losses, lora, gradients, hidden, speed, scalars, system)
}

__all__ = ["PANELS", "Panel"]
