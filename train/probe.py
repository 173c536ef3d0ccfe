"""Emotion from w, run by run, on the clips of speakers the runs never saw.

For each stage-2 run (MDVAE, A-DSAE or V-DSAE, mixed freely), fits the bundle's emotion
head (multinomial logistic regression on the posterior mean of w, `fit_emotion_head`) on
every training clip of --store, and scores it on the --split clips of --pool (the 64 new
speakers of data/synth_new64, where models are chosen). Prints each run's accuracy with
its standard errors over clips and over speakers, then, for every pair of runs, the
paired difference on the same clips (the margin over a baseline is one of the pairs).
With --inputs, also what q(w) can find of the emotion in what it reads: the same probe on
the whole summary vector its head reads ("input"), on that vector's first principal
components, as many as w has entries ("input_pcs": a reading as small as w, so that a gap
between it and w is q(w)'s head leaving emotion out, not the probe reading fewer numbers),
and on each stream's part of it ("voice", "face"; `read_by_q_w`). An MDVAE whose w is two
parts (`w_per_stream`) is also read part by part: "w_a" (the entries inferred from the
voice) and "w_v" (from the face), each with its own head. --together A+B probes
the runs' w side by side (a late fusion: what the two models' w hold together, e.g. an
A-DSAE's and a V-DSAE's).
With --relative, also w read relative to its speaker: "w_centred", each speaker's mean w
over all their clips taken away (training and pool alike; a transductive reading that needs
many clips per speaker, an upper bound on the emotion w holds apart from who is speaking);
"w_vs_neutral", w minus the same speaker's neutral clip (a reference a user could give),
scored on the other emotions' clips against "w_non_neutral", the plain head on the same
clips and emotions (neutral left out of both).
--head-speakers N ... fits the heads again on the clips of N training speakers only (the
same random speakers for every run, --draws times): how the reading of new speakers grows
with the labelled speakers' variety, the encoders unchanged (with --relative, "w - neutral"
too); --plot PNG draws it.

    python -m train.probe --store data/synth200 --pool data/synth_new64 --split val \\
        --vq-visual runs/vq_visual --vq-audio runs/vq_audio \\
        --run mdvae=runs/mdvae --run v-dsae=runs/dsae_visual --run a-dsae=runs/dsae_audio \\
        --inputs --relative --together a-dsae+v-dsae --out runs/probe.json

Nothing is trained but the probes. The runs must have been trained inside these VQ-VAEs.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mdvae.data.store import Store
from mdvae.errors import MDVAEError
from mdvae.eval.diagnostics import labelled, read_by_q_w
from mdvae.eval.experiments import encode_either
from mdvae.eval.stats import binomial_se, paired_difference, se_over_speakers
from mdvae.model.emotion import fit_emotion_head
from train.runs import cached_features, load_stage1, load_stage2


@torch.no_grad()
def encode(model, audio: np.ndarray, visual: np.ndarray, clips: list, *, inputs: bool,
           batch: int = 64, desc: str = "encoding") -> dict[str, np.ndarray]:
    """Per clip (store rows, whole clips, batched among clips of one length): w's posterior
    mean {"w": (N, Lw)}; for an MDVAE with a per-stream w, its voice's and face's parts apart
    ("w_a", "w_v"); and, with `inputs` (this project's layout), what q(w)'s head reads
    (`read_by_q_w`: "input", and "voice" and/or "face")."""
    inputs = inputs and model.config.authors_layout is None
    order = sorted(range(len(clips)), key=lambda i: clips[i].length)
    out: dict[str, list] = {}
    with tqdm(total=len(clips), desc=desc, leave=False) as bar:
        for _, group in itertools.groupby(order, key=lambda i: clips[i].length):
            group = list(group)
            for lo in range(0, len(group), batch):
                ids = group[lo:lo + batch]

                def stack(stream, ids=ids):
                    return torch.from_numpy(np.stack([
                        np.asarray(stream[clips[i].start:clips[i].start + clips[i].length],
                                   np.float32) for i in ids]))

                x_a, x_v = stack(audio), stack(visual)
                read = {"w": encode_either(model, x_a, x_v).w}
                if inputs:
                    read.update(read_by_q_w(model, x_a, x_v))
                for name, value in read.items():
                    rows = out.setdefault(name, [None] * len(clips))
                    for k, i in enumerate(ids):
                        rows[i] = value[k].numpy()
                bar.update(len(ids))
    read = {name: np.stack(rows) for name, rows in out.items()}
    if getattr(model.config, "w_per_stream", False):  # each stream's part of w apart
        n = model.w_audio_entries
        read |= {"w_a": read["w"][:, :n], "w_v": read["w"][:, n:]}
    return read


def principal_components(train: np.ndarray, held: np.ndarray, k: int
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Both sets of rows (N, D) on the first k principal components of the training rows,
    each column standardised on the training rows first (the probe standardises too, so
    the columns' scales do not choose the components): ((N_train, k'), (N_held, k')),
    k' = min(k, D, N_train)."""
    train, held = np.asarray(train, np.float64), np.asarray(held, np.float64)
    mean, std = train.mean(0), train.std(0) + 1e-6
    z = (train - mean) / std
    _, _, vt = np.linalg.svd(z, full_matrices=False)
    basis = vt[:k].T
    return z @ basis, ((held - mean) / std) @ basis


def relative_to_speaker(x: np.ndarray, speakers: list[str], emotions: list[str],
                        reference: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows x (N, D) minus a row per speaker: the speaker's mean over all their rows
    (`reference` None), or the mean of their rows whose emotion is `reference` (e.g.
    "neutral"; those rows, and the rows of speakers without one, are left out). Returns
    (x_kept - reference row, kept row indices)."""
    x = np.asarray(x, np.float64)
    spk, emo = np.asarray(speakers), np.asarray(emotions)
    out, rows = [], []
    for s in dict.fromkeys(speakers):  # speakers in order of first appearance
        mine = np.flatnonzero(spk == s)
        if reference is None:
            ref, keep = x[mine].mean(0), mine
        else:
            refs = mine[emo[mine] == reference]
            if not len(refs):
                continue
            ref, keep = x[refs].mean(0), mine[emo[mine] != reference]
        out.append(x[keep] - ref)
        rows.append(keep)
    if not rows:
        return np.empty((0, x.shape[1])), np.empty(0, dtype=int)
    order = np.argsort(np.concatenate(rows), kind="stable")  # back to the rows' own order
    return np.concatenate(out)[order], np.concatenate(rows)[order]


def scored(correct: np.ndarray, speakers: list[str]) -> dict:
    """Accuracy of per-clip hits `correct` (N,) bool with its SE over clips (binomial) and
    over speakers (clustered: one speaker's clips are not independent)."""
    p = float(correct.mean())
    se_speakers, n_speakers = se_over_speakers(correct.astype(np.float64), speakers)
    return {"accuracy": p, "se": binomial_se(p, len(correct)), "se_speakers": se_speakers,
            "clips": int(len(correct)), "speakers": n_speakers}


def speaker_draws(speakers: list[str], sizes: list[int], draws: int, seed: int = 0
                  ) -> dict[int, list[set[str]]]:
    """For each size N, `draws` random sets of N distinct speakers (one set when N is all of
    them): the same sets for every run probed, so their readings pair."""
    pool = sorted(set(speakers))
    rng = np.random.default_rng(seed)
    out = {}
    for n in sizes:
        if not 1 <= n <= len(pool):
            raise MDVAEError(f"--head-speakers {n}: the training split has {len(pool)} "
                             "labelled speakers")
        out[n] = [set(pool)] if n == len(pool) else [
            set(rng.choice(pool, n, replace=False).tolist()) for _ in range(draws)]
    return out


def probe_speakers(train_w: np.ndarray, train_labels: list[str], train_speakers: list[str],
                   held_w: np.ndarray, held_labels: list[str], held_speakers: list[str],
                   draws: dict[int, list[set[str]]], *, relative: bool, c: float
                   ) -> list[dict]:
    """Per size N of `speaker_draws`, the pool accuracy of the head fitted on those speakers'
    clips alone, per draw and on average: [{"speakers", "w": [...], "w_mean"}] (and
    "w_vs_neutral", "w_vs_neutral_mean" with `relative`, where both sets have neutral
    clips)."""
    spk, labels = np.asarray(train_speakers), np.asarray(train_labels)
    if relative:
        held_ref, held_rows = relative_to_speaker(held_w, held_speakers, held_labels, "neutral")
        held_ref_y = [held_labels[i] for i in held_rows]
    out = []
    for n, sets in draws.items():
        entry: dict = {"speakers": n, "w": []}
        for chosen in sets:
            rows = np.flatnonzero(np.isin(spk, sorted(chosen)))
            hit = probe_run({"w": train_w[rows]}, labels[rows].tolist(), {"w": held_w},
                            held_labels, c=c)["w"]
            entry["w"].append(float(hit.mean()))
            if relative and len(held_rows):
                tr, tr_rows = relative_to_speaker(train_w[rows], spk[rows].tolist(),
                                                  labels[rows].tolist(), "neutral")
                tr_y = labels[rows][tr_rows].tolist()
                if len(tr_rows) and set(held_ref_y) <= set(tr_y):
                    hit = probe_run({"x": tr}, tr_y, {"x": held_ref}, held_ref_y, c=c)["x"]
                    entry.setdefault("w_vs_neutral", []).append(float(hit.mean()))
        entry["w_mean"] = float(np.mean(entry["w"]))
        if entry.get("w_vs_neutral"):
            entry["w_vs_neutral_mean"] = float(np.mean(entry["w_vs_neutral"]))
        out.append(entry)
    return out


def plot_head_speakers(runs: dict[str, dict], out: Path) -> Path:
    """Accuracy on the pool against the number of training speakers the heads saw, one line
    per run (solid: w; dashed: w minus the neutral clip), each point the mean of its draws
    with their range as a bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for i, (name, r) in enumerate(runs.items()):
        color = f"C{i % 10}"
        for key, style, label in (("w", "-o", name),
                                  ("w_vs_neutral", "--s", f"{name}, w - neutral")):
            entries = [e for e in r["head_speakers"] if e.get(key)]
            if not entries:
                continue
            n = [e["speakers"] for e in entries]
            mean = np.array([np.mean(e[key]) for e in entries])
            low = mean - [min(e[key]) for e in entries]
            high = [max(e[key]) for e in entries] - mean
            ax.errorbar(n, mean, yerr=[low, high], fmt=style, color=color, capsize=3,
                        label=label, alpha=1.0 if key == "w" else 0.6)
    ax.set_xscale("log")
    sizes = sorted({e["speakers"] for r in runs.values() for e in r["head_speakers"]})
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.minorticks_off()
    ax.set_xlabel("training speakers whose clips fit the emotion head")
    ax.set_ylabel("emotion accuracy on the pool")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def probe_run(train: dict[str, np.ndarray], train_labels: list[str],
              held: dict[str, np.ndarray], held_labels: list[str], *, c: float
              ) -> dict[str, np.ndarray]:
    """Per clip of the held-out pool, whether the head fitted on each reading reads its
    emotion right: {reading: (N,) bool}."""
    out = {}
    for name in train:
        head = fit_emotion_head(train[name], train_labels, c=c)
        pred = head(torch.from_numpy(held[name])).argmax(-1).numpy()
        out[name] = pred == np.array([head.config.labels.index(y) for y in held_labels])
    return out


def probe_relative(train_w: np.ndarray, train_labels: list[str], train_speakers: list[str],
                   held_w: np.ndarray, held_labels: list[str], held_speakers: list[str],
                   rows_of: dict[str, np.ndarray], *, c: float) -> dict[str, np.ndarray]:
    """--relative's readings {reading: (n,) bool}: "w_centred" on every pool clip, and, where
    both sets hold neutral clips, "w_vs_neutral" and its baseline "w_non_neutral" on the
    pool's other clips (their pool rows go into `rows_of`)."""
    out = {}
    for reading, reference in (("w_centred", None), ("w_vs_neutral", "neutral")):
        tr, tr_rows = relative_to_speaker(train_w, train_speakers, train_labels, reference)
        he, he_rows = relative_to_speaker(held_w, held_speakers, held_labels, reference)
        tr_y = [train_labels[i] for i in tr_rows]
        he_y = [held_labels[i] for i in he_rows]
        if not len(he_rows) or len(set(tr_y)) < 2 or not set(he_y) <= set(tr_y):
            continue
        out[reading] = probe_run({"x": tr}, tr_y, {"x": he}, he_y, c=c)["x"]
        rows_of[reading] = he_rows
        if reference is not None:  # the plain head on the same clips and emotions
            out["w_non_neutral"] = probe_run({"x": train_w[tr_rows]}, tr_y,
                                             {"x": held_w[he_rows]}, he_y, c=c)["x"]
            rows_of["w_non_neutral"] = he_rows
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m train.probe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True, help="store whose training clips fit the heads")
    parser.add_argument("--pool", required=True, help="store of the clips scored")
    parser.add_argument("--split", default="val", help="the pool's split scored (default val)")
    parser.add_argument("--vq-visual", required=True)
    parser.add_argument("--vq-audio", required=True)
    parser.add_argument("--run", action="append", required=True, metavar="NAME=FOLDER",
                        help="a stage-2 run folder under a short name (repeat; the first is "
                             "listed first in every pair)")
    parser.add_argument("--inputs", action="store_true",
                        help="also probe what q(w)'s head reads: the whole vector and each "
                             "stream's part (this project's layout)")
    parser.add_argument("--relative", action="store_true",
                        help="also read w relative to its speaker: minus the speaker's mean w "
                             "(transductive), and minus the speaker's neutral clip")
    parser.add_argument("--head-speakers", type=int, nargs="+", default=[], metavar="N",
                        help="also fit the heads on N training speakers' clips alone (random, "
                             "the same for every run)")
    parser.add_argument("--plot", help="with --head-speakers: draw accuracy against speakers "
                        "here (PNG)")
    parser.add_argument("--draws", type=int, default=3,
                        help="random speaker sets per --head-speakers size (default 3)")
    parser.add_argument("--together", action="append", default=[], metavar="A+B",
                        help="also probe these runs' w side by side (repeat)")
    parser.add_argument("--c", type=float, default=1.0, help="inverse L2 strength")
    parser.add_argument("--out", help="write the figures and per-clip hits here (JSON)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (give 1 when other jobs share the machine)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = {}
    for spec in args.run:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            parser.error(f"--run takes NAME=FOLDER, got {spec!r}")
        if name in runs:
            parser.error(f"--run: the name {name!r} is given twice")
        runs[name] = folder
    together = []
    for spec in args.together:
        names = spec.split("+")
        if len(names) < 2 or any(n not in runs for n in names):
            parser.error(f"--together takes two or more --run names joined by +, got {spec!r}")
        together.append(names)

    vq_audio, vq_visual = load_stage1(args.vq_audio), load_stage1(args.vq_visual)
    store, pool = Store(args.store), Store(args.pool)
    train_clips = labelled(store.split_clips("train"))
    held_clips = labelled(pool.split_clips(args.split))
    if not train_clips:
        raise MDVAEError(f"{args.store} has no labelled training clips to fit the heads on")
    if not held_clips:
        raise MDVAEError(f"{args.pool} has no labelled clips in its {args.split!r} split")
    if {c.speaker for c in held_clips} & {c.speaker for c in train_clips}:
        print(f"note: {args.pool} {args.split} shares speakers with {args.store}'s training "
              "split: these are not new speakers")
    train_a, train_v, _ = cached_features(store, vq_audio, vq_visual)
    held_a, held_v, _ = cached_features(pool, vq_audio, vq_visual)
    train_labels = [c.emotion for c in train_clips]
    held_labels = [c.emotion for c in held_clips]
    speakers = [c.speaker for c in held_clips]
    train_speakers = [c.speaker for c in train_clips]
    rows_of: dict[str, np.ndarray] = {}  # reading -> the pool rows it scores (default: all)

    def speakers_of(reading: str) -> list[str]:
        """The speaker of each pool clip the reading scores."""
        return [speakers[i] for i in rows_of[reading]] if reading in rows_of else speakers

    if args.draws < 1:
        parser.error("--draws must be at least 1")
    if args.plot and not args.head_speakers:
        parser.error("--plot draws the --head-speakers readings: give --head-speakers too")
    draws = speaker_draws(train_speakers, args.head_speakers, args.draws)

    hits: dict[str, dict[str, np.ndarray]] = {}
    report: dict = {"store": args.store, "pool": args.pool, "split": args.split,
                    "c": args.c, "runs": {}, "pairs": {}, "together": {}}
    w_of: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, folder in runs.items():
        model = load_stage2(folder).eval()
        train = encode(model, train_a, train_v, train_clips, inputs=args.inputs,
                       desc=f"{name}: training clips")
        held = encode(model, held_a, held_v, held_clips, inputs=args.inputs,
                      desc=f"{name}: pool")
        if "input" in train:
            train["input_pcs"], held["input_pcs"] = principal_components(
                train["input"], held["input"], train["w"].shape[1])
        w_of[name] = (train["w"], held["w"])
        hits[name] = probe_run(train, train_labels, held, held_labels, c=args.c)
        if args.relative:
            hits[name] |= probe_relative(train["w"], train_labels, train_speakers, held["w"],
                                         held_labels, speakers, rows_of, c=args.c)
        report["runs"][name] = {
            "folder": folder, "model": type(model).__name__,
            **{k: scored(v, speakers_of(k)) for k, v in hits[name].items()}}
        if "w_a" in train:
            report["runs"][name] |= {"w_a_entries": int(train["w_a"].shape[1]),
                                     "w_v_entries": int(train["w_v"].shape[1])}
        if draws:
            report["runs"][name]["head_speakers"] = probe_speakers(
                train["w"], train_labels, train_speakers, held["w"], held_labels, speakers,
                draws, relative=args.relative, c=args.c)
        if "w_vs_neutral" in hits[name]:  # the reference's gain, on the same clips
            d = hits[name]["w_vs_neutral"].astype(float) - hits[name]["w_non_neutral"].astype(float)
            report["runs"][name]["w_vs_neutral_minus_w_non_neutral"] = paired_difference(
                d, speakers_of("w_non_neutral"))
        if "input_pcs" in hits[name]:  # what q(w)'s head leaves out, on the same clips
            d = hits[name]["w"].astype(float) - hits[name]["input_pcs"].astype(float)
            report["runs"][name]["w_minus_input_pcs"] = paired_difference(d, speakers)
    two_part = [n for n, r in report["runs"].items() if "w_a" in r]
    for names in together:
        joined = [np.concatenate([w_of[n][k] for n in names], axis=1) for k in (0, 1)]
        hit = probe_run({"w": joined[0]}, train_labels, {"w": joined[1]}, held_labels,
                        c=args.c)["w"]
        report["together"]["+".join(names)] = scored(hit, speakers)

    print(f"\nemotion from w's posterior mean, {args.pool} {args.split} "
          f"({len(held_clips)} clips, {len(set(speakers))} speakers; heads fitted on "
          f"{len(train_clips)} training clips of {args.store})")
    print(f"{'run':<16} {'model':<6} {'w':>6} {'± clips':>8} {'± spk':>6}"
          + ("   what q(w) reads: input    PCs  voice   face" if args.inputs else ""))
    for name, r in report["runs"].items():
        parts = "".join(f"{r[k]['accuracy']:7.3f}" if k in r else f"{'-':>7}"
                        for k in ("input", "input_pcs", "voice", "face")) if args.inputs else ""
        print(f"{name:<16} {r['model']:<6} {r['w']['accuracy']:6.3f} {r['w']['se']:8.3f} "
              f"{r['w']['se_speakers']:6.3f}" + (f"{'':>17}{parts}" if parts else ""))
    for names, r in report["together"].items():
        print(f"{names:<23} {r['accuracy']:6.3f} {r['se']:8.3f} {r['se_speakers']:6.3f}"
              "   (w side by side)")
    if two_part:
        print("w part by part (per-stream w), each part with its own head: w_a from the "
              "voice, w_v from the face (accuracy ± clips)")
        for name in two_part:
            r = report["runs"][name]
            print(f"  {name:<14} w_a ({r['w_a_entries']} entries) {r['w_a']['accuracy']:.3f} ± "
                  f"{r['w_a']['se']:.3f}   w_v ({r['w_v_entries']}) {r['w_v']['accuracy']:.3f} ± "
                  f"{r['w_v']['se']:.3f}")
    if args.inputs:
        print("PCs: the input's first principal components, as many as w has entries; "
              "w minus PCs (what q(w)'s head leaves out; ± over clips, ± over speakers):")
        for name, r in report["runs"].items():
            if "w_minus_input_pcs" in r:
                p = r["w_minus_input_pcs"]
                print(f"  {name:<14} {p['difference']:+.3f} ± {p['se']:.3f} ± "
                      f"{p['se_speakers']:.3f}")
    if args.relative:
        print("w relative to its speaker: centred = minus the speaker's mean w over all their "
              "clips (transductive); without the neutral clips and label: w, and w minus the "
              "speaker's neutral clip (gain ± over clips ± over speakers)")
        for name, r in report["runs"].items():
            line = f"  {name:<14} centred " + (f"{r['w_centred']['accuracy']:.3f}"
                                                 if "w_centred" in r else "-")
            if "w_vs_neutral" in r:
                g = r["w_vs_neutral_minus_w_non_neutral"]
                line += (f"   non-neutral: w {r['w_non_neutral']['accuracy']:.3f}, w - neutral "
                         f"{r['w_vs_neutral']['accuracy']:.3f} ({g['difference']:+.3f} ± "
                         f"{g['se']:.3f} ± {g['se_speakers']:.3f})")
            else:
                line += "   (no neutral clips to refer to)"
            print(line)
    if draws:
        print(f"heads fitted on N training speakers' clips alone (mean of {args.draws} random "
              "speaker sets, the same for every run)" + ("; w - neutral: seven emotions, "
                                                        "relative to the neutral clip"
                                                        if args.relative else ""))
        print(f"{'run':<16}" + "".join(f"{n:>8}" for n in draws))
        for name, r in report["runs"].items():
            print(f"{name:<16}" + "".join(f"{e['w_mean']:8.3f}" for e in r["head_speakers"]))
            if any("w_vs_neutral_mean" in e for e in r["head_speakers"]):
                print(f"{'  w - neutral':<16}" + "".join(
                    f"{e['w_vs_neutral_mean']:8.3f}" if "w_vs_neutral_mean" in e else f"{'-':>8}"
                    for e in r["head_speakers"]))
    if draws and args.plot:
        print(f"wrote {plot_head_speakers(report['runs'], Path(args.plot))}")
    if len(runs) > 1:
        print("\npaired differences (first minus second; ± over clips, ± over speakers)")
    for a, b in itertools.combinations(runs, 2):
        pair = {}
        for reading in ("w", "w_a", "w_v", "input", "input_pcs", "voice", "face", "w_centred",
                        "w_non_neutral", "w_vs_neutral"):
            if reading in hits[a] and reading in hits[b]:
                d = hits[a][reading].astype(float) - hits[b][reading].astype(float)
                pair[reading] = paired_difference(d, speakers_of(reading))
        report["pairs"][f"{a} - {b}"] = pair
        print(f"{a + ' - ' + b:<34} " + "   ".join(
            f"{reading} {p['difference']:+.3f} ± {p['se']:.3f} ± {p['se_speakers']:.3f}"
            for reading, p in pair.items()))
    if args.out:
        report["clips"] = [{"speaker": c.speaker, "emotion": c.emotion} for c in held_clips]
        report["rows"] = {k: v.tolist() for k, v in rows_of.items()}  # clips of those hits
        report["hits"] = {n: {k: v.astype(int).tolist() for k, v in h.items()}
                          for n, h in hits.items()}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
