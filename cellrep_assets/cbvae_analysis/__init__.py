"""Evaluation domain: the β-VAE analyses of Donovan-Maiye et al. 2022 (``cbvae_analysis``)."""

from cellrep_assets.cbvae_analysis.assets import TABLE, CBVAEAnalysisConfig, cbvae_analysis

cbvae_analysis_assets = [cbvae_analysis]

__all__ = ["TABLE", "CBVAEAnalysisConfig", "cbvae_analysis", "cbvae_analysis_assets"]
