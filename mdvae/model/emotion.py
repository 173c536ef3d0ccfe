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


@dataclass
class ReferenceEmotionHeadConfig(ConfigBase):
    in_dim: int = 84  # size of the w the head reads (the MDVAE's)
    labels: tuple[str, ...] = EMOTIONS  # class names, in logit order
    reference: str = "neutral"  # the emotion the reference clip shows
    # the largest same-person distance (`ReferenceEmotionHead.distance`) of two clips that
    # are taken for one person: a high quantile of same-person pairs' distances
    same_person_within: float = 1.0


class ReferenceEmotionHead(nn.Module):
    """The emotion of a clip read against a clip of the same person showing
    `config.reference` (a resting face): p(emotion | w, w_ref) = softmax(W ((w - w_ref) -
    mean) / std + b).

    A plain head reads emotion and identity mixed in one w, so a new person's resting face
    can pass for a faint expression; the difference from the same person's neutral clip
    cancels most of who they are (research log, "Session 36"). Two clips of different people
    give a difference the head was never fitted on: `distance` (the mean squared difference,
    each entry in units of its spread over same-person pairs) tells them apart, and
    `same_person` compares it with `config.same_person_within`.
    """

    def __init__(self, config: ReferenceEmotionHeadConfig):
        super().__init__()
        self.config = config
        self.head = EmotionHead(EmotionHeadConfig(in_dim=config.in_dim, labels=config.labels))
        self.register_buffer("spread", torch.ones(config.in_dim))

    def forward(self, w: torch.Tensor, w_ref: torch.Tensor) -> torch.Tensor:
        """w, w_ref: (B, in_dim) -> logits (B, n_classes)."""
        return self.head(w.to(self.spread.dtype) - w_ref.to(self.spread.dtype))

    def distance(self, w: torch.Tensor, w_ref: torch.Tensor) -> torch.Tensor:
        """(B,) mean over w's entries of ((w - w_ref) / spread)^2, `spread` the root mean square
        of same-person differences: 1 on average over same-person pairs, more for two people."""
        diff = (w.to(self.spread.dtype) - w_ref.to(self.spread.dtype)) / self.spread
        return diff.pow(2).mean(-1)

    def same_person(self, w: torch.Tensor, w_ref: torch.Tensor) -> torch.Tensor:
        """(B,) bool: the two clips are close enough to be read as one person's."""
        return self.distance(w, w_ref) <= self.config.same_person_within


def reference_pairs(labels: list[str] | np.ndarray, speakers: list[str] | np.ndarray,
                    reference: str = "neutral", max_references: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Every (clip, reference clip) pair of one speaker: the reference a clip whose label is
    `reference`, the clip any other of the speaker's clips (other references included: two
    resting faces are the `reference` class). `max_references`: each speaker's first that
    many reference clips only (a MEAD speaker has about 40 neutral clips and 700 in all: every
    pair would be 28,000 per speaker). Returns (clip rows, reference rows), (P,) each."""
    labels, speakers = np.asarray(labels), np.asarray(speakers)
    clips, refs = [], []
    for speaker in dict.fromkeys(speakers.tolist()):
        mine = np.flatnonzero(speakers == speaker)
        for r in mine[labels[mine] == reference][:max_references]:
            others = mine[mine != r]
            clips.append(others)
            refs.append(np.full(len(others), r))
    if not clips:
        return np.empty(0, dtype=int), np.empty(0, dtype=int)
    return np.concatenate(clips), np.concatenate(refs)


def fit_reference_head(
    w: np.ndarray,
    labels: list[str] | np.ndarray,
    speakers: list[str] | np.ndarray,
    *,
    reference: str = "neutral",
    label_names: tuple[str, ...] = EMOTIONS,
    c: float = 1.0,
    within_quantile: float = 0.99,
    max_references: int | None = None,
) -> ReferenceEmotionHead:
    """A `ReferenceEmotionHead` fitted on every same-speaker pair of `reference_pairs`: the
    logistic regression of `fit_emotion_head` on w - w_ref, the root mean square of those
    differences per entry, and the same-person bound at their distances' `within_quantile`.

    w (N, D) clip posterior means, labels and speakers N names. A class needs pairs to be
    learnt: the `reference` class itself only where a speaker has two or more such clips.
    `max_references` bounds the reference clips per speaker (`reference_pairs`).
    """
    w = np.asarray(w, np.float64)
    rows, refs = reference_pairs(labels, speakers, reference, max_references)
    if not len(rows):
        raise MDVAEError(f"reference emotion head: no speaker has a {reference!r} clip to pair "
                         "the others with")
    diff = w[rows] - w[refs]
    inner = fit_emotion_head(diff, np.asarray(labels)[rows], label_names=label_names, c=c)
    spread = np.sqrt((diff**2).mean(0)) + 1e-6  # root mean square: pairs' mean distance is 1
    distance = ((diff / spread) ** 2).mean(1)
    config = ReferenceEmotionHeadConfig(
        in_dim=w.shape[1], labels=tuple(label_names), reference=reference,
        same_person_within=float(np.quantile(distance, within_quantile)))
    head = ReferenceEmotionHead(config)
    head.head.load_state_dict(inner.state_dict())
    with torch.no_grad():
        head.spread.copy_(torch.from_numpy(spread))
    return head
