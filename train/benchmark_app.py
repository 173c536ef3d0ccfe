"""Time the demo's work stage by stage: a swap of two 3-s example clips and the w slider.

    python -m train.benchmark_app [--bundle PATH_OR_REPO] [--repeats 5] [--threads 1]

Prints the median over `--repeats` runs after one warm-up run, for each stage of a swap
(normalise, face crop, spectrogram, encode, decode, Griffin-Lim, write video), for the
whole swap request as the app runs it (both clips read and encoded, swap, render, frame
strips), and for the slider's request (decode only: both clips already encoded in the
session). Face cropping is timed both ways: the examples are aligned crops (resize only),
uploads go through detection and tracking. Without a bundle in checkpoints/ (and no
--bundle or $MDVAE_BUNDLE), a randomly initialised bundle of the shipped sizes is timed:
speed does not depend on the weights. `--threads` sets torch's CPU threads as the app does
(MDVAE_TORCH_THREADS, default 1). Wall time depends on the machine's load; the CPU time
column (this process and its ffmpeg children) much less.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mdvae.bundle import save_bundle
from mdvae.media.audio import power_spectrogram, samples_for_frames
from mdvae.media.video import normalize_clip, write_video
from mdvae.model.dsae import DSAE, DSAEConfig
from mdvae.model.emotion import EmotionHead, EmotionHeadConfig
from mdvae.model.mdvae import MDVAE, MDVAEConfig
from mdvae.pipeline import BUNDLE_ENV, DEFAULT_BUNDLE, PREVIEW_SCALE, Pipeline
from mdvae.stage1.vqvae import VQVAE, VQVAEConfig

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CLIP_A = EXAMPLES / "spk02_happy.mp4"
CLIP_B = EXAMPLES / "spk05_sad.mp4"


def random_bundle(folder: Path) -> Path:
    """A bundle with the shipped synthetic sizes and random weights."""
    config = MDVAEConfig.preset("synthetic")
    components = {
        "vq_visual": VQVAE(VQVAEConfig(modality="visual")),
        "vq_audio": VQVAE(VQVAEConfig(modality="audio")),
        "mdvae": MDVAE(config),
        "dsae_audio": DSAE(DSAEConfig.from_mdvae(config, "audio")),
        "dsae_visual": DSAE(DSAEConfig.from_mdvae(config, "visual")),
        "emotion": EmotionHead(EmotionHeadConfig(in_dim=config.w_dim)),
    }
    info = {"data": {"note": "random weights, for timing only"}}
    return save_bundle(folder, components, info=info, card="# random bundle (timing)\n")


def _cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its finished children (ffmpeg)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn: Callable, repeats: int) -> tuple[tuple[float, float], object]:
    """Median (wall, CPU) seconds over `repeats` calls after one warm-up call.

    On a shared machine the wall time grows with everyone else's load; the CPU time
    (ours and ffmpeg's) barely does, so it tells what an idle machine would take.
    """
    result = fn()
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), _cpu_seconds()
        result = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(_cpu_seconds() - cpu)
    return (statistics.median(walls), statistics.median(cpus)), result


def main(argv: list[str] | None = None) -> dict[str, tuple[float, float]]:
    parser = argparse.ArgumentParser(prog="python -m train.benchmark_app", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", help=f"bundle folder or Hub id (default: ${BUNDLE_ENV}, "
                                         f"then checkpoints/, else random weights)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int,
                        default=int(os.environ.get("MDVAE_TORCH_THREADS", "1")))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="mdvae-bench-") as tmp:
        bundle = args.bundle or os.environ.get(BUNDLE_ENV)
        if bundle is None and not (DEFAULT_BUNDLE / "config.json").is_file():
            bundle = random_bundle(Path(tmp) / "random")
        with Pipeline(bundle) as pipe:
            rows = stage_times(pipe, args.repeats, Path(tmp))
            print_table(pipe, rows, args)
    return rows


def stage_times(pipe: Pipeline, repeats: int, tmp: Path) -> dict[str, tuple[float, float]]:
    rows: dict[str, tuple[float, float]] = {}
    # Per clip, the stages of `Pipeline.load` + `encode`, timed separately (clip A).
    rows["normalise (ffmpeg decode, 30 fps, 16 kHz)"], clip = timed(
        lambda: normalize_clip(CLIP_A, max_seconds=pipe.max_seconds), repeats)
    rows["face crop, aligned input (resize)"], crops = timed(
        lambda: pipe.aligned_cropper.crop(clip.frames), repeats)
    rows[f"face crop, detection ({pipe.cropper.backend})"], _ = timed(
        lambda: pipe.cropper.crop(clip.frames), repeats)
    audio = clip.audio[: samples_for_frames(len(crops))]
    rows["spectrogram"], power = timed(lambda: power_spectrogram(audio), repeats)
    loaded = pipe.load(CLIP_A, aligned=True)
    rows["encode (VQ-VAE encoders + q(w, z | x))"], enc_a = timed(
        lambda: pipe.encode(loaded), repeats)
    enc_b = pipe.encode(pipe.load(CLIP_B, aligned=True))
    rows["decode (MDVAE + VQ-VAE decoders)"], out = timed(
        lambda: pipe.swap(enc_a, enc_b, {"z_av"}), repeats)
    rows["Griffin-Lim (32 iterations)"], wave = timed(lambda: pipe.waveform(out.power), repeats)
    rows["write video (256x256 H.264 + AAC)"], _ = timed(
        lambda: write_video(tmp / "out.mp4", out.frames, wave, scale=4), repeats)

    def swap_request(aligned: bool):
        a = pipe.encode_file(CLIP_A, aligned=aligned)
        b = pipe.encode_file(CLIP_B, aligned=aligned)
        result = pipe.swap(a, b, {"z_av"})
        pipe.render(result, "bench")
        return pipe.strip([("A", a.clip.frames), ("B", b.clip.frames), ("out", result.frames)])

    rows["SWAP REQUEST, examples (aligned)"], _ = timed(lambda: swap_request(True), repeats)
    rows["SWAP REQUEST, uploads (face detection)"], _ = timed(
        lambda: swap_request(False), repeats)
    rows["SLIDER (interpolate + 128x128 render, clips in session)"], _ = timed(
        lambda: pipe.render(pipe.interpolate(enc_a, enc_b, 0.3), "bench", scale=PREVIEW_SCALE),
        repeats)
    return rows


def print_table(pipe: Pipeline, rows: dict[str, tuple[float, float]], args) -> None:
    print(f"bundle: {pipe.bundle_source}")
    print(f"device: {pipe.device}, torch threads: {args.threads}, CPUs: {os.cpu_count()}, "
          f"load average (1 min) at the end: {os.getloadavg()[0]:.2f}")
    print(f"clips: {CLIP_A.name} + {CLIP_B.name} (3 s each); median of {args.repeats} "
          f"runs after a warm-up\n")
    width = max(map(len, rows))
    print(f"| {'stage':<{width}} | wall s | CPU s |")
    print(f"|{'-' * (width + 2)}|--------|-------|")
    for name, (wall, cpu) in rows.items():
        print(f"| {name:<{width}} | {wall:6.3f} | {cpu:5.2f} |")


if __name__ == "__main__":
    main()
