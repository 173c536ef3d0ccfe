"""The negative ELBO of the dynamical VAEs, normalised one way for MDVAE and DSAE.

Every term is in nats per frame: the per-sequence sum (over frames and dimensions)
averaged over the batch, divided by T. The KL of w, which occurs once per sequence, is
divided by T too, so the terms add up to exactly -ELBO / T and all betas = 1 is the
faithful bound. (The authors' code divides the w KL by the batch size only, i.e. it weights
it T times more; `beta_w = T` reproduces that.)

The training loss applies the weights here and nowhere else: each KL term its beta times
the schedule's weight for its group (`KLWeights`: a KL warm-up, or w before the z's), so a
caller never has to tell the KL terms apart from the reconstructions by their names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class KLWeights:
    """A training schedule's weights on the KL terms (each term's beta applies on top).

    `w` weighs KL(q(w) || p(w)), `z` the dynamical groups' KLs, and `z_v`, where it is
    given, the MDVAE's z_v apart from the other z's (its own warm-up). With `static_only` the
    decoders see w alone (every z set to zero), so the z's explain nothing yet and their
    KLs are left out of the loss whatever `z` says: the static-first schedule, which lets
    w take the clip-level factors before the z's can. All ones is the ELBO itself.
    """

    w: float = 1.0
    z: float = 1.0
    static_only: bool = False
    z_v: float | None = None

    @classmethod
    def of(cls, weights: float | KLWeights) -> KLWeights:
        """A number weighs every KL term alike (a plain KL warm-up)."""
        return weights if isinstance(weights, KLWeights) else cls(float(weights), float(weights))

    @property
    def z_effective(self) -> float:
        return 0.0 if self.static_only else self.z

    @property
    def z_v_effective(self) -> float:
        if self.static_only:
            return 0.0
        return self.z if self.z_v is None else self.z_v


def training_loss(
    reconstructions: Sequence[Tensor], kls: Sequence[tuple[float, Tensor]]
) -> Tensor:
    """sum of the reconstruction terms + sum of weight * KL, for (weight, KL) pairs.

    With every weight 1 this is the negative ELBO (per frame)."""
    total = reconstructions[0]
    for rec in reconstructions[1:]:
        total = total + rec
    for weight, kl in kls:
        total = total + weight * kl
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
