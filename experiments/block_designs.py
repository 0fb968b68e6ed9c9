"""Issue 34's block designs (docs/probes_apart.md, section 3), one home for every probe that compares them:
the probes built apart (experiments/probe_apart.py) and the long-range probe's cells of docs/attention_opens.md
(experiments/long_range_model.py names them attn, attn_cosine, ...).

Each design is plain data: `block`, the `gan.attention.NonLocalBlock` options; `position`, add the relative
position term over the whole map the block sits on (`position_max_side` = that map's side, a zero table per
head at the start); `block_lr_mult`, the block's learning rate over the base one.
`heads4` also sets `qk_channels=4` (one per head): SAGAN's query/key width C/8 is 1 or 2 at the probes' widths
(8 and 16), which 4 heads cannot split; the value width C/2 splits as it is.
"""

from __future__ import annotations

DESIGNS: dict[str, dict] = {
    "sagan": {"block": {}},  # SAGAN's default block
    "cosine": {"block": {"pairwise": "cosine"}},
    "zero_init": {"block": {"gate": "zero_init"}},
    "lr10": {"block": {}, "block_lr_mult": 10.0},
    "position": {"block": {}, "position": True},
    "heads4": {"block": {"heads": 4, "qk_channels": 4}},
    "position_cosine": {"block": {"pairwise": "cosine"}, "position": True},
}


def with_position(block: dict | None, position: bool, side: int) -> dict | None:
    """The NonLocalBlock options `block`, with the relative position term over a map of side `side` if
    `position` (None: no block)."""
    if block is None or not position:
        return block
    return {**block, "position_max_side": side}
