"""The priors of the dynamical VAEs: p(w) = N(0, I), and the autoregressive
p(z_t | z_1:t-1) of each dynamical latent.

Over an already sampled sequence the prior is one fused LSTM call on the sequence shifted
by one frame; only ancestral sampling steps through time in Python.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mdvae.errors import MDVAEError
from mdvae.model.gaussian import DiagonalGaussian, gaussian_head


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


class AutoregressivePrior(nn.Module):
    """p(z_t | z_1:t-1) = N(mu(h_t), diag(sigma^2(h_t))), h_t = LSTM(z_1:t-1), h_1 from z_0 = 0.

    The state starts at zero and the first input is a zero vector, so p(z_1) is a learned
    Gaussian (through the biases) like every later step.
    """

    def __init__(self, z_dim: int, hidden_dim: int):
        super().__init__()
        self.rnn = nn.LSTM(z_dim, hidden_dim, batch_first=True)
        self.head = gaussian_head(hidden_dim, hidden_dim, z_dim)
        self.z_dim = z_dim

    def forward(self, z: Tensor) -> DiagonalGaussian:
        """p(z_t | z_1:t-1) for every t of a given sequence z (B, T, L), in one LSTM call."""
        z_prev = F.pad(z[:, :-1], (0, 0, 1, 0))  # (B, T, L): z_0 = 0, z_1, ..., z_T-1
        h, _ = self.rnn(z_prev)  # (B, T, H): h[:, t] has seen z_0..z_t-1
        return DiagonalGaussian.from_params(self.head(h))

    def sample(
        self, batch: int, n_frames: int, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, DiagonalGaussian]:
        """Ancestral sampling z_t ~ p(z_t | z_1:t-1): z (B, T, L) and the priors it used."""
        z_0 = self.head[0].weight.new_zeros(batch, 1, self.z_dim)
        return ancestral_sample(self.rnn, lambda h: DiagonalGaussian.from_params(self.head(h)),
                                z_0, n_frames, generator=generator)


def ancestral_sample(
    rnn: nn.Module,
    step_prior: Callable[[Tensor], DiagonalGaussian],
    z_0: Tensor,
    n_frames: int,
    *,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, DiagonalGaussian]:
    """z_t ~ p(z_t | z_1:t-1) for t = 1..n_frames, starting from z_0 (B, 1, L): `rnn` (a
    batch-first torch RNN) reads the last draw, `step_prior` turns its output (B, H) into
    p(z_t | z_1:t-1). Returns z (B, T, L) and the priors it used."""
    z_prev, state = z_0, None
    zs, means, logvars = [], [], []
    for _ in range(n_frames):
        h, state = rnn(z_prev, state)  # (B, 1, H)
        step = step_prior(h[:, 0])
        z_t = step.rsample(generator=generator)  # (B, L)
        zs.append(z_t)
        means.append(step.mean)
        logvars.append(step.logvar)
        z_prev = z_t.unsqueeze(1)
    return torch.stack(zs, 1), DiagonalGaussian(torch.stack(means, 1), torch.stack(logvars, 1))
