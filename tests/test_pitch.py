"""The pitch heard in audio: a harmonic comb on power spectrograms (mdvae.eval.pitch)."""

import numpy as np
import pytest

from mdvae.data.synthetic import generate_clip
from mdvae.eval import pitch
from mdvae.eval.judges import f0_semitones
from mdvae.media.audio import N_BINS, N_FFT, SAMPLE_RATE, power_spectrogram


def harmonic_spectrum(f0_hz: float) -> np.ndarray:
    """One frame's power (N_BINS,): harmonics of f0 falling 12 dB an octave, each a peak a
    Hann window wide, over a floor 60 dB below the first."""
    freqs = np.arange(N_BINS) * SAMPLE_RATE / N_FFT
    power = np.full(N_BINS, 1e-6)
    for k in range(1, int(SAMPLE_RATE / 2 // f0_hz) + 1):
        power += k ** -2.0 * np.exp(-0.5 * ((freqs - k * f0_hz) / (SAMPLE_RATE / N_FFT)) ** 2)
    return power


@pytest.mark.parametrize("f0_hz", [85.0, 123.4, 180.0, 247.0, 330.0])
def test_the_comb_peaks_at_the_f0_of_a_harmonic_spectrum(f0_hz):
    # among the candidates within 4 semitones (the tracks that heard_tracks weighs are
    # a few semitones apart), the best is the truth, within the grid's step and the
    # interpolation between bins (15.6 Hz wide; harmonics up to 3 kHz pin f0 much finer)
    truth = f0_semitones(np.array(f0_hz))
    near = np.abs(pitch.SEMITONES - truth) <= 4.0
    scores = pitch.comb_scores(harmonic_spectrum(f0_hz)[None])[0]
    found = pitch.SEMITONES[near][np.argmax(scores[near])]
    assert found == pytest.approx(truth, abs=0.1)


def voice(speaker: int, emotion: str, seed: int):
    clip = generate_clip(speaker, emotion, 1 if emotion == "neutral" else 2, seed, n_frames=90)
    power = power_spectrogram(clip.audio)[:90]
    return power, f0_semitones(clip.factors["f0"])


def test_a_clean_voice_is_heard_with_its_own_level_and_contour():
    # two speakers' synthetic voices, levels apart: each clip's audio has its own track
    power_a, f0_a = voice(3, "neutral", 1)
    power_b, f0_b = voice(11, "surprised", 2)
    both = np.isfinite(f0_a) & np.isfinite(f0_b)
    assert both.sum() >= 10
    assert abs(np.median(f0_a[both]) - np.median(f0_b[both])) >= pitch.LEVEL_MARGIN
    tracks = pitch.heard_tracks(np.stack([power_a, power_b]), np.stack([f0_a, f0_a]),
                                np.stack([f0_b, f0_b]))
    np.testing.assert_array_equal(tracks, [[0, 0], [1, 1]])
    counts = pitch.heard_counts(tracks, np.stack([f0_a, f0_a]), np.stack([f0_b, f0_b]))
    assert counts["level"] == (1, 1, 2)


def test_a_voice_moved_to_another_level_is_heard_there():
    # A's own voice shifted up in frequency by B's level minus A's (the spectrum's bins
    # resampled: formants move too, the harmonics land where B's level puts them): heard
    # with B's level and A's contour
    power_a, f0_a = voice(4, "neutral", 3)
    _, f0_b = voice(9, "happy", 4)
    both = np.isfinite(f0_a) & np.isfinite(f0_b)
    shift = np.median(f0_b[both]) - np.median(f0_a[both])
    assert abs(shift) >= pitch.LEVEL_MARGIN
    bins = np.arange(N_BINS)
    moved = np.stack([np.interp(bins / 2 ** (shift / 12), bins, row) for row in power_a])
    tracks = pitch.heard_tracks(moved[None], f0_a[None], f0_b[None])
    np.testing.assert_array_equal(tracks, [[1, 0]])


def test_too_few_voiced_frames_in_common_are_not_read():
    power, f0 = voice(2, "neutral", 5)
    silent = np.full_like(f0, np.nan)
    tracks = pitch.heard_tracks(power[None], f0[None], silent[None])
    assert np.isnan(tracks).all()
    counts = pitch.heard_counts(tracks, f0[None], silent[None])
    assert counts == {"level": (0, 0, 0), "contour": (0, 0, 0)}
    with pytest.raises(ValueError, match="shapes differ"):
        pitch.heard_tracks(power[None], f0[None, :10], f0[None])
