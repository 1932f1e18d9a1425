"""A CPU proxy for what `run.watch(model)` costs a host-bound LoRA step on a GPU, and
where that cost goes, probe by probe.

The 0.5B LoRA step that `watch_overhead.py` times on an H200 is bound by the host
launching kernels: every operator trainspect queues and every microsecond of Python it
runs on the training thread is step time, and so is every stretch its writer thread
holds the GIL. This script measures exactly those on the CPU, on a model with the same
structure (24 Llama decoder layers, LoRA r=16 on all seven projections through PEFT:
168 adapters, 336 trainable tensors, 24 watched layer outputs) but a tiny width, so
that a CPU step is, like the GPU one, mostly dispatch and Python. One intra-op thread;
times are the thread's CPU time (`time.thread_time`), so other processes on a shared
machine disturb them less than wall time.

What it prints:

1. Per step, without and with `watch` (windows of `log_every` 10 steps; "position 10"
   is the step that flushes the window and is the next window's sampled step): aten
   operators (a `TorchDispatchMode`), Python calls into trainspect's files
   (`sys.setprofile`), training-thread CPU time, then CPU time inside each timed
   phase: every public method of each probe on the training thread ("hidden.output",
   "lora.state", ...), watch's own hook methods ("watch _on_hidden", ...), the rest of
   the flush, `run.log`; and per flush on the writer thread: each probe's `compute`,
   the rest of the flush jobs, the alert rules and other observers ("observers"),
   records made columns and packed into chunks ("pack"), SQLite ("sqlite", run with
   the GIL released) and the rest of a tick ("other": merges' numpy work, queues).
2. "Where watch's extra cost goes": one row per probe (its methods summed) and per
   shared part, with the extra aten operators per step, the extra training-thread
   microseconds per step, the writer's extra GIL-holding microseconds per step (per
   flush / 10), and their share of the unwatched step. Hook machinery that no timed
   function sees (nn.Module's slow path with hooks, tensor hooks in the backward) is
   measured apart (`machinery_us`) and added as its own row. The timing's own cost is
   taken off as measured in a tight loop (per timed call, and per timed call inside
   another phase); in the middle of a step a clock read costs more (cold caches), so a
   control (a timed forward hook that does nothing, after every decoder layer, in both
   variants) says how much a timed call still records there; the "timed calls" column
   says how many each row makes per step (watch's `_on_hidden`: 24, and 24 inside it),
   so a row's figure can be weighed against that floor.
   `torch._foreach_norm` is a per-tensor loop on the CPU but a multi-tensor launch on
   a GPU: inside timed code its time is replaced by that of the same call on
   one-element tensors and shown in its own column (still more than a GPU's host
   cost, so read that column as an upper bound).
3. The training-thread CPU ratio of alternating blocks (order flipped every round)
   with a 95% bootstrap interval, and three predicted GPU ratios: 1 + the table's
   total / the unwatched step; 1 + the extra aten operators at the step's mean cost
   per operator + the writer's share; 1 + the measured step time difference + the
   writer's share (noisy). They assume the GPU host's time per operator and per Python
   call scales with this machine's, which holds for a host-bound step; the GPU's own
   extra work (reading 24 hidden states per step) is not in them.

    python benchmarks/watch_proxy.py [--rounds 12] [--windows 2] [--width 64] [--seq 32]
        [--batch 2] [--probes lora,grads,hidden,speed]

About 4 minutes on a quiet 2-core machine. Writes JSON to $OUT/watch_proxy.json when
OUT is set. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import trainspect as ts  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from watch_overhead import bootstrap_interval  # noqa: E402

from trainspect.probes.grads import GradProbe  # noqa: E402
from trainspect.probes.hidden import HiddenProbe  # noqa: E402
from trainspect.probes.lora import LoraProbe  # noqa: E402
from trainspect.probes.speed import SpeedProbe  # noqa: E402

LOG_EVERY = 10
CONTROL = "control (a timed hook that does nothing)"
PROBE_CLASSES = {"lora": LoraProbe, "grads": GradProbe, "hidden": HiddenProbe,
                 "speed": SpeedProbe}
TRAINSPECT_DIR = str(Path(ts.__file__).resolve().parent)


def build_model(layers: int, width: int, dtype: torch.dtype):
    """A Llama of the 0.5B's structure at a tiny width, LoRA r=16 on every projection."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=1024, hidden_size=width, intermediate_size=2 * width,
                         num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=2, tie_word_embeddings=True,
                         max_position_embeddings=256)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(dtype=dtype)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                      "up_proj", "down_proj"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(model, lora), config


class OpCounter(TorchDispatchMode):
    """Counts every aten operator call by name (views included), and by the timed phase
    of `clock` it ran in ("model" outside every phase)."""

    def __init__(self, clock: TimedCalls | None = None) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.by_phase: Counter[str] = Counter()
        self._clock = clock

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket.__name__)] += 1
        phase = self._clock.current() if self._clock is not None else None
        self.by_phase[phase or "model"] += 1
        return func(*args, **(kwargs or {}))


class CallCounter:
    """Python function calls whose code lives in trainspect's files."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, frame, event, arg) -> None:
        if event == "call" and frame.f_code.co_filename.startswith(TRAINSPECT_DIR):
            self.calls += 1


class TimedCalls:
    """CPU seconds (`time.thread_time`) inside chosen functions, by phase; a phase called
    inside another is subtracted from it, so the phases add up to the outermost time.
    The timing's own cost is taken out (`overhead`, `corrected`)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()
        self.nested: Counter[str] = Counter()  # timed calls made inside each phase
        self._saved: list[tuple] = []
        self._local = threading.local()

    @staticmethod
    def overhead(calls: int = 5000) -> tuple[float, float]:
        """(seconds a timed call of a function that does nothing records, seconds a timed
        call adds to the phase it is made in), the least of 5 tries in a tight loop.
        Reading the thread's CPU clock is a system call of a microsecond or more, and a
        layer hook is timed 24 times a step inside watch's own hook."""
        own, nested = [], []
        for _ in range(5):
            clock = TimedCalls()
            nothing = clock.timed(lambda: None, "x")

            def plain() -> None:
                return None

            def call_timed(nothing=nothing) -> None:
                for _ in range(calls):
                    nothing()

            def call_plain() -> None:
                for _ in range(calls):
                    plain()
            clock.timed(call_timed, "timed")()
            clock.timed(call_plain, "plain")()
            own.append(clock.seconds["x"] / calls)
            nested.append((clock.seconds["timed"] - clock.seconds["plain"]) / calls)
        return min(own), max(min(nested), 0.0)

    def current(self) -> str | None:
        """The innermost phase this thread is in, or None."""
        names = getattr(self._local, "names", None)
        return names[-1] if names else None

    def corrected(self, per_call: tuple[float, float]) -> dict[str, float]:
        """Seconds per phase less `per_call` = (own, nested) for each timed call of the
        phase and each timed call made inside it."""
        own, nested = per_call
        return {k: v - self.calls[k] * own - self.nested[k] * nested
                for k, v in self.seconds.items()}

    def timed(self, fn, phase: str):
        clock = self

        def wrapper(*args, **kwargs):
            clock.calls[phase] += 1
            stack = getattr(clock._local, "stack", None)
            if stack is None:
                stack = clock._local.stack = []
                clock._local.names = []
            start = time.thread_time()
            stack.append([0.0, 0])  # seconds and timed calls inside this one
            clock._local.names.append(phase)
            try:
                return fn(*args, **kwargs)
            finally:
                clock._local.names.pop()
                inner, nested = stack.pop()
                spent = time.thread_time() - start
                clock.seconds[phase] += spent - inner
                clock.nested[phase] += nested
                if stack:
                    stack[-1][0] += spent
                    stack[-1][1] += 1
        return wrapper

    def wrap(self, owner, name: str, phase: str) -> None:
        original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        self._saved.append((owner, name, original))
        setattr(owner, name, self.timed(original, phase))

    def remove(self) -> None:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self._saved.clear()


class TimedConnection:
    """A sqlite3 connection whose calls are timed as the phase "sqlite" (SQLite runs
    them with the GIL released); everything else on the writer holds the GIL."""

    def __init__(self, conn, clock: TimedCalls) -> None:
        self._conn = conn
        self.execute = clock.timed(conn.execute, "sqlite")
        self.executemany = clock.timed(conn.executemany, "sqlite")
        self._exit = clock.timed(conn.__exit__, "sqlite")

    def __enter__(self):
        self._conn.__enter__()
        return self

    def __exit__(self, *exc):
        return self._exit(*exc)

    def __getattr__(self, name):
        return getattr(self._conn, name)


def time_writer(run) -> tuple[TimedCalls, Any]:
    """Time the writer thread's phases: each probe's `compute` ("<probe>.compute"), the
    rest of the flush jobs (copying the window's state to the host), the alert rules
    and other observers, turning records into columns and packing chunks ("pack"),
    SQLite itself ("sqlite"), the rest of a tick ("other": merges' numpy work, queues)."""
    from trainspect.store import commit, writer

    clock = TimedCalls()
    w = run._writer
    clock.wrap(writer.StoreWriter, "_tick", "other")
    for name in ("add_entries", "add_scalars"):
        clock.wrap(writer, name, "pack")
    for name in ("_record_rows", "_chunk_rows"):
        clock.wrap(commit.Committer, name, "pack")
    for probe, cls in PROBE_CLASSES.items():
        clock.wrap(cls, "compute", f"{probe}.compute")
    observers = list(w.observers)
    w.observers[:] = [clock.timed(o, "observers") for o in observers]
    holder = getattr(w, "_committer", w)  # where the connection is kept
    attribute = "conn" if holder is not w else "_conn"
    setattr(holder, attribute, TimedConnection(getattr(holder, attribute), clock))
    jobs = w.jobs

    class TimedJobs(type(jobs)):
        def append(self, job):
            super().append(clock.timed(job, "jobs"))

    w.jobs = TimedJobs(jobs)

    def undo() -> None:
        clock.remove()
        w.observers[:] = observers
        setattr(holder, attribute, getattr(holder, attribute)._conn)
        w.jobs = jobs
    return clock, undo


def stand_in_foreach(clock: TimedCalls) -> Any:
    """`torch._foreach_norm` is one multi-tensor launch on a GPU but a loop of per-tensor
    kernels on the CPU, where its time (hundreds of us for 24 layer outputs) says little
    about the GPU's. Inside timed code its time is replaced by that of the same call on
    one-element tensors, charged to the phase "<caller>#foreach" (its probe's, and shown
    apart): the per-tensor dispatch cost alone, still more than the GPU's host cost (one
    launch per few dozen tensors, and a view per result). Returns the undo."""
    original = torch._foreach_norm
    tiny: dict[tuple, list[torch.Tensor]] = {}

    def wrapper(tensors, ord=2, dtype=None):
        stack = getattr(clock._local, "stack", None)
        if not stack:
            return original(tensors, ord, dtype=dtype)
        start = time.thread_time()
        result = original(tensors, ord, dtype=dtype)
        key = (len(tensors), tensors[0].dtype if tensors else None)
        stand = tiny.get(key)
        if stand is None:
            stand = tiny[key] = [torch.zeros(1, dtype=key[1]) for _ in range(key[0])]
        middle = time.thread_time()
        original(stand, ord, dtype=dtype)
        end = time.thread_time()
        clock.seconds[f"{clock.current()}#foreach"] += end - middle
        stack[-1][0] += end - start  # the caller's phase excludes the real call
        return result

    torch._foreach_norm = wrapper

    def undo() -> None:
        torch._foreach_norm = original
    return undo


def machinery_us(batches: int = 15, calls: int = 300) -> dict[str, float]:
    """Microseconds of the machinery around watch's hooks that their own timing cannot
    see, each the median over interleaved batches of a difference: a module call with a
    forward hook that does nothing against one without (nn.Module's slow path), and a
    tiny backward with a tensor hook (registered in the forward, called in the backward)
    against one without."""
    plain, hooked = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    hooked.register_forward_hook(lambda module, args, output: None)
    x = torch.randn(2, 4)
    w = torch.randn(4, requires_grad=True)

    def backward(with_hook: bool) -> None:
        y = (w * 2).sum()
        if with_hook:
            y.register_hook(lambda grad: None)
        y.backward()

    cases = {"module hook": (lambda: plain(x), lambda: hooked(x)),
             "tensor hook": (lambda: backward(False), lambda: backward(True))}
    out = {}
    for name, (without, with_) in cases.items():
        diffs = []
        for _ in range(batches):
            times = []
            for fn in (without, with_):
                start = time.thread_time()
                for _ in range(calls):
                    fn()
                times.append((time.thread_time() - start) / calls)
            diffs.append(times[1] - times[0])
        out[name] = statistics.median(diffs) * 1e6
    return out


def time_training_thread() -> TimedCalls:
    """Time trainspect on the training thread: each probe's methods ("<probe>.<method>":
    the hooks' work and `state`/`reset` at the flush), watch's hook methods around
    them ("watch _before", ...), the rest of the flush ("flush") and `run.log` ("log")."""
    from trainspect.probes.watch import Watch
    from trainspect.run import Run

    clock = TimedCalls()
    for name in ("_before", "_after", "_on_hidden", "_on_grad", "_on_output_grad",
                 "_requeue", "_backward_end"):
        clock.wrap(Watch, name, f"watch {name}")
    for probe, cls in PROBE_CLASSES.items():
        for name, fn in list(cls.__dict__.items()):
            if callable(fn) and not name.startswith("_") and name != "compute":
                clock.wrap(cls, name, f"{probe}.{name}")
    clock.wrap(Run, "_flush_device", "flush")
    clock.wrap(Run, "log", "log")
    return clock


def by_probe(phases: dict[str, float]) -> dict[str, float]:
    """Phase values summed per probe ("lora.state" -> "lora"); other phases kept."""
    out: dict[str, float] = defaultdict(float)
    for phase, value in phases.items():
        out[phase.split(".")[0] if phase.split(".")[0] in PROBE_CLASSES else phase] += value
    return dict(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12,
                        help="rounds of (unwatched block, watched block), order alternating")
    parser.add_argument("--windows", type=int, default=2, help="flush windows per block")
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=("bfloat16", "float32"))
    parser.add_argument("--probes", default="lora,grads,hidden,speed")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # every operator's work on the training thread
    families = {name: name in args.probes.split(",") for name in ("lora", "grads", "hidden",
                                                                    "speed")}
    model, config = build_model(args.layers, args.width, getattr(torch, args.dtype))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, fused=True)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, config.vocab_size, (args.batch, args.seq), generator=gen)
    mask = torch.ones_like(ids)
    mask[: args.batch // 4 or 1, -(args.seq // 4):] = 0
    labels = ids.masked_fill(mask == 0, -100)
    run = ts.init(project="proxy", dir=tempfile.mkdtemp(), log_every=LOG_EVERY)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    counter = [0]
    handle = [None]
    modules = [0]  # watched hidden modules
    per_call = TimedCalls.overhead()
    train_clock = time_training_thread()  # before any watch attaches (hooks bind methods)
    # the control: a timed hook that does nothing after every decoder layer, in both
    # variants: what a timed call costs in the middle of a step, not in a tight loop
    control = train_clock.timed(lambda module, args, output: None, CONTROL)
    for layer in model.base_model.model.model.layers:
        layer.register_forward_hook(control)
    writer_clock, undo_writer = time_writer(run)

    def attach(watched: bool) -> None:
        if watched and handle[0] is None:
            with torch.no_grad():  # as PEFT starts them: B = 0
                for b in lora_b:
                    b.zero_()
            handle[0] = run.watch(model, **families)
            hidden = handle[0].probes.get("hidden")
            modules[0] = len(hidden.labels) if hidden is not None else 0
        if not watched and handle[0] is not None:
            handle[0].remove()
            handle[0] = None

    def step() -> None:
        counter[0] += 1
        run.log({"lr": 1e-3}, step=counter[0])
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def begin(watched: bool) -> None:
        """Attach or detach, then run to the first step of a window (its sampled step,
        untimed): the timed steps that follow are positions 1..10 of windows, the 10th
        holding the window's flush (and the next window's sampled step)."""
        attach(watched)
        while counter[0] % LOG_EVERY:
            step()
        step()
        run._writer.flush()
        gc.collect()

    def block(watched: bool, per_position: dict, direct: dict, writer: dict) -> None:
        begin(watched)
        before_train = train_clock.corrected(per_call)
        before_writer = writer_clock.corrected(per_call)
        for _ in range(args.windows):
            for position in range(1, LOG_EVERY + 1):
                start = time.thread_time()
                step()
                per_position[position].append(time.thread_time() - start)
        run._writer.flush()  # the writer's share of these windows, flush included
        for phase, seconds in train_clock.corrected(per_call).items():
            direct[phase] += seconds - before_train.get(phase, 0.0)
        for phase, seconds in writer_clock.corrected(per_call).items():
            writer[phase] += seconds - before_writer.get(phase, 0.0)

    for watched in (False, True):  # warm-up
        block(watched, defaultdict(list), defaultdict(float), defaultdict(float))

    # 1. operators (by phase) and Python calls per window position
    def counted(watched: bool) -> dict:
        begin(watched)
        ops_at, calls_at = {}, {}
        names: Counter[str] = Counter()
        phases: Counter[str] = Counter()
        timed_before = train_clock.calls + train_clock.nested
        for position in range(1, LOG_EVERY + 1):
            ops, calls = OpCounter(train_clock), CallCounter()
            sys.setprofile(calls)
            try:
                with ops:
                    step()
            finally:
                sys.setprofile(None)
            ops_at[position], calls_at[position] = sum(ops.ops.values()), calls.calls
            names.update(ops.ops)
            phases.update(ops.by_phase)
        timed_after = train_clock.calls + train_clock.nested
        timed = {k: (timed_after[k] - timed_before[k]) / LOG_EVERY for k in timed_after}
        return {"ops": ops_at, "calls": calls_at, "names": names, "phases": phases,
                "timed_calls": timed}

    count: dict[Any, Any] = {False: counted(False), True: counted(True)}
    calls_at = {w: count[w]["timed_calls"] for w in (False, True)}  # per step, nested too
    count["extra_timed_calls_per_step"] = {  # watch's own timed calls (and those inside)
        k: calls_at[True].get(k, 0.0) - calls_at[False].get(k, 0.0) for k in calls_at[True]}
    count["control_calls_per_step"] = calls_at[True].get(CONTROL, 0.0)

    # 2. CPU time, alternating blocks
    undo_foreach = stand_in_foreach(train_clock)
    times = {False: defaultdict(list), True: defaultdict(list)}
    direct = {False: defaultdict(float), True: defaultdict(float)}
    writer = {False: defaultdict(float), True: defaultdict(float)}
    ratios = []
    for r in range(args.rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        sums = {}
        for watched in order:
            mark = {p: len(v) for p, v in times[watched].items()}
            block(watched, times[watched], direct[watched], writer[watched])
            sums[watched] = sum(sum(v[mark.get(p, 0):]) for p, v in times[watched].items())
        ratios.append(sums[True] / sums[False])
    attach(False)
    undo_writer()
    undo_foreach()
    train_clock.remove()
    run.finish()
    result = summarise(args, count, times, direct, writer, ratios, modules[0], per_call)
    print_report(args, result)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "watch_proxy.json").write_text(json.dumps(result, indent=2))
    return 0


def summarise(args, count: dict, times: dict, direct: dict, writer: dict,
              ratios: list[float], hidden_modules: int, per_call: tuple[float, float]) -> dict:
    """Per-step figures of both variants, the extra cost per probe, the predictions."""
    steps = args.rounds * args.windows * LOG_EVERY  # timed steps per variant
    flushes = args.rounds * args.windows
    both = (False, True)

    def mean_us(values: list[float]) -> float:
        return statistics.fmean(values) * 1e6

    plain = {w: mean_us([t for p in range(1, LOG_EVERY) for t in times[w][p]]) for w in both}
    flushing = {w: mean_us(times[w][LOG_EVERY]) for w in both}
    mean_step = {w: mean_us([t for v in times[w].values() for t in v]) for w in both}
    base = mean_step[False]
    direct_us = {w: {k: v / steps * 1e6 for k, v in direct[w].items()} for w in both}
    writer_us = {w: {k: v / flushes * 1e6 for k, v in writer[w].items()} for w in both}
    # extra per step over the unwatched run, by where it is spent
    train_extra = {k: direct_us[True].get(k, 0.0) - direct_us[False].get(k, 0.0)
                   for k in set(direct_us[True]) | set(direct_us[False])}
    writer_extra = {k: (writer_us[True].get(k, 0.0) - writer_us[False].get(k, 0.0)) / LOG_EVERY
                    for k in set(writer_us[True]) | set(writer_us[False])}
    sqlite_extra = writer_extra.pop("sqlite", 0.0)  # runs with the GIL released
    ops_extra = {k: (count[True]["phases"].get(k, 0) - count[False]["phases"].get(k, 0))
                 / LOG_EVERY for k in set(count[True]["phases"]) | set(count[False]["phases"])}
    # hooks' machinery their own timing cannot see: a forward hook per watched module and
    # the model's pre and post hooks; tensor hooks on the two outputs and on three leaves
    machinery = machinery_us()
    machinery_extra = ((hidden_modules + 2) * machinery["module hook"]
                       + 5 * machinery["tensor hook"])
    # a timed call can cost more in the middle of a step than in `overhead`'s tight loop
    # (the clock's system call with cold caches): the control hook shows how much, to
    # weigh the rows that make many timed calls (not taken off: it varies from place
    # to place, and a hook that runs right after the control's finds the caches warm)
    control_calls = count["control_calls_per_step"]
    excess = (direct_us[True].get(CONTROL, 0.0) + direct_us[False].get(CONTROL, 0.0)) / 2 \
        / max(control_calls, 1.0)
    train_extra.pop(CONTROL, None)
    rows: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for phase, us in by_probe(train_extra).items():
        rows[phase]["train_us"] += us
    for phase, n in by_probe({k: v for k, v in count["extra_timed_calls_per_step"].items()
                              if k != CONTROL}).items():
        rows[phase]["timed_calls"] += n
    for phase, us in by_probe({k: v for k, v in train_extra.items() if "#" in k}).items():
        rows[phase]["foreach_us"] += us
    for phase, us in by_probe(writer_extra).items():
        rows[phase if phase in PROBE_CLASSES else f"writer {phase}"]["writer_gil_us"] += us
    for phase, n in by_probe(ops_extra).items():
        rows[phase if phase != "model" else "outside trainspect's functions"]["aten_ops"] += n
    rows["hook machinery (nn.Module slow path, tensor hooks)"]["train_us"] += machinery_extra
    for row in rows.values():
        row["share_pct"] = (row["train_us"] + row["writer_gil_us"]) / base * 100
    own_extra = sum(r["train_us"] + r["writer_gil_us"] for r in rows.values())
    measured_extra = mean_step[True] - mean_step[False]
    ops_per_step = {w: statistics.fmean(count[w]["ops"].values()) for w in both}
    writer_gil = sum(writer_extra.values())
    extra_names = {k: v - count[False]["names"].get(k, 0)
                   for k, v in count[True]["names"].items()
                   if v != count[False]["names"].get(k, 0)}
    return {
        "machine": f"cpu ({os.cpu_count()} cores), torch {torch.__version__}",
        "model": f"{args.layers} layers, width {args.width}, LoRA r=16 on 7 projections, "
                 f"{args.dtype}, batch {args.batch} x {args.seq}",
        "probes": args.probes, "rounds": args.rounds, "windows_per_block": args.windows,
        "ops": {str(w): count[w]["ops"] for w in both},
        "calls": {str(w): count[w]["calls"] for w in both},
        "aten_ops_per_step": {str(w): ops_per_step[w] for w in both},
        "extra_ops_by_name_per_window": dict(sorted(extra_names.items(),
                                                    key=lambda kv: -abs(kv[1]))),
        "train_us_per_step": {str(w): mean_step[w] for w in both},
        "plain_step_us": {str(w): plain[w] for w in both},
        "flushing_step_us": {str(w): flushing[w] for w in both},
        "trainspect_train_thread_us_per_step": {str(w): direct_us[w] for w in both},
        "writer_us_per_flush": {str(w): writer_us[w] for w in both},
        "extra_per_step_by_probe": {k: dict(v) for k, v in rows.items()},
        "in_step_excess_us_per_timed_call": excess,  # the control's
        "timed_calls_per_step": {str(w): count[w]["timed_calls"] for w in both},
        "writer_sqlite_extra_us_per_step": sqlite_extra,
        "machinery_us": machinery, "timing_overhead_us": {"per_timed_call": per_call[0] * 1e6,
                               "per_timed_call_inside_another": per_call[1] * 1e6},
        "block_ratio_mean": float(np.mean(ratios)),
        "block_ratio_ci95": bootstrap_interval(ratios, np.mean),
        "predicted_gpu_ratio_direct": 1.0 + own_extra / base,
        "predicted_gpu_ratio_measured": 1.0 + (measured_extra + writer_gil) / base,
        "predicted_gpu_ratio_ops": 1.0 + (ops_per_step[True] - ops_per_step[False])
        / ops_per_step[False] + writer_gil / base,
    }


def print_report(args, result: dict) -> None:
    """The per-step table of both variants, the cost per probe, the predictions."""
    ops, ops_w = (result["ops"][w] for w in ("False", "True"))
    calls, calls_w = (result["calls"][w] for w in ("False", "True"))
    train = result["trainspect_train_thread_us_per_step"]
    writer_us = result["writer_us_per_flush"]
    print(f"# watch CPU proxy [{args.probes}]: {result['model']}; {result['machine']}; "
          f"{args.rounds} rounds of {args.windows} windows per variant")
    print("| per step | without | with watch |")
    print("|---|---:|---:|")
    print(f"| aten ops: plain step (positions 1-9, median) | "
          f"{statistics.median(ops[p] for p in range(1, LOG_EVERY)):.0f} | "
          f"{statistics.median(ops_w[p] for p in range(1, LOG_EVERY)):.0f} |")
    print(f"| aten ops: flushing + sampled step (position 10) | {ops[LOG_EVERY]} | "
          f"{ops_w[LOG_EVERY]} |")
    print(f"| trainspect Python calls: plain / flushing step | {calls[1]} / "
          f"{calls[LOG_EVERY]} | {calls_w[1]} / {calls_w[LOG_EVERY]} |")
    for label, key in (("mean", "train_us_per_step"), ("plain", "plain_step_us"),
                       ("flushing", "flushing_step_us")):
        print(f"| training thread CPU: {label} step (us) | {result[key]['False']:.0f} | "
              f"{result[key]['True']:.0f} |")
    for phase in sorted(set(train["False"]) | set(train["True"])):
        print(f"| training thread in trainspect: {phase} (us per step) | "
              f"{train['False'].get(phase, 0.0):.0f} | {train['True'].get(phase, 0.0):.0f} |")
    for phase in sorted(set(writer_us["False"]) | set(writer_us["True"])):
        print(f"| writer thread: {phase} (us per flush) | "
              f"{writer_us['False'].get(phase, 0.0):.0f} | "
              f"{writer_us['True'].get(phase, 0.0):.0f} |")
    base = result["train_us_per_step"]["False"]
    print(f"\n## where watch's extra cost goes, per step (unwatched step: {base:.0f} us of "
          f"training-thread CPU)")
    print("| where | extra aten ops | timed calls | training thread (us) | of which "
          "_foreach_norm stand-in (us) | writer holding the GIL (us) | share of the step |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    rows = result["extra_per_step_by_probe"]
    for name in sorted(rows, key=lambda k: -rows[k]["share_pct"]):
        row = rows[name]
        print(f"| {name} | {row.get('aten_ops', 0.0):.1f} | {row.get('timed_calls', 0.0):.1f} | "
              f"{row.get('train_us', 0.0):.1f} | {row.get('foreach_us', 0.0):.1f} | "
              f"{row.get('writer_gil_us', 0.0):.1f} | {row['share_pct']:.2f}% |")
    total = {k: sum(r.get(k, 0.0) for r in rows.values())
             for k in ("aten_ops", "timed_calls", "train_us", "foreach_us",
                       "writer_gil_us", "share_pct")}
    print(f"| total | {total['aten_ops']:.1f} | {total['timed_calls']:.1f} | "
          f"{total['train_us']:.1f} | {total['foreach_us']:.1f} | "
          f"{total['writer_gil_us']:.1f} | {total['share_pct']:.2f}% |")
    ci = result["block_ratio_ci95"]
    machinery = result["machinery_us"]
    print(f"\nwriter in SQLite (GIL released): {result['writer_sqlite_extra_us_per_step']:.0f} "
          f"us per step; hook machinery measured at {machinery['module hook']:.1f} us per "
          f"module hook, {machinery['tensor hook']:.1f} us per tensor hook; timing overhead "
          f"subtracted: {result['timing_overhead_us']['per_timed_call']:.2f} us per timed "
          f"call, {result['timing_overhead_us']['per_timed_call_inside_another']:.2f} us "
          f"from its caller's phase, in a tight loop; in the step, a timed hook that does "
          f"nothing after each layer (the control) still records "
          f"{result['in_step_excess_us_per_timed_call']:.2f} us a call: read the timed-calls "
          f"column with it")
    print(f"block ratio (training-thread CPU, mean of {args.rounds} rounds): "
          f"{result['block_ratio_mean']:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]")
    ops_step = result["aten_ops_per_step"]
    print(f"predicted GPU ratio: {result['predicted_gpu_ratio_direct']:.4f} from the table's "
          f"total; {result['predicted_gpu_ratio_ops']:.4f} counting each extra aten op at "
          f"the step's mean cost per op ({ops_step['True'] - ops_step['False']:.1f} more per "
          f"step of {ops_step['False']:.0f}); {result['predicted_gpu_ratio_measured']:.4f} "
          f"from the step time difference (noisy)")
    print("extra aten ops per window by name:", ", ".join(
        f"{k} {v:+d}" for k, v in list(result["extra_ops_by_name_per_window"].items())[:30]))


if __name__ == "__main__":
    sys.exit(main())
