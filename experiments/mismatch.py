"""Does a discriminator notice a broken long-range tie? D's outputs on coherent images of the built-in dataset
(gan.synthetic.CoherenceDataset) against their incoherent versions, summarised as a rank AUC.

The experiment runner (experiments/experiment.py, `evaluate_run`) records these for every discriminator it
evaluates; the ablation reports print them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gan.synthetic import CoherenceDataset


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
