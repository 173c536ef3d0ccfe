"""VQ-MDVAE: the multimodal dynamical VAE for audiovisual speech, inside per-modality VQ-VAEs."""

__version__ = "0.1.0"
