"""The Gradio app, launched in-process on the tiny bundle and driven through gradio_client
(and, where Debian's chromium is installed, through a headless browser)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file

import app
from mdvae.labels import EMOTIONS
from mdvae.media.video import normalize_clip
from mdvae.pipeline import GROUPS, Pipeline
from tests.helpers import CLIP_A, CLIP_B, EXAMPLES, assert_playable_with_sound

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
# gradio's Dataframe postprocessing uses pandas options that pandas 3 deprecates
pytestmark = [pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting'"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]
MAX_SECONDS = 4.0  # small limits, so the long and over-size cases stay cheap
MAX_FILE_MB = 1.0
DEMO: dict[str, gr.Blocks] = {}  # the served app, for the tests that look inside it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tiny_bundle, tmp_path_factory):
    """(url, pipeline) of the app running in this process, its cache in a folder of its own."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the app runs by default (MDVAE_TORCH_THREADS)
    pipe = Pipeline(tiny_bundle, device="cpu", max_seconds=MAX_SECONDS, max_file_mb=MAX_FILE_MB)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GRADIO_ANALYTICS_ENABLED", "False")  # no network here
        env.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))
        demo = app.build_demo(pipe)
        DEMO["demo"] = demo
        port = _free_port()
        app.launch(demo, server_port=port, prevent_thread_lock=True, quiet=True)
        try:
            yield f"http://127.0.0.1:{port}/", pipe
        finally:
            demo.close()
            pipe.close()
            torch.set_num_threads(threads)


def _client(url: str) -> Client:
    # Generous timeouts: the machine running the suite may be busy with other work.
    return Client(url, verbose=False, analytics_enabled=False,
                  httpx_kwargs={"timeout": 300})


@pytest.fixture(scope="module")
def client(served):
    return _client(served[0])


def test_examples_are_small_held_out_clips_with_sound():
    index = json.loads((EXAMPLES / "index.json").read_text())
    files = [EXAMPLES / c["name"] for c in index["clips"]]
    # ~630 KB: sound at 128 kb/s AAC keeps their voices among the test clips on the familiarity
    # score (make_examples.py)
    assert sum(f.stat().st_size for f in files) < 650 * 1024
    for f in files:
        assert_playable_with_sound(f)
    offered = set(re.findall(r'_example\("([^"]+)"\)', Path(app.__file__).read_text()))
    assert offered and offered <= {f.name for f in files}


def test_api_lists_the_four_endpoints(client):
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert {"/swap", "/interpolate", "/denoise", "/emotion"} <= set(endpoints)
    swap = [p["parameter_name"] for p in endpoints["/swap"]["parameters"]]
    assert swap == ["video_a", "video_b", "groups", "aligned"]  # session state is not API


def test_swap_endpoint_matches_a_direct_render(client, served):
    _, pipe = served
    video, strip, gauge, familiarity, notes = client.predict(
        handle_file(str(CLIP_A)), handle_file(str(CLIP_B)), list(GROUPS), True,
        api_name="/swap")
    assert_playable_with_sound(video)
    assert Path(strip).is_file() and "cut to the first 2.50 s" in notes
    # The tiny bundle has no reference table: the page and the API say so.
    assert set(familiarity) == {"Clip A", "Clip B"} and "Clip A" in gauge
    assert familiarity["Clip A"]["level"] == "unknown"
    assert set(familiarity["Clip A"]["scores"]) == {"mdvae", "mdvae_audio", "vq_visual",
                                                    "vq_audio"}
    # Every group from B: B's reconstruction, as the pipeline renders it directly.
    enc_b = pipe.encode(pipe.load(CLIP_B, aligned=True))
    direct = pipe.render(pipe.reconstruct(enc_b), "direct")
    got, want = normalize_clip(video), normalize_clip(direct)
    assert got.frames.shape == want.frames.shape == (75, 256, 256, 3)
    assert np.abs(got.frames.astype(int) - want.frames).mean() < 1.0
    np.testing.assert_allclose(got.audio, want.audio, atol=1e-3)


def test_interpolate_endpoint_and_slider_reuses_the_session(client):
    video, strip, _, _, _ = client.predict(handle_file(str(CLIP_A)), handle_file(str(CLIP_B)),
                                           0.25, False, True, api_name="/interpolate")
    assert_playable_with_sound(video)
    assert Path(strip).is_file()
    # The slider's function: with both encodings given, nothing is loaded again.
    *_, enc_a, enc_b = app.interpolate(str(CLIP_A), str(CLIP_B), 0.5, False, True)
    start = time.perf_counter()
    video2, strip2, _, enc_a2, enc_b2 = app.interpolate_alpha(
        str(CLIP_A), str(CLIP_B), 0.9, False, True, app.PROGRESS, enc_a, enc_b)
    assert enc_a2 is enc_a and enc_b2 is enc_b
    assert strip2.shape[2] == 3  # the strip is redrawn for the current pair
    assert_playable_with_sound(video2)
    assert normalize_clip(video2).frames.shape[1:3] == (128, 128)  # the slider's preview size
    print(f"slider decode + render: {time.perf_counter() - start:.2f} s")


def test_denoise_endpoint(client):
    video, table, gauge, familiarity, strip, _ = client.predict(
        handle_file(str(CLIP_A)), "eyes", 0.5, 60, True, api_name="/denoise")
    assert_playable_with_sound(video)
    assert [row[0] for row in table["data"]] == ["noisy input", "VQ-VAE", "V-DSAE", "MDVAE"]
    assert Path(strip).is_file()
    assert "Clean clip" in gauge and "Clean clip" in familiarity


def test_emotion_endpoint_and_five_clients_at_once(served, monkeypatch):
    # a bundle that carries its evaluation on held-out speakers: the tab quotes it
    summary = {"emotion_accuracy_mdvae_1": 0.5, "emotion_accuracy_dsae_visual_1": 0.6}
    monkeypatch.setitem(served[1].bundle.info, "evaluation", {"summary": summary})
    record = served[1].emotion_record()
    assert "takes little from the voice" in record

    def ask(_):
        text, chart, _, result, strip = _client(served[0]).predict(
            handle_file(str(CLIP_A)), True, api_name="/emotion")
        return result, text, chart

    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(ask, range(5)))
    for result, text, chart in answers:
        readings = result["readings"]
        assert [r["title"] for r in readings] == ["MDVAE", "A-DSAE (voice)", "V-DSAE (face)"]
        for r in readings:
            probs = r["probabilities"]
            assert set(probs) == set(EMOTIONS)
            assert sum(probs.values()) == pytest.approx(1, abs=1e-4)
            # an answer, or "not sure" with its reason
            assert (r["answer"] in EMOTIONS) != bool(r["reason"])
        assert "A-DSAE" in text and "V-DSAE" in text and "emotion-chart" in chart
        assert result["evaluation"] == record and record in text
    assert all(a == answers[0] for a in answers)


def test_emotion_endpoint_reads_a_clip_against_a_neutral_one(client, served, bad_inputs):
    """`/emotion` with a second clip of the same person: a fourth reading, against it, with
    its same-person check; both clips' familiarity; a bad second clip is named as such."""
    text, chart, gauge, result, strip = client.predict(
        handle_file(str(CLIP_A)), True, handle_file(str(CLIP_B)), api_name="/emotion")
    readings = result["readings"]
    assert [r["title"] for r in readings][-1] == app.REFERENCE_TITLE
    against = readings[-1]
    assert set(against["probabilities"]) == set(EMOTIONS)
    assert against["same_person"]["within"] == (
        served[1].bundle["emotion_reference"].config.same_person_within)
    assert (against["answer"] in EMOTIONS) != bool(against["reason"])
    assert app.REFERENCE_TITLE in text and app.REFERENCE_TITLE in chart
    assert "Neutral clip" in gauge and {"Clip", "Neutral clip"} <= set(result)
    with pytest.raises(Exception, match="Neutral clip.*has no audio track"):
        client.predict(handle_file(str(CLIP_A)), True, handle_file(str(bad_inputs["no_audio"])),
                       api_name="/emotion")


@pytest.mark.parametrize("case, aligned, message", [
    ("not_a_video", False, "is not a video"),
    ("no_audio", True, "has no audio track"),
    ("no_face", False, "no face found"),
    ("too_short", True, "too short"),
])
def test_bad_inputs_refused_with_the_pipeline_message(client, bad_inputs, case, aligned,
                                                      message):
    with pytest.raises(Exception, match=message):
        client.predict(handle_file(str(bad_inputs[case])), aligned, api_name="/emotion")


def test_an_error_reason_waits_for_its_tab_status_line(served, bad_inputs):
    """A failed event writes no outputs: the reason is kept per session and tab, read once
    by the status line's failure event, escaped, and bounded in number."""
    request = gr.Request(session_hash="visitor-1")
    with pytest.raises(gr.Error, match="has no audio track"):
        app.emotion(str(bad_inputs["no_audio"]), True, app.PROGRESS, None, request=request)
    assert app._REASONS.take("swap", "visitor-1") is None  # another tab's line stays empty
    reason = app._REASONS.take("emotion", "visitor-1")
    assert "has no audio track" in reason
    assert app._REASONS.take("emotion", "visitor-1") is None  # read once
    assert "has no audio track" in app._status_html(reason)
    assert "&lt;b&gt;" in app._status_html("<b>file</b>")
    reasons = app._Reasons(capacity=2)
    for i in range(3):
        reasons.keep("emotion", f"s{i}", f"reason {i}")
    assert reasons.take("emotion", "s0") is None and reasons.take("emotion", "s2") == "reason 2"


def test_long_clip_trimmed_and_huge_clip_handled(client, bad_inputs):
    text, *_ = client.predict(handle_file(str(bad_inputs["long"])), True,
                              api_name="/emotion")
    assert f"only its first {MAX_SECONDS:g} s are used" in text
    _, _, _, result, _ = client.predict(handle_file(str(bad_inputs["huge"])), False,
                                        api_name="/emotion")
    assert len(result["readings"][0]["probabilities"]) == len(EMOTIONS)


def test_upload_over_the_size_cap_refused(client, tmp_path):
    big = tmp_path / "big.mp4"
    big.write_bytes(CLIP_A.read_bytes() + bytes(int(1.5 * 2**20)))
    with pytest.raises(Exception, match="exceeds the maximum file size"):
        client.predict(handle_file(str(big)), True, api_name="/emotion")


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason=f"{CHROMIUM} is not installed")
def test_page_in_headless_chromium_swap_slider_and_error(served, tmp_path, bad_inputs):
    """A visitor's path: a swap example, the interpolation slider, then a bad upload whose
    reason stays in the tab's status line after Gradio's toast has faded (10 s), until an
    example runs."""
    from playwright.sync_api import sync_playwright

    shots = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(served[0], wait_until="load")
            page.wait_for_selector("#intro", timeout=60_000)
            example = page.get_by_text("lips of B (z_av)", exact=True).first
            example.wait_for(timeout=60_000)  # the page may still be drawing on a busy machine
            assert example.is_visible() and example.bounding_box()["y"] < 900  # no scrolling
            example.click()
            page.wait_for_selector("#swap-result video[src]", timeout=120_000)
            assert "Clip A" in page.locator("#swap-familiarity").inner_text()
            shots.append(tmp_path / "swap.png")
            page.screenshot(path=str(shots[-1]), full_page=True)

            page.get_by_role("tab", name="Interpolate w").first.click()
            page.get_by_text("happy speaker 2 halfway to angry speaker 7", exact=True).click()
            page.wait_for_selector("#interp-result video[src]", timeout=120_000)
            video = page.locator("#interp-result video")
            first = video.get_attribute("src")
            slider = page.locator("#interp-slider input[type=range]")
            slider.fill("0.9")
            slider.dispatch_event("change")
            slider.dispatch_event("pointerup")
            page.wait_for_function(
                "s => { const v = document.querySelector('#interp-result video');"
                " return v && v.getAttribute('src') && v.getAttribute('src') !== s; }",
                arg=first, timeout=120_000)
            shots.append(tmp_path / "slider.png")
            page.screenshot(path=str(shots[-1]), full_page=True)

            page.get_by_role("tab", name="Emotion").first.click()
            page.locator("#emo-input input[type=file]").set_input_files(
                str(bad_inputs["no_audio"]))
            page.get_by_role("button", name="Predict the emotion").click()
            toast = page.get_by_test_id("toast-body").filter(has_text="has no audio track")
            toast.first.wait_for(timeout=60_000)
            status = page.locator("#emo-status")
            status.get_by_text("has no audio track").wait_for(timeout=30_000)
            page.wait_for_timeout(1_000)  # the toast's fade-in, for a readable picture
            shots.append(tmp_path / "error.png")
            page.screenshot(path=str(shots[-1]))
            toast.first.wait_for(state="detached", timeout=30_000)  # the toast has faded...
            assert toast.count() == 0
            # ... and the reason is still on the page, under the tab's button
            assert "has no audio track" in status.inner_text() and status.is_visible()
            shots.append(tmp_path / "error_after_toast.png")
            page.screenshot(path=str(shots[-1]))
            page.get_by_text("happy", exact=True).filter(visible=True).first.click()  # cleared
            page.wait_for_function(
                "() => !document.querySelector('#emo-status').innerText.includes('Not done')",
                timeout=120_000)
        finally:
            browser.close()
    from PIL import Image

    for shot in shots:
        pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
        assert pixels.shape[0] > 800 and pixels.std() > 20  # not a blank page
    print(f"screenshots: {[str(s) for s in shots]}")


# -- limits on what a caller can make the server keep --------------------------------------


def test_session_states_expire_and_sessions_are_capped(client):
    demo = DEMO["demo"]
    states = [b for b in demo.blocks.values() if isinstance(b, gr.State)]
    # two per two-clip tab, one for Denoise, two for Emotion (the clip and its neutral one)
    assert len(states) == 7 and all(s.time_to_live == app.SESSION_TTL_S for s in states)
    assert 0 < app.SESSION_TTL_S < float("inf")
    assert demo.state_session_capacity == app.MAX_SESSIONS <= 64
    client.predict(handle_file(str(CLIP_A)), True, api_name="/emotion")
    holder = demo.state_holder
    session = holder.session_data[client.session_hash]
    assert any(v is not None for v in session.state_data.values())  # the encoding is kept
    for key, (ttl, created) in list(session._state_ttl.items()):  # ... until its time is up
        session._state_ttl[key] = (ttl, created - timedelta(seconds=ttl + 1))
    holder.delete_all_expired_state()
    assert not session.state_data


def test_each_result_is_written_once(client, served):
    _, pipe = served
    video, *_ = client.predict(handle_file(str(CLIP_A)), handle_file(str(CLIP_B)), ["w"],
                               True, api_name="/swap")
    name = Path(video).name  # the pipeline's unique name, swap-<random>.mp4
    assert name.startswith("swap-") and (pipe.tmp_dir / name).is_file()
    cache = Path(DEMO["demo"].GRADIO_CACHE)
    assert pipe.tmp_dir.parent == cache  # written where Gradio serves it from, not copied
    copies = {p.resolve() for folder in (cache, pipe.tmp_dir) for p in folder.rglob(name)}
    assert copies == {(pipe.tmp_dir / name).resolve()}


def test_gradio_cache_bounded_by_size(served, monkeypatch):
    demo = DEMO["demo"]
    cache = Path(demo.GRADIO_CACHE)
    olds = []
    for i in range(6):
        path = cache / f"fake{i}" / "upload.mp4"
        path.parent.mkdir()
        path.write_bytes(bytes(2**20))
        then = time.time() - 300 + i
        os.utime(path, (then, then))
        olds.append(path)
    kept = [Path(f) for b in demo.blocks.values() for f in getattr(b, "keep_in_cache", ())]
    left = app.prune_cache(demo, max_mb=2.5)
    assert left <= 2.5 * 2**20 or all(p.exists() for p in kept)
    assert not olds[0].exists() and sum(p.exists() for p in olds) <= 2
    assert all(p.exists() for p in kept)  # the examples' copies stay


def test_text_for_alpha_is_a_specific_error(client):
    with pytest.raises(gr.Error, match="position between A and B must be a number, got 'x'"):
        app.interpolate(str(CLIP_A), str(CLIP_B), "x", False, True)
    with pytest.raises(Exception, match=r"to B's \(1, right\) must be a number from 0 to 1, "
                                        r"got 'x'"):
        client.predict(handle_file(str(CLIP_A)), handle_file(str(CLIP_B)), "x", False, True,
                       api_name="/interpolate")
    with pytest.raises(Exception, match=r"Noise std \(sigma\) must be a number from 0.05 to 1"):
        client.predict(handle_file(str(CLIP_A)), "eyes", "x", 60, True, api_name="/denoise")


@pytest.mark.slow
def test_sigterm_removes_the_temporary_folders(tiny_bundle, tmp_path):
    env = dict(os.environ, MDVAE_BUNDLE=str(tiny_bundle), GRADIO_SERVER_PORT=str(_free_port()),
               GRADIO_TEMP_DIR=str(tmp_path / "gradio"), TMPDIR=str(tmp_path / "tmp"),
               GRADIO_ANALYTICS_ENABLED="False", MDVAE_TORCH_THREADS="1")
    (tmp_path / "tmp").mkdir()
    root = Path(app.__file__).parent
    server = subprocess.Popen([sys.executable, "app.py"], cwd=root, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while not list((tmp_path / "gradio").glob("mdvae-app-*")) and time.time() < deadline:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            time.sleep(0.5)
        assert list((tmp_path / "gradio").glob("mdvae-app-*")), "the app did not start"
        time.sleep(2)  # serving
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) != -signal.SIGTERM  # it exited on its own terms
    finally:
        if server.poll() is None:
            server.kill()
    assert not list((tmp_path / "gradio").glob("mdvae-app-*"))
    assert not list((tmp_path / "tmp").glob("mdvae-*"))
