"""train.compare: evaluations of several bundles side by side (training seeds)."""

import json

import numpy as np
import pytest

from mdvae.errors import MDVAEError
from train import compare


def results(mdvae, audio, visual, *, seed=0, mouth=0.6, mouth_se=0.02, paired_se=0.04):
    return {
        "config": {"data": "data/synth200", "split": "test", "seed": seed, "quick": False},
        "emotion": {"paired": {"dsae_audio": {"difference": mdvae - audio, "se": paired_se},
                               "dsae_visual": {"difference": mdvae - visual, "se": paired_se}}},
        "summary": {
            "emotion_accuracy_mdvae_1": mdvae, "emotion_accuracy_mdvae_1_se": 0.03,
            "emotion_accuracy_mdvae_0.1": 0.9 * mdvae,
            "emotion_accuracy_dsae_audio_1": audio, "emotion_accuracy_dsae_visual_1": visual,
            "mouth_follows_z_av": mouth, "mouth_follows_z_av_se": mouth_se,
            "targets_passed": "3/12",
        },
        "markdown": "",
    }


def write(tmp_path, name, data):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(data))
    return str(folder)


def test_seeds_side_by_side_with_spread_margins_and_figure(tmp_path):
    paths = [write(tmp_path, "s0", results(0.77, 0.66, 0.56, mouth=0.68, mouth_se=0.015)),
             write(tmp_path, "s1", results(0.73, 0.66, 0.56, mouth=0.62, mouth_se=0.020)),
             write(tmp_path, "s2", results(0.75, 0.66, 0.56, mouth=0.65, mouth_se=0.025))]
    out = compare.main(paths + ["--out", str(tmp_path / "cmp")])
    mouth = out["measures"]["mouth_follows_z_av"]
    assert mouth["mean"] == pytest.approx(0.65)
    assert mouth["std"] == pytest.approx(np.std([0.68, 0.62, 0.65], ddof=1))
    assert mouth["se_within"] == pytest.approx(np.sqrt(np.mean([0.015**2, 0.02**2, 0.025**2])))
    assert "targets_passed" not in out["measures"]  # not a number
    assert "| mouth_follows_z_av | 0.650 ± 0.030 | 0.020 | 0.680 | 0.620 | 0.650 |" in (
        out["markdown"]
    )
    emo = out["emotion"]
    assert emo["margins"]["dsae_audio"]["min"] == pytest.approx(0.07)
    assert emo["mdvae"]["range"] == pytest.approx(0.04)
    # smallest margin 0.07 >= 0.05, and the MDVAE's range 0.04 is below it
    assert emo["verdict"]["holds"] is True and "holds." in out["markdown"]
    assert "| s1 | 0.730 | 0.070 ± 0.040 | 0.170 ± 0.040 | 0.90 |" in out["markdown"]
    assert emo["per_run"]["s1"]["tenth_of_labels"] == pytest.approx(0.9)
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 0
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert saved["labels"] == ["s0", "s1", "s2"] and saved["figure"] == "compare.png"


def test_a_seed_below_the_margin_or_a_wide_spread_fails_the_verdict(tmp_path):
    low = {"a": compare.read_results(write(tmp_path, "a", results(0.77, 0.66, 0.56))),
           "b": compare.read_results(write(tmp_path, "b", results(0.69, 0.66, 0.56)))}
    verdict = compare.compare(low)["emotion"]["verdict"]
    assert verdict["smallest_margin"] == pytest.approx(0.03) and not verdict["holds"]
    # every margin above 0.05, but the seeds differ by more than the smallest margin
    wide = {"a": compare.read_results(write(tmp_path, "c", results(0.90, 0.66, 0.56))),
            "b": compare.read_results(write(tmp_path, "d", results(0.72, 0.66, 0.56)))}
    verdict = compare.compare(wide)["emotion"]["verdict"]
    assert verdict["smallest_margin"] == pytest.approx(0.06)
    assert verdict["mdvae_range"] == pytest.approx(0.18) and not verdict["holds"]


def test_runs_evaluated_differently_are_flagged(tmp_path):
    runs = {"a": compare.read_results(write(tmp_path, "a", results(0.7, 0.6, 0.5, seed=0))),
            "b": compare.read_results(write(tmp_path, "b", results(0.7, 0.6, 0.5, seed=1)))}
    out = compare.compare(runs)
    assert out["mismatches"] == ["seed: a 0, b 1"]
    assert "**Evaluated differently**" in out["markdown"]


def test_a_bundle_with_its_evaluation_is_read_without_settings(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    summary = results(0.77, 0.66, 0.56)["summary"]
    (bundle / "config.json").write_text(json.dumps(
        {"format": "x", "components": {}, "info": {"evaluation": {"summary": summary}}}))
    read = compare.read_results(bundle)
    assert read["summary"] == summary and read["config"] is None and read["paired"] is None
    other = compare.read_results(write(tmp_path, "e", results(0.75, 0.66, 0.56)))
    out = compare.compare({"shipped": read, "seed 1": other})
    assert "Evaluation settings unknown (a bundle's summary only): shipped" in out["markdown"]
    assert out["mismatches"] == []  # nothing known to differ
    # no paired SE for the bundle: the margin alone
    assert "| shipped | 0.770 | 0.110 | 0.210 | 0.90 |" in out["markdown"]


def test_bad_inputs_are_refused_with_a_reason(tmp_path):
    with pytest.raises(MDVAEError, match="no results.json"):
        compare.read_results(tmp_path / "missing")
    over_seeds = write(tmp_path, "over", {"per_seed": {}, "spread": {}})
    with pytest.raises(MDVAEError, match="seed_<k>"):
        compare.read_results(over_seeds)
    bundle = tmp_path / "plain"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps({"components": {}, "info": {}}))
    with pytest.raises(MDVAEError, match="no evaluation summary"):
        compare.read_results(bundle)
    one = write(tmp_path, "one", results(0.7, 0.6, 0.5))
    with pytest.raises(MDVAEError, match="at least two"):
        compare.compare({"one": compare.read_results(one)})
    with pytest.raises(SystemExit):
        compare.main([one, one, "--labels", "x", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit):  # two folders of the same name need labels
        compare.main([one, one, "--out", str(tmp_path / "o")])
