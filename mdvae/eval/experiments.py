"""The seed's experiments as functions. `python -m train.evaluate` runs them all; each works
on arrays, so a notebook can run one on its own.

- `reconstruction`: held-out clips through the VQ-VAEs alone, the MDVAE and the DSAEs.
- `denoising`: Gaussian noise on a face region of the 6 central frames of 10-frame
  sequences, audio intact; encode, decode, PSNR / SSIM on the corrupted pixels.
  `read_denoised_mouths`: a judge's mouth head reads the frames `denoising` kept, as a PSNR
  cannot tell an average mouth from the right one.
- `emotion_curve`: logistic regression on the posterior mean of w against the share of
  labelled training clips.

The models compared are those of `mdvae.components.COMPARED`; the disentanglement scores
of the synthetic benchmark are in `mdvae.eval.disentanglement`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from mdvae.calibration import SURE_FROM, calibrated, ece_noise_floor, fit_record, selective
from mdvae.components import (
    COMPARED,
    DENOISERS,
    DSAE_AUDIO,
    DSAE_VISUAL,
    EMOTION_READERS,
    LATE_FUSION,
    MDVAE_MODEL,
    VQ_AUDIO,
    VQ_VISUAL,
    available,
    reconstruct,
)
from mdvae.errors import MDVAEError
from mdvae.eval import judges as J
from mdvae.eval import metrics
from mdvae.eval.stats import binomial_se, paired_difference, se_over_speakers
from mdvae.labels import EMOTIONS
from mdvae.media.audio import log_spectral_distance
from mdvae.model.dsae import DSAE
from mdvae.model.emotion import reference_pairs
from mdvae.model.mdvae import MDVAE
from mdvae.stage1.codec import AVCodec

# ---------------------------------------------------------------------------------------
# Models


@dataclass
class Models:
    """The parts of a bundle the protocols run; DSAEs are optional."""

    codec: AVCodec
    mdvae: MDVAE
    dsae_audio: DSAE | None = None
    dsae_visual: DSAE | None = None
    heads: dict[str, torch.nn.Module] = field(default_factory=dict)  # bundle's emotion heads

    @classmethod
    def from_bundle(cls, bundle) -> Models:
        def part(name):
            return bundle[name].eval() if name in bundle else None

        heads = {
            r.head: bundle[r.head].eval() for r in EMOTION_READERS.values() if r.head in bundle
        }
        return cls(
            AVCodec(bundle[VQ_AUDIO], bundle[VQ_VISUAL]),
            bundle[MDVAE_MODEL].eval(),
            part(DSAE_AUDIO),
            part(DSAE_VISUAL),
            heads,
        )

    @property
    def device(self) -> torch.device:
        return self.codec.device

    @property
    def components(self) -> dict[str, torch.nn.Module]:
        """The stage-2 models present, by bundle component name."""
        models = {MDVAE_MODEL: self.mdvae, DSAE_AUDIO: self.dsae_audio}
        models[DSAE_VISUAL] = self.dsae_visual
        return {name: model for name, model in models.items() if model is not None}

    def names(self) -> list[str]:
        """The models to compare: the VQ-VAEs alone, the MDVAE and the DSAEs present."""
        return available(COMPARED, self.components)


MODEL_TITLES = {
    "noisy": "noisy input",
    **{name: c.title for name, c in COMPARED.items()},
    LATE_FUSION: "A-DSAE + V-DSAE w together",
}


def chunks(n: int, size: int) -> Iterable[slice]:
    for lo in range(0, n, size):
        yield slice(lo, min(n, lo + size))


@torch.no_grad()
def decode_features(
    models: Models, x_a: Tensor | None, x_v: Tensor | None, frames: slice | np.ndarray = slice(None)
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Stage-2 features (B, T, D) -> frames (B, T', 64, 64, 3) at the `frames` indices only
    (the VQ-VAE decoder is the costly part, and it works frame by frame) and power
    (B, T, 513) at every frame."""
    v = None if x_v is None else models.codec.decode_visual(x_v[:, frames])
    a = None if x_a is None else models.codec.decode_audio(x_a)
    return v, a


@torch.no_grad()
def model_outputs(
    models: Models,
    x_a: Tensor,
    x_v: Tensor,
    names: Sequence[str],
    frames: slice | np.ndarray = slice(None),
) -> dict[str, tuple[np.ndarray | None, np.ndarray | None]]:
    """Decoded (frames, power) of each model of `mdvae.components.COMPARED` for the same
    encoded clips x_a (B, T, 512), x_v (B, T, 2048), with posterior means: "vqvae" (the
    features straight back through the codebooks), "mdvae", "dsae_visual" (frames only),
    "dsae_audio" (power only)."""
    out = {}
    for name in names:
        if name not in COMPARED:
            raise MDVAEError(f"unknown model {name!r}")
        out[name] = decode_features(
            models, *reconstruct(name, models.components, x_a, x_v), frames
        )
    return out


# ---------------------------------------------------------------------------------------
# Reconstruction


def reconstruction(
    models: Models,
    frames: np.ndarray,
    power: np.ndarray,
    masks: dict[str, np.ndarray] | None = None,
    *,
    batch: int = 8,
    show: bool = True,
) -> dict[str, dict[str, float]]:
    """Held-out clips (N, T, ...) through each model. Per model: visual PSNR (dB) and SSIM
    over whole frames, PSNR over each region of `masks` (N, T, 64, 64), audio log-spectral
    distance (dB); each computed per clip, then averaged over clips."""
    names = models.names()
    per_clip: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    for part in tqdm(list(chunks(len(frames), batch)), desc="reconstruction", disable=not show):
        x_a, x_v = models.codec.encode(frames[part], power[part])
        for name, (v, a) in model_outputs(models, x_a, x_v, names).items():
            row = per_clip[name]
            for j, i in enumerate(range(part.start, part.stop)):
                if v is not None:
                    row.setdefault("psnr", []).append(metrics.psnr(frames[i], v[j]))
                    row.setdefault("ssim", []).append(metrics.ssim_frames(frames[i], v[j]).mean())
                    for region, mask in (masks or {}).items():
                        row.setdefault(f"psnr_{region}", []).append(
                            metrics.psnr(frames[i], v[j], mask[i])
                        )
                if a is not None:
                    row.setdefault("lsd", []).append(log_spectral_distance(power[i], a[j]))
    return {n: {k: float(np.mean(v)) for k, v in row.items()} for n, row in per_clip.items()}


# ---------------------------------------------------------------------------------------
# Denoising


@dataclass
class DenoisingResult:
    """metric[region][sigma][model] = {"psnr": mean, "psnr_std", "psnr_se", "ssim",
    "ssim_std", "ssim_se"} and, for the models at sigma > 0, "gain" (mean over sequences of
    the PSNR of the output on the noisy input minus the PSNR of the same model's output on
    the clean input, same pixels) and "gain_se": how much of what the noise took the model
    gives back, apart from how well it rebuilds a clean clip.

    outputs[region][sigma][model]: the corrupted frames of every sequence (N, 6, 64, 64, 3)
    as each model decoded them ("noisy": the input, absent at sigma 0), for the regions
    `denoising` was asked to keep; `clean` the same frames clean (None when none is kept).
    They stay in memory, not in `to_dict`, for a judge to read later."""

    sigmas: list[float]
    n_sequences: int
    metric: dict[str, dict[str, dict[str, dict[str, float]]]] = field(default_factory=dict)
    examples: dict[str, dict[str, dict[str, np.ndarray]]] = field(default_factory=dict)
    outputs: dict[str, dict[str, dict[str, np.ndarray]]] = field(default_factory=dict)
    clean: np.ndarray | None = None

    def to_dict(self) -> dict:
        return {"sigmas": self.sigmas, "n_sequences": self.n_sequences, "metric": self.metric}


def denoising(
    models: Models,
    frames: np.ndarray,
    power: np.ndarray,
    masks: dict[str, np.ndarray],
    sigmas: Sequence[float],
    *,
    seed: int = 0,
    batch: int = 16,
    keep: Sequence[str] = (),
    show: bool = True,
) -> DenoisingResult:
    """The seed's protocol on sequences frames (N, 10, 64, 64, 3), power (N, 10, 513).

    For each region mask (N, 10, 64, 64) and noise level sigma (in [0, 1] pixel units),
    Gaussian noise is added inside the region on frames DENOISE_FRAMES (the 6 central
    ones); audio stays intact. Every model encodes and decodes the corrupted sequence with
    posterior means; PSNR and SSIM against the clean frames are computed over the corrupted
    pixels (those frames x the region) per sequence, then averaged. The noisy input itself
    is scored as the floor; sigma = 0 scores the models on clean input, their ceiling, and
    is always run (the gains are measured against it). The decoded frames of the regions in
    `keep` are kept in `DenoisingResult.outputs` (200 sequences: 15 MB per model and sigma).
    """
    sigmas = sorted({float(s) for s in sigmas} | {0.0})
    names = available(DENOISERS, models.components)
    hit_frames = metrics.DENOISE_FRAMES
    result = DenoisingResult(sigmas, len(frames))
    clean_psnr: dict[tuple[str, str], np.ndarray] = {}  # (region, model): per sequence
    clean = frames[:, hit_frames]  # (N, 6, 64, 64, 3): only these frames are scored
    if any(region in masks for region in keep):
        result.clean = clean
    steps = [(r, i, s) for r in masks for i, s in enumerate(sigmas)]
    for region, si, sigma in tqdm(steps, desc="denoising", disable=not show):
        mask = masks[region]
        rng = np.random.default_rng([seed, sorted(masks).index(region), si])
        noisy = np.stack(
            [
                metrics.corrupt_region(frames[i], mask[i], hit_frames, sigma, rng)
                for i in range(len(frames))
            ]
        )
        hit = np.asarray(mask, bool)[:, hit_frames]  # (N, 6, 64, 64)
        outputs: dict[str, list[np.ndarray]] = {"noisy": [noisy[:, hit_frames]]}
        for part in chunks(len(frames), batch):
            x_a, x_v = models.codec.encode(noisy[part], power[part])
            for name, (v, _) in model_outputs(models, x_a, x_v, names, hit_frames).items():
                outputs.setdefault(name, []).append(v)
        row = {}
        for name, parts in outputs.items():
            if name == "noisy" and sigma == 0:
                continue
            est = np.concatenate(parts)
            p = [metrics.psnr(clean[i], est[i], hit[i]) for i in range(len(est))]
            s = [np.nanmean(metrics.ssim_frames(clean[i], est[i], hit[i])) for i in range(len(est))]
            n = len(p)
            row[name] = {
                "psnr": float(np.mean(p)),
                "psnr_std": float(np.std(p)),
                "psnr_se": float(np.std(p, ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
                "ssim": float(np.mean(s)),
                "ssim_std": float(np.std(s)),
                "ssim_se": float(np.std(s, ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
            }
            if sigma == 0:
                clean_psnr[region, name] = np.asarray(p)
            elif (region, name) in clean_psnr:
                row[name].update(denoising_gain(np.asarray(p), clean_psnr[region, name]))
            result.examples.setdefault(region, {}).setdefault(f"{sigma:g}", {})[name] = est[0]
            if region in keep:
                result.outputs.setdefault(region, {}).setdefault(f"{sigma:g}", {})[name] = est
        result.examples[region][f"{sigma:g}"]["clean"] = clean[0]
        result.metric.setdefault(region, {})[f"{sigma:g}"] = row
    return result


def mouth_reading(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Mouth shapes read from the frames of N sequences, pred (N, F), against their truth
    (N, F) (classes of `judges.MOUTH_CLASSES`; negative: unknown): the balanced accuracy
    (mean recall over the shapes present, the number the judges' trust and the "MDVAE
    renders" scores use), its SE bootstrapped over sequences, the plain accuracy and its SE
    with the sequence as the unit, and "blind", what a reading that ignores the frames
    scores (1 / shapes present)."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape or pred.ndim != 2:
        raise MDVAEError(f"mouth readings {pred.shape} and truth {truth.shape} differ")
    score = J.score_classes("mouth", "frame", pred, truth)
    return {
        "balanced_accuracy": score.balanced_accuracy,
        "balanced_accuracy_se": score.balanced_accuracy_se,
        "accuracy": score.accuracy,
        "accuracy_se": score.accuracy_se,
        "blind": score.blind,
        "frames": score.n,
        "sequences": len(truth),
    }


def read_denoised_mouths(
    judge: J.Judge, result: DenoisingResult, truth: np.ndarray, region: str = "mouth"
) -> dict[str, Any]:
    """A visual judge's mouth head on the corrupted frames of `region` that `denoising`
    kept, against the mouth shapes truth (N, 6) of those frames (`mouth_reading` each):
    "clean", the clean frames (the judge's own ceiling on these sequences), and
    sigmas[sigma][model] for the noisy input and every model's output (at sigma 0 the
    models' clean-input ceiling)."""
    kept = result.outputs.get(region)
    if not kept or result.clean is None:
        return {"skipped": f"the decoded frames of the {region} region were not kept"}
    return {
        "clean": mouth_reading(judge.read(result.clean)["mouth"], truth),
        "sigmas": {
            sigma: {name: mouth_reading(judge.read(v)["mouth"], truth) for name, v in row.items()}
            for sigma, row in kept.items()
        },
    }


def denoising_gain(psnr_denoised: np.ndarray, psnr_clean_input: np.ndarray) -> dict[str, float]:
    """Per sequence, PSNR of the output on the noisy input minus PSNR of the output on the
    clean input (both against the clean frames, same pixels): mean and SE over sequences.
    0 means the model repairs the noise entirely, to the quality it rebuilds a clean clip."""
    d = np.asarray(psnr_denoised, np.float64) - np.asarray(psnr_clean_input, np.float64)
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    return {"gain": float(d.mean()), "gain_se": se}


# ---------------------------------------------------------------------------------------
# Emotion recognition from w


def draw_subsets(
    labels: Sequence[str],
    fraction: float,
    draws: int,
    rng: np.random.Generator,
    *,
    groups: Sequence[str] | None = None,
    max_tries: int = 100,
) -> list[np.ndarray]:
    """`draws` random subsets of round(fraction * N) items (at least 2), or, with `groups`
    (one per item, e.g. the clips' speakers), of all the items of round(fraction * G) of the
    G groups (at least one); a draw holding fewer than two classes is redrawn. The full set
    is returned once, as every draw of it would be the same."""
    labels = np.asarray(labels)
    least = 2 if groups is None else 1  # items, or groups (each holds items)
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    names = np.unique(groups)
    size = max(least, int(round(fraction * len(names))))
    if size >= len(names):
        return [np.arange(len(labels))] if len(set(labels.tolist())) >= 2 else []
    subsets = []
    for _ in range(draws):
        for _ in range(max_tries):
            idx = np.flatnonzero(np.isin(groups, rng.choice(names, size=size, replace=False)))
            if len(set(labels[idx].tolist())) >= 2:
                subsets.append(idx)
                break
    return subsets


def emotion_curve(
    w_train: np.ndarray,
    y_train: Sequence[str],
    w_test: np.ndarray,
    y_test: Sequence[str],
    fractions: Sequence[float],
    draws: int,
    *,
    seed: int = 0,
    fit: Callable | None = None,
    groups: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Test accuracy of logistic regression on w against the share of labelled training
    clips: per fraction the mean and std over draws, the SE over test clips (binomial, of
    the mean accuracy: the draws share the test clips), the clips used and each draw's
    accuracy; with the full set, "correct" (0/1 per test clip, for paired comparisons).
    `fit(features, labels)` returns a head (default `fit_emotion_head`). With `groups` (the
    speaker of each training clip), the fractions are shares of the speakers instead, every
    clip of the drawn speakers labelled (`draw_subsets`; "n_groups" per fraction): how
    far a head fitted on few people carries to new ones."""
    from mdvae.model.emotion import fit_emotion_head

    fit = fit or fit_emotion_head
    rng = np.random.default_rng(seed)
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    truth = np.array([EMOTIONS.index(y) for y in y_test])
    rows = []
    for fraction in fractions:
        accs = []
        subsets = draw_subsets(y_train, fraction, draws, rng, groups=groups)
        correct = None
        for idx in subsets:
            head = fit(w_train[idx], list(y_train[idx]))
            with torch.no_grad():
                pred = head(torch.as_tensor(w_test)).argmax(-1).numpy()
            accs.append(float((pred == truth).mean()))
            if len(idx) == len(y_train):
                correct = (pred == truth).astype(int).tolist()
        mean = float(np.mean(accs)) if accs else float("nan")
        row = {
            "fraction": float(fraction),
            "n_clips": int(len(subsets[0])) if subsets else 0,
            "draws": len(accs),
            "mean": mean,
            "std": float(np.std(accs)) if accs else float("nan"),
            "se": binomial_se(mean, len(truth)),
            "accuracies": accs,
        }
        if groups is not None:
            row["n_groups"] = len(set(np.asarray(groups)[subsets[0]].tolist())) if subsets else 0
        if correct is not None:
            row["correct"] = correct
        rows.append(row)
    return {"curve": rows}


def accuracy_by_level(
    correct: dict[str, Sequence[int]], levels: Sequence[int], base: str
) -> dict[str, dict[str, Any]]:
    """Per intensity level, each model's accuracy on the test clips of that level (± its
    binomial SE) and `base`'s paired difference to every other model (± the SE of the
    per-clip difference). `correct` maps a model to 0/1 per test clip; `levels` gives
    each clip's level, in the same order. Where the face shows an emotion less (level 1),
    the voice has more to add: the seed's margin over the one-stream baselines, read there."""
    levels = np.asarray(levels)
    out: dict[str, dict[str, Any]] = {}
    for level in sorted(set(levels.tolist())):
        pick = levels == level
        row: dict[str, Any] = {"clips": int(pick.sum()), "models": {}, "paired": {}}
        hits = {m: np.asarray(c, float)[pick] for m, c in correct.items()}
        for m, h in hits.items():
            acc = float(h.mean())
            row["models"][m] = {"accuracy": acc, "se": binomial_se(acc, len(h))}
        if base in hits:
            for m, h in hits.items():
                if m == base:
                    continue
                d = hits[base] - h
                se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
                row["paired"][m] = {"difference": float(d.mean()), "se": se}
        out[str(level)] = row
    return out


@torch.no_grad()
def encode_either(model: MDVAE | DSAE, x_a: Tensor, x_v: Tensor):
    """Posterior means of an MDVAE (both streams) or a DSAE (its own stream) for clips
    x_a (B, T, 512), x_v (B, T, 2048)."""
    if isinstance(model, DSAE):
        return model.encode(x_a if model.config.modality == "audio" else x_v)
    return model.encode(x_a, x_v)


def static_means(model: MDVAE | DSAE, x_a: Tensor, x_v: Tensor) -> np.ndarray:
    """Posterior means of w for clips x_a (B, T, 512), x_v (B, T, 2048): (B, Lw)."""
    return encode_either(model, x_a, x_v).w.cpu().numpy()


# ---------------------------------------------------------------------------------------
# Emotion read against the same person's neutral clip


@torch.no_grad()
def reference_pair_logits(head, w: np.ndarray, labels: np.ndarray, speakers: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every same-speaker pair of clips w (N, Lw) with labels and speakers (N,)
    (`reference_pairs`, `head` a `ReferenceEmotionHead`): (clip rows, reference rows, the
    head's logits (P, n_classes), the clips' label indices (P,))."""
    rows, refs = reference_pairs(labels, speakers, head.config.reference)
    x = torch.as_tensor(w, device=head.spread.device)
    logits = head(x[rows], x[refs]).double().cpu().numpy()
    names = list(head.config.labels)
    return rows, refs, logits, np.array([names.index(e) for e in np.asarray(labels)[rows]])


def reference_margin(a: tuple[Any, np.ndarray], b: tuple[Any, np.ndarray],
                     labels: np.ndarray, speakers: np.ndarray) -> dict[str, Any]:
    """Two models' reference heads on the same same-speaker pairs of the same clips, each
    (head, w (N, Lw)) with its own model's w: the paired difference of their hits, a minus
    b, with the speakers as the unit (`paired_difference`; None for an SE that cannot be
    had)."""
    if a[0].config.reference != b[0].config.reference:
        raise ValueError("reference_margin: the heads read against different reference "
                         f"emotions ({a[0].config.reference}, {b[0].config.reference})")
    hits = []
    for head, w in (a, b):
        rows, _, logits, y = reference_pair_logits(head, w, labels, speakers)
        hits.append((logits.argmax(1) == y).astype(float))
    margin = paired_difference(hits[0] - hits[1], np.asarray(speakers)[rows])
    return {k: _finite(v) if isinstance(v, float) else v for k, v in margin.items()}


@torch.no_grad()
def reference_study(head, plain, w: np.ndarray, labels: np.ndarray, speakers: np.ndarray,
                    levels: np.ndarray, temperature: float = 1.0) -> dict[str, Any]:
    """What a `ReferenceEmotionHead` reads on every same-speaker pair of clips w (N, Lw) with
    labels, speakers and intensity levels (N,; 0 where none): its accuracy (all pairs, the
    reference emotion's clips, the others, the others by level) beside the plain head's
    (`plain`, on w alone) on the same clips, the gain with the speakers as the unit, how
    often the same-person check passes the pairs and each reference clip against every other
    speaker's clips; and the calibration figures at `temperature`."""
    labels, speakers, levels = map(np.asarray, (labels, speakers, levels))
    rows, refs, logits, y = reference_pair_logits(head, w, labels, speakers)
    x = torch.as_tensor(w, device=head.spread.device)
    hit = logits.argmax(1) == y
    plain_hit = plain(x[rows]).argmax(-1).cpu().numpy() == y
    reference = head.config.reference
    is_ref = labels[rows] == reference
    same = head.same_person(x[rows], x[refs]).cpu().numpy()
    other = np.concatenate([np.zeros(0, bool)] + [  # each reference clip against the others'
        head.same_person(x[speakers != speakers[r]],
                         x[r].expand(int((speakers != speakers[r]).sum()), -1)).cpu().numpy()
        for r in np.unique(refs)])
    probs = calibrated(logits, temperature)
    who = speakers[rows]
    gain = paired_difference(hit.astype(float) - plain_hit.astype(float), who)
    by_level = {}
    for level in sorted(set(levels[rows][~is_ref].tolist()) - {0}):
        chosen = (levels[rows] == level) & ~is_ref
        by_level[str(level)] = {"pairs": int(chosen.sum()), "accuracy": float(hit[chosen].mean()),
                                "plain_accuracy": float(plain_hit[chosen].mean())}
    return {
        "pairs": int(len(rows)),
        "speakers": int(len(np.unique(who))),
        "accuracy": float(hit.mean()),
        # one speaker's pairs are not independent: the speakers are the unit
        "accuracy_se_speakers": _finite(se_over_speakers(hit, who)[0]),
        "plain_accuracy": float(plain_hit.mean()),
        "gain_over_plain": {k: _finite(v) if isinstance(v, float) else v
                            for k, v in gain.items()},
        "by_level": by_level,  # the other emotions' clips, by intensity
        f"accuracy_{reference}": float(hit[is_ref].mean()) if is_ref.any() else None,
        f"plain_accuracy_{reference}": (float(plain_hit[is_ref].mean())
                                        if is_ref.any() else None),
        "accuracy_others": float(hit[~is_ref].mean()),
        "plain_accuracy_others": float(plain_hit[~is_ref].mean()),
        "same_person_passed": float(same.mean()),
        "other_person_passed": float(other.mean()) if len(other) else None,
        "temperature": temperature,
        **fit_record(logits, y, temperature),  # its accuracy is hit.mean(), as above
        "ece_floor": ece_noise_floor(probs),
        "sure_from": SURE_FROM,
        "before": selective(calibrated(logits, 1.0), y),
        "after": selective(probs, y),
    }


def _finite(value: float) -> float | None:
    """`value`, or None where it is not finite (results and bundle info are strict JSON)."""
    return float(value) if np.isfinite(value) else None
