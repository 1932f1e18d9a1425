"""`trainspect demo`: a real small LoRA fine-tune on the CPU, logged through trainspect."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    from trainspect.cli import add_dir_argument

    parser = sub.add_parser("demo", help="train a tiny Llama + LoRA on CPU with every probe on")
    parser.add_argument("--steps", type=int, default=None, help="training steps")
    parser.add_argument("--ui", action="store_true", help="serve the dashboard while training")
    parser.add_argument("--plant-faults", action="store_true",
                        help="add a leaking loss component, a frozen layer and a NaN burst")
    add_dir_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from trainspect.errors import TrainspectError

    try:
        from trainspect.demo import run_demo
    except ImportError as err:
        raise TrainspectError(
            f"the demo needs torch, transformers, peft and tokenizers ({err.name} is missing): "
            "pip install 'trainspect[demo]'"
        ) from err
    return run_demo(steps=args.steps, dir=args.dir, ui=args.ui, plant_faults=args.plant_faults)
