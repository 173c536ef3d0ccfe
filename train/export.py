"""Assemble a release bundle from training runs, with a model card; optionally push it.

    python -m train.export --vq-visual runs/vq_visual --vq-audio runs/vq_audio \\
        --mdvae runs/mdvae --dsae-audio runs/dsae_audio --dsae-visual runs/dsae_visual \\
        --emotion runs/emotion --results runs/eval/results.json --out checkpoints
    python -m train.export ... --push-to-hub you/vq-mdvae-synthetic
    python -m train.export ... --reference-store data/synthetic   # familiarity, calibration
    python -m train.export --bundle checkpoints --reference-store data/synthetic \\
        --out checkpoints                 # the same weights, the reference statistics added
    python -m train.export --bundle checkpoints --familiarity-store data/synth_ref \\
        --out checkpoints                 # the familiarity table from a pool of new speakers
    python -m train.export --bundle checkpoints --reference-store data/synth200 \\
        --calibration-store data/synth_new64 --out checkpoints   # temperatures fitted there
    python -m train.export --bundle checkpoints --mdvae runs/mdvae2 --dsae-audio ... \\
        --dsae-visual ... --emotion runs/emotion2 --out runs/bundle2   # new stage 2, same VQ-VAEs

`--reference-store` scores the store's test clips (the familiarity table the app places
every clip against) and fits each emotion head's temperature on out-of-fold logits of its
training and validation speakers' clips (`train/reference.py`); both go into the bundle's
info, so the app computes neither. `--familiarity-store` takes the familiarity table from
another store's test clips instead: a pool of new speakers, whose variety a benchmark's few
test speakers do not span (with 8 of them, one clip of a new synthetic speaker in eight was
called unfamiliar; research log, "Session 29"). `--calibration-store` fits the emotion heads'
temperatures on the clips of new speakers (its `--calibration-split`) instead of out of
fold: the out-of-fold speakers trained the encoder that gives w, and a temperature fitted
on them made two heads over-confident on new people (research log, "Session 31").

Training checkpoints (optimiser state, RNG, pickled) never leave the run folders: the
bundle holds only config.json, model.safetensors and the card.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from mdvae.bundle import load_bundle, save_bundle
from mdvae.components import (
    COMPARED,
    DSAE_AUDIO,
    DSAE_VISUAL,
    EMOTION_READERS,
    EMOTION_REFERENCE,
    MDVAE_MODEL,
    VQ_AUDIO,
    VQ_VISUAL,
)
from mdvae.data.store import Store
from mdvae.errors import ConfigError, MDVAEError
from mdvae.eval.report import reference_margin_lines, reference_rows
from mdvae.eval.report import summary as evaluation_summary
from train import common
from train.reference import familiarity_table, reference_info
from train.runs import load_stage1, load_stage2, stage1_keys, trained_inside


def run_summary(run_dir: str) -> dict[str, Any]:
    """What a run folder says about itself: program, data, steps, wall time, last validation.

    ``steps`` is the step of the checkpoint whose weights are exported (a run stopped
    between checkpoints has logged a few steps more); ``logged_steps`` the last logged one.
    """
    run = common.RunFolder(run_dir, writer=False)
    config = run.read_config()
    rows = run.read_log()
    checkpoint = run.load_checkpoint(required=True, weights_only=True)
    train_rows = [r for r in rows if r["split"] == "train"]
    val_rows = [r for r in rows if r["split"] == "val"]
    times = [r["time"] for r in rows]
    summary = {
        "run": str(run_dir),
        "store": config.get("store"),
        "earlier_stores": config.get("earlier_stores", []),
        "steps": int(checkpoint["step"]),
        "logged_steps": train_rows[-1]["step"] if train_rows else 0,
        "batch_size": config["run"]["batch_size"],
        "train_speed": round(train_rows[-1].get("speed", 0.0), 1) if train_rows else None,
        "last_val": {k: round(v, 5) for k, v in val_rows[-1].items()
                     if k not in ("step", "split", "time")} if val_rows else {},
        "model": config["model"],
    }
    if "init_from" in config:  # a fine-tune: where its starting weights came from
        summary["init_from"] = {**config["init_from"],
                                "earlier": earlier_fine_tunes(config["init_from"])}
    if len(times) > 1:
        summary["logged_wall_seconds"] = round(times[-1] - times[0], 1)
    return summary


def earlier_fine_tunes(start: dict[str, Any], limit: int = 10) -> list[dict[str, Any]]:
    """Where a fine-tune's source run started in turn, back to a run trained from scratch
    or unpacked from a bundle: the `init_from` of each source run's config, as far as the
    run folders can still be read (a chain stops at one that is gone)."""
    chain: list[dict[str, Any]] = []
    while "bundle" not in start and len(chain) < limit:
        try:
            start = common.RunFolder(start["run"], writer=False).read_config().get("init_from")
        except (common.CheckpointError, OSError, ValueError):
            break
        if not start:
            break
        chain.append(start)
    return chain


def data_summary(store_path: str) -> dict[str, Any]:
    store = Store(store_path)
    splits = {}
    for split in ("train", "val", "test"):
        clips = store.split_clips(split)
        splits[split] = {
            "speakers": sorted({c.speaker for c in clips}),
            "clips": len(clips),
            "frames": int(sum(c.length for c in clips)),
        }
    return {"store": str(store_path), "source": store.source_kind, "splits": splits}


def trained_on(run: dict[str, Any]) -> str:
    """"`a` (train split)", or for a run resumed on other stores "`a` to step N, then `b`";
    a fine-tune (stage 2 --init-from) names the run and step it started from."""
    parts = [f"`{e['store']}` to step {e['until_step']}" for e in run.get("earlier_stores", [])]
    parts.append(f"`{run.get('store', '?')}`")
    text = ", then ".join(parts) + " (train split)"
    if "init_from" in run:
        for i, start in enumerate([run["init_from"], *run["init_from"].get("earlier", [])]):
            text += "; fine-tuned from" if i == 0 else ", itself fine-tuned from"
            text += f" `{start['run']}` (step {start['step']})"
            if "bundle" in start:  # a run folder unpacked from a bundle (train.unpack)
                origin = start["bundle"]
                text += (f", the `{origin['component']}` of bundle `{origin['bundle']}` "
                         f"(trained as `{origin['run']}`)")
    return text


def model_card(info: dict[str, Any]) -> str:
    data = info.get("data", {})
    lines = [
        "---",
        "library_name: vq-mdvae",
        "tags: [audiovisual-speech, variational-autoencoder, vq-vae, disentanglement]",
        "---",
        "",
        "# VQ-MDVAE bundle",
        "",
        "A multimodal dynamical VAE (Sadok, Leglaive et al.) trained in two stages inside",
        "frozen per-modality VQ-VAEs, with the unimodal DSAE baselines and emotion heads.",
        "Load it with `mdvae.bundle.load_bundle(path_or_repo_id)`.",
        "",
        "## Training data",
        "",
        f"Source: `{data.get('source', '?')}` (store `{data.get('store', '?')}`).",
        "",
        "| split | speakers | clips | frames |",
        "|---|---|---|---|",
    ]
    for split, s in data.get("splits", {}).items():
        lines.append(f"| {split} | {len(s['speakers'])} | {s['clips']} | {s['frames']} |")
    lines += ["", "## Training runs", "",
              "| component | trained on | steps | batch | speed (items/s) |",
              "|---|---|---|---|---|"]
    for name, run in info.get("runs", {}).items():
        lines.append(f"| {name} | {trained_on(run)} | {run['steps']} | "
                     f"{run['batch_size']} | {run['train_speed']} |")
    emotion = info.get("emotion", {})
    if emotion:
        lines += ["", "## Emotion heads (accuracy on whole clips)", "",
                  "| head | reads w of | train | val | test |", "|---|---|---|---|---|"]
        for name, e in emotion.items():
            acc = e["accuracy"]
            lines.append(f"| {name} | {e['reads']} | "
                         + " | ".join(f"{acc.get(s, float('nan')):.3f}"
                                      for s in ("train", "val", "test")) + " |")
    against = emotion.get(EMOTION_REFERENCE, {}).get("pool")
    if against:
        ref = emotion[EMOTION_REFERENCE]["reference"]
        # the one-stream models' reference heads on the same pairs, where the bundle has them
        others = {COMPARED[r.model].title: emotion[r.reference_head]["pool"]
                  for r in EMOTION_READERS.values()
                  if r.model != MDVAE_MODEL and "pool" in emotion.get(r.reference_head, {})}
        lines += ["", f"## Emotion against the same person's {ref} clip ({EMOTION_REFERENCE})",
                  "", f"Every same-speaker pair of a {ref} clip and another clip of "
                  f"{against['speakers']} new speakers (`{against['store']}`, "
                  f"{against['split']}; {against['pairs']} pairs), against the plain head on "
                  "the same clips" + (", and the one-stream models read against the same "
                                      "clip" if others else "") + ":", "",
                  *reference_rows(ref, against, others)]
        gain = against.get("gain_over_plain")
        if gain:
            lines += ["", f"Gain over the plain head {gain['difference']:+.3f} ± "
                      f"{_number(gain.get('se_speakers'))} (SE with the speakers as the unit)."]
        lines += ["", f"The same-person check passed {against['same_person_passed']:.1%} of "
                  f"one person's pairs and {_number(against['other_person_passed'], 2, '%')} "
                  "of two people's."]
        lines += reference_margin_lines(others)
    calibrated = {name: e for name, e in emotion.items() if "test" in e.get("calibration", {})}
    if calibrated:
        lines += ["", "## Emotion calibration (test clips)", "",
                  "| head | temperature | ECE before | ECE after | ECE of a calibrated head | "
                  "answered (p >= "
                  f"{next(iter(calibrated.values()))['calibration']['test']['sure_from']}) | "
                  "accuracy when answered |", "|---|---|---|---|---|---|---|"]
        for name, e in calibrated.items():
            c = e["calibration"]
            t = c["test"]
            lines.append(f"| {name} | {c['temperature']:.2f} | {t['ece_before']:.3f} | "
                         f"{t['ece_after']:.3f} | {_number(t.get('ece_floor'))} | "
                         f"{t['after']['answered']:.0%} | "
                         f"{_number(t['after']['accuracy_answered'])} |")
        lines.append("")
        lines += [f"- {name}: temperature fitted on {e['calibration']['fitted_on']}"
                  for name, e in calibrated.items() if "fitted_on" in e["calibration"]]
    familiarity = info.get("familiarity")
    if familiarity:
        lines += ["", "## Familiarity reference", "",
                  f"Scores of the {familiarity.get('split', 'test')} clips of "
                  f"`{familiarity.get('store', '?')}`, at the {familiarity['latents']}; the "
                  f"app calls a clip familiar while no score lies beyond their median by more "
                  f"than {familiarity['familiar_within_spread']:g} times the worst test "
                  f"clip's distance from it.",
                  "", "| score | clips | median | 99th percentile |", "|---|---|---|---|"]
        for entry in familiarity["scores"].values():
            lines.append(f"| {entry['about']} | {entry['clips']} | {entry['median']:.4g} | "
                         f"{entry['quantiles'][99]:.4g} |")
    results = info.get("evaluation")
    if results:
        lines += ["", "## Evaluation", "", results.get("markdown", "")]
    lines += ["", f"Exported {info.get('exported', '')}.", ""]
    return "\n".join(lines)


def training_data(mdvae_run: str) -> dict[str, Any]:
    """`data_summary` of the store the MDVAE run trained on, or a note where it is not
    readable (the store may live elsewhere than where it was trained)."""
    store = common.RunFolder(mdvae_run, writer=False).read_config()["store"]
    try:
        return data_summary(store)
    except MDVAEError as err:
        return {"store": store, "note": f"store not readable at export: {err}"}


def check_trained_inside(run_dir: str, keys: dict[str, Any]) -> None:
    """Refuse a stage-2 run that read the features of other VQ-VAEs than those whose
    `stage1_keys` are `keys` (its decoders would turn out noise): the same pair, or for a
    DSAE the same VQ-VAE of its modality."""
    config = common.RunFolder(run_dir, writer=False).read_config()
    if not trained_inside(config, keys):
        raise ConfigError(f"{run_dir} was trained on the features of other VQ-VAEs (key "
                          f"{config.get('feature_key')}) than the bundle's "
                          f"({keys['feature_key']})")


def from_runs(args) -> tuple[dict, dict[str, Any]]:
    """Components and info from the run folders named on the command line."""
    components = {
        VQ_VISUAL: load_stage1(args.vq_visual),
        VQ_AUDIO: load_stage1(args.vq_audio),
        MDVAE_MODEL: load_stage2(args.mdvae),
    }
    runs = {VQ_VISUAL: args.vq_visual, VQ_AUDIO: args.vq_audio, MDVAE_MODEL: args.mdvae}
    keys = stage1_keys(components[VQ_AUDIO], components[VQ_VISUAL])
    for name in (MDVAE_MODEL, DSAE_AUDIO, DSAE_VISUAL):
        if getattr(args, name):
            check_trained_inside(getattr(args, name), keys)
    for name in (DSAE_AUDIO, DSAE_VISUAL):
        if getattr(args, name):
            components[name] = load_stage2(getattr(args, name))
            runs[name] = getattr(args, name)
    info: dict[str, Any] = {
        "runs": {name: run_summary(path) for name, path in runs.items()},
        "exported": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    info["data"] = training_data(args.mdvae)
    if args.emotion:
        heads = load_bundle(args.emotion)
        check_heads_read_models(heads.components, components, args.emotion)
        components.update(heads.components)
        info["emotion"] = heads.info.get("emotion", {})
    return components, info


def check_heads_read_models(heads: dict, components: dict, source: str) -> None:
    """Refuse emotion heads that read the w of a model the bundle does not hold."""
    reads = {h: r.model for r in EMOTION_READERS.values() for h in (r.head, r.reference_head)}
    missing = sorted({reads[h] for h in heads if h in reads and reads[h] not in components})
    if missing:
        raise ConfigError(
            f"{source} holds emotion heads for {', '.join(missing)}, which the bundle does not "
            f"hold: give {' '.join('--' + m.replace('_', '-') for m in missing)} as well, or "
            "fit the heads without it (python -m train.emotion)")


def stage2_into_bundle(args, components: dict, info: dict[str, Any]) -> None:
    """--bundle with --mdvae / --dsae-* / --emotion: new stage-2 models inside the bundle's
    own VQ-VAEs, or new emotion heads for its models.

    The VQ-VAEs keep their weights and their training record; each new model must have
    been trained on those VQ-VAEs' features (the run's feature key), and new emotion heads
    must come with it, since the old ones read another model's w (the heads of the models
    kept stay as they were). What was measured on the old models (evaluation, familiarity
    table) no longer applies and is dropped. --emotion alone adds its heads to the bundle's
    models: a head equal to the bundle's, weight for weight, keeps what was measured of it
    (its calibration) beside its new record, and the evaluation stays unless a head it read
    has changed.
    """
    keys = stage1_keys(components[VQ_AUDIO], components[VQ_VISUAL])
    runs = {MDVAE_MODEL: args.mdvae, DSAE_AUDIO: args.dsae_audio, DSAE_VISUAL: args.dsae_visual}
    for name, path in runs.items():
        if not path:
            continue
        check_trained_inside(path, keys)
        components[name] = load_stage2(path)
        info.setdefault("runs", {})[name] = run_summary(path)
    if not args.emotion:
        raise ConfigError("new stage-2 models need new emotion heads: --emotion (from "
                          "python -m train.emotion on these runs)")
    heads = load_bundle(args.emotion)
    check_heads_read_models(heads.components, components, args.emotion)
    missing = [r.model for r in EMOTION_READERS.values()
               if runs[r.model] and r.head not in heads.components]
    if missing:
        raise ConfigError(f"{args.emotion} has no emotion head for the new {', '.join(missing)} "
                          "(python -m train.emotion with that run gives one)")
    new_models = any(runs.values())
    changed = {name for name, head in heads.components.items()
               if new_models or not same_weights(head, components.get(name))}
    components.update(heads.components)
    # the heads of the models kept stay, with what was measured of them
    new, old = heads.info.get("emotion", {}), info.get("emotion", {})
    # a head that came back weight for weight: what was measured of it stays (its
    # calibration, fitted by export), updated by what the new record measures again
    info["emotion"] = {name: new[name] if name in changed else {**old.get(name, {}),
                                                                **new.get(name, {})}
                       for name in dict.fromkeys([*old, *new])
                       if name in components and (name in new if name in changed
                                                  else name in old or name in new)}
    stale = (("evaluation", "familiarity", "reference_added") if new_models else
             ("evaluation",) if changed & {r.head for r in EMOTION_READERS.values()} else ())
    for key in stale:
        info.pop(key, None)
    if args.mdvae:
        info["data"] = training_data(args.mdvae)
    info["exported"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def same_weights(a, b) -> bool:
    """Whether two modules (b may be None) are of one class and config, tensor for tensor."""
    if b is None or type(a) is not type(b) or a.config != b.config:
        return False
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k].to(sa[k].dtype))
                                          for k in sa)


def _number(value: float | None, digits: int = 3, kind: str = "f") -> str:
    return "-" if value is None else f"{value:.{digits}{kind}}"


def check_calibration_pool(pool: Store, split: str, reference: Store, info: dict) -> None:
    """Refuse a calibration pool without `split` clips, or with speakers the bundle trained
    on or the reference store tests on (its temperatures would then be fitted on them)."""
    clips = pool.split_clips(split)
    if not clips:
        raise ConfigError(f"--calibration-store {pool.path} has no {split} clips "
                          "(--calibration-split names the split to fit on)")
    common.check_unseen(clips, reference, info)
    tested = {c.speaker for c in clips} & {c.speaker for c in reference.split_clips("test")}
    if tested:
        raise ConfigError(f"--calibration-store {pool.path}: {len(tested)} of its {split} "
                          f"speakers ({', '.join(sorted(tested)[:6])}) are test speakers of "
                          f"{reference.path}; fit the temperatures on other speakers")


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m train.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", help="start from this exported bundle (its weights and "
                        "info) instead of run folders")
    parser.add_argument("--vq-visual")
    parser.add_argument("--vq-audio")
    parser.add_argument("--mdvae")
    parser.add_argument("--dsae-audio")
    parser.add_argument("--dsae-visual")
    parser.add_argument("--emotion", help="folder written by python -m train.emotion")
    parser.add_argument("--results", help="results.json written by python -m train.evaluate")
    parser.add_argument("--reference-store", help="store whose test clips give the familiarity "
                        "table and whose training and validation clips calibrate the emotion "
                        "heads (out of fold)")
    parser.add_argument("--familiarity-store", help="store whose test clips give the familiarity "
                        "table instead of --reference-store's: a pool of new speakers "
                        "(train.prepare synthetic --first-speaker ... --test-speakers N) spans "
                        "more faces and voices than a benchmark's few test speakers; speakers "
                        "the bundle trained on are refused")
    parser.add_argument("--calibration-store", help="with --reference-store: store whose "
                        "--calibration-split clips (new speakers, neither trained on nor the "
                        "reference store's test speakers) give the emotion temperatures "
                        "instead of out-of-fold logits")
    parser.add_argument("--calibration-split", default="val",
                        help="the --calibration-store split to fit on (default: val)")
    parser.add_argument("--out", required=True, help="bundle folder (replaced if it is one)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload to the Hub")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: all cores; give 1 when other "
                             "jobs share the machine, or they slow each other down many times)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    if args.bundle:
        source = load_bundle(args.bundle)
        components, info = dict(source.components), dict(source.info)
        if args.vq_visual or args.vq_audio:
            parser.error("--bundle keeps its VQ-VAEs: --vq-visual/--vq-audio go without it")
        if args.mdvae or args.dsae_audio or args.dsae_visual or args.emotion:
            stage2_into_bundle(args, components, info)
    else:
        missing = [f"--{n}" for n in ("vq-visual", "vq-audio", "mdvae")
                   if not getattr(args, n.replace("-", "_"))]
        if missing:
            parser.error(f"{', '.join(missing)} required (or --bundle)")
        components, info = from_runs(args)
    if args.results:  # with --bundle too: a re-evaluated bundle's card follows its results
        results = json.loads(Path(args.results).read_text())
        # the summary recomputed from the full results: an older evaluation's card gains
        # what the summary has learnt to keep since (the evaluation itself is not rerun)
        kept = {**results.get("summary", {}), **evaluation_summary(results)}
        info["evaluation"] = {"summary": kept, "markdown": results.get("markdown", "")}
    if args.calibration_store and not args.reference_store:
        parser.error("--calibration-store refits the temperatures --reference-store computes: "
                     "give both")
    calibration_pool = None
    if args.calibration_store:
        calibration_pool = Store(args.calibration_store)
        check_calibration_pool(calibration_pool, args.calibration_split,
                               Store(args.reference_store), info)
    if args.reference_store:
        reference = reference_info(components, args.reference_store,
                                   emotion=info.get("emotion"),
                                   familiarity=not args.familiarity_store,
                                   pool=calibration_pool, pool_split=args.calibration_split)
        if "familiarity" in reference:
            info["familiarity"] = reference["familiarity"]
        for head, calibration in reference["calibration"].items():
            reads = next(r.model for r in EMOTION_READERS.values() if r.head == head)
            info.setdefault("emotion", {}).setdefault(head, {"reads": reads, "accuracy": {}})
            info["emotion"][head]["calibration"] = calibration
    if args.familiarity_store:
        pool = Store(args.familiarity_store)
        held = pool.split_clips("test")
        if not held:
            raise ConfigError(f"--familiarity-store {args.familiarity_store} has no test clips "
                              "(train.prepare ... --test-speakers N)")
        common.check_unseen(held, pool, info)
        info["familiarity"] = familiarity_table(components, pool)
    if args.reference_store or args.familiarity_store:
        info["reference_added"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for module in components.values():
        module.float()
    out = save_bundle(args.out, components, info=info, card=model_card(info))
    size = (out / "model.safetensors").stat().st_size / 2**20
    print(f"bundle written to {out} ({size:.1f} MB): {', '.join(sorted(components))}")
    if args.push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(args.push_to_hub, exist_ok=True)
        api.upload_folder(folder_path=str(out), repo_id=args.push_to_hub)
        print(f"pushed to https://huggingface.co/{args.push_to_hub}")
    return out


if __name__ == "__main__":
    main()
