"""The shipped bundle's stage-2 chain for one training seed, phase by phase, resumable.

Runs the phases of README "The shipped bundle" for the MDVAE and the two like-for-like DSAE
baselines inside a pair of trained VQ-VAEs: 12,000 steps from scratch (static first, floor
-3), continued to 24,000, then fine-tunes into new run folders (q(w) frozen at floor -6,
floor -3 again, ...). Each phase is one `python -m train.stage2` command, printed before it
runs, so the chain can be followed or redone by hand (--dry-run prints the commands alone).

Run it again after an interruption (a kill, a reboot) and it goes on where it stopped: a
phase whose run folder holds a checkpoint at its step count is skipped, one stopped part
way is resumed (`--resume --steps N`), and the rest start as the recipe says. A run folder
that holds another seed's or another model's run is refused, never overwritten.

    python -m train.recipe --store data/synth200 --vq-visual runs/vq_visual \\
        --vq-audio runs/vq_audio --seed 4 --out runs/seed4
    # the two cores shared: the MDVAE in one job, the DSAEs in another (they copy the
    # MDVAE's sizes from its first run folder, so start them once that phase has begun)
    python -m train.recipe ... --models mdvae
    python -m train.recipe ... --models dsae-visual dsae-audio

Run folders (under --out): mdvae, mdvae_frozen, mdvae2, mdvae3, mdvae4, mdvae4_frozen,
mdvae5, mdvae6, mdvae7; dsae_visual, ..., dsae_visual4_frozen; dsae_audio, dsae_audio_frozen,
dsae_audio2, dsae_audio2_frozen. The last of each is what train.emotion and train.export take.
--scale multiplies every step count (a quick rehearsal of the chain, e.g. 0.01); flags
after `--` go to every stage-2 command (e.g. `-- --threads 2`).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from mdvae.errors import ConfigError
from train import common, export, stage2

MODELS = ("mdvae", "dsae-visual", "dsae-audio")


@dataclass(frozen=True)
class Phase:
    """One stage-2 run of the chain: `folder` trained to `steps`, from scratch, continued
    from its own checkpoint (`resume`), or fine-tuned from the folder `source`."""

    kind: str
    folder: str
    steps: int
    flags: tuple[str, ...] = ()
    source: str | None = None
    resume: bool = False


def phases(kind: str, scale: float = 1.0) -> list[Phase]:
    """The recipe's phases for one model kind, step counts times `scale` (at least 1)."""
    if kind not in MODELS:
        raise ConfigError(f"no recipe for {kind!r}: one of {', '.join(MODELS)}")

    def n(steps: int) -> str:
        return str(scaled(steps, scale))

    base = kind.replace("-", "_")
    start = ("--kl-warmup", n(2000), "--static-first", n(3000), "--z-warmup", n(2000))
    if kind == "mdvae":
        # z_av of 8 (head pose to z_v), z_v of 8 (blinks), w of 84 (the authors'), floor -3
        start += ("--mdvae-z-av-dim", "8", "--mdvae-z-v-dim", "8",
                  "--mdvae-obs-logvar-min", "-3", "--mdvae-w-dim", "84")
    else:  # the MDVAE's own sizes, beta_w and floor
        start += ("--like-mdvae", "mdvae", "--dsae-obs-logvar-min", "-3")
    floor = ("--kl-warmup", "0", "--mdvae-obs-logvar-min", "-3", "--dsae-obs-logvar-min", "-3")
    frozen = ("--kl-warmup", "0", "--freeze-w-encoder", "--mdvae-obs-logvar-min", "-6",
              "--dsae-obs-logvar-min", "-6")
    chain = [Phase(kind, base, scaled(12000, scale), start),
             Phase(kind, base, scaled(24000, scale), resume=True),
             Phase(kind, f"{base}_frozen", scaled(8000, scale), frozen, source=base),
             Phase(kind, f"{base}2", scaled(12000, scale), floor, source=f"{base}_frozen")]
    last = 2
    if kind != "dsae-audio":  # two more floor -3 phases for the MDVAE and the V-DSAE
        for k in (3, 4):
            own = (("--mdvae-w-face-network", "true") if kind == "mdvae" and k == 3 else ())
            chain.append(Phase(kind, f"{base}{k}", scaled(12000, scale), floor + own,
                               source=f"{base}{k - 1}"))
        last = 4
    chain.append(Phase(kind, f"{base}{last}_frozen", scaled(8000, scale), frozen,
                       source=f"{base}{last}"))
    if kind == "mdvae":
        # sessions 44 and 45: three 8,000-step floor -3 phases in which w is two parts, 16
        # entries read from the voice and 68 from the face (q(w)'s head started anew), and the
        # voice's decoder reads the voice's part alone (departures; research log "Session 43"
        # to "45")
        split = ("--mdvae-w-per-stream", "true", "--mdvae-voice-reads-w-a-only", "true",
                 "--mdvae-w-audio-dim", "16")
        source = f"{base}{last}_frozen"
        for k in (5, 6, 7):
            chain.append(Phase(kind, f"{base}{k}", scaled(8000, scale), floor + split,
                               source=source))
            source = f"{base}{k}"
    return chain


def scaled(steps: int, scale: float) -> int:
    return max(1, round(steps * scale))


def command(phase: Phase, args: argparse.Namespace, extra: list[str]) -> list[str]:
    """The stage-2 arguments of `phase` (what follows `python -m train.stage2`)."""
    out = Path(args.out)
    argv = ["--store", args.store, "--vq-visual", args.vq_visual, "--vq-audio", args.vq_audio,
            "--out", str(out / phase.folder)]
    if phase.resume:
        return [*argv, "--resume", "--steps", str(phase.steps), *extra]
    argv += ["--batch-size", "32", "--lr", "1e-3", "--threads", "1",
             "--val-every", str(scaled(1000, args.scale)), "--seed", str(args.seed),
             "--model", phase.kind, "--steps", str(phase.steps)]
    if phase.source is not None:
        argv += ["--init-from", str(out / phase.source)]
    flags = list(phase.flags)
    if "--like-mdvae" in flags:
        i = flags.index("--like-mdvae")
        flags[i + 1] = str(out / flags[i + 1])
    return [*argv, *flags, *extra]


def state(phase: Phase, out: Path, seed: int) -> int | None:
    """The step the phase's run folder has reached (None: not begun). Refuses a folder that
    holds another model's or another seed's run."""
    folder = common.RunFolder(out / phase.folder, writer=False)
    if not folder.checkpoint_path.exists():
        return None
    config = folder.read_config()
    if config.get("model_kind") != phase.kind or config["run"]["seed"] != seed:
        raise ConfigError(
            f"{folder.path} holds a {config.get('model_kind')} run of training seed "
            f"{config['run']['seed']}, not the recipe's {phase.kind} of seed {seed}: give "
            "another --out")
    if phase.source is not None:
        source = out / phase.source
        began = (config.get("init_from") or {}).get("run")
        if began is None or Path(began).resolve() != source.resolve():
            raise ConfigError(f"{folder.path} was not fine-tuned from {source}: give another "
                              "--out")
    return int(folder.load_checkpoint(required=True, weights_only=True)["step"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train.recipe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True, help="stage-2 store (data/synth200)")
    parser.add_argument("--vq-visual", required=True, help="stage-1 visual run folder")
    parser.add_argument("--vq-audio", required=True, help="stage-1 audio run folder")
    parser.add_argument("--seed", type=int, required=True, help="training seed")
    parser.add_argument("--out", required=True, help="folder for the chain's run folders")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiplies every step count (default 1: the shipped recipe)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the stage-2 commands and each phase's state; train nothing")
    return parser


def main(argv: list[str] | None = None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else list(argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    args = build_parser().parse_args(argv)
    if args.scale <= 0:
        raise ConfigError(f"--scale must be positive, not {args.scale}")
    out = Path(args.out)
    chain = [p for kind in args.models for p in phases(kind, args.scale)]
    done = []
    for i, phase in enumerate(chain, 1):
        reached = state(phase, out, args.seed)
        cmd = command(phase, args, extra)
        if reached is None and phase.resume:
            # the folder's first phase has not run: only a dry run gets here
            status = "waits for the phase before"
        elif reached is None:
            status = "starts"
        elif reached >= phase.steps:
            status = f"done (step {reached})"
        else:
            status = f"resumes from step {reached}"
            if not phase.resume:
                cmd = command(Phase(phase.kind, phase.folder, phase.steps, resume=True),
                              args, extra)
        print(f"[recipe] {i}/{len(chain)} {phase.folder} to step {phase.steps}: {status}",
              flush=True)
        print("  python -m train.stage2 " + shlex.join(cmd), flush=True)
        if args.dry_run or status.startswith("done"):
            done.append({"folder": phase.folder, "steps": reached, "trained": False})
            continue
        if "--like-mdvae" in phase.flags and not (out / "mdvae" / "config.json").exists():
            raise ConfigError(f"the {phase.kind} copies the MDVAE's sizes from {out / 'mdvae'}, "
                              "which has no run yet: start the MDVAE's recipe first")
        result = stage2.main(cmd)
        done.append({"folder": phase.folder, "steps": result.step, "trained": True})
    if not args.dry_run:
        print(f"\n{'run folder':<22}{'steps':>8}  validation -ELBO/frame")
        for row in done:
            value = export.run_summary(out / row["folder"])["last_val"].get("negative_elbo")
            shown = "" if value is None else f"{value:.1f}"
            print(f"{row['folder']:<22}{row['steps']:>8}  {shown}")
    return done


if __name__ == "__main__":
    main()
