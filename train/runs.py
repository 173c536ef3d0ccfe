"""What the programs read from finished runs: the trained model of a run folder, and a
store's stage-1 features, cached per pair of VQ-VAEs.

A library for the programs (they import it, never each other). Models are rebuilt through
the bundle registry from the class and config that the run folder records.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from mdvae.bundle import build_component
from mdvae.data.store import Store
from mdvae.stage1.codec import AVCodec
from mdvae.stage1.vqvae import VQVAE
from train import common


def load_model(run_dir: str, program: str, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The trained model of a run folder of `program` ("stage1", "stage2"), frozen, in eval
    mode."""
    run = common.RunFolder(run_dir, writer=False)
    saved = run.read_config()
    if saved.get("program") != program:
        raise common.CheckpointError(
            f"{run_dir} is not a {program.replace('stage', 'stage-')} run folder"
        )
    model = build_component(saved["model_class"], saved["model"])
    model.load_state_dict(run.load_checkpoint(required=True, weights_only=True)["model"])
    return model.to(device).eval().requires_grad_(False)


def load_stage1(run_dir: str, device: str | torch.device = "cpu") -> VQVAE:
    """The VQ-VAE of a stage-1 run folder, frozen, in eval mode."""
    return load_model(run_dir, "stage1", device)


def load_stage2(run_dir: str) -> torch.nn.Module:
    """The MDVAE or DSAE of a stage-2 run folder, frozen, in eval mode."""
    return load_model(run_dir, "stage2")


def _hash_weights(digest, model: VQVAE) -> None:
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())


def feature_key(vq_audio: VQVAE, vq_visual: VQVAE) -> str:
    """A hash of both stage-1 models' weights: cached features are valid for these only."""
    digest = hashlib.sha256()
    for model in (vq_audio, vq_visual):
        _hash_weights(digest, model)
    return digest.hexdigest()[:16]


def stage1_keys(vq_audio: VQVAE, vq_visual: VQVAE) -> dict[str, Any]:
    """What a stage-2 run's config records of the VQ-VAEs it read: the pair's feature key,
    and a hash of each one's weights alone ("modality_keys"; a one-modality DSAE read the
    features of one of them, and stays valid beside a new VQ-VAE of the other modality)."""
    modality_keys = {}
    for modality, model in (("audio", vq_audio), ("visual", vq_visual)):
        digest = hashlib.sha256()
        _hash_weights(digest, model)
        modality_keys[modality] = digest.hexdigest()[:16]
    return {"feature_key": feature_key(vq_audio, vq_visual), "modality_keys": modality_keys}


# the features each stage-2 model kind reads (a run config's "model_kind")
READS = {"mdvae": ("audio", "visual"), "dsae-audio": ("audio",), "dsae-visual": ("visual",)}


def trained_inside(config: dict, keys: dict[str, Any]) -> bool:
    """Whether the stage-2 run whose config this is read the features of the VQ-VAEs whose
    `stage1_keys` are `keys`: the same pair (its feature key), or, for a one-modality DSAE,
    the same VQ-VAE of its modality (its per-modality keys, which runs record since session
    21; older runs only the pair)."""
    if config.get("feature_key") == keys["feature_key"]:
        return True
    recorded = config.get("modality_keys")
    kind = config.get("model_kind")
    if not recorded or kind not in READS:
        return False
    return all(recorded.get(m) == keys["modality_keys"][m] for m in READS[kind])


@torch.no_grad()
def encode_store(
    store: Store, vq_audio: VQVAE, vq_visual: VQVAE, *, batch: int = 512, show: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Encode every frame of the store: audio (N, 512) and visual (N, 2048) float16."""
    codec = AVCodec(vq_audio, vq_visual, chunk=batch)
    n = len(store.frames)
    audio = np.empty((n, vq_audio.config.feature_dim), np.float16)
    visual = np.empty((n, vq_visual.config.feature_dim), np.float16)
    for lo in tqdm(range(0, n, batch), desc="encoding features", disable=not show):
        hi = min(n, lo + batch)
        x_a, x_v = codec.encode(np.ascontiguousarray(store.frames[lo:hi]), store.power[lo:hi])
        audio[lo:hi] = x_a.cpu().numpy()
        visual[lo:hi] = x_v.cpu().numpy()
    return audio, visual


def cached_features(
    store: Store, vq_audio: VQVAE, vq_visual: VQVAE, *, write: bool = True
) -> tuple[np.ndarray, np.ndarray, str]:
    """The store's features for these VQ-VAEs, computing and caching them when absent."""
    key = feature_key(vq_audio, vq_visual)
    found = store.features(key)
    if found is None:
        audio, visual = encode_store(store, vq_audio, vq_visual, show=write)
        if write:
            store.write_features(key, audio, visual)
            found = store.features(key)
        else:
            found = (audio, visual)
    audio, visual = found
    return audio, visual, key
