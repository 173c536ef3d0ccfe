"""Helpers shared by several test modules (fixtures are in conftest.py): the example clips,
the media checks and bad uploads of the pipeline and app tests, and a toy regression for
the training-loop tests (importable by the processes test_distributed spawns)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import cv2
import numpy as np
import torch

from mdvae.data.synthetic import generate_clip
from mdvae.media.audio import FPS
from mdvae.media.video import ffmpeg_exe, write_video

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CLIP_A = EXAMPLES / "spk02_happy.mp4"  # 3.0 s
CLIP_B = EXAMPLES / "spk37_neutral.mp4"  # 2.5 s


def streams(path) -> str:
    """ffmpeg's description of a media file (its stream lines)."""
    result = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)],
                            capture_output=True, text=True)
    return result.stderr


def assert_playable_with_sound(path) -> None:
    info = streams(path)
    assert re.search(r"Video: h264.*yuv420p", info), info
    assert re.search(r"Audio: aac", info), info


def make_bad_inputs(folder: Path) -> dict[str, Path]:
    """One file per way an upload can go wrong (plus a long and a huge but usable one)."""
    folder.mkdir(parents=True, exist_ok=True)
    face = generate_clip(5, "happy", 2, 7, n_frames=45)  # 1.5 s
    cases = {}
    cases["not_a_video"] = folder / "notes.mp4"
    cases["not_a_video"].write_text("this is text, not a video\n")
    cases["still_image"] = folder / "photo.mp4"  # a PNG renamed
    cv2.imwrite(str(folder / "photo.png"), face.frames[0])
    (folder / "photo.png").rename(cases["still_image"])
    cases["no_audio"] = write_video(folder / "silent.mp4", face.frames, None, scale=2)
    cases["too_short"] = write_video(folder / "short.mp4", face.frames[:15],
                                     face.audio[:8000], scale=2)
    # Flat colour with a soft moving gradient: nothing face-like for the detector.
    ramp = np.linspace(60, 200, 128, dtype=np.float32)
    blank = np.stack([np.broadcast_to((ramp[None, :, None] + 3 * t) % 256, (96, 128, 3))
                      for t in range(45)]).astype(np.uint8)
    cases["no_face"] = write_video(folder / "wall.mp4", blank, face.audio, scale=1)
    long = generate_clip(7, "sad", 1, 8, n_frames=150)  # 5 s
    cases["long"] = write_video(folder / "long.mp4", long.frames, long.audio, scale=1)
    # 1920x1080: the face upscaled in the middle of a grey frame, 1.1 s.
    big = np.full((33, 1080, 1920, 3), 128, np.uint8)
    big[:, :, 420:1500] = [cv2.resize(f, (1080, 1080), interpolation=cv2.INTER_CUBIC)
                           for f in face.frames[:33]]
    cases["huge"] = write_video(folder / "huge.mp4", big, face.audio[:17600], scale=1)
    return cases



# -- a toy regression for the training loop -------------------------------------------


class Batches:
    """A deterministic regression stream with a saveable sampler state."""

    def __init__(self, seed=0, batch=16):
        self.rng = np.random.default_rng(seed)
        self.batch = batch
        self.w = np.arange(1, 5, dtype=np.float32)

    def __iter__(self):
        return self

    def __next__(self):
        x = self.rng.normal(size=(self.batch, 4)).astype(np.float32)
        return {"x": torch.from_numpy(x), "y": torch.from_numpy(x @ self.w)}

    def get_state(self):
        return self.rng.bit_generator.state

    def set_state(self, state):
        self.rng.bit_generator.state = state


def step_fn(model, batch, step):
    pred = model(batch["x"]).squeeze(-1)
    return {"total": ((pred - batch["y"]) ** 2).mean()}


def ffmpeg(*args: str) -> str:
    """Run the bundled ffmpeg; returns its stderr (where `-i` describes the streams)."""
    result = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-y", *args],
                            capture_output=True, text=True)
    return result.stderr


def damaged(tmp_path, name, share):
    """A 3 s clip (keyframe every 10 frames) with random bytes over the middle `share` of
    its media data."""
    clean = tmp_path / "clean.mp4"
    if not clean.exists():
        ffmpeg("-f", "lavfi", "-i", f"testsrc=s=128x96:r={FPS}:d=3", "-f", "lavfi", "-i",
               "sine=d=3", "-c:v", "libx264", "-g", "10", "-pix_fmt", "yuv420p", "-c:a", "aac",
               "-shortest", str(clean))
    data = bytearray(clean.read_bytes())
    start = data.find(b"mdat")
    lo = start + int((len(data) - start) * (0.5 - share / 2))
    hi = start + int((len(data) - start) * (0.5 + share / 2))
    data[lo:hi] = np.random.default_rng(0).integers(0, 256, hi - lo, dtype=np.uint8).tobytes()
    path = tmp_path / name
    path.write_bytes(data)
    return path
