"""The stage-2 diagnostics measure what they say: clip shares, swap moves, probes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mdvae.eval import diagnostics as diag
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
    groups, streams, means = diag.measure(model, x_a, x_v, partner=partner)
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
    groups, streams, _ = diag.measure(model, torch.randn(3, 5, 12), torch.randn(3, 5, 20),
                                      partner=np.arange(3))
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


def test_feature_means_average_each_clip_over_its_own_frames():
    from types import SimpleNamespace

    audio = np.arange(20, dtype=np.float16)[:, None].repeat(3, 1)
    visual = -np.arange(20, dtype=np.float16)[:, None].repeat(5, 1)
    clips = [SimpleNamespace(start=0, length=4), SimpleNamespace(start=10, length=10)]
    means = diag.feature_means(audio, visual, clips)
    assert means["audio"].shape == (2, 3) and means["visual"].shape == (2, 5)
    np.testing.assert_allclose(means["audio"][:, 0], [1.5, 14.5])
    np.testing.assert_allclose(means["visual"][:, 0], [-1.5, -14.5])


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
    text = capsys.readouterr().out
    assert "KL t=1" in text and "moves visual" in text
    assert "sampled -ELBO per frame on held-out windows" in text
    assert np.isfinite(result.sampled_elbo["negative_elbo"])
    assert json.loads(out.read_text())["model"] == "MDVAE"


def test_diagnose_refuses_an_unknown_split(tiny_bundle, tiny_store):
    from mdvae.errors import MDVAEError
    from train import diagnose

    with pytest.raises(MDVAEError, match="is not one of"):
        diagnose.main(["--bundle", str(tiny_bundle), "--store", str(tiny_store),
                       "--held-split", "nonexistent"])
