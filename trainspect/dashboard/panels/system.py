"""System metrics panel (its own tab): GPU utilisation, memory, power and temperature, CPU,
RAM and disk I/O, as the run's sampler thread recorded them (`sys/*`, see
`trainspect.probes.system`). One chart per quantity overlays the GPUs; units are in
the names and titles.
"""

from __future__ import annotations

import re

from trainspect.dashboard.panels.base import (
    Data,
    Panel,
    Params,
    buckets_param,
    chart,
    charts_data,
    finite,
)
from trainspect.store.reader import RunView

NAME = "system"
TITLE = "System metrics"
_GPU = re.compile(r"^sys/gpu(\d+)/(.+)$")
HOST_CHARTS = (  # (chart id, title, keys with their legend labels)
    ("cpu", "CPU busy (%)", {"sys/cpu_pct": "all cores"}),
    ("ram", "Memory in use (GiB)", {"sys/ram_used_gib": "machine", "sys/proc_rss_gib":
                                    "this process"}),
    ("ram_pct", "Memory in use (%)", {"sys/ram_pct": "machine"}),
    ("disk", "Disk I/O (MiB/s)", {"sys/disk_read_mib_s": "read", "sys/disk_write_mib_s":
                                  "write"}),
)
GPU_CHARTS = (("util_pct", "GPU utilisation (%)"), ("mem_used_gib", "GPU memory in use (GiB)"),
              ("mem_pct", "GPU memory in use (%)"), ("power_w", "GPU power (W)"),
              ("temp_c", "GPU temperature (°C)"))
PERCENT = (0.0, 100.0)  # the y range of a chart of percentages
EMPTY = ("No system metrics in this run yet. A run samples GPU utilisation and memory "
         "(NVML), CPU, RAM and disk I/O (psutil) every 10 s on a thread of its own: "
         "`pip install 'trainspect[system]'` provides both, and ts.init(system_metrics=False) "
         "switches it off.")


def claims(key: str) -> bool:
    return key.startswith("sys/")


def _impl(view: RunView, buckets: int | None = 1000) -> Data:
    keys = [k for k in view.keys() if claims(k)]
    have = set(keys)
    gpus = sorted({int(m.group(1)) for k in keys if (m := _GPU.match(k))})
    charts = [chart(cid, title, view, list(labels), buckets, labels=labels, have=have,
                    **_range(cid))
              for cid, title, labels in HOST_CHARTS]
    shown = {k for _, _, labels in HOST_CHARTS for k in labels}
    for metric, title in GPU_CHARTS:
        chosen = {f"sys/gpu{i}/{metric}": f"gpu{i}" for i in gpus}
        charts.append(chart(f"gpu_{metric}", title, view, list(chosen), buckets, labels=chosen,
                            have=have, **_range(metric)))
        shown |= set(chosen)
    charts += [chart(k, k, view, [k], buckets, have=have) for k in keys if k not in shown]
    data = charts_data(charts)
    latest = view.latest_values()
    data["latest"] = {k: finite(latest.get(k)) for k in keys}
    data["gpus"] = len(gpus)
    if data["empty"]:
        data["reason"] = EMPTY
    return data


def _range(chart_id: str) -> dict:
    """Percentages are drawn on 0-100, so 100% busy reads as full, not as a mid line."""
    return {"y_range": PERCENT} if chart_id.endswith("pct") or chart_id == "cpu" else {}


def query(view: RunView, params: Params) -> Data:
    return _impl(view, buckets_param(params))


PANEL = Panel(NAME, TITLE, query, overlay=True, claims=claims, tab="system")
