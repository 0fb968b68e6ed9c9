"""Does a discriminator notice a broken long-range tie? D's outputs on coherent images of the built-in dataset
(gan.synthetic.CoherenceDataset) against their incoherent versions, summarised as a rank AUC.

The ablation's evaluation hook (experiments/ablation.py, `d_scores`, which the experiment runner calls for
every run it evaluates) records these; the ablation reports print them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from gan.synthetic import FOREGROUND_THRESHOLD, CoherenceDataset


def rank_auc(positive: Tensor, negative: Tensor) -> float:
    """P(a positive scores above a negative), ties counting one half: the Mann-Whitney U over n_pos * n_neg.

    0.5 means the scores do not separate the two sets; 1.0 that every positive scores above every negative."""
    pos, neg = positive.double().flatten(), negative.double().flatten()
    if not len(pos) or not len(neg):
        raise ValueError("rank_auc needs at least one positive and one negative score")
    # U = sum over positives of (#negatives below it + half #negatives equal to it), via sorted negatives.
    neg_sorted = neg.sort().values
    below = torch.searchsorted(neg_sorted, pos, right=False).double()
    equal = torch.searchsorted(neg_sorted, pos, right=True).double() - below
    return ((below + 0.5 * equal).sum() / (len(pos) * len(neg))).item()


@torch.no_grad()
def mismatch_auc(
    discriminator: torch.nn.Module,
    model_cfg: Any,
    *,
    num: int = 1000,
    seed: int = 1,
    batch_size: int = 100,
    variant: str = "objects",
) -> dict[str, float]:
    """How well D's output tells coherent images from their incoherent versions (issue 16, part 3).

    `num` images of a CoherenceDataset drawn with `seed` (1 by default: not the training images, which use
    seed 0) and, for each, `CoherenceDataset.incoherent` of the same index: identical background and left
    object, right object redrawn, so only the long-range tie differs; in the `detail` variant (the run's
    data.builtin_variant) only the right object's fine pattern is redrawn. D is called as D(images, labels) with
    the left object's shape as the label when it is class-conditional (the label a real image carries).
    Returns `d_auc` (rank_auc of D's outputs, coherent as positives: 0.5 = D cannot see the mismatch),
    `d_paired` (fraction of the `num` pairs where the coherent image scores higher, ties one half) and the
    mean outputs `d_coherent` / `d_incoherent`."""
    data = CoherenceDataset(num, model_cfg.resolution, model_cfg.image_channels, seed=seed, variant=variant)
    conditional = bool(model_cfg.num_classes)
    scores: dict[str, list[Tensor]] = {"coherent": [], "incoherent": []}
    for start in range(0, num, batch_size):
        idx = range(start, min(start + batch_size, num))
        for kind, draw in (("coherent", data.__getitem__), ("incoherent", data.incoherent)):
            items = [draw(i) for i in idx]
            x = torch.stack([image for image, _ in items])
            y = torch.tensor([label for _, label in items]) if conditional else None
            scores[kind].append(discriminator(x, y).flatten().double())
    coherent, incoherent = torch.cat(scores["coherent"]), torch.cat(scores["incoherent"])
    paired = ((coherent > incoherent).double() + 0.5 * (coherent == incoherent).double()).mean().item()
    return {
        "d_auc": rank_auc(coherent, incoherent),
        "d_paired": paired,
        "d_coherent": coherent.mean().item(),
        "d_incoherent": incoherent.mean().item(),
    }


def _halves(x: Tensor) -> tuple[Tensor, Tensor]:
    """(B, 1, R, R) masks of the foreground pixels (above FOREGROUND_THRESHOLD) in the left and right halves."""
    fg = (x.amax(1, keepdim=True) > FOREGROUND_THRESHOLD).float()
    half = x.shape[-1] // 2
    left, right = fg.clone(), fg.clone()
    left[..., half:], right[..., :half] = 0.0, 0.0
    return left, right


def _cells(mask: Tensor, hw: tuple[int, int]) -> Tensor:
    """(B, h * w): 1 on the cells of an `hw` grid over the image that hold a pixel of `mask` (B, 1, R, R)."""
    return F.adaptive_max_pool2d(mask, hw).flatten(1)


def _mass(attn: Tensor, queries: Tensor, keys: Tensor) -> tuple[float, float]:
    """The attention mass (B, Nq, N) that the `queries` cells (B, Nq) put on the `keys` cells (B, N), averaged
    over those queries and the images, and the mass uniform attention would put there (the keys' share)."""
    on_keys = torch.bmm(attn.float(), keys.unsqueeze(-1)).squeeze(-1)  # (B, Nq): each query's mass on the keys
    share = (on_keys * queries).sum(1) / queries.sum(1).clamp_min(1.0)
    return float(share.mean()), float(keys.mean(1).mean())


def object_look_share(
    attn: Tensor, query_hw: tuple[int, int], key_hw: tuple[int, int], x: Tensor
) -> tuple[float, float]:
    """Where the left object's queries look (the 2D counterpart of `long_range_clips.frame_attention`).

    `attn` (B, Nq, N): a block's attention on images `x` (B, C, R, R), queries on a `query_hw` grid, keys on a
    `key_hw` grid (pooled). Returns the attention mass that queries on cells holding left-object pixels put on
    keys whose cells hold right-object pixels, averaged over those queries and the images, and the mass uniform
    attention would put there (the right object's share of the key cells). Objects are the pixels above
    FOREGROUND_THRESHOLD in either half (the backgrounds stay below it)."""
    left, right = _halves(x)
    return _mass(attn, _cells(left, query_hw), _cells(right, key_hw))


def mirror_look_share(
    attn: Tensor, query_hw: tuple[int, int], key_hw: tuple[int, int], x: Tensor
) -> dict[str, list[float]]:
    """Content or position: where the left object's queries look on INCOHERENT images `x`, whose right object
    was drawn independently of the left one (`object_look_share`'s arguments otherwise).

    Two sets of key cells that do not overlap: `object`, the cells holding the right object but not the left
    object's mirror image; `mirror`, the cells holding the left object's mirror image (where the right object
    sits in coherent images) but not the right object. A block that finds the other object by what it shows
    looks at `object`; one that looks at the mirrored place, by where the query is, looks at `mirror`.
    Returns {"object": [share, uniform's share], "mirror": [share, uniform's share]}."""
    left, right = _halves(x)
    queries, obj, mirror = _cells(left, query_hw), _cells(right, key_hw), _cells(left.flip(-1), key_hw)
    return {"object": list(_mass(attn, queries, obj * (1 - mirror))),
            "mirror": list(_mass(attn, queries, mirror * (1 - obj)))}  # fmt: skip


@torch.no_grad()
def d_look_share(
    discriminator: torch.nn.Module, model_cfg: Any, *, num: int = 64, seed: int = 1, variant: str = "objects"
) -> dict[str, list[float]]:
    """Where each non-local block of a trained D looks on `num` unseen coherent images (seed 1, as
    `mismatch_auc`): {block name: [share of the left object's queries' attention on the right object, the
    share uniform attention would give]}; empty for a D without blocks."""
    from gan.attention import record_attention

    data = CoherenceDataset(num, model_cfg.resolution, model_cfg.image_channels, seed=seed, variant=variant)
    items = [data[i] for i in range(num)]
    x = torch.stack([image for image, _ in items])
    y = torch.tensor([label for _, label in items]) if model_cfg.num_classes else None
    with record_attention(discriminator) as records:
        discriminator(x, y)
    return {r.name: list(object_look_share(r.weights, r.query_hw, r.key_hw, x)) for r in records}


@torch.no_grad()
def d_mirror_look(
    discriminator: torch.nn.Module, model_cfg: Any, *, num: int = 64, seed: int = 1, variant: str = "objects"
) -> dict[str, dict[str, list[float]]]:
    """`mirror_look_share` of each non-local block of a trained D on the incoherent versions of `d_look_share`'s
    `num` images: {block name: {"object": [share, uniform], "mirror": [share, uniform]}}; empty without blocks."""
    from gan.attention import record_attention

    data = CoherenceDataset(num, model_cfg.resolution, model_cfg.image_channels, seed=seed, variant=variant)
    items = [data.incoherent(i) for i in range(num)]
    x = torch.stack([image for image, _ in items])
    y = torch.tensor([label for _, label in items]) if model_cfg.num_classes else None
    with record_attention(discriminator) as records:
        discriminator(x, y)
    return {r.name: mirror_look_share(r.weights, r.query_hw, r.key_hw, x) for r in records}
