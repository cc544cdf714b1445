"""Medical / retinal binary segmentation: vessel data and augmentation (:mod:`.data`), Dice / IoU / AUC / HD95
inside the field of view (:mod:`.metrics`), tiled or padded inference and the task (:mod:`.task`)."""

from .task import MedicalConfig, MedicalTask, evaluate_checkpoint, train

__all__ = ["MedicalConfig", "MedicalTask", "evaluate_checkpoint", "train"]
