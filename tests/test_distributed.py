"""Two processes under torch.distributed (gloo, CPU) train exactly like one process that
sees the same global batch."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from tests.helpers import Batches, step_fn
from train import common


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(run_dir: str, steps: int) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    d = common.setup_distributed("cpu")
    cfg = common.RunConfig(steps=steps, batch_size=16, lr=0.05, warmup=1, log_every=5,
                           val_every=steps, grad_clip=0.0)
    run = common.RunFolder(run_dir, writer=d.is_main)
    run.write_config({"run": cfg.to_dict()})
    common.train_loop(model=model, run=run, cfg=cfg, d=d, train_batches=Batches(0, batch=16),
                      val_batches=None, step_fn=step_fn, items_per_batch=lambda b: len(b["x"]),
                      resume=False)
    return model


def worker(rank: int, world: int, port: int, run_dir: str, steps: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        model = train(run_dir, steps)
        if rank == 0:
            torch.save(model.state_dict(), out)
    finally:
        common.teardown_distributed()


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    steps = 15
    out = str(tmp_path / "ddp.pt")
    mp.spawn(worker, args=(2, free_port(), str(tmp_path / "ddp"), steps, out), nprocs=2)
    ddp_state = torch.load(out)
    single = train(str(tmp_path / "single"), steps).state_dict()
    for name, value in single.items():
        torch.testing.assert_close(ddp_state[name], value, rtol=1e-5, atol=1e-6, msg=name)
    # only rank 0 wrote the run folder
    assert (tmp_path / "ddp" / "checkpoint.pt").exists()
    rows = common.RunFolder(tmp_path / "ddp").read_log()
    assert len({r["step"] for r in rows}) == len(rows), "two ranks logged the same step"
