"""Bundles: save -> load identity, strict refusal of anything that does not fit, Hub ids."""

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub.errors import LocalEntryNotFoundError
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from mdvae.bundle import (
    CARD_FILE,
    CONFIG_FILE,
    HUB_PATTERNS,
    WEIGHTS_FILE,
    Bundle,
    load_bundle,
    register_component,
    save_bundle,
)
from mdvae.config import ConfigBase
from mdvae.errors import ConfigError
from mdvae.stage1.vqvae import VQVAE, VQVAEConfig

TINY = dict(channels=(8, 8, 8), res_blocks=1, res_channels=8)


@dataclass
class HeadConfig(ConfigBase):
    # input size
    in_dim: int = 4
    # number of classes
    n_classes: int = 3


@register_component
class ToyHead(nn.Module):
    """A component defined outside mdvae, like the emotion head or the MDVAE."""

    def __init__(self, config: HeadConfig):
        super().__init__()
        self.config = config
        self.linear = nn.Linear(config.in_dim, config.n_classes)
        self.register_buffer("scale", torch.ones(config.n_classes))

    def forward(self, x):
        return self.linear(x) * self.scale


def components(seed=0):
    torch.manual_seed(seed)
    return {
        "vqvae_visual": VQVAE(VQVAEConfig(modality="visual", **TINY)),
        "vqvae_audio": VQVAE(VQVAEConfig(modality="audio", **TINY)),
        "head": ToyHead(HeadConfig()),
    }


INFO = {"data": "synthetic, 12 speakers", "steps": {"vqvae_visual": 10}, "val_mse": 0.01}
CARD = "---\nlicense: mit\n---\n# Test bundle\n"


@pytest.fixture
def saved(tmp_path):
    parts = components()
    folder = save_bundle(tmp_path / "bundle", parts, INFO, CARD)
    return folder, parts


def edit_config(folder, edit):
    path = folder / CONFIG_FILE
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))


def edit_weights(folder, edit):
    path = folder / WEIGHTS_FILE
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        weights = {k: f.get_tensor(k) for k in f.keys()}
    edit(weights)
    save_file(weights, str(path), metadata=metadata)


# -- round trip --------------------------------------------------------------------------------


def test_save_then_load_gives_identical_outputs(saved):
    folder, parts = saved
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [CARD_FILE, CONFIG_FILE, WEIGHTS_FILE]
    )
    assert not list(folder.parent.glob(".bundle*")), "no temporary folder left behind"
    bundle = load_bundle(folder)
    assert isinstance(bundle, Bundle) and bundle.path == folder
    assert bundle.info == INFO and bundle.card == CARD
    assert sorted(bundle.components) == ["head", "vqvae_audio", "vqvae_visual"]
    assert all(not m.training for m in bundle.components.values())

    x_v = torch.rand(2, 3, 64, 64)
    x_a = torch.exp(torch.randn(2, 513) * 3)
    h = torch.randn(5, 4)
    with torch.no_grad():
        for name, x in [("vqvae_visual", x_v), ("vqvae_audio", x_a)]:
            original, loaded = parts[name].eval()(x), bundle[name](x)
            assert torch.equal(original.x_hat, loaded.x_hat)
            assert torch.equal(original.indices, loaded.indices)
        assert torch.equal(parts["head"](h), bundle.head(h))
    assert bundle.vqvae_audio.config == parts["vqvae_audio"].config
    for key, value in parts["vqvae_visual"].state_dict().items():  # codebook buffers too
        assert torch.equal(bundle.vqvae_visual.state_dict()[key], value), key
    with pytest.raises(AttributeError, match="no component 'mdvae'"):
        bundle.mdvae  # noqa: B018


def test_config_json_layout(saved):
    folder, _ = saved
    document = json.loads((folder / CONFIG_FILE).read_text())
    assert document["format_version"] == 1
    assert document["info"] == INFO
    entry = document["components"]["vqvae_audio"]
    assert entry["class"] == "VQVAE"
    assert entry["config"]["modality"] == "audio" and entry["config"]["codebook_size"] == 64
    with safe_open(str(folder / WEIGHTS_FILE), framework="pt") as f:
        keys = set(f.keys())
    assert "vqvae_audio.quantizer.embedding" in keys and "head.scale" in keys


def test_saving_again_replaces_the_bundle(saved):
    folder, _ = saved
    save_bundle(folder, {"head": ToyHead(HeadConfig(n_classes=5))}, {"v": 2}, "new card")
    bundle = load_bundle(folder)
    assert list(bundle.components) == ["head"] and bundle.info == {"v": 2}
    assert bundle.head.config.n_classes == 5
    assert not list(folder.parent.glob(".bundle*"))


# -- refusals when saving ----------------------------------------------------------------------


def test_save_refuses_unregistered_modules_bad_info_and_foreign_folders(tmp_path):
    with pytest.raises(ConfigError, match="not registered"):
        save_bundle(tmp_path / "a", {"lin": nn.Linear(2, 2)}, {}, "")
    with pytest.raises(ConfigError, match="JSON"):
        save_bundle(tmp_path / "b", {"head": ToyHead(HeadConfig())}, {"t": torch.ones(1)}, "")
    with pytest.raises(ConfigError, match="identifier"):
        save_bundle(tmp_path / "c", {"a.b": ToyHead(HeadConfig())}, {}, "")
    foreign = tmp_path / "work"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="notes.txt"):
        save_bundle(foreign, {"head": ToyHead(HeadConfig())}, {}, "")
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_register_component_needs_an_annotated_config():
    class NoHint(nn.Module):
        def __init__(self, config):
            super().__init__()

    with pytest.raises(TypeError, match="annotated"):
        register_component(NoHint)


# -- refusals when loading ---------------------------------------------------------------------


def test_changed_config_value_is_refused(saved):
    folder, _ = saved
    edit_config(folder, lambda d: d["components"]["vqvae_visual"]["config"].update(ema_decay=0.9))
    with pytest.raises(ConfigError, match=r"'vqvae_visual'.*'ema_decay' is 0\.9"):
        load_bundle(folder)


def test_changed_architecture_is_refused(saved):
    folder, _ = saved
    edit_config(folder, lambda d: d["components"]["vqvae_audio"]["config"].update(res_blocks=2))
    with pytest.raises(ConfigError, match="'vqvae_audio'.*'res_blocks'"):
        load_bundle(folder)


def test_invalid_config_value_is_refused(saved):
    folder, _ = saved
    edit_config(folder, lambda d: d["components"]["vqvae_audio"]["config"].update(modality="x"))
    with pytest.raises(ConfigError, match="'vqvae_audio'.*modality"):
        load_bundle(folder)
    edit_config(folder, lambda d: d["components"]["vqvae_audio"]["config"].update(modality="audio"))
    edit_config(folder, lambda d: d["components"]["head"]["config"].update(depth=3))
    with pytest.raises(ConfigError, match=r"'head'.*unknown config key.*depth"):
        load_bundle(folder)


def test_missing_weight_is_refused(saved):
    folder, _ = saved
    edit_weights(folder, lambda w: w.pop("vqvae_visual.quantizer.cluster_size"))
    with pytest.raises(ConfigError, match="'vqvae_visual': missing weights.*cluster_size"):
        load_bundle(folder)


def test_extra_weight_is_refused(saved):
    folder, _ = saved
    edit_weights(folder, lambda w: w.update({"head.bias_extra": torch.zeros(3)}))
    with pytest.raises(ConfigError, match="'head': unexpected weights.*bias_extra"):
        load_bundle(folder)
    edit_weights(folder, lambda w: w.update({"dsae_audio.x": torch.zeros(3)}))
    with pytest.raises(ConfigError, match="no listed component.*dsae_audio.x"):
        load_bundle(folder)


def test_wrong_shape_is_refused(saved):
    folder, _ = saved
    edit_weights(folder, lambda w: w.update({"head.linear.weight": torch.zeros(3, 5)}))
    with pytest.raises(ConfigError, match=r"'head'.*'linear.weight'.*\(3, 5\).*\(3, 4\)"):
        load_bundle(folder)


def test_unknown_class_is_refused(saved):
    folder, _ = saved
    edit_config(folder, lambda d: d["components"]["head"].update({"class": "Mystery"}))
    with pytest.raises(ConfigError, match="'head': unknown class 'Mystery'"):
        load_bundle(folder)


def test_module_hint_outside_the_package_is_never_imported(saved, monkeypatch):
    folder, _ = saved
    imported = []
    monkeypatch.setattr("importlib.import_module", lambda name: imported.append(name))
    edit_config(folder, lambda d: d["components"]["head"].update({"class": "X", "module": "os"}))
    with pytest.raises(ConfigError, match="unknown class 'X'"):
        load_bundle(folder)
    assert imported == []


def test_pickle_only_folder_is_refused(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    torch.save({"w": torch.zeros(2)}, folder / "pytorch_model.bin")
    with pytest.raises(ConfigError, match=r"pickle.*pytorch_model\.bin.*never loaded"):
        load_bundle(folder)
    (folder / "pytorch_model.bin").unlink()
    with pytest.raises(ConfigError, match="not a model bundle"):
        load_bundle(folder)


def test_missing_path_that_is_not_a_repo_id_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no bundle folder"):
        load_bundle(tmp_path / "nowhere" / "deeper")


def test_format_version_from_the_future_is_refused(saved):
    folder, _ = saved
    edit_config(folder, lambda d: d.update(format_version=99))
    with pytest.raises(ConfigError, match="version 99"):
        load_bundle(folder)


# -- Hugging Face Hub ids (the network is never touched) ---------------------------------------


def test_hub_repo_id_downloads_only_safe_files(saved, monkeypatch, tmp_path):
    folder, parts = saved
    cache = tmp_path / "cache"
    shutil.copytree(folder, cache)
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(cache)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.chdir(tmp_path)  # so "someone/vq-mdvae" is no local folder
    bundle = load_bundle("someone/vq-mdvae", revision="v1")
    assert calls == [("someone/vq-mdvae", {"revision": "v1", "allow_patterns": HUB_PATTERNS})]
    assert not any(p.endswith((".bin", ".pt", ".pkl", "*")) for p in HUB_PATTERNS)
    assert Path(bundle.path) == cache and bundle.info == INFO


def test_hub_download_failure_offline_is_a_clear_config_error(monkeypatch, tmp_path):
    def offline(repo_id, **kwargs):
        raise LocalEntryNotFoundError("cannot reach the Hub and the repo is not in the cache")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"'someone/missing' from the Hugging Face Hub.*offline"):
        load_bundle("someone/missing")


# -- hostile sizes and malformed info ----------------------------------------------------------


def edit_both_configs(folder, name, **changes):
    """Change a component's config in config.json and beside the weights alike, as someone
    writing a hostile bundle would (so the two still agree)."""
    edit_config(folder, lambda d: d["components"][name]["config"].update(changes))
    path = folder / WEIGHTS_FILE
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        weights = {k: f.get_tensor(k) for k in f.keys()}
    config = json.loads(metadata[f"config.{name}"])
    config.update(changes)
    metadata[f"config.{name}"] = json.dumps(config, sort_keys=True)
    save_file(weights, str(path), metadata=metadata)


def test_config_asking_for_terabytes_is_a_config_error_naming_the_fields(saved):
    folder, _ = saved
    edit_both_configs(folder, "head", in_dim=900_000, n_classes=1_000_000)  # 3.6 TB
    with pytest.raises(ConfigError, match=r"component 'head': weight 'scale' has shape \(3,\) "
                                          r"in model.safetensors but the config builds "
                                          r"\(1000000,\) \(check 'n_classes'\)"):
        load_bundle(folder)
    edit_both_configs(folder, "head", n_classes=3)
    with pytest.raises(ConfigError, match=r"weight 'linear.weight' has shape \(3, 4\).*builds "
                                          r"\(3, 900000\) \(check 'in_dim'\)"):
        load_bundle(folder)


def test_config_size_over_the_bound_is_refused_by_name(saved):
    folder, _ = saved
    edit_both_configs(folder, "head", n_classes=10**12)
    with pytest.raises(ConfigError, match=r"config field 'n_classes' is 1000000000000, over"):
        load_bundle(folder)


@pytest.mark.parametrize("info, field", [
    ({"data": {"splits": {"train": {"frames": "many", "speakers": [], "clips": 3}}}},
     "info.data.splits.train.frames"),
    ({"data": {"splits": {"train": {"speakers": "s1"}}}}, "info.data.splits.train.speakers"),
    ({"data": {"source": 3}}, "info.data.source"),
    ({"data": 7}, "info.data"),
    ({"emotion": {"emotion": {"accuracy": {"test": "high"}}}},
     "info.emotion.emotion.accuracy.test"),
    ({"emotion": ["emotion"]}, "info.emotion"),
    ({"emotion": {"emotion": 0.5}}, "info.emotion.emotion"),
    ({"exported": 2024}, "info.exported"),
])
def test_malformed_info_is_a_config_error_naming_the_field(saved, info, field):
    folder, _ = saved
    edit_config(folder, lambda d: d.update(info=info))
    with pytest.raises(ConfigError, match=re.escape(f'"{field}" must be')):
        load_bundle(folder)
