"""Set `train.diagnose` measurements of several stage-2 runs side by side: what each model
learnt, as one table, and the emotion margin of each MDVAE over the one-stream model it is
paired with, per intensity level.

Made for the research loop: a recipe change, its control and their like-for-like V-DSAEs,
at several training seeds, or one run followed through the phases of a training chain. Each
input is the JSON that ``python -m train.diagnose ... --json FILE`` writes; all of them
should be measured on the same held-out clips (same stores, split and probe seed): runs
whose JSONs record other settings are flagged, and their margins are not paired.

    python -m train.compare_diagnostics runs/diag_mdvae.json runs/diag_vdsae.json \\
        --labels MDVAE V-DSAE --pair MDVAE=V-DSAE --out runs/cmp

Writes OUT/compare_diagnostics.json, .md (also printed) and .png (emotion from w per
intensity level, every run, with standard errors). Standard errors are binomial over the
held-out clips; a margin's SE is paired over the clips (the per-clip difference of the two
runs' readings) where both results hold each clip's reading (train.diagnose since session
27), otherwise it treats the two runs' errors as independent, which overstates it when both
read the same clips alike. Per-frame shares (mouth, head, blinks) carry no SE here: their
frames are not independent.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from mdvae.errors import MDVAEError
from mdvae.eval.report import save_figure
from train import common
from train.compare import EMOTION_MARGIN, checked_labels

# diagnose settings that must agree for two runs' figures to be about the same clips
SAME = ("store", "held_store", "held_split", "train_clips", "seed")


def emotion_key(level: str) -> str:
    """The measure of emotion read from w on the clips of one intensity level (or all)."""
    return "emotion from w" + ("" if level == "all" else f", level {level}")


def levels_of(table: dict[str, Any]) -> list[str]:
    """The levels whose emotion measure the table holds, "all" first."""
    return [k.removeprefix("emotion from w, level ") if k != "emotion from w" else "all"
            for k in table if k.startswith("emotion from w") and "voice" not in k]


def read_diagnostics(path: str | Path) -> dict[str, Any]:
    """The JSON `train.diagnose --json` wrote; refused with a reason when it is not one."""
    p = Path(path)
    if not p.is_file():
        raise MDVAEError(f"{path}: no such file (train.diagnose --json FILE writes one)")
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise MDVAEError(f"{path} is not readable JSON: {err}") from err
    if not isinstance(data, dict) or not {"model", "groups", "clips"} <= data.keys():
        raise MDVAEError(f"{path} is not a train.diagnose result (no model, groups, clips)")
    return data


def _binomial_se(p: float, n: int) -> float | None:
    return math.sqrt(p * (1 - p) / n) if n > 0 else None


def _share(entry: dict | None) -> float | None:
    return None if not entry or not entry.get("n") else entry["follow"]


def measures(d: dict[str, Any]) -> dict[str, tuple[float | None, float | None]]:
    """measure -> (value, SE or None) of one diagnose result, in a fixed order; a measure the
    result lacks (a one-stream model, or one measured without the frame probes) is None."""
    groups = {g["name"]: g for g in d["groups"]}
    sources = d.get("emotion_sources") or {}
    out: dict[str, tuple[float | None, float | None]] = {}
    if "all" not in sources:  # a result from before emotion_sources: the w probe's
        acc = groups.get("w", {}).get("probes", {}).get("emotion")
        sources = {"all": {"accuracy": acc, "clips": d["clips"]}} if acc is not None else {}
    for level in ["all"] + sorted(k for k in sources if k != "all"):
        row = sources[level]
        out[emotion_key(level)] = (row["accuracy"],
                                   _binomial_se(row["accuracy"], row["clips"]))
    if not sources:
        out[emotion_key("all")] = (None, None)
    whole = sources.get("all", {})
    same = whole.get("same_accuracy")
    out["emotion from w, another speaker's voice of the same emotion"] = (
        (same, _binomial_se(same, whole["same_pairs"])) if same is not None else (None, None))
    for part in ("face", "voice", "neither"):
        v = whole.get(part)
        out[f"another emotion's voice: read as the {part}'s" if part != "neither"
            else "another emotion's voice: read as neither"] = (
            (v, _binomial_se(v, whole["pairs"])) if v is not None else (None, None))
    w = groups.get("w", {})
    out["speaker from w"] = (w.get("probes", {}).get("speaker"), None)
    out["KL of w (nats per clip)"] = (w.get("kl_first"), None)
    for stream in ("audio", "visual"):
        out[f"swapping w moves the {stream} decoder (nats per frame)"] = (
            w.get("moves", {}).get(stream), None)
    for name, g in groups.items():
        if name != "w":
            out[f"KL of {name} per later frame (nats)"] = (g.get("kl_later"), None)
    frames = d.get("frame_factors") or {}
    for factor, group in (("mouth", "z_av"), ("head_motion", "z_v"), ("blink", "z_v")):
        swap = frames.get(factor, {}).get("swaps", {}).get(group)
        out[f"{factor.replace('_', ' ')} follows {group}"] = (_share(swap), None)
    heard = d.get("pitch_heard") or {}
    for group in ("w", "z_a"):
        out[f"pitch level heard follows {group}"] = (
            _share(heard.get(group, {}).get("level")), None)
    out["sampled -ELBO per frame"] = ((d.get("sampled_elbo") or {}).get("negative_elbo"),
                                      None)
    return out


def mismatches(runs: dict[str, dict]) -> list[str]:
    """The diagnose settings that differ between the runs that record them."""
    known = {lb: r["settings"] for lb, r in runs.items() if r.get("settings")}
    out = []
    for key in SAME:
        values = {lb: s.get(key) for lb, s in known.items()}
        if len(set(map(str, values.values()))) > 1:
            out.append(f"{key}: " + ", ".join(f"{lb} {v}" for lb, v in values.items()))
    return out


def margins(runs: dict[str, dict], table: dict[str, dict], pairs: list[tuple[str, str]]
            ) -> dict[str, Any]:
    """Per pair (two-stream model, one-stream model): the emotion margin at each level with
    its SE, paired over the clips where both results hold each clip's reading (`correct`,
    since session 27), else from the two binomial SEs as if independent; over the pairs,
    the smallest margin on all clips and whether every pair clears EMOTION_MARGIN."""
    per_pair: dict[str, dict] = {}
    for a, b in pairs:
        for lb in (a, b):
            if lb not in runs:
                raise MDVAEError(f"--pair {a}={b}: no run labelled {lb!r} "
                                 f"(labels: {', '.join(runs)})")
        if runs[a]["clips"] != runs[b]["clips"]:
            raise MDVAEError(f"--pair {a}={b}: measured on {runs[a]['clips']} and "
                             f"{runs[b]['clips']} clips; a margin needs the same clips")
        alike = not mismatches({a: runs[a], b: runs[b]})  # the same clips, as far as known
        row = {}
        for level in levels_of(table):
            (va, sa), (vb, sb) = (table[emotion_key(level)]["cells"][x] for x in (a, b))
            if va is None or vb is None:
                continue
            ca, cb = (np.asarray((runs[x].get("emotion_sources") or {}).get(level, {})
                                 .get("correct", []), float) for x in (a, b))
            if alike and len(ca) > 1 and len(ca) == len(cb):  # each clip read by both
                d = ca - cb
                row[level] = {"difference": float(d.mean()),
                              "se": float(d.std(ddof=1) / np.sqrt(len(d))), "paired": True}
            else:
                se = math.hypot(sa, sb) if sa is not None and sb is not None else None
                row[level] = {"difference": va - vb, "se": se, "paired": False}
        if "all" not in row:
            raise MDVAEError(f"--pair {a}={b}: no emotion read from w in one of them")
        per_pair[f"{a} - {b}"] = row
    if not per_pair:
        return {}
    smallest = min(r["all"]["difference"] for r in per_pair.values())
    return {"per_pair": per_pair, "smallest": smallest,
            "holds": bool(smallest >= EMOTION_MARGIN)}


def model_name(d: dict[str, Any]) -> str:
    """"MDVAE", or a DSAE with its stream ("DSAE, visual")."""
    streams = [s["name"] for s in d.get("streams", [])]
    return d["model"] + (f", {streams[0]}" if len(streams) == 1 else "")


def _digits(values: list[float | None]) -> int:
    """Decimals for one row of the table: 3 for shares and small KLs, fewer for larger."""
    top = max((abs(v) for v in values if v is not None), default=0.0)
    return 3 if top < 10 else 1 if top < 100 else 0


def _f(x, digits=3) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def compare(runs: dict[str, dict], pairs: list[tuple[str, str]] = ()) -> dict[str, Any]:
    """The comparison of `runs` (label -> read_diagnostics), JSON-ready, with its markdown."""
    if len(runs) < 2:
        raise MDVAEError("give at least two diagnose results to compare")
    labels = list(runs)
    per_run = {lb: measures(r) for lb, r in runs.items()}
    keys = list(dict.fromkeys(k for lb in labels for k in per_run[lb]))  # all, in order
    table = {k: {"cells": {lb: per_run[lb].get(k, (None, None)) for lb in labels}}
             for k in keys}
    shown = [k for k in keys if any(v is not None for v, _ in table[k]["cells"].values())]
    lines = [f"**{len(labels)} diagnose results** ({', '.join(labels)}), on "
             + ", ".join(sorted({str(r['clips']) for r in runs.values()}))
             + " held-out clips; ± binomial SE over the clips", ""]
    wrong = mismatches(runs)
    if wrong:
        lines += ["**Measured differently** (the differences below mix the models with the "
                  "clips): " + "; ".join(wrong), ""]
    unknown = [lb for lb in labels if not runs[lb].get("settings")]
    if unknown:
        lines += ["Settings not recorded (a result from before they were): "
                  + ", ".join(unknown), ""]
    lines += ["| measure | " + " | ".join(f"{lb} ({model_name(runs[lb])})" for lb in labels)
              + " |", "|---|" + "---|" * len(labels)]
    for k in shown:
        cells = []
        digits = _digits([v for v, _ in table[k]["cells"].values()])
        for lb in labels:
            v, se = table[k]["cells"][lb]
            cells.append(_f(v, digits) + (f" ± {se:.3f}" if se is not None else ""))
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    result_margins = margins(runs, table, list(pairs))
    if result_margins:
        levels = levels_of(table)
        lines += ["", "**Emotion from w: each two-stream model's margin over its one-stream "
                  "pair** (± SE, paired over the clips; * unpaired: a result without per-clip "
                  "readings)", "",
                  "| pair | " + " | ".join("all" if lv == "all" else f"level {lv}"
                                          for lv in levels) + " |",
                  "|---|" + "---|" * len(levels)]
        for name, row in result_margins["per_pair"].items():
            cells = [(f"{row[lv]['difference']:+.3f}"
                      + (f" ± {row[lv]['se']:.3f}" if row[lv]["se"] is not None else "")
                      + ("" if row[lv]["paired"] else "*"))
                     if lv in row else "-" for lv in levels]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += ["", f"Smallest margin on all clips {result_margins['smallest']:+.3f} "
                  f"(the issue asks >= {EMOTION_MARGIN:.2f}): "
                  + ("holds." if result_margins["holds"] else "does not hold.")]
    return {
        "labels": labels,
        "models": {lb: model_name(runs[lb]) for lb in labels},
        "sources": {lb: runs[lb]["source"] for lb in labels},
        "mismatches": wrong,
        "measures": {k: {lb: {"value": v, "se": se} for lb, (v, se) in
                         table[k]["cells"].items()} for k in shown},
        "margins": result_margins,
        "markdown": "\n".join(lines) + "\n",
    }


def figure(result: dict, path: Path) -> str | None:
    """Emotion from w per intensity level: each run a point with its SE, side by side within
    a level, on an axis fitted to the values; None without them."""
    levels = levels_of(result["measures"])
    names = [emotion_key(lv) for lv in levels[1:] + levels[:1]]  # "all" last
    if not names:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = result["labels"]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(names) + 0.15 * len(labels)) + 2.5,
                                    3.6))
    x = np.arange(len(names))
    offsets = np.linspace(-0.3, 0.3, len(labels)) if len(labels) > 1 else [0.0]
    low = 1.0
    for j, lb in enumerate(labels):
        cells = [result["measures"][n][lb] for n in names]
        v = np.array([np.nan if c["value"] is None else c["value"] for c in cells], float)
        err = np.array([0.0 if c["se"] is None else c["se"] for c in cells], float)
        if np.isfinite(v).any():
            low = min(low, float(np.nanmin(v - err)))
        ax.errorbar(x + offsets[j], v, yerr=err, fmt="o", ms=5, capsize=2, label=lb)
    ax.set_xticks(x, [n.replace("emotion from w, ", "") if n != "emotion from w" else "all"
                      for n in names])
    for edge in x[:-1] + 0.5:
        ax.axvline(edge, color="grey", lw=0.5, alpha=0.5)
    ax.set(ylim=(max(0.0, np.floor(low * 20) / 20 - 0.05), 1.0),
           ylabel="emotion read from w (± SE)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_figure(fig, path)


def _pair(text: str) -> tuple[str, str]:
    a, sep, b = text.partition("=")
    if not sep or not a or not b:
        raise argparse.ArgumentTypeError(f"{text!r}: give TWO_STREAM=ONE_STREAM labels")
    return a, b


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m train.compare_diagnostics",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="JSON files written by train.diagnose "
                        "--json")
    parser.add_argument("--labels", nargs="+", help="a name per result (default: the file "
                        "names)")
    parser.add_argument("--pair", nargs="+", type=_pair, default=[], metavar="A=B",
                        help="the emotion margin of run A (an MDVAE) over run B (its "
                             "like-for-like one-stream model), by label")
    parser.add_argument("--out", required=True, help="folder for compare_diagnostics."
                        "json/.md/.png")
    args = parser.parse_args(argv)
    labels = checked_labels(parser, args.labels, [Path(p).stem for p in args.results],
                            "results")
    runs = {lb: {**read_diagnostics(p), "source": str(p)}
            for lb, p in zip(labels, args.results)}
    result = compare(runs, args.pair)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result["figure"] = figure(result, out / "compare_diagnostics.png")
    common.write_report(out, "compare_diagnostics", result)
    return result


if __name__ == "__main__":
    main()
