"""The posteriors (inference model) of the dynamical VAEs, one class per component.

- `StaticPosterior`      q(w | x_1:T): from the summaries of the whole sequence.
- `StreamwiseStaticPosterior`  q(w | x_a, x_v) with each part of w read from one stream.
- `BackwardSummary`      g_t = f(x_t:T): an LSTM run backwards in time (smoothing posteriors).
- `FrameSummary`         g_t = f(x_t): the per-frame alternative (filtering posteriors).
- `PosteriorRecurrence`  q(z_t | z_1:t-1, c_t): a forward recurrence over the *sampled* z,
  where c_t gathers everything else the factor conditions on (summaries of x_t:T, w,
  z_av_t), all known before the recurrence starts.

Only `PosteriorRecurrence` steps through time in Python, because z_t is drawn from a
distribution that depends on z_t-1; the summaries are one fused call over whole
sequences. The priors are in `mdvae.model.priors`.

Cell types are chosen for speed: whole-sequence recurrences are LSTMs because PyTorch runs
them as one fused oneDNN (CPU) or cuDNN (GPU) kernel per direction, where a GRU on CPU is
some twenty separate operations per step; the posterior recurrence is a tanh RNN written
out in a handful of ops per step, and conditionally independent posteriors (z_a and z_v)
share one loop (`run_posteriors`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mdvae.model.gaussian import DiagonalGaussian, at_least_float32, gaussian_head


class StaticPosterior(nn.Module):
    """q(w | x_1:T) = N(mu, diag(sigma^2)) from sequence-level summaries of each stream.

    It reads, per stream, the backward summary at t = 1 (a recurrent net that has read the
    whole sequence, x_1:T) and the time average of the per-frame features. Reusing the
    summaries that the dynamical posteriors need anyway saves a bidirectional recurrent
    pass per stream; in the filtering variant g_1 sees x_1 only and the average carries the
    rest.

    `dropout` > 0 zeroes that share of the pooled inputs in training (`w_input_dropout`).
    """

    def __init__(self, in_dim: int, hidden_dim: int, w_dim: int, dropout: float = 0.0):
        super().__init__()
        self.head = gaussian_head(in_dim, hidden_dim, w_dim)
        self.dropout = dropout

    def forward(self, summaries: list[Tensor], features: list[Tensor]) -> DiagonalGaussian:
        """summaries [(B, T, H), ...], features [(B, T, F), ...] -> q(w) over (B, Lw)."""
        pooled = [g[:, 0] for g in summaries] + [f.mean(1) for f in features]
        pooled = nn.functional.dropout(torch.cat(pooled, dim=-1), self.dropout, self.training)
        return DiagonalGaussian.from_params(self.head(pooled))  # (B, 2Lw)


class StreamwiseStaticPosterior(nn.Module):
    """q(w | x_a, x_v) = q(w_a | x_a) q(w_v | x_v) with w = [w_a; w_v] (`w_per_stream`).

    Each part is a `StaticPosterior` that reads one stream's summary and mean features
    only, so w holds one code inferred from the voice and one from the face, which every
    decoder reads whole; the joint `StaticPosterior` reads both streams through one head.
    `w_dims` splits w (audio first); the summaries and features come in the same order.
    """

    def __init__(self, in_dims: Sequence[int], hidden_dim: int, w_dims: Sequence[int],
                 dropout: float = 0.0):
        super().__init__()
        self.parts = nn.ModuleList(
            StaticPosterior(d, hidden_dim, w, dropout) for d, w in zip(in_dims, w_dims)
        )

    def forward(self, summaries: list[Tensor], features: list[Tensor]) -> DiagonalGaussian:
        """summaries [(B, T, H) per stream], features [(B, T, F) per stream] -> q(w) (B, Lw)."""
        qs = [part([g], [f]) for part, g, f in zip(self.parts, summaries, features)]
        return DiagonalGaussian(torch.cat([q.mean for q in qs], dim=-1),
                                torch.cat([q.logvar for q in qs], dim=-1))


class BackwardSummary(nn.Module):
    """g_t summarising the present and future frames x_t:T (an LSTM run from T down to 1)."""

    def __init__(self, in_dim: int, hidden_dim: int):
        super().__init__()
        self.rnn = nn.LSTM(in_dim, hidden_dim, batch_first=True)

    def forward(self, features: Tensor) -> Tensor:
        """features (B, T, F) -> g (B, T, H) with g[:, t] a function of features[:, t:] only."""
        g_reversed, _ = self.rnn(features.flip(1))  # (B, T, H), step k has seen frames T-1-k..T-1
        return g_reversed.flip(1)


class FrameSummary(nn.Module):
    """g_t = tanh(W x_t + b): the filtering variant, where q(z_t | ...) sees x_t only."""

    def __init__(self, in_dim: int, hidden_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, hidden_dim)

    def forward(self, features: Tensor) -> Tensor:
        """features (B, T, F) -> g (B, T, H), frame by frame."""
        return torch.tanh(self.proj(features))


def make_summary(kind: str, in_dim: int, hidden_dim: int) -> BackwardSummary | FrameSummary:
    """The observation summary that a posterior of type `kind` conditions on."""
    if kind == "smoothing":
        return BackwardSummary(in_dim, hidden_dim)
    if kind == "filtering":
        return FrameSummary(in_dim, hidden_dim)
    raise ValueError(f"unknown posterior kind {kind!r}; use 'smoothing' or 'filtering'")


class PosteriorRecurrence(nn.Module):
    """q(z_t | z_1:t-1, c_t), where c_t holds every other conditioning variable of frame t.

        h_t = tanh(W_hh h_t-1 + b_h + W_zh z_t-1)     h_0 = 0, z_0 = 0: h_t reads z_1:t-1 only
        a_t = tanh(W_ca c_t + b_a + W_ha h_t)
        mean_t, log_std_t = W_ap a_t + b_p,           logvar_t = 2 log_std_t

    W_ca c_t + b_a does not depend on sampled history, so it is one batched matmul over all
    frames. Per step only three small matmuls and a few pointwise ops remain (h_t feeds
    both the next state and a_t through one matmul). The state is a plain tanh recurrence
    rather than a gated cell: the histories are short (T = 30) and every op here runs
    T times, forward and backward. See `run_posteriors` for the loop itself.
    """

    def __init__(self, cond_dim: int, z_dim: int, hidden_dim: int):
        super().__init__()
        self.z_to_h = nn.Linear(z_dim, hidden_dim, bias=False)
        self.h_to_h = nn.Linear(hidden_dim, hidden_dim)
        self.h_to_a = nn.Linear(hidden_dim, hidden_dim, bias=False)
        self.cond_to_a = nn.Linear(cond_dim, hidden_dim)
        self.a_to_params = nn.Linear(hidden_dim, 2 * z_dim)
        self.z_dim = z_dim
        self.hidden_dim = hidden_dim

    def forward(
        self,
        cond: Tensor,
        *,
        z: Tensor | None = None,
        noise: Tensor | None = None,
        sample: bool = True,
    ) -> tuple[Tensor, DiagonalGaussian]:
        """Run the posterior over cond (B, T, C); returns z (B, T, L) and q (B, T, L).

        Which z_t feeds the recurrence (and is returned):
        - `z` given: that sequence (teacher forcing), so q is evaluated at a fixed history;
        - else `sample`: a reparameterised draw, with `noise` (B, T, L) ~ N(0, I) if given;
        - else the posterior mean, so the mean of each step conditions the next one.
        """
        return run_posteriors([self], [cond], zs=[z], noises=[noise], sample=sample)[0]


def step_histories(
    zs: Sequence[Tensor | None],
    noises: Sequence[Tensor | None],
    z_dims: Sequence[int],
    batch: int,
    n_frames: int,
    *,
    like: Tensor,
    sample: bool,
) -> tuple[tuple[Tensor, ...] | None, Tensor | None, tuple[Tensor, ...] | None]:
    """Per step, what a joint posterior loop over several groups feeds back (device and
    dtype of `like`).

    Returns `given`: T x (B, sum L), the groups' fixed histories (zeros for the others),
    with `given_mask` (sum L,) saying which entries are fixed, both None when no group is
    fixed; `eps`: T x (B, sum L) standard-normal noise for the drawn groups (the given
    `noises` where there are), None when nothing is drawn.
    """
    given = given_mask = eps = None
    if any(z is not None for z in zs):
        given = torch.cat(
            [z if z is not None else like.new_zeros(batch, n_frames, d)
             for z, d in zip(zs, z_dims)],
            dim=-1,
        ).unbind(1)
        given_mask = torch.cat(
            [torch.full((d,), z is not None, device=like.device) for z, d in zip(zs, z_dims)]
        )
    if sample and not all(z is not None for z in zs):
        eps = torch.cat(
            [n if n is not None
             else torch.randn(batch, n_frames, d, device=like.device, dtype=like.dtype)
             for n, d in zip(noises, z_dims)],
            dim=-1,
        ).unbind(1)
    return given, given_mask, eps


def run_posteriors(
    recurrences: list[PosteriorRecurrence],
    conds: list[Tensor],
    *,
    zs: list[Tensor | None] | None = None,
    noises: list[Tensor | None] | None = None,
    sample: bool = True,
) -> list[tuple[Tensor, DiagonalGaussian]]:
    """Run conditionally independent posterior recurrences in one loop over time.

    Given their conditioning, q(z_a | ...) and q(z_v | ...) do not interact, so their states
    are concatenated and their weights assembled block-diagonally (once per call): each
    step then costs the ops of one recurrence, and the result is exactly that of running
    them one by one. `conds[g]` is (B, T, C_g); `zs[g]` / `noises[g]` are as `z` / `noise`
    of `PosteriorRecurrence.forward`, per group. Returns (z, q) per group.
    """
    n_groups = len(recurrences)
    zs = zs if zs is not None else [None] * n_groups
    noises = noises if noises is not None else [None] * n_groups
    z_dims = [r.z_dim for r in recurrences]
    batch, n_frames = conds[0].shape[:2]

    # everything that does not depend on sampled history, for all frames at once
    c = torch.cat([r.cond_to_a(cond) for r, cond in zip(recurrences, conds)], dim=-1)
    hidden = c.shape[-1]
    # unbind, not c[:, t]: its backward is one stack, where T selects would each scatter
    # into a zero tensor of the full size
    c_steps = c.unbind(1)  # T x (B, sum H)
    w_h = torch.cat(
        [
            torch.block_diag(*[r.h_to_h.weight.t() for r in recurrences]),
            torch.block_diag(*[r.h_to_a.weight.t() for r in recurrences]),
        ],
        dim=1,
    )  # (sum H, 2 sum H): h_t -> [next state | a_t] in one matmul
    b_h = torch.cat([r.h_to_h.bias for r in recurrences] + [c.new_zeros(hidden)])
    w_z = torch.block_diag(*[r.z_to_h.weight.t() for r in recurrences])  # (sum L, sum H)
    # heads reordered so that one step yields [all means | all log-stds]
    w_o = torch.cat(
        [
            torch.block_diag(*[r.a_to_params.weight[: r.z_dim].t() for r in recurrences]),
            torch.block_diag(*[r.a_to_params.weight[r.z_dim :].t() for r in recurrences]),
        ],
        dim=1,
    )  # (sum H, 2 sum L)
    b_o = torch.cat(
        [r.a_to_params.bias[: r.z_dim] for r in recurrences]
        + [r.a_to_params.bias[r.z_dim :] for r in recurrences]
    )
    n_z = sum(z_dims)

    given, given_mask, eps = step_histories(zs, noises, z_dims, batch, n_frames, like=c,
                                            sample=sample)
    all_given = all(z is not None for z in zs)

    pre = b_h[:hidden].expand(batch, hidden)  # h_1 = tanh(b_h): z_0 = 0, h_0 = 0
    z_out, means, log_stds = [], [], []
    for t in range(n_frames):
        h = torch.tanh(pre)
        # split, not slicing: one backward op for both halves instead of two scatters
        proj_h, proj_a = torch.addmm(b_h, h, w_h).split(hidden, dim=1)  # (B, sum H) each
        a = torch.tanh(c_steps[t] + proj_a)
        mean, log_std = torch.addmm(b_o, a, w_o).split(n_z, dim=1)  # (B, sum L) each
        if all_given:
            z_t = given[t]
        else:
            z_t = torch.addcmul(mean, torch.exp(log_std), eps[t]) if eps is not None else mean
            if given is not None:
                z_t = torch.where(given_mask, given[t], z_t)  # some groups held fixed
        pre = torch.addmm(proj_h, z_t, w_z)
        z_out.append(z_t)
        means.append(mean)
        log_stds.append(log_std)

    z_all = torch.stack(z_out, 1)  # (B, T, sum L)
    mean_all = at_least_float32(torch.stack(means, 1))
    logvar_all = 2.0 * at_least_float32(torch.stack(log_stds, 1))
    results = []
    for g, (z_g, m_g, lv_g) in enumerate(
        zip(z_all.split(z_dims, -1), mean_all.split(z_dims, -1), logvar_all.split(z_dims, -1))
    ):
        results.append((zs[g] if zs[g] is not None else z_g, DiagonalGaussian(m_g, lv_g)))
    return results
