"""Stage 2: train the MDVAE, or a DSAE baseline, inside the frozen stage-1 VQ-VAEs.

The models see the VQ-VAE encoders' continuous outputs before quantisation. Those are
computed once per pair of stage-1 models and cached in the store (features/<key>/), so
every stage-2 run on the same VQ-VAEs reuses them.

    python -m train.stage2 --store data/synthetic --vq-visual runs/vq_visual \\
        --vq-audio runs/vq_audio --model mdvae --out runs/mdvae
    python -m train.stage2 ... --model dsae-visual --out runs/dsae_visual
    python -m train.stage2 ... --model dsae-audio --out runs/dsae_audio
    python -m train.stage2 ... --model dsae-visual --like-mdvae runs/mdvae --out ...

A DSAE's sizes default to those of the --preset's MDVAE; --like-mdvae takes them (w, z =
z_av + z_a or z_av + z_v, widths, beta_w) from a trained MDVAE's run folder instead, so
the baseline matches the model it is compared with; --dsae-* flags still override.

--init-from RUN fine-tunes: a new run folder starts from a finished run's weights with a
fresh optimiser and learning-rate schedule, e.g. with a higher decoder floor:

    python -m train.stage2 ... --model mdvae --init-from runs/mdvae --out runs/mdvae_ft \\
        --steps 4000 --kl-warmup 0 --mdvae-obs-logvar-min -3

With --mdvae-w-face-network true on a run without it, q(w)'s new face network starts as a
copy of the shared one (the same function as the run's); with false on a run with it, the
copy is dropped.

A decoder width flag on a fine-tune (--mdvae-audio-decoder-hidden,
--mdvae-visual-decoder-hidden, --dsae-decoder-hidden) builds that decoder at the new width:
its mean network starts afresh, its log-variances and every other weight come from the run;
with --train-only (below) it learns to render the latents the run learnt, and nothing else
moves.

A fine-tune can add or remove a training term outside the ELBO (--mdvae-aux-clip-means and
its --mdvae-aux-clip-means-streams, an audio --mdvae-swap-cycle-judge): the heads it needs
start afresh, or are dropped.

--freeze-w-encoder (with --init-from) keeps q(w) exactly as the source run learnt it: every
weight the posterior of w depends on is frozen, and the rest (the z's, the priors, the
decoders) trains, e.g. the decoders again with the floor back at -6.

--train-only MODULE ... (with --init-from) trains the named parts of the model alone and
keeps every other weight as the source run learnt it. With the decoders alone
(`decoder_x_v`, `decoder_x_a`) this is the ELBO maximised over the decoders for the
posteriors the run learnt: a floor raised to shape what the encoders learn can be lowered
again for the decoders without moving any latent, e.g.

    python -m train.stage2 ... --model mdvae --init-from runs/mdvae --out runs/mdvae_dec \
        --steps 4000 --kl-warmup 0 --train-only decoder_x_v --mdvae-obs-logvar-min -9
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from mdvae.data.store import Store
from mdvae.errors import ConfigError
from mdvae.model.dsae import DSAE, DSAEConfig
from mdvae.model.elbo import KLWeights
from mdvae.model.mdvae import MDVAE, MDVAEConfig
from train import common
from train.data import FeatureWindowStream, fixed_batches
from train.runs import cached_features, load_stage1, stage1_keys, trained_inside

MODELS = ("mdvae", "dsae-audio", "dsae-visual")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train.stage2", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True)
    parser.add_argument("--vq-visual", required=True, help="stage-1 visual run folder")
    parser.add_argument("--vq-audio", required=True, help="stage-1 audio run folder")
    parser.add_argument("--model", default=None, choices=MODELS,
                        help="default mdvae; a resumed run keeps its own")
    parser.add_argument("--out", required=True, help="run folder")
    parser.add_argument("--preset", default="synthetic", choices=["synthetic", "mead", "authors"],
                        help="config preset; \"authors\": every width of the authors' code")
    parser.add_argument("--seq-len", type=int, default=30, help="training window T (frames)")
    parser.add_argument("--kl-warmup", type=int, default=1000,
                        help="steps over which the KL weight grows from 0 to 1 (0: off)")
    parser.add_argument("--static-first", type=int, default=0,
                        help="steps during which the decoders see w alone (the z's zeroed, "
                             "their KLs out of the loss) before the z's join (0: off)")
    parser.add_argument("--z-warmup", type=int, default=0,
                        help="with --static-first: steps over which the z's KL weight then grows "
                             "from 0 to 1 (0: at once)")
    parser.add_argument("--z-v-warmup", type=int, default=None,
                        help="MDVAE with --static-first: z_v's own warm-up, in place of "
                             "--z-warmup for z_v alone (longer: z_v is cheaper than z_av for "
                             "longer after the z's join; default: --z-warmup)")
    parser.add_argument("--obs-init", default="config", choices=["config", "data"],
                        help="start of the decoders' per-dimension log-variances on a new run: "
                             "'config' = the model config's obs_logvar_init (default), 'data' = "
                             "the training features' own (4x faster to the same -ELBO, but on "
                             "the synthetic store the emotion then went to z_av, not w)")
    parser.add_argument("--like-mdvae", default=None, metavar="RUN",
                        help="DSAE only: take its sizes and beta_w from this MDVAE run "
                             "folder's config (DSAEConfig.from_mdvae), for a like-for-like "
                             "baseline; --dsae-* flags still override")
    parser.add_argument("--init-from", default=None, metavar="RUN",
                        help="a fine-tune: start a new run from this stage-2 run's weights (same "
                             "model kind, same VQ-VAE features) with a fresh optimiser and "
                             "schedule; the model config is that run's, and --mdvae-*/--dsae-* "
                             "flags may change what does not change the weights' shapes (the "
                             "decoder floor, the betas)")
    parser.add_argument("--w-face-network-from", default=None, metavar="RUN",
                        help="MDVAE, with --init-from and --mdvae-w-face-network true: start "
                             "q(w)'s own face network (per-frame network and summary) from "
                             "this V-DSAE run's (same widths, same VQ-VAE features) instead of "
                             "the run's: a face network pretrained as a face-only model's "
                             "(a departure)")
    parser.add_argument("--freeze-w-encoder", action="store_true",
                        help="with --init-from: keep q(w) as the source run learnt it (every "
                             "weight the posterior of w depends on is frozen) and train the "
                             "rest, e.g. the decoders again with another floor")
    parser.add_argument("--train-only", nargs="+", default=None, metavar="MODULE",
                        help="with --init-from: train these parts of the model alone (its "
                             "top-level modules, e.g. decoder_x_v decoder_x_a) and keep every "
                             "other weight as the source run learnt it")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--device", default=None)
    common.add_config_flags(parser, common.RunConfig)
    common.add_config_flags(parser, MDVAEConfig, prefix="mdvae_")
    common.add_config_flags(parser, DSAEConfig, prefix="dsae_")
    return parser


def build_model(kind: str, args: argparse.Namespace, saved: dict | None,
                base: dict | None = None):
    """The model and its config: a resumed run's ``saved`` config as it is; otherwise the
    preset's (or ``base``, a run's config to fine-tune from) with the flags applied."""
    if base is not None:
        cls = MDVAEConfig if kind == "mdvae" else DSAEConfig
        cfg = common.config_from_flags(args, cls.from_dict(base),
                                       prefix="mdvae_" if kind == "mdvae" else "dsae_")
        return (MDVAE(cfg) if kind == "mdvae" else DSAE(cfg)), cfg
    if kind == "mdvae":
        cfg = (MDVAEConfig.from_dict(saved) if saved is not None
               else common.config_from_flags(args, MDVAEConfig.preset(args.preset),
                                             prefix="mdvae_"))
        return MDVAE(cfg), cfg
    modality = kind.split("-")[1]
    if saved is not None:
        cfg = DSAEConfig.from_dict(saved)
    else:
        cfg = common.config_from_flags(args, dsae_base(args, modality), prefix="dsae_")
    return DSAE(cfg), cfg


DECODERS = ("decoder_x_a", "decoder_x_v", "decoder_x")  # an MDVAE's two, a DSAE's one


def fresh_resized_decoders(model: torch.nn.Module, weights: dict,
                           say: bool = True) -> dict:
    """`weights` with the mean network of each decoder whose width changed (a decoder width
    flag on a fine-tune) replaced by `model`'s own fresh one; its learnt log-variances, which
    do not depend on the width, are kept. A decoder whose input changed (a latent's size) is
    left as it is, like every other weight, for `load_state_dict` to refuse."""
    fresh = model.state_dict()
    for name in DECODERS:
        net = f"{name}.mean_net."
        keys = [k for k in fresh if k.startswith(net)]
        first = f"{net}0.weight"  # (width, inputs)
        if (first not in fresh or first not in weights
                or weights[first].shape[1] != fresh[first].shape[1]
                or all(k in weights and weights[k].shape == fresh[k].shape for k in keys)):
            continue
        weights = {k: v for k, v in weights.items() if not k.startswith(net)}
        weights.update({k: fresh[k] for k in keys})
        if say:
            print(f"{name} is {fresh[first].shape[0]} wide: its mean network starts afresh, its "
                  "log-variances from the run", file=sys.stderr)
    return weights


# parts an MDVAE has only for training terms outside the ELBO (`aux_clip_means`, an audio
# `swap_cycle_judge`): nothing the model infers or decodes with
TRAINING_HEADS = ("aux_x_a.", "aux_x_v.", "judge_features_x_a.", "judge_summary_x_a.",
                  "judge_w.")


def fresh_training_heads(model: torch.nn.Module, weights: dict, say: bool = True) -> dict:
    """`weights` with the training-only heads (TRAINING_HEADS) that `model` has and the run
    lacks started afresh (`model`'s own), and those the run has and `model` lacks dropped:
    a fine-tune can add or remove such a term. Every other weight is left as it is."""
    fresh = model.state_dict()
    dropped = [k for k in weights if k.startswith(TRAINING_HEADS) and k not in fresh]
    added = [k for k in fresh if k.startswith(TRAINING_HEADS) and k not in weights]
    weights = {k: v for k, v in weights.items() if k not in dropped}
    weights.update({k: fresh[k] for k in added})
    for keys, what in ((added, "start afresh"), (dropped, "are dropped")):
        names = sorted({k.split(".")[0] for k in keys})
        if names and say:
            print(f"training-only heads {', '.join(names)} {what}", file=sys.stderr)
    return weights


def read_init_run(path: str, kind: str, flag: str = "--init-from") -> dict:
    """A finished stage-2 run to fine-tune from (given as `flag`): its config, weights and a
    summary for the new run's config (where it came from, at which step)."""
    source = common.RunFolder(path, writer=False)
    config = source.read_config()
    if config.get("program") != "stage2" or config.get("model_kind") != kind:
        what = config.get("model_kind") or config.get("program")
        raise ConfigError(f"{flag} {path} is a {what} run, not a stage-2 {kind} one")
    checkpoint = source.load_checkpoint(required=True, weights_only=True)
    summary = {"run": str(path), "step": int(checkpoint["step"])}
    if "unpacked_from" in config:  # train.unpack: the bundle and the run it was trained as
        origin = config["unpacked_from"]
        summary["bundle"] = {"bundle": origin.get("bundle"), "component": origin.get("component"),
                             "run": origin.get("record", {}).get("run")}
    return {"config": config, "weights": checkpoint["model"], "summary": summary}


def w_encoder_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters the posterior q(w | x) depends on, in any layout: those that receive
    a gradient from its mean and log-variance on a small random input."""
    c = model.config
    x = torch.randn(2, 3, c.audio_dim if isinstance(model, MDVAE) else c.input_dim)
    inputs = ((x, torch.randn(2, 3, c.visual_dim)) if isinstance(model, MDVAE) else (x,))
    params = list(model.parameters())
    trainable = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            _, posterior = model.infer(*inputs, sample=False)
            reach = posterior.w.mean.sum() + posterior.w.logvar.sum()
            grads = torch.autograd.grad(reach, params, allow_unused=True)
    finally:
        for p, flag in zip(params, trainable):
            p.requires_grad_(flag)
    return [p for p, g in zip(params, grads) if g is not None]


def parameters_outside(model: torch.nn.Module, names: list[str]) -> list[torch.nn.Parameter]:
    """The parameters of `model` outside its top-level modules `names` (refusing a name it
    does not have): what --train-only freezes."""
    children = dict(model.named_children())
    unknown = [n for n in names if n not in children]
    if unknown:
        raise ConfigError(f"--train-only: {type(model).__name__} has no part named "
                          f"{', '.join(map(repr, unknown))}; its parts: {', '.join(children)}")
    keep = {id(p) for n in names for p in children[n].parameters()}
    return [p for p in model.parameters() if id(p) not in keep]


def dsae_base(args: argparse.Namespace, modality: str) -> DSAEConfig:
    """The DSAE config before --dsae-* flags: the preset's, or the --like-mdvae run's."""
    if not getattr(args, "like_mdvae", None):
        return DSAEConfig.preset(args.preset, modality)
    saved = common.RunFolder(args.like_mdvae, writer=False).read_config()
    if saved.get("model_class") not in (None, "MDVAE"):
        raise ConfigError(f"--like-mdvae {args.like_mdvae} is a {saved['model_class']} run, "
                          "not an MDVAE one")
    mdvae = MDVAEConfig.from_dict(saved["model"])
    return DSAEConfig.from_mdvae(mdvae, modality, beta_w=mdvae.beta_w)


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


def kl_weights(step: int | None, warmup: int, static_first: int = 0,
               z_warmup: int = 0, z_v_warmup: int | None = None) -> KLWeights:
    """The schedule's weights on the KL terms at `step` (None: validation, the ELBO itself).

    KL(q(w)) is warmed up over `warmup` steps. Without `static_first` the z's KLs follow
    the same warm-up. With it, the decoders see w alone for the first `static_first` steps
    (the z's zeroed, their KLs out of the loss), then the z's join and their KL weight grows
    from 0 to 1 over `z_warmup` steps: w takes what is constant over a clip (identity,
    emotion) before the z's can carry it from frame to frame. `z_v_warmup`, where given,
    is z_v's own warm-up after the join, in place of `z_warmup` (the MDVAE's).
    """
    w = kl_scale(step, warmup)
    if step is None or static_first <= 0:
        return KLWeights(w, w)
    if step < static_first:
        return KLWeights(w, 0.0, static_only=True)
    z_v = None if z_v_warmup is None else kl_scale(step - static_first, z_v_warmup)
    return KLWeights(w, kl_scale(step - static_first, z_warmup), z_v=z_v)


def make_step_fn(kind: str, device: torch.device, warmup: int, static_first: int = 0,
                 z_warmup: int = 0, z_v_warmup: int | None = None):
    def step_fn(model: torch.nn.Module, batch: dict, step: int | None) -> dict[str, torch.Tensor]:
        x_a, x_v = batch["x_a"].to(device), batch["x_v"].to(device)
        scale = kl_weights(step, warmup, static_first, z_warmup, z_v_warmup)
        if kind == "mdvae":
            out = model(x_a, x_v, kl_weight=scale)
        else:
            out = model(x_a if kind == "dsae-audio" else x_v, kl_weight=scale)
        terms = out.loss
        losses = {"total": terms.total}
        for name, value in vars(terms).items():
            if name != "total" and torch.is_tensor(value) and value.dim() == 0:
                losses[name] = value.detach()
        for name, value in getattr(out, "extra", {}).items():  # the departures' own terms
            losses[name] = value.detach()
        if step is None:
            losses["negative_elbo"] = terms.negative_elbo.detach()
        return losses

    return step_fn


def resolved_model_kind(args: argparse.Namespace) -> str:
    """--model, or with --resume the kind the run folder was trained as (a DSAE run resumed
    without --model is a DSAE run; a different --model is refused)."""
    if not args.resume:
        return args.model or "mdvae"
    config = Path(args.out) / "config.json"
    saved = json.loads(config.read_text()).get("model_kind") if config.exists() else None
    if saved is None:  # no run there: the checkpoint check reports it
        return args.model or "mdvae"
    if args.model is not None and args.model != saved:
        raise ConfigError(f"{args.out} is a {saved} run: it resumes as one (--model {args.model} "
                          "was given)")
    return saved


def main(argv: list[str] | None = None) -> common.TrainResult:
    args = build_parser().parse_args(argv)
    args.model = resolved_model_kind(args)
    if args.like_mdvae and args.model == "mdvae":
        raise ConfigError("--like-mdvae is for the DSAE baselines (--model dsae-audio or "
                          "dsae-visual)")
    if args.init_from and args.resume:
        raise ConfigError("--init-from starts a new run; --resume continues one: give one")
    if args.freeze_w_encoder and not args.init_from:
        raise ConfigError("--freeze-w-encoder keeps a trained q(w): fine-tune with --init-from "
                          "(a resumed run keeps its own setting)")
    if args.train_only and not args.init_from:
        raise ConfigError("--train-only trains part of a trained model: fine-tune with "
                          "--init-from (a resumed run keeps its own setting)")
    if args.train_only and args.freeze_w_encoder:
        raise ConfigError("--train-only already names what trains: drop --freeze-w-encoder")
    if args.init_from and args.obs_init != "config":
        raise ConfigError("--init-from keeps the run's trained decoder variances; "
                          "--obs-init applies to a model trained from scratch")
    if args.z_v_warmup is not None and not args.resume and (
            args.model != "mdvae" or args.static_first <= 0):
        raise ConfigError("--z-v-warmup is z_v's own warm-up after the static-first phase: "
                          "give it to an MDVAE with --static-first")
    init = read_init_run(args.init_from, args.model) if args.init_from else None
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
        args.static_first = saved.get("static_first", 0)
        args.z_warmup = saved.get("z_warmup", 0)
        args.z_v_warmup = saved.get("z_v_warmup")
        args.freeze_w_encoder = saved.get("freeze_w_encoder", False)
        args.train_only = saved.get("train_only")
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

    keys = stage1_keys(vq_audio, vq_visual)
    if init is not None and not trained_inside(init["config"], keys):
        raise ConfigError(
            f"--init-from {args.init_from} was trained on features "
            f"{init['config'].get('feature_key')} and these VQ-VAEs give {key}: fine-tune "
            "inside the VQ-VAEs it was trained in")
    model, model_cfg = build_model(args.model, args, saved_model,
                                   init["config"]["model"] if init is not None else None)
    if args.w_face_network_from and not (init is not None and args.model == "mdvae"
                                         and model_cfg.w_face_network):
        raise ConfigError("--w-face-network-from starts q(w)'s own face network of an MDVAE "
                          "fine-tune: give --model mdvae, --init-from and "
                          "--mdvae-w-face-network true")
    face_from = (read_init_run(args.w_face_network_from, "dsae-visual", "--w-face-network-from")
                 if args.w_face_network_from else None)
    if face_from is not None and not trained_inside(face_from["config"], keys):
        raise ConfigError(f"--w-face-network-from {args.w_face_network_from} was trained on "
                          f"other features than these VQ-VAEs' ({key})")
    if args.freeze_w_encoder and model_cfg.w_input_dropout > 0:
        prefix = "mdvae" if args.model == "mdvae" else "dsae"
        raise ConfigError(f"--freeze-w-encoder keeps q(w) as it was learnt, but its inputs "
                          f"would still be dropped in training (w_input_dropout "
                          f"{model_cfg.w_input_dropout}): add --{prefix}-w-input-dropout 0")
    if init is not None:
        weights = init["weights"]
        if (args.model == "mdvae"
                and init["config"]["model"].get("w_per_stream", False) != model_cfg.w_per_stream):
            # q(w)'s head changes shape: everything else starts from the run, q(w)'s head afresh
            if args.freeze_w_encoder:
                raise ConfigError("--freeze-w-encoder keeps q(w) as it was learnt, and "
                                  "--mdvae-w-per-stream changes it: train the new q(w) first")
            fresh = model.state_dict()
            weights = {k: v for k, v in weights.items() if not k.startswith("posterior_w.")}
            weights.update({k: v for k, v in fresh.items() if k.startswith("posterior_w.")})
            if d.is_main:
                print(f"q(w)'s head starts afresh (w_per_stream {model_cfg.w_per_stream}); "
                      f"the rest from {args.init_from}", file=sys.stderr)
        if (args.model == "mdvae" and init["config"]["model"].get("w_face_network", False)
                != model_cfg.w_face_network):
            weights = MDVAE.with_w_face_network(weights, model_cfg.w_face_network)
            if d.is_main:
                print("q(w)'s face network " + ("starts as a copy of the shared one"
                                                if model_cfg.w_face_network else
                                                "is dropped: q(w) reads the shared one"),
                      file=sys.stderr)
        weights = fresh_resized_decoders(model, weights, d.is_main)
        weights = fresh_training_heads(model, weights, d.is_main)
        if face_from is not None:
            weights = MDVAE.with_w_face_network_from(weights, face_from["weights"])
            if d.is_main:
                print(f"q(w)'s face network starts from {args.w_face_network_from}'s",
                      file=sys.stderr)
        try:
            model.load_state_dict(weights)
        except RuntimeError as error:
            what = (f" or --w-face-network-from {args.w_face_network_from}"
                    if face_from is not None else "")
            raise ConfigError(f"--init-from {args.init_from}{what}: its weights do not fit "
                              f"this config (a size flag changed?): {error}") from None
    frozen, what = [], ""  # --freeze-w-encoder and --train-only exclude each other
    if args.freeze_w_encoder:
        frozen, what = w_encoder_parameters(model), "q(w)"
    elif args.train_only:
        frozen = parameters_outside(model, args.train_only)
        what = f"all but {', '.join(args.train_only)}"
    for p in frozen:
        p.requires_grad_(False)
    if frozen and d.is_main:
        print(f"{what} frozen: {sum(p.numel() for p in frozen):,} of "
              f"{sum(p.numel() for p in model.parameters()):,} weights", file=sys.stderr)
    obs_init = (saved.get("obs_init", "config") if args.resume
                else "run" if init is not None else args.obs_init)
    if not args.resume and obs_init == "data" and model_cfg.learn_obs_variance:
        frames = store.window_starts("train", 1)  # every training frame
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
        **keys,
        "preset": args.preset,
        "seq_len": args.seq_len,
        "kl_warmup": args.kl_warmup,
        "static_first": args.static_first,
        "z_warmup": args.z_warmup,
        **({"z_v_warmup": args.z_v_warmup} if args.z_v_warmup is not None else {}),
        "obs_init": obs_init,
        **({"freeze_w_encoder": True} if args.freeze_w_encoder else {}),
        **({"train_only": list(args.train_only)} if args.train_only else {}),
        **({"init_from": init["summary"]} if init is not None
           else {"init_from": saved["init_from"]} if args.resume and "init_from" in saved
           else {}),
        **({"w_face_network_from": face_from["summary"]} if face_from is not None
           else {"w_face_network_from": saved["w_face_network_from"]}
           if args.resume and "w_face_network_from" in saved else {}),
        "run": cfg.to_dict(),
        "model": model_cfg.to_dict(),
    })
    train = FeatureWindowStream(audio, visual, store.window_starts("train", args.seq_len),
                                args.seq_len, cfg.batch_size, cfg.seed)
    val = fixed_batches(
        FeatureWindowStream(audio, visual, store.window_starts("val", args.seq_len),
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
            step_fn=make_step_fn(args.model, d.device, args.kl_warmup, args.static_first,
                                 args.z_warmup, args.z_v_warmup),
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
