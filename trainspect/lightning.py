"""`from trainspect.lightning import TrainspectCallback`: the Lightning callback.

Needs Lightning (`pip install 'trainspect[lightning]'`); see trainspect/integrations/lightning.py.
"""

from trainspect.integrations.lightning import TrainspectCallback

__all__ = ["TrainspectCallback"]
