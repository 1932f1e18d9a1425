"""`from trainspect.hf import TrainspectCallback`: the Hugging Face Trainer / TRL callback;
`use_fused_loss(model, run)`: the loss without logits, with every token statistic.

Needs transformers (`pip install 'trainspect[hf]'`); see trainspect/integrations/hf.py
and trainspect/integrations/fused_loss.py.
"""

from trainspect.integrations.fused_loss import use_fused_loss
from trainspect.integrations.hf import TrainspectCallback

__all__ = ["TrainspectCallback", "use_fused_loss"]
