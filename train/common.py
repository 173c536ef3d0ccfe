"""What every training program shares: flags from config dataclasses, the run folder,
atomic resumable checkpoints, scalar logs and plots, the NaN stop, and DDP / AMP setup.

A run folder holds::

    config.json        the resolved configuration (program, run and model configs)
    log.jsonl          one line per logged step: {"step", "split", <scalars>...}
    checkpoint.pt      the last training checkpoint (model, optimiser, step, RNG, config)
    curves.png         the loss curves, redrawn at each validation

A training checkpoint is not a released bundle: ``train.export`` turns runs into one.
Checkpoints hold only tensors and plain Python data and are read with
``torch.load(weights_only=True)``, so a run folder from elsewhere cannot run code; only a
checkpoint whose validation loss is finite is written, so the one on disk is always good.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import tempfile
import time
import types
import typing
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from mdvae.config import ConfigBase
from mdvae.errors import MDVAEError


class CheckpointError(MDVAEError):
    """A checkpoint that should be there is missing, unreadable, or from another run."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


# ---------------------------------------------------------------------------------------
# Flags from config dataclasses


def add_config_flags(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """Add one ``--prefix-field`` flag per dataclass field; help text is the field comment.
    A nested config (a dataclass field, such as the authors' layout) gets no flag: a
    preset chooses it."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__)
    for field in dataclasses.fields(cls):
        flag = "--" + (prefix + field.name).replace("_", "-")
        kind = hints[field.name]
        if typing.get_origin(kind) in (typing.Union, types.UnionType):
            # an optional field takes its non-None type on the command line
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        default = None  # unset flags keep the dataclass (or preset) default
        if dataclasses.is_dataclass(kind):
            continue
        if kind is bool:
            group.add_argument(flag, type=_parse_bool, default=default, metavar="{true,false}")
        elif kind in (int, float, str):
            group.add_argument(flag, type=kind, default=default)
        elif typing.get_origin(kind) in (tuple, list):
            item = typing.get_args(kind)[0]
            group.add_argument(flag, type=item, nargs="+", default=default)
        else:
            group.add_argument(flag, type=str, default=default)


def config_from_flags(args: argparse.Namespace, base: ConfigBase, prefix: str = "") -> Any:
    """Return ``base`` with every field whose flag was given replaced by the flag's value."""
    changes = {}
    for field in dataclasses.fields(base):  # type: ignore[arg-type]
        value = getattr(args, (prefix + field.name), None)
        if value is not None:
            changes[field.name] = tuple(value) if isinstance(value, list) else value
    return type(base).from_dict({**base.to_dict(), **changes})


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


@dataclass
class RunConfig(ConfigBase):
    """Settings every training program shares."""

    steps: int = 2000  # optimiser steps in total (a resumed run continues to this count)
    batch_size: int = 32  # global batch: split across processes under torchrun
    lr: float = 3e-4  # AdamW learning rate (cosine decay to 10% after warm-up)
    warmup: int = 100  # linear learning-rate warm-up steps
    weight_decay: float = 0.0  # AdamW weight decay
    grad_clip: float = 5.0  # max gradient norm; 0 disables clipping
    seed: int = 0  # seeds torch, numpy and the data sampler
    log_every: int = 20  # steps between training-loss log lines
    val_every: int = 200  # steps between validations (and checkpoints)
    val_batches: int = 8  # batches drawn from the validation split at each validation
    threads: int = 0  # torch CPU threads; 0 leaves torch's default
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)


# ---------------------------------------------------------------------------------------
# Distributed setup


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str | None = None) -> Dist:
    """Join the process group that ``torchrun`` describes, or run as a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend)
    return Dist(rank=rank, world=world, local_rank=local_rank, device=dev)


def teardown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    # numpy randomness in this project goes through explicit Generators (the samplers
    # carry their own state), so only Python's and torch's global streams need seeding.
    random.seed(seed)
    torch.manual_seed(seed)


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA; a no-op context on CPU, where fp32 is faster and exact."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def rank_slice(batch: dict[str, Any], d: Dist) -> dict[str, Any]:
    """This process's share of a global batch (every rank draws the same global batch)."""
    if d.world == 1:
        return batch
    out = {}
    for key, value in batch.items():
        if hasattr(value, "__len__") and not isinstance(value, (str, bytes)):
            n = len(value)
            if n % d.world:
                raise MDVAEError(f"global batch {n} is not divisible by {d.world} processes")
            per = n // d.world
            out[key] = value[d.rank * per : (d.rank + 1) * per]
        else:
            out[key] = value
    return out


# ---------------------------------------------------------------------------------------
# Held-out speakers


def check_unseen(clips: list, train_store: Any, bundle_info: dict | None = None) -> None:
    """Refuse to score held-out `clips` of speakers that the probes and judges (the training
    split of `train_store`) or the bundle's own training (its recorded training speakers)
    have seen. A speaker's name is its identity across stores: MEAD's M003 is one person in
    every store, and a synthetic speaker is its index (`speaker_params`), whatever the seed
    that drew its clips."""
    evaluated = {c.speaker for c in clips}
    seen = {c.speaker for c in train_store.split_clips("train")}
    splits = (bundle_info or {}).get("data", {}).get("splits", {})
    seen |= set(splits.get("train", {}).get("speakers", []))
    overlap = sorted(evaluated & seen)
    if overlap:
        shown = ", ".join(overlap[:6]) + (" ..." if len(overlap) > 6 else "")
        raise MDVAEError(
            f"{len(overlap)} of the {len(evaluated)} speakers to be scored ({shown}) are "
            f"training speakers of {train_store.path} or of the bundle, so their scores would "
            "not be on unseen speakers. A synthetic speaker is its index, whatever --seed drew "
            "its clips: draw new ones with train.prepare synthetic --first-speaker N past the "
            "training store's speakers"
        )


# ---------------------------------------------------------------------------------------
# The run folder


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_report(out_dir: Path, name: str, result: dict[str, Any]) -> None:
    """A program's result as OUT/name.json (all of it) and OUT/name.md (its "markdown"),
    and the markdown on stdout."""
    atomic_write_text(out_dir / f"{name}.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out_dir / f"{name}.md", result["markdown"])
    print(result["markdown"])


def atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


CHECKPOINT_KEYS = ("model", "optimizer", "step", "rng")
# What a run folder unpacked from a bundle holds (train.unpack): weights to read, evaluate
# or fine-tune from, but no optimiser state or RNG to resume from.
WEIGHTS_KEYS = ("model", "step")


class RunFolder:
    """The run folder: resolved config, scalar log, checkpoint and plots.

    Only rank 0 writes; other ranks get a RunFolder whose writes do nothing.
    """

    def __init__(self, path: str | Path, *, writer: bool = True):
        self.path = Path(path)
        self.writer = writer
        if writer:
            self.path.mkdir(parents=True, exist_ok=True)

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def log_path(self) -> Path:
        return self.path / "log.jsonl"

    def write_config(self, config: dict[str, Any]) -> None:
        if self.writer:
            atomic_write_text(self.path / "config.json", json.dumps(config, indent=2) + "\n")

    def read_config(self) -> dict[str, Any]:
        path = self.path / "config.json"
        if not path.exists():
            raise CheckpointError(f"{self.path} has no config.json: is it a run folder?")
        return json.loads(path.read_text())

    def store_history(self, saved: dict[str, Any], store: str | Path) -> list[dict[str, Any]]:
        """The stores a resumed run trained on before ``store``: [{store, until_step}, ...].

        A run may be resumed on another store (a VQ-VAE continued on more speakers, say);
        its config then keeps where the earlier steps came from, for the model card.
        """
        history = list(saved.get("earlier_stores", []))
        if saved.get("store") not in (None, str(store)):
            checkpoint = self.load_checkpoint(required=True)
            history.append({"store": saved["store"], "until_step": int(checkpoint["step"])})
        return history

    def log(self, step: int, split: str, scalars: dict[str, float]) -> None:
        if not self.writer:
            return
        line = {"step": step, "split": split, "time": round(time.time(), 3)}
        line.update({k: float(v) for k, v in scalars.items()})
        with open(self.log_path, "a") as f:
            f.write(json.dumps(line) + "\n")

    def read_log(self) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        rows = []
        for line in self.log_path.read_text().splitlines():
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill
        return rows

    def truncate_log(self, step: int) -> None:
        """Drop log lines past ``step`` (written after the checkpoint a resume restarts from)."""
        if not self.writer or not self.log_path.exists():
            return
        rows = [r for r in self.read_log() if r["step"] <= step]
        atomic_write_text(self.log_path, "".join(json.dumps(r) + "\n" for r in rows))

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        if self.writer:
            atomic_torch_save(state, self.checkpoint_path)

    def load_checkpoint(self, *, required: bool, weights_only: bool = False
                        ) -> dict[str, Any] | None:
        """The checkpoint as saved (tensors and plain data only: never a pickle that runs
        code); CheckpointError when it is missing (if required), unreadable or incomplete.

        ``weights_only`` is for readers of the trained model (evaluation, export, a
        fine-tune's start): they also accept a run folder unpacked from a bundle, which
        holds the weights and step only and so can never be resumed.
        """
        path = self.checkpoint_path
        if not path.exists():
            if required:
                raise CheckpointError(
                    f"--resume was given but {path} does not exist; "
                    "start without --resume to train from scratch"
                )
            return None
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several types for a damaged file
            raise CheckpointError(
                f"checkpoint {path} is corrupt or unreadable ({type(err).__name__}: {err}); "
                "delete it to start over"
            ) from err
        needed = WEIGHTS_KEYS if weights_only else CHECKPOINT_KEYS
        missing = [k for k in needed if not isinstance(checkpoint, dict) or k not in checkpoint]
        if missing and isinstance(checkpoint, dict) and set(checkpoint) == set(WEIGHTS_KEYS):
            raise CheckpointError(
                f"{path} holds trained weights only (a run folder unpacked from a bundle): "
                "it cannot be resumed; start a new run from it with --init-from"
            )
        if missing:
            raise CheckpointError(
                f"checkpoint {path} is not a training checkpoint (it lacks "
                f"{', '.join(missing)}); delete it to start over"
            )
        return checkpoint

    def plot(self, title: str = "") -> Path | None:
        """Draw every logged scalar against the step, train and validation overlaid."""
        if not self.writer:
            return None
        rows = self.read_log()
        if not rows:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        keys = sorted({k for r in rows for k in r} - {"step", "split", "time", "lr", "speed"})
        cols = min(3, len(keys))
        nrows = math.ceil(len(keys) / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(4.5 * cols, 3.2 * nrows), squeeze=False)
        for ax, key in zip(axes.flat, keys):
            for split, style in (("train", "-"), ("val", "o-")):
                pts = [(r["step"], r[key]) for r in rows if r["split"] == split and key in r]
                if pts:
                    xs, ys = zip(*pts)
                    ax.plot(xs, ys, style, label=split, markersize=3)
            ax.set_title(key)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            values = [r[key] for r in rows if key in r]
            if values and min(values) > 0 and max(values) / max(min(values), 1e-12) > 50:
                ax.set_yscale("log")
        for ax in list(axes.flat)[len(keys) :]:
            ax.axis("off")
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        out = self.path / "curves.png"
        fig.savefig(out, dpi=90)
        plt.close(fig)
        return out


# ---------------------------------------------------------------------------------------
# The training loop


def rng_state() -> dict[str, Any]:
    # Plain data only (ints, tuples, tensors), so weights_only loading can read it back.
    state = {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def lr_at(step: int, cfg: RunConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak at the last step."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _last_good(path: Path | None) -> str:
    if path is not None and path.is_file():
        return f"the last good checkpoint is {path}"
    return "no checkpoint of this run has passed validation yet (none was kept)"


# A step function maps (model, batch, step) to named scalar losses, with "total" the one
# to minimise; it runs under autocast and, for validation, under no_grad in eval mode
# with step None (a schedule such as KL warm-up then reports the objective itself).
StepFn = Callable[[nn.Module, dict[str, Any], int | None], dict[str, torch.Tensor]]


@dataclass
class TrainResult:
    step: int  # the step count reached (equal to RunConfig.steps on normal completion)
    last_train: dict[str, float]  # the last logged training scalars
    last_val: dict[str, float]  # the last validation scalars (empty if none ran)
    seconds: float  # wall time of this invocation
    items_per_second: float  # training throughput of this invocation


def train_loop(
    *,
    model: nn.Module,
    run: RunFolder,
    cfg: RunConfig,
    d: Dist,
    train_batches: Iterator[dict[str, Any]],
    val_batches: Callable[[], Iterator[dict[str, Any]]] | None,
    step_fn: StepFn,
    items_per_batch: Callable[[dict[str, Any]], int],
    resume: bool,
    checkpoint_extra: dict[str, Any] | None = None,
    on_step: Callable[[int], None] | None = None,
    desc: str = "train",
) -> TrainResult:
    """One linear loop: sample, step, log, validate, checkpoint; resumable.

    ``model`` is the bare module (its ``state_dict`` is what is saved); under DDP it is
    wrapped here. ``train_batches`` yields global batches, identical on every rank; each
    rank trains on its slice, so N processes see the same global batch as one.
    """
    from tqdm import tqdm

    model.to(d.device)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        fused=True,  # one kernel for all tensors: ~4 ms instead of ~14 ms per CPU step here
    )
    step = 0
    checkpoint = run.load_checkpoint(required=resume) if resume else None
    # The checkpoint a NaN stop may name: one that exists and passed validation.
    good_checkpoint: Path | None = None
    if checkpoint is not None:
        good_checkpoint = run.checkpoint_path
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        step = int(checkpoint["step"])
        set_rng_state(checkpoint["rng"])
        if "sampler" in checkpoint and hasattr(train_batches, "set_state"):
            train_batches.set_state(checkpoint["sampler"])  # type: ignore[attr-defined]
        run.truncate_log(step)

    wrapped: nn.Module = model
    if d.world > 1:
        wrapped = nn.parallel.DistributedDataParallel(
            model, device_ids=[d.device.index] if d.device.type == "cuda" else None
        )

    def save(at_step: int) -> None:
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": at_step,
            "rng": rng_state(),
            "config": run.read_config() if (run.path / "config.json").exists() else {},
        }
        if hasattr(train_batches, "get_state"):
            state["sampler"] = train_batches.get_state()  # type: ignore[attr-defined]
        if checkpoint_extra:
            state.update(checkpoint_extra)
        run.save_checkpoint(state)

    def validate() -> dict[str, float]:
        if val_batches is None:
            return {}
        model.eval()
        sums: dict[str, float] = {}
        count = 0
        with torch.no_grad(), autocast(d.device, cfg.amp):
            for batch in val_batches():
                losses = step_fn(model, batch, None)
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                count += 1
        model.train()
        return {k: v / max(1, count) for k, v in sums.items()}

    start_step = step
    t0 = time.perf_counter()
    items = 0
    last_train: dict[str, float] = {}
    last_val: dict[str, float] = {}
    window: dict[str, float] = {}
    window_n = 0
    model.train()
    bar = tqdm(
        total=cfg.steps, initial=step, desc=desc, disable=not d.is_main, dynamic_ncols=True
    )
    try:
        while step < cfg.steps:
            batch = rank_slice(next(train_batches), d)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg)
            with autocast(d.device, cfg.amp):
                losses = step_fn(wrapped, batch, step)
            total = losses["total"]
            if not torch.isfinite(total.detach()):
                parts = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
                raise TrainingDiverged(
                    f"loss became {float(total.detach())} at step {step + 1} ({parts}); "
                    f"{_last_good(good_checkpoint)}. Lower --lr or check the data."
                )
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            step += 1
            items += items_per_batch(batch) * d.world
            if on_step is not None:
                on_step(step)
            for k, v in losses.items():
                window[k] = window.get(k, 0.0) + float(v.detach())
            window_n += 1
            elapsed = time.perf_counter() - t0
            speed = items / max(elapsed, 1e-9)
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                last_train = {k: v / window_n for k, v in window.items()}
                window, window_n = {}, 0
                run.log(step, "train", {**last_train, "lr": lr_at(step - 1, cfg), "speed": speed})
                bar.set_postfix(loss=f"{last_train['total']:.4g}", per_s=f"{speed:.0f}")
            if step % cfg.val_every == 0 or step == cfg.steps:
                last_val = validate()
                if last_val:
                    run.log(step, "val", last_val)
                    if not math.isfinite(last_val["total"]):
                        # Not saved: checkpoint.pt keeps the last model that validated.
                        raise TrainingDiverged(
                            f"validation loss became {last_val['total']} at step {step}; "
                            f"{_last_good(good_checkpoint)}. Lower --lr or check the data."
                        )
                save(step)
                if run.writer:
                    good_checkpoint = run.checkpoint_path
                run.plot(desc)
    finally:
        bar.close()
    elapsed = time.perf_counter() - t0
    return TrainResult(
        step=step,
        last_train=last_train,
        last_val=last_val,
        seconds=elapsed,
        items_per_second=items / max(elapsed, 1e-9) if step > start_step else 0.0,
    )
