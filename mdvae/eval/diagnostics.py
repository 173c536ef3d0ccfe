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
log-variances against the residuals' own. Everything is measured, nothing is trained
but the probes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from mdvae.eval.experiments import encode_either
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
    # the objective as stage-2 validation computes it (one posterior sample, every KL weight
    # 1), per frame, on the held-out clips cut into windows: the ELBO terms and their sum
    sampled_elbo: dict[str, float] = field(default_factory=dict)

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
def clip_means(model: MDVAE | DSAE, audio: np.ndarray, visual: np.ndarray,
               clips: list, *, show: bool = True) -> dict[str, np.ndarray]:
    """Per whole clip (store rows), each latent group's posterior mean: w as it is, the
    dynamical groups (z_av, z_a, z_v; a DSAE's z) averaged over time. {group: (N, L)}."""
    out: dict[str, list[np.ndarray]] = {}
    for clip in tqdm(clips, desc="encoding", disable=not show, leave=False):
        rows = slice(clip.start, clip.start + clip.length)
        x_a = torch.from_numpy(np.asarray(audio[rows], np.float32))[None]  # (1, T, 512)
        x_v = torch.from_numpy(np.asarray(visual[rows], np.float32))[None]  # (1, T, 2048)
        latents = encode_either(model, x_a, x_v)
        for name in latents.group_names():
            value = getattr(latents, name)[0]
            out.setdefault(name, []).append((value if name == "w" else value.mean(0)).numpy())
    return {name: np.stack(values) for name, values in out.items()}


def feature_means(audio: np.ndarray, visual: np.ndarray, clips: list) -> dict[str, np.ndarray]:
    """Per clip, the time average of the stage-1 features stage 2 is given:
    {"audio": (N, 512), "visual": (N, 2048)} float32."""
    def means(stream):
        return np.stack([np.asarray(stream[c.start:c.start + c.length], np.float32).mean(0)
                         for c in clips])
    return {"audio": means(audio), "visual": means(visual)}


def labelled(clips: list) -> list:
    """The clips that carry an emotion label."""
    return [c for c in clips if c.emotion]


@torch.no_grad()
def measure(
    model: MDVAE | DSAE, x_a: Tensor, x_v: Tensor, *, partner: np.ndarray
) -> tuple[list[GroupDiagnostics], list[StreamDiagnostics], dict[str, np.ndarray]]:
    """Diagnostics on N clips of equal length, x_a (N, T, Da), x_v (N, T, Dv).

    `partner[i]` is the clip whose latents replace clip i's in the swap measurement
    (another speaker's, ideally). Returns the groups (without probes), the streams, and
    each group's clip means {name: (N, L)} for the probes.
    """
    model.eval()
    latents, posterior = _infer(model, x_a, x_v)
    prior = model.priors(latents)
    decoded = _decode(model, latents)
    decoders = _decoders(model)
    inputs = _inputs(model, x_a, x_v)
    n_frames = x_a.shape[1]
    other = type(latents)(**{g: getattr(latents, g)[partner] for g in latents.group_names()})

    groups, means = [], {}
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
        swapped = _decode(model, latents.swap(other, name))
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
    return groups, streams, means


def linear_probe(train_x: np.ndarray, train_y: list, test_x: np.ndarray, test_y: list,
                 *, c: float = 1.0) -> float:
    """Accuracy on (test_x, test_y) of a standardised multinomial logistic regression fitted
    on (train_x, train_y); NaN when the training labels hold fewer than two classes."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(set(np.asarray(train_y).tolist())) < 2 or len(test_y) == 0:
        return float("nan")
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
    probe.fit(train_x, np.asarray(train_y))
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
        lines.append("emotion probe on the stage-1 features' clip means (the ceiling stage 2 is "
                     "given): " + ", ".join(f"{k} {v:.3f}" for k, v in d.feature_probes.items()))
    return "\n".join(lines)
