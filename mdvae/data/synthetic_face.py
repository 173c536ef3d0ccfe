"""The face renderer of the synthetic benchmark: a cartoon face drawn with signed distances
from a speaker's parameters, an emotion's style and the script's per-frame head pose,
blinks and mouth track (`mdvae.data.synthetic_script`).
"""

from __future__ import annotations

import functools

import numpy as np

from mdvae.data.synthetic_script import (
    EMOTION_STYLES,
    HAIR_STYLES,
    EmotionStyle,
    SpeakerParams,
    speaker_params,
)

SIZE = 64


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


def render_face(spk: SpeakerParams, style: EmotionStyle, head: np.ndarray, blink: np.ndarray,
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
