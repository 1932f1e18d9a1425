"""Two gloo ranks store exactly what one process stores for the same global batch; rank 0
alone writes; a straggler shows; ranks that disagree on their probes' layout (or that
run trainspect on rank 0 only) are handled without a hang."""

from __future__ import annotations

import os
import time

import pytest
import torch
import torch.distributed as dist

if not dist.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)

import trainspect as ts  # noqa: E402
from tests.integrations.ranks import run_ranks  # noqa: E402
from trainspect.distributed import layout_hash, probe_layout, rank_and_world  # noqa: E402
from trainspect.probes.losses import losses  # noqa: E402
from trainspect.probes.speed import speed  # noqa: E402

V, B, T, P = 13, 4, 7, 3  # vocabulary, global batch, sequence, draft positions
STEPS = 6


def batch(step: int, device: str = "cpu") -> tuple:
    """The global batch of `step`: the same on every rank (seeded by the step)."""
    g = torch.Generator().manual_seed(step)
    ids = torch.randint(0, V, (B, T), generator=g)
    logits = torch.randn(B, T, V, generator=g) * 2
    # the next token gets a boost: accuracy well above chance, not 1
    logits.scatter_add_(2, ids.roll(-1, 1)[..., None], torch.full((B, T, 1), 2.5))
    labels = ids.clone()
    labels[:, :2] = -100  # a prompt
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, -2:] = 0  # padding
    labels[1, -2:] = -100
    draft = torch.randn(B, T, P, V, generator=g)
    draft_labels = torch.randint(0, V, (B, T, P), generator=g)
    draft_labels[0, 0, 2] = -100
    tensors = (ids, labels, logits, mask, draft, draft_labels)
    if str(device).startswith("cuda"):  # pinned + non_blocking: no sync under the debug mode
        return tuple(t.pin_memory().to(device, non_blocking=True) for t in tensors)
    return tensors


def shard_losses(step: int, shard: int, device: str = "cpu") -> tuple[dict, dict, torch.Tensor]:
    _, labels, logits, _, draft, draft_labels = batch(step, device)
    half = slice(shard * B // 2, (shard + 1) * B // 2)
    ce = torch.nn.functional.cross_entropy(logits[half, :-1].reshape(-1, V),
                                           labels[half, 1:].reshape(-1))
    kd = torch.nn.functional.cross_entropy(draft[half].reshape(-1, V),
                                           draft_labels[half].reshape(-1))
    weights = {"ce": 1.0, "kd": 0.5}
    return {"ce": ce, "kd": kd}, weights, ce + 0.5 * kd


def play(rank: int, world: int, name: str, straggle_s: float = 0.0, device: str = "cpu") -> None:
    """One training loop; with world=1 it plays both halves of the global batch."""
    mine = slice(rank * B // world, (rank + 1) * B // world)
    with ts.init(project="dist", name=name, log_every=2, samples_every=3, num_samples=1) as run:
        for step in range(1, STEPS + 1):
            ids, labels, logits, mask, draft, draft_labels = batch(step, device)
            run.observe(step, logits=logits[mine, :-1], labels=labels[mine, 1:],
                        input_ids=ids[mine], attention_mask=mask[mine])
            run.observe(step, logits=draft[mine], labels=draft_labels[mine], stream="draft",
                        group="pos")
            for shard in ([0, 1] if world == 1 else [rank]):  # micro-batches vs ranks
                components, weights, total = shard_losses(step, shard, device)
                losses(run, step, components=components, weights=weights, total=total)
            speed(run, step, attention_mask=mask[mine])
            run.log({"lr": 1e-3 * step, "rank": float(rank)}, step=step)
            if rank == 1:
                time.sleep(straggle_s)


def _views(runs, project: str = "dist") -> dict:
    return {view.name: view for view in ts.open(runs).runs(project=project)}


def _pooled_keys(view) -> set[str]:
    """Keys one process also has: not speed or memory, not per-rank label offsets (those
    exist only with several ranks: docs/architecture.md's metric table)."""
    return {k for k in view.keys() if not k.startswith(("speed/", "mem/")) and "/rank" not in k}


def test_two_ranks_store_what_one_process_stores(runs):
    play(0, 1, "single")
    run_ranks(play, "dual", 0.1)
    check_same_as_one_process(runs)


def check_same_as_one_process(runs) -> None:
    """The "dual" run (two ranks) holds exactly what the "single" run (one process) does."""
    views = _views(runs)
    assert set(views) == {"single", "dual"}  # rank 1 wrote no run of its own
    single, dual = views["single"], views["dual"]
    keys = _pooled_keys(single)
    assert {"text/acc", "text/ece", "draft/pos2/acc", "draft/accept_len", "loss/total",
            "loss/kd/scaled", "lr"} <= keys
    assert _pooled_keys(dual) == keys
    for key in sorted(keys):
        assert dual.series(key) == single.series(key), key
    def strip(rows: list[dict]) -> list[dict]:  # storage details differ, contents must not
        return [{k: v for k, v in row.items() if k not in ("wall_time", "id", "seq")}
                for row in rows]

    for step in (3, 6):
        rows = strip(single.samples(step=step))
        assert rows and rows == strip(dual.samples(step=step))
    assert dual.series("rank") == [(s, 0.0) for s in range(1, STEPS + 1)]  # rank 0's values
    # the token counts are pooled too: the same real tokens per window as one process
    assert sum(v for _, v in single.series("text/supervised_tokens")) == float(
        sum(int((batch(s)[1][:, 1:] != -100).sum()) for s in range(1, STEPS + 1)))


def test_a_straggler_shows_in_per_rank_speed(runs):
    run_ranks(play, "dual", 0.1)
    view = _views(runs)["dual"]

    def mean(key: str) -> float:
        values = [v for _, v in view.series(key)]
        assert values, key
        return sum(values) / len(values)

    # rank 1 sleeps 0.1 s a step: its busy time per step is larger, it reaches the flush last
    assert mean("speed/rank1/step_s") > mean("speed/rank0/step_s") + 0.05
    assert mean("speed/rank1/late_s") > 0.1 > mean("speed/rank0/late_s")
    assert mean("speed/rank0/tokens_per_s") > 0 and mean("speed/rank1/tokens_per_s") > 0


def _lopsided(rank: int, world: int) -> None:
    """Rank 0 observes a stream that rank 1 never does: the token layouts differ."""
    with ts.init(project="dist", name="lopsided", log_every=2) as run:
        for step in range(1, 5):
            ids, labels, logits, _, _, _ = batch(step)
            mine = slice(rank * 2, rank * 2 + 2)
            run.observe(step, logits=logits[mine, :-1], labels=labels[mine, 1:])
            if rank == 0:
                run.observe(step, logits=logits[mine, :-1], labels=labels[mine, 1:],
                            stream="audio")
            components, weights, total = shard_losses(step, rank)
            losses(run, step, components=components, weights=weights, total=total)


def test_ranks_that_disagree_on_a_probe_layout_switch_it_off_and_pool_the_rest(runs):
    run_ranks(_lopsided, timeout=60)
    view = _views(runs)["lopsided"]
    # the labels probe keeps per-stream state too and says so in an alert of its own
    alerts = [a for a in view.alerts()
              if a["rule"] == "rank_layout" and "tokens probe" in a["message"]]
    assert len(alerts) == 1 and alerts[0]["level"] == "critical"
    assert "'audio'" in alerts[0]["message"] and "rank 1" in alerts[0]["message"]
    assert not any(k.startswith(("text/", "audio/")) for k in view.keys())
    # the loss probe agreed and was pooled: the mean of both ranks' totals
    expected = []
    for window in ((1, 2), (3, 4)):
        totals = [float(shard_losses(s, r)[2]) for s in window for r in (0, 1)]
        expected.append((window[1], sum(totals) / len(totals)))
    got = view.series("loss/total")
    assert [s for s, _ in got] == [s for s, _ in expected]
    for (_, a), (_, b) in zip(got, expected):
        assert a == pytest.approx(b, rel=1e-12)


def _rank0_only(rank: int, world: int) -> None:
    if rank != 0:
        return
    with ts.init(project="dist", name="rank0", log_every=2) as run:
        for step in range(1, 5):
            _, labels, logits, _, _, _ = batch(step)
            run.observe(step, logits=logits[:2, :-1], labels=labels[:2, 1:])


def test_a_run_on_rank_0_only_keeps_its_own_numbers_instead_of_hanging(runs):
    run_ranks(_rank0_only, timeout=60)
    view = _views(runs)["rank0"]
    tokens = sum(v for _, v in view.series("text/supervised_tokens"))
    assert tokens == float(sum(int((batch(s)[1][:2, 1:] != -100).sum()) for s in range(1, 5)))
    assert any(a["rule"] == "distributed" for a in view.alerts())


def test_rank_and_world_come_from_the_launcher_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
                 "PMI_RANK", "PMI_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    assert rank_and_world() == (0, 1)
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert rank_and_world() == (3, 4)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert rank_and_world() == (1, 2)  # torchrun's variables win over SLURM's
    monkeypatch.setenv("RANK", "5")  # out of range: ignored
    assert rank_and_world() == (3, 4)


def test_layout_covers_streams_and_component_order():
    from trainspect.probes.losses import LossProbe
    from trainspect.probes.tokens import TokenProbe

    a, b = TokenProbe(), TokenProbe()
    logits, labels = torch.randn(2, 3, 5), torch.randint(0, 5, (2, 3))
    a.update("text", None, logits, labels, None, None)
    b.update("text", None, logits, labels, None, None)
    assert probe_layout(a) == probe_layout(b)
    b.update("draft", "pos", torch.randn(2, 3, 2, 5), torch.randint(0, 5, (2, 3, 2)), None, None)
    assert layout_hash([probe_layout(a)]) != layout_hash([probe_layout(b)])
    one, two = LossProbe(torch.device("cpu")), LossProbe(torch.device("cpu"))
    one.update({"x": 1.0, "y": 2.0}, None, None, 1)
    two.update({"y": 2.0, "x": 1.0}, None, None, 1)  # same names, other slots
    assert probe_layout(one) != probe_layout(two)
    assert 0 <= layout_hash([probe_layout(one)]) < 2**63


def test_no_torch_import_to_find_the_rank():
    import subprocess
    import sys

    code = ("import sys, trainspect.distributed as d; d.rank_and_world(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
