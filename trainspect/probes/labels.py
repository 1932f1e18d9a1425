"""What the labels are made of: aligned with the inputs, masked where the template says,
ending where answers end, inside the tokenizer's vocabulary, from batches that differ.

`Run.observe` hands every batch's labels (and, when given, `input_ids` and
`attention_mask`) here after the token statistics. The first CHECKED_PER_WINDOW calls
of each stream in each flush window are checked, the rest pass untouched: a data bug
lasts for many batches, and the checks are some thirty small kernels a call, which on
every call made them most of observe's fixed cost. All checks are exact counts over
integer tensors with no host sync; per flush window they become, for each stream (and
each group of a grouped stream):

- `<s>/label_offset`, `<s>/label_offset_share`: the offset k in 0..G+2 for which the
  most supervised labels equal the input token k places later (`labels[t] ==
  input_ids[t + k]`), and that share. A causal LM trained on its own text has offset
  1 with share 1.0: offset 0 means the labels were not shifted, 2 shifted twice; a
  share falling from 1.0 means labels no longer belong to their inputs. Needs
  `input_ids` as long as the labels' token axis or one longer (the full sequence
  beside `logits[:, :-1]`); position t of the logits reads `input_ids[t]`.
- `<s>/supervised_share`: supervised labels over real label tokens (attention mask).
- `<s>/prompt_marker_rows`: share of supervised rows with a supervised prompt marker:
  a special token that the tokenizer's chat template puts before the answer and not
  in it (`<|im_start|>`, a `<sep>`), found by rendering the template once.
- `<s>/pad_labels`: share of supervised labels on padding (attention mask 0, or the
  pad id when it is not also an end token).
- `<s>/rows_without_end`, `<s>/rows_cut`: among supervised rows of chat-formatted
  batches (rows whose inputs hold a prompt marker), the share with no supervised end
  token (the specials the template puts inside an answer: `<eos>`, `<|im_end|>`), and
  the share whose last real token is supervised and not an end token (cut off by
  truncation). Only for 2-D labels with `input_ids` and `attention_mask`.
- `<s>/labels_beyond_vocab`, `<s>/inputs_beyond_vocab`: label and input ids at or
  beyond the tokenizer's size (the run's `tokenizer`): ids it cannot produce.
- `<s>/repeated_batches`: share of checked supervised calls whose labels (and inputs,
  when given) are identical to one of the stream's previous 8 checked calls, by a
  64-bit fingerprint kept on the device (two checked calls a window: a batch fed twice
  in a row is caught as well as one fed every step).
- `<s>/rank<i>/label_offset`, `<s>/rank<i>/label_offset_share`: with several ranks,
  the offset and share of each rank's own labels (ungrouped streams): every rank adds
  its counts into its own row of a [world, K] table that the flush's all_reduce turns
  into a gather, so one rank whose shard was built differently stands out.

The alert rules in `trainspect.alerts.rules.data` read these.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trainspect.records import Scalar

log = logging.getLogger("trainspect.probes.labels")

RING = 8  # previous checked calls a batch is compared with
CHECKED_PER_WINDOW = 2  # calls checked per stream and flush window (see the docstring)
EXTRA_OFFSETS = 3  # offsets 0 .. G + 2 are counted (G groups; 1 for an ungrouped stream)
# Per-stream counters after the (G, K) offset matches and (G, K) offset denominators.
COUNTS = ("calls", "repeats", "supervised", "real", "marker_rows", "pad_labels", "rows",
          "chat_rows", "rows_no_end", "rows_cut", "beyond", "inputs_beyond")
C = {name: i for i, name in enumerate(COUNTS)}
_MUL = 6364136223846793005  # Knuth's MMIX multiplier: position weights of the fingerprint
_INC = 1442695040888963407


@dataclass
class Template:
    """What the tokenizer says about its ids (empty sets without a chat template)."""

    vocab: int | None = None  # len(tokenizer)
    markers: tuple[int, ...] = ()  # specials before the answer and not in it
    ends: tuple[int, ...] = ()  # specials inside an answer (end of turn / eos)
    pad: int | None = None  # the pad id when it is not an end token


def template_of(tokenizer: Any) -> Template:
    """Read the vocabulary size, prompt markers, end tokens and pad id of `tokenizer`."""
    if tokenizer is None:
        return Template()
    try:
        vocab = len(tokenizer)
    except TypeError:
        vocab = getattr(tokenizer, "vocab_size", None)
    specials = set(getattr(tokenizer, "all_special_ids", None) or ())
    for i, token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(token, "special", False):
            specials.add(int(i))
    markers: tuple[int, ...] = ()
    ends: tuple[int, ...] = ()
    if getattr(tokenizer, "chat_template", None):
        try:
            user = [{"role": "user", "content": "x"}]
            prompt = tokenizer.apply_chat_template(user, tokenize=False,
                                                   add_generation_prompt=True)
            full = tokenizer.apply_chat_template(
                [*user, {"role": "assistant", "content": "y"}], tokenize=False)
            answer = full[len(prompt):] if full.startswith(prompt) else ""
            prompt_ids = set(tokenizer.encode(prompt, add_special_tokens=False)) & specials
            answer_ids = set(tokenizer.encode(answer, add_special_tokens=False)) & specials
            markers = tuple(sorted(prompt_ids - answer_ids))
            ends = tuple(sorted(answer_ids))
        except Exception as err:  # a template that cannot render: no template checks
            log.info("trainspect: the tokenizer's chat template could not be rendered (%s); "
                     "the prompt and answer-end checks are off", err)
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is not None and pad in ends:
        pad = None
    return Template(vocab=int(vocab) if isinstance(vocab, int) else None, markers=markers,
                    ends=ends, pad=pad)


@dataclass
class LabelStream:
    """Device state of one stream."""

    group: str | None
    n_groups: int
    offsets: Any  # (2, G, K) float64: matches, denominators
    counts: Any  # (len(COUNTS),) float64
    ring: Any  # (RING,) int64 fingerprints of the previous calls
    rank_offsets: Any = None  # (2, world, K) float64 with several ranks: this rank's row
    calls: int = 0
    window_calls: int = 0  # calls checked since the last flush (host-side count)
    device: Any = None
    constants: dict[str, Any] = field(default_factory=dict)


class LabelProbe:
    """The probe behind the label checks of `Run.observe`."""

    name = "labels"

    def __init__(self, tokenizer: Any = None) -> None:
        from trainspect.distributed import rank_and_world

        self.template = template_of(tokenizer)
        self.streams: dict[str, LabelStream] = {}
        self.rank, self.world = rank_and_world()

    def layout(self) -> tuple:
        return tuple((name, s.group, s.n_groups) for name, s in self.streams.items())

    # ---- the training step (device work only) ---------------------------------------

    def update(self, stream: str, group: str | None, n_groups: int, labels: Any, mask: Any,
               input_ids: Any, attention_mask: Any, ignore_index: int,
               count: bool = True) -> None:
        """Count one batch. `labels` [..., T] or [..., T, G] with `group`. With `count`
        False (another rank of a tensor-parallel group holds the same batch and counts it)
        only the stream's state is made, so every rank pools the same layout."""
        import torch

        s = self._state(stream, group, n_groups, labels.device)
        if not count or s.window_calls >= CHECKED_PER_WINDOW:
            return
        s.window_calls += 1
        lab = labels.to(torch.int64)
        sup = lab != ignore_index
        if mask is not None:
            sup &= mask.to(torch.bool)
        grouped = group is not None
        tokens = lab if not grouped else lab[..., 0]  # (..., T): the token axis
        ids = _aligned(input_ids, tokens)
        s.calls += 1
        one = torch.ones((), dtype=torch.float64, device=lab.device)
        # a batch without supervision repeats trivially (all -100): only supervised ones count
        counts = [one, self._repeated(s, lab, ids) * sup.any()]
        counts.append(sup.sum().to(torch.float64))
        counts += self._template_counts(s, lab, sup, ids, attention_mask, grouped)
        counts += self._vocab_counts(lab, sup, ids)
        s.counts += torch.stack(counts)
        if ids is not None:
            self._offsets(s, lab, sup, ids, grouped, self.rank)

    def _state(self, stream: str, group: str | None, n_groups: int, device: Any
               ) -> LabelStream:
        import torch

        s = self.streams.get(stream)
        if s is None:
            k = n_groups + EXTRA_OFFSETS
            s = self.streams[stream] = LabelStream(
                group=group, n_groups=n_groups,
                offsets=torch.zeros(2, n_groups, k, dtype=torch.float64, device=device),
                counts=torch.zeros(len(COUNTS), dtype=torch.float64, device=device),
                ring=torch.full((RING,), -1, dtype=torch.int64, device=device), device=device)
            if self.world > 1 and group is None:
                s.rank_offsets = torch.zeros(2, self.world, k, dtype=torch.float64,
                                             device=device)
            t = self.template
            for name, values in (("markers", t.markers), ("ends", t.ends)):
                s.constants[name] = torch.tensor(values, dtype=torch.int64, device=device)
        return s

    @staticmethod
    def _repeated(s: LabelStream, labels: Any, ids: Any) -> Any:
        """1.0 when this batch's fingerprint (its labels, and its inputs when given) is in
        the ring, then put it there."""
        import torch

        fp = _fingerprint(labels)
        if ids is not None:
            fp = fp * 31 + _fingerprint(ids)
        hit = (s.ring == fp).any().to(torch.float64)
        s.ring[(s.calls - 1) % RING] = fp
        return hit

    def _template_counts(self, s: LabelStream, lab: Any, sup: Any, ids: Any, attention: Any,
                         grouped: bool) -> list[Any]:
        """supervised real, marker rows, pad labels, rows, chat rows, rows without an end,
        rows cut: zero where the inputs to count them are missing."""
        import torch

        zero = torch.zeros((), dtype=torch.float64, device=lab.device)
        real = _label_tokens_real(attention, lab if not grouped else lab[..., 0])
        if grouped or lab.dim() != 2:
            real_count = zero if real is None else real.sum().to(torch.float64)
            return [real_count, zero, zero, zero, zero, zero, zero]
        markers, ends = s.constants["markers"], s.constants["ends"]
        pad = self.template.pad
        rows_sup = sup.any(dim=1)  # (B,)
        on_pad = torch.zeros_like(sup) if real is None else ~real
        if pad is not None:
            on_pad |= lab == pad
        if ends.numel():
            on_pad &= ~_isin(lab, ends)
        out = [zero if real is None else real.sum().to(torch.float64)]
        out.append((_isin(lab, markers) & sup).any(dim=1).sum().to(torch.float64)
                   if markers.numel() else zero)
        out.append((on_pad & sup).sum().to(torch.float64))
        out.append(rows_sup.sum().to(torch.float64))
        if ids is None or not markers.numel() or not ends.numel():
            return [*out, zero, zero, zero]
        chat = _isin(ids, markers).any(dim=1) & rows_sup  # (B,) chat-formatted, supervised
        end_sup = (_isin(lab, ends) & sup).any(dim=1)
        out += [chat.sum().to(torch.float64), (chat & ~end_sup).sum().to(torch.float64)]
        if real is None:
            return [*out, zero]
        positions = torch.arange(1, lab.shape[1] + 1, device=lab.device)
        last = (real.to(torch.int64) * positions).argmax(dim=1, keepdim=True)  # (B, 1)
        last_sup = sup.gather(1, last).squeeze(1)
        last_end = _isin(lab.gather(1, last), ends).squeeze(1)
        out.append((chat & last_sup & ~last_end).sum().to(torch.float64))
        return out

    def _vocab_counts(self, lab: Any, sup: Any, ids: Any) -> list[Any]:
        import torch

        zero = torch.zeros((), dtype=torch.float64, device=lab.device)
        vocab = self.template.vocab
        if vocab is None:
            return [zero, zero]
        beyond = ((lab >= vocab) & sup).sum().to(torch.float64)
        inputs = zero if ids is None else (ids >= vocab).sum().to(torch.float64)
        return [beyond, inputs]

    @staticmethod
    def _offsets(s: LabelStream, lab: Any, sup: Any, ids: Any, grouped: bool, rank: int
                 ) -> None:
        """Matches of labels[t] with ids[t + k], k = 0..K-1, per group."""
        import torch

        n_tokens = lab.shape[-2] if grouped else lab.shape[-1]
        n_ids = ids.shape[-1]
        lab3 = lab if grouped else lab.unsqueeze(-1)  # (..., T, G)
        sup3 = sup if grouped else sup.unsqueeze(-1)
        matches, totals = [], []
        for k in range(s.offsets.shape[-1]):
            n = min(n_tokens, n_ids - k)
            if n <= 0:
                zeros = torch.zeros(s.n_groups, dtype=torch.float64, device=lab.device)
                matches.append(zeros)
                totals.append(zeros)
                continue
            here = sup3[..., :n, :]
            hit = (lab3[..., :n, :] == ids[..., k:k + n, None]) & here
            dims = tuple(range(hit.dim() - 1))
            matches.append(hit.sum(dim=dims).to(torch.float64))
            totals.append(here.sum(dim=dims).to(torch.float64))
        table = torch.stack([torch.stack(matches, 1), torch.stack(totals, 1)])  # (2, G, K)
        s.offsets += table
        if s.rank_offsets is not None:
            s.rank_offsets[:, rank] += table[:, 0]

    # ---- the flush -------------------------------------------------------------------

    def state(self) -> list[Any]:
        return [t for s in self.streams.values()
                for t in (s.offsets, s.counts, *_present(s.rank_offsets))]

    def reset(self) -> None:
        for s in self.streams.values():
            s.window_calls = 0
            s.offsets.zero_()
            s.counts.zero_()
            if s.rank_offsets is not None:
                s.rank_offsets.zero_()

    def compute(self, arrays: list[np.ndarray], step: int, wall_time: float) -> list[Any]:
        records: list[Any] = []
        i = 0
        for name, s in list(self.streams.items()):
            width = 3 if s.rank_offsets is not None else 2
            if i + width > len(arrays):
                break  # a stream that appeared after this flush's state was taken
            offsets = arrays[i].reshape(2, s.n_groups, -1)
            counts = dict(zip(COUNTS, arrays[i + 1].tolist()))
            ranks = arrays[i + 2].reshape(2, self.world, -1) if width == 3 else None
            i += width
            if counts["calls"] <= 0:
                continue
            values = stream_values(s, offsets, counts, self.template)
            if ranks is not None:
                values.update(rank_values(ranks))
            records += [Scalar(f"{name}/{k}", step, float(v), wall_time)
                        for k, v in values.items()]
        return records


def stream_values(s: LabelStream, offsets: np.ndarray, counts: dict[str, float],
                  template: Template) -> dict[str, float]:
    """The window's metrics of one stream from its pooled counts (see the module doc)."""
    out: dict[str, float] = {"repeated_batches": counts["repeats"] / counts["calls"]}
    matches, totals = offsets
    for g in range(s.n_groups):
        shares = np.divide(matches[g], totals[g], out=np.zeros_like(matches[g]),
                           where=totals[g] > 0)
        if totals[g].max() <= 0:
            continue
        best = int(np.argmax(shares))
        prefix = f"{s.group}{g}/" if s.group else ""
        out[f"{prefix}label_offset"] = float(best)
        out[f"{prefix}label_offset_share"] = float(shares[best])
    supervised = counts["supervised"]
    if counts["real"] > 0:
        out["supervised_share"] = supervised / counts["real"]
    if supervised > 0:
        out["pad_labels"] = counts["pad_labels"] / supervised
    if counts["rows"] > 0 and template.markers:
        out["prompt_marker_rows"] = counts["marker_rows"] / counts["rows"]
    if counts["chat_rows"] > 0:
        out["rows_without_end"] = counts["rows_no_end"] / counts["chat_rows"]
        out["rows_cut"] = counts["rows_cut"] / counts["chat_rows"]
    if template.vocab is not None:
        out["labels_beyond_vocab"] = counts["beyond"]
        out["inputs_beyond_vocab"] = counts["inputs_beyond"]
    return out


def rank_values(ranks: np.ndarray) -> dict[str, float]:
    """`rank<i>/label_offset` and `rank<i>/label_offset_share` from the (2, world, K)
    table of per-rank matches and denominators."""
    out: dict[str, float] = {}
    matches, totals = ranks
    for r in range(matches.shape[0]):
        if totals[r].max() <= 0:
            continue
        shares = np.divide(matches[r], totals[r], out=np.zeros_like(matches[r]),
                           where=totals[r] > 0)
        best = int(np.argmax(shares))
        out[f"rank{r}/label_offset"] = float(best)
        out[f"rank{r}/label_offset_share"] = float(shares[best])
    return out


def _fingerprint(values: Any) -> Any:
    """A 64-bit hash of an integer tensor's values and positions (int64 wraps around)."""
    import torch

    flat = values.reshape(-1)
    position = torch.arange(flat.numel(), device=flat.device, dtype=torch.int64)
    return (flat * (position * _MUL + _INC)).sum() + flat.numel()


def _present(tensor: Any) -> tuple[Any, ...]:
    return () if tensor is None else (tensor,)


def _aligned(input_ids: Any, tokens: Any) -> Any:
    """`input_ids` as int64 when its layout matches the labels' token axis (same leading
    axes, as long or one longer), else None."""
    import torch

    if not isinstance(input_ids, torch.Tensor) or input_ids.is_floating_point():
        return None
    if input_ids.dim() != tokens.dim() or input_ids.shape[:-1] != tokens.shape[:-1]:
        return None
    if input_ids.shape[-1] not in (tokens.shape[-1], tokens.shape[-1] + 1):
        return None
    if input_ids.device != tokens.device:
        return None
    return input_ids.to(torch.int64)


def _label_tokens_real(attention: Any, tokens: Any) -> Any:
    """Whether the token each label names is a real token: `attention_mask` moved one
    place (the label at t is the token at t + 1), or None without a usable mask."""
    import torch

    if not isinstance(attention, torch.Tensor) or attention.dim() != tokens.dim():
        return None
    if attention.shape[:-1] != tokens.shape[:-1] or attention.device != tokens.device:
        return None
    n = tokens.shape[-1]
    a = attention.to(torch.bool)
    if a.shape[-1] == n + 1:
        return a[..., 1:]
    if a.shape[-1] == n:
        return torch.cat([a[..., 1:], a[..., -1:]], dim=-1)
    return None


def _isin(values: Any, ids: Any) -> Any:
    """values in ids, elementwise, for a handful of ids (broadcast compare, no sort)."""
    return (values.unsqueeze(-1) == ids).any(dim=-1)


def observe_labels(run: Any, stream: str, group: str | None, logits_shape: tuple,
                   labels: Any, mask: Any, input_ids: Any, attention_mask: Any,
                   ignore_index: int, count: bool = True) -> None:
    """The hook `Run.observe` calls: count this batch; a failure switches the probe off."""
    if "labels" in run._disabled:
        return
    try:
        probe = run.probe("labels")
        if probe is None:
            probe = run.add_probe(LabelProbe(getattr(run, "tokenizer", None)))
        n_groups = int(logits_shape[-2]) if group else 1
        probe.update(stream, group, n_groups, labels, mask, input_ids, attention_mask,
                     ignore_index, count)
    except Exception as err:
        run.probe_failed("labels", "observe", err)
