"""Throughput: tokens per second, padding, step time, data-wait share, MFU, peak memory.

What each number counts, per flush window:

- `speed/tokens_per_s`: real tokens (attention_mask == 1; all positions when no mask is
  known) over the window's wall time, summed over ranks: the job's throughput. The ranks
  of a tensor-parallel group see the same batch: only the group's first rank adds its
  counts to the sum (`counts`), the others add zeros, so each token counts once.
- `speed/supervised_tokens_per_s`: tokens whose label is not -100, likewise.
- `speed/padding_frac`: 1 − real tokens / positions (B·T of each batch).
- `speed/step_s`: window wall time / steps the run's step counter advanced. The host
  runs ahead of the GPU by a bounded queue, so over a window this is the GPU's pace.
- `speed/data_frac`: share of the window the GPU spent between the end of one backward
  pass and the start of the next forward: the optimizer step plus the time it waited
  for the host (data loading, host-side work such as `loss.item()`). Measured with CUDA
  events read on the writer thread (on CPU, with the host clock), on this rank. A loop
  that knows its data wait passes `data_s=` to `run.speed`, which then wins.
- `speed/mfu`: model FLOPs per second over the device's dense bf16 peak (times ranks),
  with a count that knows LoRA. Per real token:

      2·N_fwd              forward through every matmul weight
    + 2·N_act              activation gradients (frozen weights too: the gradient has to
                           flow through them), for modules from the lowest one holding a
                           trainable parameter upwards
    + 2·N_trainable        weight gradients, trainable weights only
    + 12·L·d·T             attention scores and values (4·L·d·T forward, twice that
                           backward; T the padded length, no causal halving, as in PaLM)

  A full fine-tune gives the usual 6·N + 12·L·d·T. N counts the weights that multiply
  activations: every parameter except embedding tables (a tied LM head counts); a
  DTensor (tensor parallel, FSDP2) at its whole size, so under tensor parallelism the
  model's FLOPs over the tokens counted once, over every rank's time and peak.
- `mem/peak_gb`: `torch.cuda.max_memory_allocated` in gigabytes (1e9 bytes) since the
  process began (not reset: user code may read it too), the maximum over ranks.

Token counts are device sums accumulated without a host sync; host values (clock,
positions, memory) are written into the device state with `fill_` at the flush.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from trainspect.distributed import all_reduce_max
from trainspect.errors import TrainspectError
from trainspect.probes.base import Probe
from trainspect.records import Scalar

log = logging.getLogger("trainspect.probes.speed")

IGNORE_INDEX = -100
MAX_GAPS = 256  # timed backward-to-forward gaps kept per window (events are small)
_UNTIMED = object()  # a gap past MAX_GAPS: counted, not timed

# Dense bf16 tensor-core peak, FLOP/s, by device name (longest match wins).
PEAK_BF16_FLOPS = {
    "H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "H200": 989e12,
    "H800": 989e12, "GH200": 989e12, "B200": 2250e12, "A100": 312e12, "A800": 312e12,
    "L40S": 362e12, "L4": 121e12, "A10": 125e12,
}


def peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak from PEAK_BF16_FLOPS, or None if not known."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_BF16_FLOPS[key]
    return None


class SpeedProbe(Probe):
    """Token counts on the device, clock and memory on the host, pooled per window."""

    name = "speed"
    cadence = "every forward (auto) or every run.speed call"
    cost = "5 tiny kernels per batch; 2 CUDA events per backward-forward gap"

    def __init__(self, device: torch.device, *, step_of: Any, start_step: int | None = None,
                 flops_per_token: float | None = None, attention_flops: float | None = None,
                 peak: float | None = None) -> None:
        self.device = device
        self._step_of = step_of
        self.flops_per_token = flops_per_token  # the static part: 2·N_fwd + 2·N_act + 2·N_tr
        self.attention_flops = attention_flops  # 12·L·d, times T per token
        self.peak = peak if peak is not None else peak_flops(device)
        self.explicit = False  # run.speed was called: the watch stops counting on its own
        self.explicit_data = False  # run.speed was given data_s: it wins over timed gaps
        self.counts = True  # this rank's tokens go into the pooled sums (False: a TP peer's)
        kw = {"dtype": torch.float64, "device": device}
        self.acc = torch.zeros(3, **kw)  # real tokens, supervised tokens, Σ real·T
        self._real_acc, self._supervised_acc, self._real_t_acc = self.acc.unbind()  # views
        self.host = torch.zeros(10, **kw)
        # what a rank that does not count pools: no tokens or positions, its clock and steps
        self._peer_weights = torch.tensor([0.0] * 3 + [1.0] * 7, **kw)
        self.peak_bytes = torch.zeros(1, **kw)
        self._clear_host()
        self._window_start = time.perf_counter()
        self._last_step = step_of() if start_step is None else start_step
        self._timing = device.type == "cuda"
        self._gap_start: Any = None  # event (CUDA) or perf_counter (CPU) at backward end
        self._gaps: list[tuple[Any, Any]] = []
        self._stash: OrderedDict[int, tuple[list, float, int]] = OrderedDict()

    def _clear_host(self) -> None:
        self._real = 0.0  # host-known real tokens (no mask) and their Σ real·T
        self._real_t = 0.0
        self._positions = 0.0
        self._label_batches = 0
        self._batches = 0
        self._data_s = 0.0  # explicit data_s, or host-clock gaps on CPU
        self._data_known = False
        self._gap_count = 0

    # ---- per batch ---------------------------------------------------------------------

    @torch.no_grad()
    def count(self, attention_mask: Any = None, input_ids: Any = None, labels: Any = None,
              tokens: int | None = None, shift_labels: bool = False) -> None:
        """Add one batch. `shift_labels`: labels are the model's unshifted ones (HF)."""
        if attention_mask is not None:
            if not isinstance(attention_mask, torch.Tensor):
                _check_tensor(attention_mask, "attention_mask")
            length = attention_mask.shape[-1] if attention_mask.dim() else 1
            real = attention_mask.sum().to(self.device)
            self._real_acc.add_(real)  # views made once: no indexing per batch
            self._real_t_acc.add_(real, alpha=length)
            self._positions += attention_mask.numel()
        elif input_ids is not None:
            if not isinstance(input_ids, torch.Tensor):
                _check_tensor(input_ids, "input_ids")
            length = input_ids.shape[-1] if input_ids.dim() else 1
            self._real += input_ids.numel()
            self._real_t += input_ids.numel() * length
            self._positions += input_ids.numel()
        elif tokens is not None:
            if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
                raise TrainspectError(f"expected `tokens` to be a non-negative int, "
                                      f"got {tokens!r}")
            self._real += tokens
            self._positions += tokens
        else:
            raise TrainspectError("expected `attention_mask`, `input_ids` or `tokens`")
        self._batches += 1
        if labels is not None:
            if not isinstance(labels, torch.Tensor):
                _check_tensor(labels, "labels")
            if shift_labels and labels.dim():
                labels = labels[..., 1:]
            self._supervised_acc.add_((labels != IGNORE_INDEX).sum().to(self.device))
            self._label_batches += 1

    def discard_counts(self) -> None:
        """Forget this window's token counts (queued on the device, no sync)."""
        self.acc.zero_()
        self._real = self._real_t = self._positions = 0.0
        self._label_batches = self._batches = 0

    def add_data_s(self, seconds: float) -> None:
        self._data_s = (self._data_s if self._data_known else 0.0) + seconds
        self._data_known = True
        self.explicit_data = True

    # ---- gaps between backward and forward (from watch) ---------------------------------

    def backward_end(self) -> None:
        if not self._timing:
            self._gap_start = time.perf_counter()
        elif len(self._gaps) < MAX_GAPS:
            event = torch.cuda.Event(enable_timing=True)
            event.record()  # on the current stream: after the backward's kernels
            self._gap_start = event
        else:
            self._gap_start = _UNTIMED

    def forward_start(self) -> None:
        start, self._gap_start = self._gap_start, None
        if start is None:
            return
        self._gap_count += 1
        if start is _UNTIMED:
            return
        if not self._timing:
            if not self.explicit_data:
                self._data_s += time.perf_counter() - start
                self._data_known = True
            return
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        self._gaps.append((start, end))

    # ---- flush -------------------------------------------------------------------------

    def state(self) -> Sequence[torch.Tensor]:
        now = time.perf_counter()
        window_s, self._window_start = now - self._window_start, now
        step = self._step_of()
        steps, self._last_step = step - self._last_step, step
        if self._gaps:
            self._stash[step] = (self._gaps, window_s, self._gap_count)
            while len(self._stash) > 8:  # compute pops its entry; never hold more than 8
                self._stash.popitem(last=False)
        self._gaps = []
        values = (self._real, self._real_t, self._positions, self._label_batches,
                  self._batches, window_s, steps, self._data_s, float(self._data_known), 1.0)
        for i, value in enumerate(values):
            self.host[i].fill_(value)  # fill_ passes the value as a kernel argument
        if self.device.type == "cuda":
            self.peak_bytes.fill_(torch.cuda.max_memory_allocated(self.device))
            all_reduce_max(self.peak_bytes)  # the flush then sums: divided by ranks later
        self._clear_host()
        if not self.counts:  # a TP peer: zeros in the pooled token sums; acc and host stay
            # this rank's own for its row of the per-rank table (distributed.py)
            return (self.acc * 0.0, self.host * self._peer_weights, self.peak_bytes)
        return (self.acc, self.host, self.peak_bytes)

    def reset(self) -> None:
        self.acc.zero_()

    def compute(self, state: list[np.ndarray], step: int, wall_time: float) -> list[Any]:
        acc, host, peak = state
        (real_h, real_t_h, positions, label_batches, batches, window_s, steps, data_s,
         data_known, ranks) = host
        ranks = max(ranks, 1.0)
        window_s, steps = window_s / ranks, steps / ranks
        real, supervised, real_t = acc[0] + real_h, acc[1], acc[2] + real_t_h
        out: dict[str, float] = {}
        if window_s > 0 and batches > 0:
            out["speed/tokens_per_s"] = real / window_s
            if positions > 0:
                out["speed/padding_frac"] = 1.0 - real / positions
            if label_batches > 0:
                out["speed/supervised_tokens_per_s"] = supervised / window_s
            if self.flops_per_token and self.peak:
                flops = self.flops_per_token * real + (self.attention_flops or 0.0) * real_t
                out["speed/mfu"] = flops / window_s / (self.peak * ranks)
        if window_s > 0 and steps > 0 and batches > 0:
            out["speed/step_s"] = window_s / steps
        gaps = self._stash.pop(step, None)
        if data_known > 0 and window_s > 0:
            out["speed/data_frac"] = data_s / ranks / window_s
        elif gaps is not None:
            out["speed/data_frac"] = _gap_share(*gaps)
        if peak[0] > 0:
            out["mem/peak_gb"] = peak[0] / ranks / 1e9
        return [Scalar(k, step, float(v), wall_time) for k, v in out.items()]


def flop_counts(model: nn.Module) -> tuple[float, float | None]:
    """(2·N_fwd + 2·N_act + 2·N_trainable, 12·L·d or None): the module doc's formula.

    Modules in `named_modules` order (the order they are built, for decoder stacks the
    order they run); L and d from the model's (or PEFT base model's) HF config.
    """
    n_fwd = n_act = n_train = 0
    seen_trainable = False
    for name, module in model.named_modules():
        params = list(module.parameters(recurse=False))
        seen_trainable = seen_trainable or any(p.requires_grad for p in params)
        if isinstance(module, nn.Embedding) or "original_module" in name.split("."):
            continue  # a lookup, not a matmul; PEFT's unused copy of a modules_to_save
        size = sum(p.numel() for p in params)
        n_fwd += size
        n_act += size if seen_trainable else 0
        n_train += sum(p.numel() for p in params if p.requires_grad)
    config = getattr(model, "config", None)
    if config is None and hasattr(model, "get_base_model"):
        config = getattr(model.get_base_model(), "config", None)
    layers = getattr(config, "num_hidden_layers", None)
    width = getattr(config, "hidden_size", None)
    attention = 12.0 * layers * width if layers and width else None
    return 2.0 * (n_fwd + n_act + n_train), attention


def check_tp_group(tp_group: Any) -> None:
    """One clear error for a `tp_group` that is not a ProcessGroup or a 1-D DeviceMesh."""
    if tp_group is None:
        return
    if hasattr(tp_group, "get_group"):  # a DeviceMesh
        if tp_group.ndim == 1:
            return
        raise TrainspectError(f"expected `tp_group` to be a 1-D DeviceMesh, got one of "
                              f"{tp_group.ndim} dimensions: pass mesh['tp']")
    dist = torch.distributed
    if not (dist.is_available() and isinstance(tp_group, dist.ProcessGroup)):
        raise TrainspectError(f"expected `tp_group` to be a ProcessGroup or a 1-D DeviceMesh, "
                              f"got {type(tp_group).__name__}")


def counts_tokens(model: nn.Module, tp_group: Any) -> bool:
    """Whether this rank's tokens go into the pooled sums: not on a tensor-parallel peer
    (`tp_group`, else the model's "tp" mesh dimension) other than the group's first rank."""
    from trainspect.probes.vocab_parallel import tp_counts

    group = tp_group if tp_group is not None else tp_group_of(model)
    return group is None or tp_counts(group)[1]


def tp_group_of(model: nn.Module) -> Any:
    """The process group of the mesh dimension named "tp" that the model's DTensor
    parameters lie on (`parallelize_module` on a mesh named so), when there is exactly
    one; else None: the ranks are not known to share their batches."""
    from trainspect.probes.vocab_parallel import is_dtensor

    groups: dict[tuple[int, ...], Any] = {}
    for p in model.parameters():
        names = getattr(getattr(p, "device_mesh", None), "mesh_dim_names", None) or ()
        if is_dtensor(p) and "tp" in names:
            group = p.device_mesh.get_group("tp")
            groups[tuple(torch.distributed.get_process_group_ranks(group))] = group
    if len(groups) > 1:
        log.info("trainspect: the model's DTensors lie on %d different 'tp' groups: tokens "
                 "are counted on every rank; pass watch(tp_group=...)", len(groups))
    return next(iter(groups.values())) if len(groups) == 1 else None


def _gap_share(gaps: list[tuple[Any, Any]], window_s: float, count: int) -> float:
    """Share of the window in timed gaps (writer thread: waiting on events is fine here)."""
    gaps[-1][1].synchronize()
    seconds = sum(start.elapsed_time(end) for start, end in gaps) / 1e3
    if count > len(gaps):  # more gaps than were timed: scale up by the untimed ones
        seconds *= count / len(gaps)
    return min(seconds / window_s, 1.0) if window_s > 0 else 0.0


def _check_tensor(value: Any, argument: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise TrainspectError(f"expected `{argument}` to be a tensor, got "
                              f"{type(value).__name__}")


def speed(run: Any, step: int | None = None, *, attention_mask: Any = None,
          labels: Any = None, input_ids: Any = None, tokens: int | None = None,
          data_s: float | None = None, lr: float | None = None) -> None:
    """Count one batch for the throughput metrics (the code behind `Run.speed`).

    Give `attention_mask` (real tokens and padding), else `input_ids` or `tokens`; and
    `labels` as the loss sees them (-100 ignored) for supervised tokens/s. `data_s` is the
    time this batch took to load, if the loop measures it. `lr` is recorded as `lr`, at
    full float64 precision. Call once per micro-batch. Once called, `run.watch` stops
    counting tokens from the model's inputs itself, so nothing is counted twice.
    Never raises: bad input is reported once and dropped, like `Run.log`.
    """
    try:
        step = run._advance(step)
        probe = run.probe("speed")
        if probe is None:
            device = next((t.device for t in (attention_mask, labels, input_ids)
                           if isinstance(t, torch.Tensor)), torch.device("cpu"))
            # created at this step's call: the window's first step is this one
            probe = run.add_probe(SpeedProbe(device, step_of=lambda: run.step,
                                             start_step=step - 1))
        if not probe.explicit:  # the watch counted this window's batches already: drop those
            probe.discard_counts()
            probe.explicit = True
        if attention_mask is not None or input_ids is not None or tokens is not None:
            probe.count(attention_mask, input_ids, labels, tokens)
        if data_s is not None:
            if isinstance(data_s, bool) or not isinstance(data_s, (int, float)) or data_s < 0:
                raise TrainspectError(f"expected `data_s` to be seconds >= 0, got {data_s!r}")
            probe.add_data_s(float(data_s))
        if lr is not None:
            run.log({"lr": lr}, step=step)
    except TrainspectError as err:
        run._reject("speed", None, str(err))
    except Exception as err:
        run._internal_error("speed", err)
