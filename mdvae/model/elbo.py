"""The negative ELBO of the dynamical VAEs, normalised one way for MDVAE and DSAE.

Every term is in nats per frame: the per-sequence sum (over frames and dimensions)
averaged over the batch, divided by T. The KL of w, which occurs once per sequence, is
divided by T too, so the terms add up to exactly -ELBO / T and all betas = 1 is the
faithful bound. (The authors' code divides the w KL by the batch size only, i.e. it weights
it T times more; `beta_w = T` reproduces that.)

The training loss applies the weights here and nowhere else: each KL term its beta, and all
of them the `kl_weight` of a KL warm-up, so a caller never has to tell the KL terms apart
from the reconstructions by their names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor

from mdvae.model.gaussian import DiagonalGaussian, kl_divergence
from mdvae.model.observation import GaussianDecoder


def reconstruction_term(decoder: GaussianDecoder, x: Tensor, mean: Tensor) -> Tensor:
    """-E_q log p(x_1:T | latents) of x (B, T, D) in nats per frame (one posterior sample)."""
    return decoder.negative_log_likelihood(x, mean).mean() / x.shape[1]


def kl_w_term(q_w: DiagonalGaussian, n_frames: int) -> Tensor:
    """KL(q(w | x) || N(0, I)) in nats per frame: once per sequence, divided by T."""
    return q_w.kl_standard_normal().mean() / n_frames


def kl_z_term(posterior: DiagonalGaussian, prior: DiagonalGaussian) -> Tensor:
    """sum_t KL(q(z_t | ...) || p(z_t | z_1:t-1)) in nats per frame: the mean of the (B, T)
    per-frame KLs over batch and time is the per-sequence sum / T."""
    return kl_divergence(posterior, prior).mean()


def training_loss(
    reconstructions: Sequence[Tensor], kls: Sequence[tuple[float, Tensor]], kl_weight: float
) -> Tensor:
    """sum of the reconstruction terms + kl_weight * sum of beta * KL, for (beta, KL) pairs.

    With kl_weight 1 and every beta 1 this is the negative ELBO (per frame)."""
    total = reconstructions[0]
    for rec in reconstructions[1:]:
        total = total + rec
    for beta, kl in kls:
        total = total + (kl_weight * beta) * kl
    return total


class ELBOBreakdown:
    """Mixin for the loss dataclasses: `total`, the training loss (`training_loss`), plus
    the unweighted terms (nats per frame) whose sum is the negative ELBO."""

    @property
    def negative_elbo(self) -> Tensor:
        terms = [getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "total"]  # type: ignore[arg-type]
        return torch.stack(terms).sum()

    def as_dict(self) -> dict[str, float]:
        """Plain floats for logging, `negative_elbo` included."""
        out = {f.name: float(getattr(self, f.name).detach()) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        out["negative_elbo"] = float(self.negative_elbo.detach())
        return out
