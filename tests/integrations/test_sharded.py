"""`watch` under sharded training stores what one process computes for the same global batch:
gradient norms (whole, per layer), the zero share, LoRA and full-weight deltas per layer and
block, hidden-state statistics. Two gloo ranks on CPU (four for FSDP2 + TP), against the
float64 reference of sharded_play.py, tolerance 1e-5 relative."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import trainspect as ts  # noqa: E402
from tests.integrations import sharded_play  # noqa: E402
from tests.integrations.ranks import free_port, run_ranks  # noqa: E402
from tests.integrations.test_recipes import launch  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

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


ZERO_SETUPS = ["zero2_lora", "zero3_lora", "zero3_full"]


@pytest.fixture(scope="module")
def zero_runs(tmp_path_factory):
    """ZeRO-2 and -3 through deepspeed.initialize on DeepSpeed's CPU accelerator, two ranks
    (torchrun, gloo), every setup in one launch."""
    runs = tmp_path_factory.mktemp("zero") / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRAINSPECT_DIR": str(runs),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", str(free_port()), "-m", "tests.integrations.zero_play", str(runs),
         *ZERO_SETUPS], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return runs


@pytest.mark.parametrize("setup", ZERO_SETUPS)
def test_deepspeed_zero_deltas_and_hidden_states_and_no_gradient_norms(zero_runs, setup):
    """DeepSpeed's SGD does not step exactly like torch's, so ΔW is checked against the
    engine's own final weights (gathered, float64) and hidden states at the first sample
    (before any step) against the one-process reference; gradients are not recorded."""
    view = stored(zero_runs, setup)
    assert not [a for a in view.alerts() if a["rule"] == "probe_failed"]
    assert not any(k.startswith("grad/") for k in view.keys())
    (note,) = [a for a in view.alerts() if a["rule"] == "grads.unavailable"]
    assert "get_global_grad_norm" in note["action"]
    deltas = json.loads((zero_runs / f"{setup}.deltas.json").read_text())
    assert len(deltas) > 3
    for key, want in deltas.items():
        got = dict(view.series(key))[sharded_play.STEPS]
        assert got == pytest.approx(want, rel=1e-5), key
    expected = sharded_play.reference(setup)
    for key, points in expected.items():
        if key.startswith("hidden/"):
            got = dict(view.series(key))[points[0][0]]
            assert got == pytest.approx(points[0][1], rel=1e-5, abs=1e-6), key


def test_the_fsdp2_recipe_pools_two_ranks(runs, tmp_path):
    view = launch(tmp_path, runs, "fsdp2", "-m", "torch.distributed.run", "--nproc_per_node",
                  "2", "--master_port", str(free_port()))
    # each window: 5 steps x 2 ranks x 4 sequences x 15 supervised positions
    assert view.series("text/supervised_tokens") == [(s, 600.0) for s in (5, 10, 15, 20)]
    assert {"grad/norm", "grad/layers.0/norm", "delta/total", "hidden/layers.1/std"} <= set(
        view.keys())
    assert not [a for a in view.alerts() if a["rule"] in ("probe_failed", "grads.detached")]


def test_the_tensor_parallel_recipe_counts_each_token_once(runs, tmp_path):
    view = launch(tmp_path, runs, "tp", "-m", "torch.distributed.run", "--nproc_per_node",
                  "2", "--master_port", str(free_port()))
    # one TP group: 5 steps x 4 sequences x 15 positions, counted on its first rank only
    assert view.series("text/supervised_tokens") == [(s, 300.0) for s in (5, 10, 15, 20)]
    # and the watch's throughput: 20 forwards x 4 x 16 input tokens, not twice that (the
    # recipe gives the step after its forward, so a window holds the next step's forward)
    step_s = dict(view.series("speed/step_s"))
    tokens = [v * step_s[s] * 5 for s, v in view.series("speed/tokens_per_s")]
    assert len(tokens) == 4 and sum(tokens) == pytest.approx(20 * 64, rel=1e-9)
    assert {"grad/norm", "grad/layers.1/norm", "delta/layers.0/up"} <= set(view.keys())
    assert not [a for a in view.alerts() if a["rule"] in ("probe_failed", "grads.detached")]


# ---- throughput under tensor parallelism: each token counted once ------------------------

PEAK = 1e12  # FLOP/s per rank, so that speed/mfu is recorded on CPU


class WithInputs(nn.Module):
    """The toy LM behind a Hugging Face signature: the watch counts its mask and labels."""

    def __init__(self) -> None:
        super().__init__()
        self.model = sharded_play.ToyLM()

    def forward(self, input_ids, attention_mask=None, labels=None):
        return self.model(input_ids)


def padded_batch(step: int):
    """The global batch of `step`: sequence b has its last b positions padded (-100)."""
    ids = sharded_play.batch(step)
    mask = torch.ones_like(ids)
    for b in range(ids.shape[0]):
        mask[b, ids.shape[1] - b:] = 0
    return ids, mask, ids.masked_fill(mask == 0, -100)


def play_speed(rank: int, world: int, runs: str, mesh_shape: tuple, names: tuple,
               pass_group: bool) -> None:
    """Train the toy under TP (and FSDP2 over "dp" on a 2-D mesh), watched for speed only."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import parallelize_module

    os.environ["TRAINSPECT_DIR"] = runs
    mesh = init_device_mesh("cpu", mesh_shape, mesh_dim_names=names)
    tp_mesh = mesh[names[-1]] if len(names) > 1 else mesh
    model = WithInputs()
    parallelize_module(model.model, tp_mesh, sharded_play.tp_plan())
    if len(names) > 1:
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh["dp"])
        fully_shard(model, mesh=mesh["dp"])
    rows = sharded_play.rows_of(rank, world, "dp" if len(names) > 1 else True)
    opt = torch.optim.SGD(model.parameters(), lr=sharded_play.LR)
    name = f"speed_{'x'.join(map(str, mesh_shape))}_{names[-1]}_{pass_group}"
    with ts.init(project="sharded", name=name, log_every=sharded_play.LOG_EVERY) as run:
        run.watch(model, lora=False, grads=False, hidden=False, peak_flops=PEAK,
                  tp_group=tp_mesh if pass_group else None)
        for step in range(1, sharded_play.STEPS + 1):
            run.log({"tick": float(step)}, step=step)
            ids, mask, labels = (t[rows] for t in padded_batch(step))
            sharded_play.loss_of(model(input_ids=ids, attention_mask=mask, labels=labels),
                                 ids).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)


def one_process_counts() -> dict[int, tuple[float, float, float]]:
    """(real tokens, supervised tokens, positions) one process counts per log window."""
    out: dict[int, tuple[float, float, float]] = {}
    for step in range(1, sharded_play.STEPS + 1):
        ids, mask, labels = padded_batch(step)
        end = -(-step // sharded_play.LOG_EVERY) * sharded_play.LOG_EVERY
        real, supervised, positions = out.get(end, (0.0, 0.0, 0.0))
        out[end] = (real + float(mask.sum()), supervised + float((labels[:, 1:] != -100).sum()),
                    positions + mask.numel())
    return out


@pytest.mark.parametrize("mesh_shape,names,pass_group,copies", [
    ((2,), ("tp",), True, 1),  # tp_group given
    ((2, 2), ("dp", "tp"), False, 1),  # inferred: FSDP2 over "dp", each pair's first counts
    ((2,), ("model",), False, 2),  # not named "tp", not given: every rank counts
])
def test_tensor_parallel_throughput_counts_each_token_once(runs, mesh_shape, names, pass_group,
                                                           copies):
    """Timing-free: tokens/s x the window's seconds (step_s x steps) is the window's pooled
    token count, which must be one process's; MFU x peak x ranks x seconds is the model's
    FLOPs (6 N per token, N every weight but the embedding, counted whole) over them."""
    world = 1
    for size in mesh_shape:
        world *= size
    run_ranks(play_speed, str(runs), mesh_shape, names, pass_group, world=world, timeout=120)
    name = f"speed_{'x'.join(map(str, mesh_shape))}_{names[-1]}_{pass_group}"
    view = stored(runs, name)
    assert not [a for a in view.alerts() if a["rule"] == "probe_failed"]
    whole = WithInputs()
    n_matmul = sum(p.numel() for m in whole.modules() if not isinstance(m, nn.Embedding)
                   for p in m.parameters(recurse=False))
    series = {k: dict(view.series(f"speed/{k}")) for k in (
        "tokens_per_s", "supervised_tokens_per_s", "padding_frac", "step_s", "mfu")}
    expected = one_process_counts()
    assert sorted(series["tokens_per_s"]) == sorted(expected)
    for step, (real, supervised, positions) in expected.items():
        window_s = series["step_s"][step] * sharded_play.LOG_EVERY
        assert series["tokens_per_s"][step] * window_s == pytest.approx(copies * real, rel=1e-9)
        assert series["supervised_tokens_per_s"][step] * window_s == pytest.approx(
            copies * supervised, rel=1e-9)
        assert series["padding_frac"][step] == pytest.approx(1 - real / positions, rel=1e-9)
        flops = series["mfu"][step] * PEAK * world * window_s
        assert flops == pytest.approx(6 * n_matmul * copies * real, rel=1e-9)
    for rank in range(world):  # each rank's own rate: it processed the group's batch
        assert min(v for _, v in view.series(f"speed/rank{rank}/tokens_per_s")) > 0
