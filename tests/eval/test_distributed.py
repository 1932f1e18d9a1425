"""Two gloo ranks on the CPU store the numbers one process stores.

Each rank evaluates its shard of the set (every other example of the length-sorted
order, padded to equal batches), the sums are pooled with one all_reduce and the
examples gathered, so the run holds the single-process metrics, pattern x
length cells, calibration table and per-example results; rank 0 writes them.
"""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import trainspect as ts
from tests.eval.helpers import CharTokenizer, TableModel, make_table, successor_map
from trainspect.eval import FixedEval
from trainspect.eval.evaluate import evaluate

BATCH = 2


def eval_rows() -> list[dict]:
    """11 rows (odd: one rank gets a placeholder) of mixed lengths and patterns."""
    rows = [
        {"prompt": "wx", "response": "yz."}, {"prompt": "uv", "response": "wxyz."},
        {"prompt": "ab", "response": "cdx."}, {"prompt": "?", "response": " abc"},
        {"prompt": "xy", "response": "z."}, {"prompt": "a", "response": "bcdefghij"},
        {"prompt": "why", "response": "z."}, {"prompt": "hello", "response": "pqrs."},
        {"prompt": "k", "response": "lmnopqrstuvwxyz."}, {"prompt": "explain q", "response": "r"},
        {"prompt": "what is three plus four", "response": "b"},
    ]
    return [{"id": f"d{i}", **row} for i, row in enumerate(rows)]


def run_eval(root: str, project: str) -> dict:
    model = TableModel(make_table(successor_map()))
    ev = FixedEval(eval_rows(), tokenizer=CharTokenizer(), length_bins=(3, 6), extra_tokens=2)
    with ts.init(project=project, dir=root) as run:
        greedy = evaluate(run, model, ev, step=5, batch_size=BATCH)
        forced = evaluate(run, model, ev, step=6, batch_size=BATCH, em="teacher_forced")
    return {"run": run.id, "examples": [[e.__dict__ for e in r.examples] for r in (greedy, forced)]}


def worker(rank: int, world: int, init_file: str, root: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                           world_size=world)
    try:
        out = run_eval(root, f"rank{rank}")
        with open(f"{root}/rank{rank}.json", "w") as f:
            json.dump(out, f)
    finally:
        dist.destroy_process_group()


def stored(root, project: str, run_id: str) -> dict:
    view = ts.open(root).run(f"{project}/{run_id}")
    return {
        "scalars": {k: view.series(k) for k in view.keys()},
        "matrices": {m: view.matrix(m) for m in view.matrix_names()},
    }


# The all_reduce sums the ranks' float64 partial sums in another order than one process
# does: results may differ in the last bits (seen: one ulp in eval/ce_se). A real
# difference (an example lost or counted twice among 11) moves a metric by percents.
REL_TOL, ABS_TOL = 1e-9, 1e-12


def same(a, b) -> bool:
    """Equal up to summation order, with NaN equal to NaN (the EM matrix's empty cells)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL) or (
            math.isnan(a) and math.isnan(b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


@pytest.mark.skipif(sys.platform == "win32" or not dist.is_available(),
                    reason="needs torch.distributed with gloo")
def test_two_ranks_store_what_one_process_stores(tmp_path, runs):
    single = run_eval(str(tmp_path / "single"), "single")
    mp.spawn(worker, args=(2, str(tmp_path / "pg-init"), str(tmp_path)), nprocs=2, join=True)
    expected = stored(tmp_path / "single", "single", single["run"])
    assert "eval/em" in expected["scalars"] and "eval/pattern_length" in expected["matrices"]
    for rank in (0, 1):
        out = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert out["examples"] == single["examples"]  # every example, in row order
    # rank 0 writes the pooled numbers; the other ranks write nothing
    got = stored(tmp_path, "rank0", json.loads((tmp_path / "rank0.json").read_text())["run"])
    straggler = {k for k in got["scalars"] if k.startswith("speed/rank")}  # per-rank timing
    assert straggler == {"speed/rank0/late_s", "speed/rank1/late_s"}
    assert same({k: v for k, v in got["scalars"].items() if k not in straggler},
                expected["scalars"])
    assert same(got["matrices"], expected["matrices"])
    assert not (tmp_path / "rank1").exists()


def test_the_comparison_forgives_summation_order_but_not_a_real_difference():
    ce = 0.8210341017397623
    assert same({"eval/ce": [(5, ce)]}, {"eval/ce": [(5, math.nextafter(ce, 1.0))]})
    assert not same({"eval/ce": [(5, ce)]}, {"eval/ce": [(5, ce * (1 + 1e-6))]})
    assert not same([(5, 0.0)], [(5, 1e-9)]) and same([(5, math.nan)], [(5, math.nan)])


def test_sharding_pads_ranks_to_the_same_count():
    from trainspect.eval.distributed import shard

    order = [4, 0, 3, 1, 2]
    assert shard(order, 0, 2) == [4, 3, 2] and shard(order, 1, 2) == [0, 1, None]
    assert shard(order, 3, 4) == [1, None]
    assert sorted(i for r in range(4) for i in shard(order, r, 4) if i is not None) == [
        0, 1, 2, 3, 4]
    assert shard([7], 1, 2) == [None]


def test_greedy_with_fixed_steps_calls_the_model_that_often():
    """Ranks decode the same number of steps (a communicating forward never waits)."""
    from trainspect.eval.forward import greedy

    model = TableModel(make_table(successor_map()))
    out = greedy(model, [[1, 26, 27]], [3], frozenset([2]), 0, torch.device("cpu"), steps=9)
    assert model.calls == 9 and len(out[0]) == 3  # yz. and the row's own limit holds
