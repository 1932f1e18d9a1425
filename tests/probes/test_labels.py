"""The label probe against hand-built batches: offsets, template checks, vocabulary,
repeats, per-rank tables; and through `run.observe` to the rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import trainspect as ts
from trainspect.demo.tokenizer import build_tokenizer
from trainspect.probes.labels import LabelProbe, Template, template_of

IGNORE = -100


@pytest.fixture(scope="module")
def tok():
    texts = [f"What is {a} + {b}?\n{a + b}." for a in range(30) for b in range(30)]
    return build_tokenizer(texts, 300)


def chat_batch(tok, prompts, answers, width):
    """(input_ids, attention_mask, labels) as the demo's collator builds them."""
    rows = []
    for p, a in zip(prompts, answers):
        prompt = tok.encode(f"<bos>{p}<sep>", add_special_tokens=False)
        answer = tok.encode(a, add_special_tokens=False) + [tok.eos_token_id]
        rows.append((prompt, answer))
    ids = torch.full((len(rows), width), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE)
    for i, (prompt, answer) in enumerate(rows):
        seq = (prompt + answer)[:width]
        ids[i, :len(seq)] = torch.tensor(seq)
        mask[i, :len(seq)] = 1
        labels[i, len(prompt):len(seq)] = torch.tensor(seq[len(prompt):])
    return ids, mask, labels


def values(probe, step=10):
    arrays = [t.detach().numpy().copy() for t in probe.state()]
    return {r.key: r.value for r in probe.compute(arrays, step, 0.0)}


def reference_offsets(labels, ids, k_max):
    """Share of supervised labels equal to ids[t + k], by plain loops (float64)."""
    labels, ids = labels.numpy(), ids.numpy()
    out = []
    for k in range(k_max):
        hit = total = 0
        for b in range(labels.shape[0]):
            for t in range(labels.shape[1]):
                if labels[b, t] == IGNORE or t + k >= ids.shape[1]:
                    continue
                total += 1
                hit += labels[b, t] == ids[b, t + k]
        out.append(hit / total if total else 0.0)
    return np.array(out)


def test_template_of_the_demo_tokenizer_and_of_an_im_start_template(tok):
    t = template_of(tok)
    assert t.vocab == len(tok) and t.pad == tok.pad_token_id
    assert t.markers == tuple(sorted((tok.bos_token_id, tok.convert_tokens_to_ids("<sep>"))))
    assert t.ends == (tok.eos_token_id,)
    qwen = build_tokenizer(["hello world"] * 10, 280)
    qwen.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    qwen.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                          "{{ m['content'] }}<|im_end|>\n{% endfor %}"
                          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    t = template_of(qwen)
    start, end = qwen.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert t.markers == (start,) and t.ends == (end,)  # <|im_end|> also ends the answer
    assert template_of(None) == Template()


@pytest.mark.parametrize(("shift", "expected"), [(1, 1), (0, 0), (2, 2)])
def test_offsets_match_a_loop_reference(tok, shift, expected):
    ids, mask, labels = chat_batch(tok, ["What is 3 + 4?", "What is 12 + 9?"],
                                   ["7.", "21."], 16)
    aligned = torch.full_like(labels, IGNORE)  # labels at t = the token at t + shift
    aligned[:, : 16 - shift] = labels[:, shift:]
    probe = LabelProbe(tok)
    probe.update("text", None, 1, aligned[:, :-1], None, ids, mask, IGNORE)
    got = values(probe)
    ref = reference_offsets(aligned[:, :-1], ids, 4)
    assert got["text/label_offset"] == expected == int(np.argmax(ref))
    assert got["text/label_offset_share"] == pytest.approx(ref.max(), rel=1e-12)
    assert ref.max() == 1.0


def test_grouped_draft_targets_per_position(tok):
    ids, mask, labels = chat_batch(tok, ["What is 3 + 4?", "What is 12 + 19?"],
                                   ["7.", "31."], 16)
    good = torch.full((2, 16, 3), IGNORE)
    stuck = torch.full((2, 16, 3), IGNORE)
    for p in range(3):
        good[:, : 16 - 1 - p, p] = labels[:, 1 + p:]
        stuck[:, : 15, p] = labels[:, 1:]  # the offset never advances
    probe = LabelProbe(tok)
    probe.update("draft", "pos", 3, good[:, :-1], None, ids, None, IGNORE)
    probe.update("stuck", "pos", 3, stuck[:, :-1], None, ids, None, IGNORE)
    got = values(probe)
    assert [got[f"draft/pos{p}/label_offset"] for p in range(3)] == [1.0, 2.0, 3.0]
    assert [got[f"stuck/pos{p}/label_offset"] for p in range(3)] == [1.0, 1.0, 1.0]
    for p in range(3):
        ref = reference_offsets(good[:, :-1, p], ids, 6)
        assert got[f"draft/pos{p}/label_offset_share"] == pytest.approx(ref.max())


def test_prompt_padding_end_and_truncation_counts(tok):
    ids, mask, labels = chat_batch(tok, ["What is 3 + 4?", "What is 2 + 9?",
                                         "What is 1 + 1?"], ["7.", "11.", "2."], 18)
    cases = {}
    cases["healthy"] = labels
    cases["prompt"] = ids.masked_fill(mask == 0, IGNORE)  # labels = input_ids
    cases["padding"] = labels.masked_fill(mask == 0, tok.pad_token_id)
    cases["end_masked"] = labels.masked_fill(ids == tok.eos_token_id, IGNORE)
    got = {}
    for name, lab in cases.items():
        probe = LabelProbe(tok)
        probe.update("text", None, 1, lab[:, 1:], None, ids, mask, IGNORE)
        got[name] = values(probe)
    # hand counts: 3 rows, each with its <bos>/<sep> prompt markers and one <eos>
    assert got["healthy"]["text/prompt_marker_rows"] == 0.0
    assert got["healthy"]["text/pad_labels"] == 0.0
    assert got["healthy"]["text/rows_without_end"] == 0.0
    assert got["prompt"]["text/prompt_marker_rows"] == 1.0  # <sep> labelled in every row
    real = int(mask[:, 1:].sum())
    supervised = int((cases["padding"][:, 1:] != IGNORE).sum())
    assert got["padding"]["text/pad_labels"] == pytest.approx((supervised - int(
        (labels[:, 1:] != IGNORE).sum())) / supervised)
    assert got["healthy"]["text/supervised_share"] == pytest.approx(
        int((labels[:, 1:] != IGNORE).sum()) / real)
    assert got["end_masked"]["text/rows_without_end"] == 1.0
    assert got["end_masked"]["text/rows_cut"] == 0.0  # ends inside the sequence
    prompt_lengths = (labels == IGNORE).int().argmin(dim=1)  # first supervised position
    assert len(set(prompt_lengths.tolist())) == 1  # one prompt length: one cut for all
    cut = int(prompt_lengths[0]) + 2  # max_length: two answer tokens left, no <eos>
    short = LabelProbe(tok)
    lab, inputs, real = labels[:, 1:cut], ids[:, :cut], mask[:, :cut]
    short.update("text", None, 1, lab, None, inputs, real, IGNORE)
    got = values(short)
    # reference by loops: rows with a supervised label, and how they end
    rows = [b for b in range(3) if (lab[b] != IGNORE).any()]
    no_end = [b for b in rows if not (lab[b] == tok.eos_token_id).any()]
    ends_mid_answer = [b for b in rows if lab[b, int(real[b, 1:].sum()) - 1] not in
                       (IGNORE, tok.eos_token_id)]
    assert len(no_end) == 3 and got["text/rows_without_end"] == len(no_end) / len(rows)
    assert got["text/rows_cut"] == len(ends_mid_answer) / len(rows) == 1.0


def test_ids_beyond_the_tokenizer_and_repeated_batches(tok):
    ids, mask, labels = chat_batch(tok, ["What is 3 + 4?", "What is 2 + 2?"],
                                   ["7.", "4."], 14)
    probe = LabelProbe(tok)
    far = labels.clone()
    far[0, -1] = len(tok) + 5  # an id the tokenizer cannot make
    for _ in range(3):  # one flush window: its first CHECKED_PER_WINDOW (2) calls count
        probe.update("text", None, 1, far[:, 1:], None, ids, mask, IGNORE)
    got = values(probe)
    assert got["text/labels_beyond_vocab"] == 2.0 and got["text/inputs_beyond_vocab"] == 0.0
    assert got["text/repeated_batches"] == pytest.approx(1 / 2)  # call 2 repeats call 1
    probe.reset()  # the next window: checked again
    other = ids.roll(1, dims=0)
    probe.update("text", None, 1, labels.roll(1, dims=0)[:, 1:], None, other, mask, IGNORE)
    assert values(probe)["text/repeated_batches"] == 0.0  # not in the ring: a new batch
    empty = torch.full_like(labels, IGNORE)
    for _ in range(2):  # batches without supervision never count as repeats
        probe.update("text", None, 1, empty[:, 1:], None, None, None, IGNORE)
    assert values(probe)["text/repeated_batches"] == 0.0


def test_inputs_of_another_layout_skip_the_offsets_only(tok):
    ids, mask, labels = chat_batch(tok, ["What is 3 + 4?"], ["7."], 12)
    probe = LabelProbe(tok)
    probe.update("text", None, 1, labels[:, 1:], None, ids[:, :5], mask, IGNORE)
    got = values(probe)
    assert "text/label_offset" not in got and got["text/repeated_batches"] == 0.0


def test_observe_feeds_the_rules_through_the_store(runs, tok):
    ids, mask, labels = chat_batch(tok, ["What is 3 + 4?", "What is 12 + 9?"],
                                   ["7.", "21."], 16)
    with ts.init(project="labels", tokenizer=tok, log_every=5) as run:
        for step in range(10):
            logits = torch.randn(2, 15, len(tok))
            run.observe(step, logits, labels[:, :-1], input_ids=ids,  # not shifted
                        attention_mask=mask)
    view = ts.open().run(run.id)
    assert view.series("text/label_offset")[0][1] == 0.0
    fired = [(a["rule"], a["level"]) for a in view.alerts() if a["state"] == "fired"]
    assert ("label_alignment:text", "critical") in fired
    assert "were not shifted" in next(a["message"] for a in view.alerts()
                                      if a["rule"] == "label_alignment:text")


def _two_ranks(rank: int, world: int, root: str) -> None:
    """Rank 1's labels are not shifted; rank 0's are."""
    tok = build_tokenizer([f"What is {a} + {b}?\n{a + b}." for a in range(30)
                           for b in range(30)], 300)
    ids, mask, labels = chat_batch(tok, ["What is 3 + 4?", "What is 12 + 9?"],
                                   ["7.", "21."], 16)
    with ts.init(project="ranks", dir=root, tokenizer=tok, log_every=4) as run:
        for step in range(8):
            logits = torch.randn(2, 15, len(tok))
            lab = labels[:, 1:] if rank == 0 else labels[:, :-1]
            run.observe(step, logits, lab, input_ids=ids, attention_mask=mask)


def test_one_ranks_labels_stand_out_in_the_per_rank_table(tmp_path):
    from tests.integrations.ranks import run_ranks

    run_ranks(_two_ranks, str(tmp_path))
    view = ts.open(tmp_path).runs()[0]
    assert view.series("text/rank0/label_offset")[0][1] == 1.0
    assert view.series("text/rank1/label_offset")[0][1] == 0.0
    assert view.series("text/rank1/label_offset_share")[0][1] == 1.0
    fired = [a for a in view.alerts() if a["state"] == "fired"]
    assert [a["rule"] for a in fired if a["rule"].startswith("label_alignment")] == [
        "label_alignment:text:rank1"]
    assert "text on rank 1: 100% of the supervised labels" in fired[0]["message"]


@pytest.mark.gpu
def test_update_makes_no_host_sync_on_cuda(tok):
    ids, mask, labels = chat_batch(tok, ["What is 3 + 4?", "What is 12 + 9?"],
                                   ["7.", "21."], 16)
    ids, mask, labels = (t.cuda() for t in (ids, mask, labels))
    probe = LabelProbe(tok)
    probe.update("text", None, 1, labels[:, 1:], None, ids, mask, IGNORE)  # allocates state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        probe.reset()  # a new flush window: its first two calls are checked, the third not
        for _ in range(3):
            probe.update("text", None, 1, labels[:, 1:], None, ids, mask, IGNORE)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    got = {r.key: r.value for r in probe.compute(
        [t.cpu().numpy() for t in probe.state()], 1, 0.0)}
    # both checked calls repeat the batch of the window before (the ring outlives a flush)
    assert got["text/label_offset"] == 1.0 and got["text/repeated_batches"] == 1.0
