"""Fit the emotion heads: multinomial logistic regression on the posterior mean of w.

One head per static latent: the MDVAE's q(w | x_a, x_v), and, when given, the A-DSAE's
q(w | x_a) and the V-DSAE's q(w | x_v). Each clip of the training split is encoded whole;
accuracy is reported on the validation and test speakers. The heads are written as a
small bundle (safetensors + config) that ``train.export`` folds into the release.
``--probe-groups`` also fits a probe on each latent group's clip means (w, and the time
averages of z_av, z_a, z_v, or of a DSAE's z) to show where the emotion ended up, and one
on the clip means of the stage-1 features themselves: how much emotion a linear read-out
finds in what stage 2 is given.

``--reference-head`` also fits, for each model given, a head that reads a clip's w against
the same person's neutral clip (`mdvae.model.emotion.ReferenceEmotionHead`; components
``emotion_reference`` for the MDVAE, which the app uses, and ``emotion_reference_dsae_audio``
/ ``emotion_reference_dsae_visual``, which ``train.evaluate`` compares it with), on every
pair of a training speaker's neutral clip and another of their clips. A speaker
needs two neutral clips for the neutral class itself: ``--references`` adds stores of more
clips of the same people, matched by speaker name (the synthetic benchmark has one neutral
clip per speaker: ``train.prepare synthetic --emotions neutral`` draws more). ``--pool``, a
store of new speakers (its validation split, with the references' clips of them), gives the
head's temperature and the figures the app quotes: accuracy against the plain head on the
same clips, and how often the same-person check passes two clips of one person and of two.

    python -m train.emotion --store data/synthetic --vq-visual runs/vq_visual \\
        --vq-audio runs/vq_audio --mdvae runs/mdvae --dsae-audio runs/dsae_audio \\
        --dsae-visual runs/dsae_visual --out runs/emotion
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from mdvae.bundle import save_bundle
from mdvae.calibration import (
    fit_temperature,
)
from mdvae.components import (
    DSAE_AUDIO,
    DSAE_VISUAL,
    EMOTION_READERS,
    EMOTION_REFERENCE,
    MDVAE_MODEL,
)
from mdvae.data.store import Store
from mdvae.errors import MDVAEError
from mdvae.eval import experiments as ev
from mdvae.eval.diagnostics import clip_means, feature_means, labelled
from mdvae.model.emotion import (
    EmotionHead,
    ReferenceEmotionHead,
    fit_emotion_head,
    fit_reference_head,
    reference_pairs,
)
from train import common
from train.runs import cached_features, load_stage1, load_stage2


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


class Encoded:
    """The MDVAE's clip means of w for a set of speakers' clips, from one store and the
    reference stores' clips of the same speakers: w (N, L), labels and speakers (N,).
    `known`: the first source's w when it was encoded already."""

    def __init__(self, model, sources: list[tuple[np.ndarray, np.ndarray, list]],
                 known: np.ndarray | None = None):
        parts = [known if i == 0 and known is not None else
                 clip_means(model, audio, visual, clips, show=False)["w"]
                 for i, (audio, visual, clips) in enumerate(sources) if clips]
        self.w = np.concatenate(parts) if parts else np.empty((0, model.config.w_dim))
        chosen = [c for _, _, clips in sources for c in clips]
        self.labels = np.array([c.emotion for c in chosen])
        self.speakers = np.array([c.speaker for c in chosen])
        self.levels = np.array([c.level or 0 for c in chosen])  # 0: not given


def with_references(clips: list, features: tuple[np.ndarray, np.ndarray],
                    references: list[tuple[Store, np.ndarray, np.ndarray]]) -> list:
    """(audio, visual, clips) sources: `clips` with their store's `features`, then each
    reference store's labelled clips of the same speakers."""
    speakers = {c.speaker for c in clips}
    return [(*features, clips)] + [
        (audio, visual, [c for c in labelled(store.clips) if c.speaker in speakers])
        for store, audio, visual in references]


def scores_of(head: ReferenceEmotionHead, plain: EmotionHead, data: Encoded,
              temperature: float) -> dict:
    """`mdvae.eval.experiments.reference_study` of `data`'s clips."""
    return ev.reference_study(head, plain, data.w, data.labels, data.speakers, data.levels,
                              temperature)


def reference_sources(args, store: Store, features: tuple[np.ndarray, np.ndarray], vq
                      ) -> dict[str, list]:
    """What every model's reference head reads, the same clips for each: split of the store
    (and "pool", with --pool) -> its (audio, visual, clips) sources, `with_references`."""
    references = [(ref, *cached_features(ref, *vq)[:2]) for ref in map(Store, args.references)]
    sources = {split: with_references(labelled(store.split_clips(split)), features, references)
               for split in ("train", "val", "test")}
    if args.pool:
        pool = Store(args.pool)
        common.check_unseen(labelled(pool.split_clips("val")), store)
        sources["pool"] = with_references(labelled(pool.split_clips("val")),
                                          cached_features(pool, *vq)[:2], references)
    return sources


def fit_reference(args, model_name: str, model, plain: EmotionHead, sources: dict[str, list],
                  known: dict[str, np.ndarray]
                  ) -> tuple[ReferenceEmotionHead, dict, dict[str, Encoded]]:
    """--reference-head: the head that reads `model`'s w against the same person's neutral
    clip, fitted on the training speakers' pairs, its report (per split of the store, and on
    the pool with its temperature), and the clips it read (split or "pool" -> `Encoded`).
    `sources`: `reference_sources`; `known`: split -> the w of its labelled clips, already
    encoded for the plain head."""
    data = {split: Encoded(model, parts, known.get(split)) for split, parts in sources.items()}
    head = fit_reference_head(data["train"].w, data["train"].labels, data["train"].speakers,
                              c=args.c, max_references=args.max_references)
    classes = sorted(set(data["train"].labels[reference_pairs(
        data["train"].labels, data["train"].speakers, max_references=args.max_references)[0]]))
    report = {"reads": model_name, "reference": head.config.reference, "c": args.c,
              "references": list(args.references), "classes_fitted": classes,
              "max_references": args.max_references,
              "same_person_within": head.config.same_person_within}
    temperature = 1.0
    if "pool" in data:
        pool_data = data["pool"]
        temperature = fit_temperature(*ev.reference_pair_logits(
            head, pool_data.w, pool_data.labels, pool_data.speakers)[2:])
        report["pool"] = {"store": args.pool, "split": "val",
                          **scores_of(head, plain, pool_data, temperature)}
        report["calibration"] = {
            "temperature": temperature,
            "fitted_on": f"the head's logits of {report['pool']['pairs']} same-speaker pairs "
                         f"of {report['pool']['speakers']} new speakers ({args.pool}, val)"}
    scores = {split: scores_of(head, plain, d, temperature) for split, d in data.items()
              if split != "pool" and len(reference_pairs(d.labels, d.speakers)[0])}
    report["accuracy"] = {split: s["accuracy"] for split, s in scores.items()}
    report["splits"] = scores
    if "calibration" in report and "test" in scores:
        report["calibration"]["test"] = {"clips": scores["test"]["pairs"], **{
            k: scores["test"][k] for k in ("accuracy", "ece_before", "ece_after", "ece_floor",
                                           "nll_before", "nll_after", "sure_from", "before",
                                           "after")}}
    return head, report, data


def reference_margins(heads: dict, report: dict, read: dict[str, dict[str, Encoded]]) -> None:
    """The MDVAE's reference head against each one-stream model's on the same pairs, per
    split and on the pool: the paired difference (MDVAE minus it, the speakers as the unit),
    into that model's scores as "mdvae_minus". `read`: model -> what `fit_reference` read."""
    mine, head = read[MDVAE_MODEL], heads[EMOTION_REFERENCE]
    for r in EMOTION_READERS.values():
        if r.model == MDVAE_MODEL or r.model not in read:
            continue
        scores = {**report[r.reference_head]["splits"],
                  **({"pool": report[r.reference_head]["pool"]}
                     if "pool" in report[r.reference_head] else {})}
        for where, s in scores.items():
            d = mine[where]
            s["mdvae_minus"] = ev.reference_margin(
                (head, d.w), (heads[r.reference_head], read[r.model][where].w), d.labels,
                d.speakers)
            m = s["mdvae_minus"]
            print(f"{'':>22}  {where}: MDVAE minus {r.title} against the same clip "
                  f"{m['difference']:+.3f} ± {_fmt(m.get('se_speakers'))} (SE over speakers)")


def print_reference(name: str, report: dict) -> None:
    ref = report["reference"]
    print(f"{name:>22}: against the same person's {ref} clip "
          f"(pairs; plain head on the same clips)")
    rows = {**report["splits"], **({"pool": report["pool"]} if "pool" in report else {})}
    for name, s in rows.items():
        print(f"{name:>22}  {s['pairs']} pairs of {s['speakers']} speakers: "
              f"{s['accuracy']:.3f} (plain {s['plain_accuracy']:.3f}); {ref} "
              f"{_fmt(s[f'accuracy_{ref}'])} (plain {_fmt(s[f'plain_accuracy_{ref}'])}), others "
              f"{s['accuracy_others']:.3f} (plain {s['plain_accuracy_others']:.3f}); same "
              f"person passed {s['same_person_passed']:.3f}, two people "
              f"{_fmt(s['other_person_passed'], 4)}")
        g = s["gain_over_plain"]
        print(f"{'':>22}  gain over the plain head {g['difference']:+.3f} ± "
              f"{_fmt(g.get('se_speakers'))} (SE over speakers); by level: " + ", ".join(
                  f"{lv} {e['accuracy']:.3f} (plain {e['plain_accuracy']:.3f})"
                  for lv, e in s["by_level"].items()))
    if "calibration" in report:
        print(f"{'':>22}  temperature {report['calibration']['temperature']:.2f} "
              f"({report['calibration']['fitted_on']})")


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


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
    parser.add_argument("--reference-head", action="store_true",
                        help="also fit, for each model given, a head that reads its w "
                             "against the same person's neutral clip (emotion_reference, "
                             "emotion_reference_dsae_audio, emotion_reference_dsae_visual)")
    parser.add_argument("--references", nargs="+", default=[], metavar="STORE",
                        help="stores of more clips of the same speakers, matched by name "
                             "(e.g. neutral ones: train.prepare synthetic --emotions neutral); "
                             "implies --reference-head")
    parser.add_argument("--max-references", type=int, default=8,
                        help="fit on each training speaker's first N neutral clips as references "
                             "(default 8: a MEAD speaker has about 40, each paired with every "
                             "other clip of theirs)")
    parser.add_argument("--pool", help="a store of new speakers whose validation clips (with "
                        "--references' clips of them) calibrate the reference head and score "
                        "it and its same-person check")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: all cores; give 1 when other "
                             "jobs share the machine, or they slow each other down many times)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.pool and not (args.reference_head or args.references):
        parser.error("--pool scores the reference head: give --reference-head or --references")
    store = Store(args.store)
    vq = load_stage1(args.vq_audio), load_stage1(args.vq_visual)
    audio, visual, _ = cached_features(store, *vq)
    runs = {MDVAE_MODEL: args.mdvae, DSAE_AUDIO: args.dsae_audio, DSAE_VISUAL: args.dsae_visual}
    train_clips = labelled(store.split_clips("train"))
    if not train_clips:
        raise MDVAEError(f"{args.store} has no labelled training clips to fit emotions on")
    heads, report, info = {}, {}, {}
    read: dict[str, dict[str, Encoded]] = {}  # model -> the clips its reference head read
    sources = (reference_sources(args, store, (audio, visual), vq)
               if args.reference_head or args.references else {})
    test_clips = labelled(store.split_clips("test"))
    if args.probe_groups and test_clips:
        groups = probe_groups(feature_means(audio, visual, train_clips), train_clips,
                              feature_means(audio, visual, test_clips), test_clips, c=args.c)
        info["stage1_feature_probes"] = groups
        print(f"{'stage-1 features':>22}: test accuracy "
              + ", ".join(f"{k} {v:.3f}" for k, v in groups.items()))
    for reader in EMOTION_READERS.values():
        head_name, model_name = reader.head, reader.model
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
        if sources:
            name = reader.reference_head
            heads[name], report[name], read[model_name] = fit_reference(
                args, model_name, model, head, sources,
                {split: m["w"] for split, m in means.items()})
            print_reference(name, report[name])
    if MDVAE_MODEL in read:
        fitted = report[EMOTION_REFERENCE]
        if fitted["reference"] not in fitted["classes_fitted"]:
            print(f"warning: no training speaker has two {fitted['reference']} clips, so the "
                  f"reference head never answers {fitted['reference']}; give --references "
                  f"(train.prepare synthetic --emotions {fitted['reference']})",
                  file=sys.stderr)
        reference_margins(heads, report, read)
    save_bundle(args.out, heads, info={"emotion": report, **info},
                card="Emotion heads (logistic regression on posterior means of w).\n")
    return report


if __name__ == "__main__":
    main()
