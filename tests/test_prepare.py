"""`python -m train.prepare` end to end on tiny synthetic, MEAD-like and RAVDESS-like data.

The fake MEAD and RAVDESS trees hold real media: synthetic clips written as H.264 mp4
(MEAD's audio as a separate AAC .m4a), which the Haar face detector finds.
"""

import io
import json
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import soundfile

import train.prepare as prepare
from mdvae.data.store import Store, assign_splits
from mdvae.data.synthetic import generate_clip
from mdvae.media.audio import align_streams, power_spectrogram
from mdvae.media.video import write_video

N_FRAMES = 36  # 1.2 s: over load_av_clip's 1 s minimum


def clip_media(tmp, speaker, emotion, level, seed):
    """(mp4 bytes without sound, m4a bytes, mp4 bytes with sound) of one synthetic clip."""
    clip = generate_clip(speaker, emotion, level, seed, n_frames=N_FRAMES)
    silent = write_video(tmp / f"{seed}.mp4", clip.frames, None, scale=4)
    voiced = write_video(tmp / f"{seed}_av.mp4", clip.frames, clip.audio, scale=4)
    soundfile.write(tmp / f"{seed}.wav", clip.audio, 16000)
    subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-v",
            "error",
            "-y",
            "-i",
            str(tmp / f"{seed}.wav"),
            "-c:a",
            "aac",
            str(tmp / f"{seed}.m4a"),
        ],
        check=True,
    )
    return silent.read_bytes(), (tmp / f"{seed}.m4a").read_bytes(), voiced.read_bytes()


def put(root, rel, data):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.fixture(scope="module")
def mead_root(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("media")
    root = tmp_path_factory.mktemp("MEAD")
    video, audio, _ = clip_media(tmp, 0, "angry", 1, 1)
    put(root, "M003/video/front/angry/level_1/001.mp4", video)
    put(root, "M003/audio/angry/level_1/001.m4a", audio)
    video, _, _ = clip_media(tmp, 0, "neutral", 1, 2)
    put(root, "M003/video/front/neutral/level_1/002.mp4", video)  # its .m4a is missing
    blank = np.full((N_FRAMES, 64, 64, 3), 128, np.uint8)  # no face in it
    put(
        root,
        "M003/video/front/angry/level_2/003.mp4",
        write_video(tmp / "blank.mp4", blank, None).read_bytes(),
    )
    put(root, "M003/audio/angry/level_2/003.m4a", audio)
    # W009 packed as one tar
    video, audio, _ = clip_media(tmp, 1, "happy", 3, 3)
    with tarfile.open(root / "W009.tar", "w") as t:
        for name, data in (
            ("W009/video/front/happy/level_3/001.mp4", video),
            ("W009/audio/happy/level_3/001.m4a", audio),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    # M011 with an extra level and capitalised folder names
    video, audio, _ = clip_media(tmp, 2, "sad", 2, 4)
    put(root, "m011/M011/Video/Front/Sad/Level_2/001.mp4", video)
    put(root, "m011/M011/Audio/Sad/Level_2/001.m4a", audio)
    return root


def mead_args(root, out, workers):
    return [
        "mead",
        "--root",
        str(root),
        "--out",
        str(out),
        "--workers",
        str(workers),
        "--val-speakers",
        "W009",
        "--test-speakers",
        "M011",
        "--face-backend",
        "haar",
    ]


@pytest.fixture(scope="module")
def mead_store(mead_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("stores") / "mead"
    assert prepare.main(mead_args(mead_root, out, workers=2)) == 0
    return out


@pytest.mark.slow
def test_prepare_mead(mead_store, capsys):
    store = Store(mead_store)
    rows = {c.id: c for c in store.clips}
    assert sorted(rows) == [
        "M003/angry/level_1/001",
        "M011/sad/level_2/001",
        "W009/happy/level_3/001",
    ]
    row = rows["W009/happy/level_3/001"]
    assert (row.speaker, row.emotion, row.level, row.split) == ("W009", "happy", 3, "val")
    assert (rows["M011/sad/level_2/001"].split, rows["M003/angry/level_1/001"].split) == (
        "test",
        "train",
    )
    assert row.source == "W009/W009/video/front/happy/level_3/001.mp4"
    assert all(c.length >= 30 for c in store.clips) and store.factors == {}
    assert store.frames.shape == (store.n_frames, 64, 64, 3) and store.power.max() > 0

    report = json.loads((mead_store / "prepare_report.json").read_text())
    assert report["added"] == 3 and not report["interrupted"]
    reasons = {s["item"]: s["reason"] for s in report["skipped"]}
    assert sorted(reasons) == [
        "M003/video/front/angry/level_2/003.mp4",
        "M003/video/front/neutral/level_1/002.mp4",
    ]
    assert reasons["M003/video/front/neutral/level_1/002.mp4"].startswith("no audio file")
    assert "no face found" in reasons["M003/video/front/angry/level_2/003.mp4"]

    # a clear error for a root that is not there
    assert prepare.main(mead_args(mead_store.parent / "missing", mead_store, 0)) == 1
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_prepare_interrupted_and_resumed(mead_root, mead_store, tmp_path, monkeypatch):
    out = tmp_path / "mead"
    work, calls = prepare._work, []

    def interrupt_second(job):
        calls.append(job.clip_id)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return work(job)

    monkeypatch.setattr(prepare, "_work", interrupt_second)
    assert prepare.main(mead_args(mead_root, out, workers=0)) == 130
    assert json.loads((out / "prepare_report.json").read_text())["interrupted"]
    assert [c.id for c in Store(out).clips] == ["M003/angry/level_1/001"]
    monkeypatch.undo()

    assert prepare.main(mead_args(mead_root, out, workers=0)) == 0
    report = json.loads((out / "prepare_report.json").read_text())
    assert (report["already_in_store"], report["added"]) == (1, 2)
    # the same store as the uninterrupted run with 2 workers, byte for byte
    for name in ("frames.bin", "power.bin", "clips.jsonl"):
        assert (out / name).read_bytes() == (mead_store / name).read_bytes(), name


@pytest.mark.slow
def test_prepare_ravdess(tmp_path):
    root = tmp_path / "RAVDESS"
    for actor, emotion, intensity, seed in (
        ("01", "03", "02", 1),
        ("02", "02", "01", 2),
        ("03", "05", "01", 3),
    ):
        _, _, voiced = clip_media(tmp_path, int(actor), "neutral", 1, seed)
        put(root, f"Actor_{actor}/01-01-{emotion}-{intensity}-01-01-{actor}.mp4", voiced)
    put(root, "Actor_01/02-01-03-02-01-01-01.mp4", b"video-only copy: left out")
    out = tmp_path / "store"
    assert (
        prepare.main(
            [
                "ravdess",
                "--root",
                str(root),
                "--out",
                str(out),
                "--workers",
                "0",
                "--face-backend",
                "haar",
                "--seed",
                "5",
            ]
        )
        == 0
    )
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["ignored"] == {"video-only (modality 02)": 1} and report["skipped"] == []
    store = Store(out)
    rows = {c.id: c for c in store.clips}
    splits = assign_splits(["ravdess_01", "ravdess_02", "ravdess_03"], val=1, test=1, seed=5)
    happy = rows["01-01-03-02-01-01-01"]
    assert (happy.speaker, happy.emotion, happy.level) == ("ravdess_01", "happy", 2)
    calm = rows["01-01-02-01-01-01-02"]
    assert calm.emotion is None and calm.extra["label"] == "calm" and calm.level == 1
    assert rows["01-01-05-01-01-01-03"].emotion == "angry"
    assert {c.speaker: c.split for c in store.clips} == splits

    # the same tree as a plain video folder: no labels, the junk file is reported
    out = tmp_path / "videos"
    assert (
        prepare.main(
            [
                "videos",
                "--root",
                str(root),
                "--out",
                str(out),
                "--workers",
                "0",
                "--face-backend",
                "haar",
            ]
        )
        == 0
    )
    store = Store(out)
    assert sorted(store.speakers("train")) == ["Actor_01", "Actor_02", "Actor_03"]
    assert all(c.emotion is None and c.level is None for c in store.clips)
    (skip,) = json.loads((out / "prepare_report.json").read_text())["skipped"]
    assert skip["item"] == "Actor_01/02-01-03-02-01-01-01.mp4" and "not a video" in skip["reason"]


def test_prepare_synthetic(tmp_path, capsys):
    out = tmp_path / "synthetic"

    def args(clips=3, frames=12):
        return [
            "synthetic",
            "--out",
            str(out),
            "--speakers",
            "3",
            "--clips-per-speaker",
            str(clips),
            "--frames",
            str(frames),
            "--workers",
            "2",
            "--seed",
            "4",
        ]

    assert prepare.main(args()) == 0
    store = Store(out)
    assert len(store.clips) == 9 and store.n_frames == 9 * 12
    assert sorted(store.factors) == [
        "blink",
        "eyes_box",
        "f0",
        "head_pose",
        "loudness",
        "mouth_box",
        "mouth_open",
        "phone",
        "viseme",
        "voicing",
    ]
    assert {(c.emotion, c.level) for c in store.clips} == set(prepare.SYNTHETIC_COMBOS[:9])
    splits = {c.speaker: c.split for c in store.clips}
    assert sorted(splits.values()) == ["test", "train", "val"]
    for info in store.clips:
        clip = generate_clip(
            info.extra["speaker_index"], info.emotion, info.level, info.extra["seed"], n_frames=12
        )
        stored = store.clip(info.index)
        assert info.speaker == f"synth_{info.extra['speaker_index']:03d}"
        np.testing.assert_array_equal(stored["frames"], clip.frames)
        _, power = align_streams(clip.frames, power_spectrogram(clip.audio))
        np.testing.assert_array_equal(stored["power"], power)
        for name, value in clip.factors.items():
            np.testing.assert_array_equal(stored["factors"][name], value)
            assert stored["factors"][name].dtype == value.dtype

    # rerun: nothing to do; more clips per speaker extend the store; other frames are refused
    assert prepare.main(args()) == 0
    assert json.loads((out / "prepare_report.json").read_text())["already_in_store"] == 9
    assert prepare.main(args(clips=4)) == 0
    assert len(Store(out).clips) == 12
    capsys.readouterr()
    assert prepare.main(args(frames=20)) == 1
    assert "--frames 12" in capsys.readouterr().err
    assert prepare.main(args() + ["--first-speaker", "3"]) == 1  # other people: refused
    assert "--first-speaker 0" in capsys.readouterr().err


def test_synthetic_speakers_are_their_indices_whatever_the_seed():
    from mdvae.data.synthetic_script import speaker_params

    # another seed draws other clips of the same people; --first-speaker draws new people
    same = prepare.synthetic_jobs(2, 1, 12, seed=0)
    reseeded = prepare.synthetic_jobs(2, 1, 12, seed=9)
    new = prepare.synthetic_jobs(2, 1, 12, seed=0, first_speaker=200)
    assert [j.speaker for j in same] == [j.speaker for j in reseeded] == ["synth_000", "synth_001"]
    assert [j.payload.seed for j in same] != [j.payload.seed for j in reseeded]
    assert [j.speaker for j in new] == ["synth_200", "synth_201"]
    assert [j.extra["speaker_index"] for j in new] == [j.payload.speaker for j in new] == [200, 201]
    corner = [generate_clip(j.payload.speaker, "neutral", 1, j.payload.seed, 2).frames[0, 0, 0]
              for j in (same[0], reseeded[0], new[0])]  # the background: the speaker's
    np.testing.assert_array_equal(corner[0], corner[1])
    assert speaker_params(0) == speaker_params(0) and speaker_params(0) != speaker_params(200)
    assert not np.array_equal(corner[0], corner[2])
    with pytest.raises(prepare.PrepareError, match="first-speaker"):
        prepare.synthetic_jobs(1, 1, 12, seed=0, first_speaker=-1)


def test_synthetic_emotions_draw_only_those_and_resume_with_the_same(tmp_path, capsys):
    jobs = prepare.synthetic_jobs(3, 2, 12, seed=4, emotions=("neutral",))
    assert {(j.emotion, j.level) for j in jobs} == {("neutral", 1)}
    assert len({j.payload.seed for j in jobs}) == 6  # two different resting faces each
    both = prepare.synthetic_jobs(2, 4, 12, seed=4, emotions=("happy", "sad"))
    assert {j.emotion for j in both} == {"happy", "sad"}
    assert {j.level for j in both if j.emotion == "happy"} <= {1, 2, 3}
    with pytest.raises(prepare.PrepareError, match="unknown \\['calm'\\]"):
        prepare.synthetic_jobs(1, 1, 12, seed=0, emotions=("calm",))

    def args(emotions):
        return ["synthetic", "--out", str(tmp_path / "neutral"), "--speakers", "2",
                "--clips-per-speaker", "2", "--frames", "8", "--workers", "0",
                "--val-speakers", "0", "--test-speakers", "0", "--emotions", emotions]

    assert prepare.main(args("neutral")) == 0
    assert {c.emotion for c in Store(tmp_path / "neutral").clips} == {"neutral"}
    capsys.readouterr()
    assert prepare.main(args("neutral")) == 0  # resumed: nothing to add
    assert "4 already there" in capsys.readouterr().out
    assert len(Store(tmp_path / "neutral").clips) == 4
    assert prepare.main(args("happy")) == 1  # other clips: refused
    assert "--emotions ['neutral']" in capsys.readouterr().err


@pytest.mark.slow
def test_prepare_killed_then_resumed(tmp_path):
    """SIGTERM (what `kill` sends) stops a run cleanly; the rerun finishes the store."""
    out = tmp_path / "synthetic"
    flags = "--speakers 2 --clips-per-speaker 12 --frames 20 --workers 1 --val-speakers 0"
    args = ["synthetic", "--out", str(out), *flags.split(), "--test-speakers", "0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "train.prepare", *args],
        cwd=Path(prepare.__file__).parent.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        table = out / "clips.jsonl"
        while not (table.exists() and table.read_text().count("\n") >= 2):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, output
    assert "run the same command again" in output
    done = len(Store(out).clips)
    assert 2 <= done < 24

    assert prepare.main(args) == 0
    store = Store(out)
    assert [c.id for c in store.clips] == [
        job.clip_id for job in prepare.synthetic_jobs(2, 12, 20, seed=0)
    ]
    info = store.clips[done]  # the first clip of the second run
    clip = generate_clip(
        info.extra["speaker_index"], info.emotion, info.level, info.extra["seed"], n_frames=20
    )
    np.testing.assert_array_equal(store.clip(done)["frames"], clip.frames)
