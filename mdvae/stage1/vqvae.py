"""Stage 1: one VQ-VAE per modality, no temporal model (DESIGN.md section 3).

One class serves both modalities; the config's `modality` picks 2-D or 1-D convolutions:

    visual  (B, 3, 64, 64) in [0, 1] --conv2d x3, stride 2--> 8 x 8 grid of 32-d vectors
            = 2048 numbers --EMA codebook 512 x 32--> --transposed conv2d--> (B, 3, 64, 64)
            loss: mean squared error per pixel
    audio   (B, 513) power --log--conv1d x3, stride 2--> 64 positions of 8-d vectors
            = 512 numbers --EMA codebook 64 x 8--> --transposed conv1d--> log-power --exp-->
            (B, 513) power > 0;   loss: Itakura-Saito divergence per bin

Both losses add beta times the commitment loss. Stage 2 (the MDVAE) works on the flattened
encoder outputs before quantisation, `encode(x)`; `decode_features` turns such features
back into media through the frozen codebook and decoder.

Flatten order of the features, as einops patterns:
    visual  "b d h w -> b (h w d)": the 32 numbers of grid cell (h, w) are contiguous
    audio   "b d n -> b (n d)":     the 8 numbers of position n are contiguous
so `features.view(B, N, D)` lists the N = 64 quantiser inputs, row-major over the grid,
the same order as `indices` (B, N).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from mdvae.config import ConfigBase
from mdvae.errors import ConfigError
from mdvae.stage1.quantizer import EMAVectorQuantizer, QuantizerOutput

MODALITIES = ("visual", "audio")
IMAGE_SIZE = 64  # visual input is IMAGE_SIZE x IMAGE_SIZE RGB
N_BINS = 513  # audio input is one power-spectrogram frame, n_fft = 1024
N_DOWNSAMPLINGS = 3  # stride-2 stages: 64 -> 8 (visual), 513 -> 256 -> 128 -> 64 (audio)
# The audio encoder sees (log(power + floor) - LOG_POWER_CENTER) / LOG_POWER_SCALE: roughly
# zero-centred and of unit range for peak-normalised 16 kHz speech with n_fft 1024, whose
# natural-log power spans about -14 (floor) to +10. Unnormalised inputs trained markedly
# slower, with a collapsing codebook early on.
LOG_POWER_CENTER = -5.0
LOG_POWER_SCALE = 5.0
# Codebook per modality when the config leaves it unset: (codebook_size, code_dim).
_MODALITY_CODEBOOK = {"visual": (512, 32), "audio": (64, 8)}


@dataclass
class VQVAEConfig(ConfigBase):
    """VQ-VAE for one modality. The defaults are the small synthetic-data model."""

    # "visual" (64x64 RGB frames) or "audio" (513-bin power-spectrogram frames)
    modality: str = "visual"
    # output channels of the three stride-2 encoder convolutions (the decoder mirrors them)
    channels: tuple[int, ...] = (32, 64, 64)
    # residual blocks at the latent resolution, in the encoder and again in the decoder
    res_blocks: int = 2
    # bottleneck width inside each residual block
    res_channels: int = 32
    # codebook entries; 0: the modality's default, 512 visual, 64 audio
    codebook_size: int = 0
    # size of one latent vector / code; 0: the modality's default, 32 visual, 8 audio, so
    # that there are 2048 (8 x 8 x 32) visual and 512 (64 x 8) audio features per frame
    code_dim: int = 0
    # weight of the commitment loss ||z_e - sg(z_q)||^2 in the total loss
    commitment_beta: float = 0.25
    # decay of the codebook's exponential moving averages
    ema_decay: float = 0.99
    # a code receiving fewer vectors per batch than this (EMA) is re-seeded from the
    # batch; 0 turns re-seeding off
    dead_code_threshold: float = 1.0
    # audio only: added to the power before taking logs and in the IS divergence, since
    # power spans many decades and digital silence is exactly 0
    power_floor: float = 1e-6

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ConfigError(
                f"VQVAEConfig.modality must be one of {MODALITIES}, got {self.modality!r}"
            )
        if len(self.channels) != N_DOWNSAMPLINGS:
            raise ConfigError(
                f"VQVAEConfig.channels needs {N_DOWNSAMPLINGS} widths (one per "
                f"stride-2 stage), got {list(self.channels)}"
            )
        default_size, default_dim = _MODALITY_CODEBOOK[self.modality]
        # Resolved here, so config.json always records the actual sizes.
        self.codebook_size = self.codebook_size or default_size
        self.code_dim = self.code_dim or default_dim
        checks = {
            "codebook_size": self.codebook_size > 0,
            "code_dim": self.code_dim > 0,
            "channels": all(c > 0 for c in self.channels),
            "res_blocks": self.res_blocks >= 0,
            "res_channels": self.res_channels > 0,
            "commitment_beta": self.commitment_beta >= 0,
            "ema_decay": 0 <= self.ema_decay < 1,
            "dead_code_threshold": self.dead_code_threshold >= 0,
            "power_floor": self.power_floor > 0,
        }
        bad = [f"{name}={getattr(self, name)!r}" for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"VQVAEConfig: value(s) out of range: {', '.join(bad)}")

    @property
    def grid_positions(self) -> int:
        """Number of latent vectors per frame: 8 x 8 visual, 64 audio."""
        if self.modality == "visual":
            return (IMAGE_SIZE // 2**N_DOWNSAMPLINGS) ** 2
        return (N_BINS - 1) // 2**N_DOWNSAMPLINGS

    @property
    def feature_dim(self) -> int:
        """Numbers per frame that `encode` returns: 2048 visual, 512 audio by default."""
        return self.grid_positions * self.code_dim

    @classmethod
    def mead(cls, modality: str, **overrides: Any) -> VQVAEConfig:
        """Reference sizes for MEAD-scale training: the widths of the original VQ-VAE's
        reference implementation (128 hidden, 2 residual blocks of 32), same feature sizes."""
        values: dict[str, Any] = dict(
            modality=modality, channels=(64, 128, 128), res_blocks=2, res_channels=32
        )
        values.update(overrides)
        return cls(**values)


@dataclass
class VQVAELoss:
    """Loss breakdown; `total` is what the optimiser minimises."""

    total: Tensor  # () reconstruction + commitment_beta * commitment
    reconstruction: Tensor  # () MSE per pixel (visual) or IS divergence per bin (audio)
    commitment: Tensor  # () unweighted commitment loss, mean over latent elements


@dataclass
class VQVAEOutput:
    x_hat: Tensor  # reconstruction, shaped like the input
    indices: Tensor  # (B, N) code per latent vector, in feature flatten order
    loss: VQVAELoss
    perplexity: Tensor  # () codebook usage in this batch, from 1 to codebook_size


def itakura_saito_from_log(log_power: Tensor, log_power_hat: Tensor) -> Tensor:
    """Elementwise IS divergence d(x | x_hat) from log x and log x_hat.

    d(x | y) = x / y - log(x / y) - 1 = expm1(r) - r with r = log x - log y: zero when
    x == y and positive otherwise. It is the negative log-likelihood (up to constants) of a
    zero-mean complex Gaussian STFT coefficient of variance y, and it depends only on the
    ratio x / y, so quiet bins weigh as much as loud ones.
    """
    r = log_power - log_power_hat
    return torch.expm1(r) - r


def itakura_saito(power: Tensor, power_hat: Tensor) -> Tensor:
    """Elementwise Itakura-Saito divergence d(power | power_hat); both must be > 0."""
    return itakura_saito_from_log(torch.log(power), torch.log(power_hat))


def frames_to_input(frames: np.ndarray | Tensor) -> Tensor:
    """uint8 frames (..., 64, 64, 3) -> float32 model input (..., 3, 64, 64) in [0, 1]."""
    frames = torch.as_tensor(frames)
    if frames.dtype != torch.uint8 or frames.shape[-3:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(
            f"expected uint8 frames (..., {IMAGE_SIZE}, {IMAGE_SIZE}, 3), "
            f"got {frames.dtype} {tuple(frames.shape)}"
        )
    return rearrange(frames, "... h w c -> ... c h w").float() / 255.0


def output_to_frames(x: Tensor) -> np.ndarray:
    """Model output (..., 3, 64, 64), nominally in [0, 1] -> uint8 frames (..., 64, 64, 3)."""
    x = rearrange(x.detach().float().clamp(0, 1), "... c h w -> ... h w c")
    return (x * 255.0).round().to(torch.uint8).cpu().numpy()


class ResidualBlock(nn.Module):
    """x + conv1x1(relu(conv3(relu(x)))), as in the original VQ-VAE."""

    def __init__(self, conv: type[nn.Module], channels: int, hidden: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.ReLU(),
            conv(channels, hidden, 3, padding=1),
            nn.ReLU(),
            conv(hidden, channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


def _encoder(conv: type[nn.Module], in_channels: int, config: VQVAEConfig) -> nn.Sequential:
    c0, c1, c2 = config.channels
    return nn.Sequential(
        conv(in_channels, c0, 4, stride=2, padding=1),
        nn.ReLU(),
        conv(c0, c1, 4, stride=2, padding=1),
        nn.ReLU(),
        conv(c1, c2, 4, stride=2, padding=1),
        *[ResidualBlock(conv, c2, config.res_channels) for _ in range(config.res_blocks)],
        nn.ReLU(),
        conv(c2, config.code_dim, 1),
    )


def _decoder(
    conv: type[nn.Module],
    conv_t: type[nn.Module],
    out_channels: int,
    config: VQVAEConfig,
    last_output_padding: int,
) -> nn.Sequential:
    c0, c1, c2 = config.channels
    return nn.Sequential(
        conv(config.code_dim, c2, 3, padding=1),
        *[ResidualBlock(conv, c2, config.res_channels) for _ in range(config.res_blocks)],
        nn.ReLU(),
        conv_t(c2, c1, 4, stride=2, padding=1),
        nn.ReLU(),
        conv_t(c1, c0, 4, stride=2, padding=1),
        nn.ReLU(),
        conv_t(c0, out_channels, 4, stride=2, padding=1, output_padding=last_output_padding),
    )


class VQVAE(nn.Module):
    """VQ-VAE for the modality of its config (see the module docstring for shapes)."""

    prepare_visual = staticmethod(frames_to_input)

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        self.config = config
        if config.modality == "visual":
            # Input in [0, 1] is centred for the encoder; the decoder predicts the offset back.
            self.input_shape: tuple[int, ...] = (3, IMAGE_SIZE, IMAGE_SIZE)
            self.encoder = _encoder(nn.Conv2d, 3, config)
            self.decoder = _decoder(nn.Conv2d, nn.ConvTranspose2d, 3, config, 0)
        else:
            # 513 -> 256 -> 128 -> 64 with kernel 4, stride 2, padding 1; on the way back
            # 64 -> ... -> 512, and output_padding 1 restores the Nyquist bin: 513.
            self.input_shape = (N_BINS,)
            self.encoder = _encoder(nn.Conv1d, 1, config)
            self.decoder = _decoder(nn.Conv1d, nn.ConvTranspose1d, 1, config, 1)
        self.quantizer = EMAVectorQuantizer(
            config.codebook_size,
            config.code_dim,
            decay=config.ema_decay,
            dead_code_threshold=config.dead_code_threshold,
        )

    # -- shapes -----------------------------------------------------------------------------

    def _check_input(self, x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        """Flatten leading batch dims: (..., *input_shape) -> (B, *input_shape)."""
        k = len(self.input_shape)
        if tuple(x.shape[-k:]) != self.input_shape:
            raise ValueError(
                f"{self.config.modality} VQ-VAE expects (..., "
                f"{', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}"
            )
        lead = tuple(x.shape[:-k])
        return x.reshape(-1, *self.input_shape), lead

    def _features_to_vectors(self, features: Tensor) -> Tensor:
        """(B, feature_dim) -> (B, N, D): the inverse of the flatten in `encode`."""
        return rearrange(features, "b (n d) -> b n d", d=self.config.code_dim)

    # -- the three stages ---------------------------------------------------------------------

    def _encode(self, x: Tensor) -> Tensor:
        """(B, *input_shape) -> (B, feature_dim)."""
        if self.config.modality == "visual":
            z = self.encoder(x - 0.5)  # (B, D, 8, 8)
            return rearrange(z, "b d h w -> b (h w d)")
        log_power = torch.log(x + self.config.power_floor)  # (B, 513)
        z = self.encoder(((log_power - LOG_POWER_CENTER) / LOG_POWER_SCALE).unsqueeze(1))
        # z: (B, D, 64)
        return rearrange(z, "b d n -> b (n d)")

    def _decode_vectors(self, z_q: Tensor) -> Tensor:
        """Quantised vectors (B, N, D) -> image (B, 3, 64, 64) or audio log-power (B, 513)."""
        if self.config.modality == "visual":
            side = IMAGE_SIZE // 2**N_DOWNSAMPLINGS
            z = rearrange(z_q, "b (h w) d -> b d h w", h=side, w=side)
            return self.decoder(z) + 0.5
        z = rearrange(z_q, "b n d -> b d n")
        # Float32 and a wide clamp keep exp() finite and > 0 even under autocast.
        return self.decoder(z).squeeze(1).float().clamp(-80.0, 80.0)  # (B, 513) log-power

    def _output(self, decoded: Tensor) -> Tensor:
        return decoded if self.config.modality == "visual" else torch.exp(decoded)

    # -- public API ---------------------------------------------------------------------------

    def encode(self, x: Tensor) -> Tensor:
        """Pre-quantisation features: (..., *input_shape) -> (..., feature_dim)."""
        x, lead = self._check_input(x)
        return self._encode(x).reshape(*lead, self.config.feature_dim)

    def quantize_features(self, features: Tensor) -> QuantizerOutput:
        """Quantise features (B, feature_dim) with the current codebook (never updates it)."""
        return self.quantizer.quantize(self._features_to_vectors(features))

    def decode_features(self, features: Tensor) -> Tensor:
        """Features (..., feature_dim), e.g. MDVAE outputs -> media (..., *input_shape).

        Reshape to the grid, quantise with the frozen codebook, decode.
        """
        lead = tuple(features.shape[:-1])
        z_q = self.quantize_features(features.reshape(-1, self.config.feature_dim)).z_q
        return self._output(self._decode_vectors(z_q)).reshape(*lead, *self.input_shape)

    def decode_indices(self, indices: Tensor) -> Tensor:
        """Code indices (..., N), in feature flatten order -> media (..., *input_shape)."""
        lead = tuple(indices.shape[:-1])
        z_q = self.quantizer.codes_from_indices(indices.reshape(-1, self.config.grid_positions))
        return self._output(self._decode_vectors(z_q)).reshape(*lead, *self.input_shape)

    def _reconstruction_loss(self, x: Tensor, decoded: Tensor) -> Tensor:
        """Mean MSE per pixel (visual) or mean IS divergence per bin (audio, from log-power)."""
        if self.config.modality == "visual":
            return F.mse_loss(decoded, x)
        log_power = torch.log(x.float() + self.config.power_floor)
        return itakura_saito_from_log(log_power, decoded).mean()

    def forward(self, x: Tensor) -> VQVAEOutput:
        """x (B, *input_shape) -> reconstruction and losses; updates the codebook when training."""
        x, _ = self._check_input(x)
        features = self._encode(x)  # (B, feature_dim)
        quantized = self.quantizer(self._features_to_vectors(features))  # z_q (B, N, D)
        decoded = self._decode_vectors(quantized.z_q)
        reconstruction = self._reconstruction_loss(x, decoded)
        total = reconstruction + self.config.commitment_beta * quantized.commit_loss
        return VQVAEOutput(
            x_hat=self._output(decoded),
            indices=quantized.indices,
            loss=VQVAELoss(total, reconstruction, quantized.commit_loss),
            perplexity=quantized.perplexity,
        )
