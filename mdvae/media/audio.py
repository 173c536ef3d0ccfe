"""Audio conventions: 16 kHz mono, one power-spectrogram frame per 30 fps video frame.

The hop of 533 samples gives 16000 / 533 = 30.02 spectrogram frames per second, so frame t of
the spectrogram (centred at sample 533 t) and video frame t (at t / 30 s) drift apart by
only 0.06 %: 0.6 ms after ten seconds. Both streams are trimmed to the same length T.
"""

import numpy as np
import torch
from torchaudio.transforms import GriffinLim, Spectrogram

SAMPLE_RATE = 16000
FPS = 30
N_FFT = 1024
HOP = 533
N_BINS = N_FFT // 2 + 1  # 513

# Below this peak a waveform is treated as silence and left as it is rather than amplified.
_SILENCE = 1e-8


def samples_for_frames(n_frames: int) -> int:
    """Number of audio samples that last as long as `n_frames` video frames."""
    return round(n_frames * SAMPLE_RATE / FPS)


def _spectrogram() -> Spectrogram:
    return Spectrogram(n_fft=N_FFT, win_length=N_FFT, hop_length=HOP, power=2.0,
                       window_fn=torch.hann_window)


def power_spectrogram(wave: np.ndarray) -> np.ndarray:
    """Power spectrogram |STFT|^2 of a 16 kHz waveform.

    wave: (S,) float. Returns (T, 513) float32 with T = 1 + S // 533 (centred frames), i.e.
    T or T + 1 frames for the audio of T video frames; `align_streams` trims the extra one.
    """
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"expected a mono waveform (S,), got shape {wave.shape}")
    with torch.no_grad():
        power = _spectrogram()(torch.from_numpy(wave))  # (513, T)
    return power.T.contiguous().numpy()  # (T, 513)


def griffin_lim(power: np.ndarray, n_iter: int = 32, *, length: int | None = None,
                seed: int = 0) -> np.ndarray:
    """Waveform whose power spectrogram approximates `power` (T, 513), peak-normalised.

    length: output samples; by default the duration of T video frames, round(T * 16000 / 30),
    so the waveform can be muxed with T frames of video. `seed` fixes the random initial
    phase, making the result reproducible.
    """
    power = np.asarray(power, dtype=np.float32)
    if power.ndim != 2 or power.shape[1] != N_BINS:
        raise ValueError(f"expected a power spectrogram (T, {N_BINS}), got shape {power.shape}")
    if length is None:
        length = samples_for_frames(power.shape[0])
    # No `length` for GriffinLim itself: it re-analyses every iterate, which must keep T frames.
    transform = GriffinLim(n_fft=N_FFT, n_iter=n_iter, win_length=N_FFT, hop_length=HOP,
                           window_fn=torch.hann_window, power=2.0)
    spec = torch.from_numpy(np.maximum(power, 0.0)).T.contiguous()  # (513, T)
    # GriffinLim draws its initial phase from the global generator: fork it so the seed
    # neither depends on nor disturbs the caller's random state.
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        wave = transform(spec).numpy()  # (533 (T - 1),): centred frames end at the last centre
    wave = np.pad(wave[:length], (0, max(0, length - len(wave))))
    return peak_normalize(wave)


def peak_normalize(wave: np.ndarray, peak: float = 1.0) -> np.ndarray:
    """Scale so that max |wave| == peak; silence (all samples ~0) is returned unchanged."""
    wave = np.asarray(wave, dtype=np.float32)
    top = float(np.max(np.abs(wave))) if wave.size else 0.0
    if top < _SILENCE:
        return wave.copy()
    return (wave * (peak / top)).astype(np.float32)


def align_streams(frames, power):
    """Trim video frames (N, ...) and spectrogram frames (M, 513) to T = min(N, M)."""
    t = min(len(frames), len(power))
    return frames[:t], power[:t]


def _common_length(ref: np.ndarray, est: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both spectrograms as float64, cut to their common number of frames."""
    ref = np.asarray(ref, dtype=np.float64)
    est = np.asarray(est, dtype=np.float64)
    if ref.ndim != 2 or est.ndim != 2 or ref.shape[1] != est.shape[1]:
        raise ValueError(f"expected two spectrograms (T, F), got {ref.shape} and {est.shape}")
    return align_streams(ref, est)


def spectral_convergence(ref: np.ndarray, est: np.ndarray, *, match_gain: bool = False) -> float:
    """|| |S_ref| - |S_est| ||_F / || |S_ref| ||_F on magnitudes, from power spectrograms (T, F).

    0 is a perfect match. match_gain: first scale |S_est| by the least-squares gain, for
    estimates whose level is arbitrary (peak-normalised Griffin-Lim output, for example).
    """
    ref, est = _common_length(ref, est)
    mag_ref = np.sqrt(np.maximum(ref, 0.0))
    mag_est = np.sqrt(np.maximum(est, 0.0))
    if match_gain:
        mag_est = mag_est * (np.sum(mag_ref * mag_est) / max(np.sum(mag_est**2), 1e-20))
    return float(np.linalg.norm(mag_ref - mag_est) / max(np.linalg.norm(mag_ref), 1e-12))


def log_spectral_distance(ref: np.ndarray, est: np.ndarray, *, floor_db: float = 80.0) -> float:
    """Log-spectral distance in dB between power spectrograms (T, F).

    Mean over frames of the RMS over bins of 10 log10(P_ref / P_est). Both are floored at
    `floor_db` below the reference's peak, so near-silent bins (whose level is arbitrary)
    cannot dominate the distance.
    """
    ref, est = _common_length(ref, est)
    floor = max(float(ref.max()), 1e-20) * 10.0 ** (-floor_db / 10.0)
    diff_db = 10.0 * (np.log10(np.maximum(ref, floor)) - np.log10(np.maximum(est, floor)))
    return float(np.mean(np.sqrt(np.mean(diff_db**2, axis=1))))
