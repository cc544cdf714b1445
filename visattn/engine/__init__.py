"""One training engine (:mod:`.fit`) and its tasks (classification, medical segmentation, person re-id), the model
builder, checkpoints and run logging for tools/train.py and eval.py; :func:`evaluate_ranking` scores re-id
retrieval."""

from .reid_metrics import evaluate_ranking

__all__ = ["evaluate_ranking"]
