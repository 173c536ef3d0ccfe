"""Aligned 64x64 face crops from a talking-face clip: detect, track, smooth, crop.

Two ways to place the crop, one pipeline around them:
- "fan": face-alignment's 2D landmarks (eyes, mouth) give centre, size and roll (eyes level).
  Used only when its weights are already in the torch hub cache, unless a download is
  explicitly allowed: an offline demo must never hang on a download.
- "haar": OpenCV's Haar face cascade (shipped inside the opencv-python 4.x wheel) gives a
  box; the eye cascade inside it gives the roll where it finds a plausible pair of eyes.

Detection runs on every `detect_every`-th frame of a downscaled grey copy; the face is
tracked by picking, on each detected frame, the box closest to the previous one; gaps are
interpolated; centres and angles are smoothed over time and one crop size (the median)
holds for the whole clip, as in MEAD-style aligned crops. The crop is square and holds the
whole face (forehead to chin) with a little hair and background; crops that reach past the
frame border repeat the border pixels.
"""

import logging
import math
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy.ndimage import median_filter
from scipy.signal import savgol_filter

from mdvae.errors import MDVAEError
from mdvae.media.audio import FPS
from mdvae.media.video import MediaError

logger = logging.getLogger(__name__)

# Crop geometry, calibrated so the two backends frame a face alike. Haar boxes span brows to
# chin; the crop side is 1.5 box widths, centred 5 % of a box below the box centre. With
# landmarks the same framing is 3.1 inter-ocular distances or 3.3 eye-to-mouth distances
# (whichever is larger, so a turned head does not shrink it), centred a third of the way
# from the eyes to the mouth.
_HAAR_SIDE = 1.5
_HAAR_SHIFT = 0.05
_FAN_SIDE_IOD = 3.1
_FAN_SIDE_EYE_MOUTH = 3.3
_FAN_CENTRE = 0.35
# The most a tracked face may grow or shrink between two detections.
_SIZE_RATIO = 1.45
# Face width, in pixels, at which a tracked face is searched for near its last position.
_TRACK_FACE = 48
# A face seen on at least this share of the frames where the most-seen face is seen counts
# as another steady face (a one-off false detection does not).
_STEADY = 0.75
# face-alignment's 2D landmark network and its file in the torch hub cache.
_FAN_URL = "https://www.adrianbulat.com/downloads/python-fan/2DFAN4-11f355bf06.pth.tar"
_DOWNLOAD_TIMEOUT_S = 10.0


class NoFaceError(MediaError):
    """No face could be found (or followed) through the clip."""


class FaceBackendError(MDVAEError):
    """The requested face backend cannot be used on this machine."""


@dataclass
class FaceTrack:
    """Where the crop of every frame lies, in the input frames' pixel coordinates.

    center: (N, 2) float x, y of the crop centre; side: crop side in pixels (one per clip);
    angle: (N,) float roll in degrees (the crop is rotated by it so the eyes are level);
    detected: (N,) bool, True on frames where the face was measured (others are filled in).
    faces: how many distinct faces were seen steadily (on half the frames searched whole);
    position: where the followed face was first seen, "left", "centre" or "right" of the frame.
    """

    center: np.ndarray
    side: float
    angle: np.ndarray
    detected: np.ndarray
    faces: int = 1
    position: str = "centre"

    @property
    def note(self) -> str:
        """A sentence for the page when the clip holds several faces, else ""."""
        if self.faces < 2:
            return ""
        return (f"{self.faces} faces are seen in this clip: the largest steady one, "
                f"{'in the centre' if self.position == 'centre' else 'on the ' + self.position}"
                f" of the frame, is used.")


def fan_weights_path() -> Path:
    """Where face-alignment keeps (or would download) its 2D landmark weights."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(_FAN_URL)


def _load_fan(allow_download: bool):
    """face_alignment.FaceAlignment on CPU with our own face boxes, or None (and why)."""
    if not fan_weights_path().is_file() and not allow_download:
        return None, f"its weights are not in {fan_weights_path()} and download is not allowed"
    try:
        import face_alignment
    except ImportError as error:
        return None, f"face_alignment cannot be imported ({error})"
    # torch.hub downloads have no timeout of their own: bound the wait on offline machines.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)
    try:
        # The "folder" detector loads nothing: we hand it the boxes our tracker found.
        model = face_alignment.FaceAlignment(
            face_alignment.LandmarksType.TWO_D, device="cpu", face_detector="folder",
            flip_input=False, compile=False)
    except Exception as error:  # network, truncated file, incompatible checkpoint
        return None, f"its weights could not be loaded ({type(error).__name__}: {error})"
    finally:
        socket.setdefaulttimeout(previous)
    return model, ""


def _odd_window(window: int, n: int) -> int:
    window = min(window, n if n % 2 else n - 1)
    return window if window % 2 else window - 1


def _smooth(values: np.ndarray, window: int, order: int) -> np.ndarray:
    """Savitzky-Golay smoothing along time (axis 0); follows motion without lagging."""
    window = _odd_window(window, len(values))
    if window <= order:
        return values
    return savgol_filter(values, window, order, axis=0, mode="interp")


def _fill(index: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Values measured at frames `index` (K, D) spread to all n frames (n, D): linear
    between measurements, held before the first and after the last."""
    frames = np.arange(n)
    return np.stack([np.interp(frames, index, values[:, d]) for d in range(values.shape[1])],
                    axis=1)


class FaceCropper:
    """Crops the (main) face of every frame of a clip to size x size RGB.

    backend: "auto" (landmarks when their weights load offline, else Haar), "fan", "haar".
    allow_download: let face-alignment fetch its weights (~100 MB) when they are missing.
    detect_every: run the detector on every k-th frame and interpolate in between.
    landmark_every: with "fan", measure landmarks on about every k-th frame (a landmark
        pass costs a few hundred ms on a CPU, a Haar search a few ms).
    min_face_fraction: fewer detected frames than this fraction -> NoFaceError.
    """

    def __init__(self, backend: str = "auto", size: int = 64, *, allow_download: bool = False,
                 detect_every: int = 3, landmark_every: int = 6,
                 min_face_fraction: float = 0.2, detect_side: int = 320):
        if backend not in ("auto", "fan", "haar"):
            raise FaceBackendError(f"unknown face backend {backend!r}: use 'auto', 'fan' or "
                                   f"'haar'")
        self.size = size
        self.detect_every = max(1, int(detect_every))
        self.landmark_every = max(1, int(landmark_every))
        self.min_face_fraction = min_face_fraction
        self.detect_side = detect_side
        self._fan = None
        if backend in ("auto", "fan"):
            self._fan, reason = _load_fan(allow_download)
            if self._fan is None:
                if backend == "fan":
                    raise FaceBackendError(
                        f"the face-alignment backend is unavailable: {reason}. Pass "
                        f"allow_download=True on a machine with network access, or use "
                        f"backend='haar'")
                logger.info("face-alignment unavailable (%s): using the Haar cascade", reason)
        self.backend = "fan" if self._fan is not None else "haar"
        cascades = Path(cv2.data.haarcascades)
        self._face_cascade = cv2.CascadeClassifier(
            str(cascades / "haarcascade_frontalface_default.xml"))
        self._eye_cascade = cv2.CascadeClassifier(str(cascades / "haarcascade_eye.xml"))
        if self._face_cascade.empty() or self._eye_cascade.empty():
            raise FaceBackendError(f"OpenCV's Haar cascades are missing from {cascades}: "
                                   f"install opencv-python 4.x")
        # Neither OpenCV's cascades nor the landmark network promise to be thread-safe, and
        # one cropper may serve several requests of the app at once.
        self._lock = threading.Lock()

    # -- detection and tracking ------------------------------------------------------------

    def _detect(self, frame: np.ndarray, near: np.ndarray | None = None) -> np.ndarray:
        """Face boxes (k, 4) as x, y, w, h in frame pixels.

        Without `near`, the whole frame is searched; with a box `near`, only the region
        around it and only faces of about its size, which costs a small fraction.
        """
        if near is None:
            grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
            factor = min(1.0, self.detect_side / max(grey.shape))
            if factor < 1.0:
                grey = cv2.resize(grey, None, fx=factor, fy=factor,
                                  interpolation=cv2.INTER_AREA)
            min_side = max(24, round(0.08 * min(grey.shape)))
            boxes = self._face_cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5,
                                                        minSize=(min_side, min_side))
            return np.asarray(boxes, dtype=np.float64).reshape(-1, 4) / factor
        x, y, w, _ = near
        x0, y0 = max(0, int(x - 0.6 * w)), max(0, int(y - 0.6 * w))
        region = frame[y0:int(y + 1.6 * w) + 1, x0:int(x + 1.6 * w) + 1]
        # Scaled so the face spans _TRACK_FACE pixels: twice the cascade's window is enough
        # for a steady box and keeps the search cheap whatever the video's resolution.
        factor = min(1.0, _TRACK_FACE / w)
        low, high = max(24, int(w * factor / _SIZE_RATIO)), int(w * factor * _SIZE_RATIO) + 1
        if min(region.shape[:2]) * factor < low:
            return np.zeros((0, 4))
        grey = cv2.cvtColor(region, cv2.COLOR_RGB2GRAY)
        grey = cv2.resize(grey, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
        boxes = self._face_cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5,
                                                    minSize=(low, low), maxSize=(high, high))
        return np.asarray(boxes, dtype=np.float64).reshape(-1, 4) / factor + [x0, y0, 0, 0]

    def _follow(self, frames: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, int, str]:
        """One face box per frame of `index` (K, 4), NaN where the face was not found; the
        number of steady faces; where the followed one lies ("left", "centre", "right").

        The whole frame is searched about once a second. The track starts from the box that
        recurs on most of those frames (the main face, not a one-off false detection; of
        several faces seen as often, the largest), then follows it
        frame by frame, forwards and backwards, searching near the last box and accepting
        only boxes of similar size and position. The whole frame is searched again wherever
        the face was lost.
        """
        whole: dict[int, np.ndarray] = {}

        def search(k: int) -> np.ndarray:
            if k not in whole:
                whole[k] = self._detect(frames[index[k]])
            return whole[k]

        boxes = np.full((len(index), 4), np.nan)
        anchors = np.unique(np.r_[np.arange(0, len(index), max(1, FPS // self.detect_every)),
                                  len(index) - 1])
        pool = [(k, box) for k in anchors for box in search(k)]
        if not pool:  # maybe the face shows only between the anchors: look everywhere
            pool = [(k, box) for k in range(len(index)) for box in search(k)]
        if not pool:
            return boxes, 0, "centre"
        owner = np.array([k for k, _ in pool])
        stack = np.array([box for _, box in pool])  # (M, 4)
        centre = stack[:, :2] + stack[:, 2:] / 2
        dist = np.linalg.norm(centre[:, None] - centre[None], axis=-1)  # (M, M)
        small = np.minimum(stack[:, None, 2], stack[None, :, 2])  # (M, M)
        large = np.maximum(stack[:, None, 2], stack[None, :, 2])
        near = (dist < 0.5 * small) & (large < _SIZE_RATIO * small)
        support = np.array([len(set(owner[near[m]])) for m in range(len(pool))])
        seed = int(np.lexsort((stack[:, 2], support))[-1])  # most support, then largest
        steady = np.flatnonzero(support >= max(2, _STEADY * support.max()))
        # Steady faces seen at once on one frame are distinct faces.
        faces = int(np.bincount(owner[steady]).max()) if len(steady) else 1
        x_share = (stack[seed, 0] + stack[seed, 2] / 2) / frames.shape[2]
        position = "left" if x_share < 0.4 else "right" if x_share > 0.6 else "centre"
        start = owner[seed]
        boxes[start] = stack[seed]
        for step in (1, -1):
            last, missed = stack[seed], 0
            for k in range(start + step, len(index) if step > 0 else -1, step):
                found = self._detect(frames[index[k]], near=last) if missed == 0 else search(k)
                if missed == 0 and not len(found):
                    found = search(k)
                if len(found):
                    gap = np.linalg.norm(found[:, :2] + found[:, 2:] / 2
                                         - (last[:2] + last[2:] / 2), axis=1)
                    best = int(np.argmin(gap))
                    ratio = found[best, 2] / last[2]
                    # The longer the face has been lost, the further it may have moved.
                    if (gap[best] < 0.6 * last[2] * (1 + 0.5 * missed)
                            and 1 / _SIZE_RATIO < ratio < _SIZE_RATIO):
                        boxes[k] = last = found[best]
                        missed = 0
                        continue
                missed += 1
        return boxes, faces, position

    @staticmethod
    def _reject_outliers(boxes: np.ndarray) -> np.ndarray:
        """NaN out boxes that jump away from their neighbours' running median."""
        valid = ~np.isnan(boxes[:, 0])
        if valid.sum() < 5:
            return boxes
        kept = boxes[valid]
        median = median_filter(kept, size=(5, 1), mode="nearest")
        off = np.abs(kept - median).max(axis=1) > 0.25 * median[:, 2]
        boxes = boxes.copy()
        boxes[np.flatnonzero(valid)[off]] = np.nan
        return boxes

    def _eye_roll(self, frame: np.ndarray, box: np.ndarray) -> float:
        """Roll in degrees from a plausible pair of Haar eyes in the box's upper part, or NaN."""
        x, y, w, h = box
        x0, y0 = max(0, int(x)), max(0, int(y + 0.1 * h))
        roi = frame[y0:int(y + 0.6 * h), x0:int(x + w)]
        if roi.size == 0:
            return math.nan
        roi = cv2.cvtColor(roi, cv2.COLOR_RGB2GRAY)
        # A fixed working size puts the eyes (~25 px) above the cascade's 20 px minimum.
        factor = 120.0 / roi.shape[1]
        roi = cv2.resize(roi, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA
                         if factor < 1 else cv2.INTER_LINEAR)
        eyes = self._eye_cascade.detectMultiScale(roi, scaleFactor=1.1, minNeighbors=4,
                                                  minSize=(20, 20), maxSize=(48, 48))
        if len(eyes) < 2:
            return math.nan
        centres = np.asarray(eyes, dtype=np.float64)[:, :2] + np.asarray(eyes)[:, 2:] / 2
        left = centres[centres[:, 0] < 60]
        right = centres[centres[:, 0] >= 60]
        if not len(left) or not len(right):
            return math.nan
        # The outermost pair is least likely to be a brow or a nostril.
        a, b = left[np.argmin(left[:, 0])], right[np.argmax(right[:, 0])]
        dx, dy = b - a
        if not 30 <= dx <= 90:
            return math.nan
        angle = math.degrees(math.atan2(dy, dx))
        return angle if abs(angle) < 25 else math.nan

    def _fan_geometry(self, frame: np.ndarray, box: np.ndarray):
        """(centre x, centre y, side, roll) from 68 landmarks inside `box`, or None."""
        x, y, w, h = box
        found = self._fan.get_landmarks_from_image(
            frame, detected_faces=[np.array([x, y, x + w, y + h, 1.0])])
        if not found:
            return None
        points = np.asarray(found[0], dtype=np.float64)[:, :2]  # (68, 2)
        eye_a, eye_b = points[36:42].mean(axis=0), points[42:48].mean(axis=0)
        mouth = points[48:68].mean(axis=0)
        eyes = (eye_a + eye_b) / 2
        iod = float(np.linalg.norm(eye_b - eye_a))
        eye_mouth = float(np.linalg.norm(mouth - eyes))
        cx, cy = eyes + _FAN_CENTRE * (mouth - eyes)
        side = max(_FAN_SIDE_IOD * iod, _FAN_SIDE_EYE_MOUTH * eye_mouth)
        dx, dy = eye_b - eye_a
        roll = math.degrees(math.atan2(dy, dx))
        return cx, cy, side, roll

    def track(self, frames: np.ndarray) -> FaceTrack:
        """Find, follow and smooth the face through frames (N, H, W, 3) uint8 RGB."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
            raise ValueError(f"expected RGB frames (N, H, W, 3), got shape {frames.shape}")
        with self._lock:
            return self._track(frames)

    def _track(self, frames: np.ndarray) -> FaceTrack:
        n = len(frames)
        index = np.unique(np.r_[np.arange(0, n, self.detect_every), n - 1])  # (K,)
        boxes, faces, position = self._follow(frames, index)
        boxes = self._reject_outliers(boxes)  # (K, 4)
        found = ~np.isnan(boxes[:, 0])
        needed = max(1, math.ceil(self.min_face_fraction * len(index)))
        if found.sum() < needed:
            raise NoFaceError(
                f"no face found in the clip: a face was detected on {found.sum()} of the "
                f"{len(index)} frames checked; use a clip where one face is seen from the "
                f"front, well lit and not too small")
        geometry = np.full((len(index), 4), np.nan)  # centre x, centre y, side, roll
        stride = max(1, round(self.landmark_every / self.detect_every))
        last = found.sum() - 1
        for j, k in enumerate(np.flatnonzero(found)):
            x, y, w, h = boxes[k]
            if self._fan is not None:
                if j % stride == 0 or j == last:  # the last one, not to extrapolate
                    measured = self._fan_geometry(frames[index[k]], boxes[k])
                    if measured is not None:
                        geometry[k] = measured
                continue
            # The roll changes slowly and is smoothed over a second: every other detected
            # frame is plenty, and the eye search is the Haar backend's dearest step.
            roll = self._eye_roll(frames[index[k]], boxes[k]) if j % 2 == 0 else math.nan
            geometry[k] = (x + w / 2, y + h / 2 + _HAAR_SHIFT * h, _HAAR_SIDE * w, roll)
        measured = ~np.isnan(geometry[:, 0])
        if not measured.any():
            raise NoFaceError("no face found in the clip: the landmark detector found no face "
                              "in the detected boxes; use a clip with a clearly visible face")
        centre = _fill(index[measured], geometry[measured, :2], n)  # (N, 2)
        centre = _smooth(centre, window=15, order=2)
        rolled = ~np.isnan(geometry[:, 3])
        # Haar eyes are noisy and sometimes missing: without eyes on a good share of the
        # frames, keep the crop upright rather than trust a few pairs.
        if rolled.sum() >= max(2, 0.15 * measured.sum()):
            angle = _fill(index[rolled], geometry[rolled, 3:4], n)[:, 0]
            angle = _smooth(median_filter(angle, size=min(15, n), mode="nearest"), 31, 1)
        else:
            angle = np.zeros(n)
        detected = np.zeros(n, dtype=bool)
        detected[index[measured]] = True
        return FaceTrack(center=centre, side=float(np.median(geometry[measured, 2])),
                         angle=angle, detected=detected, faces=max(1, faces), position=position)

    # -- cropping ----------------------------------------------------------------------------

    def crop(self, frames: np.ndarray, track: FaceTrack | None = None) -> np.ndarray:
        """Aligned face crops (N, size, size, 3) uint8 of frames (N, H, W, 3) uint8 RGB."""
        if track is None:
            track = self.track(frames)
        out = np.empty((len(frames), self.size, self.size, 3), dtype=np.uint8)
        for i, frame in enumerate(frames):
            out[i] = crop_face(frame, track.center[i], track.side, track.angle[i], self.size)
        return out


def _cut(frame: np.ndarray, x0: int, y0: int, side: int) -> np.ndarray:
    """frame[y0:y0+side, x0:x0+side], with the border pixels repeated where it runs outside."""
    height, width = frame.shape[:2]
    xa, ya = max(x0, 0), max(y0, 0)
    xb, yb = min(x0 + side, width), min(y0 + side, height)
    if xa >= xb or ya >= yb:  # entirely outside: nearest border pixels
        xa, ya = min(max(x0, 0), width - 1), min(max(y0, 0), height - 1)
        xb, yb = xa + 1, ya + 1
    region = frame[ya:yb, xa:xb]
    pads = (ya - y0, y0 + side - yb, xa - x0, x0 + side - xb)
    if any(pads):
        region = cv2.copyMakeBorder(region, *(max(0, p) for p in pads), cv2.BORDER_REPLICATE)
    return region


def crop_face(frame: np.ndarray, centre, side: float, angle: float, size: int) -> np.ndarray:
    """The square of `side` pixels around `centre`, rotated by `angle` degrees (so that a
    face rolled by `angle` comes out upright), resized to (size, size, 3)."""
    cx, cy = float(centre[0]), float(centre[1])
    if abs(angle) < 0.5:
        s = max(1, round(side))
        region = _cut(frame, round(cx - s / 2), round(cy - s / 2), s)
        return cv2.resize(region, (size, size), interpolation=cv2.INTER_AREA)
    # Shrink the square's upright bounding box with INTER_AREA first (no aliasing), then
    # rotate at the final scale.
    theta = math.radians(angle)
    outer = max(1, math.ceil(side * (abs(math.cos(theta)) + abs(math.sin(theta)))))
    x0, y0 = round(cx - outer / 2), round(cy - outer / 2)
    region = _cut(frame, x0, y0, outer)
    factor = size / side
    small_side = max(1, round(outer * factor))
    region = cv2.resize(region, (small_side, small_side), interpolation=cv2.INTER_AREA)
    factor = small_side / outer
    sx, sy = (cx - x0) * factor, (cy - y0) * factor  # centre in the shrunk region
    matrix = cv2.getRotationMatrix2D((sx, sy), angle, 1.0)
    matrix[:, 2] += (size / 2 - sx, size / 2 - sy)
    return cv2.warpAffine(region, matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
