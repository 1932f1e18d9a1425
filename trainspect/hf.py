"""`from trainspect.hf import TrainspectCallback`: the Hugging Face Trainer / TRL callback.

Needs transformers (`pip install 'trainspect[hf]'`); see trainspect/integrations/hf.py.
"""

from trainspect.integrations.hf import TrainspectCallback

__all__ = ["TrainspectCallback"]
