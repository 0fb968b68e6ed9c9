"""A discriminator whose receptive field is a setting (model.d_depth, d_extra_blocks, d_extra_kernel, d_output):
map sides and fields against hand-computed tables, the field against a gradient, patch logits against a float64
reference, one-line errors, and checkpoints / exports that carry the new keys."""

import pytest
import torch

from gan.checkpoint import save_checkpoint
from gan.config import ConfigError, ModelConfig, from_dict, load_config, to_dict
from gan.models import Discriminator, Generator, d_receptive_field, load_discriminator, load_generator
from gan.pretrained import export_generator


def model(resolution: int, **kw) -> ModelConfig:
    base = dict(resolution=resolution, d_width=2, g_width=2, z_dim=8, g_attention=[], d_attention=[])
    return ModelConfig(**{**base, **kw})


# Hand-computed: each down-block halves the side; the 32x32 table's last two blocks keep it.
SIDES = {32: [16, 8, 8, 8], 64: [32, 16, 8, 4, 4], 128: [64, 32, 16, 8, 4, 4]}
# Hand-computed fields: conv3, conv3, pool2 of the first block give 6 px at jump 2; every down-block adds
# 2 jump + 2 jump + jump and doubles the jump; a block that keeps the side adds 2 jump + 2 jump.
FIELDS = {32: [6, 16, 32, 48], 64: [6, 16, 36, 76, 140], 128: [6, 16, 36, 76, 156, 284]}


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_truncated_map_sides_and_fields_at_every_resolution(resolution):
    x = torch.randn(1, 3, resolution, resolution)
    for depth, (side, field) in enumerate(zip(SIDES[resolution], FIELDS[resolution])):
        D = Discriminator(model(resolution, d_depth=depth))
        assert D.features(x).shape == (1, D.blocks[f"block{depth}"].conv2.out_channels, side, side)
        assert d_receptive_field(model(resolution, d_depth=depth))[0] == field
        assert D(x).shape == D(x, per_position=True).shape == (1,)  # a sum D: one logit per image either way
        patch = Discriminator(model(resolution, d_depth=depth, d_output="patch"))
        assert patch(x, per_position=True).shape == (1, side, side) and patch(x).shape == (1,)
    # extra blocks keep the side and the width; 3x3 ones widen the field by 4 jumps, 1x1 ones not at all
    extra = Discriminator(model(resolution, d_depth=1, d_extra_blocks=2, d_output="patch"))
    assert extra(x, per_position=True).shape == (1, SIDES[resolution][1], SIDES[resolution][1])
    assert len(extra.blocks) == 4
    assert extra.receptive_field == 16 + 2 * 4 * 4
    assert Discriminator(model(resolution, d_depth=1, d_extra_blocks=2, d_extra_kernel=1)).receptive_field == 16


def test_full_depth_is_sagans_d():
    """d_depth null and d_depth = all blocks build the same network (same weights from the same seed)."""
    x = torch.randn(2, 3, 64, 64)
    outs = []
    for depth in (None, 4):
        torch.manual_seed(0)
        D = Discriminator(model(64, d_depth=depth, d_attention=[16]))
        outs.append((D.state_dict(), D(x)))
    (a, out_a), (b, out_b) = outs
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(out_a, out_b)


@pytest.mark.parametrize(
    "resolution, overrides, position, rows, cols, jump",
    [
        # (i, j) sees jump * i + (jump - 1) / 2 +/- (field - 1) / 2, worked out by hand per case
        (32, dict(d_depth=0), (5, 9), (8, 13), (16, 21), 2),  # 6 px: [2i - 2, 2i + 3]
        (32, dict(d_depth=1), (3, 4), (6, 21), (10, 25), 4),  # 16 px: [4i - 6, 4i + 9]
        (32, dict(d_depth=0, d_extra_blocks=1), (7, 9), (8, 21), (12, 25), 2),  # 14 px: [2i - 6, 2i + 7]
        (32, dict(d_depth=1, d_extra_blocks=1, d_extra_kernel=1), (4, 3), (10, 25), (6, 21), 4),  # 16 px
        (64, dict(d_depth=2), (4, 3), (18, 53), (10, 45), 8),  # 36 px: [8i - 14, 8i + 21]
    ],
)
def test_theoretical_field_matches_a_gradient(resolution, overrides, position, rows, cols, jump):
    """Backprop from one position of the trunk (random weights, float64): the input pixels with a non-zero
    gradient fill exactly the stated field's square, edges included."""
    torch.manual_seed(0)
    cfg = model(resolution, d_width=8, d_spectral_norm=False, **overrides)
    D = Discriminator(cfg).double()
    x = torch.randn(1, 3, resolution, resolution, dtype=torch.float64, requires_grad=True)
    i, j = position
    D.features(x)[0, :, i, j].sum().backward()
    hit = x.grad.abs().sum(dim=(0, 1)) > 0  # (R, R)
    ys, xs = hit.nonzero(as_tuple=True)
    assert (ys.min().item(), ys.max().item()) == rows and (xs.min().item(), xs.max().item()) == cols
    side = rows[1] - rows[0] + 1
    assert d_receptive_field(cfg) == (side, jump)


@pytest.mark.parametrize("num_classes", [0, 3])
def test_patch_logits_are_the_head_at_each_position(num_classes):
    """A patch logit = w . ReLU(h_p) + b [+ <embed(y), ReLU(h_p)>], by a float64 loop over positions."""
    torch.manual_seed(0)
    D = Discriminator(model(32, d_depth=1, d_output="patch", num_classes=num_classes)).eval()
    x = torch.randn(2, 3, 32, 32)
    y = torch.tensor([0, 2]) if num_classes else None
    out = D(x, y, per_position=True)
    h = torch.relu(D.features(x)).double()  # (B, C, 8, 8)
    w, b = D.linear.weight.double()[0], D.linear.bias.double()[0]
    for n in range(2):
        weight = w + (D.embed.weight.double()[y[n]] if num_classes else 0.0)
        for p in range(8):
            for q in range(8):
                expected = sum(weight[c].item() * h[n, c, p, q].item() for c in range(h.shape[1])) + b.item()
                assert out[n, p, q].item() == pytest.approx(expected, abs=1e-5)
    assert torch.allclose(D(x, y), out.double().mean(dim=(1, 2)).float())  # the image's logit: their mean


def test_impossible_values_fail_in_one_line():
    cases = [
        (model(64, d_depth=5), "config key 'model.d_depth' must be 0 to 4 at resolution 64"),
        (model(32, d_depth=4), "config key 'model.d_depth' must be 0 to 3 at resolution 32"),
        (
            model(64, d_depth=1, d_attention=[8]),
            "has side 8, which no block outputs at resolution 64; valid sides: 16, 32",
        ),
    ]
    for cfg, message in cases:
        with pytest.raises(ConfigError, match=message) as err:
            Discriminator(cfg)
        assert "\n" not in str(err.value)
    for override, message in [
        ("model.d_depth=-1", r"config key 'model.d_depth' must be at least 0 \(or null: SAGAN's D"),
        ("model.d_depth=two", "config key 'model.d_depth' expects int or null, got 'two'"),
        ("model.d_extra_blocks=-2", "config key 'model.d_extra_blocks' must be at least 0"),
        ("model.d_extra_kernel=5", "config key 'model.d_extra_kernel' must be one of 1, 3"),
        ("model.d_output=mean", "config key 'model.d_output' must be one of sum, patch"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(None, [override])


def test_config_round_trips_the_new_keys():
    assert load_config(None, []).model.d_depth is None  # the default: SAGAN's D
    for overrides in (
        [],
        ["model.d_depth=1", "model.d_output=patch", "model.d_extra_blocks=2"],
        ["model.d_depth=null"],
    ):
        cfg = load_config(None, overrides)
        assert from_dict(to_dict(cfg)) == cfg
    old = to_dict(load_config(None, []))
    for key in ("d_depth", "d_extra_blocks", "d_extra_kernel", "d_output"):
        del old["model"][key]  # a config.json written before the keys existed
    assert from_dict(old) == load_config(None, [])


def test_checkpoint_and_export_carry_the_local_d(tmp_path):
    cfg = load_config(None, ["model.resolution=64", "model.g_width=2", "model.d_width=4", "model.g_attention=[]",
                             "model.d_depth=1", "model.d_extra_blocks=1", "model.d_extra_kernel=1",
                             "model.d_attention=[16]", "model.d_output=patch"])  # fmt: skip
    torch.manual_seed(0)
    G, D = Generator(cfg.model).eval(), Discriminator(cfg.model).eval()
    state = {"G": G.state_dict(), "G_ema": None, "D": D.state_dict()}
    save_checkpoint(tmp_path / "run" / "checkpoints", state, step=2, config=cfg, keep_last=1)
    export = export_generator(tmp_path / "gen", G, cfg)
    x = torch.randn(2, 3, 64, 64)
    loaded_d, loaded_cfg, step = load_discriminator(tmp_path / "run")
    assert step == 2 and loaded_cfg == cfg and torch.equal(loaded_d(x, per_position=True), D(x, per_position=True))
    assert loaded_d(x, per_position=True).shape == (2, 16, 16)
    z = torch.randn(2, cfg.model.z_dim)
    for path in (export, tmp_path / "run"):
        loaded_g, loaded_cfg = load_generator(path)
        assert loaded_cfg.model.d_depth == 1 and loaded_cfg.model.d_output == "patch"
        assert torch.equal(loaded_g(z), G(z))


def test_coordinate_channels_are_the_pixel_positions_and_keep_the_field_local():
    """model.d_coords: the first conv sees the image and two more channels, x (column) and y (row) from -1 to 1,
    by hand; the field is unchanged (a gradient from one position reaches only its square), and the same content
    at two places now scores differently, which is what lets a local D judge where objects are."""
    torch.manual_seed(0)
    cfg = model(32, d_width=8, d_depth=1, d_output="patch", d_coords=True, d_spectral_norm=False)
    D = Discriminator(cfg).double()
    seen = []
    D.blocks["block0"].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, requires_grad=True)
    D.features(x)[0, :, 3, 4].sum().backward()
    (inp,) = seen
    assert inp.shape == (2, 5, 32, 32) and torch.equal(inp[:, :3], x)
    for r, c in [(0, 0), (0, 31), (31, 0), (12, 20)]:
        assert inp[1, 3, r, c].item() == pytest.approx(-1 + 2 * c / 31)  # x: the column
        assert inp[1, 4, r, c].item() == pytest.approx(-1 + 2 * r / 31)  # y: the row
    ys, xs = (x.grad.abs().sum(dim=(0, 1)) > 0).nonzero(as_tuple=True)
    assert (ys.min().item(), ys.max().item(), xs.min().item(), xs.max().item()) == (6, 21, 10, 25)  # as without
    flat = torch.zeros(1, 3, 32, 32, dtype=torch.float64)
    logits = D(flat, per_position=True)[0]
    assert logits.std() > 0  # the same (empty) content scores by where it is
    plain = Discriminator(model(32, d_width=8, d_depth=1, d_output="patch")).double()
    assert plain(flat, per_position=True)[0, 2:6, 2:6].std() < 1e-12  # without coordinates, inner positions agree
    assert "coordinate channels" in Discriminator(cfg).summary()
