import numpy as np
import pytest

from mdvae.media.audio import (
    FPS,
    HOP,
    N_BINS,
    SAMPLE_RATE,
    align_streams,
    griffin_lim,
    log_spectral_distance,
    peak_normalize,
    power_spectrogram,
    samples_for_frames,
    spectral_convergence,
)


def harmonic_chirp(n_samples: int) -> np.ndarray:
    """A vibrato harmonic tone with a tremolo, plus a rising chirp."""
    t = np.arange(n_samples) / SAMPLE_RATE
    pitch = 140 + 20 * np.sin(2 * np.pi * 1.5 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    wave = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.6 + 0.4 * np.sin(4 * np.pi * t))
    wave += 0.3 * np.sin(2 * np.pi * (300 * t + 1200 * t**2))
    return peak_normalize(wave.astype(np.float32))


def test_spectrogram_has_one_frame_per_video_frame():
    assert N_BINS == 513 and HOP == 533 and SAMPLE_RATE / HOP == pytest.approx(FPS, rel=1e-3)
    for n_frames in (1, 29, 30, 31, 45, 90, 301, 900):
        audio = np.zeros(samples_for_frames(n_frames), dtype=np.float32)
        power = power_spectrogram(audio)
        assert power.shape[1] == 513 and power.dtype == np.float32
        assert abs(len(power) - n_frames) <= 1
        frames = np.zeros((n_frames, 64, 64, 3), dtype=np.uint8)
        frames, power = align_streams(frames, power)
        assert len(frames) == len(power) == n_frames


def test_griffin_lim_round_trip_keeps_the_spectrogram():
    wave = harmonic_chirp(samples_for_frames(60))
    power = power_spectrogram(wave)[:60]  # (T, 513) as align_streams leaves it
    rebuilt = griffin_lim(power, n_iter=32)
    assert rebuilt.shape == (samples_for_frames(60),) and rebuilt.dtype == np.float32
    assert np.max(np.abs(rebuilt)) == pytest.approx(1.0)
    again = power_spectrogram(rebuilt)
    # Measured 0.091 (gain-matched spectral convergence) and 3.2 dB on this signal.
    assert spectral_convergence(power, again, match_gain=True) < 0.15
    assert log_spectral_distance(power, again) < 4.5
    # A different sound is far away by both measures.
    other = power_spectrogram(harmonic_chirp(samples_for_frames(60))[::-1].copy())
    assert spectral_convergence(power, other, match_gain=True) > 0.5


def test_griffin_lim_is_reproducible_and_leaves_global_rng_alone():
    import torch

    power = power_spectrogram(harmonic_chirp(samples_for_frames(10)))
    torch.manual_seed(123)
    first = griffin_lim(power, n_iter=4)
    after = torch.rand(1)
    torch.manual_seed(123)
    second = griffin_lim(power, n_iter=4, seed=0)
    assert np.array_equal(first, second)
    assert torch.equal(after, torch.rand(1))
    assert len(griffin_lim(power, n_iter=2, length=1234)) == 1234


def test_measures_of_spectral_distance():
    power = power_spectrogram(harmonic_chirp(8000))
    # Some bins of a real spectrogram round to exactly 0, and which ones depends on the CPU's
    # FFT. Floored at -120 dB re the peak, every bin is positive and above the -300 dB floor
    # below, so the scaled copies differ from it on every bin.
    power = np.maximum(power, power.max() * np.float32(1e-12))
    assert spectral_convergence(power, power) == pytest.approx(0.0, abs=1e-9)
    assert log_spectral_distance(power, power) == pytest.approx(0.0, abs=1e-9)
    assert spectral_convergence(power, 4 * power) == pytest.approx(1.0)
    assert spectral_convergence(power, 4 * power, match_gain=True) == pytest.approx(0.0, abs=1e-6)
    # A uniform gain of 10 dB on every bin above the floor is a distance of 10 dB. 10 * power
    # is rounded to float32 (relative error <= 2**-24 per bin), which moves each bin's
    # difference by at most 10 log10(1 + 2**-24) = 2.6e-7 dB, and so the distance.
    tol = 10 * np.log10(1 + 2.0**-24)
    assert log_spectral_distance(power, 10 * power, floor_db=300) == pytest.approx(10.0, abs=tol)


def test_peak_normalize():
    wave = np.array([0.1, -0.4, 0.2], dtype=np.float32)
    assert np.allclose(peak_normalize(wave), [0.25, -1.0, 0.5])
    assert np.array_equal(peak_normalize(np.zeros(5, np.float32)), np.zeros(5))
    assert peak_normalize(np.zeros(0, np.float32)).shape == (0,)
