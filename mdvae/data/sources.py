"""Find the clips of a dataset as it is distributed: MEAD, RAVDESS, or any video folder.

Listing only reads names (and archive headers), never decodes media; ``train.prepare``
turns the items into store clips. Files may sit in folders or inside archives (.tar,
.tar.gz, .tgz, .tar.bz2, .tar.xz, .zip), at any depth: an archive's members are seen at
the path ``<archive path without its suffix>/<member name>``, so a speaker shipped as
``M003.tar``, or as ``M003/video.tar`` + ``M003/audio.tar``, looks the same as the
extracted folders. Uncompressed tars and zips are read in place; a compressed tar is read
from its start for every member, so extract big compressed tars first.

- MEAD: ``SPK/video/front/<emotion>/level_<n>/NNN.mp4`` with its audio at
  ``SPK/audio/<emotion>/level_<n>/NNN.m4a``. Only the frontal view. Paths are matched by
  their suffix, case-insensitively, so extra nesting (``SPK/SPK/video/...``) and
  capitalised folders (``Video/Front/Angry/Level_1``) work. The speaker is the first path
  component that looks like a MEAD id (M003, w009, ...), else the top-level folder name.
  A video without an audio file gets ``audio=None`` and a note: its own audio track is
  used if it has one, otherwise prepare reports it as skipped ("no audio file").
- RAVDESS: ``MM-VV-EE-II-SS-RR-AA.mp4``. Only full audio-video (modality 01) speech
  (vocal channel 01) is kept; video-only (02) files, audio-only (03) files and songs are
  counted as ignored. Emotion through ``mdvae.labels.RAVDESS_EMOTIONS`` (calm has no MEAD
  counterpart: emotion None, ``extra["label"] == "calm"``); intensity 01 normal -> level 1,
  02 strong -> level 2; actor AA -> speaker ``ravdess_AA``; the audio is the video's own.
- videos: every .mp4/.mov/.webm/.mkv/.avi; speaker = the folder holding the file; no labels.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tarfile
import tempfile
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from mdvae.errors import MDVAEError
from mdvae.labels import EMOTIONS, RAVDESS_EMOTIONS

SOURCES: tuple[str, ...] = ("mead", "ravdess", "videos")
VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".mov", ".webm", ".mkv", ".avi")
AUDIO_SUFFIXES: tuple[str, ...] = (".m4a", ".wav", ".aac", ".mp3")
_TAR_SUFFIXES: tuple[str, ...] = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
ARCHIVE_SUFFIXES: tuple[str, ...] = (*_TAR_SUFFIXES, ".zip")


class SourceError(MDVAEError):
    """A dataset folder cannot be listed."""


@dataclass(frozen=True)
class MediaRef:
    """A media file on disk, or a member of an archive."""

    path: Path  # the file itself, or the archive holding the member
    member: str | None = None  # member name inside the archive
    offset: int | None = None  # where the member's bytes start in an uncompressed tar
    size: int | None = None

    def __str__(self) -> str:
        return str(self.path) if self.member is None else f"{self.path}:{self.member}"

    @contextlib.contextmanager
    def local(self, tmpdir: str | os.PathLike | None = None) -> Iterator[Path]:
        """A path on disk holding the media: the file itself, or the archive member
        copied to a temporary file (same suffix) that is removed afterwards."""
        if self.member is None:
            yield self.path
            return
        fd, tmp = tempfile.mkstemp(suffix=PurePosixPath(self.member).suffix, dir=tmpdir)
        try:
            with os.fdopen(fd, "wb") as out:
                self._copy_member(out)
            yield Path(tmp)
        finally:
            os.unlink(tmp)

    def _copy_member(self, out: Any) -> None:
        if self.offset is not None:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                left = self.size or 0
                while left:
                    chunk = f.read(min(left, 1 << 20))
                    if not chunk:
                        raise SourceError(f"{self} is truncated")
                    out.write(chunk)
                    left -= len(chunk)
        elif _archive_kind(self.path) == "zip":
            with zipfile.ZipFile(self.path) as z, z.open(self.member) as member:
                shutil.copyfileobj(member, out)
        else:
            with tarfile.open(self.path) as t:
                member = t.extractfile(self.member)
                if member is None:
                    raise SourceError(f"{self} is not a regular file")
                shutil.copyfileobj(member, out)


@dataclass(frozen=True)
class SourceItem:
    """One clip to import."""

    clip_id: str  # unique within the source; the store's clip id
    video: MediaRef
    audio: MediaRef | None  # separate audio file, or None: use the video's own track
    speaker: str
    emotion: str | None  # one of mdvae.labels.EMOTIONS, or None
    level: int | None
    name: str  # path relative to the dataset root, for reports
    extra: dict[str, Any] = field(default_factory=dict)  # statement, RAVDESS label, ...
    note: str | None = None  # known problem, said when the clip fails ("no audio file")


@dataclass
class SourceListing:
    items: list[SourceItem]
    skipped: list[tuple[str, str]]  # (name, reason): files that look like clips but cannot be
    ignored: Counter = field(default_factory=Counter)  # reason -> count of files left out


def list_source(kind: str, root: str | os.PathLike) -> SourceListing:
    """List the clips of dataset ``kind`` ("mead", "ravdess", "videos") under ``root``."""
    listers = {"mead": list_mead, "ravdess": list_ravdess, "videos": list_videos}
    if kind not in listers:
        raise SourceError(f"unknown source {kind!r}; choose one of {SOURCES}")
    return listers[kind](root)


# ---------------------------------------------------------------------------------------
# Walking folders and archives


def _archive_kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith(_TAR_SUFFIXES):
        return "tar"
    return None


def _strip_archive_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in ARCHIVE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _hidden(part: str) -> bool:
    # dot files, and the resource-fork folders macOS puts into archives
    return part.startswith(".") or part == "__MACOSX"


def _archive_members(path: Path) -> Iterator[tuple[str, MediaRef]]:
    if _archive_kind(path) == "zip":
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not info.is_dir():
                    yield info.filename, MediaRef(path, info.filename)
        return
    try:  # uncompressed: members are read in place from their byte offset
        archive, in_place = tarfile.open(path, "r:"), True
    except tarfile.ReadError:
        archive, in_place = tarfile.open(path, "r:*"), False
    with archive:
        for info in archive:
            if not info.isfile():
                continue
            if in_place and not info.sparse:
                yield info.name, MediaRef(path, info.name, info.offset_data, info.size)
            else:
                yield info.name, MediaRef(path, info.name)


def walk_media(root: str | os.PathLike) -> Iterator[tuple[str, MediaRef]]:
    """Every file under ``root`` as (virtual path relative to root, ref), archives opened.

    Folders are walked in sorted order so listings are reproducible. ``root`` may itself be
    an archive. Members that are archives themselves are yielded as they are (not opened).
    """
    root = Path(root)
    if not root.exists():
        raise SourceError(f"{root} does not exist")
    if root.is_file():
        if _archive_kind(root) is None:
            raise SourceError(f"{root} is a file, not a folder or an archive")
        yield from _walk_archive(root, _strip_archive_suffix(root.name))
        return
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not _hidden(d))
        rel_folder = Path(folder).relative_to(root).as_posix()
        for name in sorted(files):
            if _hidden(name):
                continue
            path = Path(folder) / name
            rel = name if rel_folder == "." else f"{rel_folder}/{name}"
            if _archive_kind(path) is None:
                yield rel, MediaRef(path)
            else:
                yield from _walk_archive(path, _strip_archive_suffix(rel))


def _walk_archive(path: Path, prefix: str) -> Iterator[tuple[str, MediaRef]]:
    try:
        members = sorted(_archive_members(path), key=lambda m: m[0])
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as err:
        raise SourceError(f"{path} cannot be read as an archive ({err})") from err
    for member, ref in members:
        parts = PurePosixPath(member).parts
        if any(_hidden(p) for p in parts):
            continue
        yield f"{prefix}/{PurePosixPath(*parts).as_posix()}", ref


# ---------------------------------------------------------------------------------------
# MEAD

_MEAD_VIDEO = re.compile(
    r"(?:^|/)video/(?P<view>[^/]+)/(?P<emotion>[^/]+)/level[_ -]?(?P<level>\d+)/"
    r"(?P<stem>[^/]+)\.mp4$",
    re.IGNORECASE,
)
_MEAD_AUDIO = re.compile(
    r"(?:^|/)audio/(?P<emotion>[^/]+)/level[_ -]?(?P<level>\d+)/(?P<stem>[^/]+)\."
    r"(?:m4a|wav|aac|mp3)$",
    re.IGNORECASE,
)
_MEAD_SPEAKER = re.compile(r"^[MW]\d{3}$", re.IGNORECASE)
_MEAD_EMOTION_ALIASES = {
    "anger": "angry",
    "disgust": "disgusted",
    "fearful": "fear",
    "happiness": "happy",
    "sadness": "sad",
    "surprise": "surprised",
}


def _mead_speaker(root: Path, prefix: str) -> str:
    parts = [p for p in prefix.split("/") if p]
    for part in [*parts, root.name]:
        if _MEAD_SPEAKER.match(part):
            return part.upper()
    return parts[0] if parts else _strip_archive_suffix(root.name)


def _mead_emotion(folder: str) -> str | None:
    name = folder.lower()
    name = _MEAD_EMOTION_ALIASES.get(name, name)
    return name if name in EMOTIONS else None


def list_mead(root: str | os.PathLike) -> SourceListing:
    """MEAD frontal-view clips under ``root`` (see the module docstring for the layout)."""
    root = Path(root)
    videos: list[tuple[str, MediaRef, re.Match]] = []
    audios: dict[tuple[str, str, int, str], MediaRef] = {}
    skipped: list[tuple[str, str]] = []
    ignored: Counter = Counter()
    for rel, ref in walk_media(root):
        if ref.member is not None and _archive_kind(Path(rel)) is not None:
            skipped.append((rel, "archive inside an archive: extract the outer one first"))
            continue
        if match := _MEAD_VIDEO.search(rel):
            if match["view"].lower() != "front":
                ignored["non-frontal view"] += 1
            else:
                videos.append((rel, ref, match))
        elif match := _MEAD_AUDIO.search(rel):
            emotion = _mead_emotion(match["emotion"])
            speaker = _mead_speaker(root, rel[: match.start()])
            key = (speaker, emotion or match["emotion"], int(match["level"]), match["stem"])
            if key not in audios or rel.lower().endswith(".m4a"):  # MEAD's own is m4a
                audios[key] = ref
        else:
            ignored["not a MEAD video or audio file"] += 1

    items: dict[str, SourceItem] = {}
    for rel, ref, match in sorted(videos, key=lambda v: v[0]):  # of duplicates, keep the first
        emotion = _mead_emotion(match["emotion"])
        if emotion is None:
            skipped.append((rel, f"unknown emotion folder {match['emotion']!r}"))
            continue
        level = int(match["level"])
        speaker = _mead_speaker(root, rel[: match.start()])
        clip_id = f"{speaker}/{emotion}/level_{level}/{match['stem']}"
        if clip_id in items:
            skipped.append((rel, f"duplicate of {items[clip_id].name}"))
            continue
        audio = audios.get((speaker, emotion, level, match["stem"]))
        items[clip_id] = SourceItem(
            clip_id=clip_id,
            video=ref,
            audio=audio,
            speaker=speaker,
            emotion=emotion,
            level=level,
            name=rel,
            extra={"sentence": match["stem"]},
            note=None if audio is not None else "no audio file",
        )
    if not items and not skipped:
        raise SourceError(
            f"no MEAD clips under {root}: expected SPK/video/front/<emotion>/level_<n>/NNN.mp4 "
            "in folders or tar archives"
        )
    return SourceListing(sorted(items.values(), key=lambda i: i.clip_id), skipped, ignored)


# ---------------------------------------------------------------------------------------
# RAVDESS

_RAVDESS_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)\.[A-Za-z0-9]+$")
RAVDESS_LABELS: dict[str, str] = {
    "01": "neutral",
    "02": "calm",
    "03": "happy",
    "04": "sad",
    "05": "angry",
    "06": "fearful",
    "07": "disgust",
    "08": "surprised",
}


def list_ravdess(root: str | os.PathLike) -> SourceListing:
    """RAVDESS full audio-video speech clips under ``root`` (any folders or zips)."""
    root = Path(root)
    items: dict[str, SourceItem] = {}
    skipped: list[tuple[str, str]] = []
    ignored: Counter = Counter()
    for rel, ref in walk_media(root):
        name = PurePosixPath(rel).name
        match = _RAVDESS_NAME.match(name)
        if match is None:
            ignored["not a RAVDESS file name"] += 1
            continue
        modality, channel, emotion, intensity, statement, repetition, actor = match.groups()
        if modality == "03" or not name.lower().endswith(VIDEO_SUFFIXES):
            ignored["audio-only (modality 03)"] += 1
            continue
        if modality == "02":
            ignored["video-only (modality 02)"] += 1
            continue
        if channel == "02":
            ignored["song (vocal channel 02)"] += 1
            continue
        problems = []
        if modality != "01":
            problems.append(f"modality {modality}")
        if channel != "01":
            problems.append(f"vocal channel {channel}")
        if emotion not in RAVDESS_LABELS:
            problems.append(f"emotion {emotion}")
        if intensity not in ("01", "02"):
            problems.append(f"intensity {intensity}")
        if problems:
            skipped.append((rel, "unknown RAVDESS code: " + ", ".join(problems)))
            continue
        clip_id = PurePosixPath(name).stem
        if clip_id in items:
            skipped.append((rel, f"duplicate of {items[clip_id].name}"))
            continue
        items[clip_id] = SourceItem(
            clip_id=clip_id,
            video=ref,
            audio=None,
            speaker=f"ravdess_{actor}",
            emotion=RAVDESS_EMOTIONS[emotion],
            level=int(intensity),  # 01 normal -> 1, 02 strong -> 2
            name=rel,
            extra={
                "label": RAVDESS_LABELS[emotion],
                "intensity": "normal" if intensity == "01" else "strong",
                "statement": int(statement),
                "repetition": int(repetition),
                "actor": int(actor),
                "gender": "male" if int(actor) % 2 else "female",
            },
        )
    if not items and not skipped:
        raise SourceError(
            f"no RAVDESS audio-video speech clips (01-01-EE-II-SS-RR-AA.mp4) under {root}"
        )
    return SourceListing(sorted(items.values(), key=lambda i: i.clip_id), skipped, ignored)


# ---------------------------------------------------------------------------------------
# Any folder of videos


def list_videos(root: str | os.PathLike) -> SourceListing:
    """Every video file under ``root``; the speaker is the folder (or archive) holding it."""
    root = Path(root)
    items = []
    ignored: Counter = Counter()
    top = _strip_archive_suffix(root.name)
    for rel, ref in walk_media(root):
        path = PurePosixPath(rel)
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            ignored["not a video file"] += 1
            continue
        speaker = path.parent.name or top
        items.append(
            SourceItem(
                clip_id=rel,
                video=ref,
                audio=None,
                speaker=speaker,
                emotion=None,
                level=None,
                name=rel,
            )
        )
    if not items:
        raise SourceError(f"no video files ({', '.join(VIDEO_SUFFIXES)}) under {root}")
    return SourceListing(sorted(items, key=lambda i: i.clip_id), [], ignored)
