"""Judges: small networks trained on the synthetic benchmark's ground truth that read the
generating factors back out of a clip, so that latent swaps can be scored by number.

A judge is an instrument, not part of the model. It is trained on clean clips of the
store's training speakers (and, when the caller adds them, the same clips passed through
the stage-1 VQ-VAEs, so that codec artefacts do not throw it), never on the speakers it
scores, validated on held-out clips of its training speakers, and trusted only when it
reads the evaluated speakers' clean clips well (`HeadScore.trusted`).

    visual judge, one frame at a time: the whole frame at half resolution plus the eyes'
    and the mouth's regions at full resolution, each through a small CNN
        mouth      6 mouth-shape classes (MOUTH_CLASSES)   per frame
        blink      closed (blink > 0.5) or open            per frame
        head_pose  dx, dy (pixels), roll (degrees)          per frame, regression
        speaker    its training speakers                    per frame, pooled over the clip
        emotion    8 classes                                per frame, pooled over the clip
    audio judge, on spectrogram sequences (B, T, 513): per frame the log-power, a window
    of the cepstrum and a pitch salience (subharmonic summation on a grid of f0 values),
    then dilated temporal convolutions (+-15 frames of context)
        mouth      the mouth shape of the phone heard      per frame
        voicing    voiced or not                           per frame
        f0         semitones re 100 Hz, a class per quarter semitone, on voiced frames
        speaker, emotion                                   per frame, pooled over the clip

Clip-level readings average the frames' log-probabilities. A speaker head cannot name a
speaker it was not trained on, so on unseen speakers it serves as an embedding: the clip's
mean log-probabilities over the training speakers, centred and normalised
(`identity_embedding`); two clips are compared by the cosine of their embeddings, and a
clip is verified as speaker A rather than B when it is closer to A's clip
(`score_verification`, the "speaker_verification" score). The head pose is also scored
about each clip's mean pose (the "head_motion" score, `motion`): an unseen face's rest
position is set by its shape, which a judge misreads by a fraction of a pixel, while its
motion is what a swapped z_v carries. Weights and the report are
saved as one safetensors file whose metadata holds the config, the report and a cache
key, so a rerun with the same data and settings loads instead of training.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from tqdm import tqdm

from mdvae.config import ConfigBase
from mdvae.data.synthetic_script import VISEMES
from mdvae.errors import ConfigError, MDVAEError
from mdvae.eval.stats import bootstrap_se, ratio_se
from mdvae.labels import EMOTION_INDEX, EMOTIONS

MODALITIES = ("visual", "audio")
# Store factors a judge needs: without them there is no ground truth to train on.
REQUIRED_FACTORS = ("viseme", "blink", "head_pose", "f0", "voicing")
BLINK_CLOSED = 0.5  # eyelid closure above which a frame counts as "eyes closed"
POWER_FLOOR = 1e-8  # added to power before the log, as silence is exactly 0

# The nine synthetic visemes, merged where two differ by less than the emotions move the
# lips (pressed vs relaxed closed lips; the three teeth-showing shapes): on held-out clips
# a judge confuses those pairs on a third of their frames, and the six classes apart.
MOUTH_CLASSES: dict[str, tuple[str, ...]] = {
    "lips together": ("rest", "closed"),
    "open": ("open",),
    "mid": ("mid",),
    "teeth": ("spread", "teeth", "labiodental"),
    "round": ("round",),
    "pucker": ("pucker",),
}
MOUTH_OF_VISEME = np.array(
    [next(i for i, v in enumerate(MOUTH_CLASSES.values()) if name in v) for name in VISEMES]
)

# f0 is read in semitones re 100 Hz on a grid of quarter semitones, 56 to 505 Hz.
F0_REFERENCE_HZ = 100.0
PITCH_GRID = np.arange(-10.0, 28.0 + 1e-9, 0.25)
SALIENCE_HARMONICS = 10  # harmonics summed per candidate f0, weighted 0.84 ** (k - 1)
# Quefrencies (samples at 16 kHz) of the real cepstrum the audio judge reads: a voiced
# frame peaks at 16000 / f0, so this window covers f0 from 50 to 500 Hz.
CEPSTRUM = slice(32, 320)
AUDIO_DILATIONS = (1, 2, 4, 8)  # width-3 temporal convolutions: +-15 frames of context

# Smallest difference between two clips' values that counts as a difference when a swap
# is scored (mdvae.eval.experiments): head pose dx, dy in pixels and roll in degrees (a clip's
# pose spreads 1.7 px, 1.1 px, 3.2 deg; roll is the hardest to read in 64 x 64 pixels:
# a judge's RMSE is about 1.2 deg), f0 in semitones.
MARGINS = {"head_pose": (1.0, 1.0, 4.0), "f0": (1.5,)}
# The head's motion: its pose minus the clip's mean pose, scored with the pose's margins.
# A judge cannot tell where an unseen face sits at rest to a fraction of a pixel (its face
# shape sets that), but it can follow the face's motion; the synthetic clips' mean pose is
# small beside their motion (spread between clips 0.37 px, 0.18 px, 0.75 deg, against
# 1.7 px, 1.1 px, 3.0 deg within a clip, on the validation speakers).
MARGINS["head_motion"] = MARGINS["head_pose"]
# Trust thresholds, on clean held-out clips. Classes: balanced accuracy (mean recall over
# the classes present, so "eyes open" on 90% of frames cannot pass on its own). Values:
# the share read within half the margin of the truth, for each value, so that a trusted
# judge resolves the differences the swap scores count.
MIN_BALANCED_ACCURACY = 0.85
# Intensity from which an emotion is "clear": level 1 is barely visible or audible, and
# judges confuse it with neutral (about 0.6 of level-1 clips read right by the video
# judge, against all of levels 2 and 3), so swap scores count emotions from level 2.
CLEAR_LEVEL = 2
MIN_WITHIN = 0.85
TOLERANCES = {name: tuple(m / 2 for m in margin) for name, margin in MARGINS.items()}


@dataclass(frozen=True)
class Head:
    name: str
    kind: str  # "frame" class, "clip" class (pooled), "regression", "pitch" (grid class)
    size: int  # classes, or regressed values per frame
    units: tuple[str, ...] = ()  # regression and pitch: unit of each value, for reports


def heads_for(modality: str, n_speakers: int) -> tuple[Head, ...]:
    mouth = (Head("mouth", "frame", len(MOUTH_CLASSES)),)
    clip = (Head("speaker", "clip", n_speakers), Head("emotion", "clip", len(EMOTIONS)))
    if modality == "visual":
        return (
            mouth
            + (Head("blink", "frame", 2), Head("head_pose", "regression", 3, ("px", "px", "deg")))
            + clip
        )
    return (
        mouth + (Head("voicing", "frame", 2), Head("f0", "pitch", len(PITCH_GRID), ("st",))) + clip
    )


@dataclass
class JudgeConfig(ConfigBase):
    modality: str = "visual"  # "visual" reads frames, "audio" reads power spectrograms
    speakers: tuple[str, ...] = ()  # class names of the speaker head, in logit order
    width: int = 16  # visual: channels of each CNN's first conv; audio: hidden width / 8

    def __post_init__(self):
        if self.modality not in MODALITIES:
            raise ConfigError(f"judge modality {self.modality!r} is not one of {MODALITIES}")
        if self.width < 1:
            raise ConfigError(f"judge width must be >= 1, got {self.width}")

    @property
    def heads(self) -> tuple[Head, ...]:
        return heads_for(self.modality, max(1, len(self.speakers)))


# Where the visual judge looks, (y0, y1, x0, x1) in the 64x64 frame: generous boxes around
# the synthetic faces' eyes (brows included) and mouth over the whole range of head motion.
EYES_CROP = (10, 40, 8, 56)
MOUTH_CROP = (28, 60, 8, 56)


def _cnn(width: int) -> nn.Sequential:
    """Three stride-2 conv blocks (3 -> w -> 2w -> 2w channels), flattened."""
    layers: list[nn.Module] = []
    for c_in, c_out in ((3, width), (width, 2 * width), (2 * width, 2 * width)):
        layers += [nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
    return nn.Sequential(*layers, nn.Flatten())


def _cnn_out(width: int, height: int, wide: int) -> int:
    for _ in range(3):
        height, wide = (height + 1) // 2, (wide + 1) // 2
    return 2 * width * height * wide


def _crop(img: Tensor, box: tuple[int, int, int, int]) -> Tensor:
    y0, y1, x0, x1 = box
    return img[..., y0:y1, x0:x1]


def salience_matrix() -> Tensor:
    """(513, len(PITCH_GRID)): compressed power @ this = subharmonic summation, the weighted
    sum of the spectrum at the first harmonics of each candidate f0 (linear interpolation
    between bins)."""
    bins = np.arange(513)
    f0 = F0_REFERENCE_HZ * 2.0 ** (PITCH_GRID / 12.0)
    m = np.zeros((513, len(PITCH_GRID)))
    for k in range(1, SALIENCE_HARMONICS + 1):
        pos = k * f0 / (16000 / 1024)  # fractional bin of harmonic k
        weight = 0.84 ** (k - 1) * (pos < 512)
        m += weight * np.maximum(0.0, 1.0 - np.abs(bins[:, None] - pos[None]))
    return torch.from_numpy(m).float()


class Judge(nn.Module):
    """One network, several heads; see the module docstring for what each head reads."""

    def __init__(self, config: JudgeConfig):
        super().__init__()
        self.config = config
        w = config.width
        if config.modality == "visual":
            self.cnn_frame = _cnn(w)  # the whole frame at 32 x 32
            self.cnn_eyes = _cnn(w)
            self.cnn_mouth = _cnn(w)
            n_in = (
                _cnn_out(w, 32, 32)
                + _cnn_out(w, EYES_CROP[1] - EYES_CROP[0], EYES_CROP[3] - EYES_CROP[2])
                + _cnn_out(w, MOUTH_CROP[1] - MOUTH_CROP[0], MOUTH_CROP[3] - MOUTH_CROP[2])
            )
            hidden = 128
            self.mix = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Dropout(0.2))
        else:
            hidden = 8 * w
            n_in = 513 + (CEPSTRUM.stop - CEPSTRUM.start) + len(PITCH_GRID)
            self.register_buffer("salience", salience_matrix(), persistent=False)
            self.frame_net = nn.Sequential(
                nn.Linear(n_in, 2 * hidden),
                nn.ReLU(),
                nn.Dropout(0.2),
                nn.Linear(2 * hidden, hidden),
                nn.ReLU(),
            )
            self.context = nn.ModuleList(
                nn.Conv1d(hidden, hidden, 3, padding=d, dilation=d) for d in AUDIO_DILATIONS
            )
            # statistics of the training inputs, per coefficient
            self.register_buffer("input_mean", torch.zeros(n_in))
            self.register_buffer("input_std", torch.ones(n_in))
        self.heads = nn.ModuleDict({h.name: nn.Linear(hidden, h.size) for h in config.heads})
        for h in config.heads:
            if h.kind == "regression":  # targets are standardised with these
                self.register_buffer(f"{h.name}_mean", torch.zeros(h.size))
                self.register_buffer(f"{h.name}_std", torch.ones(h.size))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def audio_inputs(self, power: Tensor) -> Tensor:
        """Power (B, T, 513) -> log-power, cepstrum window, normalised pitch salience."""
        power = power.float().clamp(min=0)
        log_power = torch.log(power + POWER_FLOOR)
        cepstrum = torch.fft.irfft(log_power, n=1024)[..., CEPSTRUM]
        salience = power.pow(0.3) @ self.salience  # (B, T, n_pitch)
        salience = salience / (salience.amax(-1, keepdim=True) + 1e-6)
        return torch.cat([log_power, cepstrum, salience], -1)

    def features(self, x: Tensor) -> Tensor:
        """visual: uint8 frames (B, T, 64, 64, 3); audio: power (B, T, 513) -> (B, T, H)."""
        if self.config.modality == "visual":
            batch, n_frames = x.shape[:2]
            img = x.reshape(-1, *x.shape[2:]).permute(0, 3, 1, 2).float() / 255.0  # (BT,3,H,W)
            parts = [
                self.cnn_frame(F.avg_pool2d(img, 2)),
                self.cnn_eyes(_crop(img, EYES_CROP)),
                self.cnn_mouth(_crop(img, MOUTH_CROP)),
            ]
            return self.mix(torch.cat(parts, -1)).reshape(batch, n_frames, -1)
        h = (self.audio_inputs(x) - self.input_mean) / self.input_std
        h = self.frame_net(h).transpose(1, 2)  # (B, H, T)
        for conv in self.context:
            h = h + F.relu(conv(h))
        return h.transpose(1, 2)  # (B, T, H)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Per-frame head outputs: logits (B, T, C) or standardised values (B, T, D)."""
        h = self.features(x)
        return {name: head(h) for name, head in self.heads.items()}

    @torch.no_grad()
    def read(self, x: np.ndarray | Tensor, *, chunk: int = 16) -> dict[str, np.ndarray]:
        """What the judge reads from clips x (B, T, ...): per head a class per frame (B, T),
        a class per clip (B,) (with "<name>_logp" (B, C), the mean log-probability over the
        frames), or values per frame in natural units (B, T, D)."""
        was_training = self.training
        self.eval()
        x = x if torch.is_tensor(x) else torch.from_numpy(np.ascontiguousarray(x))
        grid = torch.as_tensor(PITCH_GRID, dtype=torch.float32)
        outs: dict[str, list[np.ndarray]] = {}
        for part in x.split(chunk):
            raw = self.forward(part.to(self.device))
            for h in self.config.heads:
                value = raw[h.name]
                if h.kind == "regression":
                    value = value * getattr(self, f"{h.name}_std") + getattr(self, f"{h.name}_mean")
                    outs.setdefault(h.name, []).append(value.cpu().numpy())
                elif h.kind == "pitch":
                    outs.setdefault(h.name, []).append(
                        grid[value.argmax(-1).cpu()][..., None].numpy()
                    )
                elif h.kind == "frame":
                    outs.setdefault(h.name, []).append(value.argmax(-1).cpu().numpy())
                else:
                    logp = F.log_softmax(value, -1).mean(1)  # (B, C)
                    outs.setdefault(h.name, []).append(logp.argmax(-1).cpu().numpy())
                    outs.setdefault(f"{h.name}_logp", []).append(logp.cpu().numpy())
        self.train(was_training)
        return {k: np.concatenate(v) for k, v in outs.items()}


# ---------------------------------------------------------------------------------------
# Ground truth


def motion(pose: np.ndarray) -> np.ndarray:
    """Head pose (..., T, D) -> the same minus each clip's mean over its frames."""
    pose = np.asarray(pose, np.float64)
    return pose - pose.mean(-2, keepdims=True)


def has_ground_truth(factors: dict[str, Any]) -> bool:
    return all(name in factors for name in REQUIRED_FACTORS)


def f0_semitones(f0_hz: np.ndarray) -> np.ndarray:
    """f0 in Hz (0 when unvoiced) -> semitones re F0_REFERENCE_HZ, NaN when unvoiced."""
    f0_hz = np.asarray(f0_hz, np.float64)
    out = np.full(f0_hz.shape, np.nan)
    voiced = f0_hz > 0
    out[voiced] = 12.0 * np.log2(f0_hz[voiced] / F0_REFERENCE_HZ)
    return out


def clip_labels(
    factors: dict[str, np.ndarray],
    speaker: int,
    emotion: str | None,
    level: int | None = None,
    identity: int | None = None,
) -> dict:
    """Judge targets of one clip from its store factors (T, ...) and labels.

    speaker: index into the judges' speaker list (-1 if not in it); emotion: a name or
    None; level: its intensity; identity: who speaks, as a number shared by the clips of
    one speaker (default `speaker`), for speaker verification. Returns per frame: mouth
    (class of MOUTH_CLASSES), blink (0 open / 1 closed), head_pose (T, 3), voicing, f0
    (semitones, NaN unvoiced); per clip: speaker, identity, emotion (index, -1 when
    unknown) and emotion_clear, the emotion of clips at intensity CLEAR_LEVEL or more (-1
    otherwise).
    """
    emotion_index = EMOTION_INDEX[emotion] if emotion else -1
    clear = level is not None and level >= CLEAR_LEVEL
    return {
        "mouth": MOUTH_OF_VISEME[np.asarray(factors["viseme"], np.int64)],
        "blink": (np.asarray(factors["blink"]) > BLINK_CLOSED).astype(np.int64),
        "head_pose": np.asarray(factors["head_pose"], np.float32),
        "voicing": np.asarray(factors["voicing"], np.int64),
        "f0": f0_semitones(factors["f0"]).astype(np.float32),
        "speaker": int(speaker),
        "identity": int(speaker if identity is None else identity),
        "emotion": emotion_index,
        "emotion_clear": emotion_index if clear else -1,
    }


@dataclass
class JudgeData:
    """Clips to train or validate judges on: equal-length arrays stacked (N, T, ...)."""

    frames: np.ndarray  # (N, T, 64, 64, 3) uint8
    power: np.ndarray  # (N, T, 513) float32
    labels: list[dict]  # clip_labels of each clip

    def __len__(self) -> int:
        return len(self.labels)

    def stacked(self, name: str) -> np.ndarray:
        return np.stack([lab[name] for lab in self.labels])

    def subset(self, mask: np.ndarray) -> JudgeData:
        return JudgeData(
            self.frames[mask], self.power[mask], [lab for lab, m in zip(self.labels, mask) if m]
        )

    def with_media(self, frames: np.ndarray, power: np.ndarray) -> JudgeData:
        """The same labels on other media (the clips' VQ-VAE reconstructions, say)."""
        return JudgeData(frames, power, self.labels)

    def concat(self, other: JudgeData) -> JudgeData:
        return JudgeData(
            np.concatenate([self.frames, other.frames]),
            np.concatenate([self.power, other.power]),
            self.labels + other.labels,
        )


# ---------------------------------------------------------------------------------------
# Training


@dataclass
class TrainSettings:
    steps: int = 6000  # optimiser steps per judge (train.evaluate's default too)
    batch: int = 64  # visual: frames per step; audio: windows per step are a quarter of it
    window: int = 48  # audio: frames per training window
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0


def _targets(data: JudgeData, name: str) -> np.ndarray:
    """Per-frame targets (N, T, ...) of a head; clip labels repeated over frames."""
    values = data.stacked(name)
    if values.ndim == 1:
        values = np.repeat(values[:, None], data.frames.shape[1], axis=1)
    if name == "f0":  # the nearest pitch class, -1 when unvoiced
        index = np.abs(values[..., None] - PITCH_GRID).argmin(-1)
        values = np.where(np.isfinite(values), index, -1)
    return values


def _loss(judge: Judge, out: dict[str, Tensor], targets: dict[str, Tensor]) -> Tensor:
    total = out[judge.config.heads[0].name].new_zeros(())
    for h in judge.config.heads:
        y, pred = targets[h.name], out[h.name]
        if h.kind == "regression":
            y = (y.reshape(*pred.shape) - getattr(judge, f"{h.name}_mean")) / getattr(
                judge, f"{h.name}_std"
            )
            ok = torch.isfinite(y)
            if ok.any():
                total = total + F.smooth_l1_loss(pred[ok], y[ok])
        else:
            ok = y >= 0
            if ok.any():
                total = total + F.cross_entropy(pred[ok], y[ok])
    return total


def train_judge(
    config: JudgeConfig,
    data: JudgeData,
    settings: TrainSettings | None = None,
    *,
    show: bool = True,
) -> Judge:
    """Fit a judge to the ground truth of `data` (all clips the same length)."""
    s = settings or TrainSettings()
    if len(data) == 0:
        raise MDVAEError("no clips to train a judge on")
    gen = torch.Generator().manual_seed(s.seed)
    torch.manual_seed(s.seed)
    judge = Judge(config)
    targets = {h.name: torch.from_numpy(_targets(data, h.name)) for h in config.heads}
    for h in config.heads:
        if h.kind == "regression":
            y = targets[h.name].reshape(-1, h.size).double()
            ok = torch.isfinite(y).all(-1)
            if ok.sum() > 1:
                getattr(judge, f"{h.name}_mean").copy_(y[ok].mean(0))
                getattr(judge, f"{h.name}_std").copy_(y[ok].std(0) + 1e-3)
    n_clips, n_frames = data.frames.shape[:2]
    if config.modality == "audio":
        with torch.no_grad():
            inputs = torch.cat([judge.audio_inputs(torch.from_numpy(p)) for p in data.power])
        judge.input_mean.copy_(inputs.mean(0))
        judge.input_std.copy_(inputs.std(0) + 1e-3)
    media = data.frames if config.modality == "visual" else data.power
    opt = torch.optim.AdamW(judge.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, s.lr, total_steps=max(1, s.steps))
    window = min(s.window, n_frames)
    judge.train()
    for _ in tqdm(range(s.steps), desc=f"judge ({config.modality})", disable=not show, leave=False):
        if config.modality == "visual":
            # single frames, as (B, 1, ...) clips of one frame
            clip = torch.randint(n_clips, (s.batch,), generator=gen).numpy()
            t = torch.randint(n_frames, (s.batch,), generator=gen).numpy()
            x = torch.from_numpy(media[clip, t][:, None])
            y = {k: v[clip, t][:, None] for k, v in targets.items()}
        else:
            clip = torch.randint(n_clips, (max(1, s.batch // 4),), generator=gen).numpy()
            t0 = torch.randint(n_frames - window + 1, (len(clip),), generator=gen).numpy()
            rows = t0[:, None] + np.arange(window)[None]  # (B, W)
            x = torch.from_numpy(media[clip[:, None], rows])
            y = {k: v[clip[:, None], rows] for k, v in targets.items()}
        loss = _loss(judge, judge(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return judge.eval()


# ---------------------------------------------------------------------------------------
# Validation

# What the score tables call each set of clips a judge is checked on.
CHECKS = {
    "held_out": "held-out clips of its training speakers",
    "clean": "the evaluated speakers' clean clips",
    "codec": "their VQ-VAE reconstructions",
    "model": "their MDVAE reconstructions",
    "dsae": "their DSAE reconstructions (V-DSAE faces, A-DSAE voices)",
}
TRUST_ON = "clean"  # the check that decides trust: the speakers the scores are measured on


@dataclass
class HeadScore:
    head: str
    kind: str  # "frame", "clip", "regression", "pitch", "verification"
    n: int  # frames (frame heads, values), clips (clip heads) or probes (verification)
    accuracy: float | None = None  # classes: share of correct readings
    balanced_accuracy: float | None = None  # classes: mean recall over the classes present
    chance: float | None = None  # classes: share of the most frequent class
    rmse: list[float] | None = None  # values: per value, natural units
    within: list[float] | None = None  # values: share read within `tolerance` of the truth
    tolerance: list[float] | None = None
    units: list[str] | None = None
    trusted: bool = False
    criterion: str = ""
    # standard errors, clips as the unit (`mdvae.eval.stats`)
    accuracy_se: float | None = None
    balanced_accuracy_se: float | None = None
    within_se: list[float] | None = None
    # what a reading that ignores the clip scores on `quality`: 1 / classes present for
    # balanced accuracy, 0.5 for verification, the truth's median read everywhere (mean
    # share within tolerance) for values
    blind: float | None = None

    @property
    def quality(self) -> float | None:
        """The one number trust and rendering are judged on."""
        if self.kind == "verification":
            return self.accuracy
        if self.within is not None:
            return float(np.mean(self.within))
        return self.balanced_accuracy


@dataclass
class JudgeReport:
    """How well a judge reads each set of clips it was checked on (CHECKS), per head."""

    modality: str
    scores: dict[str, dict[str, HeadScore]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "modality": self.modality,
            "trust_on": TRUST_ON,
            "scores": {
                check: {k: asdict(v) for k, v in heads.items()}
                for check, heads in self.scores.items()
            },
        }

    @classmethod
    def from_dict(cls, d: dict) -> JudgeReport:
        return cls(
            d["modality"],
            {
                check: {k: HeadScore(**v) for k, v in heads.items()}
                for check, heads in d["scores"].items()
            },
        )

    def trusted(self, name: str) -> bool:
        score = self.scores.get(TRUST_ON, {}).get(name)
        return bool(score and score.trusted)


def balanced_accuracy(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean over the classes present in `truth` of the share of their items read right."""
    pred, truth = np.asarray(pred).ravel(), np.asarray(truth).ravel()
    if not len(truth):
        return float("nan")
    n = int(max(pred.max(initial=0), truth.max())) + 1
    totals = np.bincount(truth, minlength=n)
    right = np.bincount(truth[pred == truth], minlength=n)
    present = totals > 0
    return float((right[present] / totals[present]).mean())


def identity_embedding(logp: np.ndarray) -> np.ndarray:
    """Speaker-head mean log-probabilities (B, C) -> unit vectors (B, C), centred first:
    the profile of resemblance to the training speakers that unseen speakers are compared
    by (cosine)."""
    e = np.asarray(logp, np.float64)
    e = e - e.mean(-1, keepdims=True)
    return e / (np.linalg.norm(e, axis=-1, keepdims=True) + 1e-12)


def closer_to_b(probe: np.ndarray, ref_a: np.ndarray, ref_b: np.ndarray) -> np.ndarray:
    """Per row, +1 when the probe's embedding is closer (cosine) to B's than to A's, -1
    when closer to A's, 0 on a tie; inputs are speaker-head log-probabilities (B, C)."""
    p, a, b = (identity_embedding(x) for x in (probe, ref_a, ref_b))
    return np.sign((p * b).sum(-1) - (p * a).sum(-1)).astype(int)


def verification_triplets(
    identity: Sequence[int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each clip that has one: another clip of the same speaker and a clip of another
    speaker, drawn at random. Returns (probe, same, other) index arrays."""
    identity = np.asarray(identity)
    probe, same, other = [], [], []
    for i, who in enumerate(identity):
        mates = np.flatnonzero((identity == who) & (np.arange(len(identity)) != i))
        strangers = np.flatnonzero(identity != who)
        if len(mates) and len(strangers):
            probe.append(i)
            same.append(rng.choice(mates))
            other.append(rng.choice(strangers))
    return np.array(probe, int), np.array(same, int), np.array(other, int)


def score_verification(
    logp: np.ndarray, reference_logp: np.ndarray, identity: Sequence[int], *, seed: int = 0
) -> HeadScore:
    """Speaker verification of clips (logp (N, C), read from the clips scored) against
    clean references (reference_logp (N, C), the same clips clean): for each clip, is it
    closer to another clip of its speaker than to a clip of another speaker? Works for
    speakers the judge never saw."""
    probe, same, other = verification_triplets(identity, np.random.default_rng(seed))
    name = "speaker_verification"
    criterion = f"verification accuracy >= {MIN_BALANCED_ACCURACY:g}"
    if not len(probe):
        return HeadScore(name, "verification", 0, criterion="needs two speakers, one with 2 clips")
    ref = np.asarray(reference_logp)
    right = closer_to_b(logp[probe], ref[other], ref[same]) > 0
    acc = float(right.mean())
    return HeadScore(
        name,
        "verification",
        int(len(probe)),
        accuracy=acc,
        chance=0.5,
        blind=0.5,
        accuracy_se=ratio_se(right.astype(float), np.ones(len(right))),
        trusted=acc >= MIN_BALANCED_ACCURACY,
        criterion=criterion,
    )


def media_of(judge: Judge, data: JudgeData) -> np.ndarray:
    return data.frames if judge.config.modality == "visual" else data.power


def score_judge(
    judge: Judge, data: JudgeData, *, reference_logp: np.ndarray | None = None
) -> dict[str, HeadScore]:
    """How well every head of `judge` reads `data`, with the trust decision, plus speaker
    verification against `reference_logp` (the speaker-head reading of the same clips
    clean; default: of `data` itself)."""
    return _score_read(judge, data, judge.read(media_of(judge, data)), reference_logp)


def _score_read(
    judge: Judge, data: JudgeData, read: dict[str, np.ndarray], reference_logp: np.ndarray | None
) -> dict[str, HeadScore]:
    scores = {}
    for h in judge.config.heads:
        truth, pred = data.stacked(h.name), read[h.name]
        if h.kind in ("regression", "pitch"):
            scores[h.name] = _score_values(h, pred, truth.reshape(*pred.shape))
            if h.name == "head_pose":  # about the clip's mean: what a swapped z_v carries
                scores["head_motion"] = _score_values(
                    replace(h, name="head_motion"), motion(pred), motion(truth.reshape(*pred.shape))
                )
        else:
            scores[h.name] = score_classes(h.name, h.kind, pred, truth)
    # the emotion head read on clear emotions only, as the swap scores count them
    scores["emotion_clear"] = score_classes(
        "emotion_clear", "clip", read["emotion"], data.stacked("emotion_clear")
    )
    ref = read["speaker_logp"] if reference_logp is None else reference_logp
    scores["speaker_verification"] = score_verification(
        read["speaker_logp"], ref, data.stacked("identity")
    )
    return scores


def _clip_of(truth: np.ndarray) -> np.ndarray:
    """The clip (row) each item of truth (N,) or (N, T, ...) belongs to, same shape."""
    rows = np.arange(truth.shape[0]).reshape(-1, *([1] * (truth.ndim - 1)))
    return np.broadcast_to(rows, truth.shape)


def score_classes(name: str, kind: str, pred: np.ndarray, truth: np.ndarray) -> HeadScore:
    """Class readings `pred` against `truth` (same shapes, (N,) or (N, T); negative truth:
    unknown, not scored), with the trust decision; SEs take the row (clip) as the unit."""
    ok = truth >= 0
    clip = _clip_of(truth)[ok]
    pred, truth = pred[ok], truth[ok]
    if not len(truth):
        return HeadScore(name, kind, 0, criterion="no labels")
    counts = np.bincount(truth)
    n_classes = int((counts > 0).sum())
    bal = balanced_accuracy(pred, truth)
    right = (pred == truth).astype(float)
    clips = np.unique(clip)
    members = [np.flatnonzero(clip == c) for c in clips]

    def resampled(pick: np.ndarray) -> float:
        idx = np.concatenate([members[i] for i in pick])
        return balanced_accuracy(pred[idx], truth[idx])

    return HeadScore(
        name,
        kind,
        int(len(truth)),
        accuracy=float(right.mean()),
        balanced_accuracy=bal,
        chance=float(counts.max() / counts.sum()),
        blind=1.0 / n_classes,
        accuracy_se=ratio_se([right[m].sum() for m in members], [len(m) for m in members]),
        balanced_accuracy_se=bootstrap_se(resampled, len(members)),
        trusted=n_classes >= 2 and bal >= MIN_BALANCED_ACCURACY,
        criterion=(
            f"balanced accuracy >= {MIN_BALANCED_ACCURACY:g}"
            if n_classes >= 2
            else "one class only: cannot be validated"
        ),
    )


def _score_values(h: Head, pred: np.ndarray, truth: np.ndarray) -> HeadScore:
    ok = np.isfinite(truth).all(-1)  # (N, T)
    clip = _clip_of(ok)[ok]
    err = np.abs(pred[ok] - truth[ok]).reshape(-1, len(h.units))
    tol = np.asarray(TOLERANCES[h.name])
    if not len(err):
        return HeadScore(h.name, h.kind, 0, tolerance=tol.tolist(), criterion="no labels")
    hit = err <= tol  # (n, D)
    within = hit.mean(0).tolist()
    clips = np.unique(clip)
    values = truth[ok].reshape(-1, len(h.units))
    blind = (np.abs(values - np.median(values, 0)) <= tol).mean(0)
    return HeadScore(
        h.name,
        h.kind,
        int(ok.sum()),
        rmse=np.sqrt((err**2).mean(0)).tolist(),
        within=within,
        tolerance=tol.tolist(),
        units=list(h.units),
        within_se=[
            ratio_se([hit[clip == c, d].sum() for c in clips], [(clip == c).sum() for c in clips])
            for d in range(hit.shape[1])
        ],
        blind=float(blind.mean()),
        trusted=all(x >= MIN_WITHIN for x in within),
        criterion=f"share within {'/'.join(f'{t:g}' for t in tol)} >= {MIN_WITHIN:g}",
    )


# ---------------------------------------------------------------------------------------
# Saving and loading


def save_judge(path: str | Path, judge: Judge, report: JudgeReport, key: str) -> Path:
    """Weights + config + report + cache key in one safetensors file (written atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tensors = {k: v.detach().cpu().contiguous() for k, v in judge.state_dict().items()}
    metadata = {
        "config": json.dumps(judge.config.to_dict()),
        "report": json.dumps(report.to_dict()),
        "key": key,
    }
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path


def load_judge(path: str | Path, key: str | None = None) -> tuple[Judge, JudgeReport] | None:
    """A judge saved by `save_judge`, or None when absent, unreadable or (given `key`)
    trained for other data or settings."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if key is not None and meta.get("key") != key:
                return None
            judge = Judge(JudgeConfig.from_dict(json.loads(meta["config"])))
            judge.load_state_dict({k: f.get_tensor(k) for k in f.keys()}, strict=True)
            report = JudgeReport.from_dict(json.loads(meta["report"]))
    except (OSError, KeyError, TypeError, ValueError, RuntimeError):
        return None
    return judge.eval(), report


def score_checks(
    judge: Judge,
    checks: dict[str, JudgeData],
    *,
    references: dict[str, str] | None = None,
) -> dict[str, dict[str, HeadScore]]:
    """`score_judge` on each set of clips in `checks` (in order), reading each once.
    references: check -> an earlier check holding the same clips clean, whose speaker-head
    readings are the verification references (the codec's or a model's reconstructions
    against the clean clips)."""
    references = references or {}
    logp: dict[str, np.ndarray] = {}
    out = {}
    for name, data in checks.items():
        read = judge.read(media_of(judge, data))
        logp[name] = read["speaker_logp"]
        ref = references.get(name)
        out[name] = _score_read(judge, data, read, None if ref is None else logp[ref])
    return out


def fit_or_load(
    path: str | Path,
    key: str,
    config: JudgeConfig,
    train: JudgeData,
    checks: dict[str, JudgeData],
    *,
    references: dict[str, str] | None = None,
    settings: TrainSettings | None = None,
    show: bool = True,
    log: Callable[[str], None] | None = None,
) -> tuple[Judge, JudgeReport]:
    """The cached judge at `path` when its key matches, else one trained on `train` and
    scored on `checks` (`score_checks`; TRUST_ON among them decides trust), saved."""
    cached = load_judge(path, key)
    if cached is not None:
        if log:
            log(f"judge ({config.modality}): loaded from {path}")
        return cached
    judge = train_judge(config, train, settings, show=show)
    report = JudgeReport(config.modality, score_checks(judge, checks, references=references))
    save_judge(path, judge, report, key)
    return judge, report


def split_held_out(
    speakers: Sequence[int], fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """Boolean mask over clips: `fraction` of each speaker's clips (at least one when the
    speaker has two or more) held out to validate the judges."""
    speakers = np.asarray(speakers)
    held = np.zeros(len(speakers), bool)
    for s in np.unique(speakers):
        idx = np.flatnonzero(speakers == s)
        if len(idx) < 2:
            continue
        k = min(len(idx) - 1, max(1, round(fraction * len(idx))))
        held[rng.choice(idx, size=k, replace=False)] = True
    return held
