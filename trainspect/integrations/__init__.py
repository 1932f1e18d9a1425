"""Trainers and tools trainspect plugs into: one module each, imported only when used.

- `hf.py`: the Hugging Face Trainer / TRL callback (`trainspect.hf.TrainspectCallback`);
- `lightning.py`: the Lightning callback (`trainspect.lightning.TrainspectCallback`);
- `capture.py`: the forward hooks both use to take logits and labels from the model;
- `callbacks.py`: argument checks and fixed-eval handling both callbacks share;
- `exporters/`: mirrors of the run in Weights & Biases, TensorBoard and MLflow.

Plain torchrun and Accelerate loops need no module: docs/integrations.md has the recipes.
"""
