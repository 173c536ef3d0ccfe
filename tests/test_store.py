"""The data store: round trip, crash-safe resume, windows, splits, features, bad folders."""

import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest

from mdvae.data.store import Store, StoreWriter, assign_splits
from mdvae.errors import MDVAEError

SPEC = {"phone": ("int16", ()), "head_pose": ("float32", (3,))}
SPLIT_OF = {"s0": "train", "s1": "train", "s2": "val", "s3": "test"}


def make_clip(i: int, length: int) -> dict:
    rng = np.random.default_rng(i)
    return {
        "frames": rng.integers(0, 256, (length, 64, 64, 3), dtype=np.uint8),
        "power": rng.random((length, 513), dtype=np.float32),
        "factors": {
            # frame number within the clip, so windows can be checked for contiguity
            "phone": np.arange(length, dtype=np.int16) + 1000 * i,
            "head_pose": rng.standard_normal((length, 3)).astype(np.float32),
        },
    }


def write_clips(path, lengths, start=0):
    clips = {}
    with StoreWriter(path, factor_spec=SPEC, source_kind="test", info={"why": "test"}) as w:
        for i, length in enumerate(lengths, start=start):
            clip = make_clip(i, length)
            speaker = f"s{i % 4}"
            w.add(
                f"clip{i}",
                clip["frames"],
                clip["power"],
                speaker=speaker,
                emotion="happy" if i % 2 else None,
                level=2 if i % 2 else None,
                source=f"gen:{i}",
                split=SPLIT_OF[speaker],
                factors=clip["factors"],
                extra={"seed": i},
            )
            clips[f"clip{i}"] = clip
    return clips


def test_round_trip(tmp_path):
    lengths = [12, 30, 7, 25, 40, 16]
    clips = write_clips(tmp_path / "s", lengths)
    store = Store(tmp_path / "s")
    assert store.n_frames == sum(lengths)
    assert isinstance(store.frames, np.memmap) and store.frames.shape == (sum(lengths), 64, 64, 3)
    assert store.power.dtype == np.float32 and store.factors["head_pose"].shape[1:] == (3,)
    for info in store.clips:
        got = store.clip(info.index)
        want = clips[info.id]
        np.testing.assert_array_equal(got["frames"], want["frames"])
        np.testing.assert_array_equal(got["power"], want["power"])
        for name in SPEC:
            np.testing.assert_array_equal(got["factors"][name], want["factors"][name])
        assert info.extra["seed"] == int(info.id[4:])
    info = store.clips[1]
    assert (info.speaker, info.emotion, info.level, info.split) == ("s1", "happy", 2, "train")
    assert store.clips[0].emotion is None and store.clips[0].level is None
    assert [c["info"].id for c in store.iter_clips("val")] == ["clip2"]
    assert store.meta["source_kind"] == "test" and store.meta["info"] == {"why": "test"}


def test_resume_after_crash_truncates_uncommitted_clip(tmp_path, monkeypatch):
    path = tmp_path / "s"
    clips = write_clips(path, [10, 20])

    # Crash between the data and the table line: the arrays are appended, the line is not.
    def crash(self, info):
        raise KeyboardInterrupt

    monkeypatch.setattr(StoreWriter, "_commit", crash)
    with pytest.raises(KeyboardInterrupt), StoreWriter(path) as w:
        clip = make_clip(2, 15)
        w.add(
            "clip2",
            clip["frames"],
            clip["power"],
            speaker="s2",
            emotion=None,
            level=None,
            source="x",
            split="val",
            factors=clip["factors"],
        )
    monkeypatch.undo()
    assert (path / "frames.bin").stat().st_size == 45 * 64 * 64 * 3  # orphaned bytes
    with open(path / "clips.jsonl", "a") as f:  # and a half-written line
        f.write('{"id": "clip2", "sta')

    assert Store(path).n_frames == 30  # readers ignore what is not committed
    with StoreWriter(path) as w:
        assert w.has("clip1") and not w.has("clip2")
        assert (path / "frames.bin").stat().st_size == 30 * 64 * 64 * 3
    clips.update(write_clips(path, [15, 9], start=2))

    reference = tmp_path / "ref"
    write_clips(reference, [10, 20, 15, 9])
    for name in ("frames.bin", "power.bin", "factors/phone.bin", "factors/head_pose.bin"):
        assert (path / name).read_bytes() == (reference / name).read_bytes(), name
    assert (path / "clips.jsonl").read_text() == (reference / "clips.jsonl").read_text()


def test_writer_refuses_bad_input(tmp_path):
    with StoreWriter(tmp_path / "s", factor_spec=SPEC, source_kind="test") as w:
        clip = make_clip(0, 5)
        kwargs = dict(speaker="a", emotion=None, level=None, source="x", split="train")
        with pytest.raises(MDVAEError, match="uint8"):
            w.add(
                "a",
                clip["frames"].astype(np.float32),
                clip["power"],
                **kwargs,
                factors=clip["factors"],
            )
        with pytest.raises(MDVAEError, match="power"):
            w.add("a", clip["frames"], clip["power"][:4], **kwargs, factors=clip["factors"])
        with pytest.raises(MDVAEError, match="factors"):
            w.add("a", clip["frames"], clip["power"], **kwargs)
        with pytest.raises(MDVAEError, match="split"):
            w.add(
                "a",
                clip["frames"],
                clip["power"],
                **{**kwargs, "split": "dev"},
                factors=clip["factors"],
            )
        with pytest.raises(MDVAEError, match="emotion"):
            w.add(
                "a",
                clip["frames"],
                clip["power"],
                **{**kwargs, "emotion": "bored"},
                factors=clip["factors"],
            )
        w.add("a", clip["frames"], clip["power"], **kwargs, factors=clip["factors"])
        with pytest.raises(MDVAEError, match="already"):
            w.add("a", clip["frames"], clip["power"], **kwargs, factors=clip["factors"])
        with pytest.raises(MDVAEError, match="another process"):
            StoreWriter(tmp_path / "s")
    with pytest.raises(MDVAEError, match="factors"):
        StoreWriter(tmp_path / "s", factor_spec={"phone": ("int32", ())}, source_kind="test")
    with pytest.raises(MDVAEError, match="'test' store"):
        StoreWriter(tmp_path / "s", source_kind="mead")


def test_sample_windows(tmp_path):
    lengths = [12, 30, 7, 25, 40, 16, 31, 9]
    write_clips(tmp_path / "s", lengths)
    store = Store(tmp_path / "s")
    rng = np.random.default_rng(0)
    T, B = 10, 64
    for split in ("train", "val", "test"):
        allowed = {c.index for c in store.split_clips(split) if c.length >= T}
        batch = store.sample_windows(split, T, B, rng)
        assert batch["frames"].shape == (B, T, 64, 64, 3) and batch["frames"].dtype == np.uint8
        assert batch["power"].shape == (B, T, 513)
        assert batch["factors"]["head_pose"].shape == (B, T, 3)
        assert set(batch["clip"].tolist()) <= allowed
        for b in range(B):
            info = store.clips[batch["clip"][b]]
            assert 0 <= batch["start"][b] <= info.length - T
            phone = batch["factors"]["phone"][b] - 1000 * int(info.id[4:])
            np.testing.assert_array_equal(phone, np.arange(T) + batch["start"][b])
            rows = slice(info.start + batch["start"][b], info.start + batch["start"][b] + T)
            np.testing.assert_array_equal(batch["frames"][b], store.frames[rows])
            assert store.speakers()[batch["speaker"][b]] == info.speaker
            assert batch["emotion"][b] == (4 if info.emotion == "happy" else -1)

    # windows are uniform over all windows: a clip is drawn in proportion to L - T + 1
    clips = np.concatenate([store.sample_windows("train", T, 50, rng)["clip"] for _ in range(100)])
    train = [c for c in store.split_clips("train") if c.length >= T]
    counts = np.array([c.length - T + 1 for c in train])
    drawn = np.array([(clips == c.index).sum() for c in train])
    np.testing.assert_allclose(drawn / drawn.sum(), counts / counts.sum(), atol=0.03)

    with pytest.raises(MDVAEError, match="no clip of at least 45 frames"):
        store.sample_windows("train", 45, 2, rng)
    with pytest.raises(MDVAEError, match="split"):
        store.sample_windows("dev", 5, 2, rng)

    # the same index as rows of the arrays: every window of the split, each once
    for split in ("train", "val", "test"):
        starts = store.window_starts(split, T)
        assert len(starts) == len(set(starts.tolist())) == store.n_windows(split, T)
        for start in starts:
            info = next(c for c in store.clips if c.start <= start < c.stop)
            assert info.split == split and start + T <= info.stop
    drawn = store.sample_windows("val", T, 50, rng)
    firsts = {store.clips[c].start + s for c, s in zip(drawn["clip"], drawn["start"])}
    assert firsts <= set(store.window_starts("val", T).tolist())
    with pytest.raises(MDVAEError, match="no clip of at least 45 frames"):
        store.window_starts("train", 45)


def test_splits_by_speaker():
    speakers = [f"M{i:03d}" for i in range(20)]
    split = assign_splits(speakers, val=3, test=4, seed=1)
    assert sorted(split) == speakers
    assert [list(split.values()).count(s) for s in ("train", "val", "test")] == [13, 3, 4]
    assert assign_splits(reversed(speakers), val=3, test=4, seed=1) == split
    assert assign_splits(speakers, val=3, test=4, seed=2) != split
    # adding a speaker keeps the others where they were, unless it takes their place
    grown = assign_splits([*speakers, "W099"], val=3, test=4, seed=1)
    assert sum(grown[s] != split[s] for s in speakers) <= 2

    explicit = assign_splits(speakers, val=["M001", "M002"], test=1, seed=0)
    assert explicit["M001"] == explicit["M002"] == "val"
    assert list(explicit.values()).count("test") == 1
    with pytest.raises(MDVAEError, match="not in the data"):
        assign_splits(speakers, val=["W123"])
    with pytest.raises(MDVAEError, match="both"):
        assign_splits(speakers, val=["M001"], test=["M001"])
    with pytest.raises(MDVAEError, match="no speaker is left"):
        assign_splits(["a", "b"], val=1, test=1)


def test_store_split_override(tmp_path):
    write_clips(tmp_path / "s", [10, 10, 10, 10])
    store = Store(tmp_path / "s", splits={"s0": "test", "s1": "train", "s2": "train", "s3": "val"})
    assert store.speakers("test") == ["s0"] and store.speakers("train") == ["s1", "s2"]
    with pytest.raises(MDVAEError, match="does not name"):
        Store(tmp_path / "s", splits={"s0": "train"})


def test_features(tmp_path):
    write_clips(tmp_path / "s", [10, 20])
    store = Store(tmp_path / "s")
    rng = np.random.default_rng(0)
    audio, visual = rng.standard_normal((30, 512)), rng.standard_normal((30, 2048))
    feats = store.write_features("vq-abc123", audio, visual, info={"weights": "abc123"})
    assert feats.audio.dtype == np.float16 and feats.visual.shape == (30, 2048)
    cached_audio, cached_visual = Store(tmp_path / "s").features("vq-abc123")
    np.testing.assert_allclose(cached_audio, audio, atol=3e-3)
    np.testing.assert_allclose(cached_visual, visual, atol=3e-3)
    assert store.feature_keys() == ["vq-abc123"]
    with pytest.raises(MDVAEError, match="float16"):
        store.write_features("big", audio * 1e6, visual)
    assert store.features("nope") is None
    with pytest.raises(MDVAEError, match="feature key"):
        store.features("../x")
    write_clips(tmp_path / "s", [5], start=2)  # the store grows: cached features are stale
    assert Store(tmp_path / "s").features("vq-abc123") is None


def test_two_writers_of_the_same_features_both_finish_and_one_copy_stands(tmp_path):
    # two runs that both found the features missing encode and write them at the same time
    write_clips(tmp_path / "s", [10, 20])
    store = Store(tmp_path / "s")
    rng = np.random.default_rng(0)
    audio, visual = rng.standard_normal((30, 4)), rng.standard_normal((30, 6))
    kw = {"audio_dim": 4, "visual_dim": 6}
    with store.feature_writer("vq-k", **kw) as first:
        first.audio[:], first.visual[:] = audio, visual
        with store.feature_writer("vq-k", **kw) as second:
            second.audio[:], second.visual[:] = audio, visual
        assert store.feature_keys() == ["vq-k"]  # the second landed; the first still writes
    cached = Store(tmp_path / "s").features("vq-k")
    np.testing.assert_allclose(cached.visual, visual, atol=3e-3)
    assert sorted(p.name for p in (tmp_path / "s" / "features").iterdir()) == ["vq-k"]


def test_a_dead_writers_leftovers_are_removed_and_a_live_ones_kept(tmp_path):
    write_clips(tmp_path / "s", [10])
    store = Store(tmp_path / "s")
    root = tmp_path / "s" / "features"
    root.mkdir()
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()  # a process that has exited: its pid names no live writer
    host = platform.node() or "host"
    dead = root / f".vq-k.{host}-{done.pid}-0a0a0a0a.tmp"
    live = root / f".vq-k.{host}-{os.getpid()}-0b0b0b0b.tmp"
    elsewhere = root / f".vq-k.another-host-{done.pid}-0c0c0c0c.tmp"
    for folder in (dead, live, elsewhere):
        folder.mkdir()
    store.write_features("vq-k", np.zeros((10, 4)), np.zeros((10, 6)))
    assert not dead.exists() and live.exists() and elsewhere.exists()
    assert store.feature_keys() == ["vq-k"]


def test_bad_folders_refused(tmp_path):
    with pytest.raises(MDVAEError, match="not a data store"):
        Store(tmp_path)
    with pytest.raises(MDVAEError, match="not a folder"):
        Store(tmp_path / "missing")
    (tmp_path / "junk.txt").write_text("x")
    with pytest.raises(MDVAEError, match="not a data store"):
        StoreWriter(tmp_path)

    write_clips(tmp_path / "s", [10, 20])
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    (tmp_path / "s" / "meta.json").write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(MDVAEError, match="version 99"):
        Store(tmp_path / "s")
    (tmp_path / "s" / "meta.json").write_text(json.dumps(meta))

    with open(tmp_path / "s" / "power.bin", "r+b") as f:
        f.truncate(513 * 4 * 25)
    with pytest.raises(MDVAEError, match="incomplete or damaged"):
        Store(tmp_path / "s")
    with pytest.raises(MDVAEError, match="damaged"):
        StoreWriter(tmp_path / "s")
