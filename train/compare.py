"""Set evaluations of several bundles side by side: each measure per run, its mean and
spread over the runs next to the standard error within one run, and the emotion margins
of the MDVAE over the DSAEs per run.

Made for training seeds: one bundle per seed of a recipe, each evaluated alike (same
store, split and evaluation seed), answers whether a finding holds beyond the seed that
produced it, e.g. the issue's "emotion from w at least 0.05 above both DSAEs, with the
spread over 3 training seeds smaller than the margin". Works as well for any set of
bundles evaluated alike (variants of a recipe).

    python -m train.compare runs/eval_s0 runs/eval_s1 runs/eval_s2 \\
        --labels "seed 0" "seed 1" "seed 2" --out runs/seeds

Each input is a folder written by ``python -m train.evaluate`` (its results.json), such a
results.json itself, or an exported bundle whose info holds an evaluation (exported with
``--results``; only its summary is kept, so the evaluation settings cannot be checked).
Writes OUT/compare.json, OUT/compare.md and OUT/compare.png (the shares and accuracies of
every run, with their standard errors).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from mdvae.components import DSAE_AUDIO, DSAE_VISUAL, MDVAE_MODEL
from mdvae.errors import MDVAEError
from mdvae.eval.experiments import MODEL_TITLES
from mdvae.eval.report import save_figure
from mdvae.eval.stats import mean_spread
from train import common

# evaluation settings that must agree for runs to be compared
SAME = ("data", "split", "seed", "quick")
# the bar: emotion from w above both DSAEs by at least this much
EMOTION_MARGIN = 0.05


def read_results(path: str | Path) -> dict[str, Any]:
    """{"summary", "config" (None when unknown), "paired" (None when unknown), "source"} of
    an evaluation folder, a results.json, or a bundle exported with its evaluation."""
    p = Path(path)
    candidates = [p] if p.is_file() else [p / "results.json", p / "config.json"]
    for f in candidates:
        if not f.is_file():
            continue
        try:
            data = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise MDVAEError(f"{f} is not readable JSON: {err}") from err
        if "per_seed" in data and "summary" not in data:
            raise MDVAEError(
                f"{f} averages several evaluation seeds; give one of its seed_<k> folders"
            )
        if "summary" in data:
            return {
                "summary": data["summary"],
                "config": data.get("config"),
                "paired": data.get("emotion", {}).get("paired"),
                "source": str(f),
            }
        evaluation = data.get("info", {}).get("evaluation") if "components" in data else None
        if evaluation and "summary" in evaluation:
            return {"summary": evaluation["summary"], "config": None, "paired": None,
                    "source": str(f)}
        raise MDVAEError(f"{f} holds no evaluation summary (train.evaluate writes one)")
    raise MDVAEError(
        f"{path}: no results.json (train.evaluate's output) or bundle config.json found"
    )


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def measures(runs: dict[str, dict]) -> list[str]:
    """The numeric measures of the runs' summaries, in the first run's order (then any the
    others add), without their standard errors (`<measure>_se`, shown beside them)."""
    keys: list[str] = []
    for r in runs.values():
        for k, v in r["summary"].items():
            if k not in keys and not k.endswith("_se") and (v is None or _number(v)):
                keys.append(k)
    return keys


def mismatches(runs: dict[str, dict]) -> list[str]:
    """The evaluation settings that differ between runs (with a config); a comparison of
    runs evaluated on other clips or seeds measures the evaluation, not the models."""
    known = {label: r["config"] for label, r in runs.items() if r["config"]}
    out = []
    for key in SAME:
        values = {label: c.get(key) for label, c in known.items()}
        if len(set(map(str, values.values()))) > 1:
            out.append(f"{key}: " + ", ".join(f"{lb} {v}" for lb, v in values.items()))
    return out


def emotion_margins(runs: dict[str, dict]) -> dict[str, Any]:
    """Per run, the MDVAE's emotion accuracy from w (all labels) and its margin over each
    DSAE (with the paired SE over test clips where the results hold it); over runs, the
    MDVAE's spread and each margin's mean and minimum, and the issue's verdict: the
    smallest margin at least EMOTION_MARGIN and the MDVAE's range over runs below it."""
    key = f"emotion_accuracy_{MDVAE_MODEL}_1"
    per_run: dict[str, dict] = {}
    for label, r in runs.items():
        s = r["summary"]
        if not _number(s.get(key)):
            continue
        few = s.get(f"emotion_accuracy_{MDVAE_MODEL}_0.1")
        # the seed's claim: with 10% of the labels, 90% of the accuracy with all of them
        row: dict[str, Any] = {"mdvae": s[key], "margins": {},
                               "tenth_of_labels": few / s[key] if _number(few) and s[key] else None}
        for m in (DSAE_AUDIO, DSAE_VISUAL):
            other = s.get(f"emotion_accuracy_{m}_1")
            if _number(other):
                se = (r["paired"] or {}).get(m, {}).get("se")
                row["margins"][m] = {"difference": s[key] - other, "se": se}
        per_run[label] = row
    if not per_run:
        return {}
    acc = [row["mdvae"] for row in per_run.values()]
    out: dict[str, Any] = {
        "per_run": per_run,
        "mdvae": {**mean_spread(acc), "range": float(max(acc) - min(acc))},
        "margins": {},
    }
    for m in (DSAE_AUDIO, DSAE_VISUAL):
        d = [row["margins"][m]["difference"] for row in per_run.values() if m in row["margins"]]
        if d:
            out["margins"][m] = {**mean_spread(d), "min": float(min(d))}
    if len(out["margins"]) == 2 and len(per_run) > 1:
        smallest = min(v["min"] for v in out["margins"].values())
        out["verdict"] = {
            "smallest_margin": smallest,
            "mdvae_range": out["mdvae"]["range"],
            "holds": bool(smallest >= EMOTION_MARGIN and out["mdvae"]["range"] < smallest),
        }
    return out


def _f(x, digits=3) -> str:
    return f"{x:.{digits}f}" if _number(x) else "-"


def compare(runs: dict[str, dict]) -> dict[str, Any]:
    """The comparison of `runs` (label -> read_results), as JSON-ready data with its
    markdown."""
    if len(runs) < 2:
        raise MDVAEError("give at least two evaluations to compare")
    labels = list(runs)
    keys = measures(runs)
    table: dict[str, dict] = {}
    for k in keys:
        values = [runs[lb]["summary"].get(k) for lb in labels]
        ses = [runs[lb]["summary"].get(f"{k}_se") for lb in labels]
        within = [se for se in ses if _number(se)]
        table[k] = {
            **mean_spread([v for v in values if _number(v)]),
            "values": [v if _number(v) else None for v in values],
            "se": [se if _number(se) else None for se in ses],
            # the typical SE of one run: the sampling noise a spread over runs compares with
            "se_within": float(np.sqrt(np.mean(np.square(within)))) if within else None,
        }
    lines = [
        f"**{len(labels)} evaluations compared** ({', '.join(labels)}): mean ± standard "
        "deviation over them, and the root-mean-square standard error within one "
        "(test clips or swapped pairs as the unit); a spread well above it is the runs "
        "differing, not the sampling.",
        "",
    ]
    wrong = mismatches(runs)
    if wrong:
        lines += ["**Evaluated differently** (the differences below mix the models with "
                  "the evaluation): " + "; ".join(wrong), ""]
    unknown = [lb for lb in labels if not runs[lb]["config"]]
    if unknown:
        lines += ["Evaluation settings unknown (a bundle's summary only): "
                  + ", ".join(unknown), ""]
    lines += [
        "| measure | mean ± std | SE within a run | " + " | ".join(labels) + " |",
        "|---|---|---|" + "---|" * len(labels),
    ]
    for k in keys:
        row = table[k]
        cells = " | ".join(_f(v) for v in row["values"])
        spread = f"{_f(row['mean'])} ± {_f(row['std'])}" if row["n"] else "-"
        lines.append(f"| {k} | {spread} | {_f(row['se_within'])} | {cells} |")
    margins = emotion_margins(runs)
    if margins:
        lines += ["", "**Emotion from w (all labels): the MDVAE's margin over each DSAE** "
                  "(paired SE over test clips where known)", "",
                  "| run | MDVAE | " + " | ".join(
                      f"MDVAE - {MODEL_TITLES[m]}" for m in margins["margins"])
                  + " | MDVAE with 10% of the labels / all |",
                  "|---|---|" + "---|" * len(margins["margins"]) + "---|"]
        for lb, row in margins["per_run"].items():
            cells = []
            for m in margins["margins"]:
                d = row["margins"].get(m)
                cells.append("-" if d is None else _f(d["difference"])
                             + (f" ± {_f(d['se'])}" if _number(d["se"]) else ""))
            lines.append(f"| {lb} | {_f(row['mdvae'])} | " + " | ".join(cells)
                         + f" | {_f(row['tenth_of_labels'], 2)} |")
        m = margins["mdvae"]
        lines.append(
            f"| mean ± std | {_f(m['mean'])} ± {_f(m['std'])} (range {_f(m['range'])}) | "
            + " | ".join(f"{_f(v['mean'])} ± {_f(v['std'])} (min {_f(v['min'])})"
                         for v in margins["margins"].values()) + " | |"
        )
        if "verdict" in margins:
            v = margins["verdict"]
            lines += ["", f"Smallest margin {_f(v['smallest_margin'])} (needs >= "
                      f"{EMOTION_MARGIN:.2f}), the MDVAE's range over the runs "
                      f"{_f(v['mdvae_range'])} (needs to be below it): "
                      + ("holds." if v["holds"] else "does not hold.")]
    return {
        "labels": labels,
        "sources": {lb: runs[lb]["source"] for lb in labels},
        "mismatches": wrong,
        "measures": table,
        "emotion": margins,
        "markdown": "\n".join(lines) + "\n",
    }


def figure(result: dict, path: Path) -> str | None:
    """Shares and accuracies (measures in [0, 1]: follows, rendered, emotion accuracies) of
    every run side by side, with their SEs; None when there are none."""
    keys = [
        k for k, row in result["measures"].items()
        if row["n"] and ("follows" in k or "rendered" in k or k.startswith("emotion_accuracy"))
        and all(v is None or 0.0 <= v <= 1.0 for v in row["values"])
    ]
    if not keys:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = result["labels"]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(keys) + 1.4))
    y = np.arange(len(keys))[::-1]
    offsets = np.linspace(0.25, -0.25, len(labels)) if len(labels) > 1 else [0.0]
    for j, lb in enumerate(labels):
        x = [result["measures"][k]["values"][j] for k in keys]
        err = [result["measures"][k]["se"][j] for k in keys]
        x = np.array([np.nan if v is None else v for v in x], float)
        err = np.array([0.0 if e is None else e for e in err], float)
        ax.errorbar(x, y + offsets[j], xerr=err, fmt="o", ms=4, capsize=2, label=lb)
    ax.set_yticks(y, keys, fontsize=7)
    ax.set(xlim=(0, 1.02), xlabel="share / accuracy (bars: SE within the run)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, path)


def checked_labels(parser: argparse.ArgumentParser, labels: list[str] | None,
                   default: list[str], what: str) -> list[str]:
    """--labels, or the inputs' `default` names: one per input, all different."""
    labels = labels or default
    if len(labels) != len(default):
        parser.error(f"{len(labels)} labels for {len(default)} {what}")
    if len(set(labels)) != len(labels):
        parser.error("labels must differ (give --labels)")
    return labels


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m train.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("evaluations", nargs="+",
                        help="train.evaluate output folders, results.json files or bundles")
    parser.add_argument("--labels", nargs="+", help="a name per evaluation (default: the "
                        "folder names)")
    parser.add_argument("--out", required=True, help="folder for compare.json/.md/.png")
    args = parser.parse_args(argv)
    labels = checked_labels(parser, args.labels,
                            [Path(p).name or str(p) for p in args.evaluations], "evaluations")
    runs = {lb: read_results(p) for lb, p in zip(labels, args.evaluations)}
    result = compare(runs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result["figure"] = figure(result, out / "compare.png")
    common.write_report(out, "compare", result)
    return result


if __name__ == "__main__":
    main()
