"""DSAE (one modality, static w plus dynamical z) on tiny configurations."""

import math

import pytest
import torch

from mdvae.errors import ConfigError, MDVAEError
from mdvae.model.dsae import DSAE, DSAEConfig, DSAELatents
from mdvae.model.mdvae import AuthorsLayout, MDVAEConfig

TINY = dict(
    input_dim=7,
    w_dim=3,
    z_dim=2,
    feature_dim=8,
    hidden_dim=12,
    rnn_dim=8,
    z_rnn_dim=8,
)
TINY_AUTHORS = AuthorsLayout(
    audio_feature_widths=(),
    z_av_posterior_widths=(9, 5),
    z_av_prior_width=4,
    audio_decoder_widths=(8, 10),
)
LAYOUTS = {"compact": {}, "authors": dict(authors_layout=TINY_AUTHORS)}
B, T = 2, 6


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors gain nothing from a second thread and lose much when cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model(seed=0, layout="compact", **overrides) -> DSAE:
    torch.manual_seed(seed)
    return DSAE(DSAEConfig(**{**TINY, **LAYOUTS[layout], **overrides})).double()


def inputs(seed=0, n_frames=T):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(B, n_frames, TINY["input_dim"], generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("posterior", ["smoothing", "filtering"])
def test_posterior_of_z_t_reads_present_and_future_frames_given_w_and_history(posterior, layout):
    model = tiny_model(layout=layout, posterior=posterior)
    x = inputs()
    with torch.no_grad():
        fixed = model.encode(x, sample=True)
        base = model.infer(x, w=fixed.w, z=fixed.z)[1].z.mean
        for t in range(T):
            for s in range(T):
                x2 = x.clone()
                x2[:, s] += 1.0
                after = model.infer(x2, w=fixed.w, z=fixed.z)[1].z.mean
                moved = (after[:, t] - base[:, t]).abs().max().item() > 1e-6
                expect = s >= t if posterior == "smoothing" else s == t
                assert moved == expect, (t, s)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_decoder_reads_its_own_frame_and_prior_the_strict_past(layout):
    model = tiny_model(layout=layout)
    latents = model.encode(inputs(), sample=True).detach()
    z = latents.z.clone().requires_grad_(True)
    x_hat = model.decode(DSAELatents(latents.w, z))
    p = model.priors(DSAELatents(latents.w, z)).z
    for t in range(T):
        (dec,) = torch.autograd.grad(x_hat[:, t].sum(), z, retain_graph=True)
        (pri,) = torch.autograd.grad(p.mean[:, t].sum(), z, retain_graph=True, allow_unused=True)
        dec_norms = dec.abs().sum((0, 2))
        assert dec_norms[t] > 0 and dec_norms.sum() == dec_norms[t]
        pri_norms = torch.zeros(T) if pri is None else pri.abs().sum((0, 2))
        assert torch.all(pri_norms[:t] > 0) and torch.all(pri_norms[t:] == 0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_encode_means_swap_and_interpolate(layout):
    model = tiny_model(layout=layout)
    with torch.no_grad():
        a, b = model.encode(inputs(0)), model.encode(inputs(1))
        q = model.infer(inputs(0), w=a.w, z=a.z)[1]
        torch.testing.assert_close(a.z, q.z.mean)  # means fed forward
        torch.testing.assert_close(a.w, q.w.mean)
        torch.testing.assert_close(model.decode(a.swap(b, {"w", "z"})), model.decode(b))
        torch.testing.assert_close(model.decode(a.swap(b, set())), model.decode(a))
        sweep = model.interpolate_w(a.w, b.w, T)
        torch.testing.assert_close(sweep[:, 0], a.w)
        torch.testing.assert_close(sweep[:, -1], b.w)
        assert model.decode(DSAELatents(sweep, a.z)).shape == (B, T, 7)
        generated = model.generate(3, 4)
    assert generated.w.shape == (3, 3) and generated.z.shape == (3, 4, 2)
    with pytest.raises(MDVAEError, match="unknown latent group"):
        a.swap(b, {"z_av"})


def test_elbo_terms_and_training_lowers_the_negative_elbo():
    gen = torch.Generator().manual_seed(0)
    n, n_frames = 128, 8
    static = torch.randn(n, 1, 2, generator=gen).expand(-1, n_frames, -1)
    phase = 6.28 * torch.rand(n, 1, 1, generator=gen)
    t = torch.arange(n_frames).view(1, -1, 1)
    dynamic = torch.cat([torch.sin(0.7 * t + phase), torch.cos(0.7 * t + phase)], -1)
    mixing = torch.randn(4, 7, generator=gen) / 2
    x = torch.tanh(torch.cat([static, dynamic], -1) @ mixing) + 0.05 * torch.randn(
        n, n_frames, 7, generator=gen
    )
    torch.manual_seed(0)
    model = DSAE(DSAEConfig(**TINY, obs_logvar_init=-2.0))
    out = model(x)
    loss = out.loss
    torch.testing.assert_close(loss.total, loss.rec + loss.kl_w + loss.kl_z)
    torch.manual_seed(1)
    warm = model(x, kl_weight=0.25).loss
    torch.manual_seed(1)
    full = model(x).loss
    torch.testing.assert_close(warm.total, full.rec + 0.25 * (full.kl_w + full.kl_z))
    torch.testing.assert_close(loss.kl_w, out.posterior.w.kl_standard_normal().mean() / n_frames)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)

    def negative_elbo():
        with torch.no_grad():
            return sum(float(model(x).loss.negative_elbo) for _ in range(4)) / 4

    start = negative_elbo()
    for _ in range(150):
        batch = torch.randint(0, n, (32,), generator=gen)
        optimiser.zero_grad()
        model(x[batch]).loss.total.backward()
        optimiser.step()
    end = negative_elbo()
    var = x.reshape(-1, 7).var(0)
    baseline = float(0.5 * (torch.log(2 * math.pi * var) + 1).sum())  # best latent-free fit
    assert end < start - 8, (start, end)
    assert end < baseline - 2, (end, baseline)


def test_config_from_mdvae_and_validation():
    audio = DSAEConfig.preset("mead", "audio")
    visual = DSAEConfig.preset("mead", "visual")
    assert (audio.input_dim, audio.z_dim, audio.w_dim) == (512, 24, 84)
    assert (visual.input_dim, visual.z_dim, visual.hidden_dim) == (2048, 20, 256)
    small = DSAEConfig.from_mdvae(MDVAEConfig.preset("synthetic"), "visual", beta_z=0.5)
    assert DSAEConfig.from_dict(small.to_dict()) == small
    with pytest.raises(ConfigError, match="modality"):
        DSAEConfig(modality="text")
    # a like-for-like baseline takes the MDVAE's dropout on q(w)'s inputs, and drops them in
    # training only
    dropping = MDVAEConfig.preset("synthetic", w_input_dropout=0.3)
    assert DSAEConfig.from_mdvae(dropping, "audio").w_input_dropout == 0.3
    with pytest.raises(ConfigError, match="w_input_dropout"):
        DSAEConfig(w_input_dropout=-0.1)
    model, x = tiny_model(w_input_dropout=0.5), inputs()
    q_eval = model.eval().infer(x, sample=False)[1].w.mean
    torch.testing.assert_close(model.infer(x, sample=False)[1].w.mean, q_eval)
    torch.manual_seed(0)
    assert not torch.allclose(model.train().infer(x, sample=False)[1].w.mean, q_eval)
    with pytest.raises(MDVAEError, match=r"\(batch, frames, 7\)"):
        tiny_model()(torch.zeros(2, 3, 5, dtype=torch.float64))


def test_authors_preset_and_its_training_priors():
    """The authors' layout for one stream: the stream's widths, and the priors that training
    reads off the posterior loop's GRU states equal the fused GRU call over the samples."""
    audio = DSAEConfig.preset("authors", "audio")
    visual = DSAEConfig.preset("authors", "visual")
    assert (audio.z_dim, visual.z_dim, audio.rnn_dim, audio.z_rnn_dim) == (24, 20, 256, 128)
    assert audio.posterior == "filtering" and audio.authors_layout == AuthorsLayout()
    assert DSAEConfig.from_dict(visual.to_dict()) == visual
    model = tiny_model(layout="authors")
    torch.manual_seed(0)
    out = model(inputs())
    refit = model.priors(out.latents)
    torch.testing.assert_close(refit.z.mean, out.prior.z.mean)
    torch.testing.assert_close(refit.z.logvar, out.prior.z.logvar)
