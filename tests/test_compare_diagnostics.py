"""train.compare_diagnostics: train.diagnose results of several runs side by side."""

import json
import math

import pytest

from mdvae.errors import MDVAEError
from mdvae.eval import diagnostics as diag
from train import compare_diagnostics as cd

SETTINGS = {"source": "runs/x", "component": None, "store": "data/synth200",
            "held_store": "data/synth_s7", "held_split": "val", "train_clips": 1500, "seed": 0,
            "frame_probes": False, "window": 0}


def result(levels: dict[str, tuple[float, int]], *, two_streams=True, mixed=(0.4, 0.1),
           settings=SETTINGS, clips=None) -> dict:
    """A train.diagnose JSON as the program writes it (Diagnostics.to_dict), with the given
    emotion accuracy and clip count per intensity level."""
    clips = clips if clips is not None else sum(n for _, n in levels.values())
    total = sum(a * n for a, n in levels.values()) / clips
    sources = {lv: {"clips": n, "accuracy": a} for lv, (a, n) in levels.items()}
    sources["all"] = {"clips": clips, "accuracy": total}
    if two_streams:
        face, voice = mixed
        for row in sources.values():
            row |= {"same_pairs": row["clips"], "same_accuracy": 0.8, "pairs": row["clips"],
                    "face": face, "voice": voice, "neither": 1 - face - voice}
        groups = [diag.GroupDiagnostics("w", 84, 170.0, 0.0, [], {"audio": 150.0,
                                                                   "visual": 1700.0}),
                  diag.GroupDiagnostics("z_av", 8, 9.0, 7.5, [0.1] * 8, {"audio": 90.0,
                                                                          "visual": 40.0})]
        streams = [diag.StreamDiagnostics("audio", 580.0, -0.5, -2.7, -0.6),
                   diag.StreamDiagnostics("visual", -1150.0, -3.0, -3.0, -7.1)]
    else:
        groups = [diag.GroupDiagnostics("w", 84, 105.0, 0.0, [], {"visual": 1690.0}),
                  diag.GroupDiagnostics("z", 16, 5.0, 2.0, [0.1] * 16, {"visual": 50.0})]
        streams = [diag.StreamDiagnostics("visual", -1160.0, -3.0, -3.0, -7.1)]
    groups[0].probes = {"emotion": total, "speaker": 1.0}
    d = diag.Diagnostics("MDVAE" if two_streams else "DSAE", groups, streams, clips,
                         emotion_sources=sources, settings=dict(settings or {}))
    return d.to_dict()


def write(tmp_path, name, data) -> str:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data))
    return str(path)


def se(p, n):
    return math.sqrt(p * (1 - p) / n)


def test_margins_per_level_with_their_errors_the_verdict_and_the_figure(tmp_path):
    paths = [write(tmp_path, "md4", result({"1": (0.75, 176), "2": (0.90, 154)})),
             write(tmp_path, "vd4", result({"1": (0.68, 176), "2": (0.83, 154)},
                                           two_streams=False)),
             write(tmp_path, "md3", result({"1": (0.72, 176), "2": (0.92, 154)})),
             write(tmp_path, "vd3", result({"1": (0.70, 176), "2": (0.86, 154)},
                                           two_streams=False))]
    out = cd.main(paths + ["--pair", "md4=vd4", "md3=vd3", "--out", str(tmp_path / "cmp")])
    assert out["labels"] == ["md4", "vd4", "md3", "vd3"]
    assert out["models"] == {"md4": "MDVAE", "vd4": "DSAE, visual", "md3": "MDVAE",
                             "vd3": "DSAE, visual"}
    level1 = out["margins"]["per_pair"]["md4 - vd4"]["1"]
    assert level1["difference"] == pytest.approx(0.07)
    assert level1["se"] == pytest.approx(math.hypot(se(0.75, 176), se(0.68, 176)))
    # over all 330 clips: the clip-weighted accuracies' difference
    all4 = out["margins"]["per_pair"]["md4 - vd4"]["all"]["difference"]
    assert all4 == pytest.approx((0.07 * 176 + 0.07 * 154) / 330)
    all3 = out["margins"]["per_pair"]["md3 - vd3"]["all"]["difference"]
    assert all3 == pytest.approx((0.02 * 176 + 0.06 * 154) / 330)
    # the smaller margin (seed 3's, 0.039) is below the issue's 0.05
    assert out["margins"]["smallest"] == pytest.approx(all3)
    assert out["margins"]["holds"] is False
    assert "does not hold" in out["markdown"]
    # the mixed test is the two-stream model's alone
    face = out["measures"]["another emotion's voice: read as the face's"]
    assert face["md4"]["value"] == pytest.approx(0.4) and face["vd4"]["value"] is None
    assert face["md4"]["se"] == pytest.approx(se(0.4, 330))
    row = next(line for line in out["markdown"].splitlines()
               if line.startswith("| another emotion's voice: read as the face's"))
    assert row.split("|")[2].strip().startswith("0.400 ±") and row.split("|")[3].strip() == "-"
    assert out["mismatches"] == []
    png = tmp_path / "cmp" / "compare_diagnostics.png"
    assert out["figure"] == png.name and png.stat().st_size > 10_000
    saved = json.loads((tmp_path / "cmp" / "compare_diagnostics.json").read_text())
    assert saved["margins"]["holds"] is False
    assert (tmp_path / "cmp" / "compare_diagnostics.md").read_text() == out["markdown"]


def test_every_pair_above_the_margin_holds(tmp_path):
    paths = [write(tmp_path, "md", result({"1": (0.80, 100)})),
             write(tmp_path, "vd", result({"1": (0.70, 100)}, two_streams=False))]
    out = cd.main(paths + ["--pair", "md=vd", "--out", str(tmp_path / "cmp")])
    assert out["margins"]["smallest"] == pytest.approx(0.10) and out["margins"]["holds"]


def test_runs_measured_differently_or_without_settings_are_flagged(tmp_path):
    other = {**SETTINGS, "held_store": "data/synth200"}
    paths = [write(tmp_path, "a", result({"1": (0.8, 100)})),
             write(tmp_path, "b", result({"1": (0.7, 100)}, settings=other)),
             write(tmp_path, "c", result({"1": (0.7, 100)}, settings=None))]
    out = cd.main(paths + ["--out", str(tmp_path / "cmp")])
    assert out["mismatches"] == ["held_store: a data/synth_s7, b data/synth200"]
    assert "**Measured differently**" in out["markdown"]
    assert "Settings not recorded (a result from before they were): c" in out["markdown"]
    assert out["margins"] == {}


def test_a_result_from_before_emotion_sources_reads_the_w_probe(tmp_path):
    old = result({"1": (0.6, 50), "2": (0.8, 50)})
    old.pop("emotion_sources")
    old.pop("settings")
    paths = [write(tmp_path, "old", old), write(tmp_path, "new", result({"1": (0.6, 100)}))]
    out = cd.main(paths + ["--out", str(tmp_path / "cmp")])
    acc = out["measures"]["emotion from w"]["old"]
    assert acc["value"] == pytest.approx(0.7) and acc["se"] == pytest.approx(se(0.7, 100))
    assert out["measures"]["emotion from w, level 1"]["old"]["value"] is None


def test_bad_inputs_are_refused_with_a_reason(tmp_path):
    good = write(tmp_path, "good", result({"1": (0.8, 100)}))
    vd = write(tmp_path, "vd", result({"1": (0.7, 90)}, two_streams=False))
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "eval.json").write_text(json.dumps({"summary": {}}))
    out = str(tmp_path / "cmp")
    with pytest.raises(MDVAEError, match="not readable JSON"):
        cd.main([good, str(tmp_path / "bad.json"), "--out", out])
    with pytest.raises(MDVAEError, match="not a train.diagnose result"):
        cd.main([good, str(tmp_path / "eval.json"), "--out", out])
    with pytest.raises(MDVAEError, match="no such file"):
        cd.main([good, str(tmp_path / "missing.json"), "--out", out])
    with pytest.raises(MDVAEError, match="at least two"):
        cd.main([good, "--out", out])
    with pytest.raises(MDVAEError, match="no run labelled 'x'"):
        cd.main([good, vd, "--pair", "good=x", "--out", out])
    with pytest.raises(MDVAEError, match="100 and 90 clips"):
        cd.main([good, vd, "--pair", "good=vd", "--out", out])
    with pytest.raises(SystemExit):  # labels must match the results
        cd.main([good, vd, "--labels", "a", "--out", out])
    with pytest.raises(SystemExit):
        cd.main([good, vd, "--pair", "good", "--out", out])


def test_margins_are_paired_over_the_clips_where_both_record_their_readings(tmp_path):
    md, vd = result({"1": (0.8, 100)}), result({"1": (0.7, 100)}, two_streams=False)
    # the V-DSAE reads 70 of the clips the MDVAE reads (80): they differ on 10 clips only
    for d, right in ((md, 80), (vd, 70)):
        for level in ("1", "all"):
            d["emotion_sources"][level]["correct"] = [1] * right + [0] * (100 - right)
    paths = [write(tmp_path, "md", md), write(tmp_path, "vd", vd)]
    out = cd.main(paths + ["--pair", "md=vd", "--out", str(tmp_path / "cmp")])
    margin = out["margins"]["per_pair"]["md - vd"]["all"]
    assert margin["difference"] == pytest.approx(0.10) and margin["paired"] is True
    # the SD of ten 1s among a hundred, over 10: far below the unpaired 0.061
    assert margin["se"] == pytest.approx(math.sqrt(0.1 * 0.9 * 100 / 99) / 10)
    assert math.hypot(se(0.8, 100), se(0.7, 100)) > 2 * margin["se"]
    row = next(line for line in out["markdown"].splitlines() if line.startswith("| md - vd"))
    assert "+0.100 ± 0.030 |" in row and "*" not in row
    # measured on other clips, the readings cannot be paired
    vd["settings"]["held_store"] = "data/other"
    paths = [write(tmp_path, "md", md), write(tmp_path, "vd", vd)]
    out = cd.main(paths + ["--pair", "md=vd", "--out", str(tmp_path / "cmp")])
    margin = out["margins"]["per_pair"]["md - vd"]["all"]
    assert margin["paired"] is False
    assert margin["se"] == pytest.approx(math.hypot(se(0.8, 100), se(0.7, 100)))
