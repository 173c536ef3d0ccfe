import numpy as np
import pytest
import torch

from mdvae.calibration import fit_temperature
from mdvae.errors import MDVAEError
from mdvae.labels import EMOTIONS
from mdvae.model.emotion import (
    fit_emotion_head,
    fit_reference_head,
    out_of_fold_logits,
    reference_pairs,
)


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


def people(n_speakers, *, neutral_clips=2, per_emotion=2, identity=6.0, dim=10, seed=0):
    """w = a speaker's identity (spread `identity`, far more than the emotions') + an emotion
    offset + noise: a plain head mixes the two, the difference of one person's clips does
    not. `seed` draws the people. Returns w (N, dim), labels, speakers."""
    emotions = np.random.default_rng(100)  # the same emotions for every draw of people
    offsets = {e: emotions.normal(0, 1.0, dim) for e in EMOTIONS}
    rng = np.random.default_rng(seed)
    offsets["neutral"] = np.zeros(dim)
    w, labels, speakers = [], [], []
    for s in range(n_speakers):
        who = rng.normal(0, identity, dim)
        for e in EMOTIONS:
            for _ in range(neutral_clips if e == "neutral" else per_emotion):
                w.append(who + offsets[e] + rng.normal(0, 0.15, dim))
                labels.append(e)
                speakers.append(f"s{s}")
    return np.array(w), np.array(labels), np.array(speakers)


def test_reference_pairs_are_one_speakers_neutral_clip_against_each_of_their_others():
    labels = ["neutral", "happy", "neutral", "sad", "happy", "neutral"]
    speakers = ["a", "a", "a", "a", "b", "b"]
    rows, refs = reference_pairs(labels, speakers)
    pairs = set(zip(rows.tolist(), refs.tolist()))
    # a: 2 references x its 3 other clips; b: 1 reference x 1 other clip
    assert pairs == {(1, 0), (2, 0), (3, 0), (0, 2), (1, 2), (3, 2), (4, 5)}
    assert len(pairs) == len(rows)
    assert all(speakers[r] == speakers[c] for r, c in zip(rows, refs))
    assert len(reference_pairs(["happy", "sad"], ["a", "a"])[0]) == 0
    rows, refs = reference_pairs(labels, speakers, max_references=1)  # a's first neutral only
    assert set(zip(rows.tolist(), refs.tolist())) == {(1, 0), (2, 0), (3, 0), (4, 5)}


def test_reference_head_reads_what_identity_hides_from_the_plain_head():
    w, labels, speakers = people(40)
    held_w, held_labels, held_speakers = people(15, seed=1)  # new people
    head = fit_reference_head(w, labels, speakers)
    plain = fit_emotion_head(w, labels)
    rows, refs = reference_pairs(held_labels, held_speakers)
    y = np.array([EMOTIONS.index(e) for e in held_labels[rows]])
    with torch.no_grad():
        against = head(torch.from_numpy(held_w[rows]), torch.from_numpy(held_w[refs]))
        alone = plain(torch.from_numpy(held_w[rows]))
    hit = (against.argmax(1).numpy() == y).mean()
    # with identity taken away, the emotions lie many noise SDs (0.15 x sqrt 2) apart
    assert hit > 0.95
    assert hit > (alone.argmax(1).numpy() == y).mean() + 0.2
    # two neutral clips of one person are the neutral class
    neutral = held_labels[rows] == "neutral"
    assert (against.argmax(1).numpy()[neutral] == EMOTIONS.index("neutral")).mean() > 0.95


def test_same_person_check_passes_one_person_and_stops_two():
    w, labels, speakers = people(40)
    head = fit_reference_head(w, labels, speakers, within_quantile=0.99)
    rows, refs = reference_pairs(labels, speakers)
    w_t = torch.from_numpy(w)
    # on the pairs it was fitted on, the bound passes the quantile asked for
    assert head.same_person(w_t[rows], w_t[refs]).float().mean().item() == pytest.approx(
        0.99, abs=0.01)
    # the spread is that of the pairs' differences: their mean distance is 1 by construction
    assert head.distance(w_t[rows], w_t[refs]).mean().item() == pytest.approx(1.0, rel=1e-3)
    held_w, held_labels, held_speakers = people(15, seed=1)
    first = np.flatnonzero(held_labels == "neutral")[::2]  # one neutral clip per person
    a, b = torch.from_numpy(held_w[first[:-1]]), torch.from_numpy(held_w[first[1:]])
    assert not head.same_person(a, b).any()  # identities 6 SDs apart, the emotions' 1


def test_reference_head_needs_a_reference_clip_and_travels_in_a_bundle(tmp_path):
    from mdvae.bundle import load_bundle, save_bundle

    with pytest.raises(MDVAEError, match="no speaker has a 'neutral' clip"):
        fit_reference_head(np.zeros((2, 3)), ["happy", "sad"], ["a", "a"])
    w, labels, speakers = people(10)
    head = fit_reference_head(w, labels, speakers)
    save_bundle(tmp_path / "b", {"emotion_reference": head.float()}, info={}, card="")
    loaded = load_bundle(tmp_path / "b")["emotion_reference"]
    assert loaded.config == head.config
    x = torch.from_numpy(w[:4]).float()
    torch.testing.assert_close(loaded(x, x.flip(0)), head(x, x.flip(0)))
    torch.testing.assert_close(loaded.distance(x, x.flip(0)), head.distance(x, x.flip(0)))
