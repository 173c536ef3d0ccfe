"""The disentangled sequential autoencoder (DSAE, Li & Mandt 2018) on one modality.

The unimodal baseline of MDVAE (A-DSAE on audio features, V-DSAE on visual features),
built from the same parts:

    p(w) = N(0, I),  p(z_t | z_1:t-1) autoregressive,  p(x_t | z_t, w) per frame
    q(w | x_1:T),    q(z_t | z_1:t-1, x_t:T, w)

ELBO terms are normalised as in MDVAE (`elbo.py`): nats per frame, the w KL divided by T as
well.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mdvae.config import ConfigBase
from mdvae.errors import ConfigError
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
from mdvae.model.mdvae import AuthorsLayout, MDVAEConfig, check_stage2_config
from mdvae.model.observation import GaussianDecoder, check_sequence, mlp
from mdvae.model.posteriors import PosteriorRecurrence, StaticPosterior, make_summary
from mdvae.model.priors import AutoregressivePrior, prior_w
from mdvae.model.shared_gru import BiGRUStaticPosterior, SharedGRULatent, run_shared_posteriors

MODALITIES = ("audio", "visual")


@dataclass
class DSAEConfig(ConfigBase):
    modality: str = "audio"  # the stream it models: "audio" (A-DSAE) or "visual" (V-DSAE)
    input_dim: int = 512  # x_t: per-frame stage-1 features of that stream
    w_dim: int = 84  # static latent w
    z_dim: int = 24  # dynamical latent z_t
    feature_dim: int = 128  # per-frame features read by the inference networks
    hidden_dim: int = 128  # hidden width of the feature MLP and the decoder
    decoder_hidden: int | None = None  # hidden width of the decoder alone; None: hidden_dim
    rnn_dim: int = 64  # backward summary of x_t:T (LSTM) and the q(w) hidden layer
    z_rnn_dim: int = 64  # recurrences over z: prior LSTM, posterior tanh RNN
    posterior: str = "smoothing"  # "smoothing" q(z_t | ., x_t:T) or "filtering" q(z_t | ., x_t)
    obs_logvar_init: float = 0.0  # initial log-variance of each observed dimension
    learn_obs_variance: bool = True  # False keeps the variance at exp(obs_logvar_init)
    obs_logvar_min: float = -6.0  # floor on the observation log-variance
    # True: each training batch sets the log-variances to their maximum-likelihood value
    # (the mean squared residual per dimension), kept as a running average for evaluation,
    # instead of learning them by gradient (GaussianDecoder)
    optimal_obs_variance: bool = False
    beta_w: float = 1.0  # weight of KL(q(w) || p(w)); 1 is the ELBO
    beta_z: float = 1.0  # weight of the z KLs; 1 is the ELBO
    # dropout on the vector q(w)'s head reads, in training only (MDVAEConfig.w_input_dropout,
    # a departure; 0 is the seed's model)
    w_input_dropout: float = 0.0
    # None: the compact layout; else the authors' layout (`AuthorsLayout`), with the stream's
    # feature and decoder widths and the z_av posterior and prior widths for z
    authors_layout: AuthorsLayout | None = None

    def __post_init__(self):
        check_stage2_config(self)
        if self.modality not in MODALITIES:
            raise ConfigError(
                f"config key 'modality': {self.modality!r} is not one of {MODALITIES}"
            )

    @classmethod
    def from_mdvae(cls, config: MDVAEConfig, modality: str, **overrides) -> DSAEConfig:
        """The unimodal counterpart of an MDVAE configuration: same w, and one z as large as
        the audiovisual plus the modality-specific latent (16 + 8 for audio, 16 + 4 for
        visual at the MEAD sizes), with that stream's widths."""
        if modality not in MODALITIES:
            raise ConfigError(f"modality must be one of {MODALITIES}, got {modality!r}")
        audio = modality == "audio"
        fields = dict(
            modality=modality,
            input_dim=config.audio_dim if audio else config.visual_dim,
            w_dim=config.w_dim,
            z_dim=config.z_av_dim + (config.z_a_dim if audio else config.z_v_dim),
            feature_dim=config.feature_dim,
            hidden_dim=config.audio_hidden if audio else config.visual_hidden,
            decoder_hidden=config.audio_decoder_hidden if audio else config.visual_decoder_hidden,
            rnn_dim=config.rnn_dim,
            z_rnn_dim=config.z_rnn_dim,
            posterior=config.posterior,
            obs_logvar_init=config.obs_logvar_init,
            learn_obs_variance=config.learn_obs_variance,
            obs_logvar_min=config.obs_logvar_min,
            optimal_obs_variance=config.optimal_obs_variance,
            w_input_dropout=config.w_input_dropout,
            authors_layout=config.authors_layout,
        )
        return cls(**{**fields, **overrides})

    @classmethod
    def preset(cls, name: str, modality: str, **overrides) -> DSAEConfig:
        """The DSAE matching the MDVAE preset `name` ("mead", "synthetic" or "authors")."""
        return cls.from_mdvae(MDVAEConfig.preset(name), modality, **overrides)


@dataclass
class DSAELatents(LatentGroups):
    w: Tensor  # (B, Lw), or (B, T, Lw) per frame
    z: Tensor  # (B, T, Lz)


@dataclass
class DSAEDistributions:
    w: DiagonalGaussian  # (B, Lw)
    z: DiagonalGaussian  # (B, T, Lz)


@dataclass
class DSAEELBOTerms(ELBOBreakdown):
    """Negative ELBO parts in nats per frame; `total` applies the betas."""

    total: Tensor
    rec: Tensor  # -E_q log p(x | z, w)
    kl_w: Tensor  # KL(q(w | x) || N(0, I)), once per sequence
    kl_z: Tensor  # sum_t KL(q(z_t | ...) || p(z_t | z_1:t-1))


@dataclass
class DSAEOutput:
    x_hat: Tensor  # (B, T, D) mean of p(x_t | z_t, w)
    latents: DSAELatents
    posterior: DSAEDistributions
    prior: DSAEDistributions
    loss: DSAEELBOTerms


class DSAE(nn.Module):
    """DSAE on (B, T, input_dim) feature sequences of one modality."""

    def __init__(self, config: DSAEConfig):
        super().__init__()
        self.config = config
        c = config
        if c.authors_layout is not None:
            self._build_authors_layout(c, c.authors_layout)
            return
        self.features_x = mlp([c.input_dim, c.hidden_dim, c.feature_dim], final_activation=True)
        self.summary_x = make_summary(c.posterior, c.feature_dim, c.rnn_dim)  # f(x_t:T)
        self.posterior_w = StaticPosterior(
            c.rnn_dim + c.feature_dim, c.rnn_dim, c.w_dim, c.w_input_dropout
        )
        self.posterior_z = PosteriorRecurrence(c.rnn_dim + c.w_dim, c.z_dim, c.z_rnn_dim)
        self.prior_z = AutoregressivePrior(c.z_dim, c.z_rnn_dim)
        self.decoder_x = GaussianDecoder(
            c.z_dim + c.w_dim,
            c.decoder_hidden or c.hidden_dim,
            c.input_dim,
            logvar_init=c.obs_logvar_init,
            learn_logvar=c.learn_obs_variance,
            logvar_min=c.obs_logvar_min,
            optimal_logvar=c.optimal_obs_variance,
        )

    def _build_authors_layout(self, c: DSAEConfig, a: AuthorsLayout) -> None:
        """The authors' networks for one stream (`AuthorsLayout`, as in MDVAE)."""
        audio = c.modality == "audio"
        widths = a.audio_feature_widths if audio else a.visual_feature_widths
        self.features_x = mlp([c.input_dim, *widths], activation="relu", final_activation=True)
        f = widths[-1] if widths else c.input_dim
        self.posterior_w = BiGRUStaticPosterior(f, c.rnn_dim, c.w_dim, c.w_input_dropout)
        if c.posterior == "smoothing":
            self.summary_x = make_summary("smoothing", f, c.rnn_dim)  # f(x_t:T)
            f = c.rnn_dim
        self.z = SharedGRULatent(
            f + c.w_dim, c.z_dim, c.z_rnn_dim, a.z_av_posterior_widths, a.z_av_prior_width
        )
        self.decoder_x = GaussianDecoder(
            c.z_dim + c.w_dim,
            a.audio_decoder_widths if audio else a.visual_decoder_widths,
            c.input_dim,
            activation="tanh" if audio else "relu",
            logvar_init=c.obs_logvar_init,
            learn_logvar=c.learn_obs_variance,
            logvar_min=c.obs_logvar_min,
            optimal_logvar=c.optimal_obs_variance,
        )

    def infer(
        self,
        x: Tensor,
        *,
        sample: bool = True,
        noise: DSAELatents | None = None,
        w: Tensor | None = None,
        z: Tensor | None = None,
    ) -> tuple[DSAELatents, DSAEDistributions]:
        """Posterior latents and distributions for x (B, T, D); as `MDVAE.infer`."""
        return self._infer(x, sample=sample, noise=noise, w=w, z=z)[:2]

    def _infer(self, x, *, sample, noise, w, z):
        """`infer`, plus (authors' layout) the GRU states of z, which the prior reads."""
        check_sequence(f"x ({self.config.modality} features)", x, self.config.input_dim)
        f = self.features_x(x)  # (B, T, F)
        if self.config.authors_layout is not None:
            q_w = self.posterior_w([f])  # (B, Lw)
            if w is None:
                w = q_w.rsample(noise.w if noise is not None else None) if sample else q_w.mean
            g = self.summary_x(f) if self.config.posterior == "smoothing" else f  # (B, T, H)
            [(z, q_z, states)] = run_shared_posteriors(
                [self.z],
                [self.z.condition([g, w])],
                zs=[z],
                noises=[noise.z if noise is not None else None],
                sample=sample,
            )
            return DSAELatents(w, z), DSAEDistributions(q_w, q_z), states
        g = self.summary_x(f)  # (B, T, H)
        q_w = self.posterior_w([g], [f])  # (B, Lw)
        if w is None:
            w = q_w.rsample(noise.w if noise is not None else None) if sample else q_w.mean
        cond = torch.cat([g, frames_of_w(w, x.shape[1])], dim=-1)  # (B, T, H + Lw)
        z, q_z = self.posterior_z(
            cond, z=z, noise=noise.z if noise is not None else None, sample=sample
        )
        return DSAELatents(w, z), DSAEDistributions(q_w, q_z), None

    def encode(self, x: Tensor, sample: bool = False) -> DSAELatents:
        """Latents of x (B, T, D): posterior means (fed forward through the recurrence)
        unless `sample`."""
        return self.infer(x, sample=sample)[0]

    def priors(self, latents: DSAELatents, states: Tensor | None = None) -> DSAEDistributions:
        """p(w) = N(0, I) and p(z_t | z_1:t-1) at the given latent sequence; `states` are the
        GRU states over it when known (authors' layout)."""
        if self.config.authors_layout is None:
            p_z = self.prior_z(latents.z)
        else:
            p_z = self.z.prior(latents.z) if states is None else self.z.prior_from_states(states)
        return DSAEDistributions(
            DiagonalGaussian.standard(tuple(latents.w.shape), like=latents.w), p_z
        )

    def decode(self, latents: DSAELatents) -> Tensor:
        """Mean of p(x_t | z_t, w) for every t: (B, T, D); w may be (B, Lw) or (B, T, Lw)."""
        w_t = frames_of_w(latents.w, latents.z.shape[1])  # (B, T, Lw)
        return self.decoder_x(torch.cat([latents.z, w_t], dim=-1))

    def generate(
        self,
        batch: int,
        n_frames: int,
        w: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> DSAELatents:
        """w ~ N(0, I) unless given (B, Lw), z by ancestral sampling from its prior."""
        w = prior_w(batch, self.config.w_dim, w, like=self.decoder_x.logvar, generator=generator)
        prior = self.z if self.config.authors_layout is not None else self.prior_z
        z, _ = prior.sample(batch, n_frames, generator=generator)
        return DSAELatents(w, z)

    interpolate_w = staticmethod(interpolate_w)

    def forward(self, x: Tensor, *, kl_weight: float | KLWeights = 1.0) -> DSAEOutput:
        """One posterior sample, the reconstruction and the ELBO terms for a batch;
        `kl_weight` scales the KL terms of the loss's `total` (as `MDVAE.forward`)."""
        weights = KLWeights.of(kl_weight)
        latents, posterior, states = self._infer(x, sample=True, noise=None, w=None, z=None)
        prior = self.priors(latents, states)
        decoded = latents
        if weights.static_only:
            decoded = dataclasses.replace(latents, z=torch.zeros_like(latents.z))
        x_hat = self.decode(decoded)
        c = self.config
        rec = reconstruction_term(self.decoder_x, x, x_hat)
        kl_w = kl_w_term(posterior.w, x.shape[1])
        kl_z = kl_z_term(posterior.z, prior.z)
        total = training_loss(
            [rec], [(weights.w * c.beta_w, kl_w), (weights.z_effective * c.beta_z, kl_z)]
        )
        return DSAEOutput(x_hat, latents, posterior, prior, DSAEELBOTerms(total, rec, kl_w, kl_z))
