"""MDVAE behaviour on tiny configurations: the seed's dependency structure checked
numerically, ELBO bookkeeping, training on a known latent process, and the operations
(encode with mean propagation, swap, interpolate, generate)."""

import dataclasses
import math

import pytest
import torch

from mdvae.errors import ConfigError, MDVAEError
from mdvae.model.elbo import KLWeights
from mdvae.model.gaussian import DiagonalGaussian
from mdvae.model.mdvae import MDVAE, STANDARDISE_EPS, AuthorsLayout, Latents, MDVAEConfig
from mdvae.model.posteriors import run_posteriors

GROUPS = ("w", "z_av", "z_a", "z_v")
TINY = dict(
    audio_dim=6,
    visual_dim=10,
    w_dim=3,
    z_av_dim=2,
    z_a_dim=2,
    z_v_dim=2,
    feature_dim=8,
    audio_hidden=12,
    visual_hidden=12,
    rnn_dim=8,
    z_rnn_dim=8,
)
# the authors' layout at tiny widths: GRUs shared by prior and posterior, two-layer heads
TINY_AUTHORS = AuthorsLayout(
    audio_feature_widths=(),
    visual_feature_widths=(9, 7),
    z_av_posterior_widths=(10, 6),
    z_a_posterior_widths=(8, 5),
    z_v_posterior_widths=(9, 6),
    z_av_prior_width=5,
    z_a_prior_width=4,
    z_v_prior_width=6,
    audio_decoder_widths=(8, 9),
    visual_decoder_widths=(9, 11),
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


def tiny_model(seed=0, dtype=torch.float64, layout="compact", **overrides) -> MDVAE:
    torch.manual_seed(seed)
    return MDVAE(MDVAEConfig(**{**TINY, **LAYOUTS[layout], **overrides})).to(dtype)


def prior_of(model, group):
    """(p(z_t | z_1:t-1) of a group as a function of a given sequence, its ancestral
    sampler), in either layout."""
    if model.config.authors_layout is not None:
        module = getattr(model, group)
        return module.prior, module.sample
    module = getattr(model, f"prior_{group}")
    return module, module.sample


def inputs(seed=0, dtype=torch.float64, batch=B, n_frames=T):
    gen = torch.Generator().manual_seed(seed)
    x_a = torch.randn(batch, n_frames, TINY["audio_dim"], generator=gen, dtype=dtype)
    x_v = torch.randn(batch, n_frames, TINY["visual_dim"], generator=gen, dtype=dtype)
    return x_a, x_v


def posterior_params(model, x_a, x_v, fixed: Latents) -> dict[str, torch.Tensor]:
    """Posterior parameters of every group with w and all z histories held at `fixed`."""
    _, q = model.infer(x_a, x_v, w=fixed.w, z_av=fixed.z_av, z_a=fixed.z_a, z_v=fixed.z_v)
    return {g: torch.cat([getattr(q, g).mean, getattr(q, g).logvar], -1) for g in GROUPS}


def perturbed(x, frames):
    x = x.clone()
    x[:, frames] += 1.0 + torch.rand_like(x[:, frames])
    return x


def grads(target, leaves):
    """d target / d leaf for each leaf; zeros where the graph does not reach the leaf."""
    found = torch.autograd.grad(target, leaves, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(leaves, found)]


def changed(a, b):
    return (a - b).abs().max().item() > 1e-6


# ---- dependency structure ------------------------------------------------------------


@pytest.mark.parametrize("stream", ["audio", "visual"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_smoothing_posteriors_depend_on_present_and_future_frames_only(stream, layout):
    model = tiny_model(layout=layout)
    x_a, x_v = inputs()
    with torch.no_grad():
        fixed = model.encode(x_a, x_v, sample=True)
        base = posterior_params(model, x_a, x_v, fixed)
        # the audio-only posterior sees the audio stream only, and vice versa
        own = "z_a" if stream == "audio" else "z_v"
        other = "z_v" if stream == "audio" else "z_a"
        for t in range(T):
            for frames, expect in ((slice(0, t), False), (slice(t, T), True), ([t], True)):
                if frames == slice(0, 0):
                    continue
                if stream == "audio":
                    after = posterior_params(model, perturbed(x_a, frames), x_v, fixed)
                else:
                    after = posterior_params(model, x_a, perturbed(x_v, frames), fixed)
                for group in ("z_av", own):
                    assert changed(after[group][:, t], base[group][:, t]) == expect, (
                        group,
                        t,
                        frames,
                    )
                # given z_av and w, the other stream's posterior ignores this stream entirely
                torch.testing.assert_close(after[other], base[other], rtol=0, atol=0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_past_frames_reach_posteriors_through_w(layout):
    """Counter-check of the test above: with w inferred rather than held, x_1 moves q(z_T)."""
    model = tiny_model(layout=layout)
    x_a, x_v = inputs()
    with torch.no_grad():
        fixed = model.encode(x_a, x_v, sample=True)
        history = dict(z_av=fixed.z_av, z_a=fixed.z_a, z_v=fixed.z_v)
        _, q1 = model.infer(x_a, x_v, sample=False, **history)
        _, q2 = model.infer(perturbed(x_a, [0]), x_v, sample=False, **history)
    assert changed(q1.z_av.mean[:, -1], q2.z_av.mean[:, -1])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_filtering_posteriors_depend_on_the_present_frame_only(layout):
    model = tiny_model(layout=layout, posterior="filtering")
    x_a, x_v = inputs()
    with torch.no_grad():
        fixed = model.encode(x_a, x_v, sample=True)
        base = posterior_params(model, x_a, x_v, fixed)
        for t in range(T):
            for s in range(T):
                after = posterior_params(model, perturbed(x_a, [s]), perturbed(x_v, [s]), fixed)
                for group in ("z_av", "z_a", "z_v"):
                    assert changed(after[group][:, t], base[group][:, t]) == (s == t)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_posterior_at_t_depends_on_the_past_of_its_own_group_only(layout):
    model = tiny_model(layout=layout)
    x_a, x_v = inputs()
    fixed = model.encode(x_a, x_v, sample=True).detach()
    z = {g: getattr(fixed, g).clone().requires_grad_(True) for g in ("z_av", "z_a", "z_v")}
    _, q = model.infer(x_a, x_v, w=fixed.w, **z)
    for t in range(T):
        for group in ("z_av", "z_a", "z_v"):
            out = getattr(q, group)
            target = (out.mean[:, t] + out.logvar[:, t]).sum()
            for name, grad in zip(z, grads(target, list(z.values()))):
                norms = grad.abs().sum((0, 2))  # (T,) influence of each frame of that group
                if name == group:
                    # z_1:t-1 of its own group, nothing from z_t onwards
                    assert torch.all(norms[:t] > 0) and torch.all(norms[t:] == 0), (group, t)
                elif group in ("z_a", "z_v") and name == "z_av":
                    # z_av_t enters q(z_a_t) and q(z_v_t), no other frame of it
                    assert norms[t] > 0 and norms.sum() == norms[t], (group, t)
                else:
                    assert torch.all(norms == 0), (group, name, t)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_priors_depend_on_the_strict_past_only(layout):
    model = tiny_model(layout=layout)
    gen = torch.Generator().manual_seed(5)
    for group, dim in (("z_av", 2), ("z_a", 2), ("z_v", 2)):
        prior, _ = prior_of(model, group)
        z = torch.randn(B, T, dim, generator=gen, dtype=torch.float64, requires_grad=True)
        p = prior(z)
        for t in range(T):
            (grad,) = grads((p.mean[:, t] + p.logvar[:, t]).sum(), [z])
            norms = grad.abs().sum((0, 2))
            assert torch.all(norms[:t] > 0) and torch.all(norms[t:] == 0), (group, t)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_decoders_read_the_latents_of_their_own_frame_and_w_only(layout):
    model = tiny_model(layout=layout)
    x_a, x_v = inputs()
    latents = model.encode(x_a, x_v, sample=True).detach()
    leaves = {g: getattr(latents, g).clone().requires_grad_(True) for g in GROUPS}
    x_a_hat, x_v_hat = model.decode(Latents(**leaves))
    for t in range(T):
        for out, uses, ignores in (
            (x_a_hat, ("z_av", "z_a"), "z_v"),
            (x_v_hat, ("z_av", "z_v"), "z_a"),
        ):
            found = dict(zip(GROUPS, grads(out[:, t].sum(), list(leaves.values()))))
            assert found["w"].abs().sum() > 0
            for group in uses:
                norms = found[group].abs().sum((0, 2))
                assert norms[t] > 0 and norms.sum() == norms[t]
            assert torch.all(found[ignores] == 0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_centred_decoders_ignore_a_constant_added_to_any_z(layout):
    """centre_z: an offset constant over time, added to a z sequence, changes neither
    reconstruction (in float64 only rounding: the offset cancels exactly in z - mean);
    without it the same offset moves them, so the check can fail."""
    x_a, x_v = inputs()
    for centre in (True, False):
        model = tiny_model(layout=layout, centre_z=centre)
        with torch.no_grad():
            latents = model.encode(x_a, x_v, sample=True)
            base = model.decode(latents)
            for group in ("z_av", "z_a", "z_v"):
                z = getattr(latents, group)
                offset = 3.0 * torch.randn(B, 1, z.shape[-1], dtype=z.dtype)  # per clip
                moved = model.decode(dataclasses.replace(latents, **{group: z + offset}))
                for out, out0 in zip(moved, base):
                    if centre:
                        torch.testing.assert_close(out, out0, rtol=0, atol=1e-10)
                # the offset reaches (at least) the decoder(s) that read this group
                assert changed(torch.cat(moved, -1), torch.cat(base, -1)) is not centre


def test_centred_decoders_read_deviations_from_the_clip_mean():
    """Each frame decodes as the uncentred model would at z_t minus the time mean; a few
    frames of a clip decoded with the clip as `reference` equal the whole clip's frames."""
    centred = tiny_model(centre_z=True)
    plain = tiny_model(centre_z=False)  # same seed: the same weights
    x_a, x_v = inputs()
    with torch.no_grad():
        latents = centred.encode(x_a, x_v, sample=True)
        shifted = dataclasses.replace(
            latents,
            **{g: getattr(latents, g) - getattr(latents, g).mean(1, keepdim=True)
               for g in ("z_av", "z_a", "z_v")},
        )
        for got, want in zip(centred.decode(latents), plain.decode(shifted)):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
        whole = centred.decode(latents)
        frames = dataclasses.replace(
            latents, **{g: getattr(latents, g)[:, 2:4] for g in ("z_av", "z_a", "z_v")}
        )
        for got, want in zip(centred.decode(frames, reference=latents), whole):
            torch.testing.assert_close(got, want[:, 2:4], rtol=0, atol=1e-12)
        # without the reference the two frames are centred on their own mean: different
        assert changed(centred.decode(frames)[1], whole[1][:, 2:4])


def standardised(z, ref=None):
    """z minus its time mean over `ref`, divided by sqrt(its variance there + eps)."""
    ref = z if ref is None else ref
    var = ((ref - ref.mean(1, keepdim=True)) ** 2).mean(1, keepdim=True)
    return (z - ref.mean(1, keepdim=True)) / torch.sqrt(var + STANDARDISE_EPS)


@pytest.mark.parametrize("centre", [False, True])
def test_standardised_audio_decoder_reads_z_av_and_z_a_standardised_over_time(centre):
    """standardise_z_audio: the audio decoder decodes as the seed's model would at z_av and
    z_a standardised over the window (written out here); the visual decoder reads them as
    centre_z says; a few frames decoded with their clip as `reference` are the clip's."""
    model = tiny_model(standardise_z_audio=True, centre_z=centre)
    plain = tiny_model()  # same seed: the same weights
    x_a, x_v = inputs()
    with torch.no_grad():
        latents = model.encode(x_a, x_v, sample=True)
        groups = ("z_av", "z_a", "z_v")
        for_audio = dataclasses.replace(
            latents, **{g: standardised(getattr(latents, g)) for g in groups})
        centred = {g: getattr(latents, g) - getattr(latents, g).mean(1, keepdim=True)
                   for g in groups}
        for_visual = dataclasses.replace(latents, **centred) if centre else latents
        got_a, got_v = model.decode(latents)
        torch.testing.assert_close(got_a, plain.decode(for_audio)[0], rtol=0, atol=1e-12)
        torch.testing.assert_close(got_v, plain.decode(for_visual)[1], rtol=0, atol=1e-12)
        assert changed(got_a, plain.decode(latents)[0])
        frames = dataclasses.replace(latents, **{g: getattr(latents, g)[:, 2:4] for g in groups})
        for got, want in zip(model.decode(frames, reference=latents), (got_a, got_v)):
            torch.testing.assert_close(got, want[:, 2:4], rtol=0, atol=1e-12)


def test_audio_decoder_alone_reads_centred_z_with_centre_z_audio():
    """centre_z_audio: the audio decoder decodes as the seed's model would at z_av and z_a
    minus their time means, the visual decoder as the seed's model at the z's as they are;
    an offset constant over time added to z_av or z_a leaves the voice exactly as it was."""
    model = tiny_model(centre_z_audio=True)
    plain = tiny_model()  # same seed: the same weights
    x_a, x_v = inputs()
    with torch.no_grad():
        latents = model.encode(x_a, x_v, sample=True)
        centred = dataclasses.replace(
            latents, **{g: getattr(latents, g) - getattr(latents, g).mean(1, keepdim=True)
                        for g in ("z_av", "z_a", "z_v")})
        got_a, got_v = model.decode(latents)
        torch.testing.assert_close(got_a, plain.decode(centred)[0], rtol=0, atol=1e-12)
        torch.testing.assert_close(got_v, plain.decode(latents)[1], rtol=0, atol=1e-12)
        assert changed(got_a, plain.decode(latents)[0])
        for group in ("z_av", "z_a"):
            z = getattr(latents, group)
            offset = 3.0 * torch.randn(B, 1, z.shape[-1], dtype=z.dtype)
            moved_a, moved_v = model.decode(dataclasses.replace(latents, **{group: z + offset}))
            torch.testing.assert_close(moved_a, got_a, rtol=0, atol=1e-10)
            if group == "z_av":  # the face's decoder still reads the offset
                assert changed(moved_v, got_v)


def test_voice_mean_from_w_takes_the_voices_window_mean_from_w_alone():
    """voice_mean_from_w: the voice decodes as the decoder at zero z's plus each frame's
    departure from the plain decoding's window mean (written out here); its mean over time
    is a function of w alone, so the z's of another clip leave it exactly as it was while
    still moving the frames; the face decodes as the seed's model; a few frames decoded
    with the whole clip as reference are those frames of the whole clip's decoding."""
    model = tiny_model(voice_mean_from_w=True)
    plain = tiny_model()  # same seed: the same weights
    x_a, x_v = inputs()
    with torch.no_grad():
        latents = model.encode(x_a, x_v, sample=True)
        got_a, got_v = model.decode(latents)
        plain_a, plain_v = plain.decode(latents)
        zero = {g: torch.zeros_like(getattr(latents, g)) for g in ("z_av", "z_a", "z_v")}
        at_zero = plain.decode(dataclasses.replace(latents, **zero))[0]
        want = at_zero + plain_a - plain_a.mean(1, keepdim=True)
        torch.testing.assert_close(got_a, want, rtol=0, atol=1e-12)
        torch.testing.assert_close(got_v, plain_v, rtol=0, atol=1e-12)
        other = model.encode(x_a.flip(0), x_v.flip(0), sample=True)
        mixed = dataclasses.replace(other, w=latents.w)
        moved_a = model.decode(mixed)[0]
        torch.testing.assert_close(moved_a.mean(1), got_a.mean(1), rtol=0, atol=1e-10)
        assert changed(moved_a, got_a)
        frames = dataclasses.replace(
            latents, **{g: getattr(latents, g)[:, 2:4] for g in ("z_av", "z_a", "z_v")})
        for got, want in zip(model.decode(frames, reference=latents), (got_a, got_v)):
            torch.testing.assert_close(got, want[:, 2:4], rtol=0, atol=1e-12)


def test_latent_scale_standardises_a_latent_by_one_spread_for_all_its_dimensions():
    """standardise_z_audio_scale="latent": the audio decoder reads each z centred and divided
    by sqrt(the mean over its dimensions of their variances over time + eps) (written out
    here); a whole latent scaled by k reads as if unscaled, up to eps's share, and one
    dimension scaled alone changes what the others read (per dimension, it would not)."""
    model = tiny_model(standardise_z_audio=True, standardise_z_audio_scale="latent")
    plain = tiny_model()
    x_a, x_v = inputs()
    with torch.no_grad():
        latents = model.encode(x_a, x_v, sample=True)

        def one_spread(z):
            d = z - z.mean(1, keepdim=True)
            return d / torch.sqrt((d ** 2).mean((1, 2), keepdim=True) + STANDARDISE_EPS)

        expected = dataclasses.replace(
            latents, **{g: one_spread(getattr(latents, g)) for g in ("z_av", "z_a")})
        got = model.decode_stream(latents, "audio")
        torch.testing.assert_close(got, plain.decode_stream(expected, "audio"), rtol=0,
                                   atol=1e-12)
        # z -> k z reads as d / sqrt(v), d = z minus its mean, v its dimensions' mean
        # variance (eps's share vanishes): within |d| / sqrt(v) * eps / (2 k^2 v) of it
        k, z_a = 1e3, latents.z_a
        d = z_a - z_a.mean(1, keepdim=True)
        v = (d ** 2).mean((1, 2), keepdim=True)
        read = model.decoded_z(dataclasses.replace(latents, z_a=k * z_a), "audio")[1]
        bound = (d.abs() / v.sqrt() * STANDARDISE_EPS / (2 * k * k * v)).max().item()
        torch.testing.assert_close(read, d / v.sqrt(), rtol=0, atol=bound + 1e-12)
        # one dimension alone scaled by k changes what the others read: not per dimension
        one = z_a.clone()
        one[..., 0] *= k
        read_one = model.decoded_z(dataclasses.replace(latents, z_a=one), "audio")[1]
        plain_read = model.decoded_z(latents, "audio")[1]
        assert changed(read_one[..., 1:], plain_read[..., 1:])
    with pytest.raises(ConfigError, match="standardise_z_audio_scale"):
        tiny_model(standardise_z_audio=True, standardise_z_audio_scale="time")


def test_standardised_audio_decoder_does_not_read_the_height_of_voiced_frames():
    """The leak `standardise_z_audio` closes: a z_a at c on unvoiced frames and c + g on
    voiced ones (a share p of them), g set by the clip's pitch level. Centred, its voiced
    frames read (1 - p) g, which tells g; standardised they read
    sqrt((1 - p) / p) / sqrt(1 + eps / (g^2 p (1 - p))), within eps / (2 g^2 p (1 - p))
    of the same number whatever g is."""
    voiced = torch.tensor([0, 1, 1, 0, 1, 1, 1, 0], dtype=torch.float64)  # p = 5 / 8
    p = voiced.mean().item()
    reads = {}
    for g in (2.0, 6.0):
        z_a = (0.7 + g * voiced).reshape(1, -1, 1).repeat(1, 1, 2)  # (B, T, L)
        zeros = torch.zeros(1, 8, 2, dtype=torch.float64)
        latents = Latents(torch.zeros(1, 3, dtype=torch.float64), zeros, z_a, zeros)
        for std in (False, True):
            model = tiny_model(standardise_z_audio=std, centre_z=True)
            read = model.decoded_z(latents, "audio")[1][0, voiced.bool(), 0]
            assert torch.allclose(read, read[0].expand_as(read), rtol=0, atol=1e-12)
            reads[g, std] = read[0].item()
        assert reads[g, False] == pytest.approx((1 - p) * g, abs=1e-12)
        expected = math.sqrt((1 - p) / p) / math.sqrt(1 + STANDARDISE_EPS / (g * g * p * (1 - p)))
        assert reads[g, True] == pytest.approx(expected, abs=1e-12)
    assert reads[6.0, False] - reads[2.0, False] == pytest.approx((1 - p) * 4.0, abs=1e-12)
    bound = STANDARDISE_EPS / (2 * 2.0**2 * p * (1 - p))
    assert abs(reads[6.0, True] - reads[2.0, True]) < bound


@pytest.mark.parametrize("streams", ["both", "audio", "visual"])
def test_aux_clip_means_adds_a_likelihood_of_the_window_means_given_w_outside_the_elbo(streams):
    """aux_clip_means: the loss gains weight * (-log N(mean_t x | head(w), diag exp(logvar)))
    per stream that aux_clip_means_streams names (the other's head is not built), per
    sequence / T; the ELBO terms are those of the same model without it, and the term's
    gradient reaches q(w) but no z posterior."""
    weight = 2.5
    model = tiny_model(aux_clip_means=weight, aux_clip_means_streams=streams)
    plain = tiny_model(aux_clip_means=0.0)
    assert not hasattr(plain, "aux_x_a") and set(plain.state_dict()) < set(model.state_dict())
    named = {"both": ("aux_x_a", "aux_x_v"), "audio": ("aux_x_a",), "visual": ("aux_x_v",)}
    assert {n for n in ("aux_x_a", "aux_x_v") if hasattr(model, n)} == set(named[streams])
    plain.load_state_dict(model.state_dict(), strict=False)
    x_a, x_v = inputs()
    torch.manual_seed(3)
    out = model(x_a, x_v)
    torch.manual_seed(3)
    ref = plain(x_a, x_v)
    for field in ("rec_audio", "rec_visual", "kl_w", "kl_zav", "kl_za", "kl_zv"):
        torch.testing.assert_close(getattr(out.loss, field), getattr(ref.loss, field))
    w = out.latents.w
    expected = 0.0
    for name, x in (("aux_x_a", x_a), ("aux_x_v", x_v)):
        if name not in named[streams]:
            continue
        head = getattr(model, name)
        mean, logvar = head.mean_net(w), head.logvar.clamp(min=head.logvar_min)
        resid = x.mean(1) - mean
        nll = 0.5 * (math.log(2 * math.pi) + logvar + resid.square() / logvar.exp()).sum(-1)
        expected = expected + nll.mean() / T
    torch.testing.assert_close(out.loss.total, ref.loss.total + weight * expected)
    torch.testing.assert_close(out.loss.negative_elbo, ref.loss.negative_elbo)
    aux = model.aux_clip_means_term(x_a, x_v, model.encode(x_a, x_v).w)
    grads_w = torch.autograd.grad(aux, list(model.posterior_w.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads_w)
    grads_z = torch.autograd.grad(
        model.aux_clip_means_term(x_a, x_v, model.encode(x_a, x_v).w),
        list(model.posterior_z_av.parameters()), allow_unused=True)
    assert all(g is None or g.abs().sum() == 0 for g in grads_z)


def departure_and_plain(layout, **departure):
    """(model with a departure, its output, the plain model's output) on the same inputs
    and noise. The plain model has the same weights (same seed; a departure's own modules
    are built last), and the ELBO terms must agree: a departure changes the loss only."""
    model = tiny_model(layout=layout, **departure)
    plain = tiny_model(layout=layout)
    x_a, x_v = inputs()
    torch.manual_seed(3)
    out = model(x_a, x_v)
    torch.manual_seed(3)
    ref = plain(x_a, x_v)
    for field in ("rec_audio", "rec_visual", "kl_w", "kl_zav", "kl_za", "kl_zv", "negative_elbo"):
        torch.testing.assert_close(getattr(out.loss, field), getattr(ref.loss, field))
    return model, out, ref


@pytest.mark.parametrize("layout", LAYOUTS)
def test_swap_cycle_adds_the_nll_of_the_swapped_w_under_a_fixed_q_w_outside_the_elbo(layout):
    """swap_cycle: the loss gains weight * (-log q(w of the next sequence | decoding of this
    sequence's z's with that w)) per sequence / T; the ELBO terms are the plain model's;
    the term's gradient reaches the decoders and the z posteriors, and q(w)'s weights only
    through the w decoded, never through q(w) judging."""
    weight = 0.7
    model, out, ref = departure_and_plain(layout, swap_cycle=weight)
    lat = out.latents
    w_other = torch.cat([lat.w[-1:], lat.w[:-1]])  # sequence b gets sequence b-1's w
    x_a_sw, x_v_sw = model.decode(Latents(w_other, lat.z_av, lat.z_a, lat.z_v))
    q_w = model.infer(x_a_sw, x_v_sw, sample=False)[1].w
    nll = 0.5 * (math.log(2 * math.pi) + q_w.logvar
                 + (w_other - q_w.mean).square() / q_w.logvar.exp()).sum(-1)
    torch.testing.assert_close(out.loss.total, ref.loss.total + weight * nll.mean() / T)

    def grads(module, latents):
        if not list(module.parameters()):  # the authors' x_a features: x_a as it is
            return []
        term = model.swap_cycle_term(latents)
        return torch.autograd.grad(term, list(module.parameters()), allow_unused=True,
                                   retain_graph=True)

    # q(w) judging the swapped decoding learns nothing from it (latents held fixed, that is
    # the only path); through the w it decodes, w's encoder does learn
    fixed = Latents(*(getattr(lat, g).detach() for g in GROUPS))
    for judge in (model.features_x_a, model.features_x_v, model.posterior_w):
        assert all(g is None or g.abs().sum() == 0 for g in grads(judge, fixed))
    assert any(g is not None and g.abs().sum() > 0 for g in grads(model.posterior_w, lat))
    z_a_net = model.posterior_z_a if layout == "compact" else model.z_a
    for learner in (model.decoder_x_a, model.decoder_x_v, z_a_net):
        assert any(g is not None and g.abs().sum() > 0 for g in grads(learner, lat))


def test_swap_cycle_and_aux_weights_must_not_be_negative():
    for name in ("swap_cycle", "aux_clip_means"):
        with pytest.raises(ConfigError, match=name):
            tiny_model(**{name: -1.0})
    with pytest.raises(ConfigError, match="swap_cycle_judge"):
        tiny_model(swap_cycle=1.0, swap_cycle_judge="visual")
    with pytest.raises(ConfigError, match="aux_clip_means_streams"):
        tiny_model(aux_clip_means=1.0, aux_clip_means_streams="voice")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_audio_judge_learns_w_from_real_audio_and_judges_the_decoded_voice_alone(layout):
    """swap_cycle_judge="audio": the loss gains -log r(q(w)'s mean | x_a) (the judge's own
    training, reaching the judge alone) plus weight * -log r(w of the next sequence | the
    audio decoded with it), r held fixed there; the ELBO terms are the plain model's and
    the visual decoder is not asked."""
    weight = 0.7
    model, out, ref = departure_and_plain(layout, swap_cycle=weight, swap_cycle_judge="audio")
    x_a, x_v = inputs()

    def judge(x):  # r(w | x_a), written out
        f = model.judge_features_x_a(x)
        g = model.judge_summary_x_a(f)
        return model.judge_w([g], [f])

    def nll(q, w):
        return 0.5 * (math.log(2 * math.pi) + q.logvar
                      + (w - q.mean).square() / q.logvar.exp()).sum(-1).mean() / T

    lat = out.latents
    own = nll(judge(x_a), out.posterior.w.mean)
    w_other = torch.cat([lat.w[-1:], lat.w[:-1]])
    x_a_sw, _ = model.decode(Latents(w_other, lat.z_av, lat.z_a, lat.z_v))
    cycle = nll(judge(x_a_sw), w_other)
    torch.testing.assert_close(out.extra["audio_judge"], own)
    torch.testing.assert_close(out.extra["swap_cycle"], cycle)
    torch.testing.assert_close(out.loss.total, ref.loss.total + own + weight * cycle)

    def reaches(term, module):
        params = list(module.parameters())
        if not params:
            return False
        grads = torch.autograd.grad(term(), params, allow_unused=True, retain_graph=True)
        return any(g is not None and g.abs().sum() > 0 for g in grads)

    judge_nets = (model.judge_features_x_a, model.judge_summary_x_a, model.judge_w)
    enc = model.encode(x_a, x_v, sample=True)
    own_term = lambda: model.audio_judge_term(x_a, model.encode(x_a, x_v).w)  # noqa: E731
    assert all(reaches(own_term, m) for m in judge_nets)
    assert not reaches(own_term, model.posterior_w)
    assert not reaches(own_term, model.decoder_x_a)
    cycle_term = lambda: model.swap_cycle_term(enc)  # noqa: E731
    assert not any(reaches(cycle_term, m) for m in judge_nets)
    assert not reaches(cycle_term, model.decoder_x_v)
    z_a_net = model.posterior_z_a if layout == "compact" else model.z_a
    assert reaches(cycle_term, model.decoder_x_a) and reaches(cycle_term, z_a_net)


# ---- inference, ELBO ---------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sampled_run_equals_posteriors_evaluated_at_its_own_samples(layout):
    model = tiny_model(layout=layout)
    x_a, x_v = inputs()
    with torch.no_grad():
        latents, q = model.infer(x_a, x_v, sample=True)
        _, q_fixed = model.infer(x_a, x_v, **{g: getattr(latents, g) for g in GROUPS})
    for group in GROUPS:
        torch.testing.assert_close(getattr(q, group).mean, getattr(q_fixed, group).mean)
        torch.testing.assert_close(getattr(q, group).logvar, getattr(q_fixed, group).logvar)


def test_joint_loop_of_za_and_zv_equals_running_them_one_by_one():
    model = tiny_model()
    gen = torch.Generator().manual_seed(2)
    conds = [torch.randn(B, T, 13, generator=gen, dtype=torch.float64) for _ in range(2)]
    noises = [torch.randn(B, T, 2, generator=gen, dtype=torch.float64) for _ in range(2)]
    held = torch.randn(B, T, 2, generator=gen, dtype=torch.float64)
    recurrences = [model.posterior_z_a, model.posterior_z_v]
    with torch.no_grad():
        for zs in ([None, None], [held, None], [held, held]):
            for sample in (True, False):
                joint = run_posteriors(recurrences, conds, zs=zs, noises=noises, sample=sample)
                for r, cond, z, noise, (z_joint, q_joint) in zip(
                    recurrences, conds, zs, noises, joint
                ):
                    z_alone, q_alone = r(cond, z=z, noise=noise, sample=sample)
                    torch.testing.assert_close(z_joint, z_alone)
                    torch.testing.assert_close(q_joint.mean, q_alone.mean)
                    torch.testing.assert_close(q_joint.logvar, q_alone.logvar)


def reference_gru_latent(module, inputs, eps):
    """One latent of the authors' layout written the way their code reads, frame by frame:
    the GRU cell on z_t-1, the posterior MLP on the concatenated [s_t, inputs_t], the prior
    head on s_t. `inputs` are the posterior's blocks (B, T, d), in order."""
    batch, n_frames = eps.shape[:2]
    rnn = module.rnn
    weights = (rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0)
    state = eps.new_zeros(batch, module.state_dim)
    z_prev = eps.new_zeros(batch, module.z_dim)
    out = {"z": [], "q_mean": [], "q_logvar": [], "p_mean": [], "p_logvar": []}
    for t in range(n_frames):
        state = torch.gru_cell(z_prev, state, *weights)  # has read z_0 = 0, z_1..z_t-1
        inputs_t = torch.cat([state, *[x[:, t] for x in inputs]], dim=-1)
        mean, logvar = module.posterior_out(module.posterior_in(inputs_t)).chunk(2, -1)
        p_mean, p_logvar = module.prior_head(state).chunk(2, -1)
        z_prev = mean + torch.exp(0.5 * logvar) * eps[:, t]
        for values, value in zip(out.values(), (z_prev, mean, logvar, p_mean, p_logvar)):
            values.append(value)
    return {key: torch.stack(values, 1) for key, values in out.items()}


def reference_authors_forward(model, x_a, x_v, noise: Latents):
    """The straightforward per-step computation of the authors' layout: no precomputed
    blocks, no joint loop, every input concatenated at every frame."""
    f_a, f_v = model.features_x_a(x_a), model.features_x_v(x_v)
    q_w = model.posterior_w([f_v, f_a])
    w = q_w.mean + q_w.std * noise.w
    if model.config.posterior == "smoothing":
        f_a, f_v = model.summary_x_a(f_a), model.summary_x_v(f_v)
    w_t = w.unsqueeze(1).expand(-1, x_a.shape[1], -1)
    z_av = reference_gru_latent(model.z_av, [f_a, f_v, w_t], noise.z_av)
    z_a = reference_gru_latent(model.z_a, [f_a, z_av["z"], w_t], noise.z_a)
    z_v = reference_gru_latent(model.z_v, [f_v, z_av["z"], w_t], noise.z_v)
    return w, q_w, {"z_av": z_av, "z_a": z_a, "z_v": z_v}


@pytest.mark.parametrize("posterior", ["filtering", "smoothing"])
def test_authors_layout_equals_its_per_step_reference(posterior):
    """The restructured computation (observation and w blocks for all frames at once, z_a
    and z_v in one block-diagonal loop, priors read off the loop's GRU states) gives the
    numbers and the gradients of the plain per-frame computation with the same weights."""
    model = tiny_model(layout="authors", posterior=posterior)
    x_a, x_v = inputs()
    gen = torch.Generator().manual_seed(3)
    noise = Latents(
        **{
            g: torch.randn(B, *([] if g == "w" else [T]), d, generator=gen, dtype=torch.float64)
            for g, d in (("w", 3), ("z_av", 2), ("z_a", 2), ("z_v", 2))
        }
    )
    latents, q, states = model._infer(
        x_a, x_v, sample=True, noise=noise, w=None, z_av=None, z_a=None, z_v=None
    )
    p = model.priors(latents, states)
    w_ref, q_w_ref, ref = reference_authors_forward(model, x_a, x_v, noise)
    torch.testing.assert_close(latents.w, w_ref)
    got = [latents.w, q.w.mean, q.w.logvar]
    want = [w_ref, q_w_ref.mean, q_w_ref.logvar]
    for g in ("z_av", "z_a", "z_v"):
        got += [getattr(latents, g), getattr(q, g).mean, getattr(q, g).logvar]
        got += [getattr(p, g).mean, getattr(p, g).logvar]
        want += [ref[g][k] for k in ("z", "q_mean", "q_logvar", "p_mean", "p_logvar")]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    # the same gradients for every weight, through a loss that reads every output
    weights = [torch.randn(x.shape, generator=gen, dtype=torch.float64) for x in want]
    params = [x for x in model.parameters() if x.requires_grad]
    grads_got = torch.autograd.grad(
        sum((a * c).sum() for a, c in zip(got, weights)), params, allow_unused=True
    )
    grads_want = torch.autograd.grad(
        sum((b * c).sum() for b, c in zip(want, weights)), params, allow_unused=True
    )
    for (name, _), a, b in zip(model.named_parameters(), grads_got, grads_want):
        if a is None or b is None:
            assert a is None and b is None, name
        else:
            torch.testing.assert_close(a, b, msg=name)
    # and the fused GRU call over the sampled sequences gives the same priors
    refit = model.priors(latents)
    for g in ("z_av", "z_a", "z_v"):
        torch.testing.assert_close(getattr(refit, g).mean, getattr(p, g).mean)


def test_compact_posterior_recurrence_equals_its_per_step_reference():
    """`run_posteriors` (conditioning for all frames at once, fused weight blocks) against
    the recurrence of `PosteriorRecurrence`'s docstring written out step by step."""
    model = tiny_model()
    r = model.posterior_z_av
    gen = torch.Generator().manual_seed(6)
    cond = torch.randn(B, T, 19, generator=gen, dtype=torch.float64)
    eps = torch.randn(B, T, 2, generator=gen, dtype=torch.float64)
    z, q = r(cond, noise=eps)
    h = torch.tanh(r.h_to_h.bias.expand(B, -1))  # h_1: z_0 = 0, h_0 = 0
    for t in range(T):
        a = torch.tanh(r.cond_to_a(cond[:, t]) + r.h_to_a(h))
        mean, log_std = r.a_to_params(a).chunk(2, -1)
        z_t = mean + torch.exp(log_std) * eps[:, t]
        torch.testing.assert_close(q.mean[:, t], mean)
        torch.testing.assert_close(q.logvar[:, t], 2 * log_std)
        torch.testing.assert_close(z[:, t], z_t)
        h = torch.tanh(r.h_to_h(h) + r.z_to_h(z_t))


def test_authors_preset_has_the_authors_parameter_count():
    """8,484,568 weights in the authors' MDVAE (DESIGN.md section 2, layer by layer), plus
    this project's learned per-dimension observation log-variances (512 + 2048)."""
    model = MDVAE(MDVAEConfig.preset("authors"))
    counts = {"network": 0, "obs_logvar": 0}
    for name, param in model.named_parameters():
        counts["obs_logvar" if name.endswith(".logvar") else "network"] += param.numel()
    assert counts == {"network": 8_484_568, "obs_logvar": 512 + 2048}
    assert MDVAEConfig.from_dict(model.config.to_dict()) == model.config


@pytest.mark.parametrize("layout", LAYOUTS)
def test_encode_propagates_posterior_means(layout):
    model = tiny_model(layout=layout)
    x_a, x_v = inputs()
    with torch.no_grad():
        means = model.encode(x_a, x_v)
        _, q = model.infer(x_a, x_v, **{g: getattr(means, g) for g in GROUPS})
        assert torch.equal(model.encode(x_a, x_v).z_av, means.z_av)  # deterministic
    for group in GROUPS:
        torch.testing.assert_close(getattr(means, group), getattr(q, group).mean)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_noise_holds_the_sample_fixed(layout):
    model = tiny_model(layout=layout)
    x_a, x_v = inputs()
    gen = torch.Generator().manual_seed(9)
    noise = Latents(
        w=torch.randn(B, 3, generator=gen, dtype=torch.float64),
        z_av=torch.randn(B, T, 2, generator=gen, dtype=torch.float64),
        z_a=torch.randn(B, T, 2, generator=gen, dtype=torch.float64),
        z_v=torch.randn(B, T, 2, generator=gen, dtype=torch.float64),
    )
    with torch.no_grad():
        first, q = model.infer(x_a, x_v, noise=noise)
        second, _ = model.infer(x_a, x_v, noise=noise)
    for group in GROUPS:
        assert torch.equal(getattr(first, group), getattr(second, group))
    torch.testing.assert_close(first.w, q.w.mean + q.w.std * noise.w)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_elbo_terms_are_the_per_frame_negative_elbo(layout):
    model = tiny_model(layout=layout, beta_w=2.0, beta_z_av=0.5, beta_z_a=3.0, beta_z_v=0.0)
    x_a, x_v = inputs()
    with torch.no_grad():
        out = model(x_a, x_v)
    loss, q, p = out.loss, out.posterior, out.prior
    # reconstruction: the Gaussian log-likelihood with the decoder's per-dimension variance
    for x, x_hat, decoder, term in (
        (x_a, out.x_a_hat, model.decoder_x_a, loss.rec_audio),
        (x_v, out.x_v_hat, model.decoder_x_v, loss.rec_visual),
    ):
        obs = DiagonalGaussian(x_hat, decoder.logvar.expand_as(x_hat))
        torch.testing.assert_close(term, -obs.log_prob(x).sum(1).mean() / T)
    torch.testing.assert_close(loss.kl_w, q.w.kl_standard_normal().mean() / T)
    for group, term in (("z_av", loss.kl_zav), ("z_a", loss.kl_za), ("z_v", loss.kl_zv)):
        per_sequence = getattr(q, group).kl(getattr(p, group)).sum(1)  # (B,)
        torch.testing.assert_close(term, per_sequence.mean() / T)
    rec = loss.rec_audio + loss.rec_visual
    kls = loss.kl_w + loss.kl_zav + loss.kl_za + loss.kl_zv
    torch.testing.assert_close(loss.negative_elbo, rec + kls)
    weighted = rec + 2.0 * loss.kl_w + 0.5 * loss.kl_zav + 3.0 * loss.kl_za
    torch.testing.assert_close(loss.total, weighted)
    # a KL warm-up weight scales the beta-weighted KLs and leaves the reconstructions alone
    half = model.elbo(x_a, x_v, out.x_a_hat, out.x_v_hat, q, p, kl_weight=0.25)
    torch.testing.assert_close(half.total, rec + 0.25 * (weighted - rec))
    torch.testing.assert_close(half.negative_elbo, loss.negative_elbo)
    assert set(loss.as_dict()) == {
        "total",
        "rec_audio",
        "rec_visual",
        "kl_w",
        "kl_zav",
        "kl_za",
        "kl_zv",
        "negative_elbo",
    }


def synthetic_sequences(n, n_frames, seed=0):
    """Two 'modalities' from a known process: a static code s shared by both streams, a
    shared oscillation d_t, one private AR(1) factor per stream, through fixed random
    nonlinear maps plus a little noise."""
    gen = torch.Generator().manual_seed(seed)
    s = torch.randn(n, 2, generator=gen)
    phase = 6.28 * torch.rand(n, 1, generator=gen)
    freq = 0.5 + torch.rand(n, 1, generator=gen)
    t = torch.arange(n_frames, dtype=torch.float32)
    d = torch.stack([torch.sin(freq * t + phase), torch.cos(freq * t + phase)], -1)  # (n, T, 2)

    def ar1():
        out = [torch.randn(n, generator=gen)]
        for _ in range(n_frames - 1):
            out.append(0.8 * out[-1] + 0.6 * torch.randn(n, generator=gen))
        return torch.stack(out, 1).unsqueeze(-1)  # (n, T, 1)

    def observe(private, dim):
        factors = torch.cat([s.unsqueeze(1).expand(-1, n_frames, -1), d, private], -1)
        m1 = torch.randn(5, 16, generator=gen)
        m2 = torch.randn(16, dim, generator=gen) / 4
        noise = 0.05 * torch.randn(n, n_frames, dim, generator=gen)
        return torch.tanh(factors @ m1) @ m2 + noise

    return observe(ar1(), TINY["audio_dim"]), observe(ar1(), TINY["visual_dim"])


def marginal_gaussian_nll(x):
    """Per-frame NLL of the best latent-free model: one Gaussian per dimension, fit to x."""
    var = x.reshape(-1, x.shape[-1]).var(0)
    return float(0.5 * (torch.log(2 * math.pi * var) + 1).sum())


@pytest.mark.slow
def test_kl_weights_weigh_w_and_the_zs_apart_and_static_first_decodes_from_w_alone():
    model = tiny_model(beta_w=2.0, beta_z_a=3.0)
    x_a, x_v = inputs()
    torch.manual_seed(5)
    out = model(x_a, x_v)
    q, p, loss = out.posterior, out.prior, out.loss
    rec = loss.rec_audio + loss.rec_visual
    apart = model.elbo(x_a, x_v, out.x_a_hat, out.x_v_hat, q, p,
                       kl_weight=KLWeights(w=0.5, z=0.25)).total
    zs = loss.kl_zav + 3.0 * loss.kl_za + loss.kl_zv
    torch.testing.assert_close(apart, rec + 0.5 * 2.0 * loss.kl_w + 0.25 * zs)
    # z_v on its own warm-up: its KL weighed apart from the other z's
    own = model.elbo(x_a, x_v, out.x_a_hat, out.x_v_hat, q, p,
                     kl_weight=KLWeights(w=0.5, z=0.25, z_v=0.75)).total
    torch.testing.assert_close(
        own, rec + 0.5 * 2.0 * loss.kl_w + 0.25 * (zs - loss.kl_zv) + 0.75 * loss.kl_zv)
    # static first: the same posterior sample, decoded with every z at zero; no z KL counts
    torch.manual_seed(5)
    static = model(x_a, x_v, kl_weight=KLWeights(w=1.0, z=1.0, static_only=True))
    zero = dataclasses.replace(out.latents, **{g: torch.zeros_like(getattr(out.latents, g))
                                               for g in ("z_av", "z_a", "z_v")})
    x_a_w, x_v_w = model.decode(zero)
    torch.testing.assert_close(static.x_a_hat, x_a_w)
    torch.testing.assert_close(static.x_v_hat, x_v_w)
    s = static.loss
    torch.testing.assert_close(s.total, s.rec_audio + s.rec_visual + 2.0 * s.kl_w)
    # the z posteriors get no gradient from a static-first step
    model.zero_grad()
    s.total.backward()
    assert model.posterior_z_av.cond_to_a.weight.grad.abs().max() == 0
    assert model.posterior_w.head[0].weight.grad.abs().max() > 0


def test_optimal_variances_are_the_batch_maximum_likelihood_and_kept_for_evaluation():
    from mdvae.model.observation import GaussianDecoder

    torch.manual_seed(0)
    decoder = GaussianDecoder(4, 8, 5, logvar_min=-6.0, optimal_logvar=True,
                              logvar_momentum=0.5).double()
    assert not decoder.logvar.requires_grad  # not the optimiser's to move
    x = torch.randn(3, 7, 5, dtype=torch.float64) * torch.tensor([1.0, 0.1, 2.0, 0.5, 1e-4])
    mean = torch.zeros_like(x, requires_grad=True)
    nll = decoder.negative_log_likelihood(x, mean).sum()
    best = x.square().mean(dim=(0, 1)).clamp_min(math.exp(-6.0)).log()

    def nll_at(logvar):
        obs = DiagonalGaussian(mean.detach(), logvar.expand_as(x))
        return float(-obs.log_prob(x).sum())

    assert float(nll.detach()) == pytest.approx(nll_at(best), rel=1e-12)
    # the maximum of the likelihood over each unfloored log-variance (the last one is floored)
    for d in range(4):
        for step in (-0.1, 0.1):
            moved = best.clone()
            moved[d] += step
            assert nll_at(moved) > float(nll.detach())
    # the running average moved half way (in variance) from exp(0) towards the batch's
    torch.testing.assert_close(decoder.logvar.exp(), 0.5 + 0.5 * best.exp())
    nll.backward()
    torch.testing.assert_close(mean.grad, -x / best.exp())  # precision-weighted residuals
    decoder.eval()  # evaluation reads the running average, and leaves it alone
    kept = decoder.logvar.clone()
    nll_eval = decoder.negative_log_likelihood(x, mean.detach()).sum()
    assert float(nll_eval) == pytest.approx(nll_at(kept), rel=1e-12)
    torch.testing.assert_close(decoder.logvar, kept)


def test_training_lowers_the_negative_elbo_on_a_structured_process():
    torch.manual_seed(0)
    x_a, x_v = synthetic_sequences(256, 8)
    # a small initial observation variance keeps the reconstruction term from being swamped
    # by the KLs in the first steps (the data's own variance is about 0.4)
    model = MDVAE(MDVAEConfig(**TINY, obs_logvar_init=-2.0))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)

    def negative_elbo():
        with torch.no_grad():
            return sum(float(model(x_a, x_v).loss.negative_elbo) for _ in range(4)) / 4

    start = negative_elbo()
    gen = torch.Generator().manual_seed(1)
    for _ in range(200):
        batch = torch.randint(0, 256, (32,), generator=gen)
        loss = model(x_a[batch], x_v[batch]).loss.total
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    end = negative_elbo()
    baseline = marginal_gaussian_nll(x_a) + marginal_gaussian_nll(x_v)
    assert end < start - 15, (start, end)
    # the bound beats the best model that ignores the latent structure by a wide margin
    assert end < baseline - 3, (end, baseline)


# ---- operations ----------------------------------------------------------------------------


def test_swapping_all_or_no_groups():
    model = tiny_model()
    x_a, x_v = inputs(0)
    y_a, y_v = inputs(1)
    with torch.no_grad():
        a, b = model.encode(x_a, x_v), model.encode(y_a, y_v)
        decoded_a, decoded_b = model.decode(a), model.decode(b)
        for got, want in zip(model.decode(a.swap(b, set(GROUPS))), decoded_b):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
        for got, want in zip(model.decode(a.swap(b, set())), decoded_a):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
        # z_v only moves the visual stream
        x_a_hat, x_v_hat = model.decode(a.swap(b, {"z_v"}))
    torch.testing.assert_close(x_a_hat, decoded_a[0], rtol=0, atol=0)
    assert changed(x_v_hat, decoded_a[1])
    mixed = a.swap(b, {"w", "z_a"})
    assert mixed.w is b.w and mixed.z_a is b.z_a and mixed.z_av is a.z_av and mixed.z_v is a.z_v


def test_swap_refuses_unknown_groups_and_mismatched_lengths():
    model = tiny_model()
    with torch.no_grad():
        a = model.encode(*inputs(0))
        short = model.encode(*inputs(1, n_frames=T - 2))
    with pytest.raises(MDVAEError, match="unknown latent group"):
        a.swap(a, {"zav"})
    with pytest.raises(MDVAEError, match="cannot swap 'z_av'"):
        a.swap(short, {"z_av"})
    assert torch.equal(a.swap(short, "w").w, short.w)  # w moves between clip lengths


def test_interpolate_w_sweep_and_constant_alpha():
    model = tiny_model()
    gen = torch.Generator().manual_seed(4)
    w, w_other = torch.randn(2, B, 3, generator=gen, dtype=torch.float64)
    sweep = model.interpolate_w(w, w_other, T)
    assert sweep.shape == (B, T, 3)
    torch.testing.assert_close(sweep[:, 0], w)  # alpha_1 = 1
    torch.testing.assert_close(sweep[:, -1], w_other)  # alpha_T = 0
    alpha_2 = (T - 2) / (T - 1)
    torch.testing.assert_close(sweep[:, 1], alpha_2 * w + (1 - alpha_2) * w_other)
    constant = model.interpolate_w(w, w_other, T, alpha=0.25)
    torch.testing.assert_close(constant, (0.25 * w + 0.75 * w_other)[:, None].expand(B, T, 3))
    with torch.no_grad():
        latents = model.encode(*inputs())
        per_frame = dataclasses.replace(latents, w=model.interpolate_w(latents.w, latents.w, T))
        for got, want in zip(model.decode(per_frame), model.decode(latents)):
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_generate_from_the_priors(layout):
    model = tiny_model(layout=layout)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        latents = model.generate(3, 5, generator=gen)
        again = model.generate(3, 5, generator=torch.Generator().manual_seed(0))
        given = torch.zeros(3, 3, dtype=torch.float64)
        conditioned = model.generate(3, 5, w=given)
        x_a_hat, x_v_hat = model.decode(latents)
    for group in GROUPS:  # the generator fixes the draw
        torch.testing.assert_close(getattr(again, group), getattr(latents, group))
    assert latents.w.shape == (3, 3) and latents.z_av.shape == (3, 5, 2)
    assert latents.z_a.shape == (3, 5, 2) and latents.z_v.shape == (3, 5, 2)
    assert x_a_hat.shape == (3, 5, 6) and x_v_hat.shape == (3, 5, 10)
    assert conditioned.w is given
    with pytest.raises(MDVAEError, match="w must be"):
        model.generate(2, 5, w=given)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_ancestral_samples_follow_the_priors_they_were_drawn_from(layout):
    """Each z_t is drawn from p(z_t | z_1:t-1) at its own sampled past: the priors evaluated
    on the generated sequences (one teacher-forced LSTM call) are the ones sampling used,
    and the draws standardised by them are N(0, 1), as is w."""
    model = tiny_model(seed=1, layout=layout)
    gen = torch.Generator().manual_seed(0)
    n, n_frames = 4000, 5
    with torch.no_grad():
        prior, sampler = prior_of(model, "z_av")
        z, used = sampler(7, n_frames, generator=gen)
        refit = prior(z)
        torch.testing.assert_close(refit.mean, used.mean)
        torch.testing.assert_close(refit.logvar, used.logvar)
        latents = model.generate(n, n_frames, generator=gen)
        priors = model.priors(latents)
    for group in GROUPS:
        p = getattr(priors, group)
        standard = (getattr(latents, group) - p.mean) * torch.exp(-0.5 * p.logvar)
        flat = standard.reshape(-1, standard.shape[-1])
        assert flat.mean(0).abs().max() < 0.05, (group, flat.mean(0))
        assert (flat.std(0) - 1).abs().max() < 0.05, (group, flat.std(0))
    # the priors depend on the past: z_2 is not distributed as z_1
    assert changed(priors.z_av.mean[:, 1], priors.z_av.mean[:, 0])


def test_bad_inputs_are_refused_with_a_clear_message():
    model = tiny_model()
    x_a, x_v = inputs()
    with pytest.raises(
        MDVAEError, match=r"x_v \(visual features\) must be a \(batch, frames, 10\)"
    ):
        model(x_a, x_v[..., :4])
    with pytest.raises(MDVAEError, match="same batch and number of frames"):
        model(x_a, x_v[:, :3])


def test_config_presets_round_trip_and_validation():
    mead = MDVAEConfig.preset("mead")
    assert (mead.audio_dim, mead.visual_dim, mead.w_dim) == (512, 2048, 84)
    assert (mead.z_av_dim, mead.z_a_dim, mead.z_v_dim) == (16, 8, 4)
    assert mead.beta_w == mead.beta_z_av == mead.beta_z_a == mead.beta_z_v == 1.0
    synthetic = MDVAEConfig.preset("synthetic", posterior="filtering")
    assert MDVAEConfig.from_dict(synthetic.to_dict()) == synthetic
    with pytest.raises(ConfigError, match="posterior"):
        MDVAEConfig(posterior="bidirectional")
    with pytest.raises(ConfigError, match="z_av_dim"):
        MDVAEConfig.from_dict({**mead.to_dict(), "z_av_dim": 0})
    with pytest.raises(ConfigError, match="unknown MDVAE preset"):
        MDVAEConfig.preset("voxceleb")


def test_visual_decoder_width_widens_the_decoder_alone_and_round_trips(tmp_path):
    """`visual_decoder_hidden` sets the visual decoder's hidden width and nothing else; the
    V-DSAE made like it gets the same decoder width, the A-DSAE none; a bundle keeps it, and
    a size below 1 is refused."""
    from mdvae.bundle import load_bundle, save_bundle
    from mdvae.model.dsae import DSAE, DSAEConfig

    narrow = tiny_model(dtype=torch.float32)
    wide = tiny_model(dtype=torch.float32, visual_decoder_hidden=20)
    widths = {
        name: [p.shape for p in module.parameters()]
        for name, module in wide.named_children()
    }
    for name, module in narrow.named_children():
        if name != "decoder_x_v":
            assert widths[name] == [p.shape for p in module.parameters()], name
    assert wide.decoder_x_v.mean_net[0].out_features == 20
    assert narrow.decoder_x_v.mean_net[0].out_features == TINY["visual_hidden"]
    assert wide.features_x_v[0].out_features == TINY["visual_hidden"]
    v_dsae = DSAE(DSAEConfig.from_mdvae(wide.config, "visual"))
    assert v_dsae.decoder_x.mean_net[0].out_features == 20
    assert v_dsae.features_x[0].out_features == TINY["visual_hidden"]
    assert DSAEConfig.from_mdvae(wide.config, "audio").decoder_hidden is None
    save_bundle(tmp_path / "bundle", {"mdvae": wide}, info={}, card="test")
    assert load_bundle(tmp_path / "bundle").components["mdvae"].config == wide.config
    with pytest.raises(ConfigError, match="visual_decoder_hidden"):
        MDVAEConfig(**TINY, visual_decoder_hidden=0)
    # the voice's decoder likewise, and the A-DSAE made like it
    voice = tiny_model(dtype=torch.float32, audio_decoder_hidden=24)
    assert voice.decoder_x_a.mean_net[0].out_features == 24
    assert voice.features_x_a[0].out_features == TINY["audio_hidden"]
    assert voice.decoder_x_v.mean_net[0].out_features == TINY["visual_hidden"]
    a_dsae = DSAE(DSAEConfig.from_mdvae(voice.config, "audio"))
    assert a_dsae.decoder_x.mean_net[0].out_features == 24
    with pytest.raises(ConfigError, match="audio_decoder_hidden"):
        MDVAEConfig(**TINY, audio_decoder_hidden=0)
    with pytest.raises(ConfigError, match="decoder_hidden"):
        DSAEConfig(decoder_hidden=0)


def test_authors_layout_round_trips_through_a_bundle(tmp_path):
    """The nested layout config is written to config.json and read back strictly, and the
    loaded model encodes and decodes as the saved one."""
    from mdvae.bundle import load_bundle, save_bundle

    model = tiny_model(layout="authors", dtype=torch.float32, posterior="filtering")
    save_bundle(tmp_path / "bundle", {"mdvae": model}, info={}, card="test")
    loaded = load_bundle(tmp_path / "bundle").components["mdvae"]
    assert loaded.config == model.config
    x_a, x_v = inputs(dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        for got, want in zip(
            loaded.decode(loaded.encode(x_a, x_v)), model.decode(model.encode(x_a, x_v))
        ):
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("stream", ["face", "voice"])
def test_stream_dropout_hides_one_stream_from_q_w_in_training_only(layout, stream):
    """w_face_dropout / w_voice_dropout: in training, the chosen sequences' q(w) reads the
    other stream alone (this one's inputs to q(w) zeroed) while their z posteriors still read
    it; in evaluation q(w) reads both streams, as the seed's model does."""
    share = f"w_{stream}_dropout"
    model = tiny_model(layout=layout, **{share: 1.0})  # every sequence, to see it
    x_a, x_v = inputs()
    o_a, o_v = inputs(seed=1)
    other = (x_a, o_v) if stream == "face" else (o_a, x_v)  # this stream from another clip
    reader = "z_v" if stream == "face" else "z_a"  # a z posterior that reads this stream
    model.train()
    torch.manual_seed(3)
    out = model(x_a, x_v)
    torch.manual_seed(3)
    moved = model(*other)
    torch.testing.assert_close(out.posterior.w.mean, moved.posterior.w.mean)
    torch.testing.assert_close(out.posterior.w.logvar, moved.posterior.w.logvar)
    assert not torch.allclose(getattr(out.posterior, reader).mean,
                              getattr(moved.posterior, reader).mean)
    # it is the stream's absence, not another posterior: q(w) as with its inputs zeroed
    hidden = {"faceless" if stream == "face" else "voiceless": torch.ones(B, dtype=bool)}
    _, q_hidden, _ = model._infer(x_a, x_v, sample=False, noise=None, w=None, z_av=None,
                                  z_a=None, z_v=None, **hidden)
    torch.testing.assert_close(out.posterior.w.mean, q_hidden.w.mean)
    model.eval()
    q_eval = model.infer(x_a, x_v, sample=False)[1].w.mean
    assert not torch.allclose(q_eval, model.infer(*other, sample=False)[1].w.mean)
    torch.manual_seed(3)
    torch.testing.assert_close(model(x_a, x_v).posterior.w.mean, q_eval)
    # a share: some sequences of a large batch lose the stream, some do not
    half = tiny_model(layout=layout, **{share: 0.5}).train()
    x_a, x_v = inputs(batch=64)
    seen = half.infer(x_a, x_v, sample=False)[1].w.mean
    torch.manual_seed(0)
    lost = (half(x_a, x_v).posterior.w.mean - seen).abs().amax(-1) > 1e-9
    assert 10 < int(lost.sum()) < 54


@pytest.mark.parametrize("layout", LAYOUTS)
def test_face_and_voice_dropout_never_hide_both_streams(layout):
    """Both shares at once (0.5 + 0.5): every sequence of a large batch loses exactly one
    stream, and which one shows in what moves its q(w)."""
    both = tiny_model(layout=layout, w_face_dropout=0.5, w_voice_dropout=0.5).train()
    x_a, x_v = inputs(batch=64)
    o_a, o_v = inputs(batch=64, seed=1)
    means = []
    for a, v in ((x_a, x_v), (o_a, x_v), (x_a, o_v)):
        torch.manual_seed(0)
        means.append(both(a, v).posterior.w.mean)
    voice_moves = (means[1] - means[0]).abs().amax(-1) > 1e-9
    face_moves = (means[2] - means[0]).abs().amax(-1) > 1e-9
    assert not bool((voice_moves & face_moves).any())  # no sequence read both streams
    assert not bool((~voice_moves & ~face_moves).any())  # nor lost both
    assert 10 < int(voice_moves.sum()) < 54


def test_w_voice_dropout_is_a_share_disjoint_from_the_face_dropout():
    with pytest.raises(ConfigError, match="w_voice_dropout"):
        MDVAEConfig(w_voice_dropout=-0.1)
    with pytest.raises(ConfigError, match="sum to at most 1"):
        MDVAEConfig(w_face_dropout=0.6, w_voice_dropout=0.5)
    assert MDVAEConfig().w_voice_dropout == 0.0  # the seed's model by default


@pytest.mark.parametrize("layout", LAYOUTS)
def test_w_input_dropout_drops_what_q_w_reads_in_training_only(layout):
    """w_input_dropout p: in training q(w)'s head reads its summary vector with a share p of
    the entries zeroed and the others scaled by 1 / (1 - p) (inverted dropout: the expected
    input is the evaluation one); in evaluation it reads the vector whole."""
    p = 0.4
    model = tiny_model(layout=layout, w_input_dropout=p)
    seen = []
    model.posterior_w.head.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    x_a, x_v = inputs(batch=256)
    model.eval()
    q_eval = model.infer(x_a, x_v, sample=False)[1].w.mean
    model.train()
    torch.manual_seed(0)
    model(x_a, x_v)
    assert len(seen) == 2
    whole, dropped = seen
    live = whole != 0
    kept = dropped != 0
    n = int(live.sum())
    share = 1 - float(kept[live].double().mean())
    assert abs(share - p) < 5 * math.sqrt(p * (1 - p) / n)  # 5 binomial SEs
    torch.testing.assert_close(dropped[kept], whole[kept] / (1 - p))
    # the z posteriors and decoders are untouched: evaluation is the seed's model's
    plain = tiny_model(layout=layout)
    plain.load_state_dict(model.state_dict())
    torch.testing.assert_close(plain.eval().infer(x_a, x_v, sample=False)[1].w.mean, q_eval)
    torch.testing.assert_close(model.eval().infer(x_a, x_v, sample=False)[1].w.mean, q_eval)
    with pytest.raises(ConfigError, match="w_input_dropout"):
        MDVAEConfig(w_input_dropout=1.0)
    assert MDVAEConfig().w_input_dropout == 0.0  # the seed's model by default


def test_w_per_stream_reads_each_half_of_w_from_one_stream():
    """w_per_stream: q(w)'s first w_dim // 2 entries (mean and variance) are a function of
    the voice alone and the rest of the face alone (exactly: a part does not change at all
    when the other stream does), where the seed's joint head mixes both into every entry."""
    model = tiny_model(w_per_stream=True).eval()
    half = TINY["w_dim"] // 2
    x_a, x_v = inputs()
    other_a, other_v = inputs(seed=1)
    q = model.infer(x_a, x_v, sample=False)[1].w
    q_new_face = model.infer(x_a, other_v, sample=False)[1].w
    q_new_voice = model.infer(other_a, x_v, sample=False)[1].w
    for moved, fixed_part, moved_part in ((q_new_face, slice(None, half), slice(half, None)),
                                          (q_new_voice, slice(half, None), slice(None, half))):
        for stat in ("mean", "logvar"):
            torch.testing.assert_close(getattr(moved, stat)[:, fixed_part],
                                       getattr(q, stat)[:, fixed_part], rtol=0, atol=0)
            assert (getattr(moved, stat)[:, moved_part] - getattr(q, stat)[:, moved_part]
                    ).abs().amin() > 0
    # the joint head (the seed's) mixes the streams into every entry
    joint = tiny_model().eval()
    q_joint = joint.infer(x_a, x_v, sample=False)[1].w.mean
    assert ((joint.infer(x_a, other_v, sample=False)[1].w.mean - q_joint).abs().amin() > 0)
    assert MDVAEConfig().w_per_stream is False  # the seed's model by default
    with pytest.raises(ConfigError, match="w_per_stream"):
        tiny_model(layout="authors", w_per_stream=True)
    with pytest.raises(ConfigError, match="w_dim"):
        MDVAEConfig(w_dim=1, w_per_stream=True)
    # the voice's part can be given its own size; the face's has the rest
    uneven = tiny_model(w_per_stream=True, w_dim=5, w_audio_dim=2).eval()
    q = uneven.infer(x_a, x_v, sample=False)[1].w.mean
    q_new_face = uneven.infer(x_a, other_v, sample=False)[1].w.mean
    torch.testing.assert_close(q_new_face[:, :2], q[:, :2], rtol=0, atol=0)
    assert (q_new_face[:, 2:] - q[:, 2:]).abs().amin() > 0
    for bad in (dict(w_audio_dim=2), dict(w_per_stream=True, w_audio_dim=5)):
        with pytest.raises(ConfigError, match="w_audio_dim"):
            MDVAEConfig(w_dim=5, **bad)


def test_w_face_network_gives_q_w_a_face_network_of_its_own():
    """w_face_network: q(w) reads the face through its own per-frame network and summary and
    the z posteriors through the shared ones, exactly (with w held, the z posteriors do not
    move at all when q(w)'s face network does, and q(w) does not when the shared one does);
    a copy of the shared network gives the seed's model's function; the swap cycle's fixed
    judge is the same q(w)."""
    plain = tiny_model().eval()
    model = tiny_model(w_face_network=True).eval()
    model.load_state_dict(MDVAE.with_w_face_network(plain.state_dict(), True))
    x_a, x_v = inputs()
    latents, q = model.infer(x_a, x_v, sample=False)
    latents_plain, q_plain = plain.infer(x_a, x_v, sample=False)
    for g in GROUPS:
        torch.testing.assert_close(getattr(q, g).mean, getattr(q_plain, g).mean, rtol=0, atol=0)
    fixed = latents

    def nudge(module):
        with torch.no_grad():
            for p in module.parameters():
                p.add_(0.1 * torch.randn_like(p))

    nudge(model.w_features_x_v)
    moved = posterior_params(model, x_a, x_v, fixed)
    assert changed(moved["w"], posterior_params(plain, x_a, x_v, fixed)["w"])
    for g in ("z_av", "z_a", "z_v"):
        torch.testing.assert_close(moved[g], posterior_params(plain, x_a, x_v, fixed)[g],
                                   rtol=0, atol=0)
    nudge(model.features_x_v)
    shared_moved = posterior_params(model, x_a, x_v, fixed)
    torch.testing.assert_close(shared_moved["w"], moved["w"], rtol=0, atol=0)
    assert changed(shared_moved["z_av"], moved["z_av"]) and changed(shared_moved["z_v"],
                                                                      moved["z_v"])
    judged = model._posterior_w_fixed(x_a, x_v)
    torch.testing.assert_close(judged.mean, model.infer(x_a, x_v, sample=False)[1].w.mean)
    assert MDVAEConfig().w_face_network is False  # the seed's model by default
    with pytest.raises(ConfigError, match="w_face_network"):
        tiny_model(layout="authors", w_face_network=True)


def test_voice_reads_w_a_only_hides_the_faces_part_of_w_from_the_voice():
    """voice_reads_w_a_only: the voice is the plain per-stream model's decoded at w with its
    face entries zeroed; another w_v leaves the voice exactly as it was and moves the face;
    another w_a moves the voice."""
    model = tiny_model(w_per_stream=True, voice_reads_w_a_only=True)
    plain = tiny_model(w_per_stream=True)
    plain.load_state_dict(model.state_dict())
    h = model.w_audio_entries
    assert 0 < h < model.config.w_dim
    latents = plain.encode(*inputs())
    x_a_hat, x_v_hat = model.decode(latents)
    hidden = dataclasses.replace(latents, w=torch.cat(
        [latents.w[:, :h], torch.zeros_like(latents.w[:, h:])], dim=-1))
    torch.testing.assert_close(x_a_hat, plain.decode(hidden)[0], rtol=0, atol=0)
    torch.testing.assert_close(x_v_hat, plain.decode(latents)[1], rtol=0, atol=0)
    other = torch.randn_like(latents.w)
    new_face = dataclasses.replace(latents, w=torch.cat([latents.w[:, :h], other[:, h:]], -1))
    x_a_2, x_v_2 = model.decode(new_face)
    torch.testing.assert_close(x_a_2, x_a_hat, rtol=0, atol=0)
    assert (x_v_2 - x_v_hat).abs().max() > 1e-3
    new_voice = dataclasses.replace(latents, w=torch.cat([other[:, :h], latents.w[:, h:]], -1))
    assert (model.decode(new_voice)[0] - x_a_hat).abs().max() > 1e-3
    with pytest.raises(ConfigError, match="w_per_stream"):
        MDVAEConfig(voice_reads_w_a_only=True)


def test_voice_decoder_detaches_w_v_keeps_the_face_part_from_the_voice_loss():
    """voice_decoder_detaches_w_v: with the z's held fixed (so w reaches the decoders only
    directly), the voice's reconstruction sends no gradient to the face's part of q(w) but
    does to the voice's part, which the same weights without the option send to both; the
    face's reconstruction still reaches the face's part; the decoded means are unchanged."""
    model = tiny_model(w_per_stream=True, voice_decoder_detaches_w_v=True)
    plain = tiny_model(w_per_stream=True)
    plain.load_state_dict(model.state_dict())
    x_a, x_v = inputs()
    fixed, _ = plain.infer(x_a, x_v, sample=False)
    zs = dict(z_av=fixed.z_av.detach(), z_a=fixed.z_a.detach(), z_v=fixed.z_v.detach())

    def voice_grads(m):
        latents, _ = m.infer(x_a, x_v, sample=False, **zs)
        x_a_hat, x_v_hat = m.decode(latents)
        face, voice = (list(m.posterior_w.parts[i].parameters()) for i in (1, 0))
        g = torch.autograd.grad(x_a_hat.square().sum(), face + voice, retain_graph=True,
                                allow_unused=True)
        on_face = torch.autograd.grad(x_v_hat.square().sum(), face)
        return g[:len(face)], g[len(face):], on_face, x_a_hat

    face, voice, face_from_face, x_a_hat = voice_grads(model)
    plain_face, plain_voice, _, plain_x_a_hat = voice_grads(plain)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in face)
    assert all(torch.count_nonzero(g) > 0 for g in plain_face)
    for g, g_plain in zip(voice, plain_voice):
        torch.testing.assert_close(g, g_plain)
    assert all(torch.count_nonzero(g) > 0 for g in face_from_face)
    torch.testing.assert_close(x_a_hat, plain_x_a_hat, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="w_per_stream"):
        MDVAEConfig(voice_decoder_detaches_w_v=True)


def test_w_face_dropout_is_a_share():
    with pytest.raises(ConfigError, match="w_face_dropout"):
        MDVAEConfig(w_face_dropout=1.5)
    assert MDVAEConfig().w_face_dropout == 0.0  # the seed's model by default
