"""From crops to feature tables: batched inference, normalisation, per-protein profiles.

>>> emb = embed_cells(model, store)                      # doctest: +SKIP
>>> emb = normalize(emb, cells, method="plate")          # doctest: +SKIP
>>> profiles = protein_profiles(cells, emb, normalization="plate")  # doctest: +SKIP

or, straight into the warehouse (``cellrep_ml.warehouse``)::

    embed_partition(model, "crops/ds/hek293", model_name="pci", model_version="3")
    profile_dataset(model_name="pci", model_version="3", dataset="ds")

The inference helpers import torch on first use, so that table code (the warehouse,
``cellrep sql``, export) can import this package without loading torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from cellrep_ml.embed._aggregate import PROFILE_STATS, protein_profiles
from cellrep_ml.embed._normalize import MAD_SCALE, NORMALIZATIONS, normalize
from cellrep_ml.embed._vectors import vector_series, vectors_of

__all__ = [
    "MAD_SCALE",
    "NORMALIZATIONS",
    "PRECISIONS",
    "PROFILE_STATS",
    "EmbedSummary",
    "ProfileSummary",
    "best_device",
    "classic_embeddings",
    "embed_cells",
    "embed_partition",
    "input_shape",
    "normalize",
    "profile_dataset",
    "protein_profiles",
    "write_partition_embeddings",
    "vector_series",
    "vectors_of",
]

# name -> module, imported (with torch) on first access
_LAZY = {
    "PRECISIONS": "cellrep_ml.embed._infer",
    "best_device": "cellrep_ml.embed._infer",
    "embed_cells": "cellrep_ml.embed._infer",
    "input_shape": "cellrep_ml.embed._infer",
    "EmbedSummary": "cellrep_ml.embed._pipeline",
    "ProfileSummary": "cellrep_ml.embed._pipeline",
    "embed_partition": "cellrep_ml.embed._pipeline",
    "profile_dataset": "cellrep_ml.embed._pipeline",
    "write_partition_embeddings": "cellrep_ml.embed._pipeline",
    "classic_embeddings": "cellrep_ml.embed._classic",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
