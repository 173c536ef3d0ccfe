"""Procedural audiovisual talking faces with known generating factors (DESIGN.md §6).

A cartoon face on a coloured background says a random string of phones, in the tradition of
the Sprites data DSAE was evaluated on. Every clip comes from four integers, (speaker,
emotion, level, seed), and carries its generating factors frame by frame, grouped as the
MDVAE's latents should split them:

- static, both streams (w): the speaker (face geometry, skin, hair, background; voice pitch,
  pitch range, formant scale, speaking rate, breathiness) and the emotion with its level
  (brows, eye aperture, mouth corners, face lines; pitch level and range, speaking rate,
  spectral tilt, breathiness, tremor, creak), scaled by LEVEL_SCALE[level];
- dynamical, both streams (z_av): the phone sequence, seen as visemes and heard as formants,
  noise, closures and bursts, frame-synchronous;
- dynamical, visual only (z_v): head motion (shift and roll) and eye blinks;
- dynamical, audio only (z_a): intonation (the f0 contour) and a loudness contour.

`generate_clip` puts three modules together: the script (`synthetic_script`: phones,
speakers, emotions and the per-frame dynamics), the face renderer (`synthetic_face`) and
the voice (`synthetic_voice`).

Video: 64x64 RGB at 30 fps, drawn with signed distances and a one-pixel linear edge, so
shapes are anti-aliased without supersampling; frames are drawn together, 24 at a time
(arrays (T, 64, 64)), the small features on windows that follow the head. Audio: 16 kHz
source-filter synthesis: a glottal pulse train at f0(t) through each voiced phone's cascade
of formant resonators (neighbours cross-faded over 30 ms), band-filtered noise for
fricatives, closure + burst + aspiration for plosives, silence with a -60 dB noise floor;
peak-normalised float32 (max |x| = 1).

Timing: frame t is the instant t / 30 s, which is the centre of spectrogram frame t
(hop 533, centred STFT). A phone occupying frames [t0, t1) sounds from sample
(t0 - 0.5) * 16000 / 30 to (t1 - 0.5) * 16000 / 30, so every frame sits inside its phone.

Factor definitions and units (per frame, T rows):
    phone       int16   index into PHONES of the phone sounding at frame t
    viseme      int16   index into VISEMES of that phone's mouth shape (PHONE_VISEME)
    mouth_open  float32 lip aperture as a fraction of the speaker's full opening (0 closed,
                        1 = an open "a"; coarticulated, plus the emotion's jaw drop)
    blink       float32 eyelid closure, 0 open .. 1 closed
    head_pose   float32 (T, 3): dx, dy in pixels of the 64x64 frame (right, down) and roll
                        in degrees (positive turns the face clockwise on screen). The
                        features move 0.3 (x) / 0.25 (y) of the shift further than the
                        outline, which reads as the head turning / nodding.
    f0          float32 fundamental frequency (glottal pulse rate) in Hz, 0 on unvoiced
                        frames; creaky voices (disgust) also show a subharmonic at f0 / 2
    voicing     uint8   1 when the phone is voiced (vowels, nasals)
    loudness    float32 the audio-only gain contour in dB, relative to its clip mean
    mouth_box   int16   (T, 4) (y0, x0, y1, x1), end-exclusive, clipped to the frame: the
    eyes_box    int16   (T, 4) mouth region / both eyes, following the head
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mdvae.data.synthetic_face import render_face
from mdvae.data.synthetic_script import (
    PHONE_VISEME,
    VOICED,
    SyntheticError,
    blinks,
    check_emotion,
    check_index,
    emotion_style,
    head_motion,
    intonation,
    mouth_track,
    phone_segments,
    smooth_noise,
    speaker_params,
)
from mdvae.data.synthetic_voice import synthesize_voice
from mdvae.labels import EMOTION_INDEX

# ---------------------------------------------------------------------------------------
# The clip


@dataclass
class SyntheticClip:
    """One generated clip. factors: name -> (T, ...) arrays, see the module docstring."""

    frames: np.ndarray  # (T, 64, 64, 3) uint8
    audio: np.ndarray  # (S,) float32, 16 kHz, peak-normalised, S = round(T * 16000 / 30)
    factors: dict[str, np.ndarray]
    speaker: int
    emotion: str
    level: int
    seed: int


def generate_clip(speaker: int, emotion: str, level: int, seed: int,
                  n_frames: int = 90) -> SyntheticClip:
    """Generate clip `seed` of `speaker` showing `emotion` at `level`; deterministic."""
    speaker = check_index(speaker, "speaker")
    seed = check_index(seed, "seed")
    n_frames = check_index(n_frames, "n_frames")
    if n_frames < 1:
        raise SyntheticError("n_frames must be at least 1")
    check_emotion(emotion, level)
    level = int(level)
    spk = speaker_params(speaker)
    style = emotion_style(emotion, level)
    # One independent stream per factor group, so e.g. the head motion of a seed does not
    # change when the phone grammar does.
    streams = np.random.SeedSequence([speaker, EMOTION_INDEX[emotion], level, seed]).spawn(6)
    rng_phone, rng_head, rng_blink, rng_pitch, rng_loud, rng_audio = (
        np.random.default_rng(s) for s in streams)

    rate = spk.rate * 2.0 ** style.rate
    segments = phone_segments(rng_phone, n_frames, rate)
    phone = np.repeat([p for p, _ in segments], [n for _, n in segments]).astype(np.int16)
    viseme = np.asarray(PHONE_VISEME, np.int16)[phone]
    voicing = np.asarray(VOICED, np.uint8)[phone]

    head = head_motion(rng_head, n_frames)
    blink = blinks(rng_blink, n_frames)
    log_f0 = intonation(rng_pitch, n_frames, spk, style)
    loud_db = 3.0 * smooth_noise(rng_loud, n_frames, 0.2, 1.5)
    loud_db = (loud_db - loud_db.mean()).astype(np.float32)

    mouth = mouth_track(phone, style)
    frames, mouth_box, eyes_box = render_face(spk, style, head, blink, mouth)
    audio = synthesize_voice(spk, style, segments, log_f0, loud_db, rng_audio, n_frames)

    factors = {
        "phone": phone,
        "viseme": viseme,
        "mouth_open": mouth["open"].astype(np.float32),
        "blink": blink.astype(np.float32),
        "head_pose": head.astype(np.float32),
        "f0": (np.exp(log_f0) * voicing).astype(np.float32),
        "voicing": voicing,
        "loudness": loud_db,
        "mouth_box": mouth_box,
        "eyes_box": eyes_box,
    }
    return SyntheticClip(frames=frames, audio=audio, factors=factors, speaker=speaker,
                         emotion=emotion, level=level, seed=seed)
