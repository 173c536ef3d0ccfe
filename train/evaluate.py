"""Evaluate a bundle on a store: the seed's experiments and the synthetic benchmark's
disentanglement scores.

    python -m train.evaluate --bundle checkpoints --data data/synthetic --out runs/eval
    python -m train.evaluate ... --quick          # fewer sequences, pairs, draws, steps
    python -m train.evaluate ... --seeds 0 1 2    # each seed in OUT/seed_<k>, mean ± spread
    python -m train.evaluate --bundle checkpoints --data data/synth_new64 --split val \\
        --train-data data/synth200 --out runs/eval_new64   # a pool of new speakers only

1. Reconstruction of held-out clips: VQ-VAEs alone, MDVAE, DSAEs (PSNR, SSIM, LSD).
2. Denoising (the seed's protocol): Gaussian noise of std --sigma (in [0, 1] pixel units)
   on the mouth, or the eyes, of the 6 central frames of 10-frame sequences, audio intact;
   PSNR / SSIM on the corrupted pixels, and each model's gain against its own
   reconstruction of the clean sequence; a sweep over --sigmas for the figure. On stores
   with ground-truth factors, the visual judge (study 4) also reads the mouth shapes of the
   denoised mouths, each model's output at every sigma, the noisy input and the clean
   frames, against the truth ("mouth_read"; trusted only where its mouth head is).
3. Emotion recognition: logistic regression on the posterior mean of w against the share
   of labelled training clips, tested on the evaluated split's unseen speakers. With
   --references (stores of more clips of the evaluated speakers, e.g. neutral ones) and a
   bundle with the head that reads w against the same person's neutral clip, that head too,
   on every pair of an evaluated speaker's neutral clip and another of their clips, beside
   the bundle's plain head on the same clips ("emotion" -> "reference").
4. On stores with ground-truth factors: judges trained on training speakers (never the
   evaluated ones) read the factors of decoded clips after latent swaps and generation
   from the priors; a judge is trusted when it reads the evaluated speakers' clean clips
   well, and a factor is scored only where the MDVAE's own reconstruction renders it.

Accuracies and shares come with standard errors (clips, sequences or swapped pairs as
the unit: mdvae.eval.stats).

Writes OUT/results.json (everything, with "summary" and "markdown" for the model card),
OUT/results.md, PNG figures, and OUT/judge_{visual,audio}.safetensors (reused by a rerun
with the same data and settings). Deterministic given --seed; --seeds runs the whole
evaluation once per seed (judges included) and reports the headline numbers' mean and
standard deviation over them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from mdvae.bundle import load_bundle
from mdvae.calibration import head_temperature
from mdvae.components import (
    DSAE_AUDIO,
    DSAE_VISUAL,
    EMOTION_HEAD,
    EMOTION_READERS,
    EMOTION_REFERENCE,
    MDVAE_MODEL,
    VQVAE_ALONE,
)
from mdvae.data.store import ClipInfo, Store
from mdvae.errors import MDVAEError
from mdvae.eval import disentanglement as D
from mdvae.eval import experiments as ev
from mdvae.eval import judges as J
from mdvae.eval import metrics
from mdvae.eval.report import figures, markdown, protocol, summary, targets
from mdvae.eval.stats import mean_spread, paired_difference
from mdvae.model.emotion import reference_pairs
from train import common
from train.runs import cached_features, feature_key

JUDGE_VERSION = 3  # bump when the judges' architecture, training or report change: rebuilds caches


@dataclass
class EvalSettings:
    split: str = "test"  # speakers the model never saw
    seed: int = 0
    sigma: float = 0.2  # headline denoising noise std, [0, 1] pixel units
    sigmas: tuple[float, ...] = (0.0, 0.1, 0.2, 0.4)  # the sweep of the figure (0: clean)
    denoise_sequences: int = 200  # 10-frame test sequences, as in the seed
    recon_clips: int = 32  # held-out clips for the reconstruction table
    max_frames: int = 90  # clips are read from their start, at most this many frames
    fractions: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
    draws: int = 5  # random draws of the labelled subset per fraction
    emotion_train_clips: int = 0  # 0: every labelled training clip
    swap_pairs: int = 100
    generation_clips: int = 48
    visual_stride: int = 3  # swaps and generation: judges read every 3rd decoded frame
    # 6000: with 1500 the visual judge read an unseen face's motion within half a margin on
    # 0.84 / 0.94 / 0.89 of the validation frames (dx, dy, roll), under the trust bar
    judge_steps: int = 6000
    judge_speakers: int = 40  # training speakers the judges learn (never evaluated ones)
    judge_clips_per_speaker: int = 8  # random clips of each
    judge_hold_out: float = 0.25  # share of each speaker's clips that validate the judges
    judge_augment: str = "codec"  # also train judges on VQ-VAE reconstructions, or "none"
    # the judges' checks, swaps and generation draw from at most this many clips of the
    # evaluated split (a random subset; 0: all): a pool of 1,408 clips of new speakers would
    # otherwise be decoded four times over (7 GB); the emotion study reads every clip
    study_clips: int = 400


QUICK = dict(
    sigmas=(0.0, 0.2),
    denoise_sequences=16,
    recon_clips=4,
    draws=2,
    emotion_train_clips=240,
    swap_pairs=8,
    generation_clips=4,
    judge_steps=150,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bundle", required=True, help="bundle folder or Hub repo id")
    parser.add_argument("--data", required=True, help="store folder (python -m train.prepare)")
    parser.add_argument("--out", required=True, help="folder for results and figures")
    parser.add_argument(
        "--train-data",
        default=None,
        help="store whose training split gives the emotion probes' and the judges' training "
        "clips (default: --data). With it, a store whose speakers are all held out (a pool "
        "of new speakers: train.prepare synthetic --first-speaker 200 ... --val-speakers N) "
        "can be evaluated; its speakers must not be the training store's (refused)",
    )
    parser.add_argument(
        "--references",
        nargs="+",
        default=[],
        metavar="STORE",
        help="stores of more clips of the evaluated speakers, matched by name (e.g. neutral "
        "ones: train.prepare synthetic --emotions neutral): the bundle's reference head is "
        "scored on every pair of a speaker's neutral clip and another of their clips",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if any)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a shared machine, more threads than free "
        "cores slow torch down many times; 0 lets torch decide)",
    )
    parser.add_argument("--no-figures", action="store_true")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="evaluate once per seed (in OUT/seed_<k>) and report mean ± std over them",
    )
    defaults = EvalSettings()
    for f in fields(EvalSettings):
        value = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        shown = " ".join(f"{v:g}" for v in value) if isinstance(value, tuple) else value
        help_text = f"default {shown}" + (
            f", {QUICK[f.name]} with --quick" if f.name in QUICK else ""
        )
        if isinstance(value, tuple):
            parser.add_argument(flag, type=float, nargs="+", default=None, help=help_text)
        else:
            parser.add_argument(flag, type=type(value), default=None, help=help_text)
    return parser


def settings_from(args: argparse.Namespace) -> EvalSettings:
    s = EvalSettings(**(QUICK if args.quick else {}))
    given = {
        f.name: getattr(args, f.name)
        for f in fields(EvalSettings)
        if getattr(args, f.name) is not None
    }
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}
    s = replace(s, **given)
    if s.judge_augment not in ("codec", "none"):
        raise MDVAEError(f"--judge-augment must be 'codec' or 'none', got {s.judge_augment!r}")
    return s


# ---------------------------------------------------------------------------------------
# Data


def windows(store: Store, clips: list[ClipInfo], n_frames: int) -> dict[str, Any]:
    """The first n_frames of each clip, stacked (as Store.gather)."""
    return store.gather(np.array([c.index for c in clips]), np.zeros(len(clips), int), n_frames)


def common_length(clips: list[ClipInfo], cap: int) -> int:
    """Clips are compared frame by frame, so the studies read the same number from each."""
    return min([cap] + [c.length for c in clips])


def region_masks(
    factors: dict[str, np.ndarray], n_seq: int, n_frames: int
) -> tuple[dict[str, np.ndarray], str]:
    """Mouth and eyes masks (N, T, 64, 64): ground-truth boxes where the store has them,
    else the aligned-face template."""
    masks, source = {}, "ground-truth boxes"
    for region in ("mouth", "eyes"):
        boxes = factors.get(f"{region}_box")
        if boxes is not None:
            masks[region] = np.stack([metrics.box_mask(b) for b in boxes])
        else:
            source = "face template"
            masks[region] = np.broadcast_to(
                metrics.template_mask(region, n_frames), (n_seq, n_frames, 64, 64)
            )
    return masks, source


class FeatureReader:
    """Stage-2 inputs of whole clips: from the store's feature cache when it holds these
    VQ-VAEs' features, else encoded on the fly."""

    def __init__(self, store: Store, models: ev.Models, *, fill_cache: bool):
        self.store, self.models = store, models
        codec = models.codec
        self.audio = self.visual = None
        found = store.features(feature_key(codec.vq_audio, codec.vq_visual))
        if found is None and fill_cache:
            found = cached_features(store, codec.vq_audio, codec.vq_visual)[:2]
        if found is not None:
            self.audio, self.visual = found

    def __call__(
        self, clips: list[ClipInfo], n_frames: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x_a (B, T, 512), x_v (B, T, 2048) of the first n_frames (default: all, which
        must be the same number) of each clip."""
        n = n_frames or clips[0].length
        if self.audio is None:
            w = windows(self.store, clips, n)
            return self.models.codec.encode(w["frames"], w["power"])
        rows = [slice(c.start, c.start + n) for c in clips]
        x_a = np.stack([np.asarray(self.audio[r], np.float32) for r in rows])
        x_v = np.stack([np.asarray(self.visual[r], np.float32) for r in rows])
        device = self.models.device
        return torch.from_numpy(x_a).to(device), torch.from_numpy(x_v).to(device)

    def batched(
        self, clips: list[ClipInfo], n_frames: int, batch: int = 32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [self(clips[i : i + batch], n_frames) for i in range(0, len(clips), batch)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


@dataclass
class TrainingSide:
    """Where the emotion probes and the judges learn: the training split of `store` (the
    evaluated store itself, or the one `--train-data` names) and its feature reader."""

    store: Store
    reader: FeatureReader


def static_latents(
    model, reader: FeatureReader, clips: list[ClipInfo], *, batch: int = 32, desc: str = "w"
) -> np.ndarray:
    """Posterior means of w of whole clips (N, Lw); clips are batched by length."""
    out: dict[int, np.ndarray] = {}
    by_length: dict[int, list[ClipInfo]] = {}
    for c in clips:
        by_length.setdefault(c.length, []).append(c)
    groups = [g[i : i + batch] for g in by_length.values() for i in range(0, len(g), batch)]
    for group in tqdm(groups, desc=f"encoding {desc}", leave=False):
        x_a, x_v = reader(group)
        for c, w in zip(group, ev.static_means(model, x_a, x_v)):
            out[c.index] = w
    return np.stack([out[c.index] for c in clips])


# ---------------------------------------------------------------------------------------
# The studies


def run_reconstruction(store, models, clips, s, rng) -> dict:
    chosen = sorted(rng.choice(len(clips), size=min(s.recon_clips, len(clips)), replace=False))
    chosen = [clips[i] for i in chosen]
    n_frames = common_length(chosen, s.max_frames)
    w = windows(store, chosen, n_frames)
    masks, source = region_masks(w["factors"], len(chosen), n_frames)
    rows = ev.reconstruction(models, w["frames"], w["power"], masks)
    return {"clips": len(chosen), "frames": n_frames, "regions": source, "models": rows}


def run_denoising(
    store, models, s, rng
) -> tuple[dict, ev.DenoisingResult, np.ndarray | None]:
    """The denoising study, and on stores with ground truth the mouth shapes (N, 6) of the
    corrupted frames, with the mouth region's decoded frames kept for the judge to read
    (`run_mouth_reading`, once the judges exist)."""
    n = metrics.DENOISE_LENGTH
    batch = store.sample_windows(s.split, n, s.denoise_sequences, rng)
    masks, source = region_masks(batch["factors"], len(batch["frames"]), n)
    sigmas = sorted(set(s.sigmas) | {s.sigma})
    mouths = None
    if J.has_ground_truth(store.factors):
        viseme = np.asarray(batch["factors"]["viseme"], np.int64)[:, metrics.DENOISE_FRAMES]
        mouths = J.MOUTH_OF_VISEME[viseme]
    result = ev.denoising(
        models,
        batch["frames"],
        batch["power"],
        masks,
        sigmas,
        seed=s.seed,
        keep=("mouth",) if mouths is not None else (),
    )
    out = result.to_dict()
    out.update(
        sigma=s.sigma,
        regions=source,
        frames=f"{metrics.DENOISE_FRAMES.start}..{metrics.DENOISE_FRAMES.stop - 1} of {n}",
    )
    return out, result, mouths


def run_mouth_reading(
    judge: J.Judge, trusted: bool, denoise: ev.DenoisingResult, mouths: np.ndarray
) -> dict:
    """The visual judge's mouth head on the denoised mouths (`ev.read_denoised_mouths`),
    with its trust decision on the evaluated speakers' clean clips."""
    out = ev.read_denoised_mouths(judge, denoise, mouths)
    if "skipped" not in out:
        out = {"judge": "visual", "head": "mouth", "trusted": bool(trusted), **out}
    return out


def run_emotion(store, models, reader, s, rng, training: TrainingSide | None = None) -> dict:
    training = training or TrainingSide(store, reader)
    train = [c for c in training.store.split_clips("train") if c.emotion]
    test = [c for c in store.split_clips(s.split) if c.emotion]
    if not train or not test:
        return {"skipped": "no emotion labels in the training split or the evaluated split"}
    if s.emotion_train_clips and len(train) > s.emotion_train_clips:
        keep = sorted(rng.choice(len(train), size=s.emotion_train_clips, replace=False))
        train = [train[i] for i in keep]
    y_train, y_test = [c.emotion for c in train], [c.emotion for c in test]
    out: dict[str, Any] = {
        "train_clips": len(train),
        "test_clips": len(test),
        "fractions": list(s.fractions),
        "draws": s.draws,
        "models": {},
    }
    counts = np.unique(y_test, return_counts=True)[1]
    out["chance"] = float(counts.max() / counts.sum())
    encoded: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for emotion_reader in EMOTION_READERS.values():
        name = emotion_reader.model
        model = models.components.get(name)
        if model is None:
            continue
        w_train = static_latents(model, training.reader, train, desc=f"w ({name}, train)")
        w_test = static_latents(model, reader, test, desc=f"w ({name}, {s.split})")
        encoded[name] = w_train, w_test
        row = ev.emotion_curve(w_train, y_train, w_test, y_test, s.fractions, s.draws, seed=s.seed)
        # the same fractions of the training speakers, all their clips labelled
        row["curve_by_speakers"] = ev.emotion_curve(
            w_train, y_train, w_test, y_test, s.fractions, s.draws, seed=s.seed,
            groups=[c.speaker for c in train])["curve"]
        head = models.heads.get(emotion_reader.head)
        if head is not None and head.config.in_dim == w_test.shape[1]:
            with torch.no_grad():
                w = torch.as_tensor(w_test, device=models.device)
                pred = head(w).argmax(-1).cpu().numpy()
            truth = np.array([head.config.labels.index(y) for y in y_test])
            row["bundle_head_accuracy"] = float((pred == truth).mean())
        out["models"][name] = row
    speakers = [c.speaker for c in test]
    out["paired"] = paired_differences(out["models"], speakers)
    full = {m: r["curve"][-1].get("correct") for m, r in out["models"].items() if r["curve"]}
    full = {m: c for m, c in full.items() if c is not None}
    if DSAE_AUDIO in encoded and DSAE_VISUAL in encoded:
        f_train, f_test = late_fusion(encoded[DSAE_AUDIO], encoded[DSAE_VISUAL])
        fused = ev.emotion_curve(f_train, y_train, f_test, y_test, [1.0], 1, seed=s.seed)
        out[ev.LATE_FUSION] = fused["curve"][-1]
        full[ev.LATE_FUSION] = out[ev.LATE_FUSION]["correct"]
        if MDVAE_MODEL in out["models"]:
            pair = {MDVAE_MODEL: out["models"][MDVAE_MODEL], ev.LATE_FUSION: fused}
            out[ev.LATE_FUSION]["mdvae_minus"] = paired_differences(pair, speakers)[
                ev.LATE_FUSION
            ]
    if full and all(c.level for c in test):
        out["by_level"] = ev.accuracy_by_level(full, [c.level for c in test], MDVAE_MODEL)
    return out


def run_reference_emotion(store: Store, bundle, models: ev.Models, reader: FeatureReader,
                          references: list[str], s: EvalSettings, *, fill_cache: bool) -> dict:
    """The bundle's reference head (`ReferenceEmotionHead`) on every same-speaker pair of the
    evaluated split's clips and the `references` stores' clips of the same speakers, beside
    the bundle's plain head on the same clips (`ev.reference_study`), at the head's
    calibrated temperature; and, under "others", each one-stream model the bundle has a
    reference head for, on the same pairs, with the MDVAE's margin over it ("mdvae_minus",
    paired, the speakers as the unit)."""
    head, plain = bundle[EMOTION_REFERENCE].eval(), bundle[EMOTION_HEAD].eval()
    clips = [c for c in store.split_clips(s.split) if c.emotion]
    speakers = {c.speaker for c in clips}
    parts = [(reader, clips)]
    for path in references:
        other = Store(path)
        parts.append((FeatureReader(other, models, fill_cache=fill_cache),
                      [c for c in other.clips if c.emotion and c.speaker in speakers]))
    chosen = [c for _, part in parts for c in part]
    labels, who = np.array([c.emotion for c in chosen]), np.array([c.speaker for c in chosen])
    if not len(reference_pairs(labels, who, head.config.reference)[0]):
        return {"skipped": f"no evaluated speaker has a {head.config.reference} clip and "
                           "another clip to pair it with"}
    levels = np.array([c.level or 0 for c in chosen])

    def w_of(model, name: str) -> np.ndarray:
        return np.concatenate([static_latents(model, r, part, desc=f"w ({name})")
                               for r, part in parts if part])

    w = w_of(models.mdvae, EMOTION_REFERENCE)
    study = ev.reference_study(head, plain, w, labels, who, levels,
                               head_temperature(bundle.info, EMOTION_REFERENCE))
    others = {}
    for r in EMOTION_READERS.values():
        model = models.components.get(r.model)
        if r.model == MDVAE_MODEL or model is None or r.reference_head not in bundle \
                or r.head not in bundle:
            continue
        theirs, w_theirs = bundle[r.reference_head].eval(), w_of(model, r.reference_head)
        others[r.model] = {
            **ev.reference_study(theirs, bundle[r.head].eval(), w_theirs, labels, who, levels,
                                 head_temperature(bundle.info, r.reference_head)),
            "mdvae_minus": ev.reference_margin((head, w), (theirs, w_theirs), labels, who)}
    return {"references": list(references), "reference": head.config.reference, **study,
            **({"others": others} if others else {})}


def late_fusion(
    audio: tuple[np.ndarray, np.ndarray], visual: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """The A-DSAE's and V-DSAE's w side by side (train, test), each standardised with its
    training clips' mean and std so that neither outweighs the other: what the two streams
    hold about emotion when each is encoded on its own, read by one logistic regression.
    Not a model of the seed's; the reference for what the voice can add to the face."""
    parts = []
    for w_train, w_test in (audio, visual):
        mean, std = w_train.mean(0), w_train.std(0) + 1e-6
        parts.append(((w_train - mean) / std, (w_test - mean) / std))
    return tuple(np.concatenate([p[i] for p in parts], axis=1) for i in (0, 1))


def paired_differences(
    rows: dict[str, dict], speakers: list[str] | None = None
) -> dict[str, dict[str, float]]:
    """The MDVAE's accuracy with all labels minus each other model's, on the same test
    clips: mean and SE of the per-clip difference (paired, so tighter than either SE).
    Given each clip's speaker, also "se_speakers": the SE with speakers as the unit (clips
    of one speaker share the speaker's quirks, so a few speakers weigh more than their
    clips say; `stats.paired_difference`)."""
    full = {m: r["curve"][-1].get("correct") for m, r in rows.items() if r["curve"]}
    base = full.get(MDVAE_MODEL)
    out = {}
    for m, correct in full.items():
        if m == MDVAE_MODEL or base is None or correct is None:
            continue
        out[m] = paired_difference(np.asarray(base, float) - np.asarray(correct, float), speakers)
    return out


def judge_training_clips(
    store: Store, evaluated: list[ClipInfo], s: EvalSettings, rng: np.random.Generator
) -> list[ClipInfo]:
    """The judges' clips: `judge_clips_per_speaker` random clips of each of
    `judge_speakers` random training speakers of `store` (the evaluated store or the
    `--train-data` one), never a speaker of the evaluated clips."""
    excluded = {c.speaker for c in evaluated}  # names are identities across stores
    by_speaker: dict[str, list[ClipInfo]] = {}
    for c in store.split_clips("train"):
        if c.speaker not in excluded:
            by_speaker.setdefault(c.speaker, []).append(c)
    if len(by_speaker) < 2:
        raise MDVAEError(
            "the judges need clips of at least two training speakers that the evaluated "
            f"split {s.split!r} does not hold; the store has {len(by_speaker)}"
        )
    names = sorted(by_speaker)
    chosen = rng.choice(len(names), size=min(s.judge_speakers, len(names)), replace=False)
    out = []
    for i in sorted(chosen):
        own = by_speaker[names[i]]
        pick = rng.choice(len(own), size=min(s.judge_clips_per_speaker, len(own)), replace=False)
        out += [own[j] for j in sorted(pick)]
    return out


def judge_key(
    store: Store,
    train_clips: list[ClipInfo],
    evaluated: list[ClipInfo],
    n_frames: tuple[int, int],
    s: EvalSettings,
    models: ev.Models,
    modality: str,
    train_store: Store | None = None,
) -> str:
    """The cache key of a judge; `train_store`: where its training clips come from, when
    not the evaluated `store`."""
    codec = models.codec
    spec = {
        "version": JUDGE_VERSION,
        "modality": modality,
        "store": store.meta.get("uid"),
        "frames_in_store": store.n_frames,
        **({} if train_store is None else {"train_store": train_store.meta.get("uid")}),
        "clips": [c.id for c in train_clips],
        "evaluated": [c.id for c in evaluated],
        "n_frames": list(n_frames),
        "seed": s.seed,
        "steps": s.judge_steps,
        "hold_out": s.judge_hold_out,
        "protocol": protocol()["judges"],  # the trust decisions are cached with the judge
        "augment": s.judge_augment,
        "codec": feature_key(codec.vq_audio, codec.vq_visual),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]


def labelled_windows(
    store: Store,
    clips: list[ClipInfo],
    n_frames: int,
    *,
    classes: list[str] | None = None,
    identities: list[str] | None = None,
) -> J.JudgeData:
    """The first n_frames of each clip with the judges' ground truth: "speaker" is the
    index in `classes` (the judges' training speakers; -1 for any other speaker),
    "identity" the index in `identities` (default `classes`)."""
    classes = classes or []
    identities = identities if identities is not None else classes
    w = windows(store, clips, n_frames)
    labels = [
        J.clip_labels(
            {k: v[i] for k, v in w["factors"].items()},
            classes.index(c.speaker) if c.speaker in classes else -1,
            c.emotion,
            c.level,
            identity=identities.index(c.speaker),
        )
        for i, c in enumerate(clips)
    ]
    return J.JudgeData(w["frames"], w["power"], labels)


@torch.no_grad()
def rendered(
    models,
    reader: FeatureReader,
    clips: list[ClipInfo],
    n_frames: int,
    face: str,
    voice: str | None = None,
    batch: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """The first n_frames of clips as compared models render them (`ev.model_outputs`:
    posterior means, then the VQ-VAE decoders): the frames of model `face` and the power of
    model `voice` (the same model when None). "vqvae" is the VQ-VAEs alone (from cached
    features when the store has them: only the decoders run)."""
    voice = voice or face
    names = list(dict.fromkeys([face, voice]))
    out_v, out_a = [], []
    for i in tqdm(range(0, len(clips), batch), desc=f"{'/'.join(names)} renders", leave=False):
        out = ev.model_outputs(models, *reader(clips[i : i + batch], n_frames), names)
        out_v.append(out[face][0])
        out_a.append(out[voice][1])
    return np.concatenate(out_v), np.concatenate(out_a)


def fit_judges(
    store, models, reader, clips, n_frames, s, out_dir, training: TrainingSide | None = None
) -> tuple[dict[str, J.Judge], dict[str, J.JudgeReport], dict]:
    """Judges trained on training speakers only (`judge_training_clips` of the training
    side, default the evaluated store; with their VQ-VAE reconstructions), validated on
    held-out clips of those speakers, and checked (J.CHECKS) on the evaluated clips `clips`:
    clean (which decides trust), through the VQ-VAEs, and through the MDVAE (which decides
    what the model renders). Cached in out_dir."""
    training = training or TrainingSide(store, reader)
    train_clips = judge_training_clips(
        training.store, clips, s, np.random.default_rng([s.seed, 2])
    )
    classes = sorted({c.speaker for c in train_clips})
    identities = sorted({c.speaker for c in clips})
    if set(classes) & set(identities):  # the claim the judges' numbers rest on
        raise MDVAEError("a judge would be trained on a speaker it scores")
    n_train = common_length(train_clips, s.max_frames)
    pool = labelled_windows(training.store, train_clips, n_train, classes=classes)
    held = J.split_held_out(
        [classes.index(c.speaker) for c in train_clips],
        s.judge_hold_out,
        np.random.default_rng([s.seed, 1]),
    )
    train = pool.subset(~held)
    evaluated = labelled_windows(store, clips, n_frames, identities=identities)
    other = None if training.store is store else training.store
    keys = {
        m: judge_key(store, train_clips, clips, (n_train, n_frames), s, models, m, other)
        for m in J.MODALITIES
    }
    need = [
        m for m in J.MODALITIES if J.load_judge(out_dir / f"judge_{m}.safetensors", keys[m]) is None
    ]
    checks: dict[str, J.JudgeData] = {"held_out": pool.subset(held), "clean": evaluated}
    if need:  # VQ-VAE reconstructions: augmentation, and the codec check
        codec = rendered(models, reader, clips, n_frames, VQVAE_ALONE)
        checks["codec"] = evaluated.with_media(*codec)
        if s.judge_augment == "codec":
            chosen = [c for c, h in zip(train_clips, held) if not h]
            train = train.concat(
                train.with_media(
                    *rendered(models, training.reader, chosen, n_train, VQVAE_ALONE)
                )
            )
    model_check = evaluated.with_media(*rendered(models, reader, clips, n_frames, MDVAE_MODEL))
    # what the baselines render, read by the same judges (the visual judges read the
    # V-DSAE's faces, the audio judges the A-DSAE's voices): a mouth PSNR cannot tell an
    # average mouth from the right one
    later = {"model": model_check}
    if models.dsae_visual is not None and models.dsae_audio is not None:
        later["dsae"] = evaluated.with_media(
            *rendered(models, reader, clips, n_frames, DSAE_VISUAL, DSAE_AUDIO)
        )
    judges, reports = {}, {}
    for m in J.MODALITIES:
        judge, report = J.fit_or_load(
            out_dir / f"judge_{m}.safetensors",
            keys[m],
            J.JudgeConfig(modality=m, speakers=tuple(classes)),
            train,
            checks,
            references={"codec": "clean"},
            settings=J.TrainSettings(steps=s.judge_steps, seed=s.seed),
            log=lambda msg: print(msg, file=sys.stderr),
        )
        judge = judge.to(models.device)
        scored = J.score_checks(
            judge, {"clean": evaluated, **later}, references={k: "clean" for k in later}
        )
        for check in later:
            report.scores[check] = scored[check]
        judges[m], reports[m] = judge, report
    info = {
        "speakers": {"judges": classes, "evaluated": identities},  # disjoint (checked above)
        "train_store": str(training.store.path),
        "train_speakers": len(classes),
        "train_clips": int((~held).sum()),
        "held_out_clips": int(held.sum()),
        "evaluated_speakers": len(identities),
        "evaluated_clips": len(clips),
        "frames_per_clip": n_frames,
        "steps": s.judge_steps,
        "augment": s.judge_augment,
        "checks": dict(J.CHECKS),
        "trust_on": J.TRUST_ON,
        "reports": {m: r.to_dict() for m, r in reports.items()},
    }
    for m, r in reports.items():
        for head, score in r.scores[J.TRUST_ON].items():
            verdict = "trusted" if score.trusted else "NOT trusted"
            if score.within is not None:
                measured = "/".join(f"{x:.3f}" for x in score.within)
            elif score.kind == "verification":
                measured = f"{score.accuracy:.3f}" if score.n else "-"
            else:
                measured = f"{score.balanced_accuracy:.3f}" if score.n else "-"
            print(
                f"[judges] {m} {head}: {verdict} ({score.criterion}; measured {measured})",
                file=sys.stderr,
            )
    return judges, reports, info


def example_first(
    a_idx: np.ndarray, b_idx: np.ndarray, speakers: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """The pairs (a_idx[i], b_idx[i]) of clip indices, the first pair of two different
    speakers moved to the front (the swap figure shows the first pair); the same pairs, so
    the same scores. Unchanged when every pair is of one speaker."""
    k = next((i for i in range(len(a_idx)) if speakers[a_idx[i]] != speakers[b_idx[i]]), 0)
    order = np.arange(len(a_idx))
    order[[0, k]] = order[[k, 0]]
    return a_idx[order], b_idx[order]


def run_disentanglement(
    store, models, reader, clips, s, rng, out_dir, training: TrainingSide | None = None
) -> tuple[dict, dict, dict[str, J.Judge]]:
    if s.study_clips and len(clips) > s.study_clips:
        keep = sorted(rng.choice(len(clips), size=s.study_clips, replace=False))
        clips = [clips[i] for i in keep]
    n_frames = common_length(clips, s.max_frames)
    judges, reports, judge_info = fit_judges(
        store, models, reader, clips, n_frames, s, out_dir, training
    )
    trusted = {f.name: reports[f.judge].trusted(f.score) for f in D.FACTORS}
    rendered = {
        f.name: D.rendering(
            reports[f.judge].scores["model"][f.score], reports[f.judge].scores["codec"][f.score]
        )
        for f in D.FACTORS
    }
    identities = sorted({c.speaker for c in clips})
    n = len(clips)
    if n < 2:
        raise MDVAEError(f"split {s.split!r} has {n} clip(s); swaps need at least two")
    # pairs of distinct clips, drawn uniformly: target A, source B
    a_idx = rng.integers(0, n, size=s.swap_pairs)
    b_idx = (a_idx + rng.integers(1, n, size=s.swap_pairs)) % n
    a_idx, b_idx = example_first(a_idx, b_idx, [c.speaker for c in clips])
    clips_a, clips_b = [clips[i] for i in a_idx], [clips[i] for i in b_idx]
    t = np.arange(0, n_frames, s.visual_stride)
    a = labelled_windows(store, clips_a, n_frames, identities=identities)
    b = labelled_windows(store, clips_b, n_frames, identities=identities)
    # the judges' readings of the clean A and B: what a decoded speaker is compared with
    labels_a = D.with_references(a.labels, D.read_media(judges, a.frames[:, t], a.power, t))
    labels_b = D.with_references(b.labels, D.read_media(judges, b.frames[:, t], b.power, t))
    data = D.SwapData(
        *reader.batched(clips_a, n_frames), labels_a, *reader.batched(clips_b, n_frames), labels_b
    )
    swaps = D.swap_study(models, judges, data, visual_stride=s.visual_stride)
    example = {"A": a.frames[0][t], "B": b.frames[0][t], **swaps.pop("example")}
    chosen = sorted(rng.choice(n, size=min(n, s.generation_clips), replace=False))
    chosen = [clips[i] for i in chosen]
    g = labelled_windows(store, chosen, n_frames, identities=identities)
    generation = D.generation_study(
        models,
        judges,
        *reader.batched(chosen, n_frames),
        g.frames,
        g.power,
        g.labels,
        seed=s.seed,
        visual_stride=s.visual_stride,
    )
    out = {
        "judges": judge_info,
        "trusted": trusted,
        "rendered": rendered,
        "frames_per_clip": n_frames,
        "swaps": swaps,
        "generation": generation,
    }
    return out, example, judges


# ---------------------------------------------------------------------------------------
# Main


def _clean(obj):
    """JSON-safe: NaN and infinities become null, numpy scalars plain numbers."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    s = settings_from(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir = Path(args.out)
    if not args.seeds:
        return evaluate(args, s, out_dir)
    per_seed = {}
    for seed in args.seeds:
        print(f"[evaluate] seed {seed}", file=sys.stderr)
        per_seed[seed] = evaluate(args, replace(s, seed=seed), out_dir / f"seed_{seed}")
    results = _clean(over_seeds(per_seed))
    common.write_report(out_dir, "results", results)
    return results


def over_seeds(per_seed: dict[int, dict]) -> dict:
    """The summary numbers of several evaluations: mean and std over seeds, with the first
    seed's full report after the table."""
    seeds = list(per_seed)
    keys = [k for k, v in per_seed[seeds[0]]["summary"].items() if isinstance(v, (int, float))]
    spread = {k: mean_spread([per_seed[sd]["summary"].get(k) for sd in seeds]) for k in keys}
    lines = [
        f"**Over {len(seeds)} evaluation seeds** ({', '.join(map(str, seeds))}; each seed "
        "redraws every sample and retrains the judges; mean ± standard deviation)",
        "",
        "| measure | mean ± std | " + " | ".join(f"seed {sd}" for sd in seeds) + " |",
        "|---|---|" + "---|" * len(seeds),
    ]
    for k in keys:
        values = [per_seed[sd]["summary"].get(k) for sd in seeds]
        cells = " | ".join("-" if v is None else f"{v:.3f}" for v in values)
        lines.append(f"| {k} | {spread[k]['mean']:.3f} ± {spread[k]['std']:.3f} | {cells} |")
    first = per_seed[seeds[0]]
    markdown_text = "\n".join(lines) + "\n\n" + first["markdown"]
    return {
        "config": {**first["config"], "seeds": seeds},
        "seeds": seeds,
        "spread": spread,
        "per_seed": {str(sd): per_seed[sd]["summary"] for sd in seeds},
        "markdown": markdown_text,
    }


def evaluate(args: argparse.Namespace, s: EvalSettings, out_dir: Path) -> dict:
    """One evaluation with settings `s` (seed included), written to out_dir."""
    began = time.time()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out_dir.mkdir(parents=True, exist_ok=True)
    common.seed_everything(s.seed)
    store = Store(args.data)
    train_store = store
    if args.train_data and Path(args.train_data).resolve() != Path(args.data).resolve():
        train_store = Store(args.train_data)
        if not train_store.split_clips("train"):
            raise MDVAEError(f"--train-data {args.train_data} has no clips in split 'train'")
    bundle = load_bundle(args.bundle, device=device)
    models = ev.Models.from_bundle(bundle)
    clips = store.split_clips(s.split)
    if not clips:
        raise MDVAEError(f"{args.data} has no clips in split {s.split!r}")
    common.check_unseen(clips, train_store, bundle.info)
    results: dict[str, Any] = {
        "config": {
            "bundle": str(args.bundle),
            "data": str(args.data),
            "train_data": str(args.train_data or args.data),
            "references": list(args.references),
            "split": s.split,
            "seed": s.seed,
            "quick": bool(args.quick),
            "device": device,
            "settings": asdict(s),
        },
        "protocol": protocol(),
        "timing": {},
    }

    def timed(name, fn):
        start = time.time()
        value = fn()
        results["timing"][name] = round(time.time() - start, 1)
        print(f"[evaluate] {name}: {results['timing'][name]:.0f} s", file=sys.stderr)
        return value

    def rng(stream: int) -> np.random.Generator:  # one stream per study: each reproducible
        return np.random.default_rng([s.seed, stream])

    results["reconstruction"] = timed(
        "reconstruction", lambda: run_reconstruction(store, models, clips, s, rng(10))
    )
    results["denoising"], denoise, mouths = timed(
        "denoising", lambda: run_denoising(store, models, s, rng(20))
    )
    reader = timed("features", lambda: FeatureReader(store, models, fill_cache=not args.quick))
    training = TrainingSide(store, reader)
    if train_store is not store:
        training = TrainingSide(
            train_store,
            timed(
                "training features",
                lambda: FeatureReader(train_store, models, fill_cache=not args.quick),
            ),
        )
    results["emotion"] = timed(
        "emotion", lambda: run_emotion(store, models, reader, s, rng(30), training)
    )
    if args.references:
        if EMOTION_REFERENCE not in bundle or EMOTION_HEAD not in bundle:
            raise MDVAEError(f"--references scores the bundle's {EMOTION_REFERENCE} head, which "
                             f"{args.bundle} does not hold (train.emotion --references ...)")
        results["emotion"]["reference"] = timed(
            "emotion against a neutral clip",
            lambda: run_reference_emotion(store, bundle, models, reader, args.references, s,
                                          fill_cache=not args.quick),
        )
    swap_example = None
    if J.has_ground_truth(store.factors):
        results["disentanglement"], swap_example, judges = timed(
            "disentanglement",
            lambda: run_disentanglement(
                store, models, reader, clips, s, rng(40), out_dir, training
            ),
        )
        trusted = results["disentanglement"]["trusted"]["mouth"]
        results["denoising"]["mouth_read"] = timed(
            "denoised mouths read",
            lambda: run_mouth_reading(judges["visual"], trusted, denoise, mouths),
        )
    else:
        results["disentanglement_skipped"] = "the store has no ground-truth factors"
        results["denoising"]["mouth_read"] = {"skipped": "the store has no ground-truth factors"}
    results["targets"] = targets(results)
    results["summary"] = summary(results)
    results["markdown"] = markdown(results)
    if not args.no_figures:
        results["figures"] = timed(
            "figures", lambda: figures(results, out_dir, denoise, swap_example)
        )
    results["timing"]["total"] = round(time.time() - began, 1)
    results = _clean(results)
    common.write_report(out_dir, "results", results)
    return results


if __name__ == "__main__":
    main()
