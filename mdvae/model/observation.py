"""The observation model p(x_t | latents_t) of MDVAE and DSAE, and the per-frame nets.

Everything here acts on each frame independently, so it always runs batched over all
(B * T) frames: feature MLPs, the Gaussian decoder and its negative log-likelihood, and
the check that an observed sequence has the shape the model reads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from mdvae.errors import MDVAEError
from mdvae.model.gaussian import LOG_2PI, at_least_float32

ACTIVATIONS = {"silu": nn.SiLU, "relu": nn.ReLU, "tanh": nn.Tanh}


def mlp(
    dims: Sequence[int], *, final_activation: bool = False, activation: str = "silu"
) -> nn.Sequential:
    """Linear layers dims[0] -> dims[1] -> ... with `activation` between them (and after the
    last one when `final_activation`, for feature extractors whose output feeds other nets).
    A single width (dims = [d]) is the identity: the features as they are."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(dims) - 2 or final_activation:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class GaussianDecoder(nn.Module):
    """p(x_t | latents_t) = N(x_t; mu(latents_t), diag(sigma^2)), one frame at a time.

    The mean comes from an MLP; the variance is one log-variance per output dimension,
    shared by all frames (learned unless `learn_logvar` is False). A learned variance makes
    the reconstruction term a real log-likelihood whose scale follows the data: the two
    streams (512 and 2048 numbers of different ranges) weigh in the ELBO by how well they
    can be predicted, not by their raw units. The floor `logvar_min` keeps the likelihood
    from running off to infinity on dimensions the model fits almost exactly.

    With `optimal_logvar` the variances are not learned by gradient: in training each batch
    uses their maximum-likelihood value, the mean squared residual of each dimension over
    the batch's frames (so the ELBO is maximised over them exactly, as in the "calibrated
    decoders" of Rybkin et al., 2021), and `logvar` keeps a running average of it for
    evaluation. Learned by gradient they move about the learning rate per step: on the
    synthetic benchmark the visual decoder's sat five times above its residuals after
    12,000 steps, a likelihood that much weaker than the data allows.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int | Sequence[int],
        out_dim: int,
        *,
        activation: str = "silu",
        logvar_init: float = 0.0,
        learn_logvar: bool = True,
        logvar_min: float = -6.0,
        optimal_logvar: bool = False,
        logvar_momentum: float = 0.05,
    ):
        super().__init__()
        # one width: two hidden layers of it; a sequence: one hidden layer per width
        hidden = [hidden_dim, hidden_dim] if isinstance(hidden_dim, int) else list(hidden_dim)
        self.mean_net = mlp([in_dim, *hidden, out_dim], activation=activation)
        self.logvar = nn.Parameter(
            torch.full((out_dim,), logvar_init), requires_grad=learn_logvar and not optimal_logvar
        )
        self.logvar_min = logvar_min
        self.optimal_logvar = optimal_logvar
        self.logvar_momentum = logvar_momentum

    def forward(self, latents_t: Tensor) -> Tensor:
        """(B, T, in_dim) -> mean of x_t, (B, T, out_dim)."""
        return self.mean_net(latents_t)

    def negative_log_likelihood(self, x: Tensor, mean: Tensor) -> Tensor:
        """-log p(x_1:T | latents) per sequence, summed over frames and dimensions: (B,).

        Computed in at least float32 even under autocast: these are sums of many terms.
        """
        with torch.autocast(device_type=x.device.type, enabled=False):
            x, mean = at_least_float32(x), at_least_float32(mean)
            if self.optimal_logvar and self.training:
                logvar = self._fit_logvar(x, mean)
            else:
                logvar = self.logvar.clamp(min=self.logvar_min)
            return GaussianNLL.apply(x, mean, logvar)

    @torch.no_grad()
    def frame_negative_log_likelihood(self, x: Tensor, mean: Tensor) -> Tensor:
        """-log p(x_t | latents_t) of every frame, summed over dimensions: (B, T), at the
        evaluation variances (for scores; training uses `negative_log_likelihood`)."""
        x, mean = at_least_float32(x), at_least_float32(mean)
        logvar = self.logvar.clamp(min=self.logvar_min)
        return 0.5 * ((mean - x).square() @ torch.exp(-logvar)
                      + logvar.sum() + x.shape[-1] * LOG_2PI)

    @torch.no_grad()
    def _fit_logvar(self, x: Tensor, mean: Tensor) -> Tensor:
        """The batch's maximum-likelihood log-variances (D,) (floored), folded into the
        running average kept in `logvar`."""
        variance = (mean - x).square().mean(dim=(0, 1)).clamp_min(math.exp(self.logvar_min))
        running = torch.lerp(self.logvar.exp(), variance.to(self.logvar), self.logvar_momentum)
        self.logvar.copy_(running.log())
        return variance.log().to(self.logvar)


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


def check_sequence(name: str, x: Tensor, dim: int) -> None:
    """Refuse anything but a float (B, T, dim) sequence with T >= 1, naming the input."""
    if x.dim() != 3 or x.shape[-1] != dim or x.shape[1] < 1:
        raise MDVAEError(
            f"{name} must be a (batch, frames, {dim}) tensor of per-frame features, "
            f"got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise MDVAEError(f"{name} must be a floating-point tensor, got {x.dtype}")
