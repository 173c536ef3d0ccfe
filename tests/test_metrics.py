import numpy as np
import pytest

from mdvae.errors import MDVAEError
from mdvae.eval import metrics


def test_psnr_of_a_known_error():
    ref = np.full((2, 8, 8, 3), 0.5)
    est = ref + 0.1  # mse = 0.01 -> 10 log10(1 / 0.01) = 20 dB
    assert metrics.psnr(ref, est) == pytest.approx(20.0)
    assert metrics.psnr(ref, ref) == float("inf")


def test_psnr_counts_only_the_masked_pixels():
    ref = np.zeros((1, 8, 8, 3))
    est = ref.copy()
    est[0, :4] = 0.1  # top half off by 0.1, bottom half exact
    top = np.zeros((1, 8, 8), bool)
    top[0, :4] = True
    assert metrics.psnr(ref, est, top) == pytest.approx(20.0)
    assert metrics.psnr(ref, est, ~top) == float("inf")
    # over the whole image the mse halves: 10 log10(1 / 0.005)
    assert metrics.psnr(ref, est) == pytest.approx(10 * np.log10(200))


def test_psnr_of_uint8_frames_uses_unit_range():
    ref = np.zeros((1, 4, 4, 3), np.uint8)
    est = np.full((1, 4, 4, 3), 51, np.uint8)  # 51 / 255 = 0.2 -> 10 log10(25)
    assert metrics.psnr(ref, est) == pytest.approx(10 * np.log10(25))


def test_ssim_of_identical_and_of_different_images():
    rng = np.random.default_rng(0)
    img = rng.random((2, 32, 32, 3))
    assert metrics.ssim(img, img) == pytest.approx(1.0)
    noisy = np.clip(img + rng.normal(0, 0.3, img.shape), 0, 1)
    assert metrics.ssim(img, noisy) < 0.9


def test_ssim_region_ignores_damage_outside_it():
    rng = np.random.default_rng(1)
    img = rng.random((1, 32, 32, 3))
    damaged = img.copy()
    damaged[0, :, :12] = 0.0
    right = np.zeros((1, 32, 32), bool)
    right[0, :, 20:] = True  # farther than the 7x7 window reaches from the damage
    assert metrics.ssim(img, damaged, right) == pytest.approx(1.0)
    assert metrics.ssim(img, damaged, ~right) < 0.5


def test_empty_masks_and_shape_mismatches_are_refused():
    img = np.zeros((1, 8, 8, 3))
    with pytest.raises(MDVAEError, match="empty"):
        metrics.psnr(img, img + 0.1, np.zeros((1, 8, 8), bool))
    with pytest.raises(MDVAEError, match="shapes differ"):
        metrics.psnr(img, np.zeros((1, 8, 9, 3)))
    with pytest.raises(MDVAEError, match="unknown region"):
        metrics.template_mask("nose", 3)


def test_box_mask_and_corruption_touch_only_the_region_and_frames():
    boxes = np.array([[10, 20, 14, 30]] * 10)
    mask = metrics.box_mask(boxes)
    assert mask.shape == (10, 64, 64)
    assert mask[0].sum() == 4 * 10 and mask[0, 10, 20] and not mask[0, 14, 20]
    frames = np.full((10, 64, 64, 3), 128, np.uint8)
    noisy = metrics.corrupt_region(
        frames, mask, metrics.DENOISE_FRAMES, 0.3, np.random.default_rng(0)
    )
    changed = (noisy != frames).any(axis=-1)
    touched = metrics.corrupted_mask(mask, metrics.DENOISE_FRAMES)
    assert not changed[~touched].any()
    assert changed[touched].mean() > 0.9
    assert not changed[[0, 1, 8, 9]].any() and changed[2:8].any()


def test_template_mask_sits_in_the_lower_face_for_the_mouth():
    mouth = metrics.template_mask("mouth", 1)[0]
    eyes = metrics.template_mask("eyes", 1)[0]
    ys_mouth, ys_eyes = np.nonzero(mouth)[0], np.nonzero(eyes)[0]
    assert ys_mouth.min() > ys_eyes.max()
    assert not (mouth & eyes).any()


def _render_mouth_shapes(phones, head, emotion="neutral"):
    """Frames of one synthetic speaker whose only difference is the mouth shape."""
    from mdvae.data import synthetic_script as script
    from mdvae.data.synthetic_face import render_face

    spk = script.speaker_params(4)
    style = script.emotion_style(emotion, 1)
    n = len(phones)
    head = np.repeat(np.asarray(head, np.float32)[None], n, axis=0)
    mouth = script.mouth_track(np.asarray(phones), style)
    return render_face(spk, style, head, np.zeros(n, np.float32), mouth)


@pytest.mark.parametrize("head", [(0.0, 0.0, 0.0), (3.0, -2.0, 7.0)])
def test_ground_truth_mouth_box_holds_the_pixels_that_move_with_the_mouth(head):
    from mdvae.data.synthetic_script import PHONES

    closed, open_ = PHONES.index("m"), PHONES.index("a")
    frames, mouth_box, eyes_box = _render_mouth_shapes([closed] * 3 + [open_] * 3, head)
    changed = (frames[1] != frames[4]).any(axis=-1)  # (64, 64) lips closed vs open
    assert changed.sum() > 20
    mouth = metrics.box_mask(mouth_box[[1, 4]]).any(axis=0)
    eyes = metrics.box_mask(eyes_box[[1, 4]]).any(axis=0)
    assert not (changed & ~mouth).any()
    assert not (changed & eyes).any()
    # the template box of aligned real crops sits where the synthetic mouth does at rest
    if head == (0.0, 0.0, 0.0):
        template = metrics.template_mask("mouth", 1)[0]
        assert (changed & template).sum() > 0.8 * changed.sum()


def test_denoising_corrupts_the_mouth_box_of_a_generated_clip_only():
    from mdvae.data.synthetic import generate_clip

    clip = generate_clip(2, "happy", 2, seed=5, n_frames=metrics.DENOISE_LENGTH)
    mask = metrics.box_mask(clip.factors["mouth_box"])
    noisy = metrics.corrupt_region(
        clip.frames, mask, metrics.DENOISE_FRAMES, 0.2, np.random.default_rng(0)
    )
    hit = metrics.corrupted_mask(mask, metrics.DENOISE_FRAMES)
    assert hit.sum(axis=(1, 2))[[0, 1, 8, 9]].tolist() == [0, 0, 0, 0]
    assert (hit.sum(axis=(1, 2))[2:8] > 50).all()
    # noise of std 0.2 in [0, 1] units: PSNR near 10 log10(1 / 0.04) = 14 dB (less clipping)
    assert 13.0 < metrics.psnr(clip.frames, noisy, hit) < 17.0
    assert metrics.psnr(clip.frames, noisy, ~hit) == float("inf")


def test_batched_ssim_matches_the_frame_by_frame_one():
    rng = np.random.default_rng(3)
    ref = rng.integers(0, 256, (4, 16, 20, 3), dtype=np.uint8)
    est = np.clip(ref + rng.normal(0, 30, ref.shape), 0, 255).astype(np.uint8)
    mask = np.zeros((4, 16, 20), bool)
    mask[0, 2:9, 3:15] = True
    mask[2, :, :4] = True  # frames 1 and 3: empty
    per_frame = metrics.ssim_frames(ref, est, mask)
    assert per_frame[0] == pytest.approx(metrics.ssim(ref[:1], est[:1], mask[:1]))
    assert per_frame[2] == pytest.approx(metrics.ssim(ref[2:3], est[2:3], mask[2:3]))
    assert np.isnan(per_frame[[1, 3]]).all()
    assert np.nanmean(per_frame) == pytest.approx(metrics.ssim(ref, est, mask))
    whole = metrics.ssim_frames(ref, est)
    assert whole == pytest.approx([metrics.ssim(ref[i], est[i]) for i in range(4)])
