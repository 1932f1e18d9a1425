"""Two gloo ranks, each with half of the global batch through `ts.linear_cross_entropy`,
store what one process stores for the whole batch: the sums pool across ranks and flush
windows as observe's do (floats through the all_reduce compared with a tolerance)."""

from __future__ import annotations

import trainspect as ts
from tests.integrations.ranks import run_ranks
from tests.linear_ce.helpers import assert_close_samples, assert_close_series, head_batch, stored

STEPS = 4


def play(rank: int, world: int, name: str) -> None:
    with ts.init(project="lce", name=name, log_every=2, samples_every=3, num_samples=1) as run:
        for step in range(1, STEPS + 1):
            b = head_batch(step, b=4)
            mine = slice(rank * 4 // world, (rank + 1) * 4 // world)
            hidden = b["hidden"][mine].clone().requires_grad_()
            loss = ts.linear_cross_entropy(hidden, b["weight"], b["labels"][mine],
                                           bias=b["bias"], run=run, step=step,
                                           input_ids=b["input_ids"][mine],
                                           max_chunk_bytes=7 * 37 * 4)
            loss.backward()


def test_two_ranks_store_what_one_process_stores(runs):
    play(0, 1, "single")
    run_ranks(play, "dual")
    single, dual = stored(runs, "single"), stored(runs, "dual")
    def pooled(view) -> list[str]:  # per-rank label offsets exist only with several ranks
        return sorted(k for k in view if k.startswith("text/") and "/rank" not in k)

    keys = pooled(single)
    assert {"text/acc", "text/ece", "text/conf", "text/supervised_tokens"} <= set(keys)
    assert pooled(dual) == keys
    assert_close_series(single, dual, rel=1e-6, keys=keys)  # rows in other matmul blocks
    tokens = sum(v for _, v in single["text/supervised_tokens"])
    assert tokens == float(sum(int((head_batch(s, b=4)["labels"] != -100).sum())
                               for s in range(1, STEPS + 1)))
    # rank 0's own samples (its first sequence is the global batch's first)
    assert_close_samples(single["_samples"], dual["_samples"])
