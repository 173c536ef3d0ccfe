"""The demo pipeline, headless, on the tiny random bundle: plumbing and refusals, not quality."""

from __future__ import annotations

import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from mdvae import pipeline
from mdvae.errors import ConfigError, MDVAEError
from mdvae.labels import EMOTIONS
from mdvae.media.face import NoFaceError
from mdvae.media.video import MediaError, normalize_clip
from mdvae.pipeline import GROUPS, Pipeline, central_frames, prune_files
from tests.helpers import CLIP_A, CLIP_B, assert_playable_with_sound, damaged


def assert_same_frames(got: np.ndarray, want: np.ndarray) -> None:
    """Frames decoded from the same latents along different tensor shapes (a cropped
    sequence, a per-frame w): the floats may differ in their last bits from one CPU's
    kernels to another's, and after rounding to uint8 a pixel moves by one level only where
    its value lay within that rounding of a half-level, so a handful of pixels at most."""
    assert got.shape == want.shape
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipe(tiny_bundle):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the app runs: faster than 2 on a busy 2-core machine
    with Pipeline(tiny_bundle, device="cpu", max_seconds=4.0, max_file_mb=1.0) as p:
        yield p
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def encoded(pipe):
    return (pipe.encode(pipe.load(CLIP_A, aligned=True)),
            pipe.encode(pipe.load(CLIP_B, aligned=True)))


# -- loading and refusals --------------------------------------------------------------


def test_load_aligned_example_and_detected_face(pipe):
    clip = pipe.load(CLIP_A, aligned=True)
    assert clip.frames.shape == (90, 64, 64, 3) and clip.power.shape == (90, 513)
    assert not clip.trimmed
    # The same file through face detection: a face is found, crops of the same size.
    detected = pipe.load(CLIP_A)
    assert detected.frames.shape[1:] == (64, 64, 3) and len(detected.frames) == 90


@pytest.mark.parametrize("case, error, message", [
    ("not_a_video", MediaError, "is not a video"),
    ("still_image", MediaError, r"photo\.mp4 is a still image \(PNG\), not a video"),
    ("no_audio", MediaError, "has no audio track"),
    ("too_short", MediaError, "too short"),
    ("no_face", NoFaceError, "no face found.*mark it as aligned"),
])
def test_bad_input_refused_with_its_message(pipe, bad_inputs, case, error, message):
    with pytest.raises(error, match=message):
        pipe.load(bad_inputs[case])


def test_no_file_and_over_the_size_cap(pipe, tmp_path):
    with pytest.raises(MediaError, match="no clip given"):
        pipe.load(None)
    big = tmp_path / "big.mp4"
    big.write_bytes(CLIP_A.read_bytes() + bytes(2 * 2**20))
    with pytest.raises(MediaError, match=r"big.mp4 is 2\.\d MB, over the 1 MB limit"):
        pipe.load(big, aligned=True)


def test_long_clip_trimmed_and_said(pipe, bad_inputs):
    enc = pipe.encode(pipe.load(bad_inputs["long"], aligned=True))
    assert enc.clip.trimmed and enc.n_frames == 120  # the 4-s limit of this pipeline
    assert any("only its first 4 s are used" in note for note in enc.notes)


def test_huge_resolution_is_downscaled_and_cropped(pipe, bad_inputs):
    clip = pipe.load(bad_inputs["huge"])
    assert clip.frames.shape[1:] == (64, 64, 3) and len(clip.frames) == 33


def test_encode_file_reuses_a_session_encoding(pipe, encoded):
    first = pipe.encode_file(CLIP_A, aligned=True)
    assert pipe.encode_file(CLIP_A, aligned=True, reuse=first) is first
    assert pipe.encode_file(CLIP_A, aligned=False, reuse=first) is not first
    torch.testing.assert_close(first.latents.w, encoded[0].latents.w)


# -- latent operations -----------------------------------------------------------------


def test_swapping_every_group_gives_b_reconstruction(pipe, encoded):
    enc_a, enc_b = encoded
    out = pipe.swap(enc_a, enc_b, set(GROUPS))
    ref = pipe.reconstruct(enc_b)
    n = enc_b.n_frames  # the shorter clip: A is cut to it
    assert out.frames.shape == (n, 64, 64, 3)
    assert_same_frames(out.frames, ref.frames[:n])
    np.testing.assert_allclose(out.power, ref.power[:n], rtol=1e-5, atol=1e-8)
    assert any("cut to the first 2.50 s" in note for note in out.notes)


def test_swap_groups_checked_and_w_keeps_a_length(pipe, encoded):
    enc_a, enc_b = encoded
    assert len(pipe.swap(enc_a, enc_b, "w").frames) == enc_a.n_frames
    assert not pipe.swap(enc_a, enc_b, ["w"]).notes
    with pytest.raises(MDVAEError, match="at least one latent group"):
        pipe.swap(enc_a, enc_b, [])
    with pytest.raises(MDVAEError, match="unknown latent group"):
        pipe.swap(enc_a, enc_b, ["z_q"])


def test_swap_notes_quote_what_the_bundle_was_measured_to_carry(pipe, encoded, monkeypatch):
    """With an evaluation in the bundle, a swap's notes give the shares of the swapped groups'
    factors (and only theirs); a factor train.evaluate found the model does not render is
    said never to follow; without an evaluation there is no such note (test above)."""
    enc_a, enc_b = encoded
    summary = {"speaker_video_follows_w": 1.0, "f0_level_heard_follows_w": 0.061,
               "mouth_follows_z_av": 0.6775, "head_pose_follows_z_v": 0.83,
               "blink_follows_z_v": 0.54, "blink_rendered": False, "head_pose_rendered": True,
               "f0_contour_heard_follows_z_a": "n/a"}  # not a number: left out
    monkeypatch.setitem(pipe.bundle.info, "evaluation", {"summary": summary})
    notes = pipe.swap(enc_a, enc_b, ["w"]).notes
    assert len(notes) == 1
    assert ("B's w brought the face's identity in 100% of the pairs, the voice's pitch level "
            "in 6% of the pairs.") in notes[0]
    assert "z_av" not in notes[0] and "voice's identity" not in notes[0]
    record = pipe.swap_record({"z_v", "z_av", "z_a"})
    assert ("B's z_av brought the mouth's shape in 68% of the pairs; B's z_v brought the "
            "head's pose in 83% of the pairs, the blinks never") in record
    assert "z_a" not in record.replace("z_av", "")
    for flag in (True, None):  # rendered, or nothing to decide on: its share is quoted
        summary["blink_rendered"] = flag
        assert "the blinks in 54% of the pairs" in pipe.swap_record({"z_v"})
    # what a share under 50% means is said only where one is quoted
    assert "Under 50%" in notes[0] and "Under 50%" not in pipe.swap_record({"z_v"})
    assert pipe.swap_record({"z_a"}) is None
    monkeypatch.setitem(pipe.bundle.info, "evaluation", "evaluated elsewhere")  # a bare note
    assert pipe.swap_record({"w"}) is None


def test_interpolation_ends_and_sweep(pipe, encoded):
    enc_a, enc_b = encoded
    assert_same_frames(pipe.interpolate(enc_a, enc_b, 1.0).frames,
                       pipe.reconstruct(enc_a).frames)
    to_b = pipe.interpolate(enc_a, enc_b, 0.0).frames
    sweep = pipe.interpolate(enc_a, enc_b, None).frames
    # The sweep starts at A's w and ends at B's (each frame is decoded on its own).
    assert_same_frames(sweep[0], pipe.reconstruct(enc_a).frames[0])
    assert_same_frames(sweep[-1], to_b[-1])
    with pytest.raises(MDVAEError, match="alpha must be between 0"):
        pipe.interpolate(enc_a, enc_b, 1.5)
    with pytest.raises(MDVAEError, match=r"alpha \(between 0, B's w, and 1, A's w\) must be a "
                                         r"number, got 'x'"):
        pipe.interpolate(enc_a, enc_b, "x")
    strip = pipe.interpolation_strip(enc_a, enc_b, n=5)
    assert strip.dtype == np.uint8 and strip.shape[1] > 5 * 128


def test_denoise_corrupts_the_region_and_scores_each_model(pipe, encoded):
    clip = encoded[0].clip
    result = pipe.denoise(clip, "mouth", 0.4)
    assert result.frames == central_frames(90) == slice(18, 72)
    changed = (result.noisy != result.clean).any(axis=-1)  # (T, 64, 64)
    assert changed[result.frames].any() and not changed[~result.mask].any()
    assert list(result.metrics) == ["noisy input", "VQ-VAE", "V-DSAE", "MDVAE"]
    assert all(np.isfinite(v).all() for v in result.metrics.values())
    assert [row[0] for row in result.table()] == list(result.metrics)
    assert_playable_with_sound(pipe.render_denoise(result))
    with pytest.raises(MDVAEError, match="unknown region"):
        pipe.denoise(clip, "nose", 0.4)


def test_emotion_probabilities(pipe, encoded):
    assert pipe.emotion_models == ("mdvae", "audio", "visual")
    for model in pipe.emotion_models:
        probs = pipe.emotion(encoded[0], model)
        assert list(probs) == list(EMOTIONS)
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)


def test_emotion_record_quotes_the_bundles_evaluation(pipe, monkeypatch):
    """The Emotion tab's record: each model's accuracy from w on held-out speakers, the two
    one-stream models' w read together where measured, a warning where the MDVAE is not
    EMOTION_MARGIN above the face alone, its and the face's with the labels of a tenth of the
    people and its accuracy on the faintest expressions where measured; nothing without an
    evaluation."""
    summary = {"emotion_accuracy_mdvae_1": 0.858, "emotion_accuracy_dsae_audio_1": 0.659,
               "emotion_accuracy_dsae_visual_1": 0.847, "emotion_accuracy_late_fusion_1": 0.949}
    monkeypatch.setitem(pipe.bundle.info, "evaluation", {"summary": summary})
    record = pipe.emotion_record()
    assert ("the emotion read from w was right for 86% of the clips with the MDVAE, 66% "
            "with the A-DSAE (voice) and 85% with the V-DSAE (face); read together, the "
            "A-DSAE's and V-DSAE's w (each from its own stream) reach 95%.") in record
    assert "takes little from the voice" in record
    assert "Faint expressions" not in record  # not measured by this evaluation
    assert "a tenth of the training speakers" not in record
    summary["emotion_accuracy_mdvae_speakers_0.1"] = 0.792
    assert "a tenth of the training speakers" not in pipe.emotion_record()  # V-DSAE's missing
    summary["emotion_accuracy_dsae_visual_speakers_0.1"] = 0.623
    assert ("the MDVAE reads 79% and the face alone 62%: the voice helps most when few people "
            "are labelled") in pipe.emotion_record()
    summary["emotion_accuracy_mdvae_level_1"] = 0.71875
    assert "at the lowest intensity (neutral included) it was right for 72%" in (
        pipe.emotion_record())
    summary["emotion_accuracy_mdvae_1"] = 0.847 + pipeline.EMOTION_MARGIN + 0.001
    del summary["emotion_accuracy_late_fusion_1"]  # an evaluation from before session 22
    record = pipe.emotion_record()
    assert "90% of the clips with the MDVAE" in record and "together" not in record
    assert "takes little" not in record
    del summary["emotion_accuracy_mdvae_1"]
    assert pipe.emotion_record() is None
    monkeypatch.delitem(pipe.bundle.info, "evaluation")
    assert pipe.emotion_record() is None


def test_emotion_against_a_neutral_clip_checks_it_is_the_same_person(pipe, encoded,
                                                                     monkeypatch):
    """The reading against a reference: calibrated probabilities of w minus the reference's
    w, an answer only for one person's two clips (the head's same-person bound), familiar
    clips and a top probability above SURE_FROM; a bundle without the head refuses."""
    enc_a, enc_b = encoded
    assert pipe.has_reference_head
    head = pipe.bundle["emotion_reference"]
    readings = pipe.emotion_readings(enc_a, enc_b)
    assert [r.model for r in readings] == ["mdvae", "audio", "visual", "reference"]
    reading = readings[-1]
    assert list(reading.probabilities) == list(EMOTIONS)
    assert sum(reading.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    w_a, w_b = enc_a.latents.w, enc_b.latents.w
    expected = torch.softmax(head(w_a, w_b).double(), -1)[0]  # no calibration: temperature 1
    assert list(reading.probabilities.values()) == pytest.approx(expected.tolist(), abs=1e-6)
    distance = float(((w_a - w_b) ** 2).mean())  # the tiny head's spread is 1
    assert reading.same_person == {"distance": pytest.approx(distance, rel=1e-5),
                                   "within": head.config.same_person_within}
    # the same clip against itself: no change at all, and no answer
    itself = pipe.reference_reading(enc_a, enc_a, sure_from=0.0)
    assert itself.same_person["distance"] == 0.0
    assert itself.answer is None and "the clip itself" in itself.reason
    monkeypatch.setattr(head.config, "same_person_within", distance / 2)
    refused = pipe.reference_reading(enc_a, enc_b)
    assert refused.answer is None and "do not look like one person" in refused.reason
    monkeypatch.setattr(head.config, "same_person_within", distance * 2)
    sure = pipe.reference_reading(enc_a, enc_b, sure_from=0.0)
    unfamiliar = False in (enc_a.familiarity.familiar, enc_b.familiarity.familiar)
    assert (sure.answer == sure.top[0]) != unfamiliar
    pool = {"accuracy": 0.983, "plain_accuracy": 0.873, "speakers": 64,
            "accuracy_neutral": 0.997, "plain_accuracy_neutral": 0.63,
            "same_person_passed": 0.986, "other_person_passed": 0.0018}
    monkeypatch.setitem(pipe.bundle.info, "emotion", {"emotion_reference": {
        "calibration": {"temperature": 4.0}, "pool": pool}})
    flat = pipe.reference_reading(enc_a, enc_b)
    assert flat.temperature == 4.0 and flat.top[1] <= reading.top[1] + 1e-9
    assert pipe.reference_record() == (
        " Read against the same person's neutral clip, the MDVAE was right for 98% of 64 new "
        "speakers' clips, where it reads 87% of the same clips alone (neutral ones 100% "
        "against 63%). Its same-person check let through 99% of one person's pairs of clips "
        "and 0.2% of two people's.")
    monkeypatch.delitem(pipe.bundle.components, "emotion_reference")
    with pytest.raises(ConfigError, match="against a neutral clip"):
        pipe.reference_reading(enc_a, enc_b)


def test_render_is_playable_with_sound(pipe, encoded):
    path = pipe.render(pipe.reconstruct(encoded[0]), "recon")
    assert path.parent == pipe.tmp_dir
    assert_playable_with_sound(path)
    assert normalize_clip(path).frames.shape == (90, 256, 256, 3)
    image = pipe.strip([("A", encoded[0].clip.frames), ("B", encoded[1].clip.frames)], n=4)
    assert image.shape[1] == 4 * 128 and image.dtype == np.uint8


def test_concurrent_requests_give_the_same_answers(pipe, encoded):
    enc_a, enc_b = encoded

    def job(_):
        out = pipe.swap(enc_a, enc_b, {"z_av"})
        return out.frames, pipe.waveform(out.power)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(job, range(4)))
    for frames, wave in results[1:]:
        np.testing.assert_array_equal(frames, results[0][0])
        np.testing.assert_array_equal(wave, results[0][1])


# -- bundle resolution, description, temporary files -----------------------------------


def test_bundle_from_env_and_clear_error_without_one(tiny_bundle, monkeypatch, tmp_path):
    import mdvae.pipeline as pipeline_module

    monkeypatch.setenv("MDVAE_BUNDLE", str(tiny_bundle))
    with Pipeline(device="cpu") as from_env:
        assert from_env.bundle_source == str(tiny_bundle)
        assert "untrained test bundle" in from_env.description
    monkeypatch.delenv("MDVAE_BUNDLE")
    monkeypatch.setattr(pipeline_module, "DEFAULT_BUNDLE", tmp_path / "checkpoints")
    with pytest.raises(ConfigError, match="no model bundle in .*MDVAE_BUNDLE"):
        Pipeline(device="cpu")


def test_description_names_the_training_data(pipe):
    info = {"data": {"source": "synthetic", "splits": {"train": {
        "speakers": ["a", "b"], "clips": 10, "frames": 5400}}},
        "emotion": {"emotion": {"accuracy": {"test": 0.875}},
                    "emotion_dsae_audio": {"accuracy": {"test": 0.5}}}}
    pipe.bundle.info, saved = info, pipe.bundle.info
    try:
        text = pipe.description
    finally:
        pipe.bundle.info = saved
    assert "`synthetic` data, 2 speakers, 10 clips (3 min)" in text
    assert "MDVAE 88%, A-DSAE (voice) 50%" in text and "cartoon" in text


def test_temporary_files_pruned_and_removed(tiny_bundle):
    p = Pipeline(tiny_bundle, device="cpu", keep_seconds=0.0)
    first = p.new_path("x", ".mp4")
    first.write_bytes(b"x")
    p.new_path("y", ".mp4")  # older files than keep_seconds go
    assert not first.exists()
    folder = p.tmp_dir
    p.close()
    assert not folder.exists()


def snapshot(value, depth=3):
    """A copy of everything reachable from `value` that a request could change: plain
    values, arrays, every module's weights and mode, and the attributes of objects (to
    `depth` levels). Locks and other opaque objects are kept by identity."""
    if isinstance(value, torch.nn.Module):
        return ("module", value.training, {k: v.clone() for k, v in value.state_dict().items()})
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, dict):
        return {k: snapshot(v, depth) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(snapshot(v, depth) for v in value)
    if depth and hasattr(value, "__dict__") and not isinstance(value, type):
        return (type(value).__name__, snapshot(dict(vars(value)), depth - 1))
    return value


def assert_same(before, after, where="pipeline"):
    if isinstance(before, torch.Tensor):
        assert torch.equal(before, after), where
    elif isinstance(before, np.ndarray):
        np.testing.assert_array_equal(before, after, err_msg=where)
    elif isinstance(before, dict):
        assert before.keys() == after.keys(), where
        for key in before:
            assert_same(before[key], after[key], f"{where}.{key}")
    elif isinstance(before, (list, tuple)):
        assert len(before) == len(after), where
        for i, (b, a) in enumerate(zip(before, after)):
            assert_same(b, a, f"{where}[{i}]")
    else:
        assert before is after or before == after, where


def test_pipeline_is_usable_from_threads_without_shared_state(pipe, encoded):
    # Per-request options are arguments: nothing on the pipeline changes while serving.
    enc_a, enc_b = encoded
    before = snapshot(pipe)
    requests = [
        lambda: pipe.load(CLIP_B, aligned=True, max_seconds=2.0),
        lambda: pipe.load(CLIP_A, aligned=True),
        lambda: pipe.swap(enc_a, enc_b, {"w", "z_v"}),
        lambda: pipe.interpolate(enc_a, enc_b, 0.3),
        lambda: pipe.denoise(enc_b.clip, "eyes", 0.5, seed=3),
        lambda: pipe.emotion(enc_a, "visual"),
    ]
    with ThreadPoolExecutor(len(requests)) as pool:
        futures = [pool.submit(request) for request in requests]
        results = [f.result() for f in futures]  # a request that raised fails the test here
    assert len(results[0].frames) == 60 and results[0].trimmed
    assert_same(before, snapshot(pipe))


def test_text_where_a_number_belongs_is_named(pipe, encoded):
    with pytest.raises(MDVAEError, match="the noise level sigma must be a number, got 'x'"):
        pipe.denoise(encoded[0].clip, "mouth", "x")
    with pytest.raises(MDVAEError, match="alpha .* must be a number, got None|got \\[\\]"):
        pipe.interpolate(encoded[0], encoded[1], [])


def test_damaged_clip_notes_how_many_frames_were_lost(pipe, tmp_path):
    enc = pipe.encode(pipe.load(damaged(tmp_path, "scratched.mp4", 0.04), aligned=True))
    assert enc.clip.lost_frames > 0
    assert any(f"scratched.mp4 is damaged: {enc.clip.lost_frames} of its video frames could "
               f"not be decoded" in note for note in enc.notes)


def _aged(path: Path, size: int, age: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(size))
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def test_prune_files_bounds_a_folder_by_age_and_size(tmp_path):
    old = _aged(tmp_path / "a" / "old.mp4", 10, age=7200)
    big = [_aged(tmp_path / f"h{i}" / "up.mp4", 1000, age=600 - i) for i in range(5)]
    young = _aged(tmp_path / "young.mp4", 1000, age=5)
    example = _aged(tmp_path / "ex" / "example.mp4", 1000, age=9000)
    left = prune_files(tmp_path, max_bytes=3000, max_age_s=3600, min_age_s=60, keep=[example])
    assert not old.exists() and not old.parent.exists()  # too old; its empty folder goes too
    # oldest first until the rest fit: the young file and the kept example count, but stay
    assert [p.exists() for p in big] == [False, False, False, False, True]
    assert young.exists() and example.exists() and left == 3000


def test_written_files_bounded_by_size_and_age(tiny_bundle):
    with Pipeline(tiny_bundle, device="cpu", max_output_mb=0.002) as p:
        files = [_aged(p.new_path("r", ".mp4"), 1000, age=120 + i) for i in range(4)]
        fresh = p.new_path("r", ".mp4")
        fresh.write_bytes(bytes(1000))
        p.new_path("r", ".mp4")
        # 2,000 bytes at most, oldest first; the file just written is never pruned
        assert sum(f.exists() for f in files) == 1 and files[0].exists() and fresh.exists()


def test_session_encoding_survives_its_upload_being_pruned(pipe, tmp_path):
    upload = tmp_path / "upload.mp4"
    upload.write_bytes(CLIP_B.read_bytes())
    first = pipe.encode_file(upload, aligned=True)
    upload.unlink()  # pruned from the cache while the session still holds the encoding
    assert pipe.encode_file(upload, aligned=True, reuse=first) is first
    with pytest.raises(MediaError, match="does not exist"):
        pipe.encode_file(upload, aligned=False, reuse=first)


def test_description_of_a_bundle_whose_data_is_a_bare_note(pipe):
    saved = pipe.bundle.info
    pipe.bundle.info = {"data": "twelve synthetic speakers"}
    try:
        assert re.search(r"\*\*Trained on:\*\* +twelve synthetic speakers", pipe.description)
    finally:
        pipe.bundle.info = saved
