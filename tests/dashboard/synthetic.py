"""Demo-like synthetic runs for the dashboard's tests and screenshots.

Written through the public API (`ts.init`, `run.log`, `run.emit`), with every kind of
record a panel shows: token metrics with draft positions, calibration bins, fixed
eval with a pattern x length matrix, LoRA layers, loss composition, gradients,
hidden states, throughput, samples and alerts. `HOSTILE` strings go wherever text
reaches the page, to prove it stays text.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import trainspect as ts
from trainspect import Alert, Matrix, SampleRow

HOSTILE = "<img src=x onerror=\"window.__xss=1\"><script>window.__xss=1</script>"
PATTERNS = ["factual", "reasoning", "creative", "coding", "math"]
LENGTHS = ["0-100", "100-300", "300-500", "500-1000"]
LAYERS = 8


def make_run(root: Path | str, project: str = "demo", name: str = "lora-demo",
             steps: int = 300, every: int = 10, hostile: bool = False, seed: int = 0,
             finish: bool = True, rate: float = 1.0) -> str:
    """Write a finished run under `root` (`rate` scales how fast it learns); returns its
    `project/run_id`."""
    rng = random.Random(seed)
    evil = HOSTILE if hostile else ""
    run = ts.init(project=project, name=name + evil, dir=root, alerts=False,
                  system_metrics=False,  # planted below instead, so the tests know them
                  config={"lr": 2e-4, "rank": 16, "note": "synthetic" + evil})
    for step in range(every, steps + 1, every):
        t = rate * step / steps
        acc = 0.35 + 0.5 * (1 - math.exp(-3 * t)) + rng.uniform(-0.02, 0.02)
        ce = 2.5 * math.exp(-2 * t) + 0.4 + rng.uniform(-0.05, 0.05)
        metrics = {
            "loss": ce, "lr": 2e-4 * min(1.0, 5 * t),
            "text/acc": acc, "text/conf": acc + 0.05, "text/target_conf": acc - 0.05,
            "text/conf_gap": -0.1, "text/entropy": 2.0 - 1.2 * t, "text/ce": ce,
            "text/ce_ema": 2.5 * math.exp(-2 * t) + 0.4, "text/ece": 0.2 - 0.1 * t,
            "text/confident_wrong": 0.2 - 0.1 * t, "text/supervised_tokens": 4096.0,
            "draft/accept_len": 1.0 + 2 * t,
            "loss/kd/raw": ce, "loss/kd/weight": 0.7, "loss/kd/scaled": 0.7 * ce,
            "loss/feature/raw": 40.0, "loss/feature/weight": 0.0,
            "loss/feature/scaled": 4.0,  # planted: weight 0, yet it adds to the total
            "loss/total": 0.7 * ce + 4.0, "loss/sum_gap": 0.0,
            "grad/norm": 1.0 + rng.random(), "grad/zero_frac": 0.01,
            "speed/tokens_per_s": 5000 + rng.uniform(-200, 200), "speed/step_s": 0.8,
            "mem/peak_gb": 11.5,
            "sys/cpu_pct": 40 + 20 * rng.random(), "sys/ram_used_gib": 20.0 + t,
            "sys/proc_rss_gib": 6.0 + t, "sys/disk_read_mib_s": 5 * rng.random(),
            "sys/disk_write_mib_s": 2.0,
        }
        for gpu in range(2):
            metrics[f"sys/gpu{gpu}/util_pct"] = 90.0 - 10 * gpu + rng.uniform(-5, 5)
            metrics[f"sys/gpu{gpu}/mem_used_gib"] = 60.0 + gpu
            metrics[f"sys/gpu{gpu}/power_w"] = 550.0 - 20 * gpu
            metrics[f"sys/gpu{gpu}/temp_c"] = 64.0 + gpu
        for p in range(4):
            metrics[f"draft/pos{p}/acc"] = acc * (0.9 - 0.15 * p)
            metrics[f"draft/pos{p}/conf"] = acc * (0.95 - 0.1 * p)
        for layer in range(LAYERS):
            metrics[f"grad/layer{layer}/norm"] = 0.1 * (layer + 1) * (1 + 0.1 * rng.random())
            metrics[f"hidden/layer{layer}/mean"] = 0.01 * layer
            metrics[f"hidden/layer{layer}/std"] = 1.0 + 0.1 * layer
            metrics[f"hidden/layer{layer}/absmax"] = 5.0 + layer
            metrics[f"hidden/layer{layer}/nonfinite"] = 0.0
        if hostile:
            metrics["custom/" + evil] = t
        run.log(metrics, step=step)
        if step % 50 == 0:
            _eval(run, step, t, rng)
        if step % 100 == 0:
            _samples(run, step, t, evil)
    run.emit(Alert(step=steps, rule="eval_plateau", level="warning",
                   message=f"EM flat for 3 evals{evil}",
                   action=f"Stop and use checkpoint-{max(steps - 50, every)}{evil}"))
    if finish:
        run.finish()
    else:
        run.flush()
    return f"{project}/{run.id}"


def _eval(run: ts.Run, step: int, t: float, rng: random.Random) -> None:
    em = min(0.82, 0.4 + 0.6 * t)
    run.log({"eval/em": em, "eval/ce": 1.2 - 0.5 * t, "eval/ece": 0.16}, step=step)
    bins = []
    for b in range(10):
        count = 100 + 20 * b
        conf = (b + 0.5) / 10
        bins.append([count, conf * count, min(1.0, conf * 0.8 + 0.1) * count])
    run.emit(Matrix("text/calibration", step, bins, [str(b) for b in range(10)],
                    ["count", "sum_conf", "sum_correct"]))
    cells = [[min(1.0, em * (1.1 - 0.1 * i) * (1.05 - 0.1 * j)) for j in range(len(LENGTHS))]
             for i in range(len(PATTERNS))]
    cells[1][3] = math.nan  # no long reasoning prompts in the eval set
    run.emit(Matrix("eval/pattern_length", step, cells, PATTERNS, LENGTHS))
    lora = [[t * (1 + (3 if 4 <= i <= 6 else 0)) * s for s in (0.5, 0.2, 0.3)]
            for i in range(LAYERS)]
    run.emit(Matrix("lora/layers", step, lora, [str(i) for i in range(LAYERS)],
                    ["qkv", "o", "mlp"]))


def _samples(run: ts.Run, step: int, t: float, evil: str) -> None:
    words = ["The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog"]
    for i in range(3):
        positions = []
        for j, w in enumerate(words):
            right = (j + i) % (3 if t < 0.5 else 5) != 0  # fewer misses later
            positions.append({"pred": w if right else " cat" + evil[:12], "label": w,
                              "pred_prob": 0.9 if right else 0.7,
                              "label_prob": 0.9 if right else 0.1, "match": right})
        run.emit(SampleRow(step=step, stream="text", group=0, sample_id=f"sample-{i}",
                           context="Q: what jumps over the dog?" + evil, positions=positions))
