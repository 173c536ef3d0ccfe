"""Stage 1: train the visual or the audio VQ-VAE on a store (no temporal model).

    python -m train.stage1 --store data/synthetic --modality visual --out runs/vq_visual
    python -m train.stage1 --store data/synthetic --modality audio --out runs/vq_audio
    torchrun --nproc-per-node 4 -m train.stage1 ... --preset mead      # several GPUs

Add --resume to continue an interrupted run from its last checkpoint.
"""

from __future__ import annotations

import argparse
import sys

import torch

from mdvae.data.store import Store
from mdvae.stage1.vqvae import VQVAE, VQVAEConfig
from train import common
from train.data import FrameStream, fixed_batches

DEFAULT_RUN = {
    "visual": common.RunConfig(steps=3000, batch_size=64, lr=1e-3, val_every=500),
    "audio": common.RunConfig(steps=3000, batch_size=128, lr=1e-3, val_every=500),
}


def vqvae_preset(preset: str, modality: str) -> VQVAEConfig:
    """The synthetic default (small, CPU-trainable) or the MEAD reference widths."""
    return VQVAEConfig.mead(modality) if preset == "mead" else VQVAEConfig(modality=modality)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train.stage1", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True, help="dataset store (python -m train.prepare)")
    parser.add_argument("--modality", required=True, choices=["visual", "audio"])
    parser.add_argument("--out", required=True, help="run folder")
    parser.add_argument("--preset", default="synthetic", choices=["synthetic", "mead"],
                        help="model size preset; --model-* flags override single fields")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: auto)")
    common.add_config_flags(parser, common.RunConfig)
    common.add_config_flags(parser, VQVAEConfig, prefix="model_")
    return parser


def step_fn(model: torch.nn.Module, batch: dict, step: int | None) -> dict[str, torch.Tensor]:
    out = model(batch["x"])
    return {
        "total": out.loss.total,
        "reconstruction": out.loss.reconstruction.detach(),
        "commitment": out.loss.commitment.detach(),
        "perplexity": out.perplexity.detach(),
    }


def main(argv: list[str] | None = None) -> common.TrainResult:
    args = build_parser().parse_args(argv)
    d = common.setup_distributed(args.device)
    run = common.RunFolder(args.out, writer=d.is_main)
    if args.resume:
        # Read and check the checkpoint before anything is written: a failed resume leaves
        # the run folder as it was.
        run.load_checkpoint(required=True)
        saved = run.read_config()
        cfg = common.RunConfig.from_dict(saved["run"])
        cfg = common.config_from_flags(args, cfg)  # e.g. more --steps on resume
        model_cfg = VQVAEConfig.from_dict(saved["model"])
        earlier = run.store_history(saved, args.store)
    else:
        earlier = []
        cfg = common.config_from_flags(args, DEFAULT_RUN[args.modality])
        model_cfg = common.config_from_flags(
            args, vqvae_preset(args.preset, args.modality), prefix="model_"
        )
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    common.seed_everything(cfg.seed)
    store = Store(args.store)
    run.write_config({
        "program": "stage1",
        "store": str(args.store),
        "earlier_stores": earlier,
        "modality": args.modality,
        "preset": args.preset,
        "model_class": "VQVAE",
        "run": cfg.to_dict(),
        "model": model_cfg.to_dict(),
    })
    model = VQVAE(model_cfg)
    train = FrameStream(store, "train", args.modality, cfg.batch_size, cfg.seed)
    val = fixed_batches(FrameStream(store, "val", args.modality, cfg.batch_size, cfg.seed + 1),
                        cfg.val_batches)
    try:
        result = common.train_loop(
            model=model,
            run=run,
            cfg=cfg,
            d=d,
            train_batches=train,
            val_batches=lambda: iter(val),
            step_fn=lambda m, b, i: step_fn(m, {k: v.to(d.device) for k, v in b.items()}, i),
            items_per_batch=lambda b: len(b["x"]),
            resume=args.resume,
            desc=f"stage1 {args.modality}",
        )
    finally:
        common.teardown_distributed()
    if d.is_main:
        unit = "images" if args.modality == "visual" else "frames"
        print(
            f"stage1 {args.modality}: {result.step} steps, "
            f"{result.items_per_second:.0f} {unit}/s, val {result.last_val}",
            file=sys.stderr,
        )
    return result


if __name__ == "__main__":
    main()
