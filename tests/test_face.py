import math
import urllib.error

import cv2
import numpy as np
import pytest
import soundfile

import mdvae.media.face
from mdvae.media.audio import FPS, SAMPLE_RATE
from mdvae.media.clips import load_av_clip
from mdvae.media.face import FaceBackendError, FaceCropper, NoFaceError, fan_weights_path
from mdvae.media.video import write_video
from train.benchmark_media import ASTRONAUT_FACE, moving_face, voiced_tone

HEIGHT, WIDTH, ZOOM = 240, 320, 0.7  # the photo's 95 px face at 67 px: a webcam-like size
# Landmarks of the astronaut photograph (512x512): eye centres (from OpenCV's eye cascade)
# and the middle of the mouth.
EYES = np.array([[201.5, 100.5], [247.5, 103.5]])
MOUTH = np.array([225.0, 143.0])


@pytest.fixture(scope="module")
def haar():
    return FaceCropper("haar")


@pytest.fixture(scope="module")
def still(haar):
    """The photo held still: its track gives where the crop sits relative to the face."""
    frames, centre, _ = moving_face(20, HEIGHT, WIDTH, scale_range=(ZOOM, ZOOM), shift=0)
    track = haar.track(frames)
    offset = (track.center.mean(axis=0) - centre[0]) / ZOOM  # crop centre - face centre
    return track, offset, haar.crop(frames, track)[0]


def test_crop_follows_a_moving_face(haar, still):
    _, offset, reference = still
    frames, centre, _ = moving_face(75, HEIGHT, WIDTH, scale_range=(ZOOM, ZOOM), shift=40)
    track = haar.track(frames)
    assert haar.backend == "haar"
    # The tracked centre follows the known motion (up to 40 px each way) within 3 px.
    assert np.abs(track.center - (centre + ZOOM * offset)).max() < 3.0
    crops = haar.crop(frames, track)
    assert crops.shape == (75, 64, 64, 3) and crops.dtype == np.uint8
    # Every crop shows the same face as the still one (measured: mean 7.7, worst 12.4).
    diff = np.abs(crops.astype(float) - reference).mean(axis=(1, 2, 3))
    assert diff.mean() < 10 and diff.max() < 16
    # A crop of an unrelated place is far more different.
    assert np.abs(frames[0, :64, :64].astype(float) - reference).mean() > 3 * diff.max()


def test_crop_follows_a_zooming_face_at_one_scale(haar, still):
    _, offset, _ = still
    frames, centre, zoom = moving_face(75, HEIGHT, WIDTH, scale_range=(0.6, 0.8), shift=40)
    track = haar.track(frames)
    assert np.abs(track.center - (centre + zoom[:, None] * offset)).max() < 3.0
    # One crop size for the clip, that of the median face (MEAD-style fixed scale).
    assert track.side == pytest.approx(still[0].side * np.median(zoom) / ZOOM, rel=0.1)
    assert track.detected.sum() >= 75 // haar.detect_every * 0.8


def test_rolled_head_is_levelled_from_the_eyes(haar, still):
    frames, _, _ = moving_face(45, HEIGHT, WIDTH, scale_range=(ZOOM, ZOOM), shift=20,
                               angle=12)
    track = haar.track(frames)
    # The photo rolled 12 degrees counter-clockwise on screen: the eye line turns by -12.
    assert track.angle.mean() == pytest.approx(still[0].angle.mean() - 12, abs=2.5)
    assert track.angle.std() < 1.0


def test_no_face_is_a_clear_error(haar):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (30, HEIGHT, WIDTH, 3), dtype=np.uint8)
    with pytest.raises(NoFaceError, match="no face"):
        haar.crop(noise)
    with pytest.raises(NoFaceError, match="no face"):
        haar.crop(np.full((30, HEIGHT, WIDTH, 3), 90, dtype=np.uint8))


def test_face_in_a_few_frames_only_is_no_face(haar):
    frames, _, _ = moving_face(60, HEIGHT, WIDTH, scale_range=(ZOOM, ZOOM), shift=0)
    frames[6:] = 90  # the face shows for a fifth of a second, then the camera is covered
    with pytest.raises(NoFaceError, match="no face"):
        haar.crop(frames)
    # Covered for half the clip is fine: the crop holds the last place.
    frames, _, _ = moving_face(60, HEIGHT, WIDTH, scale_range=(ZOOM, ZOOM), shift=0)
    frames[30:] = 90
    assert haar.crop(frames).shape == (60, 64, 64, 3)


def test_face_near_the_border_is_padded(haar):
    frames, _, _ = moving_face(30, HEIGHT, WIDTH, scale_range=(ZOOM, ZOOM), shift=0)
    frames = np.ascontiguousarray(frames[:, 60:, 110:])  # the face now touches the top edge
    track = haar.track(frames)
    assert track.center[:, 1].min() - track.side / 2 < 0
    crops = haar.crop(frames, track)
    assert crops.shape == (30, 64, 64, 3)


class FakeLandmarks:
    """Stands in for face_alignment.FaceAlignment: exact landmarks of the moving photo."""

    def __init__(self, frames, matrices):
        self.lookup = {frame.tobytes(): m for frame, m in zip(frames, matrices)}
        self.calls = 0

    def get_landmarks_from_image(self, image, detected_faces=None):
        assert detected_faces is not None and len(detected_faces) == 1  # our tracked box
        self.calls += 1
        matrix = self.lookup[image.tobytes()]
        points = np.zeros((68, 2))
        points[36:42], points[42:48], points[48:68] = EYES[0], EYES[1], MOUTH
        return [points @ matrix[:, :2].T + matrix[:, 2]]


def photo_with_landmarks(n: int, angle: float):
    """Frames of the moving photo, the photo->frame maps (n, 2, 3), and the crop centre the
    landmark framing should give (n, 2): a third of the way from the eyes to the mouth."""
    frames, centre, zoom = moving_face(n, HEIGHT, WIDTH, scale_range=(0.65, 0.75), shift=30,
                                       angle=angle)
    matrices = np.stack([cv2.getRotationMatrix2D(ASTRONAUT_FACE, angle, z) for z in zoom])
    matrices[:, :, 2] += centre - np.array(ASTRONAUT_FACE)
    middle = EYES.mean(axis=0) + 0.35 * (MOUTH - EYES.mean(axis=0))
    return frames, matrices, matrices[:, :, :2] @ middle + matrices[:, :, 2], zoom


def test_landmark_backend_levels_the_eyes(monkeypatch):
    angle, n = 10.0, 45
    frames, matrices, expected, zoom = photo_with_landmarks(n, angle)
    fake = FakeLandmarks(frames, matrices)
    monkeypatch.setattr(mdvae.media.face, "_load_fan", lambda allow_download: (fake, ""))
    cropper = FaceCropper("fan")
    assert cropper.backend == "fan"
    track = cropper.track(frames)
    assert n // cropper.landmark_every <= fake.calls <= n // cropper.landmark_every + 2
    eye_line = EYES[1] - EYES[0]
    natural_roll = math.degrees(math.atan2(eye_line[1], eye_line[0]))
    assert np.abs(track.angle - (natural_roll - angle)).max() < 0.1
    assert np.abs(track.center - expected).max() < 1.0
    iod = np.linalg.norm(eye_line)
    eye_mouth = np.linalg.norm(MOUTH - EYES.mean(axis=0))
    side = max(3.1 * iod, 3.3 * eye_mouth) * np.median(zoom)
    assert track.side == pytest.approx(side, rel=0.05)
    # Levelled: the crops of the rolled photo match those of the upright photo.
    crops = cropper.crop(frames, track)
    upright, _, upright_centre, _ = photo_with_landmarks(n, 0.0)
    level = cropper.crop(upright, mdvae.media.face.FaceTrack(
        center=upright_centre, side=track.side, angle=np.full(n, natural_roll),
        detected=track.detected))
    assert np.abs(crops.astype(float) - level).mean() < 8


def test_auto_backend_never_downloads_without_permission(monkeypatch, tmp_path):
    import face_alignment.utils
    import torch.hub

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(face_alignment.utils, "download_url_to_file", no_network)
    assert not fan_weights_path().exists()
    assert FaceCropper("auto").backend == "haar"
    with pytest.raises(FaceBackendError, match="allow_download=True"):
        FaceCropper("fan")
    # Allowed, but the network is down: a quick fallback, or a clear error when asked for.
    assert FaceCropper("auto", allow_download=True).backend == "haar"
    with pytest.raises(FaceBackendError, match="could not be loaded"):
        FaceCropper("fan", allow_download=True)
    # Damaged weights in the cache are not fatal either.
    fan_weights_path().parent.mkdir(parents=True, exist_ok=True)
    fan_weights_path().write_bytes(b"not a checkpoint")
    assert FaceCropper("auto").backend == "haar"
    with pytest.raises(FaceBackendError):
        FaceCropper("dlib")


@pytest.mark.slow
def test_load_av_clip_end_to_end(tmp_path, haar):
    frames, _, _ = moving_face(50, HEIGHT, WIDTH, scale_range=(ZOOM, ZOOM), shift=20)
    path = write_video(tmp_path / "talk.mp4", frames, voiced_tone(26667), scale=1)
    clip = load_av_clip(path, haar)
    assert clip.frames.shape == (50, 64, 64, 3) and clip.frames.dtype == np.uint8
    assert clip.power.shape == (50, 513) and clip.power.dtype == np.float32
    assert clip.audio.shape == (round(50 * SAMPLE_RATE / FPS),) and clip.fps == 30
    assert not clip.trimmed and clip.source == str(path)
    clip = load_av_clip(path, haar, max_seconds=1.2)
    assert len(clip.frames) == 36 and clip.trimmed
    # Sound from a separate file, as MEAD ships it.
    silent = write_video(tmp_path / "silent.mp4", frames, None, scale=1)
    wav = tmp_path / "talk.wav"
    soundfile.write(wav, voiced_tone(40000), SAMPLE_RATE)
    clip = load_av_clip(silent, haar, audio_path=wav)
    assert clip.power.shape == (50, 513) and len(clip.audio) == round(50 * SAMPLE_RATE / FPS)


def two_faces(n_frames: int, big_at: str) -> tuple[np.ndarray, np.ndarray]:
    """The astronaut twice on a wide canvas, a large copy on `big_at` ("left"/"right")
    and one half its size on the other side; returns frames and the large face's centre."""
    import skimage.data

    photo = skimage.data.astronaut()
    height, width = 240, 480
    big = (360.0, 110.0) if big_at == "right" else (120.0, 110.0)
    small = (120.0, 110.0) if big_at == "right" else (360.0, 110.0)
    frame = np.full((height, width, 3), 128, np.uint8)
    for centre, zoom in ((small, 0.5), (big, 0.8)):
        matrix = cv2.getRotationMatrix2D((224.5, 113.5), 0.0, zoom)
        matrix[:, 2] += np.array(centre) - np.array((224.5, 113.5))
        mask = cv2.warpAffine(np.ones(photo.shape[:2], np.uint8), matrix, (width, height))
        layer = cv2.warpAffine(photo, matrix, (width, height))
        frame[mask > 0] = layer[mask > 0]
    return np.repeat(frame[None], n_frames, axis=0), np.array(big)


@pytest.mark.parametrize("big_at", ["left", "right"])
def test_the_largest_of_several_faces_is_followed_and_named(haar, big_at):
    frames, centre = two_faces(45, big_at)
    track = haar.track(frames)
    assert track.faces == 2 and track.position == big_at
    assert np.abs(track.center - centre).max() < 0.25 * track.side
    assert "2 faces" in track.note and big_at in track.note


def test_one_face_has_no_note(haar, still):
    assert still[0].faces == 1 and still[0].note == ""
