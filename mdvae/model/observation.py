"""Per-frame building blocks shared by MDVAE and DSAE.

Everything here acts on each frame independently, so it always runs batched over all
(B * T) frames: feature MLPs, the Gaussian observation model p(x_t | latents_t), the latent
containers with their swap operation and the w interpolation of the seed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from mdvae.errors import MDVAEError
from mdvae.model.gaussian import LOG_2PI, at_least_float32


def mlp(dims: Sequence[int], *, final_activation: bool = False) -> nn.Sequential:
    """Linear layers dims[0] -> dims[1] -> ... with SiLU between them (and after the last
    one when `final_activation`, for feature extractors whose output feeds other nets)."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(dims) - 2 or final_activation:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class GaussianDecoder(nn.Module):
    """p(x_t | latents_t) = N(x_t; mu(latents_t), diag(sigma^2)), one frame at a time.

    The mean comes from an MLP; the variance is one log-variance per output dimension,
    shared by all frames (learned unless `learn_logvar` is False). A learned variance makes
    the reconstruction term a real log-likelihood whose scale follows the data: the two
    streams (512 and 2048 numbers of different ranges) weigh in the ELBO by how well they
    can be predicted, not by their raw units. The floor `logvar_min` keeps the likelihood
    from running off to infinity on dimensions the model fits almost exactly.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        *,
        logvar_init: float = 0.0,
        learn_logvar: bool = True,
        logvar_min: float = -6.0,
    ):
        super().__init__()
        self.mean_net = mlp([in_dim, hidden_dim, hidden_dim, out_dim])
        self.logvar = nn.Parameter(torch.full((out_dim,), logvar_init), requires_grad=learn_logvar)
        self.logvar_min = logvar_min

    def forward(self, latents_t: Tensor) -> Tensor:
        """(B, T, in_dim) -> mean of x_t, (B, T, out_dim)."""
        return self.mean_net(latents_t)

    def negative_log_likelihood(self, x: Tensor, mean: Tensor) -> Tensor:
        """-log p(x_1:T | latents) per sequence, summed over frames and dimensions: (B,).

        Computed in at least float32 even under autocast: these are sums of many terms.
        """
        logvar = self.logvar.clamp(min=self.logvar_min)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return GaussianNLL.apply(at_least_float32(x), at_least_float32(mean), logvar)


class GaussianNLL(torch.autograd.Function):
    """-sum_t,d log N(x_btd; mean_btd, exp(logvar_d)) per sequence b, with its gradient.

    The same numbers as autograd through the formula, in fewer passes over the (B, T, D)
    tensors, which for the 2048-dimensional visual stream are the largest of a training
    step: squared errors are summed over time before meeting the per-dimension precision,
    and the backward pass writes the mean's gradient in one product.
    """

    @staticmethod
    def forward(ctx, x: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
        n_frames, dim = x.shape[1], x.shape[2]
        diff = mean - x  # (B, T, D)
        precision = torch.exp(-logvar)  # (D,)
        sq = diff.square().sum(1)  # (B, D)
        ctx.save_for_backward(diff, precision, sq)
        ctx.n_frames = n_frames
        return 0.5 * (sq @ precision + n_frames * (logvar.sum() + dim * LOG_2PI))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # grad (B,)
        diff, precision, sq = ctx.saved_tensors
        grad_x = grad_mean = grad_logvar = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            grad_mean = diff * (grad[:, None, None] * precision)  # (B, T, D)
            grad_x = -grad_mean if ctx.needs_input_grad[0] else None
        if ctx.needs_input_grad[2]:
            weighted = (grad[:, None] * sq).sum(0) * precision  # (D,)
            grad_logvar = 0.5 * (ctx.n_frames * grad.sum() - weighted)
        return grad_x, grad_mean, grad_logvar


class LatentGroups:
    """Mixin for the latent dataclasses (`Latents`, `DSAELatents`): each field is a group."""

    @classmethod
    def group_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]

    def swap(self, other: LatentGroups, groups: Iterable[str] | str):
        """A copy of these latents with `groups` taken from `other` (e.g. {"z_av", "w"}).

        Dynamical groups can only move between encodings with the same batch and number of
        frames; crop both clips to the same length first.
        """
        if type(other) is not type(self):
            raise MDVAEError(
                f"cannot swap between {type(self).__name__} and {type(other).__name__}"
            )
        names = {groups} if isinstance(groups, str) else set(groups)
        unknown = sorted(names - set(self.group_names()))
        if unknown:
            raise MDVAEError(
                f"unknown latent group(s) {unknown}; choose among {list(self.group_names())}"
            )
        for name in names:
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine.shape != theirs.shape:
                raise MDVAEError(
                    f"cannot swap '{name}': shapes {tuple(theirs.shape)} and "
                    f"{tuple(mine.shape)} differ; encode clips of the same batch size and "
                    "number of frames"
                )
        return dataclasses.replace(self, **{name: getattr(other, name) for name in names})  # type: ignore[type-var]

    def detach(self):
        return dataclasses.replace(  # type: ignore[type-var]
            self, **{name: getattr(self, name).detach() for name in self.group_names()}
        )


def interpolate_w(w: Tensor, w_other: Tensor, n_frames: int, alpha: float | None = None) -> Tensor:
    """Per-frame static latent w~_t = alpha_t * w + (1 - alpha_t) * w_other: (B, T, Lw).

    With `alpha` None this is the seed's sweep alpha_t = (T - t) / (T - 1), t = 1..T, which
    starts at w (alpha_1 = 1) and ends at w_other (alpha_T = 0); a number gives a constant
    alpha for every frame (outside [0, 1] it extrapolates). `w`, `w_other`: (B, Lw) or (Lw,).
    """
    if w.shape != w_other.shape:
        raise MDVAEError(f"w shapes differ: {tuple(w.shape)} and {tuple(w_other.shape)}")
    if n_frames < 1:
        raise MDVAEError(f"n_frames must be at least 1, got {n_frames}")
    if alpha is None:
        # linspace(1, 0, T) is exactly (T - t) / (T - 1) for t = 1..T; T = 1 keeps w.
        alphas = torch.linspace(1.0, 0.0, n_frames, device=w.device, dtype=w.dtype)
        if n_frames == 1:
            alphas = torch.ones(1, device=w.device, dtype=w.dtype)
    else:
        alphas = torch.full((n_frames,), float(alpha), device=w.device, dtype=w.dtype)
    alphas = alphas[:, None]  # (T, 1), broadcasts against (..., 1, Lw)
    return alphas * w.unsqueeze(-2) + (1.0 - alphas) * w_other.unsqueeze(-2)


def frames_of_w(w: Tensor, n_frames: int) -> Tensor:
    """w as one row per frame: (B, Lw) is repeated over time (a view), (B, T, Lw) passes."""
    if w.dim() == 2:
        return w.unsqueeze(1).expand(-1, n_frames, -1)  # (B, T, Lw)
    if w.dim() == 3 and w.shape[1] == n_frames:
        return w
    raise MDVAEError(
        f"w must be (B, Lw) or (B, T, Lw) with T = {n_frames}, got shape {tuple(w.shape)}"
    )


def prior_w(
    batch: int,
    w_dim: int,
    w: Tensor | None,
    *,
    like: Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """w for generation: drawn from p(w) = N(0, I) (device and dtype of `like`) unless
    given, in which case it must be (batch, w_dim)."""
    if w is None:
        return torch.randn(batch, w_dim, generator=generator, device=like.device, dtype=like.dtype)
    if w.shape != (batch, w_dim):
        raise MDVAEError(f"w must be ({batch}, {w_dim}) for batch={batch}, got {tuple(w.shape)}")
    return w


def check_sequence(name: str, x: Tensor, dim: int) -> None:
    """Refuse anything but a float (B, T, dim) sequence with T >= 1, naming the input."""
    if x.dim() != 3 or x.shape[-1] != dim or x.shape[1] < 1:
        raise MDVAEError(
            f"{name} must be a (batch, frames, {dim}) tensor of per-frame features, "
            f"got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise MDVAEError(f"{name} must be a floating-point tensor, got {x.dtype}")


class ELBOBreakdown:
    """Mixin for the loss dataclasses: a weighted `total` plus unweighted terms (nats per
    frame) whose sum is the negative ELBO."""

    @property
    def negative_elbo(self) -> Tensor:
        terms = [getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "total"]  # type: ignore[arg-type]
        return torch.stack(terms).sum()

    def as_dict(self) -> dict[str, float]:
        """Plain floats for logging, `negative_elbo` included."""
        out = {f.name: float(getattr(self, f.name).detach()) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        out["negative_elbo"] = float(self.negative_elbo.detach())
        return out
