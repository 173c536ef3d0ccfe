"""Evaluate a bundle on a store: the seed's experiments and the synthetic benchmark's
disentanglement scores.

    python -m train.evaluate --bundle checkpoints --data data/synthetic --out runs/eval
    python -m train.evaluate ... --quick          # fewer sequences, pairs, draws, steps

1. Reconstruction of held-out clips: VQ-VAEs alone, MDVAE, DSAEs (PSNR, SSIM, LSD).
2. Denoising (the seed's protocol): Gaussian noise of std --sigma (in [0, 1] pixel units)
   on the mouth, or the eyes, of the 6 central frames of 10-frame sequences, audio intact;
   PSNR / SSIM on the corrupted pixels; a sweep over --sigmas for the figure.
3. Emotion recognition: logistic regression on the posterior mean of w against the share
   of labelled training clips, tested on the evaluated split's unseen speakers.
4. On stores with ground-truth factors: judges trained on the evaluated split read the
   factors of decoded clips after latent swaps and generation from the priors.

Writes OUT/results.json (everything, with "summary" and "markdown" for the model card),
OUT/results.md, PNG figures, and OUT/judge_{visual,audio}.safetensors (reused by a rerun
with the same data and settings). Deterministic given --seed.
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
from mdvae.components import EMOTION_READERS
from mdvae.data.store import ClipInfo, Store
from mdvae.errors import MDVAEError
from mdvae.eval import experiments as ev
from mdvae.eval import judges as J
from mdvae.eval import metrics
from train import common
from train.runs import cached_features, feature_key

JUDGE_VERSION = 1  # bump when the judges' architecture or training changes: rebuilds caches


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
    judge_steps: int = 1500
    judge_hold_out: float = 0.25  # share of each speaker's clips that validate the judges
    judge_augment: str = "codec"  # also train judges on VQ-VAE reconstructions, or "none"


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


def run_denoising(store, models, s, rng) -> tuple[dict, ev.DenoisingResult]:
    n = metrics.DENOISE_LENGTH
    batch = store.sample_windows(s.split, n, s.denoise_sequences, rng)
    masks, source = region_masks(batch["factors"], len(batch["frames"]), n)
    sigmas = sorted(set(s.sigmas) | {s.sigma})
    result = ev.denoising(models, batch["frames"], batch["power"], masks, sigmas, seed=s.seed)
    out = result.to_dict()
    out.update(
        sigma=s.sigma,
        regions=source,
        frames=f"{metrics.DENOISE_FRAMES.start}..{metrics.DENOISE_FRAMES.stop - 1} of {n}",
    )
    return out, result


def run_emotion(store, models, reader, s, rng) -> dict:
    train = [c for c in store.split_clips("train") if c.emotion]
    test = [c for c in store.split_clips(s.split) if c.emotion]
    if not train or not test:
        return {"skipped": "the store has no emotion labels in the train or evaluated split"}
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
    for reader in EMOTION_READERS.values():
        name = reader.model
        model = models.components.get(name)
        if model is None:
            continue
        w_train = static_latents(model, reader, train, desc=f"w ({name}, train)")
        w_test = static_latents(model, reader, test, desc=f"w ({name}, {s.split})")
        row = ev.emotion_curve(w_train, y_train, w_test, y_test, s.fractions, s.draws, seed=s.seed)
        head = models.heads.get(reader.head)
        if head is not None and head.config.in_dim == w_test.shape[1]:
            with torch.no_grad():
                w = torch.as_tensor(w_test, device=models.device)
                pred = head(w).argmax(-1).cpu().numpy()
            truth = np.array([head.config.labels.index(y) for y in y_test])
            row["bundle_head_accuracy"] = float((pred == truth).mean())
        out["models"][name] = row
    return out


def judge_key(
    store: Store,
    clips: list[ClipInfo],
    n_frames: int,
    s: EvalSettings,
    models: ev.Models,
    modality: str,
) -> str:
    codec = models.codec
    spec = {
        "version": JUDGE_VERSION,
        "modality": modality,
        "store": store.meta.get("uid"),
        "frames_in_store": store.n_frames,
        "clips": [c.id for c in clips],
        "n_frames": n_frames,
        "seed": s.seed,
        "steps": s.judge_steps,
        "hold_out": s.judge_hold_out,
        "protocol": protocol()["judges"],  # the trust decisions are cached with the judge
        "augment": s.judge_augment,
        "codec": feature_key(codec.vq_audio, codec.vq_visual)
        if s.judge_augment == "codec"
        else None,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]


def labelled_windows(store, clips, n_frames, speakers) -> J.JudgeData:
    """The first n_frames of each clip with the judges' ground truth."""
    index = {name: i for i, name in enumerate(speakers)}
    w = windows(store, clips, n_frames)
    labels = [
        J.clip_labels(
            {k: v[i] for k, v in w["factors"].items()}, index[c.speaker], c.emotion, c.level
        )
        for i, c in enumerate(clips)
    ]
    return J.JudgeData(w["frames"], w["power"], labels)


def vq_reconstruction(
    models, reader: FeatureReader, clips: list[ClipInfo], n_frames: int, batch: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """The first n_frames of clips through the VQ-VAEs alone (from cached features when
    the store has them: only the decoders run)."""
    out_v, out_a = [], []
    for i in tqdm(range(0, len(clips), batch), desc="VQ-VAE reconstructions", leave=False):
        v, a = ev.decode_features(models, *reader(clips[i : i + batch], n_frames))
        out_v.append(v)
        out_a.append(a)
    return np.concatenate(out_v), np.concatenate(out_a)


def fit_judges(store, models, reader, clips, n_frames, s, out_dir) -> tuple[dict, dict]:
    """Judges of the evaluated split: trained on its clean clips (and their VQ-VAE
    reconstructions), validated on held-out clips of the same speakers; cached in out_dir."""
    speakers = sorted({c.speaker for c in clips})
    data = labelled_windows(store, clips, n_frames, speakers)
    held = J.split_held_out(
        [speakers.index(c.speaker) for c in clips],
        s.judge_hold_out,
        np.random.default_rng([s.seed, 1]),
    )
    train, held_out = data.subset(~held), data.subset(held)
    recon = None
    keys = {m: judge_key(store, clips, n_frames, s, models, m) for m in J.MODALITIES}
    need = [
        m for m in J.MODALITIES if J.load_judge(out_dir / f"judge_{m}.safetensors", keys[m]) is None
    ]
    if need:  # the VQ-VAE reconstructions: augmentation, and the codec column of the report
        recon = data.with_media(*vq_reconstruction(models, reader, clips, n_frames))
    judges, reports = {}, {}
    for m in J.MODALITIES:
        train_m = train
        if recon is not None and s.judge_augment == "codec":
            train_m = train.concat(recon.subset(~held))
        judge, report = J.fit_or_load(
            out_dir / f"judge_{m}.safetensors",
            keys[m],
            J.JudgeConfig(modality=m, speakers=tuple(speakers)),
            train_m,
            held_out,
            settings=J.TrainSettings(steps=s.judge_steps, seed=s.seed),
            held_out_codec=None if recon is None else recon.subset(held),
            log=lambda msg: print(msg, file=sys.stderr),
        )
        judges[m], reports[m] = judge.to(models.device), report
    info = {
        "speakers": len(speakers),
        "train_clips": int((~held).sum()),
        "held_out_clips": int(held.sum()),
        "frames_per_clip": n_frames,
        "steps": s.judge_steps,
        "augment": s.judge_augment,
        "reports": {m: r.to_dict() for m, r in reports.items()},
    }
    return judges, info


def run_disentanglement(store, models, reader, clips, s, rng, out_dir) -> tuple[dict, dict]:
    n_frames = common_length(clips, s.max_frames)
    judges, judge_info = fit_judges(store, models, reader, clips, n_frames, s, out_dir)
    trusted = {
        f.name: judge_info["reports"][f.judge]["clean"][f.truth]["trusted"] for f in ev.FACTORS
    }
    speakers = sorted({c.speaker for c in clips})
    n = len(clips)
    if n < 2:
        raise MDVAEError(f"split {s.split!r} has {n} clip(s); swaps need at least two")
    # pairs of distinct clips, drawn uniformly: target A, source B
    a_idx = rng.integers(0, n, size=s.swap_pairs)
    b_idx = (a_idx + rng.integers(1, n, size=s.swap_pairs)) % n
    clips_a, clips_b = [clips[i] for i in a_idx], [clips[i] for i in b_idx]
    a = labelled_windows(store, clips_a, n_frames, speakers)
    b = labelled_windows(store, clips_b, n_frames, speakers)
    data = ev.SwapData(
        *reader.batched(clips_a, n_frames), a.labels, *reader.batched(clips_b, n_frames), b.labels
    )
    swaps = ev.swap_study(models, judges, data, visual_stride=s.visual_stride)
    t = np.arange(0, n_frames, s.visual_stride)
    example = {"A": a.frames[0][t], "B": b.frames[0][t], **swaps.pop("example")}
    chosen = sorted(rng.choice(n, size=min(n, s.generation_clips), replace=False))
    chosen = [clips[i] for i in chosen]
    g = labelled_windows(store, chosen, n_frames, speakers)
    generation = ev.generation_study(
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
        "frames_per_clip": n_frames,
        "swaps": swaps,
        "generation": generation,
    }
    return out, example


# ---------------------------------------------------------------------------------------
# Targets, summary, tables


def protocol() -> dict[str, Any]:
    """The fixed choices behind the numbers, recorded beside them."""
    return {
        "denoising": {
            "sequence_frames": metrics.DENOISE_LENGTH,
            "corrupted_frames": [metrics.DENOISE_FRAMES.start, metrics.DENOISE_FRAMES.stop],
            "noise": "Gaussian, std sigma in [0, 1] pixel units, clipped; audio intact",
            "regions": "mouth_box / eyes_box factors, else metrics.TEMPLATE_BOXES",
            "metrics": "PSNR and SSIM over the corrupted pixels, per sequence, then averaged",
        },
        "emotion": "multinomial logistic regression (mdvae.model.emotion.fit_emotion_head, C=1) on "
        "posterior means of w of whole clips; subsets with fewer than 2 classes redrawn",
        "judges": {
            "mouth_classes": {k: list(v) for k, v in J.MOUTH_CLASSES.items()},
            "blink_closed_above": J.BLINK_CLOSED,
            "clear_emotion_level": J.CLEAR_LEVEL,
            "min_balanced_accuracy": J.MIN_BALANCED_ACCURACY,
            "min_share_within_tolerance": J.MIN_WITHIN,
            "tolerances": {k: list(v) for k, v in J.TOLERANCES.items()},
        },
        "swaps": {
            "margins": {k: list(v) for k, v in J.MARGINS.items()},
            "factors": {f.name: {"judge": f.judge, "follows": f.latent} for f in ev.FACTORS},
            "swaps": {k: list(v) for k, v in ev.SWAPS.items()},
            "stay_target": ev.STAY_TARGET,
        },
    }


def targets(results: dict) -> list[dict]:
    """The shipped bundle's targets next to the measured values; nothing here is tuned."""
    rows: list[dict] = []

    def add(name, target, measured, ok, note=""):
        rows.append(
            {
                "name": name,
                "target": target,
                "measured": measured,
                "status": "untrusted judge"
                if note == "untrusted"
                else ("pass" if ok else "FAIL")
                if ok is not None
                else "n/a",
            }
        )

    emo = results.get("emotion", {}).get("models", {})
    full = {m: r["curve"][-1]["mean"] for m, r in emo.items() if r["curve"]}
    if "mdvae" in full:
        add(
            "emotion accuracy from w (all labels)",
            ">= 0.90",
            f"{full['mdvae']:.3f}",
            full["mdvae"] >= 0.90,
        )
        others = {m: v for m, v in full.items() if m != "mdvae"}
        if others:
            add(
                "emotion: MDVAE above A-DSAE and V-DSAE",
                "MDVAE > both",
                ", ".join(f"{ev.MODEL_TITLES[m]} {v:.3f}" for m, v in full.items()),
                all(full["mdvae"] > v for v in others.values()),
            )
    den = results.get("denoising", {}).get("metric", {}).get("mouth", {})
    row = den.get(f"{results.get('denoising', {}).get('sigma', 0.2):g}", {})
    order = [m for m in ("mdvae", "dsae_visual", "vqvae", "noisy") if m in row]
    if len(order) >= 3:
        values = [row[m]["psnr"] for m in order]
        add(
            "mouth denoising PSNR: MDVAE > V-DSAE > VQ-VAE > noisy",
            "strictly decreasing",
            ", ".join(f"{ev.MODEL_TITLES[m]} {v:.2f}" for m, v in zip(order, values)),
            all(a > b for a, b in zip(values, values[1:])),
        )
    dis = results.get("disentanglement")
    if dis:
        shares, trusted = dis["swaps"]["shares"], dis["trusted"]
        for f in ev.FACTORS:
            if f.follow_target is None:
                continue
            cells = [
                (sw, shares[sw][f.name]["follow"])
                for sw, g in ev.SWAPS.items()
                if f.latent in g and shares[sw][f.name]["n"]
            ]
            if not cells:
                continue
            sw, worst = min(cells, key=lambda c: c[1])
            add(
                f"{f.title} follows {f.latent}",
                f">= {f.follow_target:.2f}",
                f"{worst:.3f} (swap {sw})",
                worst >= f.follow_target,
                "" if trusted[f.name] else "untrusted",
            )
        stays = [
            (shares[sw][f.name]["stay"], sw, f)
            for sw, g in ev.SWAPS.items()
            for f in ev.FACTORS
            if f.latent not in g and shares[sw][f.name]["n"] and trusted[f.name]
        ]
        name = "every factor stays with A when its latent is not swapped"
        if stays:
            worst, sw, f = min(stays, key=lambda c: c[0])
            add(
                name,
                f">= {ev.STAY_TARGET:.2f}",
                f"min {worst:.3f} ({f.title}, swap {sw})",
                worst >= ev.STAY_TARGET,
            )
        else:
            add(name, f">= {ev.STAY_TARGET:.2f}", "no trusted judge", None, "untrusted")
    return rows


def summary(results: dict) -> dict:
    out: dict[str, Any] = {}
    rec = results.get("reconstruction", {}).get("models", {})
    for m, row in rec.items():
        for k in ("psnr", "ssim", "lsd"):
            if k in row:
                out[f"reconstruction_{k}_{m}"] = row[k]
    den = results.get("denoising", {})
    for region, by_sigma in den.get("metric", {}).items():
        for m, r in by_sigma.get(f"{den['sigma']:g}", {}).items():
            out[f"denoising_{region}_psnr_{m}"] = r["psnr"]
            out[f"denoising_{region}_ssim_{m}"] = r["ssim"]
    for m, r in results.get("emotion", {}).get("models", {}).items():
        for point in r["curve"]:
            if point["fraction"] in (0.1, 1.0):
                out[f"emotion_accuracy_{m}_{point['fraction']:g}"] = point["mean"]
    dis = results.get("disentanglement")
    if dis:
        shares = dis["swaps"]["shares"]
        for f in ev.FACTORS:
            if f.latent in ev.SWAPS:
                out[f"{f.name}_follows_{f.latent}"] = shares[f.latent][f.name]["follow"]
        out["mouth_sync_given_w"] = dis["generation"]["sync"]["given_w"]
    rows = results.get("targets", [])
    out["targets_passed"] = f"{sum(r['status'] == 'pass' for r in rows)}/{len(rows)}"
    return out


def _f(x, digits=3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{digits}f}"


def markdown(results: dict) -> str:
    cfg = results["config"]
    lines = [
        f"Bundle `{cfg['bundle']}` on `{cfg['data']}`, split `{cfg['split']}` "
        f"(speakers unseen in training), seed {cfg['seed']}"
        + (", **quick run**" if cfg["quick"] else "")
        + "."
    ]
    rec = results.get("reconstruction")
    if rec:
        lines += [
            "",
            f"**Reconstruction** ({rec['clips']} clips x {rec['frames']} frames; "
            f"region PSNR on {rec['regions']})",
            "",
            "| model | PSNR (dB) | SSIM | mouth PSNR | eyes PSNR | audio LSD (dB) |",
            "|---|---|---|---|---|---|",
        ]
        for m, r in rec["models"].items():
            lines.append(
                f"| {ev.MODEL_TITLES[m]} | {_f(r.get('psnr'), 2)} | "
                f"{_f(r.get('ssim'))} | {_f(r.get('psnr_mouth'), 2)} | "
                f"{_f(r.get('psnr_eyes'), 2)} | {_f(r.get('lsd'), 2)} |"
            )
    den = results.get("denoising")
    if den:
        key = f"{den['sigma']:g}"
        lines += [
            "",
            f"**Denoising** (sigma = {den['sigma']:g} in [0, 1] units on frames "
            f"{den['frames']}, audio intact; {den['n_sequences']} sequences; metrics on "
            f"the corrupted pixels; regions from {den['regions']})",
            "",
            "| model | mouth PSNR | mouth SSIM | eyes PSNR | eyes SSIM |",
            "|---|---|---|---|---|",
        ]
        mouth, eyes = (
            den["metric"].get("mouth", {}).get(key, {}),
            den["metric"].get("eyes", {}).get(key, {}),
        )
        for m in mouth:
            lines.append(
                f"| {ev.MODEL_TITLES[m]} | {_f(mouth[m]['psnr'], 2)} | "
                f"{_f(mouth[m]['ssim'])} | {_f(eyes.get(m, {}).get('psnr'), 2)} | "
                f"{_f(eyes.get(m, {}).get('ssim'))} |"
            )
    emo = results.get("emotion")
    if emo and "models" in emo:
        names = list(emo["models"])
        lines += [
            "",
            f"**Emotion recognition from w** (logistic regression; test accuracy "
            f"on {emo['test_clips']} clips of unseen speakers, mean ± std over "
            f"{emo['draws']} draws; majority class {emo['chance']:.3f})",
            "",
            "| labelled share | clips | " + " | ".join(ev.MODEL_TITLES[m] for m in names) + " |",
            "|---|---|" + "---|" * len(names),
        ]
        for i, frac in enumerate(emo["fractions"]):
            cells = []
            for m in names:
                p = emo["models"][m]["curve"][i]
                cells.append(f"{_f(p['mean'])} ± {_f(p['std'])}")
            n_clips = emo["models"][names[0]]["curve"][i]["n_clips"]
            lines.append(f"| {frac:g} | {n_clips} | " + " | ".join(cells) + " |")
        shipped = {
            m: r["bundle_head_accuracy"]
            for m, r in emo["models"].items()
            if "bundle_head_accuracy" in r
        }
        if shipped:
            lines += [
                "",
                "The bundle's own emotion heads on the same clips: "
                + ", ".join(f"{ev.MODEL_TITLES[m]} {v:.3f}" for m, v in shipped.items())
                + ".",
            ]
    dis = results.get("disentanglement")
    if dis:
        lines += _judge_table(dis) + _swap_table(dis) + _generation_table(dis)
    rows = results.get("targets")
    if rows:
        lines += [
            "",
            "**Targets**",
            "",
            "| target | required | measured | status |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r['name']} | {r['target']} | {r['measured']} | {r['status']} |" for r in rows
        ]
    return "\n".join(lines) + "\n"


def _score_text(score: dict) -> str:
    if score.get("n", 0) == 0:
        return "no labels"
    if score.get("rmse") is not None:
        units = score["units"]
        within = "/".join(_f(x, 2) for x in score["within"])
        tol = "/".join(f"{t:g}" for t in score["tolerance"])
        rmse = ", ".join(f"{_f(r, 2)} {u}" for r, u in zip(score["rmse"], units))
        return f"within ±{tol} {'/'.join(units)}: {within} (RMSE {rmse})"
    return f"acc {_f(score.get('accuracy'))}, balanced {_f(score.get('balanced_accuracy'))}"


def _judge_table(dis: dict) -> list[str]:
    info = dis["judges"]
    lines = [
        "",
        f"**Judges** (trained on {info['train_clips']} clean clips of the evaluated "
        f"split{' and their VQ-VAE reconstructions' if info['augment'] == 'codec' else ''}"
        f", validated on {info['held_out_clips']} held-out clips of the same "
        f"{info['speakers']} speakers)",
        "",
        "| judge | reads | clean held-out | on VQ-VAE reconstructions | chance | trusted |",
        "|---|---|---|---|---|---|",
    ]
    for m, rep in info["reports"].items():
        for head, score in rep["clean"].items():
            codec = rep["codec"].get(head)
            trusted = "yes" if score["trusted"] else f"**NO** ({score['criterion']})"
            lines.append(
                f"| {m} | {head} | {_score_text(score)} | "
                f"{_score_text(codec) if codec else '-'} | "
                f"{_f(score.get('chance'))} | {trusted} |"
            )
    return lines


def _swap_table(dis: dict) -> list[str]:
    shares, trusted = dis["swaps"]["shares"], dis["trusted"]
    swaps = list(shares)
    lines = [
        "",
        f"**Latent swaps** ({dis['swaps']['pairs']} pairs of clips; each cell: share "
        "following the source B / share staying with the target A, among frames or "
        "clips where A and B differ; the expected one in bold; "
        "`none` is A's own reconstruction)",
        "",
        "| factor | should follow | " + " | ".join(swaps) + " |",
        "|---|---|" + "---|" * len(swaps),
    ]
    for f in ev.FACTORS:
        cells = []
        for sw in swaps:
            c = shares[sw][f.name]
            fo, st = _f(c["follow"], 2), _f(c["stay"], 2)
            cells.append(f"**{fo}** / {st}" if c["expected"] == "follow" else f"{fo} / **{st}**")
        mark = "" if trusted[f.name] else " (untrusted judge)"
        lines.append(f"| {f.title}{mark} | {f.latent} | " + " | ".join(cells) + " |")
    return lines


def _generation_table(dis: dict) -> list[str]:
    g = dis["generation"]
    lines = [
        "",
        f"**Generation from the priors** ({g['clips']} clips; mouth shape seen = "
        "heard, share of frames; speaker / emotion read as the clip's own, share of clips)",
        "",
        "| source | mouth sync | speaker (video) | speaker (audio) | emotion (video) "
        "| emotion (audio) |",
        "|---|---|---|---|---|---|",
    ]
    names = {
        "clean": "clean clips",
        "reconstruction": "MDVAE reconstruction",
        "given_w": "z from the priors, w of the clip",
        "prior": "all from the priors",
        "chance": "unrelated streams (chance)",
    }
    for key, title in names.items():
        st = g["stays_with_w"].get(key, {})
        lines.append(
            f"| {title} | {_f(g['sync'].get(key))} | "
            + " | ".join(
                _f(st.get(k))
                for k in ("speaker_video", "speaker_audio", "emotion_video", "emotion_audio")
            )
            + " |"
        )
    return lines


# ---------------------------------------------------------------------------------------
# Figures


def figures(
    results: dict, out_dir: Path, denoise: ev.DenoisingResult | None, swap_example: dict | None
) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    emo = results.get("emotion", {})
    if emo.get("models"):
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for m, r in emo["models"].items():
            x = [p["fraction"] * 100 for p in r["curve"]]
            mean = np.array([p["mean"] for p in r["curve"]])
            std = np.array([p["std"] for p in r["curve"]])
            ax.plot(x, mean, marker="o", label=ev.MODEL_TITLES[m])
            ax.fill_between(x, mean - std, mean + std, alpha=0.2)
        ax.axhline(emo["chance"], color="grey", ls=":", label="majority class")
        ax.set(
            xscale="log",
            xlabel="labelled training clips (%)",
            ylabel="test accuracy",
            title="Emotion recognition from w",
            ylim=(0, 1.02),
        )
        ax.legend()
        written.append(_save(fig, out_dir / "emotion_accuracy.png"))
    den = results.get("denoising", {})
    if den.get("metric"):
        regions = list(den["metric"])
        fig, axes = plt.subplots(2, len(regions), figsize=(5 * len(regions), 7), squeeze=False)
        for j, region in enumerate(regions):
            by_sigma = den["metric"][region]
            sig = sorted(by_sigma, key=float)
            for i, metric in enumerate(("psnr", "ssim")):
                ax = axes[i, j]
                for m in by_sigma[sig[-1]]:
                    xs = [float(s_) for s_ in sig if m in by_sigma[s_]]
                    ys = [by_sigma[s_][m][metric] for s_ in sig if m in by_sigma[s_]]
                    ax.plot(xs, ys, marker="o", label=ev.MODEL_TITLES[m])
                ax.set(
                    xlabel="noise std (sigma)",
                    ylabel=metric.upper(),
                    title=f"{region}: {metric.upper()} on the corrupted region",
                )
                ax.legend(fontsize=8)
        written.append(_save(fig, out_dir / "denoising_sigma.png"))
    if denoise is not None and denoise.examples:
        written.append(
            _denoise_examples(
                plt, denoise, den.get("sigma", 0.2), out_dir / "denoising_examples.png"
            )
        )
    dis = results.get("disentanglement")
    if dis:
        shares = dis["swaps"]["shares"]
        swaps = list(shares)
        grid = np.array(
            [[shares[sw][f.name]["follow"] for sw in swaps] for f in ev.FACTORS], dtype=float
        )
        fig, ax = plt.subplots(figsize=(1.2 * len(swaps) + 3, 0.45 * len(ev.FACTORS) + 1.5))
        ax.imshow(np.nan_to_num(grid, nan=0.0), vmin=0, vmax=1, cmap="viridis")
        for i, f in enumerate(ev.FACTORS):
            for j, sw in enumerate(swaps):
                c = shares[sw][f.name]
                text = _f(c["follow"], 2) + ("*" if c["expected"] == "follow" else "")
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="black" if grid[i, j] > 0.6 else "white",
                )
        ax.set_xticks(range(len(swaps)), swaps)
        ax.set_yticks(range(len(ev.FACTORS)), [f.title for f in ev.FACTORS])
        ax.set_title("share following the source B (* expected)")
        written.append(_save(fig, out_dir / "swap_follow.png"))
    if swap_example:
        written.append(_swap_examples(plt, swap_example, out_dir / "swap_examples.png"))
    return written


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name


def _denoise_examples(plt, denoise: ev.DenoisingResult, sigma: float, path: Path) -> str:
    regions = list(denoise.examples)
    key = f"{sigma:g}"
    """The corrupted frames of the first sequence: clean, noisy, and each model's output."""
    rows = ["clean", "noisy", "vqvae", "dsae_visual", "mdvae"]
    fig, axes = plt.subplots(
        len(rows), len(regions), figsize=(5 * len(regions), 5.5), squeeze=False
    )
    for j, region in enumerate(regions):
        ex = denoise.examples[region][key]
        for i, name in enumerate(rows):
            ax = axes[i, j]
            ax.axis("off")
            if name in ex:
                ax.imshow(np.concatenate(list(ex[name]), axis=1))  # the 6 corrupted frames
                ax.set_title(f"{region}: {ev.MODEL_TITLES.get(name, name)}", fontsize=8)
    return _save(fig, path)


def _swap_examples(plt, example: dict, path: Path) -> str:
    """Rows of frames: A, B, then A rebuilt with each swap (frames read by the judges)."""
    names = ["A", "B"] + [k for k in example if k not in ("A", "B")]
    n_frames = len(example["A"])
    ts = np.linspace(0, n_frames - 1, min(8, n_frames)).round().astype(int)
    fig, axes = plt.subplots(len(names), 1, figsize=(8, 1.1 * len(names)), squeeze=False)
    for i, name in enumerate(names):
        ax = axes[i, 0]
        ax.imshow(np.concatenate([example[name][t] for t in ts], axis=1))
        ax.axis("off")
        title = {"A": "A (target)", "B": "B (source)", "none": "A reconstructed"}.get(
            name, f"A with {name} of B"
        )
        ax.set_title(title, fontsize=8)
    return _save(fig, path)


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
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    common.seed_everything(s.seed)
    store = Store(args.data)
    bundle = load_bundle(args.bundle, device=device)
    models = ev.Models.from_bundle(bundle)
    clips = store.split_clips(s.split)
    if not clips:
        raise MDVAEError(f"{args.data} has no clips in split {s.split!r}")
    results: dict[str, Any] = {
        "config": {
            "bundle": str(args.bundle),
            "data": str(args.data),
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
    results["denoising"], denoise = timed(
        "denoising", lambda: run_denoising(store, models, s, rng(20))
    )
    reader = timed("features", lambda: FeatureReader(store, models, fill_cache=not args.quick))
    results["emotion"] = timed("emotion", lambda: run_emotion(store, models, reader, s, rng(30)))
    swap_example = None
    if J.has_ground_truth(store.factors):
        results["disentanglement"], swap_example = timed(
            "disentanglement",
            lambda: run_disentanglement(store, models, reader, clips, s, rng(40), out_dir),
        )
    else:
        results["disentanglement_skipped"] = "the store has no ground-truth factors"
    results["targets"] = targets(results)
    results["summary"] = summary(results)
    results["markdown"] = markdown(results)
    if not args.no_figures:
        results["figures"] = timed(
            "figures", lambda: figures(results, out_dir, denoise, swap_example)
        )
    results = _clean(results)
    common.atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2) + "\n")
    common.atomic_write_text(out_dir / "results.md", results["markdown"])
    print(results["markdown"])
    return results


if __name__ == "__main__":
    main()
