"""The token probe's float64 reference, shared by the tests of tests/probes/test_tokens*.py:
per-row statistics of the same (dtype-rounded) logits, pooled as docs/architecture.md
says (sums over the window, then ratios), and readers of the stored metrics.
"""

from __future__ import annotations

import math

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def reference(logits, labels, target=None, ignore=-100, n_groups=1):
    """Per-group pooled sums of every token metric, in float64 on the CPU."""
    x = logits.detach().to("cpu", torch.float64).reshape(-1, logits.shape[-1])
    y = labels.detach().cpu().reshape(-1).to(torch.int64)
    vocab = x.shape[1]
    valid = (y != ignore) & (y >= 0) & (y < vocab)
    logp = torch.log_softmax(x, dim=-1)
    p = logp.exp()
    argmax = torch.argmax(x, dim=-1)  # first index on ties
    conf = p.gather(1, argmax[:, None]).squeeze(1)
    safe = torch.where(valid, y, torch.zeros_like(y))
    label_logp = logp.gather(1, safe[:, None]).squeeze(1)
    entropy = -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)
    correct = (argmax == y) & valid
    rows = {"valid": valid, "correct": correct, "conf": conf, "label_p": label_logp.exp(),
            "ce": -label_logp, "entropy": entropy, "argmax": argmax}
    if target is not None:
        t = target.detach().to("cpu", torch.float64).reshape(-1, vocab)
        logq = torch.log_softmax(t, -1)
        q = logq.exp()
        rows["agree"] = argmax == torch.argmax(t, -1)
        rows["kl"] = torch.where(q > 0, q * (logq - logp), torch.zeros_like(q)).sum(-1)
        rows["alpha"] = torch.minimum(p, q).sum(-1)
    out = []
    for g in range(n_groups):
        sel = (torch.arange(x.shape[0]) % n_groups == g) & valid
        out.append({k: v[sel].double() for k, v in rows.items()})
    return out


def pooled(groups):
    """Merge per-group row dicts into one."""
    return {k: torch.cat([g[k] for g in groups]) for k in groups[0]}


def metrics(rows):
    n = rows["valid"].numel()
    conf = rows["conf"]
    bins = torch.clamp((conf * 10).floor().long(), max=9)  # conf is float64 here
    ece = sum(abs(rows["correct"][bins == b].sum() - conf[bins == b].sum()) for b in range(10)) / n
    out = {"acc": rows["correct"].mean(), "conf": conf.mean(), "target_conf": rows[
        "label_p"].mean(), "entropy": rows["entropy"].mean(), "ce": rows["ce"].mean(),
        "ece": ece, "confident_wrong": ((conf > 0.5) & (rows["correct"] == 0)).double().mean(),
        "supervised_tokens": float(n)}
    out["conf_gap"] = out["target_conf"] - out["conf"]
    if "kl" in rows:
        out.update(teacher_agree=rows["agree"].mean(), kl=rows["kl"].mean(),
                   alpha=rows["alpha"].mean())
    return {k: float(v) for k, v in out.items()}


def stored(view, prefix, step):
    out = {}
    for key in view.keys():
        if key.startswith(prefix) and "/" not in key[len(prefix):]:
            series = dict(view.series(key))
            if step in series:
                out[key[len(prefix):]] = series[step]
    return out


def assert_close(got, want, rel=1e-4, abs_=1e-6):
    for key, value in want.items():
        assert key in got, f"{key} missing from stored metrics {sorted(got)}"
        if math.isinf(value):
            assert got[key] == value, key
        else:
            assert got[key] == pytest.approx(value, rel=rel, abs=abs_), key


def random_batch(shape, vocab, dtype, device, ignore_frac=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(*shape, vocab, generator=g) * 3).to(dtype)
    labels = torch.randint(0, vocab, shape, generator=g)
    labels[torch.rand(shape, generator=g) < ignore_frac] = -100
    # half of the supervised labels are the argmax, so accuracy is far from 0
    easy = torch.rand(shape, generator=g) < 0.5
    labels = torch.where(easy & (labels != -100), logits.float().argmax(-1), labels)
    return logits.to(device), labels.to(device)
