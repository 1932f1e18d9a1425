"""A small byte-level BPE tokenizer trained offline on the demo's own text.

Byte-level, so every string round-trips exactly (code indentation, newlines,
punctuation); digits are split one per token, as in Llama tokenizers, so numbers
of any size use a ten-token alphabet the model can learn arithmetic patterns on.
The result is wrapped as a `transformers.PreTrainedTokenizerFast`, so it has
`encode` / `decode` / `pad`, `eos_token_id` / `pad_token_id` and a chat template,
like any Hugging Face tokenizer a user would hand to trainspect.

A chat turn is `<bos>{prompt}<sep>{response}<eos>`: `<sep>` is where the
assistant's answer starts, and everything before it is unsupervised.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, SEP = "<pad>", "<bos>", "<eos>", "<sep>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, SEP)  # ids 0..3, in this order
DEFAULT_VOCAB_SIZE = 768  # 256 bytes + 4 specials + ~500 merges: enough for the word lists

# `apply_chat_template(messages, add_generation_prompt=True)` gives `<bos>{prompt}<sep>`.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'user' %}{{ m['content'] }}" + SEP + "{% else %}"
    "{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)


def prompt_text(prompt: str) -> str:
    """The model input that asks for a response: `<bos>{prompt}<sep>`."""
    return f"{BOS}{prompt}{SEP}"


def train_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> Tokenizer:
    """Train the raw `tokenizers` BPE on `texts` (deterministic for the same texts)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte, seen or not
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def build_tokenizer(
    texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE
) -> PreTrainedTokenizerFast:
    """Train on `texts` and wrap as a Hugging Face fast tokenizer with the demo's specials."""
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(texts, vocab_size),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=[SEP],
        padding_side="right",
        clean_up_tokenization_spaces=False,  # keep decode(encode(s)) == s
        model_max_length=1024,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped
