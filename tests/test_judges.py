import numpy as np
import pytest
import torch

from mdvae.data.synthetic import generate_clip
from mdvae.eval import judges as J


def test_clip_labels_threshold_blinks_and_mark_unvoiced_f0():
    factors = {
        "viseme": np.array([0, 3, 3]),
        "blink": np.array([0.1, 0.6, 0.5]),
        "head_pose": np.zeros((3, 3)),
        "voicing": np.array([0, 1, 1]),
        "f0": np.array([0.0, 100.0, 200.0]),
    }
    lab = J.clip_labels(factors, speaker=2, emotion="happy")
    assert lab["blink"].tolist() == [0, 1, 0]  # closed strictly above 0.5
    # visemes rest and spread fall in the classes "lips together" and "teeth"
    assert [list(J.MOUTH_CLASSES)[i] for i in lab["mouth"]] == ["lips together", "teeth", "teeth"]
    assert np.isnan(lab["f0"][0])
    assert lab["f0"][1:] == pytest.approx([0.0, 12.0])  # semitones re 100 Hz
    assert lab["speaker"] == 2 and lab["emotion"] == 4
    assert J.clip_labels(factors, 0, None)["emotion"] == -1


def test_balanced_accuracy_weighs_classes_equally():
    truth = np.array([0] * 9 + [1])
    always_open = np.zeros(10, int)
    assert (always_open == truth).mean() == 0.9
    assert J.balanced_accuracy(always_open, truth) == pytest.approx(0.5)


def test_class_scores_carry_clustered_standard_errors_and_a_blind_baseline():
    # two clips of 10 frames, two classes; the judge reads clip 0 right, clip 1 wrong
    truth = np.array([[0] * 5 + [1] * 5, [0] * 5 + [1] * 5])
    pred = np.array([[0] * 5 + [1] * 5, [1] * 5 + [0] * 5])
    score = J.score_classes("blink", "frame", pred, truth)
    assert score.accuracy == 0.5 and score.balanced_accuracy == 0.5
    assert score.accuracy_se == pytest.approx(0.5)  # two clips, not 20 frames
    assert score.blind == 0.5 and score.quality == 0.5 and not score.trusted


def test_speaker_verification_works_for_speakers_the_judge_never_saw():
    # 3 unseen speakers x 3 clips; the speaker head (4 training speakers) gives each unseen
    # speaker its own profile of resemblance, plus noise
    rng = np.random.default_rng(0)
    profiles = rng.normal(size=(3, 4)) * 3
    identity = np.repeat([0, 1, 2], 3)
    logp = profiles[identity] + rng.normal(size=(9, 4)) * 0.3
    score = J.score_verification(logp, logp, identity)
    assert score.kind == "verification" and score.n == 9
    assert score.accuracy == 1.0 and score.trusted and score.blind == 0.5
    # profiles that carry no speaker information verify at chance, and are not trusted
    noise = rng.normal(size=(300, 4))
    identity = np.repeat(np.arange(30), 10)
    score = J.score_verification(noise, noise, identity)
    assert abs(score.accuracy - 0.5) < 4 * score.accuracy_se and not score.trusted
    # the same clip is never its own reference
    ids = np.repeat([0, 1], 2)
    probe, same, other = J.verification_triplets(ids, np.random.default_rng(0))
    assert len(probe) == 4 and (probe != same).all() and (ids[probe] == ids[same]).all()
    assert (ids[probe] != ids[other]).all()
    assert J.score_verification(noise[:2], noise[:2], [0, 0]).n == 0  # one speaker only


def test_closer_to_b_compares_centred_profiles():
    a, b = np.array([[0.0, -5.0, -5.0]]), np.array([[-5.0, 0.0, -5.0]])
    assert J.closer_to_b(np.array([[-4.0, -1.0, -5.0]]), a, b)[0] == 1
    assert J.closer_to_b(np.array([[-1.0, -4.0, -5.0]]), a, b)[0] == -1
    # a constant shift (log-probabilities of another clip length) changes nothing
    assert J.closer_to_b(np.array([[-14.0, -11.0, -15.0]]), a, b)[0] == 1


def test_held_out_clips_cover_every_speaker_with_two_or_more_clips():
    speakers = [0, 0, 0, 0, 1, 1, 2]
    held = J.split_held_out(speakers, 0.25, np.random.default_rng(0))
    assert held[:4].sum() == 1 and held[4:6].sum() == 1 and not held[6]


def _data(speakers, seeds, n_frames):
    clips = [generate_clip(spk, "neutral", 1, seed, n_frames) for spk in speakers for seed in seeds]
    return J.JudgeData(
        np.stack([c.frames for c in clips]),
        np.zeros((len(clips), n_frames, 513), np.float32),
        [J.clip_labels(c.factors, speakers.index(c.speaker), c.emotion) for c in clips],
    )


class _Reads:
    """A stand-in judge whose readings are given: `J._score_read` needs only its heads."""

    def __init__(self, speakers):
        self.config = J.JudgeConfig(modality="visual", speakers=speakers)


def test_head_motion_is_trusted_when_only_the_rest_pose_is_misread():
    data = _data([3, 11], [1, 2], 30)
    truth = data.stacked("head_pose")  # (4, 30, 3)
    n, t = truth.shape[:2]
    read = {
        "mouth": data.stacked("mouth"),
        "blink": data.stacked("blink"),
        "speaker": data.stacked("speaker"),
        "speaker_logp": np.log(np.full((n, 2), 0.5)),
        "emotion": data.stacked("emotion"),
        "emotion_logp": np.zeros((n, len(J.EMOTIONS))),
    }
    # each clip read 0.8 px / 0.8 px / 3 deg off: beyond the tolerance, the same in a clip
    offset = np.array([0.8, -0.8, 3.0]) * np.array([1, -1, 1, -1])[:, None]
    read["head_pose"] = truth + offset[:, None, :]
    scores = J._score_read(_Reads(("s3", "s11")), data, read, None)
    assert scores["head_pose"].within == [0.0, 0.0, 0.0] and not scores["head_pose"].trusted
    motion = scores["head_motion"]
    assert motion.within == [1.0, 1.0, 1.0] and motion.trusted and motion.n == n * t
    assert motion.tolerance == list(J.TOLERANCES["head_pose"])
    # a reading that follows only the clip's mean pose is no reading of its motion
    read["head_pose"] = np.broadcast_to(truth.mean(1, keepdims=True), truth.shape)
    motion = J._score_read(_Reads(("s3", "s11")), data, read, None)["head_motion"]
    still = np.abs(truth - truth.mean(1, keepdims=True)) <= np.array(J.TOLERANCES["head_pose"])
    assert motion.within == pytest.approx(still.mean((0, 1)).tolist()) and not motion.trusted


@pytest.mark.slow
def test_a_visual_judge_reads_held_out_clean_clips_well_above_chance(tmp_path):
    torch.manual_seed(0)
    speakers = [3, 11]
    train, held_out = _data(speakers, [1, 2, 3], 60), _data(speakers, [7], 60)
    config = J.JudgeConfig(modality="visual", speakers=("s3", "s11"), width=8)
    settings = J.TrainSettings(steps=200, batch=32, lr=3e-3)
    judge = J.train_judge(config, train, settings, show=False)
    scores = J.score_judge(judge, held_out)
    # speakers differ in face, hair and background: trivial
    assert scores["speaker"].accuracy == 1.0
    # six mouth shapes, the most frequent on about a third of the frames: from six short
    # clips the judge is far from its full accuracy, but well above chance
    assert scores["mouth"].accuracy > scores["mouth"].chance + 0.15
    assert scores["mouth"].balanced_accuracy > 2 / len(J.MOUTH_CLASSES)
    pose = held_out.stacked("head_pose").reshape(-1, 3)
    assert np.mean(np.array(scores["head_pose"].rmse) / pose.std(0)) < 0.7

    # cached: the same key loads the same judge, another key asks for a new one
    path = tmp_path / "judge.safetensors"
    J.save_judge(path, judge, J.JudgeReport("visual", {"clean": scores}), key="k1")
    loaded = J.load_judge(path, "k1")
    assert loaded is not None
    judge2, report = loaded
    x = held_out.frames[:1]
    assert np.array_equal(judge.read(x)["mouth"], judge2.read(x)["mouth"])
    assert report.scores["clean"]["speaker"].accuracy == 1.0
    assert report.trusted("speaker") == scores["speaker"].trusted
    assert J.load_judge(path, "other") is None


@pytest.mark.slow
def test_an_audio_judge_reads_voicing_of_held_out_clips():
    clips = [generate_clip(5, "neutral", 1, seed, 48) for seed in range(4)]
    from mdvae.media.audio import power_spectrogram

    power = np.stack([power_spectrogram(c.audio)[:48] for c in clips])
    data = J.JudgeData(
        np.zeros((4, 48, 64, 64, 3), np.uint8),
        power,
        [J.clip_labels(c.factors, 0, c.emotion) for c in clips],
    )
    train = J.JudgeData(data.frames[:3], data.power[:3], data.labels[:3])
    held = J.JudgeData(data.frames[3:], data.power[3:], data.labels[3:])
    config = J.JudgeConfig(modality="audio", speakers=("s5",), width=4)
    judge = J.train_judge(config, train, J.TrainSettings(steps=80, batch=16), show=False)
    scores = J.score_judge(judge, held)
    assert scores["voicing"].balanced_accuracy > 0.8
    # a single speaker cannot validate a speaker head
    assert not scores["speaker"].trusted
    read = judge.read(held.power)
    assert read["f0"].shape == (1, 48, 1) and read["speaker_logp"].shape == (1, 1)
