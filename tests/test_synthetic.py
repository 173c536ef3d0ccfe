"""The synthetic benchmark: reproducible, and its factors drive what is seen and heard."""

import numpy as np
import pytest

from mdvae.data import synthetic_face as face
from mdvae.data import synthetic_script as script
from mdvae.data.synthetic import generate_clip
from mdvae.data.synthetic_script import (
    FACTOR_SPEC,
    N_PHONES,
    N_VISEMES,
    SYNTH_SPEAKERS,
    speaker_params,
)
from mdvae.errors import MDVAEError
from mdvae.labels import EMOTIONS

HOP = 16000 / 30  # audio samples per video frame


@pytest.fixture(scope="module")
def clips():
    return [generate_clip(s, "neutral", 1, s) for s in range(6)]


def test_clip_follows_the_contract(clips):
    for n_frames in (1, 7, 90):
        clip = generate_clip(2, "sad", 2, 5, n_frames=n_frames)
        assert clip.frames.shape == (n_frames, 64, 64, 3) and clip.frames.dtype == np.uint8
        assert clip.audio.dtype == np.float32
        assert clip.audio.shape == (round(n_frames * 16000 / 30),)
        peak = np.abs(clip.audio).max()
        assert np.isclose(peak, 1.0) if clip.factors["phone"].any() else 0 < peak < 0.01
        assert (clip.speaker, clip.emotion, clip.level, clip.seed) == (2, "sad", 2, 5)
        assert set(clip.factors) == set(FACTOR_SPEC)
        for name, (dtype, shape) in FACTOR_SPEC.items():
            arr = clip.factors[name]
            assert arr.dtype == np.dtype(dtype) and arr.shape == (n_frames, *shape), name
    f = clips[0].factors
    assert 0 <= f["phone"].min() and f["phone"].max() < N_PHONES
    assert 0 <= f["viseme"].min() and f["viseme"].max() < N_VISEMES
    assert np.array_equal(f["viseme"], np.asarray(script.PHONE_VISEME)[f["phone"]])
    assert np.all((f["f0"] > 0) == (f["voicing"] == 1))
    assert 0.0 <= f["blink"].min() and f["blink"].max() <= 1.0


def test_deterministic_per_seed_and_seed_matters():
    a = generate_clip(4, "angry", 3, 11, n_frames=30)
    b = generate_clip(4, "angry", 3, 11, n_frames=30)
    c = generate_clip(4, "angry", 3, 12, n_frames=30)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.audio, b.audio)
    for name in a.factors:
        assert np.array_equal(a.factors[name], b.factors[name])
    assert not np.array_equal(a.frames, c.frames)
    assert not np.array_equal(a.audio, c.audio)
    assert not np.array_equal(a.factors["phone"], c.factors["phone"])


def test_speakers_are_fixed_by_their_id_and_differ():
    assert speaker_params(7) == speaker_params(7) == SYNTH_SPEAKERS[7]
    assert speaker_params(7) != speaker_params(8)
    f0s = [speaker_params(s).f0 for s in range(40)]
    assert max(f0s) / min(f0s) > 1.8  # low and high voices
    frames = [generate_clip(s, "neutral", 1, 0, n_frames=1).frames[0] for s in (0, 1)]
    assert np.abs(frames[0].astype(int) - frames[1]).mean() > 20


def test_bad_requests_are_refused():
    with pytest.raises(MDVAEError, match="neutral has level 1 only"):
        generate_clip(0, "neutral", 2, 0)
    with pytest.raises(MDVAEError, match="unknown emotion"):
        generate_clip(0, "bored", 1, 0)
    with pytest.raises(MDVAEError, match="level"):
        generate_clip(0, "happy", 4, 0)
    with pytest.raises(MDVAEError, match="seed"):
        generate_clip(0, "happy", 1, -1)
    with pytest.raises(MDVAEError, match="speaker"):
        speaker_params(-3)


def test_mouth_opening_goes_with_the_voiced_audio_envelope(clips):
    for clip in clips:
        f = clip.factors
        voiced = np.flatnonzero(f["voicing"])
        rms = np.array([np.sqrt(np.mean(clip.audio[int(t * HOP) - 266:int(t * HOP) + 267] ** 2))
                        for t in voiced])
        # Take the audio-only loudness contour out: what is left is the phones' own level.
        level = np.log(rms) - f["loudness"][voiced] * np.log(10) / 20
        assert np.corrcoef(f["mouth_open"][voiced], level)[0, 1] > 0.5


def test_f0_factor_is_the_pitch_heard(clips):
    for clip in clips[:3]:
        f = clip.factors
        ratios = []
        for t in np.flatnonzero(f["voicing"]):
            seg = clip.audio[max(0, int(t * HOP) - 400):int(t * HOP) + 400]
            if len(seg) < 800:
                continue
            ac = np.correlate(seg - seg.mean(), seg - seg.mean(), "full")[len(seg) - 1:]
            lag = 40 + np.argmax(ac[40:267])  # 60..400 Hz
            ratios.append(16000 / lag / f["f0"][t])
        assert np.mean(np.abs(np.array(ratios) - 1) < 0.08) > 0.9


def test_fricatives_are_noise_high_up_and_silences_are_quiet(clips):
    from mdvae.media.audio import power_spectrogram

    fric = {script.PHONES.index(p) for p in ("s", "sh")}
    high, low, sil = [], [], []
    for clip in clips:
        power = power_spectrogram(clip.audio)[: len(clip.frames)]
        share = power[:, 128:].sum(1) / power.sum(1)  # above 4 kHz
        phone = clip.factors["phone"]
        inner = np.r_[False, phone[1:-1] == phone[:-2], False] & np.r_[
            False, phone[1:-1] == phone[2:], False]  # frames inside a phone, not at its edge
        high += list(share[inner & np.isin(phone, list(fric))])
        low += list(share[inner & (clip.factors["voicing"] == 1)])
        sil += list(power.sum(1)[inner & (phone == 0)] / power.sum(1).max())
    assert np.median(high) > 0.2 and np.median(low) < 0.02
    assert np.median(sil) < 1e-4


def _posed(speaker: int, emotion: str, level: int) -> np.ndarray:
    """One frame of `speaker` with `emotion`, head upright and still, eyes open, mouth at rest."""
    style = script.emotion_style(emotion, level)
    mouth = script.mouth_track(np.zeros(1, np.int16), style)
    frames, _, _ = face.render_face(speaker_params(speaker), style, np.zeros((1, 3)), np.zeros(1),
                               mouth)
    return frames[0].astype(float)


def test_emotions_show_in_brows_and_mouth_corners():
    spk = speaker_params(3)
    ex = face._eyes_rect(spk, script.emotion_style("neutral", 1))
    cx, cy = face._CENTRE
    brow_rows = slice(int(cy + ex[1] - 7), int(cy + ex[1]))
    mouth_rows = slice(int(cy + spk.mouth_y - 5), int(cy + spk.mouth_y + 5))
    corners = np.r_[int(cx - spk.mouth_w - 3):int(cx - spk.mouth_w + 3),
                    int(cx + spk.mouth_w - 3):int(cx + spk.mouth_w + 3)]
    faces = {e: _posed(3, e, 1 if e == "neutral" else 3) for e in EMOTIONS}
    for a in EMOTIONS:
        for b in EMOTIONS:
            if a < b:
                assert np.abs(faces[a] - faces[b]).mean() > 0.5, (a, b)
    for e in ("angry", "fear", "sad", "surprised", "happy"):
        assert np.abs(faces[e] - faces["neutral"])[brow_rows].mean() > 4, e
    for e in ("happy", "sad", "contempt", "disgusted"):
        assert np.abs(faces[e] - faces["neutral"])[mouth_rows][:, corners].mean() > 4, e
    # The level scales the effect.
    d1 = np.abs(_posed(3, "happy", 1) - faces["neutral"]).mean()
    assert 0.5 < d1 < np.abs(faces["happy"] - faces["neutral"]).mean()


def test_emotions_are_heard_in_pitch_and_rate():
    def stats(emotion):
        f0, changes = [], 0
        for seed in range(3):
            f = generate_clip(1, emotion, 3, seed).factors
            f0 += list(f["f0"][f["voicing"] == 1])
            changes += np.count_nonzero(np.diff(f["phone"]))
        return 12 * np.log2(np.median(f0)), changes

    (happy, happy_rate), (sad, sad_rate) = stats("happy"), stats("sad")
    assert happy - sad > 3  # semitones
    assert happy_rate > sad_rate


def _whites(frames: np.ndarray) -> np.ndarray:
    return frames.min(-1) > 200  # sclera and teeth; no skin, hair or background is this light


def test_blinks_close_the_eyes():
    seen = 0
    for seed in range(8):
        clip = generate_clip(5, "neutral", 1, seed, n_frames=60)
        blink = clip.factors["blink"]
        if blink.max() < 0.99:
            continue
        seen += 1
        box = clip.factors["eyes_box"]
        white = np.array([_whites(clip.frames[t, y0:y1, x0:x1]).sum()
                          for t, (y0, x0, y1, x1) in enumerate(box)])
        assert white[blink >= 0.99].max() <= 0.1 * white[blink == 0].mean()
    assert seen >= 2


def test_head_pose_moves_the_face(clips):
    for clip in clips:
        skin = np.array(speaker_params(clip.speaker).skin) * 255
        mask = np.abs(clip.frames.astype(float) - skin).max(-1) < 14  # lit skin of the face
        ys, xs = np.mgrid[0:64, 0:64]
        cx = (mask * xs).sum((1, 2)) / mask.sum((1, 2))
        cy = (mask * ys).sum((1, 2)) / mask.sum((1, 2))
        dx, dy, _ = clip.factors["head_pose"].T
        assert np.corrcoef(cx, dx)[0, 1] > 0.8
        if dy.std() > 0.5:
            assert np.corrcoef(cy, dy)[0, 1] > 0.6


def test_boxes_hold_the_eyes_and_the_mouth(clips):
    for clip in clips:
        f = clip.factors
        for name in ("mouth_box", "eyes_box"):
            box = f[name].astype(int)
            assert np.all(box >= 0) and np.all(box[:, 2:] <= 64)
            assert np.all(box[:, 2] > box[:, 0]) and np.all(box[:, 3] > box[:, 1])
            assert ((box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])).max() < 0.15 * 64 * 64
        for t in np.flatnonzero((f["mouth_open"] < 0.05) & (f["blink"] < 0.05)):
            white = _whites(clip.frames[t])  # no teeth showing, eyes open: whites are eyes
            y0, x0, y1, x1 = f["eyes_box"][t]
            assert white.sum() >= 2 and white[y0:y1, x0:x1].sum() == white.sum()


def test_boxes_follow_the_head():
    """Whatever the pose, opening the mouth changes pixels only in the mouth box, and
    closing the eyes only in the eye box."""
    spk, style = speaker_params(2), script.emotion_style("happy", 3)
    head = generate_clip(2, "happy", 3, 0, n_frames=40).factors["head_pose"]
    n = len(head)
    open_mouth = script.mouth_track(np.full(n, script.PHONES.index("a"), np.int16), style)
    rest = script.mouth_track(np.zeros(n, np.int16), style)
    base, mouth_box, eyes_box = face.render_face(spk, style, head, np.zeros(n), open_mouth)
    moved_mouth, _, _ = face.render_face(spk, style, head, np.zeros(n), rest)
    closed_eyes, _, _ = face.render_face(spk, style, head, np.ones(n), open_mouth)
    for changed, box in ((moved_mouth, mouth_box), (closed_eyes, eyes_box)):
        diff = np.abs(changed.astype(int) - base).max(-1) > 8  # (T, 64, 64)
        for t in range(n):
            y0, x0, y1, x1 = box[t]
            assert diff[t].sum() > 10
            assert diff[t, y0:y1, x0:x1].sum() == diff[t].sum()
