"""Stage 2: train the MDVAE, or a DSAE baseline, inside the frozen stage-1 VQ-VAEs.

The models see the VQ-VAE encoders' continuous outputs before quantisation. Those are
computed once per pair of stage-1 models and cached in the store (features/<key>/), so
every stage-2 run on the same VQ-VAEs reuses them.

    python -m train.stage2 --store data/synthetic --vq-visual runs/vq_visual \\
        --vq-audio runs/vq_audio --model mdvae --out runs/mdvae
    python -m train.stage2 ... --model dsae-visual --out runs/dsae_visual
    python -m train.stage2 ... --model dsae-audio --out runs/dsae_audio
"""

from __future__ import annotations

import argparse
import hashlib
import sys

import numpy as np
import torch
from tqdm import tqdm

from mdvae.codec import AVCodec
from mdvae.dsae import DSAE, DSAEConfig
from mdvae.mdvae import MDVAE, MDVAEConfig
from mdvae.store import Store
from mdvae.vqvae import VQVAE
from train import common
from train.data import FeatureWindowStream, fixed_batches, window_starts

MODELS = ("mdvae", "dsae-audio", "dsae-visual")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train.stage2", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True)
    parser.add_argument("--vq-visual", required=True, help="stage-1 visual run folder")
    parser.add_argument("--vq-audio", required=True, help="stage-1 audio run folder")
    parser.add_argument("--model", default="mdvae", choices=MODELS)
    parser.add_argument("--out", required=True, help="run folder")
    parser.add_argument("--preset", default="synthetic", choices=["synthetic", "mead"])
    parser.add_argument("--seq-len", type=int, default=30, help="training window T (frames)")
    parser.add_argument("--kl-warmup", type=int, default=1000,
                        help="steps over which the KL weight grows from 0 to 1 (0: off)")
    parser.add_argument("--obs-init", default="config", choices=["config", "data"],
                        help="start of the decoders' per-dimension log-variances on a new run: "
                             "'config' = the model config's obs_logvar_init (default), 'data' = "
                             "the training features' own (4x faster to the same -ELBO, but on "
                             "the synthetic store the emotion then went to z_av, not w)")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--device", default=None)
    common.add_config_flags(parser, common.RunConfig)
    common.add_config_flags(parser, MDVAEConfig, prefix="mdvae_")
    common.add_config_flags(parser, DSAEConfig, prefix="dsae_")
    return parser


def load_stage1(run_dir: str, device: str | torch.device = "cpu") -> VQVAE:
    """The VQ-VAE of a stage-1 run folder, frozen, in eval mode."""
    from mdvae.vqvae import VQVAEConfig

    run = common.RunFolder(run_dir, writer=False)
    saved = run.read_config()
    if saved.get("program") != "stage1":
        raise common.CheckpointError(f"{run_dir} is not a stage-1 run folder")
    model = VQVAE(VQVAEConfig.from_dict(saved["model"]))
    checkpoint = run.load_checkpoint(required=True)
    model.load_state_dict(checkpoint["model"])
    model.to(device).eval().requires_grad_(False)
    return model


def feature_key(vq_audio: VQVAE, vq_visual: VQVAE) -> str:
    """A hash of both stage-1 models' weights: cached features are valid for these only."""
    digest = hashlib.sha256()
    for model in (vq_audio, vq_visual):
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


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


def build_model(kind: str, args: argparse.Namespace, saved: dict | None):
    if kind == "mdvae":
        cfg = (MDVAEConfig.from_dict(saved) if saved is not None
               else common.config_from_flags(args, MDVAEConfig.preset(args.preset),
                                             prefix="mdvae_"))
        return MDVAE(cfg), cfg
    modality = kind.split("-")[1]
    cfg = (DSAEConfig.from_dict(saved) if saved is not None
           else common.config_from_flags(args, DSAEConfig.preset(args.preset, modality),
                                         prefix="dsae_"))
    return DSAE(cfg), cfg


@torch.no_grad()
def init_obs_variance(model: torch.nn.Module, audio: np.ndarray, visual: np.ndarray,
                      rows: np.ndarray, *, sample: int = 20000, seed: int = 0) -> dict[str, float]:
    """Start each decoder's log-variances at the training features' own, per dimension.

    That is what a decoder that predicts only the mean would reach. From the config's
    flat start (log-variance 0) AdamW moves a log-variance by about the learning rate per
    step, so at lr 1e-3 the visual decoder spent thousands of steps with its variance far
    above its error (on the synthetic store the visual features' median log-variance is
    -3.2 and a trained MDVAE's residuals' -5.8): so weak a likelihood acts like a large
    beta, and the latents meanwhile learn only the coarsest factors. Measured there: the
    MDVAE's validation -ELBO after 3,000 steps is -1,910 nats/frame from this start and
    +891 from the flat one, which needed 12,000 steps to reach -1,964. But it is not the
    default (`--obs-init data` turns it on): trained so for 12,000 steps, the MDVAE's
    validation -ELBO peaked at step 4,000 (-2,128) and its w kept less emotion (test probe
    0.22 against 0.38), the emotion going to z_av instead. The floor `logvar_min` applies.
    Returns the median starting log-variance of each decoder.
    """
    pick = np.sort(np.random.default_rng(seed).choice(rows, size=min(sample, len(rows)),
                                                       replace=False))
    streams = {"audio": audio, "visual": visual}
    decoders = ({"audio": model.decoder_x_a, "visual": model.decoder_x_v}
                if isinstance(model, MDVAE) else {model.config.modality: model.decoder_x})
    medians = {}
    for name, decoder in decoders.items():
        x = np.asarray(streams[name][pick], np.float64)  # float16 caches overflow in var()
        logvar = torch.from_numpy(np.log(x.var(0) + 1e-12)).to(decoder.logvar)
        decoder.logvar.copy_(logvar.clamp(min=decoder.logvar_min))
        medians[name] = float(decoder.logvar.median())
    return medians


def kl_scale(step: int | None, warmup: int) -> float:
    """KL warm-up: the KL terms' weight grows linearly from 0 to 1 over ``warmup`` steps.

    Early in training the decoders ignore the dynamical latents, and a full KL weight then
    pushes their posteriors onto the priors for good (posterior collapse: on the synthetic
    data the V-DSAE's z and the MDVAE's z_v carried 0 nats without warm-up). Validation
    (step None) always reports the full objective.
    """
    if step is None or warmup <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup)


def make_step_fn(kind: str, device: torch.device, warmup: int):
    def step_fn(model: torch.nn.Module, batch: dict, step: int | None) -> dict[str, torch.Tensor]:
        x_a, x_v = batch["x_a"].to(device), batch["x_v"].to(device)
        if kind == "mdvae":
            out = model(x_a, x_v)
        else:
            out = model(x_a if kind == "dsae-audio" else x_v)
        terms = out.loss
        # total = reconstructions + sum of beta-weighted KLs; scale only the KL part
        rec = sum(v for k, v in vars(terms).items() if k.startswith("rec"))
        scale = kl_scale(step, warmup)
        losses = {"total": rec + scale * (terms.total - rec)}
        for name, value in vars(terms).items():
            if name != "total" and torch.is_tensor(value) and value.dim() == 0:
                losses[name] = value.detach()
        if step is None:
            losses["negative_elbo"] = terms.negative_elbo.detach()
        return losses

    return step_fn


def main(argv: list[str] | None = None) -> common.TrainResult:
    args = build_parser().parse_args(argv)
    d = common.setup_distributed(args.device)
    run = common.RunFolder(args.out, writer=d.is_main)
    saved_model = None
    if args.resume:
        # Read and check the checkpoint before anything is written: a failed resume leaves
        # the run folder as it was.
        run.load_checkpoint(required=True)
        saved = run.read_config()
        cfg = common.config_from_flags(args, common.RunConfig.from_dict(saved["run"]))
        saved_model = saved["model"]
        args.seq_len = saved["seq_len"]
        args.kl_warmup = saved["kl_warmup"]
        earlier = run.store_history(saved, args.store)
    else:
        earlier = []
        cfg = common.config_from_flags(args, common.RunConfig(steps=4000, batch_size=32,
                                                              lr=1e-3, val_every=500))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    common.seed_everything(cfg.seed)
    store = Store(args.store)
    vq_audio, vq_visual = load_stage1(args.vq_audio), load_stage1(args.vq_visual)
    # rank 0 writes the cache; the others wait for it rather than encoding too
    if d.is_main:
        audio, visual, key = cached_features(store, vq_audio, vq_visual)
    if d.world > 1:
        torch.distributed.barrier()
    if not d.is_main:
        audio, visual, key = cached_features(store, vq_audio, vq_visual, write=False)

    model, model_cfg = build_model(args.model, args, saved_model)
    obs_init = saved.get("obs_init", "config") if args.resume else args.obs_init
    if not args.resume and obs_init == "data" and model_cfg.learn_obs_variance:
        frames = window_starts(store, "train", 1)  # every training frame
        medians = init_obs_variance(model, audio, visual, frames, seed=cfg.seed)
        if d.is_main:
            print("decoder log-variances start at the features' (median "
                  + ", ".join(f"{k} {v:.2f}" for k, v in medians.items()) + ")",
                  file=sys.stderr)
    run.write_config({
        "program": "stage2",
        "store": str(args.store),
        "earlier_stores": earlier,
        "model_kind": args.model,
        "model_class": type(model).__name__,
        "vq_visual": str(args.vq_visual),
        "vq_audio": str(args.vq_audio),
        "feature_key": key,
        "preset": args.preset,
        "seq_len": args.seq_len,
        "kl_warmup": args.kl_warmup,
        "obs_init": obs_init,
        "run": cfg.to_dict(),
        "model": model_cfg.to_dict(),
    })
    train = FeatureWindowStream(audio, visual, window_starts(store, "train", args.seq_len),
                                args.seq_len, cfg.batch_size, cfg.seed)
    val = fixed_batches(
        FeatureWindowStream(audio, visual, window_starts(store, "val", args.seq_len),
                            args.seq_len, cfg.batch_size, cfg.seed + 1),
        cfg.val_batches,
    )
    try:
        result = common.train_loop(
            model=model,
            run=run,
            cfg=cfg,
            d=d,
            train_batches=train,
            val_batches=lambda: iter(val),
            step_fn=make_step_fn(args.model, d.device, args.kl_warmup),
            items_per_batch=lambda b: b["x_a"].shape[0] * b["x_a"].shape[1],
            resume=args.resume,
            desc=f"stage2 {args.model}",
        )
    finally:
        common.teardown_distributed()
    if d.is_main:
        print(f"stage2 {args.model}: {result.step} steps, {result.items_per_second:.0f} "
              f"frames/s, val {result.last_val}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
