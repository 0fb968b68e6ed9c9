"""Generator / Discriminator: shapes and ranges at every resolution, exact sizes, conditioning."""

import pytest
import torch
from torch.nn.utils import parametrize

from gan.attention import NonLocalBlock, attention_blocks, record_attention
from gan.config import AttnLabConfig, ConfigError, ModelConfig
from gan.layers import ConditionalBatchNorm2d, DBlock, DBlockOptimized, GBlock
from gan.models import Discriminator, Generator


def tiny(resolution: int = 32, num_classes: int = 3, **kw) -> ModelConfig:
    width = 4 if resolution == 32 else 2
    defaults = dict(g_width=width, d_width=width, z_dim=8, g_attention=[16], d_attention=[16])
    return ModelConfig(resolution=resolution, num_classes=num_classes, **{**defaults, **kw})


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------------------------
# Shapes, ranges, finiteness


@pytest.mark.parametrize("resolution", [32, 64, 128])
@pytest.mark.parametrize("num_classes", [0, 5])
def test_generator_feeds_discriminator(resolution, num_classes):
    torch.manual_seed(0)
    cfg = tiny(resolution, num_classes, image_channels=1 if resolution == 64 else 3)
    G, D = Generator(cfg), Discriminator(cfg)
    z = torch.randn(3, cfg.z_dim)
    y = torch.tensor([0, 4, 2]) if num_classes else None
    x = G(z, y)
    assert x.shape == (3, cfg.image_channels, resolution, resolution)
    assert torch.isfinite(x).all() and x.abs().max() <= 1.0 and x.std() > 0
    logits = D(x, y)
    assert logits.shape == (3,) and torch.isfinite(logits).all()
    (logits.sum()).backward()  # gradients reach G through D
    assert all(torch.isfinite(p.grad).all() for p in G.parameters() if p.grad is not None)
    assert G.linear.parametrizations.weight.original.grad.abs().sum() > 0


def test_architecture_tables_at_64_and_128():
    """Block widths are BigGAN's tables scaled by `ch` = g_width / d_width."""
    ch = 2
    for resolution, g_mults, d_mults in [
        (64, [16, 16, 8, 4, 2], [1, 2, 4, 8, 16]),
        (128, [16, 16, 8, 4, 2, 1], [1, 2, 4, 8, 16, 16]),
    ]:
        G, D = Generator(tiny(resolution)), Discriminator(tiny(resolution))
        g_blocks = [b for b in G.blocks.values() if isinstance(b, GBlock)]
        assert [b.conv1.in_channels for b in g_blocks] + [g_blocks[-1].conv2.out_channels] == [m * ch for m in g_mults]
        assert G.linear.out_features == 16 * g_mults[0] * ch
        d_blocks = [b for b in D.blocks.values() if isinstance(b, (DBlock, DBlockOptimized))]
        assert isinstance(d_blocks[0], DBlockOptimized)
        assert [b.conv2.out_channels for b in d_blocks] == [m * ch for m in d_mults]
        assert [b.downsample for b in d_blocks[1:]] == [True] * (len(d_mults) - 2) + [False]


# ----------------------------------------------------------------------------------------------
# Sizes


def _conv(i, o, k):
    return i * o * k * k + o


def _lin(i, o):
    return i * o + o


def _g32(z, w, classes, channels=3):
    bn = 2 * classes * w if classes else 2 * w  # per-class gain and bias, or one affine pair
    block = bn + _conv(w, w, 3) + bn + _conv(w, w, 3) + _conv(w, w, 1)
    return _lin(z, 16 * w) + 3 * block + 2 * w + _conv(w, channels, 3)


def _d32(w, classes, channels=3):
    first = _conv(channels, w, 3) + _conv(w, w, 3) + _conv(channels, w, 1)
    down = 2 * _conv(w, w, 3) + _conv(w, w, 1)
    return first + down + 2 * (2 * _conv(w, w, 3)) + _lin(w, 1) + classes * w


def test_parameter_counts_small_config_exact():
    cfg = ModelConfig(z_dim=16, g_width=8, d_width=8, num_classes=3, g_attention=[], d_attention=[])
    assert n_params(Generator(cfg)) == _g32(16, 8, 3) == 6419
    assert n_params(Discriminator(cfg)) == _d32(8, 3) == 4449


def test_parameter_counts_sngan_cifar_size():
    """g_width 256 / d_width 128 without attention is the SNGAN CIFAR ResNet: about 4.3M and 1.05M."""
    cfg = ModelConfig(num_classes=10, g_attention=[], d_attention=[])
    torch.manual_seed(0)
    assert n_params(Generator(cfg)) == _g32(128, 256, 10) == 4_304_387
    assert n_params(Discriminator(cfg)) == _d32(128, 10) == 1_055_105


# ----------------------------------------------------------------------------------------------
# Attention placement


def test_attention_goes_after_the_block_with_that_output_side():
    torch.manual_seed(0)
    cfg = tiny(64, g_attention=[32, 8], d_attention=[16, 4])
    G, D = Generator(cfg), Discriminator(cfg)
    assert list(G.blocks) == ["block0", "attn8", "block1", "block2", "attn32", "block3"]
    # D sides 32, 16, 8, 4, 4: the block at 4 is the first of the two that output 4x4.
    assert list(D.blocks) == ["block0", "block1", "attn16", "block2", "block3", "attn4", "block4"]
    assert G.blocks["attn32"].channels == 4 * 2 and D.blocks["attn4"].channels == 8 * 2
    with record_attention(G) as g_rec, record_attention(D) as d_rec:
        D(G(torch.randn(2, cfg.z_dim), torch.tensor([0, 1])), torch.tensor([0, 1]))
    assert [(r.name, r.query_hw) for r in g_rec] == [("blocks.attn8", (8, 8)), ("blocks.attn32", (32, 32))]
    assert [(r.name, r.query_hw) for r in d_rec] == [("blocks.attn16", (16, 16)), ("blocks.attn4", (4, 4))]


def test_attention_options_come_from_config():
    cfg = tiny(
        32,
        g_width=16,
        attn_lab=AttnLabConfig(pairwise="dot_product"),
        attn_qk_divisor=4,
        attn_v_divisor=1,
        attn_subsample=False,
        attn_gate="zero_init",
        g_spectral_norm=False,
        attn_fused=False,
    )
    ((_, block),) = attention_blocks(Generator(cfg))
    assert isinstance(block, NonLocalBlock)
    assert (block.pairwise, block.qk_channels, block.v_channels) == ("dot_product", 4, 16)
    assert (block.subsample, block.gate, block.fused) == (False, "zero_init", False)
    assert not parametrize.is_parametrized(block.g)


def test_attention_levers_come_from_config():
    cfg = tiny(32, attn_lab=AttnLabConfig(logit_scale="learned", gamma_init=0.25, qk_spectral_norm=False))
    ((_, g_block),) = attention_blocks(Generator(cfg))
    assert g_block.logit_scale == "learned" and "log_tau" in dict(g_block.named_parameters())
    assert g_block.gate_value() == 0.25
    assert parametrize.is_parametrized(g_block.g) and not parametrize.is_parametrized(g_block.theta)
    ((_, plain),) = attention_blocks(Generator(tiny(32)))  # the defaults: SAGAN's block, theta normalised too
    assert (plain.logit_scale, plain.gate_value()) == ("one", 0.0) and parametrize.is_parametrized(plain.theta)


@pytest.mark.parametrize(
    "which,sides,valid", [("g", [4], "8, 16, 32"), ("d", [32], "8, 16"), ("g", [16, 64], "8, 16, 32")]
)
def test_attention_side_not_in_network_is_a_config_error(which, sides, valid):
    cfg = tiny(32, **{f"{which}_attention": sides})
    model = Generator if which == "g" else Discriminator
    with pytest.raises(ConfigError, match=f"model.{which}_attention.*valid sides: {valid}$"):
        model(cfg)


def test_unknown_resolution_is_a_config_error():
    with pytest.raises(ConfigError, match="resolution"):
        Generator(tiny(48, g_attention=[]))


# ----------------------------------------------------------------------------------------------
# Spectral normalisation


@pytest.mark.parametrize("sn", [True, False])
def test_every_weight_is_spectrally_normalised_by_flag(sn):
    cfg = tiny(32, g_spectral_norm=sn, d_spectral_norm=sn)
    for model in (Generator(cfg), Discriminator(cfg)):
        layers = [
            (n, m)
            for n, m in model.named_modules()
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.Embedding))
            and not n.endswith((".gain", ".bias"))
        ]  # conditional-BN tables are never normalised
        assert len(layers) >= 11
        assert [n for n, m in layers if parametrize.is_parametrized(m, "weight") != sn] == []
        cbn_tables = [m for m in model.modules() if isinstance(m, ConditionalBatchNorm2d)]
        assert all(not parametrize.is_parametrized(m.gain) for m in cbn_tables)


def test_normalised_weights_have_unit_spectral_norm_after_power_iterations():
    """Scale every original weight by 3: without SN the largest singular value would be 3, with SN 1."""
    torch.manual_seed(0)
    cfg = tiny(32, g_width=16, d_width=16)
    y = torch.tensor([0, 1, 2, 0])
    for model, inputs in [
        (Generator(cfg), (torch.randn(4, cfg.z_dim), y)),
        (Discriminator(cfg), (torch.randn(4, 3, 32, 32), y)),
    ]:
        layers = [(n, m) for n, m in model.named_modules() if parametrize.is_parametrized(m, "weight")]
        with torch.no_grad():
            for _, m in layers:
                m.parametrizations.weight.original.mul_(3.0)
            model.train()
            for _ in range(8):  # one power iteration per forward
                model(*inputs)
        model.eval()
        for name, m in layers:
            w = m.weight.detach().double().reshape(m.weight.shape[0], -1)
            assert torch.linalg.svdvals(w)[0].item() == pytest.approx(1.0, abs=5e-3), name


# ----------------------------------------------------------------------------------------------
# Conditioning and labels


def test_projection_discriminator_output_formula():
    torch.manual_seed(0)
    D = Discriminator(tiny(32)).eval()
    captured = {}
    D.linear.register_forward_hook(lambda mod, inp, out: captured.update(h=inp[0]))
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([2, 0, 1, 2])
    with torch.no_grad():
        out = D(x, y)
        h = captured["h"]
        expected = D.linear(h)[:, 0] + (D.embed.weight[y] * h).sum(1)
    assert (h >= 0).all()  # ReLU then sum pooling
    assert torch.allclose(out, expected, atol=1e-5)


def test_generator_labels_act_through_conditional_bn():
    torch.manual_seed(0)
    G = Generator(tiny(32)).eval()
    for bn in (m for m in G.modules() if isinstance(m, ConditionalBatchNorm2d)):
        with torch.no_grad():
            bn.bias.weight[1].normal_()  # class 1 gets its own shift; classes 0 and 2 stay identical
    z = torch.randn(1, 8).expand(3, 8)
    with torch.no_grad():
        x = G(z, torch.tensor([0, 1, 2]))
    assert torch.equal(x[0], x[2]) and not torch.allclose(x[0], x[1])


def test_label_errors():
    G, D = Generator(tiny(32)), Discriminator(tiny(32))
    z, x = torch.randn(2, 8), torch.zeros(2, 3, 32, 32)
    with pytest.raises(ValueError, match="class-conditional"):
        G(z)
    with pytest.raises(ValueError, match="class-conditional"):
        D(x)
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        G(z, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        D(x, torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="integer tensor"):
        G(z, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        D(x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"z of shape \(B, 8\)"):
        G(torch.randn(2, 7), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"images \(B, 3, 32, 32\)"):
        D(torch.zeros(2, 3, 16, 16), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"images \(B, 3, 32, 32\)"):
        D(torch.zeros(2, 1, 32, 32), torch.tensor([0, 1]))


def test_unconditional_models_ignore_labels_in_forward():
    torch.manual_seed(0)
    cfg = tiny(32, num_classes=0)
    G, D = Generator(cfg).eval(), Discriminator(cfg).eval()  # eval: no power iteration between calls
    z = torch.randn(2, 8)
    with torch.no_grad():
        assert torch.equal(G(z, torch.tensor([7, 9])), G(z))
        x = torch.randn(2, 3, 32, 32)
        assert torch.equal(D(x, torch.tensor([7, 9])), D(x))
