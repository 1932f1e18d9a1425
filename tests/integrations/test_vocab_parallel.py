"""`observe` on logits sharded over the vocabulary (tensor / loss parallel) stores what one
process stores on the whole logits: every token statistic, the grouped stream, the
calibration bins and the prediction samples, to 1e-5 relative, and the same window
numbers as a float64 reference computed here. Gloo ranks on CPU: plain local shards with
`vocab_start`/`vocab_size`, DTensors placed Shard(-1), and a 2 x 2 data x tensor parallel
mesh; ignored labels, labels in either shard, argmax ties across the shard boundary,
-inf logits, a NaN row and an out-of-range label are planted."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor

import trainspect as ts
from tests.integrations.ranks import run_ranks
from trainspect.kernels.token_sums import calibration_bin

V, B, T, P = 13, 4, 6, 2  # vocabulary (odd: uneven shards), batch, sequence, draft positions
SPLIT = 6  # plain shards: columns [0, 6) on rank 0, [6, 13) on rank 1
STEPS = 6
LOG_EVERY = 2
STATS = ("acc", "conf", "target_conf", "conf_gap", "entropy", "ce", "ece", "confident_wrong",
         "supervised_tokens")


def batch(step: int) -> tuple[torch.Tensor, ...]:
    """The global batch of `step`, the same on every rank."""
    g = torch.Generator().manual_seed(100 + step)
    logits = torch.randn(B, T, V, generator=g) * 2
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[:, 0] = -100  # ignored
    labels[0, 1], labels[0, 2] = 2, 11  # one label in each shard
    logits[0, 2, 11] += 3.0  # a correct, confident prediction in the second shard
    # argmax ties across the boundary of both layouts (5 | 6 plain, 6 | 7 DTensor): the
    # lowest global index wins, as torch.argmax picks
    logits[1, 1, 5] = logits[1, 1, 6] = 9.0
    logits[1, 2, 6] = logits[1, 2, 7] = 9.0
    labels[1, 1], labels[1, 2] = 5, 6  # correct only if the tie goes to the lower index
    logits[2, 1, :7] = float("-inf")  # the whole first shard is -inf in both layouts
    logits[2, 2, 3] = logits[2, 3, 10] = float("-inf")  # scattered -inf entries
    labels[2, 1], labels[2, 2], labels[2, 3] = 9, 4, 1
    if step == 3:
        logits[3, 4, 2] = float("nan")  # a row left out, counted in nonfinite_rows
        labels[3, 4] = 5
    if step == 4:
        labels[3, 5] = V + 2  # out of range: ignored, counted
    draft = torch.randn(B, T, P, V, generator=g) * 2
    draft_labels = torch.randint(0, V, (B, T, P), generator=g)
    draft_labels[0, :, 1] = -100
    return logits, labels, draft, draft_labels


def play(rank: int, world: int, name: str, layout: str) -> None:
    """One loop: "single" sees the whole logits; the others each rank's shard of them."""
    mesh = None
    if layout == "dtensor":
        mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("tp",))
    elif layout == "dp_tp":
        mesh = init_device_mesh("cpu", (2, world // 2), mesh_dim_names=("dp", "tp"))
    with ts.init(project="vocab", name=name, log_every=LOG_EVERY, samples_every=3,
                 num_samples=2) as run:
        for step in range(1, STEPS + 1):
            logits, labels, draft, draft_labels = batch(step)
            if layout == "single":
                run.observe(step, logits, labels)
                run.observe(step, draft, draft_labels, stream="draft", group="pos")
            elif layout == "plain":
                cols = slice(0, SPLIT) if rank == 0 else slice(SPLIT, V)
                run.observe(step, logits[..., cols], labels, vocab_start=cols.start,
                            vocab_size=V)
                run.observe(step, draft[..., cols], draft_labels, stream="draft", group="pos",
                            vocab_start=cols.start, vocab_size=V)
            elif layout == "dtensor":
                run.observe(step, distribute_tensor(logits, mesh, [Shard(-1)]), labels)
                run.observe(step, distribute_tensor(draft, mesh, [Shard(-1)]), draft_labels,
                            stream="draft", group="pos")
            else:  # data parallel over "dp" (each its half of the batch), vocab over "tp"
                rows = slice(0, B // 2) if mesh.get_coordinate()[0] == 0 else slice(B // 2, B)
                run.observe(step, distribute_tensor(logits, mesh, [Shard(0), Shard(-1)]),
                            labels[rows])
                run.observe(step, distribute_tensor(draft, mesh, [Shard(0), Shard(-1)]),
                            draft_labels[rows], stream="draft", group="pos")


def reference(steps: range) -> dict[str, float]:
    """The window's text statistics in float64, from the whole logits."""
    return float64_stats(torch.cat([batch(s)[0].reshape(-1, V) for s in steps]),
                         torch.cat([batch(s)[1].reshape(-1) for s in steps]))


def float64_stats(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """observe's window statistics of rows `logits` (N, V) and `labels` (N,), in float64."""
    logits, vocab = logits.double(), logits.shape[-1]
    log_p = torch.log_softmax(logits, dim=-1)
    keep = (labels >= 0) & (labels < vocab) & torch.isfinite(torch.logsumexp(logits, -1))
    log_p, labels = log_p[keep], labels[keep]
    p = log_p.exp()
    conf, argmax = p.max(dim=-1)
    correct = (argmax == labels).double()
    target = p.gather(1, labels[:, None]).squeeze(1)
    bins = calibration_bin(conf.float())
    ece = sum(abs(correct[bins == b].sum() - conf[bins == b].sum()) for b in range(10))
    n = float(keep.sum())
    return {"acc": float(correct.mean()), "conf": float(conf.mean()),
            "target_conf": float(target.mean()), "conf_gap": float((target - conf).mean()),
            "entropy": float(-torch.where(p > 0, p * log_p, 0.0).sum(-1).mean()),
            "ce": float(-log_p.gather(1, labels[:, None]).mean()), "ece": float(ece) / n,
            "confident_wrong": float(((conf > 0.5) & (correct == 0)).double().mean()),
            "supervised_tokens": n}


def _views(runs) -> dict:
    return {view.name: view for view in ts.open(runs).runs(project="vocab")}


def _strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in ("wall_time", "id", "seq")} for row in rows]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The one-process run on the whole logits, and its runs folder."""
    runs = tmp_path_factory.mktemp("vocab") / "runs"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRAINSPECT_DIR", str(runs))
        play(0, 1, "single", "single")
    return _views(runs)["single"]


def check_same_as_single(view, single) -> None:
    assert {f"text/{k}" for k in STATS} | {"text/ce_ema", "draft/pos1/acc",
                                             "draft/accept_len"} <= set(single.keys())
    check_same_series(view, single, ("text/calibration", "draft/calibration"))
    check_same_samples(view, single, (3, 6))
    # the single run holds the float64 reference's numbers; planted rows are counted once
    for end in range(LOG_EVERY, STEPS + 1, LOG_EVERY):
        want = reference(range(end - LOG_EVERY + 1, end + 1))
        for stat in STATS:
            got = dict(view.series(f"text/{stat}"))[end]
            assert got == pytest.approx(want[stat], rel=1e-5, abs=1e-9), (stat, end)
    assert dict(view.series("text/nonfinite_rows")) == {2: 0.0, 4: 1.0, 6: 0.0}
    assert dict(view.series("text/out_of_range_labels")) == {2: 0.0, 4: 1.0, 6: 0.0}


def check_same_series(view, single, matrices: tuple[str, ...]) -> None:
    """Every series and the matrices agree, to 1e-5 relative; per-rank series (speed,
    label offsets) exist only with several ranks."""
    keys = set(single.keys())
    assert {k for k in view.keys() if "/rank" not in k} == keys
    for key in sorted(keys):
        got, want = view.series(key), single.series(key)
        assert [s for s, _ in got] == [s for s, _ in want], key
        for (_, a), (_, b) in zip(got, want):
            assert a == pytest.approx(b, rel=1e-5, abs=1e-9), key
    for name in matrices:
        steps = single.matrix_steps(name)
        assert steps and view.matrix_steps(name) == steps, name
        for step in steps:
            a, b = view.matrix(name, step), single.matrix(name, step)
            assert sum(a["values"], []) == pytest.approx(sum(b["values"], []), rel=1e-5), name


def check_same_samples(view, single, steps: tuple[int, ...]) -> None:
    """The prediction samples agree: the same tokens, probabilities to 1e-5 relative."""
    for step in steps:
        rows, wanted_rows = _strip(view.samples(step=step)), _strip(single.samples(step=step))
        assert rows and len(rows) == len(wanted_rows), step
        for got, want in zip(rows, wanted_rows):
            positions, wanted = got.pop("positions"), want.pop("positions")
            assert got == want and len(positions) == len(wanted)
            for pos_got, pos_want in zip(positions, wanted):
                top_got, top_want = pos_got.pop("top"), pos_want.pop("top")
                assert dict(top_got) == pytest.approx(dict(top_want), rel=1e-5)  # ties: any order
                for field, value in pos_want.items():
                    if isinstance(value, float):
                        assert pos_got[field] == pytest.approx(value, rel=1e-5), field
                    else:
                        assert pos_got[field] == value, field


def test_plain_local_shards_store_the_one_process_numbers(runs, single):
    run_ranks(play, "plain", "plain", timeout=60)
    check_same_as_single(_views(runs)["plain"], single)


def test_dtensor_sharded_on_the_vocabulary_stores_the_one_process_numbers(runs, single):
    run_ranks(play, "dtensor", "dtensor", timeout=60)
    check_same_as_single(_views(runs)["dtensor"], single)


def test_data_times_tensor_parallel_counts_each_token_once(runs, single):
    run_ranks(play, "dp_tp", "dp_tp", world=4, timeout=90)
    check_same_as_single(_views(runs)["dp_tp"], single)


def _bad(rank: int, world: int) -> None:
    """Rank 0 forgets `vocab_size` at step 2; rank 1 passes its shard as usual."""
    with ts.init(project="vocab", name="bad", log_every=LOG_EVERY) as run:
        for step in range(1, 5):
            logits, labels, _, _ = batch(step)
            cols = slice(0, SPLIT) if rank == 0 else slice(SPLIT, V)
            size = None if rank == 0 and step == 2 else V
            run.observe(step, logits[..., cols], labels, vocab_start=cols.start, vocab_size=size)


def test_a_bad_argument_on_one_rank_is_one_alert_and_no_hang(runs):
    run_ranks(_bad, timeout=60)
    view = _views(runs)["bad"]
    (alert,) = [a for a in view.alerts() if a["rule"] == "bad_input"]
    assert "`vocab_size` is missing" in alert["message"] and alert["step"] == 2
    assert not [a for a in view.alerts() if a["rule"] == "probe_failed"]
    # step 2's batch was skipped; the other steps are whole
    tokens = dict(view.series("text/supervised_tokens"))
    assert tokens[2] == reference(range(1, 2))["supervised_tokens"]
    assert tokens[4] == reference(range(3, 5))["supervised_tokens"]


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"vocab_start": 4}, "`vocab_size` is missing"),
    ({"vocab_start": 8, "vocab_size": V}, "expected `vocab_start` to be an int in [0, 7]"),
    ({"vocab_start": -1, "vocab_size": V}, "expected `vocab_start`"),
    ({"vocab_start": 0, "vocab_size": 4}, "expected `vocab_size`"),
    ({"vocab_start": 0, "vocab_size": True}, "expected `vocab_size`"),
    ({"vocab_start": 2, "vocab_size": V}, "needs torch.distributed initialised"),
])
def test_bad_vocab_arguments_are_one_alert_naming_them(runs, kwargs, named):
    logits, labels, _, _ = batch(1)
    with ts.init(project="vocab", name="args") as run:
        run.observe(1, logits[..., :SPLIT], labels, **kwargs)
        run.observe(2, logits[..., :SPLIT], labels, **kwargs)
    view = _views(runs)["args"]
    (alert,) = [a for a in view.alerts() if a["rule"] == "bad_input"]
    assert named in alert["message"], alert["message"]
    assert not [k for k in view.keys() if k.startswith("text/")]


def test_a_whole_vocabulary_given_as_a_shard_is_plain_observe(runs, single):
    with ts.init(project="vocab", name="whole", log_every=LOG_EVERY, samples_every=3,
                 num_samples=2) as run:
        for step in range(1, STEPS + 1):
            logits, labels, draft, draft_labels = batch(step)
            run.observe(step, logits, labels, vocab_start=0, vocab_size=V)
            run.observe(step, draft, draft_labels, stream="draft", group="pos")
    view = _views(runs)["whole"]
    assert view.series("text/acc") == single.series("text/acc")
    assert math.isfinite(dict(view.series("text/ce"))[2])
