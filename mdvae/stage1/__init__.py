"""Stage 1: the vector quantiser, the per-modality VQ-VAE, and the codec between media
(frames, power spectrograms) and the stage-2 features."""
