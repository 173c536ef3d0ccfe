"""The bundle shipped in checkpoints/ loads strictly and reconstructs the example clips."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mdvae.bundle import load_bundle
from mdvae.eval.metrics import psnr
from mdvae.media.audio import samples_for_frames
from mdvae.media.video import normalize_clip, write_video
from mdvae.pipeline import Pipeline
from train.figures import reconstructions

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "checkpoints"
EXAMPLES = sorted((ROOT / "examples").glob("*.mp4"))


def test_shipped_bundle_has_every_component_and_a_card():
    bundle = load_bundle(BUNDLE)
    expected = {"vq_visual", "vq_audio", "mdvae", "dsae_audio", "dsae_visual", "emotion",
                "emotion_dsae_audio", "emotion_dsae_visual"}
    assert expected <= set(bundle.components)
    assert bundle.info["data"]["source"] == "synthetic"
    assert "Training data" in bundle.card and "Evaluation" in bundle.card
    assert (BUNDLE / "model.safetensors").stat().st_size < 20 * 2**20
    assert not [p for p in BUNDLE.iterdir() if p.suffix in (".pt", ".pth", ".bin", ".pkl")]
    json.loads((BUNDLE / "config.json").read_text())


@pytest.fixture(scope="module")
def pipeline():
    torch.set_num_threads(1)
    return Pipeline(BUNDLE)


@pytest.mark.slow
def test_examples_reconstruct_above_the_mean_face(pipeline):
    """Baseline: the mean face of the example speakers (held out; one clip each) for every frame.

    The VQ-VAEs alone must beat it by a wide margin, and so must the MDVAE: in the shipped
    bundle (session 45: session 32's with three more phases in which w is a voice part of 16 and
    a face part of 68; the visual VQ-VAE is session 21's) the VQ-VAE is 9.6 to 14.6 dB above it
    (11.7 on average) and the MDVAE 4.9 to 9.8 dB (7.9 on average; the session-44 bundle's 5.3
    to 9.8, 8.1 on average; the session-32 bundle's 4.4 to 9.7, 7.7 on average, spk02_happy's
    hair and shirt darker; the session-31 bundle's 5.7 to 10.1, 8.0 on average; the session-28
    bundle's 5.6 to 10.0, 8.2 on average; the session-21 bundle's 5.9 to 10.3, 8.5 on average;
    the session-12 bundle's 8.3 to 12.8 and 4.3 to 10.3, 10.4 and 8.0 on average; 8.2 for the
    session-9 bundle, 8.1 for the session-8 one, 7.7 for the fourth, and 6.9, 5.6 and 1.5 for
    the three before it); the thresholds sit below that so that a regression shows (they were
    set 0.3 dB under the session-12 bundle's smallest MDVAE margin, spk02_happy's, whose red
    shirt came out brown; it is now 5.5, and the smallest, 4.9, another example's).
    """
    # one clip per speaker (each one's first by name), so that no face weighs twice in the mean
    first = {path.name[:5]: path for path in reversed(EXAMPLES)}
    rows = [reconstructions(pipeline, path) for path in sorted(first.values())]
    assert len(rows) >= 4
    mean_face = np.concatenate([r["original"] for r in rows]).mean(0).round().astype(np.uint8)
    margins_vq, margins_mdvae = [], []
    for r in rows:
        frames = r["original"]
        base = psnr(frames, np.broadcast_to(mean_face, frames.shape))
        margins_vq.append(psnr(frames, r["VQ-VAE"]) - base)
        margins_mdvae.append(psnr(frames, r["MDVAE"]) - base)
    assert min(margins_vq) > 7.0, margins_vq
    assert np.mean(margins_vq) > 9.0, margins_vq
    assert min(margins_mdvae) > 4.0, margins_mdvae
    assert np.mean(margins_mdvae) > 7.0, margins_mdvae


@pytest.mark.slow
def test_a_faint_expression_is_read_against_the_same_persons_neutral_clip(pipeline):
    """spk02's faint sadness: alone, the MDVAE is not sure (happy 50%: a mild expression of a
    new face looks like a resting one); against spk02's neutral clip, sad (99% at export).
    Two different people's examples never pass the same-person check (their distances 6 to
    23, one person's clips within 2.8; spk02's two clips 0.5)."""
    examples = {p.stem: pipeline.encode_file(p, aligned=True) for p in EXAMPLES}
    faint, neutral = examples["spk02_sad_faint"], examples["spk02_neutral"]
    assert pipeline.emotion_reading(faint, "mdvae").answer != "sad"
    against = pipeline.reference_reading(faint, neutral)
    assert against.answer == "sad" and against.top[1] > 0.9
    itself = pipeline.reference_reading(neutral, neutral)  # no change, but no answer either
    assert itself.top[0] == "neutral" and itself.answer is None
    assert pipeline.reference_reading(examples["spk02_happy"], neutral).answer == "happy"
    for a in examples:
        for b in examples:
            if a[:5] != b[:5]:  # spkNN: two people
                reading = pipeline.reference_reading(examples[a], examples[b])
                assert reading.answer is None and "one person" in reading.reason, (a, b)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_an_example_face_with_real_speech_is_unfamiliar_by_its_voice(pipeline, tmp_path):
    """A familiar face cannot hide a foreign voice: the example is familiar, and with
    espeak-ng speech for its voice the MDVAE's audio score calls it unfamiliar, where the
    VQ-VAEs' scores call it familiar. (The whole bound is not asked about: it stayed within
    the threshold before session 8, lay beyond it at a spread of about 3 on the session-8
    bundle, whose visual decoder was floored at -3, was at about 1.1 on the session-9
    bundle, whose visual nats again vary widely over the test clips, and is at about 1.4 on
    the session-10 one, close to the threshold of 1.5, at 1.46 on the session-21 one and at
    1.30 on the session-28 one; the voice was at 5.6 on the session-12 bundle, 10.1 on the
    session-21 one and 5.9 on the session-28 one. Against the familiarity table of 64 new
    speakers (session 29), the session-31 bundle puts the whole bound at 0.16 and the voice
    at 4.6, the session-32 one at 0.22 and 4.0; on the session-44 one `train.familiarity_check`
    puts the six examples with espeak-ng voices at 1.18 to 1.53 and 6.1 to 9.1, on the
    session-45 one at 1.22 to 1.70 and 6.1 to 8.9.)"""
    from train.familiarity_check import N_FRAMES, speech

    example = ROOT / "examples" / "spk02_happy.mp4"
    assert pipeline.encode(pipeline.load(example, aligned=True)).familiarity.familiar
    frames = normalize_clip(example).frames[:N_FRAMES]
    voice = speech(0, tmp_path)[:samples_for_frames(len(frames))]
    mixed = write_video(tmp_path / "mixed.mp4", frames, voice, scale=1)
    familiarity = pipeline.encode(pipeline.load(mixed, aligned=True)).familiarity
    assert familiarity.familiar is False and familiarity.worst == "mdvae_audio"
    vq = {n: s for n, s in familiarity.spreads.items() if n.startswith("vq_")}
    assert max(vq.values()) <= familiarity.threshold, vq
