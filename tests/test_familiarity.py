"""The familiarity score and the emotion calibration: their arithmetic, and the pipeline's
use of them on the tiny bundle (whose numbers mean nothing, only the plumbing)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from mdvae.calibration import (
    calibrated,
    ece_noise_floor,
    expected_calibration_error,
    fit_temperature,
    selective,
)
from mdvae.familiarity import Familiarity, percentile, reference_table
from mdvae.pipeline import Pipeline
from tests.helpers import CLIP_A


def test_percentile_reads_the_reference_table():
    table = reference_table({"x": np.arange(101.0)})
    q = table["scores"]["x"]["quantiles"]
    assert percentile(-5, q) == 0 and percentile(500, q) == 100
    assert percentile(42.5, q) == pytest.approx(42.5)


def test_familiarity_verdict_from_the_spread_beyond_the_test_clips():
    table = reference_table({"mdvae": np.linspace(0, 10, 50), "vq_visual": np.linspace(1, 2, 50),
                             "vq_audio": np.linspace(1, 2, 50)})
    usual = Familiarity.of({"mdvae": 5.0, "vq_visual": 1.5, "vq_audio": 1.2}, table)
    assert usual.familiar and usual.level == "familiar" and usual.reference_clips == 50
    assert usual.worst == "mdvae" and "familiar to the model" in usual.sentence()
    # the face scores 3x further from the median than the worst test clip
    foreign = Familiarity.of({"mdvae": 5.0, "vq_visual": 1.5 + 3 * 0.5, "vq_audio": 1.2}, table)
    assert foreign.familiar is False and foreign.worst == "vq_visual"
    assert foreign.percentile == 100 and foreign.spreads["vq_visual"] == pytest.approx(3.0)
    assert "unlike anything" in foreign.sentence() and "the face" in foreign.sentence()
    unknown = Familiarity.of(usual.scores, None)
    assert unknown.familiar is None and unknown.level == "unknown"
    assert "no reference scores" in unknown.sentence()
    assert foreign.as_dict()["level"] == "unfamiliar"


def test_a_foreign_voice_is_caught_by_the_audio_score_and_old_tables_still_read():
    old = reference_table({"mdvae": np.linspace(0, 10, 50), "vq_visual": np.linspace(1, 2, 50),
                           "vq_audio": np.linspace(1, 2, 50)})  # exported before mdvae_audio
    new = reference_table({"mdvae": np.linspace(0, 10, 50), "vq_visual": np.linspace(1, 2, 50),
                           "vq_audio": np.linspace(1, 2, 50),
                           "mdvae_audio": np.linspace(600, 800, 50)})
    # a familiar face whose voice's typical frame lies twice the worst test clip's distance out
    scores = {"mdvae": 6.0, "vq_visual": 1.5, "vq_audio": 1.9, "mdvae_audio": 900.0}
    on_old = Familiarity.of(scores, old)
    assert on_old.familiar and set(on_old.spreads) == {"mdvae", "vq_visual", "vq_audio"}
    on_new = Familiarity.of(scores, new)
    assert on_new.familiar is False and on_new.worst == "mdvae_audio"
    assert on_new.spreads["mdvae_audio"] == pytest.approx(2.0)
    assert "the voice is less familiar" in on_new.sentence()


def test_the_audio_score_is_the_median_frame_of_the_audio_terms(pipe):
    from mdvae.familiarity import clip_scores
    from mdvae.model.gaussian import kl_divergence

    clip = pipe.load(CLIP_A, aligned=True)
    x_a, x_v = pipe.codec.encode(clip.frames[None], clip.power[None])
    scores = clip_scores(pipe.mdvae, pipe.codec, clip.frames, clip.power, x_a, x_v)
    mdvae = pipe.mdvae
    with torch.no_grad():
        latents, posterior = mdvae.infer(x_a, x_v, sample=False)
        prior = mdvae.priors(latents)
        x_a_hat, x_v_hat = mdvae.decode(latents)
        terms = mdvae.elbo(x_a, x_v, x_a_hat, x_v_hat, posterior, prior)
        frames = (mdvae.decoder_x_a.frame_negative_log_likelihood(x_a, x_a_hat)
                  + kl_divergence(posterior.z_a, prior.z_a))[0]  # (T,)
    # per frame, the audio terms of the bound: their mean is the clip's audio part
    assert float(frames.mean()) == pytest.approx(float(terms.rec_audio + terms.kl_za), rel=1e-4)
    assert scores["mdvae_audio"] == pytest.approx(float(np.median(frames.numpy())), rel=1e-5)
    assert scores["mdvae"] == pytest.approx(float(terms.negative_elbo), rel=1e-5)


def test_temperature_scaling_recovers_an_overconfident_model():
    rng = np.random.default_rng(0)
    n, classes = 4000, 8
    true_logits = rng.normal(0, 1.5, (n, classes))
    labels = np.array([rng.choice(classes, p=p) for p in calibrated(true_logits, 1.0)])
    overconfident = 3.0 * true_logits  # the right ranking, three times too sure
    t = fit_temperature(overconfident, labels)
    assert t == pytest.approx(3.0, rel=0.15)
    before = expected_calibration_error(calibrated(overconfident, 1.0), labels)
    after = expected_calibration_error(calibrated(overconfident, t), labels)
    assert after < 0.03 < before
    stats = selective(calibrated(overconfident, t), labels, sure_from=0.5)
    assert 0 < stats["answered"] < 1 and stats["accuracy_answered"] > 0.5


def test_the_ece_of_a_calibrated_head_on_few_clips_is_not_zero():
    rng = np.random.default_rng(1)
    few, many = calibrated(rng.normal(0, 1.5, (176, 8)), 1.0), calibrated(
        rng.normal(0, 1.5, (4000, 8)), 1.0)
    assert ece_noise_floor(few, draws=50) > 0.05 > 0.02 > ece_noise_floor(many, draws=20)


@pytest.fixture(scope="module")
def pipe(tiny_bundle):
    with Pipeline(tiny_bundle, device="cpu", max_seconds=4.0) as p:
        yield p


def test_every_encoding_carries_its_familiarity(pipe):
    enc = pipe.encode(pipe.load(CLIP_A, aligned=True))
    assert set(enc.familiarity.scores) == {"mdvae", "mdvae_audio", "vq_visual", "vq_audio"}
    assert all(np.isfinite(v) for v in enc.familiarity.scores.values())
    assert enc.familiarity.level == "unknown"  # the tiny bundle has no reference table
    # The same clip placed against a table of its own scores is familiar.
    table = reference_table({k: np.array([v * 0.9, v, v * 1.1]) if v > 0 else
                             np.array([v * 1.1, v, v * 0.9])
                             for k, v in enc.familiarity.scores.items()})
    bundle_info = dict(pipe.bundle.info)
    pipe.bundle.info["familiarity"] = table
    try:
        again = pipe.encode(enc.clip)
    finally:
        pipe.bundle.info.clear()
        pipe.bundle.info.update(bundle_info)
    assert again.familiarity.familiar


def test_emotion_abstains_on_an_unfamiliar_clip_and_uses_the_temperature(pipe):
    enc = pipe.encode(pipe.load(CLIP_A, aligned=True))
    plain = pipe.emotion_reading(enc)
    assert plain.temperature == 1.0 and sum(plain.probabilities.values()) == pytest.approx(1)
    odd = Familiarity(enc.familiarity.scores, {"mdvae": 100.0}, {"mdvae": 9.0}, 10)
    reading = pipe.emotion_reading(dataclasses.replace(enc, familiarity=odd))
    assert reading.answer is None and "unfamiliar" in reading.reason
    assert reading.probabilities == plain.probabilities  # still shown
    sure = pipe.emotion_reading(enc, sure_from=0.0)
    assert sure.answer == sure.top[0] and sure.reason == ""
    head = pipe.bundle.info.setdefault("emotion", {}).setdefault("emotion", {"accuracy": {}})
    head["calibration"] = {"temperature": 4.0}
    try:
        hot = pipe.emotion_reading(enc)
    finally:
        del head["calibration"]
    assert hot.temperature == 4.0 and hot.top[1] < plain.top[1]
    assert torch.is_tensor(enc.latents.w)


def test_export_adds_the_reference_to_a_bundle_and_keeps_its_weights(tiny_bundle, tiny_store,
                                                                      tmp_path):
    from safetensors.torch import load_file

    from mdvae.bundle import load_bundle
    from train import export

    results = tmp_path / "results.json"
    results.write_text(json.dumps({"summary": {"passed": 0}, "markdown": "**re-evaluated**"}))
    out = export.main(["--bundle", str(tiny_bundle), "--reference-store", str(tiny_store),
                       "--results", str(results), "--out", str(tmp_path / "with_reference")])
    before = load_file(str(tiny_bundle / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    info = load_bundle(out).info
    assert info["evaluation"]["markdown"] == "**re-evaluated**"  # --results applies too
    # the stored summary, with what report.summary keeps today recomputed from the results
    assert info["evaluation"]["summary"] == {"passed": 0, "targets_passed": "0/0"}
    assert "**re-evaluated**" in (out / "README.md").read_text()
    table = info["familiarity"]
    # the tiny store's one test speaker has 4 clips: every score's table counts them
    assert table["scores"] and all(s["clips"] == 4 for s in table["scores"].values())
    for score in table["scores"].values():
        assert score["quantiles"] == sorted(score["quantiles"])
        assert score["quantiles"][0] <= score["median"] <= score["quantiles"][-1]
    temperatures = [h["calibration"] for h in info["emotion"].values() if "calibration" in h]
    assert temperatures, "the training and validation clips calibrate the emotion heads"
    for calibration in temperatures:  # out of fold: 3 training + 1 validation speakers x 4
        assert calibration["out_of_fold"]["clips"] == 16
        assert calibration["out_of_fold"]["folds"] == 4
        assert 0 < calibration["test"]["ece_floor"] < 1


def synthetic_pool(out, *, speakers: int, clips: int, val: str, test: str, first: int) -> None:
    """A small synthetic store of speakers `first`, `first` + 1, ... (24-frame clips), with
    `val` and `test` as train.prepare's --val-speakers and --test-speakers."""
    from train import prepare

    assert prepare.main(["synthetic", "--out", str(out), "--speakers", str(speakers),
                         "--clips-per-speaker", str(clips), "--frames", "24", "--val-speakers",
                         val, "--test-speakers", test, "--workers", "0",
                         "--first-speaker", str(first)]) == 0


def test_export_takes_the_familiarity_table_from_a_pool_of_new_speakers(tiny_bundle, tiny_store,
                                                                         tmp_path):
    from mdvae.bundle import load_bundle, save_bundle
    from mdvae.data.store import Store
    from mdvae.errors import MDVAEError
    from tests.conftest import tiny_components
    from train import export

    pool = tmp_path / "pool"  # speakers 5 to 7: new to tiny_store (0 to 4); 2 held out
    synthetic_pool(pool, speakers=3, clips=3, val="0", test="2", first=5)
    out = export.main(["--bundle", str(tiny_bundle), "--familiarity-store", str(pool),
                       "--out", str(tmp_path / "pooled")])
    table = load_bundle(out).info["familiarity"]
    assert table["store"] == str(pool) and table["split"] == "test"
    held = len(Store(pool).split_clips("test"))
    assert held == 6 and all(s["clips"] == held for s in table["scores"].values())
    # beside --reference-store, the pool gives the familiarity and the store the calibration
    out = export.main(["--bundle", str(tiny_bundle), "--reference-store", str(tiny_store),
                       "--familiarity-store", str(pool), "--out", str(tmp_path / "both")])
    info = load_bundle(out).info
    assert info["familiarity"]["store"] == str(pool)
    assert any("calibration" in h for h in info["emotion"].values())
    # a pool of speakers the bundle trained on is refused
    trained = sorted({c.speaker for c in Store(pool).split_clips("test")})[:1]
    seen = tmp_path / "seen"
    save_bundle(seen, tiny_components(), card="# tiny\n",
                info={"data": {"splits": {"train": {"speakers": trained}}}})
    with pytest.raises(MDVAEError, match="are training speakers"):
        export.main(["--bundle", str(seen), "--familiarity-store", str(pool),
                     "--out", str(tmp_path / "refused")])


def test_export_fits_the_emotion_temperatures_on_a_pool_of_new_speakers(tiny_bundle, tiny_store,
                                                                         tmp_path):
    from mdvae.bundle import load_bundle
    from mdvae.data.store import Store
    from mdvae.errors import ConfigError
    from train import export

    pool = tmp_path / "pool"  # speakers 5 to 8: new to tiny_store (0 to 4); 3 for validation
    synthetic_pool(pool, speakers=4, clips=3, val="3", test="0", first=5)
    out = export.main(["--bundle", str(tiny_bundle), "--reference-store", str(tiny_store),
                       "--calibration-store", str(pool), "--out", str(tmp_path / "pooled")])
    heads = [h["calibration"] for h in load_bundle(out).info["emotion"].values()
             if "calibration" in h]
    assert heads
    for calibration in heads:
        fitted = calibration["pool"]
        assert fitted["clips"] == 9 and fitted["speakers"] == 3 and fitted["split"] == "val"
        # the shipped temperature is the pool's, the NLL minimiser there (T = 1 is a candidate)
        assert calibration["temperature"] == fitted["temperature"]
        assert fitted["nll_after"] <= fitted["nll_before"] + 1e-9
        assert str(pool) in calibration["fitted_on"]
        # the out-of-fold fit is kept beside it, for the record
        kept = calibration["out_of_fold"]
        assert kept["clips"] == 16 and kept["nll_after"] <= kept["nll_before"] + 1e-9
    assert "temperature fitted on the head's logits of 9 clips" in (out / "README.md").read_text()
    # a pool holding the reference store's test speaker would calibrate on the test speakers
    test_speaker = Store(tiny_store).split_clips("test")[0].speaker
    tested = tmp_path / "tested"
    synthetic_pool(tested, speakers=2, clips=2, val=test_speaker, test="0",
                   first=int(test_speaker.split("_")[-1]))
    with pytest.raises(ConfigError, match="test speakers"):
        export.main(["--bundle", str(tiny_bundle), "--reference-store", str(tiny_store),
                     "--calibration-store", str(tested), "--out", str(tmp_path / "refused")])
    with pytest.raises(SystemExit):  # the temperatures come with --reference-store's pass
        export.main(["--bundle", str(tiny_bundle), "--calibration-store", str(pool),
                     "--out", str(tmp_path / "alone")])
