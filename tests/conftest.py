"""Shared fixtures: a tiny synthetic store and a tiny (untrained) bundle, built once per run.

The bundle's weights are random: tests that use it check plumbing (shapes, files, error
messages, round trips), never quality. Quality is checked on the shipped bundle.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mdvae.bundle import save_bundle
from mdvae.model.dsae import DSAE, DSAEConfig
from mdvae.model.emotion import (
    EmotionHead,
    EmotionHeadConfig,
    ReferenceEmotionHead,
    ReferenceEmotionHeadConfig,
)
from mdvae.model.mdvae import MDVAE, MDVAEConfig
from mdvae.stage1.vqvae import VQVAE, VQVAEConfig
from tests.helpers import make_bad_inputs

TINY_MDVAE = dict(w_dim=8, z_av_dim=4, z_a_dim=2, z_v_dim=2, feature_dim=32, audio_hidden=32,
                  visual_hidden=32, rnn_dim=16, z_rnn_dim=16)
TINY_VQ = dict(channels=(8, 16, 16), res_blocks=1, res_channels=8)


def tiny_components(seed: int = 0) -> dict[str, torch.nn.Module]:
    torch.manual_seed(seed)
    mdvae_cfg = MDVAEConfig(**TINY_MDVAE)
    components: dict[str, torch.nn.Module] = {
        "vq_visual": VQVAE(VQVAEConfig(modality="visual", **TINY_VQ)),
        "vq_audio": VQVAE(VQVAEConfig(modality="audio", **TINY_VQ)),
        "mdvae": MDVAE(mdvae_cfg),
        "dsae_audio": DSAE(DSAEConfig.from_mdvae(mdvae_cfg, "audio")),
        "dsae_visual": DSAE(DSAEConfig.from_mdvae(mdvae_cfg, "visual")),
        "emotion": EmotionHead(EmotionHeadConfig(in_dim=mdvae_cfg.w_dim)),
        "emotion_dsae_audio": EmotionHead(EmotionHeadConfig(in_dim=mdvae_cfg.w_dim)),
        "emotion_dsae_visual": EmotionHead(EmotionHeadConfig(in_dim=mdvae_cfg.w_dim)),
        "emotion_reference": ReferenceEmotionHead(
            ReferenceEmotionHeadConfig(in_dim=mdvae_cfg.w_dim)),
        "emotion_reference_dsae_visual": ReferenceEmotionHead(
            ReferenceEmotionHeadConfig(in_dim=mdvae_cfg.w_dim)),
    }
    for module in components.values():
        module.eval()
    return components


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A complete bundle folder with tiny random-initialised components."""
    folder = tmp_path_factory.mktemp("bundle") / "tiny"
    info = {"data": {"source": "synthetic", "note": "untrained test bundle"}}
    save_bundle(folder, tiny_components(), info=info, card="# tiny test bundle\n")
    return folder


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> Path:
    """A synthetic store: 5 speakers (3 train, 1 val, 1 test) x 4 clips of 36 frames."""
    from train import prepare

    folder = tmp_path_factory.mktemp("store") / "synthetic"
    code = prepare.main([
        "synthetic", "--out", str(folder), "--speakers", "5", "--clips-per-speaker", "4",
        "--frames", "36", "--val-speakers", "1", "--test-speakers", "1", "--workers", "0",
    ])
    assert code == 0
    return folder


@pytest.fixture(scope="session")
def bad_inputs(tmp_path_factory) -> dict[str, Path]:
    """One file per way an upload can go wrong (test_pipeline.py, test_app.py)."""
    return make_bad_inputs(tmp_path_factory.mktemp("bad"))
