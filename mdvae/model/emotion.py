"""The emotion head: multinomial logistic regression on the posterior mean of w.

It is fitted with scikit-learn (``fit_emotion_head``) and stored as a small torch module so
that it travels in a bundle's safetensors like every other component. The input is
standardised with the training set's statistics, folded into the module's buffers.
``out_of_fold_logits`` refits the same head on all but one group of speakers at a time, so
each clip gets logits from a head that never saw its speaker: what calibrating the shipped
head needs (`train/reference.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mdvae.config import ConfigBase
from mdvae.errors import MDVAEError
from mdvae.labels import EMOTIONS


@dataclass
class EmotionHeadConfig(ConfigBase):
    in_dim: int = 84  # size of the static latent the head reads (w of the MDVAE or a DSAE)
    labels: tuple[str, ...] = EMOTIONS  # class names, in logit order


class EmotionHead(nn.Module):
    """p(emotion | w) = softmax(W (w - mean) / std + b)."""

    def __init__(self, config: EmotionHeadConfig):
        super().__init__()
        self.config = config
        self.linear = nn.Linear(config.in_dim, len(config.labels))
        self.register_buffer("mean", torch.zeros(config.in_dim))
        self.register_buffer("std", torch.ones(config.in_dim))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        """w: (B, in_dim) -> logits (B, n_classes)."""
        return self.linear((w.to(self.mean.dtype) - self.mean) / self.std)

    @torch.no_grad()
    def probabilities(self, w: torch.Tensor) -> dict[str, float] | list[dict[str, float]]:
        """Class probabilities by label name, for one w (in_dim,) or a batch (B, in_dim)."""
        single = w.dim() == 1
        probs = torch.softmax(self.forward(w.reshape(-1, self.config.in_dim)), dim=-1)
        rows = [dict(zip(self.config.labels, map(float, p))) for p in probs]
        return rows[0] if single else rows


def fit_emotion_head(
    features: np.ndarray,
    labels: list[str] | np.ndarray,
    *,
    label_names: tuple[str, ...] = EMOTIONS,
    c: float = 1.0,
    max_iter: int = 2000,
) -> EmotionHead:
    """Fit a multinomial logistic regression (L2, inverse strength ``c``) and wrap it.

    features: (N, D) posterior means; labels: N label names from ``label_names``. Classes
    absent from the training labels get a large negative bias so they are never predicted.
    """
    from sklearn.linear_model import LogisticRegression

    features = np.asarray(features, np.float64)
    if features.ndim != 2 or len(features) != len(labels):
        raise MDVAEError(
            f"emotion head: expected (N, D) features and N labels, "
            f"got {features.shape} and {len(labels)}"
        )
    index = {name: i for i, name in enumerate(label_names)}
    unknown = sorted({str(y) for y in labels} - set(index))
    if unknown:
        raise MDVAEError(f"emotion head: unknown labels {unknown}; expected {label_names}")
    y = np.array([index[str(v)] for v in labels])
    present = np.unique(y)
    if len(present) < 2:
        raise MDVAEError("emotion head: the training labels hold fewer than two classes")
    mean = features.mean(0)
    std = features.std(0) + 1e-6
    clf = LogisticRegression(C=c, max_iter=max_iter)
    clf.fit((features - mean) / std, y)

    head = EmotionHead(EmotionHeadConfig(in_dim=features.shape[1], labels=tuple(label_names)))
    weight = np.zeros((len(label_names), features.shape[1]))
    bias = np.full(len(label_names), -1e4)
    if len(present) > 2:
        weight[clf.classes_] = clf.coef_
        bias[clf.classes_] = clf.intercept_
    else:  # scikit-learn keeps one logit for two classes: the first class's is zero
        weight[clf.classes_[1]] = clf.coef_[0]
        bias[clf.classes_] = [0.0, clf.intercept_[0]]
    with torch.no_grad():
        head.linear.weight.copy_(torch.from_numpy(weight))
        head.linear.bias.copy_(torch.from_numpy(bias))
        head.mean.copy_(torch.from_numpy(mean))
        head.std.copy_(torch.from_numpy(std))
    return head


def out_of_fold_logits(
    features: np.ndarray,
    labels: list[str] | np.ndarray,
    groups: list[str] | np.ndarray,
    *,
    folds: int = 5,
    label_names: tuple[str, ...] = EMOTIONS,
    c: float = 1.0,
) -> np.ndarray:
    """Logits (N, n_classes) of every clip from a head refitted without its group.

    features (N, D), labels N names, groups N speaker names: the clips are split into
    `folds` folds of whole speakers (scikit-learn's GroupKFold, fewer folds when there are
    fewer speakers), and each fold is read by ``fit_emotion_head(..., c=c)`` fitted on the
    others. Needs at least two speakers.
    """
    from sklearn.model_selection import GroupKFold

    features = np.asarray(features, np.float64)
    labels, groups = np.asarray(labels), np.asarray(groups)
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise MDVAEError(f"out-of-fold logits need clips of at least two speakers, got {n_groups}")
    logits = np.zeros((len(features), len(label_names)))
    for seen, held_out in GroupKFold(min(folds, n_groups)).split(features, labels, groups):
        head = fit_emotion_head(features[seen], labels[seen], label_names=label_names, c=c)
        with torch.no_grad():
            logits[held_out] = head(torch.from_numpy(features[held_out])).double().numpy()
    return logits
