"""What a bundle knows about its own held-out clips, for `train.export --reference-store`.

- Familiarity: the four scores of `mdvae.familiarity.clip_scores` on every TEST clip of the
  store (whole clips, from the store's frames and spectrograms, as the app computes them
  for an upload), summarised as percentiles.
- Emotion: for each emotion head, the temperature fitted on out-of-fold logits of the
  TRAINING and VALIDATION speakers' clips (the head refitted without each fold of speakers),
  or, given a pool of new speakers (`pool`), on the shipped head's logits of the pool's
  clips; and on the test clips the expected calibration error before and after (beside what
  a calibrated head would read on as many clips), the accuracy, and what abstaining below
  `mdvae.calibration.SURE_FROM` gives. The out-of-fold copies never saw their speakers, but
  the encoder that gives w was trained on them, so their w is easier to read than a new
  speaker's and a temperature fitted there can make a head over-confident on new people
  (research log, "Session 31"); a pool's speakers are new to the encoder and the head alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from mdvae.calibration import (
    SURE_FROM,
    calibrated,
    ece_noise_floor,
    expected_calibration_error,
    fit_record,
    fit_temperature,
    negative_log_likelihood,
    selective,
)
from mdvae.components import EMOTION_READERS, MDVAE_MODEL, VQ_AUDIO, VQ_VISUAL
from mdvae.data.store import Store
from mdvae.errors import MDVAEError
from mdvae.eval.diagnostics import clip_means, labelled
from mdvae.familiarity import clip_scores, reference_table
from mdvae.model.emotion import out_of_fold_logits
from mdvae.stage1.codec import AVCodec
from train.runs import cached_features

CALIBRATION_FOLDS = 5


@torch.no_grad()
def familiarity_table(components: dict, store: Store, split: str = "test", *,
                      show: bool = True) -> dict[str, Any]:
    """info["familiarity"]: each score's percentiles over the store's `split` clips."""
    codec = AVCodec(components[VQ_AUDIO], components[VQ_VISUAL])
    clips = store.split_clips(split)
    scores: dict[str, list[float]] = {}
    for info in tqdm(clips, desc=f"familiarity of the {split} clips", disable=not show):
        clip = store.clip(info.index)
        one = clip_scores(components[MDVAE_MODEL], codec, np.array(clip["frames"]),
                          np.array(clip["power"], np.float32))
        for name, value in one.items():
            scores.setdefault(name, []).append(value)
    return reference_table({k: np.array(v) for k, v in scores.items()}, store=str(store.path),
                           split=split)


@torch.no_grad()
def emotion_calibration(components: dict, store: Store, *, c: Mapping[str, float] | None = None,
                        folds: int = CALIBRATION_FOLDS, show: bool = True,
                        pool: Store | None = None, pool_split: str = "val"
                        ) -> dict[str, dict[str, Any]]:
    """Per emotion head in `components`: {"temperature", "fitted_on", "out_of_fold",
    ["pool",] "test": {...}}.

    The out-of-fold logits: the training and validation speakers' clips, each read by the
    head refitted (`out_of_fold_logits`, inverse L2 strength c[head], default 1.0 as
    `train.emotion`'s) on the other folds of speakers; each entry records the temperature
    fitted on its clips and the ECE before and after it. The shipped temperature is the
    pool's when `pool` is given (the shipped head's logits of its `pool_split` clips, whose
    speakers the caller has checked are new), else the out-of-fold one; the shipped head is
    then scored with it on `store`'s test clips.
    """
    audio, visual, _ = cached_features(store, components[VQ_AUDIO], components[VQ_VISUAL],
                                       write=False)
    clips = {split: labelled(store.split_clips(split)) for split in ("train", "val", "test")}
    if pool is not None:
        pool_clips = labelled(pool.split_clips(pool_split))
        if not pool_clips:
            raise MDVAEError(f"the calibration pool {pool.path} has no labelled {pool_split} "
                             "clips")
        pool_audio, pool_visual, _ = cached_features(pool, components[VQ_AUDIO],
                                                     components[VQ_VISUAL])
    fit_clips = clips["train"] + clips["val"]
    speakers = np.array([info.speaker for info in fit_clips])
    out = {}
    for reader in EMOTION_READERS.values():
        if reader.model not in components or reader.head not in components:
            continue
        head = components[reader.head]
        labels = {split: np.array([head.config.labels.index(info.emotion) for info in chosen])
                  for split, chosen in clips.items()}
        w = {split: clip_means(components[reader.model], audio, visual, chosen, show=show)["w"]
             for split, chosen in clips.items()}  # (N, Lw) each
        features = np.concatenate([w["train"], w["val"]])
        fit_labels = np.concatenate([labels["train"], labels["val"]])
        oof = out_of_fold_logits(features, [head.config.labels[i] for i in fit_labels],
                                 speakers, folds=folds, label_names=head.config.labels,
                                 c=(c or {}).get(reader.head, 1.0))  # (N, 8)
        t_oof = fit_temperature(oof, fit_labels)
        n_folds = min(folds, len(set(speakers)))
        entry = {
            "temperature": t_oof,
            "fitted_on": f"out-of-fold logits of {len(fit_labels)} clips of "
                         f"{len(set(speakers))} training and validation speakers ({n_folds} "
                         f"folds by speaker; NLL {negative_log_likelihood(oof, fit_labels):.3f}"
                         f" -> {negative_log_likelihood(oof, fit_labels, t_oof):.3f})",
            "out_of_fold": {
                "clips": int(len(fit_labels)),
                "folds": n_folds,
                "temperature": t_oof,
                **fit_record(oof, fit_labels, t_oof),
            },
        }
        if pool is not None:
            pool_w = clip_means(components[reader.model], pool_audio, pool_visual, pool_clips,
                                show=show)["w"]
            pool_logits = head(torch.from_numpy(pool_w)).double().numpy()
            pool_y = np.array([head.config.labels.index(info.emotion) for info in pool_clips])
            t_pool = fit_temperature(pool_logits, pool_y)
            n_speakers = len({info.speaker for info in pool_clips})
            entry["temperature"] = t_pool
            entry["fitted_on"] = (
                f"the head's logits of {len(pool_y)} clips of {n_speakers} new speakers "
                f"({pool.path}, {pool_split}; NLL "
                f"{negative_log_likelihood(pool_logits, pool_y):.3f} -> "
                f"{negative_log_likelihood(pool_logits, pool_y, t_pool):.3f})")
            entry["pool"] = {"store": str(pool.path), "split": pool_split,
                             "clips": int(len(pool_y)), "speakers": n_speakers,
                             "temperature": t_pool, **fit_record(pool_logits, pool_y, t_pool)}
        t = entry["temperature"]
        logits = head(torch.from_numpy(w["test"])).double().numpy()  # (N_test, 8)
        y = labels["test"]
        before, after = calibrated(logits, 1.0), calibrated(logits, t)
        out[reader.head] = {
            **entry,
            "test": {
                "clips": int(len(y)),
                "accuracy": float((after.argmax(1) == y).mean()),
                "ece_before": expected_calibration_error(before, y),
                "ece_after": expected_calibration_error(after, y),
                # what a perfectly calibrated head would read on as many clips
                "ece_floor": ece_noise_floor(after),
                "nll_before": negative_log_likelihood(logits, y),
                "nll_after": negative_log_likelihood(logits, y, t),
                "sure_from": SURE_FROM,
                "before": selective(before, y),
                "after": selective(after, y),
            },
        }
    return out


def reference_info(components: dict, store_path: str, *, emotion: Mapping | None = None,
                   familiarity: bool = True, show: bool = True, pool: Store | None = None,
                   pool_split: str = "val") -> dict[str, Any]:
    """The info entries `--reference-store` adds: "familiarity" (unless `familiarity` is
    False: another store gives it), and per head the calibration (to merge into
    info["emotion"][head]), its temperature from `pool`'s `pool_split` clips when given;
    `emotion`: the bundle's info["emotion"], whose "c" (the heads' L2 strength, when
    recorded) the refits reuse."""
    store = Store(store_path)
    c = {head: float(entry["c"]) for head, entry in (emotion or {}).items() if "c" in entry}
    out = {"calibration": emotion_calibration(components, store, c=c, show=show, pool=pool,
                                              pool_split=pool_split)}
    if familiarity:
        out["familiarity"] = familiarity_table(components, store, show=show)
    return out
