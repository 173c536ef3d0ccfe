"""The authors' layout of a dynamical latent: one GRU over the sampled z, shared by its
prior p(z_t | z_1:t-1) and its posterior q(z_t | z_1:t-1, c_t), and q(w) from a
bidirectional GRU.

    s_t = GRU(z_t-1, s_t-1),   s_0 = 0, z_0 = 0        s_t has read z_1:t-1 only
    p(z_t | z_1:t-1)   = N(head_p(s_t))                  head_p: Linear, Tanh, Linear
    q(z_t | z_1:t-1, c_t) = N(head_q([s_t, c_t]))        head_q: Linear, Tanh, ..., Linear

c_t gathers what the posterior conditions on besides the past of its own z: per-frame
inputs (features of x_t or summaries of x_t:T, z_av_t) and the per-sequence w.

How the computation is laid out (`run_shared_posteriors`): the first layer of head_q is a
sum of one product per input block, and only the s_t block depends on the sampled past.
The c_t blocks are one batched product over all frames (w once per sequence) before the
loop; inside it, each step is one product of s_t with [head_q's s-block | the GRU's
hidden-to-hidden weights], the rest of head_q, the draw, and the GRU update: a dozen small
ops. Conditionally independent latents (z_a and z_v given z_av, w) share one loop through
block-diagonal weights. The GRU states of the loop are the states the prior needs, so
training reads p(z_t | z_1:t-1) off them; over a given sequence the prior is one fused
`nn.GRU` call (`SharedGRULatent.prior`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mdvae.model.gaussian import DiagonalGaussian, at_least_float32, gaussian_head
from mdvae.model.observation import mlp
from mdvae.model.posteriors import step_histories
from mdvae.model.priors import ancestral_sample


def linear_of_blocks(linear: nn.Linear, blocks: Sequence[Tensor], start: int = 0) -> Tensor:
    """linear(cat(blocks, -1)) restricted to the input columns from `start` on, without the
    cat and without the bias: each block (B, T, d) or (B, d) meets its own columns; a (B, d)
    block (per sequence) is multiplied once and broadcast over frames. Returns (B, T, out)."""
    out = None
    for block in blocks:
        d = block.shape[-1]
        part = block @ linear.weight[:, start : start + d].t()
        part = part.unsqueeze(1) if block.dim() == 2 else part  # (B, 1, out) per sequence
        out = part if out is None else out + part
        start += d
    return out


class SharedGRULatent(nn.Module):
    """One dynamical latent z (B, T, L) of the authors' layout: GRU, posterior head over
    [s_t, c_t], prior head over s_t. `cond_dim` is the width of c_t (its blocks in order)."""

    def __init__(
        self,
        cond_dim: int,
        z_dim: int,
        state_dim: int,
        posterior_widths: Sequence[int],
        prior_width: int,
    ):
        super().__init__()
        self.rnn = nn.GRU(z_dim, state_dim, batch_first=True)
        # head_q over [s_t, c_t]: the first layer is kept apart so its blocks can be split
        self.posterior_in = nn.Linear(state_dim + cond_dim, posterior_widths[0])
        self.posterior_out = nn.Sequential(
            nn.Tanh(), mlp([*posterior_widths, 2 * z_dim], activation="tanh")
        )
        self.prior_head = gaussian_head(state_dim, prior_width, z_dim)
        self.z_dim = z_dim
        self.state_dim = state_dim

    def condition(self, blocks: Sequence[Tensor]) -> Tensor:
        """The part of head_q's first layer that does not depend on the sampled past, for
        all frames: blocks of c_t in order, (B, T, d) per frame or (B, d) per sequence."""
        return linear_of_blocks(self.posterior_in, blocks, start=self.state_dim) + (
            self.posterior_in.bias
        )

    def prior(self, z: Tensor) -> DiagonalGaussian:
        """p(z_t | z_1:t-1) for every t of a given sequence z (B, T, L): one GRU call."""
        z_prev = F.pad(z[:, :-1], (0, 0, 1, 0))  # (B, T, L): z_0 = 0, z_1, ..., z_T-1
        states, _ = self.rnn(z_prev)  # (B, T, H): states[:, t] has seen z_0..z_t-1
        return self.prior_from_states(states)

    def prior_from_states(self, states: Tensor) -> DiagonalGaussian:
        """p(z_t | z_1:t-1) from the GRU states s_t (B, T, H) of the sampled past."""
        return DiagonalGaussian.from_params(self.prior_head(states))

    def sample(
        self, batch: int, n_frames: int, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, DiagonalGaussian]:
        """Ancestral sampling z_t ~ p(z_t | z_1:t-1): z (B, T, L) and the priors it used."""
        z_0 = self.prior_head[0].weight.new_zeros(batch, 1, self.z_dim)
        return ancestral_sample(self.rnn, self.prior_from_states, z_0, n_frames,
                                generator=generator)


def _gate_blocks(weights: Sequence[Tensor], n_gates: int) -> Tensor:
    """(in_g, n_gates * H_g) per group -> (sum in, n_gates * sum H), block-diagonal within
    each gate, so that the joint pre-activations chunk into gates like one GRU's."""
    per_gate = [w.chunk(n_gates, dim=1) for w in weights]
    return torch.cat([torch.block_diag(*[g[k] for g in per_gate]) for k in range(n_gates)], 1)


def _gate_bias(biases: Sequence[Tensor], n_gates: int) -> Tensor:
    per_gate = [b.chunk(n_gates) for b in biases]
    return torch.cat([torch.cat([g[k] for g in per_gate]) for k in range(n_gates)])


def run_shared_posteriors(
    latents: list[SharedGRULatent],
    conditions: list[Tensor],
    *,
    zs: list[Tensor | None] | None = None,
    noises: list[Tensor | None] | None = None,
    sample: bool = True,
) -> list[tuple[Tensor, DiagonalGaussian, Tensor]]:
    """Run the posteriors of conditionally independent latents in one loop over time.

    `conditions[g]` (B, T, A_g) is `latents[g].condition(...)`; `zs[g]` holds the group at a
    given sequence (teacher forcing) and `noises[g]` (B, T, L_g) ~ N(0, I) fixes the draw;
    without `sample` each step feeds the posterior mean forward. Returns per group
    (z (B, T, L), q (B, T, L), GRU states s_1..s_T (B, T, H), which p(z_t | z_1:t-1) reads).
    """
    n_groups = len(latents)
    zs = zs if zs is not None else [None] * n_groups
    noises = noises if noises is not None else [None] * n_groups
    z_dims = [m.z_dim for m in latents]
    state_dims = [m.state_dim for m in latents]
    first_dims = [c.shape[-1] for c in conditions]
    batch, n_frames = conditions[0].shape[:2]
    n_z, n_s, n_a = sum(z_dims), sum(state_dims), sum(first_dims)
    like = conditions[0]

    # weights assembled once per call: s_t -> [head_q first layer | GRU hidden gates]
    w_s = torch.cat(
        [
            torch.block_diag(*[m.posterior_in.weight[:, : m.state_dim].t() for m in latents]),
            _gate_blocks([m.rnn.weight_hh_l0.t() for m in latents], 3),
        ],
        dim=1,
    )  # (sum H, sum A + 3 sum H)
    b_hh = _gate_bias([m.rnn.bias_hh_l0 for m in latents], 3)
    b_ih = _gate_bias([m.rnn.bias_ih_l0 for m in latents], 3)
    # the r and u gates add their input and hidden biases; n keeps them apart
    b_gates = torch.cat([b_hh[: 2 * n_s] + b_ih[: 2 * n_s], b_hh[2 * n_s :]])
    w_z_ru, w_z_n = _gate_blocks([m.rnn.weight_ih_l0.t() for m in latents], 3).split(
        [2 * n_s, n_s], dim=1
    )  # (sum L, 2 sum H), (sum L, sum H)
    b_z_n = b_ih[2 * n_s :]
    # the rest of head_q: hidden layers block-diagonal; the output reordered to
    # [means | log-stds], the log-variance rows halved so that exp gives the std directly
    linears = [[x for x in m.posterior_out.modules() if isinstance(x, nn.Linear)] for m in latents]
    hidden = [
        (
            torch.block_diag(*[layers[k].weight.t() for layers in linears]),
            torch.cat([layers[k].bias for layers in linears]),
        )
        for k in range(len(linears[0]) - 1)
    ]
    outs = [layers[-1] for layers in linears]
    w_o = torch.cat(
        [
            torch.block_diag(*[o.weight[: m.z_dim].t() for o, m in zip(outs, latents)]),
            0.5 * torch.block_diag(*[o.weight[m.z_dim :].t() for o, m in zip(outs, latents)]),
        ],
        dim=1,
    )  # (sum last width, 2 sum L)
    b_o = torch.cat(
        [o.bias[: m.z_dim] for o, m in zip(outs, latents)]
        + [0.5 * o.bias[m.z_dim :] for o, m in zip(outs, latents)]
    )

    # per step, s_t @ w_s lands on [c_t block of head_q's first layer | GRU gate biases]
    step_inputs = torch.cat([*conditions, b_gates.expand(batch, n_frames, -1)], dim=-1).unbind(
        1
    )  # T x (B, sum A + 3 sum H)
    all_given = all(z is not None for z in zs)
    given, given_mask, eps = step_histories(zs, noises, z_dims, batch, n_frames, like=like,
                                            sample=sample)

    def gru_update(state: Tensor, z: Tensor, gates_ru: Tensor, gates_n: Tensor) -> Tensor:
        # PyTorch's GRU: r, u = sigmoid(.), n = tanh(i_n + r * h_n), s' = (1 - u) n + u s
        r, u = torch.sigmoid(torch.addmm(gates_ru, z, w_z_ru)).split(n_s, dim=1)
        n = torch.tanh(torch.addcmul(torch.addmm(b_z_n, z, w_z_n), r, gates_n))
        return torch.addcmul(n, u, state - n)

    # s_1 = GRU(z_0 = 0, s_0 = 0): the gates are the biases alone
    zero_s, zero_z = like.new_zeros(batch, n_s), like.new_zeros(batch, n_z)
    ru_0, n_0 = b_gates.expand(batch, -1).split([2 * n_s, n_s], dim=1)
    state = gru_update(zero_s, zero_z, ru_0, n_0)
    z_out, means, log_stds, states = [], [], [], []
    for t in range(n_frames):
        states.append(state)
        # split, not slicing: one backward op for all parts
        pre_a, gates_ru, gates_n = torch.addmm(step_inputs[t], state, w_s).split(
            [n_a, 2 * n_s, n_s], dim=1
        )
        a = torch.tanh(pre_a)
        for w_h, b_h in hidden:
            a = torch.tanh(torch.addmm(b_h, a, w_h))
        mean, log_std = torch.addmm(b_o, a, w_o).split(n_z, dim=1)  # (B, sum L) each
        if all_given:
            z_t = given[t]
        else:
            z_t = torch.addcmul(mean, torch.exp(log_std), eps[t]) if eps is not None else mean
            if given is not None:
                z_t = torch.where(given_mask, given[t], z_t)  # some groups held fixed
        z_out.append(z_t)
        means.append(mean)
        log_stds.append(log_std)
        if t + 1 < n_frames:
            state = gru_update(state, z_t, gates_ru, gates_n)

    z_all = torch.stack(z_out, 1).split(z_dims, -1)  # (B, T, L_g) per group
    mean_all = at_least_float32(torch.stack(means, 1)).split(z_dims, -1)
    logvar_all = (2.0 * at_least_float32(torch.stack(log_stds, 1))).split(z_dims, -1)
    state_all = torch.stack(states, 1).split(state_dims, -1)  # (B, T, H_g) per group
    return [
        (
            zs[g] if zs[g] is not None else z_all[g],
            DiagonalGaussian(mean_all[g], logvar_all[g]),
            state_all[g],
        )
        for g in range(n_groups)
    ]


class BiGRUStaticPosterior(nn.Module):
    """q(w | x_1:T) of the authors' layout: a bidirectional GRU over the per-frame features,
    its two final states -> Linear, Tanh -> mean and log-variance. `dropout` > 0 zeroes that
    share of the final states in training (`w_input_dropout`)."""

    def __init__(self, in_dim: int, hidden_dim: int, w_dim: int, dropout: float = 0.0):
        super().__init__()
        self.rnn = nn.GRU(in_dim, hidden_dim, batch_first=True, bidirectional=True)
        self.head = gaussian_head(2 * hidden_dim, hidden_dim, w_dim)
        self.dropout = dropout

    def forward(self, features: Sequence[Tensor]) -> DiagonalGaussian:
        """features [(B, T, F_i), ...], concatenated per frame -> q(w) over (B, Lw)."""
        _, final = self.rnn(torch.cat(list(features), dim=-1))  # (2, B, H): forward, backward
        pooled = torch.cat([final[0], final[1]], -1)  # (B, 2H)
        pooled = nn.functional.dropout(pooled, self.dropout, self.training)
        return DiagonalGaussian.from_params(self.head(pooled))
