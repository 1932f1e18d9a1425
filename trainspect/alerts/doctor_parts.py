"""The parts of a diagnosis read straight from the store: best checkpoint, weakest spots.

Each reads whichever of its sources the run has (scalars first, then the
matrices the probes write, then metadata) and returns None or empty lists when
there is nothing: a run without a fixed eval has no best checkpoint, and says so
by omission rather than by a made-up zero.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from trainspect.store.reader import RunView

_PATTERN = re.compile(r"^eval/([^/]+)/em$")
_CELL = re.compile(r"^eval/([^/]+)/([^/]+)/em$")
_POSITION = re.compile(r"^draft/pos(\d+)/(acc|cond_acc)$")
_CODEBOOK = re.compile(r"^([^/]+)/cb(\d+)/acc$")
_LORA = re.compile(r"^(lora|delta)/([^/]+)/([^/]+)$")  # LoRA, else full-weight deltas
NOT_PATTERNS = frozenset({"trend"})  # eval/trend/em is the fixed eval's trend, not a pattern
_GRAD = re.compile(r"^grad/(.+)/norm$")
_CHECKPOINT = re.compile(r"checkpoint[-_/.\w]*")
SHOW = 3  # entries per "most" / "least" list


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


# ---- best checkpoint -----------------------------------------------------------------


def best_checkpoint(view: RunView, keys: list[str]) -> dict[str, Any] | None:
    """The best eval point and its checkpoint name, from eval/em (max) else eval/ce (min).

    The fixed eval's own summary (metadata `eval/summary`, written by `run.evaluate`)
    wins when present. Otherwise the name comes from the run's metadata
    (`best_checkpoint`, or `checkpoints` {step: name}), else an alert at that step
    naming a checkpoint, else "step N".
    """
    meta = view.meta
    summary = meta.get("eval/summary")
    if isinstance(summary, dict) and isinstance(summary.get("best"), dict):
        best, by = summary["best"], str(summary.get("best_by") or "em")
        return {"checkpoint": str(best.get("checkpoint") or f"step {best.get('step')}"),
                "step": best.get("step"), "metric": f"eval/{by}", "value": best.get(by),
                "source": "eval/summary"}
    named = meta.get("best_checkpoint")
    if isinstance(named, dict) and (named.get("checkpoint") or named.get("name")):
        return {"checkpoint": str(named.get("checkpoint") or named.get("name")),
                "step": named.get("step"), "metric": named.get("metric", "eval/em"),
                "value": named.get("em", named.get("value")), "source": "meta"}
    if isinstance(named, str) and named:
        return {"checkpoint": named, "step": None, "metric": None, "value": None,
                "source": "meta"}
    metric = "eval/em" if "eval/em" in keys else ("eval/ce" if "eval/ce" in keys else None)
    if metric is None:
        return None
    steps, values = view.arrays(metric)
    ok = np.isfinite(values)
    if not ok.any():
        return None
    masked = np.where(ok, values, -np.inf if metric == "eval/em" else np.inf)
    i = int(np.argmax(masked) if metric == "eval/em" else np.argmin(masked))
    step = int(steps[i])
    return {"checkpoint": checkpoint_name(view, step) or f"step {step}", "step": step,
            "metric": metric, "value": float(values[i]), "source": metric}


def checkpoint_name(view: RunView, step: int) -> str | None:
    checkpoints = view.meta.get("checkpoints") or (view.meta.get("eval/summary") or {}).get(
        "checkpoints")
    if isinstance(checkpoints, dict) and checkpoints.get(str(step)):
        return str(checkpoints[str(step)])
    if isinstance(checkpoints, list):
        for entry in checkpoints:
            if isinstance(entry, dict) and entry.get("step") == step and entry.get("name"):
                return str(entry["name"])
    for alert in view.alerts():
        if alert["step"] != step:
            continue
        if alert["rule"] == "checkpoint" and alert["message"]:
            return str(alert["message"]).strip()
        found = _CHECKPOINT.search(alert["message"])
        if found:
            return found.group(0)
    return None


# ---- weakest spots ---------------------------------------------------------------------


def weakest(view: RunView, keys: list[str], latest: dict[str, float]) -> dict[str, Any]:
    """Patterns, pattern x length cells, draft positions, codebooks, layers, worst first."""
    patterns, cells = _patterns(view, keys, latest)
    positions, bottleneck = _positions(keys, latest)
    return {"patterns": patterns, "cells": cells, "positions": positions,
            "bottleneck": bottleneck, "codebooks": _codebooks(keys, latest),
            "layers": _layers(view, keys, latest), "grad_layers": _grad_layers(keys, latest)}


def _patterns(view: RunView, keys: list[str], latest: dict[str, float]) -> tuple[list, list]:
    cells = [{"pattern": m.group(1), "bin": m.group(2), "em": latest[k]}
             for k in keys if (m := _CELL.match(k)) and _finite(latest.get(k))]
    if not cells:
        matrix = view.matrix("eval/pattern_length") if "eval/pattern_length" in \
            view.matrix_names() else None
        if matrix:
            for r, row in enumerate(matrix["values"]):
                for c, value in enumerate(row):
                    if _finite(value):
                        cells.append({"pattern": _label(matrix["row_labels"], r),
                                      "bin": _label(matrix["col_labels"], c), "em": value})
    patterns = [{"name": m.group(1), "em": latest[k]} for k in keys
                if (m := _PATTERN.match(k)) and m.group(1) not in NOT_PATTERNS
                and _finite(latest.get(k))]
    if not patterns and cells:  # the unweighted mean of each pattern's length bins
        by: dict[str, list[float]] = {}
        for c in cells:
            by.setdefault(c["pattern"], []).append(c["em"])
        patterns = [{"name": p, "em": float(np.mean(v))} for p, v in by.items()]
    return sorted(patterns, key=lambda p: p["em"]), sorted(cells, key=lambda c: c["em"])


def _label(labels: list, i: int) -> str:
    return str(labels[i]) if i < len(labels) else str(i)


def _positions(keys: list[str], latest: dict[str, float]) -> tuple[list, dict | None]:
    found: dict[int, dict[str, Any]] = {}
    for k in keys:
        m = _POSITION.match(k)
        if m and _finite(latest.get(k)):
            found.setdefault(int(m.group(1)), {"index": int(m.group(1))})[m.group(2)] = latest[k]
    positions = [found[i] for i in sorted(found) if "acc" in found[i]]
    cond = [p for p in positions if p["index"] >= 1 and "cond_acc" in p]
    if cond:
        low = min(cond, key=lambda p: p["cond_acc"])
        return positions, {"index": low["index"],
                           "why": f"lowest accuracy given earlier positions right: "
                                  f"{low['cond_acc']:.3g}"}
    drops = [(positions[j]["acc"] / positions[j - 1]["acc"], positions[j]["index"])
             for j in range(1, len(positions)) if positions[j - 1]["acc"] > 0]
    if not drops:
        return positions, None
    ratio, index = min(drops)
    return positions, {"index": index,
                       "why": f"keeps {ratio:.0%} of the previous position's accuracy"}


def _codebooks(keys: list[str], latest: dict[str, float]) -> list[dict[str, Any]]:
    books = [{"stream": m.group(1), "index": int(m.group(2)), "acc": latest[k]}
             for k in keys if (m := _CODEBOOK.match(k)) and _finite(latest.get(k))]
    return sorted(books, key=lambda b: b["acc"])


def _layers(view: RunView, keys: list[str], latest: dict[str, float]) -> dict[str, list]:
    """Layers by their update norm ||dW||_F summed over blocks (`lora/<layer>/<block>`,
    else the full-weight `delta/<layer>/<block>`, else the `lora/layers` matrix)."""
    totals: dict[str, float] = {}
    for family in ("lora", "delta"):
        for k in keys:
            m = _LORA.match(k)
            if m and m.group(1) == family and _finite(latest.get(k)):
                totals[m.group(2)] = totals.get(m.group(2), 0.0) + latest[k]
        if totals:
            break
    if not totals and "lora/layers" in view.matrix_names():
        matrix = view.matrix("lora/layers")
        for r, row in enumerate(matrix["values"] if matrix else []):
            values = [v for v in row if _finite(v)]
            if values:
                totals[_label(matrix["row_labels"], r)] = float(sum(values))
    most, least = _ends(sorted(totals.items(), key=lambda kv: kv[1]))
    if not most:
        return {}
    return {"most": [{"layer": n, "delta": v} for n, v in most],
            "least": [{"layer": n, "delta": v} for n, v in least]}


def _grad_layers(keys: list[str], latest: dict[str, float]) -> dict[str, list]:
    largest, smallest = _ends(sorted(
        ((m.group(1), latest[k]) for k in keys if (m := _GRAD.match(k)) and _finite(latest.get(k))),
        key=lambda kv: kv[1]))
    if not largest:
        return {}
    return {"largest": [{"layer": n, "norm": v} for n, v in largest],
            "smallest": [{"layer": n, "norm": v} for n, v in smallest]}


def _ends(ranked: list[tuple[str, float]]) -> tuple[list, list]:
    """The top SHOW (largest first) and the bottom SHOW (smallest first), never overlapping."""
    top = list(reversed(ranked[-SHOW:]))
    bottom = ranked[: min(SHOW, len(ranked) - len(top))]
    return top, bottom
