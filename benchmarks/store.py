"""The store against trackio and MLflow, side by side in one process.

For each tracker: latency of one `log` call of 20 scalars on the training thread
(median, p99), sustained points/s until durable, time until durable after the loop,
time to read one 20,000-point series back, and bytes on disk. For trainspect also a
1,000,000-point series downsampled to 2,000 buckets.

    python benchmarks/store.py [--steps 20000] [--out results.json]

trackio and MLflow come from the `bench` extra; a tracker that is not installed is
reported as such and skipped.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

KEYS = [f"metric_{i:02d}" for i in range(20)]


def _values(step: int) -> dict[str, float]:
    return {k: step * 1e-3 + i for i, k in enumerate(KEYS)}


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _time_logs(log_one, steps: int) -> tuple[list[float], float]:
    """Per-call latencies (s) of `log_one(step, values)` and the loop's wall time."""
    latencies = []
    clock = time.perf_counter
    values = [_values(s) for s in range(steps)]  # built outside the timed region
    start = clock()
    for step in range(steps):
        t0 = clock()
        log_one(step, values[step])
        latencies.append(clock() - t0)
    return latencies, clock() - start


class Trainspect:
    name = "trainspect"

    def run(self, root: Path, steps: int) -> dict:
        import trainspect as ts

        run = ts.init(project="bench", dir=root, log_every=100)
        latencies, loop_s = _time_logs(lambda s, v: run.log(v, step=s), steps)
        t0 = time.perf_counter()
        run.finish()
        durable_s = time.perf_counter() - t0
        view = ts.open(root).run(run.id)
        read_s = _best(lambda: view.series(KEYS[0]), expect=steps)
        return _result(latencies, loop_s, durable_s, read_s, steps, _dir_bytes(root))

    def downsample(self, root: Path, points: int) -> dict:
        import trainspect as ts

        run = ts.init(project="big", dir=root, log_every=1000)
        t0 = time.perf_counter()
        for step in range(points):
            run.log({"loss": 1.0 / (step + 1)}, step=step)
        run.finish()
        write_s = time.perf_counter() - t0
        view = ts.open(root).run(run.id)
        seconds = _best(lambda: view.series("loss", buckets=2000), expect=2000)
        full = _best(lambda: view.series("loss"), expect=points, repeat=3)
        return {"points": points, "write_s": write_s, "downsample_s": seconds,
                "full_read_s": full}


class Trackio:
    name = "trackio"

    def run(self, root: Path, steps: int) -> dict:
        os.environ["TRACKIO_DIR"] = str(root)
        import trackio

        trackio.init(project="bench", name="r1", embed=False)
        latencies, loop_s = _time_logs(lambda s, v: trackio.log(v, step=s), steps)
        t0 = time.perf_counter()
        trackio.finish()
        durable_s = time.perf_counter() - t0
        read_s = _best(lambda: _trackio_read(root), expect=steps, repeat=3)
        return _result(latencies, loop_s, durable_s, read_s, steps, _dir_bytes(root))


def _trackio_read(root: Path) -> list:
    from trackio.sqlite_storage import SQLiteStorage

    logs = SQLiteStorage.get_logs(project="bench", run="r1")
    return [(r["step"], r[KEYS[0]]) for r in logs if KEYS[0] in r]


class MLflow:
    name = "mlflow"

    def run(self, root: Path, steps: int) -> dict:
        import mlflow
        from mlflow.tracking import MlflowClient

        mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
        mlflow.set_experiment("bench")
        active = mlflow.start_run()
        latencies, loop_s = _time_logs(
            lambda s, v: mlflow.log_metrics(v, step=s, synchronous=False), steps)
        t0 = time.perf_counter()
        mlflow.end_run()  # waits for the async queue
        durable_s = time.perf_counter() - t0
        client = MlflowClient()
        read_s = _best(lambda: client.get_metric_history(active.info.run_id, KEYS[0]),
                       expect=steps, repeat=3)
        return _result(latencies, loop_s, durable_s, read_s, steps, _dir_bytes(root))


def _best(read, expect: int, repeat: int = 7) -> float:
    """Fastest of `repeat` reads (after one warm-up), checking the read is complete."""
    got = read()
    if len(got) != expect:
        raise RuntimeError(f"read back {len(got)} points, expected {expect}")
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        read()
        times.append(time.perf_counter() - t0)
    return min(times)


def _result(latencies, loop_s, durable_s, read_s, steps, size) -> dict:
    latencies = sorted(latencies)
    points = steps * len(KEYS)
    return {
        "log_median_us": statistics.median(latencies) * 1e6,
        "log_p99_us": latencies[int(0.99 * (len(latencies) - 1))] * 1e6,
        "points_per_s": points / (loop_s + durable_s),
        "durable_after_loop_s": durable_s,
        "read_series_ms": read_s * 1e3,
        "bytes_on_disk": size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000, help="log calls per tracker")
    parser.add_argument("--big", type=int, default=1_000_000, help="points for downsampling")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--trackers", default="trainspect,trackio,mlflow",
                        help="comma-separated subset to run")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # trackers' chatter stays out of the table

    results, skipped = {}, {}
    wanted = args.trackers.split(",")
    for tracker in (t for t in (Trainspect(), Trackio(), MLflow()) if t.name in wanted):
        root = Path(tempfile.mkdtemp(prefix=f"bench-{tracker.name}-"))
        try:
            results[tracker.name] = tracker.run(root, args.steps)
        except ImportError as err:
            skipped[tracker.name] = f"not installed ({err.name})"
        finally:
            shutil.rmtree(root, ignore_errors=True)
    root = Path(tempfile.mkdtemp(prefix="bench-big-"))
    big = Trainspect().downsample(root, args.big)
    shutil.rmtree(root, ignore_errors=True)

    print(f"# {args.steps} log calls x {len(KEYS)} scalars; {platform.processor() or ''}"
          f" {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    columns = [("log median (us)", "log_median_us", "{:.2f}"), ("log p99 (us)", "log_p99_us",
               "{:.2f}"), ("points/s", "points_per_s", "{:,.0f}"),
               ("durable after loop (s)", "durable_after_loop_s", "{:.3f}"),
               ("read 20k series (ms)", "read_series_ms", "{:.2f}"),
               ("bytes on disk", "bytes_on_disk", "{:,}")]
    names = list(results)
    print("| metric | " + " | ".join(names) + " | " + " | ".join(
        f"{n} / trainspect" for n in names[1:]) + " |")
    print("|---" * (1 + 2 * len(names) - 1) + "|")
    base = results.get("trainspect", {})
    for title, key, fmt in columns:
        cells = [fmt.format(results[n][key]) for n in names]
        ratios = [f"{results[n][key] / base[key]:.1f}x" for n in names[1:]]
        print(f"| {title} | " + " | ".join(cells + ratios) + " |")
    for name, why in skipped.items():
        print(f"{name}: skipped, {why}")
    print(f"\ntrainspect, one series of {big['points']:,} points: written in "
          f"{big['write_s']:.2f} s, downsampled to 2,000 buckets in "
          f"{big['downsample_s'] * 1e3:.1f} ms, read in full in {big['full_read_s'] * 1e3:.1f} ms")
    if args.out:
        Path(args.out).write_text(json.dumps({"results": results, "skipped": skipped,
                                              "big": big}, indent=2))


if __name__ == "__main__":
    main()
