"""gan/sampling.py: latents drawn by seed (z, then labels), truncation, batched generation, sample_images.

References are written out by hand here (torch.randn / randint on a seeded CPU generator, G called directly),
never through the module under test."""

import math

import pytest
import torch

from gan.config import ConfigError, ModelConfig
from gan.models import Generator
from gan.sampling import draw_latents, generate, sample_images, truncated_normal


def tiny_G(num_classes: int) -> Generator:
    torch.manual_seed(0)
    return Generator(ModelConfig(num_classes=num_classes, z_dim=8, g_width=4, g_attention=[16])).eval()


def test_draw_latents_draws_z_then_labels_from_one_seeded_cpu_generator():
    G = tiny_G(num_classes=5)
    z, labels = draw_latents(G, seed=3, num=6)
    gen = torch.Generator().manual_seed(3)
    assert torch.equal(z, torch.randn(6, 8, generator=gen))
    assert torch.equal(labels, torch.randint(5, (6,), generator=gen))
    z2, fixed = draw_latents(G, seed=3, num=6, label=2)
    assert torch.equal(z2, z) and fixed.tolist() == [2] * 6
    z_u, none = draw_latents(tiny_G(num_classes=0), seed=3, num=6)
    assert none is None and torch.equal(z_u, z)


def test_draw_latents_interpolates_rows_between_seeded_endpoints():
    G = tiny_G(num_classes=3)
    z, labels = draw_latents(G, seed=1, num=2, interpolate=3)
    gen = torch.Generator().manual_seed(1)
    ends = torch.randn(4, 8, generator=gen)  # 2 starts, then 2 ends
    row_labels = torch.randint(3, (2,), generator=gen)
    for row in range(2):
        start, end = ends[row], ends[2 + row]
        for k, t in enumerate((0.0, 0.5, 1.0)):
            assert torch.allclose(z[row * 3 + k], start + t * (end - start), atol=1e-6)
    assert labels.tolist() == [row_labels[0].item()] * 3 + [row_labels[1].item()] * 3


def test_draw_latents_refuses_a_class_in_one_line():
    with pytest.raises(ConfigError, match="unconditional"):
        draw_latents(tiny_G(num_classes=0), seed=0, label=1)
    with pytest.raises(ConfigError, match=r"\[0, 2\]"):
        draw_latents(tiny_G(num_classes=3), seed=0, label=3)


def test_truncated_normal_resamples_rather_than_clips():
    t = 0.75
    z = truncated_normal((200, 100), t, generator=torch.Generator().manual_seed(0))
    assert z.abs().max() <= t
    assert (z.abs() == t).sum() == 0  # clipping would pile up mass at +-t
    # Variance of N(0, 1) truncated to [-t, t]: 1 - 2 t phi(t) / (2 Phi(t) - 1).
    phi = math.exp(-t * t / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(t / math.sqrt(2))
    expected_var = 1 - 2 * t * phi / mass
    assert z.var().item() == pytest.approx(expected_var, rel=0.02)
    assert abs(z.mean().item()) < 0.01
    plain = truncated_normal((3, 4), None, generator=torch.Generator().manual_seed(0))
    assert torch.equal(plain, torch.randn(3, 4, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="positive"):
        truncated_normal((2,), 0.0)


def test_sample_images_is_draw_latents_then_G_and_restores_the_modes():
    G = tiny_G(num_classes=5).train()
    images = sample_images(G, 6, seed=3, truncation=0.5)
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(6, 8, generator=gen)
    while (z.abs() > 0.5).any():  # the truncation, redrawn by hand
        outside = z.abs() > 0.5
        z[outside] = torch.randn(int(outside.sum()), generator=gen)
    y = torch.randint(5, (6,), generator=gen)
    with torch.no_grad():
        by_hand = G.eval()(torch.cat([z, z[-1:].expand(58, -1)]), torch.cat([y, y[-1:].expand(58)]))[:6]
    G.train()
    assert torch.equal(images, by_hand)  # one pass of CHUNK rows, the padding dropped
    assert images.dtype == torch.float32 and images.shape == (6, 3, 32, 32)
    assert G.training and all(m.training for m in G.modules())  # eval for the look, then restored
    assert torch.equal(sample_images(G, 6, seed=3, truncation=0.5), images)  # and again, bit for bit


def test_generate_gives_each_latent_the_same_image_whatever_n_and_chunk_position():
    G = tiny_G(num_classes=0)
    z = torch.randn(70, 8, generator=torch.Generator().manual_seed(0))  # two passes: 64 + 6 padded
    many = generate(G, z)
    assert torch.equal(generate(G, z[64:]), many[64:]) and torch.equal(generate(G, z[:5]), many[:5])
    with torch.no_grad():
        assert torch.equal(G(z[:64]), many[:64])
