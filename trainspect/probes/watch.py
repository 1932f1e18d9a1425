"""`run.watch(model)`: LoRA deltas, gradients, hidden states and throughput from hooks.

One call before training attaches everything; the loop changes nothing else:

- a forward pre-hook and hook on the model itself mark each forward pass (training
  when the model is in train mode with grad enabled) and read its token inputs
  (`attention_mask`, `input_ids`, `labels` keyword arguments) for throughput;
- forward hooks on the hidden modules (default: every decoder layer, found by the
  `layers.N` / `h.N` / `blocks.N` naming of HF and PEFT models) feed `HiddenProbe`;
- a tensor hook on the outputs of each training forward (and a post-accumulate-grad
  hook on the first trainable parameter of the first and the last layer, for a loss
  that bypasses the outputs) notices the start of a backward pass and queues one
  callback for the end of that pass with the autograd engine (`queue_callback`, as DDP
  and FSDP do). That callback re-queues itself once so that it runs after DDP's and
  FSDP's own end-of-backward callbacks, when the gradients are final. There it calls
  `GradProbe.after_backward`. This needs no call from the loop, sees every backward
  (gradient accumulation included), and costs a few Python calls per backward; an
  explicit `after_backward(step)` from the loop would miss loops that never call it
  and could not see a detached loss;
- `LoraProbe` needs no hook: it reads the weights at the flush.

Hooks never raise into training: a failing probe is switched off and reported once.
Under gradient checkpointing the recomputation inside the backward is ignored.

Sharded models (FSDP2 and tensor parallel DTensors, FSDP1 with or without
`use_orig_params`, DeepSpeed ZeRO-3) are watched as each rank holds them: probes read
this rank's piece of every parameter and gradient, and the flush pools the pieces into
whole-tensor numbers (placement.py says how). Call `watch` after wrapping, on the module
that holds the parameters (FSDP1: the wrapper; DDP: the module inside).

Names and the parts found in the model: modules.py.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import torch
from torch import nn

from trainspect.errors import TrainspectError
from trainspect.probes.grads import GradProbe
from trainspect.probes.hidden import HiddenProbe
from trainspect.probes.lora import LoraProbe, WeightRef
from trainspect.probes.modules import (
    block_of,
    find_adapters,
    find_hidden,
    outputs_with_grad,
    short_name,
    split_layer,
)
from trainspect.probes.placement import Tracked, deepspeed_zero, tracked_parameters
from trainspect.probes.speed import SpeedProbe, check_tp_group, counts_tokens, flop_counts
from trainspect.records import Alert

log = logging.getLogger("trainspect.probes.watch")

# Full-weight snapshots cost as much memory as the weights: on by default up to this size.
FULL_DELTAS_AUTO_MAX_PARAMS = 1_000_000_000


_graph_task_id = getattr(torch._C, "_current_graph_task_id", lambda: -1)


def _in_backward() -> bool:
    """True while the autograd engine runs (gradient checkpointing recomputes forwards)."""
    return _graph_task_id() != -1


def _engine() -> Any:
    return torch.autograd.Variable._execution_engine


# ---- the handle ------------------------------------------------------------------------


class Watch:
    """What `run.watch` returns: the attached probes (`.probes`) and `remove()`."""

    def __init__(self, run: Any, model: nn.Module, every: int) -> None:
        self.run = run
        self.model = model
        self.every = every
        self.probes: dict[str, Any] = {}
        self._own_speed = False
        self._handles: list[Any] = []
        self._off: set[str] = set()
        self._queued = False
        self._closed = False
        self._training = False
        self._backward_watched = False

    def __repr__(self) -> str:
        return f"Watch(every={self.every}, probes={sorted(self.probes)})"

    # ---- attaching (once, before training) ---------------------------------------------

    def attach(self, *, lora: bool, grads: bool, hidden: bool, speed: bool,
               full_deltas: bool | None, hidden_modules: Any, top_k: int,
               check_every_step: bool, peak_flops: float | None,
               tp_group: Any = None) -> Watch:
        model, run = self.model, self.run
        params = tracked_parameters(model)
        by_name = {t.name: t for t in params}  # full paths, as the modules name them
        for t in params:
            t.name = short_name(t.name)
        device = next((t.data().device for t in params), None) or next(
            (p.device for p in model.parameters()), torch.device("cpu"))
        start = run.step
        layers: list[str] = []
        index = []
        for t in params:
            layer = split_layer(t.name.rsplit(".", 1)[0])[0]
            if layer not in layers:
                layers.append(layer)
            index.append(layers.index(layer))
        if lora:
            self._add_lora(params, by_name, full_deltas, top_k, start)
        if grads and params and deepspeed_zero(params):
            self._no_grads_under_zero()
        elif grads and params:
            per_flush = -(-run.log_every // self.every) + 1  # sampled steps in one flush
            self._add(GradProbe(params, index, layers, device, every=self.every,
                                samples_per_flush=per_flush))
        if hidden:
            modules = find_hidden(model, hidden_modules)
            if modules:
                probe = self._add(HiddenProbe([s for s, _ in modules], device, every=self.every,
                                              check_every_step=check_every_step))
                for i, (_, module) in enumerate(modules):
                    self._handles.append(module.register_forward_hook(
                        functools.partial(self._on_hidden, probe, i)))
        if speed:
            self._add_speed(device, peak_flops, tp_group)
        self._handles.append(model.register_forward_pre_hook(self._before, with_kwargs=True))
        self._handles.append(model.register_forward_hook(self._after))
        self._backward_watched = "grads" in self.probes or "speed" in self.probes
        if self._backward_watched and params:
            # A backward is noticed where it starts, at the model's outputs (a tensor hook
            # registered by the root forward hook, one or two per step), and, for a loss
            # that bypasses them, at the first trainable tensor of the first and the last
            # layer: each hook is a Python call on the autograd thread, so not one per
            # layer. They go where autograd accumulates (FSDP1: the flat parameter).
            ends = [next(t for t, i in zip(params, index) if i == layer)
                    for layer in sorted({index[0], index[-1], max(index)})]
            for leaf in {id(t.leaf): t.leaf for t in ends}.values():
                self._handles.append(leaf.register_post_accumulate_grad_hook(self._on_grad))
        return self

    def _add(self, probe: Any) -> Any:
        probe.owner = self
        self.probes[probe.name] = probe
        self.run.add_probe(probe)
        return probe

    def _add_lora(self, params: list[Tracked], by_name: dict[str, Tracked],
                  full_deltas: bool | None, top_k: int, start: int) -> None:
        adapters = find_adapters(self.model, by_name)
        factors = {id(t) for ref in adapters for t in (ref.a, ref.b)}
        rest = [t for t in params if id(t) not in factors]
        size = sum(t.placement.numel() for t in rest)
        if full_deltas is None:
            full_deltas = size <= FULL_DELTAS_AUTO_MAX_PARAMS
            if not full_deltas:
                log.info("trainspect: %d trainable weights: full-weight deltas are off by "
                         "default above %d (they snapshot the weights); pass full_deltas=True",
                         size, FULL_DELTAS_AUTO_MAX_PARAMS)
        weights = []
        for t in rest if full_deltas else []:
            name = t.name
            layer, parts = split_layer(name.rsplit(".", 1)[0] if "." in name else name)
            weights.append(WeightRef(name, layer, block_of(parts), t))
        probe = LoraProbe(adapters, weights, every=self.every, start_step=start, top_k=top_k,
                          step_of=lambda: self.run.step)
        if not probe.empty:
            self._add(probe)

    def _no_grads_under_zero(self) -> None:
        """ZeRO reduces and partitions the gradients inside its optimizer after the
        backward returns (engine.backward) and frees `param.grad`: there is no point where
        a hook sees them final, so `grad/...` is not recorded rather than wrong."""
        self.run.emit(Alert(
            step=self.run.step, rule="grads.unavailable", level="info",
            message=f"watch records no grad/... metrics under DeepSpeed ZeRO (from step "
                    f"{self.run.step}): its optimizer holds the gradients, reduced and "
                    f"partitioned after the backward returns; LoRA deltas, hidden states "
                    f"and throughput are recorded",
            action="Log the engine's norm yourself: run.log({'grad/norm': "
                   "engine.get_global_grad_norm()}) after engine.step() (the HF Trainer "
                   "stores it as train/grad_norm).",
            wall_time=time.time()))

    def _add_speed(self, device: torch.device, peak_flops: float | None,
                   tp_group: Any) -> None:
        static, attention = flop_counts(self.model)
        probe = self.run.probe("speed")
        if probe is None:
            probe = SpeedProbe(device, step_of=lambda: self.run.step)
            self._own_speed = True
        probe.flops_per_token, probe.attention_flops = static, attention
        probe.counts = counts_tokens(self.model, tp_group)
        if peak_flops is not None:
            probe.peak = peak_flops
        self._add(probe)

    # ---- hooks (training thread and autograd engine; never raise) ----------------------

    def _call(self, probe: Any, where: str, fn: Any, *args: Any) -> None:
        if probe.name in self._off:
            return
        try:
            fn(*args)
        except Exception as err:
            self._fail(probe, where, err)

    def _fail(self, probe: Any, where: str, err: BaseException) -> None:
        self._off.add(probe.name)
        self.run.probe_failed(probe.name, where, err)

    def _before(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._closed or _in_backward():
            return
        if getattr(self.run, "_finished", False):
            self.remove()
            return
        for name, probe in self.probes.items():  # switched off by the run (state/compute)
            if name not in self._off and self.run.probe(name) is not probe:
                self._off.add(name)
        self._queued = False  # a backward that died half-way must not block the next one
        training = module.training and torch.is_grad_enabled()
        self._training = training
        grads, hidden, speed = (self.probes.get(k) for k in ("grads", "hidden", "speed"))
        if training and grads is not None:
            self._call(grads, "forward", grads.forward_seen)
        if training and speed is not None:
            self._call(speed, "forward", self._count, speed, args, kwargs)
        if hidden is not None:
            self._call(hidden, "forward", hidden.begin_forward, self.run.step, training)

    def _after(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self._closed or _in_backward():
            return
        hidden = self.probes.get("hidden")
        if hidden is not None:
            self._call(hidden, "forward", hidden.end_forward, self.run.step)
        if self._training and self._backward_watched:
            try:  # the backward of this forward starts at its outputs: one hook there
                for t in outputs_with_grad(output):
                    t.register_hook(self._on_output_grad)
            except Exception as err:
                self._call_all_failed("forward hook", err)

    @staticmethod
    def _count(speed: SpeedProbe, args: tuple, kwargs: dict) -> None:
        speed.forward_start()
        if speed.explicit:
            return
        ids = kwargs.get("input_ids")
        if ids is None and args and isinstance(args[0], torch.Tensor):
            ids = args[0] if not args[0].is_floating_point() else None
        mask = kwargs.get("attention_mask")
        if ids is None and mask is None:
            embeds = kwargs.get("inputs_embeds")
            if not isinstance(embeds, torch.Tensor) or embeds.dim() < 2:
                return
            speed.count(tokens=embeds.shape[:-1].numel())
            return
        labels = kwargs.get("labels")
        speed.count(mask if isinstance(mask, torch.Tensor) else None, ids,
                    labels if isinstance(labels, torch.Tensor) else None, shift_labels=True)

    def _on_hidden(self, probe: HiddenProbe, i: int, module: nn.Module, args: tuple,
                   output: Any) -> None:
        # the one hook that runs per layer per forward: one attribute read when not
        # collecting (the probe collects only between the root's hooks of a training
        # forward, never in a checkpointed recomputation: the root hook is not run there)
        if not probe._collecting:
            return
        try:
            probe.output(i, output)
        except Exception as err:
            probe._collecting = False
            self._fail(probe, "forward hook", err)

    def _on_output_grad(self, grad: torch.Tensor) -> None:
        self._on_grad(grad)

    def _on_grad(self, param: torch.Tensor) -> None:
        if self._queued or self._closed:
            return
        self._queued = True
        try:
            _engine().queue_callback(self._requeue)
        except Exception as err:
            self._queued = False
            self._call_all_failed("backward hook", err)

    def _requeue(self) -> None:
        try:  # run after callbacks queued later in this backward (DDP's reducer)
            _engine().queue_callback(self._backward_end)
        except RuntimeError as err:  # not inside a backward any more: finish it now
            log.debug("trainspect: could not requeue the end of backward (%s)", err)
            self._backward_end()

    def _backward_end(self) -> None:
        self._queued = False
        grads, speed = self.probes.get("grads"), self.probes.get("speed")
        if grads is not None:
            self._call(grads, "backward", grads.after_backward, self.run.step)
        if speed is not None:
            self._call(speed, "backward", speed.backward_end)

    def _call_all_failed(self, where: str, err: BaseException) -> None:
        for name in ("grads", "speed"):
            if name in self.probes and name not in self._off:
                self._off.add(name)
                self.run.probe_failed(name, where, err)

    # ---- detaching ---------------------------------------------------------------------

    def remove(self) -> None:
        """Detach every hook and take this watch's probes off the run."""
        self._closed = True
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for name, probe in self.probes.items():
            if name == "speed" and not self._own_speed:
                continue  # run.speed made it: it stays
            if self.run.probe(name) is probe:
                remover = getattr(self.run, "remove_probe", None)
                if remover is not None:
                    remover(name)
                else:
                    self.run._probes.pop(name, None)


def watch(run: Any, model: nn.Module, every: int | None = None, hidden_modules: Any = None, *,
          lora: bool = True, grads: bool = True, hidden: bool = True, speed: bool = True,
          full_deltas: bool | None = None, top_k: int = 5, check_finite: str = "every_step",
          peak_flops: float | None = None, tp_group: Any = None) -> Watch | None:
    """Watch `model` for the rest of the run: the code behind `Run.watch`.

    every: sample gradients, hidden statistics and LoRA deltas on one step every `every`
        steps (default: the run's `log_every`). LoRA deltas are read at flushes, so they
        come at most once per `log_every` steps.
    hidden_modules: modules whose outputs to watch: names (as in `named_modules`, or
        short like "layers.3"), modules, or [] for none. Default: every decoder layer.
    lora, grads, hidden, speed: switch a probe family off.
    full_deltas: ‖W − W₀‖_F for trainable weights that are not LoRA factors. It keeps a
        copy of those weights on their device (as much memory again): None turns it on
        when they hold at most FULL_DELTAS_AUTO_MAX_PARAMS (1e9) parameters.
    top_k: layers in the `lora/top` matrix.
    check_finite: "every_step" (default: one multi-tensor absmax over the watched outputs
        per training forward) or "sampled" (only on sampled steps), for the first
        non-finite module.
    peak_flops: the device's peak FLOP/s for `speed/mfu` when it is not in the table.
    tp_group: the tensor-parallel group (a ProcessGroup or a 1-D DeviceMesh) whose ranks
        see the same batches: only its first rank counts their tokens, so `speed/...` is
        what one process would record. Default: the mesh dimension named "tp" of the
        model's DTensor parameters, if there is one; else every rank counts its own.

    Call once, before training (and before `torch.compile`); a second call replaces the
    first. Steps are the run's step counter when a hook runs: give the step to the run
    (`run.log`, `run.observe`, `run.losses`) before the backward pass, or the samples are
    attributed to the previous step. Returns the handle (`.remove()` detaches
    everything), or None if the model could not be watched (then the reason was logged
    and training goes on). Bad arguments raise TrainspectError.
    """
    if not isinstance(model, nn.Module):
        raise TrainspectError(f"expected `model` to be a torch.nn.Module, got "
                              f"{type(model).__name__}")
    every = run.log_every if every is None else every
    for argument, value in (("every", every), ("top_k", top_k)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TrainspectError(f"expected `{argument}` to be a positive int, got {value!r}")
    if check_finite not in ("every_step", "sampled"):
        raise TrainspectError(f"expected `check_finite` to be 'every_step' or 'sampled', got "
                              f"{check_finite!r}")
    check_tp_group(tp_group)
    for name in ("lora", "grads", "hidden", "speed"):
        owner = getattr(run.probe(name), "owner", None)
        if isinstance(owner, Watch):
            owner.remove()
    handle = Watch(run, model, every)
    try:
        return handle.attach(lora=lora, grads=grads, hidden=hidden, speed=speed,
                             full_deltas=full_deltas, hidden_modules=hidden_modules,
                             top_k=top_k, check_every_step=check_finite == "every_step",
                             peak_flops=peak_flops, tp_group=tp_group)
    except TrainspectError:
        handle.remove()
        raise
    except Exception as err:
        handle.remove()
        run._internal_error("watch", err)
        return None

