"""A talking-face file turned into the model's two aligned streams: face crops and spectrogram."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mdvae.media.audio import (
    FPS,
    align_streams,
    peak_normalize,
    power_spectrogram,
    samples_for_frames,
)
from mdvae.media.face import FaceCropper
from mdvae.media.video import MediaError, normalize_clip, read_audio


@dataclass
class AVClip:
    """T frames of both modalities on the same 30 fps clock.

    frames: (T, 64, 64, 3) uint8 aligned face crops; power: (T, 513) float32 power
    spectrogram; audio: (S,) float32 16 kHz, S = round(T * 16000 / 30), peak-normalised;
    source: the video file; trimmed: True when max_seconds cut the clip; lost_frames: video
    frames of the file that did not decode (see mdvae.media.video.Clip); face_note: which
    face was used when the clip holds several.
    """

    frames: np.ndarray
    power: np.ndarray
    audio: np.ndarray
    source: str
    trimmed: bool
    fps: int = FPS
    lost_frames: int = 0
    face_note: str = ""

    @property
    def seconds(self) -> float:
        return len(self.frames) / self.fps


def _fit(audio: np.ndarray, n_samples: int) -> np.ndarray:
    """Cut or pad (with silence) to exactly n_samples."""
    return np.pad(audio[:n_samples], (0, max(0, n_samples - len(audio))))


def load_av_clip(path, cropper: FaceCropper, *, audio_path=None, min_seconds: float = 1.0,
                 max_seconds: float | None = None) -> AVClip:
    """Decode, check, crop and analyse one clip (see AVClip).

    audio_path: take the sound from this file instead (MEAD keeps it in a .m4a beside the
    video); it is taken to start with the video. The checks that need no face detection
    (sound present, long enough) come first, so a bad upload fails fast.
    """
    clip = normalize_clip(path, max_seconds=max_seconds)
    name = Path(path).name
    audio = read_audio(audio_path) if audio_path is not None else clip.audio
    if audio is None or not len(audio):
        raise MediaError(f"{name} has no audio track: the model needs the speech as well as "
                         f"the face; record or upload a clip with sound")
    seconds = clip.seconds
    if seconds < min_seconds:
        raise MediaError(f"{name} is too short: its length is {seconds:.2f} s of video, and "
                         f"clips must last at least {min_seconds:g} s")
    track = cropper.track(clip.frames) if hasattr(cropper, "track") else None
    crops = cropper.crop(clip.frames, track) if track is not None else cropper.crop(clip.frames)
    # crops: (N, 64, 64, 3)
    # The sound is fitted to the video's duration, so the spectrogram has N or N + 1 frames.
    audio = peak_normalize(_fit(audio, samples_for_frames(len(crops))))
    frames, power = align_streams(crops, power_spectrogram(audio))
    return AVClip(frames=frames, power=power, audio=audio[: samples_for_frames(len(frames))],
                  source=str(path), trimmed=clip.trimmed, lost_frames=clip.lost_frames,
                  face_note=track.note if track is not None else "")
