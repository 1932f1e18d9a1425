"""The flush: every probe's state and every logged tensor, off the device in one copy.

On the training thread a flush only queues device work: the state tensors of each
device are packed into one float64 buffer, summed across ranks in one all_reduce
when torch.distributed is running, copied without blocking into pinned host memory,
and an event is recorded. The writer thread waits on that event and hands each
probe its slice. Between flushes nothing leaves the device.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Consumer = Callable[[list[np.ndarray]], list[Any]]


@dataclass
class Part:
    """Tensors to bring to the host, and what turns their values into records."""

    tensors: Sequence[Any]
    consume: Consumer
    reduce: bool = True  # sum across ranks (probe state); False for rank-local values


class _PinnedPool:
    """Reuses pinned host buffers: allocating page-locked memory each flush is slow."""

    def __init__(self) -> None:
        self._free: dict[int, list[Any]] = defaultdict(list)
        self._lock = threading.Lock()

    def take(self, torch: Any, numel: int) -> Any:
        with self._lock:
            if self._free[numel]:
                return self._free[numel].pop()
        return torch.empty(numel, dtype=torch.float64, pin_memory=True)

    def give(self, buffer: Any) -> None:
        with self._lock:
            self._free[buffer.numel()].append(buffer)


class Flusher:
    """Builds one writer job per flush from the parts handed to it."""

    def __init__(self) -> None:
        self._pool = _PinnedPool()

    def start(self, parts: list[Part]) -> Callable[[], list[Any]] | None:
        """Queue the copies now (training thread); return the job the writer finishes."""
        parts = [p for p in parts if len(p.tensors)]
        if not parts:
            return None
        import torch

        by_device: dict[Any, list[Part]] = defaultdict(list)
        for part in parts:
            by_device[(part.tensors[0].device, part.reduce)].append(part)
        transfers = []
        for (device, reduce), device_parts in by_device.items():
            pieces = [t.detach().reshape(-1).to(torch.float64)
                      for part in device_parts for t in part.tensors]
            flat = torch.cat(pieces)  # a new buffer: probes may zero their state right after
            if reduce:
                _all_reduce(torch, flat)
            layout = [[t.numel() for t in part.tensors] for part in device_parts]
            if device.type == "cpu":
                transfers.append((None, flat, None, device_parts, layout))
                continue
            host = self._pool.take(torch, flat.numel())
            host.copy_(flat, non_blocking=True)
            event = torch.cuda.Event() if device.type == "cuda" else None
            if event is not None:
                event.record()
            else:
                torch.accelerator.synchronize(device)  # pragma: no cover - non-CUDA devices
            transfers.append((event, host, self._pool, device_parts, layout))

        def finish() -> list[Any]:
            records: list[Any] = []
            for event, host, pool, device_parts, layout in transfers:
                if event is not None:
                    event.synchronize()
                values = host.numpy().copy()
                if pool is not None:
                    pool.give(host)
                offset = 0
                for part, sizes in zip(device_parts, layout):
                    arrays = []
                    for size in sizes:
                        arrays.append(values[offset:offset + size])
                        offset += size
                    records.extend(part.consume(arrays))
            return records

        return finish


def _all_reduce(torch: Any, flat: Any) -> None:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flat)
