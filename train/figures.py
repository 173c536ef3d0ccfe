"""Render the README's reconstruction figure from a bundle and the example clips.

    python -m train.figures --bundle checkpoints --examples examples \\
        --out docs/reconstruction_examples.png

For every example clip: the original frames, the VQ-VAE's reconstruction (stage 1 alone)
and the MDVAE's (stage 2 inside the frozen VQ-VAEs), with each clip's visual PSNR. The
PSNRs are also printed as a table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from mdvae.eval.metrics import psnr
from mdvae.pipeline import Pipeline


def reconstructions(pipeline: Pipeline, path: Path) -> dict[str, np.ndarray]:
    """Original, VQ-VAE and MDVAE frames (T, 64, 64, 3) uint8 of one aligned clip."""
    enc = pipeline.encode(pipeline.load(path, aligned=True))
    return {"original": enc.clip.frames,
            "VQ-VAE": pipeline.codec.decode_visual(enc.x_v[0]),  # stage-1 features as they are
            "MDVAE": pipeline.reconstruct(enc).frames}


def figure(rows: dict[str, dict[str, np.ndarray]], out: Path, n_frames: int = 4) -> Path:
    """A grid of examples (two per row); each shows `n_frames` evenly spaced frames of the
    original, VQ-VAE and MDVAE versions, one version per line, PSNRs in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    n_cols = 2
    n_rows = (len(names) + n_cols - 1) // n_cols
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(5.2 * n_cols, 4.3 * n_rows), squeeze=False)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.ravel(), names):
        versions = rows[name]
        original = versions["original"]
        picks = np.linspace(0, len(original) - 1, n_frames).round().astype(int)
        lines = [np.concatenate(list(frames[picks]), axis=1) for frames in versions.values()]
        gap = np.full((2, lines[0].shape[1], 3), 255, np.uint8)
        grid = np.concatenate([part for line in lines for part in (line, gap)][:-1], axis=0)
        ax.imshow(grid, interpolation="nearest")
        scores = ", ".join(f"{label} {psnr(original, frames):.1f} dB"
                           for label, frames in versions.items() if label != "original")
        ax.set_title(f"{name}\n{scores}", fontsize=9)
        ax.set_yticks([32 + 66 * i for i in range(len(lines))], list(versions))
        ax.tick_params(length=0, labelsize=8)
        ax.set_xticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default="checkpoints", help="bundle folder")
    parser.add_argument("--examples", default="examples", help="folder of aligned .mp4 clips")
    parser.add_argument("--out", default="docs/reconstruction_examples.png", type=Path)
    parser.add_argument("--frames", type=int, default=4, help="frames shown per clip")
    args = parser.parse_args(argv)
    paths = sorted(Path(args.examples).glob("*.mp4"))
    if not paths:
        parser.error(f"no .mp4 clips in {args.examples}")
    if args.frames < 1:
        parser.error("--frames must be at least 1")
    torch.set_num_threads(1)
    with Pipeline(args.bundle) as pipeline:
        rows = {path.stem: reconstructions(pipeline, path) for path in paths}
    print("| clip | VQ-VAE PSNR (dB) | MDVAE PSNR (dB) |\n|---|---|---|")
    for name, versions in rows.items():
        original = versions["original"]
        print(f"| {name} | {psnr(original, versions['VQ-VAE']):.2f} "
              f"| {psnr(original, versions['MDVAE']):.2f} |")
    out = figure(rows, args.out, args.frames)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
