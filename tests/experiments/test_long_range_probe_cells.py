"""The probe's cell options (issue 26): the block's stage, the read-out, fresh images, the black-background
objects, and where the left object's queries look."""

from __future__ import annotations

import argparse
import json
from types import SimpleNamespace

import pytest
import torch

from experiments import long_range_data, long_range_model, long_range_probe, long_range_reports, long_range_training
from gan.attention import NonLocalBlock
from gan.synthetic import FOREGROUND_THRESHOLD, CoherenceDataset


def test_stage_puts_the_block_after_that_many_down_blocks() -> None:
    torch.manual_seed(0)
    model = long_range_model.Probe(2, width=8, attention={}, stage=1)
    x = torch.randn(2, 3, 64, 64)
    assert model.block_input(x).shape == (2, 8, 16, 16)
    seen = []
    model.attention.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    assert model.trunk(x).shape == (2, 8, 8, 8) and seen == [(2, 8, 16, 16)]
    with torch.no_grad():  # gamma = 0: the block is the identity, the trunk is the conv path's
        expected = model.blocks[1](model.blocks[0](model.stem(x)))
    torch.testing.assert_close(model.trunk(x), expected)
    with pytest.raises(ValueError, match="stage must be in 0..depth"):
        long_range_model.Probe(1, width=8, attention={}, stage=2)


def test_own_block_stream_keeps_the_conv_arms_trunk_whatever_the_design() -> None:
    def build(attention, block_init="own", seed=5):
        torch.manual_seed(seed)
        return long_range_model.Probe(
            1, width=8, attention=attention, block_seed=long_range_model.block_seed(seed, block_init)
        )

    conv = build(None).state_dict()
    designs = ({}, {"qk_channels": 4}, {"pairwise": "l2"}, {"gate": "channel"})
    for attention in designs:
        state = build(attention).state_dict()
        assert all(torch.equal(conv[k], state[k]) for k in conv)  # stem, down-block and head: the conv arm's
    # the block itself: drawn from seed + BLOCK_SEED, the same for every trunk seed's conv draws before it
    torch.manual_seed(5 + long_range_model.BLOCK_SEED)
    alone = NonLocalBlock(8).state_dict()
    assert all(torch.equal(v, build({}).attention.state_dict()[k]) for k, v in alone.items())
    # shared (the first runs): the block is drawn between the stem and the down-block, so the trunk moves with it
    shared = build({"qk_channels": 4}, "shared").state_dict()
    assert torch.equal(
        shared["stem.conv1.parametrizations.weight.original"], conv["stem.conv1.parametrizations.weight.original"]
    )
    assert not torch.equal(
        shared["blocks.0.conv1.parametrizations.weight.original"],
        conv["blocks.0.conv1.parametrizations.weight.original"],
    )


def test_readouts_sum_mean_and_conv() -> None:
    x = torch.randn(3, 3, 64, 64)
    models = {}
    for readout in long_range_model.READOUTS:
        torch.manual_seed(0)
        models[readout] = long_range_model.Probe(1, width=8, readout=readout).eval()
    with torch.no_grad():
        b = models["sum"].head.bias
        # same weights: the sum read-out's logit minus the bias is 16 x 16 times the mean read-out's
        torch.testing.assert_close(models["sum"](x) - b, 256 * (models["mean"](x) - b), rtol=1e-5, atol=1e-4)
        h = torch.relu(models["conv"].trunk(x))
        by_hand = models["conv"].head(torch.relu(models["conv"].read(h)).sum((2, 3))).squeeze(1)
        torch.testing.assert_close(models["conv"](x), by_hand)
    extra = sum(p.numel() for p in models["conv"].parameters()) - sum(p.numel() for p in models["sum"].parameters())
    assert extra == 8 * 8 + 8  # the 1x1 conv's weight and bias


def test_black_objects_are_the_second_probes_images() -> None:
    data = long_range_data.BlackObjects(30, 64, seed=4)
    for i in range(len(data)):
        img, shape = data[i]
        inc, _ = data.incoherent(i)
        fg = img.amax(0) > FOREGROUND_THRESHOLD
        assert torch.equal(img[:, ~fg], torch.full_like(img[:, ~fg], -1.0))  # black outside the objects
        assert shape in (0, 1, 3)  # disc, square, cross
        cols = fg[:, :32].any(0).nonzero()
        rows = fg[:, :32].any(1).nonzero()
        assert 1 <= int(cols[0]) <= 5 and 9 <= int(rows[-1] - rows[0] + 1) <= 12  # edge within 5 px, 9-12 px
        assert torch.equal(img, img.flip(-1))  # coherent on black: the whole image is its mirror image
        assert torch.equal(img[..., :32], inc[..., :32])  # incoherent: only the right object changes


def test_fresh_stream_never_repeats_and_is_the_same_for_every_run() -> None:
    stream = long_range_data.pair_stream("builtin", 32, 100, 3, 4)
    x1, y1 = stream(1)
    x2, _ = stream(2)
    assert x1.shape == (6, 3, 32, 32) and y1.tolist() == [1, 1, 1, 0, 0, 0]
    assert not any(torch.equal(a, b) for a in x1 for b in x2)
    torch.testing.assert_close(long_range_data.pair_stream("builtin", 32, 100, 3, 4)(2)[0], x2)
    first = CoherenceDataset(12, 32, seed=100)
    torch.testing.assert_close(x2[0], first[3][0])  # step 2 starts at item 3


def _stub(attn: torch.Tensor, side: int) -> SimpleNamespace:
    """A model whose block input is a (B, 1, side, side) map and whose block (2x2 key pooling) returns `attn`."""

    def block(h: torch.Tensor, return_attention: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return h, attn

    block.pool = (2, 2)
    return SimpleNamespace(block_input=lambda x: torch.zeros(x.shape[0], 1, side, side), attention=block)


def test_look_share_by_hand() -> None:
    # 8x8 image, query grid 4x4 (2x2 px cells), key grid 2x2 (4x4 px cells). Left object: pixels (1, 1) and
    # (1, 2): query cells (0, 0) and (0, 1). Right object: pixel (5, 6): key cell (1, 1), index 3.
    x = torch.full((1, 3, 8, 8), -1.0)
    x[0, :, 1, 1:3] = 1.0
    x[0, :, 5, 6] = 1.0
    attn = torch.full((1, 16, 4), 0.25)  # uniform everywhere ...
    attn[0, 1] = torch.tensor([0.1, 0.1, 0.0, 0.8])  # ... except query (0, 1): 0.8 on the right object's key
    share, uniform = long_range_training.look_share(_stub(attn, 4), x)
    assert share == pytest.approx((0.25 + 0.8) / 2) and uniform == pytest.approx(0.25)


def test_cell_tag_names_what_differs_from_the_working_configuration() -> None:
    base = dict(
        resolution=64,
        stage=0,
        readout="sum",
        fresh=False,
        data="builtin",
        variant="objects",
        width=8,
        batch=32,
        block_init="own",
    )
    assert long_range_training.cell_tag(argparse.Namespace(**base)) == "r64"
    changed = {**base, "stage": 1, "readout": "mean", "fresh": True, "data": "black", "width": 32, "batch": 64}
    assert long_range_training.cell_tag(argparse.Namespace(**changed)) == "r64-stage1-mean-fresh-black-w32-b64"
    assert long_range_training.cell_tag(argparse.Namespace(**{**base, "variant": "detail"})) == "r64-detail"
    assert long_range_training.cell_tag(argparse.Namespace(**{**base, "block_init": "shared"})) == "r64-sharedinit"


def test_cells_run_and_report_end_to_end(tmp_path, capsys) -> None:
    common = ["--depths", "1", "--seeds", "0", "--out", str(tmp_path), "--width", "8", "--batch", "4"]
    tiny = ["--steps", "2", "--train-pairs", "4", "--test-pairs", "6", "--log-every", "1", "--stage", "1"]
    long_range_probe.main(["run", "--arms", "conv", *common, *tiny[:-2]])  # stage 0: a conv arm has no block to place
    long_range_probe.main(["run", "--arms", "attn_channel", *common, *tiny])
    result = json.loads((tmp_path / "r64-stage1-b4" / "attn_channel" / "depth1" / "seed0.json").read_text())
    assert result["settings"]["stage"] == 1 and 0.0 <= result["look_share"] <= 1.0
    assert {"residual", "gate_value", "look_share", "look_uniform"} <= set(result["log"][-1])
    long_range_probe.main(["run", "--arms", "attn_channel", "--block-init", "shared", *common, *tiny])
    capsys.readouterr()
    long_range_probe.main(["cells", "--depths", "1", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    opened = int(long_range_reports.mass_beyond(result, 16) > long_range_reports.OPENED_MASS)
    assert f"| `r64-stage1-b4` | `attn_channel` | 1 | {result['test_acc']:.3f} (1 seed) |" in printed
    assert f"| {opened} of 1 |" in printed and "rms tanh(a) " in printed
    assert "| `r64-stage1-b4` | `attn_channel` | `r64-b4` `conv` |" in printed
    # the shared-stream cell is held against the conv arm of the same setting, which has no block to draw
    assert "| `r64-stage1-b4-sharedinit` | `attn_channel` | `r64-b4` `conv` |" in printed


def _fake_run(out, cell: str, arm: str, seed: int, acc: float, **settings) -> None:
    """A run summary with the fields `cells` reads (a conv-only ERF, so no run counts as opened)."""
    e = {"gamma": 0.0, "entropy_ratio": 1.0, "grad_theta": 1.0, "grad_g": 1.0, "out_weight_norm": 1.0}
    path = out / cell / arm / "depth1" / f"seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    full = {**long_range_training.CELL_DEFAULTS, "resolution": 64, "steps": 10, **settings}
    result = {"arm": arm, "seed": seed, "test_acc": acc, "settings": full, "cpu_s": 1.0, "log": [e],
              "erf_profile": [[0.0, 1.0]], "machine": "m"}  # fmt: skip
    path.write_text(json.dumps(result))


def test_a_cells_control_is_the_conv_arm_of_the_same_data_and_settings(tmp_path, capsys) -> None:
    """Issue 33: the combined cell (black objects) was held against the built-in objects' conv arm (r64)."""
    for seed, acc in enumerate((0.50, 0.52)):
        _fake_run(tmp_path, "r64", "conv", seed, acc)  # the built-in objects' conv arm
        _fake_run(tmp_path, "r64-black", "conv", seed, acc - 0.02)  # the black objects' conv arm: 0.48, 0.50
    for seed, acc in enumerate((0.60, 0.70)):
        black = {"data": "black", "block_init": "shared"}
        _fake_run(tmp_path, "r64-stage1-black-sharedinit", "attn_lr10", seed, acc, stage=1, **black)
        _fake_run(tmp_path, "r64-fresh-black-sharedinit", "attn_lr10", seed, acc, fresh=True, **black)
    assert (
        long_range_reports.conv_cell({"resolution": 64, "data": "black", "stage": 1, "block_init": "shared"})
        == "r64-black"
    )
    long_range_probe.main(["cells", "--depths", "1", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    # stage and stream are the block's: the same data's conv arm; diff of means 0.65 - 0.49 = +0.160, by hand
    assert "| `r64-stage1-black-sharedinit` | `attn_lr10` | `r64-black` `conv` | +0.160 |" in printed
    # fresh black images: no conv arm was run on them, so no verdict, and never r64's or r64-black's
    row = "| `r64-fresh-black-sharedinit` | `attn_lr10` | none: no `conv` run at `r64-fresh-black` | - | - | - | no control |"
    assert row in printed
    assert "`r64` `conv`" not in printed
