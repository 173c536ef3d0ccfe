"""Time the media pipeline stage by stage on one clip.

    python -m train.benchmark_media [--clip PATH] [--backend haar] [--repeats 3]

Without --clip it makes its own 640x480 test clip, offline: scikit-image's astronaut
photograph moving and zooming across the frame, with a synthetic voiced tone.
"""

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import skimage.data

from mdvae.media.audio import FPS, SAMPLE_RATE, griffin_lim, peak_normalize, power_spectrogram
from mdvae.media.clips import load_av_clip
from mdvae.media.face import FaceCropper
from mdvae.media.video import normalize_clip, write_video

# Centre of the astronaut's face in the 512x512 photograph (middle of OpenCV's Haar box).
ASTRONAUT_FACE = (224.5, 113.5)


def moving_face(n_frames: int = 150, height: int = 480, width: int = 640, *,
                scale_range: tuple[float, float] = (0.85, 1.15), shift: float = 60.0,
                angle: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The astronaut photograph drifting and zooming over a grey canvas.

    Returns frames (T, H, W, 3) uint8, the face centre of every frame (T, 2) as x, y, and
    the zoom of every frame (T,). `angle` rolls the photograph (degrees, counter-clockwise
    on screen) around the face centre.
    """
    photo = skimage.data.astronaut()
    t = np.arange(n_frames) / FPS
    lo, hi = scale_range
    scale = lo + (hi - lo) * (0.5 - 0.5 * np.cos(2 * np.pi * t / 3.0))  # (T,)
    centre = np.stack([width / 2 + shift * np.sin(2 * np.pi * t / 2.5),
                       height * 0.4 + 0.5 * shift * np.sin(2 * np.pi * t / 1.7)], axis=1)
    frames = np.empty((n_frames, height, width, 3), dtype=np.uint8)
    for i in range(n_frames):
        # Similarity map: photo face centre -> centre[i], zoom scale[i], roll `angle`.
        matrix = cv2.getRotationMatrix2D(ASTRONAUT_FACE, angle, scale[i])
        matrix[:, 2] += centre[i] - np.array(ASTRONAUT_FACE)
        frames[i] = cv2.warpAffine(photo, matrix, (width, height), flags=cv2.INTER_LINEAR,
                                   borderValue=(128, 128, 128))
    return frames, centre, scale


def voiced_tone(n_samples: int, *, f0: float = 150.0, seed: int = 0) -> np.ndarray:
    """A speech-like test signal: a harmonic tone with vibrato, gated into 4 Hz syllables."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_samples) / SAMPLE_RATE
    pitch = f0 * (1 + 0.1 * np.sin(2 * np.pi * 1.3 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    wave = sum(np.sin(k * phase) / k for k in range(1, 10))
    envelope = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 0.5
    wave = wave * envelope + 0.01 * rng.standard_normal(n_samples)
    return peak_normalize(wave.astype(np.float32))


def make_test_clip(path, seconds: float = 5.0, **kwargs) -> Path:
    """Write the moving astronaut with a voiced tone as an mp4 (H.264 + AAC) at `path`."""
    frames, _, _ = moving_face(round(seconds * FPS), **kwargs)
    audio = voiced_tone(round(seconds * SAMPLE_RATE))
    return write_video(path, frames, audio, scale=1)


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the ffmpeg runs)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _time(fn, repeats: int) -> tuple[float, float, object]:
    """Median wall-clock and CPU seconds of `repeats` calls, and the last result."""
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), _cpu_seconds()
        result = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(_cpu_seconds() - cpu)
    return statistics.median(walls), statistics.median(cpus), result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", type=Path, help="video to time (default: a generated one)")
    parser.add_argument("--backend", default="haar", choices=("auto", "fan", "haar"))
    parser.add_argument("--repeats", type=int, default=3, help="median of this many runs")
    parser.add_argument("--seconds", type=float, default=5.0, help="generated clip length")
    parser.add_argument("--gl-iters", type=int, default=32, help="Griffin-Lim iterations")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="mdvae-bench-") as tmp:
        clip_path = args.clip or make_test_clip(Path(tmp) / "astronaut.mp4", args.seconds)
        cropper = FaceCropper(args.backend)
        rows = []
        wall, cpu, clip = _time(lambda: normalize_clip(clip_path), args.repeats)
        rows.append(("normalise (decode to 30 fps + 16 kHz)", wall, cpu))
        wall, cpu, crops = _time(lambda: cropper.crop(clip.frames), args.repeats)
        rows.append((f"face crop ({cropper.backend})", wall, cpu))
        wall, cpu, power = _time(lambda: power_spectrogram(clip.audio), args.repeats)
        rows.append(("power spectrogram", wall, cpu))
        wall, cpu, wave = _time(lambda: griffin_lim(power, n_iter=args.gl_iters), args.repeats)
        rows.append((f"Griffin-Lim ({args.gl_iters} iterations)", wall, cpu))
        out = Path(tmp) / "out.mp4"
        n = min(len(crops), len(power))
        wall, cpu, _ = _time(lambda: write_video(out, crops[:n], wave), args.repeats)
        rows.append(("write video (64 px x4, H.264 + AAC)", wall, cpu))
        wall, cpu, av = _time(lambda: load_av_clip(clip_path, cropper), args.repeats)
        rows.append(("clip pipeline: load_av_clip", wall, cpu))

    seconds = len(clip.frames) / FPS
    height, width = clip.frames.shape[1:3]
    print(f"clip: {clip_path if args.clip else 'generated astronaut'}, {width}x{height}, "
          f"{len(clip.frames)} frames = {seconds:.2f} s; {os.cpu_count()} cpu cores; "
          f"median of {args.repeats} runs; load average {os.getloadavg()[0]:.2f}")
    print(f"{'stage':<42}{'wall s':>8}{'cpu s':>8}{'wall s / s video':>18}")
    for name, wall, cpu in rows:
        print(f"{name:<42}{wall:>8.3f}{cpu:>8.3f}{wall / seconds:>18.3f}")
    print(f"clip pipeline (normalise + crop + spectrogram + align): {rows[-1][1] / seconds:.3f} s "
          f"of processing per second of video ({rows[-1][2] / seconds:.3f} cpu s; "
          f"{len(av.frames)} aligned frames)")


if __name__ == "__main__":
    main()
