"""Listing MEAD, RAVDESS and plain video folders, in folders and in archives.

The media files here are a few distinct bytes each: listing never decodes them, and the
bytes show that archive members are read back intact.
"""

import io
import tarfile
import zipfile

import pytest

from mdvae.data.sources import list_mead, list_ravdess, list_source, list_videos, walk_media
from mdvae.errors import MDVAEError


def put(root, rel, data=None):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if data is not None else rel.encode())
    return path


def make_tar(path, members: dict[str, bytes], mode="w"):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode) as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))


def read(ref):
    with ref.local() as path:
        return path.read_bytes()


@pytest.fixture
def mead_root(tmp_path):
    root = tmp_path / "MEAD"
    # M003: extracted, the reference layout; one video without its audio file
    for rel in (
        "M003/video/front/angry/level_1/001.mp4",
        "M003/audio/angry/level_1/001.m4a",
        "M003/video/front/angry/level_2/004.mp4",
        "M003/audio/angry/level_2/004.m4a",
        "M003/video/front/neutral/level_1/002.mp4",  # no audio/neutral/... file
        "M003/video/left_30/angry/level_1/001.mp4",  # another view: left out
        "M003/README.txt",
    ):
        put(root, rel)
    # W009: the whole speaker as one tar
    make_tar(
        root / "W009.tar",
        {
            "W009/video/front/happy/level_3/003.mp4": b"W009 video",
            "W009/audio/happy/level_3/003.m4a": b"W009 audio",
        },
    )
    # M005: video.tar and audio.tar inside the speaker folder (members without the prefix)
    make_tar(root / "M005/video.tar", {"front/sad/level_2/001.mp4": b"M005 video"})
    make_tar(root / "M005/audio.tar", {"audio/sad/level_2/001.m4a": b"M005 audio"})
    # m011: lower-case folder, an extra nesting level, capitalised names, "Surprise"
    put(root, "m011/M011/Video/Front/Surprise/Level_2/002.mp4")
    put(root, "m011/M011/Audio/Surprise/Level_2/002.m4a")
    # W010: a gzipped tar (read by name, not in place); M012: an unknown emotion
    make_tar(
        root / "W010.tar.gz",
        {
            "video/front/fear/level_1/005.mp4": b"W010 video",
            "audio/fear/level_1/005.m4a": b"W010 audio",
        },
        mode="w:gz",
    )
    put(root, "M012/video/front/bored/level_1/001.mp4")
    put(root, "._M003")  # macOS litter
    return root


def test_mead_listing(mead_root):
    listing = list_mead(mead_root)
    items = {item.clip_id: item for item in listing.items}
    assert sorted(items) == [
        "M003/angry/level_1/001",
        "M003/angry/level_2/004",
        "M003/neutral/level_1/002",
        "M005/sad/level_2/001",
        "M011/surprised/level_2/002",
        "W009/happy/level_3/003",
        "W010/fear/level_1/005",
    ]
    item = items["M003/angry/level_2/004"]
    assert (item.speaker, item.emotion, item.level) == ("M003", "angry", 2)
    assert item.extra["sentence"] == "004" and item.note is None
    assert read(item.audio) == b"M003/audio/angry/level_2/004.m4a"
    assert item.name == "M003/video/front/angry/level_2/004.mp4"

    missing = items["M003/neutral/level_1/002"]
    assert missing.audio is None and missing.note == "no audio file"

    w009 = items["W009/happy/level_3/003"]
    assert w009.video.member == "W009/video/front/happy/level_3/003.mp4"
    assert w009.video.offset is not None  # uncompressed tar: read in place
    assert (read(w009.video), read(w009.audio)) == (b"W009 video", b"W009 audio")
    m005 = items["M005/sad/level_2/001"]
    assert (read(m005.video), read(m005.audio)) == (b"M005 video", b"M005 audio")
    w010 = items["W010/fear/level_1/005"]
    assert w010.video.offset is None and read(w010.audio) == b"W010 audio"
    m011 = items["M011/surprised/level_2/002"]
    assert m011.speaker == "M011" and m011.audio is not None

    assert listing.skipped == [
        ("M012/video/front/bored/level_1/001.mp4", "unknown emotion folder 'bored'")
    ]
    assert listing.ignored["non-frontal view"] == 1
    assert listing.ignored["not a MEAD video or audio file"] == 1


def test_mead_speaker_root_and_archive_root(mead_root):
    # --root pointing at one speaker folder, or at one speaker's tar
    items = list_mead(mead_root / "M003").items
    assert {i.speaker for i in items} == {"M003"} and len(items) == 3
    items = list_mead(mead_root / "W009.tar").items
    assert [i.clip_id for i in items] == ["W009/happy/level_3/003"]


def test_mead_duplicates_and_nested_archives(mead_root):
    # the same speaker both extracted and archived: the second copy is skipped
    make_tar(mead_root / "M003.tar", {"M003/video/front/angry/level_1/001.mp4": b"again"})
    make_tar(mead_root / "W020.tar", {"W020/video.tar": b"not opened"})
    listing = list_mead(mead_root)
    reasons = dict(listing.skipped)
    # of two copies the first by path is kept
    assert reasons["M003/video/front/angry/level_1/001.mp4"] == (
        "duplicate of M003/M003/video/front/angry/level_1/001.mp4"
    )
    assert reasons["W020/W020/video.tar"].startswith("archive inside an archive")


def test_ravdess_listing(tmp_path):
    root = tmp_path / "RAVDESS"
    put(root, "Actor_01/01-01-03-02-01-01-01.mp4")  # happy, strong
    put(root, "Actor_01/01-01-02-01-02-02-01.mp4")  # calm
    put(root, "Actor_01/02-01-03-02-01-01-01.mp4")  # video-only copy: ignored
    put(root, "Actor_01/01-02-03-01-01-01-01.mp4")  # song: ignored
    put(root, "Actor_01/03-01-03-01-01-01-01.wav")  # audio-only: ignored
    put(root, "Actor_01/01-01-09-01-01-01-01.mp4")  # no emotion 09
    with zipfile.ZipFile(root / "Video_Speech_Actor_12.zip", "w") as z:
        z.writestr("Actor_12/01-01-07-01-02-01-12.mp4", b"disgust")
    listing = list_ravdess(root)
    items = {i.clip_id: i for i in listing.items}
    assert sorted(items) == [
        "01-01-02-01-02-02-01",
        "01-01-03-02-01-01-01",
        "01-01-07-01-02-01-12",
    ]
    happy = items["01-01-03-02-01-01-01"]
    assert (happy.speaker, happy.emotion, happy.level, happy.audio) == (
        "ravdess_01",
        "happy",
        2,
        None,
    )
    assert happy.extra == {
        "label": "happy",
        "intensity": "strong",
        "statement": 1,
        "repetition": 1,
        "actor": 1,
        "gender": "male",
    }
    calm = items["01-01-02-01-02-02-01"]
    assert calm.emotion is None and calm.extra["label"] == "calm" and calm.level == 1
    disgust = items["01-01-07-01-02-01-12"]
    assert (disgust.speaker, disgust.emotion, disgust.extra["gender"]) == (
        "ravdess_12",
        "disgusted",
        "female",
    )
    assert read(disgust.video) == b"disgust"
    assert listing.skipped == [
        ("Actor_01/01-01-09-01-01-01-01.mp4", "unknown RAVDESS code: emotion 09")
    ]
    assert listing.ignored == {
        "video-only (modality 02)": 1,
        "song (vocal channel 02)": 1,
        "audio-only (modality 03)": 1,
    }


def test_video_folder_listing(tmp_path):
    root = tmp_path / "clips"
    put(root, "alice/a.mp4")
    put(root, "alice/b.MOV")
    put(root, "bob/sub/c.webm")
    put(root, "d.mkv")
    put(root, "notes.txt")
    items = list_videos(root).items
    assert [(i.clip_id, i.speaker) for i in items] == [
        ("alice/a.mp4", "alice"),
        ("alice/b.MOV", "alice"),
        ("bob/sub/c.webm", "sub"),
        ("d.mkv", "clips"),
    ]
    assert all(i.emotion is None and i.level is None and i.audio is None for i in items)


def test_bad_roots(tmp_path):
    with pytest.raises(MDVAEError, match="does not exist"):
        list_mead(tmp_path / "missing")
    put(tmp_path, "empty/readme.txt")
    with pytest.raises(MDVAEError, match="no MEAD clips"):
        list_mead(tmp_path / "empty")
    with pytest.raises(MDVAEError, match="no RAVDESS"):
        list_ravdess(tmp_path / "empty")
    with pytest.raises(MDVAEError, match="no video files"):
        list_videos(tmp_path / "empty")
    with pytest.raises(MDVAEError, match="unknown source"):
        list_source("voxceleb", tmp_path)
    (tmp_path / "broken.tar").write_bytes(b"\0" * 10 + b"definitely not a tar" * 100)
    with pytest.raises(MDVAEError, match="cannot be read as an archive"):
        list(walk_media(tmp_path / "broken.tar"))
