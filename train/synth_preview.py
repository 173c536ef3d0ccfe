"""Contact sheets and a spectrogram of the synthetic benchmark, to check it by eye.

    python -m train.synth_preview --out previews/

Writes speakers.png (one neutral frame per speaker), emotions.png (speakers x emotions at
level 3), levels.png (one speaker, every emotion at levels 1..3), visemes.png (a frame of
each mouth shape), clip_strip.png (consecutive frames of one clip with its phones, blinks,
head pose and the mouth / eye boxes), spectrogram.png (the clip's power spectrogram with
phones, f0 and voicing), voices.png (that speaker's voice in every emotion) and clip.wav
(the clip's audio).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mdvae.data.synthetic import SyntheticClip, generate_clip
from mdvae.data.synthetic_script import PHONES, VISEMES
from mdvae.data.synthetic_voice import SAMPLE_RATE
from mdvae.labels import EMOTIONS

SCALE = 3  # nearest-neighbour upscaling of the 64x64 frames on the sheets
LABEL_H = 12


def _rest_frame(clip: SyntheticClip) -> np.ndarray:
    """A frame with open eyes and the mouth as closed as the clip gets."""
    f = clip.factors
    score = f["mouth_open"] + 2.0 * f["blink"] + 0.02 * np.abs(f["head_pose"]).sum(1)
    return clip.frames[int(np.argmin(score))]


def _tile(frame: np.ndarray, label: str = "", boxes=()) -> Image.Image:
    img = Image.fromarray(frame).resize((64 * SCALE, 64 * SCALE), Image.NEAREST)
    out = Image.new("RGB", (img.width, img.height + LABEL_H), "white")
    out.paste(img, (0, 0))
    draw = ImageDraw.Draw(out)
    for (y0, x0, y1, x1), colour in boxes:
        draw.rectangle([x0 * SCALE, y0 * SCALE, x1 * SCALE - 1, y1 * SCALE - 1], outline=colour)
    draw.text((2, img.height), label, fill="black")
    return out


def _sheet(tiles: list[list[Image.Image]], title: str) -> Image.Image:
    w, h = tiles[0][0].size
    cols = max(len(row) for row in tiles)
    sheet = Image.new("RGB", (cols * (w + 2), len(tiles) * (h + 2) + 14), "white")
    ImageDraw.Draw(sheet).text((2, 1), title, fill="black")
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            sheet.paste(tile, (c * (w + 2), 14 + r * (h + 2)))
    return sheet


def speakers_sheet(n: int) -> Image.Image:
    tiles = [_tile(_rest_frame(generate_clip(s, "neutral", 1, 0, 30)), f"speaker {s}")
             for s in range(n)]
    per_row = 8
    rows = [tiles[i:i + per_row] for i in range(0, n, per_row)]
    return _sheet(rows, "speakers (neutral, mouth at rest)")


def emotions_sheet(speakers: list[int]) -> Image.Image:
    rows = []
    for s in speakers:
        rows.append([_tile(_rest_frame(generate_clip(s, e, 1 if e == "neutral" else 3, 1, 30)),
                           f"{s} {e}") for e in EMOTIONS])
    return _sheet(rows, "emotions at level 3 (neutral: level 1)")


def levels_sheet(speaker: int) -> Image.Image:
    rows = []
    for e in EMOTIONS:
        if e == "neutral":
            continue
        rows.append([_tile(_rest_frame(generate_clip(speaker, e, lv, 2, 30)), f"{e} {lv}")
                     for lv in (1, 2, 3)])
    return _sheet(rows, f"speaker {speaker}: levels 1..3")


def visemes_sheet(speakers: list[int]) -> Image.Image:
    rows = []
    for s in speakers:
        found: dict[int, np.ndarray] = {}
        for seed in range(40):
            clip = generate_clip(s, "neutral", 1, 100 + seed, 60)
            vis = clip.factors["viseme"]
            for t in range(1, len(vis) - 1):
                # The middle of a run of three frames shows the shape at its target.
                if vis[t - 1] == vis[t] == vis[t + 1] and vis[t] not in found:
                    if clip.factors["blink"][t] < 0.1:
                        found[int(vis[t])] = clip.frames[t]
            if len(found) == len(VISEMES):
                break
        rows.append([_tile(found[v], f"{s} {VISEMES[v]}") if v in found
                     else _tile(np.zeros((64, 64, 3), np.uint8), "(none)")
                     for v in range(len(VISEMES))])
    return _sheet(rows, "visemes")


def clip_strip(clip: SyntheticClip, n: int = 30, per_row: int = 10) -> Image.Image:
    f = clip.factors
    tiles = []
    for t in range(min(n, len(clip.frames))):
        label = f"{t} {PHONES[f['phone'][t]]} b{f['blink'][t]:.1f}"
        boxes = [(f["mouth_box"][t], (0, 200, 0)), (f["eyes_box"][t], (0, 160, 255))]
        tiles.append(_tile(clip.frames[t], label, boxes))
    rows = [tiles[i:i + per_row] for i in range(0, len(tiles), per_row)]
    return _sheet(rows, f"speaker {clip.speaker} {clip.emotion} {clip.level} seed {clip.seed}: "
                        "frame phone blink; boxes: mouth (green), eyes (blue)")


def spectrogram_plot(clip: SyntheticClip, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mdvae.media.audio import HOP, power_spectrogram

    power = power_spectrogram(clip.audio)[: len(clip.frames)]  # (T, 513)
    f = clip.factors
    t_frames = np.arange(len(power))
    fig, axes = plt.subplots(4, 1, figsize=(14, 11), sharex=True,
                             gridspec_kw={"height_ratios": [4, 1, 1, 1]})
    ax = axes[0]
    db = 10 * np.log10(power.T + 1e-10)
    ax.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=db.max() - 80,
              extent=(-0.5, len(power) - 0.5, 0, SAMPLE_RATE / 2))
    voiced = f["f0"] > 0
    for k in (1, 2, 3):
        ax.plot(t_frames, np.where(voiced, k * f["f0"], np.nan), "c-", lw=0.8)
    ax.set_ylabel("Hz")
    ax.set_title(f"speaker {clip.speaker} {clip.emotion} {clip.level} seed {clip.seed}: "
                 f"power spectrogram (n_fft 1024, hop {HOP}); cyan: f0, 2f0, 3f0")
    starts = np.flatnonzero(np.diff(f["phone"], prepend=-1))
    for s in starts:
        ax.axvline(s - 0.5, color="w", lw=0.4, alpha=0.5)
        ax.text(s, SAMPLE_RATE / 2 * 0.96, PHONES[f["phone"][s]], color="w", fontsize=8)
    axes[1].plot(t_frames, f["f0"], label="f0 (Hz, 0 unvoiced)")
    axes[1].legend(loc="upper right")
    energy = 10 * np.log10(power.sum(1) + 1e-10)
    axes[2].plot(t_frames, energy - energy.max(), label="frame energy (dB)")
    axes[2].plot(t_frames, f["loudness"] - 20, label="loudness contour - 20 (dB)")
    axes[2].legend(loc="upper right")
    axes[3].plot(t_frames, f["mouth_open"], label="mouth_open")
    axes[3].plot(t_frames, f["blink"], label="blink")
    axes[3].plot(t_frames, f["head_pose"][:, 0] / 5, label="head dx / 5 px")
    axes[3].legend(loc="upper right")
    axes[3].set_xlabel("frame")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def voices_plot(speaker: int, seed: int, path: Path) -> None:
    """One speaker saying different phones in each emotion: pitch, range, rate, tilt."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mdvae.media.audio import power_spectrogram

    fig, axes = plt.subplots(2, 4, figsize=(16, 7), sharey=True)
    for ax, emotion in zip(axes.flat, EMOTIONS):
        clip = generate_clip(speaker, emotion, 1 if emotion == "neutral" else 3, seed)
        f = clip.factors
        db = 10 * np.log10(power_spectrogram(clip.audio)[: len(clip.frames)].T + 1e-10)
        ax.imshow(db[:257], origin="lower", aspect="auto", cmap="magma", vmin=db.max() - 70,
                  extent=(-0.5, len(clip.frames) - 0.5, 0, SAMPLE_RATE / 4))
        ax.plot(np.where(f["f0"] > 0, f["f0"], np.nan), "c-", lw=1.2)
        voiced = f["f0"][f["f0"] > 0]
        rate = np.count_nonzero(np.diff(f["phone"])) / (len(clip.frames) / 30)
        ax.set_title(f"{emotion}: median f0 {np.median(voiced):.0f} Hz, {rate:.1f} phones/s",
                     fontsize=9)
    axes[0, 0].set_ylabel("Hz")
    fig.suptitle(f"speaker {speaker}, seed {seed}, level 3: spectrogram below 4 kHz, f0 in cyan")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
    parser.add_argument("--speakers", type=int, default=16, help="speakers on speakers.png")
    parser.add_argument("--clip", type=int, nargs=3, default=(0, 4, 7),
                        metavar=("SPEAKER", "EMOTION_INDEX", "SEED"),
                        help="the clip shown frame by frame and as a spectrogram (level 3)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    speakers_sheet(args.speakers).save(args.out / "speakers.png")
    emotions_sheet([0, 1, 2, 3]).save(args.out / "emotions.png")
    levels_sheet(args.clip[0]).save(args.out / "levels.png")
    visemes_sheet([0, 5]).save(args.out / "visemes.png")
    speaker, emotion_index, seed = args.clip
    emotion = EMOTIONS[emotion_index]
    clip = generate_clip(speaker, emotion, 1 if emotion == "neutral" else 3, seed)
    clip_strip(clip).save(args.out / "clip_strip.png")
    spectrogram_plot(clip, args.out / "spectrogram.png")
    voices_plot(speaker, seed, args.out / "voices.png")
    import soundfile

    soundfile.write(args.out / "clip.wav", clip.audio, SAMPLE_RATE)
    print(f"wrote the previews to {args.out}")


if __name__ == "__main__":
    main()
