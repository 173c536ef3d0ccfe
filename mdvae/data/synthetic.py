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

import functools
import operator
from dataclasses import dataclass, fields, replace

import numpy as np
from scipy import signal
from scipy.ndimage import uniform_filter1d

from mdvae.errors import MDVAEError
from mdvae.labels import EMOTION_INDEX, EMOTIONS, LEVELS

SAMPLE_RATE = 16000
FPS = 30
SIZE = 64


class SyntheticError(MDVAEError):
    """A synthetic clip was requested with arguments outside the benchmark's definition."""


# ---------------------------------------------------------------------------------------
# Phones and visemes

VISEMES: tuple[str, ...] = (
    "rest",  # lips together, relaxed
    "open",  # jaw open ("a")
    "mid",  # half open, spread a little ("e")
    "spread",  # nearly closed, wide, teeth ("i")
    "round",  # open and rounded ("o")
    "pucker",  # small rounded opening, protruded lips ("u", "sh")
    "closed",  # lips pressed ("m", "p")
    "labiodental",  # lower lip under the upper teeth ("f")
    "teeth",  # slightly open, teeth showing ("n", "t", "k", "s")
)
N_VISEMES = len(VISEMES)


@dataclass(frozen=True)
class _Viseme:
    open: float  # lip aperture, fraction of the speaker's full opening
    width: float  # mouth width multiplier
    round: float  # 0..1, thicker protruded lips
    teeth: float  # 0..1, visibility of the upper teeth in the opening
    press: float  # 0..1, lips pressed thin
    tuck: float  # 0..1, lower lip drawn in under the teeth


_VISEME_SHAPES: tuple[_Viseme, ...] = (
    _Viseme(0.00, 1.00, 0.0, 0.0, 0.0, 0.0),
    _Viseme(1.00, 1.00, 0.1, 0.5, 0.0, 0.0),
    _Viseme(0.55, 1.15, 0.0, 0.9, 0.0, 0.0),
    _Viseme(0.25, 1.35, 0.0, 1.0, 0.0, 0.0),
    _Viseme(0.75, 0.72, 0.7, 0.2, 0.0, 0.0),
    _Viseme(0.32, 0.52, 1.0, 0.0, 0.0, 0.0),
    _Viseme(0.00, 0.95, 0.0, 0.0, 1.0, 0.0),
    _Viseme(0.18, 1.05, 0.0, 1.0, 0.0, 1.0),
    _Viseme(0.22, 1.12, 0.0, 1.0, 0.0, 0.0),
)


@dataclass(frozen=True)
class _Phone:
    name: str
    kind: str  # "silence", "vowel", "nasal", "fricative", "plosive"
    viseme: int
    formants: tuple[float, ...] = ()  # Hz, F1..F4 of voiced phones
    bandwidths: tuple[float, ...] = (80.0, 100.0, 150.0, 220.0)  # Hz
    level: float = 0.0  # RMS relative to an "a" (voiced) or of the noise (unvoiced)
    band: tuple[float, float] = (0.0, 0.0)  # Hz, noise band of fricatives and bursts


_NASAL_BW = (90.0, 300.0, 350.0, 400.0)
_PHONES: tuple[_Phone, ...] = (
    _Phone("sil", "silence", 0),
    _Phone("a", "vowel", 1, (750, 1200, 2500, 3500), level=1.0),
    _Phone("e", "vowel", 2, (500, 1800, 2500, 3500), level=0.8),
    _Phone("i", "vowel", 3, (300, 2250, 3000, 3700), level=0.6),
    _Phone("o", "vowel", 4, (500, 900, 2400, 3400), level=0.85),
    _Phone("u", "vowel", 5, (320, 800, 2250, 3300), level=0.55),
    _Phone("m", "nasal", 6, (260, 1000, 2200, 3300), _NASAL_BW, level=0.3),
    _Phone("n", "nasal", 8, (260, 1500, 2500, 3400), _NASAL_BW, level=0.3),
    _Phone("f", "fricative", 7, level=0.1, band=(1200.0, 7000.0)),
    _Phone("s", "fricative", 8, level=0.3, band=(4000.0, 7600.0)),
    _Phone("sh", "fricative", 5, level=0.3, band=(1800.0, 4500.0)),
    _Phone("p", "plosive", 6, level=0.35, band=(300.0, 2500.0)),
    _Phone("t", "plosive", 8, level=0.5, band=(3000.0, 7500.0)),
    _Phone("k", "plosive", 8, level=0.5, band=(1300.0, 3200.0)),
)
PHONES: tuple[str, ...] = tuple(p.name for p in _PHONES)
N_PHONES = len(PHONES)
PHONE_VISEME: tuple[int, ...] = tuple(p.viseme for p in _PHONES)
VOICED: tuple[bool, ...] = tuple(p.kind in ("vowel", "nasal") for p in _PHONES)

_IDX = {p.name: i for i, p in enumerate(_PHONES)}
_VOWELS = [_IDX[n] for n in "aeiou"]
_ONSETS = [_IDX[n] for n in ("m", "n", "f", "s", "sh", "p", "t", "k")]
_CODAS = [_IDX[n] for n in ("m", "n", "s", "t", "k", "f")]
# Duration range in frames at speaking rate 1, by kind.
_DURATION = {"silence": (3, 8), "vowel": (3, 6), "nasal": (2, 3), "fricative": (2, 4),
             "plosive": (2, 3)}

# What the store needs to lay out the factor arrays: name -> (dtype, per-frame shape).
FACTOR_SPEC: dict[str, tuple[str, tuple[int, ...]]] = {
    "phone": ("int16", ()),
    "viseme": ("int16", ()),
    "mouth_open": ("float32", ()),
    "blink": ("float32", ()),
    "head_pose": ("float32", (3,)),
    "f0": ("float32", ()),
    "voicing": ("uint8", ()),
    "loudness": ("float32", ()),
    "mouth_box": ("int16", (4,)),
    "eyes_box": ("int16", (4,)),
}


# ---------------------------------------------------------------------------------------
# Speakers

Colour = tuple[float, float, float]

_SKIN_TONES = np.array([(0.97, 0.82, 0.71), (0.87, 0.66, 0.50), (0.71, 0.50, 0.35),
                        (0.47, 0.31, 0.21)], np.float32)
_HAIR_COLOURS = np.array([(0.08, 0.07, 0.07), (0.24, 0.15, 0.09), (0.45, 0.29, 0.16),
                          (0.58, 0.26, 0.12), (0.86, 0.70, 0.40), (0.62, 0.62, 0.64)],
                         np.float32)
_IRIS_COLOURS = np.array([(0.30, 0.18, 0.08), (0.20, 0.40, 0.65), (0.28, 0.45, 0.25),
                          (0.12, 0.08, 0.05)], np.float32)
HAIR_STYLES: tuple[str, ...] = ("short", "long", "side_part", "curly", "buzz")


@dataclass(frozen=True)
class SpeakerParams:
    """Everything that identifies a synthetic speaker; derived from the id alone.

    Lengths are pixels of the 64x64 frame in the head's own frame (origin at the face
    centre, y down); colours are RGB in [0, 1].
    """

    speaker: int
    face_w: float  # half-width of the face oval
    face_h: float  # half-height of the face oval
    jaw: float  # chin taper, 0 round .. 0.35 pointed
    eye_x: float  # distance of each eye centre from the midline
    eye_y: float  # eye centre height (negative: above the face centre)
    eye_w: float  # eye half-width
    eye_h: float  # eye half-height, neutral and open
    brow_th: float  # brow thickness
    nose_y: float  # nostril height
    nose_w: float  # nostril spacing
    mouth_y: float  # mouth centre height
    mouth_w: float  # half-width of the mouth at rest
    lip_th: float  # upper-lip thickness (the lower lip is 1.25x)
    jaw_open: float  # lip aperture at full opening
    hair_style: int  # index into HAIR_STYLES
    skin: Colour
    lips: Colour
    hair: Colour
    iris: Colour
    background: Colour
    shirt: Colour
    f0: float  # Hz, median speaking pitch
    f0_range: float  # semitones, typical size of a pitch accent
    formant_scale: float  # multiplies formant frequencies (shorter vocal tract > 1)
    rate: float  # speaking-rate multiplier
    breath: float  # aspiration noise mixed into the voice source, 0..1


def _jitter(rng: np.random.Generator, colour: np.ndarray, amount: float) -> Colour:
    out = np.clip(colour + rng.uniform(-amount, amount, 3), 0.0, 1.0)
    return tuple(float(c) for c in out)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _check_index(value, what: str) -> int:
    try:
        value = operator.index(value)
    except TypeError:
        raise SyntheticError(f"{what} must be an integer, got {value!r}") from None
    if value < 0:
        raise SyntheticError(f"{what} must be >= 0, got {value}")
    return value


@functools.lru_cache(maxsize=4096)
def speaker_params(speaker: int) -> SpeakerParams:
    """The parameters of synthetic speaker `speaker` (any int >= 0), always the same."""
    speaker = _check_index(speaker, "speaker")
    rng = np.random.default_rng([speaker, 0x5BEA4E7])
    # A binary voice/face type makes speakers differ the way adult voices mostly do:
    # pitch and vocal-tract length go together.
    high = bool(rng.random() < 0.5)
    f0 = float(np.exp(rng.uniform(np.log(175.0), np.log(245.0)) if high
                      else rng.uniform(np.log(90.0), np.log(135.0))))
    tone = rng.uniform(0.0, 1.0) * (len(_SKIN_TONES) - 1)
    lo = int(min(tone, len(_SKIN_TONES) - 2))
    skin = _SKIN_TONES[lo] + (tone - lo) * (_SKIN_TONES[lo + 1] - _SKIN_TONES[lo])
    skin_c = _jitter(rng, skin, 0.03)
    lips = np.array(skin_c) * 0.55 + np.array([0.72, 0.22, 0.26]) * 0.45
    hair = _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))]
    # Backgrounds: any hue, kept clearly apart from the skin so the outline always shows.
    for _ in range(16):
        bg = _hsv(rng.random(), rng.uniform(0.25, 0.65), rng.uniform(0.35, 0.9))
        if np.abs(bg - np.array(skin_c)).sum() > 0.45:
            break
    shirt = _hsv(rng.random(), rng.uniform(0.3, 0.8), rng.uniform(0.25, 0.8))
    face_w = rng.uniform(14.5, 17.0) if high else rng.uniform(15.5, 18.5)
    return SpeakerParams(
        speaker=speaker,
        face_w=float(face_w),
        face_h=float(rng.uniform(19.5, 22.5)),
        jaw=float(rng.uniform(0.0, 0.35)),
        eye_x=float(rng.uniform(5.6, 7.6)),
        eye_y=float(rng.uniform(-4.0, -1.5)),
        eye_w=float(rng.uniform(3.3, 4.0)),
        eye_h=float(rng.uniform(1.9, 2.4)),
        brow_th=float(rng.uniform(1.3, 2.2)),
        nose_y=float(rng.uniform(4.0, 6.5)),
        nose_w=float(rng.uniform(2.0, 3.4)),
        mouth_y=float(rng.uniform(10.5, 13.0)),
        mouth_w=float(rng.uniform(4.8, 6.6)),
        lip_th=float(rng.uniform(1.1, 1.9)),
        jaw_open=float(rng.uniform(5.0, 6.5)),
        hair_style=int(rng.integers(len(HAIR_STYLES))),
        skin=skin_c,
        lips=_jitter(rng, lips, 0.04),
        hair=_jitter(rng, hair, 0.04),
        iris=_jitter(rng, _IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))], 0.05),
        background=tuple(float(c) for c in bg),
        shirt=tuple(float(c) for c in shirt),
        f0=f0,
        f0_range=float(rng.uniform(2.0, 5.0)),
        formant_scale=float(rng.uniform(1.07, 1.2) if high else rng.uniform(0.92, 1.04)),
        rate=float(rng.uniform(0.9, 1.1)),
        breath=float(rng.uniform(0.0, 0.25)),
    )


class _SpeakerTable:
    """``SYNTH_SPEAKERS[i]``: the parameters of speaker i, for any int i >= 0.

    The table is unbounded and derived lazily; splits choose which ids they use.
    """

    def __getitem__(self, speaker: int) -> SpeakerParams:
        return speaker_params(speaker)

    def __repr__(self) -> str:
        return "SYNTH_SPEAKERS[speaker id] -> SpeakerParams"


SYNTH_SPEAKERS = _SpeakerTable()


# ---------------------------------------------------------------------------------------
# Emotions


@dataclass(frozen=True)
class EmotionStyle:
    """How an emotion shows, at full strength (level 3); `emotion_style` scales it by level.

    Face values are pixels unless noted; multiplicative voice values are log2 factors so
    that scaling by the level stays symmetric.
    """

    brow_raise: float = 0.0  # both brows up (+) / down (-)
    brow_inner: float = 0.0  # inner ends up (+, worried) / down (-, frowning V)
    brow_asym: float = 0.0  # extra raise of the right brow (as seen)
    eye_open: float = 0.0  # eyelid aperture: multiplier 1 + eye_open
    smile: float = 0.0  # mouth corners up (+) / down (-)
    smile_asym: float = 0.0  # extra raise of the right mouth corner
    mouth_widen: float = 0.0  # mouth width: multiplier 1 + mouth_widen
    jaw: float = 0.0  # lip aperture added to every phone, fraction of full opening
    lip_press: float = 0.0  # 0..1 lips pressed thin
    frown_lines: float = 0.0  # 0..1 vertical lines between the brows
    nose_wrinkle: float = 0.0  # 0..1 lines across the nose bridge
    f0_shift: float = 0.0  # semitones
    f0_range: float = 0.0  # log2 multiplier of the accent size
    rate: float = 0.0  # log2 multiplier of the speaking rate
    tilt: float = 0.0  # spectral tilt, + brighter (tense) / - darker (lax)
    breath: float = 0.0  # aspiration noise added to the voice source
    tremor: float = 0.0  # semitones of 6 Hz vibrato
    creak: float = 0.0  # 0..1 every other glottal pulse weaker (a subharmonic), more shimmer


EMOTION_STYLES: dict[str, EmotionStyle] = {
    "angry": EmotionStyle(brow_raise=-1.5, brow_inner=-2.6, eye_open=-0.3, smile=-1.0,
                          mouth_widen=-0.05, lip_press=0.8, frown_lines=1.0,
                          f0_shift=2.0, f0_range=0.0, rate=0.3, tilt=1.5),
    "contempt": EmotionStyle(brow_inner=-0.4, brow_asym=1.8, eye_open=-0.2, smile=-0.3,
                             smile_asym=2.6, lip_press=0.3,
                             f0_shift=-1.0, f0_range=-0.8, rate=-0.35, breath=0.1),
    "disgusted": EmotionStyle(brow_raise=-1.0, brow_inner=-1.5, eye_open=-0.45, smile=-1.6,
                              mouth_widen=0.05, jaw=0.15, nose_wrinkle=1.0,
                              f0_shift=-2.5, rate=-0.2, tilt=-0.4, breath=0.15, creak=0.6),
    "fear": EmotionStyle(brow_raise=2.0, brow_inner=2.0, eye_open=0.5, smile=-0.8,
                         mouth_widen=0.35, jaw=0.2,
                         f0_shift=5.0, f0_range=-0.5, rate=0.35, tilt=0.3, breath=0.3,
                         tremor=0.8),
    "happy": EmotionStyle(brow_raise=0.7, eye_open=-0.25, smile=2.6, mouth_widen=0.2, jaw=0.1,
                          f0_shift=4.0, f0_range=1.0, rate=0.1, tilt=0.4),
    "neutral": EmotionStyle(),
    "sad": EmotionStyle(brow_raise=-0.5, brow_inner=2.5, eye_open=-0.35, smile=-2.0,
                        mouth_widen=-0.1,
                        f0_shift=-3.0, f0_range=-1.0, rate=-0.4, tilt=-1.0, breath=0.35),
    "surprised": EmotionStyle(brow_raise=2.8, brow_inner=0.5, eye_open=0.6, mouth_widen=-0.2,
                              jaw=0.45,
                              f0_shift=6.0, f0_range=1.3, rate=-0.1, tilt=0.2, breath=0.1),
}
# Effect size per intensity level; level 1 is already clearly apart from neutral.
LEVEL_SCALE: dict[int, float] = {1: 0.45, 2: 0.75, 3: 1.0}


def _check_emotion(emotion: str, level: int) -> None:
    if emotion not in EMOTION_INDEX:
        raise SyntheticError(f"unknown emotion {emotion!r}; choose one of {list(EMOTIONS)}")
    if level not in LEVELS:
        raise SyntheticError(f"level must be one of {list(LEVELS)}, got {level!r}")
    if emotion == "neutral" and level != 1:
        raise SyntheticError(f"neutral has level 1 only (as in MEAD), got level {level}; use 1")


def emotion_style(emotion: str, level: int) -> EmotionStyle:
    """The expression and voice settings of `emotion` at intensity `level` (1..3)."""
    _check_emotion(emotion, level)
    base = EMOTION_STYLES[emotion]
    scale = LEVEL_SCALE[level]
    return replace(base, **{f.name: getattr(base, f.name) * scale for f in fields(base)})


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
    speaker = _check_index(speaker, "speaker")
    seed = _check_index(seed, "seed")
    n_frames = _check_index(n_frames, "n_frames")
    if n_frames < 1:
        raise SyntheticError("n_frames must be at least 1")
    _check_emotion(emotion, level)
    level = int(level)
    spk = speaker_params(speaker)
    style = emotion_style(emotion, level)
    # One independent stream per factor group, so e.g. the head motion of a seed does not
    # change when the phone grammar does.
    streams = np.random.SeedSequence([speaker, EMOTION_INDEX[emotion], level, seed]).spawn(6)
    rng_phone, rng_head, rng_blink, rng_pitch, rng_loud, rng_audio = (
        np.random.default_rng(s) for s in streams)

    rate = spk.rate * 2.0 ** style.rate
    segments = _phone_segments(rng_phone, n_frames, rate)
    phone = np.repeat([p for p, _ in segments], [n for _, n in segments]).astype(np.int16)
    viseme = np.asarray(PHONE_VISEME, np.int16)[phone]
    voicing = np.asarray(VOICED, np.uint8)[phone]

    head = _head_motion(rng_head, n_frames)
    blink = _blinks(rng_blink, n_frames)
    log_f0 = _intonation(rng_pitch, n_frames, spk, style)
    loud_db = 3.0 * _smooth_noise(rng_loud, n_frames, 0.2, 1.5)
    loud_db = (loud_db - loud_db.mean()).astype(np.float32)

    mouth = _mouth_track(phone, style)
    frames, mouth_box, eyes_box = _render(spk, style, head, blink, mouth)
    audio = _synthesize(spk, style, segments, log_f0, loud_db, rng_audio, n_frames)

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


# ---------------------------------------------------------------------------------------
# Dynamics (per frame)


def _phone_segments(rng: np.random.Generator, n_frames: int,
                    rate: float) -> list[tuple[int, int]]:
    """(phone, n_frames) runs covering the clip: pauses and words of CV(C) syllables."""

    def duration(kind: str) -> int:
        lo, hi = _DURATION[kind]
        return max(2, round(rng.uniform(lo, hi + 1) / rate))

    out = [(0, max(2, round(rng.uniform(2, 8))))]
    total = out[0][1]
    while total < n_frames:
        word = []
        for _ in range(rng.integers(1, 4)):
            if rng.random() < 0.7:
                word.append(rng.choice(_ONSETS))
            word.append(rng.choice(_VOWELS))
            if rng.random() < 0.35:
                word.append(rng.choice(_CODAS))
        if rng.random() < 0.35:
            word.append(0)
        for p in word:
            n = duration(_PHONES[p].kind)
            out.append((int(p), n))
            total += n
            if total >= n_frames:
                break
    # Trim the last run to end exactly at n_frames.
    phone, n = out[-1]
    out[-1] = (phone, n - (total - n_frames))
    return [(p, n) for p, n in out if n > 0]


def _smooth_noise(rng: np.random.Generator, n_frames: int, f_lo: float, f_hi: float,
                  n_waves: int = 3) -> np.ndarray:
    """A smooth random contour (T,) with unit standard deviation: a few slow sinusoids."""
    t = np.arange(n_frames) / FPS
    freq = rng.uniform(f_lo, f_hi, n_waves)
    phase = rng.uniform(0, 2 * np.pi, n_waves)
    amp = rng.uniform(0.5, 1.0, n_waves)
    wave = (amp[:, None] * np.sin(2 * np.pi * freq[:, None] * t + phase[:, None])).sum(0)
    return wave / np.sqrt((amp**2).sum() / 2)


def _head_motion(rng: np.random.Generator, n_frames: int) -> np.ndarray:
    """(T, 3) dx, dy (pixels) and roll (degrees): smooth, a few pixels / degrees."""
    liveliness = rng.uniform(0.5, 1.2)
    dx = 2.2 * liveliness * _smooth_noise(rng, n_frames, 0.15, 0.8)
    dy = 1.4 * liveliness * _smooth_noise(rng, n_frames, 0.2, 1.0)
    roll = 4.0 * liveliness * _smooth_noise(rng, n_frames, 0.15, 0.7)
    # Soft limits keep the face in the frame without flat stretches.
    return np.stack([5.0 * np.tanh(dx / 5.0), 3.5 * np.tanh(dy / 3.5),
                     10.0 * np.tanh(roll / 10.0)], 1)


def _blinks(rng: np.random.Generator, n_frames: int) -> np.ndarray:
    """(T,) eyelid closure 0..1: blinks at random times, 150-300 ms long."""
    t = np.arange(n_frames) / FPS
    out = np.zeros(n_frames)
    rate = rng.uniform(0.3, 0.7)  # blinks per second
    start = rng.uniform(-0.3, 1.0 / rate)
    while start < t[-1]:
        dur = rng.uniform(0.15, 0.3)
        close = 0.3 * dur
        hold = max(0.2 * dur, 1.1 / FPS)  # long enough that some frame sees the lid shut
        opening = dur - close
        x = t - start
        closing = np.clip(x / close, 0, 1)
        reopen = np.clip((x - close - hold) / max(opening - hold, 1e-3), 0, 1)
        shape = closing * closing * (3 - 2 * closing) * (1 - reopen * reopen * (3 - 2 * reopen))
        out = np.maximum(out, np.where((x >= 0) & (x <= close + hold + opening), shape, 0))
        start += dur + rng.exponential(1.0 / rate) + 0.4
    return out


def _intonation(rng: np.random.Generator, n_frames: int, spk: SpeakerParams,
                style: EmotionStyle) -> np.ndarray:
    """(T,) log f0: speaker pitch + emotion shift, declination, random accents, tremor."""
    t = np.arange(n_frames) / FPS
    st = np.full(n_frames, style.f0_shift)
    st -= rng.uniform(1.0, 3.0) * t / 3.0  # declination, semitones per 3 s
    size = spk.f0_range * 2.0 ** style.f0_range
    n_accents = rng.poisson(1.5 * max(t[-1], 0.5)) + 1
    for _ in range(n_accents):
        centre = rng.uniform(-0.2, t[-1] + 0.2)
        width = rng.uniform(0.08, 0.2)
        sign = 1.0 if rng.random() < 0.8 else -0.6
        st += sign * size * rng.uniform(0.4, 1.0) * np.exp(-0.5 * ((t - centre) / width) ** 2)
    st += 0.3 * size * _smooth_noise(rng, n_frames, 0.5, 2.0)
    st += style.tremor * np.sin(2 * np.pi * rng.uniform(5.0, 7.0) * t + rng.uniform(0, 6.3))
    st -= 0.25 * size  # accents push up on average; keep the median near the speaker's f0
    return np.log(spk.f0) + st * np.log(2.0) / 12.0


def _mouth_track(phone: np.ndarray, style: EmotionStyle) -> dict[str, np.ndarray]:
    """Per-frame mouth shape: the visemes' targets, lightly coarticulated."""
    shapes = [_VISEME_SHAPES[v] for v in PHONE_VISEME]
    out = {}
    for name in ("open", "width", "round", "teeth", "press", "tuck"):
        target = np.array([getattr(s, name) for s in shapes])[phone]
        padded = np.pad(target, 1, mode="edge")
        # Zero-phase [0.15, 0.7, 0.15]: neighbours pull each frame a little towards them.
        out[name] = 0.15 * padded[:-2] + 0.7 * padded[1:-1] + 0.15 * padded[2:]
    out["open"] = out["open"] + style.jaw
    out["press"] = np.clip(out["press"] + style.lip_press, 0, 1)
    out["width"] = out["width"] * (1 + style.mouth_widen)
    return out


# ---------------------------------------------------------------------------------------
# Rendering: signed distances in pixels, coverage = clip(0.5 - d, 0, 1). Images are kept
# channels-first (3, T, H, W) while drawing so that every operation runs on contiguous planes.

_CENTRE = (32.0, 31.0)  # x, y of the face centre at rest
_PARALLAX = (0.3, 0.25)  # extra shift of the features relative to the outline, per pixel
_EAR_PARALLAX = -0.25  # the ears move the other way: the head turns
_PIX = np.arange(SIZE, dtype=np.float32) + 0.5  # pixel centres


def _cov(d):
    return np.clip(0.5 - d, 0.0, 1.0)


def _ellipse_sd(u, v, a, b):
    """Approximate signed distance to an axis-aligned ellipse (first order, exact on it)."""
    ua, vb = u * (1.0 / a), v * (1.0 / b)
    ua2, vb2 = ua * ua, vb * vb
    grad = 2.0 * np.sqrt(ua2 * (1.0 / (a * a)) + vb2 * (1.0 / (b * b))) + 1e-6
    return (ua2 + vb2 - 1.0) / grad


def _stroke_sd(u, v, ax, ay, bx, by, radius, bend=0.0):
    """Distance to a stroke from a to b of half-thickness `radius`, bowed by `bend` pixels
    to the left of a->b (upwards for a left-to-right stroke)."""
    dx, dy = bx - ax, by - ay
    length2 = dx * dx + dy * dy
    ru, rv = u - ax, v - ay
    s = np.clip((ru * dx + rv * dy) * (1.0 / length2), 0.0, 1.0)
    qu, qv = ru - s * dx, rv - s * dy
    if np.any(bend):
        bow = (4.0 * bend / np.sqrt(length2)) * s * (1.0 - s)
        qu -= bow * dy
        qv += bow * dx
    return np.sqrt(qu * qu + qv * qv) - radius


def _over(img: np.ndarray, alpha: np.ndarray, colour) -> None:
    """Paint colour (3 scalars or 3 arrays) over img (3, T, h, w) with coverage alpha."""
    for c in range(3):
        plane = img[c]
        plane += alpha * (colour[c] - plane)


def _col(x) -> np.ndarray:
    return np.asarray(x, np.float32)[:, None, None]  # (T,) -> (T, 1, 1)


def _to_head(x, y, head: np.ndarray):
    """Image coordinates -> the head's frame (origin at the face centre, upright)."""
    dx, dy, roll = (_col(head[:, i]) for i in range(3))
    cos, sin = np.cos(np.deg2rad(roll)), np.sin(np.deg2rad(roll))
    px = x - (_CENTRE[0] + dx)
    py = y - (_CENTRE[1] + dy)
    return cos * px + sin * py, cos * py - sin * px


def _rect_bounds(rect: tuple[float, float, float, float], head: np.ndarray) -> np.ndarray:
    """Image bounds (T, 4) (ymin, xmin, ymax, xmax) of a feature-frame rectangle
    (x0, y0, x1, y1) carried by the head pose."""
    x0, y0, x1, y1 = rect
    cu = np.array([x0, x1, x0, x1])[None] + _PARALLAX[0] * head[:, :1]  # (T, 4) corners
    cv = np.array([y0, y0, y1, y1])[None] + _PARALLAX[1] * head[:, 1:2]
    theta = np.deg2rad(head[:, 2:3])
    x = _CENTRE[0] + head[:, :1] + np.cos(theta) * cu - np.sin(theta) * cv
    y = _CENTRE[1] + head[:, 1:2] + np.sin(theta) * cu + np.cos(theta) * cv
    return np.stack([y.min(1), x.min(1), y.max(1), x.max(1)], 1)


def _track_box(rect: tuple[float, float, float, float], head: np.ndarray) -> np.ndarray:
    """Pixel boxes (T, 4) (y0, x0, y1, x1), end-exclusive, around a feature-frame rect."""
    b = _rect_bounds(rect, head)
    box = np.stack([np.floor(b[:, 0]), np.floor(b[:, 1]), np.ceil(b[:, 2]), np.ceil(b[:, 3])], 1)
    return np.clip(box, 0, SIZE).astype(np.int16)


@functools.lru_cache(maxsize=64)
def _backdrop(speaker: int) -> np.ndarray:
    """(3, H, W) background with shoulders and neck; the body stays put while the head moves."""
    spk = speaker_params(speaker)
    bg = np.array(spk.background, np.float32)[:, None, None]
    img = np.broadcast_to(np.clip(bg * (1.08 - 0.16 * _PIX[:, None] / SIZE), 0, 1),
                          (3, SIZE, SIZE))[:, None].copy()  # (3, 1, H, W)
    bx = _PIX[None, None, :] - _CENTRE[0]
    by = _PIX[None, :, None] - _CENTRE[1]
    fw, fh = spk.face_w, spk.face_h
    _over(img, _cov(_ellipse_sd(bx, by - (fh + 17.0), fw + 13.0, 13.0)), spk.shirt)
    neck = np.maximum(np.abs(bx) - 0.33 * fw, -(by - 0.3 * fh))
    _over(img, _cov(neck), np.array(spk.skin, np.float32) * 0.8)
    img = img[:, 0]
    img.flags.writeable = False
    return img


_CHUNK = 24  # frames drawn together: big enough to amortise numpy calls, small for the cache


def _render(spk: SpeakerParams, style: EmotionStyle, head: np.ndarray, blink: np.ndarray,
            mouth: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw the clip. Returns frames (T, 64, 64, 3) uint8, mouth and eye boxes (T, 4)."""
    mouth_rect = _mouth_rect(spk, style, mouth)
    eyes_rect = _eyes_rect(spk, style)
    # The features cover a third of the frame: they are drawn on a window that follows the
    # head, gathered from the image and put back.
    x_half = max(eyes_rect[2] + 1.5, mouth_rect[2] + 2.5)  # + the smile folds
    features = (-x_half, min(eyes_rect[1], _brow_top(spk, style)) - 1.0, x_half, mouth_rect[3])
    frames = np.empty((len(head), SIZE, SIZE, 3), np.uint8)
    for t0 in range(0, len(head), _CHUNK):
        part = slice(t0, t0 + _CHUNK)
        frames[part] = _render_frames(spk, style, head[part], blink[part],
                                      {k: m[part] for k, m in mouth.items()}, features)
    return frames, _track_box(mouth_rect, head), _track_box(eyes_rect, head)


def _render_frames(spk: SpeakerParams, style: EmotionStyle, head: np.ndarray,
                   blink: np.ndarray, mouth: dict[str, np.ndarray],
                   features: tuple[float, float, float, float]) -> np.ndarray:
    """Draw frames (T, 64, 64, 3) uint8; `features` bounds the face's features."""
    n = len(head)
    img = np.empty((3, n, SIZE, SIZE), np.float32)
    img[:] = _backdrop(spk.speaker)[:, None]
    u, v = _to_head(_PIX[None, None, :], _PIX[None, :, None], head)  # (T, H, W) each
    _draw_head(img, u, v, _col(head[:, 0]), spk)

    bounds = _rect_bounds(features, head)
    h = min(SIZE, int(np.ceil((bounds[:, 2] - bounds[:, 0]).max())) + 2)
    w = min(SIZE, int(np.ceil((bounds[:, 3] - bounds[:, 1]).max())) + 2)
    y0 = np.clip(np.floor(bounds[:, 0]).astype(int) - 1, 0, SIZE - h)
    x0 = np.clip(np.floor(bounds[:, 1]).astype(int) - 1, 0, SIZE - w)
    rows = (y0[:, None] + np.arange(h))[:, :, None]  # (T, h, 1)
    cols = (x0[:, None] + np.arange(w))[:, None, :]  # (T, 1, w)
    frame = np.arange(n)[:, None, None]
    crop = img[:, frame, rows, cols]  # (3, T, h, w)
    cu, cv = _to_head(cols.astype(np.float32) + 0.5, rows.astype(np.float32) + 0.5, head)
    fu = cu - _PARALLAX[0] * _col(head[:, 0])  # the face's front moves further than its rim
    fv = cv - _PARALLAX[1] * _col(head[:, 1])
    skin = np.array(spk.skin, np.float32)
    _draw_brows_and_lines(crop, fu, fv, spk, style, skin)
    _draw_eyes(crop, fu, fv, spk, style, _col(blink))
    _draw_nose(crop, fu, fv, spk, style, skin)
    _draw_mouth(crop, fu, fv, spk, style, mouth)
    img[:, frame, rows, cols] = crop

    img *= 255.0
    img += 0.5
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8).transpose(1, 2, 3, 0)


def _round_sd(u, v, a, b):
    """Signed distance to a near-circular ellipse, in units of its smaller semi-axis: cheaper
    than `_ellipse_sd`; the edge gets up to max(a, b) / min(a, b) times softer."""
    return (np.sqrt((u * (1.0 / a)) ** 2 + (v * (1.0 / b)) ** 2) - 1.0) * min(a, b)


def _draw_head(img, u, v, dx, spk: SpeakerParams) -> None:
    """Hair behind the head, face and ears, the hair on top; in the head frame."""
    fw, fh = spk.face_w, spk.face_h
    skin = np.array(spk.skin, np.float32)
    hair = np.array(spk.hair, np.float32)
    style_name = HAIR_STYLES[spk.hair_style]
    if style_name == "long":
        back = np.maximum(_round_sd(u, v - 0.15 * fh, fw + 3.5, 1.2 * fh), 1.6 * fh - v)
        _over(img, _cov(back), hair * 0.85)
    elif style_name == "curly":
        back = _round_sd(u, v + 0.3 * fh, fw + 5.0, 0.85 * fh + 4.5)
        _over(img, _cov(back), hair * 0.9)

    # Face: an egg (narrower towards the chin), lit from the front, with ears at eye height
    # (mirrored through |u|) that move against the features as the head turns.
    uu = (u * (1.0 / fw)) ** 2
    vv = (v * (1.0 / fh)) ** 2
    chin = np.clip(v * (1.0 / fh), 0.0, 1.0)
    taper = 1.0 - spk.jaw * chin * chin
    face_sd = (np.sqrt(uu / (taper * taper) + vv) - 1.0) * (fw * taper)
    eu = np.abs(u - _EAR_PARALLAX * dx) - (fw - 0.6)
    face_sd = np.minimum(face_sd, _ellipse_sd(eu, v - spk.eye_y - 2.5, 2.4, 4.0))
    r2 = np.minimum(uu + vv, 1.0)
    light = 1.05 - 0.17 * r2 * r2
    _over(img, _cov(face_sd), [np.minimum(skin[c] * light, 1.0) for c in range(3)])

    # Hair on top, above a hairline that is lower at the temples and clears the brows at
    # their highest (fear, surprise), so that no expression hides them.
    highest_brow = min(_brow_top(spk, e) for e in EMOTION_STYLES.values())
    hairline = min(-0.68 * fh, highest_brow - 1.5) + (0.3 * fh) * uu
    cap_u, grow = u, 1.6
    colour = hair
    if style_name == "side_part":
        hairline = hairline + 0.15 * u - 1.0
        cap_u, grow = u + 1.0, 2.5
    elif style_name == "curly":
        grow = 4.0
        texture = 0.9 + 0.1 * np.sin(u * 1.3) * np.sin(v * 1.3)
        colour = [hair[c] * texture for c in range(3)]
    elif style_name == "buzz":
        hairline = hairline - 1.5
        grow = 0.6
        colour = hair * 0.5 + skin * 0.5
    cap = _round_sd(cap_u, v + 0.3 * fh, fw + grow, 0.8 * fh + grow)
    _over(img, _cov(cap) * _cov(v - hairline), colour)


def _brow_top(spk: SpeakerParams, style: EmotionStyle) -> float:
    lift = style.brow_raise + max(style.brow_inner, 0.0) + max(style.brow_asym, 0.0)
    return spk.eye_y - spk.eye_h - 2.6 - lift - 0.8 - spk.brow_th / 2


def _eyes_rect(spk: SpeakerParams, style: EmotionStyle) -> tuple[float, float, float, float]:
    """Both eyes, lids included, in the feature frame (x0, y0, x1, y1)."""
    top = spk.eye_y - spk.eye_h * max(1.0, 1.0 + style.eye_open)
    x = spk.eye_x + spk.eye_w + 1.5  # the lash line reaches a pixel past the eye
    return (-x, top - 1.5, x, spk.eye_y + spk.eye_h + 1.5)


def _draw_brows_and_lines(img, fu, fv, spk: SpeakerParams, style: EmotionStyle, skin) -> None:
    dark = skin * 0.55
    au = np.abs(fu)  # both sides at once, mirrored
    right = fu > 0
    # Eye sockets: a soft shadow that makes the closed lid read as a lid.
    sd = _ellipse_sd(au - spk.eye_x, fv - spk.eye_y + 0.6, spk.eye_w + 1.0, spk.eye_h + 1.2)
    _over(img, 0.25 * _cov(sd * (1 / 1.5)), skin * 0.7)
    # Brows, from the inner end outwards; the bend arches them up.
    base = spk.eye_y - spk.eye_h - 2.6 - style.brow_raise
    lift = np.where(right, np.float32(style.brow_asym), np.float32(0.0)) if style.brow_asym else 0.0
    sd = _stroke_sd(au, fv + lift, spk.eye_x - spk.eye_w + 0.2, base - style.brow_inner,
                    spk.eye_x + spk.eye_w + 1.0, base + 0.3, spk.brow_th / 2, bend=0.8)
    # Brows darker than both hair and skin, so that they show on any face.
    _over(img, _cov(sd), np.minimum(np.array(spk.hair, np.float32) * 0.5, skin * 0.4) + 0.02)
    if style.frown_lines > 0:
        y = base + 0.6
        sd = _stroke_sd(au, fv, 0.9, y - 1.5, 0.7, y + 1.8, 0.4)
        _over(img, 0.7 * style.frown_lines * _cov(sd), dark)
    if style.nose_wrinkle > 0:
        for k in range(2):
            y = spk.eye_y + 1.8 + 1.6 * k
            sd = _stroke_sd(fu, fv, -1.8, y, 1.8, y, 0.4, bend=0.6)
            _over(img, 0.7 * style.nose_wrinkle * _cov(sd), dark)


def _draw_eyes(img, fu, fv, spk: SpeakerParams, style: EmotionStyle, blink) -> None:
    opening = max(0.2, 1.0 + style.eye_open)
    half_w = spk.eye_w * (0.92 + 0.08 * min(opening, 1.3))
    # The lower lid rises a little when the eye narrows; the upper lid does the blinking.
    bottom = spk.eye_y + spk.eye_h * min(1.0, opening) ** 0.5
    top_open = spk.eye_y - spk.eye_h * opening
    top = top_open + blink * (bottom - 0.2 - top_open)  # (T, 1, 1)
    centre = 0.5 * (top + bottom)
    half_h = 0.5 * (bottom - top)
    visible = np.clip(half_h * (1 / 0.6), 0.0, 1.0)  # fades the white out as the lids meet
    iris_r = min(spk.eye_h * 0.75, 1.6)
    eu = np.abs(fu) - spk.eye_x
    ev = fv - centre
    half_h_sd = np.maximum(half_h, 0.45)
    # The first-order distance runs long past the corners of a nearly closed eye; the
    # distance to the bounding box is a lower bound that stops that.
    ap_sd = np.maximum(_ellipse_sd(eu, ev, half_w, half_h_sd), np.abs(eu) - half_w)
    aperture = _cov(ap_sd) * visible
    _over(img, aperture, (0.96, 0.95, 0.92))
    iv = fv - spk.eye_y
    r = np.sqrt(eu * eu + iv * iv)
    _over(img, _cov(r - iris_r) * aperture, spk.iris)
    _over(img, _cov(r - 0.8) * aperture, (0.03, 0.03, 0.03))
    # Lash line on the upper lid (the line of the closed eye), fainter on the lower lid.
    upper = np.clip(0.5 - ev / np.maximum(half_h, 0.3), 0.0, 1.0)
    _over(img, _cov(np.abs(ap_sd) - 0.5) * (0.35 + 0.6 * upper), (0.12, 0.07, 0.06))


def _draw_nose(img, fu, fv, spk: SpeakerParams, style: EmotionStyle, skin) -> None:
    dark = skin * 0.55
    au = np.abs(fu)
    # Shading under the tip, one side of the bridge, two nostrils.
    tip = _ellipse_sd(fu, fv - spk.nose_y + 0.6, spk.nose_w + 0.6, 1.6)
    _over(img, 0.35 * _cov(tip * (1 / 1.5)), skin * 0.78)
    bridge = _stroke_sd(fu, fv, 0.9, spk.eye_y + 1.5, 1.4, spk.nose_y - 1.2, 0.5)
    _over(img, 0.3 * _cov(bridge), skin * 0.75)
    nostril = _ellipse_sd(au - spk.nose_w * 0.5, fv - spk.nose_y, 0.9, 0.55)
    _over(img, 0.85 * _cov(nostril), dark * 0.8)
    # Smile folds from the nose wings to beyond the mouth corners; contempt has one.
    left = float(np.clip(style.smile / 2.6, 0.0, 1.0))
    right = float(np.clip((style.smile + style.smile_asym) / 2.6, 0.0, 1.0))
    if left > 0 or right > 0:
        sd = _stroke_sd(au, fv, spk.nose_w + 1.0, spk.nose_y + 0.5, spk.mouth_w + 2.4,
                        spk.mouth_y - 0.5, 0.4, bend=0.6)
        strength = np.where(fu > 0, np.float32(right), np.float32(left))
        _over(img, 0.4 * strength * _cov(sd), dark)


def _mouth_rect(spk: SpeakerParams, style: EmotionStyle,
                mouth: dict[str, np.ndarray]) -> tuple[float, float, float, float]:
    """The clip's mouth region (lips at their widest and most open), feature frame."""
    x = spk.mouth_w * float(mouth["width"].max()) + 1.0
    open_px = spk.jaw_open * float(np.clip(mouth["open"], 0, None).max())
    lip = spk.lip_th * 1.5
    top = lip + 0.35 * open_px + max(0.0, style.smile, style.smile + style.smile_asym) + 1.0
    bottom = 1.25 * lip + 0.65 * open_px + max(0.0, -style.smile) + 1.0
    return (-x, spk.mouth_y - top, x, spk.mouth_y + bottom)


def _draw_mouth(img, fu, fv, spk: SpeakerParams, style: EmotionStyle,
                mouth: dict[str, np.ndarray]) -> None:
    """Lips, the dark opening, the upper teeth."""
    half_w = _col(spk.mouth_w * mouth["width"])
    open_px = _col(spk.jaw_open * np.clip(mouth["open"], 0, None))
    rnd, teeth, press, tuck = (_col(mouth[k]) for k in ("round", "teeth", "press", "tuck"))
    mu, mv = fu, fv - spk.mouth_y
    xn = mu / half_w
    xn2 = xn * xn
    g = np.sqrt(np.clip(1.0 - xn2, 0.0, 1.0))
    # Corners up for a smile, down for a frown; contempt lifts one side only.
    lift = -style.smile * xn2
    if style.smile_asym:
        lift = lift - style.smile_asym * np.clip(xn, 0, None) ** 2
    upper_in = lift - 0.35 * open_px * g
    lower_in = lift + 0.65 * open_px * g
    thick = spk.lip_th * (1.0 + 0.5 * rnd) * (1.0 - 0.45 * press)
    taper = 0.45 + 0.55 * g
    upper_out = upper_in - thick * taper
    lower_out = lower_in + (1.25 * thick * (1.0 - 0.5 * tuck)) * taper
    inside_x = _cov(np.abs(mu) - half_w)
    lips = _cov(upper_out - mv) * _cov(mv - lower_out) * inside_x
    shade = 1.0 - 0.15 * rnd
    _over(img, lips, [spk.lips[c] * shade for c in range(3)])
    seam = _cov(np.abs(mv - 0.5 * (upper_in + lower_in)) - 0.35) * inside_x
    _over(img, 0.75 * seam, (0.25, 0.07, 0.08))
    opening = _cov(upper_in - mv) * _cov(mv - lower_in) * _cov(np.abs(mu) - 0.94 * half_w)
    _over(img, opening, (0.22, 0.04, 0.06))
    teeth_edge = upper_in + np.minimum(1.8, 0.6 + 0.5 * open_px) * g
    _over(img, opening * teeth * _cov(mv - teeth_edge), (0.94, 0.93, 0.87))


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


def _synthesize(spk: SpeakerParams, style: EmotionStyle, segments: list[tuple[int, int]],
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
        ph = _PHONES[p]
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
        ph = _PHONES[p]
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
