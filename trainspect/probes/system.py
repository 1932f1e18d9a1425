"""System metrics, sampled off the training thread: GPU utilisation and memory, CPU, RAM, disk.

A run starts one daemon thread (`trainspect-system`) that wakes every `interval_s`,
reads the machine, and hands `Scalar`s to `run.emit` (the writer's record queue) at
the run's current step. The training thread does nothing for it. `ts.init(...,
system_metrics=False)` switches it off, a number sets the interval in seconds, and
without the argument `$TRAINSPECT_SYSTEM_METRICS` can do either (0 or off: no thread).

Sources are optional and found once: NVML (`pynvml`, from the `nvidia-ml-py` package)
for the GPUs this process may use (`CUDA_VISIBLE_DEVICES` respected, numbered as CUDA
numbers them), and `psutil` for the CPU, memory and disks
(`pip install 'trainspect[system]'` installs both). A source that is missing is
skipped with one log line; one that fails while sampling is switched off with one
warning, and the others go on.

Metric names carry their unit:

| name | meaning |
| --- | --- |
| `sys/cpu_pct` | CPU busy since the last sample, all cores, percent |
| `sys/ram_used_gib`, `sys/ram_pct` | memory in use (total - available) |
| `sys/proc_rss_gib` | resident memory of this process |
| `sys/disk_read_mib_s`, `sys/disk_write_mib_s` | all disks, since the last sample |
| `sys/gpu<i>/util_pct` | share of the last sample period a kernel ran (NVML) |
| `sys/gpu<i>/mem_used_gib`, `sys/gpu<i>/mem_pct` | device memory in use, all processes |
| `sys/gpu<i>/power_w`, `sys/gpu<i>/temp_c` | board power and temperature |
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from trainspect.errors import TrainspectError
from trainspect.records import Scalar

log = logging.getLogger("trainspect.system")

DEFAULT_INTERVAL_S = 10.0
GIB = 2.0**30
MIB = 2.0**20


ENV = "TRAINSPECT_SYSTEM_METRICS"  # 0 / off / false, or an interval, when the argument is not


def interval_of(option: Any) -> float | None:
    """`system_metrics=` as an interval in seconds: None when off. Left at None, the
    environment decides (`$TRAINSPECT_SYSTEM_METRICS`: 0, off or false, or seconds),
    else it is on."""
    if option is None:
        raw = os.environ.get(ENV, "").strip().lower()
        if not raw:
            return DEFAULT_INTERVAL_S
        if raw in ("0", "off", "false", "no"):
            return None
        try:
            option = float(raw)
        except ValueError:
            raise TrainspectError(f"expected ${ENV} to be 0, off, false or an interval in "
                                  f"seconds, got {raw!r}") from None
    if option is True:
        return DEFAULT_INTERVAL_S
    if option is False:
        return None
    if isinstance(option, (int, float)) and option > 0:
        return float(option)
    raise TrainspectError(f"expected `system_metrics` to be True, False or an interval in "
                          f"seconds > 0, got {option!r}")


class HostSource:
    """CPU, memory, this process and the disks, through psutil; rates between two reads."""

    name = "psutil"

    def __init__(self, psutil: Any) -> None:
        self.psutil = psutil
        self.process = psutil.Process()
        psutil.cpu_percent(interval=None)  # the first call only starts the clock
        self._disk = self._disk_bytes()
        self._when = time.monotonic()

    def _disk_bytes(self) -> tuple[int, int] | None:
        counters = self.psutil.disk_io_counters()
        return None if counters is None else (counters.read_bytes, counters.write_bytes)

    def read(self) -> dict[str, float]:
        memory = self.psutil.virtual_memory()
        used = memory.total - memory.available
        out = {"cpu_pct": float(self.psutil.cpu_percent(interval=None)),
               "ram_used_gib": used / GIB, "ram_pct": 100.0 * used / memory.total,
               "proc_rss_gib": self.process.memory_info().rss / GIB}
        now, disk = time.monotonic(), self._disk_bytes()
        if disk is not None and self._disk is not None and now > self._when:
            out["disk_read_mib_s"], out["disk_write_mib_s"] = disk_rates(
                self._disk, disk, now - self._when)
        self._disk, self._when = disk, now
        return out


def disk_rates(before: tuple[int, int], after: tuple[int, int],
               seconds: float) -> tuple[float, float]:
    """Read and write MiB/s between two (read_bytes, write_bytes) counters (never < 0:
    counters that went back, a disk unplugged, read as no traffic)."""
    read = max(after[0] - before[0], 0) / MIB / seconds
    write = max(after[1] - before[1], 0) / MIB / seconds
    return read, write


class GpuSource:
    """Utilisation, memory, power and temperature of the visible GPUs, through NVML."""

    name = "nvml"

    def __init__(self, nvml: Any, visible: str | None = None) -> None:
        self.nvml = nvml
        nvml.nvmlInit()
        self.handles = visible_handles(nvml, visible)
        self._off: set[str] = set()

    def read(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for i, handle in enumerate(self.handles):
            for name, value in self._device(handle):
                out[f"gpu{i}/{name}"] = value
        return out

    def _device(self, handle: Any) -> list[tuple[str, float]]:
        nvml = self.nvml
        readers: dict[str, Callable[[], list[tuple[str, float]]]] = {
            "util": lambda: [("util_pct", float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu))],
            "memory": lambda: _memory(nvml.nvmlDeviceGetMemoryInfo(handle)),
            "power": lambda: [("power_w", nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0)],
            "temp": lambda: [("temp_c", float(nvml.nvmlDeviceGetTemperature(
                handle, getattr(nvml, "NVML_TEMPERATURE_GPU", 0))))],
        }
        out = []
        for what, reader in readers.items():
            if what in self._off:
                continue
            try:
                out += reader()
            except nvml.NVMLError as err:  # not supported on this board: stop asking
                self._off.add(what)
                log.info("trainspect: NVML gives no GPU %s here (%s); not sampled", what, err)
        return out

    def close(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except self.nvml.NVMLError as err:
            log.debug("trainspect: nvmlShutdown failed: %s", err)


def _memory(info: Any) -> list[tuple[str, float]]:
    return [("mem_used_gib", info.used / GIB), ("mem_pct", 100.0 * info.used / info.total)]


def visible_handles(nvml: Any, visible: str | None) -> list[Any]:
    """NVML handles of the GPUs CUDA numbers 0, 1, ... under `CUDA_VISIBLE_DEVICES`
    (indices or `GPU-` UUIDs); every GPU when it is unset."""
    if visible is None:
        return [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
    handles = []
    for item in (v.strip() for v in visible.split(",")):
        if not item:
            continue
        if item.isdigit():
            handles.append(nvml.nvmlDeviceGetHandleByIndex(int(item)))
        elif item.startswith(("GPU-", "MIG-")):
            handles.append(nvml.nvmlDeviceGetHandleByUUID(item))
        else:
            break  # CUDA stops at the first entry it cannot read
    return handles


def find_sources() -> list[Any]:
    """The sources this machine offers; a missing package is said once, at debug for NVML
    (most machines have no NVIDIA GPU) and at info for psutil."""
    sources: list[Any] = []
    try:
        import psutil
    except ImportError:
        log.info("trainspect: CPU, memory and disk metrics need psutil: "
                 "pip install 'trainspect[system]'")
    else:
        sources.append(HostSource(psutil))
    try:
        import pynvml
    except ImportError:
        log.debug("trainspect: GPU metrics need NVML: pip install 'trainspect[system]'")
        return sources
    try:
        sources.append(GpuSource(pynvml, os.environ.get("CUDA_VISIBLE_DEVICES")))
    except pynvml.NVMLError as err:  # no driver, no GPU: host metrics only
        log.debug("trainspect: no NVML here (%s); no GPU metrics", err)
    return sources


class SystemSampler:
    """The sampling thread: `start()`, `stop()`; `sample()` is one pass (tests call it)."""

    def __init__(self, emit: Callable[..., None], step_of: Callable[[], int],
                 interval_s: float, sources: list[Any] | None = None) -> None:
        self.emit = emit
        self.step_of = step_of
        self.interval_s = interval_s
        self.sources = sources
        self.failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> SystemSampler:
        self._thread = threading.Thread(target=self._loop, name="trainspect-system",
                                        daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        if self.sources is None:
            self.sources = find_sources()  # here, not in ts.init: imports and NVML take time
        while self.sources and not self._stop.wait(self.interval_s):
            self.emit(*self.sample())
        for source in self.sources or ():
            close = getattr(source, "close", None)
            if close is not None:
                close()

    def sample(self) -> list[Scalar]:
        """One reading of every source, as records at the run's current step."""
        step, now = self.step_of(), time.time()
        records = []
        for source in list(self.sources or ()):
            try:
                values = source.read()
            except Exception as err:  # a source that breaks is dropped; the others go on
                self.failures += 1
                self.sources.remove(source)
                log.warning("trainspect: step %d: system metrics from %s failed (%s: %s) and "
                            "are off for this run; the other sources go on", step, source.name,
                            type(err).__name__, err)
                continue
            records += [Scalar(f"sys/{key}", step, value, now) for key, value in values.items()]
        return records

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)


def start_sampler(run: Any, interval_s: float | None) -> SystemSampler | None:
    """The sampler for `run` (started), or None when switched off."""
    if interval_s is None:
        return None
    return SystemSampler(run.emit, lambda: run.step, interval_s).start()
