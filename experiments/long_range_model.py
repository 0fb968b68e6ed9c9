"""The long-range probe's classifier and its arms: D's own blocks (the optimised first block, optionally ONE
non-local block at a chosen stage, `depth` residual down-blocks), a read-out and a linear head; `ARMS` names
the block's options and learning rate of every arm as plain data."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from experiments.block_designs import DESIGNS, with_position
from experiments.erf import theoretical_rf
from gan.attention import NonLocalBlock
from gan.layers import DBlock, DBlockOptimized, conv2d, linear

# Arms as plain data. `attention`: None (no block) or NonLocalBlock options (the levers: gate, gamma_init,
# logit_scale, qk_spectral_norm); `attn_lr_mult`: the block's learning rate over the base one; `view`: the part
# of the image the model sees ("full", or one half only: the chance-level control); `reference`: the attention
# arm a lever is judged against in the report (default "attn").
ARMS: dict[str, dict] = {
    "conv": {"attention": None},
    "attn": {"attention": {}},
    "attn_zero_init": {"attention": {"gate": "zero_init"}},
    "attn_gamma0.1": {"attention": {"gamma_init": 0.1}},
    "attn_inv_sqrt_d": {"attention": {"logit_scale": "inv_sqrt_d"}},  # d_qk = W/8 = 1 at W = 8: the default exactly
    "attn_qk4": {"attention": {"qk_channels": 4}},  # the wider-query reference for the next arm
    "attn_qk4_inv_sqrt_d": {"attention": {"qk_channels": 4, "logit_scale": "inv_sqrt_d"}, "reference": "attn_qk4"},
    "attn_learned_temp": {"attention": {"logit_scale": "learned"}},
    "attn_qk_no_sn": {"attention": {"qk_spectral_norm": False}},
    "attn_lr10": {"attention": {}, "attn_lr_mult": 10.0},
    "attn_lr10_qk4": {"attention": {"qk_channels": 4}, "attn_lr_mult": 10.0, "reference": "attn_lr10"},
    # block designs built to open (issue 26): the l2 and cosine pairwise functions, per-channel gains
    "attn_l2": {"attention": {"pairwise": "l2"}},
    "attn_cosine": {"attention": {"pairwise": "cosine"}},
    "attn_channel": {"attention": {"gate": "channel"}},
    # the uniform-attention control (issue 33): cosine logits at t = 1e-6 lie in [-1e-6, 1e-6], so every query
    # averages all keys whatever theta and phi are: the same parameters and value path as attn_cosine, as the
    # GAN's `-uniform` arms (experiments/ablation.py)
    "attn_uniform": {"attention": {"pairwise": "cosine", "temperature": 1e-6}},
    "conv_right_half": {"attention": None, "view": "right"},
}
# Issue 34's designs (experiments/block_designs.py, the probes built apart's arms) under this probe's names:
# sagan, cosine, zero_init and lr10 are attn, attn_cosine, attn_zero_init and attn_lr10 above (tested equal);
# `position`: the relative position term over the whole map the block sits on (`block_options`).
DESIGN_ARMS = {
    "sagan": "attn", "cosine": "attn_cosine", "zero_init": "attn_zero_init", "lr10": "attn_lr10",
    "position": "attn_position", "heads4": "attn_heads4", "position_cosine": "attn_position_cosine",
}  # fmt: skip
for _design in ("position", "heads4", "position_cosine"):
    ARMS[DESIGN_ARMS[_design]] = {
        "attention": DESIGNS[_design]["block"],
        **({"position": True} if DESIGNS[_design].get("position") else {}),
    }
# Issue 26's comparison: each design and lever alone, with the default 1 query/key channel at width 8 and with 4
# (as at width 32, where the second probe failed): attn_qk4 and attn_lr10_qk4 above, and these (issue 34 adds the
# position designs; attn_heads4 already has 4 query/key channels, one per head, so it has no _qk4 twin).
for _name in ("attn_zero_init", "attn_l2", "attn_cosine", "attn_channel", "attn_position", "attn_position_cosine"):
    ARMS[f"{_name}_qk4"] = {
        **ARMS[_name],
        "attention": {**ARMS[_name]["attention"], "qk_channels": 4},
        "reference": "attn_qk4",
    }
# The tie in fine detail (docs/detail_tie.md): keys and values not pooled (the 2x2 max-pool mixes 4x4-px
# regions, two pattern cells a side) and 8 query/key channels, with either lever.
for _name in ("attn_zero_init", "attn_lr10"):
    ARMS[f"{_name}_nopool_qk8"] = {
        **ARMS[_name],
        "attention": {**ARMS[_name]["attention"], "subsample": False, "qk_channels": 8},
        "reference": _name,
    }
BLOCK_SEED = 7_000_000  # --block-init own: the block's weights of seed s come from their own generator, seeded s + this
BLOCK_INITS = ("own", "shared")


def block_seed(seed: int, block_init: str) -> int | None:
    """The `Probe(block_seed=...)` of a run: its own stream (`own`), or None (`shared`: the global stream)."""
    return seed + BLOCK_SEED if block_init == "own" else None


READOUTS = ("sum", "mean", "conv")  # conv: a spectrally normalised 1x1 conv and ReLU, then the sum


def block_options(spec: dict, resolution: int, stage: int) -> dict | None:
    """An arm's NonLocalBlock options at `stage` of a `resolution` image (None: no block): its `attention`, with
    the position term over the whole map the block sits on (side resolution / 2^(stage+1)) if the arm has one."""
    return with_position(spec["attention"], spec.get("position", False), resolution // 2 ** (stage + 1))


@contextmanager
def position_zeroed(block: NonLocalBlock) -> Iterator[None]:
    """The block with its relative position term set to 0 (the logits are the pairwise function's alone), and
    the learned table put back on exit."""
    saved = block.position_bias.detach().clone()
    with torch.no_grad():
        block.position_bias.zero_()
    try:
        yield
    finally:
        with torch.no_grad():
            block.position_bias.copy_(saved)


def block_on_stream(channels: int, options: dict, seed: int | None) -> NonLocalBlock:
    """A NonLocalBlock(channels, **options) whose weights come from a generator of their own seeded `seed`,
    leaving the global stream where it was (so what is built after it does not depend on the block's design);
    None draws them from the global stream."""
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        return NonLocalBlock(channels, **options)


class Probe(nn.Module):
    """images (B, C, H, W) -> logit (B,): DBlockOptimized -> depth x DBlock -> ReLU, read-out, linear, with
    ONE NonLocalBlock after `stage` of the down-blocks (0: after the first block, the highest-resolution stage).

    `readout`: "sum" (global sum pooling, as SAGAN's D), "mean" (global mean pooling) or "conv" (a 1x1 conv
    and ReLU on the map, then the sum; the second probe of issue 26). `block_seed`: see below.
    """

    def __init__(
        self,
        depth: int,
        width: int,
        channels: int = 3,
        attention: dict | None = None,
        stage: int = 0,
        readout: str = "sum",
        block_seed: int | None = None,
    ) -> None:
        super().__init__()
        if not 0 <= stage <= depth:
            raise ValueError(f"the block's stage must be in 0..depth ({depth}); got {stage}")
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}; got {readout!r}")
        self.stage, self.readout = stage, readout
        self.stem = DBlockOptimized(channels, width, sn=True)
        self.attention = None
        if attention is not None:
            # block_seed: the block's weights come from a generator of their own, so the trunk and head are those
            # of the conv arm at the same seed whatever the block's design; None draws them between the stem's and
            # the down-blocks' from the global generator (the first runs of docs/attention_opens.md, --block-init
            # shared), which makes the trunk depend on the block's parameter shapes.
            self.attention = block_on_stream(width, attention, block_seed)
        self.blocks = nn.Sequential(*[DBlock(width, width, downsample=True, sn=True) for _ in range(depth)])
        self.read = conv2d(width, width, 1, sn=True) if readout == "conv" else None
        self.head = linear(width, 1, sn=True)

    def block_input(self, x: Tensor) -> Tensor:
        """The map the non-local block sees: (B, width, H / 2^(stage+1), W / 2^(stage+1))."""
        return self.blocks[: self.stage](self.stem(x))

    def trunk(self, x: Tensor) -> Tensor:
        """The map before the final ReLU: (B, width, H / 2^(depth+1), W / 2^(depth+1)); the ERF is measured here
        (after the ReLU, a unit over plain background can be dead for every input and have no gradient)."""
        h = self.block_input(x)
        if self.attention is not None:
            h = self.attention(h)
        return self.blocks[self.stage :](h)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.trunk(x))
        if self.read is not None:
            h = F.relu(self.read(h))
        return self.head(h.mean(dim=(2, 3)) if self.readout == "mean" else h.sum(dim=(2, 3))).squeeze(1)


def probe_rf(depth: int) -> int:
    """Theoretical receptive field (pixels) of the conv path: the optimised block then `depth` down-blocks."""
    stem = [(3, 1), (3, 1), (2, 2)]  # conv3x3, conv3x3, avgpool2 (the shortcut's field is smaller)
    down = [(3, 1), (3, 1), (2, 2)]  # ReLU-conv3x3-ReLU-conv3x3-avgpool2
    return theoretical_rf(stem + down * depth)[0]
