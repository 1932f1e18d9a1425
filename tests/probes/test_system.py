"""System metrics: sampled on a thread of their own into the run's store, read against
/proc (an independent reference), GPUs through an NVML stand-in, off when asked."""

from __future__ import annotations

import logging
import threading
import time
from types import SimpleNamespace

import psutil
import pytest

import trainspect as ts
from trainspect.errors import TrainspectError
from trainspect.probes.system import (
    GpuSource,
    HostSource,
    SystemSampler,
    disk_rates,
    interval_of,
    visible_handles,
)

GIB = 2.0**30


def meminfo_kib() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            name, value = line.split(":")
            out[name] = int(value.split()[0])
    return out


def rss_gib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / GIB
    raise AssertionError("no VmRSS")


def test_a_run_samples_the_host_off_the_training_thread(runs):
    with ts.init(project="sys", system_metrics=0.05) as run:
        thread = next(t for t in threading.enumerate() if t.name == "trainspect-system")
        assert thread is not threading.current_thread() and thread.daemon
        for step in range(1, 6):
            run.log({"loss": 1.0 / step}, step=step)
            time.sleep(0.08)
        ram_kib = meminfo_kib()
        rss = rss_gib()
    assert not thread.is_alive()  # finish stopped it
    view = ts.open(runs).run(run.id)
    keys = set(view.keys())
    assert {"sys/cpu_pct", "sys/ram_used_gib", "sys/ram_pct", "sys/proc_rss_gib"} <= keys
    assert all(0.0 <= v <= 100.0 for _, v in view.series("sys/cpu_pct"))
    used = (ram_kib["MemTotal"] - ram_kib["MemAvailable"]) * 1024 / GIB
    assert view.series("sys/ram_used_gib")[-1][1] == pytest.approx(used, abs=0.5)
    assert view.series("sys/ram_pct")[-1][1] == pytest.approx(
        100.0 * used / (ram_kib["MemTotal"] * 1024 / GIB), abs=2.0)
    assert view.series("sys/proc_rss_gib")[-1][1] == pytest.approx(rss, abs=0.2)
    assert 1 <= view.series("sys/cpu_pct")[-1][0] <= 5  # recorded at the run's step


def test_switched_off_by_the_init_option(runs):
    def samplers() -> int:
        return sum(t.name == "trainspect-system" for t in threading.enumerate())

    before = samplers()
    with ts.init(project="sys", system_metrics=False) as run:
        assert run._system is None and samplers() == before
        run.log({"loss": 1.0}, step=1)
        time.sleep(0.1)
    assert not [k for k in ts.open(runs).run(run.id).keys() if k.startswith("sys/")]
    with pytest.raises(TrainspectError, match="`system_metrics`"):
        ts.init(project="sys", system_metrics=-1)
    assert interval_of(True) == 10.0 and interval_of(2) == 2.0 and interval_of(False) is None


def test_the_environment_decides_when_the_argument_is_left_out(runs, monkeypatch):
    assert interval_of(None) is None  # the runs fixture sets it off for every test
    for raw, expected in (("", 10.0), ("0", None), ("false", None), ("2.5", 2.5)):
        monkeypatch.setenv("TRAINSPECT_SYSTEM_METRICS", raw)
        assert interval_of(None) == expected, raw
    assert interval_of(False) is None and interval_of(1.0) == 1.0  # the argument wins
    monkeypatch.setenv("TRAINSPECT_SYSTEM_METRICS", "sometimes")
    with pytest.raises(TrainspectError, match=r"\$TRAINSPECT_SYSTEM_METRICS"):
        ts.init(project="sys")


def test_disk_rates_between_two_counters():
    mib = 2**20
    assert disk_rates((0, 10 * mib), (4 * mib, 16 * mib), 2.0) == (2.0, 3.0)
    assert disk_rates((9 * mib, 0), (1 * mib, 0), 1.0) == (0.0, 0.0)  # a counter went back


def test_host_source_rates_come_from_psutil_counters():
    source = HostSource(psutil)
    before = source._disk
    time.sleep(0.05)
    values = source.read()
    assert set(values) >= {"cpu_pct", "ram_used_gib", "ram_pct", "proc_rss_gib"}
    if before is not None:
        assert values["disk_read_mib_s"] >= 0.0 and values["disk_write_mib_s"] >= 0.0


class FakeNvml:
    """The part of pynvml the sampler calls, over two planted boards."""

    class NVMLError(Exception):
        pass

    NVML_TEMPERATURE_GPU = 0

    def __init__(self, power_supported: bool = True) -> None:
        self.power_supported = power_supported
        self.boards = {0: (37, 2 * GIB, 8 * GIB, 150_000, 61),
                       1: (90, 6 * GIB, 8 * GIB, 300_500, 75)}
        self.shut = False

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        self.shut = True

    def nvmlDeviceGetCount(self):
        return len(self.boards)

    def nvmlDeviceGetHandleByIndex(self, i):
        if i not in self.boards:
            raise self.NVMLError(f"no GPU {i}")
        return i

    def nvmlDeviceGetHandleByUUID(self, uuid):
        return {"GPU-b": 1}[uuid]

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=self.boards[h][0], memory=0)

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(used=self.boards[h][1], total=self.boards[h][2])

    def nvmlDeviceGetPowerUsage(self, h):
        if not self.power_supported:
            raise self.NVMLError("Not Supported")
        return self.boards[h][3]

    def nvmlDeviceGetTemperature(self, h, sensor):
        return self.boards[h][4]


def test_gpu_source_reads_every_visible_board(caplog):
    nvml = FakeNvml()
    values = GpuSource(nvml).read()
    assert values == {
        "gpu0/util_pct": 37.0, "gpu0/mem_used_gib": 2.0, "gpu0/mem_pct": 25.0,
        "gpu0/power_w": 150.0, "gpu0/temp_c": 61.0,
        "gpu1/util_pct": 90.0, "gpu1/mem_used_gib": 6.0, "gpu1/mem_pct": 75.0,
        "gpu1/power_w": 300.5, "gpu1/temp_c": 75.0,
    }
    # CUDA_VISIBLE_DEVICES=1: CUDA's device 0 is board 1
    assert GpuSource(nvml, "1").read()["gpu0/util_pct"] == 90.0
    assert visible_handles(nvml, "GPU-b,0,junk,1") == [1, 0]  # CUDA stops at "junk"
    with caplog.at_level(logging.INFO, logger="trainspect.system"):
        source = GpuSource(FakeNvml(power_supported=False))
        first, second = source.read(), source.read()
    assert "gpu0/power_w" not in first and first["gpu1/temp_c"] == 75.0 and second == first
    assert sum("power" in r.getMessage() for r in caplog.records) == 1  # said once


def test_a_failing_source_is_dropped_and_the_others_go_on(caplog):
    class Broken:
        name = "broken"

        def read(self):
            raise OSError("sensor gone")

    emitted = []
    sampler = SystemSampler(emitted.extend, lambda: 7, 60.0, [Broken(), GpuSource(FakeNvml())])
    with caplog.at_level(logging.WARNING, logger="trainspect.system"):
        records = sampler.sample()
        again = sampler.sample()
    assert {r.key for r in records} == {r.key for r in again} and len(records) == 10
    assert all(r.step == 7 and r.key.startswith("sys/gpu") for r in records)
    assert sampler.failures == 1 and len(sampler.sources) == 1
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "step 7" in warning and "broken" in warning and "sensor gone" in warning
