"""`watch` under sharded training stores what one process computes for the same global batch:
gradient norms (whole, per layer), the zero share, LoRA and full-weight deltas per layer and
block, hidden-state statistics. Two gloo ranks on CPU (four for FSDP2 + TP), against the
float64 reference of sharded_play.py, tolerance 1e-5 relative."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

import trainspect as ts  # noqa: E402
from tests.integrations import sharded_play  # noqa: E402
from tests.integrations.ranks import run_ranks  # noqa: E402

COMPARED = ("grad/", "lora/", "delta/", "hidden/")


def stored(runs, name: str):
    (view,) = [v for v in ts.open(runs).runs(project="sharded") if v.name == name]
    return view


def check_against_reference(view, setup: str) -> None:
    expected = sharded_play.reference(setup)
    keys = {k for k in view.keys() if k.startswith(COMPARED)}
    missing = {k for k in expected if not k.startswith("hidden/") or "nonfinite" not in k} - keys
    assert not missing, f"not stored: {sorted(missing)}"
    assert not [a for a in view.alerts() if a["rule"] == "probe_failed"]
    for key, points in sorted(expected.items()):
        got = view.series(key)
        assert [s for s, _ in got] == [s for s, _ in points], key
        scale = max(abs(v) for _, v in points) or 1.0
        for (step, value), (_, want) in zip(got, points):
            # means near 0 are sums of mixed signs: relative to the series' scale there
            assert value == pytest.approx(want, rel=1e-5, abs=1e-6 * scale), (key, step)


@pytest.mark.parametrize("setup", ["ddp_lora", "fsdp2_lora", "fsdp2_full", "fsdp1_orig_lora",
                                   "fsdp1_flat_full", "tp_full"])
def test_watch_on_two_ranks_stores_the_one_process_numbers(runs, setup):
    run_ranks(sharded_play.play, setup, str(runs), timeout=180)
    check_against_reference(stored(runs, setup), setup)


def test_fsdp2_with_tensor_parallel_on_four_ranks(runs):
    run_ranks(sharded_play.play, "fsdp2_tp_full", str(runs), world=4, timeout=240)
    check_against_reference(stored(runs, "fsdp2_tp_full"), "fsdp2_tp_full")


def test_a_non_finite_gradient_on_one_shard_is_seen(runs):
    """Rank 1's piece of one FSDP2-sharded gradient gets a NaN; rank 0's piece is finite."""
    name = "layers.1.mlp.up_proj.weight"
    run_ranks(sharded_play.play, "fsdp2_full", str(runs), (name, 3), timeout=180)
    view = stored(runs, "fsdp2_full")
    (alert,) = [a for a in view.alerts() if a["rule"] == "grads.nonfinite"]
    n_tensors = len(list(sharded_play.make_model(None).parameters()))
    assert alert["step"] == 4 and f"1 of {n_tensors} trainable tensors" in alert["message"]
    norms = dict(view.series("grad/layers.1/norm"))
    assert norms[4] != norms[4] and norms[2] == norms[2]  # NaN in that window only
