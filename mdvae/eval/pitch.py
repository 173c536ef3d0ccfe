"""Pitch heard in decoded audio: which clip's pitch level and contour a swapped decoding has.

A linear read-out of f0 from the stage-1 audio features (`diagnostics.fit_readout`) is
fitted on clean clips, where a speaker's pitch and the rest of the voice (formants, tilt)
go together, so it can read a voice's timbre as its pitch. On the shipped MDVAE's
validation speakers it said the pitch level follows a swapped w in 0.80 of the clips,
where the harmonics of the decoded audio put it there in 0.06. This module reads the
harmonics themselves, on the power spectrogram that the audio VQ-VAE decodes.

A harmonic comb scores each candidate f0 of a frame: the mean log power at its harmonics
(up to COMB_MAX_HZ) minus the mean at a third, half and two thirds of the way to the next
one. Twice or three times f0 is penalised (its in-between points fall on harmonics), and
half of it too (half of its "harmonics" fall between the true ones), but not five times
f0, and creaky voices show a subharmonic: the best candidate of a whole range is not a
frame's pitch. Near the truth the comb is sharp, so a clip is not read as one f0 track: of the
four tracks that a swap could produce, A's or B's contour at A's or B's level (the
judges' views, `disentanglement.score_factor`: the contour is f0 minus its median over
the frames voiced in both clips, the level that median), the one with the highest total
comb score over those frames is taken. Clean clips read this way give their own level and
contour in every pair tried (`tests/test_pitch.py`); the audio VQ-VAE's reconstructions of
B are heard with B's level and contour in 0.97 and 0.98 of 440 pairs of held-out clips
(`data/synth_s7`, new clips of mostly training speakers).

A contour has a shape and a size. The synthetic voice's accents are placed by the clip
(their timing, which a z is to carry), but their size is the speaker's range times the
emotion's factor (`synthetic_script.intonation`): a clip constant, which belongs with w.
So the tracks are also read a second way, with the size free: of the eight tracks A's or
B's level, plus A's or B's contour shape (the contour over its spread) at A's or B's spread,
the one with the highest comb score says whose shape and whose size the audio has. The
first reading ("contour") counts a decoding that keeps B's accents at A's size as neither
clip's; the second ("shape", "size") tells the two apart.
"""

from __future__ import annotations

import numpy as np

from mdvae.eval.judges import F0_REFERENCE_HZ, MARGINS
from mdvae.media.audio import N_BINS, N_FFT, SAMPLE_RATE

SEMITONES = np.arange(-8.0, 28.0, 0.05)  # candidate f0, semitones re F0_REFERENCE_HZ
COMB_MAX_HZ = 3000.0  # harmonics above this are too weak and too blurred to count
MIN_VOICED_FRAMES = 5  # f0 contour / level need this many frames voiced in both clips
LEVEL_MARGIN = MARGINS["f0"][0]  # semitones between A's and B's levels for a pair to count
CONTOUR_MARGIN = 1.0  # mean |contour A - contour B|, semitones, for a pair to count
# a contour's size: its root mean square about the clip's median over the frames voiced in
# both clips, in semitones; sizes must differ by this factor for a pair to count for "size"
# (the synthetic speakers' ranges span 2 to 5 semitones, the emotions scale them by 0.5 to
# 2.5); and shapes, scaled to the smaller size, by CONTOUR_MARGIN on average for "shape"
SIZE_MARGIN = 1.5
READINGS = ("level", "contour", "shape", "size")  # the columns of `heard_tracks`


def comb_matrix(n_bins: int = N_BINS, *, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT,
                semitones: np.ndarray = SEMITONES) -> np.ndarray:
    """(candidates, n_bins): log power spectrum -> comb score of each candidate f0, as
    linear-interpolation weights: +1/K at each of the K harmonics below COMB_MAX_HZ, -1/(3K)
    at a third, a half and two thirds of the way to the next harmonic."""
    hz_per_bin = sample_rate / n_fft
    f0 = F0_REFERENCE_HZ * 2.0 ** (semitones / 12.0)
    out = np.zeros((len(f0), n_bins))
    for i, f in enumerate(f0):
        k = np.arange(1, int(COMB_MAX_HZ // f) + 1, dtype=np.float64)
        for offset, weight in ((0.0, 1.0), (1 / 3, -1 / 3), (0.5, -1 / 3), (2 / 3, -1 / 3)):
            pos = (k + offset) * f / hz_per_bin
            lo = np.floor(pos).astype(np.int64)
            frac = pos - lo
            keep = lo + 1 < n_bins
            np.add.at(out[i], lo[keep], weight * (1 - frac[keep]) / len(k))
            np.add.at(out[i], lo[keep] + 1, weight * frac[keep] / len(k))
    return out


_COMB: np.ndarray | None = None


def comb_scores(power: np.ndarray) -> np.ndarray:
    """Power spectrogram frames (..., N_BINS), linear -> comb scores (..., candidates)."""
    global _COMB
    if _COMB is None:
        _COMB = comb_matrix().astype(np.float32)
    log_power = np.log(np.maximum(np.asarray(power, np.float32), 1e-10))
    return log_power @ _COMB.T


def _track_score(scores: np.ndarray, track: np.ndarray) -> float:
    """Total comb score (T, candidates) along a track of semitones (T,)."""
    idx = np.clip(np.rint((track - SEMITONES[0]) / (SEMITONES[1] - SEMITONES[0])), 0,
                  len(SEMITONES) - 1).astype(np.int64)
    return float(scores[np.arange(len(track)), idx].sum())


def _views(a: np.ndarray, b: np.ndarray):
    """A's and B's f0 over the frames voiced in both: (levels, contours, sizes)."""
    levels = (float(np.median(a)), float(np.median(b)))
    contours = (a - levels[0], b - levels[1])
    sizes = tuple(max(float(np.sqrt(np.mean(c ** 2))), 1e-3) for c in contours)
    return levels, contours, sizes


def heard_tracks(power: np.ndarray, f0_a: np.ndarray, f0_b: np.ndarray) -> np.ndarray:
    """Per clip (N, 4), the columns READINGS: whose level and whose contour the decoded
    audio has among the four tracks of A's or B's level and contour; and whose contour shape
    and whose contour size among the eight that free the size; 0 for A's and 1 for B's (NaN
    where A and B share fewer than MIN_VOICED_FRAMES voiced frames).

    power (N, T, N_BINS): decoded power spectrograms; f0_a, f0_b (N, T): the true f0 of the
    target A and the source B, semitones, NaN on unvoiced frames."""
    power = np.asarray(power)
    f0_a, f0_b = np.asarray(f0_a, np.float64), np.asarray(f0_b, np.float64)
    if not (power.shape[:2] == f0_a.shape == f0_b.shape):
        raise ValueError(f"shapes differ: {power.shape}, {f0_a.shape}, {f0_b.shape}")
    out = np.full((len(power), len(READINGS)), np.nan)
    for i in range(len(power)):
        both = np.isfinite(f0_a[i]) & np.isfinite(f0_b[i])
        if both.sum() < MIN_VOICED_FRAMES:
            continue
        scores = comb_scores(power[i][both])
        levels, contours, sizes = _views(f0_a[i][both], f0_b[i][both])
        # (level's, shape's, size's clip) -> comb score of that track
        score = {(lv, sh, sz): _track_score(scores, levels[lv] + contours[sh] * sizes[sz]
                                            / sizes[sh])
                 for lv in (0, 1) for sh in (0, 1) for sz in (0, 1)}
        lv, ct, _ = max((k for k in score if k[1] == k[2]), key=score.__getitem__)
        _, sh, sz = max(score, key=score.__getitem__)
        out[i] = lv, ct, sh, sz
    return out


def heard_counts(tracks: np.ndarray, f0_a: np.ndarray,
                 f0_b: np.ndarray) -> dict[str, tuple[int, int, int]]:
    """{READINGS}: (follow, stay, n) of `heard_tracks` over the pairs whose levels differ
    by LEVEL_MARGIN or more (contours by CONTOUR_MARGIN on average; contour sizes by a
    factor of SIZE_MARGIN; shapes, at the smaller size, by CONTOUR_MARGIN)."""
    out = {k: [0, 0, 0] for k in READINGS}
    for i, chosen in enumerate(np.asarray(tracks)):
        if not np.isfinite(chosen).all():
            continue
        both = np.isfinite(f0_a[i]) & np.isfinite(f0_b[i])
        levels, (ca, cb), (sa, sb) = _views(f0_a[i][both], f0_b[i][both])
        differ = {"level": abs(levels[0] - levels[1]) >= LEVEL_MARGIN,
                  "contour": np.mean(np.abs(ca - cb)) >= CONTOUR_MARGIN,
                  "shape": np.mean(np.abs(ca / sa - cb / sb)) * min(sa, sb) >= CONTOUR_MARGIN,
                  "size": max(sa, sb) / min(sa, sb) >= SIZE_MARGIN}
        for k, (name, counts) in enumerate(out.items()):
            if differ[name]:
                counts[0] += int(chosen[k] == 1)
                counts[1] += int(chosen[k] == 0)
                counts[2] += 1
    return {k: tuple(v) for k, v in out.items()}
