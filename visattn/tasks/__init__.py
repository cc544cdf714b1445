"""The tasks ``tools/train.py`` and ``tools/eval.py`` run on the engine, one package each (config and options, data,
model wrappers, losses, metrics, its :class:`~visattn.engine.task.Task`), and what they share (:mod:`.images`).

Importing this package registers every task with :func:`visattn.engine.task.register_task`.
"""

from .classification import ClassificationTask
from .medical import MedicalTask
from .reid import ReIDTask

__all__ = ["ClassificationTask", "MedicalTask", "ReIDTask"]
