"""Speed and memory of the models on this machine's CPU: `python -m train.benchmark`.

Each row runs in a fresh Python process, so its peak resident memory (getrusage max RSS)
belongs to that row alone, and one row's allocator state cannot speed up or slow down the
next. Times are medians over repeated runs after warm-up; the machine's load average is
printed with each row because other work on a shared CPU moves every number here ("CPU
ms/step", the process's CPU time summed over its threads, is less sensitive to it).

Sections (add one by appending to SECTIONS):
- stage2_training: MDVAE training throughput (frames/s) for one optimiser step
  (forward, ELBO, backward, AdamW), T = 30, fp32, for each model of `--models`
  ("preset" or "preset/posterior": by default the authors' widths with their filtering
  posterior and with the seed's smoothing one, and the mead and synthetic presets) at each
  batch size, with the parameter count and the matmul work per frame (GFLOP/s is that work
  over the step time: how close the step runs to the machine's matrix-product speed).
- clip_latency: encode (posterior means) + decode of one 90-frame clip, batch 1, with the
  shipped bundle's MDVAE (checkpoints/), on 1 thread and on `--threads`.
- cuda_training: the training section on the GPU with bf16 autocast (peak memory from
  the CUDA allocator), when one is present.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

TRAIN_FRAMES = 30  # T of the authors' stage-2 training sequences
CLIP_FRAMES = 90  # a 3-second clip at 30 frames/s
MODELS = ["authors/filtering", "authors/smoothing", "mead", "synthetic"]
SHIPPED_BUNDLE = "checkpoints"


@dataclass
class Case:
    """One row: run by `run` in its own process, it returns the values of the columns."""

    label: str
    params: dict = field(default_factory=dict)


@dataclass
class Section:
    name: str
    title: str
    columns: list[str]
    cases: Callable[[argparse.Namespace], list[Case]]
    run: Callable[[Case, argparse.Namespace], dict]


def _rss_mb() -> float:
    """Current resident memory of this process (MB)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _model(spec: str, args: argparse.Namespace):
    """The MDVAE of a model spec, "preset" or "preset/posterior", with `--overrides`."""
    import torch

    from mdvae.model.mdvae import MDVAE, MDVAEConfig

    preset, _, posterior = spec.partition("/")
    overrides = json.loads(args.overrides)
    if posterior:
        overrides["posterior"] = posterior
    torch.manual_seed(0)
    return MDVAE(MDVAEConfig.preset(preset, **overrides))


def parameter_counts(model) -> tuple[int, int]:
    """(network weights, observation log-variances): the authors' count is the first."""
    logvars = sum(p.numel() for n, p in model.named_parameters() if n.endswith(".logvar"))
    return sum(p.numel() for p in model.parameters()) - logvars, logvars


# ---- stage-2 training throughput -------------------------------------------------------


def _training_cases(args: argparse.Namespace) -> list[Case]:
    return [
        Case(f"{spec}, batch {b}", {"model": spec, "batch": b})
        for spec in args.models
        for b in args.batches
    ]


def _training_run(case: Case, args: argparse.Namespace, device: str = "cpu") -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    batch = case.params["batch"]
    gen = torch.Generator().manual_seed(0)
    base_rss = _rss_mb()
    model = _model(case.params["model"], args).to(device)
    config = model.config
    x_a = torch.randn(batch, TRAIN_FRAMES, config.audio_dim, generator=gen).to(device)
    x_v = torch.randn(batch, TRAIN_FRAMES, config.visual_dim, generator=gen).to(device)
    # the fused kernel: one pass over all parameters instead of ~60 small ops per tensor
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    model.train()
    cuda = device != "cpu"

    def step() -> None:
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=cuda):
            loss = model(x_a, x_v).loss.total
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if cuda:
            torch.cuda.synchronize()

    # matrix products of one forward + backward (the recurrent kernels of nn.LSTM are not
    # counted by torch's flop counter)
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    warmup, steps = (1, 4) if args.quick else (3, 15)
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, cpu_times = [], []
    for _ in range(steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    median = statistics.median(times)
    weights, _ = parameter_counts(model)
    frames = batch * TRAIN_FRAMES
    out = {
        "params": weights,
        "frames/s": frames / median,
        "step ms (median)": 1e3 * median,
        "CPU ms/step": 1e3 * statistics.median(cpu_times),
        "MFLOP/frame": counter.get_total_flops() / frames / 1e6,
        "GFLOP/s": counter.get_total_flops() / median / 1e9,
    }
    if cuda:
        out["peak MB"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        out["peak RSS MB"] = _peak_rss_mb()
        out["peak - base MB"] = _peak_rss_mb() - base_rss
    return out


def _cuda_training_cases(args: argparse.Namespace) -> list[Case]:
    import torch

    return _training_cases(args) if torch.cuda.is_available() else []


def _cuda_training_run(case: Case, args: argparse.Namespace) -> dict:
    return _training_run(case, args, device="cuda")


# ---- encode + decode latency of one clip -------------------------------------------------


def _latency_cases(args: argparse.Namespace) -> list[Case]:
    threads = sorted({1, args.threads})
    return [
        Case(f"shipped bundle, {n} thread(s)", {"frames": CLIP_FRAMES, "threads": n})
        for n in threads
    ] + [
        Case(f"{spec}, {args.threads} thread(s)", {"frames": CLIP_FRAMES, "model": spec})
        for spec in args.latency_models
    ]


def _latency_run(case: Case, args: argparse.Namespace) -> dict:
    import torch

    from mdvae.bundle import load_bundle

    n_frames = case.params["frames"]
    if "threads" in case.params:
        torch.set_num_threads(case.params["threads"])
    gen = torch.Generator().manual_seed(0)
    base_rss = _rss_mb()
    if "model" in case.params:
        model = _model(case.params["model"], args)
    else:
        model = load_bundle(SHIPPED_BUNDLE).components["mdvae"]
    config = model.config
    x_a = torch.randn(1, n_frames, config.audio_dim, generator=gen)
    x_v = torch.randn(1, n_frames, config.visual_dim, generator=gen)
    model.eval()

    def run() -> None:
        with torch.inference_mode():
            model.decode(model.encode(x_a, x_v))

    warmup, reps = (2, 10) if args.quick else (5, 40)
    for _ in range(warmup):
        run()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return {
        "encode+decode ms (median)": 1e3 * statistics.median(times),
        "ms (min)": 1e3 * min(times),
        "peak RSS MB": _peak_rss_mb(),
        "peak - base MB": _peak_rss_mb() - base_rss,
    }


SECTIONS: list[Section] = [
    Section(
        "stage2_training",
        f"Stage-2 MDVAE training, T = {TRAIN_FRAMES}, fp32 "
        "(forward + ELBO + backward + AdamW step)",
        [
            "params",
            "frames/s",
            "step ms (median)",
            "CPU ms/step",
            "MFLOP/frame",
            "GFLOP/s",
            "peak RSS MB",
            "peak - base MB",
        ],
        _training_cases,
        _training_run,
    ),
    Section(
        "clip_latency",
        "Encode (posterior means) + decode, batch 1",
        ["encode+decode ms (median)", "ms (min)", "peak RSS MB", "peak - base MB"],
        _latency_cases,
        _latency_run,
    ),
    Section(
        "cuda_training",
        f"Stage-2 MDVAE training on CUDA, T = {TRAIN_FRAMES}, bf16 autocast",
        ["params", "frames/s", "step ms (median)", "MFLOP/frame", "GFLOP/s", "peak MB"],
        _cuda_training_cases,
        _cuda_training_run,
    ),
]


# ---- driver ------------------------------------------------------------------------------


def _child_argv(args: argparse.Namespace, section: Section, case: Case) -> list[str]:
    argv = [sys.executable, "-m", "train.benchmark", "--threads", str(args.threads)]
    argv += ["--models", *args.models, "--overrides", args.overrides]
    argv += ["--latency-models", *args.latency_models, "--batches", *map(str, args.batches)]
    if args.quick:
        argv.append("--quick")
    return argv + ["--run-case", json.dumps({"section": section.name, "case": case.__dict__})]


def _run_child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    spec = json.loads(args.run_case)
    section = next(s for s in SECTIONS if s.name == spec["section"])
    result = section.run(Case(**spec["case"]), args)
    print(json.dumps(result))


def _cell(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:,.1f}"


def _format_table(section: Section, rows: list[tuple[str, dict, float]]) -> str:
    header = ["", *section.columns, "load avg"]
    body = [
        [label, *(_cell(values[c]) for c in section.columns), f"{load:.2f}"]
        for label, values, load in rows
    ]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [f"## {section.title}"]
    for row in [header, ["-" * w for w in widths], *body]:
        lines.append("| " + " | ".join(cell.rjust(w) for cell, w in zip(row, widths)) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, for a smoke run")
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="fresh processes per row; the table shows the median of each column (default 3, "
        "1 with --quick)",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=MODELS,
        help="models to train, each an MDVAE preset with an optional /posterior "
        f"(default {' '.join(MODELS)})",
    )
    parser.add_argument(
        "--latency-models",
        nargs="*",
        default=["authors/filtering"],
        help="models timed on a clip besides the shipped bundle (default authors/filtering)",
    )
    parser.add_argument(
        "--overrides",
        default="{}",
        help="JSON of MDVAEConfig fields for every model, e.g. '{\"rnn_dim\": 64}'",
    )
    parser.add_argument(
        "--batches", type=int, nargs="+", default=[32, 128], help="training batch sizes"
    )
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=[s.name for s in SECTIONS],
        default=[s.name for s in SECTIONS],
        help="which sections to run (default all)",
    )
    parser.add_argument("--run-case", help=argparse.SUPPRESS)  # internal: one row, in a child
    args = parser.parse_args(argv)
    if args.run_case:
        _run_child(args)
        return

    import torch

    repeats = args.repeats or (1 if args.quick else 3)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPU(s), "
        f"overrides {args.overrides}, {'quick' if args.quick else 'full'} run, median of "
        f"{repeats} fresh process(es) per row; load average (1, 5, 15 min) before: "
        + ", ".join(f"{x:.2f}" for x in os.getloadavg())
    )
    for spec in args.models:
        weights, logvars = parameter_counts(_model(spec, args))
        print(f"{spec}: {weights:,} weights (+ {logvars:,} observation log-variances)")
    for section in (s for s in SECTIONS if s.name in args.sections):
        rows = []
        for case in section.cases(args):
            runs, loads = [], []
            for _ in range(repeats):
                proc = subprocess.run(
                    _child_argv(args, section, case), capture_output=True, text=True, check=False
                )
                if proc.returncode != 0:
                    sys.exit(f"{section.name} / {case.label} failed:\n{proc.stderr}")
                runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
                loads.append(os.getloadavg()[0])
            values = {c: statistics.median(r[c] for r in runs) for c in section.columns}
            rows.append((case.label, values, statistics.median(loads)))
        if not rows:
            continue
        print()
        print(_format_table(section, rows))


if __name__ == "__main__":
    main()
