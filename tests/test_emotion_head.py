import numpy as np
import pytest
import torch

from mdvae.calibration import fit_temperature
from mdvae.errors import MDVAEError
from mdvae.labels import EMOTIONS
from mdvae.model.emotion import fit_emotion_head, out_of_fold_logits


def clustered(n_per, classes, dim=6, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, size=(len(classes), dim))
    x = np.concatenate([c + rng.normal(0, 1, (n_per, dim)) for c in centres])
    y = [name for name in classes for _ in range(n_per)]
    return x, y


def test_head_matches_sklearn_and_separates_clusters():
    from sklearn.linear_model import LogisticRegression

    x, y = clustered(40, EMOTIONS)
    head = fit_emotion_head(x, y)
    logits = head(torch.from_numpy(x)).detach().numpy()
    assert (logits.argmax(1) == np.repeat(np.arange(8), 40)).mean() > 0.95
    mean, std = x.mean(0), x.std(0) + 1e-6
    ref = LogisticRegression(max_iter=2000).fit((x - mean) / std, np.repeat(np.arange(8), 40))
    np.testing.assert_allclose(
        torch.softmax(torch.from_numpy(logits), -1).numpy(),
        ref.predict_proba((x - mean) / std),
        atol=1e-4,
    )
    probs = head.probabilities(torch.from_numpy(x[0]))
    assert set(probs) == set(EMOTIONS) and sum(probs.values()) == pytest.approx(1.0)


def test_absent_classes_are_never_predicted_and_two_classes_work():
    x, y = clustered(30, ("happy", "sad"))
    head = fit_emotion_head(x, y)
    probs = head.probabilities(torch.from_numpy(x[:5]))
    for p in probs:
        assert p["angry"] < 1e-6 and p["happy"] + p["sad"] == pytest.approx(1.0)
    assert probs[0]["happy"] > 0.9  # first rows are the "happy" cluster


def test_bad_labels_are_refused():
    x, _ = clustered(5, ("happy", "sad"))
    with pytest.raises(MDVAEError, match="unknown labels"):
        fit_emotion_head(x, ["joy"] * 10)
    with pytest.raises(MDVAEError, match="fewer than two"):
        fit_emotion_head(x, ["sad"] * 10)


def speakers_with_a_habit(n_speakers, clips=8, dim=40, seed=0):
    """Clips whose features hold a weak emotion signal plus each speaker's own offset, and
    whose speakers each favour one emotion: a head that has seen a speaker reads its
    habit back, one that has not can only use the emotion signal."""
    emotion_dirs = np.random.default_rng(99).normal(0, 1, (len(EMOTIONS), dim))  # shared
    rng = np.random.default_rng(seed)
    x, y, g = [], [], []
    for s in range(n_speakers):
        offset = rng.normal(0, 2, dim)
        habit = rng.integers(len(EMOTIONS))
        for k in range(clips):
            label = habit if k < clips // 2 else rng.integers(len(EMOTIONS))
            x.append(offset + 0.3 * emotion_dirs[label] + rng.normal(0, 1, dim))
            y.append(EMOTIONS[label])
            g.append(f"spk{s}")
    return np.array(x), np.array(y), np.array(g)


def test_out_of_fold_logits_come_from_heads_that_never_saw_the_speaker():
    x, y, g = speakers_with_a_habit(60)
    truth = np.array([EMOTIONS.index(v) for v in y])
    in_sample = fit_emotion_head(x, y)(torch.from_numpy(x)).detach().double().numpy()
    oof = out_of_fold_logits(x, y, g, folds=5)
    assert oof.shape == (len(x), len(EMOTIONS))
    # seen speakers: their habits are read back; unseen ones: far less is
    assert (in_sample.argmax(1) == truth).mean() > (oof.argmax(1) == truth).mean() + 0.15
    # Fresh speakers, read by the head fitted on all 60: the temperature fitted out of fold
    # is close to the one that calibrates them; the in-sample one makes it far too sure.
    xf, yf, _ = speakers_with_a_habit(60, seed=1)
    fresh = fit_emotion_head(x, y)(torch.from_numpy(xf)).detach().double().numpy()
    best = fit_temperature(fresh, np.array([EMOTIONS.index(v) for v in yf]))
    assert fit_temperature(oof, truth) == pytest.approx(best, rel=0.3)
    assert fit_temperature(in_sample, truth) < 0.6 * best
    with pytest.raises(MDVAEError, match="two speakers"):
        out_of_fold_logits(x[:8], y[:8], g[:8])
