"""Fit the emotion heads: multinomial logistic regression on the posterior mean of w.

One head per static latent: the MDVAE's q(w | x_a, x_v), and, when given, the A-DSAE's
q(w | x_a) and the V-DSAE's q(w | x_v). Each clip of the training split is encoded whole;
accuracy is reported on the validation and test speakers. The heads are written as a
small bundle (safetensors + config) that ``train.export`` folds into the release.
``--probe-groups`` also fits a probe on each latent group's clip means (w, and the time
averages of z_av, z_a, z_v, or of a DSAE's z) to show where the emotion ended up, and one
on the clip means of the stage-1 features themselves: how much emotion a linear read-out
finds in what stage 2 is given.

    python -m train.emotion --store data/synthetic --vq-visual runs/vq_visual \\
        --vq-audio runs/vq_audio --mdvae runs/mdvae --dsae-audio runs/dsae_audio \\
        --dsae-visual runs/dsae_visual --out runs/emotion
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from mdvae.bundle import save_bundle
from mdvae.components import DSAE_AUDIO, DSAE_VISUAL, EMOTION_READERS, MDVAE_MODEL
from mdvae.data.store import Store
from mdvae.errors import MDVAEError
from mdvae.eval.diagnostics import clip_means, feature_means, labelled
from mdvae.model.emotion import fit_emotion_head
from train.runs import cached_features, load_stage1, load_stage2

# bundle component name of each head -> the stage-2 model whose w it reads
HEADS = {r.head: r.model for r in EMOTION_READERS.values()}


def accuracy(head, features: np.ndarray, clips: list) -> float:
    """Share of `clips` whose emotion the head reads right from `features` (N, L)."""
    pred = head(torch.from_numpy(features)).argmax(-1).numpy()
    truth = np.array([head.config.labels.index(c.emotion) for c in clips])
    return float((pred == truth).mean())


def probe_groups(train: dict[str, np.ndarray], train_clips: list,
                 test: dict[str, np.ndarray], test_clips: list, *, c: float) -> dict:
    """Where emotion lives: a logistic-regression probe per latent group (clip means, as in
    `clip_means`) and one on all groups together; test accuracy of each."""
    train = {**train, "all": np.concatenate(list(train.values()), axis=1)}
    test = {**test, "all": np.concatenate(list(test.values()), axis=1)}
    labels = [clip.emotion for clip in train_clips]
    return {name: accuracy(fit_emotion_head(train[name], labels, c=c), test[name], test_clips)
            for name in train}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m train.emotion", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True)
    parser.add_argument("--vq-visual", required=True)
    parser.add_argument("--vq-audio", required=True)
    parser.add_argument("--mdvae", required=True, help="stage-2 MDVAE run folder")
    parser.add_argument("--dsae-audio", help="stage-2 A-DSAE run folder")
    parser.add_argument("--dsae-visual", help="stage-2 V-DSAE run folder")
    parser.add_argument("--c", type=float, default=1.0, help="inverse L2 strength")
    parser.add_argument("--out", required=True, help="folder for the heads")
    parser.add_argument("--probe-groups", action="store_true",
                        help="also report emotion probes on every latent group's clip means "
                             "and on the stage-1 features' (test split): does the emotion "
                             "sit in w or in the z's, and how much of it did stage 2 keep?")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: all cores; give 1 when other "
                             "jobs share the machine, or they slow each other down many times)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    store = Store(args.store)
    audio, visual, _ = cached_features(store, load_stage1(args.vq_audio),
                                       load_stage1(args.vq_visual))
    runs = {MDVAE_MODEL: args.mdvae, DSAE_AUDIO: args.dsae_audio, DSAE_VISUAL: args.dsae_visual}
    train_clips = labelled(store.split_clips("train"))
    if not train_clips:
        raise MDVAEError(f"{args.store} has no labelled training clips to fit emotions on")
    heads, report, info = {}, {}, {}
    test_clips = labelled(store.split_clips("test"))
    if args.probe_groups and test_clips:
        groups = probe_groups(feature_means(audio, visual, train_clips), train_clips,
                              feature_means(audio, visual, test_clips), test_clips, c=args.c)
        info["stage1_feature_probes"] = groups
        print(f"{'stage-1 features':>22}: test accuracy "
              + ", ".join(f"{k} {v:.3f}" for k, v in groups.items()))
    for head_name, model_name in HEADS.items():
        if not runs[model_name]:
            continue
        model = load_stage2(runs[model_name])
        means = {"train": clip_means(model, audio, visual, train_clips)}
        head = fit_emotion_head(means["train"]["w"], [c.emotion for c in train_clips],
                                c=args.c)
        heads[head_name] = head
        scores = {}
        for split in ("train", "val", "test"):
            clips = labelled(store.split_clips(split))
            if not clips:
                continue
            if split not in means:  # the training clips were encoded for the fit already
                means[split] = clip_means(model, audio, visual, clips, show=False)
            scores[split] = accuracy(head, means[split]["w"], clips)
        report[head_name] = {"reads": model_name, "accuracy": scores, "clips": len(train_clips),
                             "c": args.c}
        print(f"{head_name:>22}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
        if args.probe_groups and "test" in means:
            groups = probe_groups(means["train"], train_clips, means["test"], test_clips,
                                  c=args.c)
            report[head_name]["test_accuracy_by_group"] = groups
            print(f"{'':>22}  test accuracy by latent group: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in groups.items()))
    save_bundle(args.out, heads, info={"emotion": report, **info},
                card="Emotion heads (logistic regression on posterior means of w).\n")
    return report


if __name__ == "__main__":
    main()
