"""Video and audio I/O through the ffmpeg binary that ships in the imageio-ffmpeg wheel.

Every input (browser webcam webm with a variable frame rate, phone mp4 with a rotation
flag, mov, with or without sound) comes out as constant 30 fps RGB frames and 16 kHz mono
float audio, both starting at the file's time zero so they stay in sync. Every output is
H.264 yuv420p + AAC with the index at the front, which browsers play while it loads.
"""

import functools
import os
import re
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
import soundfile

from mdvae.errors import MDVAEError
from mdvae.media.audio import FPS, SAMPLE_RATE, peak_normalize, samples_for_frames


class MediaError(MDVAEError):
    """A media file cannot be used: missing, not a video, no frames, no audio, too short."""


# ffmpeg opens an input only with these demuxers (its names), through the `file` protocol
# alone: plain containers that hold their streams. Playlists (hls), concat lists, image
# sequences and the other demuxers that open further files or URLs are refused, so an
# upload cannot make ffmpeg read another file on the server.
VIDEO_DEMUXERS = ("mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "avi",
                  "mpeg", "mpegts", "flv", "ogg")
AUDIO_DEMUXERS = (*VIDEO_DEMUXERS, "wav", "mp3", "flac", "aac")  # read_audio's sources
# Frames above this many pixels are refused from the probe, before any decoding, and the
# decoder refuses them too (a stream may change size after its header): 4096x2304, so 4K
# phone video (3840x2160) passes. A 466 KB file declaring 8192x8192 frames took 3.5 GB.
MAX_FRAME_PIXELS = 4096 * 2304
PROBE_TIMEOUT_S = 20.0  # reading a file's stream list
FFMPEG_TIMEOUT_S = 120.0  # any decode or encode; a 10 s 1080p clip takes about 2 s
# A clip where more than this share of the video frames does not decode is refused; below
# it the gaps are filled with the frame before them and the caller is told how many.
MAX_LOST_SHARE = 0.2
# File signatures of still images, which some demuxers would open as a one-frame "video".
_IMAGE_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"),
                     (b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"BM", "BMP"),
                     (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))
_IMAGE_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"avif": "AVIF"}


@dataclass
class Clip:
    """A decoded clip on the project's clock.

    frames: (N, H, W, 3) uint8 RGB at 30 fps, max(H, W) <= the requested max_side.
    audio: (S,) float32 16 kHz mono, peak-normalised; None when the file has no audio track.
    source: the file it came from. trimmed: True when max_seconds cut the clip short.
    lost_frames: video frames of the file that did not decode (their gaps repeat the frame
    before); decoded_frames: those that did (both in the file's own frame rate).
    """

    frames: np.ndarray
    audio: np.ndarray | None
    source: str
    trimmed: bool
    lost_frames: int = 0
    decoded_frames: int = 0

    @property
    def seconds(self) -> float:
        return len(self.frames) / FPS


@dataclass
class _Probe:
    has_video: bool
    has_audio: bool
    width: int | None = None  # of the first video stream, as its header declares
    height: int | None = None
    seconds: float | None = None  # the container's duration
    fps: float | None = None  # the first video stream's declared frame rate


@functools.cache
def ffmpeg_exe() -> str:
    return imageio_ffmpeg.get_ffmpeg_exe()


def _existing(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path} does not exist (or is not a file): check the path, or "
                         f"upload the clip again")
    return path


def _last_error_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    # With `-loglevel level+verbose` every line is tagged; the error lines are what to say.
    errors = [line.split("] ", 1)[-1] for line in lines
              if line.startswith(("[error]", "[fatal]"))]
    lines = errors or lines
    return lines[-1] if lines else "no message from ffmpeg"


def _input_args(path: Path, demuxers: tuple[str, ...] = VIDEO_DEMUXERS) -> list[str]:
    """`-i path` with the input's limits: the allowed demuxers, the `file` protocol only
    (the `file:` prefix stops a name such as `concat:a|b` from being read as a URL), and
    the decoder's pixel cap."""
    return ["-protocol_whitelist", "file", "-format_whitelist", ",".join(demuxers),
            "-max_pixels", str(MAX_FRAME_PIXELS), "-i", f"file:{path.resolve()}"]


def _still_image(path: Path) -> str | None:
    """The image format ("PNG", ...) when the file starts like a still image, else None."""
    with open(path, "rb") as f:
        head = f.read(16)
    for signature, kind in _IMAGE_SIGNATURES:
        if head.startswith(signature):
            return kind
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WebP"
    if head[4:8] == b"ftyp":
        return _IMAGE_BRANDS.get(head[8:12])
    return None


def _seconds(text: str) -> float:
    hours, minutes, seconds = text.split(":")
    return 3600 * int(hours) + 60 * int(minutes) + float(seconds)


def _probe(path: Path, demuxers: tuple[str, ...] = VIDEO_DEMUXERS) -> _Probe:
    """Which streams the file has, with the first video stream's declared frame size and
    rate and the duration, from `ffmpeg -i`'s listing (ffprobe is not shipped).

    Raises MediaError when the file is a still image, is not in an accepted container
    (`demuxers`), or cannot be opened as media at all.
    """
    image = _still_image(path)
    if image is not None:
        raise MediaError(f"{path.name} is a still image ({image}), not a video; upload a "
                         f"video clip of a face with its sound")
    try:
        result = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin",
                                 *_input_args(path, demuxers)],
                                capture_output=True, text=True, errors="replace",
                                timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        raise MediaError(f"{path.name}: ffmpeg took over {PROBE_TIMEOUT_S:g} s just to read "
                         f"its stream list; upload a plain mp4, webm or mov clip") from err
    err = result.stderr
    if "not on whitelist" in err:
        raise MediaError(f"{path.name} is not a video file we accept: only plain mp4, mov, "
                         f"webm, mkv, avi, mpeg, ts, flv and ogg files are opened (not "
                         f"playlists, lists of files or other formats)")
    if "Error opening input" in err or "Input #0" not in err:
        raise MediaError(f"{path.name} is not a video ffmpeg can read "
                         f"({_last_error_line(err)}); upload an mp4, webm or mov clip")
    streams = re.findall(r"^\s*Stream #0:\d+.*?: (Video|Audio): (.*)$", err, flags=re.M)
    # Cover art in audio files shows up as a one-frame video stream: not a video.
    has_video = any(kind == "Video" and "(attached pic)" not in rest for kind, rest in streams)
    has_audio = any(kind == "Audio" for kind, _ in streams)
    probe = _Probe(has_video=has_video, has_audio=has_audio)
    video = [rest for kind, rest in streams if kind == "Video" and "(attached pic)" not in rest]
    if video:
        size = re.search(r", (\d+)x(\d+)\b", video[0])
        if size:
            probe.width, probe.height = int(size.group(1)), int(size.group(2))
        rate = re.search(r", ([\d.]+)(k?) fps\b", video[0])
        if rate:
            probe.fps = float(rate.group(1)) * (1000 if rate.group(2) else 1)
    # Frames over the decoder's pixel cap leave the size out of the listing, but not the log.
    capped = re.search(r"Picture size (\d+)x(\d+) exceeds specified max pixel count", err)
    if capped and has_video:
        probe.width, probe.height = int(capped.group(1)), int(capped.group(2))
    duration = re.search(r"Duration: (\d+:\d+:[\d.]+)", err)
    if duration:
        probe.seconds = _seconds(duration.group(1))
    return probe


def _run_ffmpeg(cmd: list[str], name: str) -> tuple[bytearray, str]:
    """Run ffmpeg, returning (stdout bytes, stderr text); MediaError when it fails.

    stderr goes to a temporary file rather than a pipe: ffmpeg may write more of it than a
    pipe buffer holds while we are still draining stdout, which would deadlock.
    """
    out = bytearray()
    with tempfile.TemporaryFile() as err_file:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=err_file)
        timer = _kill_after(proc, FFMPEG_TIMEOUT_S)
        try:
            while chunk := proc.stdout.read(1 << 20):
                out += chunk
            proc.wait()
        finally:
            timer.cancel()
        err_file.seek(0)
        stderr = err_file.read().decode("utf-8", errors="replace")
    if timer.fired:
        raise MediaError(f"ffmpeg took over {FFMPEG_TIMEOUT_S:g} s to decode {name} and was "
                         f"stopped; upload a shorter or smaller clip")
    if proc.returncode != 0:
        if "exceeds specified max pixel count" in stderr:
            raise MediaError(f"ffmpeg could not decode {name}: its frames are over the "
                             f"{MAX_FRAME_PIXELS / 1e6:.1f} megapixel limit; export it at "
                             f"4K (3840x2160) or smaller")
        raise MediaError(f"ffmpeg could not decode {name}: {_last_error_line(stderr)}")
    return out, stderr


class _Timer(threading.Timer):
    fired = False

    def run(self):
        self.finished.wait(self.interval)
        if not self.finished.is_set():
            self.fired = True
            self.function()
        self.finished.set()


def _kill_after(proc: subprocess.Popen, seconds: float) -> _Timer:
    """Kill `proc` unless the returned timer is cancelled within `seconds`; `.fired` says
    whether it was killed."""
    timer = _Timer(seconds, proc.kill)
    timer.daemon = True
    timer.start()
    return timer


def _decode_losses(stderr: str) -> tuple[int, int]:
    """(frames decoded, decode errors) of the video stream, from ffmpeg's verbose summary."""
    match = re.search(r"Input stream #0:\d+ \(video\): \d+ packets read[^;]*; (\d+) frames "
                      r"decoded; (\d+) decode errors", stderr)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _scale_filter(max_side: int) -> str:
    # Shrink (never enlarge) so the longer side fits, keeping even sizes; commas inside the
    # quoted expressions are part of them, not filter separators.
    factor = f"min(1,{int(max_side)}/max(iw,ih))"
    return (f"scale=w='trunc(iw*{factor}/2)*2':h='trunc(ih*{factor}/2)*2'"
            f":flags=area")


def normalize_clip(path, *, max_seconds: float | None = None, max_side: int = 640) -> Clip:
    """Decode any video file to 30 fps RGB frames and 16 kHz mono audio (see `Clip`).

    `fps=30:start_time=0` duplicates or drops frames by timestamp (variable frame rate
    becomes constant) and pads the start when the video begins after the audio;
    `aresample=async=1:first_pts=0` fills audio gaps and a late start with silence. Both
    streams therefore begin at the file's time zero. Rotation flags of phone videos are
    applied by ffmpeg. max_seconds keeps only the first max_seconds and sets `trimmed`.
    """
    path = _existing(path)
    probe = _probe(path)
    if not probe.has_video:
        raise MediaError(f"{path.name} is not a video: ffmpeg found no video stream in it "
                         f"(an audio file or an image?); upload a video of a face")
    if probe.width and probe.height and probe.width * probe.height > MAX_FRAME_PIXELS:
        raise MediaError(f"{path.name} has {probe.width}x{probe.height} frames, over the "
                         f"{MAX_FRAME_PIXELS / 1e6:.1f} megapixel limit; export it at 4K "
                         f"(3840x2160) or smaller")
    limit = None if max_seconds is None else max(1, round(max_seconds * FPS))
    # Ask for half a frame more than the limit: an extra frame tells us the clip was longer.
    duration = [] if limit is None else ["-t", f"{(limit + 0.5) / FPS:.6f}"]
    with tempfile.TemporaryDirectory(prefix="mdvae-media-") as tmp:
        audio_file = Path(tmp) / "audio.f32"
        # verbose: the summary counts the frames that did not decode
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats",
               "-loglevel", "level+verbose", *_input_args(path),
               "-map", "0:v:0", "-vf", f"fps={FPS}:start_time=0,{_scale_filter(max_side)}",
               "-pix_fmt", "rgb24", *duration, "-f", "rawvideo", "pipe:1"]
        if probe.has_audio:
            cmd += ["-map", "0:a:0", "-af", "aresample=async=1:first_pts=0",
                    "-ac", "1", "-ar", str(SAMPLE_RATE), *duration, "-f", "f32le",
                    str(audio_file)]
        # ffmpeg writes each output's header from its own thread, in pieces, so two outputs'
        # headers can interleave and garble the line that gives the frame size: decode
        # again once when it cannot be read
        for _ in range(2):
            audio_file.unlink(missing_ok=True)
            raw, stderr = _run_ffmpeg(cmd, path.name)
            size = _output_size(stderr)
            if size is not None or not raw:
                break
        audio = None
        if probe.has_audio and audio_file.exists() and audio_file.stat().st_size:
            audio = np.fromfile(audio_file, dtype="<f4")
    if not raw:
        raise MediaError(f"{path.name}: no video frames could be decoded (the file is empty "
                         f"or damaged); record or export the clip again")
    decoded, lost = _decode_losses(stderr)
    if lost > MAX_LOST_SHARE * (decoded + lost):
        raise MediaError(f"{path.name} is damaged: {lost} of its {decoded + lost} video "
                         f"frames could not be decoded (more than {MAX_LOST_SHARE:.0%}); "
                         f"record or export the clip again")
    if size is None:
        raise MediaError(f"ffmpeg did not report the frame size while decoding {path.name}")
    height, width = size
    frames = np.frombuffer(raw, dtype=np.uint8)
    n = frames.size // (height * width * 3)
    frames = frames[: n * height * width * 3].reshape(n, height, width, 3)  # (N, H, W, 3)
    trimmed = limit is not None and n > limit
    if trimmed:
        frames = frames[:limit]
        if audio is not None:
            audio = audio[: samples_for_frames(limit)]
    if audio is not None:
        audio = peak_normalize(audio)
    return Clip(frames=frames, audio=audio, source=str(path), trimmed=trimmed,
                lost_frames=lost, decoded_frames=decoded)


def _output_size(stderr: str) -> tuple[int, int] | None:
    """(H, W) of the rawvideo ffmpeg wrote, as it reports it (after rotation and scaling),
    or None when its log does not say. It is read after the first output's header, either
    output's (their order varies), never from the input's listing (which may be rawvideo)."""
    first_output = stderr.find("Output #")
    if first_output < 0:
        return None
    matches = re.findall(r"Stream #0:0[^:\n]*: Video: rawvideo[^\n]*?, (\d+)x(\d+)",
                         stderr[first_output:])
    if not matches:
        return None
    width, height = matches[-1]
    return int(height), int(width)


def read_audio(path) -> np.ndarray:
    """The first audio track of any media file as (S,) float32 16 kHz mono, peak-normalised.

    For sources that keep the sound beside the video (MEAD's .m4a files).
    """
    path = _existing(path)
    if not _probe(path, AUDIO_DEMUXERS).has_audio:
        raise MediaError(f"{path.name} has no audio track; the model needs the speech too")
    raw, _ = _run_ffmpeg([ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats",
                          *_input_args(path, AUDIO_DEMUXERS), "-map", "0:a:0",
                          "-af", "aresample=async=1:first_pts=0", "-ac", "1",
                          "-ar", str(SAMPLE_RATE), "-f", "f32le", "pipe:1"], path.name)
    return peak_normalize(np.frombuffer(raw, dtype="<f4"))


def write_video(path, frames: np.ndarray, audio: np.ndarray | None = None, *,
                scale: int = 4, interpolation: str = "cubic", fps: int = FPS) -> Path:
    """Write (T, H, W, 3) uint8 RGB frames (+ 16 kHz audio (S,)) as a browser-playable mp4.

    Frames are enlarged `scale` times ("cubic" for smooth faces, "nearest" for pixel-exact
    inspection) and padded by one replicated row/column where needed, because yuv420p needs
    even sizes. The file appears at `path` only when complete (written beside it, then
    renamed). Returns the path.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
        raise ValueError(f"expected uint8 frames (T, H, W, 3) with T > 0, got "
                         f"{frames.dtype} {frames.shape}")
    flags = {"cubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST}.get(interpolation)
    if flags is None:
        raise ValueError(f"interpolation must be 'cubic' or 'nearest', not {interpolation!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _, height, width, _ = frames.shape
    out_h, out_w = height * scale, width * scale
    pad_h, pad_w = out_h % 2, out_w % 2
    with tempfile.TemporaryDirectory(prefix="mdvae-write-") as tmp:
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{out_w + pad_w}x{out_h + pad_h}",
               "-r", str(fps), "-i", "pipe:0"]
        if audio is not None:
            # Sound running past the last frame would leave players on a frozen picture.
            audio = np.asarray(audio, dtype=np.float32)[: round(len(frames) * SAMPLE_RATE / fps)]
            wav = Path(tmp) / "audio.wav"
            soundfile.write(wav, np.clip(audio, -1.0, 1.0), SAMPLE_RATE, subtype="FLOAT")
            cmd += ["-i", str(wav)]
        cmd += ["-map", "0:v:0", "-c:v", "libx264", "-preset", "veryfast", "-crf", "18",
                "-pix_fmt", "yuv420p"]
        if audio is not None:
            cmd += ["-map", "1:a:0", "-c:a", "aac", "-b:a", "128k", "-ar", "48000"]
        fd, partial = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".mp4", dir=path.parent)
        os.close(fd)
        partial = Path(partial)
        cmd += ["-movflags", "+faststart", "-f", "mp4", str(partial)]
        try:
            with tempfile.TemporaryFile() as err_file:
                proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=err_file)
                timer = _kill_after(proc, FFMPEG_TIMEOUT_S)
                try:
                    for frame in frames:
                        if scale != 1:
                            frame = cv2.resize(frame, (out_w, out_h), interpolation=flags)
                        if pad_h or pad_w:
                            frame = cv2.copyMakeBorder(frame, 0, pad_h, 0, pad_w,
                                                       cv2.BORDER_REPLICATE)
                        proc.stdin.write(np.ascontiguousarray(frame).tobytes())
                except BrokenPipeError:
                    pass  # ffmpeg stopped early; its exit status and message say why
                finally:
                    proc.stdin.close()
                proc.wait()
                timer.cancel()
                err_file.seek(0)
                stderr = err_file.read().decode("utf-8", errors="replace")
            if timer.fired:
                raise MediaError(f"ffmpeg took over {FFMPEG_TIMEOUT_S:g} s to write "
                                 f"{path.name} and was stopped")
            if proc.returncode != 0:
                raise MediaError(f"ffmpeg could not write {path.name}: "
                                 f"{_last_error_line(stderr)}")
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
    return path


def _label_band(text: str, width: int, panel_height: int) -> np.ndarray:
    """A dark band (h, width, 3) holding `text` in white, shrunk to fit the width."""
    band_h = max(12, panel_height // 6)
    font = cv2.FONT_HERSHEY_SIMPLEX
    font_scale = band_h / 30.0
    (text_w, text_h), _ = cv2.getTextSize(text, font, font_scale, 1)
    if text_w > width - 2:
        font_scale *= (width - 2) / text_w
        (text_w, text_h), _ = cv2.getTextSize(text, font, font_scale, 1)
    band = np.full((band_h, width, 3), 24, dtype=np.uint8)
    origin = ((width - text_w) // 2, (band_h + text_h) // 2)
    cv2.putText(band, text, origin, font, font_scale, (255, 255, 255), 1, cv2.LINE_AA)
    return band


def side_by_side(videos: list[np.ndarray], labels: list[str] | None = None,
                 gap: int = 2) -> np.ndarray:
    """Videos (T_i, H_i, W_i, 3) placed left to right with `gap` white columns between them.

    All are cut to the shortest T and resized to the first one's height; `labels` are
    written in a band above each video. Returns (T, H', W', 3) uint8.
    """
    if not videos:
        raise ValueError("side_by_side needs at least one video")
    if labels is not None and len(labels) != len(videos):
        raise ValueError(f"{len(labels)} labels for {len(videos)} videos")
    n_frames = min(len(v) for v in videos)
    height = videos[0].shape[1]
    columns = []
    for i, video in enumerate(videos):
        video = np.asarray(video[:n_frames], dtype=np.uint8)
        if video.shape[1] != height:
            width = max(1, round(video.shape[2] * height / video.shape[1]))
            video = np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA)
                              for f in video])
        if labels is not None:
            band = _label_band(labels[i], video.shape[2], height)
            bands = np.broadcast_to(band, (n_frames, *band.shape))  # (T, h, W_i, 3)
            video = np.concatenate([bands, video], axis=1)
        if i and gap:
            columns.append(np.full((n_frames, video.shape[1], gap, 3), 255, dtype=np.uint8))
        columns.append(video)
    return np.concatenate(columns, axis=2)  # (T, H', sum W + gaps, 3)


def frame_strip(frames: np.ndarray, n: int = 8) -> np.ndarray:
    """`n` evenly spaced frames of (T, H, W, 3), first to last, in one row (H, n W, 3)."""
    frames = np.asarray(frames)
    index = np.linspace(0, len(frames) - 1, n).round().astype(int)
    return np.concatenate(list(frames[index]), axis=1)
