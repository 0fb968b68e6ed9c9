"""Issue 34's designs in the long-range probe (docs/probes_apart.md, section 3; docs/attention_opens.md): the arms
build the probes built apart's blocks, the block's state and where it looks are right with heads and the position
term, and the `designs` table counts runs by the learns rule."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from experiments import long_range_probe, long_range_training
from experiments import probe_apart as pa
from experiments.block_designs import DESIGNS
from experiments.long_range_data import TEST_SEED, pairs
from experiments.long_range_model import ARMS, DESIGN_ARMS, Probe, block_options, position_zeroed
from experiments.long_range_reports import design_arm

# Each design's NonLocalBlock options, written out by hand, with the position term over a map of side S
HAND = {
    "sagan": {},
    "cosine": {"pairwise": "cosine"},
    "zero_init": {"gate": "zero_init"},
    "lr10": {},
    "position": {"position_max_side": "S"},
    "heads4": {"heads": 4, "qk_channels": 4},
    "position_cosine": {"pairwise": "cosine", "position_max_side": "S"},
}


def _hand(design: str, side: int) -> dict:
    return {k: side if v == "S" else v for k, v in HAND[design].items()}


@pytest.mark.parametrize("design", list(DESIGNS))
def test_each_design_arm_builds_the_probes_apart_block(design: str) -> None:
    """attn, attn_cosine, ... get the options the probes built apart give sagan, cosine, ...; the position term
    covers the whole map the block sits on (32 at stage 0 of a 64x64 image, 16 at stage 1; bars: 8)."""
    spec = ARMS[DESIGN_ARMS[design]]
    assert block_options(spec, 64, 0) == _hand(design, 32) and block_options(spec, 64, 1) == _hand(design, 16)
    assert pa.block_options(design, "bars") == _hand(design, 8)
    assert (
        spec.get("attn_lr_mult", 1.0)
        == pa.ARMS[design].get("block_lr_mult", 1.0)
        == (10.0 if design == "lr10" else 1.0)
    )
    torch.manual_seed(0)
    model = Probe(1, 8, attention=block_options(spec, 64, 0), block_seed=7)
    block = model.attention
    assert model.block_input(torch.zeros(1, 3, 64, 64)).shape[2:] == (32, 32)
    assert (block.heads, block.qk_channels, block.pairwise, block.position_max_side) == (
        4 if design == "heads4" else 1,
        4 if design == "heads4" else 1,  # C/8 = 1 at width 8
        "cosine" if "cosine" in design else "embedded_gaussian",
        32 if "position" in design else 0,
    )
    if "position" in design:  # a zero table at the start: offsets per axis -2 (16 - 1) ... 31, i.e. 62 values
        assert block.position_bias.shape == (1, 62, 62) and not block.position_bias.any()


@pytest.mark.parametrize("design", list(DESIGNS))
def test_the_4_channel_configuration_widens_queries_and_keys_and_heads4_is_its_own_twin(design: str) -> None:
    arm = design_arm(design, "_qk4")
    assert arm == (DESIGN_ARMS[design] if design == "heads4" else DESIGN_ARMS[design] + "_qk4")
    assert block_options(ARMS[arm], 64, 0) == {**_hand(design, 32), "qk_channels": 4}
    assert ARMS[arm].get("attn_lr_mult", 1.0) == (10.0 if design == "lr10" else 1.0)
    assert design_arm(design, "") == DESIGN_ARMS[design]


@pytest.mark.parametrize(("heads", "side"), [(1, 0), (4, 32)])
def test_block_state_with_heads_and_the_position_term_against_a_float64_reference(heads: int, side: int) -> None:
    """The logged entropy is over the weights the block uses (every head, the position term included), the
    logged logit spread over each head's content logits; with one head and no position term both are what the
    first runs logged (softmax of theta_i . phi_j)."""
    options = {"qk_channels": 4, "heads": heads, **({"position_max_side": side} if side else {})}
    torch.manual_seed(1)
    model = Probe(1, 8, attention=options, block_seed=3).eval()  # eval: spectral norm takes no step per call
    block = model.attention
    with torch.no_grad():
        block.gamma.fill_(0.3)
        if side:
            block.position_bias.normal_(0.0, 2.0)
    x = torch.randn(2, 3, 64, 64)
    state = long_range_training.block_state(model, x)
    with torch.no_grad():
        h = model.block_input(x)
        q = block.theta(h).double().flatten(2)  # (B, 4, 1024)
        k = F.max_pool2d(block.phi(h), 2).double().flatten(2)  # (B, 4, 256)
    per = 4 // heads
    content = torch.stack(
        [
            torch.einsum("bci,bcj->bij", q[:, n * per : (n + 1) * per], k[:, n * per : (n + 1) * per])
            for n in range(heads)
        ],
        1,
    )  # (B, h, 1024, 256)
    bias = (
        block.position_logits((32, 32), (16, 16)).detach().double() if side else torch.zeros(heads, 1024, 256).double()
    )
    p = torch.softmax(content + bias, -1)
    entropy = float(-(p * p.log()).sum(-1).mean() / math.log(256))
    assert state["entropy_ratio"] == pytest.approx(entropy, rel=1e-5)
    assert state["logit_std"] == pytest.approx(float(content.std()), rel=1e-4)
    with torch.no_grad():
        residual = block(h) - h
    assert state["residual"] == pytest.approx(float(residual.norm() / h.norm()), rel=1e-4)


def test_look_share_of_four_heads_and_without_the_position_term_against_hand_computed_values() -> None:
    """A constant map gives every key the same content logit. One left-object query cell (32x32 grid cell (4, 4))
    and one right-object key cell (16x16 grid cell (2, 12)); head 0's table gives that offset log 255, so head 0
    puts 255 / (255 + 255) = 0.5 there, heads 1-3 uniform's 1/256: the mean of the heads' attention gives
    (0.5 + 3 / 256) / 4; zeroed, 1/256."""
    torch.manual_seed(0)
    model = Probe(1, 8, attention={"heads": 4, "qk_channels": 4, "position_max_side": 32}, block_seed=1).eval()
    model.block_input = lambda x: torch.zeros(x.shape[0], 8, 32, 32)
    with torch.no_grad():  # index per axis: i - 2 j + 30 (rows: 4 - 4 + 30, columns: 4 - 24 + 30)
        model.attention.position_bias[0, 30, 10] = math.log(255)
    x = torch.full((1, 3, 64, 64), -1.0)  # a black background
    x[..., 8:10, 8:10] = 1.0  # the left object: query cell (4, 4)
    x[..., 8:10, 48:50] = 1.0  # the right object: key cell (2, 12)
    share, uniform = long_range_training.look_share(model, x)
    assert uniform == pytest.approx(1 / 256) and share == pytest.approx((0.5 + 3 / 256) / 4, rel=1e-5)
    with position_zeroed(model.attention):
        assert long_range_training.look_share(model, x)[0] == pytest.approx(1 / 256, rel=1e-5)
    assert float(model.attention.position_bias.detach()[0, 30, 10]) == pytest.approx(math.log(255))  # put back


def test_tiny_runs_record_the_position_terms_share_and_the_designs_table_counts_by_the_rule(tmp_path, capsys) -> None:
    out = tmp_path / "runs"
    tiny = "--depths 1 --seeds 0 --steps 2 --batch 32 --width 8 --train-pairs 16 --test-pairs 6 --log-every 1".split()
    arms = ["conv", "attn_position", "attn_heads4", "attn_position_cosine_qk4"]
    long_range_probe.main(["run", "--arms", *arms, *tiny, "--out", str(out)])
    path = out / "r64" / "attn_position" / "depth1" / "seed0.json"
    result = json.loads(path.read_text())
    assert result["command"].startswith("python -m experiments.long_range_probe run --arms conv attn_position")
    assert 0.0 <= result["look_share_no_position"] <= 1.0
    # the whole test set with the table zeroed, recomputed from the saved weights
    model = Probe(1, 8, attention=block_options(ARMS["attn_position"], 64, 0))
    model.load_state_dict(load_file(str(path.with_suffix(".safetensors"))))
    x, y = pairs(64, TEST_SEED, 6)
    with position_zeroed(model.eval().attention):
        assert result["test_acc_no_position"] == long_range_training.accuracy(model, x, y)
        # the run measured it after the ERF's passes, whose spectral-norm steps come after the saved weights
        assert result["look_share_no_position"] == pytest.approx(
            long_range_training.look_share(model, x[:64])[0], rel=1e-3
        )
    heads = json.loads((out / "r64" / "attn_heads4" / "depth1" / "seed0.json").read_text())
    assert "look_share_no_position" not in heads and 0.0 <= heads["look_share"] <= 1.0
    capsys.readouterr()
    long_range_probe.main(["designs", "--depths", "1", "--seeds", "0", "--test-pairs", "6", "--out", str(out)])
    printed = capsys.readouterr().out
    conv = json.loads((out / "r64" / "conv" / "depth1" / "seed0.json").read_text())["test_acc"]
    threshold = conv + 2 * 0.5 / math.sqrt(12)  # one conv seed: the binomial term at 12 test images
    assert f"| `r64` | conv | `conv` | 1 | {conv:.3f} | threshold {threshold:.3f} |" in printed
    acc = result["test_acc"]
    assert f"| `r64` | position | `attn_position` | 1 | {acc:.3f} | {int(acc > threshold)} of 1 |" in printed
    assert f"| `r64-qk4` | heads4 | `attn_heads4` | 1 | {heads['test_acc']:.3f} |" in printed  # the same runs
    assert "| `r64` | sagan | `attn` | 0 | - | 0 of 0 |" in printed
    no_pos = f"{result['look_share_no_position']:.3f}; {result['test_acc_no_position']:.3f} |"
    assert any(line.startswith("| `r64` | position | 0 |") and line.endswith(no_pos) for line in printed.splitlines())
