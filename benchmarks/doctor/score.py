"""Scoring one benchmark run from what trainspect stored, and the totals over the suite.

For a fault run: detected when an alert whose rule (the part before ':') is one of
the case's `expect` fired at or after the plant step (any level: the plateau rule is
info by design); the lead time is the steps from the plant to the first such alert;
the doctor's first finding is right when `diagnose(view)`'s first action comes from
an expected rule and its finding or action names one of the case's words.

False alarms: every alert at warning or above on a healthy step, that is anywhere in
a healthy run or before the plant in a fault run. Healthy steps are counted the same
way, for false alarms per 1,000 healthy steps.

Precision counts alerts: detections (the first correct alert of each detected fault)
against detections plus false alarms. Alerts after a plant that are not in its
`expect` (symptoms: a loss spike after a learning-rate jump that `expect` does not
list) are neither; they are listed in the JSON output.
"""

from __future__ import annotations

import statistics
from typing import Any

from trainspect.alerts.doctor import diagnose
from trainspect.alerts.replay import is_builtin, replay

WARNING_OR_ABOVE = ("warning", "critical")


def rule_of(name: str) -> str:
    return name.split(":", 1)[0]


def alerts_of(view: Any, replayed: bool) -> list[dict[str, Any]]:
    """The run's stored alerts; with `replayed`, the built-in rules' ones come from a
    replay of the stored series through today's rules (probe and eval alerts as stored)."""
    stored = view.alerts()
    if not replayed:
        return stored
    rows = [a for a in stored if not is_builtin(a["rule"])]
    rows += [{"step": a.step, "rule": a.rule, "level": a.level, "message": a.message,
              "action": a.action, "state": a.state} for a in replay(view)]
    return sorted(rows, key=lambda a: a["step"])


def score_run(case: Any, view: Any, steps: int, replayed: bool = False) -> dict[str, Any]:
    """What the suite reports about one run (JSON-ready). `replayed`: judge today's rules
    on a stored run (see `alerts_of`)."""
    fired = [a for a in alerts_of(view, replayed) if a.get("state") != "cleared"]
    healthy_end = steps if case.healthy else case.plant
    false = [a for a in fired if a["level"] in WARNING_OR_ABOVE and a["step"] < healthy_end]
    correct = [a for a in fired if not case.healthy and a["step"] >= case.plant
               and rule_of(a["rule"]) in case.expect]
    other = [a for a in fired if not case.healthy and a["step"] >= case.plant
             and a["level"] in WARNING_OR_ABOVE and rule_of(a["rule"]) not in case.expect]
    first = min(correct, key=lambda a: a["step"]) if correct else None
    d = diagnose(view, "always" if replayed else "auto")
    action = d["actions"][0] if d["actions"] else None
    said = "" if action is None else f"{action.get('because', '')} {action['text']}".lower()
    right = bool(not case.healthy and action is not None
                 and rule_of(action["rule"]) in case.expect
                 and any(w.lower() in said for w in case.words))
    log_every = case.setup.log_every
    return {
        "id": case.id, "category": case.category, "half": case.half, "kind": case.kind,
        "plant": case.plant, "steps": steps, "healthy_steps": healthy_end,
        "detected": first is not None,
        "rule": first["rule"] if first else None,
        "lead_steps": (first["step"] - case.plant) if first else None,
        "lead_windows": ((first["step"] - case.plant) / log_every) if first else None,
        "doctor_rule": action["rule"] if action else None,
        "doctor_level": action["level"] if action else None,
        "doctor_right": right,
        "doctor_text": action["text"] if action else None,
        "verdict": d["verdict"],
        "false_alarms": [_short(a) for a in false],
        "other_alerts": [_short(a) for a in other],
    }


def _short(a: dict) -> dict[str, Any]:
    return {"step": a["step"], "rule": a["rule"], "level": a["level"],
            "message": a["message"][:200]}


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Recall, precision, false alarms per 1,000 healthy steps, median leads, doctor."""
    faults = [r for r in rows if r["kind"] != "healthy"]
    detected = [r for r in faults if r["detected"]]
    false = sum(len(r["false_alarms"]) for r in rows)
    healthy_steps = sum(r["healthy_steps"] for r in rows)
    leads = {}
    for kind in ("numeric", "data", "other"):
        values = [r["lead_windows"] for r in detected if r["kind"] == kind]
        leads[kind] = statistics.median(values) if values else None
    return {
        "faults": len(faults), "detected": len(detected),
        "recall": len(detected) / len(faults) if faults else None,
        "precision": (len(detected) / (len(detected) + false)) if detected or false else None,
        "false_alarms": false, "healthy_steps": healthy_steps,
        "false_per_1000": 1000 * false / healthy_steps if healthy_steps else None,
        "median_lead_windows": leads,
        "doctor_right": (sum(r["doctor_right"] for r in faults) / len(faults)) if faults
        else None,
        "healthy_runs": sum(r["kind"] == "healthy" for r in rows),
    }


def table(rows: list[dict[str, Any]]) -> str:
    """The per-run table as Markdown."""
    lines = ["| case | half | category | plant | detected by | lead (steps) | doctor's "
             "first finding | right | false alarms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        det = r["rule"] or ("-" if r["kind"] == "healthy" else "**missed**")
        lead = "" if r["lead_steps"] is None else str(r["lead_steps"])
        doc = r["doctor_rule"] or "-"
        if r["doctor_level"]:
            doc += f" ({r['doctor_level']})"
        right = "" if r["kind"] == "healthy" else ("yes" if r["doctor_right"] else "**no**")
        alarms = ", ".join(f"{a['rule']}@{a['step']}" for a in r["false_alarms"]) or "0"
        lines.append(f"| {r['id']} | {r['half']} | {r['category']} | {r['plant']} | {det} | "
                     f"{lead} | {doc} | {right} | {alarms} |")
    return "\n".join(lines)


def totals_text(name: str, t: dict[str, Any]) -> str:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.0f}%"

    def win(x: float | None) -> str:
        return "-" if x is None else f"{x:g}"

    lead = t["median_lead_windows"]
    return (f"{name}: recall {pct(t['recall'])} ({t['detected']}/{t['faults']}), precision "
            f"{pct(t['precision'])}, false alarms {t['false_alarms']} "
            f"({_per_1000(t['false_per_1000'])} per 1,000 healthy steps over "
            f"{t['healthy_steps']}), "
            f"median lead {win(lead['numeric'])} windows numeric / {win(lead['data'])} data / "
            f"{win(lead['other'])} other, doctor's first finding right "
            f"{pct(t['doctor_right'])}")


def _per_1000(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"
