"""The demo's session: prepare, open a run, train with progress bars, say where it went.

Imported by `command.run_demo` once it has said what it is loading: this module
imports torch, transformers and peft.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
import time

import trainspect as ts
from trainspect.demo.data import fixed_eval_path
from trainspect.demo.generate import greedy_answer
from trainspect.demo.model import count_parameters
from trainspect.demo.progress import Console
from trainspect.demo.train import DemoResult, TrainConfig, prepare, train

PROJECT = "demo"
SAMPLE_IDS = ("eval-0001", "eval-0004", "eval-0008")  # one reasoning, math and coding row


def _start_ui(root: str, run_id: str) -> subprocess.Popen | None:
    """Serve the dashboard in a child process, or say why not and return None. The URL
    is printed here, before the bars start: the child's own banner would cut them."""
    if importlib.util.find_spec("uvicorn") is None:
        print("trainspect: the dashboard needs pip install 'trainspect[ui]'; training "
              "without --ui")
        return None
    from trainspect.dashboard.server import DEFAULT_HOST, DEFAULT_PORT

    print(f"  dashboard: http://{DEFAULT_HOST}:{DEFAULT_PORT}/#run={run_id}  "
          f"(trainspect ui --dir {root})", flush=True)
    return subprocess.Popen([sys.executable, "-m", "trainspect", "ui", "--dir", root],
                            stdout=subprocess.DEVNULL)


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


def run(steps: int, dir: str | None, ui: bool, seed: int, plant_faults: bool) -> int:
    """Train the demo model for `steps` into a new run and print what it learned; exit code."""
    config = TrainConfig()
    started = time.perf_counter()
    setup = prepare(config, seed)
    trainable, total = count_parameters(setup.model)
    _say(f"  tiny Llama ({total:,} parameters; {trainable:,} trained: LoRA r="
         f"{config.model.lora_r} + tied embeddings), {len(setup.train_rows):,} synthetic "
         f"instructions in 5 patterns, {steps} steps (prepared in "
         f"{time.perf_counter() - started:.1f}s)")
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
    _say(f"  run {run.id}: {run.path}")
    dashboard = _start_ui(str(run.root), run.id) if ui else None
    try:
        with run, Console(sys.stdout, steps) as console:
            result = train(run, steps=steps, seed=seed, config=config, setup=setup,
                           progress=console.step, progress_every=console.every,
                           eval_every=max(steps // 4, 1), eval_progress=console.eval_progress,
                           eval_done=console.eval_done, plant_faults=plant_faults)
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


def _say(text: str) -> None:
    print(text, flush=True)
