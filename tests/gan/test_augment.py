"""DiffAugment ops against float64 loops and against the published code's indexing, with known draws."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gan.augment import OPS, AdaptiveProbability, DiffAugment, apply, draw, parse_policy

ALL = parse_policy("color,translation,cutout")


def _images(b: int = 3, c: int = 3, h: int = 8, w: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed))


def _params(op: str, shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    (d,) = draw([op], shape, 1.0, torch.Generator().manual_seed(seed), torch.device("cpu"))
    return d.params


# ----------------------------------------------------------------------------------------------------------
# Each op vs a float64 loop


@pytest.mark.parametrize("channels", [3, 1])
def test_color_ops_match_loops(channels: int) -> None:
    x = _images(c=channels)
    xn = x.double().numpy()
    for op in ("brightness", "saturation", "contrast"):
        v = _params(op, x.shape).double().numpy()
        expected = np.empty_like(xn)
        for i in range(x.shape[0]):
            img = xn[i]
            if op == "brightness":
                expected[i] = img + v[i]
            elif op == "saturation":
                m = sum(img[c] for c in range(channels)) / channels  # (H, W) channel mean
                expected[i] = (img - m) * v[i] + m
            else:
                m = img.sum() / img.size
                expected[i] = (img - m) * v[i] + m
        got = OPS[op](x.double(), torch.from_numpy(v)).numpy()
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12, err_msg=op)
    if channels == 1:  # saturation of a one-channel image is the identity, exactly
        assert torch.equal(OPS["saturation"](x, _params("saturation", x.shape)), x)


def test_color_parameter_ranges() -> None:
    shape = (4000, 1, 2, 2)
    for op, (lo, hi) in {"brightness": (-0.5, 0.5), "saturation": (0.0, 2.0), "contrast": (0.5, 1.5)}.items():
        v = _params(op, shape)
        assert lo <= v.min() < lo + 0.01 and hi - 0.01 < v.max() < hi, op


@pytest.mark.parametrize("h,w", [(8, 8), (9, 6)])
def test_translation_matches_loop(h: int, w: int) -> None:
    x = _images(b=6, h=h, w=w)
    shift = torch.tensor([[1, 0], [-1, 1], [0, 0], [1, -1], [-1, -1], [0, 1]])
    expected = np.zeros((6, 3, h, w))
    xn = x.double().numpy()
    for b in range(6):
        dy, dx = shift[b].tolist()
        for i in range(h):
            for j in range(w):
                if 0 <= i + dy < h and 0 <= j + dx < w:
                    expected[b, :, i, j] = xn[b, :, i + dy, j + dx]
    np.testing.assert_array_equal(OPS["translation"](x.double(), shift).numpy(), expected)


def _published_translation(x: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    """DiffAugment_pytorch.rand_translation with its randint draws replaced by tx, ty (B,)."""
    translation_x, translation_y = tx.view(-1, 1, 1), ty.view(-1, 1, 1)
    grid_batch, grid_x, grid_y = torch.meshgrid(
        torch.arange(x.size(0)), torch.arange(x.size(2)), torch.arange(x.size(3)), indexing="ij"
    )
    grid_x = torch.clamp(grid_x + translation_x + 1, 0, x.size(2) + 1)
    grid_y = torch.clamp(grid_y + translation_y + 1, 0, x.size(3) + 1)
    x_pad = F.pad(x, [1, 1, 1, 1, 0, 0, 0, 0])
    return x_pad.permute(0, 2, 3, 1).contiguous()[grid_batch, grid_x, grid_y].permute(0, 3, 1, 2)


def _published_cutout(x: torch.Tensor, ox: torch.Tensor, oy: torch.Tensor) -> torch.Tensor:
    """DiffAugment_pytorch.rand_cutout (ratio 0.5) with its randint draws replaced by ox, oy (B,)."""
    cutout_size = int(x.size(2) * 0.5 + 0.5), int(x.size(3) * 0.5 + 0.5)
    offset_x, offset_y = ox.view(-1, 1, 1), oy.view(-1, 1, 1)
    grid_batch, grid_x, grid_y = torch.meshgrid(
        torch.arange(x.size(0)), torch.arange(cutout_size[0]), torch.arange(cutout_size[1]), indexing="ij"
    )
    grid_x = torch.clamp(grid_x + offset_x - cutout_size[0] // 2, min=0, max=x.size(2) - 1)
    grid_y = torch.clamp(grid_y + offset_y - cutout_size[1] // 2, min=0, max=x.size(3) - 1)
    mask = torch.ones(x.size(0), x.size(2), x.size(3), dtype=x.dtype)
    mask[grid_batch, grid_x, grid_y] = 0
    return x * mask.unsqueeze(1)


@pytest.mark.parametrize("h,w", [(8, 8), (9, 7), (32, 32)])
def test_translation_and_cutout_match_the_published_indexing(h: int, w: int) -> None:
    x = _images(b=64, h=h, w=w)
    shift, center = _params("translation", x.shape), _params("cutout", x.shape)
    assert torch.equal(OPS["translation"](x, shift), _published_translation(x, shift[:, 0], shift[:, 1]))
    assert torch.equal(OPS["cutout"](x, center), _published_cutout(x, center[:, 0], center[:, 1]))


def test_cutout_matches_loop() -> None:
    x = _images(b=3, h=8, w=8)  # square side 4: rows cy - 2 .. cy + 1, clipped
    center = torch.tensor([[0, 0], [4, 5], [8, 7]])
    expected = x.double().numpy().copy()
    for b, (cy, cx) in enumerate(center.tolist()):
        for i in range(cy - 2, cy + 2):
            for j in range(cx - 2, cx + 2):
                if 0 <= i < 8 and 0 <= j < 8:
                    expected[b, :, i, j] = 0.0
    np.testing.assert_array_equal(OPS["cutout"](x.double(), center).numpy(), expected)


@pytest.mark.parametrize("side,shifts,centers", [(32, range(-4, 5), range(0, 33)), (9, range(-1, 2), range(0, 9))])
def test_integer_parameter_ranges(side: int, shifts: range, centers: range) -> None:
    shape = (3000, 1, side, side)  # side 9: shift round(1.125) = 1, square round(4.5) = 5 (odd: centre < 9)
    assert set(_params("translation", shape).flatten().tolist()) == set(shifts)
    assert set(_params("cutout", shape).flatten().tolist()) == set(centers)


# ----------------------------------------------------------------------------------------------------------
# Draws, determinism, p


def test_draw_order_is_the_documented_one() -> None:
    b = 5
    draws = draw(
        parse_policy("color,translation"), (b, 3, 8, 8), 0.5, torch.Generator().manual_seed(7), torch.device("cpu")
    )
    g = torch.Generator().manual_seed(7)
    expected = [
        ("brightness", torch.rand(b, generator=g) - 0.5, torch.rand(b, generator=g) < 0.5),
        ("saturation", torch.rand(b, generator=g) * 2.0, torch.rand(b, generator=g) < 0.5),
        ("contrast", torch.rand(b, generator=g) + 0.5, torch.rand(b, generator=g) < 0.5),
    ]
    dy, dx = torch.randint(-1, 2, (b,), generator=g), torch.randint(-1, 2, (b,), generator=g)
    expected.append(("translation", torch.stack([dy, dx], 1), torch.rand(b, generator=g) < 0.5))
    assert [d.op for d in draws] == [e[0] for e in expected]
    for d, (_, params, mask) in zip(draws, expected, strict=True):
        assert torch.equal(d.params, params) and torch.equal(d.apply, mask)


def test_same_rng_state_same_output_and_images_are_independent() -> None:
    aug, x = DiffAugment("color,translation,cutout"), _images(b=8)
    a = aug(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, aug(x, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, aug(x, torch.Generator().manual_seed(4)))
    other = x.clone()
    other[1:] = _images(b=7, seed=9)  # change every image but the first: the first's augmentation is unchanged
    assert torch.equal(aug(other, torch.Generator().manual_seed(3))[0], a[0])
    shifts = _params("translation", (64, 3, 8, 8))
    assert len({tuple(s) for s in shifts.tolist()}) > 1  # drawn per image, not once per batch


def test_p_zero_is_identity_and_advances_the_rng_like_p_one() -> None:
    x = _images()
    g0, g1 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert DiffAugment("color,translation,cutout", p=0.0)(x, g0) is x
    DiffAugment("color,translation,cutout", p=1.0)(x, g1)
    assert torch.equal(g0.get_state(), g1.get_state())
    assert DiffAugment("")(x, g0) is x


def test_partial_p_selects_images_per_op() -> None:
    x = _images(b=400, c=1, h=2, w=2)
    (d,) = draw(["brightness"], x.shape, 0.3, torch.Generator().manual_seed(2), torch.device("cpu"))
    got = apply(x, [d])
    for i in range(x.shape[0]):
        expected = x[i] + d.params[i] if d.apply[i] else x[i]
        assert torch.equal(got[i], expected)
    assert 0.2 < d.apply.float().mean() < 0.4


# ----------------------------------------------------------------------------------------------------------
# Gradients, memory format, autocast


def test_gradients_reach_the_generator_through_every_op() -> None:
    x = _images(b=2, c=2, h=4, w=4).double()
    for op in ALL:
        draws = draw([op], x.shape, 1.0, torch.Generator().manual_seed(11), torch.device("cpu"))
        assert torch.autograd.gradcheck(lambda t, d=draws: apply(t, d), (x.clone().requires_grad_(),)), op
    weight = torch.nn.Parameter(torch.randn(4, 3 * 8 * 8, generator=torch.Generator().manual_seed(0)))
    fake = (torch.ones(2, 4) @ weight).view(2, 3, 8, 8)  # a toy generator
    DiffAugment("color,translation,cutout")(fake, torch.Generator().manual_seed(0)).square().sum().backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0


def test_translation_gradient_counts_where_each_pixel_lands() -> None:
    x = _images(b=2, c=1, h=5, w=5).requires_grad_()
    shift = torch.tensor([[1, -1], [-1, 0]])
    OPS["translation"](x, shift).sum().backward()
    expected = np.zeros((2, 1, 5, 5))
    for b, (dy, dx) in enumerate(shift.tolist()):
        for i in range(5):
            for j in range(5):
                if 0 <= i + dy < 5 and 0 <= j + dx < 5:
                    expected[b, 0, i + dy, j + dx] += 1.0
    np.testing.assert_array_equal(x.grad.numpy(), expected)


def test_channels_last_gives_the_same_values_and_keeps_the_format() -> None:
    aug, x = DiffAugment("color,translation,cutout"), _images(b=4)
    cl = x.contiguous(memory_format=torch.channels_last)
    out = aug(cl, torch.Generator().manual_seed(1))
    assert out.is_contiguous(memory_format=torch.channels_last)
    # the channel / image means reduce in another order in channels_last: equal up to float32 rounding
    torch.testing.assert_close(out, aug(x, torch.Generator().manual_seed(1)), rtol=1e-6, atol=1e-6)


def test_bf16_autocast() -> None:
    conv = torch.nn.Conv2d(3, 3, 3, padding=1)
    x = _images(b=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fake = conv(x)  # bf16 under autocast
        out = DiffAugment("color,translation,cutout")(fake, torch.Generator().manual_seed(1))
    assert fake.dtype == out.dtype == torch.bfloat16
    ref = DiffAugment("color,translation,cutout")(fake.detach().float(), torch.Generator().manual_seed(1))
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=5e-2)  # same draws; bf16 arithmetic
    out.float().sum().backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all() and conv.weight.grad.abs().sum() > 0


def test_bad_policy_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown augmentation policy 'colour'"):
        DiffAugment("colour,translation")
    assert parse_policy(" color , cutout ") == ("brightness", "saturation", "contrast", "cutout")


# ----------------------------------------------------------------------------------------------------------
# Adaptive probability


def _ada() -> AdaptiveProbability:
    return AdaptiveProbability(images_per_step=100, target=0.6, interval=2, speed_images=1000)  # steps of 0.2


def test_adaptive_probability_follows_the_hand_computed_sequence() -> None:
    ada = _ada()
    steps = [
        ([1.0, 2.0, -1.0, 3.0], 0.0),  # mid-interval: no change
        ([-1.0, -2.0, 0.0, 5.0], 0.0),  # signs +2 and -1 over 8 logits: r = 0.125 < 0.6, p = max(0 - 0.2, 0)
        ([1.0, 1.0, 1.0, 1.0], 0.0),
        ([1.0, 1.0, 1.0, -1.0], 0.2),  # r = 6 / 8 = 0.75 > 0.6: p + 0.2
        ([1.0], 0.2),
        ([1.0], 0.4),  # r = 1
        ([1.0, 1.0, 1.0], 0.4),
        ([1.0, -1.0], 0.4),  # r = 3 / 5 = 0.6 exactly: no change
    ]
    for logits, p in steps:
        ada.observe(torch.tensor(logits))
        assert ada.step() == pytest.approx(p, abs=1e-12)
    ada.p = 0.9
    for _ in range(2):
        ada.observe(torch.ones(3))
        ada.step()
    assert ada.p == 1.0  # 0.9 + 0.2, clamped
    ada.step()
    assert ada.step() == 1.0  # an interval with nothing observed leaves p alone


def test_adaptive_probability_sums_over_processes() -> None:
    ada = _ada()
    for _ in range(2):
        ada.observe(torch.ones(4))  # this process: 8 of 8 positive
        p = ada.step(reduce=lambda t: t + torch.tensor([-8, 8]))  # another process: 8 of 8 negative -> r = 0
    assert p == 0.0 and ada.state_dict()["count"] == 0
    ada.p = 0.5
    for _ in range(2):
        ada.observe(torch.ones(4))
        p = ada.step(reduce=lambda t: t + torch.tensor([4, 8]))  # other process: 6 of 8 positive -> r = 0.75
    assert p == pytest.approx(0.7, abs=1e-12)


def test_adaptive_probability_resumes_bit_exactly() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = [torch.randn(16, generator=gen) + 1.0 for _ in range(23)]  # r_t near 0.68: p moves both ways
    straight, first = _ada(), _ada()
    seen = set()
    for x in logits:
        straight.observe(x)
        seen.add(straight.step())
    for x in logits[:11]:  # stops mid-interval
        first.observe(x)
        first.step()
    resumed = _ada()
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    for x in logits[11:]:
        resumed.observe(x)
        resumed.step()
    assert resumed.state_dict() == straight.state_dict() and len(seen) > 2
    with pytest.raises(ValueError, match="adaptive-probability state"):
        resumed.load_state_dict({"p": 0.5})
    with pytest.raises(ValueError, match="p in"):
        AdaptiveProbability(images_per_step=64, p=1.5)


def test_the_hook_in_a_sagan_step_passes_gradients_to_g_and_d() -> None:
    from gan.config import ModelConfig
    from gan.losses import d_hinge, g_hinge, lecam_regularizer
    from gan.models import Discriminator, Generator

    torch.manual_seed(0)
    cfg = ModelConfig(z_dim=8, g_width=8, d_width=8, g_attention=[16], d_attention=[16])
    G, D = Generator(cfg), Discriminator(cfg)
    augment, rng = DiffAugment("color,translation,cutout"), torch.Generator().manual_seed(0)
    real, z = torch.rand(4, 3, 32, 32) * 2 - 1, torch.randn(4, 8)
    real_logits, fake_logits = D(augment(real, rng)), D(augment(G(z).detach(), rng))  # D step
    (d_hinge(real_logits, fake_logits) + 0.3 * lecam_regularizer(real_logits, fake_logits, 0.0, 0.0)).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in D.parameters() if p.requires_grad)
    g_hinge(D(augment(G(z), rng))).backward()  # G step: through the augmentation
    grads = [p.grad for p in G.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and sum(g.abs().sum() for g in grads) > 0
