"""How well a bundle explains a clip, placed against how well it explains its test clips.

A VAE scores every clip it encodes. Four scores per clip, each "lower is more familiar":
- ``mdvae``: the MDVAE's negative ELBO in nats per frame, evaluated at the posterior means
  (every latent its mean, the reconstruction terms at the decoded means, the KLs in closed
  form), so the score is deterministic;
- ``mdvae_audio``: the audio part of it, frame by frame: -log p(x_a_t | z_av_t, z_a_t, w)
  plus KL(q(z_a_t | ...) || p(z_a_t | z_a_1:t-1)), the median over the clip's frames. The
  whole bound is dominated by the 2048 visual dimensions, whose spread over the test clips
  hid a foreign voice behind a familiar face; the median frame (not the mean) because the
  test clips' per-frame audio terms have a long upper tail of a few badly explained frames
  that widens the worst clip's mean, while a foreign voice moves the typical frame (README,
  "Knowing the limits of the bundle");
- ``vq_visual``: the visual VQ-VAE's reconstruction error, mean squared error per pixel in
  [0, 1] units (its training loss), averaged over frames;
- ``vq_audio``: the audio VQ-VAE's, the Itakura-Saito divergence per bin of the log-power
  (its training loss), averaged over frames.

`reference_table` summarises the scores of a bundle's held-out test clips (quantiles), and
`train.export --reference-store` stores it in the bundle's ``info["familiarity"]``, so the
app only compares a clip's four numbers with four short tables. `Familiarity` is that
comparison: each score's percentile among the test clips, how far beyond them it lies, and
a verdict from the least familiar of them. A score the bundle's table lacks (a bundle
exported before `mdvae_audio` existed) is computed but left out of the verdict.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mdvae.model.gaussian import kl_divergence
from mdvae.stage1.codec import AVCodec
from mdvae.stage1.vqvae import frames_to_input, itakura_saito_from_log

# score name -> what it measures, for the page and the model card
SCORES: dict[str, str] = {
    "mdvae": "MDVAE negative ELBO (nats per frame, at the posterior means)",
    "mdvae_audio": "MDVAE negative ELBO, audio part (nats, median frame: audio "
                   "reconstruction + KL of z_a)",
    "vq_visual": "visual VQ-VAE reconstruction error (MSE per pixel)",
    "vq_audio": "audio VQ-VAE reconstruction error (Itakura-Saito per bin)",
}
# The plain words for each score, in sentences ("the face", "the voice", ...).
SCORE_WORDS = {"mdvae": "the face and voice together", "mdvae_audio": "the voice",
               "vq_visual": "the face", "vq_audio": "the sound"}
# A clip is familiar while none of its scores lies further beyond the test clips' median
# than this many times the distance from that median to the worst test clip (its "spread";
# 1: as bad as the worst test clip). A percentile cut (say the 99th) would call ~3 % of
# clips like the test clips unfamiliar by construction; on the shipped bundle (its table from
# 64 new speakers since session 29), clips of other new synthetic speakers reach a spread of
# 1.2 at most and real faces 5.4 at least (README). "Test clips" here: the reference clips,
# held-out clips of speakers the bundle never trained on.
FAMILIAR_SPREAD = 1.5
N_QUANTILES = 101  # the reference table keeps the 0th, 1st, ..., 100th percentiles


@torch.no_grad()
def clip_scores(mdvae, codec: AVCodec, frames: np.ndarray, power: np.ndarray,
                x_a: Tensor | None = None, x_v: Tensor | None = None) -> dict[str, float]:
    """The four scores of one clip: frames (T, 64, 64, 3) uint8, power (T, 513).

    x_a (1, T, 512), x_v (1, T, 2048): the clip's stage-1 features when already computed
    (they are recomputed otherwise).
    """
    if x_a is None or x_v is None:
        x_a, x_v = codec.encode(frames[None], power[None])  # (1, T, D)
    x_a, x_v = x_a.to(codec.device).float(), x_v.to(codec.device).float()
    latents, posterior = mdvae.infer(x_a, x_v, sample=False)
    prior = mdvae.priors(latents)
    x_a_hat, x_v_hat = mdvae.decode(latents)
    terms = mdvae.elbo(x_a, x_v, x_a_hat, x_v_hat, posterior, prior)
    audio_frames = (mdvae.decoder_x_a.frame_negative_log_likelihood(x_a, x_a_hat)
                    + kl_divergence(posterior.z_a, prior.z_a))[0]  # (T,)

    vq_v, vq_a = codec.vq_visual, codec.vq_audio
    visual, audio = [], []
    for lo in range(0, len(frames), codec.chunk):
        rows = slice(lo, lo + codec.chunk)
        image = frames_to_input(torch.as_tensor(frames[rows])).to(codec.device)  # (t, 3, 64, 64)
        decoded = vq_v.decode_features(x_v[0, rows])  # (t, 3, 64, 64)
        visual.append(((decoded - image) ** 2).flatten(1).mean(1))
        spec = torch.as_tensor(np.asarray(power[rows], np.float32)).to(codec.device)  # (t, 513)
        log_hat = torch.log(vq_a.decode_features(x_a[0, rows]))  # (t, 513)
        log_power = torch.log(spec + vq_a.config.power_floor)
        audio.append(itakura_saito_from_log(log_power, log_hat).mean(1))
    return {
        "mdvae": float(terms.negative_elbo),
        "mdvae_audio": float(torch.quantile(audio_frames, 0.5)),
        "vq_visual": float(torch.cat(visual).mean()),
        "vq_audio": float(torch.cat(audio).mean()),
    }


def reference_table(scores: Mapping[str, np.ndarray], **about: Any) -> dict[str, Any]:
    """info["familiarity"] from each score's values on the reference (test) clips (N,):
    their percentiles 0..100, plus `about` (store, split, ...)."""
    table: dict[str, Any] = {
        "latents": "posterior means",
        "familiar_within_spread": FAMILIAR_SPREAD,
        **about,
        "scores": {},
    }
    for name, values in scores.items():
        values = np.asarray(values, np.float64)
        quantiles = np.percentile(values, np.linspace(0, 100, N_QUANTILES))
        table["scores"][name] = {
            "about": SCORES.get(name, name),
            "clips": int(len(values)),
            "median": float(np.median(values)),
            "quantiles": [float(q) for q in quantiles],
        }
    return table


def percentile(value: float, quantiles: list[float] | np.ndarray) -> float:
    """Share (in %) of the reference clips scoring below `value`, interpolated in the
    table of their percentiles 0..100: 0 below the best clip, 100 beyond the worst."""
    q = np.maximum.accumulate(np.asarray(quantiles, np.float64))  # ties: non-decreasing
    return float(np.interp(value, q, np.linspace(0, 100, len(q))))


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _spread(value: float, entry: Mapping[str, Any]) -> float:
    median, worst = entry["median"], entry["quantiles"][-1]
    return float((value - median) / max(worst - median, 1e-12))


@dataclass(frozen=True)
class Familiarity:
    """A clip's scores and, when the bundle has a reference table, their percentiles.

    scores: name -> value (see SCORES); percentiles: name -> % of the bundle's test clips
    that the bundle explains better than this clip (100: worse than every one of them);
    spreads: name -> (score - the test clips' median) / (their worst - their median): how
        far beyond them a clip lies (1: as far as the worst test clip);
    reference_clips: how many test clips the table summarises; threshold: the largest spread
    of a familiar clip (FAMILIAR_SPREAD, or the bundle's own).
    """

    scores: dict[str, float]
    percentiles: dict[str, float] | None = None
    spreads: dict[str, float] | None = None
    reference_clips: int = 0
    threshold: float = FAMILIAR_SPREAD

    @classmethod
    def of(cls, scores: dict[str, float], reference: Mapping[str, Any] | None) -> Familiarity:
        """Place `scores` against a bundle's info["familiarity"] (None: no table)."""
        if not reference or not reference.get("scores"):
            return cls(dict(scores))
        table = reference["scores"]
        names = [n for n in scores if n in table]
        return cls(
            dict(scores),
            {n: percentile(scores[n], table[n]["quantiles"]) for n in names},
            {n: _spread(scores[n], table[n]) for n in names},
            min(int(table[n]["clips"]) for n in names) if names else 0,
            float(reference.get("familiar_within_spread", FAMILIAR_SPREAD)),
        )

    @property
    def known(self) -> bool:
        return bool(self.percentiles)

    @property
    def worst(self) -> str | None:
        """The score on which the clip is least familiar."""
        if not self.percentiles:
            return None
        return max(self.spreads, key=self.spreads.get)

    @property
    def percentile(self) -> float | None:
        """The least familiar score's percentile (the gauge's reading)."""
        return self.percentiles[self.worst] if self.percentiles else None

    @property
    def familiar(self) -> bool | None:
        """True when no score's spread exceeds the threshold; None without a table."""
        if not self.spreads:
            return None
        return all(s <= self.threshold for s in self.spreads.values())

    @property
    def level(self) -> str:
        """"familiar", "unfamiliar", or "unknown" (the bundle has no reference table)."""
        return {True: "familiar", False: "unfamiliar", None: "unknown"}[self.familiar]

    def sentence(self, what: str = "this clip") -> str:
        """One plain sentence for the page."""
        if not self.known:
            return (f"The model cannot say how familiar {what} is: this bundle carries no "
                    f"reference scores (re-export it with train.export --reference-store).")
        worst, p = self.worst, self.percentile
        if self.familiar and p >= 99.0:
            return (f"{_capital(what)} is familiar to the model, though at the edge of what "
                    f"it knows: on {SCORE_WORDS.get(worst, worst)} it is explained about as "
                    f"badly as the worst of its {self.reference_clips} held-out clips.")
        if self.familiar:
            return (f"{_capital(what)} is familiar to the model: even on "
                    f"{SCORE_WORDS.get(worst, worst)}, its least familiar side, it sits "
                    f"among the model's {self.reference_clips} held-out clips ({p:.0f}% of them "
                    f"are explained better); expect a faithful result.")
        if p >= 100.0:  # (a clip is unfamiliar only beyond every test clip)
            how = (f"less familiar than all {self.reference_clips} of its held-out clips "
                   f"({self.spreads[worst]:.1f} times as far from their median as the "
                   f"least familiar of them)")
        else:
            how = f"less familiar than {p:.1f}% of its {self.reference_clips} held-out clips"
        return (f"{_capital(what)} is unlike anything the model was trained on: "
                f"{SCORE_WORDS.get(worst, worst)} is {how}. Expect a cartoon-like result "
                f"and no reliable emotion.")

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON for API callers."""
        return {
            "level": self.level,
            "percentile": self.percentile,
            "least_familiar": self.worst,
            "scores": self.scores,
            "percentiles": self.percentiles,
            "spread_beyond_test_median": self.spreads,
            "reference_clips": self.reference_clips,
            "familiar_within_spread": self.threshold,
            "sentence": self.sentence(),
        }
