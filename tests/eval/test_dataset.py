"""FixedEval: loading, validation with file and line, duplicates, ids, encoding."""

from __future__ import annotations

import hashlib
import json
import logging

import pytest

from tests.eval.helpers import BOS, EOS, CharTokenizer, tid
from trainspect.errors import TrainspectError
from trainspect.eval import FixedEval


def write(tmp_path, lines: list[str], name: str = "ev.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_rows_from_a_file_and_from_a_list_are_the_same(tmp_path):
    rows = [{"id": "a", "prompt": "ab", "response": "cd."},
            {"prompt": "xy", "response": "z.", "pattern": "math"}]
    path = write(tmp_path, [json.dumps(r) for r in rows])
    from_file, from_rows = FixedEval(path), FixedEval(rows)
    assert [r.id for r in from_file] == [r.id for r in from_rows]
    assert [(r.prompt, r.response) for r in from_file] == [("ab", "cd."), ("xy", "z.")]
    assert from_file.rows[0].line == 1 and from_rows.rows[1].line == 1
    assert from_file.rows[1].pattern == "math"


def test_an_id_missing_is_a_stable_hash_of_prompt_and_response():
    ev = FixedEval([{"prompt": "ab", "response": "cd."}])
    blob = json.dumps([[["user", "ab"]], "cd."], ensure_ascii=False).encode()
    assert ev.rows[0].id == hashlib.sha256(blob).hexdigest()[:12]
    assert FixedEval([{"prompt": "ab", "response": "cd."}]).rows[0].id == ev.rows[0].id
    assert FixedEval([{"id": 7, "prompt": "ab", "response": "cd."}]).rows[0].id == "7"


@pytest.mark.parametrize(("line", "needle"), [
    ('{"prompt": "a", "response": "b"', "bad JSON"),
    ('{"prompt": "a"}', "missing `response`"),
    ('{"response": "a"}', "missing `prompt`"),
    ('{"prompt": 5, "response": "b"}', "expected `prompt` to be a string, got int 5"),
    ('{"prompt": "a", "response": ["b"]}', "expected `response` to be a string, got list"),
    ('{"prompt": "a", "response": ""}', "`response` is empty"),
    ('{"prompt": "a", "response": "b", "id": true}', "expected `id` to be"),
    ('{"prompt": "a", "response": "b", "pattern": "a/b"}', "without '/'"),
    ('["prompt", "response"]', "expected a JSON object, got list"),
    ('{"messages": [{"role": "user", "content": "a"}]}', "at least two"),
    ('{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}',
     "the last message must be the assistant's"),
    ('{"messages": [{"role": "user", "content": 1}, {"role": "assistant", "content": "b"}]}',
     "`messages[0].content`: expected a string"),
    ('{"messages": [], "prompt": "a", "response": "b"}', "give one form"),
])
def test_a_bad_row_names_the_file_the_line_and_what_is_wrong(tmp_path, line, needle):
    good = '{"prompt": "ok", "response": "fine"}'
    path = write(tmp_path, [good, "", line])  # the blank line still counts: line 3
    with pytest.raises(TrainspectError) as err:
        FixedEval(path)
    text = str(err.value)
    assert f"{path}, line 3" in text and needle in text, text
    assert "line 1" not in text


def test_every_bad_row_is_listed_up_to_five_then_counted(tmp_path):
    path = write(tmp_path, ['{"prompt": 1, "response": "b"}'] * 8)
    with pytest.raises(TrainspectError) as err:
        FixedEval(path)
    text = str(err.value)
    assert all(f"line {n}:" in text for n in range(1, 6))
    assert "line 6:" not in text and "and 3 more bad rows" in text


def test_bad_rows_in_a_list_name_their_index():
    with pytest.raises(TrainspectError, match=r"rows\[1\]: missing `response`"):
        FixedEval([{"prompt": "a", "response": "b"}, {"prompt": "c"}])


def test_a_missing_file_and_an_empty_file_are_clear_errors(tmp_path):
    with pytest.raises(TrainspectError, match="cannot read the fixed eval file"):
        FixedEval(tmp_path / "nope.jsonl")
    with pytest.raises(TrainspectError, match="no examples"):
        FixedEval(write(tmp_path, [""]))


def test_bad_arguments_are_named():
    rows = [{"prompt": "a", "response": "b"}]
    with pytest.raises(TrainspectError, match="`max_samples`"):
        FixedEval(rows, max_samples=0)
    with pytest.raises(TrainspectError, match="`length_bins`"):
        FixedEval(rows, length_bins=(300, 100))
    with pytest.raises(TrainspectError, match="`patterns`"):
        FixedEval(rows, patterns=42)
    with pytest.raises(TrainspectError, match="`source`"):
        FixedEval(42)


def test_duplicates_are_kept_out_and_reported_with_their_lines(tmp_path, caplog):
    path = write(tmp_path, [
        '{"id": "a", "prompt": "p1", "response": "r1"}',
        '{"id": "b", "prompt": "p2", "response": "r2"}',
        '{"id": "a", "prompt": "p3", "response": "r3"}',  # same id as line 1
        '{"id": "c", "prompt": "p2", "response": "r2"}',  # same text as line 2
        '{"prompt": "p4", "response": "r4"}',
    ])
    with caplog.at_level(logging.WARNING, logger="trainspect"):
        ev = FixedEval(path)
    assert [r.id for r in ev][:2] == ["a", "b"] and len(ev) == 3
    assert ev.duplicates == [(3, 1, "same id 'a'"), (4, 2, "same prompt and response")]
    message = caplog.text
    assert "2 duplicate rows" in message
    assert f"{path}, line 3 repeats {path}, line 1" in message
    assert f"{path}, line 4 repeats {path}, line 2" in message


def test_max_samples_keeps_the_first_distinct_rows():
    rows = [{"prompt": f"p{i}", "response": "r"} for i in range(10)]
    rows.insert(1, dict(rows[0]))  # a repeat does not use up a slot
    assert [r.prompt for r in FixedEval(rows, max_samples=3)] == ["p0", "p1", "p2"]


def test_dataclass_rows_are_accepted():
    from trainspect.demo.data import fixed_eval_examples

    examples = fixed_eval_examples()[:4]
    ev = FixedEval(examples)
    assert [r.id for r in ev] == [e.id for e in examples]
    assert [r.pattern for r in ev] == [e.pattern for e in examples]


def test_plain_join_without_a_chat_template():
    tok = CharTokenizer()
    ev = FixedEval([
        {"prompt": "ab", "response": "cd."},
        {"messages": [{"role": "system", "content": "a"}, {"role": "user", "content": "b"},
                      {"role": "assistant", "content": "c"}]},
    ], tokenizer=tok, length_bins=(2, 4))
    first, second = ev.encode()
    assert first.prompt_ids == (BOS, tid("a"), tid("b"))
    assert first.target_ids == (tid("c"), tid("d"), tid("."), EOS)
    assert first.ref_tokens == 3 and first.ends and first.length_bin == 1  # 2 <= 3 < 4
    assert ev.rows[1].prompt == "system: a\nuser: b"
    assert second.prompt_ids == (BOS, *tok.encode("system: a\nuser: b"))
    assert second.target_ids == (tid("c"), EOS) and second.length_bin == 0


def test_a_row_the_tokenizer_cannot_encode_is_named():
    with pytest.raises(TrainspectError, match=r"rows\[0\]: the tokenizer failed"):
        FixedEval([{"prompt": "A", "response": "b"}], tokenizer=CharTokenizer()).encode()


def test_chat_template_rows_match_the_conversation_the_model_was_trained_on():
    from trainspect.demo.batching import encode
    from trainspect.demo.data import Example
    from trainspect.demo.tokenizer import build_tokenizer

    tok = build_tokenizer(["What is 3 times 4?\n3 times 4 is 12.", "hello world"], 300)
    row = Example("x", "What is 3 times 4?", "3 times 4 is 12.", "math")
    ev = FixedEval([{"messages": [{"role": "user", "content": row.prompt},
                                  {"role": "assistant", "content": row.response}]}],
                   tokenizer=tok)
    (encoded,) = ev.encode()
    reference = encode(row, tok)  # the demo's own training encoding
    assert list(encoded.prompt_ids) == reference.prompt_ids
    assert list(encoded.target_ids) == reference.response_ids
    assert encoded.target_ids[-1] == tok.eos_token_id and encoded.ends
    assert ev.encode() is ev.encode()  # cached per tokenizer


def test_an_end_of_turn_marker_cuts_the_target():
    class Templated(CharTokenizer):
        chat_template = "yes"
        eos_token_id = EOS

        def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=True):
            text = "".join(m["content"] + ("?" if m["role"] == "user" else ".  ")
                           for m in messages)
            return text

        def convert_tokens_to_ids(self, token):
            return tid(".") if token == "<|im_end|>" else None

    (encoded,) = FixedEval([{"prompt": "ab", "response": "cd"}], tokenizer=Templated()).encode()
    assert encoded.prompt_ids == (tid("a"), tid("b"), tid("?"))
    # rendered "ab?cd.  ": the response is "cd.  ", cut after the end-of-turn marker "."
    assert encoded.target_ids == (tid("c"), tid("d"), tid(".")) and encoded.ref_tokens == 2


def test_as_fixed_eval_takes_what_the_integrations_are_given(tmp_path):
    from trainspect.eval import as_fixed_eval

    tok = CharTokenizer()
    path = write(tmp_path, ['{"prompt": "ab", "response": "cd"}'])
    assert as_fixed_eval(None, tok) is None
    loaded = as_fixed_eval(str(path), tok)
    assert len(loaded) == 1 and loaded.tokenizer is tok
    given = FixedEval([{"prompt": "ab", "response": "cd"}])
    assert as_fixed_eval(given, tok) is given and given.tokenizer is tok
    with pytest.raises(TrainspectError, match="`source`"):
        as_fixed_eval(3.5, tok)
