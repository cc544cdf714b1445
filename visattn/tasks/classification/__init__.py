"""Image classification: timm's data pipeline and losses, distillation and training phases (:mod:`.distill`)."""

from .task import ClassificationConfig, ClassificationTask, evaluate_checkpoint, train

__all__ = ["ClassificationConfig", "ClassificationTask", "evaluate_checkpoint", "train"]
