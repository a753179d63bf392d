"""Which feature extractors the platform embeds with."""

from cellrep_assets.training.assets import METHODS as TRAINED_METHODS

#: Untrained baselines of Lu et al. (2019, Fig. 2): a randomly initialised PCI encoder and
#: classic hand-designed features. Nothing to train, so no registry version: "untrained".
BASELINES = ("pci_random", "classic")

#: Every method with cell embeddings and protein features, trained ones first.
FEATURE_METHODS = (*TRAINED_METHODS, *BASELINES)

#: ``model_version`` recorded for the untrained baselines.
UNTRAINED = "untrained"
