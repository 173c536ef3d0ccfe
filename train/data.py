"""Batch streams for the training programs, with a saveable sampler state for ``--resume``.

Every process of a distributed run draws the same global batch from the same seed and
trains on its own slice (``train.common.rank_slice``), so N processes see exactly the data
that one process would.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from mdvae.data.store import Store


class FrameStream:
    """Random single frames of one modality from a split, as model-ready tensors.

    visual: {"x": (B, 3, 64, 64) float in [0, 1]}; audio: {"x": (B, 513) power}.
    """

    def __init__(self, store: Store, split: str, modality: str, batch_size: int, seed: int):
        self.store, self.modality, self.batch_size = store, modality, batch_size
        self.index = store.window_starts(split, 1)
        self.rng = np.random.default_rng(seed)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        rows = np.sort(self.rng.choice(self.index, size=self.batch_size))
        if self.modality == "visual":
            frames = torch.from_numpy(np.ascontiguousarray(self.store.frames[rows]))
            x = frames.permute(0, 3, 1, 2).float() / 255.0  # (B, 3, 64, 64)
        else:
            x = torch.from_numpy(np.ascontiguousarray(self.store.power[rows])).float()
        return {"x": x}

    def get_state(self) -> dict[str, Any]:
        return self.rng.bit_generator.state

    def set_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state


class FeatureWindowStream:
    """Random T-frame windows of cached stage-1 features.

    Batches are {"x_a": (B, T, 512), "x_v": (B, T, 2048)} float32.
    """

    def __init__(
        self,
        audio: np.ndarray,
        visual: np.ndarray,
        starts: np.ndarray,
        length: int,
        batch_size: int,
        seed: int,
    ):
        self.audio, self.visual = audio, visual
        self.starts, self.length, self.batch_size = starts, length, batch_size
        self.rng = np.random.default_rng(seed)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        starts = self.rng.choice(self.starts, size=self.batch_size)
        rows = starts[:, None] + np.arange(self.length)[None, :]  # (B, T)
        x_a = torch.from_numpy(np.asarray(self.audio[rows.ravel()], np.float32))
        x_v = torch.from_numpy(np.asarray(self.visual[rows.ravel()], np.float32))
        return {
            "x_a": x_a.reshape(self.batch_size, self.length, -1),
            "x_v": x_v.reshape(self.batch_size, self.length, -1),
        }

    def get_state(self) -> dict[str, Any]:
        return self.rng.bit_generator.state

    def set_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state


def fixed_batches(stream: Iterator[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """Draw ``n`` batches once, so every validation sees the same data."""
    return [next(stream) for _ in range(n)]
