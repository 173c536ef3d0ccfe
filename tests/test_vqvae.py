"""Stage-1 VQ-VAE: shapes and flatten order, eval-mode invariants, IS divergence, learning."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from mdvae.errors import ConfigError
from mdvae.stage1.vqvae import (
    LOG_POWER_CENTER,
    LOG_POWER_SCALE,
    VQVAE,
    VQVAEConfig,
    frames_to_input,
    itakura_saito,
    itakura_saito_from_log,
    output_to_frames,
)

TINY = dict(channels=(8, 16, 16), res_blocks=1, res_channels=8)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Small convolutions: a second thread only adds contention on a shared 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(modality, seed=0, **overrides):
    torch.manual_seed(seed)
    return VQVAE(VQVAEConfig(modality=modality, **{**TINY, **overrides}))


def example_input(modality, batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    if modality == "visual":
        return torch.rand(batch, 3, 64, 64, generator=g)
    return torch.exp(torch.randn(batch, 513, generator=g) * 3)  # power over many decades


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["default", "mead"])
def test_feature_sizes_are_fixed_by_modality(preset):
    make = VQVAEConfig if preset == "default" else VQVAEConfig.mead
    visual = make(modality="visual")
    audio = make(modality="audio")
    assert (visual.codebook_size, visual.code_dim, visual.feature_dim) == (512, 32, 2048)
    assert (audio.codebook_size, audio.code_dim, audio.feature_dim) == (64, 8, 512)


def test_config_round_trip_and_bad_values():
    config = VQVAEConfig.mead("audio", commitment_beta=0.5)
    assert VQVAEConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="modality"):
        VQVAEConfig(modality="video")
    with pytest.raises(ConfigError, match="channels"):
        VQVAEConfig(channels=(8, 16))
    with pytest.raises(ConfigError, match="code_dim"):
        VQVAEConfig.from_dict({"code_dim": "8"})


# -- shapes and the feature layout -----------------------------------------------------------


@pytest.mark.parametrize("modality", ["visual", "audio"])
def test_shapes_with_leading_batch_dims(modality):
    model = tiny(modality).eval()
    x = example_input(modality, batch=6).reshape(2, 3, *model.input_shape)  # (B, T, ...)
    with torch.no_grad():
        features = model.encode(x)
        assert features.shape == (2, 3, model.config.feature_dim)
        assert model.decode_features(features).shape == x.shape
        out = model(x[0])
    assert out.x_hat.shape == x[0].shape
    assert out.indices.shape == (3, 64)
    with pytest.raises(ValueError, match="expects"):
        model.encode(torch.zeros(2, 7))


def test_visual_features_are_flattened_cell_major():
    model = tiny("visual").eval()
    x = example_input("visual")
    with torch.no_grad():
        grid = model.encoder(x - 0.5)  # (B, 32, 8, 8)
        features = model.encode(x)
    assert torch.equal(features, rearrange(grid, "b d h w -> b (h w d)"))
    assert torch.equal(features[:, 32 * (8 * 2 + 5) : 32 * (8 * 2 + 6)], grid[:, :, 2, 5])


def test_audio_features_are_flattened_position_major():
    model = tiny("audio").eval()
    x = example_input("audio")
    with torch.no_grad():
        log_power = torch.log(x + model.config.power_floor)
        grid = model.encoder(((log_power - LOG_POWER_CENTER) / LOG_POWER_SCALE).unsqueeze(1))
        features = model.encode(x)
    assert torch.equal(features[:, 8 * 10 : 8 * 11], grid[:, :, 10])


# -- eval-mode invariants ----------------------------------------------------------------------


@pytest.mark.parametrize("modality", ["visual", "audio"])
def test_decoding_features_or_indices_equals_forward_in_eval_mode(modality):
    model = tiny(modality).eval()
    x = example_input(modality)
    with torch.no_grad():
        out = model(x)
        features = model.encode(x)
        assert torch.equal(model.quantize_features(features).indices, out.indices)
        assert torch.equal(model.decode_features(features), out.x_hat)
        assert torch.equal(model.decode_indices(out.indices), out.x_hat)


@pytest.mark.parametrize("modality", ["visual", "audio"])
def test_training_forward_updates_codebook_and_eval_does_not(modality):
    model = tiny(modality)
    x = example_input(modality, batch=4)
    before = model.quantizer.embedding.clone()
    with torch.no_grad():
        model.eval()(x)
        model.decode_features(model.encode(x))
    assert torch.equal(model.quantizer.embedding, before)
    model.train()(x)
    assert not torch.equal(model.quantizer.embedding, before)


# -- frames helpers ----------------------------------------------------------------------------


def test_frames_round_trip_and_refusals():
    frames = np.random.default_rng(0).integers(0, 256, (2, 5, 64, 64, 3), dtype=np.uint8)
    x = frames_to_input(frames)
    assert x.shape == (2, 5, 3, 64, 64) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert np.array_equal(output_to_frames(x), frames)
    assert np.array_equal(VQVAE.prepare_visual(frames), x)
    assert output_to_frames(torch.full((1, 3, 64, 64), 1.7)).max() == 255  # clamped
    with pytest.raises(ValueError, match="uint8"):
        frames_to_input(frames.astype(np.float32))
    with pytest.raises(ValueError, match="64, 64, 3"):
        frames_to_input(frames[..., :32, :])


# -- audio: positive power, Itakura-Saito ------------------------------------------------------


def test_itakura_saito_values():
    x = torch.tensor([1.0, 2.0, 1e-6, 3e4])
    assert torch.equal(itakura_saito(x, x), torch.zeros(4))
    y = torch.tensor([2.0, 1.0, 1.0, 3e3])
    d = itakura_saito(x, y)
    assert (d > 0).all()
    # d(x|y) = x/y - ln(x/y) - 1
    assert d[0].item() == pytest.approx(0.5 + math.log(2) - 1, rel=1e-6)  # 0.19315
    assert d[1].item() == pytest.approx(1 - math.log(2), rel=1e-6)  # 0.30685
    assert d[2].item() == pytest.approx(1e-6 - math.log(1e-6) - 1, rel=1e-6)
    assert d[3].item() == pytest.approx(9 - math.log(10), rel=1e-6)  # depends on x/y only
    assert torch.allclose(itakura_saito_from_log(torch.log(x), torch.log(y)), d)


def test_audio_output_is_positive_and_loss_is_is_divergence():
    model = tiny("audio").eval()
    x = example_input("audio", batch=4)
    x[0] = 0.0  # digital silence
    x[1] *= 1e6  # very loud
    with torch.no_grad():
        out = model(x)
    assert (out.x_hat > 0).all() and torch.isfinite(out.x_hat).all()
    floored = x + model.config.power_floor
    expected = itakura_saito(floored, out.x_hat).mean()
    assert out.loss.reconstruction.item() == pytest.approx(expected.item(), rel=1e-4)
    beta = model.config.commitment_beta
    assert torch.allclose(out.loss.total, out.loss.reconstruction + beta * out.loss.commitment)


def test_visual_loss_is_mse_plus_commitment():
    model = tiny("visual").eval()
    x = example_input("visual")
    with torch.no_grad():
        out = model(x)
    assert torch.allclose(out.loss.reconstruction, F.mse_loss(out.x_hat, x))
    assert out.loss.commitment > 0


# -- learning ----------------------------------------------------------------------------------


def colour_fields(n, g):
    """Smooth images: a random 4x4 grid of palette colours, bilinearly upsampled to 64x64."""
    palette = torch.tensor(
        [[0.9, 0.1, 0.1], [0.1, 0.8, 0.2], [0.2, 0.3, 0.9], [0.9, 0.9, 0.2],
         [0.8, 0.3, 0.8], [0.1, 0.8, 0.8], [1.0, 1.0, 1.0], [0.5, 0.3, 0.1]]
    )  # fmt: skip
    low = rearrange(palette[torch.randint(8, (n, 4, 4), generator=g)], "n h w c -> n c h w")
    return F.interpolate(low, size=64, mode="bilinear", align_corners=False)


def peaky_spectra(n, g):
    """Smooth power spectra over ~8 decades: a random tilt and gain plus three resonances."""
    f = torch.arange(513.0)
    log10_power = -1 - 3 * f / 513 + 0.5 * torch.randn(n, 1, generator=g)
    for _ in range(3):
        centre = 20 + 400 * torch.rand(n, 1, generator=g)
        width = 5 + 20 * torch.rand(n, 1, generator=g)
        height = 1 + 3 * torch.rand(n, 1, generator=g)
        log10_power = log10_power + height * torch.exp(-((f - centre) ** 2) / (2 * width**2))
    return 10.0**log10_power


@pytest.mark.slow
@pytest.mark.parametrize("modality", ["visual", "audio"])
def test_learns_a_structured_toy_set_far_better_than_the_mean(modality):
    g = torch.Generator().manual_seed(0)
    data = colour_fields(256, g) if modality == "visual" else peaky_spectra(256, g)
    model = tiny(modality, channels=(16, 32, 32), res_channels=16)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(250 if modality == "visual" else 300):
        out = model(data[torch.randint(len(data), (16,), generator=g)])
        optimiser.zero_grad()
        out.loss.total.backward()
        optimiser.step()

    model.eval()
    with torch.no_grad():
        out = model(data)
    mean = data.mean(0, keepdim=True).expand_as(data)
    if modality == "visual":
        # The mean image is the best constant under MSE...
        baseline = F.mse_loss(mean, data)
    else:
        # ...and the mean power spectrum is the best constant under IS divergence.
        baseline = itakura_saito(data, mean).mean()
        assert (out.x_hat > 0).all()
    ratio = (baseline / out.loss.reconstruction).item()
    assert ratio > 8, f"reconstruction only {ratio:.1f}x better than the mean"
    assert out.perplexity > 10  # many codes in use, not a collapsed codebook
