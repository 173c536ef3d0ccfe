"""EMA vector quantiser of the VQ-VAE (van den Oord et al. 2017, appendix A.1).

The codebook gets no gradient: each code is the running mean of the encoder vectors
assigned to it, kept as two exponential moving averages (how many vectors each code
received, and their sum). The encoder is pulled towards its codes by the commitment loss,
and the decoder's gradient reaches the encoder through the straight-through estimator.

Codebook state lives in buffers so that it is saved with the weights, moves with
`.to(device)` and is broadcast by DistributedDataParallel like any other buffer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from einops import rearrange
from torch import Tensor, nn


@dataclass
class QuantizerOutput:
    """What quantising a batch of vectors gives back."""

    z_q: Tensor  # (B, N, D) nearest codes; straight-through to z_e when z_e needs gradients
    indices: Tensor  # (B, N) int64 index of the nearest code of each vector
    commit_loss: Tensor  # () mean over elements of (z_e - sg(z_q))^2, not yet weighted by beta
    perplexity: Tensor  # () exp(entropy of code usage in this batch), from 1 to num_codes


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


class EMAVectorQuantizer(nn.Module):
    """Nearest-neighbour quantiser with a codebook of `num_codes` vectors of size `dim`.

    Training mode updates the codebook after each forward pass (under no_grad):
        cluster_size  <- decay * cluster_size  + (1 - decay) * n_k
        embedding_sum <- decay * embedding_sum + (1 - decay) * sum of the vectors assigned to k
        embedding_k   <- embedding_sum_k / cluster_size_k,   only for codes with n_k > 0
    A code that received no vector keeps its value exactly (its two averages shrink by the
    same factor, so their ratio, the code, is unchanged anyway).

    Dead codes: with `dead_code_threshold` > 0, a code whose `cluster_size` (average number
    of vectors per batch it received lately) falls below the threshold is re-seeded with a
    random vector of the current batch, its averages set as if it had received that vector
    `dead_code_threshold` times. The averages start at zero, so the first training batch
    re-seeds every code it did not use: the codebook is initialised from data.

    Under torch.distributed the per-batch counts and sums are summed over processes and
    re-seed vectors come from rank 0, so every process keeps the same codebook.
    """

    def __init__(
        self,
        num_codes: int,
        dim: int,
        decay: float = 0.99,
        eps: float = 1e-5,
        dead_code_threshold: float = 0.0,
    ):
        super().__init__()
        if num_codes < 1 or dim < 1:
            raise ValueError(f"num_codes and dim must be positive, got {num_codes}, {dim}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.num_codes = num_codes
        self.dim = dim
        self.decay = decay
        self.eps = eps
        self.dead_code_threshold = dead_code_threshold
        self.register_buffer("embedding", torch.randn(num_codes, dim))  # (K, D)
        self.register_buffer("cluster_size", torch.zeros(num_codes))  # (K,)
        self.register_buffer("embedding_sum", torch.zeros(num_codes, dim))  # (K, D)

    def codes_from_indices(self, indices: Tensor) -> Tensor:
        """Codes of `indices` (...,) -> (..., D): the inverse of quantisation."""
        return self.embedding[indices]

    def quantize(self, z_e: Tensor) -> QuantizerOutput:
        """Quantise `z_e` (B, N, D) with the current codebook; never changes the codebook."""
        if z_e.shape[-1] != self.dim:
            raise ValueError(f"expected vectors of size {self.dim}, got shape {tuple(z_e.shape)}")
        # Distances in float32 even under autocast: argmin over near-ties is precision-sensitive.
        flat = rearrange(z_e, "b n d -> (b n) d").float()  # (M, D)
        codes = self.embedding.float()  # (K, D)
        distances = (
            flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codes.t() + codes.pow(2).sum(1)[None]
        )  # (M, K)
        indices_flat = distances.argmin(1)  # (M,)
        indices = indices_flat.view(z_e.shape[:-1])  # (B, N)
        z_q = self.codes_from_indices(indices).to(z_e.dtype)  # (B, N, D)

        commit_loss = (z_e - z_q.detach()).pow(2).mean()
        usage = torch.bincount(indices_flat, minlength=self.num_codes).float() / len(indices_flat)
        perplexity = torch.exp(-(usage * torch.log(usage + 1e-10)).sum())
        # The straight-through sum is only needed when gradients flow; skipping it otherwise
        # keeps inference outputs bit-identical to codes_from_indices(indices).
        if z_e.requires_grad:
            z_q = z_e + (z_q - z_e).detach()
        return QuantizerOutput(z_q, indices, commit_loss, perplexity)

    def forward(self, z_e: Tensor) -> QuantizerOutput:
        """Quantise `z_e` (B, N, D); in training mode, then update the codebook by EMA."""
        out = self.quantize(z_e)
        if self.training:
            self._ema_update(z_e.detach(), out.indices)
        return out

    @torch.no_grad()
    def _ema_update(self, z_e: Tensor, indices: Tensor) -> None:
        flat = rearrange(z_e, "b n d -> (b n) d").float()  # (M, D)
        indices = indices.reshape(-1)  # (M,)
        counts = torch.bincount(indices, minlength=self.num_codes).float()  # (K,)
        sums = torch.zeros_like(self.embedding_sum).index_add_(0, indices, flat)  # (K, D)
        if _distributed():
            dist.all_reduce(counts)
            dist.all_reduce(sums)

        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embedding_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        used = counts > 0
        self.embedding[used] = self.embedding_sum[used] / self.cluster_size[used].clamp(
            min=self.eps
        ).unsqueeze(1)

        if self.dead_code_threshold > 0:
            self._reseed_dead_codes(flat)

    def _reseed_dead_codes(self, flat: Tensor) -> None:
        dead = self.cluster_size < self.dead_code_threshold  # (K,), same on every rank
        n_dead = int(dead.sum())
        if n_dead == 0:
            return
        picks = torch.randint(len(flat), (n_dead,), device=flat.device)
        seeds = flat[picks]  # (n_dead, D)
        if _distributed():
            dist.broadcast(seeds, src=0)
        self.embedding[dead] = seeds.to(self.embedding.dtype)
        self.cluster_size[dead] = self.dead_code_threshold
        self.embedding_sum[dead] = seeds * self.dead_code_threshold

    def extra_repr(self) -> str:
        return (
            f"num_codes={self.num_codes}, dim={self.dim}, decay={self.decay}, "
            f"dead_code_threshold={self.dead_code_threshold}"
        )
