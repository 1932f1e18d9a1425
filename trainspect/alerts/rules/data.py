"""The data feeding the loss: labels misaligned with their inputs, prompts or padding
supervised, answers without their end, ids the tokenizer cannot make, repeated batches.

Every rule here reads the label probe's per-window counts (`trainspect.probes.labels`):
exact counts over integer tensors, not estimates, so one window is enough evidence
and the thresholds only separate a systematic bug from a stray row.
"""

from __future__ import annotations

import re

from trainspect.alerts.rule import HOLD, CheckResult, Context, Finding, Rule
from trainspect.alerts.stats import num, pct

# <stream>/label_offset or <stream>/<group><i>/label_offset
_OFFSET = re.compile(r"^([^/]+)/(?:([a-z]+)(\d+)/)?label_offset$")


def _stream_keys(ctx: Context, metric: str) -> list[tuple[str, str]]:
    """(stream, key) for each `<stream>/<metric>` with a point at this step."""
    out = []
    for key in ctx.new:
        head, sep, tail = key.partition("/")
        if sep and tail == metric:
            out.append((head, key))
    return out


class LabelAlignment(Rule):
    """Labels that are not the next input token: not shifted, shifted twice, shuffled.

    From the label probe's `<s>/label_offset` and `<s>/label_offset_share` (per group
    for grouped streams, and per rank as `<s>/rank<i>/...` with several ranks): the
    offset k at which the most supervised labels equal the input token k places later,
    and that share. A share of 0.5 or more means the
    labels are copies of the inputs at that offset (by chance a wrong offset matches
    only as often as a token repeats, a few percent). Critical, fires at once:
    - an ungrouped stream whose dominant offset is not 1: 0 is labels not shifted (the
      model learns to copy its input), 2 or more is labels shifted twice;
    - a grouped stream (draft positions) whose group predicts the token it reads
      (offset 0), or two groups with the same dominant offset (their targets were not
      advanced per position);
    - with several ranks, each rank's own labels instead of the pooled mix (one rank
      whose shard was built differently would otherwise blur into a half share);
    - a stream whose labels were aligned (share >= 0.9 in an earlier window) and now
      match no offset (best share < 0.5): labels and inputs were separated (shuffled,
      paired with other rows).
    Clears after 3 windows without it.
    """

    id = "label_alignment"
    level = "critical"
    keys = ("*/label_offset", "*/label_offset_share", "*/*/label_offset",
            "*/*/label_offset_share")
    triggers = ("*/label_offset_share", "*/*/label_offset_share")
    history = 8
    dominant = 0.5  # share at or above which labels copy the inputs at that offset
    aligned = 0.9  # share that establishes a stream's alignment
    action = ("Align labels with the logits: position t of the logits must be compared with "
              "the token at t + 1 (logits[:, :-1] with labels[:, 1:] for a causal LM, and "
              "only once: if the collator already shifted the labels, do not shift them in "
              "the loop). For draft heads, position i must target the token i + 1 places "
              "further than position 0 does. If labels stopped matching their inputs, check "
              "that the data pipeline shuffles examples, not the labels apart from them.")

    def __init__(self) -> None:
        self._was_aligned: set[str] = set()

    def check(self, ctx: Context) -> CheckResult:
        groups: dict[str, dict[int | None, tuple[float, float]]] = {}
        for key in ctx.new:
            if not key.endswith("/label_offset_share"):
                continue
            base = key[: -len("_share")]
            m = _OFFSET.match(base)
            offset = ctx.new.get(base)
            if m is None or offset is None:
                continue
            index = None if m.group(3) is None else int(m.group(3))
            stream = m.group(1)
            if m.group(2) == "rank":  # one rank's own labels: judged as a stream of its own
                stream, index = f"{stream}:rank{index}", None
            groups.setdefault(stream, {})[index] = (offset, ctx.new[key])
        if not groups:
            return HOLD
        ranked = {name.split(":")[0] for name in groups if ":rank" in name}
        out: dict[str, Finding | None] = {}
        for stream, found in groups.items():
            if stream in ranked:
                continue  # with ranks apart the pooled mix says less: judge each rank
            out[stream] = self._stream(ctx, stream, found)
        return out

    def _stream(self, ctx: Context, stream: str,
                found: dict[int | None, tuple[float, float]]) -> Finding | None:
        grouped = None not in found
        for index, (offset, share) in sorted(found.items(), key=lambda kv: kv[0] or 0):
            name = stream.replace(":rank", " on rank ") if index is None else \
                f"{stream} position {index}"
            tag = f"{stream}/{index}"
            if share >= self.aligned:
                self._was_aligned.add(tag)
            if share < self.dominant:
                if tag in self._was_aligned:
                    return Finding(
                        f"{name}: only {pct(share)} of the supervised labels in the window "
                        f"ending at step {ctx.step} equal an input token at any offset, after "
                        f"earlier windows matched at over {pct(self.aligned)}: labels no "
                        "longer belong to their inputs (shuffled or paired with other rows)",
                        subject=stream,
                        action="Check the data pipeline since the last good window: "
                               "examples must be shuffled whole, never labels apart from "
                               "their input_ids (a shuffle or sort applied to one column, "
                               "a mis-zipped pair of datasets).")
                continue
            if not grouped and offset != 1:
                what = ("equal the input token at the same position: the labels were not "
                        "shifted, so the model learns to copy its input" if offset == 0 else
                        f"equal the input token {int(offset)} places later: the labels were "
                        "shifted more than once")
                return Finding(f"{name}: {pct(share)} of the supervised labels in the window "
                               f"ending at step {ctx.step} {what}", subject=stream)
            if grouped and offset == 0:
                return Finding(f"{name}: {pct(share)} of its supervised targets in the window "
                               f"ending at step {ctx.step} are the input token it reads "
                               "(offset 0): its targets were not shifted", subject=stream)
        if grouped:
            by_offset: dict[float, list[int]] = {}
            for index, (offset, share) in found.items():
                if share >= self.dominant:
                    by_offset.setdefault(offset, []).append(int(index))
            same = next((sorted(v) for v in by_offset.values() if len(v) > 1), None)
            if same:
                offset = next(k for k, v in by_offset.items() if sorted(v) == same)
                return Finding(
                    f"{stream}: positions {', '.join(map(str, same))} all target the input "
                    f"token {int(offset)} places later (window ending at step {ctx.step}): "
                    "the targets were not advanced by one per position", subject=stream)
        return None


class PromptSupervised(Rule):
    """Prompt tokens are supervised: the chat template's prompt markers carry labels.

    From `<s>/prompt_marker_rows`: the share of supervised rows in which a special token
    that the tokenizer's chat template puts before the answer and never inside it
    (`<|im_start|>`, a `<sep>`) has a label. A collator that masks the prompt masks
    these in every row; in a quarter of the rows or more (>= 0.25) it is systematic.
    Warning, fires at once, clears after 3 windows without it.
    """

    id = "prompt_supervised"
    keys = ("*/prompt_marker_rows",)
    history = 4
    fire_share = 0.25
    action = ("Mask the prompt: set the labels of every token before the answer to -100 "
              "(the system and user turns and the template's markers), e.g. with TRL's "
              "completion-only loss or by building labels from the answer's token span; "
              "training on prompts teaches the model to write questions.")

    def check(self, ctx: Context) -> CheckResult:
        out: dict[str, Finding | None] = {}
        for stream, key in _stream_keys(ctx, "prompt_marker_rows"):
            share = ctx.new[key]
            out[stream] = Finding(
                f"{stream}: in {pct(share)} of the supervised rows of the window ending at "
                f"step {ctx.step} a prompt marker of the chat template has a label: the "
                "prompt is supervised", subject=stream) if share >= self.fire_share else None
        return out or HOLD


class PaddingSupervised(Rule):
    """Padding carries labels: the model is trained to predict pad tokens.

    From `<s>/pad_labels`: the share of supervised labels that name a padding token
    (attention mask 0) or the pad id (when the pad id is not also an end token).
    A collator that labels padding does so in every padded row, far above 1% of the
    labels; one stray row stays below. Warning above 1%, at once; clears after 3
    windows without it.
    """

    id = "padding_supervised"
    keys = ("*/pad_labels",)
    history = 4
    fire_share = 0.01
    action = ("Set the labels of padding to -100 (not the pad id): build labels after "
              "padding with labels[attention_mask == 0] = -100, or use a collator that pads "
              "labels with -100 (DataCollatorForSeq2Seq, label_pad_token_id=-100).")

    def check(self, ctx: Context) -> CheckResult:
        out: dict[str, Finding | None] = {}
        for stream, key in _stream_keys(ctx, "pad_labels"):
            share = ctx.new[key]
            out[stream] = Finding(
                f"{stream}: {pct(share)} of the supervised labels in the window ending at "
                f"step {ctx.step} are padding", subject=stream) if share > self.fire_share \
                else None
        return out or HOLD


class AnswerEnd(Rule):
    """Answers that never end: their end token is not supervised, or they are cut off.

    From `<s>/rows_without_end` and `<s>/rows_cut` over the chat-formatted rows (inputs
    holding a prompt marker of the tokenizer's chat template): the share of supervised
    rows with no supervised end token (the specials the template puts inside an answer,
    such as `<eos>` or `<|im_end|>`), and the share whose last real token is supervised
    and not an end token (cut by truncation). Trainers cut a long tail of rows at
    max_length; when half the rows or more (>= 0.5) lack their end, in 2 consecutive
    windows, the model rarely or never learns to stop. Warning. The cause named is
    truncation when cut rows are at least half of the rows without an end, else the
    end token masked (typically pad_token = eos_token with every pad id masked).
    Clears after 3 windows without it.
    """

    id = "answer_end"
    keys = ("*/rows_without_end", "*/rows_cut")
    triggers = ("*/rows_without_end",)
    history = 4
    fire_after = 2
    fire_share = 0.5
    action = ""

    def check(self, ctx: Context) -> CheckResult:
        out: dict[str, Finding | None] = {}
        for stream, key in _stream_keys(ctx, "rows_without_end"):
            share = ctx.new[key]
            if share < self.fire_share:
                out[stream] = None
                continue
            cut = ctx.new.get(f"{stream}/rows_cut", 0.0)
            where = f"in the window ending at step {ctx.step}"
            if cut >= 0.5 * share:
                out[stream] = Finding(
                    f"{stream}: {pct(share)} of the supervised rows {where} have no supervised "
                    f"end token, and {pct(cut)} end mid-answer at the last position: "
                    "truncation cuts the answers off", subject=stream,
                    action="Raise max_length (max_seq_length) so answers fit, or drop or "
                           "split rows longer than it; check the length of prompt + answer "
                           "in tokens, chat template included.")
            else:
                out[stream] = Finding(
                    f"{stream}: {pct(share)} of the supervised rows {where} have no supervised "
                    "end token although they end inside the sequence: the end token is "
                    "masked, so the model never learns to stop", subject=stream,
                    action="Keep the end token (eos / end of turn) labelled: with "
                           "pad_token = eos_token, masking every pad id in the labels masks "
                           "eos too; mask by attention_mask instead, or give the tokenizer a "
                           "separate pad token.")
        return out or HOLD


class VocabMismatch(Rule):
    """Token ids the run's tokenizer cannot produce: the data came from another tokenizer.

    From `<s>/labels_beyond_vocab` and `<s>/inputs_beyond_vocab`: label and input ids at
    or beyond len(tokenizer) (the tokenizer given to `ts.init`). A tokenizer never emits
    such ids, so any (> 0) is the data tokenized with a different, larger vocabulary,
    or ids offset by a preprocessing bug. Critical, at once; clears after 3 windows.
    """

    id = "vocab_mismatch"
    level = "critical"
    keys = ("*/labels_beyond_vocab", "*/inputs_beyond_vocab")
    history = 4
    action = ("Tokenize the data with the tokenizer the model was trained with (the one "
              "given to ts.init), and resize the embeddings only after adding tokens to that "
              "same tokenizer; re-run the preprocessing if the cache holds ids from another "
              "tokenizer.")

    def check(self, ctx: Context) -> CheckResult:
        streams = {k.split("/")[0] for k in ctx.new
                   if k.endswith(("/labels_beyond_vocab", "/inputs_beyond_vocab"))}
        out: dict[str, Finding | None] = {}
        for stream in sorted(streams):
            labels = ctx.new.get(f"{stream}/labels_beyond_vocab", 0.0)
            inputs = ctx.new.get(f"{stream}/inputs_beyond_vocab", 0.0)
            out[stream] = Finding(
                f"{stream}: {num(labels)} labels and {num(inputs)} input ids in the window "
                f"ending at step {ctx.step} are beyond the tokenizer's vocabulary: the data "
                "was tokenized with another tokenizer", subject=stream) if labels > 0 or \
                inputs > 0 else None
        return out or HOLD


class RepeatedBatches(Rule):
    """The loader yields the same batches again and again.

    From `<s>/repeated_batches`: the share of a window's `observe` calls whose inputs
    are identical to one of the previous 8 calls of the stream. A shuffled loader over
    more rows than a few windows hold repeats a whole batch with negligible
    probability; half the calls or more (>= 0.5) is a loop re-reading one batch
    (`next(iter(loader))` inside the loop) or a loader cycling a handful of batches.
    Warning, at once; clears after 3 windows without it.
    """

    id = "repeated_batches"
    keys = ("*/repeated_batches",)
    history = 4
    fire_share = 0.5
    action = ("The loop sees the same batches over and over: create the iterator once "
              "outside the loop (not next(iter(loader)) per step), check that the sampler "
              "shuffles and that the dataset holds more than a few batches.")

    def check(self, ctx: Context) -> CheckResult:
        out: dict[str, Finding | None] = {}
        for stream, key in _stream_keys(ctx, "repeated_batches"):
            share = ctx.new[key]
            out[stream] = Finding(
                f"{stream}: {pct(share)} of the batches in the window ending at step "
                f"{ctx.step} repeat one of the previous 8 exactly", subject=stream) \
                if share >= self.fire_share else None
        return out or HOLD
