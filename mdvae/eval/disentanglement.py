"""The disentanglement scores of the synthetic benchmark: judges (`mdvae.eval.judges`) read
the factors of decoded clips whose latents were swapped between two clips
(`swap_study`), or drawn from the priors (`generation_study`).

Follow / stay. For a swap that takes groups S from a source clip B into a target clip A,
each factor of the decoded clip is compared with A's and B's ground truth, only where A and
B differ: a categorical reading (a frame's mouth shape, a clip's speaker) *follows* B when it
equals B's label and *stays* when it equals A's (it may be neither); a continuous reading
(head pose, f0) follows B when it is closer to B's value than to A's, counted only where
A and B differ by at least the factor's margin; the speaker (whom the judges never saw)
follows B when the decoded clip's speaker embedding is closer to B's clean clip than to
A's (`judges.closer_to_b`). Shares are pooled over all scored items (frames or clips) of
all pairs, with standard errors that take the pair as the unit (`stats.ratio_se`).

Rendering. A factor that the model's own reconstruction does not render cannot follow a
swap: `rendering` compares the judge's reading of the MDVAE's reconstructions of clean
clips with its reading of their VQ-VAE reconstructions (the stage-1 ceiling) and of a
blind guess; a factor read less than RENDER_SHARE of the way from the guess to the
ceiling is "not rendered", and its swap scores are uninformative.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from mdvae.errors import MDVAEError
from mdvae.eval import pitch
from mdvae.eval.experiments import Models, chunks, decode_features
from mdvae.eval.judges import (
    MARGINS,
    HeadScore,
    Judge,
    closer_to_b,
    motion,
    verification_triplets,
)
from mdvae.eval.pitch import MIN_VOICED_FRAMES
from mdvae.eval.stats import binomial_se, ratio_se

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


def pooled(parts: list[FollowStay]) -> dict[str, Any]:
    """The shares of the pooled counts of `parts` (one per pair), with their SEs over pairs."""
    total = sum(parts, FollowStay())
    return {
        **total.to_dict(),
        "follow_se": ratio_se([p.follow for p in parts], [p.n for p in parts]),
        "stay_se": ratio_se([p.stay for p in parts], [p.n for p in parts]),
        "pairs": int(sum(p.n > 0 for p in parts)),
    }


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
    # "frame", "clip", "pose", "motion" (the pose minus its clip mean), "contour" (f0 minus
    # its median), "level" (median f0), "identity" (speaker, by embedding: nearer to A's
    # or to B's clip), "heard_contour" and "heard_level" (whose contour / level the
    # harmonics of the decoded audio have)
    kind: str
    follow_target: float | None = None  # required follow share when its latent is swapped
    label: str = ""  # the ground truth (`clip_labels` key) it is scored on; default `head`
    check: str = ""  # the judge score that decides trust and rendering; default `truth`

    @property
    def truth(self) -> str:
        return self.label or self.head

    @property
    def score(self) -> str:
        return self.check or self.truth


FACTORS: tuple[Factor, ...] = (
    Factor("mouth", "mouth shape (video)", "visual", "mouth", "z_av", "frame", 0.90),
    Factor("mouth_heard", "mouth shape heard (audio)", "audio", "mouth", "z_av", "frame"),
    Factor("blink", "blink (video)", "visual", "blink", "z_v", "frame", 0.90),
    Factor("head_pose", "head pose (video)", "visual", "head_pose", "z_v", "pose", 0.90),
    # the same reading about each clip's mean pose (`judges.motion`), trusted on its own
    Factor("head_motion", "head motion (video)", "visual", "head_pose", "z_v", "motion", 0.90,
           "head_pose", "head_motion"),
    Factor("f0_contour", "f0 contour (audio)", "audio", "f0", "z_a", "contour"),
    Factor("f0_level", "f0 level (audio)", "audio", "f0", "w", "level"),
    # the same two, heard in the harmonics of the decoded power spectrogram rather than read
    # by the judge (`mdvae.eval.pitch`: a judge trained on natural voices can take a swapped
    # voice's timbre for its pitch); rendered and trusted as the judge's f0
    Factor("f0_contour_heard", "f0 contour, harmonics (audio)", "audio", "f0", "z_a",
           "heard_contour"),
    Factor("f0_level_heard", "f0 level, harmonics (audio)", "audio", "f0", "w", "heard_level"),
    Factor(
        "speaker_video",
        "speaker (video)",
        "visual",
        "speaker",
        "w",
        "identity",
        0.95,
        "identity",
        "speaker_verification",
    ),
    Factor(
        "speaker_audio",
        "speaker (audio)",
        "audio",
        "speaker",
        "w",
        "identity",
        0.95,
        "identity",
        "speaker_verification",
    ),
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
# A factor is rendered when the judge reads it on the model's reconstructions at least
# this share of the way from a blind guess to its reading of the VQ-VAE reconstructions.
RENDER_SHARE = 0.5


def decidable(q_codec: float | None, blind: float | None) -> bool:
    """Can `rendering` decide? Only where the judge reads the VQ-VAE's reconstructions
    above a blind guess: otherwise there is nothing to compare the model with."""
    return None not in (q_codec, blind) and q_codec > blind


def rendering(model: HeadScore, codec: HeadScore) -> dict[str, Any]:
    """Does the model's own reconstruction render a factor? model, codec: the judge's score
    on the model's and on the VQ-VAE's reconstructions of the same clean clips."""
    q_model, q_codec, blind = model.quality, codec.quality, codec.blind
    out = {"model": q_model, "codec": q_codec, "blind": blind, "rendered": False}
    if q_model is None or not decidable(q_codec, blind):
        return out  # nothing to compare with: the judge cannot read the codec either
    out["rendered"] = bool(q_model - blind >= RENDER_SHARE * (q_codec - blind))
    return out


def score_factor(
    factor: Factor, reading: dict[str, dict], label_a: dict, label_b: dict
) -> FollowStay:
    """Follow / stay of one decoded clip for one factor.

    reading: {"visual": {...}, "audio": {...}} one clip's judge readings (`read_media`; a
    judge that read only some frames says which in "t"); label_a, label_b: `clip_labels`
    of the target and the source, with (for "identity" factors) "reference", the judges'
    readings of the clean clip (`with_references`)."""
    if factor.kind == "identity":
        if label_a[factor.truth] == label_b[factor.truth]:
            return FollowStay()
        logp = f"{factor.head}_logp"
        side = closer_to_b(
            reading[factor.judge][logp][None],
            label_a["reference"][factor.judge][logp][None],
            label_b["reference"][factor.judge][logp][None],
        )[0]
        return FollowStay(int(side > 0), int(side < 0), 1)
    if factor.kind in ("heard_contour", "heard_level"):
        counts = pitch.heard_counts(reading["audio"]["heard"][None], label_a["f0"][None],
                                    label_b["f0"][None])
        return FollowStay(*counts[factor.kind.removeprefix("heard_")])
    pred = reading[factor.judge][factor.head]
    t = reading[factor.judge].get("t", slice(None))  # the frames the judge read
    if factor.kind == "frame":
        return follow_stay_categorical(pred, label_a[factor.truth][t], label_b[factor.truth][t])
    if factor.kind == "clip":
        return follow_stay_categorical(
            np.array([pred]), np.array([label_a[factor.truth]]), np.array([label_b[factor.truth]])
        )
    if factor.kind in ("pose", "motion"):  # motion: over the frames read, each about its mean
        view = motion if factor.kind == "motion" else np.asarray
        return follow_stay_continuous(
            view(pred), view(label_a["head_pose"][t]), view(label_b["head_pose"][t]),
            MARGINS[factor.name],
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


def with_references(labels: list[dict], readings: list[dict[str, dict]]) -> list[dict]:
    """Labels with the judges' readings of the same clean clips (`read_media`) as
    "reference": what "identity" factors compare a decoded clip with."""
    return [{**lab, "reference": r} for lab, r in zip(labels, readings)]


@dataclass
class SwapData:
    """Pairs of encoded clips of equal length, targets A and sources B, with the judges'
    ground truth (`clip_labels`) of each."""

    x_a_a: Tensor  # (P, T, 512) audio features of A
    x_v_a: Tensor  # (P, T, 2048) visual features of A
    labels_a: list[dict]  # `with_references` when speakers are scored
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
    Returns shares[swap][factor] = {"follow", "stay", "n", "follow_se", "stay_se",
    "pairs", "expected"} and the decoded frames of the first pair per swap ("example")."""
    swaps = SWAPS if swaps is None else swaps
    per_pair: dict[str, dict[str, list[FollowStay]]] = {
        s: {f.name: [] for f in FACTORS} for s in swaps
    }
    example: dict[str, np.ndarray] = {}
    n_pairs, n_frames = data.x_a_a.shape[:2]
    t = np.arange(0, n_frames, visual_stride)
    for part in tqdm(list(chunks(n_pairs, batch)), desc="swaps", disable=not show):
        lat_a = models.mdvae.encode(data.x_a_a[part], data.x_v_a[part])
        lat_b = models.mdvae.encode(data.x_a_b[part], data.x_v_b[part])
        for swap, groups in swaps.items():
            lat = lat_a.swap(lat_b, groups) if groups else lat_a
            frames, power = decode_features(models, *models.mdvae.decode(lat), t)
            if part.start == 0:
                example[swap] = frames[0]
            heard = pitch.heard_tracks(
                power,
                np.stack([data.labels_a[i]["f0"] for i in range(part.start, part.stop)]),
                np.stack([data.labels_b[i]["f0"] for i in range(part.start, part.stop)]),
            )
            for j, reading in enumerate(read_media(judges, frames, power, t)):
                la, lb = data.labels_a[part.start + j], data.labels_b[part.start + j]
                reading["audio"]["heard"] = heard[j]
                for f in FACTORS:
                    per_pair[swap][f.name].append(score_factor(f, reading, la, lb))
    shares = {
        swap: {
            name: {**pooled(parts), "expected": expected(_factor(name), swaps[swap])}
            for name, parts in row.items()
        }
        for swap, row in per_pair.items()
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
    are drawn from their autoregressive priors: do speaker and emotion stay with w, and are
    the mouth shapes seen in sync with those heard? Emotion: share of clips the judges read
    as the clip's own; speaker: share of clips nearer (speaker embedding) to another clean
    clip of the clip's speaker than to a clip of another speaker (`labels` "identity"). The
    same is measured on the clean clips (frames, power: the judges' ceiling), their MDVAE
    reconstructions, clips generated entirely from the priors (w too; sync only), and
    unrelated streams (chance)."""
    gen = torch.Generator(device=models.device).manual_seed(seed)
    n_frames = x_a.shape[1]
    t = np.arange(0, n_frames, visual_stride)
    read: dict[str, list] = {"clean": [], "reconstruction": [], "given_w": [], "prior": []}
    for part in tqdm(list(chunks(len(x_a), batch)), desc="generation", disable=not show):
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
    identity = np.array([lab["identity"] for lab in labels])
    probe, same, other = verification_triplets(identity, np.random.default_rng(seed))
    for source in ("clean", "reconstruction", "given_w"):
        row = {}
        for judge in ("visual", "audio"):
            medium = "video" if judge == "visual" else "audio"
            truth = np.array([lab["emotion"] for lab in labels])
            pred = np.array([r[judge]["emotion"] for r in read[source]])
            ok = truth >= 0
            share = float((pred[ok] == truth[ok]).mean()) if ok.any() else float("nan")
            row[f"emotion_{medium}"] = share
            row[f"emotion_{medium}_se"] = binomial_se(share, int(ok.sum()))
            share = float("nan")
            if len(probe):
                logp = np.stack([r[judge]["speaker_logp"] for r in read[source]])
                ref = np.stack([r[judge]["speaker_logp"] for r in read["clean"]])
                share = float((closer_to_b(logp[probe], ref[other], ref[same]) > 0).mean())
            row[f"speaker_{medium}"] = share
            row[f"speaker_{medium}_se"] = binomial_se(share, len(probe))
        stays[source] = row
    out["stays_with_w"] = stays
    return out
