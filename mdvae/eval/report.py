"""The evaluation report: the targets of the shipped bundle next to the measured values, a
summary for the model card, the markdown tables and the figures, all rendered from the
results dictionary of `python -m train.evaluate` (so a saved results.json renders again).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from mdvae.components import COMPARED, DSAE_VISUAL, MDVAE_MODEL, VQVAE_ALONE
from mdvae.eval import disentanglement as D
from mdvae.eval import experiments as ev
from mdvae.eval import judges as J
from mdvae.eval import metrics
from mdvae.eval import pitch as P


def protocol() -> dict[str, Any]:
    """The fixed choices behind the numbers, recorded beside them."""
    return {
        "denoising": {
            "sequence_frames": metrics.DENOISE_LENGTH,
            "corrupted_frames": [metrics.DENOISE_FRAMES.start, metrics.DENOISE_FRAMES.stop],
            "noise": "Gaussian, std sigma in [0, 1] pixel units, clipped; audio intact",
            "regions": "mouth_box / eyes_box factors, else metrics.TEMPLATE_BOXES",
            "metrics": "PSNR and SSIM over the corrupted pixels, per sequence, then averaged; "
            "gain: per sequence, PSNR on the noisy input minus PSNR of the same model on the "
            "clean input, same pixels",
            "mouth_read": "stores with ground truth: the visual judge's mouth head reads the "
            "corrupted frames of the mouth-region sequences (each model's output, the noisy "
            "input, the clean frames); balanced accuracy against the viseme factor's mouth "
            "shape (bootstrap SE over sequences) and plain accuracy (SE over sequences)",
        },
        "emotion": "multinomial logistic regression (mdvae.model.emotion.fit_emotion_head, C=1) on "
        "posterior means of w of whole clips; subsets with fewer than 2 classes redrawn",
        "judges": {
            "trained_on": "training speakers only (never an evaluated speaker), with their "
            "VQ-VAE reconstructions; trust decided on the evaluated speakers' clean clips",
            "speaker": "verification by the cosine of speaker-head embeddings (unseen speakers)",
            "mouth_classes": {k: list(v) for k, v in J.MOUTH_CLASSES.items()},
            "blink_closed_above": J.BLINK_CLOSED,
            "clear_emotion_level": J.CLEAR_LEVEL,
            "min_balanced_accuracy": J.MIN_BALANCED_ACCURACY,
            "min_share_within_tolerance": J.MIN_WITHIN,
            "tolerances": {k: list(v) for k, v in J.TOLERANCES.items()},
        },
        "swaps": {
            "margins": {k: list(v) for k, v in J.MARGINS.items()},
            "factors": {f.name: {"judge": f.judge, "follows": f.latent} for f in D.FACTORS},
            "swaps": {k: list(v) for k, v in D.SWAPS.items()},
            "stay_target": D.STAY_TARGET,
            "render_share": D.RENDER_SHARE,
            "heard": "f0_*_heard: no judge; the harmonic comb of mdvae.eval.pitch on the decoded "
            "power spectrogram picks the best of four tracks (A's or B's contour at A's or B's "
            f"level) on the frames voiced in both; pairs whose levels differ by "
            f"{P.LEVEL_MARGIN} st or more (contours by {P.CONTOUR_MARGIN} st on average)",
        },
        "standard_errors": "binomial over test clips (emotion), clustered by clip (judges) or "
        "by swapped pair (swaps), over sequences (denoising)",
    }


def _pm(value, se, digits=3) -> str:
    """ "value ± se", or the value alone when there is no SE."""
    if se is None or (isinstance(se, float) and not math.isfinite(se)):
        return _f(value, digits)
    return f"{_f(value, digits)} ± {_f(se, digits)}"


NOT_RENDERED = "uninformative (not rendered)"


def targets(results: dict) -> list[dict]:
    """The shipped bundle's targets next to the measured values; nothing here is tuned."""
    rows: list[dict] = []

    def add(name, target, measured, ok, note=""):
        if note == "untrusted":
            status = "untrusted judge"
        elif note == "not rendered":
            status = NOT_RENDERED
        else:
            status = ("pass" if ok else "FAIL") if ok is not None else "n/a"
        rows.append({"name": name, "target": target, "measured": measured, "status": status})

    emo = results.get("emotion", {}).get("models", {})
    full = {m: r["curve"][-1] for m, r in emo.items() if r["curve"]}
    if MDVAE_MODEL in full:
        mdvae = full[MDVAE_MODEL]["mean"]
        add(
            "emotion accuracy from w (all labels)",
            ">= 0.90",
            _pm(mdvae, full[MDVAE_MODEL].get("se")),
            mdvae >= 0.90,
        )
        others = {m: p["mean"] for m, p in full.items() if m != MDVAE_MODEL}
        if others:
            paired = results["emotion"].get("paired", {})
            diffs = [
                f"{ev.MODEL_TITLES[MDVAE_MODEL]} - {ev.MODEL_TITLES[m]} "
                f"{_pm(d['difference'], d['se'])}{_speaker_se(d)}"
                for m, d in paired.items()
            ]
            add(
                "emotion: MDVAE above A-DSAE and V-DSAE",
                "MDVAE > both",
                ", ".join(f"{ev.MODEL_TITLES[m]} {p['mean']:.3f}" for m, p in full.items())
                + (f" (paired: {'; '.join(diffs)})" if diffs else ""),
                all(mdvae > v for v in others.values()),
            )
    den = results.get("denoising", {}).get("metric", {}).get("mouth", {})
    row = den.get(f"{results.get('denoising', {}).get('sigma', 0.2):g}", {})
    order = [m for m in (MDVAE_MODEL, DSAE_VISUAL, VQVAE_ALONE, "noisy") if m in row]
    if len(order) >= 3:
        values = [row[m]["psnr"] for m in order]
        add(
            "mouth denoising PSNR: MDVAE > V-DSAE > VQ-VAE > noisy",
            "strictly decreasing",
            ", ".join(
                f"{ev.MODEL_TITLES[m]} {_pm(row[m]['psnr'], row[m].get('psnr_se'), 2)}"
                for m in order
            ),
            all(a > b for a, b in zip(values, values[1:])),
        )
    read = results.get("denoising", {}).get("mouth_read", {})
    cells = read.get("sigmas", {}).get(f"{results.get('denoising', {}).get('sigma', 0.2):g}", {})
    if MDVAE_MODEL in cells and DSAE_VISUAL in cells:
        scores = {m: cells[m] for m in (MDVAE_MODEL, DSAE_VISUAL)}
        clean = read["clean"]
        add(
            "mouth denoising, judge: MDVAE > V-DSAE",
            "MDVAE > V-DSAE",
            ", ".join(
                f"{ev.MODEL_TITLES[m]} {_pm(r['balanced_accuracy'], r['balanced_accuracy_se'])}"
                for m, r in scores.items()
            )
            + f" (balanced; clean frames {_f(clean['balanced_accuracy'])})",
            scores[MDVAE_MODEL]["balanced_accuracy"] > scores[DSAE_VISUAL]["balanced_accuracy"],
            "" if read["trusted"] else "untrusted",
        )
    dis = results.get("disentanglement")
    if dis:
        shares, trusted = dis["swaps"]["shares"], dis["trusted"]
        rendered = {k: v["rendered"] for k, v in dis.get("rendered", {}).items()}
        for f in D.FACTORS:
            if f.follow_target is None:
                continue
            cells = [
                (sw, shares[sw][f.name])
                for sw, g in D.SWAPS.items()
                if f.latent in g and shares[sw][f.name]["n"]
            ]
            if not cells:
                continue
            sw, worst = min(cells, key=lambda c: c[1]["follow"])
            note = ""
            if not trusted[f.name]:
                note = "untrusted"
            elif not rendered.get(f.name, True):
                note = "not rendered"
            add(
                f"{f.title} follows {f.latent}",
                f">= {f.follow_target:.2f}",
                f"{_pm(worst['follow'], worst.get('follow_se'))} (swap {sw})",
                worst["follow"] >= f.follow_target,
                note,
            )
        stays = [
            (shares[sw][f.name], sw, f)
            for sw, g in D.SWAPS.items()
            for f in D.FACTORS
            if f.latent not in g
            and shares[sw][f.name]["n"]
            and trusted[f.name]
            and rendered.get(f.name, True)
        ]
        name = "every factor stays with A when its latent is not swapped"
        if stays:
            worst, sw, f = min(stays, key=lambda c: c[0]["stay"])
            add(
                name,
                f">= {D.STAY_TARGET:.2f}",
                f"min {_pm(worst['stay'], worst.get('stay_se'))} ({f.title}, swap {sw})",
                worst["stay"] >= D.STAY_TARGET,
            )
        else:
            add(name, f">= {D.STAY_TARGET:.2f}", "no trusted judge", None, "untrusted")
    return rows


def summary(results: dict) -> dict:
    out: dict[str, Any] = {}
    rec = results.get("reconstruction", {}).get("models", {})
    for m, row in rec.items():
        for k in ("psnr", "ssim", "lsd"):
            if k in row:
                out[f"reconstruction_{k}_{m}"] = row[k]
    den = results.get("denoising", {})
    for region, by_sigma in den.get("metric", {}).items():
        for m, r in by_sigma.get(f"{den['sigma']:g}", {}).items():
            out[f"denoising_{region}_psnr_{m}"] = r["psnr"]
            out[f"denoising_{region}_ssim_{m}"] = r["ssim"]
            if "gain" in r:
                out[f"denoising_{region}_gain_{m}"] = r["gain"]
    read = den.get("mouth_read", {})
    if "sigmas" in read:
        for m, r in read["sigmas"].get(f"{den['sigma']:g}", {}).items():
            out[f"denoising_mouth_read_{m}"] = r["balanced_accuracy"]
            out[f"denoising_mouth_read_{m}_se"] = r["balanced_accuracy_se"]
        out["denoising_mouth_read_clean"] = read["clean"]["balanced_accuracy"]
    for m, r in results.get("emotion", {}).get("models", {}).items():
        for point in r["curve"]:
            if point["fraction"] in (0.1, 1.0):
                out[f"emotion_accuracy_{m}_{point['fraction']:g}"] = point["mean"]
                out[f"emotion_accuracy_{m}_{point['fraction']:g}_se"] = point.get("se")
        for point in r.get("curve_by_speakers", []):
            if point["fraction"] in (0.1, 0.25):
                out[f"emotion_accuracy_{m}_speakers_{point['fraction']:g}"] = point["mean"]
                out[f"emotion_accuracy_{m}_speakers_{point['fraction']:g}_se"] = point.get("se")
    fused = results.get("emotion", {}).get(ev.LATE_FUSION)
    if fused:
        out[f"emotion_accuracy_{ev.LATE_FUSION}_1"] = fused["mean"]
        out[f"emotion_accuracy_{ev.LATE_FUSION}_1_se"] = fused.get("se")
    level_1 = results.get("emotion", {}).get("by_level", {}).get("1")
    if level_1:
        for m, r in level_1["models"].items():
            out[f"emotion_accuracy_{m}_level_1"] = r["accuracy"]
    against = results.get("emotion", {}).get("reference")
    if against and "skipped" not in against:
        gain = against["gain_over_plain"]
        out["emotion_reference_accuracy"] = against["accuracy"]
        out["emotion_reference_accuracy_se"] = against["accuracy_se_speakers"]
        out["emotion_reference_plain_accuracy"] = against["plain_accuracy"]
        out["emotion_reference_gain"] = gain["difference"]
        out["emotion_reference_gain_se"] = gain.get("se_speakers")
        if "1" in against["by_level"]:
            out["emotion_reference_level_1"] = against["by_level"]["1"]["accuracy"]
            out["emotion_reference_plain_level_1"] = against["by_level"]["1"]["plain_accuracy"]
        out["emotion_reference_same_person_passed"] = against["same_person_passed"]
        out["emotion_reference_other_person_passed"] = against["other_person_passed"]
        for m, theirs in against.get("others", {}).items():  # one-stream models, same pairs
            out[f"emotion_reference_accuracy_{m}"] = theirs["accuracy"]
            out[f"emotion_reference_margin_{m}"] = theirs["mdvae_minus"]["difference"]
            out[f"emotion_reference_margin_{m}_se"] = theirs["mdvae_minus"].get("se_speakers")
    dis = results.get("disentanglement")
    if dis:
        shares = dis["swaps"]["shares"]
        for f in D.FACTORS:
            if f.latent in D.SWAPS:
                cell = shares[f.latent][f.name]
                out[f"{f.name}_follows_{f.latent}"] = cell["follow"]
                out[f"{f.name}_follows_{f.latent}_se"] = cell.get("follow_se")
        for name, r in dis.get("rendered", {}).items():
            out[f"{name}_rendered_by_mdvae"] = r["model"]
            # train.evaluate's decision (D.rendering); None where it had nothing to decide on
            decided = D.decidable(r.get("codec"), r.get("blind"))
            out[f"{name}_rendered"] = bool(r["rendered"]) if decided else None
        out["mouth_sync_given_w"] = dis["generation"]["sync"]["given_w"]
    rows = results.get("targets", [])
    out["targets_passed"] = f"{sum(r['status'] == 'pass' for r in rows)}/{len(rows)}"
    return out


def _f(x, digits=3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{digits}f}"


def _speaker_se(d: dict) -> str:
    """Where a paired difference carries its SE over speakers: " (± 0.012 over 64 speakers)"."""
    se = d.get("se_speakers")
    if se is None or not math.isfinite(se):
        return ""
    return f" (± {se:.3f} over {d['speakers']} speakers)"


def markdown(results: dict) -> str:
    cfg = results["config"]
    lines = [
        f"Bundle `{cfg['bundle']}` on `{cfg['data']}`, split `{cfg['split']}` "
        f"(speakers unseen in training), seed {cfg['seed']}"
        + (", **quick run**" if cfg["quick"] else "")
        + (
            f"; emotion probes and judges trained on the training split of `{cfg['train_data']}`"
            if cfg.get("train_data") not in (None, cfg["data"])
            else ""
        )
        + "."
    ]
    rec = results.get("reconstruction")
    if rec:
        lines += [
            "",
            f"**Reconstruction** ({rec['clips']} clips x {rec['frames']} frames; "
            f"region PSNR on {rec['regions']})",
            "",
            "| model | PSNR (dB) | SSIM | mouth PSNR | eyes PSNR | audio LSD (dB) |",
            "|---|---|---|---|---|---|",
        ]
        for m, r in rec["models"].items():
            lines.append(
                f"| {ev.MODEL_TITLES[m]} | {_f(r.get('psnr'), 2)} | "
                f"{_f(r.get('ssim'))} | {_f(r.get('psnr_mouth'), 2)} | "
                f"{_f(r.get('psnr_eyes'), 2)} | {_f(r.get('lsd'), 2)} |"
            )
    den = results.get("denoising")
    if den:
        key = f"{den['sigma']:g}"
        lines += [
            "",
            f"**Denoising** (sigma = {den['sigma']:g} in [0, 1] units on frames "
            f"{den['frames']}, audio intact; {den['n_sequences']} sequences; metrics on "
            f"the corrupted pixels; regions from {den['regions']}; ± SE over sequences. "
            "Gain: the PSNR on the noisy input minus the same model's PSNR on the clean "
            "input, same pixels: 0 is a full repair, whatever the model's reconstruction "
            "quality; the clean-input PSNR is the model's ceiling)",
            "",
            "| model | mouth PSNR | mouth gain | clean-input mouth PSNR | mouth SSIM "
            "| eyes PSNR | eyes gain | clean-input eyes PSNR | eyes SSIM |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        by_region = {
            r: (den["metric"].get(r, {}).get(key, {}), den["metric"].get(r, {}).get("0", {}))
            for r in ("mouth", "eyes")
        }

        def cells(region: str, m: str) -> str:
            noisy, clean = by_region[region]
            r, c = noisy.get(m, {}), clean.get(m, {})
            return (
                f"{_pm(r.get('psnr'), r.get('psnr_se'), 2)} | "
                f"{_pm(r.get('gain'), r.get('gain_se'), 2)} | {_f(c.get('psnr'), 2)} | "
                f"{_f(r.get('ssim'))}"
            )

        for m in by_region["mouth"][0]:
            lines.append(f"| {ev.MODEL_TITLES[m]} | {cells('mouth', m)} | {cells('eyes', m)} |")
        lines += _mouth_read_table(den)
    emo = results.get("emotion")
    if emo and "models" in emo:
        names = list(emo["models"])
        lines += [
            "",
            f"**Emotion recognition from w** (logistic regression; test accuracy "
            f"on {emo['test_clips']} clips of unseen speakers, mean over {emo['draws']} "
            "draws of the labelled clips ± its SE over the test clips, then the std over "
            f"draws; majority class {emo['chance']:.3f})",
            "",
            "| labelled share | clips | " + " | ".join(ev.MODEL_TITLES[m] for m in names) + " |",
            "|---|---|" + "---|" * len(names),
        ]
        for i, frac in enumerate(emo["fractions"]):
            cells = []
            for m in names:
                p = emo["models"][m]["curve"][i]
                spread = f" (draws {_f(p['std'])})" if p.get("draws", 1) > 1 else ""
                cells.append(f"{_pm(p['mean'], p.get('se'))}{spread}")
            n_clips = emo["models"][names[0]]["curve"][i]["n_clips"]
            lines.append(f"| {frac:g} | {n_clips} | " + " | ".join(cells) + " |")
        lines += _emotion_speaker_table(emo, names)
        shipped = {
            m: r["bundle_head_accuracy"]
            for m, r in emo["models"].items()
            if "bundle_head_accuracy" in r
        }
        if shipped:
            lines += [
                "",
                "The bundle's own emotion heads on the same clips: "
                + ", ".join(f"{ev.MODEL_TITLES[m]} {v:.3f}" for m, v in shipped.items())
                + ".",
            ]
        paired = emo.get("paired", {})
        if paired:
            lines += [
                "",
                "With all labels, per-clip paired differences (same test clips, ± SE over "
                "clips; in brackets the SE with speakers as the unit, which counts how few "
                "speakers there are): "
                + ", ".join(
                    f"MDVAE - {ev.MODEL_TITLES[m]} {_pm(d['difference'], d['se'])}"
                    + _speaker_se(d)
                    for m, d in paired.items()
                )
                + ".",
            ]
        fused = emo.get(ev.LATE_FUSION)
        if fused:
            versus = fused.get("mdvae_minus")
            lines += [
                "",
                "Reference, what the two streams hold when each is encoded alone: one logistic "
                "regression on the A-DSAE's and V-DSAE's w side by side (each standardised on "
                f"the training clips), {_pm(fused['mean'], fused.get('se'))}"
                + (
                    f"; MDVAE minus it {_pm(versus['difference'], versus['se'])}"
                    + _speaker_se(versus)
                    if versus
                    else ""
                )
                + ". Above the V-DSAE, it is what the voice can add to the face.",
            ]
        lines += _emotion_level_table(emo)
        lines += _emotion_reference_table(emo.get("reference"))
    dis = results.get("disentanglement")
    if dis:
        lines += _judge_table(dis) + _swap_table(dis) + _generation_table(dis)
    rows = results.get("targets")
    if rows:
        lines += [
            "",
            "**Targets**",
            "",
            "| target | required | measured | status |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r['name']} | {r['target']} | {r['measured']} | {r['status']} |" for r in rows
        ]
    return "\n".join(lines) + "\n"


def _emotion_reference_table(against: dict | None) -> list[str]:
    """The reading against the same person's neutral clip beside the plain head's."""
    if not against:
        return []
    if "skipped" in against:
        return ["", f"**Emotion against the same person's neutral clip**: {against['skipped']}."]
    ref, gain = against["reference"], against["gain_over_plain"]
    others = {COMPARED[m].title: e for m, e in against.get("others", {}).items()}
    lines = [
        "",
        f"**Emotion against the same person's {ref} clip** (the bundle's reference head on "
        f"every pair of a speaker's {ref} clip and another of their clips, {against['pairs']} "
        f"pairs of {against['speakers']} speakers, {ref} clips from "
        f"{', '.join(f'`{r}`' for r in against['references'])} too; beside it the bundle's "
        "plain head on the same clips" + (", and the one-stream models' reference heads on the "
                                          "same pairs" if others else "") + ")",
        "",
        *reference_rows(ref, against, others),
    ]
    other = against["other_person_passed"]
    lines += [
        "",
        f"Gain over the plain head {'+' if gain['difference'] >= 0 else ''}"
        f"{_pm(gain['difference'], gain.get('se_speakers'))} (SE with "
        f"the speakers as the unit). The same-person check passed "
        f"{against['same_person_passed']:.1%} of one person's pairs"
        + (f" and {other:.2%} of two people's." if other is not None else "."),
        *reference_margin_lines(others),
    ]
    return lines


def reference_rows(ref: str, against: dict, others: dict[str, dict]) -> list[str]:
    """The table of a reference study (`ev.reference_study`: against the `ref` clip, beside
    the plain head on the same clips), with a column for each study of another model on the
    same pairs (title -> study)."""

    def row(name: str, key: str, source=lambda e: e) -> str:
        return (f"| {name} | {_f(source(against)[key])} | {_f(source(against)[f'plain_{key}'])} |"
                + "".join(f" {_f(source(e)[key])} |" for e in others.values()))

    return [
        f"| clips | against the {ref} clip | plain head |"
        + "".join(f" {title}, against the {ref} clip |" for title in others),
        "|---|---|---|" + "---|" * len(others),
        f"| all | {_pm(against['accuracy'], against.get('accuracy_se_speakers'))} | "
        f"{_f(against['plain_accuracy'])} |"
        + "".join(f" {_pm(e['accuracy'], e.get('accuracy_se_speakers'))} |"
                  for e in others.values()),
        row(ref, f"accuracy_{ref}"),
        row("the others", "accuracy_others"),
        *[row(f"the others, level {level}", "accuracy",
              lambda e, level=level: e["by_level"][level]) for level in against["by_level"]],
    ]


def reference_margin_lines(others: dict[str, dict]) -> list[str]:
    """The MDVAE's margin over each other model's reference head on the same pairs (title ->
    a study with its "mdvae_minus")."""
    return [f"The MDVAE against the same clip minus the {title}: "
            f"{'+' if e['mdvae_minus']['difference'] >= 0 else ''}"
            f"{_pm(e['mdvae_minus']['difference'], e['mdvae_minus'].get('se_speakers'))} "
            "(paired, SE with the speakers as the unit)."
            for title, e in others.items() if "mdvae_minus" in e]


def _emotion_speaker_table(emo: dict, names: list[str]) -> list[str]:
    """The emotion curve by labelled speakers (all their clips), where the evaluation has it."""
    if not all("curve_by_speakers" in emo["models"][m] for m in names):
        return []  # an evaluation from before session 36
    lines = [
        "",
        "By labelled speakers (the same shares of the training speakers, all their clips "
        "labelled; mean over the draws ± its SE over the test clips): how far a head fitted "
        "on few people carries to new ones",
        "",
        "| labelled share | speakers | " + " | ".join(ev.MODEL_TITLES[m] for m in names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for i, frac in enumerate(emo["fractions"]):
        points = [emo["models"][m]["curve_by_speakers"][i] for m in names]
        cells = [_pm(p["mean"], p.get("se")) for p in points]
        lines.append(f"| {frac:g} | {points[0].get('n_groups', '-')} | " + " | ".join(cells)
                     + " |")
    return lines


def _emotion_level_table(emo: dict) -> list[str]:
    """Emotion from w with all labels, per intensity level: where the face shows less
    (level 1), what the voice adds shows in the MDVAE's margin over the V-DSAE."""
    by_level = emo.get("by_level")
    if not by_level:
        return []
    names = list(next(iter(by_level.values()))["models"])
    others = [m for m in names if m != MDVAE_MODEL]
    lines = [
        "",
        "**Emotion from w by intensity level** (all labels; level 1 holds the neutral clips "
        "too; accuracy ± SE over the level's test clips, then the MDVAE's paired margin over "
        "each one-stream model ± its SE)",
        "",
        "| level | clips | "
        + " | ".join(ev.MODEL_TITLES[m] for m in names)
        + "".join(
            f" | MDVAE - ({ev.MODEL_TITLES[m]})" if m == ev.LATE_FUSION
            else f" | MDVAE - {ev.MODEL_TITLES[m]}"
            for m in others
        )  # fmt: skip
        + " |",
        "|---|---|" + "---|" * (len(names) + len(others)),
    ]
    for level, row in by_level.items():
        cells = [_pm(row["models"][m]["accuracy"], row["models"][m]["se"]) for m in names]
        for m in others:
            d = row["paired"].get(m)
            cells.append(_pm(d["difference"], d["se"]) if d else "-")
        lines.append(f"| {level} | {row['clips']} | " + " | ".join(cells) + " |")
    return lines


def _mouth_read_table(den: dict) -> list[str]:
    read = den.get("mouth_read")
    if not read:
        return []
    if "skipped" in read:
        return ["", f"Mouth shapes of the denoised mouths not read: {read['skipped']}."]
    sigmas = sorted(read["sigmas"], key=float)
    clean = read["clean"]
    trust = "trusted" if read["trusted"] else "**untrusted judge**: the numbers are not evidence"
    lines = [
        "",
        "**Mouth shapes read from the denoised mouths** (the visual judge's mouth head on "
        f"the corrupted frames of the same {clean['sequences']} sequences, against the ground "
        "truth; balanced accuracy, the mean recall over the mouth shapes present (a blind "
        f"guess scores {_f(clean['blind'])}), ± SE over sequences, then the plain accuracy. "
        "At sigma 0 the input is clean: each model's own ceiling, and the input row is the "
        f"clean frames, the judge's ceiling on these sequences; judge {trust})",
        "",
        "| model | " + " | ".join(f"sigma {sg}" for sg in sigmas) + " |",
        "|---|" + "---|" * len(sigmas),
    ]
    names = list(dict.fromkeys(["noisy"] + [m for sg in sigmas for m in read["sigmas"][sg]]))
    for m in names:
        cells = []
        for sg in sigmas:
            r = read["sigmas"][sg].get(m)
            if r is None and m == "noisy" and float(sg) == 0:
                r = clean  # no noise: the input is the clean frames
            cells.append(
                "-"
                if r is None
                else f"{_pm(r['balanced_accuracy'], r['balanced_accuracy_se'])} "
                f"({_f(r['accuracy'])})"
            )
        lines.append(f"| {ev.MODEL_TITLES[m]} | " + " | ".join(cells) + " |")
    return lines


def _score_text(score: dict | None) -> str:
    if not score:
        return "-"
    if score.get("n", 0) == 0:
        return "no labels"
    if score.get("rmse") is not None:
        units = score["units"]
        within = "/".join(_f(x, 2) for x in score["within"])
        tol = "/".join(f"{t:g}" for t in score["tolerance"])
        rmse = ", ".join(f"{_f(r, 2)} {u}" for r, u in zip(score["rmse"], units))
        return f"within ±{tol} {'/'.join(units)}: {within} (RMSE {rmse})"
    if score.get("kind") == "verification":
        return f"acc {_pm(score.get('accuracy'), score.get('accuracy_se'))} ({score['n']} probes)"
    return (
        f"acc {_f(score.get('accuracy'))}, balanced "
        f"{_pm(score.get('balanced_accuracy'), score.get('balanced_accuracy_se'))}"
    )


def _judge_table(dis: dict) -> list[str]:
    info = dis["judges"]
    scored = {c for rep in info["reports"].values() for c in rep["scores"]}
    checks = [
        c
        for c in ("held_out", "clean", "codec", "model", "dsae")
        if c in info["checks"] and c in scored
    ]
    titles = {
        "held_out": "training speakers, held-out clips",
        "clean": "evaluated speakers, clean",
        "codec": "evaluated, VQ-VAE reconstructions",
        "model": "evaluated, MDVAE reconstructions",
        "dsae": "evaluated, DSAE reconstructions (face: V-DSAE, voice: A-DSAE)",
    }
    lines = [
        "",
        f"**Judges** (trained on {info['train_clips']} clean clips of "
        f"{info['train_speakers']} training speakers"
        f"{' and their VQ-VAE reconstructions' if info['augment'] == 'codec' else ''}, "
        f"validated on {info['held_out_clips']} held-out clips of the same speakers; "
        f"checked on the {info['evaluated_clips']} clips of the {info['evaluated_speakers']} "
        "evaluated speakers, whom they never saw: clean (which decides trust), through the "
        "VQ-VAEs (the stage-1 ceiling), through the MDVAE, and through the DSAEs where the "
        "bundle has them. Speakers are verified, not "
        "named: is a clip nearer to another clip of its speaker than to a clip of another "
        "speaker (chance 0.5). ± SE with clips as the unit)",
        "",
        "| judge | reads | " + " | ".join(titles[c] for c in checks) + " | chance | trusted |",
        "|---|---|" + "---|" * len(checks) + "---|---|",
    ]
    for m, rep in info["reports"].items():
        scores = rep["scores"]
        for head, score in scores[info["trust_on"]].items():
            trusted = "yes" if score["trusted"] else f"**NO** ({score['criterion']})"
            if score.get("n", 0) == 0:
                trusted = "-"
            lines.append(
                f"| {m} | {head} | "
                + " | ".join(_score_text(scores.get(c, {}).get(head)) for c in checks)
                + f" | {_f(score.get('chance'))} | {trusted} |"
            )
    return lines


def _swap_table(dis: dict) -> list[str]:
    shares, trusted = dis["swaps"]["shares"], dis["trusted"]
    rendered = dis.get("rendered", {})
    swaps = list(shares)
    lines = [
        "",
        f"**Latent swaps** ({dis['swaps']['pairs']} pairs of clips; each cell: share "
        "following the source B / share staying with the target A, among frames or "
        "clips where A and B differ; the expected one in bold, ± its SE over pairs; "
        "`none` is A's own reconstruction. *MDVAE renders*: the judge's reading of the "
        "MDVAE's reconstructions of the evaluated clips (balanced accuracy, share within "
        "tolerance, or speaker verification), against its reading of their VQ-VAE "
        "reconstructions and a blind guess; a factor read less than "
        f"{D.RENDER_SHARE:g} of the way from the guess to the VQ-VAE is not rendered, and "
        "its swap scores are uninformative)",
        "",
        "| factor | should follow | MDVAE renders (VQ-VAE, blind) | " + " | ".join(swaps) + " |",
        "|---|---|---|" + "---|" * len(swaps),
    ]
    for f in D.FACTORS:
        cells = []
        for sw in swaps:
            c = shares[sw][f.name]
            fo, st = _f(c["follow"], 2), _f(c["stay"], 2)
            if c["expected"] == "follow":
                se = c.get("follow_se")
                cells.append(f"**{fo}**{_se_text(se)} / {st}")
            else:
                se = c.get("stay_se")
                cells.append(f"{fo} / **{st}**{_se_text(se)}")
        r = rendered.get(f.name)
        render = "-"
        if r and r["model"] is not None:
            render = (
                f"{_f(r['model'], 2)} ({_f(r['codec'], 2)}, {_f(r['blind'], 2)})"
                + ("" if r["rendered"] else ": **no**")
            )
        mark = ""
        if not trusted[f.name]:
            mark = " (untrusted judge)"
        elif r and not r["rendered"]:
            mark = " (not rendered: uninformative)"
        lines.append(
            f"| {f.title}{mark} | {f.latent} | {render} | " + " | ".join(cells) + " |"
        )
    return lines


def _se_text(se) -> str:
    return "" if se is None or not math.isfinite(se) else f" ±{se:.2f}"


def _generation_table(dis: dict) -> list[str]:
    g = dis["generation"]
    lines = [
        "",
        f"**Generation from the priors** ({g['clips']} clips; mouth shape seen = "
        "heard, share of frames; emotion read as the clip's own, and speaker verified as "
        "the clip's own (nearer to another clip of its speaker than to another speaker's), "
        "share of clips ± SE)",
        "",
        "| source | mouth sync | speaker (video) | speaker (audio) | emotion (video) "
        "| emotion (audio) |",
        "|---|---|---|---|---|---|",
    ]
    names = {
        "clean": "clean clips",
        "reconstruction": "MDVAE reconstruction",
        "given_w": "z from the priors, w of the clip",
        "prior": "all from the priors",
        "chance": "unrelated streams (chance)",
    }
    for key, title in names.items():
        st = g["stays_with_w"].get(key, {})
        lines.append(
            f"| {title} | {_f(g['sync'].get(key))} | "
            + " | ".join(
                _pm(st.get(k), st.get(f"{k}_se")) if st else "-"
                for k in ("speaker_video", "speaker_audio", "emotion_video", "emotion_audio")
            )
            + " |"
        )
    return lines


# ---------------------------------------------------------------------------------------
# Figures


def figures(
    results: dict, out_dir: Path, denoise: ev.DenoisingResult | None, swap_example: dict | None
) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    emo = results.get("emotion", {})
    if emo.get("models"):
        fig, ax = plt.subplots(figsize=(8, 4))
        for m, r in emo["models"].items():
            x = [p["fraction"] * 100 for p in r["curve"]]
            mean = np.array([p["mean"] for p in r["curve"]])
            # the band: SE over the test clips (the draws' spread is smaller than it)
            se = np.array([p.get("se", p["std"]) for p in r["curve"]], dtype=float)
            line = ax.plot(x, mean, marker="o", label=ev.MODEL_TITLES[m])[0]
            ax.fill_between(x, mean - se, mean + se, alpha=0.2)
            by = r.get("curve_by_speakers")
            if by:  # the same shares of the speakers: dashed, in the model's colour
                ax.plot([p["fraction"] * 100 for p in by], [p["mean"] for p in by], ls="--",
                        marker=".", color=line.get_color(),
                        label=f"{ev.MODEL_TITLES[m]}, by speakers")
        ax.axhline(emo["chance"], color="grey", ls=":", label="majority class")
        fused = emo.get(ev.LATE_FUSION)
        if fused:  # all labels only: a mark at 100%, the voice's and face's w read together
            ax.errorbar(
                [100], [fused["mean"]], yerr=[fused.get("se") or 0], color="black", marker="*",
                markersize=9, capsize=3, ls="none", label=ev.MODEL_TITLES[ev.LATE_FUSION],
            )  # fmt: skip
        ax.set(
            xscale="log",
            xlabel="labelled training clips (%); dashed: labelled speakers (%)",
            ylabel="test accuracy",
            title="Emotion recognition from w",
            ylim=(0, 1.02),
        )
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the lines
        written.append(save_figure(fig, out_dir / "emotion_accuracy.png"))
    den = results.get("denoising", {})
    if den.get("metric"):
        regions = list(den["metric"])
        fig, axes = plt.subplots(2, len(regions), figsize=(5 * len(regions), 7), squeeze=False)
        for j, region in enumerate(regions):
            by_sigma = den["metric"][region]
            sig = sorted(by_sigma, key=float)
            for i, metric in enumerate(("psnr", "ssim")):
                ax = axes[i, j]
                for m in by_sigma[sig[-1]]:
                    xs = [float(s_) for s_ in sig if m in by_sigma[s_]]
                    ys = [by_sigma[s_][m][metric] for s_ in sig if m in by_sigma[s_]]
                    ax.plot(xs, ys, marker="o", label=ev.MODEL_TITLES[m])
                ax.set(
                    xlabel="noise std (sigma)",
                    ylabel=metric.upper(),
                    title=f"{region}: {metric.upper()} on the corrupted region",
                )
                ax.legend(fontsize=8)
        written.append(save_figure(fig, out_dir / "denoising_sigma.png"))
    if denoise is not None and denoise.examples:
        written.append(
            _denoise_examples(
                plt, denoise, den.get("sigma", 0.2), out_dir / "denoising_examples.png"
            )
        )
    dis = results.get("disentanglement")
    if dis:
        shares = dis["swaps"]["shares"]
        swaps = list(shares)
        grid = np.array(
            [[shares[sw][f.name]["follow"] for sw in swaps] for f in D.FACTORS], dtype=float
        )
        fig, ax = plt.subplots(figsize=(1.2 * len(swaps) + 3, 0.45 * len(D.FACTORS) + 1.5))
        ax.imshow(np.nan_to_num(grid, nan=0.0), vmin=0, vmax=1, cmap="viridis")
        for i, f in enumerate(D.FACTORS):
            for j, sw in enumerate(swaps):
                c = shares[sw][f.name]
                text = _f(c["follow"], 2) + ("*" if c["expected"] == "follow" else "")
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="black" if grid[i, j] > 0.6 else "white",
                )
        ax.set_xticks(range(len(swaps)), swaps)
        ax.set_yticks(range(len(D.FACTORS)), [f.title for f in D.FACTORS])
        ax.set_title("share following the source B (* expected)")
        written.append(save_figure(fig, out_dir / "swap_follow.png"))
    if swap_example:
        written.append(_swap_examples(plt, swap_example, out_dir / "swap_examples.png"))
    return written


def save_figure(fig, path: Path) -> str:
    """Lay out, write (110 dpi) and close a figure; its file name."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name


def _denoise_examples(plt, denoise: ev.DenoisingResult, sigma: float, path: Path) -> str:
    """The corrupted frames of the first sequence: clean, noisy, and each model's output."""
    regions = list(denoise.examples)
    key = f"{sigma:g}"
    rows = ["clean", "noisy", VQVAE_ALONE, DSAE_VISUAL, MDVAE_MODEL]
    fig, axes = plt.subplots(
        len(rows), len(regions), figsize=(5 * len(regions), 5.5), squeeze=False
    )
    for j, region in enumerate(regions):
        ex = denoise.examples[region][key]
        for i, name in enumerate(rows):
            ax = axes[i, j]
            ax.axis("off")
            if name in ex:
                ax.imshow(np.concatenate(list(ex[name]), axis=1))  # the 6 corrupted frames
                ax.set_title(f"{region}: {ev.MODEL_TITLES.get(name, name)}", fontsize=8)
    return save_figure(fig, path)


def _swap_examples(plt, example: dict, path: Path) -> str:
    """Rows of frames: A, B, then A rebuilt with each swap (frames read by the judges)."""
    names = ["A", "B"] + [k for k in example if k not in ("A", "B")]
    n_frames = len(example["A"])
    ts = np.linspace(0, n_frames - 1, min(8, n_frames)).round().astype(int)
    fig, axes = plt.subplots(len(names), 1, figsize=(8, 1.1 * len(names)), squeeze=False)
    for i, name in enumerate(names):
        ax = axes[i, 0]
        ax.imshow(np.concatenate([example[name][t] for t in ts], axis=1))
        ax.axis("off")
        title = {"A": "A (target)", "B": "B (source)", "none": "A reconstructed"}.get(
            name, f"A with {name} of B"
        )
        ax.set_title(title, fontsize=8)
    return save_figure(fig, path)
