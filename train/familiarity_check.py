"""Does the familiarity score tell the bundle's own kind of clip from foreign ones?

Familiar side: clips of a store's speakers that the bundle's reference table did not use
(`--store`, a split; e.g. a pool of new synthetic speakers, `train.prepare synthetic
--first-speaker 200 ...`) and the app's example videos, all
through the app's own loading (mp4 decode, aligned crops). Foreign side, made here from
what ships in the dependencies and written as mp4 files the app reads like uploads:
- real faces: the astronaut photograph drifting and zooming (face detection on) and 20
  faces of scikit-image's LFW subset, each moving a little, all with synthetic real speech
  (espeak-ng, when installed; otherwise a voiced tone);
- the photograph held still with silence; a face-shaped test pattern with speech; colour
  bars with silence; a cat (scikit-image's chelsea) with speech.
Apart, neither familiar nor foreign: the six example faces, each with real speech (six
espeak-ng voices) for its voice.
Prints each clip's verdict, the share of familiar clips per group and the ROC AUC of the
least familiar score's percentile (familiar 0, foreign 1); `--out` writes them as JSON.

    python -m train.familiarity_check --store data/synth_new64 --split val \\
        --out runs/familiarity.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import cv2
import numpy as np
import skimage.data
import torch
from sklearn.metrics import roc_auc_score

from mdvae.data.store import Store
from mdvae.media.audio import samples_for_frames
from mdvae.media.video import normalize_clip, read_audio, write_video
from mdvae.pipeline import Pipeline
from train.benchmark_media import moving_face, voiced_tone

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SENTENCES = [
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It is easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
]
VOICES = ["en", "en-us", "en+f3", "en+m3", "en-gb-scotland", "en+f4"]
SECONDS = 3.0
N_FRAMES = round(SECONDS * 30)


def speech(i: int, folder: Path) -> np.ndarray:
    """SECONDS of 16 kHz speech: espeak-ng reading a Harvard sentence, or a voiced tone."""
    n = samples_for_frames(N_FRAMES)
    if shutil.which("espeak-ng") is None:
        return voiced_tone(n, f0=110.0 + 15 * i, seed=i)
    wav = folder / f"speech{i}.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "-v", VOICES[i % len(VOICES)], "-s", "160",
                    SENTENCES[i % len(SENTENCES)]], check=True, capture_output=True)
    audio = read_audio(wav)
    return np.pad(audio[:n], (0, max(0, n - len(audio))))


def drift(image: np.ndarray, n_frames: int, size: int = 64, amount: float = 0.04,
          seed: int = 0) -> np.ndarray:
    """An image (H, W, 3) as n_frames (n, size, size, 3) with a slow small shift and zoom."""
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, 3)
    t = np.arange(n_frames) / 30.0
    h, w = image.shape[:2]
    frames = []
    for k in range(n_frames):
        zoom = 1 + amount * np.sin(2 * np.pi * t[k] / 2.3 + phase[0])
        dx = amount * w * np.sin(2 * np.pi * t[k] / 1.9 + phase[1])
        dy = amount * h * np.sin(2 * np.pi * t[k] / 2.7 + phase[2])
        m = cv2.getRotationMatrix2D((w / 2, h / 2), 0.0, zoom)
        m[:, 2] += (dx, dy)
        moved = cv2.warpAffine(image, m, (w, h), borderMode=cv2.BORDER_REPLICATE)
        frames.append(cv2.resize(moved, (size, size), interpolation=cv2.INTER_AREA))
    return np.stack(frames)


def face_pattern() -> np.ndarray:
    """A face-shaped test pattern: a flat oval, two dark eyes, a mouth bar, 256x256."""
    img = np.full((256, 256, 3), 40, np.uint8)
    cv2.ellipse(img, (128, 128), (80, 105), 0, 0, 360, (200, 200, 200), -1)
    for x in (95, 161):
        cv2.circle(img, (x, 105), 14, (20, 20, 20), -1)
    cv2.rectangle(img, (95, 175), (161, 190), (20, 20, 20), -1)
    return img


def colour_bars() -> np.ndarray:
    colours = [(255, 255, 255), (255, 255, 0), (0, 255, 255), (0, 255, 0), (255, 0, 255),
               (255, 0, 0), (0, 0, 255), (0, 0, 0)]
    img = np.zeros((256, 256, 3), np.uint8)
    for i, c in enumerate(colours):
        img[:, i * 32:(i + 1) * 32] = c
    return img


def foreign_clips(folder: Path) -> list[tuple[str, str, Path, bool]]:
    """(group, name, mp4, aligned) of the foreign clips, written into `folder`."""
    silence = np.zeros(samples_for_frames(N_FRAMES), np.float32)
    made = []

    def add(group, name, frames, audio, aligned, scale=4):
        path = write_video(folder / f"{name}.mp4", frames, audio, scale=scale)
        made.append((group, name, path, aligned))

    for i in range(3):  # the real photograph, moving, three voices; face detection on
        frames, _, _ = moving_face(N_FRAMES, 240, 320, scale_range=(0.6, 0.8), shift=30)
        add("real face, speech", f"astronaut_moving_{i}", frames, speech(i, folder), False, 1)
    lfw = skimage.data.lfw_subset()[:20]  # (20, 25, 25) grey faces in [0, 1]
    for i, face in enumerate(lfw):
        rgb = cv2.cvtColor((face * 255).astype(np.uint8), cv2.COLOR_GRAY2RGB)
        rgb = cv2.resize(rgb, (128, 128), interpolation=cv2.INTER_CUBIC)
        add("real face, speech", f"lfw_{i:02d}", drift(rgb, N_FRAMES, seed=i),
            speech(i + 3, folder), True)
    frames, _, _ = moving_face(N_FRAMES, 240, 320, scale_range=(0.7, 0.7), shift=0)
    add("photo held still, silence", "astronaut_still_silent", frames, silence, False, 1)
    add("test pattern", "face_pattern_speech", drift(face_pattern(), N_FRAMES),
        speech(9, folder), True)
    add("test pattern", "colour_bars_silent", drift(colour_bars(), N_FRAMES, amount=0.0),
        silence, True)
    add("test pattern", "cat_speech", drift(skimage.data.chelsea()[20:280, 100:360],
                                            N_FRAMES), speech(10, folder), True)
    return made


def mixed_clips(folder: Path) -> list[tuple[str, str, Path, bool]]:
    """The app's synthetic example faces with real speech instead of their voices: neither
    side of the ROC, reported apart (how much does the voice alone tell?)."""
    made = []
    for i, example in enumerate(sorted(EXAMPLES.glob("*.mp4"))):  # voices 5, 0, 1, ..., 4
        frames = normalize_clip(example).frames[:N_FRAMES]
        path = write_video(folder / f"mixed_{example.stem}.mp4", frames,
                           speech(i + 11, folder)[:samples_for_frames(len(frames))], scale=1)
        made.append(("synthetic face, real speech", example.stem, path, True))
    return made


def familiar_clips(store_path: str, split: str, folder: Path, limit: int
                   ) -> list[tuple[str, str, Path, bool]]:
    """Store clips of `split` written as mp4 (as the examples are), plus the examples."""
    made = [("app example", p.stem, p, True) for p in sorted(EXAMPLES.glob("*.mp4"))]
    store = Store(store_path)
    clips = store.split_clips(split)
    for info in clips[::max(1, len(clips) // limit)][:limit]:  # spread over the speakers
        clip = store.clip(info.index)
        wave = store_audio(clip)
        path = write_video(folder / f"store_{info.index:05d}.mp4", np.array(clip["frames"]),
                           wave, scale=4)
        made.append((f"{Path(store_path).name} {split}", f"clip {info.index}", path, True))
    return made


def store_audio(clip) -> np.ndarray:
    """The store keeps spectrograms, not waveforms: Griffin-Lim gives the sound back."""
    from mdvae.media.audio import griffin_lim

    return griffin_lim(np.array(clip["power"], np.float32), n_iter=64)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m train.familiarity_check",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default=None, help="bundle folder (default checkpoints/)")
    parser.add_argument("--store", required=True, help="store of familiar clips")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=60, help="store clips at most")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="JSON file for the per-clip results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    rows = []
    with Pipeline(args.bundle, device="cpu") as pipe, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for kind, clips in (("familiar", familiar_clips(args.store, args.split, folder,
                                                        args.limit)),
                            ("foreign", foreign_clips(folder)),
                            ("mixed", mixed_clips(folder))):
            for group, name, path, aligned in clips:
                enc = pipe.encode(pipe.load(path, aligned=aligned))
                f = enc.familiarity
                rows.append({"kind": kind, "group": group, "name": name,
                             "level": f.level, "percentile": f.percentile,
                             "least_familiar": f.worst, "percentiles": f.percentiles,
                             "spreads": f.spreads, "scores": f.scores,
                             "notes": list(enc.notes)})
                print(f"{kind:8} {group:28} {name:24} {f.level:10} "
                      + " ".join(f"{k} {f.percentiles[k]:5.1f}% ({f.spreads[k]:5.2f})"
                                 for k in f.scores))
    summary = {}
    for group in dict.fromkeys(r["group"] for r in rows):
        chosen = [r for r in rows if r["group"] == group]
        summary[group] = {"clips": len(chosen),
                          "familiar": sum(r["level"] == "familiar" for r in chosen) / len(chosen)}
    compared = [r for r in rows if r["kind"] != "mixed"]
    truth = [r["kind"] == "foreign" for r in compared]
    # The gauge's reading; clips beyond every test clip (100) are ordered by how far beyond.
    reading = [r["percentile"] if r["percentile"] < 100 else 100 + max(r["spreads"].values())
               for r in compared]
    summary["roc_auc"] = float(roc_auc_score(truth, reading))
    for key, value in summary.items():
        print(f"{key}: {value}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"summary": summary, "clips": rows}, indent=1))
    return summary


if __name__ == "__main__":
    main()
