import torch

from mdvae.model.gaussian import DiagonalGaussian, kl_divergence
from mdvae.model.observation import GaussianNLL


def _random_gaussian(shape, generator, scale=1.0):
    mean = scale * torch.randn(shape, generator=generator, dtype=torch.float64)
    logvar = 0.5 * torch.randn(shape, generator=generator, dtype=torch.float64)
    return DiagonalGaussian(mean, logvar)


def test_closed_form_kl_matches_monte_carlo():
    gen = torch.Generator().manual_seed(0)
    q = _random_gaussian((3, 4), gen)
    p = _random_gaussian((3, 4), gen)
    n = 200_000
    noise = torch.randn((n, 3, 4), generator=gen, dtype=torch.float64)
    samples = q.mean + q.std * noise  # (n, 3, 4)
    log_ratio = q.log_prob(samples) - p.log_prob(samples)  # (n, 3)
    mc = log_ratio.mean(0)
    stderr = log_ratio.std(0) / n**0.5
    closed = kl_divergence(q, p)
    assert closed.shape == (3,)
    assert torch.all((mc - closed).abs() < 4 * stderr + 1e-3), (mc, closed, stderr)


def test_kl_to_standard_normal_and_to_itself():
    gen = torch.Generator().manual_seed(1)
    q = _random_gaussian((5, 7), gen)
    standard = DiagonalGaussian.standard((5, 7), like=q.mean)
    torch.testing.assert_close(q.kl_standard_normal(), kl_divergence(q, standard))
    torch.testing.assert_close(q.kl(q), torch.zeros(5, dtype=torch.float64))
    assert torch.all(kl_divergence(q, _random_gaussian((5, 7), gen)) > 0)


def test_log_prob_matches_torch_distributions():
    gen = torch.Generator().manual_seed(2)
    q = _random_gaussian((2, 6, 3), gen)
    x = torch.randn((2, 6, 3), generator=gen, dtype=torch.float64)
    reference = torch.distributions.Normal(q.mean, q.std).log_prob(x).sum(-1)
    torch.testing.assert_close(q.log_prob(x), reference)


def test_rsample_uses_given_noise_and_has_the_right_moments():
    gen = torch.Generator().manual_seed(3)
    q = _random_gaussian((4,), gen)
    noise = torch.randn((4,), generator=gen, dtype=torch.float64)
    torch.testing.assert_close(q.rsample(noise), q.mean + torch.exp(0.5 * q.logvar) * noise)
    big = DiagonalGaussian(q.mean.expand(100_000, 4), q.logvar.expand(100_000, 4))
    draws = big.rsample(generator=gen)
    torch.testing.assert_close(draws.mean(0), q.mean, atol=0.03, rtol=0)
    torch.testing.assert_close(draws.var(0), q.var, atol=0.0, rtol=0.03)


def test_from_params_splits_mean_and_logvar_and_indexes_batch_axes():
    params = torch.arange(12.0).reshape(2, 6)
    q = DiagonalGaussian.from_params(params)
    torch.testing.assert_close(q.mean, params[:, :3])
    torch.testing.assert_close(q.logvar, params[:, 3:])
    torch.testing.assert_close(q[1].mean, params[1, :3])


def test_observation_nll_matches_log_prob_and_its_gradients():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    mean = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    logvar = torch.randn(5, generator=gen, dtype=torch.float64, requires_grad=True)
    reference = -DiagonalGaussian(mean, logvar.expand_as(mean)).log_prob(x).sum(1)  # (B,)
    torch.testing.assert_close(GaussianNLL.apply(x, mean, logvar), reference)
    assert torch.autograd.gradcheck(GaussianNLL.apply, (x, mean, logvar))


def test_decoder_frame_nll_sums_to_the_sequence_nll():
    from mdvae.model.observation import GaussianDecoder

    decoder = GaussianDecoder(4, 8, 5, logvar_min=-2.0).eval()
    with torch.no_grad():
        decoder.logvar.copy_(torch.tensor([-3.0, -1.0, 0.0, 0.5, 1.0]))  # one below the floor
    gen = torch.Generator().manual_seed(5)
    x, mean = torch.randn(3, 6, 5, generator=gen), torch.randn(3, 6, 5, generator=gen)
    frames = decoder.frame_negative_log_likelihood(x, mean)
    assert frames.shape == (3, 6)
    torch.testing.assert_close(frames.sum(1), decoder.negative_log_likelihood(x, mean))
