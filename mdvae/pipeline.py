"""The demo's operations, headless: clips in, latents, edited clips and numbers out.

`Pipeline` owns a loaded bundle and does everything the app shows, with no UI code:

    pipe = Pipeline()                                 # $MDVAE_BUNDLE, else checkpoints/
    a = pipe.encode(pipe.load("a.mp4"))               # face crops + spectrogram -> latents
    b = pipe.encode(pipe.load("b.mp4", aligned=True)) # the whole frame already is the face
    out = pipe.swap(a, b, {"z_av"})                   # A with B's lips -> Decoded
    pipe.render(out)                                  # mp4 with Griffin-Lim sound
    pipe.interpolate(a, b, 0.5), pipe.denoise(a.clip, "mouth", 0.25), pipe.emotion(a)

Bad input (not a video, no sound, no face, too short, too big) raises MDVAEError
subclasses whose messages say what to do; clips longer than `max_seconds` are trimmed and
the `Encoded.notes` say so. Every request's options are arguments and every result is a
new object, so one pipeline serves concurrent requests: the models stay in eval mode under
no_grad, and the only shared state (the face cropper, Griffin-Lim's random generator) is
behind locks. Videos and images it writes go to one temporary folder, pruned as files age
or the folder outgrows `max_output_mb`, and removed when the pipeline is closed or collected.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

from mdvae.bundle import Bundle, load_bundle
from mdvae.calibration import SURE_FROM, head_temperature
from mdvae.components import (
    COMPARED,
    DENOISERS,
    DSAE_VISUAL,
    EMOTION_READERS,
    EMOTION_REFERENCE,
    LATE_FUSION,
    MDVAE_MODEL,
    VQ_AUDIO,
    VQ_VISUAL,
    available,
    reconstruct,
)
from mdvae.errors import ConfigError, MDVAEError
from mdvae.eval.metrics import (
    TEMPLATE_BOXES,
    corrupt_region,
    corrupted_mask,
    psnr,
    ssim,
    template_mask,
)
from mdvae.familiarity import Familiarity, clip_scores
from mdvae.media.audio import FPS, griffin_lim, samples_for_frames
from mdvae.media.clips import AVClip, load_av_clip
from mdvae.media.face import FaceCropper, NoFaceError
from mdvae.media.video import (
    MediaError,
    frame_strip,
    normalize_clip,
    side_by_side,
    write_video,
)
from mdvae.model.latents import interpolate_w
from mdvae.model.mdvae import Latents
from mdvae.stage1.codec import AVCodec

BUNDLE_ENV = "MDVAE_BUNDLE"
DEFAULT_BUNDLE = Path(__file__).resolve().parents[1] / "checkpoints"

MIN_SECONDS = 1.0  # shorter clips give w too little to go on
MAX_SECONDS = 10.0  # longer clips are trimmed: memory and latency stay bounded
MAX_FILE_MB = 50.0  # refused before decoding; a 10 s 1080p phone clip is ~20 MB
# The written videos are kept at most this long and, oldest first, to at most this size
# (a 256x256 result is ~0.3 MB); files younger than MIN_KEEP_SECONDS are never pruned, so
# a file being written, or just handed to a browser, stays.
KEEP_SECONDS = 3600.0
MAX_OUTPUT_MB = 500.0
MIN_KEEP_SECONDS = 10.0
OUTPUT_SCALE = 4  # 64x64 results are written as 256x256 videos
# The w slider's videos are written 128x128 (the browser shows them at the same size):
# encoding 4x-enlarged frames is about a third of that request's CPU time.
PREVIEW_SCALE = 2
GRIFFIN_LIM_ITERS = 32
# The denoising comparison video opens on the middle corrupted frame, held this long, so its
# first (preview) frame shows the corruption rather than a clean frame.
DENOISE_LEAD_SECONDS = 0.5
# Containers browsers do not play: an upload in one of them is shown as an mp4 copy.
UNPLAYABLE = (".mpg", ".mpeg", ".avi", ".mkv", ".flv", ".ts", ".wmv", ".3gp", ".ogv", ".ogg")
PREVIEW_SIDE = 360  # the mp4 copy's largest side: a preview only, the clip is read again

GROUPS: tuple[str, ...] = Latents.group_names()  # ("w", "z_av", "z_a", "z_v")
GROUP_MEANING = {
    "w": "identity and global emotion (static, both streams)",
    "z_av": "lips and jaw (dynamical, both streams)",
    "z_a": "intonation and loudness (dynamical, audio only)",
    "z_v": "head motion and blinks (dynamical, visual only)",
}
# What a swapped group is meant to carry, as `train.evaluate` measures it on held-out
# speakers (keys of the bundle's info["evaluation"]["summary"]): the swap notes quote the
# bundle's own shares, so a user reads what this bundle does, not what the method intends.
SWAP_RECORD: dict[str, tuple[tuple[str, str], ...]] = {
    "w": (("speaker_video_follows_w", "the face's identity"),
          ("speaker_audio_follows_w", "the voice's identity"),
          ("f0_level_heard_follows_w", "the voice's pitch level"),
          ("emotion_video_follows_w", "the face's emotion")),
    "z_av": (("mouth_follows_z_av", "the mouth's shape"),
             ("mouth_heard_follows_z_av", "the phones heard")),
    "z_a": (("f0_contour_heard_follows_z_a", "the intonation"),),
    "z_v": (("head_pose_follows_z_v", "the head's pose"),
            ("blink_follows_z_v", "the blinks")),
}
REGIONS: tuple[str, ...] = tuple(TEMPLATE_BOXES)  # ("mouth", "eyes")
# The seed's denoising protocol corrupts the 6 central frames of 10.
DENOISE_FRACTION = 0.6
# The margin over the face-only model below which the Emotion tab says the MDVAE takes
# little from the voice (issue 13's margin over both one-stream baselines).
EMOTION_MARGIN = 0.05
# Emotion readers: name -> (model giving w, head reading it)
EMOTION_MODELS = {r.name: (r.model, r.head) for r in EMOTION_READERS.values()}
EMOTION_TITLES = {r.name: r.title for r in EMOTION_READERS.values()}
# The MDVAE's w read against the same person's neutral clip (`reference_reading`)
REFERENCE_MODEL = "reference"
REFERENCE_TITLE = "MDVAE, against the neutral clip"
REQUIRED = (VQ_VISUAL, VQ_AUDIO, MDVAE_MODEL)

# torchaudio's GriffinLim draws its initial phase from torch's global generator, which
# `griffin_lim` seeds inside fork_rng: two threads at once would interleave those
# save/seed/restore steps, so results would depend on timing.
_GRIFFIN_LIM_LOCK = threading.Lock()


@dataclass(frozen=True)
class Encoded:
    """A clip and its posterior means, all on the CPU (small enough for session state).

    x_a (1, T, 512), x_v (1, T, 2048): stage-2 features; latents: means of q(. | x_a, x_v);
    familiarity: how well the bundle explains the clip, against its test clips;
    key: identifies the file and options it came from, so a session can reuse it.
    """

    clip: AVClip
    x_a: Tensor
    x_v: Tensor
    latents: Latents
    familiarity: Familiarity
    notes: tuple[str, ...] = ()
    key: tuple | None = None

    @property
    def n_frames(self) -> int:
        return self.x_a.shape[1]

    @property
    def name(self) -> str:
        return Path(self.clip.source).name


@dataclass(frozen=True)
class Decoded:
    """MDVAE output turned back into media: frames (T, 64, 64, 3) uint8, power (T, 513)."""

    frames: np.ndarray
    power: np.ndarray
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class DenoiseResult:
    """Clean and corrupted frames (T, 64, 64, 3), each model's output, and region metrics.

    mask (T, 64, 64): the corrupted pixels (region x chosen frames), where PSNR / SSIM are
    measured against the clean frames; metrics: name -> (PSNR dB, SSIM), "noisy input"
    first; outputs: name -> frames, in the order VQ-VAE, V-DSAE (when the bundle has it),
    MDVAE.
    """

    clean: np.ndarray
    noisy: np.ndarray
    outputs: dict[str, np.ndarray]
    mask: np.ndarray
    metrics: dict[str, tuple[float, float]]
    region: str
    sigma: float
    frames: slice
    audio: np.ndarray  # the clip's own sound, which the MDVAE also heard
    notes: tuple[str, ...] = ()

    def table(self) -> list[list]:
        """Rows [method, PSNR, SSIM] rounded for display."""
        return [[name, round(p, 2), round(s, 3)] for name, (p, s) in self.metrics.items()]


@dataclass(frozen=True)
class EmotionReading:
    """One model's emotion for a clip: calibrated probabilities, and its answer or none.

    probabilities: label -> softmax(logits / temperature), the temperature stored in the
    bundle (fitted out of fold on its training and validation speakers; 1 when the bundle
    has none); answer: the top label, or None
    ("not sure") when the clip is unfamiliar or the top probability is below `sure_from`;
    reason: why there is no answer ("" when there is one); note: what else the user should
    know of this reading ("" when nothing); same_person: for a reading against a reference
    clip, the two clips' same-person distance and the bound it is held to.
    """

    model: str
    title: str
    probabilities: dict[str, float]
    temperature: float
    answer: str | None
    reason: str
    sure_from: float = SURE_FROM
    note: str = ""
    same_person: dict[str, float] | None = None

    @property
    def top(self) -> tuple[str, float]:
        label = max(self.probabilities, key=self.probabilities.get)
        return label, self.probabilities[label]

    def as_dict(self) -> dict:
        return {"model": self.model, "title": self.title, "answer": self.answer,
                "reason": self.reason, "probabilities": self.probabilities,
                "temperature": self.temperature, "sure_from": self.sure_from,
                "note": self.note, "same_person": self.same_person}


def _not_sure(label: str, p: float, sure_from: float) -> str:
    """Why a reading whose most likely emotion has only `p` gives no answer."""
    return f"no emotion reaches {sure_from:.0%} (the most likely, {label}, has {p:.0%})"


class _WholeFrame:
    """Stands in for the face cropper when a clip already is an aligned face crop (the
    synthetic examples): the centred square of every frame, resized to 64x64."""

    backend = "aligned input"

    def __init__(self, size: int = 64):
        self.size = size

    def crop(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) -> (N, size, size, 3) uint8."""
        _, height, width, _ = frames.shape
        side = min(height, width)
        y0, x0 = (height - side) // 2, (width - side) // 2
        square = frames[:, y0 : y0 + side, x0 : x0 + side]
        return np.stack(
            [cv2.resize(f, (self.size, self.size), interpolation=cv2.INTER_AREA) for f in square]
        )


def as_number(value, what: str) -> float:
    """`value` as a float, or an MDVAEError naming `what` (an API caller may send text)."""
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise MDVAEError(f"{what} must be a number, got {value!r}") from err


def prune_files(folder: str | os.PathLike, *, max_bytes: float, max_age_s: float,
                min_age_s: float = 0.0, keep: Iterable[str | os.PathLike] = ()) -> int:
    """Delete the files under `folder` older than max_age_s, then the oldest others until
    the rest take at most max_bytes; files younger than min_age_s and those in `keep` stay.
    Empty subfolders left behind go too. Returns the bytes still there.
    """
    folder = Path(folder)
    kept = {str(Path(k).resolve()) for k in keep}
    now = time.time()
    files = []
    for path in folder.rglob("*"):
        try:
            stat = path.lstat()
        except FileNotFoundError:  # another request pruned it first
            continue
        if path.is_file() and not path.is_symlink():
            files.append((stat.st_mtime, stat.st_size, path))
    files.sort(key=lambda f: f[0])  # oldest first
    total = sum(size for _, size, _ in files)
    for mtime, size, path in files:
        age = now - mtime
        if age < min_age_s or str(path.resolve()) in kept:
            continue
        if age > max_age_s or total > max_bytes:
            try:
                path.unlink()
                total -= size
            except FileNotFoundError:
                total -= size
            except OSError:
                continue
            parent = path.parent
            if parent != folder and parent.is_relative_to(folder):
                try:
                    parent.rmdir()  # only when empty
                except OSError:
                    pass
    return total


def central_frames(n_frames: int, fraction: float = DENOISE_FRACTION) -> slice:
    """The centred run of round(fraction * n_frames) frames (at least one)."""
    if not 0 < fraction <= 1:
        raise MDVAEError(f"the corrupted fraction of the clip must be in (0, 1], got {fraction}")
    count = min(n_frames, max(1, round(fraction * n_frames)))
    start = (n_frames - count) // 2
    return slice(start, start + count)


def _move(latents: Latents, device: torch.device | str) -> Latents:
    return dataclasses.replace(
        latents, **{g: getattr(latents, g).to(device) for g in latents.group_names()}
    )


def _share(summary: dict, key: str, what: str) -> str:
    """"<what> in <share>% of the pairs", or "<what> never" for a factor that `train.evaluate`
    found the model's own reconstructions do not render (summary "<factor>_rendered" false):
    a share of swaps "following" such a factor is the judge's guess, not the model's doing."""
    if summary.get(f"{key.split('_follows_')[0]}_rendered") is False:
        return f"{what} never (not rebuilt by this model)"
    return f"{what} in {100 * summary[key]:.0f}% of the pairs"


def _crop(latents: Latents, n_frames: int) -> Latents:
    """The first n_frames of every dynamical group (and of a per-frame w)."""
    groups = {g: getattr(latents, g) for g in latents.group_names()}
    return dataclasses.replace(
        latents, **{g: v[:, :n_frames] if v.dim() == 3 else v for g, v in groups.items()}
    )


def _upscale(frames: np.ndarray, factor: int) -> np.ndarray:
    """(..., H, W, 3) uint8 enlarged `factor` times (cubic), for readable still images."""
    if factor == 1:
        return frames
    flat = frames.reshape(-1, *frames.shape[-3:])
    big = [cv2.resize(f, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC) for f in flat]
    return np.stack(big).reshape(*frames.shape[:-3], *big[0].shape)


def _resolve_bundle(bundle: Bundle | str | os.PathLike | None, device) -> tuple[Bundle, str]:
    if isinstance(bundle, Bundle):
        return bundle, str(bundle.path)
    if bundle is None:
        bundle = os.environ.get(BUNDLE_ENV) or DEFAULT_BUNDLE
        if Path(bundle) == DEFAULT_BUNDLE and not (DEFAULT_BUNDLE / "config.json").is_file():
            raise ConfigError(
                f"no model bundle in {DEFAULT_BUNDLE}: export one there "
                f"(python -m train.export ... --out checkpoints), or set {BUNDLE_ENV} to a "
                f"bundle folder or a Hugging Face Hub repo id"
            )
    return load_bundle(bundle, device=device), str(bundle)


class Pipeline:
    """The app's models and operations (see the module docstring).

    bundle: a loaded Bundle, a bundle folder, or a Hub repo id; None reads $MDVAE_BUNDLE,
        then the repository's checkpoints/ folder.
    device: where the models run; None picks CUDA when available.
    max_seconds, max_file_mb: defaults for `load` (longer clips trimmed, bigger files refused).
    face_backend: FaceCropper backend for clips that are not aligned crops.
    keep_seconds, max_output_mb: written files older than this, or the oldest beyond this
        size in all, are deleted as new ones are made.
    output_root: where the folder of written files is made (default: the system's temporary
        folder); the app puts it in Gradio's cache, so each result is written once.
    """

    def __init__(
        self,
        bundle: Bundle | str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        *,
        max_seconds: float = MAX_SECONDS,
        max_file_mb: float = MAX_FILE_MB,
        face_backend: str = "auto",
        keep_seconds: float = KEEP_SECONDS,
        max_output_mb: float = MAX_OUTPUT_MB,
        output_root: str | os.PathLike | None = None,
    ):
        self.device = torch.device(
            device if device is not None else "cuda" if torch.cuda.is_available() else "cpu"
        )
        self.bundle, self.bundle_source = _resolve_bundle(bundle, self.device)
        missing = [name for name in REQUIRED if name not in self.bundle]
        if missing:
            raise ConfigError(
                f"bundle {self.bundle_name} lacks {missing}: the demo needs "
                f"both VQ-VAEs and the MDVAE"
            )
        for module in self.bundle.components.values():
            module.eval().requires_grad_(False)
        self.mdvae = self.bundle.mdvae
        self.codec = AVCodec(self.bundle.vq_audio, self.bundle.vq_visual)
        self.max_seconds = float(max_seconds)
        self.max_file_mb = float(max_file_mb)
        self.cropper = FaceCropper(face_backend)
        self.aligned_cropper = _WholeFrame()
        self.keep_seconds = keep_seconds
        self.max_output_mb = float(max_output_mb)
        self.tmp_dir = Path(tempfile.mkdtemp(prefix="mdvae-app-", dir=output_root))
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.tmp_dir, True)

    def set_output_root(self, parent: str | os.PathLike) -> None:
        """Move the folder of written files (empty, at setup) under `parent`."""
        parent = Path(parent)
        if self.tmp_dir.parent.resolve() == parent.resolve():
            return
        parent.mkdir(parents=True, exist_ok=True)
        self._finalizer()
        self.tmp_dir = Path(tempfile.mkdtemp(prefix="mdvae-app-", dir=parent))
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.tmp_dir, True)

    # -- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Delete every file this pipeline wrote."""
        self._finalizer()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def new_path(self, stem: str, suffix: str) -> Path:
        """A fresh file name in the pipeline's folder; files past keep_seconds, and the
        oldest beyond max_output_mb (if older than MIN_KEEP_SECONDS), are removed."""
        prune_files(self.tmp_dir, max_bytes=self.max_output_mb * 2**20,
                    max_age_s=self.keep_seconds,
                    min_age_s=min(MIN_KEEP_SECONDS, self.keep_seconds))
        return self.tmp_dir / f"{stem}-{uuid.uuid4().hex[:8]}{suffix}"

    # -- what is loaded -------------------------------------------------------------------

    @property
    def bundle_name(self) -> str:
        """The bundle's folder name or Hub repo id: never the server's folder path."""
        source = Path(self.bundle_source)
        return source.name if source.is_absolute() or source.exists() else self.bundle_source

    @property
    def description(self) -> str:
        """Markdown: which bundle is loaded, what it was trained on, how it scores."""
        info = self.bundle.info
        data = info.get("data", {})
        if isinstance(data, str):  # a bare note
            data = {"note": data}
        c = self.mdvae.config
        lines = [
            f"**Model bundle:** `{self.bundle_name}` · latents w {c.w_dim}, "
            f"z_av {c.z_av_dim}, z_a {c.z_a_dim}, z_v {c.z_v_dim} · running on "
            f"{self.device.type.upper()}"
        ]
        source = data.get("source")
        train = data.get("splits", {}).get("train")
        if source and train:
            minutes = train["frames"] / FPS / 60
            lines.append(
                f"**Trained on:** `{source}` data, {len(train['speakers'])} speakers, "
                f"{train['clips']} clips ({minutes:.0f} min); speakers in the test "
                f"split were never seen."
            )
        elif source or data.get("note"):
            lines.append(f"**Trained on:** {source or ''} {data.get('note', '')}".strip())
        else:
            lines.append("**Trained on:** the bundle does not say (no training-data record).")
        heads = info.get("emotion", {})
        scores = [f"{r.title} {100 * acc:.0f}%" for r in EMOTION_READERS.values()
                  if (acc := heads.get(r.head, {}).get("accuracy", {}).get("test")) is not None]
        if scores:
            lines.append(f"**Emotion accuracy** on test speakers: {', '.join(scores)}.")
        if info.get("exported"):
            lines.append(f"Exported {info['exported']}.")
        if source == "synthetic":
            lines.append(
                "This bundle has only seen the procedural cartoon faces of the "
                "synthetic benchmark: real faces are outside its training data, so "
                "expect them to come back cartoon-like. The examples below are "
                "held-out synthetic speakers."
            )
        return "  \n".join(lines)

    @property
    def emotion_models(self) -> tuple[str, ...]:
        """The emotion readers this bundle has, among "mdvae", "audio", "visual"."""
        return tuple(
            name
            for name, (model, head) in EMOTION_MODELS.items()
            if model in self.bundle and head in self.bundle
        )

    # -- clips in -------------------------------------------------------------------------

    def load(self, path, *, aligned: bool = False, max_seconds: float | None = None) -> AVClip:
        """Decode, check and crop one clip (see `mdvae.media.clips.AVClip`).

        aligned: the whole frame already is the face crop (skip detection); otherwise the
        face is detected, tracked and cropped. max_seconds: trim longer clips (default:
        the pipeline's limit).
        """
        if path is None or str(path) == "":
            raise MediaError("no clip given: upload a video or record one with the webcam")
        path = Path(path)
        if path.is_file():
            size_mb = path.stat().st_size / 2**20
            if size_mb > self.max_file_mb:
                raise MediaError(
                    f"{path.name} is {size_mb:.1f} MB, over the {self.max_file_mb:g} "
                    f"MB limit: upload a shorter or smaller clip"
                )
        limit = self.max_seconds if max_seconds is None else float(max_seconds)
        cropper = self.aligned_cropper if aligned else self.cropper
        try:
            return load_av_clip(path, cropper, min_seconds=MIN_SECONDS, max_seconds=limit)
        except NoFaceError as err:
            raise NoFaceError(
                f"{path.name}: {err}. If the video already is a face crop "
                f"(face filling the frame), mark it as aligned."
            ) from err

    @torch.no_grad()
    def encode(self, clip: AVClip, *, key: tuple | None = None) -> Encoded:
        """Stage-2 features, posterior means (w, z_av, z_a, z_v) and familiarity of a clip."""
        x_a, x_v = self.codec.encode(clip.frames[None], clip.power[None])  # (1,T,512),(1,T,2048)
        latents = self.mdvae.encode(x_a, x_v)
        familiarity = self.familiarity(clip.frames, clip.power, x_a, x_v)
        notes = [f"{Path(clip.source).name}: {clip.face_note}"] if clip.face_note else []
        if clip.trimmed:
            notes.append(
                f"{Path(clip.source).name} is longer than {clip.seconds:g} s: only "
                f"its first {clip.seconds:g} s are used."
            )
        if clip.lost_frames:
            notes.append(
                f"{Path(clip.source).name} is damaged: {clip.lost_frames} of its video "
                f"frames could not be decoded, and the frame before each gap stands in."
            )
        return Encoded(clip, x_a.cpu(), x_v.cpu(), _move(latents, "cpu"), familiarity,
                       tuple(notes), key)

    def familiarity(self, frames: np.ndarray, power: np.ndarray, x_a: Tensor | None = None,
                    x_v: Tensor | None = None) -> Familiarity:
        """How well the bundle explains frames (T, 64, 64, 3) and power (T, 513), placed
        against its test clips (`mdvae.familiarity`); x_a, x_v: their features, if known."""
        scores = clip_scores(self.mdvae, self.codec, frames, power, x_a, x_v)
        return Familiarity.of(scores, self.bundle.info.get("familiarity"))

    def source_key(self, path, *, aligned: bool, max_seconds: float | None = None) -> tuple:
        """What makes two loads of a file equal: path, size, modification time, options."""
        stat = Path(path).stat()
        limit = self.max_seconds if max_seconds is None else float(max_seconds)
        return (str(path), stat.st_size, stat.st_mtime_ns, bool(aligned), limit)

    def reusable(self, path, reuse: Encoded | None, *, aligned: bool = False,
                 max_seconds: float | None = None) -> bool:
        """Whether `encode_file(path, ...)` would hand `reuse` back without any work."""
        if reuse is None or path is None:
            return False
        if Path(path).is_file():
            return reuse.key == self.source_key(path, aligned=aligned, max_seconds=max_seconds)
        limit = self.max_seconds if max_seconds is None else float(max_seconds)
        return (reuse.key is not None
                and (reuse.key[0], *reuse.key[3:]) == (str(path), bool(aligned), limit))

    def encode_file(
        self,
        path,
        *,
        aligned: bool = False,
        max_seconds: float | None = None,
        reuse: Encoded | None = None,
    ) -> Encoded:
        """load + encode; `reuse` is returned as is when it came from the same file and
        options (a session's earlier encoding: a slider then only decodes)."""
        if self.reusable(path, reuse, aligned=aligned, max_seconds=max_seconds):
            return reuse  # the same file and options (or its upload was pruned since)
        exists = path is not None and Path(path).is_file()
        key = self.source_key(path, aligned=aligned, max_seconds=max_seconds) if exists else None
        clip = self.load(path, aligned=aligned, max_seconds=max_seconds)
        return self.encode(clip, key=key)

    # -- latent operations ----------------------------------------------------------------

    @torch.no_grad()
    def decode(self, latents: Latents, notes: Iterable[str] = ()) -> Decoded:
        """MDVAE decoder means, through the frozen VQ-VAE decoders, for a batch of one."""
        x_a_hat, x_v_hat = self.mdvae.decode(_move(latents, self.device))  # (1, T, D)
        return Decoded(
            self.codec.decode_visual(x_v_hat[0]), self.codec.decode_audio(x_a_hat[0]), tuple(notes)
        )

    def reconstruct(self, enc: Encoded) -> Decoded:
        return self.decode(enc.latents)

    def swap(self, enc_a: Encoded, enc_b: Encoded, groups: Iterable[str] | str) -> Decoded:
        """Clip A rebuilt with the latent `groups` of clip B.

        Dynamical groups pair frame t with frame t, so when one is swapped both clips are
        cut to the shorter one (the notes say so); w alone keeps A's length.
        """
        names = {groups} if isinstance(groups, str) else set(groups)
        if not names:
            raise MDVAEError(
                f"choose at least one latent group to take from clip B, among {list(GROUPS)}"
            )
        unknown = sorted(names - set(GROUPS))
        if unknown:
            raise MDVAEError(f"unknown latent group(s) {unknown}; choose among {list(GROUPS)}")
        notes = []
        n_a, n_b = enc_a.n_frames, enc_b.n_frames
        n = n_a if names == {"w"} else min(n_a, n_b)
        if n < max(n_a, n_b) and names != {"w"}:
            notes.append(
                f"The clips last {n_a / FPS:.2f} s and {n_b / FPS:.2f} s: both are "
                f"cut to the first {n / FPS:.2f} s for the swap."
            )
        latents = _crop(enc_a.latents, n).swap(_crop(enc_b.latents, n), names)
        record = self.swap_record(names)
        if record:
            notes.append(record)
        return self.decode(latents, notes)

    def evaluation_summary(self) -> dict | None:
        """The summary of `train.evaluate` on held-out speakers that the bundle carries
        (info["evaluation"]["summary"]), or None."""
        evaluation = self.bundle.info.get("evaluation")
        summary = evaluation.get("summary") if isinstance(evaluation, dict) else None
        return summary if isinstance(summary, dict) else None

    def emotion_record(self, *, reference: bool = False) -> str | None:
        """Markdown: how often, in the bundle's own evaluation on held-out speakers, each
        model's w was read as the clip's emotion (all labels), and the A-DSAE's and V-DSAE's
        w read together where it was measured; where the MDVAE is not `EMOTION_MARGIN`
        above the face-only model, it says so: the voice then adds little to its reading;
        and, where measured, the MDVAE's and V-DSAE's accuracy with the labels of a tenth of
        the training speakers, and the MDVAE's on the faintest expressions; with `reference`
        (a neutral clip was given), how the reading against it did on new speakers.
        None when the bundle carries no such evaluation."""
        summary = self.evaluation_summary() or {}
        read = {r.name: summary.get(f"emotion_accuracy_{r.model}_1")
                for r in EMOTION_READERS.values() if r.name in self.emotion_models}
        read = {name: v for name, v in read.items() if isinstance(v, (int, float))}
        if "mdvae" not in read:
            return None
        parts = [f"{100 * v:.0f}%{' of the clips' if i == 0 else ''} with the "
                 f"{EMOTION_TITLES[name]}" for i, (name, v) in enumerate(read.items())]
        text = ("In this bundle's evaluation on held-out speakers (`train.evaluate`), the "
                "emotion read from w was right for "
                + (", ".join(parts[:-1]) + " and " if len(parts) > 1 else "") + parts[-1])
        together = summary.get(f"emotion_accuracy_{LATE_FUSION}_1")
        if isinstance(together, (int, float)):
            text += (f"; read together, the A-DSAE's and V-DSAE's w (each from its own "
                     f"stream) reach {100 * together:.0f}%")
        text += "."
        face = read.get("visual")
        if face is not None and read["mdvae"] < face + EMOTION_MARGIN:
            text += (" The MDVAE does not read it clearly better than the face alone: it "
                     "takes little from the voice.")
        few = {name: summary.get(f"emotion_accuracy_{EMOTION_READERS[name].model}_speakers_0.1")
               for name in ("mdvae", "visual")}
        if all(isinstance(v, (int, float)) for v in few.values()):
            # the seed's label-efficiency claim, by people (research log, session 36)
            text += (f" With heads fitted on the labels of a tenth of the training speakers, "
                     f"the MDVAE reads {100 * few['mdvae']:.0f}% and the face alone "
                     f"{100 * few['visual']:.0f}%: the voice helps most when few people are "
                     f"labelled.")
        faint = summary.get("emotion_accuracy_mdvae_level_1")
        if isinstance(faint, (int, float)):
            # research log, session 36: w holds the emotion, but from one clip of a new
            # person a faint expression and that person's resting face look alike
            text += (f" Faint expressions are the weak spot: at the lowest intensity (neutral "
                     f"included) it was right for {100 * faint:.0f}%: in one clip of a new face, "
                     f"a mild expression is hard to tell from that person's resting look.")
        if reference:
            text += self.reference_record()
        return text

    def reference_record(self) -> str:
        """Markdown: how the reading against a neutral clip did on the bundle's pool of new
        speakers (`train.emotion --pool`), or "" when it was not measured."""
        pool = self.bundle.info.get("emotion", {}).get(EMOTION_REFERENCE, {}).get("pool")
        if not isinstance(pool, dict):
            return ""
        ref = self.bundle[EMOTION_REFERENCE].config.reference
        text = (f" Read against the same person's {ref} clip, the MDVAE was right for "
                f"{pool['accuracy']:.0%} of {pool['speakers']} new speakers' clips, where it "
                f"reads {pool['plain_accuracy']:.0%} of the same clips alone")
        if pool.get(f"accuracy_{ref}") is not None:
            text += (f" ({ref} ones {pool[f'accuracy_{ref}']:.0%} against "
                     f"{pool[f'plain_accuracy_{ref}']:.0%})")
        text += "."
        if pool.get("other_person_passed") is not None:
            text += (f" Its same-person check let through {pool['same_person_passed']:.0%} of "
                     f"one person's pairs of clips and {pool['other_person_passed']:.1%} of "
                     f"two people's.")
        return text

    def swap_record(self, groups: Iterable[str]) -> str | None:
        """Markdown: how often, in the bundle's own evaluation on held-out speakers, each
        factor followed the swapped `groups` (shares of `SWAP_RECORD`), or None when the
        bundle carries no evaluation with them."""
        summary = self.evaluation_summary()
        if summary is None:
            return None
        parts, stayed = [], False
        for group in GROUPS:
            if group not in groups:
                continue
            quoted = [(key, what) for key, what in SWAP_RECORD.get(group, ())
                      if isinstance(summary.get(key), (int, float))]
            if quoted:
                parts.append(f"B's {group} brought "
                             + ", ".join(_share(summary, key, what) for key, what in quoted))
                stayed |= any(summary[key] < 0.5 for key, _ in quoted)
        if not parts:
            return None
        # the reading of a low share, said only where one is quoted ("never" says itself)
        return ("In this bundle's evaluation on held-out speakers (`train.evaluate`, pairs "
                "of clips), " + "; ".join(parts) + "."
                + (" Under 50%, the factor mostly stayed with A: this model does not carry "
                   "it with that group." if stayed else ""))

    def interpolate(self, enc_a: Encoded, enc_b: Encoded, alpha: float | None = None) -> Decoded:
        """Clip A with w~_t = alpha_t w_A + (1 - alpha_t) w_B and A's dynamical latents.

        alpha None: the seed's sweep alpha_t = (T - t) / (T - 1), from A's w to B's over
        the clip; a number in [0, 1]: constant (1 is A's reconstruction, 0 A's motion with
        B's w).
        """
        alpha = self._check_alpha(alpha)
        la = enc_a.latents
        w = interpolate_w(la.w, enc_b.latents.w, enc_a.n_frames, alpha)  # (1, T, Lw)
        return self.decode(dataclasses.replace(la, w=w))

    @torch.no_grad()
    def interpolation_strip(
        self, enc_a: Encoded, enc_b: Encoded, n: int = 6, frame: int | None = None, scale: int = 2
    ) -> np.ndarray:
        """One frame of A decoded with w moving from A's (alpha 1) to B's (alpha 0) in n
        steps, side by side and labelled: an image (H, W, 3) uint8."""
        t = enc_a.n_frames // 2 if frame is None else int(frame)
        alphas = torch.linspace(1.0, 0.0, n)
        la = enc_a.latents
        w = interpolate_w(la.w[0], enc_b.latents.w[0], n, None)  # (n, Lw)
        one_frame = Latents(
            w, *(getattr(la, g)[:, t : t + 1].expand(n, -1, -1) for g in ("z_av", "z_a", "z_v"))
        )  # (n, 1, L) each
        # a frame of a clip: a decoder that reads centred z's takes the clip's time means
        _, x_v_hat = self.mdvae.decode(
            _move(one_frame, self.device), reference=_move(la, self.device)
        )  # (n, 1, Dv)
        frames = _upscale(self.codec.decode_visual(x_v_hat[:, 0]), scale)  # (n, H, W, 3)
        panels = [f[None] for f in frames]
        names = ["A" if a == 1 else "B" if a == 0 else f"{1 - a:.0%} B" for a in alphas.tolist()]
        row = side_by_side(panels, names)  # (1, H', W', 3)
        return side_by_side([row], [f"frame {t + 1} of A, w from A's (left) to B's (right)"])[0]

    @staticmethod
    def _check_alpha(alpha: float | None) -> float | None:
        if alpha is None:
            return None
        alpha = as_number(alpha, "alpha (between 0, B's w, and 1, A's w)")
        if not 0.0 <= alpha <= 1.0:
            raise MDVAEError(f"alpha must be between 0 (B's w) and 1 (A's w), got {alpha}")
        return alpha

    # -- denoising ------------------------------------------------------------------------

    @torch.no_grad()
    def denoise(
        self,
        clip: AVClip,
        region: str = "mouth",
        sigma: float = 0.25,
        frames: slice | None = None,
        *,
        seed: int = 0,
    ) -> DenoiseResult:
        """Gaussian noise (std `sigma`, in [0, 1] pixel units) on a face region of some
        frames (default: the central 60 %, as the seed's 6 of 10), the sound left intact;
        then each model's reconstruction and PSNR / SSIM on the corrupted pixels.

        The region is the fixed template of an aligned crop (`mdvae.eval.metrics.TEMPLATE_BOXES`).
        Compared: the VQ-VAE alone, the V-DSAE (visual stream only) and the MDVAE, which
        also hears the audio.
        """
        if region not in REGIONS:
            raise MDVAEError(f"unknown region {region!r}; choose one of {list(REGIONS)}")
        sigma = as_number(sigma, "the noise level sigma")
        if not 0.0 < sigma <= 2.0:
            raise MDVAEError(f"the noise level sigma must be in (0, 2], got {sigma}")
        n_frames = len(clip.frames)
        index = central_frames(n_frames) if frames is None else frames
        mask = template_mask(region, n_frames)  # (T, 64, 64)
        noisy = corrupt_region(clip.frames, mask, index, sigma, np.random.default_rng(seed))
        x_a, x_v = self.codec.encode(noisy[None], clip.power[None])  # (1, T, D)
        outputs = {}
        for name in available(DENOISERS, self.bundle):
            _, x_v_hat = reconstruct(name, self.bundle, x_a, x_v)
            outputs[COMPARED[name].title] = self.codec.decode_visual(x_v_hat[0])

        region_mask = corrupted_mask(mask, index)
        hit = region_mask.any(axis=(1, 2))  # only corrupted frames enter the metrics
        metrics = {}
        for name, estimate in {"noisy input": noisy, **outputs}.items():
            metrics[name] = (
                psnr(clip.frames[hit], estimate[hit], region_mask[hit]),
                ssim(clip.frames[hit], estimate[hit], region_mask[hit]),
            )
        notes = []
        if COMPARED[DSAE_VISUAL].title not in outputs:
            notes.append("This bundle has no V-DSAE, so that baseline is left out.")
        return DenoiseResult(
            clip.frames,
            noisy,
            outputs,
            region_mask,
            metrics,
            region,
            sigma,
            index,
            clip.audio,
            tuple(notes),
        )

    # -- emotion --------------------------------------------------------------------------

    @torch.no_grad()
    def emotion(self, enc: Encoded, model: str = "mdvae") -> dict[str, float]:
        """Calibrated class probabilities of the 8 emotions from the posterior mean of w.

        model: "mdvae" (w of q(w | x_a, x_v)), "audio" or "visual" (w of the A-DSAE or the
        V-DSAE, with their own heads), when the bundle has them. The logits are divided by
        the head's temperature from the bundle (see `emotion_reading`).
        """
        return self.emotion_reading(enc, model).probabilities

    def temperature(self, model: str) -> float:
        """The emotion head's temperature from the bundle (1.0 when not calibrated)."""
        return head_temperature(self.bundle.info, EMOTION_MODELS[model][1])

    @torch.no_grad()
    def emotion_reading(self, enc: Encoded, model: str = "mdvae", *,
                        sure_from: float = SURE_FROM) -> EmotionReading:
        """One model's calibrated probabilities and its answer, or "not sure" (answer None)
        when the clip is unfamiliar to the bundle or the top probability is below sure_from.
        """
        if model not in EMOTION_MODELS:
            raise MDVAEError(
                f"unknown emotion model {model!r}; choose among {list(EMOTION_MODELS)}"
            )
        if model not in self.emotion_models:
            raise ConfigError(
                f"bundle {self.bundle_name} has no emotion head for "
                f"{model!r} (it holds {sorted(self.bundle.components)})"
            )
        reader, head = EMOTION_MODELS[model]
        if model == "mdvae":
            w = enc.latents.w
        else:
            x = enc.x_a if model == "audio" else enc.x_v
            w = self.bundle[reader].encode(x.to(self.device)).w  # (1, Lw)
        temperature = self.temperature(model)
        logits = self.bundle[head](w.to(self.device)) / temperature  # (1, 8)
        probs = torch.softmax(logits.double(), dim=-1)[0].tolist()
        probabilities = dict(zip(self.bundle[head].config.labels, probs))
        label = max(probabilities, key=probabilities.get)
        if enc.familiarity.familiar is False:
            reason = "the clip is unfamiliar to the model, so its emotion cannot be trusted"
        elif probabilities[label] < sure_from:
            reason = _not_sure(label, probabilities[label], sure_from)
        else:
            reason = ""
        return EmotionReading(model, EMOTION_TITLES[model], probabilities, temperature,
                              None if reason else label, reason, sure_from)

    def emotion_readings(self, enc: Encoded, reference: Encoded | None = None
                         ) -> list[EmotionReading]:
        """`emotion_reading` of every model the bundle has (MDVAE, A-DSAE, V-DSAE), then,
        given a `reference` clip of the same person with a neutral face, `reference_reading`
        (when the bundle has its head)."""
        readings = [self.emotion_reading(enc, m) for m in self.emotion_models]
        if reference is not None:
            readings.append(self.reference_reading(enc, reference))
        return readings

    @property
    def has_reference_head(self) -> bool:
        """Whether the bundle can read an emotion against a neutral clip of the same person."""
        return EMOTION_REFERENCE in self.bundle and MDVAE_MODEL in self.bundle

    @torch.no_grad()
    def reference_reading(self, enc: Encoded, reference: Encoded, *,
                          sure_from: float = SURE_FROM) -> EmotionReading:
        """The clip's emotion read against `reference`, a clip of the same person with a
        neutral face (`ReferenceEmotionHead`: the MDVAE's w minus the reference's), with the
        head's temperature from the bundle. No answer when either clip is unfamiliar, when
        the two are one clip, when they do not look like one person (the head's same-person
        check), or below sure_from; a note when the MDVAE alone reads the reference as an
        expression."""
        if not self.has_reference_head:
            raise ConfigError(
                f"bundle {self.bundle_name} has no head that reads an emotion against a "
                f"neutral clip ({EMOTION_REFERENCE}); it holds {sorted(self.bundle.components)}"
            )
        head = self.bundle[EMOTION_REFERENCE]
        w, w_ref = enc.latents.w.to(self.device), reference.latents.w.to(self.device)
        temperature = head_temperature(self.bundle.info, EMOTION_REFERENCE)
        logits = head(w, w_ref) / temperature  # (1, 8)
        probs = torch.softmax(logits.double(), dim=-1)[0].tolist()
        probabilities = dict(zip(head.config.labels, probs))
        label = max(probabilities, key=probabilities.get)
        distance = float(head.distance(w, w_ref)[0])
        within = head.config.same_person_within
        unfamiliar = [name for name, e in (("the clip", enc), ("the neutral clip", reference))
                      if e.familiarity.familiar is False]
        if unfamiliar:
            reason = (f"{' and '.join(unfamiliar)} {'are' if len(unfamiliar) == 2 else 'is'} "
                      f"unfamiliar to the model, so the comparison cannot be trusted")
        elif (enc.clip.frames.shape == reference.clip.frames.shape
              and np.array_equal(enc.clip.frames, reference.clip.frames)):
            reason = ("the neutral clip is the clip itself, so there is nothing to compare: "
                      "give another clip of the same person with a resting face")
        elif distance > within:
            reason = (f"the two clips do not look like one person to the model (their w "
                      f"differ by {distance:.1f}; one person's clips stay within {within:.1f}): "
                      f"the neutral clip must show the same person")
        elif probabilities[label] < sure_from:
            reason = _not_sure(label, probabilities[label], sure_from)
        else:
            reason = ""
        note = ""
        if "mdvae" in self.emotion_models:
            alone = self.emotion_reading(reference, "mdvae", sure_from=sure_from)
            if alone.answer not in (None, head.config.reference):
                note = (f"The MDVAE reads the neutral clip on its own as {alone.answer} "
                        f"({alone.top[1]:.0%}). One clip of a new face is often misread, but "
                        f"if it is not a resting face, this reads the change from that "
                        f"expression.")
        return EmotionReading(REFERENCE_MODEL, REFERENCE_TITLE, probabilities, temperature,
                              None if reason else label, reason, sure_from, note,
                              {"distance": distance, "within": within})

    # -- media out ------------------------------------------------------------------------

    def waveform(self, power: np.ndarray) -> np.ndarray:
        """Griffin-Lim waveform (16 kHz) of a decoded power spectrogram (T, 513)."""
        with _GRIFFIN_LIM_LOCK:
            return griffin_lim(power, n_iter=GRIFFIN_LIM_ITERS)

    def render(self, decoded: Decoded, name: str = "result", *, scale: int = OUTPUT_SCALE) -> Path:
        """mp4 (H.264 + AAC) of decoded frames, with the Griffin-Lim sound of its power."""
        return write_video(
            self.new_path(name, ".mp4"), decoded.frames, self.waveform(decoded.power), scale=scale
        )

    def render_side_by_side(
        self,
        videos: Sequence[np.ndarray],
        labels: Sequence[str],
        audio: np.ndarray | None,
        name: str = "comparison",
        *,
        scale: int = OUTPUT_SCALE,
    ) -> Path:
        """Labelled videos (T, 64, 64, 3) next to each other, as one mp4 with `audio`."""
        frames = side_by_side([_upscale(v, scale) for v in videos], list(labels))
        return write_video(self.new_path(name, ".mp4"), frames, audio, scale=1)

    def render_denoise(self, result: DenoiseResult, *, scale: int = 3,
                       lead_seconds: float = DENOISE_LEAD_SECONDS) -> Path:
        """Clean | noisy | each model, side by side, with the clip's own sound; it opens on
        the middle corrupted frame held for lead_seconds (silent), so the video's first
        frame, which a browser shows before it plays, shows the corruption."""
        videos = [result.clean, result.noisy, *result.outputs.values()]
        labels = ["clean", f"noisy ({result.region})", *result.outputs]
        lead = round(lead_seconds * FPS)
        middle = (result.frames.start + result.frames.stop - 1) // 2
        videos = [np.concatenate([np.repeat(v[middle:middle + 1], lead, axis=0), v])
                  for v in videos]
        audio = np.concatenate([np.zeros(samples_for_frames(lead), np.float32), result.audio])
        return self.render_side_by_side(videos, labels, audio, "denoise", scale=scale)

    def playable_copy(self, path) -> Path | None:
        """An mp4 copy (small, for the browser's preview) of a video whose container
        browsers cannot play (UNPLAYABLE), or None when it plays as it is or cannot be read
        (reading it for the model later gives the reason)."""
        if path is None or Path(path).suffix.lower() not in UNPLAYABLE:
            return None
        try:
            # A little past the limit, so the trimmed copy still says it was trimmed.
            clip = normalize_clip(path, max_seconds=self.max_seconds + 1, max_side=PREVIEW_SIDE)
        except MDVAEError:
            return None
        return write_video(self.new_path(Path(path).stem, ".mp4"), clip.frames, clip.audio,
                           scale=1)

    @staticmethod
    def strip(rows: Sequence[tuple[str, np.ndarray]], n: int = 8, scale: int = 2) -> np.ndarray:
        """Still image: for each (label, frames (T, 64, 64, 3)), n evenly spaced frames in a
        labelled row; rows stacked top to bottom. Returns (H, W, 3) uint8."""
        images = []
        for i, (label, frames) in enumerate(rows):
            row = _upscale(frame_strip(frames, n), scale)  # (h, n w, 3)
            if i:
                images.append(np.full((4, row.shape[1], 3), 255, np.uint8))
            images.append(side_by_side([row[None]], [label])[0])
        return np.concatenate(images, axis=0)
