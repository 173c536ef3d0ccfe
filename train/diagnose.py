"""Look inside a trained stage-2 model: what each latent group carries and what it costs.

Prints, per latent group, the KL at t = 1 and per later frame, the between-clip share of
each dimension's variance, how far each decoder's output moves (nats per frame) when the
group alone is swapped with another speaker's clip, and linear probes of emotion (fitted
on training speakers, scored on held-out ones) and speaker (within held-out speakers) on
the group's clip means; per stream, the reconstruction term and the learned
log-variances against the residuals'. Where both stores hold the synthetic per-frame factors
(mouth shape, blink, head pose and its motion about the clip's mean pose; with an audio
stream, the f0 contour and level), also: a linear read-out of each from the stage-1
features of its stream, fitted on training frames, scored on the held-out clips' features,
on the model's reconstructions and after swapping each group alone (does the reading
follow the partner clip?), and per-frame probes of each factor from each dynamical group's
posterior means (`--no-frame-probes` skips them). With
an audio stream and f0, also the pitch heard in the decoded audio after each swap (a
harmonic comb on the audio VQ-VAE's output, `mdvae/eval/pitch.py`): whose level and contour
it has. The f0 read-out's swap shares can read the voice's timbre as its pitch; these read
the harmonics. Where the held-out clips carry intensity levels, the emotion read from w
per level, and (an MDVAE) from w encoded with another emotion's voice of the same speaker
and level (is w's emotion the face's or the voice's?) and, as the control, with another
speaker's voice of the same emotion and level. With `--audio-judge` (the audio judge a
`train.evaluate` run saved, `judge_audio.safetensors`), also whose speaker the decoded voice
is, on training and held-out speakers: decoded from the clip's own streams, and from its
audio with another speaker's face (does the model render the voice it hears, or the one it
learnt goes with a training face?). See `mdvae/eval/diagnostics.py` for the definitions.

    python -m train.diagnose --bundle checkpoints --store data/synth200
    python -m train.diagnose --run runs/mdvae --vq-visual runs/vq_visual \\
        --vq-audio runs/vq_audio --store data/synth200 --held-store data/synth_new64

Held-out clips come from `--held-split` of `--held-store` (default: the validation
speakers of `--store`); choose models on these, never on the test speakers. A held-out
store must hold new speakers (a synthetic speaker is its index, whatever the seed:
`train.prepare synthetic --first-speaker 200 ...`); speakers `--store` trains on are refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from mdvae.bundle import load_bundle
from mdvae.data.store import Store
from mdvae.errors import MDVAEError
from mdvae.eval import diagnostics as diag
from mdvae.eval import pitch
from mdvae.eval.diagnostics import feature_means, feature_stats, labelled
from mdvae.eval.disentanglement import FollowStay
from mdvae.eval.experiments import static_means
from mdvae.eval.judges import load_judge
from train import common
from train.runs import cached_features, load_stage1, load_stage2


def _stack(stream: np.ndarray, clips: list, n_frames: int) -> torch.Tensor:
    return torch.from_numpy(np.stack(
        [np.asarray(stream[c.start:c.start + n_frames], np.float32) for c in clips]))


def _at(per_clip: list[dict[str, np.ndarray]], picks: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Per key of the clips' arrays {key: (T, ...)}, the picked frames, clip after clip."""
    return {k: np.concatenate([d[k][p] for d, p in zip(per_clip, picks)]) for k in per_clip[0]}


@torch.no_grad()
def decode_power(vq_audio, features: torch.Tensor, chunk: int = 4096) -> np.ndarray:
    """Audio features (N, T, D) -> the audio VQ-VAE's power spectrograms (N, T, 513)."""
    flat = features.reshape(-1, features.shape[-1])
    out = torch.cat([vq_audio.decode_features(c) for c in flat.split(chunk)])
    return out.reshape(*features.shape[:-1], -1).float().numpy()


def run(model, audio, visual, train_clips, held_audio, held_visual, held_clips,
        *, show: bool = True, window: int | None = None, train_factors=None,
        held_factors=None, frames_per_clip: int = 16, seed: int = 0,
        vq_audio=None, audio_judge=None) -> diag.Diagnostics:
    """Diagnostics of `model` on `held_clips` (cropped to the shortest; a few hundred fit in
    memory at once), with emotion probes fitted on `train_clips`. With both stores' factor
    arrays ({name: (frames, ...)}), per-frame factor probes too (`diag.frame_factors_for`
    the model's streams), their read-outs (one per observed stream) and probes fitted on
    `frames_per_clip` random frames of each training clip. With the audio VQ-VAE
    (`vq_audio`) and the f0 factor, the pitch heard in the decoded audio of each swap too
    (`mdvae.eval.pitch`). With it and an audio judge (`audio_judge`, a speaker head), whose
    speaker the decoded voice is (`diag.voice_sources`) for up to 512 of `train_clips` and
    for `held_clips`."""
    n_frames = min(c.length for c in held_clips)
    speakers = [c.speaker for c in held_clips]
    partner = diag.partners(speakers)
    # all held-out clips at once: the swaps pair each clip with another speaker's
    x_a, x_v = _stack(held_audio, held_clips, n_frames), _stack(held_visual, held_clips, n_frames)
    picks = train_targets = held_targets = probe_targets = None
    readouts: dict[str, diag.FrameReadout] = {}  # stream -> read-out of its features
    if train_factors is not None and held_factors is not None:
        picks = diag.frame_picks(train_clips, frames_per_clip, np.random.default_rng(seed))
        rows = np.concatenate([c.start + p for c, p in zip(train_clips, picks)])
        held_rows = np.stack([np.arange(c.start, c.start + n_frames) for c in held_clips])
        held_targets = diag.frame_targets({k: v[held_rows] for k, v in held_factors.items()})
        # whole training clips: a view of a clip (f0's contour and level) needs all its frames
        clip_readings = [diag.frame_targets({k: v[c.start:c.start + c.length]
                                             for k, v in train_factors.items()})
                         for c in train_clips]
        streams = diag.streams_of(model)
        wanted = {f.reads for f in diag.frame_factors_for(streams)}
        both = clip_readings[0].keys() & held_targets.keys() & wanted
        held_targets = {k: v for k, v in held_targets.items() if k in both}
        clip_readings = [{k: r[k] for k in both} for r in clip_readings]
        train_targets = _at(clip_readings, picks)  # {reading: (M, ...)}, for the read-outs
        probe_targets = _at([diag.factor_targets(r) for r in clip_readings], picks)  # by factor
        features = {"audio": audio, "visual": visual}
        for stream in streams:
            own = {k: v for k, v in train_targets.items()
                   if diag.FRAME_READINGS[k].stream == stream}
            if own:
                readouts[stream] = diag.fit_readout(np.asarray(features[stream][rows],
                                                               np.float32), own)
    read = {s: r.predict for s, r in readouts.items()}
    hear = None
    if vq_audio is not None and held_targets is not None and "f0" in held_targets \
            and "audio" in diag.streams_of(model):
        f0_a = held_targets["f0"][..., 0]

        def hear(features: torch.Tensor) -> np.ndarray:
            return pitch.heard_tracks(decode_power(vq_audio, features), f0_a, f0_a[partner])

        own = read.get("audio", lambda _: {})
        read["audio"] = lambda features: {**own(features), "pitch": hear(features)}
    measured = diag.measure(model, x_a, x_v, partner=partner, read=read)
    elbo = diag.sampled_elbo(model, x_a, x_v, window=min(window, n_frames)) if window else {}
    train, train_frames = diag.encode_clips(model, audio, visual, train_clips, frames=picks,
                                            show=show)
    probes = diag.probe_groups(train, [c.emotion for c in train_clips], measured.means,
                               [c.emotion for c in held_clips], speakers)
    for g in measured.groups:
        g.probes = probes[g.name]
    sources = {}
    w_probe = diag.fit_probe(train["w"], [c.emotion for c in train_clips])
    if w_probe is not None and all(c.level is not None for c in held_clips):
        sources = diag.emotion_sources(
            lambda a, v: static_means(model, a, v), w_probe, measured.means["w"], x_a, x_v,
            [c.emotion for c in held_clips], [c.level for c in held_clips], speakers,
            mix=len(diag.streams_of(model)) == 2)
    frame_factors = {}
    if train_targets:
        readings = dict(measured.readings)
        if readouts:
            inputs = {"audio": x_a, "visual": x_v}
            readings = {"input": {k: v for s, r in readouts.items()
                                  for k, v in r.predict(inputs[s]).items()}, **readings}
        # w too, repeated over each clip's frames: whether a clip-level factor (the f0 level)
        # is in w at all, apart from whether the decoders render it from there
        train_w = np.concatenate([np.repeat(w[None], len(p), 0)
                                  for w, p in zip(train["w"], picks)])
        held_w = np.repeat(measured.means["w"][:, None], n_frames, 1)
        latents = diag.probe_frames({"w": train_w, **train_frames}, probe_targets,
                                    {"w": held_w, **measured.frames}, held_targets)
        frame_factors = diag.frame_factor_scores(held_targets, partner, readings, latents)
    heard = {}
    if hear is not None:
        f0_a = held_targets["f0"][..., 0]
        tracks = {"B itself (codec)": hear(x_a[partner]), "A itself (codec)": hear(x_a)}
        tracks |= {k: v["pitch"] for k, v in measured.readings.items() if "pitch" in v}
        heard = {k: {f: FollowStay(*c).to_dict()
                     for f, c in pitch.heard_counts(t, f0_a, f0_a[partner]).items()}
                 for k, t in tracks.items()}
    voices = {}
    if vq_audio is not None and audio_judge is not None and "audio" in diag.streams_of(model):
        voices = voice_sources(model, vq_audio, audio_judge, audio, visual, train_clips[:512],
                               x_a, x_v, speakers, seed)
    return diag.Diagnostics(type(model).__name__, measured.groups, measured.streams,
                            len(held_clips), combined=probes["all"], sampled_elbo=elbo,
                            frame_factors=frame_factors, pitch_heard=heard,
                            emotion_sources=sources, voice_sources=voices)


def voice_sources(model, vq_audio, audio_judge, audio, visual, seen_clips, x_a, x_v,
                  speakers, seed: int) -> dict[str, dict[str, float]]:
    """`diag.voice_sources` for clips of training speakers (`seen_clips` of the training
    store's features) and the held-out clips (x_a, x_v of `speakers`), the voices read by
    `audio_judge`'s speaker head on the audio VQ-VAE's output."""

    @torch.no_grad()
    def decode_voice(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.cat([diag._decode(model, diag._infer(model, a[s:s + 64], v[s:s + 64])[0])
                          ["audio"] for s in range(0, len(a), 64)])

    def read_speaker(features: torch.Tensor) -> np.ndarray:
        return audio_judge.read(decode_power(vq_audio, features))["speaker_logp"]

    mix = len(diag.streams_of(model)) == 2
    n_seen = min(c.length for c in seen_clips)
    seen = (_stack(audio, seen_clips, n_seen), _stack(visual, seen_clips, n_seen),
            [c.speaker for c in seen_clips])
    return {name: diag.voice_sources(decode_voice, read_speaker, a, v, who,
                                     np.random.default_rng(seed), mix=mix)
            for name, (a, v, who) in (("training speakers", seen),
                                      ("held-out speakers", (x_a, x_v, speakers)))}


def main(argv: list[str] | None = None) -> diag.Diagnostics:
    parser = argparse.ArgumentParser(prog="python -m train.diagnose", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--bundle", help="bundle folder (its VQ-VAEs are used too)")
    source.add_argument("--run", help="stage-2 run folder (needs --vq-visual, --vq-audio)")
    parser.add_argument("--component", default="mdvae",
                        help="with --bundle: mdvae, dsae_audio or dsae_visual")
    parser.add_argument("--vq-visual")
    parser.add_argument("--vq-audio")
    parser.add_argument("--store", required=True, help="store whose training split fits "
                        "the emotion probes")
    parser.add_argument("--held-store", help="store of the held-out clips (default --store)")
    parser.add_argument("--held-split", default="val")
    parser.add_argument("--window", type=int, default=30,
                        help="frames per window of the sampled -ELBO on the held-out clips "
                             "(stage 2's training window T; 0: skip it)")
    parser.add_argument("--train-clips", type=int, default=1500,
                        help="labelled training clips for the emotion probes (random subset)")
    parser.add_argument("--feature-probes", action="store_true",
                        help="also probe the stage-1 features: their clip means, and their "
                             "clip means, spreads and changes per stream and together, fitted "
                             "on every labelled training clip (a reference for the emotion in w, "
                             "per level; a few minutes)")
    parser.add_argument("--no-frame-probes", action="store_true",
                        help="skip the per-frame factor probes (mouth, blink, head pose, "
                             "f0)")
    parser.add_argument("--frames-per-clip", type=int, default=16,
                        help="random frames of each training clip that fit the per-frame "
                             "read-outs and probes")
    parser.add_argument("--audio-judge", help="an audio judge saved by train.evaluate "
                        "(judge_audio.safetensors): also whose speaker the decoded voice is, "
                        "with the clip's own face and with another speaker's")
    parser.add_argument("--json", help="write the diagnostics here too")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.bundle:
        bundle = load_bundle(args.bundle)
        vq_audio, vq_visual = bundle["vq_audio"], bundle["vq_visual"]
        model = bundle[args.component]
    else:
        if not (args.vq_visual and args.vq_audio):
            parser.error("--run needs --vq-visual and --vq-audio")
        vq_audio, vq_visual = load_stage1(args.vq_audio), load_stage1(args.vq_visual)
        model = load_stage2(args.run)
    model.eval().requires_grad_(False)
    audio_judge = None
    if args.audio_judge:
        loaded = load_judge(args.audio_judge)
        if loaded is None or loaded[0].config.modality != "audio":
            raise MDVAEError(f"--audio-judge {args.audio_judge}: not an audio judge saved by "
                             "train.evaluate (judge_audio.safetensors in its --out folder)")
        audio_judge = loaded[0].eval()

    store = Store(args.store)
    held_store = Store(args.held_store) if args.held_store else store
    audio, visual, _ = cached_features(store, vq_audio, vq_visual)
    held_audio, held_visual, _ = (cached_features(held_store, vq_audio, vq_visual)
                                  if args.held_store else (audio, visual, None))
    train_clips = labelled(store.split_clips("train"))
    held_clips = labelled(held_store.split_clips(args.held_split))
    if not train_clips or not held_clips:
        raise MDVAEError("diagnose needs labelled clips in the training split of --store and "
                         f"in the {args.held_split!r} split of the held-out store")
    common.check_unseen(held_clips, store, bundle.info if args.bundle else None)
    all_train_clips = train_clips  # the clip-statistics probes are fitted on all of them
    rng = np.random.default_rng(args.seed)
    if len(train_clips) > args.train_clips:
        pick = np.sort(rng.choice(len(train_clips), args.train_clips, replace=False))
        train_clips = [train_clips[i] for i in pick]
    train_factors = held_factors = None
    if not args.no_frame_probes:
        if any(r.source in store.factors and r.source in held_store.factors
               for r in diag.FRAME_READINGS.values()):
            train_factors, held_factors = store.factors, held_store.factors
        else:
            print("per-frame factor probes skipped: the stores do not both have the mouth "
                  "(viseme), blink, head_pose or f0 factors", file=sys.stderr)
    result = run(model, audio, visual, train_clips, held_audio, held_visual, held_clips,
                 window=args.window, train_factors=train_factors, held_factors=held_factors,
                 frames_per_clip=args.frames_per_clip, seed=args.seed, vq_audio=vq_audio,
                 audio_judge=audio_judge)
    result.settings = {
        "source": str(args.bundle or args.run),
        "component": args.component if args.bundle else None,
        "store": str(args.store), "held_store": str(args.held_store or args.store),
        "held_split": args.held_split, "train_clips": args.train_clips, "seed": args.seed,
        "frame_probes": train_factors is not None, "window": args.window,
        "audio_judge": args.audio_judge,
    }
    if args.feature_probes:
        tr = feature_means(audio, visual, train_clips)
        he = feature_means(held_audio, held_visual, held_clips)
        tr["both"] = np.concatenate([tr["audio"], tr["visual"]], 1)
        he["both"] = np.concatenate([he["audio"], he["visual"]], 1)
        result.feature_probes = {
            k: diag.linear_probe(tr[k], [c.emotion for c in train_clips], he[k],
                                 [c.emotion for c in held_clips]) for k in tr}
        result.feature_stats_probes = diag.feature_stats_probes(
            feature_stats(audio, visual, all_train_clips), all_train_clips,
            feature_stats(held_audio, held_visual, held_clips), held_clips)
    print(diag.format_report(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=1))
        print(f"wrote {args.json}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
