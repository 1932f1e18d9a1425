"""`trainspect demo`: prepare, open a run, train with a progress line, say where it went.

This is a command, so it prints; the training itself (`train.py`) only logs to the
run and calls the progress callback given here.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
import time
from typing import TextIO

from trainspect.demo.data import fixed_eval_path
from trainspect.demo.generate import greedy_answer
from trainspect.demo.model import count_parameters
from trainspect.demo.train import DemoResult, ProgressEvent, TrainConfig, prepare, train
from trainspect.errors import TrainspectError

DEFAULT_STEPS = 700  # about 2 minutes on 2 idle CPU cores with every probe on (~6 steps/s)
PROJECT = "demo"
SAMPLE_IDS = ("eval-0001", "eval-0004", "eval-0008")  # one reasoning, math and coding row


class ProgressLine:
    """Prints progress: one self-rewriting line on a terminal, else a line per call."""

    def __init__(self, out: TextIO, bar_width: int = 24) -> None:
        self.out = out
        self.tty = out.isatty()
        self.bar_width = bar_width

    def __call__(self, event: ProgressEvent) -> None:
        done = (event.step + 1) / event.steps
        filled = round(done * self.bar_width)
        bar = "#" * filled + "." * (self.bar_width - filled)
        line = (
            f"step {event.step + 1:>5}/{event.steps} [{bar}] loss {event.loss:6.3f}  "
            f"acc {event.acc:5.3f}  lr {event.lr:.1e}  {event.elapsed_s:5.1f}s  "
            f"{event.tokens_per_s:,.0f} tok/s"
        )
        last = event.step + 1 == event.steps
        if self.tty:
            self.out.write("\r" + line + ("\n" if last else ""))
        else:
            self.out.write(line + "\n")
        self.out.flush()


class EvalProgress:
    """Prints the fixed eval's progress: `eval 40/80` (rewritten in place on a terminal)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def __call__(self, done: int, total: int) -> None:
        if self.out.isatty():
            self.out.write(f"\r  fixed eval {done}/{total}" + ("\n" if done == total else ""))
        elif done == total:
            self.out.write(f"  fixed eval: {total} examples\n")
        self.out.flush()


def _start_ui(root: str) -> subprocess.Popen | None:
    """Serve the dashboard in a child process, or say why not and return None."""
    if importlib.util.find_spec("trainspect.dashboard") is None:
        print("trainspect: the dashboard is not in this install; training without --ui")
        return None
    print(f"trainspect: serving the dashboard (trainspect ui --dir {root})")
    return subprocess.Popen([sys.executable, "-m", "trainspect", "ui", "--dir", root])


def _summary(result: DemoResult, run_id: str, path: str, dir: str | None) -> str:
    """What the run did and how to look at it, as printed after training."""
    setup = result.setup
    rows = {row.id: row for row in setup.fixed_eval_rows}
    lines = [
        "",
        f"trained {result.steps} steps in {result.wall_s:.1f}s "
        f"({result.steps_per_s:.2f} steps/s, {result.tokens_per_s:,.0f} tokens/s)",
        f"  loss      {result.start_loss:.3f} -> {result.end_loss:.3f}"
        "   (step 0 -> mean of the last 10 steps)",
        f"  token acc {result.start_acc:.3f} -> {result.end_acc:.3f}"
        "   (argmax == label on response tokens)",
        "",
        "what it answers now (held-out fixed-eval prompts):",
    ]
    for row_id in SAMPLE_IDS:
        row = rows[row_id]
        got = greedy_answer(setup.model, setup.tokenizer, row.prompt)
        mark = "ok  " if got == row.response else "miss"
        lines += [f"  [{mark}] {row.pattern}: {row.prompt}",
                  "         " + got.replace("\n", "\n         ")]
    where = "" if dir is None else f" --dir {dir}"
    lines += [
        "",
        f"run {run_id} stored in {path}",
        f"  trainspect show {run_id}{where}    a summary in the terminal",
        f"  trainspect ui{where}    the dashboard",
        f"  fixed-eval rows: {fixed_eval_path()}",
    ]
    return "\n".join(lines)


def run_demo(steps: int | None = None, dir: str | None = None, ui: bool = False,
             seed: int = 0, plant_faults: bool = False) -> int:
    """Train the demo model for `steps` (default `DEFAULT_STEPS`) into a new run; exit code."""
    import trainspect as ts

    steps = DEFAULT_STEPS if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise TrainspectError(f"expected `--steps` to be a positive int, got {steps!r}")
    config = TrainConfig()
    started = time.perf_counter()
    setup = prepare(config, seed)
    trainable, total = count_parameters(setup.model)
    print(
        f"trainspect demo: tiny Llama ({total:,} parameters; {trainable:,} trained: "
        f"LoRA r={config.model.lora_r} + tied embeddings), {len(setup.train_rows):,} synthetic "
        f"instructions in 5 patterns, {steps} steps (prepared in "
        f"{time.perf_counter() - started:.1f}s)"
    )
    run_config = {
        "steps": steps,
        "seed": seed,
        **dataclasses.asdict(config),
        "trainable_params": trainable,
        "total_params": total,
        "fixed_eval": str(fixed_eval_path()),
    }
    run_config["plant_faults"] = plant_faults
    run_config["warmup_steps"] = min(config.warmup_steps, max(1, steps // 10))
    run = ts.init(project=PROJECT, name="planted-faults" if plant_faults else None,
                  config=run_config, dir=dir, tokenizer=setup.tokenizer, log_every=10,
                  samples_every=max(steps // 6, 1), num_samples=3)
    root = str(run.root)
    dashboard = _start_ui(root) if ui else None
    progress = ProgressLine(sys.stdout)
    try:
        with run:
            result = train(run, steps=steps, seed=seed, config=config, setup=setup,
                           progress=progress, progress_every=10 if progress.tty else 50,
                           eval_every=max(steps // 4, 1), eval_progress=EvalProgress(sys.stdout),
                           plant_faults=plant_faults)
    except KeyboardInterrupt:
        print(f"\ninterrupted; what was logged is in {run.path}")
        return 130
    print(_summary(result, run.id, str(run.path), dir))
    if dashboard is not None:
        print("dashboard running; Ctrl-C to stop it")
        try:
            dashboard.wait()
        except KeyboardInterrupt:
            dashboard.terminate()
            dashboard.wait()
    return 0
