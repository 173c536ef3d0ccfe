"""The script of the synthetic benchmark: what a clip says and does, before anything is
drawn or heard (see `mdvae.data.synthetic` for the whole benchmark).

The phones and their visemes, the speakers (face and voice parameters fixed by the speaker
id), the emotions (a style per emotion, scaled by its level), and the per-frame dynamics
drawn from a clip's seed: the phone sequence, head motion, blinks, intonation, loudness and
the mouth track that the face renderer follows.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass, fields, replace

import numpy as np

from mdvae.errors import MDVAEError
from mdvae.labels import EMOTION_INDEX, EMOTIONS, LEVELS

FPS = 30


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
class PhoneSpec:
    name: str
    kind: str  # "silence", "vowel", "nasal", "fricative", "plosive"
    viseme: int
    formants: tuple[float, ...] = ()  # Hz, F1..F4 of voiced phones
    bandwidths: tuple[float, ...] = (80.0, 100.0, 150.0, 220.0)  # Hz
    level: float = 0.0  # RMS relative to an "a" (voiced) or of the noise (unvoiced)
    band: tuple[float, float] = (0.0, 0.0)  # Hz, noise band of fricatives and bursts


_NASAL_BW = (90.0, 300.0, 350.0, 400.0)
PHONE_SPECS: tuple[PhoneSpec, ...] = (
    PhoneSpec("sil", "silence", 0),
    PhoneSpec("a", "vowel", 1, (750, 1200, 2500, 3500), level=1.0),
    PhoneSpec("e", "vowel", 2, (500, 1800, 2500, 3500), level=0.8),
    PhoneSpec("i", "vowel", 3, (300, 2250, 3000, 3700), level=0.6),
    PhoneSpec("o", "vowel", 4, (500, 900, 2400, 3400), level=0.85),
    PhoneSpec("u", "vowel", 5, (320, 800, 2250, 3300), level=0.55),
    PhoneSpec("m", "nasal", 6, (260, 1000, 2200, 3300), _NASAL_BW, level=0.3),
    PhoneSpec("n", "nasal", 8, (260, 1500, 2500, 3400), _NASAL_BW, level=0.3),
    PhoneSpec("f", "fricative", 7, level=0.1, band=(1200.0, 7000.0)),
    PhoneSpec("s", "fricative", 8, level=0.3, band=(4000.0, 7600.0)),
    PhoneSpec("sh", "fricative", 5, level=0.3, band=(1800.0, 4500.0)),
    PhoneSpec("p", "plosive", 6, level=0.35, band=(300.0, 2500.0)),
    PhoneSpec("t", "plosive", 8, level=0.5, band=(3000.0, 7500.0)),
    PhoneSpec("k", "plosive", 8, level=0.5, band=(1300.0, 3200.0)),
)
PHONES: tuple[str, ...] = tuple(p.name for p in PHONE_SPECS)
N_PHONES = len(PHONES)
PHONE_VISEME: tuple[int, ...] = tuple(p.viseme for p in PHONE_SPECS)
VOICED: tuple[bool, ...] = tuple(p.kind in ("vowel", "nasal") for p in PHONE_SPECS)

_IDX = {p.name: i for i, p in enumerate(PHONE_SPECS)}
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


def check_index(value, what: str) -> int:
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
    speaker = check_index(speaker, "speaker")
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


def check_emotion(emotion: str, level: int) -> None:
    if emotion not in EMOTION_INDEX:
        raise SyntheticError(f"unknown emotion {emotion!r}; choose one of {list(EMOTIONS)}")
    if level not in LEVELS:
        raise SyntheticError(f"level must be one of {list(LEVELS)}, got {level!r}")
    if emotion == "neutral" and level != 1:
        raise SyntheticError(f"neutral has level 1 only (as in MEAD), got level {level}; use 1")


def emotion_style(emotion: str, level: int) -> EmotionStyle:
    """The expression and voice settings of `emotion` at intensity `level` (1..3)."""
    check_emotion(emotion, level)
    base = EMOTION_STYLES[emotion]
    scale = LEVEL_SCALE[level]
    return replace(base, **{f.name: getattr(base, f.name) * scale for f in fields(base)})


# ---------------------------------------------------------------------------------------
# Dynamics (per frame)


def phone_segments(rng: np.random.Generator, n_frames: int,
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
            n = duration(PHONE_SPECS[p].kind)
            out.append((int(p), n))
            total += n
            if total >= n_frames:
                break
    # Trim the last run to end exactly at n_frames.
    phone, n = out[-1]
    out[-1] = (phone, n - (total - n_frames))
    return [(p, n) for p, n in out if n > 0]


def smooth_noise(rng: np.random.Generator, n_frames: int, f_lo: float, f_hi: float,
                  n_waves: int = 3) -> np.ndarray:
    """A smooth random contour (T,) with unit standard deviation: a few slow sinusoids."""
    t = np.arange(n_frames) / FPS
    freq = rng.uniform(f_lo, f_hi, n_waves)
    phase = rng.uniform(0, 2 * np.pi, n_waves)
    amp = rng.uniform(0.5, 1.0, n_waves)
    wave = (amp[:, None] * np.sin(2 * np.pi * freq[:, None] * t + phase[:, None])).sum(0)
    return wave / np.sqrt((amp**2).sum() / 2)


def head_motion(rng: np.random.Generator, n_frames: int) -> np.ndarray:
    """(T, 3) dx, dy (pixels) and roll (degrees): smooth, a few pixels / degrees."""
    liveliness = rng.uniform(0.5, 1.2)
    dx = 2.2 * liveliness * smooth_noise(rng, n_frames, 0.15, 0.8)
    dy = 1.4 * liveliness * smooth_noise(rng, n_frames, 0.2, 1.0)
    roll = 4.0 * liveliness * smooth_noise(rng, n_frames, 0.15, 0.7)
    # Soft limits keep the face in the frame without flat stretches.
    return np.stack([5.0 * np.tanh(dx / 5.0), 3.5 * np.tanh(dy / 3.5),
                     10.0 * np.tanh(roll / 10.0)], 1)


def blinks(rng: np.random.Generator, n_frames: int) -> np.ndarray:
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


def intonation(rng: np.random.Generator, n_frames: int, spk: SpeakerParams,
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
    st += 0.3 * size * smooth_noise(rng, n_frames, 0.5, 2.0)
    st += style.tremor * np.sin(2 * np.pi * rng.uniform(5.0, 7.0) * t + rng.uniform(0, 6.3))
    st -= 0.25 * size  # accents push up on average; keep the median near the speaker's f0
    return np.log(spk.f0) + st * np.log(2.0) / 12.0


def mouth_track(phone: np.ndarray, style: EmotionStyle) -> dict[str, np.ndarray]:
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
