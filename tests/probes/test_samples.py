"""Prediction samples with a real tokenizer: every stored field against a float64
reference, nothing supervised, named codebook tokens, bytes that are not UTF-8."""

from __future__ import annotations

import logging

import pytest
import tokenizers  # noqa: F401 - the dev extra installs it
import torch

import trainspect as ts  # noqa: E402
from trainspect.cli import main  # noqa: E402
from trainspect.probes.token_text import TokenNamer  # noqa: E402

TEXT = ["The capital of France is Paris.", "def add(a, b):\n    return a + b",
        "What is 3 + 4? 7", "naïve café — déjà vu"]


@pytest.fixture(scope="module")
def tokenizer():
    from trainspect.demo.tokenizer import build_tokenizer

    return build_tokenizer(TEXT * 20, vocab_size=300)


def batch(tokenizer, seed=0):
    """Three sequences: prompt (unsupervised) then response; logits favour the labels."""
    ids = [tokenizer.encode(t) for t in TEXT[:3]]
    length = max(map(len, ids))
    input_ids = torch.full((3, length), tokenizer.pad_token_id)
    for i, seq in enumerate(ids):
        input_ids[i, : len(seq)] = torch.tensor(seq)
    labels = input_ids.clone()
    labels[:, :4] = -100  # the "prompt"
    labels[input_ids == tokenizer.pad_token_id] = -100
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, length, len(tokenizer), generator=g)
    logits.scatter_(2, input_ids.roll(-1, dims=1)[..., None], 4.0)  # mostly right
    return input_ids, logits[:, :-1], labels[:, 1:]


def test_sample_rows_match_a_float64_reference(runs, tokenizer):
    input_ids, logits, labels = batch(tokenizer)
    with ts.init(project="p", tokenizer=tokenizer, samples_every=5, num_samples=2,
                 sample_positions=(3, 2)) as run:
        for step in range(0, 11):
            run.observe(step, logits, labels, input_ids=input_ids)
    view = ts.open(runs).run(run.id)
    assert view.sample_steps() == [0, 5, 10]
    rows = view.samples(step=5)
    assert len(rows) == 2 and {r["stream"] for r in rows} == {"text"}
    namer = TokenNamer(tokenizer)
    for b, row in enumerate(rows):
        logp = torch.log_softmax(logits[b].double(), -1)
        supervised = (labels[b] != -100).nonzero().flatten().tolist()
        kept = supervised[:3] + supervised[-2:] if len(supervised) > 5 else supervised
        assert [p["t"] for p in row["positions"]] == kept
        for p in row["positions"]:
            t = p["t"]
            pred = int(logits[b, t].argmax())
            label = int(labels[b, t])
            assert (p["pred_id"], p["label_id"]) == (pred, label)
            assert p["pred"] == namer.token(pred) and p["label"] == namer.token(label)
            assert p["pred_prob"] == pytest.approx(float(logp[t, pred].exp()), rel=1e-5)
            assert p["label_prob"] == pytest.approx(float(logp[t, label].exp()), rel=1e-5)
            assert p["entropy"] == pytest.approx(float(-(logp[t].exp() * logp[t]).sum()),
                                                 rel=1e-5)
            assert p["match"] == (pred == label)
            assert p["confident_wrong"] == (pred != label and p["pred_prob"] > 0.5)
            top = torch.topk(logp[t], 5)
            assert [tok for tok, _ in p["top"]] == [namer.token(int(i)) for i in top.indices]
            assert [prob for _, prob in p["top"]] == pytest.approx(top.values.exp().tolist(),
                                                                   rel=1e-5)
        prompt = tokenizer.decode(input_ids[b, : supervised[0] + 1].tolist())
        assert row["context"] == prompt
    # the same example keeps its id across steps and runs
    assert [r["sample_id"] for r in view.samples(step=0)] == [r["sample_id"] for r in rows]
    with ts.init(project="q", samples_every=1, num_samples=1) as other:
        other.observe(0, logits, labels, input_ids=input_ids)
    assert ts.open(runs).run(other.id).samples()[0]["sample_id"] == rows[0]["sample_id"]


def test_nothing_supervised_stores_empty_rows(runs):
    with ts.init(project="p", samples_every=1, num_samples=2) as run:
        run.observe(0, torch.randn(2, 4, 9), torch.full((2, 4), -100))
    rows = ts.open(runs).run(run.id).samples()
    assert len(rows) == 2 and all(r["positions"] == [] for r in rows)
    assert "tokens" not in run._disabled and "samples" not in run._disabled


def test_codebooks_name_their_special_tokens(runs):
    names = {1024: "<audio_bos>", 1025: "<audio_eos>"}
    logits = torch.randn(1, 5, 2, 1026)
    labels = torch.randint(0, 1024, (1, 5, 2))
    labels[0, 0, :] = 1024
    labels[0, -1, :] = 1025
    logits[0, 0, 0, 1024] = 30.0  # codebook 0 predicts BOS at t=0
    with ts.init(project="p", samples_every=1, num_samples=1) as run:
        run.observe(0, logits, labels, stream="audio", group="cb", token_names=names)
    rows = ts.open(runs).run(run.id).samples()
    assert [r["group"] for r in rows] == [0, 1]
    first = rows[0]["positions"][0]
    assert (first["label"], first["pred"], first["match"]) == ("<audio_bos>", "<audio_bos>", True)
    assert rows[1]["positions"][-1]["label"] == "<audio_eos>"
    assert rows[1]["positions"][1]["label"] == f"#{int(labels[0, 1, 1])}"  # no tokenizer: ids


def test_partial_utf8_tokens_show_their_bytes(tokenizer):
    byte_e2 = tokenizer.convert_tokens_to_ids("â")  # byte-level BPE's character for 0xE2
    namer = TokenNamer(tokenizer)
    assert namer.token(byte_e2) == "<0xE2>"
    assert namer.token(10**9) == "#1000000000"  # an id the tokenizer does not know
    assert namer.text([byte_e2] + tokenizer.encode("ok")).endswith("ok")


def test_verbose_prints_a_readable_block_and_show_prints_samples(runs, tokenizer, caplog,
                                                                   capsys):
    input_ids, logits, labels = batch(tokenizer, seed=3)
    logits[0, 6, :] = 0.0
    logits[0, 6, 5] = 20.0  # planted: confident in a wrong token
    labels[0, 6] = 7
    with caplog.at_level(logging.INFO, logger="trainspect.samples"), ts.init(
            project="p", tokenizer=tokenizer, samples_every=1, num_samples=1,
            verbose=True) as run:
        run.observe(0, logits, labels, input_ids=input_ids)
        run.flush()
    block = "\n".join(r.getMessage() for r in caplog.records if r.name == "trainspect.samples")
    assert "Step 0" in block and "Confidence summary" in block
    assert "confident in a wrong token" in block
    assert main(["show", run.id, "--samples"]) == 0
    assert "confident in a wrong token" in capsys.readouterr().out


def test_a_run_shorter_than_samples_every_still_stores_samples(runs, tokenizer):
    """30 steps with samples_every=200: the first observed step is sampled, so the first
    flush already holds samples; later ones follow samples_every (HF steps start at 1)."""
    input_ids, logits, labels = batch(tokenizer)
    with ts.init(project="p", tokenizer=tokenizer, samples_every=200, num_samples=2,
                 log_every=10) as run:
        for step in range(1, 31):
            run.observe(step, logits, labels, input_ids=input_ids)
            run.observe(step, logits, labels, input_ids=input_ids)  # a second micro-batch
            if step == 10:
                run.flush()
                assert ts.open(runs).run(run.id).sample_steps() == [1]
    assert ts.open(runs).run(run.id).sample_steps() == [1]
    assert len(ts.open(runs).run(run.id).samples(step=1)) == 2
    with ts.init(project="p", samples_every=4, num_samples=1) as run:
        for step in range(3, 13):
            run.observe(step, logits, labels)
    assert ts.open(runs).run(run.id).sample_steps() == [3, 4, 8, 12]


def test_a_long_context_is_cut_between_tokens(tokenizer):
    """The kept context is the decoding of the longest suffix of whole tokens that fits
    (found here by trying every suffix), never a slice through a token."""
    ids = tokenizer.encode(" ".join(TEXT * 6))
    limit = 60
    namer = TokenNamer(tokenizer)
    got = namer.text(ids, limit)
    assert got.startswith("…")
    fits = [k for k in range(len(ids)) if len(tokenizer.decode(ids[k:])) <= limit]
    assert got[1:] == tokenizer.decode(ids[min(fits):])
    assert len(got) - 1 <= limit
    assert namer.text(ids[-3:], limit) == tokenizer.decode(ids[-3:])  # short: whole
    plain = TokenNamer(None)  # no tokenizer: ids, dropped whole from the front
    assert plain.text([11, 22, 33, 44], 8) == "…#33 #44"
