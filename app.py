"""Gradio demo of VQ-MDVAE: swap latent factors, interpolate w, denoise, read the emotion.

UI only: the components, the events and thin functions that call `mdvae.pipeline.Pipeline`,
which owns the models and turns bad input into clear errors (shown here as gr.Error).

    python app.py          # MDVAE_BUNDLE=folder-or-hub-id, GRADIO_SERVER_NAME / _PORT

Environment: MDVAE_BUNDLE (bundle folder or Hub repo id; default checkpoints/),
MDVAE_CONCURRENCY (requests run at once, default 2), MDVAE_TORCH_THREADS (torch CPU threads,
default 1: per request, so concurrent requests do not fight over the cores),
GRADIO_SERVER_NAME (default 127.0.0.1), GRADIO_SERVER_PORT (default 7860),
MDVAE_SESSION_TTL (seconds a session keeps its encoded clips, default 900), MDVAE_MAX_SESSIONS
(sessions whose state is kept, default 32), MDVAE_DISK_MB (uploads and results kept on disk,
default 2000).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import gradio as gr
import torch

from mdvae.errors import MDVAEError
from mdvae.media.video import MAX_FRAME_PIXELS, MAX_LOST_SHARE
from mdvae.pipeline import (
    GROUP_MEANING,
    GROUPS,
    PREVIEW_SCALE,
    REGIONS,
    Pipeline,
    as_number,
    central_frames,
    prune_files,
)

try:  # ZeroGPU: `spaces.GPU` attaches a GPU while a decorated function runs
    import spaces

    gpu = spaces.GPU(duration=60)  # returns the function unchanged off ZeroGPU
except ImportError:

    def gpu(fn):
        return fn


EXAMPLES = Path(__file__).resolve().parent / "examples"
CONCURRENCY = int(os.environ.get("MDVAE_CONCURRENCY", "2"))
QUEUE_SIZE = 32  # waiting requests beyond this are turned away with "queue full"
# A session's encoded clips (~9 MB each, up to 6 per session) are dropped this long after
# their last use, and only the newest MAX_SESSIONS sessions keep any: an API caller's state
# (every gradio_client is a session) is freed like a browser tab's.
SESSION_TTL_S = float(os.environ.get("MDVAE_SESSION_TTL", "900"))
MAX_SESSIONS = int(os.environ.get("MDVAE_MAX_SESSIONS", "32"))
# Gradio's cache (uploads, the results written into it, example copies) is kept to this
# size, oldest files first (a fresh upload or result is the newest, so it goes last), and
# files older than CACHE_AGE_S are deleted as well; uploads arrive outside the queue, so
# this is checked every PRUNE_EVERY_S seconds.
DISK_MB = float(os.environ.get("MDVAE_DISK_MB", "2000"))
CACHE_AGE_S = 1800
PRUNE_EVERY_S = 1.0

INTRO = """# VQ-MDVAE: audiovisual speech, factor by factor
A multimodal dynamical VAE (MDVAE, after Sadok, Leglaive, Girin, Alameda-Pineda and Séguier)
splits a talking-face clip into four latent groups, learnt inside per-modality VQ-VAEs:
**w** (identity, global emotion), **z_av** (lips and jaw, heard and seen), **z_a**
(intonation, loudness) and **z_v** (head motion, blinks). Upload or record clips (face and
voice, 1 to {max_s:g} s), or click an example."""

_pipeline: Pipeline | None = None  # set by build_demo; the thin functions below use it


def _pipe() -> Pipeline:
    if _pipeline is None:
        raise RuntimeError("call build_demo() first")
    return _pipeline


@contextmanager
def _user_errors(what: str = ""):
    """The pipeline's messages for bad input, as a Gradio error popup."""
    try:
        yield
    except MDVAEError as err:
        raise gr.Error(f"{what}: {err}" if what else str(err), print_exception=False) from err


def _notes(*sources) -> str:
    lines = [note for s in sources for note in s.notes]
    return "\n".join(f"- {line}" for line in lines)


def _encode_pair(video_a, video_b, aligned, enc_a, enc_b, progress):
    pipe = _pipe()
    progress(0.05, desc="Reading clip A")
    with _user_errors("Clip A"):
        enc_a = pipe.encode_file(video_a, aligned=aligned, reuse=enc_a)
    progress(0.35, desc="Reading clip B")
    with _user_errors("Clip B"):
        enc_b = pipe.encode_file(video_b, aligned=aligned, reuse=enc_b)
    return enc_a, enc_b


# -- thin functions (the API endpoints) ---------------------------------------------------
# Gradio hands each call its own progress tracker in the parameter whose default is a
# gr.Progress, inserted right after the event's component inputs: so `progress` comes after
# the visible inputs and before the session states, which examples (visible inputs only)
# leave at None.
PROGRESS = gr.Progress()


@gpu
def swap(video_a, video_b, groups, aligned, progress=PROGRESS, enc_a=None, enc_b=None):
    """Clip A rebuilt with the chosen latent groups taken from clip B."""
    pipe = _pipe()
    enc_a, enc_b = _encode_pair(video_a, video_b, aligned, enc_a, enc_b, progress)
    progress(0.7, desc="Swapping, decoding, rendering")
    with _user_errors():
        out = pipe.swap(enc_a, enc_b, groups)
    video = pipe.render(out, "swap")
    strip = pipe.strip([("A", enc_a.clip.frames), ("B", enc_b.clip.frames),
                        (f"A with {' + '.join(g for g in GROUPS if g in groups)} of B",
                         out.frames)])
    return video, strip, _notes(enc_a, enc_b, out), enc_a, enc_b


@gpu
def interpolate(video_a, video_b, alpha, sweep, aligned, progress=PROGRESS, enc_a=None,
                enc_b=None):
    """Clip A with w moved towards clip B's: constant alpha, or the sweep from A to B."""
    pipe = _pipe()
    enc_a, enc_b = _encode_pair(video_a, video_b, aligned, enc_a, enc_b, progress)
    progress(0.7, desc="Decoding, rendering")
    with _user_errors():
        out = pipe.interpolate(enc_a, enc_b, None if sweep else alpha)
    video = pipe.render(out, "interpolate")
    strip = pipe.interpolation_strip(enc_a, enc_b)
    return video, strip, _notes(enc_a, enc_b, out), enc_a, enc_b


@gpu
def interpolate_alpha(video_a, video_b, alpha, sweep, aligned, progress=PROGRESS, enc_a=None,
                      enc_b=None):
    """The slider's event: with both clips encoded in the session, only decodes."""
    pipe = _pipe()
    enc_a, enc_b = _encode_pair(video_a, video_b, aligned, enc_a, enc_b, progress)
    with _user_errors():
        out = pipe.interpolate(enc_a, enc_b, None if sweep else alpha)
    video = pipe.render(out, "interpolate", scale=PREVIEW_SCALE)
    return video, _notes(enc_a, enc_b, out), enc_a, enc_b


@gpu
def denoise(video, region, sigma, percent, aligned, progress=PROGRESS, enc=None):
    """Noise on the mouth or eyes of the central frames; VQ-VAE, V-DSAE and MDVAE repair it."""
    pipe = _pipe()
    progress(0.05, desc="Reading the clip")
    with _user_errors("Clip"):
        enc = pipe.encode_file(video, aligned=aligned, reuse=enc)
    progress(0.5, desc="Corrupting and reconstructing")
    with _user_errors():
        frames = central_frames(enc.n_frames, as_number(percent, "percent") / 100)
        result = pipe.denoise(enc.clip, region, sigma, frames)
    video_out = pipe.render_denoise(result)
    rows = [("clean", result.clean), ("noisy", result.noisy), *result.outputs.items()]
    strip = pipe.strip([(name, video[frames]) for name, video in rows], n=6)
    return video_out, result.table(), strip, _notes(enc, result), enc


@gpu
def emotion(video, aligned, progress=PROGRESS, enc=None):
    """The 8 emotion probabilities read from w (the MDVAE's, and the unimodal models')."""
    pipe = _pipe()
    progress(0.05, desc="Reading the clip")
    with _user_errors("Clip"):
        enc = pipe.encode_file(video, aligned=aligned, reuse=enc)
    probs = pipe.emotion(enc) if "mdvae" in pipe.emotion_models else {}
    lines = []
    for model, title in (("audio", "A-DSAE, voice only"), ("visual", "V-DSAE, face only")):
        if model in pipe.emotion_models:
            top = sorted(pipe.emotion(enc, model).items(), key=lambda kv: -kv[1])[:3]
            lines.append(f"**{title}:** " + ", ".join(f"{k} {v:.0%}" for k, v in top))
    if not probs:
        lines.append("This bundle has no emotion head for the MDVAE.")
    notes = _notes(enc)
    text = "\n\n".join(lines + ([notes] if notes else []))
    strip = pipe.strip([("what the model sees", enc.clip.frames)])
    return probs, text, strip, enc


# -- the page -----------------------------------------------------------------------------


def _example(name: str) -> str:
    return str(EXAMPLES / name)


def _video(label: str) -> gr.Video:
    return gr.Video(label=label, sources=["upload", "webcam"], include_audio=True, height=240)


def _image(label: str) -> gr.Image:
    return gr.Image(label=label, type="numpy", format="png")  # png: crisp frame strips


def _slider(*args, **kwargs) -> gr.Slider:
    """A gr.Slider whose API callers are told plainly when they send text instead of a
    number (Gradio's own check fails with a generic error). Wrapped on the instance: a
    subclass would make Gradio write a type stub beside this file."""
    slider = gr.Slider(*args, **kwargs)
    preprocess = slider.preprocess

    def checked(payload):
        if isinstance(payload, bool) or not isinstance(payload, (int, float)):
            raise gr.Error(f"{slider.label} must be a number from {slider.minimum:g} to "
                           f"{slider.maximum:g}, got {payload!r}", print_exception=False)
        return preprocess(payload)

    slider.preprocess = checked
    return slider


def _state() -> gr.State:
    return gr.State(time_to_live=SESSION_TTL_S)


def build_demo(pipeline: Pipeline | None = None) -> gr.Blocks:
    """The Blocks app around `pipeline` (default: Pipeline(), i.e. $MDVAE_BUNDLE or
    checkpoints/)."""
    global _pipeline
    _pipeline = pipeline if pipeline is not None else Pipeline()
    pipe = _pipeline
    group_choices = [(f"{g}: {GROUP_MEANING[g]}", g) for g in GROUPS]

    with gr.Blocks(title="VQ-MDVAE", delete_cache=(300, CACHE_AGE_S)) as demo:
        gr.Markdown(INTRO.format(max_s=pipe.max_seconds))
        gr.Markdown(pipe.description, elem_id="bundle-info")
        aligned = gr.Checkbox(
            value=False, label="Clips are already aligned face crops (skip face detection)",
            info="The examples tick it. Otherwise the face is found, tracked and cropped; "
                 "an upload or a recording unticks it.")

        with gr.Tab("Swap"):
            with gr.Row():
                swap_a, swap_b = _video("Clip A"), _video("Clip B")
            swap_groups = gr.CheckboxGroup(group_choices, value=["z_av"],
                                           label="Take these latent groups from clip B")
            swap_button = gr.Button("Swap", variant="primary")
            with gr.Row():
                swap_video = gr.Video(label="A with B's groups (sound by Griffin-Lim)",
                                      height=320, elem_id="swap-result")
                swap_strip = _image("Frames: A, B, result")
            swap_notes = gr.Markdown(label="notes")
            swap_state = (_state(), _state())
            swap_inputs = [swap_a, swap_b, swap_groups, aligned]
            swap_outputs = [swap_video, swap_strip, swap_notes, *swap_state]
            swap_button.click(swap, [*swap_inputs, *swap_state], swap_outputs, api_name="swap")
            gr.Examples(
                [[_example("spk02_happy.mp4"), _example("spk05_sad.mp4"), ["z_av"], True],
                 [_example("spk07_angry.mp4"), _example("spk21_surprised.mp4"), ["w"], True],
                 [_example("spk49_disgusted.mp4"), _example("spk37_neutral.mp4"),
                  ["z_v"], True]],
                swap_inputs, swap_outputs, fn=swap, run_on_click=True, cache_examples=False,
                example_labels=["lips of B (z_av)", "identity and emotion of B (w)",
                                "head motion and blinks of B (z_v)"])

        with gr.Tab("Interpolate w"):
            with gr.Row():
                interp_a, interp_b = _video("Clip A"), _video("Clip B")
            with gr.Row():
                alpha = _slider(0.0, 1.0, value=0.5, step=0.05, label="alpha",
                                  info="w = alpha w_A + (1 - alpha) w_B; 1 is A, 0 is B's w "
                                       "with A's motion. Releasing the slider only decodes.")
                sweep = gr.Checkbox(value=False, label="Sweep",
                                    info="alpha goes from 1 to 0 over the clip (the seed's "
                                         "interpolation)")
            interp_button = gr.Button("Interpolate", variant="primary")
            with gr.Row():
                interp_video = gr.Video(label="A with the interpolated w", height=320)
                interp_strip = _image("Middle frame of A from w_A to w_B")
            interp_notes = gr.Markdown(label="notes")
            interp_state = (_state(), _state())
            interp_inputs = [interp_a, interp_b, alpha, sweep, aligned]
            interp_outputs = [interp_video, interp_strip, interp_notes, *interp_state]
            interp_button.click(interpolate, [*interp_inputs, *interp_state], interp_outputs,
                                api_name="interpolate")
            gr.on([alpha.release, sweep.input], interpolate_alpha,
                  [*interp_inputs, *interp_state],
                  [interp_video, interp_notes, *interp_state],
                  api_visibility="private", trigger_mode="always_last")
            gr.Examples(
                [[_example("spk02_happy.mp4"), _example("spk07_angry.mp4"), 0.5, False, True],
                 [_example("spk05_sad.mp4"), _example("spk21_surprised.mp4"), 0.5, True, True]],
                interp_inputs, interp_outputs, fn=interpolate, run_on_click=True,
                cache_examples=False,
                example_labels=["happy speaker 2 halfway to angry speaker 7",
                                "sad speaker 5 sweeping to surprised speaker 21"])

        with gr.Tab("Denoise"):
            with gr.Row():
                den_video_in = _video("Clip")
                with gr.Column():
                    region = gr.Radio(list(REGIONS), value="mouth", label="Corrupted region")
                    sigma = _slider(0.05, 1.0, value=0.3, step=0.05, label="Noise std (sigma)",
                                      info="Gaussian noise, in units of the pixel range [0, 1]")
                    percent = _slider(10, 100, value=60, step=5,
                                        label="Corrupted frames (% of the clip, centred)",
                                        info="60 % matches the seed's 6 central frames of 10")
                    den_button = gr.Button("Corrupt and denoise", variant="primary")
            den_video = gr.Video(label="Comparison, with the clip's own sound", height=260)
            with gr.Row():
                den_table = gr.Dataframe(headers=["method", "PSNR (dB)", "SSIM"],
                                         label="On the corrupted pixels", interactive=False)
                den_strip = _image("Corrupted frames")
            den_notes = gr.Markdown(label="notes")
            den_state = _state()
            den_inputs = [den_video_in, region, sigma, percent, aligned]
            den_outputs = [den_video, den_table, den_strip, den_notes, den_state]
            den_button.click(denoise, [*den_inputs, den_state], den_outputs, api_name="denoise")
            gr.Examples(
                [[_example("spk21_surprised.mp4"), "mouth", 0.3, 60, True],
                 [_example("spk05_sad.mp4"), "eyes", 0.5, 60, True]],
                den_inputs, den_outputs, fn=denoise, run_on_click=True, cache_examples=False,
                example_labels=["noisy mouth", "noisy eyes"])

        with gr.Tab("Emotion"):
            with gr.Row():
                emo_video_in = _video("Clip")
                with gr.Column():
                    emo_label = gr.Label(num_top_classes=8, label="Emotion from w (MDVAE)")
                    emo_text = gr.Markdown(label="unimodal models and notes")
            emo_button = gr.Button("Predict the emotion", variant="primary")
            emo_strip = _image("Face crops read by the model")
            emo_state = _state()
            emo_inputs = [emo_video_in, aligned]
            emo_outputs = [emo_label, emo_text, emo_strip, emo_state]
            emo_button.click(emotion, [*emo_inputs, emo_state], emo_outputs, api_name="emotion")
            gr.Examples(
                [[_example(name), True] for name in ("spk02_happy.mp4", "spk05_sad.mp4",
                                                    "spk07_angry.mp4", "spk49_disgusted.mp4")],
                emo_inputs, emo_outputs, fn=emotion, run_on_click=True, cache_examples=False,
                example_labels=["happy", "sad", "angry", "disgusted"])

        # Uploads and recordings default to face detection; examples (which also set the
        # box) fire neither event.
        videos = [swap_a, swap_b, interp_a, interp_b, den_video_in, emo_video_in]
        gr.on([e for v in videos for e in (v.upload, v.stop_recording)], lambda: False,
              None, aligned, api_visibility="private", queue=False)

        gr.Markdown(
            f"Clips: 1 to {pipe.max_seconds:g} s are used (longer ones are trimmed), files up "
            f"to {pipe.max_file_mb:g} MB (mp4, mov, webm, mkv, avi, mpeg, ts, flv or ogg; "
            f"frames up to {MAX_FRAME_PIXELS / 1e6:.1f} megapixels; a clip with over "
            f"{MAX_LOST_SHARE:.0%} of its frames damaged is refused). Results are 64x64 face "
            f"crops shown 4x larger; their sound is rebuilt from the decoded spectrogram by "
            f"Griffin-Lim. Your encoded clips are kept {SESSION_TTL_S / 60:g} min after their "
            f"last use; files are deleted after {CACHE_AGE_S / 60:g} min at most. API: "
            f"`/swap`, `/interpolate`, `/denoise`, `/emotion` (see \"Use via API\" below).")
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)
    # Results are written straight into Gradio's cache, which then serves them as they are
    # instead of copying them there.
    pipe.set_output_root(demo.GRADIO_CACHE)
    return demo


def prune_cache(demo: gr.Blocks, max_mb: float = DISK_MB) -> int:
    """Keep Gradio's cache folder within max_mb and CACHE_AGE_S (never the example copies);
    returns the bytes left."""
    keep = {f for block in demo.blocks.values() for f in getattr(block, "keep_in_cache", ())}
    return prune_files(demo.GRADIO_CACHE, max_bytes=max_mb * 2**20, max_age_s=CACHE_AGE_S,
                       keep=keep)


def _prune_while_running(demo: gr.Blocks) -> None:
    while demo.is_running:
        try:
            prune_cache(demo)
        except OSError as err:  # a full or read-only disk must not stop the pruning
            print(f"pruning {demo.GRADIO_CACHE} failed: {err}")
        time.sleep(PRUNE_EVERY_S)


def launch(demo: gr.Blocks, **overrides):
    """Start the server with the app's limits; keyword arguments override launch()'s."""
    options = dict(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        max_file_size=int(_pipe().max_file_mb * 2**20),  # bytes, as the pipeline counts them
        allowed_paths=[str(EXAMPLES)],
        theme=gr.themes.Soft(),
        state_session_capacity=MAX_SESSIONS,
    )
    options.update(overrides)
    block = not options.pop("prevent_thread_lock", False)
    result = demo.launch(**options, prevent_thread_lock=True)
    threading.Thread(target=_prune_while_running, args=(demo,), daemon=True,
                     name="prune-cache").start()
    if block:
        demo.block_thread()
    return result


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through the `finally` below, like Ctrl-C


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("MDVAE_TORCH_THREADS", "1")))
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    demo = build_demo()
    try:
        launch(demo)
    finally:  # results and uploads go with the server, on Ctrl-C and SIGTERM alike
        demo.close()
        _pipe().close()
