"""What a bundle knows about its own held-out clips, for `train.export --reference-store`.

- Familiarity: the three scores of `mdvae.familiarity.clip_scores` on every TEST clip of the
  store (whole clips, from the store's frames and spectrograms, as the app computes them
  for an upload), summarised as percentiles.
- Emotion: for each emotion head, the temperature fitted on the VALIDATION clips' logits,
  and on the test clips the expected calibration error before and after, the accuracy, and
  what abstaining below `mdvae.calibration.SURE_FROM` gives.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from mdvae.calibration import (
    SURE_FROM,
    calibrated,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    selective,
)
from mdvae.components import EMOTION_READERS, MDVAE_MODEL, VQ_AUDIO, VQ_VISUAL
from mdvae.data.store import Store
from mdvae.eval.diagnostics import clip_means, labelled
from mdvae.familiarity import clip_scores, reference_table
from mdvae.stage1.codec import AVCodec
from train.runs import cached_features


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
def emotion_calibration(components: dict, store: Store, *, show: bool = True
                        ) -> dict[str, dict[str, Any]]:
    """Per emotion head in `components`: {"temperature", "fitted_on", "test": {...}}."""
    audio, visual, _ = cached_features(store, components[VQ_AUDIO], components[VQ_VISUAL],
                                       write=False)
    clips = {split: labelled(store.split_clips(split)) for split in ("val", "test")}
    out = {}
    for reader in EMOTION_READERS.values():
        if reader.model not in components or reader.head not in components:
            continue
        head = components[reader.head]
        logits, labels = {}, {}
        for split, chosen in clips.items():
            w = clip_means(components[reader.model], audio, visual, chosen, show=show)["w"]
            logits[split] = head(torch.from_numpy(w)).double().numpy()  # (N, 8)
            labels[split] = np.array([head.config.labels.index(c.emotion) for c in chosen])
        t = fit_temperature(logits["val"], labels["val"])
        before = calibrated(logits["test"], 1.0)
        after = calibrated(logits["test"], t)
        out[reader.head] = {
            "temperature": t,
            "fitted_on": f"{len(labels['val'])} validation clips (NLL "
                         f"{negative_log_likelihood(logits['val'], labels['val']):.3f} -> "
                         f"{negative_log_likelihood(logits['val'], labels['val'], t):.3f})",
            "test": {
                "clips": int(len(labels["test"])),
                "accuracy": float((after.argmax(1) == labels["test"]).mean()),
                "ece_before": expected_calibration_error(before, labels["test"]),
                "ece_after": expected_calibration_error(after, labels["test"]),
                "nll_before": negative_log_likelihood(logits["test"], labels["test"]),
                "nll_after": negative_log_likelihood(logits["test"], labels["test"], t),
                "sure_from": SURE_FROM,
                "before": selective(before, labels["test"]),
                "after": selective(after, labels["test"]),
            },
        }
    return out


def reference_info(components: dict, store_path: str, *, show: bool = True
                   ) -> dict[str, Any]:
    """The info entries `--reference-store` adds: "familiarity", and per head the
    calibration (to merge into info["emotion"][head])."""
    store = Store(store_path)
    return {"familiarity": familiarity_table(components, store, show=show),
            "calibration": emotion_calibration(components, store, show=show)}
