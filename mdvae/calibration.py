"""Temperature scaling of a classifier's logits, and the expected calibration error.

A classifier is calibrated when, among the clips it answers with probability p, a share p
is right. Temperature scaling (Guo et al., 2017) divides the logits by one number T fitted
on held-out clips to minimise their negative log-likelihood; it changes no prediction, only
how sure each one claims to be. Here the held-out clips are the training and validation
speakers' clips, each read by a copy of the head refitted without its speaker
(`mdvae.model.emotion.out_of_fold_logits`): thousands of clips instead of the 88 of the 4
validation speakers, on which a temperature is mostly noise.

The ECE of a few hundred clips is noisy too: even a perfectly calibrated classifier shows
one well above zero (`ece_noise_floor`), and a table of ECEs reads only beside it.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

ECE_BINS = 15


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0
                            ) -> float:
    """Mean -log p(label) of logits (N, C) divided by `temperature`, labels (N,) int."""
    logp = log_softmax(np.asarray(logits, np.float64) / temperature, axis=1)
    return float(-logp[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, low: float = 0.05,
                    high: float = 50.0) -> float:
    """The T in [low, high] minimising the NLL of softmax(logits / T) (a 1-D search on log T)."""
    labels = np.asarray(labels)
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(logits, labels, float(np.exp(log_t))),
        bounds=(np.log(low), np.log(high)), method="bounded")
    return float(np.exp(result.x))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
                               ) -> float:
    """ECE: the clip-weighted mean, over equal-width bins of the top probability, of
    |accuracy - mean top probability| in each bin. probs (N, C), labels (N,) int."""
    probs = np.asarray(probs, np.float64)
    top = probs.max(axis=1)
    right = probs.argmax(axis=1) == np.asarray(labels)
    which = np.minimum((top * bins).astype(int), bins - 1)
    error = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            error += in_bin.mean() * abs(right[in_bin].mean() - top[in_bin].mean())
    return float(error)


def ece_noise_floor(probs: np.ndarray, bins: int = ECE_BINS, draws: int = 200,
                    seed: int = 0) -> float:
    """The mean ECE of a perfectly calibrated classifier that answers these probabilities
    (N, C): labels drawn from the probabilities themselves, `draws` times. What the ECE of N
    clips reads even when nothing is wrong."""
    probs = np.asarray(probs, np.float64)
    probs = probs / probs.sum(axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    cumulative = probs.cumsum(axis=1)
    errors = []
    for _ in range(draws):
        u = rng.random((len(probs), 1))
        labels = np.minimum((cumulative < u).sum(axis=1), probs.shape[1] - 1)
        errors.append(expected_calibration_error(probs, labels, bins))
    return float(np.mean(errors))


def calibrated(logits: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / T): (N, C) probabilities."""
    return softmax(np.asarray(logits, np.float64) / temperature, axis=1)


# The app answers an emotion only when the calibrated top probability reaches this (and the
# clip is familiar); below it, it says "not sure" and still shows the probabilities.
SURE_FROM = 0.5


def selective(probs: np.ndarray, labels: np.ndarray, sure_from: float = SURE_FROM
              ) -> dict[str, float | None]:
    """What answering only above `sure_from` gives: the share of clips answered and the
    accuracy on those (None when none is answered: bundles store info as strict JSON)."""
    probs = np.asarray(probs, np.float64)
    sure = probs.max(axis=1) >= sure_from
    right = probs.argmax(axis=1) == np.asarray(labels)
    return {"answered": float(sure.mean()),
            "accuracy_answered": float(right[sure].mean()) if sure.any() else None}


def fit_record(logits: np.ndarray, labels: np.ndarray, t: float) -> dict[str, float]:
    """Accuracy, ECE and NLL of `logits` (N, K) against `labels` (N,), before and at `t`."""
    return {
        "accuracy": float((np.asarray(logits).argmax(1) == labels).mean()),
        "ece_before": expected_calibration_error(calibrated(logits, 1.0), labels),
        "ece_after": expected_calibration_error(calibrated(logits, t), labels),
        "nll_before": negative_log_likelihood(logits, labels),
        "nll_after": negative_log_likelihood(logits, labels, t),
    }


def head_temperature(info: dict, head: str) -> float:
    """The temperature a bundle's info records for emotion head `head` (its component name;
    1.0 when the head was not calibrated)."""
    entry = info.get("emotion", {}).get(head, {})
    return float(entry.get("calibration", {}).get("temperature", 1.0))
