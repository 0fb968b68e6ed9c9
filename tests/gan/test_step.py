"""gan/step.py: the augmentation hook sees exactly the batches D sees, gradients reach G through it in the
G step, and the identity default changes nothing (the bit-exact resume tests in test_train cover the loop)."""

import copy
import itertools

import pytest
import torch
from accelerate import Accelerator

from gan.config import ConfigError, load_config
from gan.step import build_parts, no_augment, train_step

from shared import TINY_MODEL

TINY = [*TINY_MODEL, "model.num_classes=3", "model.g_attention=[16]",
        "model.d_attention=[]", "train.batch_size=4", "optim.n_dis=2", "optim.grad_accum=2"]  # fmt: skip


class Recorder:
    """An augmentation that flips images horizontally and records what it was given."""

    def __init__(self) -> None:
        self.calls: list[torch.Tensor] = []
        self.grads: list[torch.Tensor] = []

    def __call__(self, images: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        assert isinstance(rng, torch.Generator)
        self.calls.append(images.detach().clone())
        if images.requires_grad:
            images.register_hook(self.grads.append)
        return images.flip(-1)


def _batches(n: int = 4, k: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.rand(n, 3, 32, 32, generator=g) * 2 - 1, torch.randint(3, (n,), generator=g)) for _ in range(k)]


def test_augment_sees_real_and_fake_in_d_step_and_fakes_in_g_step():
    cfg = load_config(None, TINY)
    accelerator = Accelerator(cpu=True)
    augment = Recorder()
    parts = build_parts(cfg, accelerator, augment=augment)
    rng = torch.Generator().set_state(parts.rng.get_state())  # replays the step's draws
    z = torch.randn(4, cfg.model.z_dim, generator=rng)
    y = torch.randint(3, (4,), generator=rng)
    with torch.no_grad():
        expected_fake = copy.deepcopy(parts.G_raw)(z, y)  # a copy: the forward moves spectral norm's u
    g_before = [p.detach().clone() for p in parts.G_raw.parameters()]
    batches = _batches()
    train_step(parts, cfg, iter(batches), accelerator, step=1)

    # n_dis * grad_accum = 4 D micro-batches of (2B, C, R, R), then grad_accum = 2 G micro-batches of (B, C, R, R)
    assert [tuple(c.shape) for c in augment.calls] == [(8, 3, 32, 32)] * 4 + [(4, 3, 32, 32)] * 2
    for call, (x, _) in zip(augment.calls[:4], batches):
        torch.testing.assert_close(call[:4], x, rtol=0, atol=0)  # the real half is the data, untouched
    torch.testing.assert_close(augment.calls[0][4:], expected_fake, rtol=0, atol=0)  # the fake half is G(z)
    # gradients flowed back through the augmentation into G's output, and G moved
    assert len(augment.grads) == 2 and all(g.abs().sum() > 0 for g in augment.grads)
    assert any(not torch.equal(a, b) for a, b in zip(g_before, parts.G_raw.parameters()))


def test_identity_default_draws_nothing_and_equals_an_explicit_identity():
    x = torch.randn(2, 3, 4, 4)
    rng = torch.Generator().manual_seed(0)
    state = rng.get_state()
    assert no_augment(x, rng) is x and torch.equal(rng.get_state(), state)

    cfg = load_config(None, TINY)
    results = []
    for augment in (None, lambda images, rng: images):
        accelerator = Accelerator(cpu=True)
        parts = build_parts(cfg, accelerator) if augment is None else build_parts(cfg, accelerator, augment=augment)
        batches = itertools.cycle(_batches())
        stats = [train_step(parts, cfg, batches, accelerator, step)[0] for step in (1, 2)]
        results.append((stats, [p.detach().clone() for p in parts.G_raw.parameters()], parts.rng.get_state()))
    (s0, g0, r0), (s1, g1, r1) = results
    assert parts.augment is not no_augment
    for a, b in zip(s0, s1):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(a, b) for a, b in zip(g0, g1)) and torch.equal(r0, r1)


def test_config_builds_diffaugment_ada_and_lecam_and_the_step_uses_them():
    """train.augment / ada_* / optim.lecam reach the step: ADA counts batch x accum real images per D step and
    starts at p = 0; the first LeCam update copies the batch means, so the anchors equal that step's d_real/d_fake."""
    from gan.augment import AdaptiveProbability, DiffAugment
    from gan.losses import LeCamAnchors

    cfg = load_config(None, [*TINY, "optim.n_dis=1", "optim.grad_accum=1", "train.augment=translation,cutout",
                             "train.ada_target=0.6", "train.ada_interval=1", "train.ada_speed_images=8", "optim.lecam=0.5"])  # fmt: skip
    accelerator = Accelerator(cpu=True)
    parts = build_parts(cfg, accelerator)
    assert isinstance(parts.augment, DiffAugment) and parts.augment.ops == ("translation", "cutout")
    assert isinstance(parts.ada, AdaptiveProbability) and parts.ada.p == 0.0 and parts.ada.rate == 4 * 1 / 8
    assert isinstance(parts.lecam, LeCamAnchors) and parts.lecam.decay == 0.99
    stats, _ = train_step(parts, cfg, iter(_batches()), accelerator, 1)
    torch.testing.assert_close(parts.lecam.anchors, torch.stack([stats["d_real"], stats["d_fake"]]), rtol=0, atol=0)
    assert stats["lecam"] >= 0 and stats["augment_p"].item() == parts.augment.p == parts.ada.p in (0.0, 0.5)
    fixed = build_parts(load_config(None, [*TINY, "train.augment=color", "train.augment_p=0.25"]), accelerator)
    assert fixed.augment.p == 0.25 and fixed.ada is None and fixed.lecam is None
    assert build_parts(load_config(None, TINY), accelerator).augment is no_augment


def test_attention_lr_multiplier_moves_only_the_blocks_faster():
    """optim.attn_lr_mult: the blocks' parameters (and only they) in a second Adam group at lr x mult; with
    Adam's first step moving every parameter by lr * g / (|g| + eps) ~ lr for g = 1, they move mult x as far."""
    base = [*TINY_MODEL, "model.g_attention=[16]", "model.d_attention=[16]", "optim.lr_g=1e-3", "optim.lr_d=2e-3"]
    one = build_parts(load_config(None, base), Accelerator(cpu=True))
    assert [len(o.param_groups) for o in (one.opt_g, one.opt_d)] == [1, 1]  # x1: the optimiser as it always was
    parts = build_parts(load_config(None, [*base, "optim.attn_lr_mult=10"]), Accelerator(cpu=True))
    for net, opt, lr in ((parts.G_raw, parts.opt_g, 1e-3), (parts.D_raw, parts.opt_d, 2e-3)):
        named = dict(net.named_parameters())
        in_block = {n for n in named if ".attn16." in f".{n}"}  # the blocks are registered as `attn16`
        assert in_block and len(in_block) < len(named)
        rest, blocks = opt.param_groups
        assert (rest["lr"], blocks["lr"]) == (lr, pytest.approx(10 * lr))
        assert {id(named[n]) for n in in_block} == {id(p) for p in blocks["params"]}
        assert {id(named[n]) for n in set(named) - in_block} == {id(p) for p in rest["params"]}
        before = {n: p.detach().clone() for n, p in named.items()}
        for p in named.values():
            p.grad = torch.ones_like(p)
        opt.step()
        for n, p in named.items():
            expected = (10 * lr if n in in_block else lr) * (1 / (1 + 1e-8))
            assert torch.allclose(before[n] - p.detach(), torch.full_like(p, expected), rtol=1e-5), n
    with pytest.raises(ConfigError, match=r"attn_lr_mult' must be in \(0, inf\)"):
        load_config(None, ["optim.attn_lr_mult=0"])
