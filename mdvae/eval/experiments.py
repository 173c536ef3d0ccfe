"""The seed's experiments as functions, plus the disentanglement scores of the synthetic
benchmark. `python -m train.evaluate` runs them all; each works on arrays, so a notebook
can run one on its own.

- `reconstruction`: held-out clips through the VQ-VAEs alone, the MDVAE and the DSAEs.
- `denoising`: Gaussian noise on a face region of the 6 central frames of 10-frame
  sequences, audio intact; encode, decode, PSNR / SSIM on the corrupted pixels.
- `emotion_curve`: logistic regression on the posterior mean of w against the share of
  labelled training clips.
- `swap_study`, `generation_study`: judges (mdvae.eval.judges) read the factors of decoded clips
  whose latents were swapped between two clips, or drawn from the priors.

Follow / stay. For a swap that takes groups S from a source clip B into a target clip A,
each factor of the decoded clip is compared with A's and B's ground truth, only where A and
B differ: a categorical reading (a frame's mouth shape, a clip's speaker) *follows* B when it
equals B's label and *stays* when it equals A's (it may be neither); a continuous reading
(head pose, f0) follows B when it is closer to B's value than to A's, counted only where
A and B differ by at least the factor's margin. Shares are pooled over all scored items
(frames or clips) of all pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from mdvae.components import (
    COMPARED,
    DENOISERS,
    DSAE_AUDIO,
    DSAE_VISUAL,
    EMOTION_READERS,
    MDVAE_MODEL,
    VQ_AUDIO,
    VQ_VISUAL,
    available,
    reconstruct,
)
from mdvae.errors import MDVAEError
from mdvae.eval import metrics
from mdvae.eval.judges import MARGINS, Judge
from mdvae.labels import EMOTIONS
from mdvae.media.audio import log_spectral_distance
from mdvae.model.dsae import DSAE
from mdvae.model.mdvae import MDVAE
from mdvae.stage1.codec import AVCodec

# ---------------------------------------------------------------------------------------
# Follow / stay scoring


@dataclass
class FollowStay:
    """Counts of items (frames or clips) where the target A and the source B differ."""

    follow: int = 0  # read as B's value (or closer to it)
    stay: int = 0  # read as A's value (or closer to it)
    n: int = 0

    def __add__(self, other: FollowStay) -> FollowStay:
        return FollowStay(self.follow + other.follow, self.stay + other.stay, self.n + other.n)

    @property
    def follow_share(self) -> float:
        return self.follow / self.n if self.n else float("nan")

    @property
    def stay_share(self) -> float:
        return self.stay / self.n if self.n else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"follow": self.follow_share, "stay": self.stay_share, "n": self.n}


def follow_stay_categorical(pred, label_a, label_b) -> FollowStay:
    """Readings `pred` against labels of A and B (same shapes; negative = unknown)."""
    pred, a, b = (np.asarray(v) for v in (pred, label_a, label_b))
    if not (pred.shape == a.shape == b.shape):
        raise MDVAEError(f"shapes differ: {pred.shape}, {a.shape}, {b.shape}")
    differ = (a >= 0) & (b >= 0) & (a != b)
    return FollowStay(
        int((pred[differ] == b[differ]).sum()),
        int((pred[differ] == a[differ]).sum()),
        int(differ.sum()),
    )


def follow_stay_continuous(pred, value_a, value_b, margin) -> FollowStay:
    """Readings (..., D) against values of A and B; only elements where |A - B| >= margin
    (a scalar or one per value D) count. Ties count as neither."""
    pred, a, b = (np.asarray(v, np.float64) for v in (pred, value_a, value_b))
    if not (pred.shape == a.shape == b.shape):
        raise MDVAEError(f"shapes differ: {pred.shape}, {a.shape}, {b.shape}")
    with np.errstate(invalid="ignore"):
        differ = (
            np.isfinite(a)
            & np.isfinite(b)
            & np.isfinite(pred)
            & (np.abs(a - b) >= np.asarray(margin, np.float64))
        )
    to_a, to_b = np.abs(pred - a)[differ], np.abs(pred - b)[differ]
    return FollowStay(int((to_b < to_a).sum()), int((to_a < to_b).sum()), int(differ.sum()))


# ---------------------------------------------------------------------------------------
# Factors: what each judge reading should follow


@dataclass(frozen=True)
class Factor:
    name: str
    title: str  # for tables
    judge: str  # "visual" or "audio"
    head: str  # the judge head that reads it
    latent: str  # the latent group it should follow: "w", "z_av", "z_a" or "z_v"
    kind: str  # "frame", "clip", "pose", "contour" (f0 minus its median), "level" (median f0)
    follow_target: float | None = None  # required follow share when its latent is swapped
    label: str = ""  # the ground truth (`clip_labels` key) it is scored on; default `head`

    @property
    def truth(self) -> str:
        return self.label or self.head


FACTORS: tuple[Factor, ...] = (
    Factor("mouth", "mouth shape (video)", "visual", "mouth", "z_av", "frame", 0.90),
    Factor("mouth_heard", "mouth shape heard (audio)", "audio", "mouth", "z_av", "frame"),
    Factor("blink", "blink (video)", "visual", "blink", "z_v", "frame", 0.90),
    Factor("head_pose", "head pose (video)", "visual", "head_pose", "z_v", "pose", 0.90),
    Factor("f0_contour", "f0 contour (audio)", "audio", "f0", "z_a", "contour"),
    Factor("f0_level", "f0 level (audio)", "audio", "f0", "w", "level"),
    Factor("speaker_video", "speaker (video)", "visual", "speaker", "w", "clip", 0.95),
    Factor("speaker_audio", "speaker (audio)", "audio", "speaker", "w", "clip", 0.95),
    Factor(
        "emotion_video",
        "emotion, level 2+ (video)",
        "visual",
        "emotion",
        "w",
        "clip",
        0.95,
        "emotion_clear",
    ),
    Factor(
        "emotion_audio",
        "emotion, level 2+ (audio)",
        "audio",
        "emotion",
        "w",
        "clip",
        0.95,
        "emotion_clear",
    ),
)
STAY_TARGET = 0.90  # required stay share of every factor whose latent is not swapped
# The seed's swaps (groups taken from the source B), and "none": A's own reconstruction.
SWAPS: dict[str, tuple[str, ...]] = {
    "none": (),
    "w": ("w",),
    "z_av": ("z_av",),
    "z_v": ("z_v",),
    "z_a": ("z_a",),
    "z_av+z_v": ("z_av", "z_v"),
}
MIN_VOICED_FRAMES = 5  # f0 contour / level need this many frames voiced in both clips


def score_factor(
    factor: Factor, reading: dict[str, dict], label_a: dict, label_b: dict
) -> FollowStay:
    """Follow / stay of one decoded clip for one factor.

    reading: {"visual": {...}, "audio": {...}} one clip's judge readings (`read_media`; a
    judge that read only some frames says which in "t"); label_a, label_b: `clip_labels`
    of the target and the source."""
    pred = reading[factor.judge][factor.head]
    t = reading[factor.judge].get("t", slice(None))  # the frames the judge read
    if factor.kind == "frame":
        return follow_stay_categorical(pred, label_a[factor.truth][t], label_b[factor.truth][t])
    if factor.kind == "clip":
        return follow_stay_categorical(
            np.array([pred]), np.array([label_a[factor.truth]]), np.array([label_b[factor.truth]])
        )
    if factor.kind == "pose":
        return follow_stay_continuous(
            pred, label_a["head_pose"][t], label_b["head_pose"][t], MARGINS["head_pose"]
        )
    # f0: frames voiced in both clips; the contour is f0 minus its median over them (the
    # intonation, z_a), the level that median (the speaker's and emotion's pitch, w)
    fa, fb, fp = label_a["f0"], label_b["f0"], np.asarray(pred, np.float64).reshape(-1)
    both = np.isfinite(fa) & np.isfinite(fb)
    if both.sum() < MIN_VOICED_FRAMES:
        return FollowStay()
    fa, fb, fp = fa[both], fb[both], fp[both]
    if factor.kind == "contour":
        return follow_stay_continuous(
            fp - np.median(fp), fa - np.median(fa), fb - np.median(fb), MARGINS["f0"]
        )
    return follow_stay_continuous([np.median(fp)], [np.median(fa)], [np.median(fb)], MARGINS["f0"])


def expected(factor: Factor, groups: Iterable[str]) -> str:
    """ "follow" when the factor's latent is among the swapped groups, else "stay"."""
    return "follow" if factor.latent in set(groups) else "stay"


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


MODEL_TITLES = {"noisy": "noisy input", **{name: c.title for name, c in COMPARED.items()}}


def _chunks(n: int, size: int) -> Iterable[slice]:
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
    for part in tqdm(list(_chunks(len(frames), batch)), desc="reconstruction", disable=not show):
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
    """metric[region][sigma][model] = {"psnr": mean, "psnr_std", "ssim", "ssim_std"}."""

    sigmas: list[float]
    n_sequences: int
    metric: dict[str, dict[str, dict[str, dict[str, float]]]] = field(default_factory=dict)
    examples: dict[str, dict[str, dict[str, np.ndarray]]] = field(default_factory=dict)

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
    show: bool = True,
) -> DenoisingResult:
    """The seed's protocol on sequences frames (N, 10, 64, 64, 3), power (N, 10, 513).

    For each region mask (N, 10, 64, 64) and noise level sigma (in [0, 1] pixel units),
    Gaussian noise is added inside the region on frames DENOISE_FRAMES (the 6 central
    ones); audio stays intact. Every model encodes and decodes the corrupted sequence with
    posterior means; PSNR and SSIM against the clean frames are computed over the corrupted
    pixels (those frames x the region) per sequence, then averaged. The noisy input itself
    is scored as the floor; sigma = 0 scores the models on clean input, their ceiling.
    """
    names = available(DENOISERS, models.components)
    hit_frames = metrics.DENOISE_FRAMES
    result = DenoisingResult([float(s) for s in sigmas], len(frames))
    clean = frames[:, hit_frames]  # (N, 6, 64, 64, 3): only these frames are scored
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
        for part in _chunks(len(frames), batch):
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
            row[name] = {
                "psnr": float(np.mean(p)),
                "psnr_std": float(np.std(p)),
                "ssim": float(np.mean(s)),
                "ssim_std": float(np.std(s)),
            }
            result.examples.setdefault(region, {}).setdefault(f"{sigma:g}", {})[name] = est[0]
        result.examples[region][f"{sigma:g}"]["clean"] = clean[0]
        result.metric.setdefault(region, {})[f"{sigma:g}"] = row
    return result


# ---------------------------------------------------------------------------------------
# Emotion recognition from w


def draw_subsets(
    labels: Sequence[str],
    fraction: float,
    draws: int,
    rng: np.random.Generator,
    *,
    max_tries: int = 100,
) -> list[np.ndarray]:
    """`draws` random subsets of round(fraction * N) items (at least 2); a draw holding
    fewer than two classes is redrawn. The full set is returned once, as every draw of it
    would be the same."""
    labels = np.asarray(labels)
    n = len(labels)
    size = max(2, int(round(fraction * n)))
    if size >= n:
        return [np.arange(n)] if len(set(labels.tolist())) >= 2 else []
    subsets = []
    for _ in range(draws):
        for _ in range(max_tries):
            idx = np.sort(rng.choice(n, size=size, replace=False))
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
) -> dict[str, Any]:
    """Test accuracy of logistic regression on w against the share of labelled training
    clips: per fraction the mean and std over draws, the clips used and each draw's
    accuracy. `fit(features, labels)` returns a head (default `fit_emotion_head`)."""
    from mdvae.model.emotion import fit_emotion_head

    fit = fit or fit_emotion_head
    rng = np.random.default_rng(seed)
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    truth = np.array([EMOTIONS.index(y) for y in y_test])
    rows = []
    for fraction in fractions:
        accs = []
        subsets = draw_subsets(y_train, fraction, draws, rng)
        for idx in subsets:
            head = fit(w_train[idx], list(y_train[idx]))
            with torch.no_grad():
                pred = head(torch.as_tensor(w_test)).argmax(-1).numpy()
            accs.append(float((pred == truth).mean()))
        rows.append(
            {
                "fraction": float(fraction),
                "n_clips": int(len(subsets[0])) if subsets else 0,
                "draws": len(accs),
                "mean": float(np.mean(accs)) if accs else float("nan"),
                "std": float(np.std(accs)) if accs else float("nan"),
                "accuracies": accs,
            }
        )
    return {"curve": rows}


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
# Swaps and generation, read by judges


@torch.no_grad()
def read_media(
    judges: dict[str, Judge],
    frames: np.ndarray,
    power: np.ndarray,
    t: np.ndarray | None = None,
) -> list[dict[str, dict]]:
    """Judge readings of clips: frames (B, T', ...) at frame indices `t` (all if None),
    power (B, T, 513). One {"visual": {...}, "audio": {...}} per clip."""
    visual = judges["visual"].read(frames)
    audio = judges["audio"].read(power)
    out = []
    for i in range(len(frames)):
        v = {k: x[i] for k, x in visual.items()}
        if t is not None:
            v["t"] = t
        out.append({"visual": v, "audio": {k: x[i] for k, x in audio.items()}})
    return out


@dataclass
class SwapData:
    """Pairs of encoded clips of equal length, targets A and sources B, with the judges'
    ground truth (`clip_labels`) of each."""

    x_a_a: Tensor  # (P, T, 512) audio features of A
    x_v_a: Tensor  # (P, T, 2048) visual features of A
    labels_a: list[dict]
    x_a_b: Tensor
    x_v_b: Tensor
    labels_b: list[dict]


def swap_study(
    models: Models,
    judges: dict[str, Judge],
    data: SwapData,
    swaps: dict[str, tuple[str, ...]] | None = None,
    *,
    visual_stride: int = 1,
    batch: int = 16,
    show: bool = True,
) -> dict[str, Any]:
    """Rebuild each A with the groups of each swap taken from its B (posterior means);
    judges read every factor of the decoded clip. The visual judge reads every
    `visual_stride`-th frame (decoding frames is the costly part), the audio judge all.
    Returns shares[swap][factor] = {"follow", "stay", "n", "expected"} and the decoded
    frames of the first pair per swap ("example")."""
    swaps = SWAPS if swaps is None else swaps
    totals = {s: {f.name: FollowStay() for f in FACTORS} for s in swaps}
    example: dict[str, np.ndarray] = {}
    n_pairs, n_frames = data.x_a_a.shape[:2]
    t = np.arange(0, n_frames, visual_stride)
    for part in tqdm(list(_chunks(n_pairs, batch)), desc="swaps", disable=not show):
        lat_a = models.mdvae.encode(data.x_a_a[part], data.x_v_a[part])
        lat_b = models.mdvae.encode(data.x_a_b[part], data.x_v_b[part])
        for swap, groups in swaps.items():
            lat = lat_a.swap(lat_b, groups) if groups else lat_a
            frames, power = decode_features(models, *models.mdvae.decode(lat), t)
            if part.start == 0:
                example[swap] = frames[0]
            for j, reading in enumerate(read_media(judges, frames, power, t)):
                la, lb = data.labels_a[part.start + j], data.labels_b[part.start + j]
                for f in FACTORS:
                    totals[swap][f.name] = totals[swap][f.name] + score_factor(f, reading, la, lb)
    shares = {
        swap: {
            name: {**fs.to_dict(), "expected": expected(_factor(name), swaps[swap])}
            for name, fs in row.items()
        }
        for swap, row in totals.items()
    }
    return {"pairs": n_pairs, "visual_stride": visual_stride, "shares": shares, "example": example}


def _factor(name: str) -> Factor:
    return next(f for f in FACTORS if f.name == name)


def mouth_sync(readings: list[dict[str, dict]]) -> float:
    """Share of frames whose mouth shape read from the video is the one read from the audio."""
    agree = []
    for r in readings:
        t = r["visual"].get("t", slice(None))
        agree.append(np.asarray(r["visual"]["mouth"]) == np.asarray(r["audio"]["mouth"])[t])
    return float(np.concatenate(agree).mean()) if agree else float("nan")


def chance_sync(readings: list[dict[str, dict]]) -> float:
    """The same agreement between the video of clip i and the audio of clip i + 1: what
    unrelated streams with these mouth shapes' frequencies reach."""
    if len(readings) < 2:
        return float("nan")
    n = len(readings)
    return mouth_sync(
        [
            {"visual": readings[i]["visual"], "audio": readings[(i + 1) % n]["audio"]}
            for i in range(n)
        ]
    )


@torch.no_grad()
def generation_study(
    models: Models,
    judges: dict[str, Judge],
    x_a: Tensor,
    x_v: Tensor,
    frames: np.ndarray,
    power: np.ndarray,
    labels: list[dict],
    *,
    seed: int = 0,
    visual_stride: int = 1,
    batch: int = 16,
    show: bool = True,
) -> dict[str, Any]:
    """Random generation from the priors, read by the judges.

    Given each clip's w (posterior mean of its features x_a, x_v), the dynamical latents
    are drawn from their autoregressive priors: do speaker and emotion stay with w (share
    of clips the judges read as the clip's own), and are the mouth shapes seen in sync with
    those heard? The same is measured on the clean clips (frames, power: the judges'
    ceiling), their MDVAE reconstructions, clips generated entirely from the priors (w
    too; sync only), and unrelated streams (chance)."""
    gen = torch.Generator(device=models.device).manual_seed(seed)
    n_frames = x_a.shape[1]
    t = np.arange(0, n_frames, visual_stride)
    read: dict[str, list] = {"clean": [], "reconstruction": [], "given_w": [], "prior": []}
    for part in tqdm(list(_chunks(len(x_a), batch)), desc="generation", disable=not show):
        lat = models.mdvae.encode(x_a[part], x_v[part])
        n = lat.z_av.shape[0]
        read["clean"] += read_media(judges, frames[part][:, t], power[part], t)
        given = models.mdvae.generate(n, n_frames, w=lat.w, generator=gen)
        prior = models.mdvae.generate(n, n_frames, generator=gen)
        for key, latents in (("reconstruction", lat), ("given_w", given), ("prior", prior)):
            v, a = decode_features(models, *models.mdvae.decode(latents), t)
            read[key] += read_media(judges, v, a, t)
    out: dict[str, Any] = {
        "clips": len(x_a),
        "sync": {k: mouth_sync(v) for k, v in read.items()},
    }
    out["sync"]["chance"] = chance_sync(read["clean"])
    stays: dict[str, dict[str, float]] = {}
    for source in ("clean", "reconstruction", "given_w"):
        row = {}
        for judge in ("visual", "audio"):
            for head in ("speaker", "emotion"):
                truth = np.array([lab[head] for lab in labels])
                pred = np.array([r[judge][head] for r in read[source]])
                ok = truth >= 0
                key = f"{head}_{'video' if judge == 'visual' else 'audio'}"
                row[key] = float((pred[ok] == truth[ok]).mean()) if ok.any() else float("nan")
        stays[source] = row
    out["stays_with_w"] = stays
    return out
