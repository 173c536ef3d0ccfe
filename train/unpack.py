"""Unpack a bundle into run folders, so that the training programs can start from its models.

    python -m train.unpack --bundle checkpoints --out runs/shipped
    python -m train.stage2 --store data/synth200 --vq-visual runs/shipped/vq_visual \\
        --vq-audio runs/shipped/vq_audio --model mdvae --init-from runs/shipped/mdvae \\
        --out runs/mdvae_more --steps 12000 --kl-warmup 0

A bundle holds weights, not training checkpoints: to train on from a shipped model (a
Hub download, or `checkpoints/` when the runs it came from are gone) it has to look like
a run folder again. Each model component becomes one (`vq_visual`, `vq_audio`, `mdvae`,
`dsae_audio`, `dsae_visual`, those the bundle has) with a config.json in the training
programs' format and a checkpoint that holds the weights and the step they were exported
at. Every program that reads a trained run accepts them: `train.stage2` (its --vq-*
flags, --init-from, --like-mdvae), `train.emotion`, `train.export`, `train.diagnose`,
`train.evaluate` with run folders. They hold no optimiser state, so they cannot be
resumed: a new run starts from one with --init-from (a fresh optimiser and schedule).

The stage-2 folders record the keys of the bundle's VQ-VAEs (`stage1_keys`), so a fine-tune is
checked against the VQ-VAEs it is given, as for any run. Each config keeps where it came
from (`unpacked_from`: the bundle, the component and the training record the bundle
carried), and an export of a model fine-tuned from one names it in the model card.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from mdvae.bundle import load_bundle
from mdvae.components import DSAE_AUDIO, DSAE_VISUAL, MDVAE_MODEL, VQ_AUDIO, VQ_VISUAL
from mdvae.errors import ConfigError
from train import common
from train.runs import stage1_keys

# Component -> (program, stage-2 model kind)
UNPACKED = {
    VQ_VISUAL: ("stage1", None),
    VQ_AUDIO: ("stage1", None),
    MDVAE_MODEL: ("stage2", "mdvae"),
    DSAE_AUDIO: ("stage2", "dsae-audio"),
    DSAE_VISUAL: ("stage2", "dsae-visual"),
}


def run_config(name: str, module: torch.nn.Module, record: dict[str, Any],
               keys: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
    """The config.json of the run folder for component `name` (`keys`: the bundle's
    VQ-VAEs' `stage1_keys`)."""
    program, kind = UNPACKED[name]
    config: dict[str, Any] = {
        "program": program,
        "store": record.get("store"),
        "earlier_stores": record.get("earlier_stores", []),
        "model_class": type(module).__name__,
        "run": {"batch_size": record.get("batch_size")},
        "model": module.config.to_dict(),
        "unpacked_from": {**source, "component": name,
                          "record": {k: v for k, v in record.items() if k != "model"}},
    }
    if program == "stage1":
        config["modality"] = "visual" if name == VQ_VISUAL else "audio"
    else:
        config.update({"model_kind": kind, **keys})
    return config


def unpack(bundle_path: str, out: str | Path) -> dict[str, Path]:
    """Write one run folder per model component of the bundle under `out`; their paths."""
    bundle = load_bundle(bundle_path)
    out = Path(out)
    present = [name for name in UNPACKED if name in bundle.components]
    if VQ_VISUAL not in present or VQ_AUDIO not in present:
        raise ConfigError(f"{bundle_path} has no VQ-VAEs to unpack ({', '.join(present)})")
    taken = [str(out / name) for name in present if (out / name).exists()]
    if taken:
        raise ConfigError(f"{', '.join(taken)} already exist: unpack into a new folder")
    keys = stage1_keys(bundle.components[VQ_AUDIO], bundle.components[VQ_VISUAL])
    source = {"bundle": str(bundle_path), "exported": bundle.info.get("exported"),
              "unpacked": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    records = bundle.info.get("runs", {})
    folders = {}
    for name in present:
        module = bundle.components[name]
        record = records.get(name, {})
        run = common.RunFolder(out / name)
        run.write_config(run_config(name, module, record, keys, source))
        run.save_checkpoint({"model": module.state_dict(), "step": int(record.get("steps", 0))})
        folders[name] = run.path
    return folders


def main(argv: list[str] | None = None) -> dict[str, Path]:
    parser = argparse.ArgumentParser(prog="python -m train.unpack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True, help="bundle folder or Hub repo id")
    parser.add_argument("--out", required=True, help="folder for the run folders (new)")
    args = parser.parse_args(argv)
    folders = unpack(args.bundle, args.out)
    for name, path in folders.items():
        print(f"{name}: {path}")
    return folders


if __name__ == "__main__":
    main()
