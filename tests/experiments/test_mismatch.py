"""experiments.mismatch: rank_auc against hand-computed values and an all-pairs loop, mismatch_auc with
hand-built discriminators (one blind to the right half, one that is the coherence score itself)."""

from __future__ import annotations

import pytest
import torch

from experiments.mismatch import mismatch_auc, rank_auc
from gan.synthetic import CoherenceDataset, coherence_per_image


def test_rank_auc_hand_computed_and_against_all_pairs():
    # pos 3 beats both; 1 beats 0 only; 2 beats 0 and ties 2: (2 + 1 + 1.5) / 6
    assert rank_auc(torch.tensor([3.0, 1.0, 2.0]), torch.tensor([0.0, 2.0])) == pytest.approx(4.5 / 6)
    assert rank_auc(torch.tensor([1.0, 1.0]), torch.tensor([1.0])) == 0.5
    assert rank_auc(torch.tensor([5.0]), torch.tensor([1.0, 2.0])) == 1.0
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randint(0, 6, (37,), generator=g), torch.randint(0, 6, (23,), generator=g)  # many ties
    loop = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos.tolist() for n in neg.tolist())
    assert rank_auc(pos, neg) == pytest.approx(loop / (37 * 23), abs=1e-12)
    with pytest.raises(ValueError, match="at least one"):
        rank_auc(torch.tensor([]), torch.tensor([1.0]))


class _ScoreD(torch.nn.Module):
    """A hand-built D: score(images) per image; records the labels it was given."""

    def __init__(self, score) -> None:
        super().__init__()
        self.score, self.labels = score, []

    def forward(self, x, y):
        self.labels.append(y)
        return self.score(x)


def _cfg(classes: int = 4):
    from gan.config import ModelConfig

    return ModelConfig(resolution=32, image_channels=1, num_classes=classes)


def test_mismatch_auc_left_half_d_is_exactly_at_chance():
    # Coherent and incoherent versions share background and left object pixel for pixel, so a D that sees only
    # the left half gives every pair equal scores: AUC and paired fraction exactly one half.
    d = _ScoreD(lambda x: x[..., :16].sum(dim=(1, 2, 3)))
    out = mismatch_auc(d, _cfg(), num=40, seed=3, batch_size=16)
    assert out["d_auc"] == 0.5 and out["d_paired"] == 0.5
    assert out["d_coherent"] == pytest.approx(out["d_incoherent"], abs=1e-12)


def test_mismatch_auc_oracle_d_sees_every_mismatch_and_gets_labels():
    d = _ScoreD(coherence_per_image)  # 1.0 on coherent images, lower where the objects disagree
    out = mismatch_auc(d, _cfg(), num=40, seed=3, batch_size=16)
    assert out["d_auc"] > 0.95 and out["d_paired"] > 0.95 and out["d_coherent"] == pytest.approx(1.0)
    flipped = mismatch_auc(_ScoreD(lambda x: -coherence_per_image(x)), _cfg(), num=40, seed=3, batch_size=16)
    assert flipped["d_auc"] == pytest.approx(1.0 - out["d_auc"])
    # labels: the left object's shape, the same for both versions of an image (3 batches x 2 versions)
    data = CoherenceDataset(40, 32, 1, seed=3)
    expected = torch.tensor([data[i][1] for i in range(40)])
    assert len(d.labels) == 6
    assert torch.equal(torch.cat(d.labels[0::2]), expected) and torch.equal(torch.cat(d.labels[1::2]), expected)
    unconditional = _ScoreD(coherence_per_image)
    mismatch_auc(unconditional, _cfg(classes=0), num=4, seed=3)
    assert unconditional.labels == [None, None]


def test_mismatch_auc_detail_variant_pairs_differ_only_in_the_pattern():
    # With the run's variant, the pairs are the detail tie's: an oracle on the pattern (detail_agreement, exactly
    # 1.0 on coherent images) separates every pair, a left-half D sees nothing, and the objects' coherence score
    # separates far less than on the objects tie, since shape, row and grey level still mirror each other.
    from gan.synthetic import detail_agreement

    cfg = _cfg()
    oracle = mismatch_auc(_ScoreD(detail_agreement), cfg, num=40, seed=3, batch_size=16, variant="detail")
    assert oracle["d_auc"] == 1.0 and oracle["d_coherent"] == pytest.approx(1.0)
    left = mismatch_auc(_ScoreD(lambda x: x[..., :16].sum(dim=(1, 2, 3))), cfg, num=40, seed=3, variant="detail")
    assert left["d_auc"] == 0.5
    objects = mismatch_auc(_ScoreD(coherence_per_image), cfg, num=40, seed=3, variant="objects")
    detail = mismatch_auc(_ScoreD(coherence_per_image), cfg, num=40, seed=3, variant="detail")
    assert detail["d_coherent"] == pytest.approx(1.0) and detail["d_incoherent"] > objects["d_incoherent"]


def _right_key_cells(x: torch.Tensor, side: int) -> torch.Tensor:
    """(B, side * side): 1 where a key cell of a side x side grid over the image holds a right-half foreground
    pixel, by a loop over cells (the reference for object_look_share's pooling)."""
    from gan.synthetic import FOREGROUND_THRESHOLD

    fg = x.amax(1) > FOREGROUND_THRESHOLD  # (B, R, R)
    r = x.shape[-1]
    cell, out = r // side, torch.zeros(len(x), side * side)
    for b in range(len(x)):
        for i in range(side):
            for j in range(side):
                if j * cell >= r // 2 and fg[b, i * cell : (i + 1) * cell, j * cell : (j + 1) * cell].any():
                    out[b, i * side + j] = 1.0
    return out


def test_object_look_share_hand_built_attention() -> None:
    from experiments.mismatch import object_look_share

    x = torch.stack([CoherenceDataset(4, 32, 1, seed=3)[i][0] for i in range(4)])  # (4, 1, 32, 32)
    keys = _right_key_cells(x, 8)  # (4, 64)
    # every query looks only at the first right-object key cell: share 1; only at the top-left cell: share 0
    on_right = torch.zeros(4, 256, 64)
    off = torch.zeros(4, 256, 64)
    for b in range(4):
        on_right[b, :, int(keys[b].nonzero()[0])] = 1.0
        off[b, :, 0] = 1.0
    assert object_look_share(on_right, (16, 16), (8, 8), x)[0] == pytest.approx(1.0)
    assert object_look_share(off, (16, 16), (8, 8), x)[0] == pytest.approx(0.0)
    uniform_share = keys.mean(1).mean().item()
    share, uniform = object_look_share(torch.full((4, 256, 64), 1 / 64), (16, 16), (8, 8), x)
    assert share == pytest.approx(uniform_share, abs=1e-6) and uniform == pytest.approx(uniform_share, abs=1e-6)


def test_d_look_share_of_a_real_d_with_uniform_attention_is_the_uniform_share() -> None:
    from experiments.mismatch import d_look_share
    from gan.config import AttnLabConfig, ModelConfig
    from gan.models import Discriminator

    lab = AttnLabConfig(logit_scale="learned")
    cfg = ModelConfig(resolution=32, image_channels=1, num_classes=4, d_width=8, d_attention=[16], attn_lab=lab)
    torch.manual_seed(0)
    d = Discriminator(cfg).eval()
    (name, block), *rest = [(n, m) for n, m in d.named_modules() if hasattr(m, "log_tau")]
    assert not rest
    with torch.no_grad():
        block.log_tau.fill_(-1e4)  # logits exp(-1e4) theta^T phi = 0: every query attends uniformly
    out = d_look_share(d, cfg, num=6, variant="detail")
    data = CoherenceDataset(6, 32, 1, seed=1, variant="detail")
    x = torch.stack([data[i][0] for i in range(6)])
    expected = _right_key_cells(x, 8).mean(1).mean().item()  # 16x16 queries, keys 2x2-pooled to 8x8
    assert list(out) == [name] and out[name] == pytest.approx([expected, expected], abs=1e-6)
    assert (
        d_look_share(Discriminator(ModelConfig(resolution=32, image_channels=1, d_width=8, d_attention=[])), cfg) == {}
    )


def _mirror_cells(x: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, side * side) each, by a loop over cells and pixels: the key cells holding a right-half foreground pixel
    and not the left object's mirror image ("object"), and the reverse ("mirror")."""
    from gan.synthetic import FOREGROUND_THRESHOLD

    fg = x.amax(1) > FOREGROUND_THRESHOLD  # (B, R, R)
    r = x.shape[-1]
    cell = r // side
    obj, mirror = torch.zeros(len(x), side * side), torch.zeros(len(x), side * side)
    for b in range(len(x)):
        for i in range(side):
            for j in range(side):
                rows, cols = range(i * cell, (i + 1) * cell), range(j * cell, (j + 1) * cell)
                has_right = any(fg[b, y, c] for y in rows for c in cols if c >= r // 2)
                has_mirror = any(fg[b, y, r - 1 - c] for y in rows for c in cols if r - 1 - c < r // 2)
                obj[b, i * side + j] = float(has_right and not has_mirror)
                mirror[b, i * side + j] = float(has_mirror and not has_right)
    return obj, mirror


def test_mirror_look_share_tells_the_other_object_from_the_mirrored_place() -> None:
    from experiments.mismatch import mirror_look_share

    data = CoherenceDataset(8, 32, 1, seed=3)
    x = torch.stack([data.incoherent(i)[0] for i in range(8)])  # right objects drawn apart from the left ones
    obj, mirror = _mirror_cells(x, 8)
    keep = [b for b in range(8) if obj[b].any() and mirror[b].any()]  # both key sets present
    assert len(keep) >= 4
    x, obj, mirror = x[keep], obj[keep], mirror[keep]
    n = len(keep)
    to_mirror, to_object = torch.zeros(n, 256, 64), torch.zeros(n, 256, 64)
    for b in range(n):  # every query looks at one key cell only
        to_mirror[b, :, int(mirror[b].nonzero()[0])] = 1.0
        to_object[b, :, int(obj[b].nonzero()[0])] = 1.0
    by_position = mirror_look_share(to_mirror, (16, 16), (8, 8), x)
    by_content = mirror_look_share(to_object, (16, 16), (8, 8), x)
    assert (by_position["mirror"][0], by_position["object"][0]) == pytest.approx((1.0, 0.0))
    assert (by_content["mirror"][0], by_content["object"][0]) == pytest.approx((0.0, 1.0))
    uniform = mirror_look_share(torch.full((n, 256, 64), 1 / 64), (16, 16), (8, 8), x)
    for name, cells in (("object", obj), ("mirror", mirror)):
        expected = cells.mean(1).mean().item()
        assert uniform[name] == pytest.approx([expected, expected], abs=1e-6)
        assert by_position[name][1] == pytest.approx(expected, abs=1e-6)  # uniform's share, whatever attn is


def test_d_mirror_look_of_a_real_d_reads_incoherent_images() -> None:
    from experiments.mismatch import d_mirror_look
    from gan.config import AttnLabConfig, ModelConfig
    from gan.models import Discriminator

    lab = AttnLabConfig(logit_scale="learned")
    cfg = ModelConfig(resolution=32, image_channels=1, d_width=8, d_attention=[16], attn_lab=lab)
    torch.manual_seed(0)
    d = Discriminator(cfg).eval()
    block = next(m for m in d.modules() if hasattr(m, "log_tau"))
    with torch.no_grad():
        block.log_tau.fill_(-1e4)  # uniform attention: each share is uniform's
    out = d_mirror_look(d, cfg, num=6)
    data = CoherenceDataset(6, 32, 1, seed=1)
    obj, mirror = _mirror_cells(torch.stack([data.incoherent(i)[0] for i in range(6)]), 8)
    (looks,) = out.values()
    assert looks["object"] == pytest.approx([obj.mean(1).mean().item()] * 2, abs=1e-6)
    assert looks["mirror"] == pytest.approx([mirror.mean(1).mean().item()] * 2, abs=1e-6)
