"""Nucleus segmentation, single-cell crops, QC and splits.

>>> from cellrep_ml.segment import segment_nuclei, crop_cells, crop_partition
"""

from cellrep_ml.segment._metrics import match_f1
from cellrep_ml.segment._nuclei import segment_nuclei
from cellrep_ml.segment._splits import assign_splits
from cellrep_ml.segment.crops import DISTANCE_CHANNEL, CellCrops, CropOptions, crop_cells
from cellrep_ml.segment.pipeline import CropResult, crop_partition, process_field

__all__ = [
    "DISTANCE_CHANNEL",
    "CellCrops",
    "CropOptions",
    "CropResult",
    "assign_splits",
    "crop_cells",
    "crop_partition",
    "match_f1",
    "process_field",
    "segment_nuclei",
]
