"""The training programs end to end on the tiny store: loss down, resume after kill -9,
emotion heads, export to a loadable bundle."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mdvae.bundle import load_bundle
from mdvae.data.store import Store
from mdvae.errors import ConfigError, MDVAEError
from mdvae.model.mdvae import MDVAE, MDVAEConfig
from train import ceiling, common, emotion, export, probe, recipe, stage1, stage2, unpack
from train.runs import load_stage1, load_stage2

ROOT = Path(__file__).resolve().parents[1]
TINY_VQ_FLAGS = ["--model-channels", "8", "16", "16", "--model-res-blocks", "1",
                 "--model-res-channels", "8"]
TINY_MDVAE_FLAGS = ["--mdvae-w-dim", "8", "--mdvae-z-av-dim", "4", "--mdvae-z-a-dim", "2",
                    "--mdvae-z-v-dim", "2", "--mdvae-feature-dim", "32",
                    "--mdvae-audio-hidden", "32", "--mdvae-visual-hidden", "32",
                    "--mdvae-rnn-dim", "16", "--mdvae-z-rnn-dim", "16"]
TINY_DSAE_FLAGS = ["--dsae-w-dim", "8", "--dsae-z-dim", "4", "--dsae-feature-dim", "32",
                   "--dsae-hidden-dim", "32", "--dsae-rnn-dim", "16", "--dsae-z-rnn-dim", "16"]
FAST = ["--lr", "3e-3", "--warmup", "2", "--log-every", "5", "--val-batches", "1",
        "--threads", "1"]


def train_losses(run_dir: Path, key: str = "total") -> list[float]:
    return [r[key] for r in common.RunFolder(run_dir).read_log() if r["split"] == "train"]


@pytest.fixture(scope="module")
def runs(tiny_store, tmp_path_factory):
    """Stage-1 and stage-2 runs on the tiny store, shared by the tests below."""
    out = tmp_path_factory.mktemp("runs")
    for modality, batch in (("visual", "16"), ("audio", "32")):
        stage1.main(["--store", str(tiny_store), "--modality", modality,
                     "--out", str(out / f"vq_{modality}"), "--steps", "40",
                     "--batch-size", batch, "--val-every", "20", *FAST, *TINY_VQ_FLAGS])
    common_flags = ["--store", str(tiny_store), "--vq-visual", str(out / "vq_visual"),
                    "--vq-audio", str(out / "vq_audio"), "--seq-len", "12",
                    "--batch-size", "8", "--val-every", "20", "--kl-warmup", "10", *FAST]
    stage2.main([*common_flags, "--model", "mdvae", "--out", str(out / "mdvae"),
                 "--steps", "40", *TINY_MDVAE_FLAGS])
    for kind in ("dsae-audio", "dsae-visual"):
        stage2.main([*common_flags, "--model", kind, "--out", str(out / kind.replace("-", "_")),
                     "--steps", "10", *TINY_DSAE_FLAGS])
    return out


@pytest.mark.slow
def test_stage1_programs_lower_their_loss(runs):
    for modality, ratio in (("visual", 0.7), ("audio", 0.8)):
        losses = train_losses(runs / f"vq_{modality}", "reconstruction")
        assert losses[-1] < ratio * losses[0], (modality, losses)
        saved = json.loads((runs / f"vq_{modality}" / "config.json").read_text())
        assert saved["modality"] == modality and saved["model"]["channels"] == [8, 16, 16]
        assert (runs / f"vq_{modality}" / "curves.png").exists()


@pytest.mark.slow
def test_stage2_lowers_the_negative_elbo_and_caches_features(runs, tiny_store):
    losses = train_losses(runs / "mdvae")
    assert losses[-1] < losses[0] - 0.1 * abs(losses[0]), losses
    config = json.loads((runs / "mdvae" / "config.json").read_text())
    assert (Path(tiny_store) / "features" / config["feature_key"]).is_dir()
    val = [r for r in common.RunFolder(runs / "mdvae").read_log() if r["split"] == "val"]
    assert val and "negative_elbo" in val[-1] and "kl_zv" in val[-1]


def test_kl_warmup_scales_only_the_kl_terms():
    assert stage2.kl_scale(0, 10) == pytest.approx(0.1)
    assert stage2.kl_scale(9, 10) == 1.0 and stage2.kl_scale(500, 10) == 1.0
    assert stage2.kl_scale(None, 10) == 1.0 and stage2.kl_scale(0, 0) == 1.0


def test_nested_configs_get_no_flag_and_presets_choose_them():
    help_text = stage2.build_parser().format_help()
    assert "--mdvae-authors-layout" not in help_text and "--mdvae-w-dim" in help_text
    args = stage2.build_parser().parse_args(
        ["--store", "s", "--vq-visual", "v", "--vq-audio", "a", "--out", "o", "--preset",
         "authors", "--mdvae-w-dim", "84"])
    _, cfg = stage2.build_model("mdvae", args, None)
    assert cfg.authors_layout is not None and cfg.w_dim == 84


def test_static_first_schedule_releases_the_zs_after_w():
    from mdvae.model.elbo import KLWeights

    assert stage2.kl_weights(4, 10) == KLWeights(0.5, 0.5)  # no static phase: one warm-up
    assert stage2.kl_weights(4, 10, static_first=20, z_warmup=10) == KLWeights(
        0.5, 0.0, static_only=True)
    assert stage2.kl_weights(19, 10, 20, 10).static_only
    released = stage2.kl_weights(24, 10, 20, 10)
    assert released == KLWeights(1.0, 0.5) and not released.static_only
    assert stage2.kl_weights(40, 10, 20, 10) == KLWeights(1.0, 1.0)
    assert stage2.kl_weights(None, 10, 20, 10) == KLWeights(1.0, 1.0)  # validation: the ELBO


def test_z_v_can_warm_up_on_its_own_after_the_static_phase():
    from mdvae.model.elbo import KLWeights

    # z's released at step 20; the others reach full weight over 10 steps, z_v over 40
    assert stage2.kl_weights(10, 10, 20, 10, z_v_warmup=40).z_v_effective == 0.0
    released = stage2.kl_weights(29, 10, 20, 10, z_v_warmup=40)
    assert released.z_effective == 1.0 and released.z_v_effective == pytest.approx(0.25)
    assert stage2.kl_weights(59, 10, 20, 10, z_v_warmup=40).z_v_effective == 1.0
    assert stage2.kl_weights(None, 10, 20, 10, z_v_warmup=40) == KLWeights(1.0, 1.0)
    assert KLWeights(1.0, 0.5).z_v_effective == 0.5  # no z_v of its own: the z's weight


def test_z_v_warmup_is_refused_without_a_static_phase_or_for_a_dsae():
    base = ["--store", "s", "--vq-visual", "v", "--vq-audio", "a", "--out", "o"]
    with pytest.raises(ConfigError, match="z-v-warmup"):
        stage2.main(base + ["--z-v-warmup", "100"])
    with pytest.raises(ConfigError, match="z-v-warmup"):
        stage2.main(base + ["--model", "dsae-visual", "--static-first", "10",
                            "--z-v-warmup", "100"])


@pytest.mark.slow
def test_emotion_heads_and_export_give_a_loadable_bundle(runs, tiny_store, tmp_path):
    flags = ["--vq-visual", str(runs / "vq_visual"), "--vq-audio", str(runs / "vq_audio"),
             "--mdvae", str(runs / "mdvae"), "--dsae-audio", str(runs / "dsae_audio"),
             "--dsae-visual", str(runs / "dsae_visual")]
    report = emotion.main(["--store", str(tiny_store), *flags, "--out", str(tmp_path / "heads"),
                           "--probe-groups"])
    assert set(report) == {"emotion", "emotion_dsae_audio", "emotion_dsae_visual"}
    assert 0.0 <= report["emotion"]["accuracy"]["test"] <= 1.0
    by_group = report["emotion"]["test_accuracy_by_group"]
    assert set(by_group) == {"w", "z_av", "z_a", "z_v", "all"}
    assert set(report["emotion_dsae_audio"]["test_accuracy_by_group"]) == {"w", "z", "all"}
    assert all(0.0 <= v <= 1.0 for v in by_group.values())
    # the ceiling: probes on the clip means of the stage-1 features, kept with the heads
    features = load_bundle(tmp_path / "heads").info["stage1_feature_probes"]
    assert set(features) == {"audio", "visual", "all"}
    assert all(0.0 <= v <= 1.0 for v in features.values())
    out = export.main([*flags, "--emotion", str(tmp_path / "heads"), "--out",
                       str(tmp_path / "bundle")])
    bundle = load_bundle(out)
    assert {"vq_visual", "vq_audio", "mdvae", "dsae_audio", "dsae_visual", "emotion"} <= set(
        bundle.components)
    assert bundle.info["data"]["source"] == "synthetic"
    assert "Training data" in bundle.card and "emotion" in bundle.card
    # the card's steps are those of the exported checkpoint, and each run names its data
    assert bundle.info["runs"]["mdvae"]["steps"] == 40
    assert bundle.info["runs"]["mdvae"]["store"] == str(tiny_store)
    assert f"`{tiny_store}` (train split) | 40 |" in bundle.card
    assert not list(Path(out).glob("*.pt")), "training checkpoints must not enter a bundle"
    # the exported MDVAE is the trained one
    trained = load_stage2(str(runs / "mdvae"))
    for (name, p), q in zip(trained.state_dict().items(), bundle.mdvae.state_dict().values()):
        torch.testing.assert_close(p, q, msg=name)


@pytest.mark.slow
def test_probe_reads_w_as_the_bundles_emotion_head_does_and_pairs_the_runs(runs, tiny_store,
                                                                         tmp_path):
    """train.probe: each run's accuracy is the emotion head's of train.emotion on the same
    clips (batched encoding changes nothing), and each pair's difference is theirs."""
    vq = ["--vq-visual", str(runs / "vq_visual"), "--vq-audio", str(runs / "vq_audio")]
    heads = emotion.main(["--store", str(tiny_store), *vq, "--mdvae", str(runs / "mdvae"),
                          "--dsae-audio", str(runs / "dsae_audio"), "--dsae-visual",
                          str(runs / "dsae_visual"), "--out", str(tmp_path / "heads")])
    out = tmp_path / "probe.json"
    report = probe.main(["--store", str(tiny_store), "--pool", str(tiny_store), "--split",
                         "test", *vq, "--run", f"m={runs / 'mdvae'}", "--run",
                         f"a={runs / 'dsae_audio'}", "--run", f"v={runs / 'dsae_visual'}",
                         "--inputs", "--relative", "--together", "a+v", "--head-speakers", "1",
                         "3", "--draws", "2", "--plot", str(tmp_path / "speakers.png"), "--out",
                         str(out)])
    for name, head in (("m", "emotion"), ("a", "emotion_dsae_audio"),
                       ("v", "emotion_dsae_visual")):
        assert report["runs"][name]["w"]["accuracy"] == pytest.approx(
            heads[head]["accuracy"]["test"], abs=1e-12)
    for r in report["runs"].values():  # w against the input's PCs, on the same clips
        hit = {k: r[k]["accuracy"] for k in ("w", "input_pcs")}
        assert r.pop("w_minus_input_pcs")["difference"] == pytest.approx(
            hit["w"] - hit["input_pcs"], abs=1e-12)
    for r in report["runs"].values():  # heads on 1 speaker (two draws), on all 3 (once)
        one, every = r.pop("head_speakers")
        assert one["speakers"] == 1 and len(one["w"]) == 2 and all(0 <= a <= 1 for a in one["w"])
        assert one["w_mean"] == pytest.approx(np.mean(one["w"]), abs=1e-12)
        assert every["speakers"] == 3 and every["w"] == [r["w"]["accuracy"]]  # the plain head
    from PIL import Image

    pixels = np.asarray(Image.open(tmp_path / "speakers.png").convert("L"), dtype=np.float32)
    assert pixels.shape[1] > 600 and pixels.std() > 10  # drawn, not blank
    readings = {n: set(r) - {"folder", "model"} for n, r in report["runs"].items()}
    # --relative: the test speaker has no neutral clip to refer to, so w_centred alone
    assert readings == {"m": {"w", "input", "input_pcs", "voice", "face", "w_centred"},
                        "a": {"w", "input", "input_pcs", "voice", "w_centred"},
                        "v": {"w", "input", "input_pcs", "face", "w_centred"}}
    assert all(r["w_centred"]["clips"] == r["w"]["clips"] for r in report["runs"].values())
    assert 0.0 <= report["together"]["a+v"]["accuracy"] <= 1.0
    saved = json.loads(out.read_text())
    hits = {n: np.array(saved["hits"][n]["w"]) for n in ("m", "a", "v")}
    assert len(hits["m"]) == len(saved["clips"]) == report["runs"]["m"]["w"]["clips"]
    for a, b in (("m", "a"), ("m", "v"), ("a", "v")):
        pair = report["pairs"][f"{a} - {b}"]["w"]
        assert pair["difference"] == pytest.approx(hits[a].mean() - hits[b].mean(), abs=1e-12)
    assert set(report["pairs"]["m - v"]) == {"w", "input", "input_pcs", "face", "w_centred"}
    assert set(report["pairs"]["m - a"]) == {"w", "input", "input_pcs", "voice", "w_centred"}
    centred = {n: np.array(saved["hits"][n]["w_centred"]) for n in ("m", "v")}
    assert report["pairs"]["m - v"]["w_centred"]["difference"] == pytest.approx(
        centred["m"].mean() - centred["v"].mean(), abs=1e-12)
    with pytest.raises(SystemExit):
        probe.main(["--store", str(tiny_store), "--pool", str(tiny_store), *vq,
                    "--run", str(runs / "mdvae")])  # no NAME=
    with pytest.raises(SystemExit):
        probe.main(["--store", str(tiny_store), "--pool", str(tiny_store), *vq,
                    "--run", f"m={runs / 'mdvae'}", "--together", "m+x"])  # x not a run
    with pytest.raises(SystemExit):
        probe.main(["--store", str(tiny_store), "--pool", str(tiny_store), *vq,
                    "--run", f"m={runs / 'mdvae'}", "--plot", str(tmp_path / "p.png")])


@pytest.mark.slow
def test_probe_reads_a_per_stream_w_part_by_part(runs, tiny_store, tmp_path):
    """train.probe on an MDVAE whose w is two parts: "w_a" is w's first entries, which the
    voice alone sets (the face's features changed leave them as they were), "w_v" the rest,
    each part read by its own head and paired between runs like w."""
    split = tmp_path / "split"
    stage2.main([*fine_tune_flags(runs, tiny_store), "--model", "mdvae", "--init-from",
                 str(runs / "mdvae"), "--out", str(split), "--steps", "2",
                 "--mdvae-w-per-stream", "true", "--mdvae-w-audio-dim", "3"])
    vq = ["--vq-visual", str(runs / "vq_visual"), "--vq-audio", str(runs / "vq_audio")]
    report = probe.main(["--store", str(tiny_store), "--pool", str(tiny_store), "--split",
                         "test", *vq, "--run", f"s={split}", "--run", f"m={runs / 'mdvae'}"])
    r = report["runs"]["s"]
    assert (r["w_a_entries"], r["w_v_entries"]) == (3, 5)  # w_dim 8 in the tiny flags
    assert "w_a" not in report["runs"]["m"]  # a joint q(w) has no parts
    assert set(report["pairs"]["s - m"]) == {"w"}
    store = Store(str(tiny_store))
    clips = probe.labelled(store.split_clips("train"))
    audio, visual, _ = probe.cached_features(store, load_stage1(str(runs / "vq_audio")),
                                             load_stage1(str(runs / "vq_visual")))
    model = load_stage2(str(split)).eval()
    read = probe.encode(model, audio, visual, clips, inputs=False)
    np.testing.assert_array_equal(read["w_a"], read["w"][:, :3])
    np.testing.assert_array_equal(read["w_v"], read["w"][:, 3:])
    faceless = probe.encode(model, audio, np.zeros_like(visual), clips, inputs=False)
    np.testing.assert_allclose(faceless["w_a"], read["w_a"], rtol=0, atol=1e-5)
    assert np.abs(faceless["w_v"] - read["w_v"]).max() > 1e-3
    held = probe.labelled(store.split_clips("test"))
    hits = probe.probe_run({"w_a": read["w_a"]}, [c.emotion for c in clips],
                           {"w_a": probe.encode(model, audio, visual, held,
                                                inputs=False)["w_a"]},
                           [c.emotion for c in held], c=1.0)["w_a"]
    assert r["w_a"]["accuracy"] == pytest.approx(hits.mean(), abs=1e-12)


def test_probe_relative_to_speaker_takes_away_each_speakers_own_reference_row():
    """train.probe --relative: w minus the speaker's mean (every row kept), or minus the
    speaker's neutral row (that row, and speakers without one, left out), rows in order."""
    rng = np.random.default_rng(1)
    emotions = ["happy", "neutral", "sad", "sad", "happy", "angry", "neutral", "happy"]
    speakers = ["a", "a", "b", "a", "b", "c", "b", "c"]  # c has no neutral clip
    x = rng.standard_normal((8, 3))
    centred, rows = probe.relative_to_speaker(x, speakers, emotions)
    assert rows.tolist() == list(range(8))
    a = [0, 1, 3]
    np.testing.assert_allclose(centred[a], x[a] - x[a].mean(0), atol=1e-12)
    np.testing.assert_allclose(centred.sum(0), 0.0, atol=1e-12)  # every speaker's rows sum to 0
    ref, rows = probe.relative_to_speaker(x, speakers, emotions, "neutral")
    assert rows.tolist() == [0, 2, 3, 4]  # neutral rows and speaker c gone, order kept
    np.testing.assert_allclose(ref, x[[0, 2, 3, 4]] - x[[1, 6, 1, 6]], atol=1e-12)
    # a speaker-specific offset on top of an emotion code: the reference takes it away
    code = {"happy": 2.0, "sad": -2.0, "neutral": 0.0, "angry": 5.0}
    offset = {"a": 100.0, "b": -50.0, "c": 7.0}
    y = np.array([[code[e] + offset[s]] for e, s in zip(emotions, speakers)])
    ref, rows = probe.relative_to_speaker(y, speakers, emotions, "neutral")
    np.testing.assert_allclose(ref[:, 0], [code[emotions[i]] for i in rows], atol=1e-9)
    empty, none = probe.relative_to_speaker(x, speakers, emotions, "calm")
    assert empty.shape == (0, 3) and none.size == 0


def test_probe_speaker_draws_are_distinct_speakers_and_the_same_for_every_run():
    speakers = [f"s{i % 7}" for i in range(40)]
    draws = probe.speaker_draws(speakers, [2, 5, 7], 3)
    assert [len(draws[n]) for n in (2, 5, 7)] == [3, 3, 1]  # all 7: one set
    assert all(len(d) == n and d <= set(speakers) for n in (2, 5) for d in draws[n])
    assert draws[7] == [set(speakers)]
    assert probe.speaker_draws(speakers, [2, 5, 7], 3) == draws  # seeded: runs pair
    with pytest.raises(MDVAEError, match="7 labelled speakers"):
        probe.speaker_draws(speakers, [8], 3)


def test_probe_principal_components_keep_the_largest_directions_of_the_training_rows():
    """train.probe's equal-size reading of q(w)'s input: the first k principal components
    of the standardised training rows, the held rows projected on the same basis."""
    rng = np.random.default_rng(0)
    scales = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    latent = rng.standard_normal((400, 2)) * [3.0, 1.0]  # two directions, 3:1 in spread
    mixing = np.linalg.qr(rng.standard_normal((5, 5)))[0][:2]  # orthonormal rows
    train = (latent @ mixing + 0.01 * rng.standard_normal((400, 5))) * scales + 7.0
    held = train[:50] + 0.0
    a, b = probe.principal_components(train, held, 2)
    assert a.shape == (400, 2) and b.shape == (50, 2)
    np.testing.assert_allclose(b, a[:50], atol=1e-9)  # the same basis for both sets
    cov = np.cov(a, rowvar=False)
    assert abs(cov[0, 1]) < 1e-8 * cov[0, 0]  # uncorrelated components
    assert cov[0, 0] > cov[1, 1]  # largest first
    z = (train - train.mean(0)) / (train.std(0) + 1e-6)
    # two components hold the standardised rows but for the small noise
    assert (a.var(0, ddof=1).sum()) == pytest.approx(z.var(0, ddof=1).sum(), rel=1e-3)
    assert probe.principal_components(train, held, 9)[0].shape == (400, 5)  # at most D


@pytest.mark.slow
def test_reference_head_reads_pairs_of_one_speaker_and_joins_a_bundle_alone(runs, tiny_store,
                                                                           tmp_path, capsys):
    """train.emotion --references: the head on pairs of a neutral clip and another clip of
    the same speaker (more neutral clips from a second store of the same people), scored on a
    pool of new speakers; export --bundle --emotion adds it and keeps what was measured."""
    from train import prepare

    def store(name, *flags):
        assert prepare.main(["synthetic", "--out", str(tmp_path / name), "--frames", "36",
                             "--workers", "0", *flags]) == 0
        return str(tmp_path / name)

    refs = store("refs", "--speakers", "5", "--clips-per-speaker", "2", "--emotions", "neutral",
                 "--seed", "3", "--val-speakers", "1", "--test-speakers", "1")
    pool = store("pool", "--first-speaker", "5", "--speakers", "3", "--clips-per-speaker", "8",
                 "--val-speakers", "2", "--test-speakers", "0")
    pool_refs = store("pool_refs", "--first-speaker", "5", "--speakers", "3",
                      "--clips-per-speaker", "2", "--emotions", "neutral", "--seed", "4",
                      "--val-speakers", "2", "--test-speakers", "0")
    flags = ["--vq-visual", str(runs / "vq_visual"), "--vq-audio", str(runs / "vq_audio"),
             "--mdvae", str(runs / "mdvae")]
    with pytest.raises(SystemExit):  # the pool scores the reference head only
        emotion.main(["--store", str(tiny_store), *flags, "--pool", pool, "--out",
                      str(tmp_path / "no")])
    # without more resting faces the neutral class cannot be learnt, and the user is told
    alone = emotion.main(["--store", str(tiny_store), *flags, "--reference-head", "--out",
                          str(tmp_path / "alone")])
    assert "neutral" not in alone["emotion_reference"]["classes_fitted"]
    assert "never answers neutral" in capsys.readouterr().err
    report = emotion.main(["--store", str(tiny_store), *flags, "--references", refs, pool_refs,
                           "--pool", pool, "--dsae-visual", str(runs / "dsae_visual"),
                           "--out", str(tmp_path / "heads")])
    ref = report["emotion_reference"]
    # the V-DSAE's own reference head, on the same pairs, with the MDVAE's margin over it
    theirs = report["emotion_reference_dsae_visual"]
    assert theirs["reads"] == "dsae_visual" and "emotion_reference_dsae_audio" not in report
    for where in ("pool", "train"):
        mine = ref[where] if where == "pool" else ref["splits"][where]
        other = theirs[where] if where == "pool" else theirs["splits"][where]
        assert other["pairs"] == mine["pairs"]
        assert other["mdvae_minus"]["difference"] == pytest.approx(
            mine["accuracy"] - other["accuracy"])
    # every training speaker now has 2 or 3 neutral clips: the neutral class is learnt
    assert "neutral" in ref["classes_fitted"]
    train_speakers = Store(tiny_store).speakers("train")
    # each of a speaker's n neutral clips against the 5 others of its 4 + 2 clips
    n_neutral = [2 + sum(c.emotion == "neutral" for c in Store(tiny_store).clips
                         if c.speaker == s) for s in train_speakers]
    assert ref["splits"]["train"]["pairs"] == sum(5 * n for n in n_neutral)
    assert ref["pool"]["speakers"] == 2 and ref["pool"]["pairs"] > 0
    assert 0 <= ref["pool"]["other_person_passed"] <= 1
    assert ref["calibration"]["temperature"] > 0 and "test" in ref["calibration"]
    # the gain over the plain head on the same clips, with the speakers as the unit, and the
    # other emotions' pairs by intensity (the synthetic clips' levels 1 to 3)
    pool_scores = ref["pool"]
    assert pool_scores["gain_over_plain"]["difference"] == pytest.approx(
        pool_scores["accuracy"] - pool_scores["plain_accuracy"])
    assert pool_scores["gain_over_plain"]["speakers"] == 2
    assert set(pool_scores["by_level"]) <= {"1", "2", "3"}
    levels = pool_scores["by_level"].values()
    assert sum(e["accuracy"] * e["pairs"] for e in levels) / sum(e["pairs"] for e in levels) == (
        pytest.approx(pool_scores["accuracy_others"]))

    with pytest.raises(ConfigError, match="emotion heads for dsae_visual.*--dsae-visual"):
        export.main([*flags, "--emotion", str(tmp_path / "heads"), "--out", str(tmp_path / "x")])
    flags += ["--dsae-visual", str(runs / "dsae_visual")]
    first = export.main([*flags, "--emotion", str(tmp_path / "heads"), "--out",
                         str(tmp_path / "first")])
    plain_only = tmp_path / "plain"
    emotion.main(["--store", str(tiny_store), *flags, "--out", str(plain_only)])
    bare = export.main([*flags, "--emotion", str(plain_only), "--out", str(tmp_path / "bare")])
    info = json.loads((bare / "config.json").read_text())
    info["info"]["evaluation"] = {"summary": {"old": 1}, "markdown": "old"}
    info["info"]["emotion"]["emotion"]["calibration"] = {"temperature": 2.5}
    (bare / "config.json").write_text(json.dumps(info))
    added = load_bundle(export.main(["--bundle", str(bare), "--emotion", str(tmp_path / "heads"),
                                     "--out", str(tmp_path / "added")]))
    # the plain head came back weight for weight: it keeps its calibration, the bundle its
    # evaluation; the reference head joins with its own record
    assert added.info["emotion"]["emotion"]["calibration"] == {"temperature": 2.5}
    assert added.info["evaluation"]["summary"] == {"old": 1}
    assert added.info["emotion"]["emotion_reference"] == load_bundle(first).info["emotion"][
        "emotion_reference"]
    # the same head again, measured anew: its record is updated, what export added stays
    info = json.loads((added.path / "config.json").read_text())
    info["info"]["emotion"]["emotion_reference"]["by_export"] = True
    info["info"]["emotion"]["emotion_reference"]["accuracy"] = {"stale": 0.0}
    (added.path / "config.json").write_text(json.dumps(info))
    again = load_bundle(export.main(["--bundle", str(added.path), "--emotion",
                                     str(tmp_path / "heads"), "--out", str(tmp_path / "again")]))
    record = again.info["emotion"]["emotion_reference"]
    assert record["accuracy"] == ref["accuracy"] and record["by_export"] is True
    assert "same person's neutral clip" in added.card
    assert "V-DSAE, against the neutral clip" in added.card
    assert "The MDVAE against the same clip minus the V-DSAE" in added.card
    torch.testing.assert_close(added["emotion_reference"].state_dict(),
                               load_bundle(first)["emotion_reference"].state_dict())


@pytest.mark.slow
def test_export_puts_new_stage2_runs_inside_a_bundles_vq_vaes(runs, tiny_store, tmp_path):
    flags = ["--vq-visual", str(runs / "vq_visual"), "--vq-audio", str(runs / "vq_audio"),
             "--mdvae", str(runs / "mdvae")]
    dsaes = ["--dsae-audio", str(runs / "dsae_audio"), "--dsae-visual", str(runs / "dsae_visual")]
    emotion.main(["--store", str(tiny_store), *flags, "--out", str(tmp_path / "heads")])
    emotion.main(["--store", str(tiny_store), *flags, *dsaes, "--out", str(tmp_path / "all")])
    first = export.main([*flags, *dsaes, "--emotion", str(tmp_path / "all"), "--out",
                         str(tmp_path / "first")])
    info = json.loads((first / "config.json").read_text())
    info["info"]["runs"]["vq_visual"]["run"] = "where the shipped VQ-VAE was trained"
    info["info"]["evaluation"] = {"summary": {"old": 1}, "markdown": "old"}
    (first / "config.json").write_text(json.dumps(info))
    # a new MDVAE run on the same VQ-VAEs' features replaces the old one and its heads
    second = export.main(["--bundle", str(first), "--mdvae", str(runs / "mdvae"), "--emotion",
                          str(tmp_path / "heads"), "--out", str(tmp_path / "second")])
    bundle = load_bundle(second)
    assert bundle.info["runs"]["vq_visual"]["run"] == "where the shipped VQ-VAE was trained"
    assert bundle.info["runs"]["mdvae"]["steps"] == 40
    assert "evaluation" not in bundle.info  # measured on the old models
    # the MDVAE's head is the new one; the kept DSAEs keep theirs, with what was measured
    old = load_bundle(first)
    assert bundle.info["emotion"]["emotion"] == load_bundle(tmp_path / "heads").info["emotion"][
        "emotion"]
    for head in ("emotion_dsae_audio", "emotion_dsae_visual"):
        assert bundle.info["emotion"][head] == old.info["emotion"][head]
        torch.testing.assert_close(bundle.components[head].state_dict(),
                                   old.components[head].state_dict())
    # a new DSAE needs its own head: the MDVAE-only heads do not hold one
    with pytest.raises(ConfigError, match="no emotion head for the new dsae_audio"):
        export.main(["--bundle", str(first), "--dsae-audio", str(runs / "dsae_audio"),
                     "--emotion", str(tmp_path / "heads"), "--out", str(tmp_path / "third")])
    # a run trained on other VQ-VAEs' features, or without new heads, is refused
    other = tmp_path / "other_mdvae"
    shutil.copytree(runs / "mdvae", other)
    config = json.loads((other / "config.json").read_text())
    config["feature_key"] = "0" * 16
    config["modality_keys"] = {"audio": "0" * 16, "visual": "0" * 16}
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="other VQ-VAEs"):
        export.main(["--bundle", str(first), "--mdvae", str(other), "--emotion",
                     str(tmp_path / "heads"), "--out", str(tmp_path / "third")])
    with pytest.raises(ConfigError, match="--emotion"):
        export.main(["--bundle", str(first), "--mdvae", str(runs / "mdvae"), "--out",
                     str(tmp_path / "third")])
    assert not (tmp_path / "third").exists()


@pytest.mark.slow
def test_an_unpacked_bundle_trains_on_as_run_folders(runs, tiny_store, tmp_path):
    flags = ["--vq-visual", str(runs / "vq_visual"), "--vq-audio", str(runs / "vq_audio"),
             "--mdvae", str(runs / "mdvae"), "--dsae-audio", str(runs / "dsae_audio")]
    emotion.main(["--store", str(tiny_store), *flags, "--out", str(tmp_path / "heads")])
    bundle_dir = export.main([*flags, "--emotion", str(tmp_path / "heads"),
                              "--out", str(tmp_path / "bundle")])
    folders = unpack.main(["--bundle", str(bundle_dir), "--out", str(tmp_path / "unpacked")])
    assert set(folders) == {"vq_visual", "vq_audio", "mdvae", "dsae_audio"}  # those it has
    bundle = load_bundle(bundle_dir)
    for name, path in folders.items():  # every weight as the bundle holds it
        model = (load_stage1 if name.startswith("vq") else load_stage2)(str(path))
        for (key, p), q in zip(bundle.components[name].state_dict().items(),
                               model.state_dict().values()):
            assert torch.equal(p, q), (name, key)
    # a fine-tune starts from the unpacked MDVAE inside the unpacked VQ-VAEs (the feature
    # keys agree) and names the bundle it came from
    out = tmp_path / "more"
    stage2.main(["--store", str(tiny_store), "--vq-visual", str(folders["vq_visual"]),
                 "--vq-audio", str(folders["vq_audio"]), "--seq-len", "12", "--batch-size", "8",
                 "--val-every", "5", "--kl-warmup", "0", *FAST, "--lr", "0", "--model", "mdvae",
                 "--init-from", str(folders["mdvae"]), "--out", str(out), "--steps", "5"])
    for (key, p), q in zip(bundle.mdvae.state_dict().items(),
                           load_stage2(str(out)).state_dict().values()):
        assert torch.equal(p, q), key
    text = export.trained_on(export.run_summary(str(out)))
    assert f"bundle `{bundle_dir}`" in text and f"`{runs / 'mdvae'}`" in text
    # a fine-tune of that fine-tune still names the bundle, through its source's config
    stage2.main(["--store", str(tiny_store), "--vq-visual", str(folders["vq_visual"]),
                 "--vq-audio", str(folders["vq_audio"]), "--seq-len", "12", "--batch-size", "8",
                 "--val-every", "5", "--kl-warmup", "0", *FAST, "--lr", "0", "--model", "mdvae",
                 "--init-from", str(out), "--out", str(tmp_path / "again"), "--steps", "5"])
    text = export.trained_on(export.run_summary(str(tmp_path / "again")))
    assert text.index(f"`{out}` (step 5)") < text.index(f"itself fine-tuned from "
                                                        f"`{folders['mdvae']}` (step 40)")
    assert f"bundle `{bundle_dir}`" in text
    # the --like-mdvae baselines copy its sizes
    args = stage2.build_parser().parse_args(
        ["--store", "s", "--vq-visual", "v", "--vq-audio", "a", "--out", "o",
         "--model", "dsae-visual", "--like-mdvae", str(folders["mdvae"])])
    assert stage2.build_model("dsae-visual", args, None)[1].w_dim == bundle.mdvae.config.w_dim
    # weights only: no optimiser state to resume from, and an unpack never overwrites
    with pytest.raises(common.CheckpointError, match="--init-from"):
        stage2.main(["--store", str(tiny_store), "--vq-visual", str(folders["vq_visual"]),
                     "--vq-audio", str(folders["vq_audio"]), "--out", str(folders["mdvae"]),
                     "--steps", "10", "--resume", *FAST])
    with pytest.raises(ConfigError, match="already exist"):
        unpack.main(["--bundle", str(bundle_dir), "--out", str(tmp_path / "unpacked")])


@pytest.mark.slow
def test_stage2_killed_mid_run_resumes_to_the_same_step_count(runs, tiny_store, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "train.stage2", "--store", str(tiny_store),
           "--vq-visual", str(runs / "vq_visual"), "--vq-audio", str(runs / "vq_audio"),
           "--seq-len", "12", "--batch-size", "8", "--model", "mdvae", "--out", str(out),
           "--steps", "120", "--val-every", "10", *FAST, *TINY_MDVAE_FLAGS]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    checkpoint = out / "checkpoint.pt"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if checkpoint.exists():
            if common.RunFolder(out).load_checkpoint(required=True)["step"] >= 20:
                break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = common.RunFolder(out).load_checkpoint(required=True)["step"]
    assert 20 <= killed_at < 120
    result = stage2.main(cmd[3:] + ["--resume"])
    assert result.step == 120
    losses = train_losses(out)
    steps = [r["step"] for r in common.RunFolder(out).read_log() if r["split"] == "train"]
    assert steps == sorted(set(steps))
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_resume_without_a_checkpoint_is_reported(runs, tiny_store, tmp_path):
    with pytest.raises(common.CheckpointError):
        stage1.main(["--store", str(tiny_store), "--modality", "audio",
                     "--out", str(tmp_path / "nothing"), "--resume"])


def test_figures_renders_every_example_with_its_psnrs(tiny_bundle, tmp_path, capsys):
    from PIL import Image

    from train import figures

    examples = tmp_path / "examples"
    examples.mkdir()
    root = Path(__file__).resolve().parents[1] / "examples"
    for name in ("spk02_happy.mp4", "spk37_neutral.mp4"):
        (examples / name).write_bytes((root / name).read_bytes())
    out = figures.main(["--bundle", str(tiny_bundle), "--examples", str(examples),
                        "--out", str(tmp_path / "recon.png")])
    printed = capsys.readouterr().out
    assert "| spk02_happy |" in printed and "| spk37_neutral |" in printed
    width, height = Image.open(out).size
    assert width > 600 and height > 300  # two examples side by side, three lines each


def test_figures_without_clips_is_an_error(tiny_bundle, tmp_path):
    from train import figures

    with pytest.raises(SystemExit):
        figures.main(["--bundle", str(tiny_bundle), "--examples", str(tmp_path)])


@pytest.mark.slow
def test_a_run_resumed_on_another_store_keeps_its_earlier_store(runs, tiny_store, tmp_path):
    import shutil

    more = tmp_path / "more_speakers"
    shutil.copytree(tiny_store, more)
    run = tmp_path / "vq_audio"
    shutil.copytree(runs / "vq_audio", run)
    stage1.main(["--store", str(more), "--modality", "audio", "--out", str(run),
                 "--resume", "--steps", "50"])
    saved = json.loads((run / "config.json").read_text())
    assert saved["store"] == str(more)
    assert saved["earlier_stores"] == [{"store": str(tiny_store), "until_step": 40}]
    summary = export.run_summary(str(run))
    assert summary["steps"] == 50
    assert export.trained_on(summary) == (
        f"`{tiny_store}` to step 40, then `{more}` (train split)")


@pytest.mark.slow
def test_a_dsae_run_resumes_as_a_dsae_without_model(runs, tiny_store, tmp_path):
    run = tmp_path / "dsae_visual"
    shutil.copytree(runs / "dsae_visual", run)
    flags = ["--store", str(tiny_store), "--vq-visual", str(runs / "vq_visual"),
             "--vq-audio", str(runs / "vq_audio"), "--out", str(run), "--resume"]
    with pytest.raises(ConfigError, match="dsae-visual run"):
        stage2.main([*flags, "--model", "mdvae", "--steps", "14"])
    assert common.RunFolder(run).load_checkpoint(required=True)["step"] == 10
    result = stage2.main([*flags, "--steps", "14"])  # no --model: the run's own kind
    assert result.step == 14
    saved = json.loads((run / "config.json").read_text())
    assert (saved["model_kind"], saved["model_class"]) == ("dsae-visual", "DSAE")
    assert saved["model"]["z_dim"] == 4


def test_emotion_group_probes_find_the_group_that_holds_the_emotion():
    from types import SimpleNamespace

    from mdvae.labels import EMOTIONS

    rng = np.random.default_rng(0)

    def clips_and_groups(n):
        labels = rng.integers(0, len(EMOTIONS), n)
        clips = [SimpleNamespace(emotion=EMOTIONS[k]) for k in labels]
        holds = np.eye(len(EMOTIONS))[labels] * 3 + rng.normal(0, 1, (n, len(EMOTIONS)))
        return clips, {"w": rng.normal(0, 1, (n, 4)).astype(np.float32),
                       "z": holds.astype(np.float32)}

    train_clips, train = clips_and_groups(400)
    test_clips, test = clips_and_groups(200)
    acc = emotion.probe_groups(train, train_clips, test, test_clips, c=1.0)
    assert acc["z"] > 0.8 and acc["all"] > 0.8, acc
    assert acc["w"] < 0.3, acc  # chance is 1/8


def test_decoder_variances_start_at_the_features_variances():
    from mdvae.model.dsae import DSAE, DSAEConfig
    from mdvae.model.mdvae import MDVAE, MDVAEConfig

    rng = np.random.default_rng(0)
    audio = (rng.standard_normal((4000, 512)) * np.linspace(0.5, 2.0, 512)).astype(np.float16)
    visual = (rng.standard_normal((4000, 2048)) * np.linspace(0.01, 0.3, 2048)).astype(np.float16)
    rows = np.arange(100, 3900)
    mdvae = MDVAE(MDVAEConfig.preset("synthetic"))
    medians = stage2.init_obs_variance(mdvae, audio, visual, rows, sample=3000)
    expect_a = 2 * np.log(np.linspace(0.5, 2.0, 512))
    assert np.abs(mdvae.decoder_x_a.logvar.detach().numpy() - expect_a).max() < 0.2
    assert medians["audio"] == pytest.approx(float(np.median(expect_a)), abs=0.1)
    # the floor still holds: std 0.01 is below exp(-6 / 2) ~ 0.05
    floor = mdvae.decoder_x_v.logvar_min
    assert mdvae.decoder_x_v.logvar.min().item() == pytest.approx(floor)
    assert mdvae.decoder_x_v.logvar[-1].item() == pytest.approx(2 * np.log(0.3), abs=0.2)
    dsae = DSAE(DSAEConfig.preset("synthetic", "visual"))
    assert set(stage2.init_obs_variance(dsae, audio, visual, rows, sample=3000)) == {"visual"}
    assert dsae.decoder_x.logvar[-1].item() == pytest.approx(2 * np.log(0.3), abs=0.2)


def test_failed_resume_leaves_the_run_folder_as_it_was(runs, tiny_store, tmp_path):
    import shutil

    run = tmp_path / "vq_audio"
    shutil.copytree(runs / "vq_audio", run)
    (run / "checkpoint.pt").write_bytes(b"cut short by a full disk")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(common.CheckpointError, match="corrupt"):
        stage1.main(["--store", str(tiny_store), "--modality", "audio", "--out", str(run),
                     "--resume", "--steps", "60"])
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # config.json too


def test_dsae_baselines_can_copy_the_mdvae_they_are_compared_with(tmp_path):
    from mdvae.errors import ConfigError
    from mdvae.model.mdvae import MDVAEConfig

    mdvae = MDVAEConfig.preset("synthetic", z_av_dim=4)  # the shipped MDVAE's sizes
    common.RunFolder(tmp_path / "mdvae").write_config(
        {"model_class": "MDVAE", "model": mdvae.to_dict()}
    )
    base = ["--store", "s", "--vq-visual", "v", "--vq-audio", "a", "--out", "o"]
    for kind, z in (("dsae-audio", 4 + 4), ("dsae-visual", 4 + 4)):
        args = stage2.build_parser().parse_args(
            [*base, "--model", kind, "--like-mdvae", str(tmp_path / "mdvae")]
        )
        _, cfg = stage2.build_model(kind, args, None)
        assert (cfg.z_dim, cfg.w_dim, cfg.beta_w) == (z, mdvae.w_dim, 1.0)
    # or from flags alone, as the README's recipe does; flags override --like-mdvae
    args = stage2.build_parser().parse_args(
        [*base, "--model", "dsae-visual", "--dsae-z-dim", "8", "--dsae-beta-w", "1"]
    )
    assert (stage2.build_model("dsae-visual", args, None)[1].z_dim, args.dsae_beta_w) == (8, 1)
    args = stage2.build_parser().parse_args(
        [*base, "--model", "dsae-audio", "--like-mdvae", str(tmp_path / "mdvae"),
         "--dsae-beta-w", "0.25"]
    )  # fmt: skip
    assert stage2.build_model("dsae-audio", args, None)[1].beta_w == 0.25
    with pytest.raises(ConfigError, match="like-mdvae"):
        stage2.main([*base, "--model", "mdvae", "--like-mdvae", str(tmp_path / "mdvae")])


def fine_tune_flags(runs, tiny_store) -> list[str]:
    """The stage-2 flags the fine-tuning tests share: the tiny store, the session's VQ-VAEs,
    short windows and small batches, no KL warm-up."""
    return ["--store", str(tiny_store), "--vq-visual", str(runs / "vq_visual"),
            "--vq-audio", str(runs / "vq_audio"), "--seq-len", "12", "--batch-size", "8",
            "--val-every", "5", "--kl-warmup", "0", *FAST]


@pytest.mark.slow
def test_stage2_init_from_fine_tunes_a_runs_weights_with_a_new_floor(runs, tiny_store, tmp_path):
    flags = fine_tune_flags(runs, tiny_store)
    out = tmp_path / "fine"
    # learning rate 0: the fine-tune's weights must be exactly the source run's
    stage2.main([*flags, "--lr", "0", "--model", "mdvae", "--init-from", str(runs / "mdvae"),
                 "--out", str(out), "--steps", "5", "--mdvae-obs-logvar-min", "-1.5"])
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["obs_logvar_min"] == -1.5
    assert config["model"]["w_dim"] == 8  # the source run's sizes, not the preset's
    assert config["init_from"]["run"] == str(runs / "mdvae") and config["init_from"]["step"] == 40
    source, tuned = load_stage2(str(runs / "mdvae")), load_stage2(str(out))
    for (name, p), q in zip(source.state_dict().items(), tuned.state_dict().values()):
        torch.testing.assert_close(p, q, msg=name)
    assert tuned.decoder_x_v.logvar_min == -1.5
    assert "fine-tuned from" in export.trained_on(export.run_summary(str(out)))
    # what cannot be fine-tuned is refused before anything is trained
    with pytest.raises(ConfigError, match="do not fit"):
        stage2.main([*flags, "--model", "mdvae", "--init-from", str(runs / "mdvae"),
                     "--out", str(tmp_path / "wider"), "--steps", "5", "--mdvae-w-dim", "16"])
    with pytest.raises(ConfigError, match="not a stage-2 mdvae"):
        stage2.main([*flags, "--model", "mdvae", "--init-from", str(runs / "dsae_audio"),
                     "--out", str(tmp_path / "kind"), "--steps", "5"])
    with pytest.raises(ConfigError, match="from scratch"):
        stage2.main([*flags, "--model", "mdvae", "--init-from", str(runs / "mdvae"),
                     "--out", str(tmp_path / "obs"), "--steps", "5", "--obs-init", "data"])
    with pytest.raises(ConfigError, match="give one"):
        stage2.main([*flags, "--model", "mdvae", "--init-from", str(runs / "mdvae"),
                     "--out", str(out), "--steps", "10", "--resume"])


def test_stage2_freeze_w_encoder_trains_all_but_the_posterior_of_w(runs, tiny_store, tmp_path):
    flags = fine_tune_flags(runs, tiny_store)
    source = load_stage2(str(runs / "mdvae"))
    frozen = {n for n, p in source.named_parameters()
              if any(p is q for q in stage2.w_encoder_parameters(source))}
    # q(w) reads the per-frame features and their summaries: those and its own head
    assert {n.split(".")[0] for n in frozen} == {
        "features_x_a", "features_x_v", "summary_x_a", "summary_x_v", "posterior_w"}
    out = tmp_path / "frozen"
    stage2.main([*flags, "--lr", "1e-2", "--model", "mdvae", "--init-from", str(runs / "mdvae"),
                 "--out", str(out), "--steps", "5", "--freeze-w-encoder"])
    assert json.loads((out / "config.json").read_text())["freeze_w_encoder"] is True
    tuned = dict(load_stage2(str(out)).named_parameters())
    moved = {n for n, p in source.named_parameters() if not torch.equal(p, tuned[n])}
    assert moved and not moved & frozen  # the rest trained, q(w) did not move
    # a resumed run keeps the freeze (its optimiser state holds only the trained weights)
    stage2.main([*flags, "--model", "mdvae", "--out", str(out), "--steps", "8", "--resume"])
    resumed = dict(load_stage2(str(out)).named_parameters())
    for n in frozen:
        torch.testing.assert_close(resumed[n], dict(source.named_parameters())[n], msg=n)
    with pytest.raises(ConfigError, match="--init-from"):
        stage2.main([*flags, "--model", "mdvae", "--out", str(tmp_path / "scratch"),
                     "--steps", "5", "--freeze-w-encoder"])
    # a frozen q(w) whose inputs were still dropped in training would not be the one learnt
    with pytest.raises(ConfigError, match="--mdvae-w-input-dropout 0"):
        stage2.main([*flags, "--model", "mdvae", "--init-from", str(runs / "mdvae"),
                     "--out", str(tmp_path / "dropping"), "--steps", "5", "--freeze-w-encoder",
                     "--mdvae-w-input-dropout", "0.2"])


def test_stage2_init_from_a_joint_q_w_into_one_read_per_stream(runs, tiny_store, tmp_path):
    """--mdvae-w-per-stream on a run trained with the joint q(w): every weight but q(w)'s
    head comes from the run, the head (now one per stream) starts afresh."""
    flags = fine_tune_flags(runs, tiny_store)
    source = dict(load_stage2(str(runs / "mdvae")).named_parameters())
    out = tmp_path / "split"
    stage2.main([*flags, "--model", "mdvae", "--init-from", str(runs / "mdvae"), "--out",
                 str(out), "--steps", "2", "--mdvae-w-per-stream", "true",
                 "--train-only", "posterior_w"])
    assert json.loads((out / "config.json").read_text())["model"]["w_per_stream"] is True
    tuned = dict(load_stage2(str(out)).named_parameters())
    assert {n for n in tuned if n.startswith("posterior_w.")} == {
        f"posterior_w.parts.{i}.head.{k}" for i in (0, 1) for k in ("0.weight", "0.bias",
                                                                    "2.weight", "2.bias")}
    for name, value in tuned.items():
        if not name.startswith("posterior_w."):
            torch.testing.assert_close(value, source[name], rtol=0, atol=0, msg=name)
    with pytest.raises(ConfigError, match="--freeze-w-encoder"):
        stage2.main([*flags, "--model", "mdvae", "--init-from", str(runs / "mdvae"), "--out",
                     str(tmp_path / "frozen"), "--steps", "2", "--mdvae-w-per-stream", "true",
                     "--freeze-w-encoder"])


def test_stage2_init_from_gives_q_w_a_copy_of_the_shared_face_network(runs, tiny_store,
                                                                      tmp_path):
    """--mdvae-w-face-network on a run without it: every weight comes from the run, and q(w)'s
    new face network is a copy of the shared one; back without it, the copy is dropped."""
    flags = fine_tune_flags(runs, tiny_store)
    source = dict(load_stage2(str(runs / "mdvae")).named_parameters())
    out = tmp_path / "own_face"
    stage2.main([*flags, "--lr", "0", "--model", "mdvae", "--init-from", str(runs / "mdvae"),
                 "--out", str(out), "--steps", "2", "--mdvae-w-face-network", "true"])
    assert json.loads((out / "config.json").read_text())["model"]["w_face_network"] is True
    tuned = dict(load_stage2(str(out)).named_parameters())
    copies = {n for n in tuned if n.startswith("w_")}
    assert copies == {"w_" + n for n in source if n.startswith(("features_x_v.", "summary_x_v."))}
    for name, value in tuned.items():
        torch.testing.assert_close(value, source[name.removeprefix("w_")], rtol=0, atol=0,
                                   msg=name)
    back = tmp_path / "shared_again"
    stage2.main([*flags, "--lr", "0", "--model", "mdvae", "--init-from", str(out), "--out",
                 str(back), "--steps", "2", "--mdvae-w-face-network", "false"])
    assert set(dict(load_stage2(str(back)).named_parameters())) == set(source)


def test_stage2_w_face_network_from_a_v_dsae_takes_its_face_network(runs, tiny_store,
                                                                      tmp_path):
    """--w-face-network-from: q(w)'s own face network is the V-DSAE's (per-frame network and
    summary), every other weight the MDVAE run's; the run names where it came from; it is
    refused without an own face network, or from a run that is not a face-only model."""
    flags = fine_tune_flags(runs, tiny_store)
    source = dict(load_stage2(str(runs / "mdvae")).named_parameters())
    face = dict(load_stage2(str(runs / "dsae_visual")).named_parameters())
    out = tmp_path / "face_from"
    base = [*flags, "--lr", "0", "--model", "mdvae", "--init-from", str(runs / "mdvae"),
            "--steps", "2"]
    stage2.main([*base, "--out", str(out), "--mdvae-w-face-network", "true",
                 "--w-face-network-from", str(runs / "dsae_visual")])
    config = json.loads((out / "config.json").read_text())
    assert config["w_face_network_from"]["run"] == str(runs / "dsae_visual")
    tuned = dict(load_stage2(str(out)).named_parameters())
    own = {n for n in tuned if n.startswith("w_")}
    assert own == {"w_features_x_v." + n.removeprefix("features_x.") for n in face
                   if n.startswith("features_x.")} | {
        "w_summary_x_v." + n.removeprefix("summary_x.") for n in face
        if n.startswith("summary_x.")}
    for name, value in tuned.items():
        want = (face[name.replace("w_features_x_v.", "features_x.")
                     .replace("w_summary_x_v.", "summary_x.")]
                if name in own else source[name])
        torch.testing.assert_close(value, want, rtol=0, atol=0, msg=name)
    with pytest.raises(ConfigError, match="w-face-network-from"):
        stage2.main([*base, "--out", str(tmp_path / "no_own"),
                     "--w-face-network-from", str(runs / "dsae_visual")])
    with pytest.raises(ConfigError, match="--w-face-network-from .* is a dsae-audio run"):
        stage2.main([*base, "--out", str(tmp_path / "voice"), "--mdvae-w-face-network", "true",
                     "--w-face-network-from", str(runs / "dsae_audio")])


def test_stage2_train_only_moves_the_named_parts_alone(runs, tiny_store, tmp_path):
    flags = fine_tune_flags(runs, tiny_store)
    source = dict(load_stage2(str(runs / "mdvae")).named_parameters())
    out = tmp_path / "decoder"
    stage2.main([*flags, "--lr", "1e-2", "--model", "mdvae", "--init-from", str(runs / "mdvae"),
                 "--out", str(out), "--steps", "5", "--train-only", "decoder_x_v",
                 "--mdvae-obs-logvar-min", "-9"])
    assert json.loads((out / "config.json").read_text())["train_only"] == ["decoder_x_v"]
    tuned = load_stage2(str(out))
    assert tuned.decoder_x_v.logvar_min == -9
    moved = {n for n, p in tuned.named_parameters() if not torch.equal(p, source[n])}
    assert moved and {n.split(".")[0] for n in moved} == {"decoder_x_v"}
    # a resumed run keeps training that part alone
    stage2.main([*flags, "--model", "mdvae", "--out", str(out), "--steps", "8", "--resume"])
    resumed = load_stage2(str(out)).named_parameters()
    assert {n.split(".")[0] for n, p in resumed if not torch.equal(p, source[n])} == {
        "decoder_x_v"}
    with pytest.raises(ConfigError, match="no part named 'decoder_x_w'"):
        stage2.main([*flags, "--model", "mdvae", "--init-from", str(runs / "mdvae"),
                     "--out", str(tmp_path / "typo"), "--steps", "5",
                     "--train-only", "decoder_x_w"])
    with pytest.raises(ConfigError, match="--init-from"):
        stage2.main([*flags, "--model", "mdvae", "--out", str(tmp_path / "scratch"),
                     "--steps", "5", "--train-only", "decoder_x_v"])


def test_stage2_init_from_with_a_wider_voice_decoder_starts_its_mean_network_afresh(
        runs, tiny_store, tmp_path):
    """--mdvae-audio-decoder-hidden on a fine-tune: the voice's decoder is built at the new
    width, its mean network fresh and its log-variances the run's; every other weight is the
    run's, and with --train-only decoder_x_a only that decoder moves."""
    flags = fine_tune_flags(runs, tiny_store)
    source = load_stage2(str(runs / "mdvae"))
    out = tmp_path / "wide_voice"
    stage2.main([*flags, "--lr", "0", "--model", "mdvae", "--init-from", str(runs / "mdvae"),
                 "--out", str(out), "--steps", "3", "--mdvae-audio-decoder-hidden", "24"])
    tuned = load_stage2(str(out))
    assert tuned.config.audio_decoder_hidden == 24
    assert tuned.decoder_x_a.mean_net[0].out_features == 24
    assert source.decoder_x_a.mean_net[0].out_features != 24
    torch.testing.assert_close(tuned.decoder_x_a.logvar, source.decoder_x_a.logvar)
    for name, p in source.state_dict().items():
        if not name.startswith("decoder_x_a.mean_net."):
            torch.testing.assert_close(tuned.state_dict()[name], p, msg=name)
    # the decoder alone trains; the posteriors, priors and the face's decoder stay the run's
    alone = tmp_path / "wide_voice_alone"
    stage2.main([*flags, "--lr", "1e-2", "--model", "mdvae", "--init-from", str(runs / "mdvae"),
                 "--out", str(alone), "--steps", "3", "--mdvae-audio-decoder-hidden", "24",
                 "--train-only", "decoder_x_a"])
    trained = dict(load_stage2(str(alone)).named_parameters())
    kept = dict(source.named_parameters())
    assert {n.split(".")[0] for n, p in trained.items()
            if n in kept and p.shape == kept[n].shape and not torch.equal(p, kept[n])} <= {
        "decoder_x_a"}
    assert not torch.equal(trained["decoder_x_a.mean_net.0.weight"],
                           tuned.decoder_x_a.mean_net[0].weight)
    # a decoder whose input changed (another w size) is not started afresh: the run's
    # weights stay as they are, for load_state_dict to refuse
    other = MDVAE(MDVAEConfig.from_dict({**source.config.to_dict(), "w_dim": 5}))
    weights = source.state_dict()
    kept_weights = stage2.fresh_resized_decoders(other, weights, say=False)
    assert kept_weights.keys() == weights.keys()
    assert all(kept_weights[name] is p for name, p in weights.items())


def test_stage2_init_from_adds_or_removes_a_training_term_outside_the_elbo(
        runs, tiny_store, tmp_path):
    """--mdvae-aux-clip-means on a fine-tune of a run without it: its heads start afresh and
    every other weight is the run's; a fine-tune of that with the voice's term alone drops the
    face's head and keeps the voice's, and one without the term drops them all."""
    flags = fine_tune_flags(runs, tiny_store)
    source = load_stage2(str(runs / "mdvae"))
    assert not hasattr(source, "aux_x_a")
    out = tmp_path / "aux"
    stage2.main([*flags, "--lr", "0", "--model", "mdvae", "--init-from", str(runs / "mdvae"),
                 "--out", str(out), "--steps", "3", "--mdvae-aux-clip-means", "2"])
    tuned = load_stage2(str(out))
    assert tuned.config.aux_clip_means == 2 and hasattr(tuned, "aux_x_a")
    state = tuned.state_dict()
    for name, p in source.state_dict().items():
        torch.testing.assert_close(state[name], p, msg=name)
    assert {k.split(".")[0] for k in state.keys() - source.state_dict().keys()} == {
        "aux_x_a", "aux_x_v"}
    voice = tmp_path / "aux_audio"  # the voice's term alone: the face's head is dropped
    stage2.main([*flags, "--lr", "0", "--model", "mdvae", "--init-from", str(out),
                 "--out", str(voice), "--steps", "3", "--mdvae-aux-clip-means-streams", "audio"])
    voice_state = load_stage2(str(voice)).state_dict()
    assert voice_state.keys() - source.state_dict().keys() == {
        k for k in state if k.startswith("aux_x_a.")}
    for name in voice_state.keys() - source.state_dict().keys():
        torch.testing.assert_close(voice_state[name], state[name], msg=name)
    back = tmp_path / "no_aux"
    stage2.main([*flags, "--lr", "0", "--model", "mdvae", "--init-from", str(voice),
                 "--out", str(back), "--steps", "3", "--mdvae-aux-clip-means", "0"])
    assert load_stage2(str(back)).state_dict().keys() == source.state_dict().keys()


@pytest.mark.slow
def test_a_dsae_stays_valid_beside_a_new_vq_vae_of_the_other_modality(runs, tiny_store,
                                                                       tmp_path):
    """Each stage-2 run records a hash of each VQ-VAE it was trained inside; export accepts
    a one-modality DSAE whose own modality's VQ-VAE is the bundle's even where the other
    changed, and refuses any run that read another VQ-VAE's features."""
    stage1.main(["--store", str(tiny_store), "--modality", "visual", "--out",
                 str(tmp_path / "vq_visual2"), "--steps", "5", "--batch-size", "16",
                 "--val-every", "5", "--seed", "7", *FAST, *TINY_VQ_FLAGS])
    new_vq = ["--vq-visual", str(tmp_path / "vq_visual2"), "--vq-audio", str(runs / "vq_audio")]
    stage2.main(["--store", str(tiny_store), *new_vq, "--seq-len", "12", "--batch-size", "8",
                 "--val-every", "5", "--model", "mdvae", "--out", str(tmp_path / "mdvae2"),
                 "--steps", "5", *FAST, *TINY_MDVAE_FLAGS])
    recorded = json.loads((tmp_path / "mdvae2" / "config.json").read_text())["modality_keys"]
    old = json.loads((runs / "dsae_audio" / "config.json").read_text())["modality_keys"]
    assert recorded["audio"] == old["audio"] and recorded["visual"] != old["visual"]
    heads = tmp_path / "heads"
    emotion.main(["--store", str(tiny_store), *new_vq, "--mdvae", str(tmp_path / "mdvae2"),
                  "--dsae-audio", str(runs / "dsae_audio"), "--out", str(heads)])
    out = export.main([*new_vq, "--mdvae", str(tmp_path / "mdvae2"), "--dsae-audio",
                       str(runs / "dsae_audio"), "--emotion", str(heads), "--out",
                       str(tmp_path / "bundle")])
    assert "dsae_audio" in load_bundle(out).components
    # the V-DSAE and the MDVAE read the old visual VQ-VAE's features: refused, nothing written
    for flags in (["--mdvae", str(tmp_path / "mdvae2"), "--dsae-visual",
                   str(runs / "dsae_visual")], ["--mdvae", str(runs / "mdvae")]):
        with pytest.raises(ConfigError, match="other VQ-VAEs"):
            export.main([*new_vq, *flags, "--out", str(tmp_path / "refused")])
        assert not (tmp_path / "refused").exists()
    # the same check inside a bundle's VQ-VAEs, and for an unpacked run
    unpacked = unpack.main(["--bundle", str(out), "--out", str(tmp_path / "unpacked")])
    second = export.main(["--bundle", str(out), "--dsae-audio", str(unpacked["dsae_audio"]),
                          "--emotion", str(heads), "--out", str(tmp_path / "second")])
    assert "dsae_audio" in load_bundle(second).components
    with pytest.raises(ConfigError, match="other VQ-VAEs"):
        export.main(["--bundle", str(out), "--dsae-visual", str(runs / "dsae_visual"),
                     "--emotion", str(tmp_path / "heads"), "--out", str(tmp_path / "third")])


def test_the_recipe_chains_each_fine_tune_from_the_phase_before():
    chain = {kind: recipe.phases(kind) for kind in recipe.MODELS}
    assert [p.folder for p in chain["mdvae"]] == [
        "mdvae", "mdvae", "mdvae_frozen", "mdvae2", "mdvae3", "mdvae4", "mdvae4_frozen",
        "mdvae5", "mdvae6", "mdvae7"]
    assert [p.folder for p in chain["dsae-audio"]][-1] == "dsae_audio2_frozen"
    assert [p.folder for p in chain["dsae-visual"]][-1] == "dsae_visual4_frozen"
    for phases in chain.values():
        assert [p.steps for p in phases[:2]] == [12000, 24000] and phases[1].resume
        for before, phase in zip(phases[1:], phases[2:]):
            assert phase.source == before.folder and not phase.resume
        frozen = [p.folder for p in phases if "--freeze-w-encoder" in p.flags]
        last_frozen = phases[-4] if phases[0].kind == "mdvae" else phases[-1]
        assert frozen == [phases[2].folder, last_frozen.folder]
    # the MDVAE's w split into a voice part of 16 and a face part of 68 for its last three phases
    split = [p for p in chain["mdvae"] if "--mdvae-w-per-stream" in p.flags]
    assert [p.folder for p in split] == ["mdvae5", "mdvae6", "mdvae7"]
    for phase in split:
        flags = dict(zip(phase.flags[::2], phase.flags[1::2]))
        assert flags["--mdvae-w-audio-dim"] == "16" and flags["--mdvae-obs-logvar-min"] == "-3"
        assert flags["--mdvae-voice-reads-w-a-only"] == "true" and phase.steps == 8000
    # q(w)'s own face network from the MDVAE's third phase on (the later ones inherit it)
    assert [p.folder for p in chain["mdvae"] if "--mdvae-w-face-network" in p.flags] == ["mdvae3"]
    assert [p.steps for p in recipe.phases("dsae-audio", scale=0.001)] == [12, 24, 8, 12, 8]


@pytest.mark.slow
def test_the_recipe_runs_the_whole_chain_and_goes_on_where_it_stopped(runs, tiny_store,
                                                                      tmp_path, capsys):
    out = tmp_path / "seed2"
    base = ["--store", str(tiny_store), "--vq-visual", str(runs / "vq_visual"),
            "--vq-audio", str(runs / "vq_audio"), "--seed", "2", "--out", str(out),
            "--scale", "0.0005"]
    # a w of 20, above the voice's part of 16 that the MDVAE's last three phases ask for
    tiny = ["--", "--seq-len", "12", "--batch-size", "8", *FAST, *TINY_MDVAE_FLAGS,
            "--mdvae-w-dim", "20"]
    with pytest.raises(ConfigError, match="MDVAE's recipe first"):
        recipe.main([*base, "--models", "dsae-audio", *tiny])
    # the first phase stopped part way (3 of its 6 steps), as a kill would leave it
    first = recipe.command(recipe.phases("mdvae", 0.0005)[0], recipe.build_parser().parse_args(
        base), tiny[1:])
    stage2.main([*first, "--steps", "3"])
    done = recipe.main([*base, "--models", "mdvae", "dsae-audio", *tiny])
    assert [(r["folder"], r["steps"], r["trained"]) for r in done] == [
        ("mdvae", 6, True), ("mdvae", 12, True), ("mdvae_frozen", 4, True), ("mdvae2", 6, True),
        ("mdvae3", 6, True), ("mdvae4", 6, True), ("mdvae4_frozen", 4, True),
        ("mdvae5", 4, True), ("mdvae6", 4, True), ("mdvae7", 4, True), ("dsae_audio", 6, True),
        ("dsae_audio", 12, True), ("dsae_audio_frozen", 4, True), ("dsae_audio2", 6, True),
        ("dsae_audio2_frozen", 4, True)]
    assert "resumes from step 3" in capsys.readouterr().out
    steps = [r["step"] for r in common.RunFolder(out / "mdvae").read_log() if r["split"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 12
    config = json.loads((out / "mdvae4_frozen" / "config.json").read_text())
    assert config["init_from"]["run"] == str(out / "mdvae4")
    assert config["model"]["w_face_network"] and config["freeze_w_encoder"]
    assert config["model"]["obs_logvar_min"] == -6 and config["run"]["seed"] == 2
    last = json.loads((out / "mdvae7" / "config.json").read_text())
    assert last["init_from"]["run"] == str(out / "mdvae6") and not last.get("freeze_w_encoder")
    assert last["model"]["w_per_stream"] and last["model"]["voice_reads_w_a_only"]
    assert last["model"]["w_audio_dim"] == 16 and last["model"]["w_dim"] == 20
    dsae = json.loads((out / "dsae_audio" / "config.json").read_text())["model"]
    assert dsae["w_dim"] == 20  # the tiny MDVAE's, by --like-mdvae
    # run again: every phase is done, nothing trains
    again = recipe.main([*base, "--models", "mdvae", "dsae-audio", *tiny])
    assert not any(r["trained"] for r in again)
    # another seed's recipe into the same folders is refused
    with pytest.raises(ConfigError, match="training seed 2"):
        recipe.main([*base, "--models", "mdvae", "--seed", "3", *tiny])


@pytest.mark.slow
def test_ceiling_reads_a_store_per_stream_and_refuses_seen_speakers(runs, tiny_store, tmp_path):
    flags = ["--store", str(tiny_store), "--vq-visual", str(runs / "vq_visual"),
             "--vq-audio", str(runs / "vq_audio"), "--epochs", "2", "2", "--seeds", "0", "1",
             "--crop", "16", "--threads", "1"]
    results = ceiling.main([*flags, "--readers", "mlp", "seq", "--out",
                            str(tmp_path / "room.json")])
    assert set(results["readers"]) == {"mlp", "seq"}
    for r in results["readers"].values():
        assert set(r["streams"]) == {"voice", "face", "both"}
        assert len(r["voice_adds"]["per_seed"]) == 2
        for s in r["streams"].values():
            assert s["accuracy"] == pytest.approx(np.mean([p["all"] for p in s["per_seed"]]))
    assert json.loads((tmp_path / "room.json").read_text())["held_clips"] == results["held_clips"]
    with pytest.raises(MDVAEError, match="training speakers"):
        ceiling.main([*flags, "--split", "train"])
