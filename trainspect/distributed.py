"""Several ranks, one run: rank 0 writes, and every rank's probe state is pooled at the flush.

Under torchrun, DDP, FSDP, Accelerate or Lightning every rank calls the trainspect API
exactly as one process does (`ts.init`, `observe`, `log`, `losses`, `watch`). Three
things make that one run:

Who writes. `rank_and_world()` reads torch.distributed when it is initialised, else
the launcher's environment (RANK/WORLD_SIZE, Open MPI, SLURM), without importing
torch. Rank 0 opens the store; every other rank gets a writer that drops everything:
it does its device work and takes part in the flush, and never touches the disk.
Values given to `run.log` are therefore rank 0's: log numbers that are the same on
every rank (the learning rate, a loss you reduced, HF's `on_log` values) or that you
want from rank 0. Token statistics, loss composition, gradients, hidden states and
throughput are probe state and are pooled over all ranks.

Who takes part. The first flush settles, once, whether the ranks pool: every rank
counts itself in the process group's key-value store when its run starts (or at its
first flush, if the group came later), and the first rank to see the count decides,
with one atomic compare-and-set that the others read: `pool` when every rank has a
run, else `local`. A job that calls trainspect on rank 0 only (`if rank == 0:`) thus
gets rank 0's own numbers and a warning, instead of a flush that waits forever for
ranks that never come.

One layout. The flush sums every probe's state across ranks in one packed all_reduce
(flush.py). That is only right when every rank packs the same tensors in the same
order; otherwise the all_reduce hangs (sizes differ) or adds unrelated numbers (same
size, other meaning). The rule: every rank makes the same trainspect calls in each
log window (the same streams with the same group axes, the same loss component
names, `watch` on every rank), as SPMD loops do. It is checked, not trusted: before a
flush touches any probe, the ranks compare a 63-bit hash of their layouts (probe
names in order, each probe's streams or component names) in one all_reduce of two
int64 on a CPU (gloo) group: host only, no device sync, some 100 µs per flush. Only
when the hashes differ do the ranks exchange their layouts (all_gather_object); then
every rank switches off the probes whose layout differs anywhere, with one alert
that names them and the ranks, and pools the rest as usual.

Stragglers. Each rank writes its own numbers into its row of a [world, 4] table that
rides in the same all_reduce (a sum of rows that are zero elsewhere is a gather):
its busy time (host time between flushes, less the time it waited at the last one),
its steps, its tokens (from the speed probe) and how long it waited at this flush
for the last rank. Rank 0 records `speed/rank<i>/step_s` (busy time per step),
`speed/rank<i>/tokens_per_s` and `speed/rank<i>/late_s` (how long after the first
rank it reached the flush: the straggler has the largest).

Ending. A run that finishes after an error or on a signal does not pool its last
window: other ranks may be gone, and a collective with a missing rank never returns.
Its last window is lost; what was flushed before is in the store. A rank whose
cross-rank check fails (a peer died) pools nothing more and says so once.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from trainspect.flush import Part
from trainspect.records import Alert, Scalar

log = logging.getLogger("trainspect.distributed")

# (rank variable, world-size variable) of the launchers, in order of trust.
ENV_RANKS = (("RANK", "WORLD_SIZE"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
             ("PMI_RANK", "PMI_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS"))
JOIN_WAIT_S = 120.0  # at most this long for the other ranks' runs, when the group came late
TABLE = ("busy_s", "steps", "tokens", "wait_s")  # columns of the per-rank table

_runs_started = 0  # runs this process started: the k-th run of every rank is one job run
_flush = threading.local()  # .pooling: whether the flush in progress on this thread pools


def _dist() -> Any:
    """torch.distributed if it is initialised with several ranks, else None.

    Never imports torch: a process that has not imported it has no process group.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    return dist if dist.get_world_size() > 1 else None


def all_reduce_max(tensor: Any) -> None:
    """In-place maximum over ranks, for probes' `state()`: only when the flush pools.

    A probe that reduces inside `state()` must use this rather than torch.distributed:
    when the ranks do not pool (trainspect on rank 0 only, or a rank gone), a collective
    there would wait forever for ranks that never come.
    """
    dist = _dist()
    if dist is not None and getattr(_flush, "pooling", True):
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of ranks: from torch.distributed once it is
    initialised, else from the launcher's environment, else (0, 1)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    for rank_var, world_var in ENV_RANKS:
        rank, world = os.environ.get(rank_var), os.environ.get(world_var)
        if rank is not None and world is not None:
            try:
                rank_i, world_i = int(rank), int(world)
            except ValueError:
                continue
            if 0 <= rank_i < world_i:
                return rank_i, world_i
    return 0, 1


def is_writer() -> bool:
    """True on the rank that writes the store (rank 0, or a process without ranks)."""
    return rank_and_world()[0] == 0


def probe_layout(probe: Any) -> tuple:
    """What fixes the size and meaning of a probe's state, read without calling `state()`.

    A probe may say it itself with `layout()`; the token probe's is its streams with
    their group axes, the loss probe's its component names in order of first use.
    Other probes' state is fixed when they are made (by the model, for `watch`).
    """
    own = getattr(probe, "layout", None)
    if callable(own):
        return (probe.name, repr(own()))
    streams = getattr(probe, "streams", None)
    if isinstance(streams, dict):
        return (probe.name, tuple((name, getattr(s, "group", None), getattr(s, "n_groups", None))
                                  for name, s in streams.items()))
    slots = getattr(probe, "slots", None)
    if isinstance(slots, dict):
        return (probe.name, tuple(slots))
    return (probe.name, type(probe).__qualname__)


def layout_hash(layouts: Sequence[tuple]) -> int:
    """A 63-bit hash of the layouts (63 bits: its negation is an int64 too)."""
    digest = hashlib.blake2b(repr(list(layouts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class RankSync:
    """One run's view of the ranks: whether it writes, and the cross-rank flush.

    Run calls `agree` before it asks probes for their state, `parts` on the parts it
    built, and `final_flush_ok` in `finish`. With one rank all three are no-ops.
    """

    def __init__(self) -> None:
        global _runs_started
        self.rank, self.world = rank_and_world()
        self.writes = self.rank == 0
        self.index = _runs_started
        _runs_started += 1
        self.mode: str | None = None  # "pool" or "local", settled at the first flush
        self.broken = False
        self._group: Any = None
        self._counted = False
        self._warned: set[str] = set()
        self._last_end = time.perf_counter()
        self._last_step: int | None = None
        self._wait_s = 0.0
        self._busy_s = 0.0
        dist = _dist()
        if dist is not None:
            self._count_in(dist)

    # ---- who takes part ------------------------------------------------------------------

    def _key(self, what: str) -> str:
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        return f"trainspect/{restart}/run{self.index}/{what}"

    def _count_in(self, dist: Any) -> None:
        try:
            dist.distributed_c10d._get_default_store().add(self._key("ranks"), 1)
            self._counted = True
        except Exception as err:  # a store without add: fall back to the rule
            log.debug("trainspect: no key-value store to count ranks in", exc_info=err)

    def _settle(self, dist: Any) -> str:
        """'pool' if every rank has this run, else 'local'; the same answer on every rank."""
        late = not self._counted
        if late:
            self._count_in(dist)
        if not self._counted:
            return "pool"
        store = dist.distributed_c10d._get_default_store()
        world = dist.get_world_size()
        deadline = time.monotonic() + (JOIN_WAIT_S if late else 0.0)
        while True:
            everyone = store.add(self._key("ranks"), 0) >= world
            if everyone or time.monotonic() >= deadline:
                break
            time.sleep(0.01)
        mode = store.compare_set(self._key("mode"), "", "pool" if everyone else "local")
        return mode.decode() if isinstance(mode, bytes) else str(mode)

    def _side_group(self, dist: Any) -> Any:
        """A gloo group for host-side checks (the default group when it is gloo already)."""
        if self._group is None:
            backend = str(dist.get_backend())
            self._group = (dist.group.WORLD if "gloo" in backend
                           else dist.new_group(backend="gloo"))
        return self._group

    # ---- the flush ----------------------------------------------------------------------

    def agree(self, run: Any, probes: list[Any]) -> list[Any]:
        """The probes every rank flushes, in one order; switches off the others."""
        start = time.perf_counter()
        self._busy_s = start - self._last_end
        self._wait_s = 0.0
        dist = None if self.broken else _dist()
        _flush.pooling = dist is not None and self.mode != "local"
        if dist is None:
            self._last_end = start
            return probes
        try:
            if self.mode is None:
                self.mode = self._settle(dist)
                _flush.pooling = self.mode == "pool"
                if self.mode == "local":
                    self._warn(run, "local", "trainspect runs on some ranks only: each rank "
                               "keeps its own numbers and rank 0's are stored. Call ts.init "
                               "and the run's methods on every rank to pool them.")
            if self.mode == "local":
                return probes
            import torch

            group = self._side_group(dist)
            layouts = [probe_layout(p) for p in probes]
            mine = layout_hash(layouts)
            wait_start = time.perf_counter()
            check = torch.tensor([mine, -mine], dtype=torch.int64)
            dist.all_reduce(check, op=dist.ReduceOp.MAX, group=group)
            self._wait_s = time.perf_counter() - wait_start
            if check.tolist() == [mine, -mine]:
                return probes
            everyone: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(everyone, layouts, group=group)
            return self._common(run, probes, layouts, everyone)
        except Exception as err:
            self.broken = True
            _flush.pooling = False
            self._warn(run, "broken", f"the ranks could not compare their state at the flush "
                       f"({type(err).__name__}: {err}); from now on rank 0 stores its own "
                       "numbers only")
            return probes
        finally:
            self._last_end = time.perf_counter()

    def _common(self, run: Any, probes: list[Any], mine: list[tuple],
                everyone: list[list[tuple]]) -> list[Any]:
        """Keep the probes whose layout is the same on every rank, in rank 0's order."""
        shared = set.intersection(*(set(layouts) for layouts in everyone))
        order = [layout for layout in everyone[0] if layout in shared]
        by_layout = dict(zip(mine, probes))
        for layout, probe in by_layout.items():
            if layout in shared:
                continue
            where = [r for r, layouts in enumerate(everyone) if layout in layouts]
            others = {r: [lay for lay in layouts if lay[0] == layout[0]]
                      for r, layouts in enumerate(everyone) if r not in where}
            self._switch_off(run, probe, (
                f"the {probe.name} probe's state differs across ranks and cannot be pooled: "
                f"ranks {where} have {_describe(layout)}, "
                + "; ".join(f"rank {r} has {_describe(lay[0]) if lay else 'no such probe'}"
                            for r, lay in others.items())
                + ". It was switched off on every rank"))
        return [by_layout[layout] for layout in order]

    def _switch_off(self, run: Any, probe: Any, message: str) -> None:
        if getattr(run, "_probes", {}).get(probe.name) is probe:
            run._probes.pop(probe.name)
            run._disabled.add(probe.name)
        self._alert(run, f"layout:{probe.name}", "rank_layout", "critical", message,
                    "Make the same trainspect calls on every rank in every log window: the "
                    "same observe streams and group axes, the same loss component names, "
                    "watch on every rank. Data-dependent calls (a stream only some batches "
                    "have) must be made on every rank, e.g. with an all-ignored label tensor.")

    def parts(self, run: Any, parts: list[Part]) -> list[Part]:
        """The flush's parts, plus the per-rank table; all rank-local when not pooling."""
        dist = None if self.broken or self.mode != "pool" else _dist()
        if dist is None:
            if self.mode == "local" or self.broken:
                return [Part(p.tensors, p.consume, reduce=False) for p in parts]
            return parts
        try:
            return [*parts, self._rank_table(run, parts, dist)]
        except Exception as err:
            self._warn(run, "table", f"per-rank speed is off ({type(err).__name__}: {err})")
            return parts

    def _rank_table(self, run: Any, parts: list[Part], dist: Any) -> Part:
        import torch

        reduced = [p for p in parts if p.reduce and len(p.tensors)]
        device = reduced[0].tensors[0].device if reduced else torch.device("cpu")
        world, rank = dist.get_world_size(), dist.get_rank()
        step = int(getattr(run, "step", 0))
        steps = 0 if self._last_step is None else step - self._last_step
        self._last_step = step
        table = torch.zeros(world, len(TABLE), dtype=torch.float64, device=device)
        row = table[rank]
        for column, value in ((0, self._busy_s), (1, float(steps)), (3, self._wait_s)):
            row[column].fill_(value)  # fill_ passes the value as a kernel argument
        speed = run.probe("speed") if callable(getattr(run, "probe", None)) else None
        acc, host = getattr(speed, "acc", None), getattr(speed, "host", None)
        if acc is not None and host is not None:  # real tokens: device count + host count
            row[2].copy_((acc[0] + host[0]).to(device))
        else:
            row[2].fill_(math.nan)

        def consume(arrays: list) -> list:
            return rank_records(arrays[0].reshape(world, len(TABLE)), step, time.time())

        return Part([table], consume, reduce=True)

    def final_flush_ok(self, status: str, meta: dict[str, Any]) -> bool:
        """Whether `finish` may flush: not across ranks after an error or on a signal."""
        if _dist() is None or self.broken or self.mode == "local":
            return True
        exiting_on_error = getattr(sys, "last_value", None) is not None
        return status == "finished" and "exit_signal" not in meta and not exiting_on_error

    # ---- saying things once --------------------------------------------------------------

    def _warn(self, run: Any, key: str, message: str) -> None:
        self._alert(run, key, "distributed", "warning", message, "")

    def _alert(self, run: Any, key: str, rule: str, level: str, message: str,
               action: str) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        emit = getattr(run, "emit", None)
        alert = Alert(step=int(getattr(run, "step", 0)), rule=rule, level=level,
                      message=message, action=action, wall_time=time.time())
        if callable(emit):
            emit(alert)
        else:
            log.warning("trainspect: %s", message)


def rank_records(table: Any, step: int, wall_time: float) -> list[Scalar]:
    """`speed/rank<i>/...` scalars from the gathered [world, 4] table (see TABLE)."""
    records: list[Scalar] = []
    waits = table[:, 3]
    first = float(waits.max())
    for i, (busy, steps, tokens, wait) in enumerate(table.tolist()):
        if steps > 0:
            records.append(Scalar(f"speed/rank{i}/step_s", step, busy / steps, wall_time))
        if not math.isnan(tokens) and busy + wait > 0:
            records.append(Scalar(f"speed/rank{i}/tokens_per_s", step, tokens / (busy + wait),
                                  wall_time))
        records.append(Scalar(f"speed/rank{i}/late_s", step, first - wait, wall_time))
    return records


def _describe(layout: tuple) -> str:
    name, detail = layout
    if name == "tokens" and isinstance(detail, tuple):
        streams = ", ".join(f"{s!r}" + (f" (group={g!r}, {n})" if g else "")
                            for s, g, n in detail)
        return f"streams [{streams}]"
    if name == "losses" and isinstance(detail, tuple):
        return f"components {list(detail)}"
    return f"{name} ({detail})"

