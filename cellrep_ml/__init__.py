"""cellrep_ml — the science library of cellrep.

Pure functions and torch modules: screen I/O, simulation, reference annotations,
segmentation and crops, models, training, embedding and evaluation. It never imports
Dagster; the orchestration lives in ``cellrep_assets``.
"""

__version__ = "0.1.0"
