"""Model zoo: the four published methods and the baselines, one file each.

``build(method, config="paper"|"tiny", protein_channels=..., marker_channels=..., **overrides)``
is the single entry point; ``list_models()`` names what is registered.
"""

from cellrep_ml.models._registry import build, list_models, register_model

__all__ = ["build", "list_models", "register_model"]
