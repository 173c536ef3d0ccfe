"""Gradio demo of VQ-MDVAE: swap latent factors, interpolate w, denoise, read the emotion.

UI only: the components, the events and thin functions that call `mdvae.pipeline.Pipeline`,
which owns the models and turns bad input into clear errors (shown here as gr.Error, and
kept in a status line under the tab's button until its next success).

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

import functools
import html
import os
import signal
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import gradio as gr
import numpy as np
import torch

from mdvae.calibration import SURE_FROM
from mdvae.errors import MDVAEError
from mdvae.media.video import MAX_FRAME_PIXELS, MAX_LOST_SHARE
from mdvae.pipeline import (
    GROUP_MEANING,
    GROUPS,
    PREVIEW_SCALE,
    REFERENCE_TITLE,
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
# A session's encoded clips (~9 MB each, up to 7 per session) are dropped this long after
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
splits a talking-face clip into four latent groups. Upload or record clips (face and voice,
1 to {max_s:g} s), or click an example."""

GLOSSARY = """**VQ-VAE**: one vector-quantised autoencoder per stream, turning each face frame
and each spectrogram frame into features (stage 1). **MDVAE**: the model over both
streams' features (stage 2). **DSAE**: the same kind of model on one stream only, the
baseline: **A-DSAE** hears only the voice, **V-DSAE** sees only the face.
**w**: identity and global emotion, one per clip · **z_av**: lips and jaw, heard and seen ·
**z_a**: intonation and loudness · **z_v**: head motion and blinks (the z change every
frame). **Familiarity**: how well the model explains a clip, against clips of speakers it
never saw (its reference clips)."""

MODEL_COLOURS = {"MDVAE": "#4f46e5", "A-DSAE (voice)": "#d97706", "V-DSAE (face)": "#059669",
                 REFERENCE_TITLE: "#db2777"}
IMAGE_TOP_PAD = 36  # blank pixels above result images: Gradio's buttons sit over the top

_pipeline: Pipeline | None = None  # set by build_demo; the thin functions below use it


def _pipe() -> Pipeline:
    if _pipeline is None:
        raise RuntimeError("call build_demo() first")
    return _pipeline


@contextmanager
def _user_errors(what: str = ""):
    """The pipeline's messages for bad input, as a Gradio error popup (which fades; the
    tab's status line keeps the reason, see `_keeps_reason`)."""
    try:
        yield
    except MDVAEError as err:
        raise gr.Error(f"{what}: {err}" if what else str(err),
                       print_exception=False) from err


class _Reasons:
    """The last error's reason per (session, tab), read once by the tab's status line.

    A failed event has no outputs, so the reason waits here for the `failure` event that
    writes it under the tab's inputs. Bounded: API callers' failures, which no status line
    reads, are forgotten oldest first.
    """

    def __init__(self, capacity: int):
        self._items: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def keep(self, tab: str, session: str, reason: str) -> None:
        with self._lock:
            self._items[(session, tab)] = reason
            self._items.move_to_end((session, tab))
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)

    def take(self, tab: str, session: str) -> str | None:
        with self._lock:
            return self._items.pop((session, tab), None)


_REASONS = _Reasons(capacity=4 * MAX_SESSIONS)


def _keeps_reason(tab: str):
    """Decorator for a thin function with a `request: gr.Request` parameter: the reason of
    a gr.Error it raises is kept for `tab`'s status line (`_status_line`)."""
    def decorate(fn):
        @functools.wraps(fn)  # Gradio reads fn's signature through it
        def wrapped(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except gr.Error as err:
                request = next((a for a in (*args, *kwargs.values())
                                if isinstance(a, gr.Request)), None)
                if request is not None and request.session_hash:
                    _REASONS.keep(tab, request.session_hash, str(err.message))
                raise
        return wrapped
    return decorate


def _status_html(reason: str | None) -> str:
    text = (html.escape(reason) if reason else
            "the server gave no reason (a message may have shown in the corner); try again")
    return (f"<div class='status-error' style='color:#b91c1c;border-left:3px solid #dc2626;"
            f"padding:2px 8px'><b>Not done:</b> {text}</div>")


def _status_line(event, tab: str, status: gr.HTML) -> None:
    """After `event` (a Dependency): its failure's reason in `status`, which stays after
    the toast has faded; a success empties it."""
    def reason(request: gr.Request):
        return _status_html(_REASONS.take(tab, request.session_hash))

    event.success(lambda: "", None, status, queue=False, api_visibility="private")
    event.failure(reason, None, status, queue=False, api_visibility="private")


def _cleared_by(examples: gr.Examples, status: gr.HTML) -> None:
    """A clicked example (shipped clips, which run) empties the status line too."""
    examples.load_input_event.then(lambda: "", None, status, queue=False,
                                   api_visibility="private")


def _notes(*sources) -> str:
    lines = [note for s in sources for note in s.notes]
    return "\n".join(f"- {line}" for line in lines)


def _padded(image: np.ndarray) -> np.ndarray:
    """A result image with a white band on top, so the titles drawn into it stay visible."""
    return np.pad(image, ((IMAGE_TOP_PAD, 0), (0, 0), (0, 0)), constant_values=255)


def _familiarity_html(items) -> str:
    """A small gauge and the plain sentence for each (name, Familiarity)."""
    rows = []
    for name, fam in items:
        if not fam.known:
            rows.append(f"<div style='margin:4px 0'><b>{html.escape(name)}</b>: "
                        f"{html.escape(fam.sentence())}</div>")
            continue
        share = min(100.0, fam.percentile)
        colour = "#16a34a" if fam.familiar else "#dc2626"
        gauge = (
            f"<div title='less familiar than {share:.1f}% of the reference clips' style='position:"
            f"relative;display:inline-block;width:140px;height:10px;border-radius:5px;"
            f"background:#e5e7eb;vertical-align:middle;margin:0 8px'>"
            f"<div style='width:{share:.1f}%;height:100%;border-radius:5px;"
            f"background:{colour}'></div><div style='position:absolute;top:-3px;"
            f"right:0;width:2px;height:16px;background:#111'></div></div>")
        what = {"Clip": "this clip", "Clean clip": "the clean clip",
                "Neutral clip": "the neutral clip"}.get(name, name)
        rows.append(
            f"<div style='margin:4px 0'><b>{html.escape(name)}</b>{gauge}"
            f"<b style='color:{colour}'>{fam.level}</b> · {html.escape(fam.sentence(what))}"
            f"</div>")
    return "<div class='familiarity'>" + "".join(rows) + "</div>"


def _familiarity_json(items) -> dict:
    return {name: fam.as_dict() for name, fam in items}


def _encode_pair(video_a, video_b, aligned, enc_a, enc_b, progress):
    pipe = _pipe()
    for name, video, enc, at in (("A", video_a, enc_a, 0.05), ("B", video_b, enc_b, 0.35)):
        if not pipe.reusable(video, enc, aligned=aligned):
            progress(at, desc=f"Reading and encoding clip {name}")
        with _user_errors(f"Clip {name}"):
            encoded = pipe.encode_file(video, aligned=aligned, reuse=enc)
        enc_a, enc_b = (encoded, enc_b) if name == "A" else (enc_a, encoded)
    return enc_a, enc_b


def _pair_familiarity(enc_a, enc_b):
    items = [("Clip A", enc_a.familiarity), ("Clip B", enc_b.familiarity)]
    return _familiarity_html(items), _familiarity_json(items)


# -- thin functions (the API endpoints) ---------------------------------------------------
# Gradio hands each call its own progress tracker in the parameter whose default is a
# gr.Progress, inserted right after the event's component inputs: so `progress` comes after
# the visible inputs and before the session states, which examples (visible inputs only)
# leave at None.
PROGRESS = gr.Progress()


@gpu
@_keeps_reason("swap")
def swap(video_a, video_b, groups, aligned, progress=PROGRESS, enc_a=None, enc_b=None,
         request: gr.Request = None):
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
    fam_html, fam_json = _pair_familiarity(enc_a, enc_b)
    return (video, _padded(strip), fam_html, fam_json, _notes(enc_a, enc_b, out), enc_a,
            enc_b)


def _alpha(toward_b) -> float:
    """The slider's share of the way from A (0) to B (1), as the pipeline's alpha (A's weight)."""
    return 1.0 - as_number(toward_b, "the position between A and B")


@gpu
@_keeps_reason("interpolate")
def interpolate(video_a, video_b, toward_b, sweep, aligned, progress=PROGRESS, enc_a=None,
                enc_b=None, request: gr.Request = None):
    """Clip A with w moved towards clip B's (toward_b: 0 is A's w, 1 is B's), or the sweep."""
    pipe = _pipe()
    enc_a, enc_b = _encode_pair(video_a, video_b, aligned, enc_a, enc_b, progress)
    progress(0.7, desc="Decoding and rendering")
    with _user_errors():
        out = pipe.interpolate(enc_a, enc_b, None if sweep else _alpha(toward_b))
    video = pipe.render(out, "interpolate")
    strip = pipe.interpolation_strip(enc_a, enc_b)
    fam_html, fam_json = _pair_familiarity(enc_a, enc_b)
    return (video, _padded(strip), fam_html, fam_json, _notes(enc_a, enc_b, out), enc_a,
            enc_b)


@gpu
@_keeps_reason("interpolate")
def interpolate_alpha(video_a, video_b, toward_b, sweep, aligned, progress=PROGRESS, enc_a=None,
                      enc_b=None, request: gr.Request = None):
    """The slider's event: with both clips encoded in the session, only decodes; the strip
    is redrawn too, so it always shows the current pair."""
    pipe = _pipe()
    enc_a, enc_b = _encode_pair(video_a, video_b, aligned, enc_a, enc_b, progress)
    with _user_errors():
        alpha = None if sweep else _alpha(toward_b)
        progress(0.8, desc="Decoding A with w swept from A's to B's" if sweep else
                 f"Decoding A with w {1 - alpha:.0%} of the way to B's")
        out = pipe.interpolate(enc_a, enc_b, alpha)
    video = pipe.render(out, "interpolate", scale=PREVIEW_SCALE)
    strip = pipe.interpolation_strip(enc_a, enc_b)
    return video, _padded(strip), _notes(enc_a, enc_b, out), enc_a, enc_b


@gpu
@_keeps_reason("denoise")
def denoise(video, region, sigma, percent, aligned, progress=PROGRESS, enc=None,
            request: gr.Request = None):
    """Noise on the mouth or eyes of the central frames; VQ-VAE, V-DSAE and MDVAE repair it."""
    pipe = _pipe()
    if not pipe.reusable(video, enc, aligned=aligned):
        progress(0.05, desc="Reading and encoding the clip")
    with _user_errors("Clip"):
        enc = pipe.encode_file(video, aligned=aligned, reuse=enc)
    progress(0.5, desc="Corrupting and reconstructing")
    with _user_errors():
        frames = central_frames(enc.n_frames, as_number(percent, "percent") / 100)
        result = pipe.denoise(enc.clip, region, sigma, frames)
    video_out = pipe.render_denoise(result)
    rows = [("clean", result.clean), ("noisy", result.noisy), *result.outputs.items()]
    strip = pipe.strip([(name, video[frames]) for name, video in rows], n=6)
    items = [("Clean clip", enc.familiarity)]
    return (video_out, result.table(), _familiarity_html(items), _familiarity_json(items),
            _padded(strip), _notes(enc, result), enc)


def _emotion_example(video, aligned, reference, progress=PROGRESS, request: gr.Request = None):
    """An example row (clip, aligned, neutral clip or none): `emotion` without session state."""
    return emotion(video, aligned, progress, None, reference, None, request=request)


def _emotion_chart(readings) -> str:
    """The models' calibrated probabilities side by side, one row per emotion."""
    if not readings:
        return "<p>This bundle has no emotion heads.</p>"
    legend = " ".join(
        f"<span style='white-space:nowrap'><span style='display:inline-block;width:10px;"
        f"height:10px;background:{MODEL_COLOURS.get(r.title, '#888')}'></span> "
        f"{html.escape(r.title)}</span>" for r in readings)
    rows = []
    for label in readings[0].probabilities:
        bars = "".join(
            f"<div style='display:flex;align-items:center;gap:6px;height:12px'>"
            f"<div style='flex:1;background:#f3f4f6;height:9px'><div style='height:100%;"
            f"width:{100 * r.probabilities[label]:.1f}%;"
            f"background:{MODEL_COLOURS.get(r.title, '#888')}'></div></div>"
            f"<span style='width:34px;text-align:right;font-size:11px'>"
            f"{r.probabilities[label]:.0%}</span></div>" for r in readings)
        cell = "border:none;border-bottom:1px solid #e5e7eb;vertical-align:middle"
        rows.append(f"<tr><td style='{cell};padding:2px 8px 2px 0'>{label}</td>"
                    f"<td style='{cell};width:100%;padding:3px 0'>{bars}</td></tr>")
    return (f"<div id='emotion-chart'><div style='margin-bottom:4px'>{legend}</div>"
            f"<table style='width:100%;border-collapse:collapse;border:none'>{''.join(rows)}"
            f"</table></div>")


def _emotion_verdict(readings) -> str:
    lines = []
    for r in readings:
        label, p = r.top
        if r.answer:
            lines.append(f"**{r.title}: {r.answer}** ({p:.0%})")
        else:
            lines.append(f"**{r.title}: not sure**: {r.reason}")
        if r.note:
            lines.append(r.note)
    return "  \n".join(lines) or "This bundle has no emotion head."


@gpu
@_keeps_reason("emotion")
def emotion(video, aligned, progress=PROGRESS, enc=None, reference=None, enc_ref=None,
            request: gr.Request = None):
    """The 8 emotions' calibrated probabilities from w (the MDVAE's and the unimodal models'),
    each model's answer or "not sure", and the clip's familiarity; given a `reference`, a
    clip of the same person with a neutral face, also the MDVAE's reading against it."""
    pipe = _pipe()
    if not pipe.reusable(video, enc, aligned=aligned):
        progress(0.05, desc="Reading and encoding the clip")
    with _user_errors("Clip"):
        enc = pipe.encode_file(video, aligned=aligned, reuse=enc)
    if reference is None:
        enc_ref = None
    else:
        if not pipe.has_reference_head:
            raise gr.Error(f"This bundle ({pipe.bundle_name}) cannot read an emotion against a "
                           "neutral clip: leave that box empty.")
        if not pipe.reusable(reference, enc_ref, aligned=aligned):
            progress(0.4, desc="Reading and encoding the neutral clip")
        with _user_errors("Neutral clip"):
            enc_ref = pipe.encode_file(reference, aligned=aligned, reuse=enc_ref)
    readings = pipe.emotion_readings(enc, enc_ref)
    items = [("Clip", enc.familiarity)] + ([("Neutral clip", enc_ref.familiarity)]
                                           if enc_ref is not None else [])
    verdict = _emotion_verdict(readings)
    notes = _notes(enc)
    record = pipe.emotion_record(reference=enc_ref is not None)
    result = {"readings": [r.as_dict() for r in readings], **_familiarity_json(items),
              "evaluation": record}
    rows = [("what the model sees", enc.clip.frames)]
    if enc_ref is not None:
        rows = [("the clip", enc.clip.frames), ("the neutral clip", enc_ref.clip.frames)]
    strip = pipe.strip(rows)
    text = verdict + (f"\n\n{notes}" if notes else "") + (f"\n\n{record}" if record else "")
    return (text, _emotion_chart(readings),
            _familiarity_html(items), result, _padded(strip), enc, enc_ref)


def playable(video):
    """An upload browsers cannot preview (.mpg, .avi, .mkv, ...), replaced by an mp4 copy."""
    copy = _pipe().playable_copy(video)
    return gr.skip() if copy is None else str(copy)


# -- the page -----------------------------------------------------------------------------


def _example(name: str) -> str:
    return str(EXAMPLES / name)


def _video(label: str) -> gr.Video:
    # Made before the examples that fill it and placed below them (render() later). No
    # height: a fixed one cuts the upload and webcam buttons below a loaded clip in half.
    return gr.Video(label=label, sources=["upload", "webcam"], include_audio=True, render=False)


def _image(label: str) -> gr.Image:
    # png: crisp frame strips; the label is not drawn over the image (its titles are).
    return gr.Image(label=label, type="numpy", format="png", show_label=False, render=False,
                    buttons=["download", "fullscreen"])


def _result_video(label: str, elem_id: str, height: int = 320) -> gr.Video:
    return gr.Video(label=label, height=height, elem_id=elem_id, render=False)


def _familiarity_box(elem_id: str) -> tuple[gr.HTML, gr.JSON]:
    return (gr.HTML(elem_id=elem_id, render=False),
            gr.JSON(label="familiarity", visible=False, render=False))


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


def _status(elem_id: str) -> gr.HTML:
    return gr.HTML(elem_id=elem_id, render=False)


def build_demo(pipeline: Pipeline | None = None) -> gr.Blocks:
    """The Blocks app around `pipeline` (default: Pipeline(), i.e. $MDVAE_BUNDLE or
    checkpoints/)."""
    global _pipeline
    _pipeline = pipeline if pipeline is not None else Pipeline()
    pipe = _pipeline
    group_choices = [(f"{g}: {GROUP_MEANING[g]}", g) for g in GROUPS]

    with gr.Blocks(title="VQ-MDVAE", delete_cache=(300, CACHE_AGE_S)) as demo:
        gr.Markdown(INTRO.format(max_s=pipe.max_seconds), elem_id="intro")
        with gr.Accordion("The model, its training data and the words on this page",
                          open=False):
            gr.Markdown(pipe.description, elem_id="bundle-info")
            gr.Markdown(GLOSSARY, elem_id="glossary")
        aligned = gr.Checkbox(
            value=False, label="Clips are already aligned face crops (skip face detection)",
            info="The examples tick it. Otherwise the face is found, tracked and cropped; "
                 "an upload or a recording unticks it.")

        with gr.Tab("Swap"):
            swap_video = _result_video("A with B's groups (sound by Griffin-Lim)", "swap-result")
            swap_strip = _image("Frames: A, B, result")
            swap_fam, swap_fam_json = _familiarity_box("swap-familiarity")
            swap_notes = gr.Markdown(render=False)
            swap_state = (_state(), _state())
            swap_outputs = [swap_video, swap_strip, swap_fam, swap_fam_json, swap_notes,
                            *swap_state]
            swap_a, swap_b = _video("Clip A"), _video("Clip B")
            swap_groups = gr.CheckboxGroup(group_choices, value=["z_av"], render=False,
                                           label="Take these latent groups from clip B")
            swap_inputs = [swap_a, swap_b, swap_groups, aligned]
            # The button's event first, so the API names go to it, not to the examples.
            swap_button = gr.Button("Swap", variant="primary", render=False)
            swap_status = _status("swap-status")
            _status_line(swap_button.click(swap, [*swap_inputs, *swap_state], swap_outputs,
                                           api_name="swap"), "swap", swap_status)
            examples = gr.Examples(
                [[_example("spk02_happy.mp4"), _example("spk05_sad.mp4"), ["z_av"], True],
                 [_example("spk07_angry.mp4"), _example("spk21_surprised.mp4"), ["w"], True],
                 [_example("spk49_disgusted.mp4"), _example("spk37_neutral.mp4"),
                  ["z_v"], True]],
                swap_inputs, swap_outputs, fn=swap, run_on_click=True, cache_examples=False,
                example_labels=["lips of B (z_av)", "identity and emotion of B (w)",
                                "head motion and blinks of B (z_v)"])
            _cleared_by(examples, swap_status)
            with gr.Row():
                swap_a.render()
                swap_b.render()
            swap_groups.render()
            swap_button.render()
            swap_status.render()
            swap_fam.render()
            with gr.Row():
                swap_video.render()
                swap_strip.render()
            swap_notes.render()
            swap_fam_json.render()

        with gr.Tab("Interpolate w"):
            interp_video = _result_video("A with the interpolated w", "interp-result")
            interp_strip = _image("Middle frame of A from w_A to w_B")
            interp_fam, interp_fam_json = _familiarity_box("interp-familiarity")
            interp_notes = gr.Markdown(render=False)
            interp_state = (_state(), _state())
            interp_outputs = [interp_video, interp_strip, interp_fam, interp_fam_json,
                              interp_notes, *interp_state]
            interp_a, interp_b = _video("Clip A"), _video("Clip B")
            toward_b = _slider(0.0, 1.0, value=0.5, step=0.05, render=False,
                               elem_id="interp-slider",
                               label="w from A's (0, left) to B's (1, right)",
                               info="A's motion with w = (1 - x) w_A + x w_B. Releasing "
                                    "the slider only decodes.")
            sweep = gr.Checkbox(value=False, label="Sweep", render=False,
                                info="w goes from A's to B's over the clip (the seed's "
                                     "interpolation)")
            interp_inputs = [interp_a, interp_b, toward_b, sweep, aligned]
            # The button's event first, so the API names go to it, not to the examples.
            interp_button = gr.Button("Interpolate", variant="primary", render=False)
            interp_status = _status("interp-status")
            _status_line(interp_button.click(interpolate, [*interp_inputs, *interp_state],
                                             interp_outputs, api_name="interpolate"),
                         "interpolate", interp_status)
            examples = gr.Examples(
                [[_example("spk02_happy.mp4"), _example("spk07_angry.mp4"), 0.5, False, True],
                 [_example("spk05_sad.mp4"), _example("spk21_surprised.mp4"), 0.5, True, True]],
                interp_inputs, interp_outputs, fn=interpolate, run_on_click=True,
                cache_examples=False,
                example_labels=["happy speaker 2 halfway to angry speaker 7",
                                "sad speaker 5 sweeping to surprised speaker 21"])
            _cleared_by(examples, interp_status)
            with gr.Row():
                interp_a.render()
                interp_b.render()
            with gr.Row():
                toward_b.render()
                sweep.render()
            interp_button.render()
            interp_status.render()
            interp_fam.render()
            with gr.Row():
                interp_video.render()
                interp_strip.render()
            interp_notes.render()
            interp_fam_json.render()
            _status_line(gr.on([toward_b.release, sweep.input], interpolate_alpha,
                               [*interp_inputs, *interp_state],
                               [interp_video, interp_strip, interp_notes, *interp_state],
                               api_visibility="private", trigger_mode="always_last"),
                         "interpolate", interp_status)
            # A new clip A or B: the results of the old pair go, so none describes it.
            gr.on([interp_a.change, interp_b.change], lambda: (None, None, "", ""), None,
                  [interp_video, interp_strip, interp_fam, interp_notes],
                  api_visibility="private", queue=False)

        with gr.Tab("Denoise"):
            den_video = gr.Video(label="Comparison", show_label=False, height=260,
                                 elem_id="den-result", render=False, buttons=[])
            den_table = gr.Dataframe(headers=["method", "PSNR (dB)", "SSIM"],
                                     label="On the corrupted pixels", interactive=False,
                                     render=False)
            den_strip = _image("Corrupted frames")
            den_fam, den_fam_json = _familiarity_box("den-familiarity")
            den_notes = gr.Markdown(render=False)
            den_state = _state()
            den_outputs = [den_video, den_table, den_fam, den_fam_json, den_strip, den_notes,
                           den_state]
            den_video_in = _video("Clip")
            region = gr.Radio(list(REGIONS), value="mouth", label="Corrupted region",
                              render=False)
            sigma = _slider(0.05, 1.0, value=0.3, step=0.05, label="Noise std (sigma)",
                            info="Gaussian noise, in units of the pixel range [0, 1]",
                            render=False)
            percent = _slider(10, 100, value=60, step=5, render=False,
                              label="Corrupted frames (% of the clip, centred)",
                              info="60 % matches the seed's 6 central frames of 10")
            den_inputs = [den_video_in, region, sigma, percent, aligned]
            # The button's event first, so the API names go to it, not to the examples.
            den_button = gr.Button("Corrupt and denoise", variant="primary", render=False)
            den_status = _status("den-status")
            _status_line(den_button.click(denoise, [*den_inputs, den_state], den_outputs,
                                          api_name="denoise"), "denoise", den_status)
            examples = gr.Examples(
                [[_example("spk21_surprised.mp4"), "mouth", 0.3, 60, True],
                 [_example("spk05_sad.mp4"), "eyes", 0.5, 60, True]],
                den_inputs, den_outputs, fn=denoise, run_on_click=True, cache_examples=False,
                example_labels=["noisy mouth", "noisy eyes"])
            _cleared_by(examples, den_status)
            with gr.Row():
                den_video_in.render()
                with gr.Column():
                    region.render()
                    sigma.render()
                    percent.render()
            den_button.render()
            den_status.render()
            gr.Markdown("**Clean | noisy | each model's repair**, with the clip's own sound; "
                        "the first half second holds the middle corrupted frame.")
            den_video.render()
            with gr.Row():
                with gr.Column():
                    den_fam.render()
                    den_table.render()
                den_strip.render()
            den_notes.render()
            den_fam_json.render()

        with gr.Tab("Emotion"):
            emo_verdict = gr.Markdown(elem_id="emo-result", render=False)
            emo_chart = gr.HTML(elem_id="emo-chart", render=False)
            emo_fam, emo_json = _familiarity_box("emo-familiarity")
            emo_strip = _image("Face crops read by the model")
            emo_state, emo_ref_state = _state(), _state()
            emo_outputs = [emo_verdict, emo_chart, emo_fam, emo_json, emo_strip, emo_state,
                           emo_ref_state]
            emo_video_in = _video("Clip")
            emo_video_in.elem_id = "emo-input"
            emo_ref_in = _video("Neutral clip (optional)")
            emo_ref_in.elem_id = "emo-reference"
            emo_inputs = [emo_video_in, aligned, emo_ref_in]
            # The button's event first, so the API names go to it, not to the examples.
            emo_button = gr.Button("Predict the emotion", variant="primary", render=False)
            emo_status = _status("emo-status")
            _status_line(emo_button.click(emotion, [emo_video_in, aligned, emo_state, emo_ref_in,
                                                    emo_ref_state], emo_outputs,
                                          api_name="emotion"), "emotion", emo_status)
            with gr.Row():
                emo_video_in.render()
                emo_ref_in.render()
                with gr.Column():
                    rows = [[_example(name), True, None]
                            for name in ("spk02_happy.mp4", "spk05_sad.mp4", "spk07_angry.mp4",
                                         "spk49_disgusted.mp4")]
                    rows.append([_example("spk02_sad_faint.mp4"), True,
                                 _example("spk02_neutral.mp4")])
                    examples = gr.Examples(
                        rows, emo_inputs, emo_outputs, fn=_emotion_example, run_on_click=True,
                        cache_examples=False,
                        example_labels=["happy", "sad", "angry", "disgusted",
                                        "faint sadness, with the same person's neutral clip"])
                    _cleared_by(examples, emo_status)
                    emo_button.render()
                    emo_status.render()
                    emo_fam.render()
                    emo_verdict.render()
            gr.Markdown(
                f"Each model reads the emotion from its w, with probabilities calibrated on "
                f"held-out speakers: the MDVAE from face and voice, the A-DSAE from the voice "
                f"alone, the V-DSAE from the face alone. A model says **not sure** when the "
                f"clip is unfamiliar or no emotion reaches {SURE_FROM:.0%}. One clip of a new "
                f"face mixes who they are with how they feel: give a **neutral clip** of the same "
                f"person with a neutral face, and the MDVAE also reads the first against it.")
            emo_chart.render()
            emo_strip.render()
            emo_json.render()

        # Uploads and recordings default to face detection; examples (which also set the
        # box) fire neither event. An upload browsers cannot play is shown as an mp4 copy.
        videos = [swap_a, swap_b, interp_a, interp_b, den_video_in, emo_video_in,
                  emo_ref_in]
        gr.on([e for v in videos for e in (v.upload, v.stop_recording)], lambda: False,
              None, aligned, api_visibility="private", queue=False)
        for v in videos:
            v.upload(playable, v, v, api_visibility="private")

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
