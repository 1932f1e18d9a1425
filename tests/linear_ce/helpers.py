"""Shared pieces of the fused linear cross-entropy tests: data, runs, and stored results."""

from __future__ import annotations

import torch

import trainspect as ts


def head_batch(seed: int, b: int = 4, t: int = 12, h: int = 16, v: int = 37,
               dtype: torch.dtype = torch.float32, boost: float = 6.0) -> dict:
    """Hidden states [B, T, H], a head [V, H] and bias whose argmax often hits the label."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, t, h, generator=g, dtype=torch.float64)
    weight = torch.randn(v, h, generator=g, dtype=torch.float64) / h ** 0.5
    bias = torch.randn(v, generator=g, dtype=torch.float64) * 0.1
    ids = torch.randint(0, v, (b, t + 1), generator=g)
    # make the label's logit larger for some rows: accuracy and confidence well inside (0, 1)
    hidden += boost * weight[ids[:, 1:]] * (torch.rand(b, t, 1, generator=g) < 0.6)
    wrong = torch.randint(0, v, (b, t), generator=g)  # and sometimes a wrong one: confident_wrong
    hidden += boost * weight[wrong] * (torch.rand(b, t, 1, generator=g) < 0.25)
    labels = ids[:, 1:].clone()
    labels[:, :2] = -100  # a prompt
    labels[-1, -3:] = -100  # padding
    return {"hidden": hidden.to(dtype), "weight": weight.to(dtype), "bias": bias.to(dtype),
            "labels": labels, "input_ids": ids[:, :-1]}


def stored(runs, name: str, project: str = "lce") -> dict:
    """{key: [(step, value), ...]}, the samples and the calibration bins of run `name`."""
    views = {v.name: v for v in ts.open(runs).runs(project=project)}
    view = views[name]
    out = {key: view.series(key) for key in view.keys()}
    out["_samples"] = [{k: v for k, v in row.items() if k not in ("wall_time", "id", "seq")}
                       for row in view.samples()]
    out["_calibration"] = view.matrix("text/calibration")
    return out


def assert_close_series(a: dict, b: dict, rel: float = 1e-5, keys=None) -> None:
    """Same keys, same steps, values equal to `rel` (absolute 1e-6 near 0)."""
    keys = keys if keys is not None else sorted(k for k in a if not k.startswith("_"))
    assert set(keys) <= set(b), set(keys) - set(b)
    for key in keys:
        sa, sb = a[key], b[key]
        assert [s for s, _ in sa] == [s for s, _ in sb], key
        for (_, x), (_, y) in zip(sa, sb):
            assert abs(x - y) <= rel * max(abs(x), abs(y)) + 1e-6, (key, x, y)


def assert_close_samples(a: list, b: list, rel: float = 1e-4) -> None:
    """Sample rows equal: tokens and ids exactly, probabilities to `rel`."""
    assert len(a) == len(b) and a
    for ra, rb in zip(a, b):
        head_a = {k: v for k, v in ra.items() if k != "positions"}
        head_b = {k: v for k, v in rb.items() if k != "positions"}
        assert head_a == head_b, (head_a, head_b)
        assert len(ra["positions"]) == len(rb["positions"])
        for pa, pb in zip(ra["positions"], rb["positions"]):
            for key in pa:
                if key == "top":
                    assert [t for t, _ in pa[key]] == [t for t, _ in pb[key]]
                    for (_, x), (_, y) in zip(pa[key], pb[key]):
                        assert abs(x - y) <= rel * max(x, y) + 1e-7
                elif isinstance(pa[key], float):
                    assert abs(pa[key] - pb[key]) <= rel * max(abs(pa[key]), 1e-3), key
                else:
                    assert pa[key] == pb[key], key
