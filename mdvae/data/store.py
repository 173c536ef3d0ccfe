"""The preprocessed data store that every training and evaluation program reads.

One folder per dataset, the same layout for every source (synthetic, MEAD, RAVDESS, any
folder of videos)::

    meta.json          format name and version, array shapes and dtypes, factor specs,
                       source kind, creation info, a random uid
    frames.bin         uint8   (N, 64, 64, 3)  aligned face crops, 30 fps
    power.bin          float32 (N, 513)        power spectrogram, one frame per video frame
    clips.jsonl        one clip per line: id, start, length, speaker, emotion, level,
                       source, split (+ optional "extra" object)
    factors/<name>.bin per-frame ground truth (N, ...) where the source has it
    features/<key>/    cached stage-1 encoder outputs: meta.json, audio.bin (N, 512),
                       visual.bin (N, 2048), float16 by default

The binary files are raw little-endian arrays appended clip after clip, so they memory-map
without a header. The number of frames N is not stored anywhere but in the table: the
last clip's start + length. That is what makes writing resumable: a writer appends a clip's
arrays, flushes them, and only then appends (and flushes) its table line; a crash in
between leaves bytes past the committed end, which the next writer truncates away.
"""

from __future__ import annotations

import contextlib
import datetime
import glob
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from mdvae.errors import MDVAEError
from mdvae.labels import EMOTION_INDEX, EMOTIONS

try:  # advisory lock against two writers; POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

FORMAT = "vq-mdvae-store"
VERSION = 1
FRAME_SHAPE: tuple[int, int, int] = (64, 64, 3)
# Same as mdvae.media.audio.N_BINS (n_fft 1024); repeated here so reading a store does not
# import torchaudio.
POWER_BINS = 513
SPLITS: tuple[str, ...] = ("train", "val", "test")
FEATURE_DTYPES: tuple[str, ...] = ("float16", "float32")
_FLOAT16_MAX = float(np.finfo(np.float16).max)
logger = logging.getLogger(__name__)
_KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

# Per-frame factor specs: name -> (dtype, trailing shape), e.g. {"head_pose": ("float32", (3,))}.
FactorSpec = Mapping[str, tuple[Any, Sequence[int]]]


class StoreError(MDVAEError):
    """A folder is not a usable store, or data handed to the store does not fit it."""


@dataclass(frozen=True)
class ClipInfo:
    """One row of the clip table. Frames ``start : start + length`` of every array."""

    index: int  # row in the table (the clip index that sample_windows returns)
    id: str
    start: int
    length: int
    speaker: str
    emotion: str | None  # one of mdvae.labels.EMOTIONS, or None (unlabelled, RAVDESS calm)
    level: int | None  # intensity 1..3, or None
    source: str  # where the clip came from (file path, archive member, generator seed)
    split: str  # "train", "val" or "test"
    extra: dict[str, Any] = field(default_factory=dict)  # source-specific labels

    @property
    def stop(self) -> int:
        return self.start + self.length

    def to_json(self) -> dict[str, Any]:
        row = {
            "id": self.id,
            "start": self.start,
            "length": self.length,
            "speaker": self.speaker,
            "emotion": self.emotion,
            "level": self.level,
            "source": self.source,
            "split": self.split,
        }
        if self.extra:
            row["extra"] = self.extra
        return row

    @classmethod
    def from_json(cls, index: int, row: Mapping[str, Any]) -> ClipInfo:
        return cls(
            index=index,
            id=str(row["id"]),
            start=int(row["start"]),
            length=int(row["length"]),
            speaker=str(row["speaker"]),
            emotion=row["emotion"],
            level=None if row["level"] is None else int(row["level"]),
            source=str(row["source"]),
            split=str(row["split"]),
            extra=dict(row.get("extra") or {}),
        )


@dataclass(frozen=True)
class Features:
    """Cached stage-1 encoder outputs for every frame of a store (read-only memmaps)."""

    key: str
    audio: np.ndarray  # (N, 512)
    visual: np.ndarray  # (N, 2048)
    info: dict[str, Any]

    def __iter__(self) -> Iterator[np.ndarray]:
        """Unpacks as ``audio, visual = store.features(key)``."""
        return iter((self.audio, self.visual))


# ---------------------------------------------------------------------------------------
# Splits


def assign_splits(
    speakers: Iterable[str],
    *,
    val: int | Sequence[str] = 0,
    test: int | Sequence[str] = 0,
    seed: int = 0,
) -> dict[str, str]:
    """Assign every speaker to exactly one of "train", "val", "test".

    ``val`` / ``test`` are either a number of held-out speakers or an explicit list of
    speaker names. Counted speakers are drawn in an order fixed by a hash of (seed, name),
    so the result does not depend on the order of ``speakers`` nor on the numpy version,
    and adding a speaker moves no other speaker.
    """
    names = sorted(set(speakers))
    known = set(names)
    split_of: dict[str, str] = {}
    for split, spec in (("test", test), ("val", val)):
        if isinstance(spec, str):
            raise StoreError(f"{split} speakers: give a count or a list of names, not {spec!r}")
        if isinstance(spec, int):
            continue
        unknown = sorted(set(spec) - known)
        if unknown:
            raise StoreError(f"{split} speakers {unknown} are not in the data (speakers: {names})")
        for name in spec:
            if split_of.get(name, split) != split:
                raise StoreError(f"speaker {name!r} is listed for both val and test")
            split_of[name] = split

    def order(name: str) -> str:
        return hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()

    pool = sorted((n for n in names if n not in split_of), key=order)
    for split, spec in (("test", test), ("val", val)):
        if isinstance(spec, int):
            if spec < 0:
                raise StoreError(f"{split} speakers: the count must be >= 0, got {spec}")
            if spec > len(pool):
                raise StoreError(
                    f"cannot hold out {spec} {split} speakers: only {len(pool)} of "
                    f"{len(names)} speakers are left"
                )
            for name in pool[:spec]:
                split_of[name] = split
            pool = pool[spec:]
    for name in pool:
        split_of[name] = "train"
    if names and "train" not in split_of.values():
        raise StoreError(
            f"no speaker is left for training ({len(names)} speakers, all held out): "
            "hold out fewer speakers"
        )
    return {name: split_of[name] for name in names}


# ---------------------------------------------------------------------------------------
# Format helpers shared by the reader and the writer


def _normalize_factor_spec(spec: FactorSpec | None) -> dict[str, dict[str, Any]]:
    if spec is None:
        return {}
    out = {}
    for name, entry in spec.items():
        if not re.fullmatch(r"[A-Za-z0-9_]+", name):
            raise StoreError(f"factor name {name!r}: use letters, digits and underscores")
        if isinstance(entry, Mapping):
            dtype, shape = entry["dtype"], entry["shape"]
        else:
            dtype, shape = entry
        out[name] = {"dtype": np.dtype(dtype).name, "shape": [int(s) for s in shape]}
    return dict(sorted(out.items()))


def factor_spec_from(factors: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """The factor spec of one clip's factors: each array's dtype and per-frame shape."""
    return _normalize_factor_spec(
        {name: (arr.dtype, arr.shape[1:]) for name, arr in factors.items()}
    )


def _row_bytes(dtype: str, shape: Sequence[int]) -> int:
    return int(np.dtype(dtype).itemsize * int(np.prod(shape, dtype=np.int64)))


def _arrays(meta: Mapping[str, Any]) -> dict[str, tuple[str, str, tuple[int, ...]]]:
    """file name -> (array name, dtype, per-frame shape) for every binary of a store."""
    out = {
        "frames.bin": ("frames", meta["frames"]["dtype"], tuple(meta["frames"]["shape"])),
        "power.bin": ("power", meta["power"]["dtype"], tuple(meta["power"]["shape"])),
    }
    for name, spec in meta["factors"].items():
        out[f"factors/{name}.bin"] = (name, spec["dtype"], tuple(spec["shape"]))
    return out


def _host() -> str:
    return platform.node() or "host"


def _writer_tag() -> str:
    """This writer's part of a temporary folder's name: host, process and a random part."""
    return f"{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _remove_abandoned_writes(root: Path, key: str) -> None:
    """Delete the temporary folders of `key` that a writer on this host left when it died
    (killed mid-write); those of live processes, and of other hosts, stay."""
    prefix, host = f".{key}.", _host()
    for path in root.glob(f".{glob.escape(key)}.*"):
        name = path.name
        if name == f".{key}.tmp" or name == f".{key}.old":  # this store's older layout
            shutil.rmtree(path, ignore_errors=True)
            continue
        if not (name.endswith(".tmp") or name.endswith(".old")):
            continue
        parts = name[len(prefix):-4].rsplit("-", 2)
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue
        if not _process_alive(int(parts[1])):
            shutil.rmtree(path, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        pass
    return True


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_meta(path: Path) -> dict[str, Any]:
    meta_path = path / "meta.json"
    if not path.is_dir():
        raise StoreError(f"{path} is not a folder; build a store with `python -m train.prepare`")
    if not meta_path.is_file():
        raise StoreError(
            f"{path} is not a data store (no meta.json); build one with "
            "`python -m train.prepare {synthetic,mead,ravdess,videos} --out FOLDER`"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise StoreError(f"{meta_path} cannot be read ({err}); rebuild the store") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise StoreError(f"{path} is not a {FORMAT} folder (meta.json has another format)")
    if meta.get("version") != VERSION:
        raise StoreError(
            f"{path} has store format version {meta.get('version')}, this code reads version "
            f"{VERSION}; rebuild it with `python -m train.prepare`"
        )
    if tuple(meta["frames"]["shape"]) != FRAME_SHAPE or meta["frames"]["dtype"] != "uint8":
        raise StoreError(f"{path}: frames are {meta['frames']}, expected uint8 {FRAME_SHAPE}")
    if tuple(meta["power"]["shape"]) != (POWER_BINS,) or meta["power"]["dtype"] != "float32":
        raise StoreError(f"{path}: power is {meta['power']}, expected float32 ({POWER_BINS},)")
    return meta


def _parse_table(data: bytes, path: Path) -> tuple[list[ClipInfo], int]:
    """Clips committed in ``clips.jsonl`` and the byte length they occupy.

    A last line without its newline is an interrupted write, not a committed clip.
    """
    committed = data.rfind(b"\n") + 1
    clips: list[ClipInfo] = []
    stop = 0
    for number, line in enumerate(data[:committed].splitlines(), start=1):
        try:
            clip = ClipInfo.from_json(len(clips), json.loads(line))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise StoreError(
                f"{path}/clips.jsonl line {number} is damaged ({err}); rebuild the store"
            ) from err
        if clip.start != stop or clip.length <= 0:
            raise StoreError(
                f"{path}/clips.jsonl line {number}: clip {clip.id!r} starts at frame "
                f"{clip.start} with length {clip.length}, expected start {stop}; the table "
                "is damaged, rebuild the store"
            )
        stop = clip.stop
        clips.append(clip)
    return clips, committed


# ---------------------------------------------------------------------------------------
# Writing


class StoreWriter:
    """Append clips to a store, creating it if needed; re-opening resumes.

    Use as a context manager. On open, bytes past the last committed clip (left by a crash
    or a kill) are truncated away, so ``has(clip_id)`` tells an importer exactly which
    clips are finished::

        with StoreWriter(out, factor_spec=spec, source_kind="synthetic") as writer:
            for item in items:
                if not writer.has(item.id):
                    writer.add(item.id, frames, power, speaker=..., split=..., ...)
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        factor_spec: FactorSpec | None = None,
        source_kind: str | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        spec = _normalize_factor_spec(factor_spec)
        if (self.path / "meta.json").exists():
            self.meta = _read_meta(self.path)
            if factor_spec is not None and spec != self.meta["factors"]:
                raise StoreError(
                    f"{self.path} stores factors {self.meta['factors']}, this writer would "
                    f"write {spec}; write to a new folder"
                )
            if source_kind not in (None, self.meta["source_kind"]):
                raise StoreError(
                    f"{self.path} holds a {self.meta['source_kind']!r} store, not "
                    f"{source_kind!r}; write to a new folder"
                )
        else:
            if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
                raise StoreError(
                    f"{self.path} exists and is not a data store; choose a new or empty folder"
                )
            self.meta = self._create(spec, source_kind or "unknown", info)
        self._lock = self._acquire_lock()
        self._files: dict[str, Any] = {}
        try:
            self._open_files()
        except BaseException:
            self.close()
            raise

    def _create(
        self, spec: dict[str, dict[str, Any]], source_kind: str, info: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        from mdvae import __version__

        (self.path / "factors").mkdir(parents=True, exist_ok=True)
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "uid": uuid.uuid4().hex,
            "source_kind": source_kind,
            "fps": 30,
            "frames": {"dtype": "uint8", "shape": list(FRAME_SHAPE)},
            "power": {"dtype": "float32", "shape": [POWER_BINS]},
            "factors": spec,
            "created": {
                "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "mdvae": __version__,
                "numpy": np.__version__,
                "python": platform.python_version(),
            },
            "info": dict(info or {}),
        }
        _write_json_atomic(self.path / "meta.json", meta)
        return meta

    def _acquire_lock(self) -> Any:
        handle = open(self.path / ".lock", "a")  # held until close()
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                handle.close()
                raise StoreError(
                    f"another process is writing {self.path}; wait for it or stop it"
                ) from err
        return handle

    def _open_files(self) -> None:
        table_path = self.path / "clips.jsonl"
        table_path.touch()
        with open(table_path, "r+b") as f:
            clips, committed = _parse_table(f.read(), self.path)
            f.truncate(committed)
        self.clips = clips
        self._ids = {clip.id for clip in clips}
        self.n_frames = clips[-1].stop if clips else 0
        self._arrays = _arrays(self.meta)
        for name, (_, dtype, shape) in self._arrays.items():
            file_path = self.path / name
            file_path.touch()
            handle = open(file_path, "r+b")  # closed in close()
            self._files[name] = handle
            size = os.fstat(handle.fileno()).st_size
            expected = self.n_frames * _row_bytes(dtype, shape)
            if size < expected:
                raise StoreError(
                    f"{file_path} holds {size} bytes but clips.jsonl commits {self.n_frames} "
                    f"frames ({expected} bytes); the store is damaged, rebuild it"
                )
            handle.truncate(expected)  # drop a clip that was written but never committed
            handle.seek(expected)
        self._table = open(table_path, "a")  # closed in close()

    def has(self, clip_id: str) -> bool:
        """True when the clip is committed (its data and table line are on disk)."""
        return clip_id in self._ids

    def add(
        self,
        clip_id: str,
        frames: np.ndarray,
        power: np.ndarray,
        *,
        speaker: str,
        emotion: str | None,
        level: int | None,
        source: str,
        split: str,
        factors: Mapping[str, np.ndarray] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> ClipInfo:
        """Append one clip: frames (T, 64, 64, 3) uint8, power (T, 513), factors (T, ...)."""
        if self.has(clip_id):
            raise StoreError(f"clip {clip_id!r} is already in {self.path}")
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != FRAME_SHAPE:
            raise StoreError(
                f"clip {clip_id!r}: frames must be uint8 (T, 64, 64, 3), got "
                f"{frames.dtype} {frames.shape}"
            )
        length = frames.shape[0]
        if length == 0:
            raise StoreError(f"clip {clip_id!r} has no frames")
        if power.shape != (length, POWER_BINS):
            raise StoreError(
                f"clip {clip_id!r}: power must be ({length}, {POWER_BINS}) to match the "
                f"frames, got {power.shape}"
            )
        power = np.asarray(power, dtype=np.float32)
        if not np.all(np.isfinite(power)) or power.min() < 0:
            raise StoreError(f"clip {clip_id!r}: power spectrogram must be finite and >= 0")
        if split not in SPLITS:
            raise StoreError(f"clip {clip_id!r}: split {split!r} is not one of {SPLITS}")
        if emotion is not None and emotion not in EMOTION_INDEX:
            raise StoreError(f"clip {clip_id!r}: emotion {emotion!r} is not one of {EMOTIONS}")
        arrays = {"frames.bin": frames, "power.bin": power}
        arrays.update(self._check_factors(clip_id, length, factors or {}))

        # Data first, table line last: the line is the commit.
        for name, arr in arrays.items():
            handle = self._files[name]
            handle.write(np.ascontiguousarray(arr).data)
        for name in arrays:
            self._files[name].flush()
            os.fsync(self._files[name].fileno())
        info = ClipInfo(
            index=len(self.clips),
            id=clip_id,
            start=self.n_frames,
            length=length,
            speaker=str(speaker),
            emotion=emotion,
            level=None if level is None else int(level),
            source=str(source),
            split=split,
            extra=dict(extra or {}),
        )
        self._commit(info)
        self.clips.append(info)
        self._ids.add(clip_id)
        self.n_frames = info.stop
        return info

    def _check_factors(
        self, clip_id: str, length: int, factors: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        spec = self.meta["factors"]
        if set(factors) != set(spec):
            raise StoreError(
                f"clip {clip_id!r}: factors {sorted(factors)} do not match the store's "
                f"{sorted(spec)}"
            )
        out = {}
        for name, arr in factors.items():
            arr = np.asarray(arr)
            want = (length, *spec[name]["shape"])
            if arr.shape != want:
                raise StoreError(
                    f"clip {clip_id!r}: factor {name!r} has shape {arr.shape}, expected {want}"
                )
            out[f"factors/{name}.bin"] = arr.astype(spec[name]["dtype"], copy=False)
        return out

    def _commit(self, info: ClipInfo) -> None:
        self._table.write(json.dumps(info.to_json(), sort_keys=True) + "\n")
        self._table.flush()
        os.fsync(self._table.fileno())

    def close(self) -> None:
        for handle in list(self._files.values()) + [getattr(self, "_table", None)]:
            if handle is not None and not handle.closed:
                handle.close()
        if self._lock is not None and not self._lock.closed:
            self._lock.close()  # closing the file releases the flock

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------
# Reading


class Store:
    """Read a store: memory-mapped arrays, the clip table, windows for training.

    ``splits`` (speaker -> split, e.g. from :func:`assign_splits`) overrides the splits
    recorded in the table, for experiments that hold out other speakers.
    """

    def __init__(self, path: str | os.PathLike, *, splits: Mapping[str, str] | None = None) -> None:
        self.path = Path(path)
        self.meta = _read_meta(self.path)
        # Clips past the last complete table line (a writer still running, or killed) are
        # not committed and are ignored, as are their bytes.
        self.clips, _ = _parse_table((self.path / "clips.jsonl").read_bytes(), self.path)
        self.n_frames = self.clips[-1].stop if self.clips else 0
        if splits is not None:
            self.clips = self._resplit(splits)
        arrays = {}
        for file_name, (name, dtype, shape) in _arrays(self.meta).items():
            arrays[name] = self._map(file_name, dtype, shape)
        self.frames: np.ndarray = arrays.pop("frames")  # (N, 64, 64, 3) uint8
        self.power: np.ndarray = arrays.pop("power")  # (N, 513) float32
        self.factors: dict[str, np.ndarray] = arrays  # name -> (N, ...)
        self._windows: dict[tuple[str, int], tuple[np.ndarray, ...]] = {}
        self._speaker_index = {s: i for i, s in enumerate(self.speakers())}
        self._emotion = np.array(
            [-1 if c.emotion is None else EMOTION_INDEX[c.emotion] for c in self.clips],
            dtype=np.int64,
        )
        self._level = np.array([c.level or 0 for c in self.clips], dtype=np.int64)
        self._speaker = np.array([self._speaker_index[c.speaker] for c in self.clips], np.int64)

    def _resplit(self, splits: Mapping[str, str]) -> list[ClipInfo]:
        missing = sorted({c.speaker for c in self.clips} - set(splits))
        if missing:
            raise StoreError(f"splits override does not name speakers {missing}")
        bad = sorted({s for s in splits.values() if s not in SPLITS})
        if bad:
            raise StoreError(f"splits override uses {bad}; splits are {SPLITS}")
        return [replace(c, split=splits[c.speaker]) for c in self.clips]

    def _map(self, file_name: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
        file_path = self.path / file_name
        need = self.n_frames * _row_bytes(dtype, shape)
        size = file_path.stat().st_size if file_path.exists() else -1
        if size < need:
            raise StoreError(
                f"{file_path} holds {max(size, 0)} bytes but clips.jsonl needs {need} "
                f"({self.n_frames} frames); the store is incomplete or damaged, rebuild it"
            )
        if self.n_frames == 0:  # numpy cannot map an empty range
            return np.zeros((0, *shape), dtype=dtype)
        return np.memmap(file_path, dtype=dtype, mode="r", shape=(self.n_frames, *shape))

    # -- table -----------------------------------------------------------------------------

    @property
    def source_kind(self) -> str:
        return self.meta["source_kind"]

    def speakers(self, split: str | None = None) -> list[str]:
        """Sorted speaker names, of one split or of the whole store."""
        return sorted({c.speaker for c in self.clips if split is None or c.split == split})

    def split_clips(self, split: str) -> list[ClipInfo]:
        if split not in SPLITS:
            raise StoreError(f"split {split!r} is not one of {SPLITS}")
        return [c for c in self.clips if c.split == split]

    def clip(self, i: int) -> dict[str, Any]:
        """Clip ``i`` as read-only views: frames, power, factors (name -> array), info."""
        info = self.clips[i]
        rows = slice(info.start, info.stop)
        return {
            "frames": self.frames[rows],
            "power": self.power[rows],
            "factors": {name: arr[rows] for name, arr in self.factors.items()},
            "info": info,
        }

    def iter_clips(self, split: str | None = None) -> Iterator[dict[str, Any]]:
        """Whole clips in table order (all of them, or one split's)."""
        for info in self.clips:
            if split is None or info.split == split:
                yield self.clip(info.index)

    # -- training windows ------------------------------------------------------------------

    def _window_index(self, split: str, T: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        key = (split, T)
        if key not in self._windows:
            clips = [c for c in self.split_clips(split) if c.length >= T]
            index = np.array([c.index for c in clips], dtype=np.int64)
            counts = np.array([c.length - T + 1 for c in clips], dtype=np.int64)
            self._windows[key] = (index, counts, np.cumsum(counts))
        return self._windows[key]

    def n_windows(self, split: str, T: int) -> int:
        """How many distinct T-frame windows the split holds."""
        _, _, cumulative = self._window_index(split, T)
        return int(cumulative[-1]) if len(cumulative) else 0

    def _require_windows(self, split: str, T: int) -> tuple[np.ndarray, ...]:
        index, counts, cumulative = self._window_index(split, T)
        if not len(index):
            raise StoreError(
                f"split {split!r} of {self.path} has no clip of at least {T} frames; "
                "use shorter windows or another split"
            )
        return index, counts, cumulative

    def window_starts(self, split: str, T: int) -> np.ndarray:
        """Global frame index of the first frame of every T-frame window of the split, in
        table order: the windows `sample_windows` draws from, as rows of the store's arrays
        (and of its cached features)."""
        index, counts, _ = self._require_windows(split, T)
        return np.concatenate(
            [np.arange(self.clips[i].start, self.clips[i].start + n) for i, n in zip(index, counts)]
        )

    def sample_windows(
        self, split: str, T: int, batch_size: int, rng: np.random.Generator
    ) -> dict[str, Any]:
        """Random T-frame windows, uniform over all windows of the split's clips.

        A clip of length L holds L - T + 1 windows, so long clips are drawn more often;
        clips shorter than T are never drawn. Returns numpy arrays:
        frames (B, T, 64, 64, 3) uint8, power (B, T, 513) float32,
        factors {name: (B, T, ...)}, clip (B,) table index, start (B,) first frame within
        the clip, speaker (B,) index into ``speakers()``, emotion (B,) index into
        mdvae.labels.EMOTIONS or -1, level (B,) 1..3 or 0.
        """
        if T < 1 or batch_size < 1:
            raise StoreError(f"window length and batch size must be >= 1, got {T}, {batch_size}")
        index, counts, cumulative = self._require_windows(split, T)
        window = rng.integers(0, cumulative[-1], size=batch_size)
        k = np.searchsorted(cumulative, window, side="right")
        offset = window - (cumulative[k] - counts[k])
        return self.gather(index[k], offset, T)

    def gather(self, clips: np.ndarray, offsets: np.ndarray, T: int) -> dict[str, Any]:
        """The T-frame windows starting ``offsets[b]`` frames into clip ``clips[b]``."""
        clips = np.asarray(clips, dtype=np.int64)
        offsets = np.asarray(offsets, dtype=np.int64)
        B = len(clips)
        frames = np.empty((B, T, *FRAME_SHAPE), dtype=np.uint8)
        power = np.empty((B, T, POWER_BINS), dtype=np.float32)
        factors = {
            name: np.empty((B, T, *arr.shape[1:]), dtype=arr.dtype)
            for name, arr in self.factors.items()
        }
        for b in range(B):
            info = self.clips[clips[b]]
            if offsets[b] < 0 or offsets[b] + T > info.length:
                raise StoreError(
                    f"window of {T} frames at {offsets[b]} does not fit clip {info.id!r} "
                    f"({info.length} frames)"
                )
            rows = slice(info.start + offsets[b], info.start + offsets[b] + T)
            frames[b] = self.frames[rows]
            power[b] = self.power[rows]
            for name, arr in self.factors.items():
                factors[name][b] = arr[rows]
        return {
            "frames": frames,
            "power": power,
            "factors": factors,
            "clip": clips,
            "start": offsets,
            "speaker": self._speaker[clips],
            "emotion": self._emotion[clips],
            "level": self._level[clips],
        }

    # -- cached features -------------------------------------------------------------------

    def feature_keys(self) -> list[str]:
        root = self.path / "features"
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir()
                      if not p.name.startswith(".") and (p / "meta.json").is_file())

    def features(self, key: str) -> Features | None:
        """Cached stage-1 features stored under ``key`` (read-only memmaps), or None when
        there are none for the store as it is now (never computed, or computed before the
        store grew): the caller computes them and calls :meth:`write_features`."""
        _check_key(key)
        folder = self.path / "features" / key
        meta_path = folder / "meta.json"
        if not meta_path.is_file():
            return None
        meta = json.loads(meta_path.read_text())
        if meta.get("store_uid") != self.meta["uid"] or meta.get("n_frames") != self.n_frames:
            logger.warning(
                "features %r of %s were computed for %s frames, the store now has %d: "
                "they must be recomputed",
                key,
                self.path,
                meta.get("n_frames"),
                self.n_frames,
            )
            return None
        arrays = {}
        for name in ("audio", "visual"):
            spec = meta[name]
            file_path = folder / f"{name}.bin"
            need = self.n_frames * _row_bytes(spec["dtype"], [spec["dim"]])
            if file_path.stat().st_size != need:
                raise StoreError(f"{file_path} has the wrong size; delete {folder} and recompute")
            arrays[name] = np.memmap(
                file_path, dtype=spec["dtype"], mode="r", shape=(self.n_frames, spec["dim"])
            )
        return Features(key=key, audio=arrays["audio"], visual=arrays["visual"], info=meta["info"])

    @contextlib.contextmanager
    def feature_writer(
        self,
        key: str,
        *,
        audio_dim: int = 512,
        visual_dim: int = 2048,
        dtype: str = "float16",
        info: Mapping[str, Any] | None = None,
    ) -> Iterator[Features]:
        """Fill features chunk by chunk: yields writable (N, dim) memmaps in a temporary
        folder that replaces ``features/<key>`` only when the block exits without error.

        ``key`` is the caller's name for the encoders, e.g. a hash of the stage-1 weights.
        Values must fit float16 (|x| <= 65504) unless ``dtype="float32"``.
        """
        _check_key(key)
        if dtype not in FEATURE_DTYPES:
            raise StoreError(f"feature dtype must be one of {FEATURE_DTYPES}, got {dtype!r}")
        if self.n_frames == 0:
            raise StoreError(f"{self.path} has no frames to compute features for")
        root = self.path / "features"
        root.mkdir(exist_ok=True)
        _remove_abandoned_writes(root, key)
        tag = _writer_tag()
        tmp, old = root / f".{key}.{tag}.tmp", root / f".{key}.{tag}.old"
        tmp.mkdir()
        try:
            dims = {"audio": audio_dim, "visual": visual_dim}
            maps = {
                name: np.memmap(
                    tmp / f"{name}.bin", dtype=dtype, mode="w+", shape=(self.n_frames, dim)
                )
                for name, dim in dims.items()
            }
            yield Features(
                key=key, audio=maps["audio"], visual=maps["visual"], info=dict(info or {})
            )
            for arr in maps.values():
                arr.flush()
            del maps
            meta = {
                "key": key,
                "store_uid": self.meta["uid"],
                "n_frames": self.n_frames,
                "audio": {"dim": audio_dim, "dtype": dtype},
                "visual": {"dim": visual_dim, "dtype": dtype},
                "info": dict(info or {}),
            }
            _write_json_atomic(tmp / "meta.json", meta)
            # Other processes may write the same key at the same time (two runs that both
            # found it missing): each writes its own folder, and one copy stands.
            # The same key means the same encoders, so every copy holds the same features.
            final = root / key
            try:
                os.replace(final, old)  # an earlier copy, moved aside
            except FileNotFoundError:
                pass
            try:
                os.replace(tmp, final)
            except OSError:
                if not (final / "meta.json").is_file():
                    raise
                # another writer's copy landed between the two moves: it stands
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)

    def write_features(
        self,
        key: str,
        audio: np.ndarray,
        visual: np.ndarray,
        *,
        dtype: str = "float16",
        info: Mapping[str, Any] | None = None,
    ) -> Features:
        """Store audio (N, Da) and visual (N, Dv) features for every frame under ``key``."""
        audio, visual = np.asarray(audio), np.asarray(visual)
        for name, arr in (("audio", audio), ("visual", visual)):
            if arr.ndim != 2 or arr.shape[0] != self.n_frames:
                raise StoreError(f"{name} features must be ({self.n_frames}, dim), got {arr.shape}")
            if dtype == "float16" and arr.size and float(np.abs(arr).max()) > _FLOAT16_MAX:
                raise StoreError(
                    f"{name} features exceed the float16 range; write them with dtype='float32'"
                )
        with self.feature_writer(
            key, audio_dim=audio.shape[1], visual_dim=visual.shape[1], dtype=dtype, info=info
        ) as out:
            out.audio[:] = audio
            out.visual[:] = visual
        written = self.features(key)
        assert written is not None
        return written


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not _KEY_PATTERN.match(key):
        raise StoreError(
            f"feature key {key!r}: use up to 128 letters, digits, '_', '-' or '.' "
            "(e.g. a hash of the stage-1 weights)"
        )
