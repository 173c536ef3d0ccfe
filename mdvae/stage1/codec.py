"""Media <-> stage-2 features through the two frozen VQ-VAEs.

The MDVAE and the DSAEs work on the VQ-VAE encoders' continuous outputs. ``AVCodec`` is
the bridge both ways: frames and power spectrograms to features, and features (an MDVAE
output) back to frames and power by quantising with the frozen codebooks and decoding.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mdvae.stage1.vqvae import VQVAE, frames_to_input, output_to_frames


class AVCodec:
    """The audio and visual VQ-VAEs of a bundle, frozen, used in eval mode."""

    def __init__(self, vq_audio: VQVAE, vq_visual: VQVAE, *, chunk: int = 1024):
        if vq_audio.config.modality != "audio" or vq_visual.config.modality != "visual":
            raise ValueError("AVCodec needs an audio VQ-VAE and a visual VQ-VAE, in that order")
        self.vq_audio = vq_audio.eval()
        self.vq_visual = vq_visual.eval()
        self.chunk = chunk  # frames per encoder call, to bound memory on long clips

    @property
    def device(self) -> torch.device:
        return next(self.vq_visual.parameters()).device

    @torch.no_grad()
    def encode(
        self, frames: np.ndarray | Tensor, power: np.ndarray | Tensor
    ) -> tuple[Tensor, Tensor]:
        """frames (..., T, 64, 64, 3) uint8 and power (..., T, 513) -> features.

        Returns x_a (..., T, 512) and x_v (..., T, 2048) on the codec's device.
        """
        x_v = frames_to_input(torch.as_tensor(frames)).to(self.device)  # (..., T, 3, 64, 64)
        x_a = torch.as_tensor(np.asarray(power, np.float32)).to(self.device)
        lead = x_v.shape[:-3]
        flat_v = x_v.reshape(-1, *x_v.shape[-3:])
        flat_a = x_a.reshape(-1, x_a.shape[-1])
        feats_v = torch.cat([self.vq_visual.encode(c) for c in flat_v.split(self.chunk)])
        feats_a = torch.cat([self.vq_audio.encode(c) for c in flat_a.split(self.chunk)])
        return feats_a.reshape(*lead, -1), feats_v.reshape(*lead, -1)

    @torch.no_grad()
    def decode_visual(self, x_v: Tensor) -> np.ndarray:
        """Visual features (..., 2048) -> uint8 frames (..., 64, 64, 3)."""
        flat = x_v.reshape(-1, x_v.shape[-1])
        out = torch.cat([self.vq_visual.decode_features(c) for c in flat.split(self.chunk)])
        return output_to_frames(out).reshape(*x_v.shape[:-1], 64, 64, 3)

    @torch.no_grad()
    def decode_audio(self, x_a: Tensor) -> np.ndarray:
        """Audio features (..., 512) -> power spectrogram frames (..., 513) float32."""
        flat = x_a.reshape(-1, x_a.shape[-1])
        out = torch.cat([self.vq_audio.decode_features(c) for c in flat.split(self.chunk)])
        return out.reshape(*x_a.shape[:-1], -1).float().cpu().numpy()

    @torch.no_grad()
    def reconstruct(self, frames: np.ndarray, power: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Through the VQ-VAEs alone (no temporal model): the stage-1 baseline."""
        x_a, x_v = self.encode(frames, power)
        return self.decode_visual(x_v), self.decode_audio(x_a)
