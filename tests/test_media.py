import re
import struct
import time
import zlib

import cv2
import numpy as np
import pytest
import soundfile

from mdvae.media import video as media
from mdvae.media.audio import FPS, SAMPLE_RATE
from mdvae.media.clips import load_av_clip
from mdvae.media.face import FaceCropper
from mdvae.media.video import (
    MAX_FRAME_PIXELS,
    MAX_LOST_SHARE,
    MediaError,
    frame_strip,
    normalize_clip,
    read_audio,
    side_by_side,
    write_video,
)
from tests.helpers import damaged, ffmpeg
from train.benchmark_media import moving_face, voiced_tone


def decoded_frame_count(path) -> int:
    """Frames in the file as stored, without any frame rate conversion."""
    err = ffmpeg("-i", str(path), "-map", "0:v:0", "-fps_mode", "passthrough", "-f", "null", "-")
    return int(re.findall(r"frame=\s*(\d+)", err)[-1])


def flash_and_click(tmp_path, *, video_delay: float):
    """A variable-frame-rate VP8 + Opus webm, as browsers record, with a white flash from
    video time 1.0 s and a click in the sound at the same moment.

    Frames are rendered at 60 fps and an irregular share of them dropped (intervals of
    1/60 to 4/60 s, about 27 fps on average); the video stream starts `video_delay` seconds
    after the audio, as the first webcam frame often does.
    """
    height, width, rate, seconds = 96, 128, 60, 2.0
    n = int(seconds * rate)
    frames = np.full((n, height, width, 3), 40, dtype=np.uint8)
    frames[:, :, : width // 2, 2] = 160  # some structure for the encoder
    frames[rate: rate + 3] = 255  # the flash: 50 ms from 1.0 s of video time
    raw = tmp_path / "video.rgb"
    raw.write_bytes(frames.tobytes())
    audio = np.zeros(int((seconds + video_delay + 0.3) * SAMPLE_RATE), dtype=np.float32)
    click = int((1.0 + video_delay) * SAMPLE_RATE)
    audio[click: click + 80] = np.hanning(80) * np.sin(np.arange(80) * 0.9)  # 5 ms tick
    wav = tmp_path / "audio.wav"
    soundfile.write(wav, audio, SAMPLE_RATE)
    path = tmp_path / "webcam.webm"
    keep = "not(eq(mod(n,7),1)+eq(mod(n,7),3)+eq(mod(n,11),7))"  # keeps n = 60
    ffmpeg("-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(rate),
           "-i", str(raw), "-i", str(wav),
           "-vf", f"select='{keep}',setpts=PTS+{video_delay}/TB", "-fps_mode", "vfr",
           "-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "1M",
           "-c:a", "libopus", "-shortest", str(path))
    assert path.is_file()
    return path, n


@pytest.mark.parametrize("video_delay", [0.0, 0.2])
def test_variable_frame_rate_webm_becomes_30_fps_in_sync(tmp_path, video_delay):
    path, n_rendered = flash_and_click(tmp_path, video_delay=video_delay)
    stored = decoded_frame_count(path)
    assert 0.6 * n_rendered < stored < 0.8 * n_rendered  # frames really were dropped
    clip = normalize_clip(path)
    assert clip.frames.dtype == np.uint8 and clip.frames.shape[1:] == (96, 128, 3)
    # 2 s of video (+ the delay, padded with the first frame) at 30 fps.
    assert abs(len(clip.frames) - round((2.0 + video_delay) * FPS)) <= 2
    assert clip.audio is not None and clip.audio.dtype == np.float32
    assert np.max(np.abs(clip.audio)) == pytest.approx(1.0)
    flash_time = np.argmax(clip.frames.mean(axis=(1, 2, 3)) > 150) / FPS  # first flash frame
    click_time = np.argmax(np.abs(clip.audio)) / SAMPLE_RATE
    assert flash_time == pytest.approx(1.0 + video_delay, abs=1.5 / FPS)
    assert abs(flash_time - click_time) < 0.04


def test_write_video_is_h264_yuv420p_with_aac_and_reads_back(tmp_path):
    frames, _, _ = moving_face(40, 45, 61, scale_range=(0.1, 0.1), shift=5)  # odd sizes
    audio = voiced_tone(round(40 * SAMPLE_RATE / FPS))
    out = write_video(tmp_path / "sub" / "out.mp4", frames, audio, scale=2)
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.mp4"]  # no leftovers
    info = ffmpeg("-i", str(out))
    assert re.search(r"Video: h264.*yuv420p", info)
    assert re.search(r"Audio: aac.*mono", info)
    assert "122x90" in info  # 61x45 doubled
    clip = normalize_clip(out)
    assert len(clip.frames) == 40
    assert clip.audio is not None and abs(len(clip.audio) - len(audio)) < 0.05 * SAMPLE_RATE
    # Odd sizes are padded to even ones; the read-back is close to the input.
    out = write_video(tmp_path / "odd.mp4", frames, None, scale=1, interpolation="nearest")
    assert "62x46" in ffmpeg("-i", str(out))
    clip = normalize_clip(out)
    assert clip.audio is None
    assert np.abs(clip.frames[:, :45, :61].astype(float) - frames).mean() < 6


def test_max_side_and_max_seconds(tmp_path):
    frames, _, _ = moving_face(45, 120, 200, scale_range=(0.3, 0.3), shift=5)
    path = write_video(tmp_path / "clip.mp4", frames, voiced_tone(24000), scale=1)
    clip = normalize_clip(path, max_side=100)
    assert clip.frames.shape == (45, 60, 100, 3) and not clip.trimmed
    clip = normalize_clip(path, max_seconds=1.0)
    assert len(clip.frames) == 30 and clip.trimmed
    assert len(clip.audio) == SAMPLE_RATE
    assert not normalize_clip(path, max_seconds=5.0).trimmed


def test_rotated_phone_video_is_turned_upright(tmp_path):
    frames, _, _ = moving_face(10, 60, 80, scale_range=(0.2, 0.2), shift=0)
    plain = write_video(tmp_path / "plain.mp4", frames, None, scale=1)
    rotated = tmp_path / "rotated.mp4"
    ffmpeg("-display_rotation", "90", "-i", str(plain), "-c", "copy", str(rotated))
    assert normalize_clip(rotated).frames.shape == (10, 80, 60, 3)


def test_read_audio_from_a_separate_file(tmp_path):
    wav = tmp_path / "speech.wav"
    soundfile.write(wav, 0.3 * voiced_tone(48000), SAMPLE_RATE)
    m4a = tmp_path / "speech.m4a"
    ffmpeg("-i", str(wav), "-c:a", "aac", str(m4a))
    audio = read_audio(m4a)
    assert audio.dtype == np.float32 and abs(len(audio) - 48000) < 1600
    assert np.max(np.abs(audio)) == pytest.approx(1.0)
    with pytest.raises(MediaError, match="no video stream"):
        normalize_clip(m4a)


def test_clear_errors_for_bad_files(tmp_path):
    with pytest.raises(MediaError, match="does not exist"):
        normalize_clip(tmp_path / "missing.mp4")
    fake = tmp_path / "notes.mp4"
    fake.write_text("these are my notes, not a video\n")
    with pytest.raises(MediaError, match="not a video"):
        normalize_clip(fake)
    empty = tmp_path / "empty.webm"
    empty.write_bytes(b"")
    with pytest.raises(MediaError, match="not a video"):
        normalize_clip(empty)
    silent = write_video(tmp_path / "silent.mp4", np.zeros((40, 32, 32, 3), np.uint8), None,
                         scale=1)
    with pytest.raises(MediaError, match="no audio"):
        read_audio(silent)
    with pytest.raises(MediaError, match="no audio track"):
        load_av_clip(silent, FaceCropper("haar"))


def test_output_size_is_the_last_rawvideo_stream_line_wherever_the_headers_fall():
    log = "\n".join([
        "[info] Input #0, avi, from 'file:in.avi':",
        "[info]   Stream #0:0: Video: rawvideo (BGR[24] / 0x18524742), bgr24, 640x480, 30 fps",
        "[info] Output #1, f32le, to 'audio.f32':",
        "[info]   Stream #1:0: Audio: pcm_f32le, 16000 Hz, mono, flt",
        "[info] Output #0, rawvideo, to 'pipe:1':",
        "[info]   Stream #0:0(und): Video: rawvideo, 1 reference frame (RGB[24] / 0x18424752), "
        "rgb24(pc, progressive), 320x240, q=2-31, 30 fps",
    ])
    assert media._output_size(log) == (240, 320)
    # two threads' pieces interleaved in the one line that gives it: not read at all, and
    # never taken from the input's listing
    garbled = log.replace("Video: rawvideo, 1 reference", "Video: [info]   Stream #1:0: Audio")
    assert media._output_size(garbled) is None
    assert media._output_size(log.split("[info] Output #1")[0]) is None


def test_a_decode_whose_log_lost_the_frame_size_is_run_again(tmp_path, monkeypatch):
    clip = write_video(tmp_path / "clip.mp4", np.zeros((31, 32, 32, 3), np.uint8),
                       voiced_tone(16000), scale=1)
    real, calls = media._run_ffmpeg, []

    def flaky(cmd, name):
        raw, log = real(cmd, name)
        calls.append(cmd)
        return raw, (re.sub(r"Video: rawvideo", "Video: [info] ", log) if len(calls) == 1 else log)

    monkeypatch.setattr(media, "_run_ffmpeg", flaky)
    decoded = media.normalize_clip(clip)
    assert len(calls) == 2 and decoded.frames.shape[1:] == (32, 32, 3)
    assert decoded.audio is not None and len(decoded.frames) >= 30


def test_clip_shorter_than_a_second_is_refused_before_face_detection(tmp_path):
    short = write_video(tmp_path / "short.mp4", np.zeros((15, 32, 32, 3), np.uint8),
                        voiced_tone(8000), scale=1)
    with pytest.raises(MediaError, match=r"too short.*0\.50 s.*at least 1 s"):
        load_av_clip(short, FaceCropper("haar"))


def test_side_by_side_and_frame_strip():
    a = np.zeros((10, 64, 64, 3), np.uint8)
    b = np.full((12, 32, 48, 3), 200, np.uint8)
    both = side_by_side([a, b], gap=2)
    assert both.shape == (10, 64, 64 + 2 + 96, 3)
    assert (both[:, :, 64:66] == 255).all() and (both[:, :, 66:] == 200).all()
    labelled = side_by_side([a, a], labels=["original", "swapped"])
    assert labelled.shape[0] == 10 and labelled.shape[1] > 64 and labelled.shape[2] == 130
    band = labelled[0, : labelled.shape[1] - 64]
    assert band.max() == 255  # white text on the dark band
    strip = frame_strip(np.arange(20, dtype=np.uint8)[:, None, None, None]
                        * np.ones((20, 4, 5, 3), np.uint8), n=5)
    assert strip.shape == (4, 25, 3)
    assert list(strip[0, ::5, 0]) == [0, 5, 10, 14, 19]


# -- hostile and damaged files ----------------------------------------------------------


def test_playlists_and_file_lists_naming_a_local_file_are_refused(tmp_path):
    secret = write_video(tmp_path / "secret.mp4", np.full((30, 32, 32, 3), 90, np.uint8),
                         voiced_tone(16000), scale=1)
    playlist = (f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:1.0,\n{secret}\n"
                f"#EXT-X-ENDLIST\n")
    concat = f"ffconcat version 1.0\nfile '{secret}'\n"
    for name, text in [("list.m3u8", playlist), ("list.mp4", playlist), ("cat.ffconcat", concat),
                       ("cat.mp4", concat), ("cat.txt", concat)]:
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(MediaError, match="not a video"):
            normalize_clip(path)
    (tmp_path / "concat:a|b.mp4").write_text(concat)  # a name that reads as a URL
    with pytest.raises(MediaError, match="not a video"):
        normalize_clip(tmp_path / "concat:a|b.mp4")
    with pytest.raises(MediaError, match="not a video file we accept"):
        normalize_clip(tmp_path / "list.m3u8")
    with pytest.raises(MediaError, match="not a video file we accept"):
        read_audio(tmp_path / "cat.ffconcat")


def huge_frames_mov(path, side=8192, n_frames=3):
    """A small .mov of PNG frames declaring side x side pixels (all grey): each PNG is a
    few tens of KB, but each decoded frame would be side^2 pixels."""
    def chunk(kind, data):
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc
    packer = zlib.compressobj(9)
    row = bytes(1 + side)  # PNG filter byte + one row of 8-bit grey
    body = b"".join(packer.compress(row * 256) for _ in range(side // 256)) + packer.flush()
    png = path.with_suffix(".png")
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side,
                    8, 0, 0, 0, 0)) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    ffmpeg("-framerate", str(FPS), "-loop", "1", "-i", str(png), "-f", "lavfi", "-i", "sine",
           "-frames:v", str(n_frames), "-t", f"{n_frames / FPS}", "-c:v", "copy", "-c:a", "aac",
           str(path))
    png.unlink()
    return path


def test_huge_declared_frames_refused_before_decoding(tmp_path):
    path = huge_frames_mov(tmp_path / "huge.mov")
    assert path.stat().st_size < 300_000 and "8192x8192" in ffmpeg("-i", str(path))
    start = time.perf_counter()
    with pytest.raises(MediaError, match=r"8192x8192 frames, over the 9\.4 megapixel limit"):
        normalize_clip(path)
    assert time.perf_counter() - start < 5  # the probe alone: no frame was decoded
    assert 3840 * 2160 <= MAX_FRAME_PIXELS < 8192 * 8192


def test_decoder_refuses_frames_over_the_pixel_cap_whatever_the_header(tmp_path, monkeypatch):
    frames = np.full((20, 96, 128, 3), 90, np.uint8)
    path = write_video(tmp_path / "clip.mp4", frames, voiced_tone(16000), scale=1)
    monkeypatch.setattr(media, "_probe", lambda p, *a: media._Probe(True, True))  # a lying header
    monkeypatch.setattr(media, "MAX_FRAME_PIXELS", 96 * 128 - 1)
    with pytest.raises(MediaError, match="over the 0.0 megapixel limit"):
        normalize_clip(path)


def test_every_ffmpeg_call_has_a_timeout(tmp_path, monkeypatch):
    frames = np.full((60, 96, 128, 3), 90, np.uint8)
    path = write_video(tmp_path / "clip.mp4", frames, voiced_tone(32000), scale=1)
    monkeypatch.setattr(media, "FFMPEG_TIMEOUT_S", 0.0)
    with pytest.raises(MediaError, match="took over 0 s to decode"):
        normalize_clip(path)
    with pytest.raises(MediaError, match="took over 0 s to write"):
        write_video(tmp_path / "out.mp4", frames, None, scale=1)
    monkeypatch.setattr(media, "PROBE_TIMEOUT_S", 0.0)
    with pytest.raises(MediaError, match="took over 0 s just to read"):
        normalize_clip(path)


def test_still_image_renamed_as_a_video_is_called_a_still_image(tmp_path):
    image = np.full((64, 64, 3), 120, np.uint8)
    for ext, kind in [(".png", "PNG"), (".jpg", "JPEG")]:
        path = tmp_path / f"photo{ext}"
        cv2.imwrite(str(path), image)
        renamed = path.rename(tmp_path / f"photo_{ext[1:]}.mp4")
        with pytest.raises(MediaError, match=rf"is a still image \({kind}\), not a video"):
            normalize_clip(renamed)
        with pytest.raises(MediaError, match="is a still image"):
            load_av_clip(renamed, FaceCropper("haar"))


def test_frames_lost_in_a_damaged_middle_are_counted_or_refused(tmp_path):
    clip = normalize_clip(damaged(tmp_path, "scratched.mp4", 0.04))
    assert len(clip.frames) == 90  # the gaps are filled: the clock is kept
    assert 0 < clip.lost_frames <= MAX_LOST_SHARE * 90
    # ffmpeg counts the frames whose decoding failed; a decoder may drop a few more silently
    assert 80 <= clip.lost_frames + clip.decoded_frames <= 90
    assert normalize_clip(tmp_path / "clean.mp4").lost_frames == 0
    with pytest.raises(MediaError, match=r"damaged: \d+ of its 90 video frames could not be "
                                         r"decoded \(more than 20%\)"):
        normalize_clip(damaged(tmp_path, "shredded.mp4", 0.4))
