"""train.ceiling: supervised readers of the stage-1 features, per stream and together."""

from __future__ import annotations

import numpy as np
import pytest

from train import ceiling


def _clips(rng, n, t, label_stream):
    """n clips of t frames, 4 emotions: the label moves the mean of 2 of 6 dimensions of one
    stream only; the other stream is noise."""
    labels = rng.integers(0, 4, n)
    data = {}
    for stream in ("audio", "visual"):
        frames = rng.normal(size=(n, t, 6)).astype(np.float32)
        if stream == label_stream:
            frames[:, :, :2] += 1.5 * np.stack([np.cos(labels * np.pi / 2),
                                                np.sin(labels * np.pi / 2)], 1)[:, None]
        data[stream] = list(frames)
    return data, [f"e{k}" for k in labels]


@pytest.mark.parametrize("kind", ["mlp", "seq"])
def test_readers_find_the_emotion_where_it_is_and_not_in_noise(kind):
    rng = np.random.default_rng(0)
    train, train_labels = _clips(rng, 240, 12, "visual")
    held, held_labels = _clips(rng, 120, 12, "visual")
    if kind == "mlp":  # clip statistics: mean, spread, change, as feature_stats gives them
        def stats(d):
            return {s: np.stack([np.concatenate([a.mean(0), a.std(0),
                                                 np.abs(np.diff(a, axis=0)).mean(0)])
                                 for a in v]) for s, v in d.items()}
        train, held = stats(train), stats(held)
    speakers = [f"s{i % 10}" for i in range(120)]
    seen = []  # what a long run would have saved after each stream
    out = ceiling.read_room(train, train_labels, held, held_labels, speakers, [1] * 120,
                            kind=kind, seeds=[0], epochs=30, crop=8,
                            after_each=lambda partial: seen.append(list(partial["streams"])))
    assert seen == [["voice"], ["voice", "face"], ["voice", "face", "both"]]
    s = out["streams"]
    # 4 classes, neighbouring means of the face 2.1 noise SDs apart in a frame, 7 in the mean
    # of a 12-frame clip: read almost always; the voice is noise, so at most chance plus a
    # few SEs (SE of 120 items at 0.25: 0.04)
    assert s["face"]["accuracy"] > 0.9 and s["both"]["accuracy"] > 0.85
    assert s["voice"]["accuracy"] < 0.25 + 4 * 0.04
    added = out["voice_adds"]["per_seed"][0]
    assert added["difference"] == pytest.approx(s["both"]["accuracy"] - s["face"]["accuracy"])
    assert added["speakers"] == 10
    assert s["face"]["by_level"] == {"1": s["face"]["accuracy"]}
