"""Regenerate the app's example clips in examples/ from the synthetic benchmark.

    python -m train.make_examples [--out examples] [--store data/synthetic]

Every example is a synthetic speaker held out from training: the speakers are those of the
shipped store's test split (with --store, the script checks this against the store's
clips.jsonl). Clips are already aligned 64x64 face crops, written 4x upscaled as H.264 +
AAC, so the app must be told to skip face detection for them ("aligned"). An index.json
beside them records where each came from.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from mdvae.data.synthetic import generate_clip
from mdvae.media.video import ffmpeg_exe, write_video

SCALE = 4  # 64x64 crops written as 256x256 videos
# write_video keeps outputs near-lossless (crf 18, 128 kb/s AAC); the examples live in the
# repository, so their video is re-encoded smaller. Downscaled back to 64x64 they stay within
# about 1 dB PSNR of the crf-18 file (~35 dB against the generated frames). The sound keeps
# 128 kb/s: at 32 kb/s the examples' voices sat at the edge of the bundle's familiarity
# score (README, "Knowing the limits of the bundle").
VIDEO_CRF = 23
AUDIO_BITRATE = "128k"


@dataclass(frozen=True)
class ExampleSpec:
    name: str  # file name in examples/
    speaker: int  # synthetic speaker index (a test speaker of the shipped store)
    emotion: str
    level: int
    seed: int
    n_frames: int  # at 30 fps


# Six test speakers, six emotions; one clip is shorter, to show cropping in a swap. The last
# two are one of them again, a faint expression and a resting face: the Emotion tab's
# reading against a neutral clip (alone, the MDVAE is not sure of the faint sadness and reads
# the resting face as contempt).
EXAMPLES: tuple[ExampleSpec, ...] = (
    ExampleSpec("spk02_happy.mp4", 2, "happy", 3, 101, 90),
    ExampleSpec("spk05_sad.mp4", 5, "sad", 3, 102, 90),
    ExampleSpec("spk07_angry.mp4", 7, "angry", 3, 103, 90),
    ExampleSpec("spk21_surprised.mp4", 21, "surprised", 3, 104, 90),
    ExampleSpec("spk37_neutral.mp4", 37, "neutral", 1, 105, 75),
    ExampleSpec("spk49_disgusted.mp4", 49, "disgusted", 2, 106, 90),
    ExampleSpec("spk02_sad_faint.mp4", 2, "sad", 1, 301, 90),
    ExampleSpec("spk02_neutral.mp4", 2, "neutral", 1, 201, 90),
)


def compress(src: Path, dst: Path) -> Path:
    """Re-encode `src` as a small browser-playable mp4 (H.264 yuv420p + AAC) at `dst`."""
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-y", "-i", str(src),
                    "-c:v", "libx264", "-crf", str(VIDEO_CRF), "-preset", "slow",
                    "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", AUDIO_BITRATE,
                    "-movflags", "+faststart", str(dst)], check=True)
    dst.chmod(0o644)
    return dst


def test_speakers(store: Path) -> set[int]:
    """Synthetic speaker indices of the store's test split."""
    speakers = set()
    with open(store / "clips.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row["split"] == "test":
                speakers.add(int(row["extra"]["speaker_index"]))
    return speakers


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(prog="python -m train.make_examples", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="examples", help="folder for the clips")
    parser.add_argument("--store", help="check the speakers against this store's test split")
    args = parser.parse_args(argv)

    if args.store:
        held_out = test_speakers(Path(args.store))
        wrong = sorted({s.speaker for s in EXAMPLES} - held_out)
        if wrong:
            parser.error(f"speakers {wrong} are not in the test split of {args.store} "
                         f"(test speakers: {sorted(held_out)})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for spec in EXAMPLES:
        clip = generate_clip(spec.speaker, spec.emotion, spec.level, spec.seed, spec.n_frames)
        with tempfile.TemporaryDirectory() as tmp:
            full = write_video(Path(tmp) / spec.name, clip.frames, clip.audio, scale=SCALE)
            written.append(compress(full, out / spec.name))
        size = written[-1].stat().st_size / 1024
        print(f"{written[-1]}  {spec.n_frames / 30:.1f} s  {size:.0f} KB")
    index = {"aligned": True, "scale": SCALE, "clips": [asdict(s) for s in EXAMPLES]}
    (out / "index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return written


if __name__ == "__main__":
    main()
