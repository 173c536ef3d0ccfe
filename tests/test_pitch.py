"""The pitch heard in audio: a harmonic comb on power spectrograms (mdvae.eval.pitch)."""

import numpy as np
import pytest

from mdvae.data.synthetic import generate_clip
from mdvae.eval import pitch
from mdvae.eval.judges import F0_REFERENCE_HZ, f0_semitones
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
    np.testing.assert_array_equal(tracks, [[0, 0, 0, 0], [1, 1, 1, 1]])
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
    np.testing.assert_array_equal(tracks[:, :3], [[1, 0, 0]])


def harmonic_power(track: np.ndarray, voiced: np.ndarray) -> np.ndarray:
    """(T, N_BINS): harmonic spectra along a track of semitones on the voiced frames, the
    floor elsewhere."""
    hz = F0_REFERENCE_HZ * 2.0 ** (track / 12.0)
    return np.stack([harmonic_spectrum(f) if v else np.full(N_BINS, 1e-6)
                     for f, v in zip(hz, voiced)])


def test_a_contour_is_heard_by_its_shape_and_its_size_apart():
    # two generated clips whose accents differ in size (a speaker's range times an
    # emotion's factor) as well as in timing, B's level moved 4 semitones up; audio made of
    # harmonic spectra along mixed tracks: each is heard with the level, shape and size it
    # was made with
    _, f0_a = voice(5, "sad", 10)
    _, f0_b = voice(12, "surprised", 11)
    f0_b = f0_b + 4.0
    both = np.isfinite(f0_a) & np.isfinite(f0_b)
    a, b = f0_a[both], f0_b[both]
    la, lb = np.median(a), np.median(b)
    sa, sb = (np.sqrt(np.mean((x - np.median(x)) ** 2)) for x in (a, b))
    assert max(sa, sb) / min(sa, sb) >= pitch.SIZE_MARGIN
    assert abs(la - lb) >= pitch.LEVEL_MARGIN
    assert np.mean(np.abs((a - la) / sa - (b - lb) / sb)) * min(sa, sb) >= pitch.CONTOUR_MARGIN

    def track(level, shape, size):
        return np.where(both, level + np.nan_to_num(shape - np.nanmedian(shape[both])) * size,
                        0.0)

    made = {(0, 0, 0): track(la, f0_a / sa, sa), (0, 0, 1): track(la, f0_a / sa, sb),
            (1, 1, 0): track(lb, f0_b / sb, sa), (1, 0, 1): track(lb, f0_a / sa, sb)}
    power = np.stack([harmonic_power(t, both) for t in made.values()])
    n = len(made)
    tracks = pitch.heard_tracks(power, np.stack([f0_a] * n), np.stack([f0_b] * n))
    read = pitch.READINGS.index
    np.testing.assert_array_equal(tracks[:, [read("level"), read("shape"), read("size")]],
                                  list(made))
    assert tracks[0, read("contour")] == 0  # A's own track: the four-track reading agrees
    counts = pitch.heard_counts(tracks, np.stack([f0_a] * n), np.stack([f0_b] * n))
    assert counts["size"] == (2, 2, 4)
    assert counts["shape"] == (1, 3, 4)


def test_pairs_count_where_their_contours_differ_in_shape_or_in_size():
    t = np.arange(40.0)
    wave = np.sin(t / 3.0)
    f0_a = 10.0 + 2.0 * wave
    chosen = np.array([[0.0, 0.0, 0.0, 1.0]])
    # the same shape at twice the size: counts for the size and the contour, not the shape
    counts = pitch.heard_counts(chosen, f0_a[None], (10.0 + 4.0 * wave)[None])
    assert counts["size"] == (1, 0, 1) and counts["shape"] == (0, 0, 0)
    assert counts["contour"] == (0, 1, 1) and counts["level"] == (0, 0, 0)
    # the mirrored shape at the same size: the shape and the contour, not the size
    counts = pitch.heard_counts(chosen, f0_a[None], (10.0 - 2.0 * wave)[None])
    assert counts["shape"] == (0, 1, 1) and counts["size"] == (0, 0, 0)


def test_too_few_voiced_frames_in_common_are_not_read():
    power, f0 = voice(2, "neutral", 5)
    silent = np.full_like(f0, np.nan)
    tracks = pitch.heard_tracks(power[None], f0[None], silent[None])
    assert np.isnan(tracks).all()
    counts = pitch.heard_counts(tracks, f0[None], silent[None])
    assert counts == {k: (0, 0, 0) for k in pitch.READINGS}
    with pytest.raises(ValueError, match="shapes differ"):
        pitch.heard_tracks(power[None], f0[None, :10], f0[None])
