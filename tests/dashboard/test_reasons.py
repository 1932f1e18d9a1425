"""Empty panels say why, from what the run recorded (a fused head's log-probabilities, no
observe, no watch, no eval, samples off), and the system panel draws sys/* per GPU."""

from __future__ import annotations

from types import SimpleNamespace

import torch

import trainspect as ts
from tests.dashboard.conftest import view_of
from tests.dashboard.synthetic import make_run
from trainspect.dashboard.panels import PANELS, reasons
from trainspect.integrations.capture import FusedTokenProbe


def _init(runs, **kwargs):
    return ts.init(project="p", dir=runs, system_metrics=False, **kwargs)


def _query(runs, run, panel):
    return PANELS[panel].query(view_of(runs, f"p/{run.id}"), {})


def test_a_fused_head_run_says_samples_and_calibration_need_logits(runs):
    """TRL's fused head: the capture pools log-probabilities into text/acc, ce, entropy,
    target_conf; there is no confidence, so no samples and no calibration."""
    run = _init(runs, samples_every=1)
    probe = run.add_probe(FusedTokenProbe("text"))
    g = torch.Generator().manual_seed(0)
    for step in range(1, 21):
        probe.update(SimpleNamespace(
            log_probs=-torch.rand(2, 7, generator=g), label_mask=torch.ones(2, 7),
            is_top1=torch.rand(2, 7, generator=g) > 0.5, entropy=torch.rand(2, 7, generator=g)))
        run.log({"loss": 1.0}, step=step)
    run.finish()
    keys = view_of(runs, f"p/{run.id}").keys()
    assert {"text/acc", "text/ce"} <= set(keys) and "text/conf" not in keys
    for panel in ("predictions", "calibration"):
        data = _query(runs, run, panel)
        assert data["empty"] and "returned no logits" in data["reason"], panel
        assert "fused LM head" in data["reason"]
    tokens = _query(runs, run, "tokens")
    assert not tokens["empty"] and "no logits" in tokens["note"]
    assert "samples_every" not in _query(runs, run, "predictions")["reason"]


def test_no_observe_no_watch_no_eval_are_named(runs):
    running = _init(runs)
    running.log({"loss": 1.0}, step=1)
    running.flush()
    view = view_of(runs, f"p/{running.id}")
    assert "yet" in reasons.predictions(view) and "every 10 steps" in reasons.predictions(view)
    assert "No fixed eval yet" in PANELS["fixed_eval"].query(view, {})["reason"]
    running.finish()
    for panel, said in (("predictions", "run.observe was never called"),
                        ("tokens", "run.observe was never called"),
                        ("calibration", "run.observe was never called"),
                        ("fixed_eval", "This run ran no fixed eval"),
                        ("patterns", "ran no pattern x length results"),
                        ("lora", "run.watch was not called"),
                        ("gradients", "run.watch was not called"),
                        ("hidden", "run.watch was not called")):
        data = _query(runs, running, panel)
        assert data["empty"] and said in data["reason"], (panel, data.get("reason"))


def test_rejected_input_samples_off_and_no_adapters(runs):
    bad = _init(runs)
    bad.observe(1, torch.randn(2, 5, 11), torch.zeros(3, 5, dtype=torch.long))  # shapes differ
    bad.finish()
    reason = _query(runs, bad, "predictions")["reason"]
    assert "rejected its input at step 1" in reason and "observe(stream='text')" in reason

    off = _init(runs, samples_every=0)
    off.observe(1, torch.randn(2, 5, 11), torch.zeros(2, 5, dtype=torch.long))
    off.finish()
    assert "samples are off" in _query(runs, off, "predictions")["reason"]
    assert not _query(runs, off, "calibration")["empty"]

    full = _init(runs)  # watched, but a full fine-tune: gradients and no LoRA
    full.log({"grad/norm": 1.0, "grad/layers.0/norm": 0.5}, step=10)
    full.finish()
    assert "found no LoRA adapters" in _query(runs, full, "lora")["reason"]
    assert not _query(runs, full, "gradients")["empty"]


def test_system_panel_overlays_gpus_with_units(runs):
    ref = make_run(runs, steps=100)
    data = PANELS["system"].query(view_of(runs, ref), {})
    charts = {c["id"]: c for c in data["charts"]}
    assert list(charts) == ["cpu", "ram", "disk", "gpu_util_pct", "gpu_mem_used_gib",
                            "gpu_power_w", "gpu_temp_c"]  # no ram_pct, mem_pct: not planted
    assert charts["cpu"]["y_range"] == charts["gpu_util_pct"]["y_range"] == (0.0, 100.0)
    assert "y_range" not in charts["ram"]
    assert [s["label"] for s in charts["gpu_util_pct"]["series"]] == ["gpu0", "gpu1"]
    assert [s["label"] for s in charts["ram"]["series"]] == ["machine", "this process"]
    assert charts["gpu_mem_used_gib"]["title"] == "GPU memory in use (GiB)"
    assert data["latest"]["sys/gpu1/temp_c"] == 65.0 and data["gpus"] == 2
    assert PANELS["system"].tab == "system" and PANELS["system"].meta()["tab"] == "system"
    assert not any(k.startswith("sys/") for k in PANELS["scalars"].query(
        view_of(runs, ref), {})["keys"])
    empty = _init(runs)
    empty.finish()
    assert "system_metrics=False" in _query(runs, empty, "system")["reason"]


def test_a_full_fine_tune_shows_its_weight_change_in_the_lora_panel(runs):
    """No adapters: run.watch writes delta/layers (||W - W0|| per layer and block)."""
    run = _init(runs)
    run.log({"delta/layers.0/qkv": 1.0, "delta/total": 2.0}, step=10)
    run.emit(ts.Matrix("delta/layers", 10, [[3.0, 4.0], [1.0, float("nan")]],
                       ["layers.0", "layers.1"], ["qkv", "mlp"]))
    run.finish()
    data = _query(runs, run, "lora")
    assert data["family"] == "delta" and "no LoRA adapters" in data["note"]
    assert data["totals"] == [5.0, 1.0] and data["top"][0]["layer"] == "layers.0"  # 3-4-5
    assert data["timeline"]["steps"] == [10]
    assert not any(k.startswith("delta/") for k in _query(runs, run, "scalars")["keys"])
