"""The voice of the synthetic benchmark: source-filter synthesis at 16 kHz of the script's
phone segments, intonation and loudness (`mdvae.data.synthetic_script`), in a speaker's
voice and an emotion's style.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import signal
from scipy.ndimage import uniform_filter1d

from mdvae.data.synthetic_script import FPS, PHONE_SPECS, VOICED, EmotionStyle, SpeakerParams

SAMPLE_RATE = 16000


# ---------------------------------------------------------------------------------------
# Audio: source-filter synthesis at 16 kHz

def _ramp(x: np.ndarray, samples: int) -> np.ndarray:
    """Moving average: turns steps into ramps of `samples`."""
    return uniform_filter1d(x, size=max(1, samples), mode="nearest")


def _formant_sos(formants: tuple[float, ...], bandwidths: tuple[float, ...],
                 scale: float) -> np.ndarray:
    """Cascade of two-pole resonators (Klatt's), each with unit gain at DC: (K, 6) sos."""
    r = np.exp(-np.pi * np.asarray(bandwidths) / SAMPLE_RATE)
    theta = 2 * np.pi * np.asarray(formants) * scale / SAMPLE_RATE
    sos = np.zeros((len(r), 6))
    sos[:, 3] = 1.0
    sos[:, 4] = -2 * r * np.cos(theta)
    sos[:, 5] = r * r
    sos[:, 0] = 1.0 + sos[:, 4] + sos[:, 5]
    return sos


@functools.lru_cache(maxsize=1024)
def _band_sos(lo: float, hi: float) -> np.ndarray:
    hi = min(hi, 0.47 * SAMPLE_RATE)
    return signal.butter(2, [lo, hi], btype="bandpass", fs=SAMPLE_RATE, output="sos")


def synthesize_voice(spk: SpeakerParams, style: EmotionStyle, segments: list[tuple[int, int]],
                log_f0: np.ndarray, loud_db: np.ndarray, rng: np.random.Generator,
                n_frames: int) -> np.ndarray:
    fs = SAMPLE_RATE
    n = round(n_frames * fs / FPS)
    spf = fs / FPS
    starts = np.cumsum([0] + [k for _, k in segments])
    bounds = np.clip(np.round((starts - 0.5) * spf).astype(int), 0, n)
    bounds[0], bounds[-1] = 0, n
    seg_phone = np.array([p for p, _ in segments])
    phone_s = np.repeat(seg_phone, np.diff(bounds))  # (S,) phone at each sample

    # Voice source: pulses at f0(t), shaped like a glottal-flow derivative, plus aspiration.
    f0 = np.exp(np.interp(np.arange(n), np.arange(n_frames) * spf, log_f0))
    phase = np.cumsum(f0 / fs)
    cycle = np.floor(phase)
    at = np.nonzero(np.diff(cycle))[0] + 1  # first sample of each new period
    frac = np.clip((phase[at] - cycle[at]) / (f0[at] / fs), 0.0, 1.0)  # overshoot, samples
    shimmer = 1.0 + (0.08 + 0.2 * style.creak) * rng.standard_normal(len(at))
    shimmer[1::2] *= 1.0 - style.creak
    pulses = np.zeros(n)
    np.add.at(pulses, at, (1.0 - frac) * shimmer)
    np.add.at(pulses, np.maximum(at - 1, 0), frac * shimmer)
    # (1 - z^-1) / (1 - pole z^-1)^2: a glottal pulse with -6 dB/oct above ~100 Hz; the
    # extra pole `dark` darkens lax voices (negative tilt) and vanishes for tense ones.
    pole = 0.95
    dark = float(np.clip(0.45 - 0.25 * style.tilt, 0.0, 0.85))
    den = np.convolve([1.0, -2 * pole, pole * pole], [1.0, -dark])
    source = signal.lfilter([1.0, -1.0], den, pulses)
    voiced_s = np.asarray(VOICED)[phone_s].astype(float)
    source_rms = np.sqrt(np.mean(source[voiced_s > 0] ** 2)) if voiced_s.any() else 1.0
    breath = min(0.9, spk.breath + style.breath)
    source = source + breath * source_rms * 1.5 * rng.standard_normal(n)
    source *= _ramp(voiced_s, 120)

    # Vocal tract: per voiced phone, its four formant resonators in cascade plus a fixed
    # fifth one standing in for the higher formants a cascade otherwise loses. Neighbouring
    # phones cross-fade over 30 ms (the audible coarticulation); fixed filters per phone
    # avoid the clicks that retuning a recursive filter mid-signal makes. Each phone is
    # brought to its own level (open vowels loudest) whatever the filter's gain.
    fade = 240
    warmup = 480
    out = np.zeros(n)
    for k, (p, _) in enumerate(segments):
        lo, hi = bounds[k], bounds[k + 1]
        if not VOICED[p] or hi <= lo:
            continue
        ph = PHONE_SPECS[p]
        sos = _formant_sos(ph.formants + (4500.0,), ph.bandwidths + (400.0,),
                           spk.formant_scale)
        a, b = max(0, lo - fade), min(n, hi + fade)
        start = max(0, a - warmup)
        y = signal.sosfilt(sos, source[start:b])[a - start:]
        core = y[lo - a:hi - a]
        y *= ph.level * rng.uniform(0.85, 1.15) / (np.sqrt(np.mean(core * core)) + 1e-9)
        pos = np.arange(a, b)
        window = np.ones(b - a)
        if lo > 0:
            window *= np.clip((pos - (lo - fade)) / (2 * fade), 0.0, 1.0)
        if hi < n:
            window *= np.clip(((hi + fade) - pos) / (2 * fade), 0.0, 1.0)
        out[a:b] += window * y

    # Noise: fricatives, and the burst + aspiration that end a plosive's closure.
    for k, (p, _) in enumerate(segments):
        ph = PHONE_SPECS[p]
        lo, hi = bounds[k], bounds[k + 1]
        length = hi - lo
        if ph.kind not in ("fricative", "plosive") or length < 16:
            continue
        band = (ph.band[0] * spk.formant_scale ** 0.5, ph.band[1] * spk.formant_scale ** 0.5)
        noise = signal.sosfilt(_band_sos(*band), rng.standard_normal(length + 256))[256:]
        noise /= np.sqrt(np.mean(noise**2)) + 1e-9
        if ph.kind == "fricative":
            edge = min(240, length // 3)
            env = np.ones(length)
            env[:edge] = np.linspace(0, 1, edge)
            env[length - edge:] = np.linspace(1, 0, edge)
            out[lo:hi] += ph.level * env * noise
        else:
            burst = min(int(0.012 * fs), length // 4)
            asp = min(int(0.025 * fs), length // 3)
            b0 = hi - burst - asp
            env = np.zeros(length)
            env[b0 - lo:b0 - lo + burst] = np.exp(-np.arange(burst) / (burst / 3))
            env[b0 - lo + burst:] = 0.25 * np.linspace(1, 0.3, asp)
            out[lo:hi] += ph.level * 1.5 * env * noise

    # Audio-only dynamics: the loudness contour. Then peak normalisation and a noise floor
    # 70 dB down, so that the spectrogram has no exact zeros (a clip of pure silence keeps
    # just the floor).
    out *= 10.0 ** (np.interp(np.arange(n), np.arange(n_frames) * spf, loud_db) / 20.0)
    peak = np.max(np.abs(out))
    if peak > 0:
        out /= peak
    out += 3e-4 * rng.standard_normal(n)
    if peak > 0:
        out /= np.max(np.abs(out))
    return out.astype(np.float32)
