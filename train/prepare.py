"""Build a data store (mdvae.data.store) from the synthetic benchmark or a talking-face dataset.

    python -m train.prepare synthetic --out data/synthetic --speakers 16 --clips-per-speaker 44
    python -m train.prepare mead --root /data/MEAD --out data/mead --val-speakers M003,W009 \\
        --test-speakers 4
    python -m train.prepare ravdess --root /data/RAVDESS --out data/ravdess
    python -m train.prepare videos --root my_clips/ --out data/mine --val-speakers 0 \\
        --test-speakers 0

Work is spread over --workers processes; clips are written in a fixed order, so the store
does not depend on the number of workers. Stop it any time (Ctrl-C, kill) and run the same
command again: finished clips are kept and skipped. Files that cannot be used (no audio, no
face, too short, unreadable) are skipped and listed at the end and in
STORE/prepare_report.json. Speakers are split into train/val/test: --val-speakers and
--test-speakers take a count (drawn deterministically from --seed) or a comma-separated
list of names.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mdvae.data.sources import SourceItem, SourceListing, list_source
from mdvae.data.store import Store, StoreWriter, assign_splits, factor_spec_from
from mdvae.errors import MDVAEError
from mdvae.labels import EMOTIONS, LEVELS

# Flags that change what a clip contains: a resumed run must use the same values.
IDENTITY_FLAGS = {
    "synthetic": ("frames", "seed", "first_speaker", "emotions"),
    "real": ("max_seconds", "min_seconds", "face_backend"),
}
# Synthetic clips cycle through these (emotion, level) pairs, level by level, so even a
# handful of clips per speaker covers every emotion; neutral only has level 1, as in MEAD.
SYNTHETIC_COMBOS: tuple[tuple[str, int], ...] = tuple(
    (emotion, level)
    for level in LEVELS
    for emotion in EMOTIONS
    if emotion != "neutral" or level == 1
)


class PrepareError(MDVAEError):
    """The prepare command cannot run as asked."""


@dataclass(frozen=True)
class Job:
    """One clip to produce: its table row and what the worker needs to make it."""

    clip_id: str
    name: str  # for reports
    speaker: str
    emotion: str | None
    level: int | None
    source: str
    extra: dict[str, Any]
    payload: Any  # SyntheticSpec or LoadSpec


@dataclass(frozen=True)
class SyntheticSpec:
    speaker: int
    emotion: str
    level: int
    seed: int
    n_frames: int


@dataclass(frozen=True)
class LoadSpec:
    item: SourceItem
    face_backend: str
    min_seconds: float
    max_seconds: float | None

    @property
    def note(self) -> str | None:
        return self.item.note


@dataclass
class Report:
    source: str
    out: str
    root: str | None = None
    items: int = 0
    already_in_store: int = 0
    added: int = 0
    frames_added: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    ignored: dict[str, int] = field(default_factory=dict)
    interrupted: bool = False
    seconds: float = 0.0
    frames_per_second: float = 0.0
    store: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------
# Work done in the worker processes

# Each process's face croppers by backend, built once (they load detector weights).
_CROPPERS: dict[str, Any] = {}


def _init_worker(face_backend: str | None, in_process: bool) -> None:
    if not in_process:
        # The parent handles Ctrl-C and stops the pool; terminate() must be able to kill.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        import torch

        torch.set_num_threads(1)  # one process per core is the parallelism
    if face_backend is not None and face_backend not in _CROPPERS:
        from mdvae.media.face import FaceCropper

        _CROPPERS[face_backend] = FaceCropper(backend=face_backend)


def _work(job: Job) -> tuple[str, Any]:
    """("ok", (frames, power, factors, extra)) or ("skip", reason)."""
    try:
        if isinstance(job.payload, SyntheticSpec):
            return "ok", _make_synthetic(job.payload)
        return "ok", _load_item(job.payload)
    except MDVAEError as err:
        note = getattr(job.payload, "note", None)
        return "skip", f"{note}; {err}" if note else str(err)
    except Exception as err:  # a long import should outlive one bad file; reported by type
        return "skip", f"{type(err).__name__}: {err}"


def _make_synthetic(spec: SyntheticSpec) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    from mdvae.data.synthetic import generate_clip
    from mdvae.media.audio import align_streams, power_spectrogram

    clip = generate_clip(spec.speaker, spec.emotion, spec.level, spec.seed, n_frames=spec.n_frames)
    frames, power = align_streams(clip.frames, power_spectrogram(clip.audio))
    factors = {name: np.asarray(value)[: len(frames)] for name, value in clip.factors.items()}
    return frames, power, factors, {}


def _load_item(spec: LoadSpec) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    from mdvae.media.clips import load_av_clip

    item = spec.item
    with contextlib.ExitStack() as stack:
        video = stack.enter_context(item.video.local())
        audio = None if item.audio is None else stack.enter_context(item.audio.local())
        clip = load_av_clip(
            video,
            _CROPPERS[spec.face_backend],
            audio_path=audio,
            min_seconds=spec.min_seconds,
            max_seconds=spec.max_seconds,
        )
    extra = {"trimmed": True} if clip.trimmed else {}
    if item.audio is None and item.note == "no audio file":
        extra["audio"] = "video track"
    return clip.frames, clip.power, {}, extra


# ---------------------------------------------------------------------------------------
# Jobs per source


def synthetic_jobs(
    n_speakers: int,
    clips_per_speaker: int,
    n_frames: int,
    seed: int,
    first_speaker: int = 0,
    emotions: tuple[str, ...] | None = None,
) -> list[Job]:
    """K clips per speaker cycling through SYNTHETIC_COMBOS, each with its own seed, for
    speakers first_speaker .. first_speaker + n_speakers - 1. A synthetic speaker is its
    index (`speaker_params`): `seed` draws new clips of the same people, and only new
    indices draw new people. `emotions` keeps the combos of those emotions only (e.g.
    ("neutral",): more resting faces of the same people, the references of a relative
    emotion head)."""
    if first_speaker < 0:
        raise PrepareError(f"--first-speaker must be 0 or more, got {first_speaker}")
    combos = SYNTHETIC_COMBOS
    if emotions is not None:
        unknown = sorted(set(emotions) - set(EMOTIONS))
        if unknown:
            raise PrepareError(f"--emotions: unknown {unknown}; choose among {list(EMOTIONS)}")
        combos = tuple(c for c in SYNTHETIC_COMBOS if c[0] in emotions)
    jobs = []
    for s in range(first_speaker, first_speaker + n_speakers):
        for k in range(clips_per_speaker):
            emotion, level = combos[(s * clips_per_speaker + k) % len(combos)]
            clip_seed = int(np.random.SeedSequence([seed, s, k]).generate_state(1)[0])
            spec = SyntheticSpec(s, emotion, level, clip_seed, n_frames)
            jobs.append(
                Job(
                    clip_id=f"synth_{s:03d}_{k:04d}",
                    name=f"synth_{s:03d}_{k:04d}",
                    speaker=f"synth_{s:03d}",
                    emotion=emotion,
                    level=level,
                    source=f"synthetic:speaker={s},seed={clip_seed}",
                    extra={"speaker_index": s, "seed": clip_seed, "n_frames": n_frames},
                    payload=spec,
                )
            )
    return jobs


def synthetic_factor_spec() -> dict:
    """The generator's factors, as a store factor spec (from a 2-frame clip; no torch
    work here, so that worker processes can be forked safely)."""
    from mdvae.data.synthetic import generate_clip

    return factor_spec_from(generate_clip(0, "neutral", 1, 0, n_frames=2).factors)


def source_jobs(
    listing: SourceListing, face_backend: str, min_seconds: float, max_seconds: float | None
) -> list[Job]:
    return [
        Job(
            clip_id=item.clip_id,
            name=item.name,
            speaker=item.speaker,
            emotion=item.emotion,
            level=item.level,
            source=item.name,
            extra=item.extra,
            payload=LoadSpec(item, face_backend, min_seconds, max_seconds),
        )
        for item in listing.items
    ]


# ---------------------------------------------------------------------------------------
# The run


def _speaker_spec(text: str) -> int | list[str]:
    """A count of speakers ("3") or a list of names ("M003,W009")."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    return list(_names(text))


def _names(text: str) -> tuple[str, ...]:
    """Comma-separated names, in order, without blanks."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _check_resume(writer: StoreWriter, args_info: dict, kind: str, splits: dict[str, str]) -> None:
    """A resumed run must make the clips the first run made, and split them the same way."""
    if not writer.clips:
        return
    before = writer.meta.get("info", {}).get("prepare", {})
    group = "synthetic" if kind == "synthetic" else "real"
    for flag in IDENTITY_FLAGS[group]:
        if flag in before and before[flag] != args_info[flag]:
            raise PrepareError(
                f"{writer.path} was prepared with --{flag.replace('_', '-')} {before[flag]}, "
                f"not {args_info[flag]}; rerun with the same value or write to a new --out"
            )
    for clip in writer.clips:
        if clip.speaker in splits and splits[clip.speaker] != clip.split:
            raise PrepareError(
                f"{writer.path} has speaker {clip.speaker} in {clip.split!r}, this run would "
                f"put it in {splits[clip.speaker]!r}; rerun with the same --val-speakers, "
                "--test-speakers and --seed, or write to a new --out"
            )


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C so the report is still written."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated


def run(
    kind: str,
    jobs: list[Job],
    out: Path,
    *,
    splits: dict[str, str],
    workers: int,
    initializer: Any,
    initargs: tuple,
    factor_spec: dict | None,
    info: dict,
    report: Report,
) -> Report:
    """Produce every job not yet in the store, in order, and fill ``report``."""
    started = time.monotonic()
    report.items = len(jobs)
    with StoreWriter(out, factor_spec=factor_spec, source_kind=kind, info=info) as writer:
        _check_resume(writer, info["prepare"], kind, splits)
        pending = [job for job in jobs if not writer.has(job.clip_id)]
        report.already_in_store = len(jobs) - len(pending)
        if report.already_in_store:
            print(f"{out}: {report.already_in_store} clips already done, {len(pending)} to go")
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
        pool = bar = None
        try:
            if workers > 0 and len(pending) > 1:
                # Import the heavy modules once here, so forked workers start with them.
                importlib.import_module(
                    "mdvae.data.synthetic" if kind == "synthetic" else "mdvae.media.clips"
                )
                importlib.import_module("mdvae.media.audio")
                methods = multiprocessing.get_all_start_methods()
                context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
                pool = context.Pool(workers, initializer=initializer, initargs=(*initargs, False))
                # imap keeps the job order: the store is the same for any number of workers
                results = pool.imap(_work, pending, chunksize=1)
            else:
                initializer(*initargs, True)
                results = map(_work, pending)
            bar = tqdm(total=len(pending), unit="clip", desc=kind, dynamic_ncols=True)
            for job, (status, value) in zip(pending, results):
                if status == "skip":
                    report.skipped.append({"item": job.name, "reason": value})
                else:
                    frames, power, factors, extra = value
                    writer.add(
                        job.clip_id,
                        frames,
                        power,
                        speaker=job.speaker,
                        emotion=job.emotion,
                        level=job.level,
                        source=job.source,
                        split=splits[job.speaker],
                        factors=factors,
                        extra={**job.extra, **extra},
                    )
                    report.added += 1
                    report.frames_added += len(frames)
                bar.set_postfix(
                    frames=report.frames_added, skipped=len(report.skipped), refresh=False
                )
                bar.update()
        except KeyboardInterrupt:
            report.interrupted = True
        finally:
            if bar is not None:
                bar.close()
            if main_thread:
                signal.signal(signal.SIGTERM, previous)
            if pool is not None:
                pool.terminate()
                pool.join()
    report.seconds = round(time.monotonic() - started, 2)
    report.frames_per_second = round(report.frames_added / max(report.seconds, 1e-9), 1)
    store = Store(out)
    report.store = {
        "clips": len(store.clips),
        "frames": store.n_frames,
        "speakers": {split: store.speakers(split) for split in ("train", "val", "test")},
    }
    return report


def _write_report(report: Report, out: Path) -> None:
    path = out / "prepare_report.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report.__dict__, indent=2) + "\n")
    os.replace(tmp, path)


def _print_report(report: Report, out: Path, *, max_lines: int = 20) -> None:
    state = "interrupted" if report.interrupted else "done"
    print(
        f"{state}: {report.added} clips ({report.frames_added} frames) added in "
        f"{report.seconds:.1f} s ({report.frames_per_second:.0f} frames/s), "
        f"{report.already_in_store} already there, {len(report.skipped)} skipped; the store "
        f"holds {report.store['clips']} clips, {report.store['frames']} frames"
    )
    for split, speakers in report.store["speakers"].items():
        shown = ", ".join(speakers[:12]) + (" ..." if len(speakers) > 12 else "")
        print(f"  {split}: {len(speakers)} speakers ({shown})")
    if report.ignored:
        print("  left out: " + ", ".join(f"{n} {why}" for why, n in report.ignored.items()))
    if report.skipped:
        print("skipped:")
        for entry in report.skipped[:max_lines]:
            print(f"  {entry['item']}: {entry['reason']}")
        if len(report.skipped) > max_lines:
            reasons = Counter(entry["reason"].split(":")[0] for entry in report.skipped)
            print(f"  ... and {len(report.skipped) - max_lines} more ({dict(reasons)})")
    print(f"report: {out / 'prepare_report.json'}")
    if report.interrupted:
        print("run the same command again to finish")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train.prepare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="kind", required=True)

    def common(sub: argparse.ArgumentParser, held_out: str) -> None:
        sub.add_argument("--out", required=True, type=Path, help="store folder (new or resumed)")
        sub.add_argument("--workers", type=int, default=2, help="processes (0: in this one)")
        sub.add_argument(
            "--seed", type=int, default=0, help="speaker splits (and synthetic clip seeds)"
        )
        sub.add_argument(
            "--val-speakers",
            type=_speaker_spec,
            default=held_out,
            help=f"count or comma-separated names (default {held_out})",
        )
        sub.add_argument(
            "--test-speakers",
            type=_speaker_spec,
            default=held_out,
            help=f"count or comma-separated names (default {held_out})",
        )

    synthetic = commands.add_parser("synthetic", help="the procedural benchmark (no download)")
    common(synthetic, "1")
    synthetic.add_argument("--speakers", type=int, default=8)
    synthetic.add_argument(
        "--clips-per-speaker",
        type=int,
        default=len(SYNTHETIC_COMBOS),
        help=f"spread over the {len(SYNTHETIC_COMBOS)} emotion x level pairs",
    )
    synthetic.add_argument("--frames", type=int, default=90, help="frames per clip (30 fps)")
    synthetic.add_argument(
        "--emotions",
        type=_names,
        default=None,
        help="comma-separated emotions to draw (default all), e.g. neutral: more resting "
        "faces of the same speakers (with --first-speaker and another --seed), the references "
        "`train.emotion --references` pairs clips with",
    )
    synthetic.add_argument(
        "--first-speaker",
        type=int,
        default=0,
        help="index of the first speaker (default 0). A synthetic speaker is its index: stores "
        "of the same indices hold the same people whatever --seed (which draws their clips), "
        "so a pool of new speakers starts past another store's, e.g. --first-speaker 200 "
        "beside data/synth200",
    )

    for kind, held_out, text in (
        ("mead", "1", "MEAD as distributed (speaker folders or tars)"),
        ("ravdess", "1", "RAVDESS audio-video speech files"),
        ("videos", "0", "any folder of talking-face videos (no labels)"),
    ):
        sub = commands.add_parser(kind, help=text)
        common(sub, held_out)
        sub.add_argument("--root", required=True, type=Path, help="dataset folder or archive")
        sub.add_argument("--max-seconds", type=float, default=None, help="keep the first N s")
        sub.add_argument("--min-seconds", type=float, default=1.0, help="skip shorter clips")
        sub.add_argument("--face-backend", choices=("auto", "fan", "haar"), default="auto")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.workers < 0:
        raise SystemExit("--workers must be >= 0")
    out: Path = args.out
    report = Report(source=args.kind, out=str(out))
    identity = {k: v for k, v in vars(args).items() if k not in ("out", "workers", "kind")}
    identity = {
        k: str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
        for k, v in identity.items()
    }
    info = {"prepare": identity}
    try:
        if args.kind == "synthetic":
            if args.speakers < 1 or args.clips_per_speaker < 1 or args.frames < 1:
                raise PrepareError("--speakers, --clips-per-speaker and --frames must be >= 1")
            jobs = synthetic_jobs(
                args.speakers,
                args.clips_per_speaker,
                args.frames,
                args.seed,
                args.first_speaker,
                args.emotions,
            )
            factor_spec = synthetic_factor_spec()
            initializer, initargs = _init_worker, (None,)
        else:
            report.root = str(args.root)
            listing = list_source(args.kind, args.root)
            jobs = source_jobs(listing, args.face_backend, args.min_seconds, args.max_seconds)
            report.skipped = [{"item": n, "reason": r} for n, r in listing.skipped]
            report.ignored = dict(listing.ignored)
            factor_spec = None
            initializer, initargs = _init_worker, (args.face_backend,)
        splits = assign_splits(
            {job.speaker for job in jobs},
            val=args.val_speakers,
            test=args.test_speakers,
            seed=args.seed,
        )
        run(
            args.kind,
            jobs,
            out,
            splits=splits,
            workers=args.workers,
            initializer=initializer,
            initargs=initargs,
            factor_spec=factor_spec,
            info=info,
            report=report,
        )
    except MDVAEError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    _write_report(report, out)
    _print_report(report, out)
    return 130 if report.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
