"""The CPU demo: a real small LoRA fine-tune of a tiny Llama on synthetic instructions.

`trainspect demo` calls `run_demo`. The pieces are usable on their own:

    from trainspect.demo import prepare, train, TrainConfig
    result = train(run, steps=200)          # run: a trainspect Run, or anything with .log

Modules: `patterns` (the five instruction patterns), `data` (training rows and the
held-out fixed eval, `fixed_eval.jsonl`), `tokenizer` (a BPE trained on the demo's
text), `batching` (labels and padding), `model` (tiny Llama + LoRA), `train` (the
loop), `generate` (greedy answers), `progress` (bars and lines on the terminal),
`session` (one demo run, printed) and `command` (the command: it says what is
loading before importing torch).

Names are imported on first use, so `trainspect.demo.data` and `patterns` load
without torch, and a missing optional dependency surfaces as the ImportError that
names it (`pip install 'trainspect[demo]'`).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "run_demo": "command",
    "DEFAULT_STEPS": "command",
    "train": "train",
    "prepare": "train",
    "forward": "train",
    "TrainConfig": "train",
    "DemoResult": "train",
    "DemoSetup": "train",
    "ProgressEvent": "train",
    "StepView": "train",
    "ModelConfig": "model",
    "build_model": "model",
    "build_tokenizer": "tokenizer",
    "Example": "data",
    "train_examples": "data",
    "fixed_eval_examples": "data",
    "fixed_eval_path": "data",
    "write_fixed_eval": "data",
    "read_jsonl": "data",
    "greedy_answer": "generate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'trainspect.demo' has no attribute {name!r}")
    return getattr(importlib.import_module(f"trainspect.demo.{module}"), name)
