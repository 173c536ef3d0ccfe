"""What supervised readers of the stage-1 features find of the emotion on held-out speakers,
per stream and both together: the room the benchmark leaves for the voice above the face.

The issue asks the MDVAE's w to read the emotion at least 0.05 better than a face-only
model's. That needs the voice to hold emotion the face does not show. This program asks the
features themselves, with readers trained on the emotion labels (not stage-2 models, so an
upper reference for what an encoder could find, not a bound on it):
  mlp  a two-layer perceptron on each clip's feature statistics (the mean, the spread and
       the mean absolute frame-to-frame change of every feature, `feature_stats`);
  seq  a network on the per-frame features (a frame layer, two 1-D convolutions over time,
       mean and spread pooled over the clip), trained on random crops, read on whole clips.
Each is trained on every labelled training clip of --store, once per --seeds, on the
voice's features, the face's and both side by side, and scored on the --split clips of
--pool (speakers unseen in training). Printed: each reading's accuracy (mean over the seeds,
each seed, and per intensity level), and what the voice adds, "both" minus "face" on the
same clips, paired, with the speakers as the unit.

    python -m train.ceiling --store data/synth200 --pool data/synth_new64 \\
        --vq-visual runs/vq_visual --vq-audio runs/vq_audio --out runs/ceiling.json

About 4 min (mlp) and 23 min (seq) per seed, the three readings, on one CPU core for the
synthetic benchmark; the sequence reader keeps the features in float16, as the store does.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mdvae.data.store import Store
from mdvae.errors import MDVAEError
from mdvae.eval.diagnostics import feature_stats, labelled
from mdvae.eval.stats import paired_difference
from train import common
from train.runs import cached_features, load_stage1

STREAMS = {"voice": ("audio",), "face": ("visual",), "both": ("audio", "visual")}
READERS = ("mlp", "seq")


class SequenceReader(nn.Module):
    """Per-frame features (B, T, D) -> class logits: a frame layer, two convolutions over
    time, the mean and spread over the clip."""

    def __init__(self, in_dim: int, n_classes: int, hidden: int = 192):
        super().__init__()
        self.frame = nn.Sequential(nn.Dropout(0.2), nn.Linear(in_dim, hidden), nn.GELU())
        self.time = nn.Sequential(nn.Conv1d(hidden, hidden, 5, padding=2), nn.GELU(),
                                  nn.Conv1d(hidden, hidden, 5, padding=2), nn.GELU())
        self.out = nn.Sequential(nn.Dropout(0.5), nn.Linear(2 * hidden, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.time(self.frame(x).transpose(1, 2))
        return self.out(torch.cat([h.mean(2), h.std(2)], 1))


def stats_reader(in_dim: int, n_classes: int) -> nn.Module:
    """Clip statistics (B, D) -> class logits."""
    return nn.Sequential(nn.Dropout(0.2), nn.Linear(in_dim, 512), nn.GELU(), nn.Dropout(0.5),
                         nn.Linear(512, 256), nn.GELU(), nn.Linear(256, n_classes))


def fit_and_read(kind: str, train_x: list[np.ndarray] | np.ndarray, train_y: np.ndarray,
                 held_x: list[np.ndarray] | np.ndarray, *, n_classes: int, seed: int,
                 epochs: int, crop: int = 60, batch: int = 64, lr: float = 1e-3,
                 desc: str = "") -> np.ndarray:
    """Train a reader of `kind` ("mlp": rows of clip statistics (N, D); "seq": a list of
    per-frame arrays (T, D), float16 as the store keeps them or float32) on standardised
    inputs and labels `train_y` (N,), and return its predicted class for each held-out item.
    AdamW, cosine-decayed learning rate. The sequences are standardised batch by batch, so
    that no float32 copy of them all is made (the synthetic benchmark's face features are
    3 GB in float32)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    sequences = kind == "seq"
    if sequences:  # the mean and spread of every feature over all training frames
        total = sum(len(a) for a in train_x)
        mean = sum(a.sum(0, dtype=np.float64) for a in train_x) / total
        square = sum(np.square(a, dtype=np.float64).sum(0) for a in train_x) / total
        std = np.sqrt(np.maximum(square - mean**2, 0.0)) + 1e-6
    else:
        mean = np.asarray(train_x).mean(0, dtype=np.float64)
        std = np.asarray(train_x).std(0, dtype=np.float64) + 1e-6
    shift, scale = (torch.from_numpy(v.astype(np.float32)) for v in (mean, std))

    def standardised(x: np.ndarray) -> torch.Tensor:
        return (torch.from_numpy(np.asarray(x, np.float32)) - shift) / scale

    ys = torch.as_tensor(train_y)
    in_dim = len(mean)
    model = (SequenceReader(in_dim, n_classes) if sequences else stats_reader(in_dim, n_classes))
    xs = None if sequences else standardised(train_x)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    for _ in tqdm(range(epochs), desc=f"{kind} {desc}".strip(), leave=False):
        model.train()
        order = rng.permutation(len(ys))
        for i in range(0, len(order), batch):
            chosen = order[i:i + batch]
            if sequences:  # a random window of each clip: the crop or the batch's shortest
                length = min(crop, *(len(train_x[j]) for j in chosen))
                starts = [rng.integers(0, len(train_x[j]) - length + 1) for j in chosen]
                xb = standardised(np.stack([train_x[j][s:s + length]
                                            for j, s in zip(chosen, starts)]))
            else:
                xb = xs[chosen]
            loss = nn.functional.cross_entropy(model(xb), ys[chosen])
            opt.zero_grad()
            loss.backward()
            opt.step()
        schedule.step()
    model.eval()
    with torch.no_grad():
        if sequences:
            return np.array([int(model(standardised(x)[None]).argmax(1)) for x in held_x])
        return model(standardised(held_x)).argmax(1).numpy()


def scores(correct: np.ndarray, levels: np.ndarray) -> dict[str, float]:
    """Accuracy over all items and per intensity level (0: not given)."""
    out = {"all": float(correct.mean())}
    out |= {str(lv): float(correct[levels == lv].mean()) for lv in sorted(set(levels.tolist()))
            if lv}
    return out


def read_room(train: dict[str, list | np.ndarray], train_labels: list[str],
              held: dict[str, list | np.ndarray], held_labels: list[str], held_speakers: list[str],
              held_levels: list[int], *, kind: str, seeds: list[int], epochs: int,
              crop: int = 60, after_each: Callable[[dict], None] | None = None) -> dict:
    """Each stream's reader ({"audio", "visual"}: inputs per clip, as `fit_and_read` takes
    them) and both streams' together, once per seed: accuracies (mean and per seed, all and
    per level) and "both" minus "face" on the same clips, per seed and pooled over the seeds
    (paired, the speakers as the unit). `after_each` is given what is measured so far after
    each stream (a long run keeps what it has if it stops)."""
    names = sorted(set(train_labels))
    y = np.array([names.index(e) for e in train_labels])
    truth = np.array([names.index(e) if e in names else -1 for e in held_labels])
    levels = np.asarray(held_levels)

    def joined(parts, streams):
        if kind == "seq":
            return [np.concatenate([parts[s][i] for s in streams], 1)
                    for i in range(len(parts[streams[0]]))]
        return np.concatenate([parts[s] for s in streams], 1)

    out: dict = {"reader": kind, "seeds": list(seeds), "epochs": epochs, "streams": {}}
    correct: dict[str, list[np.ndarray]] = {}
    for name, streams in STREAMS.items():
        x_train, x_held = joined(train, streams), joined(held, streams)
        correct[name] = [fit_and_read(kind, x_train, y, x_held, n_classes=len(names),
                                      seed=seed, epochs=epochs, crop=crop,
                                      desc=f"{name} seed {seed}") == truth for seed in seeds]
        per_seed = [scores(c, levels) for c in correct[name]]
        out["streams"][name] = {
            "accuracy": float(np.mean([s["all"] for s in per_seed])),
            "by_level": {lv: float(np.mean([s[lv] for s in per_seed]))
                         for lv in per_seed[0] if lv != "all"},
            "per_seed": per_seed}
        if after_each:
            after_each(out)
    differences = [b.astype(float) - f.astype(float)
                   for b, f in zip(correct["both"], correct["face"])]
    out["voice_adds"] = {
        "per_seed": [paired_difference(d, held_speakers) for d in differences],
        # the seeds' mean difference clip by clip, its SE over the speakers
        "pooled": paired_difference(np.mean(differences, 0), held_speakers)}
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m train.ceiling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True, help="store whose training clips train "
                        "the readers")
    parser.add_argument("--pool", help="store of the clips scored (default: --store)")
    parser.add_argument("--split", default="val", help="the pool's split scored (default val)")
    parser.add_argument("--vq-visual", required=True)
    parser.add_argument("--vq-audio", required=True)
    parser.add_argument("--readers", nargs="+", choices=READERS, default=["mlp"],
                        help="mlp (clip statistics; default) and/or seq (per-frame features)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, nargs=2, default=[60, 25], metavar=("MLP", "SEQ"),
                        help="training epochs of each reader (default 60 25)")
    parser.add_argument("--crop", type=int, default=60,
                        help="frames of the random windows the sequence reader trains on")
    parser.add_argument("--out", help="write the figures here (JSON)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (give 1 when other jobs share the machine)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    vq_audio, vq_visual = load_stage1(args.vq_audio), load_stage1(args.vq_visual)
    store = Store(args.store)
    pool = Store(args.pool) if args.pool else store
    train_clips = labelled(store.split_clips("train"))
    held_clips = labelled(pool.split_clips(args.split))
    if not train_clips:
        raise MDVAEError(f"{args.store} has no labelled training clips to train readers on")
    if not held_clips:
        raise MDVAEError(f"{pool.path} has no labelled clips in its {args.split!r} split")
    common.check_unseen(held_clips, store)
    features = {"train": cached_features(store, vq_audio, vq_visual)[:2],
                "held": cached_features(pool, vq_audio, vq_visual)[:2]}

    def inputs(kind: str, where: str, clips: list) -> dict:
        audio, visual = features[where]
        if kind == "mlp":
            return feature_stats(audio, visual, clips)
        return {name: [np.asarray(stream[c.start:c.start + c.length]) for c in clips]
                for name, stream in (("audio", audio), ("visual", visual))}

    results = {"store": args.store, "pool": str(pool.path), "split": args.split,
               "train_clips": len(train_clips), "held_clips": len(held_clips),
               "held_speakers": len({c.speaker for c in held_clips}), "readers": {}}
    def save() -> None:
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(results, indent=1))

    for kind in args.readers:
        def keep(partial: dict, kind: str = kind) -> None:
            results["readers"][kind] = partial
            save()

        keep(read_room(
            inputs(kind, "train", train_clips), [c.emotion for c in train_clips],
            inputs(kind, "held", held_clips), [c.emotion for c in held_clips],
            [c.speaker for c in held_clips], [c.level or 0 for c in held_clips], kind=kind,
            seeds=args.seeds, epochs=args.epochs[READERS.index(kind)], crop=args.crop,
            after_each=keep))
    print(format_room(results))
    return results


def format_room(results: dict) -> str:
    """A markdown table: each reader's accuracy per stream (by level) and what the voice
    adds to the face."""
    lines = [f"Emotion read from the stage-1 features of {results['held_clips']} clips of "
             f"{results['held_speakers']} held-out speakers ({results['pool']}, "
             f"{results['split']}); readers trained on {results['train_clips']} clips of "
             f"{results['store']}; mean over the seeds", ""]
    for kind, r in results["readers"].items():
        levels = list(r["streams"]["face"]["by_level"])
        lines += [f"| {kind} ({len(r['seeds'])} seeds) | all | "
                  + " | ".join(f"level {lv}" for lv in levels) + " | per seed |",
                  "|---|---|" + "---|" * len(levels) + "---|"]
        for name, s in r["streams"].items():
            lines.append(f"| {name} | {s['accuracy']:.3f} | "
                         + " | ".join(f"{s['by_level'][lv]:.3f}" for lv in levels) + " | "
                         + " / ".join(f"{p['all']:.3f}" for p in s["per_seed"]) + " |")
        pooled = r["voice_adds"]["pooled"]
        lines += ["", f"What the voice adds ({kind}): both minus face "
                  f"{pooled['difference']:+.3f} ± {pooled['se_speakers']:.3f} (paired, SE over "
                  "speakers; per seed "
                  + " / ".join(f"{d['difference']:+.3f}" for d in r["voice_adds"]["per_seed"])
                  + ")", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
