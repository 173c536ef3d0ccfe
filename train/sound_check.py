"""How much of the sound survives Griffin-Lim: the example clips and real speech.

For each clip, its power spectrogram P is turned back into a waveform by Griffin-Lim, both
as it is (what Griffin-Lim alone loses) and after the audio VQ-VAE (what the app's
results go through at best, with no stage-2 model). Measured on the output against the
input: spectral convergence (magnitudes, gain matched), the share of voiced frames whose
pitch (autocorrelation, 70-400 Hz) is within a semitone of the input's, and the mean
harmonicity (peak normalised autocorrelation of voiced frames; 1 is a pure periodic tone,
noise is near 0). Settings compared: --iters (one or more) with torchaudio's momentum.

    python -m train.sound_check --iters 32 100 --threads 1
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from mdvae.media.audio import (
    SAMPLE_RATE,
    griffin_lim,
    power_spectrogram,
    spectral_convergence,
)
from mdvae.media.video import normalize_clip, read_audio
from mdvae.pipeline import Pipeline

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SENTENCES = ["The birch canoe slid on the smooth planks.",
             "Glue the sheet to the dark blue background.",
             "It is easy to tell the depth of a well."]


def pitch_track(wave: np.ndarray, frame: int = 640, hop: int = 320) -> tuple[np.ndarray, ...]:
    """Per 40 ms frame: f0 in Hz (NaN unvoiced) and the normalised autocorrelation peak."""
    lo, hi = SAMPLE_RATE // 400, SAMPLE_RATE // 70
    f0, peak = [], []
    energy = np.array([np.sum(wave[i:i + frame] ** 2) for i in range(0, len(wave) - frame, hop)])
    loud = energy > 0.01 * energy.max() if len(energy) else energy
    for k, i in enumerate(range(0, len(wave) - frame, hop)):
        x = wave[i:i + frame] - wave[i:i + frame].mean()
        ac = np.correlate(x, x, "full")[frame - 1:]
        if ac[0] <= 0 or not loud[k]:
            f0.append(np.nan)
            peak.append(np.nan)
            continue
        ac = ac / ac[0]
        lag = lo + int(np.argmax(ac[lo:hi]))
        peak.append(float(ac[lag]))
        f0.append(SAMPLE_RATE / lag if ac[lag] > 0.5 else np.nan)
    return np.array(f0), np.array(peak)


def compare(ref_wave: np.ndarray, ref_power: np.ndarray, out: np.ndarray) -> dict[str, float]:
    f_ref, _ = pitch_track(ref_wave)
    f_out, h_out = pitch_track(out)
    n = min(len(f_ref), len(f_out))
    voiced = ~np.isnan(f_ref[:n])
    same = np.abs(12 * np.log2(f_out[:n][voiced] / f_ref[:n][voiced])) < 1.0
    return {"sc": spectral_convergence(ref_power, power_spectrogram(out), match_gain=True),
            "pitch_kept": float(np.mean(np.nan_to_num(same, nan=0.0))) if voiced.any() else np.nan,
            "harmonicity": float(np.nanmean(h_out)) if np.isfinite(h_out).any() else 0.0}


def clips(folder: Path) -> list[tuple[str, np.ndarray]]:
    out = [(p.stem, normalize_clip(p).audio) for p in sorted(EXAMPLES.glob("*.mp4"))]
    if shutil.which("espeak-ng"):
        for i, text in enumerate(SENTENCES):
            wav = folder / f"s{i}.wav"
            subprocess.run(["espeak-ng", "-w", str(wav), "-v", ["en", "en+f3", "en-us"][i], text],
                           check=True, capture_output=True)
            out.append((f"espeak_{i}", read_audio(wav)[: 3 * SAMPLE_RATE]))
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m train.sound_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, nargs="+", default=[32, 100])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = Pipeline(device="cpu")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, wave in clips(Path(tmp)):
            power = power_spectrogram(wave)
            _, through_vq = pipe.codec.reconstruct(np.zeros((len(power), 64, 64, 3), np.uint8),
                                                   power)
            base = {"input": compare(wave, power, wave)}
            for n in args.iters:
                base[f"GL {n}"] = compare(wave, power, griffin_lim(power, n_iter=n))
                base[f"VQ + GL {n}"] = compare(wave, power, griffin_lim(through_vq, n_iter=n))
            rows[name] = base
            print(name, "  ".join(f"{k}: sc {v['sc']:.3f} pitch {v['pitch_kept']:.2f} "
                                  f"harm {v['harmonicity']:.2f}" for k, v in base.items()))
    pipe.close()
    for group in ("spk", "espeak"):
        chosen = [v for k, v in rows.items() if k.startswith(group)]
        if chosen:
            print(f"mean over {group}*:")
            for setting in chosen[0]:
                vals = {m: np.nanmean([c[setting][m] for c in chosen])
                        for m in ("sc", "pitch_kept", "harmonicity")}
                print(f"  {setting:12} " + "  ".join(f"{m} {v:.3f}" for m, v in vals.items()))
    return rows


if __name__ == "__main__":
    main()
