"""The classifiers of the probes built apart (docs/probes_apart.md): a plain conv trunk of the probe's own
design, optionally ONE `gan.attention.NonLocalBlock` after one of its layers, and a read-out.

The two trunks share a skeleton (3x3 convs with strides 1, 2, 1, 2: receptive field 13 px) and differ in
everything else, neither like the repository's probe (D's residual blocks, spectral norm, ReLU, average
pooling):
- `bars`: width 16, GELU, Kaiming-normal weights; the block on the last map (8x8); read-out: a linear map of
  the whole flattened map.
- `dots`: width 8, SiLU, orthogonal weights; the block after the second conv (24x24); read-out: `patch`, a
  logit per position (a 1x1 MLP: width -> 16 -> 1) averaged over positions, as a PatchGAN judge.
Neither normalises its activations. A norm over positions (GroupNorm, InstanceNorm, batch statistics) would
pool the map and void the receptive-field argument; the local one tried first, a LayerNorm over each
position's channels, kept the global control at chance in pilots (docs/probes_apart.md).

Both read-outs keep the blind arm's logit a sum of per-position terms, which the receptive-field argument
needs (docs/probes_apart.md). `attnpool` (a softmax over positions of a 1x1 score weighting the features, then
a linear head) does not: it is a soft max over positions, and its blind arm found a one-sided rule in a
pilot; a max-pool read-out would not either (the max over positions of one-hot features counts distinct
values). The global control `mlp` (an MLP on the flattened map) does not by design: it is the positive
control.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from experiments.erf import theoretical_rf
from experiments.long_range_model import block_on_stream, position_zeroed

LAYERS = ((3, 1), (3, 2), (3, 1), (3, 2))  # (kernel, stride) of the trunk's convs
TRUNKS = {
    "bars": {"width": 16, "act": "gelu", "init": "kaiming", "block_after": 4, "readout": "flat"},
    "dots": {"width": 8, "act": "silu", "init": "orthogonal", "block_after": 2, "readout": "patch"},
}
READOUTS = ("flat", "patch", "attnpool", "mlp")
MLP_HIDDEN = 64
PATCH_HIDDEN = 16
BLOCK_SEED = 7_000_000  # the block's weights come from their own generator (seed + this): every arm of a seed
# shares the conv arm's trunk and head


def receptive_field(layers: tuple[tuple[int, int], ...] = LAYERS) -> int:
    """The trunk's theoretical receptive field in input pixels (13 for LAYERS)."""
    return theoretical_rf(layers)[0]


def block_side(probe: str, resolution: int) -> int:
    """The side of the map the probe's block sits on (bars: 8 of 32, dots: 24 of 48)."""
    return resolution // math.prod(s for _, s in LAYERS[: TRUNKS[probe]["block_after"]])


class AttentionPool(nn.Module):
    """(B, C, H, W) -> (B, C): the positions' features weighted by a softmax over a 1x1 conv's scores."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.score = nn.Conv2d(channels, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        w = torch.softmax(self.score(x).flatten(1), dim=1)  # (B, HW)
        return torch.einsum("bn,bcn->bc", w, x.flatten(2))


def _act(name: str) -> nn.Module:
    return {"gelu": nn.GELU(), "silu": nn.SiLU()}[name]


def _init(conv: nn.Conv2d, how: str) -> nn.Conv2d:
    if how == "kaiming":
        nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
    else:
        nn.init.orthogonal_(conv.weight.view(conv.out_channels, -1))
    nn.init.zeros_(conv.bias)
    return conv


class ProbeNet(nn.Module):
    """images (B, C, R, R) -> logit (B,): the probe's trunk (TRUNKS[probe]), an optional NonLocalBlock after
    layer `block_after` (built from `block`, its public options, on its own random stream), the read-out
    (`mlp_hidden`: the hidden width of the global control's MLP)."""

    def __init__(
        self,
        probe: str,
        channels: int,
        resolution: int,
        block: dict | None = None,
        readout: str | None = None,
        block_seed: int | None = None,
        mlp_hidden: int = MLP_HIDDEN,
    ) -> None:
        super().__init__()
        spec = TRUNKS[probe]
        self.readout = readout or spec["readout"]
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {', '.join(READOUTS)}; got {self.readout!r}")
        width, self.block_after = spec["width"], spec["block_after"]
        layers, c_in = [], channels
        for kernel, stride in LAYERS:
            conv = _init(nn.Conv2d(c_in, width, kernel, stride, padding=kernel // 2), spec["init"])
            layers.append(nn.Sequential(conv, _act(spec["act"])))
            c_in = width
        self.layers = nn.ModuleList(layers)
        self.block = None
        if block is not None:
            self.block = block_on_stream(width, block, block_seed)
        side = resolution // math.prod(s for _, s in LAYERS)
        flat = width * side * side
        if self.readout == "flat":
            self.head = nn.Linear(flat, 1)
        elif self.readout == "patch":
            self.head = nn.Sequential(nn.Conv2d(width, PATCH_HIDDEN, 1), nn.ReLU(), nn.Conv2d(PATCH_HIDDEN, 1, 1))
        elif self.readout == "attnpool":
            self.head = nn.Sequential(AttentionPool(width), nn.Linear(width, 1))
        else:
            self.head = nn.Sequential(nn.Linear(flat, mlp_hidden), nn.ReLU(), nn.Linear(mlp_hidden, 1))

    def block_input(self, x: Tensor) -> Tensor:
        """The map the block sees (or would see): the output of the first `block_after` layers."""
        for layer in self.layers[: self.block_after]:
            x = layer(x)
        return x

    def features(self, x: Tensor) -> Tensor:
        """The last map, before the read-out: (B, width, R / 4, R / 4)."""
        h = self.block_input(x)
        if self.block is not None:
            h = self.block(h)
        for layer in self.layers[self.block_after :]:
            h = layer(h)
        return h

    def forward(self, x: Tensor) -> Tensor:
        h = self.features(x)
        if self.readout == "patch":
            return self.head(h).mean(dim=(1, 2, 3))  # (B, 1, h, w) -> (B,)
        return self.head(h if self.readout == "attnpool" else h.flatten(1)).squeeze(1)


def look_share(attn: Tensor, query_mask: Tensor, key_mask: Tensor) -> tuple[float, float]:
    """Where queries on one object look: the attention mass that queries in `query_mask` put on keys in
    `key_mask`, averaged over those queries and the images, and the mass uniform attention would put there
    (the key mask's share of the keys).

    attn (B, Nq, N); query_mask (B, Nq) and key_mask (B, N) are 0/1. Images without a query on the object
    count for neither."""
    on_object = torch.bmm(attn.double(), key_mask.double().unsqueeze(-1)).squeeze(-1)  # (B, Nq)
    q = query_mask.double()
    has = q.sum(1) > 0
    share = ((on_object * q).sum(1)[has] / q.sum(1)[has]).mean()
    return float(share), float(key_mask.double().mean(1)[has].mean())


def grid_masks(masks: Tensor, query_hw: tuple[int, int], key_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Objects' pixel masks (B, 2, R, R) -> the cells of the query grid holding object 0 (B, Nq) and of the
    (pooled) key grid holding object 1 (B, N): any pixel of the object in the cell marks it."""
    return (
        F.adaptive_max_pool2d(masks[:, :1], query_hw).flatten(1),
        F.adaptive_max_pool2d(masks[:, 1:], key_hw).flatten(1),
    )


@torch.no_grad()
def block_look(model: ProbeNet, x: Tensor, masks: Tensor) -> dict[str, float]:
    """The block's attention on images `x` with object masks `masks` (B, 2, R, R): object 0's queries on
    object 1 and the reverse, each against uniform's share (several heads: their mean attention). A block with
    a position term also gives both shares with that term zeroed (`*_no_position`): did it do the looking?"""
    h = model.block_input(x)
    hq, wq = h.shape[2:]
    pool = model.block.pool or (1, 1)
    key_hw = (-(-hq // pool[0]), -(-wq // pool[1]))
    cells = {
        name: grid_masks(m, (hq, wq), key_hw) for name, m in (("look_0_on_1", masks), ("look_1_on_0", masks.flip(1)))
    }

    def shares() -> dict[str, tuple[float, float]]:
        _, attn = model.block(h, return_attention=True)  # (B, Nq, N), or (B, heads, Nq, N)
        attn = attn.mean(1) if attn.dim() == 4 else attn
        return {name: look_share(attn, *c) for name, c in cells.items()}

    out = {}
    for name, (share, uniform) in shares().items():
        out[name], out[name + "_uniform"] = share, uniform
    if model.block.position_max_side:
        with position_zeroed(model.block):
            out.update({name + "_no_position": share for name, (share, _) in shares().items()})
    return out
