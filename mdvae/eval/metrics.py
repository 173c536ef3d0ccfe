"""Image and spectrogram metrics, region masks, and the denoising corruption protocol.

Images are uint8 (..., H, W, 3) or float in [0, 1]; metrics are computed in [0, 1] units,
so PSNR uses a peak of 1. Region metrics are averaged over the pixels of a boolean mask.
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity

from mdvae.errors import MDVAEError

# Where the mouth and the eyes sit in an aligned 64x64 face crop (the face cropper centres
# the face with eyes level at a fixed scale): used for real clips, which have no ground
# truth geometry. Boxes are (y0, x0, y1, x1), end-exclusive.
TEMPLATE_BOXES: dict[str, tuple[int, int, int, int]] = {
    "mouth": (40, 18, 56, 46),
    "eyes": (20, 12, 32, 52),
}

# The seed's denoising protocol: 10-frame sequences, the 6 central ones corrupted.
DENOISE_LENGTH = 10
DENOISE_FRAMES = slice(2, 8)


def to_unit(images: np.ndarray) -> np.ndarray:
    """uint8 images to float64 in [0, 1]; float images are returned as float64."""
    if images.dtype == np.uint8:
        return images.astype(np.float64) / 255.0
    return images.astype(np.float64)


def psnr(reference: np.ndarray, estimate: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio in dB over all pixels, or over ``mask`` (..., H, W).

    The mask broadcasts over the colour channel; the mean squared error is taken over the
    masked pixels and channels together. Identical inputs give +inf.
    """
    ref, est = to_unit(reference), to_unit(estimate)
    if ref.shape != est.shape:
        raise MDVAEError(f"psnr: shapes differ, {ref.shape} vs {est.shape}")
    err = (ref - est) ** 2
    if mask is not None:
        m = np.broadcast_to(np.asarray(mask, bool)[..., None], err.shape)
        if not m.any():
            raise MDVAEError("psnr: the region mask is empty")
        mse = err[m].mean()
    else:
        mse = err.mean()
    return float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))


def ssim(reference: np.ndarray, estimate: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean structural similarity of RGB frames (..., H, W, 3), over ``mask`` if given.

    Each frame's SSIM map (7x7 Gaussian-free window, as scikit-image's default) is averaged
    over the masked pixels, then over frames.
    """
    ref, est = to_unit(reference), to_unit(estimate)
    if ref.shape != est.shape:
        raise MDVAEError(f"ssim: shapes differ, {ref.shape} vs {est.shape}")
    frames_ref = ref.reshape(-1, *ref.shape[-3:])  # (N, H, W, 3)
    frames_est = est.reshape(-1, *est.shape[-3:])
    masks = None
    if mask is not None:
        masks = np.broadcast_to(np.asarray(mask, bool), ref.shape[:-1]).reshape(
            -1, *ref.shape[-3:-1]
        )
    values = []
    for i in range(len(frames_ref)):
        _, smap = structural_similarity(
            frames_ref[i], frames_est[i], channel_axis=-1, data_range=1.0, full=True
        )
        smap = smap.mean(axis=-1)  # (H, W): average of the per-channel maps
        if masks is not None:
            if not masks[i].any():
                continue
            values.append(smap[masks[i]].mean())
        else:
            values.append(smap.mean())
    if not values:
        raise MDVAEError("ssim: the region mask is empty")
    return float(np.mean(values))


def box_mask(boxes: np.ndarray, size: int = 64, margin: int = 0) -> np.ndarray:
    """Boolean masks (T, size, size) from boxes (T, 4) of (y0, x0, y1, x1), end-exclusive."""
    boxes = np.asarray(boxes).reshape(-1, 4)
    mask = np.zeros((len(boxes), size, size), bool)
    for t, (y0, x0, y1, x1) in enumerate(boxes):
        y0, x0 = max(0, int(y0) - margin), max(0, int(x0) - margin)
        y1, x1 = min(size, int(y1) + margin), min(size, int(x1) + margin)
        mask[t, y0:y1, x0:x1] = True
    return mask


def template_mask(region: str, n_frames: int, size: int = 64) -> np.ndarray:
    """The fixed-template region mask for aligned crops with no ground-truth geometry."""
    if region not in TEMPLATE_BOXES:
        raise MDVAEError(f"unknown region {region!r}; choose one of {sorted(TEMPLATE_BOXES)}")
    y0, x0, y1, x1 = TEMPLATE_BOXES[region]
    scale = size / 64
    box = np.array([y0, x0, y1, x1], float) * scale
    return box_mask(np.repeat(box[None].round().astype(int), n_frames, axis=0), size)


def corrupt_region(
    frames: np.ndarray,
    mask: np.ndarray,
    frame_index: slice | np.ndarray,
    sigma: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Add Gaussian noise of std ``sigma`` (in [0, 1] units) inside ``mask`` on the chosen frames.

    frames: (T, H, W, 3) uint8; mask: (T, H, W) bool. Returns a uint8 copy, clipped.
    """
    out = to_unit(frames).copy()
    chosen = np.zeros(len(frames), bool)
    chosen[frame_index] = True
    region = np.asarray(mask, bool) & chosen[:, None, None]
    noise = rng.normal(0.0, sigma, size=out.shape)
    out[region] += noise[region]
    return (np.clip(out, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def corrupted_mask(mask: np.ndarray, frame_index: slice | np.ndarray) -> np.ndarray:
    """The pixels ``corrupt_region`` touched: ``mask`` restricted to the chosen frames."""
    chosen = np.zeros(len(mask), bool)
    chosen[frame_index] = True
    return np.asarray(mask, bool) & chosen[:, None, None]


def ssim_frames(
    reference: np.ndarray, estimate: np.ndarray, mask: np.ndarray | None = None
) -> np.ndarray:
    """`ssim` of each frame (N,), all frames filtered at once: the same numbers as calling
    ``ssim`` frame by frame, many times faster on short 64x64 sequences.

    reference, estimate: (..., H, W, 3); mask: (..., H, W). A frame whose mask is empty
    gets NaN.
    """
    from scipy.ndimage import uniform_filter

    ref, est = to_unit(reference), to_unit(estimate)
    if ref.shape != est.shape:
        raise MDVAEError(f"ssim: shapes differ, {ref.shape} vs {est.shape}")
    x = ref.reshape(-1, *ref.shape[-3:])  # (N, H, W, C)
    y = est.reshape(-1, *est.shape[-3:])
    # skimage's defaults: 7x7 uniform window, reflected edges, sample covariance
    size, n_window = (1, 7, 7, 1), 49
    cov_norm = n_window / (n_window - 1)
    ux, uy = uniform_filter(x, size), uniform_filter(y, size)
    vx = cov_norm * (uniform_filter(x * x, size) - ux * ux)
    vy = cov_norm * (uniform_filter(y * y, size) - uy * uy)
    vxy = cov_norm * (uniform_filter(x * y, size) - ux * uy)
    c1, c2 = 0.01**2, 0.03**2
    smap = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    smap = smap.mean(axis=-1)  # (N, H, W)
    if mask is None:
        return smap.mean(axis=(1, 2))
    m = np.broadcast_to(np.asarray(mask, bool), ref.shape[:-1]).reshape(smap.shape)
    count = m.sum(axis=(1, 2))
    total = np.where(m, smap, 0.0).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)
