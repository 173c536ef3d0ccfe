"""What a trained stage-2 model learnt, group by latent group.

For an MDVAE (w, z_av, z_a, z_v) or a DSAE (w, z), on whole clips encoded with posterior
means, each latent group gets:

- `kl_first`: KL(q || p) at t = 1 in nats (for w: KL(q(w) || N(0, I)), once per clip);
- `kl_later`: the mean KL per frame over t >= 2 (0 for w): what carrying the group from
  frame to frame costs once its autoregressive prior has seen the past;
- `clip_share`: per dimension, the share of the posterior means' variance that lies
  between clips (1: a clip constant, 0: all within-clip motion); not defined for w;
- `moves`: per observed stream, how far the decoder's output moves when this group alone
  is taken from another clip, in nats per frame: KL between the two observation
  Gaussians, 0.5 * sum_d (mean_swapped - mean)^2 / sigma_d^2 (they share sigma_d);
- `probes`: linear read-outs from the group's clip means (w itself, the z's averaged over
  time): emotion, fitted on the training speakers and scored on held-out ones; speaker,
  fitted on half of each held-out speaker's clips and scored on the other half.

And per stream: the reconstruction term (nats per frame) and the decoder's learned
log-variances against the residuals' own.

Per-frame factors (`frame_factors`; the synthetic benchmark's mouth shape, blink and head
pose, seen, and its f0 contour and level, heard, as the judges of `mdvae.eval.judges`
define them) are measured in feature space: a linear read-out from the stage-1 features
of the factor's stream, fitted on training frames, reads each factor from the held-out
clips' own features (`input`, the ceiling), from the model's reconstructions of that
stream (`reconstruction`: does it render the factor?) and from reconstructions with one
latent group swapped with the partner clip's (`swaps`: follow / stay shares, as
`mdvae.eval.disentanglement` scores the judges' readings); and a linear probe reads it
from each group's own per-frame posterior means (`latents`: where the information
lives, whatever the decoder does with it; w is the clip's on each of its frames, so it can
hold a clip-level factor such as the f0 level, not a per-frame one). The read-outs read
f0 itself, as the stage-1 features show it, and the contour and level are taken from their
readings; the probes are fitted on the contour and the level, which the latents are to split.

Where w's emotion comes from (`emotion_sources`): the w probe's accuracy per intensity
level (the voice can add most where the face shows least), and, for a model that reads both
streams, w encoded from a clip's face with another emotion's voice (same speaker, same
level): is it read as the face's emotion, the voice's, or neither? Its control: w with
another speaker's voice of the same emotion and level.

Whose speaker the decoded voice is (`voice_sources`, given a speaker reader such as the
evaluation's audio judge): each clip's voice decoded from its own streams, and from its own
audio with the face of another speaker's clip, compared with clean clips of the audio's
speaker and of the face's. A model that renders the voice from what it hears keeps the
audio's speaker; one that has learnt which voice goes with which training face renders the
face's (on training speakers; on new ones it has no pairing to recall, and its voice is then
as good as what it reads from the audio).

What the stage-1 features themselves hold (`feature_stats_probes`): a linear read-out of
emotion from each stream's clip statistics (mean, spread, change; `feature_stats`) and from
both streams' together, per level: the reference against which w's emotion is judged, and
how much the voice can add to the face at all.

Everything is measured, nothing is trained but the probes and read-outs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from mdvae.eval import pitch
from mdvae.eval.disentanglement import (
    MIN_VOICED_FRAMES,
    FollowStay,
    follow_stay_categorical,
    follow_stay_continuous,
)
from mdvae.eval.experiments import encode_either
from mdvae.eval.judges import BLINK_CLOSED, MARGINS, MOUTH_OF_VISEME, closer_to_b, f0_semitones
from mdvae.eval.stats import paired_difference
from mdvae.model.dsae import DSAE
from mdvae.model.gaussian import kl_divergence
from mdvae.model.mdvae import MDVAE


@dataclass
class GroupDiagnostics:
    name: str
    dim: int
    kl_first: float  # nats at t = 1 (w: per clip)
    kl_later: float  # nats per frame, t >= 2 (w: 0)
    clip_share: list[float]  # per dimension: between-clip share of the variance (z only)
    moves: dict[str, float]  # stream -> nats per frame moved by swapping this group alone
    probes: dict[str, float] = field(default_factory=dict)  # emotion / speaker accuracy


@dataclass
class StreamDiagnostics:
    name: str
    rec: float  # -log p(x_t | latents) at the posterior means, nats per frame
    logvar_median: float  # the decoder's learned log-variances
    logvar_min: float
    residual_logvar_median: float  # log of each dimension's mean squared residual


@dataclass
class Diagnostics:
    model: str
    groups: list[GroupDiagnostics]
    streams: list[StreamDiagnostics]
    clips: int  # held-out clips measured
    combined: dict[str, float] = field(default_factory=dict)  # probes on all groups together
    feature_probes: dict[str, float] = field(default_factory=dict)  # on stage-1 clip means
    # stream ("audio", "visual", "both") -> `feature_stats_probes` on `feature_stats`: the
    # emotion a linear read-out of the stage-1 features' clip statistics finds
    feature_stats_probes: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the objective as stage-2 validation computes it (one posterior sample, every KL weight
    # 1), per frame, on the held-out clips cut into windows: the ELBO terms and their sum
    sampled_elbo: dict[str, float] = field(default_factory=dict)
    # per-frame factor -> {"kind", "stream", "input", "reconstruction", "swaps": {group:
    # {"follow", "stay", "n"}}, "latents": {group: score}} (`frame_factor_scores`); scores
    # are balanced accuracies for classes, R^2 averaged over the values for values
    frame_factors: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the pitch heard in the decoded audio (`mdvae.eval.pitch`): source ("B itself (codec)",
    # "A itself (codec)", "reconstruction" or a swapped group) -> `pitch.READINGS` ("level",
    # "contour", "shape", "size") -> {"follow", "stay", "n"}: pairs whose decoding has B's /
    # A's level, contour, contour shape or contour size
    pitch_heard: dict[str, dict[str, dict]] = field(default_factory=dict)
    # level ("1", "2", "3", "all") -> the emotion read from w with the clips' own streams
    # and, for an MDVAE, with another emotion's voice (`emotion_sources`)
    emotion_sources: dict[str, dict[str, float]] = field(default_factory=dict)
    # clips ("training speakers", "held-out speakers") -> `voice_sources`
    voice_sources: dict[str, dict[str, float]] = field(default_factory=dict)
    # how the program measured: the model's source, the stores and split, the probes' seed
    # (`train.compare_diagnostics` flags runs measured on other clips)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


# ---- one interface over MDVAE and DSAE ----------------------------------------------------


def streams_of(model: MDVAE | DSAE) -> list[str]:
    if isinstance(model, DSAE):
        return [model.config.modality]
    return ["audio", "visual"]


def _inputs(model: MDVAE | DSAE, x_a: Tensor, x_v: Tensor) -> dict[str, Tensor]:
    return {s: x_a if s == "audio" else x_v for s in streams_of(model)}


def _decoders(model: MDVAE | DSAE) -> dict:
    if isinstance(model, DSAE):
        return {model.config.modality: model.decoder_x}
    return {"audio": model.decoder_x_a, "visual": model.decoder_x_v}


def _infer(model: MDVAE | DSAE, x_a: Tensor, x_v: Tensor):
    if isinstance(model, DSAE):
        return model.infer(_inputs(model, x_a, x_v)[model.config.modality], sample=False)
    return model.infer(x_a, x_v, sample=False)


def _decode(model: MDVAE | DSAE, latents) -> dict[str, Tensor]:
    out = model.decode(latents)
    if isinstance(model, DSAE):
        return {model.config.modality: out}
    return {"audio": out[0], "visual": out[1]}


# ---- measurements -------------------------------------------------------------------------


def between_clip_share(z: Tensor) -> Tensor:
    """Per dimension of z (N, T, L), the share of its variance over all frames that lies
    between the clips' time averages: (L,) in [0, 1]. Variances with 1/n, so that a clip
    constant scores exactly 1 and a zero-mean motion within every clip 0."""
    flat = z.reshape(-1, z.shape[-1])
    total = flat.var(0, unbiased=False)
    between = z.mean(1).var(0, unbiased=False)
    return (between / total.clamp_min(1e-12)).clamp(max=1.0)


@torch.no_grad()
def encode_clips(
    model: MDVAE | DSAE, audio: np.ndarray, visual: np.ndarray, clips: list, *,
    frames: list[np.ndarray] | None = None, show: bool = True,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per whole clip (store rows), each latent group's posterior mean: w as it is, the
    dynamical groups (z_av, z_a, z_v; a DSAE's z) averaged over time, {group: (N, L)}; and,
    where `frames[i]` lists frame offsets into clip i, the dynamical groups' posterior means
    at those frames, stacked clip after clip, {group: (M, L)} ({} without `frames`)."""
    means: dict[str, list[np.ndarray]] = {}
    picked: dict[str, list[np.ndarray]] = {}
    for i, clip in enumerate(tqdm(clips, desc="encoding", disable=not show, leave=False)):
        rows = slice(clip.start, clip.start + clip.length)
        x_a = torch.from_numpy(np.asarray(audio[rows], np.float32))[None]  # (1, T, 512)
        x_v = torch.from_numpy(np.asarray(visual[rows], np.float32))[None]  # (1, T, 2048)
        latents = encode_either(model, x_a, x_v)
        for name in latents.group_names():
            value = getattr(latents, name)[0]
            means.setdefault(name, []).append((value if name == "w" else value.mean(0)).numpy())
            if frames is not None and name != "w":
                picked.setdefault(name, []).append(value[torch.as_tensor(frames[i])].numpy())
    return ({name: np.stack(v) for name, v in means.items()},
            {name: np.concatenate(v) for name, v in picked.items()})


def clip_means(model: MDVAE | DSAE, audio: np.ndarray, visual: np.ndarray,
               clips: list, *, show: bool = True) -> dict[str, np.ndarray]:
    """Per whole clip, each latent group's posterior mean (`encode_clips`): {group: (N, L)}."""
    return encode_clips(model, audio, visual, clips, show=show)[0]


@torch.no_grad()
def read_by_q_w(model: MDVAE | DSAE, x_a: Tensor, x_v: Tensor) -> dict[str, Tensor]:
    """What the head of q(w) reads, for clips x_a (B, T, 512), x_v (B, T, 2048): the whole
    summary vector {"input": (B, D)} (each stream's backward summary at the first frame, then
    each stream's features' time mean, as `posteriors.StaticPosterior` pools them) and each
    stream's part of it, {"voice", "face": (B, H + F)}: the summary beside the features' mean,
    through q(w)'s own face network where the MDVAE has one (`w_face_network`). A DSAE reads
    one stream, so its part is its whole input. How much of a clip's emotion q(w) can find
    in each stream, whatever it then takes from it. This project's layout only (the authors'
    reads both streams in one BiGRU)."""
    if model.config.authors_layout is not None:
        raise ValueError("read_by_q_w: the authors' layout reads both streams in one BiGRU; "
                         "there is no summary vector of each stream to read")
    if isinstance(model, DSAE):
        f = model.features_x(x_a if model.config.modality == "audio" else x_v)
        g = model.summary_x(f)
        part = torch.cat([g[:, 0], f.mean(1)], dim=-1)
        return {"input": part, "voice" if model.config.modality == "audio" else "face": part}
    f_a = model.features_x_a(x_a)
    g_a = model.summary_x_a(f_a)
    f_v, g_v = model._face_for_w(x_v)
    return {"input": torch.cat([g_a[:, 0], g_v[:, 0], f_a.mean(1), f_v.mean(1)], dim=-1),
            "voice": torch.cat([g_a[:, 0], f_a.mean(1)], dim=-1),
            "face": torch.cat([g_v[:, 0], f_v.mean(1)], dim=-1)}


def feature_means(audio: np.ndarray, visual: np.ndarray, clips: list) -> dict[str, np.ndarray]:
    """Per clip, the time average of the stage-1 features stage 2 is given:
    {"audio": (N, 512), "visual": (N, 2048)} float32."""
    def means(stream):
        return np.stack([np.asarray(stream[c.start:c.start + c.length], np.float32).mean(0)
                         for c in clips])
    return {"audio": means(audio), "visual": means(visual)}


def feature_stats(audio: np.ndarray, visual: np.ndarray, clips: list) -> dict[str, np.ndarray]:
    """Per clip, three summaries over time of each stream's stage-1 features, side by side:
    the mean, the standard deviation and the mean absolute change from frame to frame
    ({"audio": (N, 3 * 512), "visual": (N, 3 * 2048)} float32). The mean alone mixes a clip's
    emotion with its speaker; how much and how fast the features move within the clip does
    not, and a sequence encoder can see it."""
    def stats(stream):
        rows = []
        for c in clips:
            x = np.asarray(stream[c.start:c.start + c.length], np.float32)
            change = np.abs(np.diff(x, axis=0)).mean(0) if len(x) > 1 else np.zeros(x.shape[1])
            rows.append(np.concatenate([x.mean(0), x.std(0), change]))
        return np.stack(rows).astype(np.float32)
    return {"audio": stats(audio), "visual": stats(visual)}


def feature_stats_probes(
    train: Mapping[str, np.ndarray], train_clips: list, held: Mapping[str, np.ndarray],
    held_clips: list, *, cs: tuple[float, ...] = (0.003, 0.03, 0.3), folds: int = 3,
) -> dict[str, dict[str, Any]]:
    """How much of the clips' emotion a linear read-out of each stream's stage-1 features
    finds (`feature_stats`, or any per-clip arrays) and of both streams together: a
    reference for the emotion read from w (not a bound: w is a learnt function of the whole
    sequence), and the room the voice leaves above the face. Per stream name (and "both"):
    the regularisation C chosen among `cs` by cross-validation over the training clips,
    grouped by speaker (never the held-out ones), and, on the held-out clips, the accuracy
    over all ("all") and per intensity level, with each clip's reading right or not
    ("correct", in clip order)."""
    from sklearn.model_selection import GroupKFold

    train = {**train, "both": np.concatenate([train[k] for k in train], 1)}
    held = {**held, "both": np.concatenate([held[k] for k in held], 1)}
    y = np.asarray([c.emotion for c in train_clips])
    groups = np.asarray([c.speaker for c in train_clips])
    truth = np.asarray([c.emotion for c in held_clips])
    levels = np.asarray([str(c.level) for c in held_clips])
    n_folds = min(folds, len(set(groups)))
    splits = ([] if n_folds < 2 else  # one training speaker: no choice, the middle C
              list(GroupKFold(n_splits=n_folds).split(train["both"], y, groups)))
    out = {}

    def cv_accuracy(x: np.ndarray, c: float) -> float:
        return float(np.mean([(fit_probe(x[a], y[a], c=c).predict(x[b]) == y[b]).mean()
                              for a, b in splits]))

    for name, x in train.items():
        c = (max(cs, key=lambda c: cv_accuracy(x, c)) if splits and len(cs) > 1
             else cs[len(cs) // 2])
        correct = fit_probe(x, y, c=c).predict(held[name]) == truth
        entry = {"c": float(c), "all": float(correct.mean()),
                 "correct": correct.astype(int).tolist()}
        entry |= {level: float(correct[levels == level].mean()) for level in sorted(set(levels))}
        out[name] = entry
    if "visual" in out:  # the room the voice leaves above the face, clip by clip
        d = np.asarray(out["both"]["correct"], float) - np.asarray(out["visual"]["correct"], float)
        out["both"]["over_visual"] = paired_difference(d, [c.speaker for c in held_clips])
    return out


def labelled(clips: list) -> list:
    """The clips that carry an emotion label."""
    return [c for c in clips if c.emotion]


@dataclass
class Measured:
    groups: list[GroupDiagnostics]  # without probes
    streams: list[StreamDiagnostics]
    means: dict[str, np.ndarray]  # group -> clip means (N, L): w itself, the z's over time
    frames: dict[str, np.ndarray]  # dynamical group -> posterior means per frame (N, T, L)
    # the readers' readings of the reconstruction ("reconstruction") and of the reconstruction
    # with each group alone swapped (by group name), the streams' merged; {} without readers
    readings: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def measure(
    model: MDVAE | DSAE, x_a: Tensor, x_v: Tensor, *, partner: np.ndarray,
    read: Mapping[str, Callable[[Tensor], dict[str, Any]]] | None = None,
) -> Measured:
    """Diagnostics on N clips of equal length, x_a (N, T, Da), x_v (N, T, Dv).

    `partner[i]` is the clip whose latents replace clip i's in the swap measurement
    (another speaker's, ideally). `read` {stream: reader}: a reader, given the decoded
    means of its stream (N, T, D), returns {reading: values} (a frame read-out's
    predictions), kept in `Measured.readings` (readers of streams the model lacks are
    unused).
    """
    model.eval()
    latents, posterior = _infer(model, x_a, x_v)
    prior = model.priors(latents)
    decoded = _decode(model, latents)
    decoders = _decoders(model)
    inputs = _inputs(model, x_a, x_v)
    n_frames = x_a.shape[1]
    other = type(latents)(**{g: getattr(latents, g)[partner] for g in latents.group_names()})
    readers = {s: r for s, r in (read or {}).items() if s in decoded}

    def read_all(outputs: dict[str, Tensor]) -> dict[str, Any]:
        return {k: v for s, r in readers.items() for k, v in r(outputs[s]).items()}

    readings = {"reconstruction": read_all(decoded)} if readers else {}

    groups, means, frames = [], {}, {}
    for name in latents.group_names():
        value = getattr(latents, name)  # (N, L) or (N, T, L)
        q, p = getattr(posterior, name), getattr(prior, name)
        if name == "w":
            kl_first, kl_later, share = float(q.kl_standard_normal().mean()), 0.0, []
            means[name] = value.numpy()
        else:
            kl = kl_divergence(q, p)  # (N, T)
            kl_first = float(kl[:, 0].mean())
            kl_later = float(kl[:, 1:].mean()) if n_frames > 1 else 0.0
            share = between_clip_share(value).tolist()
            means[name] = value.mean(1).numpy()
            frames[name] = value.numpy()
        swapped = _decode(model, latents.swap(other, name))
        if readers:
            readings[name] = read_all(swapped)
        moves = {}
        for stream, mean in decoded.items():
            precision = torch.exp(-decoders[stream].logvar.clamp(min=decoders[stream].logvar_min))
            moved = 0.5 * ((swapped[stream] - mean).square() * precision).sum(-1)  # (N, T)
            moves[stream] = float(moved.mean())
        groups.append(GroupDiagnostics(name, int(value.shape[-1]), kl_first, kl_later,
                                       [round(s, 4) for s in share], moves))

    streams = []
    for stream, mean in decoded.items():
        decoder = decoders[stream]
        rec = float(decoder.negative_log_likelihood(inputs[stream], mean).mean()) / n_frames
        logvar = decoder.logvar.clamp(min=decoder.logvar_min)
        residual = (inputs[stream] - mean).square().reshape(-1, mean.shape[-1]).mean(0)
        streams.append(StreamDiagnostics(
            stream, rec, float(logvar.median()), float(logvar.min()),
            float(torch.log(residual.clamp_min(1e-12)).median()),
        ))
    return Measured(groups, streams, means, frames, readings)


def fit_probe(train_x: np.ndarray, train_y: list, *, c: float = 1.0):
    """A standardised multinomial logistic regression fitted on (train_x, train_y) (an
    sklearn pipeline: `predict` gives labels); None when the labels hold fewer than two
    classes."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(set(np.asarray(train_y).tolist())) < 2:
        return None
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
    return probe.fit(train_x, np.asarray(train_y))


def linear_probe(train_x: np.ndarray, train_y: list, test_x: np.ndarray, test_y: list,
                 *, c: float = 1.0) -> float:
    """Accuracy on (test_x, test_y) of a standardised multinomial logistic regression fitted
    on (train_x, train_y); NaN when the training labels hold fewer than two classes."""
    probe = fit_probe(train_x, train_y, c=c)
    if probe is None or len(test_y) == 0:
        return float("nan")
    return float((probe.predict(test_x) == np.asarray(test_y)).mean())


def halves_by_speaker(speakers: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Indices of alternate clips of each speaker: (fit, score), for within-speaker probes."""
    fit, score = [], []
    seen: dict[str, int] = {}
    for i, s in enumerate(speakers):
        (fit if seen.get(s, 0) % 2 == 0 else score).append(i)
        seen[s] = seen.get(s, 0) + 1
    return np.array(fit, int), np.array(score, int)


def partners(speakers: list[str]) -> np.ndarray:
    """For each clip, the source of its swapped latents: the clip half-way round the list,
    or the first after it of another speaker (with one speaker only, that clip itself)."""
    n = len(speakers)
    out = (np.arange(n) + n // 2) % n
    for i in range(n):
        for k in range(n):
            j = (i + n // 2 + k) % n
            if speakers[j] != speakers[i]:
                out[i] = j
                break
    return out


def probe_groups(
    train_means: dict[str, np.ndarray], train_emotions: list[str],
    held_means: dict[str, np.ndarray], held_emotions: list[str], held_speakers: list[str],
) -> dict[str, dict[str, float]]:
    """{group: {"emotion": acc, "speaker": acc}}, plus an "all" entry with the groups
    concatenated. Emotion: fitted on the training clips, scored on the held-out ones;
    speaker: within the held-out speakers (`halves_by_speaker`)."""
    names = list(train_means)
    train_means = {**train_means, "all": np.concatenate([train_means[g] for g in names], 1)}
    held_means = {**held_means, "all": np.concatenate([held_means[g] for g in names], 1)}
    fit, score = halves_by_speaker(held_speakers)
    spk = np.asarray(held_speakers)
    out = {}
    for g in train_means:
        out[g] = {
            "emotion": linear_probe(train_means[g], train_emotions, held_means[g], held_emotions),
            "speaker": linear_probe(held_means[g][fit], spk[fit], held_means[g][score],
                                    spk[score]),
        }
    return out


# ---- which stream the emotion in w comes from ----------------------------------------------


def mixed_partners(speakers: list[str], emotions: list[str], levels: list, *,
                   same_emotion: bool = False) -> np.ndarray:
    """For each clip, the first other clip after it (cyclically) of the same intensity level
    whose voice `emotion_sources` gives it: of the same speaker showing another emotion, or
    (`same_emotion`) of another speaker showing the same emotion; -1 where there is none."""
    n = len(speakers)
    out = np.full(n, -1)
    for i in range(n):
        for k in range(1, n):
            j = (i + k) % n
            if (levels[j] == levels[i] and (emotions[j] == emotions[i]) == same_emotion
                    and (speakers[j] == speakers[i]) != same_emotion):
                out[i] = j
                break
    return out


def emotion_sources(
    encode_w: Callable[[Tensor, Tensor], np.ndarray], probe, w: np.ndarray, x_a: Tensor,
    x_v: Tensor, emotions: list[str], levels: list, speakers: list[str], *, mix: bool = True,
) -> dict[str, dict[str, float]]:
    """Where the emotion read from w comes from, per intensity level of N clips of equal
    length x_a (N, T, Da), x_v (N, T, Dv) and over all ("all").

    `w` (N, Lw) is w's posterior means for the clips' own streams; `encode_w(x_a, x_v)`
    gives them for other pairings; `probe` (`fit_probe` on training clips' w) reads an
    emotion from them. Per level: `clips` and `accuracy`, the
    probe's accuracy with each clip's own streams (`correct`: per clip, 1 where it reads
    the clip's emotion); and with `mix` (a model that reads both
    streams), w encoded from each clip's face with the voice of another clip of the same
    speaker and level showing another emotion (`mixed_partners`): `pairs`, and the shares
    of those read as the face's emotion (`face`), the voice's (`voice`) or neither
    (`neither`); and, the control, with the voice of another speaker's clip of the same
    level and emotion: `same_pairs` and `same_accuracy` (a benchmark may hold one clip per
    speaker, emotion and level, as the synthetic one does). A w that reads the face alone
    scores face 1 wherever the probe reads the clip itself, and `same_accuracy` equal to
    `accuracy`; one that reads the voice alone, voice 1. A w that holds the voice's
    emotion keeps its accuracy with a voice of the same emotion and loses it with another."""
    emotions_a = np.asarray(emotions)
    levels_a = np.asarray([str(v) for v in levels])
    own = probe.predict(w) == emotions_a
    none = np.full(len(own), -1)

    def read_with(voice: np.ndarray) -> np.ndarray:
        paired = np.flatnonzero(voice >= 0)
        out = np.empty(len(own), dtype=object)
        if len(paired):
            out[paired] = probe.predict(encode_w(x_a[torch.as_tensor(voice[paired])],
                                                 x_v[torch.as_tensor(paired)]))
        return out

    voice = mixed_partners(speakers, emotions, list(levels_a)) if mix else none
    alike = (mixed_partners(speakers, emotions, list(levels_a), same_emotion=True) if mix
             else none)
    mixed, same = read_with(voice), read_with(alike)
    out = {}
    for level in sorted(set(levels_a)) + ["all"]:
        rows = np.arange(len(own)) if level == "all" else np.flatnonzero(levels_a == level)
        # each clip's own reading, right or not (in clip order): two models measured on the
        # same clips give a paired margin (`train.compare_diagnostics`)
        entry = {"clips": int(len(rows)), "accuracy": float(own[rows].mean()),
                 "correct": own[rows].astype(int).tolist()}
        if mix:
            kept = rows[alike[rows] >= 0]
            entry["same_pairs"] = int(len(kept))
            if len(kept):
                entry["same_accuracy"] = float((same[kept] == emotions_a[kept]).mean())
            rows = rows[voice[rows] >= 0]
            entry["pairs"] = int(len(rows))
            if len(rows):
                face = mixed[rows] == emotions_a[rows]
                heard = mixed[rows] == emotions_a[voice[rows]]
                entry |= {"face": float(face.mean()), "voice": float(heard.mean()),
                          "neither": float((~face & ~heard).mean())}
        out[level] = entry
    return out


def voice_sources(
    decode_voice: Callable[[Tensor, Tensor], Tensor],
    read_speaker: Callable[[Tensor], np.ndarray], x_a: Tensor, x_v: Tensor,
    speakers: list, rng: np.random.Generator, *, mix: bool = True,
) -> dict[str, float]:
    """Whose speaker the voice decoded from N clips of equal length x_a (N, T, Da), x_v
    (N, T, Dv) is. `decode_voice(x_a, x_v)` gives the decoded audio features (N, T, Da),
    `read_speaker(features)` a speaker head's mean log-probabilities (N, C) for audio
    features (N, T, Da), e.g. the evaluation's audio judge on the audio VQ-VAE's output.

    Each clip whose speaker has another clip is paired with a clip of another such speaker
    (its face, with `mix`), a clean clip of its own speaker and a clean clip of the
    partner's (neither the clip nor the partner itself); a decoding counts where it is
    closer (`judges.closer_to_b`) to the clean clip of its audio's speaker than to the
    partner speaker's. Returns `pairs`, and the shares (each with its standard error,
    `<key>_se`) for the clean features themselves (`codec`, the judge's ceiling), the voice
    decoded from the clip's own streams (`own`) and, with `mix`, from its audio and the
    partner's face (`mixed`; 1 - mixed is the share that sounds like the face's speaker)."""
    who = np.asarray([str(s) for s in speakers])
    index = np.arange(len(who))
    names, counts = np.unique(who, return_counts=True)
    paired = np.isin(who, names[counts > 1])  # clips whose speaker has another clip
    rows, partner, own_ref, partner_ref = [], [], [], []
    for i in index[paired]:
        others = np.flatnonzero(paired & (who != who[i]))
        if not len(others):
            continue
        j = int(rng.choice(others))
        mates = np.flatnonzero((who == who[i]) & (index != i))
        theirs = np.flatnonzero((who == who[j]) & (index != j))
        rows.append(i)
        partner.append(j)
        own_ref.append(int(rng.choice(mates)))
        partner_ref.append(int(rng.choice(theirs)))
    out: dict[str, float] = {"pairs": len(rows)}
    if not rows:
        return out
    rows_t, partner_t = torch.as_tensor(rows), torch.as_tensor(partner)
    clean = read_speaker(x_a)

    def share(key: str, logp: np.ndarray) -> None:
        right = (closer_to_b(logp, clean[partner_ref], clean[own_ref]) > 0).astype(float)
        out[key] = float(right.mean())
        out[f"{key}_se"] = float(right.std() / np.sqrt(len(right)))

    share("codec", clean[rows])
    share("own", read_speaker(decode_voice(x_a[rows_t], x_v[rows_t])))
    if mix:
        share("mixed", read_speaker(decode_voice(x_a[rows_t], x_v[partner_t])))
    return out


def format_voice_sources(sources: Mapping[str, Mapping[str, float]]) -> list[str]:
    """`voice_sources` per set of clips as table lines."""
    mix = any("mixed" in row for row in sources.values())
    lines = ["whose speaker the decoded voice is (the audio judge's speaker head; shares of "
             "the pairs closer to a clean clip of the audio's speaker than to one of another's)",
             "  codec: the clean features themselves; own: decoded from the clip's own streams"
             + ("; mixed: from its audio and another speaker's face (1 - mixed sounds like "
                "the face's speaker)" if mix else "")]
    head = f"{'clips':>18} {'pairs':>6} {'codec':>14} {'own':>14}" + (
        f" {'mixed':>14}" if mix else "")
    lines += [head, "-" * len(head)]
    for name, row in sources.items():
        cells = [f"{row[k]:.3f} ± {row[k + '_se']:.3f}" if k in row else "-"
                 for k in ("codec", "own", "mixed")[:3 if mix else 2]]
        lines.append(f"{name:>18} {row['pairs']:>6}" + "".join(f" {c:>14}" for c in cells))
    return lines


def format_emotion_sources(sources: Mapping[str, Mapping[str, float]]) -> list[str]:
    """`emotion_sources` as table lines."""
    mix = any("pairs" in row for row in sources.values())
    lines = ["emotion read from w (the w probe above) per intensity level (level 1 holds the "
             "neutral clips too)"]
    if mix:
        lines.append("  same emotion: accuracy with the voice of another speaker's clip of the "
                     "same level and emotion (n clips);")
        lines.append("  mixed: w encoded from the clip's face and the voice of another clip of "
                     "the same speaker and level showing another emotion;")
        lines.append("  shares read as the face's emotion / the voice's / neither")
    head = f"{'level':>6} {'clips':>6} {'accuracy':>9}"
    if mix:
        head += f" {'same emotion':>16} {'pairs':>6} {'mixed: face / voice / neither':>30}"
    lines += [head, "-" * len(head)]
    for level, row in sources.items():
        line = f"{level:>6} {row['clips']:>6} {row['accuracy']:>9.3f}"
        if mix:
            same = (f"{row['same_accuracy']:.3f} ({row['same_pairs']})"
                    if row.get("same_pairs") else "-")
            cell = (f"{row['face']:.3f} / {row['voice']:.3f} / {row['neither']:.3f}"
                    if row.get("pairs") else "-")
            line += f" {same:>16} {row.get('pairs', 0):>6} {cell:>30}"
        lines.append(line)
    return lines


# ---- per-frame factors --------------------------------------------------------------------


@dataclass(frozen=True)
class FrameReading:
    """What a linear read-out reads from one frame's stage-1 features, from one store factor."""

    name: str
    stream: str  # whose features show it: "visual" or "audio"
    kind: str  # "class" or "value" (..., V)
    source: str  # the store factor
    # a value read from one frame is averaged over this many neighbouring frames of its clip
    # (centred; fewer at the clip's ends) before it is scored, against the read-out's own
    # noise; only over the frames that the class reading `over` reads as 1, where it has one
    smooth: int = 1
    over: str = ""


@dataclass(frozen=True)
class FrameFactor:
    """A per-frame factor as the judges define and score it (`judges.clip_labels`,
    `disentanglement.score_factor`): a reading, seen through a view of each clip."""

    name: str
    reads: str  # its FRAME_READINGS entry
    # values: the smallest |A - B| for an element to count in a swap (the judges' MARGINS)
    margin: tuple[float, ...] = ()
    # "frame": the reading itself; "contour": minus the clip's median over its voiced
    # frames (those whose truth is finite); "level": that median, one value per clip;
    # "motion": minus the clip's mean over those frames (`judges.motion`)
    view: str = "frame"

    @property
    def stream(self) -> str:
        return FRAME_READINGS[self.reads].stream

    @property
    def kind(self) -> str:
        return FRAME_READINGS[self.reads].kind


# The per-frame readings of the synthetic benchmark, in the judges' terms: mouth, a class of
# `judges.MOUTH_CLASSES`; blink, closed (1) or open (0); head_pose, dx, dy, roll (3 values);
# f0, semitones re 100 Hz (1 value, NaN on unvoiced frames).
FRAME_READINGS: dict[str, FrameReading] = {r.name: r for r in (
    FrameReading("mouth", "visual", "class", "viseme"),
    FrameReading("blink", "visual", "class", "blink"),
    FrameReading("head_pose", "visual", "value", "head_pose"),
    FrameReading("f0", "audio", "value", "f0", smooth=5, over="voicing"),
    FrameReading("voicing", "audio", "class", "f0"),
)}
# Classes are scored by balanced accuracy (blink is closed on a few percent of frames),
# values by R^2, averaged over the values. f0 as the judges score it: its contour (the
# intonation, z_a's) and its level (the speaker's and the emotion's pitch, w's); voicing,
# voiced (1) or not, which the mouth's sound sets. One frame's f0 read-out errs by about
# the contour's own spread (R^2 of the contour 0.25 on the clips' own stage-1 features);
# averaged over the frames read as voiced among 5 (200 ms at 25 fps; the true contour,
# averaged so, keeps R^2 0.975) it reads the contour at 0.53. Averaged over unvoiced frames
# too, it would not (0.28): the read-out's f0 on an unvoiced frame means nothing.
# The head as the judges trust it: its motion, the pose minus the clip's mean pose. A new
# face's rest pose is read only to about the speakers' own spread of it, its motion well.
FRAME_FACTORS: tuple[FrameFactor, ...] = (
    FrameFactor("mouth", "mouth"),
    FrameFactor("blink", "blink"),
    FrameFactor("head_pose", "head_pose", MARGINS["head_pose"]),
    FrameFactor("head_motion", "head_pose", MARGINS["head_pose"], "motion"),
    FrameFactor("f0_contour", "f0", MARGINS["f0"], "contour"),
    FrameFactor("f0_level", "f0", MARGINS["f0"], "level"),
    FrameFactor("voicing", "voicing"),
)


def frame_factors_for(streams: list[str]) -> list[FrameFactor]:
    """The factors measured on a model that observes `streams`: those of its streams, and
    the visual ones on any model (an audio model's latents are probed for them: the mouth
    is heard too). The face shows no pitch, so f0 needs the audio stream."""
    return [f for f in FRAME_FACTORS if f.stream in streams or f.stream == "visual"]


def frame_targets(factors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """FRAME_READINGS from a store's factor arrays, indexed alike (any leading shape S):
    mouth (S), blink (S), head_pose (S, 3), f0 (S, 1). Only those whose store factors are
    there."""
    convert = {
        "mouth": lambda viseme: MOUTH_OF_VISEME[np.asarray(viseme, np.int64)],
        "blink": lambda blink: (np.asarray(blink) > BLINK_CLOSED).astype(np.int64),
        "head_pose": lambda pose: np.asarray(pose, np.float64),
        "f0": lambda f0_hz: f0_semitones(f0_hz)[..., None],
        "voicing": lambda f0_hz: (np.asarray(f0_hz) > 0).astype(np.int64),
    }
    return {name: convert[name](factors[r.source]) for name, r in FRAME_READINGS.items()
            if r.source in factors}


def frame_picks(clips: list, per_clip: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Per clip, `per_clip` frame offsets drawn without replacement (all the frames of a
    shorter clip), sorted."""
    return [np.sort(rng.choice(c.length, min(per_clip, c.length), replace=False))
            for c in clips]


@dataclass
class FrameReadout:
    """Linear read-outs of FRAME_READINGS from per-frame features x (..., D), each on the
    training features' leading principal components, standardised."""

    mean: np.ndarray  # (D,)
    basis: np.ndarray  # (D, K): principal directions over their standard deviations
    heads: dict[str, Any]  # target -> fitted sklearn estimator (its kind's)
    # value target -> (frames averaged, the class target whose 1s count, or "": all frames)
    smooth: dict[str, tuple[int, str]] = field(default_factory=dict)

    def predict(self, x: Tensor | np.ndarray) -> dict[str, np.ndarray]:
        """{target: classes (...) or values (..., V)} for features x (..., D); for clips,
        x (N, T, D), a value target in `smooth` is averaged over that many frames of its
        clip (`moving_average`), over those its class target reads as 1 when it has that
        head (a frame with none of them around keeps its own reading)."""
        x = x.numpy() if isinstance(x, Tensor) else np.asarray(x)
        lead = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1]).astype(np.float32, copy=False)
        z = flat @ self.basis - self.mean @ self.basis  # (M, K); x - mean would copy x
        out = {}
        for name, head in self.heads.items():
            pred = head.predict(z)  # a ridge fitted on one value per frame returns (M,)
            value = np.issubdtype(pred.dtype, np.floating)
            out[name] = pred.reshape(*lead, -1) if value else pred.reshape(lead)
        if len(lead) < 2:
            return out
        for name, (window, over) in self.smooth.items():
            if window < 2 or name not in out:
                continue
            counts = (out[over] == 1).astype(np.float64)[..., None] if over in out else None
            if counts is None:
                out[name] = moving_average(out[name], window, axis=len(lead) - 1)
                continue
            total = moving_average(np.where(counts > 0, out[name], 0.0), window,
                                   axis=len(lead) - 1)
            share = moving_average(counts, window, axis=len(lead) - 1)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[name] = np.where(share > 0, total / share, out[name])
        return out


def moving_average(x: np.ndarray, window: int, *, axis: int) -> np.ndarray:
    """x averaged over `window` neighbours along `axis`, centred (an even window reaches one
    further back than ahead); at the ends over those that exist."""
    x = np.moveaxis(np.asarray(x, np.float64), axis, 0)
    n = len(x)
    total = np.concatenate([np.zeros_like(x[:1]), np.cumsum(x, 0)])
    lo = np.clip(np.arange(n) - window // 2, 0, n)
    hi = np.clip(np.arange(n) + (window - 1) // 2 + 1, 0, n)
    shape = (n,) + (1,) * (x.ndim - 1)
    out = (total[hi] - total[lo]) / (hi - lo).reshape(shape)
    return np.moveaxis(out, 0, axis)


def fit_readout(x: np.ndarray, targets: Mapping[str, np.ndarray], *,
                components: int | None = 512, c: float = 1.0, alpha: float = 1.0,
                smooth: Mapping[str, tuple[int, str]] | None = None) -> FrameReadout:
    """Read-outs fitted on training frames x (M, D) with targets {name: classes (M,),
    integers, or values (M, V), floats}: a multinomial logistic regression (inverse penalty
    `c`, classes weighted to balance) per class target, a ridge regression (penalty
    `alpha`, on the frames whose values are all finite: f0 on voiced frames) per value
    target, on the `components` leading principal components of x (all of them when None;
    none whose variance is below 1e-6 of the largest), each scaled to unit variance.

    Standardised principal components rather than standardised features: on the stage-1
    visual features (2048 correlated dimensions, about 500 of them above that floor) the
    logistic regression then converges in tens of iterations instead of thousands (seconds
    instead of minutes on one core). A class target with a single class among the training
    frames gets no head, nor does a value target with fewer than two finite frames, nor
    any target when x never varies. `smooth` {value target: (frames, class target)}: how
    `predict` averages a clip's readings (default each FRAME_READINGS' own)."""
    from sklearn.linear_model import LogisticRegression, Ridge

    x = np.asarray(x, np.float32)
    mean = x.mean(0)
    centred = x - mean
    variance, vectors = np.linalg.eigh((centred.T @ centred).astype(np.float64) / len(x))
    order = np.argsort(variance)[::-1][:components]
    order = order[variance[order] > 1e-6 * max(variance.max(), 1e-30)]
    basis = (vectors[:, order] / np.sqrt(variance[order])).astype(np.float32)
    z = centred @ basis  # (M, K)
    heads = {}
    for name, y in targets.items():
        if not len(order):  # features that never vary (a collapsed group) read nothing
            continue
        if np.issubdtype(y.dtype, np.floating):
            finite = np.isfinite(y).reshape(len(y), -1).all(1)
            if finite.sum() >= 2:
                heads[name] = Ridge(alpha=alpha).fit(z[finite], y[finite])
        elif len(np.unique(y)) >= 2:
            heads[name] = LogisticRegression(C=c, max_iter=1000,
                                             class_weight="balanced").fit(z, y)
    if smooth is None:
        smooth = {k: (r.smooth, r.over) for k, r in FRAME_READINGS.items() if r.smooth > 1}
    return FrameReadout(mean, basis, heads, {k: w for k, w in smooth.items() if k in heads})


def clip_view(view: str, x: np.ndarray, voiced: np.ndarray) -> np.ndarray:
    """Values x (N, T, V) of N clips as a factor's `view` sees them, given the frames that
    count, `voiced` (N, T): "frame", x itself; "contour", x minus each clip's median over
    its voiced frames, NaN on the others (N, T, V); "level", that median (N, V). A clip with
    fewer than MIN_VOICED_FRAMES voiced frames has neither (NaN), as for the judges.
    "motion", x minus each clip's mean over the frames that count, NaN on the others
    (N, T, V): the head's motion about its rest pose (`judges.motion`)."""
    if view == "frame":
        return x
    x = np.where(voiced[..., None], np.asarray(x, np.float64), np.nan)
    if view == "motion":
        with warnings.catch_warnings():  # a clip without such frames has a NaN mean
            warnings.simplefilter("ignore", RuntimeWarning)
            return x - np.nanmean(x, axis=1, keepdims=True)
    with warnings.catch_warnings():  # a clip without voiced frames has a NaN median
        warnings.simplefilter("ignore", RuntimeWarning)
        level = np.nanmedian(x, axis=1)  # (N, V)
    level[voiced.sum(1) < MIN_VOICED_FRAMES] = np.nan
    return level if view == "level" else x - level[:, None]


def factor_targets(readings: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each FRAME_FACTORS' view (`clip_view`) of one clip's readings {reading: (T, ...)},
    frame by frame (T, ...): the reading itself, its contour (NaN on unvoiced frames) or its
    level repeated over the clip's frames. What a probe of the latents is fitted on: a group
    is to hold the factor (z_a the contour, w the level), not the reading."""
    out = {}
    for factor in FRAME_FACTORS:
        if factor.reads not in readings:
            continue
        x = np.asarray(readings[factor.reads])
        if factor.view == "frame":
            out[factor.name] = x
            continue
        view = clip_view(factor.view, x[None], np.isfinite(x).all(-1)[None])[0]
        out[factor.name] = view if factor.view != "level" else np.repeat(view[None], len(x), 0)
    return out


def frame_score(factor: FrameFactor, pred: np.ndarray, truth: np.ndarray) -> float:
    """Readings of N clips against their truth, alike in shape (N, T, ...): balanced
    accuracy (the mean recall over the classes present in the truth) for a class factor;
    for a value factor, R^2 of each value of its view (`clip_view`, on the frames whose
    truth is finite) over all frames (clips, for a level), averaged over the values; NaN
    with fewer than two to score."""
    from sklearn.metrics import balanced_accuracy_score, r2_score

    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"readings {pred.shape} and truth {truth.shape} differ in shape")
    if factor.kind == "class":
        with warnings.catch_warnings():  # a reading of a class the truth lacks is just wrong
            warnings.simplefilter("ignore")
            return float(balanced_accuracy_score(truth.reshape(-1), pred.reshape(-1)))
    voiced = np.isfinite(truth).all(-1)
    v = truth.shape[-1]
    pred = clip_view(factor.view, pred, voiced).reshape(-1, v)
    truth = clip_view(factor.view, truth, voiced).reshape(-1, v)
    ok = np.isfinite(truth).all(1) & np.isfinite(pred).all(1)
    if ok.sum() < 2:
        return float("nan")
    return float(r2_score(truth[ok], pred[ok]))


def frame_follow(factor: FrameFactor, pred: np.ndarray, truth_a: np.ndarray,
                 truth_b: np.ndarray) -> FollowStay:
    """Follow / stay of readings of N clips A (N, T, ...) decoded with a group taken from
    their B: a class follows B when read as B's, stays when read as A's, on frames where A's
    and B's differ; a value element of the factor's view (`clip_view`, on the frames voiced
    in both A and B, as the judges score f0) follows B when it is closer to B's than to
    A's, on elements where they differ by the factor's margin."""
    if factor.kind == "class":
        return follow_stay_categorical(pred, truth_a, truth_b)
    voiced = np.isfinite(truth_a).all(-1) & np.isfinite(truth_b).all(-1)
    pred, truth_a, truth_b = (clip_view(factor.view, x, voiced)
                              for x in (pred, truth_a, truth_b))
    return follow_stay_continuous(pred, truth_a, truth_b, factor.margin)


def probe_frames(
    train_frames: Mapping[str, np.ndarray], train_targets: Mapping[str, np.ndarray],
    held_frames: Mapping[str, np.ndarray], held_targets: Mapping[str, np.ndarray],
) -> dict[str, dict[str, float]]:
    """{factor: {group: score}}: a read-out (`fit_readout`, all components) of each factor
    from each group's per-frame posterior means, fitted on training frames
    ({group: (M, L)}, {factor: (M, ...)}, `factor_targets`), read on N held-out clips
    ({group: (N, T, L)}) and scored (`frame_score`) against their readings
    ({reading: (N, T, ...)})."""
    out: dict[str, dict[str, float]] = {}
    for group, x in train_frames.items():
        pred = fit_readout(x, train_targets, components=None).predict(held_frames[group])
        for factor in FRAME_FACTORS:
            if factor.name in pred:
                out.setdefault(factor.name, {})[group] = frame_score(
                    factor, pred[factor.name], held_targets[factor.reads])
    return out


def frame_factor_scores(
    targets: Mapping[str, np.ndarray], partner: np.ndarray,
    readings: Mapping[str, Mapping[str, np.ndarray]],
    latents: Mapping[str, Mapping[str, float]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per factor whose reading N held-out clips' `targets` {reading: (N, T, ...)} hold,
    from read-outs' `readings` {source: {reading: (N, T, ...)}}: "input" and
    "reconstruction", its score on the readings of those sources (`frame_score`); "swaps",
    for every other source (a group swapped alone, partner[i] the source B of clip i), the
    follow / stay shares against the partner's targets (`frame_follow`); "latents", the
    probes of `probe_frames`. Each row names the factor's "kind" and "stream"."""
    out: dict[str, dict[str, Any]] = {}
    for factor in FRAME_FACTORS:
        if factor.reads not in targets:
            continue
        name, reads, truth = factor.name, factor.reads, targets[factor.reads]
        row: dict[str, Any] = {"kind": factor.kind, "stream": factor.stream}
        for source in ("input", "reconstruction"):
            if reads in readings.get(source, {}):
                row[source] = frame_score(factor, readings[source][reads], truth)
        swaps = {g: frame_follow(factor, r[reads], truth, truth[partner]).to_dict()
                 for g, r in readings.items()
                 if g not in ("input", "reconstruction") and reads in r}
        if swaps:
            row["swaps"] = swaps
        if latents and name in latents:
            row["latents"] = dict(latents[name])
        if len(row) > 2:  # a factor nothing could read (one class in training) is left out
            out[name] = row
    return out


def format_frame_factors(frame_factors: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The per-frame factor scores as table lines (columns only for what was measured)."""
    rows = frame_factors.values()
    read = [k for k in ("input", "reconstruction") if any(k in r for r in rows)]
    swapped = list(dict.fromkeys(g for r in rows for g in r.get("swaps", {})))
    probed = list(dict.fromkeys(g for r in rows for g in r.get("latents", {})))
    unread: dict[str, list[str]] = {}
    for name, r in frame_factors.items():
        if not any(k in r for k in ("input", "reconstruction", "swaps")):
            unread.setdefault(r.get("stream", "visual"), []).append(name)
    nan = float("nan")
    lines = ["per-frame factors on the held-out frames (classes: balanced accuracy; values: "
             "R^2, head pose averaged over dx, dy, roll;",
             "  head motion: the pose minus its clip's mean over the frames read;",
             "  f0 in semitones on voiced frames: contour, relative to the clip's median; "
             "level, that median, per clip;",
             "  its read-out averaged over the frames read as voiced among 5; voicing: "
             "voiced or not)"]
    if read:
        lines += ["  input / recon: a linear read-out (fitted on training frames) of the stage-1 "
                  "features of the factor's stream",
                  "    (visual; audio for f0 and voicing) of the clips themselves / of the model's "
                  "reconstructions",
                  "  swap g: shares of the frames (f0 level: clips) read as B's / as A's when g "
                  "alone comes from B (where they differ)"]
    for stream, names in unread.items():
        lines.append(f"  ({', '.join(names)}: the model has no {stream} stream, no read-out "
                     "of its reconstructions)")
    lines.append("  probe g: a linear probe of the factor from g's own per-frame posterior means "
                 "(w: the clip's, on each of its frames)")
    width = max([10, *(len(name) for name in frame_factors)])
    head = (f"{'factor':>{width}}" + "".join(f" {'recon' if k == 'reconstruction' else k:>6}"
                                        for k in read)
            + "".join(f" {'swap ' + g:>11}" for g in swapped)
            + "".join(f" {'probe ' + g:>10}" for g in probed))
    lines += [head, "-" * len(head)]
    for name, r in frame_factors.items():
        swaps = r.get("swaps", {})
        cells = [f"{swaps[g]['follow']:.2f}/{swaps[g]['stay']:.2f}" if g in swaps else "-"
                 for g in swapped]
        lines.append(f"{name:>{width}}" + "".join(f" {r.get(k, nan):>6.3f}" for k in read)
                     + "".join(f" {c:>11}" for c in cells)
                     + "".join(f" {r.get('latents', {}).get(g, nan):>10.3f}" for g in probed))
    return lines


@torch.no_grad()
def sampled_elbo(model: MDVAE | DSAE, x_a: Tensor, x_v: Tensor, *, window: int,
                 batch: int = 32, seed: int = 0) -> dict[str, float]:
    """The negative ELBO per frame and its terms, as stage-2 validation computes them (one
    posterior sample, every KL weight 1), on N clips x_a (N, T, Da), x_v (N, T, Dv) cut into
    consecutive `window`-frame windows (a clip's remainder is dropped), `batch` windows per
    forward pass; the mean over passes, weighted by their windows. Seeded: the same inputs
    give the same figure."""
    model.eval()
    n, t = x_a.shape[:2]
    if t < window:
        raise ValueError(f"clips of {t} frames are shorter than the {window}-frame window")
    cut = t // window * window
    a = x_a[:, :cut].reshape(-1, window, x_a.shape[-1])
    v = x_v[:, :cut].reshape(-1, window, x_v.shape[-1])
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        sums: dict[str, float] = {}
        for i in range(0, len(a), batch):
            inputs = _inputs(model, a[i:i + batch], v[i:i + batch])
            out = model(*inputs.values())
            for key, value in out.loss.as_dict().items():
                if key != "total":
                    sums[key] = sums.get(key, 0.0) + value * len(a[i:i + batch])
    finally:
        torch.random.set_rng_state(generator_state)
    return {key: total / len(a) for key, total in sums.items()}


def format_report(d: Diagnostics) -> str:
    """The diagnostics as a plain-text table."""
    stream_names = [s.name for s in d.streams]
    lines = [f"{d.model}: {d.clips} held-out clips, posterior means"]
    head = (f"{'group':>6} {'dim':>4} {'KL t=1':>8} {'KL t>1':>8} {'clip share (per dim)':>26} "
            + " ".join(f"{'moves ' + s:>13}" for s in stream_names)
            + f" {'emotion':>8} {'speaker':>8}")
    lines += [head, "-" * len(head)]
    for g in d.groups:
        share = " ".join(f"{s:.2f}" for s in g.clip_share) if g.clip_share else "-"
        lines.append(
            f"{g.name:>6} {g.dim:>4} {g.kl_first:>8.2f} {g.kl_later:>8.2f} {share:>26} "
            + " ".join(f"{g.moves[s]:>13.1f}" for s in stream_names)
            + f" {g.probes.get('emotion', float('nan')):>8.3f}"
            f" {g.probes.get('speaker', float('nan')):>8.3f}"
        )
    if d.combined:
        lines.append(f"{'all':>6} {'':>4} {'':>8} {'':>8} {'':>26} "
                     + " ".join(f"{'':>13}" for _ in stream_names)
                     + f" {d.combined['emotion']:>8.3f} {d.combined['speaker']:>8.3f}")
    lines.append("")
    lines.append(f"{'stream':>7} {'rec nats/frame':>15} {'logvar median':>14} {'min':>7} "
                 f"{'residual logvar median':>23}")
    for s in d.streams:
        lines.append(f"{s.name:>7} {s.rec:>15.1f} {s.logvar_median:>14.2f} {s.logvar_min:>7.2f} "
                     f"{s.residual_logvar_median:>23.2f}")
    if d.sampled_elbo:
        terms = ", ".join(f"{k} {v:.1f}" for k, v in d.sampled_elbo.items()
                          if k != "negative_elbo")
        lines.append("")
        lines.append(f"sampled -ELBO per frame on held-out windows (as stage-2 validation): "
                     f"{d.sampled_elbo['negative_elbo']:.1f} ({terms})")
    if d.feature_probes:
        lines.append("")
        lines.append("emotion probe on the stage-1 features' clip means (the training clips "
                     "above; the means alone understate what the features hold): "
                     + ", ".join(f"{k} {v:.3f}" for k, v in d.feature_probes.items()))
    if d.feature_stats_probes:
        levels = sorted(k for k in next(iter(d.feature_stats_probes.values()))
                        if k not in ("c", "all", "correct", "over_visual"))
        lines.append("")
        lines.append("emotion probe on the stage-1 features' clip mean, spread and change "
                     "(a reference for w; C chosen on the training speakers)")
        lines.append(f"{'features':>10} {'all':>6} " + " ".join(f"{'level ' + v:>8}"
                                                                for v in levels) + "      C")
        for name, row in d.feature_stats_probes.items():
            lines.append(f"{name:>10} {row['all']:6.3f} "
                         + " ".join(f"{row[v]:8.3f}" for v in levels) + f" {row['c']:6g}")
        room = d.feature_stats_probes.get("both", {}).get("over_visual")
        if room:
            lines.append(f"both minus visual (what the voice adds to the face, paired): "
                         f"{room['difference']:+.3f} ± {room['se']:.3f} over clips, "
                         f"± {room['se_speakers']:.3f} over {room['speakers']} speakers")
    if d.emotion_sources:
        lines.append("")
        lines += format_emotion_sources(d.emotion_sources)
    if d.voice_sources:
        lines.append("")
        lines += format_voice_sources(d.voice_sources)
    if d.frame_factors:
        lines.append("")
        lines += format_frame_factors(d.frame_factors)
    if d.pitch_heard:
        lines.append("")
        lines += format_pitch_heard(d.pitch_heard)
    return "\n".join(lines)


def format_pitch_heard(heard: Mapping[str, Mapping[str, Mapping[str, float]]]) -> list[str]:
    """The pitch heard in the decoded audio as table lines."""
    readings = [f for f in pitch.READINGS if any(f in row for row in heard.values())]
    lines = ["pitch heard in the decoded audio (harmonic comb on the audio VQ-VAE's output, "
             "mdvae.eval.pitch): shares of the pairs",
             "  whose decoding has B's / A's level (contour), among pairs whose levels differ by "
             f"{pitch.LEVEL_MARGIN:g} st or more (contours by {pitch.CONTOUR_MARGIN:g} st on "
             "average);",
             "  the contour read again as its shape (accent timing) and its size (a clip "
             f"constant), sizes {pitch.SIZE_MARGIN:g}x apart;",
             "  the f0 read-out's swap shares above can read the voice's timbre as its pitch: "
             "for where the pitch goes, trust these",
             f"{'source':>17}" + "".join(f" {f:>17}" for f in readings),
             "-" * (17 + 18 * len(readings))]
    for source, row in heard.items():
        cells = [f"{row[f]['follow']:.2f}/{row[f]['stay']:.2f} ({row[f]['n']:>3})"
                 if f in row and row[f]["n"] else "-" for f in readings]
        name = f"swap {source}" if source in ("w", "z_av", "z_a", "z_v", "z") else source
        lines.append(f"{name:>17}" + "".join(f" {c:>17}" for c in cells))
    return lines
