"""One training engine for every method, and the out-of-process entry point.

``python -m cellrep_ml.train --method M --config paper|tiny --crops PATH --out DIR`` runs
:func:`train` the same way on a laptop and in a Kubernetes pod; see ``--help``.

Examples
--------
>>> from cellrep_ml.train import TrainConfig, train
>>> result = train(TrainConfig(method="pci", config="tiny", crops=["crops/ds/line1"],
...                            out="runs/pci"))  # doctest: +SKIP
>>> result.run_id, result.model_version  # doctest: +SKIP
"""

from cellrep_ml.train.data import CropDataset, TrainingData, load_training_data
from cellrep_ml.train.engine import TrainConfig, TrainResult, select_device, train, train_lr_grid
from cellrep_ml.train.export import ConditionalFeatureExtractor, FeatureExtractor
from cellrep_ml.train.tasks import Task, get_task, list_tasks, register_task

__all__ = [
    "ConditionalFeatureExtractor",
    "CropDataset",
    "FeatureExtractor",
    "Task",
    "TrainConfig",
    "TrainResult",
    "TrainingData",
    "get_task",
    "list_tasks",
    "load_training_data",
    "register_task",
    "select_device",
    "train",
    "train_lr_grid",
]
