import argparse
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from mdvae.config import ConfigBase
from mdvae.errors import ConfigError
from tests.helpers import Batches, step_fn
from train import common


def run_training(tmp_path, steps, resume=False, stop_at=None, seed=0):
    torch.manual_seed(seed)
    model = nn.Linear(4, 1)
    cfg = common.RunConfig(steps=steps, lr=0.3, warmup=1, log_every=5, val_every=10)
    run = common.RunFolder(tmp_path / "run")
    run.write_config({"run": cfg.to_dict()})

    def on_step(step):
        if stop_at is not None and step == stop_at:
            raise KeyboardInterrupt

    return common.train_loop(
        model=model,
        run=run,
        cfg=cfg,
        d=common.setup_distributed("cpu"),
        train_batches=Batches(seed),
        val_batches=lambda: iter([next(Batches(99))]),
        step_fn=step_fn,
        items_per_batch=lambda b: len(b["x"]),
        resume=resume,
        on_step=on_step,
    ), model, run


def test_loop_lowers_the_loss_and_writes_logs_checkpoint_and_plot(tmp_path):
    result, _, run = run_training(tmp_path, steps=60)
    rows = run.read_log()
    train_losses = [r["total"] for r in rows if r["split"] == "train"]
    assert result.step == 60
    assert train_losses[-1] < 0.01 * train_losses[0]
    assert any(r["split"] == "val" for r in rows)
    assert (run.path / "curves.png").stat().st_size > 1000
    assert run.load_checkpoint(required=True)["step"] == 60


def test_interrupted_run_resumes_to_the_same_end(tmp_path):
    full, full_model, _ = run_training(tmp_path / "a", steps=40)
    with pytest.raises(KeyboardInterrupt):
        run_training(tmp_path / "b", steps=40, stop_at=25)  # checkpoint at step 20
    resumed, resumed_model, run = run_training(tmp_path / "b", steps=40, resume=True)
    assert resumed.step == 40
    steps = [r["step"] for r in run.read_log() if r["split"] == "train"]
    assert steps == sorted(set(steps)), "log lines after the checkpoint were not dropped"
    # same data stream and RNG state restored: the resumed run matches the uninterrupted one
    for p, q in zip(full_model.parameters(), resumed_model.parameters()):
        torch.testing.assert_close(p, q)


def test_missing_and_corrupt_checkpoints_are_reported(tmp_path):
    with pytest.raises(common.CheckpointError, match="does not exist"):
        run_training(tmp_path, steps=5, resume=True)
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(common.CheckpointError, match="corrupt"):
        run_training(tmp_path, steps=5, resume=True)


def test_nan_loss_stops_with_a_clear_message(tmp_path):
    model = nn.Linear(4, 1)
    cfg = common.RunConfig(steps=5, warmup=1)
    run = common.RunFolder(tmp_path)

    def nan_step(model, batch, step):
        return {"total": model(batch["x"]).sum() * float("nan")}

    with pytest.raises(common.TrainingDiverged, match="loss became nan at step 1"):
        common.train_loop(
            model=model, run=run, cfg=cfg, d=common.setup_distributed("cpu"),
            train_batches=Batches(), val_batches=None, step_fn=nan_step,
            items_per_batch=lambda b: 1, resume=False,
        )


@dataclass
class ToyConfig(ConfigBase):
    width: int = 8  # hidden width
    rate: float = 0.5  # a rate
    name: str = "toy"  # a name
    dims: tuple[int, ...] = (1, 2)  # some dims


def test_config_flags_override_only_what_was_given():
    parser = argparse.ArgumentParser()
    common.add_config_flags(parser, ToyConfig, prefix="model_")
    args = parser.parse_args(["--model-width", "16", "--model-dims", "3", "4", "5"])
    cfg = common.config_from_flags(args, ToyConfig(rate=0.25), prefix="model_")
    assert cfg == ToyConfig(width=16, rate=0.25, name="toy", dims=(3, 4, 5))


def test_strict_config_loading_names_the_bad_key():
    with pytest.raises(ConfigError, match="unknown config key"):
        ToyConfig.from_dict({"width": 3, "colour": 1})
    with pytest.raises(ConfigError, match="'width'"):
        ToyConfig.from_dict({"width": "wide"})
    assert ToyConfig.from_dict(ToyConfig(width=3).to_dict()) == ToyConfig(width=3)


def test_rank_slice_splits_the_global_batch():
    d = common.Dist(rank=1, world=2, local_rank=1, device=torch.device("cpu"))
    batch = {"x": torch.arange(8), "n": 3}
    part = common.rank_slice(batch, d)
    assert part["x"].tolist() == [4, 5, 6, 7] and part["n"] == 3


# -- checkpoints that cannot be trusted ------------------------------------------------------


class _RunsCode:
    """Unpickling this calls Path.touch on a marker file: a stand-in for any code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return Path.touch, (Path(self.marker),)


def test_checkpoint_is_read_without_running_pickled_code(tmp_path):
    result, model, run = run_training(tmp_path, steps=10)
    state = torch.load(run.checkpoint_path, weights_only=True)  # what a real one holds
    assert {"model", "optimizer", "step", "rng", "sampler", "config"} <= set(state)
    marker = tmp_path / "code-ran"
    state["extra"] = _RunsCode(marker)
    torch.save(state, run.checkpoint_path)
    with pytest.raises(common.CheckpointError, match="corrupt or unreadable"):
        run.load_checkpoint(required=True)
    assert not marker.exists()
    torch.save({"model": {}}, run.checkpoint_path)
    with pytest.raises(common.CheckpointError, match="lacks optimizer, step, rng"):
        run.load_checkpoint(required=True)


def _loop(tmp_path, step_fn, *, steps=20, val_every=5, resume=False):
    model = nn.Linear(4, 1)
    cfg = common.RunConfig(steps=steps, warmup=1, lr=0.01, log_every=5, val_every=val_every)
    run = common.RunFolder(tmp_path)
    run.write_config({"run": cfg.to_dict()})
    return common.train_loop(
        model=model, run=run, cfg=cfg, d=common.setup_distributed("cpu"),
        train_batches=Batches(), val_batches=lambda: iter([next(Batches(99))]),
        step_fn=step_fn, items_per_batch=lambda b: 1, resume=resume,
    )


def test_nan_before_any_checkpoint_names_none(tmp_path):
    def nan_at_3(model, batch, step):
        loss = step_fn(model, batch, step)["total"]
        return {"total": loss * float("nan") if step == 2 else loss}

    with pytest.raises(common.TrainingDiverged) as caught:
        _loop(tmp_path, nan_at_3)
    message = str(caught.value)
    assert "loss became nan at step 3" in message and "checkpoint.pt" not in message
    assert "no checkpoint of this run has passed validation" in message
    assert not (tmp_path / "checkpoint.pt").exists()


def test_checkpoint_with_infinite_validation_loss_is_not_kept_as_good(tmp_path):
    def inf_val_from_10(model, batch, step):
        loss = step_fn(model, batch, step)["total"]
        return {"total": loss + float("inf") if step is None and calls.pop() >= 10 else loss}

    calls = [20, 15, 10, 5]  # the steps validation runs after, popped from the end
    with pytest.raises(common.TrainingDiverged) as caught:
        _loop(tmp_path, inf_val_from_10)
    assert "validation loss became inf at step 10" in str(caught.value)
    assert f"the last good checkpoint is {tmp_path / 'checkpoint.pt'}" in str(caught.value)
    assert common.RunFolder(tmp_path).load_checkpoint(required=True)["step"] == 5
