"""The stage-2 diagnostics measure what they say: clip shares, swap moves, probes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mdvae.eval import diagnostics as diag
from mdvae.eval import pitch
from mdvae.model.dsae import DSAE, DSAEConfig
from mdvae.model.gaussian import DiagonalGaussian, kl_divergence
from mdvae.model.mdvae import MDVAE, MDVAEConfig

TINY = dict(w_dim=6, z_av_dim=3, z_a_dim=2, z_v_dim=2, feature_dim=16, audio_hidden=16,
            visual_hidden=16, rnn_dim=8, z_rnn_dim=8, audio_dim=12, visual_dim=20)


def test_clip_share_is_one_for_clip_constants_and_zero_for_centred_motion():
    constant = torch.randn(5, 1, 3).expand(5, 7, 3)
    assert torch.allclose(diag.between_clip_share(constant), torch.ones(3))
    motion = torch.randn(5, 7, 3)
    motion = motion - motion.mean(1, keepdim=True)
    assert diag.between_clip_share(motion).abs().max() < 1e-6
    # half and half: offsets +-1 per clip plus +-1 within each clip
    mixed = torch.tensor([1.0, -1.0])[:, None, None] + torch.tensor([1.0, -1.0])[None, :, None]
    assert diag.between_clip_share(mixed).item() == pytest.approx(0.5)


def test_partners_pair_every_clip_with_another_speaker():
    speakers = ["a"] * 4 + ["b"] * 3 + ["c"] * 2
    pair = diag.partners(speakers)
    assert all(speakers[j] != speakers[i] for i, j in enumerate(pair))
    fit, score = diag.halves_by_speaker(speakers)
    assert set(fit) | set(score) == set(range(len(speakers))) and not set(fit) & set(score)
    assert {speakers[i] for i in score} == {"a", "b", "c"}


def test_swap_moves_are_the_kl_between_observation_gaussians():
    torch.manual_seed(0)
    # float64: an untrained decoder moves little, and the two formulas round differently
    model = MDVAE(MDVAEConfig(**TINY)).double().eval().requires_grad_(False)
    x_a = torch.randn(4, 6, 12, dtype=torch.float64)
    x_v = torch.randn(4, 6, 20, dtype=torch.float64)
    partner = np.array([1, 0, 3, 2])
    measured = diag.measure(model, x_a, x_v, partner=partner)
    groups, streams, means = measured.groups, measured.streams, measured.means
    by_name = {g.name: g for g in groups}
    assert list(by_name) == ["w", "z_av", "z_a", "z_v"]
    # recompute the move of w on the visual stream from the definition
    latents = model.encode(x_a, x_v)
    other = type(latents)(**{g: getattr(latents, g)[partner] for g in latents.group_names()})
    _, v_hat = model.decode(latents)
    _, v_swapped = model.decode(latents.swap(other, "w"))
    logvar = model.decoder_x_v.logvar.clamp(min=model.decoder_x_v.logvar_min).expand_as(v_hat)
    expected = kl_divergence(DiagonalGaussian(v_swapped, logvar), DiagonalGaussian(v_hat, logvar))
    assert by_name["w"].moves["visual"] == pytest.approx(float(expected.mean()), rel=1e-9)
    # the audio decoder does not read z_v, nor the visual one z_a
    assert by_name["z_v"].moves["audio"] == 0.0 and by_name["z_a"].moves["visual"] == 0.0
    assert all(g.kl_first >= 0 and g.kl_later >= 0 for g in groups)
    assert means["w"].shape == (4, 6) and means["z_av"].shape == (4, 3)
    assert measured.frames["z_av"].shape == (4, 6, 3) and "w" not in measured.frames
    np.testing.assert_allclose(measured.frames["z_av"].mean(1), means["z_av"], rtol=1e-12)
    assert measured.readings == {}  # no reader given
    assert [s.name for s in streams] == ["audio", "visual"]


def test_sampled_elbo_is_stage2_validation_on_the_held_out_windows():
    from train.stage2 import make_step_fn

    torch.manual_seed(2)
    model = MDVAE(MDVAEConfig(**TINY)).eval().requires_grad_(False)
    x_a, x_v = torch.randn(5, 13, 12), torch.randn(5, 13, 20)
    got = diag.sampled_elbo(model, x_a, x_v, window=4, batch=6, seed=3)
    # 5 clips x 3 windows of 4 frames (each clip's 13th frame dropped), in passes of 6, 6, 3
    a, v = x_a[:, :12].reshape(15, 4, 12), x_v[:, :12].reshape(15, 4, 20)
    step = make_step_fn("mdvae", torch.device("cpu"), warmup=1)
    torch.manual_seed(3)
    rows = [(step(model, {"x_a": a[i:i + 6], "x_v": v[i:i + 6]}, None), len(a[i:i + 6]))
            for i in range(0, 15, 6)]
    expected = sum(float(r["negative_elbo"]) * n for r, n in rows) / 15
    assert got["negative_elbo"] == pytest.approx(expected, rel=1e-6)
    terms = [value for key, value in got.items() if key != "negative_elbo"]
    assert sum(terms) == pytest.approx(got["negative_elbo"], rel=1e-6)
    # seeded, and the caller's random state is left as it was
    state = torch.random.get_rng_state()
    assert diag.sampled_elbo(model, x_a, x_v, window=4, batch=6, seed=3) == got
    assert torch.equal(torch.random.get_rng_state(), state)


def test_swapping_with_oneself_moves_nothing():
    torch.manual_seed(1)
    model = DSAE(DSAEConfig(modality="visual", input_dim=20, w_dim=4, z_dim=3, feature_dim=8,
                            hidden_dim=8, rnn_dim=8, z_rnn_dim=8)).eval()
    measured = diag.measure(model, torch.randn(3, 5, 12), torch.randn(3, 5, 20),
                            partner=np.arange(3))
    groups, streams = measured.groups, measured.streams
    assert [g.name for g in groups] == ["w", "z"]
    assert all(v == 0.0 for g in groups for v in g.moves.values())
    assert [s.name for s in streams] == ["visual"]


def test_probes_read_a_separable_label_and_not_noise():
    rng = np.random.default_rng(0)
    labels = ["x", "y"] * 40
    signal = np.array([[1.0 if y == "x" else -1.0] for y in labels])
    signal = signal + 0.1 * rng.normal(size=(80, 1))
    noise = rng.normal(size=(80, 1))
    speakers = [f"s{i // 10}" for i in range(80)]
    out = diag.probe_groups({"w": signal[:40], "z": noise[:40]}, labels[:40],
                            {"w": signal[40:], "z": noise[40:]}, labels[40:], speakers[40:])
    assert out["w"]["emotion"] == 1.0
    assert out["z"]["emotion"] < 0.8
    assert set(out) == {"w", "z", "all"}


@pytest.mark.parametrize("own", [False, True])
def test_read_by_q_w_is_what_the_q_w_head_reads_and_each_streams_part(own):
    """The summary vector q(w)'s head reads, and each stream's part of it (its summary at the
    first frame and its features' mean), through q(w)'s own face network when it has one."""
    model = MDVAE(MDVAEConfig(**TINY, w_face_network=own)).double().eval()
    if own:  # a network of its own, not a copy of the shared one, so the two differ
        for p in model.w_features_x_v.parameters():
            torch.nn.init.normal_(p, std=0.3)
    gen = torch.Generator().manual_seed(0)
    x_a = torch.randn(3, 7, 12, generator=gen, dtype=torch.float64)
    x_v = torch.randn(3, 7, 20, generator=gen, dtype=torch.float64)
    seen = []
    hook = model.posterior_w.head.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    model.encode(x_a, x_v)
    hook.remove()
    h, f = TINY["rnn_dim"], TINY["feature_dim"]  # pooled: g_a, g_v at t = 1, then f_a, f_v
    pooled = seen[0]
    read = diag.read_by_q_w(model, x_a, x_v)
    torch.testing.assert_close(read["input"], pooled)
    torch.testing.assert_close(read["voice"],
                               torch.cat([pooled[:, :h], pooled[:, 2 * h:2 * h + f]], -1))
    torch.testing.assert_close(read["face"],
                               torch.cat([pooled[:, h:2 * h], pooled[:, 2 * h + f:]], -1))


@pytest.mark.parametrize("modality", ["audio", "visual"])
def test_read_by_q_w_of_a_dsae_is_its_whole_input_to_q_w(modality):
    dim = 12 if modality == "audio" else 20
    model = DSAE(DSAEConfig(modality=modality, input_dim=dim, w_dim=4, z_dim=3, feature_dim=8,
                            hidden_dim=8, rnn_dim=6, z_rnn_dim=6)).double().eval()
    x_a = torch.randn(2, 5, 12, dtype=torch.float64)
    x_v = torch.randn(2, 5, 20, dtype=torch.float64)
    seen = []
    hook = model.posterior_w.head.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    model.encode(x_a if modality == "audio" else x_v)
    hook.remove()
    read = diag.read_by_q_w(model, x_a, x_v)
    assert set(read) == {"input", "voice" if modality == "audio" else "face"}
    for value in read.values():
        torch.testing.assert_close(value, seen[0])


def test_feature_means_average_each_clip_over_its_own_frames():
    from types import SimpleNamespace

    audio = np.arange(20, dtype=np.float16)[:, None].repeat(3, 1)
    visual = -np.arange(20, dtype=np.float16)[:, None].repeat(5, 1)
    clips = [SimpleNamespace(start=0, length=4), SimpleNamespace(start=10, length=10)]
    means = diag.feature_means(audio, visual, clips)
    assert means["audio"].shape == (2, 3) and means["visual"].shape == (2, 5)
    np.testing.assert_allclose(means["audio"][:, 0], [1.5, 14.5])
    np.testing.assert_allclose(means["visual"][:, 0], [-1.5, -14.5])


def test_feature_stats_are_each_clips_mean_spread_and_change():
    from types import SimpleNamespace

    audio = np.array([0, 2, 0, 2, 5, 5, 5], np.float16)[:, None]
    visual = np.arange(14, dtype=np.float32).reshape(7, 2)
    clips = [SimpleNamespace(start=0, length=4), SimpleNamespace(start=4, length=3)]
    stats = diag.feature_stats(audio, visual, clips)
    assert stats["audio"].shape == (2, 3) and stats["visual"].shape == (2, 6)
    # [0, 2, 0, 2]: mean 1, std 1, every step 2 apart; [5, 5, 5]: still
    np.testing.assert_allclose(stats["audio"], [[1.0, 1.0, 2.0], [5.0, 0.0, 0.0]])
    # a ramp of 2 per frame in both columns: std of (0, 2, 4, 6) = sqrt(5)
    np.testing.assert_allclose(stats["visual"][0], [3, 4, 5 ** 0.5, 5 ** 0.5, 2, 2], rtol=1e-6)


def test_feature_stats_probes_finds_an_emotion_that_only_the_within_clip_spread_shows():
    from types import SimpleNamespace

    rng = np.random.default_rng(0)
    emotions = ["calm", "shaky"]

    def clips_of(speakers):
        out = []
        for s in range(speakers):
            for i in range(8):
                out.append(SimpleNamespace(start=0, length=30, speaker=f"s{s}",
                                           emotion=emotions[i % 2], level=1 + i % 4 // 2))
        return out

    def streams(clips):
        # the speaker moves every clip's mean; "shaky" clips tremble (std 3 against 0.3);
        # the audio stream is noise
        means = {c.speaker: rng.normal(0, 5, 4) for c in clips}
        visual = np.stack([means[c.speaker] + rng.normal(0, 3.0 if c.emotion == "shaky"
                                                         else 0.3, (30, 4)) for c in clips])
        audio = rng.normal(0, 1, (len(clips), 30, 3))
        stats = [diag.feature_stats(a, v, [SimpleNamespace(start=0, length=30)])
                 for a, v in zip(audio, visual)]
        return {k: np.concatenate([s[k] for s in stats]) for k in ("audio", "visual")}

    train_clips, held_clips = clips_of(12), clips_of(4)
    train, held = streams(train_clips), streams(held_clips)
    probes = diag.feature_stats_probes(train, train_clips, held, held_clips)
    assert set(probes) == {"audio", "visual", "both"}
    assert probes["visual"]["all"] == 1.0 and probes["both"]["all"] == 1.0
    # 32 held-out clips of two balanced emotions: noise stays within 4 SE of chance
    assert abs(probes["audio"]["all"] - 0.5) < 4 * 0.5 / np.sqrt(32)
    assert len(probes["visual"]["correct"]) == 32 and {"1", "2"} <= set(probes["visual"])
    assert probes["visual"]["c"] in (0.003, 0.03, 0.3)
    # what the voice adds to the face, paired clip by clip, with its SE over the 4 speakers
    room = probes["both"]["over_visual"]
    diff = np.subtract(probes["both"]["correct"], probes["visual"]["correct"])
    assert room["difference"] == pytest.approx(diff.mean()) and room["speakers"] == 4
    assert room["se"] == pytest.approx(0.0) and room["se_speakers"] == pytest.approx(0.0)
    assert "both minus visual" in diag.format_report(
        diag.Diagnostics(model="mdvae", groups=[], streams=[], clips=32,
                         feature_stats_probes=probes))
    # the clip means alone (the first third of each row) cannot see it
    means_only = diag.linear_probe(train["visual"][:, :4], [c.emotion for c in train_clips],
                                   held["visual"][:, :4], [c.emotion for c in held_clips])
    assert means_only < 0.5 + 4 * 0.5 / np.sqrt(32)


def test_frame_targets_are_the_judges_mouth_classes_blinks_head_pose_and_f0():
    from mdvae.eval.judges import MOUTH_OF_VISEME

    viseme = np.arange(9, dtype=np.int16)[None].repeat(2, 0)  # (2, 9): every viseme
    blink = np.array([[0.0, 0.49, 0.51, 1.0]], np.float32)
    pose = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    f0 = np.array([[100.0, 0.0, 200.0, 50.0]], np.float32)  # Hz, 0 unvoiced
    out = diag.frame_targets({"viseme": viseme, "blink": blink, "head_pose": pose, "f0": f0,
                              "phone": viseme})
    assert set(out) == {"mouth", "blink", "head_pose", "f0", "voicing"}
    np.testing.assert_array_equal(out["mouth"], MOUTH_OF_VISEME[viseme])
    assert set(out["mouth"].ravel()) == set(range(6))  # nine visemes, six mouth classes
    np.testing.assert_array_equal(out["blink"], [[0, 0, 1, 1]])  # closed above 0.5
    np.testing.assert_array_equal(out["head_pose"], pose)
    # semitones re 100 Hz, one value per frame, NaN when unvoiced
    np.testing.assert_allclose(out["f0"], [[[0.0], [np.nan], [12.0], [-12.0]]])
    np.testing.assert_array_equal(out["voicing"], [[1, 0, 1, 1]])
    assert diag.frame_targets({"phone": viseme}) == {}  # MEAD-like: nothing to read


def test_the_factors_of_a_model_follow_its_streams():
    def names(streams):
        return [f.name for f in diag.frame_factors_for(streams)]

    visual = ["mouth", "blink", "head_pose", "head_motion"]
    heard = ["f0_contour", "f0_level", "voicing"]
    assert names(["audio", "visual"]) == visual + heard
    assert names(["visual"]) == visual  # the face shows no pitch
    assert names(["audio"]) == visual + heard  # visual ones: probes only
    assert {f.name: f.stream for f in diag.FRAME_FACTORS}["f0_contour"] == "audio"


def test_clip_views_are_the_judges_contour_and_level_on_voiced_frames():
    x = np.array([0.0, 1.0, 2.0, 100.0, 4.0, 5.0])[None, :, None]  # (1, 6, 1)
    voiced = np.array([[True, True, True, False, True, True]])
    # the median of the five voiced frames is 2; the unvoiced 100 counts nowhere
    np.testing.assert_array_equal(diag.clip_view("level", x, voiced), [[2.0]])
    np.testing.assert_array_equal(diag.clip_view("contour", x, voiced)[0, :, 0],
                                  [-2.0, -1.0, 0.0, np.nan, 2.0, 3.0])
    assert diag.clip_view("frame", x, voiced) is x
    # fewer than MIN_VOICED_FRAMES (5) voiced frames: no contour, no level
    few = voiced & (np.arange(6) != 0)
    assert np.isnan(diag.clip_view("level", x, few)).all()
    assert np.isnan(diag.clip_view("contour", x, few)).all()


def test_the_motion_view_is_each_clips_pose_about_its_mean_over_the_frames_that_count():
    x = np.array([[1.0, 2.0, 6.0, 100.0], [0.0, 0.0, 3.0, 3.0]])[..., None]  # (2, 4, 1)
    counted = np.array([[True, True, True, False], [True, True, True, True]])
    out = diag.clip_view("motion", x, counted)[..., 0]
    np.testing.assert_array_equal(out, [[-2.0, -1.0, 3.0, np.nan], [-1.5, -1.5, 1.5, 1.5]])
    assert diag.clip_view("motion", x, np.zeros_like(counted)).shape == x.shape  # all NaN


def test_head_motion_follows_the_group_that_moves_the_head_not_the_one_that_places_it():
    rng = np.random.default_rng(0)
    n, t = 12, 30
    rest = rng.uniform(-3, 3, (n, 1, 3)) * np.ones((1, t, 1))  # each clip's rest pose
    moves = rng.normal(0.0, 2.0, (n, t, 3))
    moves -= moves.mean(1, keepdims=True)  # motion about the rest pose
    partner = diag.partners([f"s{i // 2}" for i in range(n)])
    truth = {"head_pose": rest + moves}
    # one group carries the rest pose, another the motion: each swapped alone
    readings = {"rest": {"head_pose": rest[partner] + moves},
                "motion": {"head_pose": rest + moves[partner]}}
    scores = diag.frame_factor_scores(truth, partner, readings)
    motion, pose = scores["head_motion"]["swaps"], scores["head_pose"]["swaps"]
    assert motion["motion"]["follow"] == 1.0 and motion["motion"]["stay"] == 0.0
    assert motion["rest"]["follow"] == 0.0 and motion["rest"]["stay"] == 1.0
    assert motion["rest"]["n"] > 0 and motion["motion"]["n"] > 0
    # the absolute pose is split between the two: neither swap carries all of it
    assert 0.0 < pose["rest"]["follow"] < 1.0 and 0.0 < pose["motion"]["follow"] < 1.0


def test_factor_targets_are_each_factors_view_of_a_whole_clip():
    f0 = np.array([0.0, 1.0, 2.0, np.nan, 4.0, 5.0])[:, None]  # (T, 1), frame 3 unvoiced
    mouth = np.arange(6)
    out = diag.factor_targets({"f0": f0, "mouth": mouth})
    assert set(out) == {"mouth", "f0_contour", "f0_level"}
    assert out["mouth"] is mouth
    np.testing.assert_array_equal(out["f0_contour"][:, 0], [-2.0, -1.0, 0.0, np.nan, 2.0, 3.0])
    np.testing.assert_array_equal(out["f0_level"], np.full((6, 1), 2.0))  # every frame


def _frame_world(rng: np.random.Generator, shape: tuple[int, ...]):
    """Per frame of `shape`, factors and 8-dim features that carry them linearly: a head pose
    (dims 0-2, exactly), a 3-class mouth (dims 3-4: a class centre 4 apart + noise 0.1),
    a blink (dim 5: +-3 + noise 0.1), two dims of pure noise."""
    pose = rng.uniform(-5, 5, (*shape, 3))
    mouth = rng.integers(0, 3, shape)
    blink = (rng.random(shape) < 0.1).astype(np.int64)
    centres = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    x = np.concatenate([pose, centres[mouth] + 0.1 * rng.normal(size=(*shape, 2)),
                        (6.0 * blink - 3.0 + 0.1 * rng.normal(size=shape))[..., None],
                        rng.normal(size=(*shape, 2))], -1)
    return x, {"mouth": mouth, "blink": blink, "head_pose": pose}


def test_frame_readout_follows_the_group_that_carries_a_factor_and_no_other():
    rng = np.random.default_rng(0)
    train_x, train_y = _frame_world(rng, (3000,))
    held_x, held_y = _frame_world(rng, (12, 40))  # 12 clips of 40 frames
    partner = diag.partners([f"s{i // 2}" for i in range(12)])
    readout = diag.fit_readout(train_x, train_y)
    assert readout.basis.shape == (8, 8)  # every component is well above the floor
    # a swap that takes the mouth's dims from B and leaves the rest of A's
    mouth_from_b = held_x.copy()
    mouth_from_b[..., 3:5] = held_x[partner][..., 3:5]
    readings = {"input": readout.predict(held_x), "reconstruction": readout.predict(held_x),
                "carrier": readout.predict(mouth_from_b), "ignored": readout.predict(held_x)}
    scores = diag.frame_factor_scores(held_y, partner, readings)
    assert set(scores) == {"mouth", "blink", "head_pose", "head_motion"}
    # the classes lie 20 noise SDs from their boundaries: read without error
    assert scores["mouth"]["input"] == 1.0 and scores["blink"]["input"] == 1.0
    assert scores["head_pose"]["input"] > 0.999  # linear and noise-free: R^2 ~ 1
    mouth = scores["mouth"]["swaps"]
    assert mouth["carrier"]["follow"] == 1.0 and mouth["carrier"]["stay"] == 0.0
    assert mouth["ignored"]["follow"] == 0.0 and mouth["ignored"]["stay"] == 1.0
    # ~2/3 of frames have another mouth class than the partner's, ~18 % another blink
    assert mouth["carrier"]["n"] > 0.5 * 12 * 40
    for other in ("blink", "head_pose", "head_motion"):  # the carrier swap left these with A
        swap = scores[other]["swaps"]["carrier"]
        assert swap["follow"] == 0.0 and swap["stay"] == 1.0 and swap["n"] > 0


def _f0_world(rng: np.random.Generator, clips: int, frames: int, unvoiced: float = 0.3):
    """Clips of a few speakers whose f0 (semitones, NaN unvoiced) is a level per clip plus a
    contour per frame, and 4-dim features that carry it linearly: dim 0, the contour plus
    noise 0.1 on voiced frames and 50 on unvoiced ones (so a reading that let unvoiced
    frames in would be thrown); dim 1, the level; two dims of pure noise. Eight speakers
    (pairs of clips) 4 semitones apart: `partners` pairs clip i with i + N / 2, whose
    level is 16 away, beyond what contours (+-3) move a median."""
    level = 4.0 * (np.arange(clips) // 2 % 8) + rng.uniform(-0.5, 0.5, clips)
    t = np.arange(frames)
    contour = 3.0 * np.sin(2 * np.pi * (t / rng.uniform(8, 30, (clips, 1))
                                        + rng.random((clips, 1))))  # (N, T)
    voiced = rng.random((clips, frames)) >= unvoiced
    f0 = np.where(voiced, level[:, None] + contour, np.nan)[..., None]  # (N, T, 1)
    x = np.stack([np.where(voiced, contour + 0.1 * rng.normal(size=contour.shape), 50.0),
                  np.broadcast_to(level[:, None], contour.shape),
                  *rng.normal(size=(2, clips, frames))], -1)
    return x, {"f0": f0}


def test_f0_readout_recovers_the_contour_and_level_and_follows_their_carriers():
    rng = np.random.default_rng(4)
    train_x, train_y = _f0_world(rng, 100, 40)
    held_x, held_y = _f0_world(rng, 16, 60)
    # training frames as the program draws them: a flat (M, D), unvoiced ones among them;
    # one frame's reading, not averaged over its neighbours (see the test below)
    readout = diag.fit_readout(train_x.reshape(-1, 4), {"f0": train_y["f0"].reshape(-1, 1)},
                               smooth={})
    assert set(readout.heads) == {"f0"}
    partner = diag.partners([f"s{i // 2}" for i in range(16)])
    contour_from_b, level_from_b = held_x.copy(), held_x.copy()
    contour_from_b[..., 0] = held_x[partner][..., 0]
    level_from_b[..., 1] = held_x[partner][..., 1]
    readings = {"input": readout.predict(held_x), "reconstruction": readout.predict(held_x),
                "z_a": readout.predict(contour_from_b), "w": readout.predict(level_from_b),
                "z_v": readout.predict(held_x)}
    assert readings["input"]["f0"].shape == (16, 60, 1)
    scores = diag.frame_factor_scores(held_y, partner, readings)
    assert set(scores) == {"f0_contour", "f0_level"}
    contour, level = scores["f0_contour"], scores["f0_level"]
    assert contour["kind"] == "value" and contour["stream"] == "audio"
    # the reading is f0 + noise 0.1 (SD): R^2 = 1 - 0.01 / var(contour) = 1 - 0.01 / 4.5
    # ~0.998, less a little for the medians; the levels' spread (var ~80) dwarfs all that
    assert contour["input"] > 0.99 and level["input"] > 0.999
    # dim 0 from B: its contour comes with it (exactly: the level shifts every frame
    # alike), the level stays A's (B's contour moves the median by less than 6 < 16 / 2)
    assert contour["swaps"]["z_a"]["follow"] == 1.0 and level["swaps"]["z_a"]["stay"] == 1.0
    # dim 1 from B: the level follows, the contour stays
    assert level["swaps"]["w"]["follow"] == 1.0 and contour["swaps"]["w"]["stay"] == 1.0
    assert contour["swaps"]["z_v"]["stay"] == 1.0 and level["swaps"]["z_v"]["stay"] == 1.0
    # counted: frames voiced in both where the contours differ by 1.5; clips whose levels do
    assert contour["swaps"]["z_a"]["n"] > 0.2 * 16 * 60
    assert level["swaps"]["w"]["n"] == 16  # every partner is another speaker, 16 st away


def test_moving_average_is_centred_and_shrinks_at_the_ends():
    x = np.array([[0.0, 1.0, 2.0, 3.0, 10.0]])  # (1, 5)
    np.testing.assert_allclose(diag.moving_average(x, 3, axis=1),
                               [[0.5, 1.0, 2.0, 5.0, 6.5]])
    # an even window reaches one further back: frames t - 2 .. t + 1
    np.testing.assert_allclose(diag.moving_average(x, 4, axis=1),
                               [[0.5, 1.0, 1.5, 4.0, 5.0]])
    np.testing.assert_array_equal(diag.moving_average(x, 1, axis=1), x)
    y = np.arange(12.0).reshape(2, 3, 2)  # along the middle axis, each column alone
    np.testing.assert_allclose(diag.moving_average(y, 3, axis=1)[1, :, 1],
                               [(7 + 9) / 2, (7 + 9 + 11) / 3, (9 + 11) / 2])


def test_f0_readings_are_averaged_over_the_frames_read_as_voiced():
    rng = np.random.default_rng(6)

    def world(clips, frames):
        # a slow contour (period 60 to 90 frames, amplitude 3) read with noise 1 (SD) on
        # voiced frames; on unvoiced frames dim 0 is junk (noise 30, SD), which dim 1 tells
        # apart; 30 % of frames unvoiced
        t = np.arange(frames)
        contour = 3.0 * np.sin(2 * np.pi * (t / rng.uniform(60, 90, (clips, 1))
                                            + rng.random((clips, 1))))
        voiced = rng.random((clips, frames)) >= 0.3
        f0 = np.where(voiced, contour, np.nan)[..., None]
        x = np.stack([np.where(voiced, contour + rng.normal(size=contour.shape),
                               30.0 * rng.normal(size=contour.shape)),
                      np.where(voiced, 1.0, -1.0), rng.normal(size=contour.shape)], -1)
        return x, f0

    train_x, train_f0 = world(200, 40)
    held_x, held_f0 = world(40, 90)
    targets = {"f0": train_f0.reshape(-1, 1),
               "voicing": np.isfinite(train_f0).reshape(-1).astype(np.int64)}
    contour = {f.name: f for f in diag.FRAME_FACTORS}["f0_contour"]

    def score(**smooth):
        readout = diag.fit_readout(train_x.reshape(-1, 3), targets, **smooth)
        return diag.frame_score(contour, readout.predict(held_x)["f0"], held_f0)

    # the default averages f0 over the frames read as voiced among 5 (the voicing head
    # reads dim 1 exactly); noise variance 1 over about 3.5 voiced frames against the
    # contour's 4.5: R^2 ~ 1 - 0.29 / 4.5 ~ 0.94, where one frame gives ~ 1 - 1 / 4.5 ~
    # 0.78 (and a 5-frame average of a period of 60 or more keeps 0.99 of the contour)
    one, averaged = score(smooth={}), score()
    assert 0.72 < one < 0.84 and averaged > 0.9
    # averaged over every frame, the unvoiced frames' junk swamps it: each brings a reading
    # of variance ~ (0.8 * 30)^2, ~1.5 of them in 5 frames: ~ 35 against the contour's 4.5
    assert score(smooth={"f0": (5, "")}) < 0.0
    # the voicing itself is a class reading, never averaged
    readout = diag.fit_readout(train_x.reshape(-1, 3), targets)
    assert readout.smooth == {"f0": (5, "voicing")}
    np.testing.assert_array_equal(readout.predict(held_x)["voicing"],
                                  np.isfinite(held_f0[..., 0]))


def test_f0_probes_find_the_contour_and_the_level_in_their_groups():
    rng = np.random.default_rng(5)
    train_x, train_y = _f0_world(rng, 100, 40)
    held_x, held_y = _f0_world(rng, 16, 60)
    # probes are fitted on each factor's view of the training clips, frame by frame
    per_clip = [diag.factor_targets({"f0": f0}) for f0 in train_y["f0"]]
    targets = {k: np.concatenate([t[k] for t in per_clip]) for k in per_clip[0]}
    # "z_a" holds the contour (and junk where unvoiced), "w_like" the level
    train = {"z_a": train_x[..., :1].reshape(-1, 1), "w_like": train_x[..., 1:2].reshape(-1, 1)}
    held = {"z_a": held_x[..., :1], "w_like": held_x[..., 1:2]}
    probes = diag.probe_frames(train, targets, held, held_y)
    assert set(probes) == {"f0_contour", "f0_level"}
    # noise 0.1 costs 0.01 / 4.5 of R^2, as for the read-out above; and the targets' clip
    # medians, which one frame cannot know, flatten the fitted slope by about
    # var(median) / var(contour) (~0.5 / 4.5 here), which costs about its square, ~0.01
    assert probes["f0_contour"]["z_a"] > 0.98
    # the level is the median of f0, the contour's median included, which dim 1 lacks:
    # R^2 = 1 - var(the contour's median) / var(level) ~ 1 - 0.5 / 86
    assert probes["f0_level"]["w_like"] > 0.99
    # a clip constant has no contour (R^2 0: the contour read is 0); a contour's median
    # says nothing of the level (R^2 <= 0 but for chance, 16 clips)
    assert abs(probes["f0_contour"]["w_like"]) < 0.01
    assert probes["f0_level"]["z_a"] < 0.3


def test_frame_probes_find_where_a_factor_lives():
    rng = np.random.default_rng(1)
    train_x, train_y = _frame_world(rng, (3000,))
    held_x, held_y = _frame_world(rng, (10, 60))
    # "z_av" holds the mouth and the pose, "z_v" only noise, "z_a" collapsed to a constant
    train = {"z_av": train_x[:, :5], "z_v": rng.normal(size=(3000, 4)), "z_a": np.ones((3000, 2))}
    held = {"z_av": held_x[..., :5], "z_v": rng.normal(size=(10, 60, 4)),
            "z_a": np.ones((10, 60, 2))}
    probes = diag.probe_frames(train, train_y, held, held_y)
    assert all(set(p) == {"z_av", "z_v"} for p in probes.values())  # a constant reads nothing
    assert probes["mouth"]["z_av"] == 1.0 and probes["head_pose"]["z_av"] > 0.999
    # noise: balanced accuracy near 1 / 3 (600 frames: SD ~0.02), R^2 near 0 (or below)
    assert abs(probes["mouth"]["z_v"] - 1 / 3) < 0.1
    assert probes["head_pose"]["z_v"] < 0.05
    assert abs(probes["blink"]["z_v"] - 0.5) < 0.15  # ~60 closed frames: SD ~0.04


def test_a_group_a_decoder_ignores_leaves_its_readings_with_a():
    torch.manual_seed(3)
    model = MDVAE(MDVAEConfig(**TINY)).eval().requires_grad_(False)
    x_a, x_v = torch.randn(6, 8, 12), torch.randn(6, 8, 20)
    partner = diag.partners(["a", "a", "b", "b", "c", "c"])
    _, v_hat = model.decode(model.encode(x_a, x_v))
    # an untrained decoder's means vary little: read them in units of their own spread
    centre, spread = v_hat.median(1).values.median(0).values, v_hat.std((0, 1))

    def read(v: torch.Tensor) -> dict[str, np.ndarray]:  # any function of the visual means
        z = ((v - centre) / spread).numpy().astype(np.float64)
        return {"mouth": (z[..., 0] > 0).astype(np.int64) + (z[..., 1] > 0),
                "head_pose": 5.0 * z[..., 2:5]}

    a_hat, _ = model.decode(model.encode(x_a, x_v))
    a_centre, a_spread = a_hat.mean((0, 1)), a_hat.std((0, 1))

    def hear(a: torch.Tensor) -> dict[str, np.ndarray]:  # and of the audio means
        return {"f0": 10.0 * ((a - a_centre) / a_spread).numpy().astype(np.float64)[..., :1]}

    measured = diag.measure(model, x_a, x_v, partner=partner,
                            read={"visual": read, "audio": hear})
    assert set(measured.readings) == {"reconstruction", "w", "z_av", "z_a", "z_v"}
    assert set(measured.readings["z_a"]) == {"mouth", "head_pose", "f0"}  # streams merged
    np.testing.assert_array_equal(measured.readings["reconstruction"]["mouth"],
                                  read(v_hat)["mouth"])
    np.testing.assert_allclose(measured.readings["reconstruction"]["f0"], hear(a_hat)["f0"])
    # a model that renders perfectly: the truth is what the reconstruction reads
    truth = measured.readings["reconstruction"]
    scores = diag.frame_factor_scores(truth, partner, measured.readings)
    assert scores["mouth"]["reconstruction"] == 1.0
    for name in ("head_pose", "f0_contour", "f0_level"):
        assert scores[name]["reconstruction"] == pytest.approx(1.0)
    for name, group in (("mouth", "z_a"), ("head_pose", "z_a"), ("f0_contour", "z_v"),
                        ("f0_level", "z_v")):
        # p(x_v | z_av, z_v, w) never reads z_a, nor p(x_a | z_av, z_a, w) z_v
        ignored = scores[name]["swaps"][group]
        assert ignored["n"] > 0 and ignored["follow"] == 0.0 and ignored["stay"] == 1.0
    # and a group that the audio decoder reads moves its readings (n counts them)
    assert scores["f0_contour"]["swaps"]["z_a"]["stay"] < 1.0


def test_frame_factor_table_lists_each_swap_and_probe():
    frame_factors = {
        "mouth": {"kind": "class", "input": 0.7, "reconstruction": 0.6,
                  "swaps": {"z_av": {"follow": 0.62, "stay": 0.1, "n": 10}},
                  "latents": {"z_av": 0.9}},
        "head_pose": {"kind": "value", "latents": {"z_av": 0.25}},
    }
    lines = diag.format_frame_factors(frame_factors)
    head = next(i for i, line in enumerate(lines) if line.split()[0] == "factor")
    assert lines[head].split() == ["factor", "input", "recon", "swap", "z_av", "probe", "z_av"]
    assert lines[head + 2].split() == ["mouth", "0.700", "0.600", "0.62/0.10", "0.900"]
    assert lines[head + 3].split() == ["head_pose", "nan", "nan", "-", "0.250"]
    # no read-out (an audio model): its columns go, the probes stay
    probes_only = {"mouth": {"kind": "class", "stream": "visual", "latents": {"z": 0.5}}}
    lines = diag.format_frame_factors(probes_only)
    assert "mouth: the model has no visual stream" in "\n".join(lines)
    assert lines[-1].split() == ["mouth", "0.500"]
    # an audio model: f0 read out, the visual factors probed only
    mixed = {**probes_only, "f0_contour": {
        "kind": "value", "stream": "audio", "input": 0.9, "reconstruction": 0.5,
        "swaps": {"z": {"follow": 0.7, "stay": 0.2, "n": 5}}, "latents": {"z": 0.4}}}
    lines = diag.format_frame_factors(mixed)
    assert "mouth: the model has no visual stream" in "\n".join(lines)
    assert lines[-2].split() == ["mouth", "nan", "nan", "-", "0.500"]
    assert lines[-1].split() == ["f0_contour", "0.900", "0.500", "0.70/0.20", "0.400"]


def test_diagnose_program_reports_every_group_of_a_bundle(tiny_bundle, tiny_store, tmp_path,
                                                          capsys):
    from train import diagnose

    out = tmp_path / "diag.json"
    result = diagnose.main(["--bundle", str(tiny_bundle), "--store", str(tiny_store),
                            "--held-split", "test", "--feature-probes", "--json", str(out)])
    assert [g.name for g in result.groups] == ["w", "z_av", "z_a", "z_v"]
    assert result.clips == 4  # the one test speaker's 4 clips
    # one held-out speaker: no speaker probe can be fitted, and the report says NaN
    assert np.isnan(result.groups[0].probes["speaker"])
    assert 0.0 <= result.groups[0].probes["emotion"] <= 1.0
    assert set(result.feature_probes) == {"audio", "visual", "both"}
    assert set(result.feature_stats_probes) == {"audio", "visual", "both"}
    assert len(result.feature_stats_probes["both"]["correct"]) == 4
    text = capsys.readouterr().out
    assert "KL t=1" in text and "moves visual" in text
    assert "sampled -ELBO per frame on held-out windows" in text
    assert np.isfinite(result.sampled_elbo["negative_elbo"])
    assert json.loads(out.read_text())["model"] == "MDVAE"
    # the synthetic store has the per-frame factors: all four groups swapped, z's probed
    mouth = result.frame_factors["mouth"]
    assert 0.0 <= mouth["input"] <= 1.0 and 0.0 <= mouth["reconstruction"] <= 1.0
    assert set(mouth["swaps"]) == {"w", "z_av", "z_a", "z_v"}
    assert set(mouth["latents"]) == {"w", "z_av", "z_a", "z_v"}
    assert "head_pose" in result.frame_factors and "probe z_av" in text and "probe w" in text
    assert json.loads(out.read_text())["frame_factors"]["mouth"]["kind"] == "class"
    # and the audio stream's: f0 read from the audio features, swapped, probed
    for name in ("f0_contour", "f0_level"):
        row = result.frame_factors[name]
        assert row["stream"] == "audio" and np.isfinite(row["input"])
        assert row["reconstruction"] <= 1.0 and set(row["swaps"]) == {"w", "z_av", "z_a", "z_v"}
        assert set(row["latents"]) == {"w", "z_av", "z_a", "z_v"}
    assert "f0_contour" in text and "f0_level" in text
    assert json.loads(out.read_text())["frame_factors"]["f0_contour"]["stream"] == "audio"
    # the pitch heard in the decoded audio: both clips through the codec, the reconstruction
    # and each swap, over the same pairs (which count depends on the truth alone)
    heard = result.pitch_heard
    assert list(heard) == ["B itself (codec)", "A itself (codec)", "reconstruction",
                           "w", "z_av", "z_a", "z_v"]
    for factor in ("level", "contour", "shape", "size"):
        assert len({row[factor]["n"] for row in heard.values()}) == 1
        for row in heard.values():
            if row[factor]["n"]:
                assert row[factor]["follow"] + row[factor]["stay"] == pytest.approx(1.0)
    assert "pitch heard in the decoded audio" in text and "swap z_av" in text
    assert set(json.loads(out.read_text())["pitch_heard"]["w"]) == set(pitch.READINGS)
    assert "size" in text.split("pitch heard in the decoded audio")[1]
    # the emotion in w per level, and with another emotion's voice: the same w probe as
    # the group table's, so the same accuracy over all clips
    sources = result.emotion_sources
    assert sources["all"]["clips"] == 4
    assert sources["all"]["accuracy"] == pytest.approx(result.groups[0].probes["emotion"])
    assert sum(row["clips"] for k, row in sources.items() if k != "all") == 4
    assert "emotion read from w" in text
    assert json.loads(out.read_text())["emotion_sources"]["all"]["clips"] == 4
    # how it was measured, so that train.compare_diagnostics can refuse to mix clips
    settings = json.loads(out.read_text())["settings"]
    assert settings["source"] == str(tiny_bundle) and settings["component"] == "mdvae"
    assert settings["held_store"] == str(tiny_store) and settings["held_split"] == "test"
    assert settings["frame_probes"] is True and settings["window"] == 30
    # and the result is what train.compare_diagnostics reads: a run against itself has a
    # margin of 0 at every level
    from train import compare_diagnostics

    cmp = compare_diagnostics.main([str(out), str(out), "--labels", "a", "b", "--pair", "a=b",
                                    "--out", str(tmp_path / "cmp")])
    assert cmp["mismatches"] == [] and cmp["models"] == {"a": "MDVAE", "b": "MDVAE"}
    margin = cmp["margins"]["per_pair"]["a - b"]
    assert set(margin) == {"all"} | {str(lv) for lv in sources if lv != "all"}
    assert all(row["difference"] == 0.0 for row in margin.values())
    assert cmp["measures"]["emotion from w"]["a"]["value"] == pytest.approx(
        sources["all"]["accuracy"])


def _store_without_factors(folder) -> None:
    """Like MEAD: labelled clips, no per-frame ground truth."""
    from mdvae.data.store import StoreWriter

    rng = np.random.default_rng(0)
    with StoreWriter(folder, source_kind="test") as writer:
        for i in range(6):
            writer.add(f"c{i}", rng.integers(0, 255, (12, 64, 64, 3), dtype=np.uint8),
                       rng.random((12, 513), dtype=np.float32), speaker=f"s{i // 2}",
                       emotion="happy" if i % 2 else "sad", level=2, source="test",
                       split="train" if i < 4 else "val")


def test_diagnose_skips_visual_read_outs_for_audio_models_and_stores_without_factors(
        tiny_bundle, tiny_store, tmp_path, capsys):
    from train import diagnose

    result = diagnose.main(["--bundle", str(tiny_bundle), "--component", "dsae_audio",
                            "--store", str(tiny_store), "--held-split", "test", "--window", "0"])
    # no visual stream: no read-out of it, but the audio z is still probed per frame
    factors = result.frame_factors
    assert set(factors) == {"mouth", "blink", "head_pose", "head_motion", "f0_contour",
                            "f0_level", "voicing"}
    assert all(set(factors[n]) == {"kind", "stream", "latents"} and set(factors[n]["latents"])
               == {"w", "z"} for n in ("mouth", "blink", "head_pose", "head_motion"))
    # its own stream's f0 is read out and swapped
    assert set(factors["f0_contour"]) == {"kind", "stream", "input", "reconstruction", "swaps",
                                          "latents"}
    assert set(factors["f0_contour"]["swaps"]) == {"w", "z"}
    assert set(result.pitch_heard) == {"B itself (codec)", "A itself (codec)",
                                       "reconstruction", "w", "z"}
    # the V-DSAE: visual factors only, all read out
    result = diagnose.main(["--bundle", str(tiny_bundle), "--component", "dsae_visual",
                            "--store", str(tiny_store), "--held-split", "test", "--window", "0"])
    assert set(result.frame_factors) == {"mouth", "blink", "head_pose", "head_motion"}
    assert set(result.frame_factors["head_pose"]["swaps"]) == {"w", "z"}
    assert result.pitch_heard == {}  # no audio, no pitch
    _store_without_factors(tmp_path / "mead_like")
    capsys.readouterr()
    result = diagnose.main(["--bundle", str(tiny_bundle), "--store", str(tiny_store),
                            "--held-store", str(tmp_path / "mead_like"), "--window", "0"])
    assert result.frame_factors == {} and result.pitch_heard == {} and result.clips == 2
    assert "per-frame factor probes skipped" in capsys.readouterr().err
    result = diagnose.main(["--bundle", str(tiny_bundle), "--store", str(tiny_store),
                            "--held-split", "test", "--window", "0", "--no-frame-probes"])
    assert result.frame_factors == {}


def test_diagnose_reads_whose_speaker_the_voice_is_with_an_audio_judge(
        tiny_bundle, tiny_store, tmp_path, capsys):
    """With --audio-judge, the voice decoded with its own face and another speaker's, on
    training and held-out speakers (an untrained judge: the report's shape, not its
    figures); a file that is not an audio judge is refused."""
    from mdvae.data.store import Store
    from mdvae.errors import MDVAEError
    from mdvae.eval import judges as J
    from train import diagnose

    store = Store(tiny_store)
    names = tuple(sorted({c.speaker for c in store.split_clips("train")}))
    torch.manual_seed(0)
    judge = J.Judge(J.JudgeConfig(modality="audio", speakers=names, width=4))
    path = J.save_judge(tmp_path / "judge_audio.safetensors", judge, J.JudgeReport("audio"),
                        key="test")
    result = diagnose.main(["--bundle", str(tiny_bundle), "--store", str(tiny_store),
                            "--held-split", "test", "--window", "0", "--no-frame-probes",
                            "--audio-judge", str(path)])
    seen, held = result.voice_sources["training speakers"], result.voice_sources[
        "held-out speakers"]
    assert seen["pairs"] > 0 and 0.0 <= seen["mixed"] <= 1.0 and 0.0 <= seen["own"] <= 1.0
    assert held["pairs"] == 0  # one test speaker: no other speaker's clip to pair with
    assert "whose speaker the decoded voice is" in capsys.readouterr().out
    voice_only = diagnose.main(["--bundle", str(tiny_bundle), "--component", "dsae_audio",
                                "--store", str(tiny_store), "--held-split", "test",
                                "--window", "0", "--no-frame-probes", "--audio-judge", str(path)])
    assert "own" in voice_only.voice_sources["training speakers"]
    assert "mixed" not in voice_only.voice_sources["training speakers"]
    visual = J.save_judge(tmp_path / "judge_visual.safetensors",
                          J.Judge(J.JudgeConfig(modality="visual", speakers=names, width=4)),
                          J.JudgeReport("visual"), key="test")
    for wrong in (visual, tmp_path / "missing.safetensors"):
        with pytest.raises(MDVAEError, match="not an audio judge"):
            diagnose.main(["--bundle", str(tiny_bundle), "--store", str(tiny_store),
                           "--held-split", "test", "--audio-judge", str(wrong)])


def test_diagnose_refuses_an_unknown_split(tiny_bundle, tiny_store):
    from mdvae.errors import MDVAEError
    from train import diagnose

    with pytest.raises(MDVAEError, match="is not one of"):
        diagnose.main(["--bundle", str(tiny_bundle), "--store", str(tiny_store),
                       "--held-split", "nonexistent"])
    # held-out clips of speakers the probes learn are not held out: refused
    with pytest.raises(MDVAEError, match="are training speakers"):
        diagnose.main(["--bundle", str(tiny_bundle), "--store", str(tiny_store),
                       "--held-store", str(tiny_store), "--held-split", "train"])


def _voice_world(n_speakers: int = 6, clips_each: int = 3):
    """Clips whose audio is its speaker's one-hot voice and whose face its one-hot face
    (the same index), over 5 frames, and a speaker head that reads the voice's one-hot."""
    who = np.repeat(np.arange(n_speakers), clips_each)
    eye = torch.eye(n_speakers)
    x_a = eye[who][:, None].expand(-1, 5, -1).clone()
    x_v = 2.0 * eye[who][:, None].expand(-1, 5, -1).clone()

    def read_speaker(features: torch.Tensor) -> np.ndarray:
        return torch.log_softmax(4.0 * features.mean(1), -1).numpy()

    return x_a, x_v, [f"s{k}" for k in who], read_speaker


@pytest.mark.parametrize("renders, mixed", [("audio", 1.0), ("face", 0.0)])
def test_voice_sources_tell_a_voice_heard_from_one_recalled_from_the_face(renders, mixed):
    """A model that renders the voice it hears keeps the audio's speaker with another's
    face; one that recalls the voice that goes with the face renders the face's speaker.
    Both render a clip's own voice from its own streams."""
    x_a, x_v, speakers, read_speaker = _voice_world()

    def decode_voice(a, v):
        return a.clone() if renders == "audio" else v / 2.0

    out = diag.voice_sources(decode_voice, read_speaker, x_a, x_v, speakers,
                             np.random.default_rng(0))
    assert out["pairs"] == len(speakers)  # every clip has a mate and a partner with one
    assert out["codec"] == 1.0 and out["own"] == 1.0 and out["mixed"] == mixed
    assert out["mixed_se"] == 0.0
    lines = diag.format_voice_sources({"training speakers": out})
    assert "mixed" in lines[2] and lines[-1].split()[:2] == ["training", "speakers"]
    assert lines[-1].split()[-3:] == [f"{mixed:.3f}", "±", "0.000"]


def test_voice_sources_follow_the_larger_part_of_a_blend_and_skip_lone_clips():
    """A voice blended from the audio's and the face's one-hots counts as the audio's
    speaker where the audio's part is the larger; a speaker with a single clip has no mate
    to compare with; a one-stream model has no mixed pairing."""
    x_a, x_v, speakers, read_speaker = _voice_world()
    speakers[0] = "alone"  # clip 0 is now its speaker's only clip
    for heard, mixed in ((0.6, 1.0), (0.4, 0.0)):
        out = diag.voice_sources(lambda a, v, k=heard: k * a + (1 - k) * v / 2.0, read_speaker,
                                 x_a, x_v, speakers, np.random.default_rng(1))
        assert out["pairs"] == len(speakers) - 1
        assert out["own"] == 1.0 and out["mixed"] == mixed
    one = diag.voice_sources(lambda a, v: a, read_speaker, x_a, x_v, speakers,
                             np.random.default_rng(1), mix=False)
    assert "mixed" not in one and one["own"] == 1.0
    assert "mixed" not in diag.format_voice_sources({"held-out speakers": one})[2]
    assert diag.voice_sources(lambda a, v: a, read_speaker, x_a[:1], x_v[:1], ["x"],
                              np.random.default_rng(0)) == {"pairs": 0}


def test_mixed_partners_share_speaker_and_level_not_emotion():
    speakers = ["a", "a", "a", "a", "b", "b"]
    emotions = ["angry", "happy", "angry", "sad", "sad", "sad"]
    levels = [2, 2, 3, 2, 1, 1]
    voice = diag.mixed_partners(speakers, emotions, levels)
    # clip 0 takes the next of a's level-2 clips with another emotion; 2 has no such clip
    # at level 3; b's clips share their emotion, so they have none
    assert voice.tolist() == [1, 3, -1, 0, -1, -1]
    # the control: another speaker's clip of the same emotion and level (a's sad clip 3 and
    # b's sad clips differ in level; nothing else is shared)
    alike = diag.mixed_partners(["a", "a", "b", "b", "c"], ["sad", "angry", "sad", "angry", "sad"],
                                [1, 2, 1, 2, 2], same_emotion=True)
    assert alike.tolist() == [2, 3, 0, 1, -1]


def _emotion_world(rng: np.random.Generator, per: int = 12):
    """Clips of 3 speakers x 3 emotions x 2 levels; the face and the voice each show the
    emotion as a clean one-hot in their own features (the face on dims 0..2, the voice on
    dims 3..5 of its stream), plus noise."""
    names = ["angry", "happy", "sad"]
    emotions, levels, speakers, x_a, x_v = [], [], [], [], []
    for s in range(3):
        for e, name in enumerate(names):
            for level in (1, 2):
                for _ in range(per // 6):
                    emotions.append(name)
                    levels.append(level)
                    speakers.append(f"s{s}")
                    a, v = rng.normal(0, 0.1, (5, 6)), rng.normal(0, 0.1, (5, 6))
                    v[:, e] += 1.0
                    a[:, 3 + e] += 1.0
                    x_a.append(a)
                    x_v.append(v)
    return (emotions, levels, speakers, torch.tensor(np.stack(x_a), dtype=torch.float32),
            torch.tensor(np.stack(x_v), dtype=torch.float32))


@pytest.mark.parametrize("reads, face, voice", [("face", 1.0, 0.0), ("voice", 0.0, 1.0)])
def test_emotion_sources_tell_whose_emotion_w_holds(reads, face, voice):
    emotions, levels, speakers, x_a, x_v = _emotion_world(np.random.default_rng(0))

    def encode_w(a, v):  # a w that sees one stream only: its clip mean
        return (v if reads == "face" else a).mean(1).numpy()

    w = encode_w(x_a, x_v)
    probe = diag.fit_probe(w, emotions)
    sources = diag.emotion_sources(encode_w, probe, w, x_a, x_v, emotions, levels, speakers)
    assert list(sources) == ["1", "2", "all"]
    assert sources["all"]["clips"] == len(emotions) and sources["1"]["clips"] == len(emotions) // 2
    for row in sources.values():
        assert row["accuracy"] == 1.0  # the probe reads every clip itself
        assert row["pairs"] == row["clips"]  # each clip has another emotion at its level
        assert row["face"] == face and row["voice"] == voice and row["neither"] == 0.0
        # another clip's voice of the same emotion changes nothing either way
        assert row["same_pairs"] == row["clips"] and row["same_accuracy"] == 1.0
    lines = diag.format_emotion_sources(sources)
    assert "mixed: face / voice / neither" in lines[4] and len(lines) == 4 + 2 + 3


def test_emotion_sources_tell_a_voice_that_counts_from_one_that_only_disturbs():
    """A w that reads the face's emotion but is thrown off by any voice but the clip's own
    loses its accuracy with a same-emotion voice too; one that reads the voice's emotion
    beside the face's keeps it."""
    emotions, levels, speakers, x_a, x_v = _emotion_world(np.random.default_rng(2))
    own_voice = {id(x_a)}

    def disturbed(a, v):  # the face's one-hot, scrambled unless the voice is the clip's own
        w = v.mean(1).numpy()
        return w if id(a) in own_voice else w[:, ::-1]

    def both(a, v):  # the two streams' one-hots side by side
        return torch.cat([v.mean(1), a.mean(1)], -1).numpy()

    for encode_w, kept in ((disturbed, False), (both, True)):
        w = encode_w(x_a, x_v)
        probe = diag.fit_probe(w, emotions)
        row = diag.emotion_sources(encode_w, probe, w, x_a, x_v, emotions, levels,
                                   speakers)["all"]
        assert row["accuracy"] == 1.0
        # scrambled, the face's one-hot lands where the probe reads noise: about 1/3
        assert row["same_accuracy"] == 1.0 if kept else row["same_accuracy"] < 0.5


def test_emotion_sources_of_a_one_stream_model_have_no_mix():
    emotions, levels, speakers, x_a, x_v = _emotion_world(np.random.default_rng(1))
    # a w that sees the face alone, with the level-1 clips' emotion erased (w = 0)
    hide = torch.tensor([lv == 1 for lv in levels])

    def encode_w(a, v):
        w = v.mean(1).clone()
        w[hide] = 0.0
        return w.numpy()

    w = encode_w(x_a, x_v)
    probe = diag.fit_probe(w, emotions)
    sources = diag.emotion_sources(encode_w, probe, w, x_a, x_v, emotions, levels, speakers,
                                   mix=False)
    assert sources["2"]["accuracy"] == 1.0
    # level 1: every w is the same, so the probe gives one emotion of three
    assert sources["1"]["accuracy"] == pytest.approx(1 / 3)
    assert sources["all"]["accuracy"] == pytest.approx((1 + 1 / 3) / 2)
    # each clip's own reading, in clip order: every level-2 clip right, one in three of level 1
    assert sources["2"]["correct"] == [1] * sources["2"]["clips"]
    assert sum(sources["1"]["correct"]) * 3 == sources["1"]["clips"]
    assert sources["all"]["correct"] == (probe.predict(w) == np.asarray(emotions)).tolist()
    assert all("pairs" not in row for row in sources.values())
    assert "mixed" not in "\n".join(diag.format_emotion_sources(sources))
