"""Per-example results in the store: stable ids across evaluations, and regressions since
the best checkpoint. Needs the store's `eval_examples` table (schema version 2)."""

from __future__ import annotations

import trainspect as ts
from trainspect.eval import FixedEval, regressions
from trainspect.eval.evaluate import evaluate

from .test_trends import flip_model


def letters_eval() -> FixedEval:
    from tests.eval.helpers import CharTokenizer

    rows = [{"prompt": c, "response": "klmnopqrst"[i], **({"id": f"q{i}"} if i % 2 else {})}
            for i, c in enumerate("abcdefghij")]
    return FixedEval(rows, tokenizer=CharTokenizer())


def test_every_example_is_stored_with_its_stable_id_at_every_eval(runs):
    ev = letters_eval()
    with ts.init(project="ex") as run:
        evaluate(run, flip_model(6), ev, 100, checkpoint="checkpoint-100")
        evaluate(run, flip_model(3), ev, 200)
    view = ts.open().run(run.id)
    assert view.eval_steps() == [100, 200]
    at_100 = {r["example_id"]: r for r in view.eval_examples(step=100)}
    assert set(at_100) == {row.id for row in ev}  # file ids where given, else hashes
    assert "q1" in at_100 and len(ev.rows[0].id) == 12
    first = at_100[ev.rows[0].id]
    assert first["em"] is True and first["prompt"] == "a" and first["reference"] == "k"
    assert first["output"] == "k" and first["checkpoint"] == "checkpoint-100"
    assert first["pattern"] == "factual" and first["length_bin"] == "0-100"
    assert (first["tokens"], first["correct_tokens"]) == (2, 2)
    assert sum(r["em"] for r in view.eval_examples()) == 3  # the latest eval: step 200


def test_examples_that_regressed_since_the_best_checkpoint_are_listed(runs):
    ev = letters_eval()
    with ts.init(project="ex") as run:
        evaluate(run, flip_model(4), ev, 100)
        evaluate(run, flip_model(7), ev, 200, checkpoint="checkpoint-200")  # best
        evaluate(run, flip_model(5), ev, 300)
    view = ts.open().run(run.id)
    lost = regressions(view)
    assert sorted(r["prompt"] for r in lost) == ["f", "g"]  # right at 200, wrong at 300
    assert all(r["since_step"] == 200 and r["output"].startswith("u") for r in lost)
    assert [r["output_then"] for r in sorted(lost, key=lambda r: r["prompt"])] == ["p", "q"]
    assert regressions(view, since_step=100) == []  # everything right at 100 still is


def test_reevaluating_a_step_keeps_the_newest_result(runs):
    ev = letters_eval()
    with ts.init(project="ex") as run:
        evaluate(run, flip_model(2), ev, 100)
        evaluate(run, flip_model(8), ev, 100)
    view = ts.open().run(run.id)
    assert len(view.eval_examples(step=100)) == 10
    assert sum(r["em"] for r in view.eval_examples(step=100)) == 8
