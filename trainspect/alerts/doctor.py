"""`trainspect doctor`: a diagnosis of a stored run in plain words, and what to do next.

`diagnose(view)` reads only the store (a `RunView`) and returns a JSON-ready dict:
the run's state, the best checkpoint, the trend of each headline metric, the
weakest patterns / draft positions / codebooks / layers, the active alerts, and
the next actions, most important first. Every section degrades to empty when its
metrics were not logged. When the run was logged without alert rules, the rules
are replayed over its stored series (see `replay.py`), so it is diagnosed anyway.

The trend of a metric is the slope test of `stats.trend` over its last
max(5, n/3) points (at most 200): improving / worsening when the least-squares
slope is >= 2 standard errors from zero and the fitted change is >= 1% of the
level, else stuck; fewer than 4 points say "too few points".
"""

from __future__ import annotations

import math
import time
from typing import Any

from trainspect.alerts.doctor_parts import best_checkpoint, weakest
from trainspect.alerts.engine import LEVEL_RANK
from trainspect.alerts.replay import as_alert, is_builtin, replay
from trainspect.alerts.rules import BUILTIN
from trainspect.alerts.rules.common import LOSS_KEYS
from trainspect.alerts.stats import num, trend
from trainspect.errors import TrainspectError
from trainspect.store.reader import RunView

TREND_WINDOW_MIN, TREND_WINDOW_MAX = 5, 200
# metric name endings and whether higher is better
GOALS = {"acc": True, "em": True, "accept_len": True, "tokens_per_s": True, "alpha": True,
         "teacher_agree": True, "loss": False, "ce": False, "ece": False, "kl": False,
         "total": False}
_RULE_ORDER = {cls.id: i for i, cls in enumerate(BUILTIN)}
REPLAY_MODES = ("auto", "always", "never")
EFFICIENCY = frozenset({"throughput_drop", "straggler"})  # rules about speed, not learning


def diagnose(view: RunView, replay_rules: str = "auto") -> dict[str, Any]:
    """The diagnosis of one stored run. `replay_rules`: auto (when the run stored no
    built-in alerts), always, or never."""
    if replay_rules not in REPLAY_MODES:
        raise TrainspectError(f"expected `replay` to be one of {REPLAY_MODES}, got "
                              f"{replay_rules!r}")
    view.refresh()
    keys = view.keys()
    latest = view.latest_values()
    run = _run_state(view)
    alerts = _alerts(view, replay_rules)
    best = best_checkpoint(view, keys)
    trends = [_trend(view, k) for k in headline_keys(keys)]
    weak = weakest(view, keys, latest)
    actions = _actions(run, alerts["active"], alerts["resolved"], best, trends, weak)
    verdict = _verdict(run, alerts["active"], best, trends)
    if alerts["resolved"]:
        past = alerts["resolved"][0]
        verdict += (f" Recovered from: {past['message']} (cleared at step "
                    f"{past['cleared_step']}).")
    return {"run": run, "verdict": verdict,
            "best": best, "trends": trends, "weakest": weak, "alerts": alerts,
            "actions": actions}


# ---- sections --------------------------------------------------------------------------


def _run_state(view: RunView) -> dict[str, Any]:
    meta = view.meta
    started = view.started_at
    end = view.ended_at or meta.get("heartbeat_at") or (time.time() if view.status == "running"
                                                        else None)
    return {
        "id": view.id, "project": view.project, "name": view.name, "status": view.status,
        "step": view.last_step(), "started_at": started, "ended_at": view.ended_at,
        "duration_s": (float(end) - float(started)) if started and end else None,
        "attempt": meta.get("attempt", 1), "error": meta.get("error"),
    }


def headline_keys(keys: list[str]) -> list[str]:
    """The metrics whose trend the diagnosis reports, in reading order."""
    have = set(keys)
    chosen = [k for k in LOSS_KEYS if k in have][:1]
    streams = sorted({k.split("/")[0] for k in keys if k.count("/") == 1
                      and k.split("/")[1] in ("ce", "acc") and not k.startswith("eval/")})
    for stream in streams:
        chosen += [k for k in (f"{stream}/ce", f"{stream}/acc", f"{stream}/ece") if k in have]
    chosen += [k for k in ("eval/em", "eval/acc", "eval/ce", "eval/ece", "draft/accept_len",
                           "speed/tokens_per_s") if k in have]
    return chosen


def goal_up(key: str) -> bool | None:
    return GOALS.get(key.rsplit("/", 1)[-1])


def _trend(view: RunView, key: str) -> dict[str, Any]:
    steps, values = view.arrays(key)
    n = int(steps.size)
    window = min(max(TREND_WINDOW_MIN, n // 3), TREND_WINDOW_MAX)
    t = trend(steps[-window:], values[-window:])
    up = goal_up(key)
    if n and not math.isfinite(values[-1]):
        verdict = "non-finite"
    elif t.direction == "unknown":
        verdict = "too few points"
    elif t.direction == "flat":
        verdict = "stuck"
    elif up is None:
        verdict = t.direction
    else:
        verdict = "improving" if (t.direction == "rising") == up else "worsening"
    finite = values[values == values]
    best = None if not finite.size or up is None else float(finite.max() if up else finite.min())
    return {"key": key, "last": float(values[-1]) if n else None, "best": best,
            "direction": t.direction, "verdict": verdict, "slope": t.slope, "t": t.t,
            "points": t.points, "first_step": t.first_step, "last_step": t.last_step}


def _alerts(view: RunView, mode: str) -> dict[str, Any]:
    stored = view.alerts()
    builtin_stored = any(is_builtin(a["rule"]) for a in stored)
    # a run started with the engine records its rule ids: then "no alerts" means healthy
    live = any(is_builtin(str(r)) for r in view.meta.get("alert_rules") or ())
    do_replay = mode == "always" or (mode == "auto" and not builtin_stored and not live)
    if do_replay:
        rows = [a for a in stored if not is_builtin(a["rule"])]
        rows += [_row(a) for a in replay(view)]
        rows.sort(key=lambda a: a["step"])
        source = "replay"
    else:
        rows, source = stored, "store"
    active: dict[str, dict] = {}
    resolved: dict[str, dict] = {}  # the latest episode of each rule that came and went
    for row in rows:
        if row.get("state") == "cleared":
            fired = active.pop(row["rule"], None)
            if fired is not None and fired["level"] != "info":
                resolved[row["rule"]] = {**fired, "cleared_step": row["step"]}
        else:
            active[row["rule"]] = row
            resolved.pop(row["rule"], None)
    return {"source": source, "fired": sum(r.get("state") != "cleared" for r in rows),
            "cleared": sum(r.get("state") == "cleared" for r in rows),
            "active": sorted(active.values(), key=_importance),
            "resolved": sorted(resolved.values(), key=_importance)}


def _row(alert: Any) -> dict[str, Any]:
    return {"step": alert.step, "rule": alert.rule, "level": alert.level,
            "message": alert.message, "action": alert.action, "state": alert.state,
            "wall_time": alert.wall_time}


def _efficiency(row: dict) -> bool:
    """Alerts about the machine's speed rather than what the model learns."""
    return row["rule"].split(":", 1)[0] in EFFICIENCY or row["rule"].startswith("speed.")


def _importance(row: dict) -> tuple:
    """Level first; at one level what the model learns before the machine's speed, then
    the built-in rules' order (most fundamental first), then time."""
    rule = row["rule"].split(":", 1)[0]
    return (-LEVEL_RANK.get(row["level"], 1), _efficiency(row),
            _RULE_ORDER.get(rule, len(_RULE_ORDER)), row["step"])


def _actions(run: dict, active: list[dict], resolved: list[dict], best: dict | None,
             trends: list[dict], weak: dict) -> list[dict[str, Any]]:
    actions: list[dict[str, Any]] = []
    if run["status"] == "crashed":
        actions.append({"level": "critical", "rule": "run_state", "text":
                        f"The run crashed at step {run['step']} (its process stopped without "
                        f"finishing): find the cause in its log, then continue it with "
                        f"ts.init(project={run['project']!r}, resume={run['id']!r})."})
    elif run["status"] == "failed":
        error = run.get("error") or "see its log"
        actions.append({"level": "critical", "rule": "run_state",
                        "text": f"The run failed at step {run['step']}: {error}."})
    seen = set()
    # what the model learns first, what is still wrong before what came and went (a
    # spike, a burst of NaN still has a cause to find), and the machine's speed last
    ordered = ([r for r in active if not _efficiency(r)] + [r for r in resolved
               if not _efficiency(r)] + [r for r in active if _efficiency(r)])
    for row in ordered:
        if not row["action"] and row["level"] == "info":
            continue  # a note (a saved checkpoint, the user's remark), not something to do
        text = row["action"] or f"Look into: {row['message']}"
        if text in seen:
            continue
        seen.add(text)
        because = row["message"] + (f" (resolved at step {row['cleared_step']})"
                                    if "cleared_step" in row else "")
        actions.append({"level": row["level"], "rule": row["rule"], "text": text,
                        "because": because})
    patterns = weak.get("patterns") or []
    if len(patterns) >= 2:
        mean = sum(p["em"] for p in patterns) / len(patterns)
        low = patterns[0]
        if mean - low["em"] >= 0.1:
            actions.append({"level": "info", "rule": "weakest_pattern", "text":
                            f"Add training data for the '{low['name']}' pattern: eval EM "
                            f"{num(low['em'])} against {num(mean)} on average."})
    if not any(a["level"] in ("warning", "critical") and "resolved at step" not in
               a.get("because", "") for a in actions):
        improving = [t for t in trends if t["verdict"] == "improving"]
        evals = [t for t in trends if t["key"] in ("eval/em", "eval/ce")]
        if improving and not any(t["verdict"] == "stuck" for t in evals):
            actions.append({"level": "info", "rule": "keep_training", "text":
                            f"Keep training: {', '.join(t['key'] for t in improving[:3])} "
                            f"still improving."})
        elif not evals and trends and trends[0]["verdict"] == "stuck":
            actions.append({"level": "info", "rule": "add_eval", "text":
                            f"{trends[0]['key']} has stopped moving and there is no fixed "
                            "eval to say whether the model still improves: add one "
                            "(ts.FixedEval) before deciding to stop."})
    return actions


def _verdict(run: dict, active: list[dict], best: dict | None, trends: list[dict]) -> str:
    state = {"crashed": "Crashed", "failed": "Failed", "running": "Running",
             "finished": "Finished"}.get(run["status"], run["status"].capitalize())
    where = f"{state} at step {run['step']}" if run["step"] is not None else state
    worst = active[0] if active else None
    if worst and worst["level"] == "critical":
        return f"{where}. Broken: {worst['message']}."
    if worst and worst["level"] == "warning":
        return f"{where}. Needs attention: {worst['message']}."
    plateau = next((a for a in active if a["rule"].split(":")[0] in ("plateau", "eval_plateau")),
                   None)
    if plateau:
        keep = f"; stop and keep {best['checkpoint']}" if best else ""
        return f"{where}. Converged: {plateau['message']}{keep}."
    improving = [t["key"] for t in trends if t["verdict"] == "improving"]
    if improving:
        return f"{where}. Healthy: {', '.join(improving[:3])} still improving."
    if not trends:
        return f"{where}. Nothing logged to judge yet."
    return f"{where}. No problems found."


# ---- text -----------------------------------------------------------------------------


def format_diagnosis(d: dict[str, Any]) -> str:
    """The diagnosis as terminal text (what `trainspect doctor` prints)."""
    r = d["run"]
    lines = [f"run {r['project']}/{r['id']}" + (f"  ({r['name']})" if r["name"] != r["id"]
                                                 else ""),
             f"  {r['status']} at step {r['step'] if r['step'] is not None else '-'}"
             + (f", {_duration(r['duration_s'])}" if r["duration_s"] else "")
             + (f", attempt {r['attempt']}" if r.get("attempt", 1) != 1 else ""),
             "", d["verdict"]]
    if d["best"]:
        b = d["best"]
        value = f" ({b['metric']} {num(b['value'])})" if b.get("value") is not None else ""
        lines += ["", f"best checkpoint: {b['checkpoint']}{value}"]
    if d["trends"]:
        lines += ["", "trends (least-squares slope over the latest points):"]
        width = max(len(t["key"]) for t in d["trends"])
        for t in d["trends"]:
            detail = ("" if t["direction"] == "unknown" else
                      f"  (slope {num(t['slope'])}/step, t={_t(t['t'])}, steps "
                      f"{t['first_step']}-{t['last_step']})")
            lines.append(f"  {t['key']:<{width}}  {num(t['last']):>9}  {t['verdict']}{detail}")
    lines += _format_weakest(d["weakest"])
    active = d["alerts"]["active"]
    how = " (rules replayed over the stored run)" if d["alerts"]["source"] == "replay" else ""
    lines += ["", f"active alerts: {len(active)}{how}"]
    for a in active:
        lines.append(f"  [{a['level']}] step {a['step']} {a['rule']}: {a['message']}")
    resolved = d["alerts"].get("resolved") or []
    if resolved:
        lines += ["", f"resolved alerts: {len(resolved)}"]
        for a in resolved[:10]:
            lines.append(f"  [{a['level']}] steps {a['step']}-{a['cleared_step']} "
                         f"{a['rule']}: {a['message']}")
    lines += ["", "next actions:" if d["actions"] else "next actions: none"]
    for i, a in enumerate(d["actions"], 1):
        lines.append(f"  {i}. [{a['level']}] {a['text']}")
    return "\n".join(lines)


def _format_weakest(w: dict[str, Any]) -> list[str]:
    rows = []
    if w.get("patterns"):
        rows.append("  patterns   " + ", ".join(f"{p['name']} {num(p['em'])}"
                                              for p in w["patterns"][:5]))
    if w.get("cells"):
        rows.append("  cells      " + ", ".join(f"{c['pattern']}/{c['bin']} {num(c['em'])}"
                                              for c in w["cells"][:5]))
    if w.get("positions"):
        curve = ", ".join(f"pos{p['index']} {num(p['acc'])}" for p in w["positions"])
        neck = w.get("bottleneck")
        rows.append(f"  positions  {curve}" + (f"; bottleneck: pos{neck['index']} "
                                               f"({neck['why']})" if neck else ""))
    if w.get("codebooks"):
        rows.append("  codebooks  " + ", ".join(f"{c['stream']}/cb{c['index']} {num(c['acc'])}"
                                              for c in w["codebooks"][:5]))
    layers = w.get("layers") or {}
    if layers.get("most"):
        rows.append("  LoRA       " + _ends_text("adapting most", "least", layers["most"],
                                                  layers.get("least"), "delta"))
    grads = w.get("grad_layers") or {}
    if grads.get("largest"):
        rows.append("  gradients  " + _ends_text("largest", "smallest", grads["largest"],
                                                  grads.get("smallest"), "norm"))
    return ["", "weakest:", *rows] if rows else []


def _ends_text(top_word: str, bottom_word: str, top: list[dict], bottom: list[dict] | None,
               value: str) -> str:
    """'largest: a (1), b (0.5); smallest: c (0.1)', without an empty bottom list (with
    few layers every one of them is already in the top list)."""
    def items(rows: list[dict]) -> str:
        return ", ".join(f"{x['layer']} ({num(x[value])})" for x in rows)

    text = f"{top_word}: {items(top)}"
    return text + (f"; {bottom_word}: {items(bottom)}" if bottom else "")


def _t(t: float) -> str:
    return num(t) if abs(t) < 1000 else (">1000" if t > 0 else "<-1000")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


__all__ = ["as_alert", "diagnose", "format_diagnosis", "headline_keys"]
