"""Released model bundles (DESIGN.md section 9): a folder, or a Hugging Face Hub repo, with

    config.json        {"format": "vq-mdvae-bundle", "format_version": 1,
                        "components": {name: {"class": "VQVAE", "module": "mdvae.stage1.vqvae",
                                              "config": {...}}},
                        "info": {free-form: training data, steps, metrics}}
    model.safetensors  every component's state dict, keys prefixed "<name>."; its metadata
                       repeats each component's config ("config.<name>") so that an edited
                       config.json is caught
    README.md          the model card

Weights are never read from pickles, so a Space can load a stranger's repo safely. Loading
is strict: an unknown class, a config that does not parse or differs from the one the
weights were saved with, missing, unexpected or mis-shaped weights all raise ConfigError
naming the component and the key. Sizes are checked before any module is allocated: every
integer in a config is bounded (MAX_CONFIG_INT), and each component is first built on
PyTorch's meta device (no memory) and its shapes compared with the weights file's header,
so a config asking for terabytes fails with a ConfigError naming the field. The `info`
entries the app reads (`data`, `emotion`, `exported`) are type-checked too.

A class is storable when it is registered with `@register_component`, keeps its config
dataclass (a ConfigBase) in `.config`, and is built by `Cls(config)` with `config`
annotated by its config class. A training checkpoint is not a bundle: exporting one is an
explicit call to `save_bundle`.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import shutil
import typing
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

import mdvae
from mdvae.config import ConfigBase
from mdvae.errors import ConfigError

FORMAT = "vq-mdvae-bundle"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
BUNDLE_FILES = (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE)
# What a Hub download may fetch: never a pickle.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.md"]
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_COMPONENT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# config.json may name the module defining a class; only modules of this package are imported.
_MODULE_NAME = re.compile(r"^mdvae(\.[A-Za-z_][A-Za-z0-9_]*)+$")

# No size in a component's config may exceed this (the MEAD models' largest is 2048); the
# tensors a config builds beyond its stored weights (non-persistent buffers) are bounded by
# MAX_UNSTORED_ELEMENTS.
MAX_CONFIG_INT = 1_000_000
MAX_UNSTORED_ELEMENTS = 50_000_000

_REGISTRY: dict[str, type[nn.Module]] = {}


def _config_class(cls: type) -> type[ConfigBase]:
    """The ConfigBase class annotating the `config` argument of `cls.__init__`."""
    try:
        hints = typing.get_type_hints(cls.__init__)
        config_cls = hints["config"]
    except (KeyError, NameError, TypeError) as err:
        raise TypeError(
            f"{cls.__name__}.__init__ needs an argument `config` annotated with its config "
            f"class (a ConfigBase dataclass) to be stored in bundles"
        ) from err
    if not (inspect.isclass(config_cls) and issubclass(config_cls, ConfigBase)):
        raise TypeError(f"{cls.__name__}: `config` is annotated {config_cls!r}, not a ConfigBase")
    return config_cls


def register_component(cls: type[nn.Module]) -> type[nn.Module]:
    """Class decorator: make an nn.Module class storable in bundles, under its class name."""
    _config_class(cls)
    known = _REGISTRY.get(cls.__name__)
    if known is not None and (known.__module__, known.__qualname__) != (
        cls.__module__,
        cls.__qualname__,
    ):
        raise TypeError(f"another component class is already registered as {cls.__name__!r}")
    # Re-registering the same name (a reloaded module) replaces the old class.
    _REGISTRY[cls.__name__] = cls
    return cls


def registered_components() -> dict[str, type[nn.Module]]:
    return dict(_registry())


def _registry() -> dict[str, type[nn.Module]]:
    """The registered classes, the package's own (registered by mdvae.components) included."""
    import mdvae.components  # noqa: F401

    return _REGISTRY


def build_component(class_name: str, config: dict[str, Any]) -> nn.Module:
    """A registered class built from its config as a plain dict (e.g. a training run's)."""
    return _build(class_name, {"class": class_name, "config": config}, {})


@dataclass
class Bundle:
    """A loaded bundle: `bundle.components["mdvae"]`, or `bundle.mdvae` for short."""

    components: dict[str, nn.Module]
    info: dict[str, Any]
    path: Path
    card: str = ""

    def __getattr__(self, name: str) -> nn.Module:
        # Only reached when normal lookup fails, so dataclass fields take precedence.
        components = self.__dict__.get("components", {})
        if name in components:
            return components[name]
        raise AttributeError(
            f"bundle at {self.__dict__.get('path')} has no component {name!r}; "
            f"it holds {sorted(components)}"
        )

    def __getitem__(self, name: str) -> nn.Module:
        return getattr(self, name)

    def __contains__(self, name: str) -> bool:
        return name in self.components


# -- saving --------------------------------------------------------------------------------


def save_bundle(
    folder: str | Path,
    components: dict[str, nn.Module],
    info: dict[str, Any],
    card: str,
) -> Path:
    """Write a bundle to `folder` atomically (a temporary folder, then a rename).

    An existing bundle there is replaced; a folder holding anything else is refused, so
    that no unrelated file is lost. Returns the folder's path.
    """
    folder = Path(folder)
    if not components:
        raise ConfigError("save_bundle: no components given")
    entries: dict[str, dict[str, Any]] = {}
    tensors: dict[str, torch.Tensor] = {}
    metadata = {"format": "pt", "bundle_format_version": str(FORMAT_VERSION)}
    for name, module in components.items():
        entry = _describe(name, module)
        entries[name] = entry
        metadata[f"config.{name}"] = json.dumps(entry["config"], sort_keys=True)
        for key, value in module.state_dict().items():
            # Copies on the CPU: safetensors refuses tensors that share memory (tied weights).
            tensors[f"{name}.{key}"] = value.detach().to("cpu").clone().contiguous()
    try:
        config_text = json.dumps(
            {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "library_version": mdvae.__version__,
                "components": entries,
                "info": info,
            },
            indent=2,
            allow_nan=False,
        )
    except (TypeError, ValueError) as err:
        raise ConfigError(f"save_bundle: info must be plain JSON data: {err}") from err

    _check_replaceable(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        (tmp / CONFIG_FILE).write_text(config_text + "\n", encoding="utf-8")
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata=metadata)
        (tmp / CARD_FILE).write_text(card, encoding="utf-8")
        _swap_in(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _describe(name: str, module: nn.Module) -> dict[str, Any]:
    if not _COMPONENT_NAME.match(name):
        raise ConfigError(f"save_bundle: component name {name!r} must be a Python identifier")
    cls = type(module)
    if _registry().get(cls.__name__) is not cls:
        raise ConfigError(
            f"save_bundle: component {name!r} is a {cls.__name__}, which is not registered; "
            f"decorate the class with @mdvae.bundle.register_component"
        )
    config = getattr(module, "config", None)
    if not isinstance(config, _config_class(cls)):
        raise ConfigError(
            f"save_bundle: component {name!r} has no .config of type {_config_class(cls).__name__}"
        )
    return {"class": cls.__name__, "module": cls.__module__, "config": config.to_dict()}


def _check_replaceable(folder: Path) -> None:
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ConfigError(f"cannot write a bundle to {folder}: it is a file")
    others = sorted(p.name for p in folder.iterdir() if p.name not in BUNDLE_FILES)
    if others:
        raise ConfigError(
            f"refusing to replace {folder}: it holds files that are not part of a bundle "
            f"({', '.join(others[:5])}); choose an empty or new folder"
        )


def _swap_in(tmp: Path, folder: Path) -> None:
    """Rename `tmp` to `folder`; an existing `folder` is moved aside first, then removed."""
    if not folder.exists():
        tmp.rename(folder)
        return
    old = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
    folder.rename(old)
    try:
        tmp.rename(folder)
    except OSError:
        old.rename(folder)
        raise
    shutil.rmtree(old, ignore_errors=True)


# -- loading -------------------------------------------------------------------------------


def load_bundle(
    path_or_repo_id: str | Path, *, device: str | torch.device = "cpu", revision: str | None = None
) -> Bundle:
    """Load a bundle from a local folder or a Hub repo id ("owner/name"), strictly.

    Components come back on `device` in eval mode. `revision` (a Hub branch, tag or commit)
    only applies to repo ids.
    """
    folder = _resolve(path_or_repo_id, revision)
    config_path = folder / CONFIG_FILE
    weights_path = folder / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES)
        missing = [f.name for f in (config_path, weights_path) if not f.is_file()]
        if pickles:
            raise ConfigError(
                f"{folder} holds pickle weights ({', '.join(pickles)}) but no bundle "
                f"({' and '.join(missing)} missing); pickles are never loaded because they can "
                f"run code. Export the model with mdvae.bundle.save_bundle."
            )
        raise ConfigError(
            f"{folder} is not a model bundle: {' and '.join(missing)} missing. A bundle holds "
            f"{CONFIG_FILE}, {WEIGHTS_FILE} and {CARD_FILE}, written by save_bundle."
        )
    document = _read_config(config_path)
    try:
        with safe_open(str(weights_path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
            for name, entry in document["components"].items():
                _check_sizes(name, entry, metadata, shapes)  # before any tensor is made
            weights = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError) as err:
        raise ConfigError(f"{weights_path} is not a readable safetensors file: {err}") from err

    components = {
        name: _build(name, entry, metadata) for name, entry in document["components"].items()
    }
    _load_weights(components, weights)
    for module in components.values():
        module.to(device).eval()
    card_path = folder / CARD_FILE
    card = card_path.read_text(encoding="utf-8") if card_path.is_file() else ""
    return Bundle(components, document.get("info", {}), folder, card)


def _resolve(path_or_repo_id: str | Path, revision: str | None) -> Path:
    path = Path(path_or_repo_id).expanduser()
    if path.is_dir():
        return path
    text = str(path_or_repo_id)
    if path.exists():
        raise ConfigError(f"{text} is a file; a bundle is a folder (or a Hub repo id)")
    if not _REPO_ID.match(text):
        raise ConfigError(
            f"no bundle folder at {text!r}, and it is not a Hugging Face Hub repo id "
            f"of the form 'owner/name'"
        )
    import huggingface_hub

    try:
        downloaded = huggingface_hub.snapshot_download(
            text, revision=revision, allow_patterns=HUB_PATTERNS
        )
    except Exception as err:  # network, offline mode, missing or gated repo: all user-facing
        raise ConfigError(
            f"could not fetch the bundle {text!r} from the Hugging Face Hub "
            f"({type(err).__name__}: {err}). Check the repo id and the network; offline "
            f"(HF_HUB_OFFLINE=1) only repos already in the cache load. A local folder "
            f"path works too."
        ) from err
    return Path(downloaded)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ConfigError(f'{path} is not a VQ-MDVAE bundle config (no "format": "{FORMAT}")')
    version = document.get("format_version")
    if version != FORMAT_VERSION:
        raise ConfigError(
            f"{path}: bundle format version {version!r}, this code reads version "
            f"{FORMAT_VERSION}; use a matching version of the code"
        )
    components = document.get("components")
    if not isinstance(components, dict) or not components:
        raise ConfigError(f'{path}: "components" must map component names to entries')
    info = document.get("info", {})
    if not isinstance(info, dict):
        raise ConfigError(f'{path}: "info" must be an object')
    _check_info(info, path)
    return document


def _check_info(info: dict[str, Any], path: Path) -> None:
    """Type-check the `info` entries the app reads; ConfigError names the first bad one."""

    def fail(field: str, what: str):
        raise ConfigError(f'{path}: "info.{field}" must be {what}')

    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    data = info.get("data", {})
    if isinstance(data, dict):
        for key in ("source", "note"):
            if not isinstance(data.get(key, ""), str):
                fail(f"data.{key}", "a string")
        splits = data.get("splits", {})
        if not isinstance(splits, dict):
            fail("data.splits", "an object of splits")
        for split, entry in splits.items():
            if not isinstance(entry, dict):
                fail(f"data.splits.{split}", "an object")
            if not isinstance(entry.get("speakers", []), list):
                fail(f"data.splits.{split}.speakers", "a list")
            for key in ("clips", "frames"):
                if not number(entry.get(key, 0)):
                    fail(f"data.splits.{split}.{key}", "a number")
    elif not isinstance(data, str):
        fail("data", "an object or a string")
    heads = info.get("emotion", {})
    if not isinstance(heads, dict):
        fail("emotion", "an object of emotion heads")
    for head, entry in heads.items():
        accuracy = entry.get("accuracy", {}) if isinstance(entry, dict) else None
        if not isinstance(accuracy, dict):
            fail(f"emotion.{head}", 'an object with an "accuracy" object')
        for split, value in accuracy.items():
            if not number(value):
                fail(f"emotion.{head}.accuracy.{split}", "a number")
    if not isinstance(info.get("exported", ""), str):
        fail("exported", "a string")


def _check_sizes(name: str, entry: Any, metadata: dict[str, str],
                 shapes: dict[str, tuple[int, ...]]) -> None:
    """Refuse a component whose config would build tensors the weights file does not hold,
    before allocating any: bounded integers, then a build on the meta device whose shapes
    must be the header's."""
    if not isinstance(entry, dict):
        return  # _build says what is wrong with it
    cls = _component_class(name, entry)
    config_cls = _config_class(cls)
    try:
        config = config_cls.from_dict(entry.get("config"))
    except ConfigError:
        return  # _build names the bad key
    fields = config.to_dict()
    for field, value in fields.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_CONFIG_INT:
                raise ConfigError(
                    f"component {name!r}: config field {field!r} is {value!r}, over the "
                    f"{MAX_CONFIG_INT:,} any size in a bundle may have"
                )
    saved = metadata.get(f"config.{name}")
    if saved is not None:
        _compare_configs(name, config, config_cls, saved)
    try:
        with torch.device("meta"):
            probe = cls(config)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ConfigError(f"component {name!r}: cannot build {cls.__name__}: {err}") from err
    stored = {k.partition(".")[2]: shape for k, shape in shapes.items()
              if k.partition(".")[0] == name}
    expected = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    for key, shape in expected.items():
        if key in stored and stored[key] != shape:
            suspects = [f for f, v in fields.items()
                        if isinstance(v, int) and not isinstance(v, bool) and v in shape
                        and v not in stored[key]]
            hint = f" (check {', '.join(repr(f) for f in suspects)})" if suspects else ""
            raise ConfigError(
                f"component {name!r}: weight {key!r} has shape {stored[key]} in "
                f"{WEIGHTS_FILE} but the config builds {shape}{hint}"
            )
    unstored = sum(t.numel() for k, t in [*probe.named_parameters(), *probe.named_buffers()]
                   if k not in expected)
    if unstored > MAX_UNSTORED_ELEMENTS:
        raise ConfigError(
            f"component {name!r}: the config builds {unstored:,} values that are not in "
            f"{WEIGHTS_FILE} (over {MAX_UNSTORED_ELEMENTS:,}); check its sizes"
        )


def _component_class(name: str, entry: dict[str, Any]) -> type[nn.Module]:
    class_name = entry.get("class")
    module_name = entry.get("module")
    if (
        class_name not in _registry()
        and isinstance(module_name, str)
        and _MODULE_NAME.match(module_name)
    ):
        # Importing the defining module runs its @register_component.
        try:
            importlib.import_module(module_name)
        except ImportError:
            pass
    if class_name not in _REGISTRY:
        raise ConfigError(
            f"component {name!r}: unknown class {class_name!r} (known: {sorted(_REGISTRY)}); "
            f"the bundle was written by other code or needs a newer version of mdvae"
        )
    return _REGISTRY[class_name]


def _build(name: str, entry: Any, metadata: dict[str, str]) -> nn.Module:
    if not isinstance(entry, dict) or set(entry) - {"class", "module", "config"}:
        raise ConfigError(
            f'component {name!r}: entry must hold "class", "module" and "config" only'
        )
    cls = _component_class(name, entry)
    config_cls = _config_class(cls)
    try:
        config = config_cls.from_dict(entry.get("config"))
    except ConfigError as err:
        raise ConfigError(f"component {name!r}: {err}") from err
    saved = metadata.get(f"config.{name}")
    if saved is not None:
        _compare_configs(name, config, config_cls, saved)
    try:
        module = cls(config)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"component {name!r}: cannot build {cls.__name__}: {err}") from err
    return module


def _compare_configs(name: str, config: ConfigBase, config_cls: type[ConfigBase], saved: str):
    """Refuse a config.json that differs from the config stored beside the weights."""
    try:
        weights_config = config_cls.from_dict(json.loads(saved)).to_dict()
    except (json.JSONDecodeError, ConfigError) as err:
        raise ConfigError(f"component {name!r}: config stored with the weights: {err}") from err
    current = config.to_dict()
    changed = sorted(k for k in current if current[k] != weights_config.get(k))
    if changed:
        detail = ", ".join(
            f"'{k}' is {current[k]!r} in {CONFIG_FILE} but {weights_config.get(k)!r} "
            f"for the weights"
            for k in changed
        )
        raise ConfigError(f"component {name!r}: {CONFIG_FILE} does not match the weights: {detail}")


def _load_weights(components: dict[str, nn.Module], weights: dict[str, torch.Tensor]) -> None:
    by_component: dict[str, dict[str, torch.Tensor]] = {name: {} for name in components}
    unexpected = []
    for key, value in weights.items():
        name, _, sub = key.partition(".")
        if name in by_component and sub:
            by_component[name][sub] = value
        else:
            unexpected.append(key)
    if unexpected:
        raise ConfigError(
            f"{WEIGHTS_FILE} holds weights of no listed component: {_few(unexpected)}"
        )
    for name, module in components.items():
        expected = module.state_dict()
        given = by_component[name]
        missing = sorted(set(expected) - set(given))
        extra = sorted(set(given) - set(expected))
        if missing:
            raise ConfigError(f"component {name!r}: missing weights {_few(missing)}")
        if extra:
            raise ConfigError(f"component {name!r}: unexpected weights {_few(extra)}")
        for key, value in expected.items():
            if given[key].shape != value.shape:
                raise ConfigError(
                    f"component {name!r}: weight {key!r} has shape {tuple(given[key].shape)} "
                    f"in the bundle but the config builds {tuple(value.shape)}"
                )
        module.load_state_dict(given, strict=True)


def _few(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(repr(k) for k in keys[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")
