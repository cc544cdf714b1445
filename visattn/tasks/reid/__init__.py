"""Person re-identification: Market-1501-style data and PK sampling (:mod:`.data`), the BNNeck model and its losses
(:mod:`.model`), mAP / CMC / mINP ranking (:mod:`.metrics`) and the task (:mod:`.task`)."""

from .metrics import evaluate_ranking
from .task import ReIDConfig, ReIDTask, evaluate_checkpoint, train

__all__ = ["ReIDConfig", "ReIDTask", "evaluate_checkpoint", "evaluate_ranking", "train"]
