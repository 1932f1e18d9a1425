"""The demo tokenizer: exact round trips, the special tokens, the chat format."""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast

from trainspect.demo.data import fixed_eval_examples
from trainspect.demo.tokenizer import BOS, EOS, PAD, SEP, build_tokenizer, prompt_text


def test_is_a_fast_tokenizer_with_the_specials(tokenizer):
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert 512 <= len(tokenizer) <= 1024
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3]) == [PAD, BOS, EOS, SEP]
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)


def test_round_trips_every_demo_text(rows, tokenizer):
    for r in rows[:1000] + fixed_eval_examples():
        for text in (r.prompt, r.response):
            ids = tokenizer.encode(text, add_special_tokens=False)
            assert tokenizer.decode(ids) == text


def test_round_trips_text_it_never_saw(tokenizer):
    text = "Ünïcode, tabs\tand  double  spaces; 1234567890 -> {x: [y]}\n\n"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_specials_are_single_tokens_and_digits_split(tokenizer):
    ids = tokenizer.encode(prompt_text("What is 123 + 45?") + "168." + EOS,
                           add_special_tokens=False)
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[0] == BOS and SEP in tokens and tokens[-1] == EOS
    assert {"1", "2", "3", "4", "5", "6", "8"} <= set(tokens)  # one digit a token
    assert not any(t.strip("Ġ").isdigit() and len(t.strip("Ġ")) > 1 for t in tokens)


def test_chat_template_gives_the_training_prompt(tokenizer):
    messages = [{"role": "user", "content": "Reverse the list: a b"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == prompt_text("Reverse the list: a b")


def test_training_is_deterministic(rows, tokenizer):
    again = build_tokenizer(f"{r.prompt}\n{r.response}" for r in rows)
    assert again.get_vocab() == tokenizer.get_vocab()
