import json

import numpy as np
import pytest

from mdvae.data.store import Store
from mdvae.eval import disentanglement as D
from mdvae.eval import experiments as ev
from mdvae.eval import report
from train import common, evaluate


def test_categorical_follow_stay_counts_only_where_a_and_b_differ():
    a = np.array([0, 1, 2, 3, 4, 4])
    b = np.array([0, 2, 2, 1, 3, 0])  # differs on items 1, 3, 4, 5
    pred = np.array([9, 2, 9, 3, 7, 0])  # 1 -> B, 3 -> A, 4 -> neither, 5 -> B
    fs = D.follow_stay_categorical(pred, a, b)
    assert (fs.follow, fs.stay, fs.n) == (2, 1, 4)
    assert fs.follow_share == 0.5 and fs.stay_share == 0.25
    # unknown labels (negative) are not counted
    assert D.follow_stay_categorical([1], [-1], [1]).n == 0
    assert np.isnan(D.FollowStay().follow_share)
    total = fs + D.FollowStay(1, 0, 1)
    assert (total.follow, total.stay, total.n) == (3, 1, 5)


def test_continuous_follow_stay_uses_the_margin_per_value():
    a = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    b = np.array([[2.0, 0.5], [0.5, 4.0], [3.0, 3.0]])
    pred = np.array([[1.8, 0.5], [0.0, 1.0], [1.5, 9.0]])
    fs = D.follow_stay_continuous(pred, a, b, margin=[1.0, 1.0])
    # counted: (0,0) follows, (1,1) stays, (2,0) is a tie (neither), (2,1) follows
    assert (fs.follow, fs.stay, fs.n) == (2, 1, 4)


def test_f0_contour_and_level_are_scored_on_frames_voiced_in_both():
    nan = np.nan
    shape = np.array([0.0, 3.0, 0.0, -3.0, 0.0, 3.0, nan])
    label_a = {"f0": 10.0 + shape}  # speaker A at 10 st, contour `shape`
    label_b = {"f0": 20.0 - shape}  # speaker B 10 st higher, contour mirrored
    # decoded: A's pitch level with B's contour
    reading = {"audio": {"f0": (10.0 - shape)[:, None]}}
    contour = next(f for f in D.FACTORS if f.name == "f0_contour")
    level = next(f for f in D.FACTORS if f.name == "f0_level")
    fs = D.score_factor(contour, reading, label_a, label_b)
    assert (fs.n, fs.follow) == (3, 3)  # the frames where the contours differ (by 6 st)
    fs = D.score_factor(level, reading, label_a, label_b)
    assert (fs.n, fs.stay) == (1, 1)


def test_head_motion_is_scored_about_each_clips_mean_pose():
    t = np.arange(8.0)
    wave = np.stack([2.0 * np.sin(t), np.zeros(8), 6.0 * np.cos(t)], 1)  # (T, 3)
    label_a = {"head_pose": wave}  # A sways one way about a rest pose of zero
    label_b = {"head_pose": -wave + 3.0}  # B the opposite way, about a pose 3 px/deg off
    # decoded: B's motion, drawn 1.4 px/deg from B's rest, on the side of A's (a judge's
    # bias on an unseen face): the absolute pose is nearer A's wherever the sway is small
    reading = {"visual": {"head_pose": -wave + 1.6}}
    pose = next(f for f in D.FACTORS if f.name == "head_pose")
    motion = next(f for f in D.FACTORS if f.name == "head_motion")
    assert (motion.latent, motion.score) == ("z_v", "head_motion")
    absolute = D.score_factor(pose, reading, label_a, label_b)
    assert absolute.stay > 0  # the offset fools the absolute reading
    fs = D.score_factor(motion, reading, label_a, label_b)
    # counted where the motions differ by the margin (dx 1 px, roll 4 deg); dy never does
    differ = np.abs(2 * (wave - wave.mean(0))) >= np.array([1.0, 1.0, 4.0])
    assert fs.n == differ.sum() > 0 and fs.follow == fs.n
    # only the frames the judge read count, centred on their own mean
    read = {"visual": {"head_pose": (-wave + 1.6)[::2], "t": slice(None, None, 2)}}
    fs = D.score_factor(motion, read, label_a, label_b)
    sub = wave[::2]
    assert fs.n == (np.abs(2 * (sub - sub.mean(0))) >= np.array([1.0, 1.0, 4.0])).sum()
    assert fs.follow == fs.n > 0


def test_the_pitch_heard_counts_a_pair_where_levels_or_contours_differ():
    nan = np.nan
    shape = np.array([0.0, 3.0, 0.0, -3.0, 0.0, 3.0, 1.0, nan])
    label_a = {"f0": 10.0 + shape}
    # heard: B's level (1), A's contour (0), as `pitch.heard_tracks` decides it (and A's
    # contour shape at A's size)
    reading = {"audio": {"heard": np.array([1.0, 0.0, 0.0, 0.0])}}
    contour = next(f for f in D.FACTORS if f.name == "f0_contour_heard")
    level = next(f for f in D.FACTORS if f.name == "f0_level_heard")
    assert (contour.latent, level.latent) == ("z_a", "w")
    label_b = {"f0": 20.0 - shape}  # 10 st higher, the contour mirrored: both count
    fs = D.score_factor(level, reading, label_a, label_b)
    assert (fs.follow, fs.stay, fs.n) == (1, 0, 1)
    fs = D.score_factor(contour, reading, label_a, label_b)
    assert (fs.follow, fs.stay, fs.n) == (0, 1, 1)
    label_b = {"f0": 10.5 + shape}  # level within the margin, the same contour: neither
    assert D.score_factor(level, reading, label_a, label_b).n == 0
    assert D.score_factor(contour, reading, label_a, label_b).n == 0
    # no tracks read (too few frames voiced in both): nothing counts
    unread = {"audio": {"heard": np.full(4, nan)}}
    assert D.score_factor(level, unread, label_a, {"f0": 20.0 - shape}).n == 0


def test_expected_direction_follows_the_swapped_groups():
    mouth = next(f for f in D.FACTORS if f.name == "mouth")
    assert D.expected(mouth, ("z_av", "z_v")) == "follow"
    assert D.expected(mouth, ("w",)) == "stay"


def test_subsets_have_two_classes_and_the_full_set_is_drawn_once():
    labels = ["a"] * 95 + ["b"] * 5
    rng = np.random.default_rng(0)
    subsets = ev.draw_subsets(labels, 0.02, 5, rng)
    assert len(subsets) == 5
    for idx in subsets:
        assert len(idx) == 2 and {labels[i] for i in idx} == {"a", "b"}
    assert len(ev.draw_subsets(labels, 1.0, 5, rng)) == 1


def test_group_subsets_take_whole_speakers_with_two_classes():
    labels = ["a", "b"] * 20  # 40 clips of 10 speakers, 4 each
    groups = [f"s{i // 4}" for i in range(40)]
    groups_a = np.asarray(groups)
    rng = np.random.default_rng(0)
    subsets = ev.draw_subsets(labels, 0.3, 4, rng, groups=groups)
    assert len(subsets) == 4
    for idx in subsets:
        chosen = set(groups_a[idx].tolist())
        assert len(chosen) == 3  # round(0.3 * 10) speakers, every clip of each
        assert sorted(idx.tolist()) == np.flatnonzero(np.isin(groups_a, list(chosen))).tolist()
    assert [len(s) for s in ev.draw_subsets(labels, 0.01, 2, rng, groups=groups)] == [4, 4]
    assert len(ev.draw_subsets(labels, 1.0, 5, rng, groups=groups)) == 1
    one_class = ["a"] * 4 + ["a", "b"] * 18  # speaker s0 holds only "a": s0 alone is redrawn
    drawn = ev.draw_subsets(one_class, 0.1, 20, rng, groups=groups)
    assert len(drawn) == 20 and all(len({one_class[i] for i in idx}) == 2 for idx in drawn)
    assert all(groups[idx[0]] != "s0" for idx in drawn)


def test_emotion_curve_with_separable_features():
    rng = np.random.default_rng(0)
    names = ["happy", "sad"]
    y = [names[i % 2] for i in range(40)]
    w = np.array([[1.0 if lab == "happy" else -1.0, 0.0] for lab in y]) + rng.normal(
        0, 0.1, (40, 2)
    )
    out = ev.emotion_curve(w, y, w, y, [0.1, 1.0], draws=3, seed=0)
    assert [p["n_clips"] for p in out["curve"]] == [4, 40]
    assert out["curve"][-1]["mean"] == 1.0 and out["curve"][-1]["draws"] == 1
    speakers = [f"s{i // 8}" for i in range(40)]  # by speakers: 5 of 8 clips each
    by = ev.emotion_curve(w, y, w, y, [0.4, 1.0], draws=3, seed=0, groups=speakers)["curve"]
    assert [p["n_groups"] for p in by] == [2, 5] and [p["n_clips"] for p in by] == [16, 40]
    assert by[-1]["correct"] == out["curve"][-1]["correct"]  # all speakers: all clips


@pytest.mark.slow
def test_end_to_end_quick_run_on_the_tiny_store(tiny_bundle, tiny_store, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = [
        "--bundle", str(tiny_bundle), "--data", str(tiny_store), "--out", str(out),
        "--quick", "--judge-steps", "3", "--denoise-sequences", "4", "--swap-pairs", "3",
        "--generation-clips", "2", "--sigmas", "0", "0.2", "--threads", "1",
    ]  # fmt: skip
    results = evaluate.main(argv)
    printed = capsys.readouterr().out
    assert "**Denoising**" in printed and "**Targets**" in printed
    for name in (
        "results.json",
        "results.md",
        "emotion_accuracy.png",
        "denoising_sigma.png",
        "swap_follow.png",
        "judge_visual.safetensors",
        "judge_audio.safetensors",
    ):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text())
    for key in (
        "config",
        "reconstruction",
        "denoising",
        "emotion",
        "disentanglement",
        "targets",
        "summary",
        "markdown",
        "timing",
    ):
        assert key in saved, key
    assert set(saved["reconstruction"]["models"]) == {"vqvae", "mdvae", "dsae_visual", "dsae_audio"}
    mouth = saved["denoising"]["metric"]["mouth"]["0.2"]
    assert set(mouth) == {"noisy", "vqvae", "dsae_visual", "mdvae"}
    assert "noisy" not in saved["denoising"]["metric"]["mouth"]["0"]
    # the gain is each model's PSNR on noisy input minus its own on clean input
    clean = saved["denoising"]["metric"]["mouth"]["0"]
    for m in ("vqvae", "dsae_visual", "mdvae"):
        assert mouth[m]["gain"] == pytest.approx(mouth[m]["psnr"] - clean[m]["psnr"], abs=1e-9)
        assert "gain" not in clean[m] and mouth[m]["psnr_se"] >= 0
    assert "gain" not in mouth["noisy"]
    # the visual judge read the denoised mouths of every model, the input and the clean frames
    read = saved["denoising"]["mouth_read"]
    assert read["trusted"] == saved["disentanglement"]["trusted"]["mouth"]
    assert set(read["sigmas"]) == {"0", "0.2"}
    assert set(read["sigmas"]["0.2"]) == {"noisy", "vqvae", "dsae_visual", "mdvae"}
    assert set(read["sigmas"]["0"]) == {"vqvae", "dsae_visual", "mdvae"}
    for score in [read["clean"]] + [r for row in read["sigmas"].values() for r in row.values()]:
        assert 0 <= score["balanced_accuracy"] <= 1 and 0 <= score["accuracy"] <= 1
        assert score["sequences"] == 4 and score["frames"] == 4 * 6
    # ... and "clean" is the judge's reading of the clean corrupted frames, recomputed here
    # from the same draw of sequences (the study's random stream) and the saved judge
    from mdvae.eval import judges as J
    from mdvae.eval import metrics

    batch = Store(tiny_store).sample_windows("test", 10, 4, np.random.default_rng([0, 20]))
    judge, _ = J.load_judge(out / "judge_visual.safetensors")
    hit = metrics.DENOISE_FRAMES
    again = ev.mouth_reading(
        judge.read(batch["frames"][:, hit])["mouth"],
        J.MOUTH_OF_VISEME[batch["factors"]["viseme"][:, hit].astype(np.int64)],
    )
    assert read["clean"] == pytest.approx(again, nan_ok=True)
    summary = saved["summary"]
    assert summary["denoising_mouth_read_mdvae"] == read["sigmas"]["0.2"]["mdvae"][
        "balanced_accuracy"
    ]
    assert summary["denoising_mouth_read_clean"] == read["clean"]["balanced_accuracy"]
    assert "**Mouth shapes read from the denoised mouths**" in printed
    target = next(r for r in saved["targets"] if r["name"].startswith("mouth denoising, judge"))
    assert target["status"] in ({"pass", "FAIL"} if read["trusted"] else {"untrusted judge"})
    # the judges learnt other speakers than those they score
    judges = saved["disentanglement"]["judges"]
    assert judges["speakers"]["judges"] and judges["speakers"]["evaluated"]
    assert not set(judges["speakers"]["judges"]) & set(judges["speakers"]["evaluated"])
    # ... and read the DSAEs' reconstructions too (the bundle has both)
    for m in ("visual", "audio"):
        checks = set(judges["reports"][m]["scores"])
        assert checks == {"held_out", "clean", "codec", "model", "dsae"}
    assert "DSAE reconstructions" in results["markdown"]
    assert set(saved["disentanglement"]["rendered"]) == {f.name for f in D.FACTORS}
    for p in saved["emotion"]["models"]["mdvae"]["curve"]:
        assert p["se"] is not None
    by = saved["emotion"]["models"]["mdvae"]["curve_by_speakers"]  # shares of the speakers
    assert [p["fraction"] for p in by] == saved["emotion"]["fractions"]
    assert by[-1]["mean"] == saved["emotion"]["models"]["mdvae"]["curve"][-1]["mean"]
    assert "By labelled speakers" in results["markdown"]
    # the two DSAEs' w read together, and every model per intensity level (the tiny store's
    # test clips hold every level), the MDVAE paired with each other reading
    emo = saved["emotion"]
    fused = emo["late_fusion"]
    assert len(fused["correct"]) == emo["test_clips"] and "difference" in fused["mdvae_minus"]
    levels = {c.level for c in Store(tiny_store).split_clips("test") if c.emotion}
    assert set(emo["by_level"]) == {str(v) for v in levels}
    assert sum(row["clips"] for row in emo["by_level"].values()) == emo["test_clips"]
    for row in emo["by_level"].values():
        assert set(row["models"]) == {"mdvae", "dsae_audio", "dsae_visual", "late_fusion"}
        assert set(row["paired"]) == {"dsae_audio", "dsae_visual", "late_fusion"}
    assert "**Emotion from w by intensity level**" in printed
    shares = saved["disentanglement"]["swaps"]["shares"]
    assert set(shares) == set(D.SWAPS) and set(shares["w"]) == {f.name for f in D.FACTORS}
    assert {"follow_se", "stay_se", "pairs"} <= set(shares["w"]["mouth"])
    assert shares["z_av"]["mouth"]["expected"] == "follow"
    rows = saved["targets"]
    assert rows and {r["status"] for r in rows} <= {"pass", "FAIL", "untrusted judge", "n/a"}
    passed = sum(r["status"] == "pass" for r in rows)
    assert saved["summary"]["targets_passed"] == f"{passed}/{len(rows)}"
    for r in rows:
        assert f"| {r['name']} | {r['target']} | {r['measured']} | {r['status']} |" in printed
    assert results["markdown"] == (out / "results.md").read_text()


def test_bad_settings_are_refused():
    args = evaluate.build_parser().parse_args(
        ["--bundle", "b", "--data", "d", "--out", "o", "--judge-augment", "maybe"]
    )
    with pytest.raises(ValueError, match="judge-augment"):
        evaluate.settings_from(args)


# ---- the report: targets, summary and tables from a results dictionary ----------------


def report_results(
    emotion=0.95, psnr=(30.0, 28.0, 25.0, 20.0), follow=0.97, stay=0.95, read=(0.6, 0.45)
):
    """Results as `train.evaluate` writes them, with only what the targets read; `read`:
    the balanced accuracies of the MDVAE's and the V-DSAE's denoised mouths."""

    def curve(mean):
        return {"curve": [{"fraction": 0.1, "mean": mean / 2}, {"fraction": 1.0, "mean": mean}]}

    shares = {
        sw: {
            f.name: {
                "follow": follow if f.latent in groups else 0.02,
                "stay": 0.02 if f.latent in groups else stay,
                "n": 10,
                "expected": D.expected(f, groups),
            }
            for f in D.FACTORS
        }
        for sw, groups in D.SWAPS.items()
    }
    mouth = dict(zip(("mdvae", "dsae_visual", "vqvae", "noisy"), ({"psnr": p} for p in psnr)))

    def score(value):
        return {"balanced_accuracy": value, "balanced_accuracy_se": 0.01, "accuracy": value,
                "blind": 1 / 6, "sequences": 8}  # fmt: skip

    mouth_read = {
        "trusted": True,
        "clean": score(0.9),
        "sigmas": {"0": {"mdvae": score(0.7), "dsae_visual": score(0.5)},
                   "0.2": {"noisy": score(0.3), "mdvae": score(read[0]),
                           "dsae_visual": score(read[1])}},
    }  # fmt: skip
    return {
        "emotion": {"models": {"mdvae": curve(emotion), "dsae_audio": curve(0.5),
                               "dsae_visual": curve(0.6)}},
        "denoising": {"sigma": 0.2, "metric": {"mouth": {"0.2": mouth}},
                      "mouth_read": mouth_read},
        "disentanglement": {"swaps": {"shares": shares},
                            "trusted": {f.name: True for f in D.FACTORS}},
    }  # fmt: skip


def statuses(rows):
    return {r["name"]: r["status"] for r in rows}


def test_targets_pass_when_every_measure_meets_its_target():
    rows = report.targets(report_results())
    followed = [f for f in D.FACTORS if f.follow_target is not None]
    assert len(rows) == 2 + 2 + len(followed) + 1
    assert set(statuses(rows).values()) == {"pass"}
    names = statuses(rows)
    assert "emotion: MDVAE above A-DSAE and V-DSAE" in names
    assert "mouth denoising PSNR: MDVAE > V-DSAE > VQ-VAE > noisy" in names
    assert "mouth denoising, judge: MDVAE > V-DSAE" in names
    assert all(f"{f.title} follows {f.latent}" in names for f in followed)
    assert report.summary({"targets": rows})["targets_passed"] == f"{len(rows)}/{len(rows)}"


def test_targets_fail_on_each_shortfall_and_report_the_worst_cell():
    rows = statuses(report.targets(report_results(emotion=0.85)))
    assert rows["emotion accuracy from w (all labels)"] == "FAIL"
    assert rows["emotion: MDVAE above A-DSAE and V-DSAE"] == "pass"
    rows = statuses(report.targets(report_results(psnr=(30.0, 25.0, 28.0, 20.0))))
    assert rows["mouth denoising PSNR: MDVAE > V-DSAE > VQ-VAE > noisy"] == "FAIL"
    rows = statuses(report.targets(report_results(read=(0.45, 0.6))))
    assert rows["mouth denoising, judge: MDVAE > V-DSAE"] == "FAIL"

    results = report_results()
    results["disentanglement"]["swaps"]["shares"]["z_av+z_v"]["mouth"]["follow"] = 0.5
    rows = {r["name"]: r for r in report.targets(results)}
    mouth = next(f for f in D.FACTORS if f.name == "mouth")
    row = rows[f"{mouth.title} follows z_av"]
    assert row["status"] == "FAIL" and row["measured"] == "0.500 (swap z_av+z_v)"
    summary = report.summary({"targets": list(rows.values())})
    assert summary["targets_passed"] == f"{len(rows) - 1}/{len(rows)}"


def test_the_denoised_mouths_read_by_an_untrusted_judge_are_flagged():
    results = report_results(read=(0.45, 0.6))
    results["denoising"]["mouth_read"]["trusted"] = False
    assert statuses(report.targets(results))["mouth denoising, judge: MDVAE > V-DSAE"] == (
        "untrusted judge"
    )
    text = "\n".join(report._mouth_read_table(results["denoising"]))
    assert "**untrusted judge**" in text
    # the input row: the clean frames at sigma 0, the noisy input above it
    assert "| noisy input | 0.900 ± 0.010 (0.900) | 0.300 ± 0.010 (0.300) |" in text
    assert "| V-DSAE | 0.500 ± 0.010 (0.500) | 0.600 ± 0.010 (0.600) |" in text
    summary = report.summary({"denoising": {**results["denoising"], "metric": {}}})
    assert summary["denoising_mouth_read_mdvae"] == 0.45
    assert summary["denoising_mouth_read_clean"] == 0.9
    # a store without ground truth: skipped, with the reason
    skipped = {"sigma": 0.2, "metric": {}, "mouth_read": {"skipped": "no ground truth"}}
    assert "not read: no ground truth" in "\n".join(report._mouth_read_table(skipped))
    assert not any(k.startswith("denoising_mouth_read") for k in report.summary(
        {"denoising": skipped}))


def test_untrusted_judges_are_flagged_not_scored():
    results = report_results()
    blink = next(f for f in D.FACTORS if f.name == "blink")
    results["disentanglement"]["trusted"]["blink"] = False
    for swap in results["disentanglement"]["swaps"]["shares"].values():
        swap["blink"].update(follow=0.0, stay=0.0)  # what an unreadable judge gives
    rows = statuses(report.targets(results))
    assert rows[f"{blink.title} follows {blink.latent}"] == "untrusted judge"
    assert rows["every factor stays with A when its latent is not swapped"] == "pass"
    results["disentanglement"]["trusted"] = {f.name: False for f in D.FACTORS}
    rows = statuses(report.targets(results))
    assert rows["every factor stays with A when its latent is not swapped"] == "untrusted judge"


def test_markdown_lists_every_target():
    rows = report.targets(report_results(emotion=0.85))
    config = {"bundle": "b", "data": "d", "split": "test", "seed": 0, "quick": True}
    text = report.markdown({"config": config, "targets": rows})
    assert "**quick run**" in text and "| target | required | measured | status |" in text
    for r in rows:
        assert f"| {r['name']} | {r['target']} | {r['measured']} | {r['status']} |" in text


# ---- the protocol's honesty: who the judges see, SEs, rendering, denoising gains --------


def test_judges_never_train_on_an_evaluated_speaker(tiny_store):
    from mdvae.data.store import Store
    from mdvae.errors import MDVAEError

    store = Store(tiny_store)
    evaluated = store.split_clips("test")
    settings = evaluate.EvalSettings(judge_speakers=2, judge_clips_per_speaker=3)
    clips = evaluate.judge_training_clips(store, evaluated, settings, np.random.default_rng(0))
    speakers = {c.speaker for c in clips}
    assert not speakers & {c.speaker for c in evaluated}
    assert {c.split for c in clips} == {"train"}
    assert len(speakers) == 2 and len(clips) == 6  # bounded: 2 speakers x 3 clips
    # evaluating the training split leaves no speaker to train judges on: refused
    with pytest.raises(MDVAEError, match="two training speakers"):
        evaluate.judge_training_clips(
            store, store.split_clips("train"), settings, np.random.default_rng(0)
        )


def _pool(tmp_path_factory, name, first_speaker):
    """3 speakers, 2 held out (val), 3 clips each, from seed 5."""
    from train import prepare

    folder = tmp_path_factory.mktemp(name) / name
    code = prepare.main([
        "synthetic", "--out", str(folder), "--speakers", "3", "--clips-per-speaker", "3",
        "--frames", "36", "--val-speakers", "2", "--test-speakers", "0", "--workers", "0",
        "--seed", "5", "--first-speaker", str(first_speaker),
    ])  # fmt: skip
    assert code == 0
    return folder


@pytest.fixture(scope="module")
def fresh_pool(tmp_path_factory):
    """A pool of new speakers (indices 5 to 7, past tiny_store's 0 to 4), nearly all held
    out: what `train.prepare synthetic --first-speaker N ... --val-speakers M` makes to
    choose models on new speakers."""
    return _pool(tmp_path_factory, "pool", 5)


def test_a_pool_of_the_same_indices_is_the_same_speakers_and_refused(tiny_store, tmp_path_factory):
    from mdvae.data.store import Store
    from mdvae.errors import MDVAEError

    train_store = Store(tiny_store)
    reseeded = Store(_pool(tmp_path_factory, "reseeded", 0))  # another seed, same people
    held = reseeded.split_clips("val")
    trained = {c.speaker for c in train_store.split_clips("train")}
    assert {c.speaker for c in held} & trained  # (so it falls out with these seeds)
    with pytest.raises(MDVAEError, match="are training speakers"):
        common.check_unseen(held, train_store, {})
    # the judges never draw an evaluated speaker, whichever store they learn on
    settings = evaluate.EvalSettings(judge_speakers=10, judge_clips_per_speaker=1)
    drawn = evaluate.judge_training_clips(train_store, held, settings, np.random.default_rng(0))
    assert {c.speaker for c in drawn} == trained - {c.speaker for c in held}
    # the bundle's own training speakers count too
    test = train_store.split_clips("test")
    common.check_unseen(test, train_store, {})
    info = {"data": {"splits": {"train": {"speakers": [test[0].speaker]}}}}
    with pytest.raises(MDVAEError, match="1 of the 1 speakers to be scored"):
        common.check_unseen(test, train_store, info)


@pytest.mark.slow
def test_a_pool_of_new_speakers_is_evaluated_with_another_stores_training_split(
    tiny_bundle, tiny_store, fresh_pool, tmp_path, capsys
):
    from mdvae.data.store import Store
    from mdvae.errors import MDVAEError

    base = [
        "--bundle", str(tiny_bundle), "--data", str(fresh_pool), "--split", "val", "--quick",
        "--judge-steps", "3", "--denoise-sequences", "4", "--swap-pairs", "3",
        "--generation-clips", "2", "--sigmas", "0", "0.2", "--threads", "1", "--no-figures",
    ]  # fmt: skip
    # alone, the pool has one training speaker: too few to train judges on
    with pytest.raises(MDVAEError, match="two training speakers"):
        evaluate.main(base + ["--out", str(tmp_path / "alone")])
    out = tmp_path / "pool"
    argv = base + ["--train-data", str(tiny_store), "--study-clips", "4", "--out", str(out)]
    results = evaluate.main(argv)
    assert results["config"]["train_data"] == str(tiny_store)
    trained = [c for c in Store(tiny_store).split_clips("train") if c.emotion]
    evaluated = [c for c in Store(fresh_pool).split_clips("val") if c.emotion]
    emotion = results["emotion"]
    assert emotion["train_clips"] == len(trained) and emotion["test_clips"] == len(evaluated)
    assert len(emotion["models"]["mdvae"]["curve"][-1]["correct"]) == len(evaluated)
    judges = results["disentanglement"]["judges"]
    assert judges["train_store"] == str(tiny_store)
    assert set(judges["speakers"]["judges"]) <= {c.speaker for c in trained}
    assert judges["evaluated_clips"] == 4  # --study-clips: a random 4 of the pool's 6
    assert set(judges["speakers"]["evaluated"]) <= {c.speaker for c in evaluated}
    assert f"trained on the training split of `{tiny_store}`" in results["markdown"]
    # a rerun reuses the judges (their key, which names the training store, matches)
    capsys.readouterr()
    evaluate.main(argv)
    assert capsys.readouterr().err.count("loaded from") == 2


def test_the_reference_head_is_scored_on_the_evaluated_speakers_pairs(tiny_bundle, tiny_store,
                                                                      tmp_path):
    """--references: more clips of the evaluated speakers (two resting faces each), so that
    the bundle's reference head is read on every pair of one speaker's neutral clip and
    another of their clips, beside its plain head; a bundle without that head is refused."""
    from mdvae.bundle import save_bundle
    from mdvae.data.store import Store
    from mdvae.errors import MDVAEError
    from tests.conftest import tiny_components
    from train import prepare

    refs = tmp_path / "neutral"
    assert prepare.main(["synthetic", "--out", str(refs), "--speakers", "5",
                         "--clips-per-speaker", "2", "--emotions", "neutral", "--frames", "36",
                         "--seed", "3", "--workers", "0", "--val-speakers", "1",
                         "--test-speakers", "1"]) == 0
    argv = [
        "--bundle", str(tiny_bundle), "--data", str(tiny_store), "--quick", "--judge-steps", "3",
        "--denoise-sequences", "4", "--swap-pairs", "3", "--generation-clips", "2", "--sigmas",
        "0", "0.2", "--threads", "1", "--no-figures", "--references", str(refs),
    ]  # fmt: skip
    results = evaluate.main(argv + ["--out", str(tmp_path / "eval")])
    against = results["emotion"]["reference"]
    (speaker,) = {c.speaker for c in Store(tiny_store).split_clips("test")}
    own = [c for c in Store(tiny_store).clips if c.speaker == speaker]
    n = 2 + sum(c.emotion == "neutral" for c in own)  # its resting faces, both stores
    assert against["pairs"] == n * (len(own) + 2 - 1) and against["speakers"] == 1
    assert against["other_person_passed"] is None  # one evaluated speaker: no pair of two
    assert results["config"]["references"] == [str(refs)]
    summary = results["summary"]
    assert summary["emotion_reference_accuracy"] == against["accuracy"]
    assert summary["emotion_reference_gain"] == pytest.approx(
        against["accuracy"] - against["plain_accuracy"])
    assert "**Emotion against the same person's neutral clip**" in results["markdown"]
    # the V-DSAE's own reference head on the same pairs, and the MDVAE's margin over it
    (theirs,) = against["others"].values()
    assert set(against["others"]) == {"dsae_visual"} and theirs["pairs"] == against["pairs"]
    assert theirs["mdvae_minus"]["difference"] == pytest.approx(
        against["accuracy"] - theirs["accuracy"])
    assert summary["emotion_reference_accuracy_dsae_visual"] == theirs["accuracy"]
    assert summary["emotion_reference_margin_dsae_visual"] == pytest.approx(
        theirs["mdvae_minus"]["difference"])
    assert "V-DSAE, against the neutral clip" in results["markdown"]
    assert "The MDVAE against the same clip minus the V-DSAE" in results["markdown"]
    # references of other people only: nothing to pair, said rather than scored
    strangers = tmp_path / "strangers"
    assert prepare.main(["synthetic", "--out", str(strangers), "--first-speaker", "40",
                         "--speakers", "2", "--clips-per-speaker", "2", "--emotions", "neutral",
                         "--frames", "36", "--workers", "0", "--val-speakers", "0",
                         "--test-speakers", "0"]) == 0
    alone = evaluate.main(argv[:-1] + [str(strangers), "--out", str(tmp_path / "strangers_eval")])
    own_neutral = n - 2
    if own_neutral:  # its own neutral clip against its other clips
        assert alone["emotion"]["reference"]["pairs"] == own_neutral * (len(own) - 1)
    else:
        assert "skipped" in alone["emotion"]["reference"]
        assert "**Emotion against the same person's neutral clip**: no evaluated" in (
            alone["markdown"])
    components = tiny_components()
    del components["emotion_reference"]
    save_bundle(tmp_path / "plain", components, info={}, card="")
    with pytest.raises(MDVAEError, match="emotion_reference"):
        evaluate.main([*argv[:1], str(tmp_path / "plain"), *argv[2:], "--out",
                       str(tmp_path / "refused")])


def test_speaker_swaps_are_scored_by_nearness_to_a_or_b():
    speaker = next(f for f in D.FACTORS if f.name == "speaker_video")
    assert speaker.kind == "identity" and speaker.score == "speaker_verification"
    ref_a = {"visual": {"speaker_logp": np.array([0.0, -5.0, -5.0])}}
    ref_b = {"visual": {"speaker_logp": np.array([-5.0, 0.0, -5.0])}}
    label_a, label_b = {"identity": 0, "reference": ref_a}, {"identity": 1, "reference": ref_b}
    like_b = {"visual": {"speaker_logp": np.array([-4.0, -0.5, -5.0])}}
    fs = D.score_factor(speaker, like_b, label_a, label_b)
    assert (fs.follow, fs.stay, fs.n) == (1, 0, 1)
    fs = D.score_factor(speaker, ref_a, label_a, label_b)
    assert (fs.follow, fs.stay, fs.n) == (0, 1, 1)
    # A and B by the same speaker: nothing to score
    assert D.score_factor(speaker, like_b, label_a, {**label_b, "identity": 0}).n == 0


def test_pooled_shares_have_standard_errors_over_pairs():
    parts = [D.FollowStay(10, 0, 10), D.FollowStay(0, 10, 10), D.FollowStay(5, 5, 10),
             D.FollowStay()]  # fmt: skip
    out = D.pooled(parts)
    assert out["follow"] == 0.5 and out["n"] == 30 and out["pairs"] == 3
    # pairs as the unit: sqrt(3/2 * (5^2 + 5^2 + 0)) / 30
    assert out["follow_se"] == pytest.approx(np.sqrt(1.5 * 50) / 30)
    assert out["stay_se"] == pytest.approx(out["follow_se"])


def _score(quality, blind, kind="frame"):
    from mdvae.eval.judges import HeadScore

    return HeadScore("x", kind, 100, balanced_accuracy=quality, blind=blind)


def test_a_factor_the_model_does_not_render_is_not_rendered():
    # blinks: the VQ-VAE keeps them (0.86), the MDVAE's reconstruction reads at chance
    blink = D.rendering(_score(0.52, 0.5), _score(0.86, 0.5))
    assert not blink["rendered"] and blink["model"] == 0.52 and blink["codec"] == 0.86
    # mouth shapes: weaker than the VQ-VAE, but well over half the way from the guess
    assert D.rendering(_score(0.60, 1 / 6), _score(0.84, 1 / 6))["rendered"]
    # the threshold: RENDER_SHARE of the way from the blind guess to the VQ-VAE
    edge = 0.5 + D.RENDER_SHARE * (0.9 - 0.5)
    assert D.rendering(_score(edge + 1e-6, 0.5), _score(0.9, 0.5))["rendered"]
    assert not D.rendering(_score(edge - 1e-6, 0.5), _score(0.9, 0.5))["rendered"]
    # a judge that cannot read the VQ-VAE either: nothing is rendered
    assert not D.rendering(_score(0.5, 0.5), _score(0.5, 0.5))["rendered"]


def test_swaps_of_an_unrendered_factor_are_uninformative_not_scored():
    results = report_results()
    blink = next(f for f in D.FACTORS if f.name == "blink")
    results["disentanglement"]["rendered"] = {
        f.name: {"rendered": f.name != "blink", "model": 0.5, "codec": 0.86, "blind": 0.5}
        for f in D.FACTORS
    }
    for swap in results["disentanglement"]["swaps"]["shares"].values():
        swap["blink"].update(follow=0.5, stay=0.5)  # what an unrendered factor gives
    rows = statuses(report.targets(results))
    assert rows[f"{blink.title} follows {blink.latent}"] == report.NOT_RENDERED
    # its "stay" is no evidence either way: the other factors decide
    assert rows["every factor stays with A when its latent is not swapped"] == "pass"
    results["disentanglement"]["swaps"]["pairs"] = 10
    text = "\n".join(report._swap_table(results["disentanglement"]))
    assert "blink (video) (not rendered: uninformative)" in text and ": **no**" in text
    # the summary (a bundle's card) keeps the decision, so the app can say so; a judge that
    # cannot read the VQ-VAE's reconstructions above blind leaves nothing decided
    results["disentanglement"]["rendered"]["mouth"].update(codec=0.5)
    generation = {"sync": {"given_w": 0.5}}  # what the summary also reads
    summary = report.summary({"disentanglement": {**results["disentanglement"],
                                                  "generation": generation}})
    assert summary["blink_rendered"] is False and summary["head_pose_rendered"] is True
    assert summary["mouth_rendered"] is None


def test_denoising_gain_is_against_the_models_own_clean_reconstruction():
    out = ev.denoising_gain(np.array([20.0, 22.0, 21.0]), np.array([21.0, 25.0, 22.0]))
    assert out["gain"] == pytest.approx(-5.0 / 3)  # (-1 - 3 - 1) / 3
    assert out["gain_se"] == pytest.approx(np.std([-1.0, -3.0, -1.0], ddof=1) / np.sqrt(3))


def test_mouth_reading_scores_balanced_and_plain_accuracy_over_sequences():
    # 3 sequences x 4 frames; shapes 0 (8 frames) and 1 (4 frames)
    truth = np.array([[0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 1, 1]])
    pred = np.array([[0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 0, 0]])
    out = ev.mouth_reading(pred, truth)
    assert out["accuracy"] == pytest.approx(7 / 12)  # right: 4 + 1 + 2 frames
    # the sequence is the unit: equal lengths make it the SE of the per-sequence means
    per_sequence = np.array([4, 1, 2]) / 4
    assert out["accuracy_se"] == pytest.approx(per_sequence.std(ddof=1) / np.sqrt(3))
    # recall of shape 0: 5 of 8, of shape 1: 2 of 4
    assert out["balanced_accuracy"] == pytest.approx((5 / 8 + 2 / 4) / 2)
    assert out["blind"] == 0.5 and (out["frames"], out["sequences"]) == (12, 3)
    # a perfect reading: nothing to resample away
    perfect = ev.mouth_reading(truth, truth)
    assert perfect["balanced_accuracy"] == 1 and perfect["balanced_accuracy_se"] == 0
    # every sequence holds each of 6 shapes once: the balanced accuracy of any resample is
    # the mean of its sequences' accuracies, so its bootstrap SE is that mean's,
    # std / sqrt(N) (population std), within the bootstrap's own error (200 resamples:
    # about 5%; the tolerance is 4 of those)
    rng = np.random.default_rng(0)
    truth = np.tile(np.arange(6), (60, 1))
    pred = np.where(rng.random(truth.shape) < 0.6, truth, (truth + 1) % 6)
    out = ev.mouth_reading(pred, truth)
    per_sequence = (pred == truth).mean(1)
    assert out["balanced_accuracy"] == pytest.approx(per_sequence.mean())
    assert out["balanced_accuracy_se"] == pytest.approx(per_sequence.std() / np.sqrt(60), rel=0.2)
    with pytest.raises(ValueError, match="differ"):
        ev.mouth_reading(pred[:, :3], truth)


def test_denoising_keeps_the_frames_it_scored_for_the_judge(tiny_bundle, tiny_store):
    from mdvae.bundle import load_bundle
    from mdvae.data.store import Store
    from mdvae.eval import metrics

    models = ev.Models.from_bundle(load_bundle(tiny_bundle, device="cpu"))
    batch = Store(tiny_store).sample_windows("test", 10, 3, np.random.default_rng(0))
    masks, _ = evaluate.region_masks(batch["factors"], 3, 10)
    args = (models, batch["frames"], batch["power"], masks, [0.2])
    result = ev.denoising(*args, keep=("mouth",), show=False)
    hit = metrics.DENOISE_FRAMES
    assert set(result.outputs) == {"mouth"} and set(result.outputs["mouth"]) == {"0", "0.2"}
    assert np.array_equal(result.clean, batch["frames"][:, hit])
    kept = result.outputs["mouth"]["0.2"]
    assert set(kept) == {"noisy", "vqvae", "dsae_visual", "mdvae"}
    assert "noisy" not in result.outputs["mouth"]["0"]
    mask = np.asarray(masks["mouth"], bool)[:, hit]
    for name, frames in kept.items():
        assert frames.shape == (3, 6, 64, 64, 3)
        # the very frames the PSNR was taken on
        psnr = np.mean([metrics.psnr(result.clean[i], frames[i], mask[i]) for i in range(3)])
        assert psnr == pytest.approx(result.metric["mouth"]["0.2"][name]["psnr"])
    none = ev.denoising(*args, show=False)
    assert none.outputs == {} and none.clean is None
    assert "skipped" in ev.read_denoised_mouths(None, none, np.zeros((3, 6), int))


def test_the_judge_reads_each_models_own_denoised_frames():
    class PixelJudge:  # reads as the mouth shape the first pixel's red value
        def read(self, frames):
            return {"mouth": frames[..., 0, 0, 0].astype(np.int64)}

    truth = np.array([[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]])

    def frames_reading(labels):
        out = np.zeros((2, 6, 64, 64, 3), np.uint8)
        out[..., 0, 0, 0] = labels
        return out

    wrong = (truth + 1) % 6
    half = np.where(np.arange(6) < 3, truth, wrong)  # the first 3 frames right
    result = ev.DenoisingResult([0.0, 0.2], 2, clean=frames_reading(truth))
    result.outputs["mouth"] = {
        "0": {"mdvae": frames_reading(truth)},
        "0.2": {"noisy": frames_reading(wrong), "mdvae": frames_reading(half)},
    }
    read = ev.read_denoised_mouths(PixelJudge(), result, truth)
    assert read["clean"]["accuracy"] == 1 and read["clean"]["balanced_accuracy"] == 1
    assert read["sigmas"]["0"]["mdvae"]["accuracy"] == 1
    assert read["sigmas"]["0.2"]["noisy"]["accuracy"] == 0
    assert read["sigmas"]["0.2"]["mdvae"]["accuracy"] == 0.5
    assert read["sigmas"]["0.2"]["mdvae"]["accuracy_se"] == 0  # both sequences at 3 of 6


def test_emotion_accuracies_carry_their_se_over_test_clips():
    rng = np.random.default_rng(0)
    y = [("happy", "sad")[i % 2] for i in range(40)]
    w = rng.normal(size=(40, 2))
    out = ev.emotion_curve(w, y, w, y, [0.5, 1.0], draws=3, seed=0)
    for p in out["curve"]:
        assert p["se"] == pytest.approx(np.sqrt(p["mean"] * (1 - p["mean"]) / 40))
    full = out["curve"][-1]
    assert np.mean(full["correct"]) == pytest.approx(full["mean"]) and len(full["correct"]) == 40
    assert "correct" not in out["curve"][0]
    rows = {"mdvae": {"curve": [{"correct": [1, 1, 0, 1]}]},
            "dsae_audio": {"curve": [{"correct": [0, 1, 0, 1]}]}}  # fmt: skip
    paired = evaluate.paired_differences(rows)["dsae_audio"]
    assert paired["difference"] == 0.25
    assert paired["se"] == pytest.approx(np.std([1, 0, 0, 0], ddof=1) / 2)


def test_paired_margins_carry_an_se_with_speakers_as_the_unit():
    def rows(mdvae, other):
        return {"mdvae": {"curve": [{"correct": mdvae}]},
                "dsae_visual": {"curve": [{"correct": other}]}}  # fmt: skip

    # speaker a: the MDVAE right on all 10 clips where the other is wrong; speaker b: a
    # tie on all 10. Clip SE: d = ten 1s, ten 0s; over 2 speakers: sums (10, 0) of (10, 10),
    # p = 0.5, sqrt(2 / 1 * ((10 - 5)^2 + (0 - 5)^2)) / 20 = 0.5
    speakers = ["a"] * 10 + ["b"] * 10
    d = evaluate.paired_differences(rows([1] * 20, [0] * 10 + [1] * 10), speakers)["dsae_visual"]
    assert d["difference"] == 0.5 and d["speakers"] == 2
    assert d["se"] == pytest.approx(np.sqrt(0.25 * 20 / 19 / 20))  # std (ddof 1) / sqrt(20)
    assert d["se_speakers"] == pytest.approx(0.5)
    # every speaker alike (half of each's clips): no spread between speakers
    d = evaluate.paired_differences(rows([1] * 20, [0, 1] * 10), speakers)["dsae_visual"]
    assert d["se_speakers"] == pytest.approx(0.0, abs=1e-12) and d["se"] > 0.1
    # the report shows it beside the clip SE; without speakers there is none
    assert report._speaker_se(d) == " (± 0.000 over 2 speakers)"
    assert "se_speakers" not in evaluate.paired_differences(rows([1, 0], [0, 0]))["dsae_visual"]


def test_emotion_accuracy_by_level_splits_clips_and_pairs_within_each_level():
    correct = {"mdvae": [1, 1, 0, 1, 1, 0], "dsae_visual": [1, 0, 0, 1, 1, 1]}
    levels = [1, 1, 1, 3, 3, 3]
    out = ev.accuracy_by_level(correct, levels, "mdvae")
    assert list(out) == ["1", "3"] and out["1"]["clips"] == 3
    one, three = out["1"], out["3"]
    assert one["models"]["mdvae"]["accuracy"] == pytest.approx(2 / 3)
    assert one["models"]["dsae_visual"]["accuracy"] == pytest.approx(1 / 3)
    assert one["models"]["mdvae"]["se"] == pytest.approx(np.sqrt(2 / 3 * 1 / 3 / 3))
    # per-clip differences (0, 1, 0) at level 1 and (0, 0, -1) at level 3
    assert one["paired"]["dsae_visual"]["difference"] == pytest.approx(1 / 3)
    se = np.std([0, 1, 0], ddof=1) / np.sqrt(3)
    assert one["paired"]["dsae_visual"]["se"] == pytest.approx(se)
    assert three["paired"]["dsae_visual"]["difference"] == pytest.approx(-1 / 3)
    assert "mdvae" not in one["paired"]
    lines = "\n".join(report._emotion_level_table({"by_level": out}))
    assert "| 1 | 3 | 0.667 ± 0.272 | 0.333 ± 0.272 | 0.333 ± 0.333 |" in lines


def test_late_fusion_reads_what_either_stream_holds_and_weighs_them_alike():
    # four emotions: the voice tells {angry, happy} from {sad, fear}, the face {angry, sad}
    # from {happy, fear}; each stream alone can tell only two pairs apart (half the clips,
    # up to noise), both together all of them
    rng = np.random.default_rng(0)
    names = ["angry", "happy", "sad", "fear"]
    y = [names[i % 4] for i in range(160)]

    def streams():
        voice = np.array([[1.0 if e in ("angry", "happy") else -1.0] for e in y])
        face = np.array([[1.0 if e in ("angry", "sad") else -1.0] for e in y])
        voice = 1000.0 * (voice + rng.normal(0, 0.1, voice.shape))  # another unit
        return voice, face + rng.normal(0, 0.1, face.shape)

    (voice, face), (voice_test, face_test) = streams(), streams()
    f_train, f_test = evaluate.late_fusion((voice, voice_test), (face, face_test))
    assert f_train.shape == f_test.shape == (160, 2)
    np.testing.assert_allclose(f_train.std(0), 1.0, atol=1e-6)
    np.testing.assert_allclose(f_train.mean(0), 0.0, atol=1e-9)
    both = ev.emotion_curve(f_train, y, f_test, y, [1.0], 1)["curve"][-1]["mean"]
    alone = ev.emotion_curve(face, y, face_test, y, [1.0], 1)["curve"][-1]["mean"]
    # alone: 0.5 expected, 3 binomial SEs (0.04 each on 160 clips) allowed for the noise
    assert both == 1.0 and alone <= 0.5 + 3 * np.sqrt(0.25 / 160)


def test_several_seeds_report_mean_and_spread():
    runs = {
        seed: {"summary": {"emotion": value, "targets_passed": "1/2"}, "config": {"seed": seed},
               "markdown": f"seed {seed}\n"}
        for seed, value in ((0, 0.4), (1, 0.6))
    }  # fmt: skip
    out = evaluate.over_seeds(runs)
    assert out["spread"]["emotion"]["mean"] == pytest.approx(0.5)
    assert out["spread"]["emotion"]["std"] == pytest.approx(np.std([0.4, 0.6], ddof=1))
    assert "| emotion | 0.500 ± 0.141 | 0.400 | 0.600 |" in out["markdown"]
    assert out["markdown"].endswith("seed 0\n") and out["config"]["seeds"] == [0, 1]
    runs[1]["summary"]["emotion"] = None  # a measure one seed could not take
    out = evaluate.over_seeds(runs)
    assert out["spread"]["emotion"]["n"] == 1 and "| emotion | 0.400 ± 0.000 | 0.400 | - |" in (
        out["markdown"]
    )
    args = evaluate.build_parser().parse_args(
        ["--bundle", "b", "--data", "d", "--out", "o", "--seeds", "0", "1"]
    )
    assert args.seeds == [0, 1]


def test_the_swap_figure_shows_a_pair_of_two_speakers_and_the_pairs_stay_the_same():
    speakers = ["s1", "s1", "s2", "s2"]
    a, b = np.array([0, 2, 1, 3]), np.array([1, 3, 2, 0])  # pairs 0, 1 within a speaker
    a2, b2 = evaluate.example_first(a, b, speakers)
    assert speakers[a2[0]] != speakers[b2[0]] and (a2[0], b2[0]) == (1, 2)
    assert sorted(zip(a2.tolist(), b2.tolist())) == sorted(zip(a.tolist(), b.tolist()))
    same = np.array([0, 2]), np.array([1, 3])
    assert all((x == y).all() for x, y in zip(evaluate.example_first(*same, speakers), same))
