"""Sample rows as a readable text block: the console's verbose output and `show --samples`.

Pure formatting over the dicts `RunView.samples()` returns (or `SampleRow`s): no torch.
"""

from __future__ import annotations

from typing import Any

RULE = "=" * 78


def _get(row: Any, name: str) -> Any:
    return row[name] if isinstance(row, dict) else getattr(row, name)


def _token(text: str, width: int = 14) -> str:
    # newlines and control characters stay visible; blank tokens keep their quotes
    shown = repr(text) if not text.strip() else repr(text)[1:-1]
    return shown if len(shown) <= width else shown[: width - 1] + "…"


def gap_meaning(gap: float) -> str:
    """What the confidence gap (mean p(label) - mean p(prediction)) says."""
    if gap >= -0.02:
        return "the model gives the right tokens as much probability as its own picks: good"
    if gap >= -0.15:
        return "somewhat overconfident in wrong picks: keep training, watch calibration"
    return "confidently wrong: it is sure of tokens that are not the labels (needs training, " \
           "or check the labels)"


def format_samples(rows: list[Any], max_positions: int = 16) -> str:
    """One block per sample step and stream: context, per-position predictions, summary."""
    if not rows:
        return "no samples"
    lines = [RULE, f"Step {_get(rows[0], 'step')} - predictions of "
                   f"{len({_get(r, 'sample_id') for r in rows})} samples", RULE]
    confs, label_probs = [], []
    for row in rows:
        positions = _get(row, "positions")
        group = _get(row, "group")
        matches = sum(1 for p in positions if p["match"])
        head = f"[{_get(row, 'stream')} sample {_get(row, 'sample_id')}"
        head += f", {_group_name(row)} {group}]" if _has_groups(rows) else "]"
        acc = f"{matches / len(positions):.0%}" if positions else "no supervised tokens"
        lines.append(f"{head}  acc {acc}")
        context = _get(row, "context")
        if context:
            lines.append(f"  context: {repr(context)[1:-1]}")  # cut on a token already
        for p in positions[:max_positions]:
            mark = "ok" if p["match"] else "XX"
            lines.append(f"  t={p['t']:<4} {mark} predicted {_token(p['pred']):<14} "
                         f"({p['pred_prob']:.3f})  label {_token(p['label']):<14} "
                         f"({p['label_prob']:.3f})")
            if p.get("confident_wrong"):
                lines.append("         ! confident in a wrong token; alternatives: " + ", ".join(
                    f"{_token(t, 10)} {prob:.2f}" for t, prob in p.get("top", [])[:3]))
            confs.append(p["pred_prob"])
            label_probs.append(p["label_prob"])
        if len(positions) > max_positions:
            lines.append(f"  ... {len(positions) - max_positions} more positions")
    if confs:
        mean_conf = sum(confs) / len(confs)
        mean_label = sum(label_probs) / len(label_probs)
        gap = mean_label - mean_conf
        lines += ["", "Confidence summary",
                  f"  mean confidence in predictions  {mean_conf:.3f}",
                  f"  mean probability of the labels  {mean_label:.3f}",
                  f"  gap (labels - predictions)      {gap:+.3f}  -> {gap_meaning(gap)}"]
    lines.append(RULE)
    return "\n".join(lines)


def _has_groups(rows: list[Any]) -> bool:
    return any(_get(r, "group") for r in rows)


def _group_name(row: Any) -> str:
    return {"draft": "position", "audio": "codebook"}.get(_get(row, "stream"), "group")
