"""The latent variables as values: groups that can be swapped between encodings, and the
static latent w over time (repeated per frame, or interpolated between two clips)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import torch
from torch import Tensor

from mdvae.errors import MDVAEError


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
