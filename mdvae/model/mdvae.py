"""The multimodal dynamical VAE (MDVAE) of Sadok, Leglaive et al., on per-frame features.

Generative model (all factors diagonal Gaussians):

    p(w) = N(0, I)
    p(z_av_t | z_av_1:t-1), p(z_a_t | z_a_1:t-1), p(z_v_t | z_v_1:t-1)   autoregressive LSTMs
    p(x_a_t | z_av_t, z_a_t, w), p(x_v_t | z_av_t, z_v_t, w)            per-frame decoders

Inference model (the seed's factorisation, from D-separation):

    q(w | x_a, x_v)
    q(z_av_t | z_av_1:t-1, x_a_t:T, x_v_t:T, w)
    q(z_a_t  | z_a_1:t-1,  x_a_t:T, z_av_t, w)
    q(z_v_t  | z_v_1:t-1,  x_v_t:T, z_av_t, w)

Network layout (widths of the "mead" preset). Each stream first goes through a per-frame
feature MLP (x_a: 512 -> 128 -> 128, x_v: 2048 -> 256 -> 128). One backward LSTM (64
units) per stream summarises x_t:T into g_a_t, g_v_t. q(w) reads g_a_1 and g_v_1 (which
have seen the whole sequences) and the time-averaged features. The z_av posterior reads
[g_a_t, g_v_t, w], the z_a posterior [g_a_t, z_av_t, w] and the z_v posterior
[g_v_t, z_av_t, w], so the audio-only posterior never sees the visual stream and vice
versa; each is a 64-unit tanh recurrence over its own sampled past (`posteriors.py`). The
priors are 64-unit LSTMs (`priors.py`). The decoders are MLPs (latents -> 128 -> 128 -> x_a,
latents -> 256 -> 256 -> x_v) with one learned log-variance per output dimension
(`observation.GaussianDecoder`). The authors' nets
are wider (1024 units next to the 2048-d visual features); these widths keep stage-2
training fast on a CPU, and every width is a config field.

The "authors" preset builds the authors' public layout instead (`AuthorsLayout`, 8,484,568
weights with their filtering posterior): x_a as it is, x_v through 2048 -> 1024 -> 512
ReLU, q(w) from a bidirectional GRU, and for each z one GRU over its sampled past shared
by its posterior and its prior (`shared_gru.py`); with posterior="smoothing" the z
posteriors read backward LSTM summaries of x_t:T in place of x_t.

A departure, off by default (`centre_z`, issue 13): the decoders read each z_t minus its
time mean over the decoded window, so a constant over the window reaches them only
through w. The posteriors, priors and KLs are the seed's; only what the decoders see
changes, and an offset added to a z sequence leaves both reconstructions as they were.
A variant (`standardise_z_audio`): the audio decoder reads z_av and z_a standardised over
the window (centred, and divided by their standard deviation over time), so a z that sits
higher on voiced frames by an amount set by the clip's pitch no longer tells it that amount
(`standardise_z_audio_scale="latent"`: one spread for all of a latent's dimensions). Another
(`centre_z_audio`): the audio decoder alone reads the z's centred, the face's as they are.
Another, on the voice's output rather than its input (`voice_mean_from_w`): the decoded
voice's mean over the window is the decoder's output at zero z's, a function of w alone,
and the z's set only each frame's departure from it; the voice features' clip constants
(their mean over the window: the speaker's timbre) then reach the voice through w whatever
the z's hold (not the pitch level, which each voiced frame's harmonics carry: session 41).
A second, also off by default (`aux_clip_means`): an auxiliary likelihood of each
window's time-averaged features (both streams', or one's: `aux_clip_means_streams`) given w
alone, added to the training loss and left out of
the ELBO. A third (`swap_cycle`): each sequence's z's decoded with another sequence's w
must give features in which q(w), held fixed as a judge, finds that w; also outside the
ELBO. Its judge can instead be one of its own that reads the audio alone
(`swap_cycle_judge="audio"`), trained beside the model on real audio. A fourth
(`w_face_network`) changes the inference model only: q(w) reads the face through a
per-frame network and summary of its own instead of those the z posteriors read.

ELBO normalisation (`elbo.py`, shared with DSAE). Every term of `ELBOTerms` is in nats per
frame: the per-sequence sum (over frames and dimensions) averaged over the batch, divided by
T. The KL of w, which occurs once per sequence, is divided by T too, so the `rec` and `kl`
terms add up to exactly -ELBO / T and all betas = 1 is the faithful bound. (The authors'
code divides the w KL by the batch size only, i.e. it weights it T times more;
`beta_w = T` reproduces that.)
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mdvae.config import ConfigBase
from mdvae.errors import ConfigError, MDVAEError
from mdvae.model.elbo import (
    ELBOBreakdown,
    KLWeights,
    kl_w_term,
    kl_z_term,
    reconstruction_term,
    training_loss,
)
from mdvae.model.gaussian import DiagonalGaussian
from mdvae.model.latents import LatentGroups, frames_of_w, interpolate_w
from mdvae.model.observation import GaussianDecoder, check_sequence, mlp
from mdvae.model.posteriors import (
    PosteriorRecurrence,
    StaticPosterior,
    StreamwiseStaticPosterior,
    make_summary,
    run_posteriors,
)
from mdvae.model.priors import AutoregressivePrior, prior_w
from mdvae.model.shared_gru import (
    BiGRUStaticPosterior,
    SharedGRULatent,
    run_shared_posteriors,
)

POSTERIOR_KINDS = ("smoothing", "filtering")


def check_stage2_config(config: ConfigBase) -> None:
    """The checks every stage-2 config (MDVAE, DSAE) shares: sizes >= 1 (optional ones when
    set), betas >= 0, a dropout share in [0, 1), and a known posterior kind."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if hints[field.name] in (int, int | None) and value is not None and value < 1:
            raise ConfigError(f"config key '{field.name}' must be at least 1, got {value}")
        if field.name.startswith("beta_") and value < 0:
            raise ConfigError(f"config key '{field.name}' must be >= 0, got {value}")
    if not 0.0 <= config.w_input_dropout < 1.0:
        raise ConfigError(f"config key 'w_input_dropout' is a share of q(w)'s inputs, in "
                          f"[0, 1); got {config.w_input_dropout}")
    posterior = config.posterior
    if posterior not in POSTERIOR_KINDS:
        raise ConfigError(f"config key 'posterior': {posterior!r} is not one of {POSTERIOR_KINDS}")


@dataclass(frozen=True)
class AuthorsLayout(ConfigBase):
    """The network layout of the authors' public code (DESIGN.md section 2), and its widths.

    Per-frame features: x_a as it is, x_v through a ReLU MLP. q(w): a bidirectional GRU of
    `rnn_dim` units over [visual; audio] features, its final states -> Linear(rnn_dim), Tanh.
    Each z: a GRU of `z_rnn_dim` units over its sampled past, shared by a Tanh posterior MLP
    over [state, features (filtering) or backward summaries (smoothing), w, z_av] and a
    one-hidden-layer Tanh prior head (`shared_gru.py`). Decoders: Tanh (audio) and ReLU
    (visual) MLPs. The latent sizes, rnn_dim and z_rnn_dim come from the MDVAE config.
    """

    audio_feature_widths: tuple[int, ...] = ()  # x_a as it is (512)
    visual_feature_widths: tuple[int, ...] = (1024, 512)  # 2048 -> 1024 -> 512, ReLU
    z_av_posterior_widths: tuple[int, ...] = (256, 128)
    z_a_posterior_widths: tuple[int, ...] = (128, 32)
    z_v_posterior_widths: tuple[int, ...] = (256, 128)
    z_av_prior_width: int = 64
    z_a_prior_width: int = 32
    z_v_prior_width: int = 64
    audio_decoder_widths: tuple[int, ...] = (128, 256)  # Tanh
    visual_decoder_widths: tuple[int, ...] = (512, 1024)  # ReLU

    def __post_init__(self):
        for name in ("z_av_posterior_widths", "z_a_posterior_widths", "z_v_posterior_widths"):
            if not getattr(self, name):
                raise ConfigError(f"config key '{name}' needs at least one width")
        if len(self.z_a_posterior_widths) != len(self.z_v_posterior_widths):
            # z_a and z_v share one loop (block-diagonal weights), layer by layer
            raise ConfigError("z_a_posterior_widths and z_v_posterior_widths need as many layers")


SWAP_CYCLE_JUDGES = ("joint", "audio")
STANDARDISE_SCALES = ("dimension", "latent")
AUX_CLIP_MEANS_STREAMS = ("both", "audio", "visual")
# added to a z's variance over time before `standardise_z_audio` divides by its square
# root: a dimension that hardly moves over the window is magnified at most 1 / 0.1 = 10x
STANDARDISE_EPS = 0.01


def call_fixed(module: nn.Module, *args):
    """module(*args) with detached copies of its weights: a judge whose verdict trains what
    it reads, never itself."""
    weights = {k: v.detach() for k, v in module.named_parameters()}
    return torch.func.functional_call(module, weights, args)


@dataclass
class MDVAEConfig(ConfigBase):
    # observed per-frame features: the stage-1 VQ-VAE encoder outputs before quantisation
    audio_dim: int = 512  # x_a_t: 64 positions x 8 channels of the audio VQ-VAE
    visual_dim: int = 2048  # x_v_t: 8 x 8 grid x 32 channels of the visual VQ-VAE
    # latent sizes (the authors' MEAD configuration)
    w_dim: int = 84  # static audiovisual w (identity, global emotion)
    z_av_dim: int = 16  # dynamical audiovisual z_av_t (lips, jaw)
    z_a_dim: int = 8  # dynamical audio-only z_a_t
    z_v_dim: int = 4  # dynamical visual-only z_v_t (head, eyelids)
    # network widths
    feature_dim: int = 128  # per-frame features of each stream read by all inference nets
    audio_hidden: int = 128  # hidden width of the audio feature MLP and audio decoder
    visual_hidden: int = 256  # hidden width of the visual feature MLP and visual decoder
    # hidden width of the visual decoder alone; None: visual_hidden. Widens what renders the
    # face without widening the feature MLP that reads it for every posterior
    visual_decoder_hidden: int | None = None
    # the same for the audio decoder alone; None: audio_hidden
    audio_decoder_hidden: int | None = None
    rnn_dim: int = 64  # backward summaries of x_t:T (LSTMs) and the q(w) hidden layer
    z_rnn_dim: int = 64  # recurrences over z: prior LSTMs, posterior tanh RNNs
    # "smoothing": q(z_t | ..., x_t:T) as in the seed; "filtering": q(z_t | ..., x_t) as in
    # the authors' public code
    posterior: str = "smoothing"
    # observation model p(x_t | .) = N(decoder mean, diag(exp(logvar))), logvar per dimension
    obs_logvar_init: float = 0.0  # initial log-variance of every observed dimension
    learn_obs_variance: bool = True  # False keeps the variance fixed at exp(obs_logvar_init)
    obs_logvar_min: float = -6.0  # floor on the log-variance (std >= 0.05 by default)
    # True: each training batch sets the log-variances to their maximum-likelihood value
    # (the mean squared residual per dimension), kept as a running average for evaluation,
    # instead of learning them by gradient (GaussianDecoder)
    optimal_obs_variance: bool = False
    # weights of the KL terms; 1 everywhere is the ELBO itself
    beta_w: float = 1.0
    beta_z_av: float = 1.0
    beta_z_a: float = 1.0
    beta_z_v: float = 1.0
    # a departure (issue 13): True decodes each dynamical latent with its mean over the
    # decoded frames removed, so whatever is constant over a window (a clip's pitch level,
    # its speaker) can reach the decoders only through w; False is the seed's model
    centre_z: bool = False
    # a departure (issue 13): True has the audio decoder read z_av and z_a standardised over
    # the decoded frames (minus their time mean, divided by sqrt(their variance over time +
    # STANDARDISE_EPS), per dimension; `centre_z` or not), so what a z holds for the voice is
    # its shape over time and not its size: a latent that codes voicing can no longer pass
    # the clip's pitch level as the height of its voiced frames. The visual decoder reads
    # them as `centre_z` says. False is the seed's model
    standardise_z_audio: bool = False
    # with standardise_z_audio: "dimension" divides each dimension by its own spread over the
    # window (as above); "latent" divides all of a latent's dimensions by one number, the
    # root of their mean variance over the window + STANDARDISE_EPS, so a dimension that
    # hardly moves stays small beside one that does, and the sizes of the dimensions' moves
    # relative to each other reach the decoder. A departure (issue 13); "dimension" is the
    # variant tried in sessions 19 and 34. Tried in a floor -3 phase on two seeds (research
    # log, session 40): as "dimension", the accents' timing left z_a with the pitch level
    standardise_z_audio_scale: str = "dimension"
    # a departure (issue 13): True has the audio decoder alone read z_av and z_a centred over
    # the decoded frames (minus their time mean; not divided by their spread), the visual
    # decoder as `centre_z` says: a z's constant over the window reaches the voice only
    # through w, and the face's mouth is left as the seed's model renders it (session 15's
    # `centre_z` for both decoders cost the mouth). False is the seed's model. Tried in a
    # floor -3 phase on two seeds (research log, session 40): the pitch level went partly to
    # w and more of the contour stayed in z_a than standardised, but w lost 0.02 of emotion
    centre_z_audio: bool = False
    # a departure (issue 13): True decodes the voice as D(0, 0, w) + D(z_av_t, z_a_t, w) minus
    # the mean of D(z_av, z_a, w) over the decoded window (D the audio decoder, at the z's it
    # reads), so the decoded voice's mean over the window is a function of w alone and the
    # z's set each frame's departure from it: the voice features' clip constants can reach
    # the voice only through w, however the z's encode them (the normalisations above take
    # a z's own constants out of what the decoder reads, but the decoder could still read a
    # clip constant from the z's shape over time, session 40). The face is decoded as before.
    # False is the seed's model. Tried in a floor -3 phase on two seeds (research log,
    # session 41): the voice's speaker moved towards w (0.65 / 0.66 against 0.54 / 0.49) with
    # the accents' timing kept in z_a, the pitch level only to 0.14; on top of
    # standardise_z_audio it adds nothing
    voice_mean_from_w: bool = False
    # a departure (issue 13): > 0 adds this weight times an auxiliary likelihood of each
    # sequence's time-averaged features given w alone (a Gaussian decoder per stream from w,
    # nats per sequence divided by T, as the ELBO's terms) to the training loss, so w is
    # taught what is constant over a window however little the frame decoders use it; it is
    # not part of the ELBO (`negative_elbo` leaves it out). 0 is the seed's model
    aux_clip_means: float = 0.0
    # which streams' clip means `aux_clip_means` asks of w: "both", or "audio" / "visual"
    # alone (the other stream's head is not built). Tried as "audio" in a floor -3 phase on
    # two seeds (research log, session 40): w lost as much emotion as with both streams
    # (session 39), and the voice's speaker hardly followed a swapped w more
    aux_clip_means_streams: str = "both"
    # a departure (issue 13): > 0 adds this weight times a swap-cycle term to the training
    # loss: each sequence's z's are decoded with the next sequence's w (the batch rolled by
    # one), and the negative log-density of that w under q(w | the swapped decoding), the
    # encoder's weights held fixed, per sequence / T. The decoders are taught to render
    # w's content over whatever the z's carry, and the z's that what w holds is of no use
    # to them; not part of the ELBO. 0 is the seed's model
    swap_cycle: float = 0.0
    # who judges the swapped decoding of `swap_cycle`: "joint", q(w | x_a, x_v) itself
    # (which reads mostly the face); "audio", a judge of its own, r(w | x_a) (the compact
    # layout's audio feature MLP, backward summary and q(w) head, on the audio alone),
    # trained beside the model to find q(w)'s mean in real audio (its negative
    # log-likelihood added to the training loss, its gradient reaching the judge alone) and
    # held fixed in the cycle, which then asks the decoded voice alone to carry what a real
    # voice tells of w
    swap_cycle_judge: str = "joint"
    # a departure (issue 13): the share of training sequences whose q(w) is computed without
    # the face (its visual inputs to q(w) zeroed; the z posteriors and the decoders still see
    # it), so that q(w) must learn to read from the voice what the decoders need of w, the
    # face's identity and emotion included (modality dropout). The ELBO of each sequence is
    # a bound for any q(w), so the objective is unchanged; evaluation always reads both
    # streams. 0 is the seed's model. Tried at 0.25 (research log, session 26): the z's became
    # speaker codes and the voice's emotion did not come into w
    w_face_dropout: float = 0.0
    # a departure (issue 13): the share of training sequences whose q(w) is computed without
    # the voice (its audio inputs to q(w) zeroed; the z posteriors and the decoders still
    # hear it), so that q(w) must read from the face alone what the decoders need of w: the
    # face's network for q(w) can no longer leave the emotion to the voice. The bound is one
    # for any q(w), so the objective is unchanged; evaluation reads both streams. Drawn
    # apart from `w_face_dropout` (no sequence loses both; the two shares sum to at most 1).
    # 0 is the seed's model. Tried at 0.25 in a floor -3 phase from the shipped bundle on two
    # seeds (research log, session 33): the face's part of q(w)'s input read the emotion better,
    # w did not
    w_voice_dropout: float = 0.0
    # a departure (issue 13): dropout on the summary vector q(w)'s head reads (the pooled
    # summaries and mean features of both streams; the authors' layout: the BiGRU's final
    # states), in training only, so that q(w) cannot lean on a few directions that name the
    # training speakers and must read the emotion more broadly. The decoders and the z
    # posteriors are untouched; 0 is the seed's model. Tried at 0.25 in a continued floor -3
    # phase (research log, session 30): emotion from w fell on new and seen speakers alike
    w_input_dropout: float = 0.0
    # a departure (issue 13): w = [w_a; w_v], the first w_audio_dim entries inferred from
    # the voice alone and the rest from the face alone (`StreamwiseStaticPosterior`), each
    # decoder reading the whole w, so that neither stream's reading of the clip-level
    # factors is crowded out of w by the other's in one joint head (the late fusion of the
    # two DSAEs' w reads the emotion better than the MDVAE's). p(w) is unchanged; False is
    # the seed's joint q(w | x_a, x_v). This project's layout only. Tried in a continued
    # floor -3 phase on three seeds (research log, session 31): a tie on new speakers' emotion,
    # a better bound; w_a reads like an A-DSAE's w, w_v far below a V-DSAE's
    w_per_stream: bool = False
    # with w_per_stream: how many of w's entries the voice's part has (None: w_dim // 2); the
    # face's part has the rest
    w_audio_dim: int | None = None
    # with w_per_stream, a departure (issue 13): the voice's decoder reads the face's part of
    # w detached, so that no gradient from the voice's reconstruction shapes q(w_v) (the z
    # posteriors still read it whole); forward passes are unchanged. False: both decoders
    # train both parts. Tried on two seeds (research log, session 31): the face's part read no
    # better, the whole w the same or worse
    voice_decoder_detaches_w_v: bool = False
    # with w_per_stream, a departure (issue 13): the voice's decoder reads the voice's part of
    # w alone (the face's entries read as zeros), so that the voice cannot be rendered from
    # the face's identity: the plain model, given another speaker's face, decodes a training
    # speaker's voice as the face's speaker's more often than the audio's (research log,
    # session 42), a pairing that says nothing of a new speaker's voice. The face's decoder
    # and the z posteriors read the whole w. False: both decoders read both parts
    voice_reads_w_a_only: bool = False
    # a departure (issue 13): q(w) reads the face through a per-frame network and a summary
    # of its own (`w_features_x_v`, `w_summary_x_v`, the widths of the shared ones), so the
    # z posteriors' visual features, shaped by the frame-by-frame factors (mouth, head,
    # eyelids), are no longer what q(w) must read the clip's face from; the voice's are
    # still shared. The generative model and the z posteriors are the seed's; False is the
    # seed's q(w) on the shared features. This project's layout only. `--init-from` a run
    # without it copies the shared face network into the new one, so training starts from
    # the same function. Tried in a continued floor -3 phase on three seeds (research log, session
    # 32): emotion from w on new speakers +0.016/+0.019/+0.029 over the shared network
    w_face_network: bool = False
    # None: this project's compact layout (the widths above); an AuthorsLayout: the authors'
    # network layout with its widths (feature_dim and the *_hidden widths unused)
    authors_layout: AuthorsLayout | None = None

    def __post_init__(self):
        check_stage2_config(self)
        for name in ("aux_clip_means", "swap_cycle"):
            if getattr(self, name) < 0:
                raise ConfigError(f"config key '{name}' must be >= 0, got {getattr(self, name)}")
        for name in ("w_face_dropout", "w_voice_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"config key '{name}' is a share of the training "
                                  f"sequences, in [0, 1]; got {getattr(self, name)}")
        if self.w_face_dropout + self.w_voice_dropout > 1.0:
            raise ConfigError(f"config keys 'w_face_dropout' ({self.w_face_dropout}) and "
                              f"'w_voice_dropout' ({self.w_voice_dropout}) hide one stream "
                              f"each from disjoint sequences: they sum to at most 1")
        for name, allowed in (("standardise_z_audio_scale", STANDARDISE_SCALES),
                              ("aux_clip_means_streams", AUX_CLIP_MEANS_STREAMS),
                              ("swap_cycle_judge", SWAP_CYCLE_JUDGES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"config key '{name}': {getattr(self, name)!r} is not one "
                                  f"of {allowed}")
        if self.w_per_stream and self.authors_layout is not None:
            raise ConfigError("config key 'w_per_stream' splits this project's q(w) head; the "
                              "authors' layout reads both streams in one BiGRU")
        if self.w_per_stream and self.w_dim < 2:
            raise ConfigError(f"config key 'w_per_stream' gives each stream a part of w: "
                              f"w_dim must be at least 2, got {self.w_dim}")
        if self.w_face_network and self.authors_layout is not None:
            raise ConfigError("config key 'w_face_network' gives this project's q(w) a face "
                              "network of its own; the authors' layout reads its BiGRU")
        for name, does in (("voice_decoder_detaches_w_v", "detaches the face's part"),
                           ("voice_reads_w_a_only", "hides the face's part")):
            if getattr(self, name) and not self.w_per_stream:
                raise ConfigError(f"config key '{name}' {does} of a per-stream w from the "
                                  f"voice's decoder: set w_per_stream too")
        if self.w_audio_dim is not None and not (
                self.w_per_stream and self.w_audio_dim < self.w_dim):
            raise ConfigError(f"config key 'w_audio_dim' ({self.w_audio_dim}) is the voice's "
                              f"part of a per-stream w (w_per_stream), less than w_dim "
                              f"({self.w_dim})")

    @classmethod
    def preset(cls, name: str, **overrides) -> MDVAEConfig:
        """A named configuration ("mead" or "synthetic"), with fields overridden by keyword."""
        if name not in MDVAE_PRESETS:
            raise ConfigError(f"unknown MDVAE preset {name!r}; choose among {list(MDVAE_PRESETS)}")
        return cls(**{**MDVAE_PRESETS[name], **overrides})


MDVAE_PRESETS: dict[str, dict] = {
    # the authors' latent sizes on MEAD stage-2 features
    "mead": {},
    # the procedural benchmark: the same stage-1 feature sizes, fewer generating factors
    # (a few speakers x 8 emotions x 3 levels; phones; head pose and blinks; f0 and
    # loudness), so smaller latents
    "synthetic": dict(w_dim=32, z_av_dim=8, z_a_dim=4, z_v_dim=4, z_rnn_dim=32),
    # every width of the authors' public code (8,484,568 network weights with their
    # filtering posterior); posterior="smoothing" reads backward summaries of x_t:T instead
    "authors": dict(
        rnn_dim=256, z_rnn_dim=128, posterior="filtering", authors_layout=AuthorsLayout()
    ),
}


@dataclass
class Latents(LatentGroups):
    """One encoding of a batch of sequences (sampled or posterior means)."""

    w: Tensor  # (B, Lw), or (B, T, Lw) for a per-frame w (interpolation)
    z_av: Tensor  # (B, T, Lav)
    z_a: Tensor  # (B, T, La)
    z_v: Tensor  # (B, T, Lv)


@dataclass
class LatentDistributions:
    """A Gaussian per latent group: posteriors q(.) or priors p(.) (w: (B, Lw), z: (B, T, L))."""

    w: DiagonalGaussian
    z_av: DiagonalGaussian
    z_a: DiagonalGaussian
    z_v: DiagonalGaussian


@dataclass
class ELBOTerms(ELBOBreakdown):
    """The negative ELBO and its parts, each in nats per frame (see the module docstring).

    `total` is the training loss: reconstructions plus beta-weighted KLs; the other fields
    are unweighted, so `negative_elbo` is the bound itself whatever the betas.
    """

    total: Tensor
    rec_audio: Tensor  # -E_q log p(x_a | z_av, z_a, w)
    rec_visual: Tensor  # -E_q log p(x_v | z_av, z_v, w)
    kl_w: Tensor  # KL(q(w | x_a, x_v) || N(0, I)), once per sequence
    kl_zav: Tensor  # sum_t KL(q(z_av_t | ...) || p(z_av_t | z_av_1:t-1))
    kl_za: Tensor
    kl_zv: Tensor


@dataclass
class MDVAEOutput:
    x_a_hat: Tensor  # (B, T, Da) mean of p(x_a_t | z_av_t, z_a_t, w)
    x_v_hat: Tensor  # (B, T, Dv) mean of p(x_v_t | z_av_t, z_v_t, w)
    latents: Latents  # the posterior sample the reconstructions and KLs used
    posterior: LatentDistributions
    prior: LatentDistributions  # p(w) = N(0, I); the z priors given the sampled past
    loss: ELBOTerms
    # terms of the training loss outside the ELBO (the departures'), unweighted, for logging
    extra: dict[str, Tensor] = dataclasses.field(default_factory=dict)


class MDVAE(nn.Module):
    """MDVAE on (B, T, audio_dim) and (B, T, visual_dim) feature sequences."""

    def __init__(self, config: MDVAEConfig):
        super().__init__()
        self.config = config
        if config.authors_layout is not None:
            self._build_authors_layout(config, config.authors_layout)
            return
        c = config
        # per-frame features, shared by every inference network
        self.features_x_a = mlp([c.audio_dim, c.audio_hidden, c.feature_dim], final_activation=True)
        self.features_x_v = mlp(
            [c.visual_dim, c.visual_hidden, c.feature_dim], final_activation=True
        )
        # g_a_t = f(x_a_t:T), g_v_t = f(x_v_t:T) (or of x_t alone when filtering)
        self.summary_x_a = make_summary(c.posterior, c.feature_dim, c.rnn_dim)
        self.summary_x_v = make_summary(c.posterior, c.feature_dim, c.rnn_dim)
        if c.w_face_network:  # the face as q(w) alone reads it
            self.w_features_x_v = mlp(
                [c.visual_dim, c.visual_hidden, c.feature_dim], final_activation=True
            )
            self.w_summary_x_v = make_summary(c.posterior, c.feature_dim, c.rnn_dim)
        # q(w | x_a, x_v) from g_a_1, g_v_1 and the time-averaged features
        if c.w_per_stream:
            w_a = self.w_audio_entries
            self.posterior_w = StreamwiseStaticPosterior(
                [c.rnn_dim + c.feature_dim] * 2, c.rnn_dim, [w_a, c.w_dim - w_a],
                c.w_input_dropout,
            )
        else:
            self.posterior_w = StaticPosterior(
                2 * (c.rnn_dim + c.feature_dim), c.rnn_dim, c.w_dim, c.w_input_dropout
            )
        # q(z_av_t | z_av_1:t-1, x_a_t:T, x_v_t:T, w)
        self.posterior_z_av = PosteriorRecurrence(2 * c.rnn_dim + c.w_dim, c.z_av_dim, c.z_rnn_dim)
        # q(z_a_t | z_a_1:t-1, x_a_t:T, z_av_t, w) and q(z_v_t | z_v_1:t-1, x_v_t:T, z_av_t, w)
        self.posterior_z_a = PosteriorRecurrence(
            c.rnn_dim + c.z_av_dim + c.w_dim, c.z_a_dim, c.z_rnn_dim
        )
        self.posterior_z_v = PosteriorRecurrence(
            c.rnn_dim + c.z_av_dim + c.w_dim, c.z_v_dim, c.z_rnn_dim
        )
        # p(z_t | z_1:t-1) for each dynamical group
        self.prior_z_av = AutoregressivePrior(c.z_av_dim, c.z_rnn_dim)
        self.prior_z_a = AutoregressivePrior(c.z_a_dim, c.z_rnn_dim)
        self.prior_z_v = AutoregressivePrior(c.z_v_dim, c.z_rnn_dim)
        # p(x_a_t | z_av_t, z_a_t, w) and p(x_v_t | z_av_t, z_v_t, w)
        obs = dict(
            logvar_init=c.obs_logvar_init,
            learn_logvar=c.learn_obs_variance,
            logvar_min=c.obs_logvar_min,
            optimal_logvar=c.optimal_obs_variance,
        )
        self.decoder_x_a = GaussianDecoder(
            c.z_av_dim + c.z_a_dim + c.w_dim, c.audio_decoder_hidden or c.audio_hidden,
            c.audio_dim, **obs
        )
        self.decoder_x_v = GaussianDecoder(
            c.z_av_dim + c.z_v_dim + c.w_dim,
            c.visual_decoder_hidden or c.visual_hidden,
            c.visual_dim,
            **obs,
        )
        self._build_aux_heads(c, obs)

    def _build_aux_heads(self, c: MDVAEConfig, obs: dict) -> None:
        """With `aux_clip_means`: p(mean_t x_a | w) and p(mean_t x_v | w), or the one that
        `aux_clip_means_streams` names; with an audio `swap_cycle_judge`: r(w | x_a). The
        compact layout's widths in either layout."""
        if c.aux_clip_means > 0:
            if c.aux_clip_means_streams in ("both", "audio"):
                self.aux_x_a = GaussianDecoder(c.w_dim, c.audio_hidden, c.audio_dim, **obs)
            if c.aux_clip_means_streams in ("both", "visual"):
                self.aux_x_v = GaussianDecoder(c.w_dim, c.visual_hidden, c.visual_dim, **obs)
        if c.swap_cycle > 0 and c.swap_cycle_judge == "audio":
            self.judge_features_x_a = mlp(
                [c.audio_dim, c.audio_hidden, c.feature_dim], final_activation=True
            )
            self.judge_summary_x_a = make_summary("smoothing", c.feature_dim, c.rnn_dim)
            self.judge_w = StaticPosterior(c.rnn_dim + c.feature_dim, c.rnn_dim, c.w_dim)

    def _build_authors_layout(self, c: MDVAEConfig, a: AuthorsLayout) -> None:
        """The authors' networks (`AuthorsLayout`), under the names of the compact layout
        where a component plays the same part."""
        self.features_x_a = mlp(
            [c.audio_dim, *a.audio_feature_widths], activation="relu", final_activation=True
        )
        self.features_x_v = mlp(
            [c.visual_dim, *a.visual_feature_widths], activation="relu", final_activation=True
        )
        f_a = a.audio_feature_widths[-1] if a.audio_feature_widths else c.audio_dim
        f_v = a.visual_feature_widths[-1] if a.visual_feature_widths else c.visual_dim
        self.posterior_w = BiGRUStaticPosterior(f_v + f_a, c.rnn_dim, c.w_dim, c.w_input_dropout)
        if c.posterior == "smoothing":
            # g_t = f(x_t:T) per stream replaces x_t in the posteriors of the z
            self.summary_x_a = make_summary("smoothing", f_a, c.rnn_dim)
            self.summary_x_v = make_summary("smoothing", f_v, c.rnn_dim)
            f_a = f_v = c.rnn_dim
        # z_av reads [s, g_a, g_v, w]; z_a [s, g_a, z_av, w]; z_v [s, g_v, z_av, w]
        self.z_av = SharedGRULatent(
            f_a + f_v + c.w_dim,
            c.z_av_dim,
            c.z_rnn_dim,
            a.z_av_posterior_widths,
            a.z_av_prior_width,
        )
        self.z_a = SharedGRULatent(
            f_a + c.z_av_dim + c.w_dim,
            c.z_a_dim,
            c.z_rnn_dim,
            a.z_a_posterior_widths,
            a.z_a_prior_width,
        )
        self.z_v = SharedGRULatent(
            f_v + c.z_av_dim + c.w_dim,
            c.z_v_dim,
            c.z_rnn_dim,
            a.z_v_posterior_widths,
            a.z_v_prior_width,
        )
        obs = dict(
            logvar_init=c.obs_logvar_init,
            learn_logvar=c.learn_obs_variance,
            logvar_min=c.obs_logvar_min,
            optimal_logvar=c.optimal_obs_variance,
        )
        self.decoder_x_a = GaussianDecoder(
            c.z_av_dim + c.z_a_dim + c.w_dim,
            a.audio_decoder_widths,
            c.audio_dim,
            activation="tanh",
            **obs,
        )
        self.decoder_x_v = GaussianDecoder(
            c.z_av_dim + c.z_v_dim + c.w_dim,
            a.visual_decoder_widths,
            c.visual_dim,
            activation="relu",
            **obs,
        )
        self._build_aux_heads(c, obs)

    # ---- inference -------------------------------------------------------------------

    def infer(
        self,
        x_a: Tensor,
        x_v: Tensor,
        *,
        sample: bool = True,
        noise: Latents | None = None,
        w: Tensor | None = None,
        z_av: Tensor | None = None,
        z_a: Tensor | None = None,
        z_v: Tensor | None = None,
    ) -> tuple[Latents, LatentDistributions]:
        """Posterior latents and distributions for x_a (B, T, Da), x_v (B, T, Dv).

        Groups are inferred in the order of the factorisation, w, z_av, then z_a and z_v.
        Each latent is a reparameterised sample (`sample`, with standard-normal `noise` when
        given) or the posterior mean, whose value conditions the later steps and groups.
        A value passed for a group (w (B, Lw), z_* (B, T, L)) is used instead of drawing it,
        so the posteriors can be evaluated at a fixed history.
        """
        return self._infer(x_a, x_v, sample=sample, noise=noise, w=w, z_av=z_av, z_a=z_a, z_v=z_v)[
            :2
        ]

    @staticmethod
    def _hide(hidden: Tensor | None, *inputs: Tensor) -> list[Tensor]:
        """One stream's inputs to q(w), zeroed in the sequences marked `hidden` (B,) bool."""
        if hidden is None:
            return list(inputs)
        keep = (~hidden).to(inputs[0].dtype)[:, None, None]
        return [v * keep for v in inputs]

    def _infer(
        self,
        x_a: Tensor,
        x_v: Tensor,
        *,
        sample: bool,
        noise: Latents | None,
        w: Tensor | None,
        z_av: Tensor | None,
        z_a: Tensor | None,
        z_v: Tensor | None,
        faceless: Tensor | None = None,
        voiceless: Tensor | None = None,
    ) -> tuple[Latents, LatentDistributions, tuple[Tensor, Tensor, Tensor] | None]:
        """`infer`, plus (authors' layout) the GRU states s_t of z_av, z_a, z_v over the
        returned latents, from which the priors follow without running the GRUs again.
        `faceless`, `voiceless` (B,) bool: sequences whose q(w) does not see the face
        (`w_face_dropout`), does not hear the voice (`w_voice_dropout`)."""
        self._check_inputs(x_a, x_v)
        if self.config.authors_layout is not None:
            return self._infer_authors(x_a, x_v, sample, noise, w, z_av, z_a, z_v, faceless,
                                       voiceless)
        n_frames = x_a.shape[1]
        f_a = self.features_x_a(x_a)  # (B, T, F)
        f_v = self.features_x_v(x_v)  # (B, T, F)
        g_a = self.summary_x_a(f_a)  # (B, T, H)
        g_v = self.summary_x_v(f_v)  # (B, T, H)
        f_v_w, g_v_w = self._hide(faceless, *self._face_for_w(x_v, shared=(f_v, g_v)))
        f_a_w, g_a_w = self._hide(voiceless, f_a, g_a)
        q_w = self.posterior_w([g_a_w, g_v_w], [f_a_w, f_v_w])  # (B, Lw)
        if w is None:
            w = q_w.rsample(noise.w if noise is not None else None) if sample else q_w.mean
        w_t = frames_of_w(w, n_frames)  # (B, T, Lw)
        z_av, q_z_av = self.posterior_z_av(
            torch.cat([g_a, g_v, w_t], dim=-1),
            z=z_av,
            noise=noise.z_av if noise is not None else None,
            sample=sample,
        )
        # given z_av and w, q(z_a | ...) and q(z_v | ...) are independent: one loop for both
        (z_a, q_z_a), (z_v, q_z_v) = run_posteriors(
            [self.posterior_z_a, self.posterior_z_v],
            [torch.cat([g_a, z_av, w_t], dim=-1), torch.cat([g_v, z_av, w_t], dim=-1)],
            zs=[z_a, z_v],
            noises=[noise.z_a, noise.z_v] if noise is not None else None,
            sample=sample,
        )
        return Latents(w, z_av, z_a, z_v), LatentDistributions(q_w, q_z_av, q_z_a, q_z_v), None

    def _face_for_w(self, x_v: Tensor, *, shared: tuple[Tensor, Tensor] | None = None,
                    run=nn.Module.__call__) -> tuple[Tensor, Tensor]:
        """The face's features and summaries (B, T, F), (B, T, H) that q(w) reads: with
        `w_face_network` its own, otherwise those of the z posteriors (`shared`, when already
        computed), each computed from x_v by `run` (`call_fixed` for a judge's fixed copy)."""
        if self.config.w_face_network:
            features, summary = self.w_features_x_v, self.w_summary_x_v
        elif shared is not None:
            return shared
        else:
            features, summary = self.features_x_v, self.summary_x_v
        f = run(features, x_v)
        return f, run(summary, f)

    def _infer_authors(self, x_a, x_v, sample, noise, w, z_av, z_a, z_v, faceless=None,
                       voiceless=None):
        f_a = self.features_x_a(x_a)  # (B, T, Fa)
        f_v = self.features_x_v(x_v)  # (B, T, Fv)
        q_w = self.posterior_w([*self._hide(faceless, f_v), *self._hide(voiceless, f_a)])
        if w is None:
            w = q_w.rsample(noise.w if noise is not None else None) if sample else q_w.mean
        if self.config.posterior == "smoothing":
            f_a, f_v = self.summary_x_a(f_a), self.summary_x_v(f_v)  # (B, T, H): x_t:T
        noises = noise if noise is not None else Latents(None, None, None, None)
        # the observation and w blocks of every first layer, for all frames at once
        [(z_av, q_z_av, s_av)] = run_shared_posteriors(
            [self.z_av],
            [self.z_av.condition([f_a, f_v, w])],
            zs=[z_av],
            noises=[noises.z_av],
            sample=sample,
        )
        (z_a, q_z_a, s_a), (z_v, q_z_v, s_v) = run_shared_posteriors(
            [self.z_a, self.z_v],
            [self.z_a.condition([f_a, z_av, w]), self.z_v.condition([f_v, z_av, w])],
            zs=[z_a, z_v],
            noises=[noises.z_a, noises.z_v],
            sample=sample,
        )
        return (
            Latents(w, z_av, z_a, z_v),
            LatentDistributions(q_w, q_z_av, q_z_a, q_z_v),
            (s_av, s_a, s_v),
        )

    def encode(self, x_a: Tensor, x_v: Tensor, sample: bool = False) -> Latents:
        """Latents of x_a (B, T, Da), x_v (B, T, Dv): posterior means unless `sample`.

        With means, each recurrence is fed its own posterior means (z_t = mean of
        q(z_t | z_1:t-1 = means, ...)) and z_a, z_v are conditioned on the mean of z_av.
        """
        return self.infer(x_a, x_v, sample=sample)[0]

    # ---- generative model --------------------------------------------------------------

    def priors(
        self, latents: Latents, states: tuple[Tensor, Tensor, Tensor] | None = None
    ) -> LatentDistributions:
        """p(w) = N(0, I) and p(z_t | z_1:t-1) at the given (sampled) latent sequences;
        `states` are the z GRUs' states over them when known (authors' layout)."""
        w = latents.w
        if self.config.authors_layout is not None:
            groups = (self.z_av, self.z_a, self.z_v)
            zs = (latents.z_av, latents.z_a, latents.z_v)
            p = [
                m.prior(z) if states is None else m.prior_from_states(s)
                for m, z, s in zip(groups, zs, states or (None,) * 3)
            ]
            return LatentDistributions(DiagonalGaussian.standard(tuple(w.shape), like=w), *p)
        return LatentDistributions(
            w=DiagonalGaussian.standard(tuple(w.shape), like=w),
            z_av=self.prior_z_av(latents.z_av),
            z_a=self.prior_z_a(latents.z_a),
            z_v=self.prior_z_v(latents.z_v),
        )

    @staticmethod
    def with_w_face_network(weights: dict[str, Tensor], own: bool) -> dict[str, Tensor]:
        """A state dict of a model without `w_face_network` made to fit one with it (`own`):
        q(w)'s face network a copy of the shared one, so the model computes the same
        function; or, not `own`, one with it made to fit one without (the copy dropped)."""
        shared = ("features_x_v.", "summary_x_v.")
        if not own:
            own_prefixes = tuple("w_" + p for p in shared)
            return {k: v for k, v in weights.items() if not k.startswith(own_prefixes)}
        return {**weights, **{"w_" + k: v.clone() for k, v in weights.items()
                              if k.startswith(shared)}}

    @staticmethod
    def with_w_face_network_from(weights: dict[str, Tensor],
                                 face_model: dict[str, Tensor]) -> dict[str, Tensor]:
        """A state dict of a model with `w_face_network` whose own face network (per-frame
        network and summary) is taken from a face-only DSAE's state dict `face_model` (its
        `features_x`, `summary_x`; the same widths), everything else kept."""
        renames = {"features_x.": "w_features_x_v.", "summary_x.": "w_summary_x_v."}
        taken = {new + k.removeprefix(old): v.clone() for k, v in face_model.items()
                 for old, new in renames.items() if k.startswith(old)}
        own = {k for k in weights if k.startswith(tuple(renames.values()))}
        if set(taken) != own:
            raise ConfigError("the face-only model's face network does not fit q(w)'s own: "
                              f"it gives {sorted(set(taken) ^ own)[:4]} where they differ")
        return {**weights, **taken}

    @property
    def w_audio_entries(self) -> int:
        """With `w_per_stream`: how many of w's first entries are read from the voice."""
        c = self.config
        return c.w_audio_dim if c.w_audio_dim is not None else c.w_dim // 2

    def decode(
        self, latents: Latents, *, reference: Latents | None = None
    ) -> tuple[Tensor, Tensor]:
        """Means of p(x_a_t | z_av_t, z_a_t, w) and p(x_v_t | z_av_t, z_v_t, w), every t.

        `latents.w` may be (B, Lw) or per frame (B, T, Lw) (see `interpolate_w`).
        With `centre_z` the decoders read each z_t minus the z's mean over time, taken over
        these latents' frames or over `reference`'s (the whole clip a few frames come from);
        with `standardise_z_audio` the audio decoder reads them standardised there, with
        `centre_z_audio` centred there; with `voice_mean_from_w` the voice's mean over them
        is the audio decoder's output at zero z's.
        Returns x_a_hat (B, T, Da), x_v_hat (B, T, Dv).
        """
        return (self.decode_stream(latents, "audio", reference),
                self.decode_stream(latents, "visual", reference))

    def decode_stream(
        self, latents: Latents, stream: str, reference: Latents | None = None
    ) -> Tensor:
        """One stream's half of `decode`: the means of p(x_a_t | ...) ("audio") or of
        p(x_v_t | ...) ("visual"), every t (B, T, D)."""
        decoder = self.decoder_x_a if stream == "audio" else self.decoder_x_v
        zs, w_t = self.decoded_z(latents, stream, reference), self._decoded_w(latents, stream)
        out = decoder(torch.cat([*zs, w_t], dim=-1))
        if stream != "audio" or not self.config.voice_mean_from_w:
            return out
        # voice_mean_from_w: the mean over the window (the reference clip's, when given) is
        # replaced by the decoder's output at zero z's
        if reference is None:
            window = out
        else:
            window = decoder(torch.cat([*self.decoded_z(reference, stream, reference),
                                        self._decoded_w(reference, stream)], dim=-1))
        at_zero = decoder(torch.cat([*(torch.zeros_like(z) for z in zs), w_t], dim=-1))
        return at_zero + out - window.mean(dim=1, keepdim=True)

    def _decoded_w(self, latents: Latents, stream: str) -> Tensor:
        """w as the `stream` decoder reads it, every frame (B, T, Lw)."""
        w_t = frames_of_w(latents.w, latents.z_av.shape[1])
        c = self.config
        if stream == "audio" and (c.voice_reads_w_a_only or c.voice_decoder_detaches_w_v):
            h = self.w_audio_entries
            face = w_t[..., h:]  # the face's part of a per-stream w: hidden, or read detached
            face = torch.zeros_like(face) if c.voice_reads_w_a_only else face.detach()
            w_t = torch.cat([w_t[..., :h], face], dim=-1)
        return w_t

    def decoded_z(
        self, latents: Latents, stream: str, reference: Latents | None = None
    ) -> tuple[Tensor, Tensor]:
        """The two dynamical latents the `stream` decoder reads ("audio": z_av, z_a;
        "visual": z_av, z_v; each (B, T, L)): as they are, or minus their time means over
        `reference` (default: `latents`) with `centre_z`, or for the audio decoder with
        `standardise_z_audio` also divided by sqrt(their variance over time there +
        STANDARDISE_EPS) (per dimension, or its mean over the latent's dimensions:
        `standardise_z_audio_scale`); for the audio decoder with `centre_z_audio`, centred."""
        c = self.config
        groups = ("z_av", "z_a") if stream == "audio" else ("z_av", "z_v")
        zs = tuple(getattr(latents, g) for g in groups)
        standardise = stream == "audio" and c.standardise_z_audio
        if not (c.centre_z or standardise or (stream == "audio" and c.centre_z_audio)):
            return zs
        ref = latents if reference is None else reference
        out = []
        for z, g in zip(zs, groups):
            r = getattr(ref, g)
            z = z - r.mean(dim=1, keepdim=True)
            if standardise:
                var = r.var(dim=1, unbiased=False, keepdim=True)
                if c.standardise_z_audio_scale == "latent":
                    var = var.mean(dim=-1, keepdim=True)
                z = z / (var + STANDARDISE_EPS).sqrt()
            out.append(z)
        return tuple(out)

    def generate(
        self,
        batch: int,
        n_frames: int,
        w: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> Latents:
        """Latents drawn from the generative model: w ~ N(0, I) unless given (B, Lw), and
        each dynamical group by ancestral sampling from its autoregressive prior.
        Pass the result to `decode` for features."""
        w = prior_w(batch, self.config.w_dim, w, like=self.decoder_x_a.logvar, generator=generator)
        authors = self.config.authors_layout is not None
        priors = (
            (self.z_av, self.z_a, self.z_v)
            if authors
            else (self.prior_z_av, self.prior_z_a, self.prior_z_v)
        )
        z_av, z_a, z_v = (p.sample(batch, n_frames, generator=generator)[0] for p in priors)
        return Latents(w, z_av, z_a, z_v)

    interpolate_w = staticmethod(interpolate_w)

    # ---- training objective -------------------------------------------------------------

    def forward(
        self, x_a: Tensor, x_v: Tensor, *, kl_weight: float | KLWeights = 1.0
    ) -> MDVAEOutput:
        """One posterior sample, the reconstructions and the ELBO terms for a batch;
        `kl_weight` scales the KL terms of the loss's `total` (a number: all of them, a KL
        warm-up; `KLWeights`: w and the z's apart, or w alone decoding)."""
        weights = KLWeights.of(kl_weight)
        faceless = voiceless = None
        p_face, p_voice = self.config.w_face_dropout, self.config.w_voice_dropout
        if self.training and (p_face > 0 or p_voice > 0):
            # one draw per sequence: the face hidden below p_face, the voice at 1 - p_voice
            # and above, so no sequence loses both
            u = torch.rand(x_a.shape[0], device=x_a.device)
            faceless = u < p_face if p_face > 0 else None
            voiceless = u >= 1.0 - p_voice if p_voice > 0 else None
        latents, posterior, states = self._infer(
            x_a, x_v, sample=True, noise=None, w=None, z_av=None, z_a=None, z_v=None,
            faceless=faceless, voiceless=voiceless,
        )
        prior = self.priors(latents, states)
        decoded = latents
        if weights.static_only:
            zeros = {g: torch.zeros_like(getattr(latents, g)) for g in ("z_av", "z_a", "z_v")}
            decoded = dataclasses.replace(latents, **zeros)
        x_a_hat, x_v_hat = self.decode(decoded)
        loss = self.elbo(x_a, x_v, x_a_hat, x_v_hat, posterior, prior, kl_weight=weights)
        if self.config.aux_clip_means > 0:
            aux = self.aux_clip_means_term(x_a, x_v, latents.w)
            loss = dataclasses.replace(loss, total=loss.total + self.config.aux_clip_means * aux)
        extra: dict[str, Tensor] = {}
        if self.config.swap_cycle > 0:
            if self.config.swap_cycle_judge == "audio":
                extra["audio_judge"] = self.audio_judge_term(x_a, posterior.w.mean)
                loss = dataclasses.replace(loss, total=loss.total + extra["audio_judge"])
            if x_a.shape[0] > 1:
                extra["swap_cycle"] = self.swap_cycle_term(decoded)
                loss = dataclasses.replace(
                    loss, total=loss.total + self.config.swap_cycle * extra["swap_cycle"]
                )
        return MDVAEOutput(x_a_hat, x_v_hat, latents, posterior, prior, loss, extra)

    def aux_clip_means_term(self, x_a: Tensor, x_v: Tensor, w: Tensor) -> Tensor:
        """-log p(mean_t x_a | w) - log p(mean_t x_v | w) (or the one stream's that
        `aux_clip_means_streams` names) in nats per frame (per sequence, averaged over the
        batch, divided by T): the `aux_clip_means` departure's term."""
        n_frames = x_a.shape[1]
        total = x_a.new_zeros(())
        for name, x in (("aux_x_a", x_a), ("aux_x_v", x_v)):
            head = getattr(self, name, None)
            if head is None:
                continue
            mean_x = x.mean(1, keepdim=True)  # (B, 1, D)
            total = total + head.negative_log_likelihood(mean_x, head(w[:, None])).mean()
        return total / n_frames

    def swap_cycle_term(self, latents: Latents) -> Tensor:
        """-log q(w_other | decode(w_other, z's)) in nats per frame (per sequence, averaged
        over the batch, divided by T), w_other the batch's w rolled by one sequence, q(w)
        with its weights detached: the `swap_cycle` departure's term. Its gradient reaches
        the decoders, the z's and the w decoded, not q(w) as the judge. With the audio judge,
        -log r(w_other | decoded audio), r's weights detached: the visual decoder is not
        asked."""
        w_other = latents.w.roll(1, dims=0)
        swapped = dataclasses.replace(latents, w=w_other)
        if self.config.swap_cycle_judge == "audio":
            judge = self._audio_judge(self.decode_stream(swapped, "audio"), fixed=True)
        else:
            judge = self._posterior_w_fixed(*self.decode(swapped))
        return -judge.log_prob(w_other.detach()).mean() / latents.z_av.shape[1]

    def audio_judge_term(self, x_a: Tensor, w_mean: Tensor) -> Tensor:
        """-log r(w_mean | x_a) in nats per frame (per sequence, averaged over the batch,
        divided by T), w_mean (q(w)'s mean) detached: the audio judge's own training loss,
        whose gradient reaches the judge alone."""
        return -self._audio_judge(x_a).log_prob(w_mean.detach()).mean() / x_a.shape[1]

    def _audio_judge(self, x_a: Tensor, *, fixed: bool = False) -> DiagonalGaussian:
        """r(w | x_a), with detached copies of its weights when `fixed`."""
        run = call_fixed if fixed else nn.Module.__call__
        f_a = run(self.judge_features_x_a, x_a)
        return run(self.judge_w, [run(self.judge_summary_x_a, f_a)], [f_a])

    def _posterior_w_fixed(self, x_a: Tensor, x_v: Tensor) -> DiagonalGaussian:
        """q(w | x_a, x_v) computed with detached copies of its networks' weights."""
        fixed = call_fixed
        f_a = fixed(self.features_x_a, x_a)
        if self.config.authors_layout is not None:
            return fixed(self.posterior_w, [fixed(self.features_x_v, x_v), f_a])
        f_v, g_v = self._face_for_w(x_v, run=fixed)
        return fixed(self.posterior_w, [fixed(self.summary_x_a, f_a), g_v], [f_a, f_v])

    def elbo(
        self,
        x_a: Tensor,
        x_v: Tensor,
        x_a_hat: Tensor,
        x_v_hat: Tensor,
        posterior: LatentDistributions,
        prior: LatentDistributions,
        *,
        kl_weight: float | KLWeights = 1.0,
    ) -> ELBOTerms:
        """Negative ELBO terms in nats per frame (single-sample reconstruction terms,
        closed-form KLs); `total` weighs each KL by its beta times its `kl_weight`."""
        weights = KLWeights.of(kl_weight)
        c = self.config
        rec_audio = reconstruction_term(self.decoder_x_a, x_a, x_a_hat)
        rec_visual = reconstruction_term(self.decoder_x_v, x_v, x_v_hat)
        kl_w = kl_w_term(posterior.w, x_a.shape[1])
        kl_zav = kl_z_term(posterior.z_av, prior.z_av)
        kl_za = kl_z_term(posterior.z_a, prior.z_a)
        kl_zv = kl_z_term(posterior.z_v, prior.z_v)
        w, z = weights.w, weights.z_effective
        total = training_loss(
            [rec_audio, rec_visual],
            [
                (w * c.beta_w, kl_w),
                (z * c.beta_z_av, kl_zav),
                (z * c.beta_z_a, kl_za),
                (weights.z_v_effective * c.beta_z_v, kl_zv),
            ],
        )
        return ELBOTerms(total, rec_audio, rec_visual, kl_w, kl_zav, kl_za, kl_zv)

    def _check_inputs(self, x_a: Tensor, x_v: Tensor) -> None:
        check_sequence("x_a (audio features)", x_a, self.config.audio_dim)
        check_sequence("x_v (visual features)", x_v, self.config.visual_dim)
        if x_a.shape[:2] != x_v.shape[:2]:
            raise MDVAEError(
                f"audio and visual features must have the same batch and number of frames, "
                f"got {tuple(x_a.shape[:2])} and {tuple(x_v.shape[:2])}; trim both streams "
                "to the same length"
            )
