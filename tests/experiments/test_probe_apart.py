"""The probes built apart (docs/probes_apart.md): the generators' tie and marginals, the receptive-field claim,
the attention-share measurement and the learns rule against hand-computed values, the command line end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from experiments import probe_apart as pa
from experiments import probe_apart_data as data
from experiments.probe_apart_model import (
    ProbeNet,
    block_look,
    block_side,
    grid_masks,
    look_share,
    position_zeroed,
    receptive_field,
)

PROBES = list(data.PROBES)


def _object_pixels(img: np.ndarray, box: tuple[int, int, int]) -> np.ndarray:
    """The foreground pixels of a box: (side, side) bool."""
    x0, y0, s = box
    return img[:, y0 : y0 + s, x0 : x0 + s].max(0) > data.FOREGROUND


def _attribute_from_pixels(probe: str, img: np.ndarray, box: tuple[int, int, int]) -> int:
    """The object's attribute read back from the pixels alone: the bar mask it matches, or its number of dots."""
    fg = _object_pixels(img, box)
    if probe == "bars":
        masks = {
            (k, t): data.bar_mask(box[2], t * np.pi / 4, n) for k, n in enumerate(data.Bars.values) for t in range(4)
        }
        hits = {k for (k, _), mask in masks.items() if np.array_equal(fg, mask)}
        assert len(hits) == 1
        return hits.pop()
    return data.Dots.values.index(int(fg.sum()) // data.Dots.dot**2)  # dots of 3x3 px


@pytest.mark.parametrize("probe", PROBES)
def test_tie_holds_in_positives_and_is_broken_in_negatives(probe: str) -> None:
    for it in data.items(probe, 3, 0, 60):
        a, b_pos, b_neg = (_attribute_from_pixels(probe, img, box) for img, box in
                           ((it.positive, it.boxes[0]), (it.positive, it.boxes[1]), (it.negative, it.boxes[1])))  # fmt: skip
        assert (a, b_pos, b_neg) == it.attributes
        assert a == b_pos and a != b_neg
        # the pair differs only inside the second object's box: background and first object are shared
        x0, y0, s = it.boxes[1]
        outside = np.ones(it.positive.shape[1:], dtype=bool)
        outside[y0 : y0 + s, x0 : x0 + s] = False
        assert np.array_equal(it.positive[:, outside], it.negative[:, outside])
        assert not np.array_equal(it.positive, it.negative)
        # backgrounds below the foreground threshold, objects above it, and the boxes apart by the field
        bg = np.ones(outside.shape, dtype=bool)
        for x0, y0, s in it.boxes:
            bg[y0 : y0 + s, x0 : x0 + s] = False
        assert it.positive.max(0)[bg].max() < data.FOREGROUND
        assert data.box_gap(*it.boxes) >= receptive_field()


@pytest.mark.parametrize("probe", PROBES)
def test_each_object_alone_has_the_same_distribution_in_both_classes(probe: str) -> None:
    n = 2000
    batch = data.items(probe, 5, 0, n)
    k = len(data.PROBES[probe].values)
    first = np.bincount([it.attributes[0] for it in batch], minlength=k) / n
    second_pos = np.bincount([it.attributes[1] for it in batch], minlength=k) / n
    second_neg = np.bincount([it.attributes[2] for it in batch], minlength=k) / n
    tol = 4 * math.sqrt((1 / k) * (1 - 1 / k) / n)  # four binomial SEs around 1/k
    for hist in (first, second_pos, second_neg):
        assert np.all(np.abs(hist - 1 / k) < tol), hist
    # the second object's attribute histogram is the same in both classes (within two samples' noise)
    assert np.all(np.abs(second_pos - second_neg) < tol * math.sqrt(2))
    # ... while the joint differs completely: the tie holds in every positive and no negative
    assert all(it.attributes[0] == it.attributes[1] != it.attributes[2] for it in batch)


@pytest.mark.parametrize("probe", PROBES)
def test_generators_are_deterministic_under_a_seed_and_slice_alone(probe: str) -> None:
    whole, part, again = data.items(probe, 9, 0, 8), data.items(probe, 9, 5, 3), data.items(probe, 9, 5, 3)
    for a, b, c in zip(whole[5:], part, again):
        assert np.array_equal(a.positive, b.positive) and np.array_equal(b.negative, c.negative)
        assert a.boxes == b.boxes and a.attributes == c.attributes
    other = data.items(probe, 10, 5, 3)
    assert not all(np.array_equal(a.positive, b.positive) for a, b in zip(part, other))
    x, y = data.stack(part)
    assert x.shape == (6, data.PROBES[probe].channels, data.PROBES[probe].resolution, data.PROBES[probe].resolution)
    assert y.tolist() == [1, 1, 1, 0, 0, 0]


def test_one_sided_rules_on_per_object_scores_beat_chance_in_principle() -> None:
    """The limit the report states: equal marginals give equal class means for any sum of per-object scores,
    not chance for every threshold on it. With K = 2 values, 'both objects take value 0' and 'a <= b' (both
    thresholds on a sum of per-object scores) reach 3/4 on the attributes alone."""
    batch = data.items("bars", 11, 0, 3000)
    a = np.array([it.attributes[0] for it in batch])
    pos, neg = np.array([it.attributes[1] for it in batch]), np.array([it.attributes[2] for it in batch])
    both = 0.5 * (np.mean((a == 0) & (pos == 0)) + np.mean(~((a == 0) & (neg == 0))))
    ordered = 0.5 * (np.mean(a <= pos) + np.mean(a > neg))
    assert both == pytest.approx(3 / 4, abs=0.02) and ordered == pytest.approx(3 / 4, abs=0.02)


@pytest.mark.parametrize("probe", PROBES)
def test_no_output_position_of_the_conv_trunk_reaches_both_objects(probe: str) -> None:
    gen = data.PROBES[probe]
    it = data.items(probe, data.TEST_SEED, 0, 1)[0]
    torch.manual_seed(0)
    model = ProbeNet(probe, gen.channels, gen.resolution).double()
    x = torch.from_numpy(it.positive)[None].double().requires_grad_()
    feats = model.features(x)  # (1, C, h, w)
    masks = data.box_masks([it], gen.resolution)[0].bool()  # (2, R, R)
    _, c, h, w = feats.shape
    seeds = torch.eye(h * w, dtype=x.dtype).view(h * w, 1, 1, h, w).expand(h * w, 1, c, h, w)  # one per position
    (grads,) = torch.autograd.grad(feats, x, seeds, is_grads_batched=True)  # (hw, 1, C, R, R)
    sides = []
    for p, grad in enumerate(grads):
        reach = grad[0].abs().sum(0) > 0  # (R, R): the pixels output position p depends on
        assert not ((reach & masks[0]).any() and (reach & masks[1]).any()), divmod(p, w)
        rows, cols = reach.any(1).nonzero(), reach.any(0).nonzero()
        sides.append((int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1))
    assert receptive_field() == 13 and max(sides) == (13, 13)  # interior positions see exactly 13 x 13 px
    # the check can fail: with an open non-local block before the last layer, some position reaches both
    torch.manual_seed(0)
    opened = ProbeNet(probe, gen.channels, gen.resolution, block={}, block_seed=1).double()
    opened.block.gamma.data.fill_(1.0)
    (grad,) = torch.autograd.grad(opened.features(x)[0, :, 0, 0].sum(), x)
    reach = grad[0].abs().sum(0) > 0
    assert (reach & masks[0]).any() and (reach & masks[1]).any()


def test_look_share_against_hand_computed_values() -> None:
    attn = torch.tensor([[[0.2, 0.3, 0.5], [0.6, 0.4, 0.0]], [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])
    keys = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    # image 0: only query 0 on the object, 0.3 + 0.5 on the other; image 1: no query on it, so it counts not
    share, uniform = look_share(attn, torch.tensor([[1.0, 0.0], [0.0, 0.0]]), keys)
    assert share == pytest.approx(0.8) and uniform == pytest.approx(2 / 3)
    # both queries of image 0 (0.8 and 0.4) and query 1 of image 1 (1.0): (0.6 + 1.0) / 2; uniform (2/3 + 1/3) / 2
    share, uniform = look_share(attn, torch.tensor([[1.0, 1.0], [0.0, 1.0]]), keys)
    assert share == pytest.approx(0.8) and uniform == pytest.approx(0.5)


def test_grid_masks_mark_every_cell_holding_an_object_pixel() -> None:
    masks = torch.zeros(1, 2, 4, 4)
    masks[0, 0, 0, 1] = 1.0  # object 0: one pixel in the top-left 2x2 cell
    masks[0, 1, 2:4, 3] = 1.0  # object 1: two pixels in the bottom-right cell
    q, k = grid_masks(masks, (2, 2), (1, 2))
    assert q.tolist() == [[1.0, 0.0, 0.0, 0.0]] and k.tolist() == [[0.0, 1.0]]


def test_learns_rule_against_hand_computed_thresholds() -> None:
    se = 0.5 / math.sqrt(1000)  # 0.01581
    assert pa.learn_threshold([0.49, 0.51], 1000) == pytest.approx(0.5 + 2 * se)  # seed std 0.0141 < SE
    assert pa.learn_threshold([0.45, 0.55], 1000) == pytest.approx(0.5 + 2 * math.sqrt(0.005))  # std 0.0707
    assert pa.learns_count([0.60, 0.70, 0.50], 0.5 + 2 * math.sqrt(0.005)) == (1, 3)
    with pytest.raises(ValueError, match="conv arm"):
        pa.learn_threshold([], 1000)


@pytest.mark.parametrize("probe", PROBES)
def test_section_3_arms_build_the_block_with_their_options(probe: str) -> None:
    """heads4: 4 heads over qk_channels=4 (the default C/8 is 2 in bars, 1 in dots) and the default C/2 values;
    position: a zero table per head covering the block's whole map (8x8 in bars, 24x24 in dots); position_cosine:
    both the cosine logits and that table; sagan: neither."""
    gen = data.PROBES[probe]
    width, side = {"bars": (16, 8), "dots": (8, 24)}[probe]
    x, _ = data.stack(data.items(probe, 5, 0, 1))
    blocks = {arm: pa.build(probe, arm, 0).block for arm in ("sagan", "heads4", "position", "position_cosine")}
    assert (
        pa.build(probe, "sagan", 0).block_input(x).shape[2:] == (side, side)
        and block_side(probe, gen.resolution) == side
    )
    assert (blocks["sagan"].heads, blocks["sagan"].qk_channels, blocks["sagan"].position_max_side) == (
        1,
        max(width // 8, 1),
        0,
    )
    h4 = blocks["heads4"]
    assert (h4.heads, h4.qk_channels, h4.v_channels, h4.pairwise, h4.position_max_side) == (
        4,
        4,
        width // 2,
        "embedded_gaussian",
        0,
    )
    assert h4.qk_channels % 4 == 0 and h4.v_channels % 4 == 0
    for arm, pairwise in (("position", "embedded_gaussian"), ("position_cosine", "cosine")):
        b = blocks[arm]
        assert (b.heads, b.pairwise, b.position_max_side, b.qk_channels) == (1, pairwise, side, max(width // 8, 1))
        assert b.position_bias.shape[0] == 1 and not b.position_bias.any()
    assert not hasattr(blocks["sagan"], "position_bias") and pa.block_options("conv", probe) is None


def test_position_zeroed_against_hand_computed_shares() -> None:
    """A constant map gives every key the same content logit; a bias of log 63 on one offset (key 4 rows below
    the query) then gives that key 63 / (63 + 63) = 0.5 of the query's attention over 64 keys, and zeroing the
    bias gives it uniform's 1/64 again. The table comes back unchanged afterwards."""
    torch.manual_seed(0)
    model = ProbeNet("bars", 1, 32, block={"position_max_side": 8, "subsample": False}, block_seed=1)
    model.block_input = lambda x: torch.zeros(x.shape[0], 16, 8, 8)
    m = 8
    with torch.no_grad():  # table index per axis: (query - key) + m - 1; query row 1, key row 5, same column
        model.block.position_bias[0, 1 - 5 + m - 1, m - 1] = math.log(63)
    masks = torch.zeros(1, 2, 32, 32)
    masks[0, 0, 4:8, 8:12] = 1.0  # object 0: cell (1, 2) of the 8x8 map
    masks[0, 1, 20:24, 8:12] = 1.0  # object 1: cell (5, 2)
    look = block_look(model, torch.zeros(1, 1, 32, 32), masks)
    assert look["look_0_on_1"] == pytest.approx(0.5, abs=1e-6)
    assert look["look_0_on_1_no_position"] == pytest.approx(1 / 64, abs=1e-6)
    assert look["look_0_on_1_uniform"] == pytest.approx(1 / 64) and look["look_1_on_0_uniform"] == pytest.approx(1 / 64)
    # object 1's query sits 4 rows below object 0: an offset the table leaves at 0, so uniform either way
    assert look["look_1_on_0"] == pytest.approx(1 / 64, abs=1e-6)
    assert look["look_1_on_0_no_position"] == pytest.approx(1 / 64, abs=1e-6)
    bias = model.block.position_bias.detach()  # the learned table is back: one entry at log 63, the rest 0
    assert float(bias[0, 3, 7]) == pytest.approx(math.log(63)) and float(bias.abs().sum()) == pytest.approx(
        math.log(63)
    )
    with position_zeroed(model.block):
        assert not model.block.position_bias.any()


def test_cli_runs_writes_summaries_and_tables(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [*"--seeds 0 --steps 2 --batch 4 --test-pairs 6 --log-every 1 --out".split(), str(tmp_path)]
    pa.main(["run", "--arms", "conv", "global", "sagan", *args])
    for probe in PROBES:
        conv = json.loads((tmp_path / probe / "conv" / "seed0.json").read_text())
        assert conv["steps"] == 2 and conv["test_images"] == 12 and conv["receptive_field"] == 13
        assert conv["command"].startswith("python -m experiments.probe_apart run") and "cpu_s" in conv
        assert conv["machine"] and conv["date"] and len(conv["log"]) == 2
        block = json.loads((tmp_path / probe / "sagan" / "seed0.json").read_text())["block"]
        assert 0.0 <= block["look_0_on_1"] <= 1.0 and 0.0 < block["look_0_on_1_uniform"] < 1.0
    before = (tmp_path / "bars" / "conv" / "seed0.json").read_text()
    pa.main(["run", "--arms", "conv", *args])  # an existing summary is kept, not rerun
    assert (tmp_path / "bars" / "conv" / "seed0.json").read_text() == before
    capsys.readouterr()
    pa.main(["table", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "| bars | `global` | 0 |" in out and "| dots | `sagan` | 0 |" not in out  # table: --arms conv global
    pa.main(["table", "--arms", "conv", "global", "sagan", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "| bars | `global` | 0 |" in out and "| dots | `sagan` | 0 |" in out and " of 1 |" in out


def test_cli_runs_the_section_3_arms_and_records_the_position_terms_share(tmp_path, capsys) -> None:
    args = [*"--seeds 0 --steps 2 --batch 4 --test-pairs 6 --log-every 1 --out".split(), str(tmp_path)]
    arms = ["conv", "position", "heads4", "position_cosine"]
    pa.main(["run", "--arms", *arms, *args])
    for probe in PROBES:
        for arm in arms[1:]:
            r = json.loads((tmp_path / probe / arm / "seed0.json").read_text())
            b, with_position = r["block"], arm != "heads4"
            assert r["steps"] == 2 and 0.0 <= b["look_0_on_1"] <= 1.0 and 0.0 <= b["look_1_on_0"] <= 1.0
            assert ("look_0_on_1_no_position" in b) == with_position == ("test_acc_no_position" in b)
            if with_position:
                assert 0.0 <= b["look_1_on_0_no_position"] <= 1.0 and 0.0 <= b["test_acc_no_position"] <= 1.0
    capsys.readouterr()
    pa.main(["table", "--probes", "dots", "--arms", *arms, "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "| dots | `position_cosine` | 0 |" in out and "| bars |" not in out
    assert out.count("| dots | `heads4` | 0 |") == 2 and out.count(" | - |\n") == 1  # heads4: no position term


@pytest.mark.parametrize("probe", PROBES)
def test_the_blind_logit_is_a_sum_of_per_object_terms(probe: str) -> None:
    """The receptive-field argument's premise: swapping what sits in object 0's box and in object 1's box has no
    interaction in the blind arm's logit (logit(A, B) - logit(A', B) - logit(A, B') + logit(A', B') = 0), and has
    one with a read-out that is not a sum over positions (attention pooling, the global MLP)."""
    gen = data.PROBES[probe]
    it, other = data.items(probe, 21, 0, 2)
    variants = []
    for first, second in ((it, it), (other, it), (it, other), (other, other)):
        img = it.positive.copy()
        for box, source in zip(it.boxes, (first, second)):
            x0, y0, s = box
            img[:, y0 : y0 + s, x0 : x0 + s] = source.negative[:, y0 : y0 + s, x0 : x0 + s]
        variants.append(img)
    x = torch.from_numpy(np.stack(variants)).double()
    assert not torch.equal(x[0], x[1]) and not torch.equal(x[0], x[2])
    for readout, additive in ((None, True), ("attnpool", False), ("mlp", False)):
        torch.manual_seed(0)
        with torch.no_grad():
            logit = ProbeNet(probe, gen.channels, gen.resolution, readout=readout).double()(x)
        interaction = float(logit[0] - logit[1] - logit[2] + logit[3])
        assert (abs(interaction) < 1e-12) == additive, (readout, interaction)


@pytest.mark.parametrize("probe", PROBES)
def test_block_look_of_uniform_attention_is_uniforms_share(probe: str) -> None:
    """With theta's weights at 0 every logit is 0, the attention is uniform (up to float32 softmax), and each
    object's queries put on the other object exactly the share of key cells it holds."""
    gen = data.PROBES[probe]
    batch = data.items(probe, 4, 0, 3)
    x, _ = data.stack(batch)
    torch.manual_seed(0)
    model = ProbeNet(probe, gen.channels, gen.resolution, block={"spectral_norm": False}, block_seed=1)
    torch.nn.init.zeros_(model.block.theta.weight)
    look = block_look(model, x[:3], data.box_masks(batch, gen.resolution)[:3])
    for name in ("look_0_on_1", "look_1_on_0"):
        assert 0.0 < look[name] < 0.5 and look[name] == pytest.approx(look[name + "_uniform"], abs=1e-6)
