import numpy as np
import pytest
import torch

from mdvae.errors import MDVAEError
from mdvae.labels import EMOTIONS
from mdvae.model.emotion import fit_emotion_head


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
