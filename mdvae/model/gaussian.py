"""Diagonal Gaussians: the distribution behind every factor of MDVAE and DSAE.

A `DiagonalGaussian` holds a mean and a log-variance of the same shape (..., L); the last
axis is the event axis, so `log_prob` and the KLs sum over it and keep the leading
(batch, time) axes. KLs are closed form: the ELBO never estimates them by sampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

LOG_2PI = math.log(2.0 * math.pi)


def at_least_float32(x: Tensor) -> Tensor:
    """x in float32 when it is in a narrower float type (bf16 / fp16 under autocast), so
    distribution parameters, KLs and log-likelihoods keep full precision."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


@dataclass(frozen=True)
class DiagonalGaussian:
    """N(mean, diag(exp(logvar))) over the last axis; leading axes are batch axes."""

    mean: Tensor  # (..., L)
    logvar: Tensor  # (..., L)

    @classmethod
    def standard(cls, shape: tuple[int, ...], *, like: Tensor | None = None) -> DiagonalGaussian:
        """N(0, I) with the given shape (device and dtype of `like` when given)."""
        zeros = torch.zeros(
            shape,
            device=like.device if like is not None else None,
            dtype=like.dtype if like is not None else None,
        )
        return cls(zeros, zeros)

    @classmethod
    def from_params(cls, params: Tensor) -> DiagonalGaussian:
        """Split a network output (..., 2L) into mean (..., L) and log-variance (..., L)."""
        mean, logvar = at_least_float32(params).chunk(2, dim=-1)
        return cls(mean, logvar)

    @property
    def std(self) -> Tensor:
        return torch.exp(0.5 * self.logvar)

    @property
    def var(self) -> Tensor:
        return torch.exp(self.logvar)

    def rsample(
        self, noise: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Reparameterised draw mean + std * noise; `noise` ~ N(0, I) may be passed in so a
        caller can hold the randomness fixed."""
        if noise is None:
            noise = torch.randn(
                self.mean.shape,
                generator=generator,
                device=self.mean.device,
                dtype=self.mean.dtype,
            )
        return self.mean + self.std * noise

    def log_prob(self, x: Tensor) -> Tensor:
        """log N(x; mean, var) summed over the event axis: (...,)."""
        sq = (x - self.mean).square() * torch.exp(-self.logvar)
        return -0.5 * (sq + self.logvar + LOG_2PI).sum(-1)

    def kl(self, other: DiagonalGaussian) -> Tensor:
        """KL(self || other) in closed form, summed over the event axis: (...,)."""
        return kl_divergence(self, other)

    def kl_standard_normal(self) -> Tensor:
        """KL(self || N(0, I)), summed over the event axis: (...,)."""
        return 0.5 * (self.mean.square() + torch.exp(self.logvar) - 1.0 - self.logvar).sum(-1)

    def __getitem__(self, index) -> DiagonalGaussian:
        """Index the batch axes, e.g. `q[:, t]` for the distribution at frame t."""
        return DiagonalGaussian(self.mean[index], self.logvar[index])

    def detach(self) -> DiagonalGaussian:
        return DiagonalGaussian(self.mean.detach(), self.logvar.detach())


def kl_divergence(q: DiagonalGaussian, p: DiagonalGaussian) -> Tensor:
    """KL(q || p) between diagonal Gaussians, summed over the event axis: (...,).

    0.5 * sum[ logvar_p - logvar_q + (var_q + (mean_q - mean_p)^2) / var_p - 1 ],
    written with exp of differences so a large log-variance does not overflow first.
    """
    ratio = torch.exp(q.logvar - p.logvar)
    mahalanobis = (q.mean - p.mean).square() * torch.exp(-p.logvar)
    return 0.5 * (ratio + mahalanobis - 1.0 - (q.logvar - p.logvar)).sum(-1)


def gaussian_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Small MLP whose output (..., 2 * out_dim) splits into a mean and a log-variance."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, 2 * out_dim)
    )
