"""One training step: `n_dis` discriminator steps, one generator step, then the EMA update.

`train_step` is what the loop (gan/train_loop.py) and the throughput benchmark both call. Each network's
step runs over `grad_accum` micro-batches and ends in the same scaler-step / update / zero_grad
(`_optimizer_step`), so an fp16 overflow in D never skips or rescales G's step.

Augmentation hook: `Parts.augment(images, rng) -> images` is applied to every image batch D sees (real and
fake together in the D step, the fakes in the G step, where gradients flow through it into G), with `rng` the
step's checkpointed per-process generator, so an augmented run resumes bit-exactly. The default,
`no_augment`, returns its input and draws nothing (the pattern of EDM's `augment_pipe`).

From the config (`augmentation`): `train.augment` builds a `DiffAugment` (gan/augment.py) with probability
`train.augment_p`, or, with `train.ada_target > 0`, one whose p is steered by ADA's `AdaptiveProbability` from 0
(observing D's real logits of every micro-batch, adjusting after each D optimiser step). `optim.lecam > 0` adds
LeCam's regulariser to D's loss with anchors (`LeCamAnchors`) averaged over processes. With `train.augment=""`
and `optim.lecam=0` the step is exactly the plain one (no extra draws, no extra terms).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from torch import Tensor

from gan.attention import attention_blocks
from gan.augment import AdaptiveProbability, DiffAugment
from gan.config import Config
from gan.ema import EMA
from gan.losses import LOSSES, LeCamAnchors, lecam_regularizer
from gan.models import Discriminator, Generator

PRECISION = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}

Augment = Callable[[Tensor, torch.Generator], Tensor]


def no_augment(images: Tensor, rng: torch.Generator) -> Tensor:  # noqa: ARG001
    """The default augmentation: none (returns `images` itself and draws nothing from `rng`)."""
    return images


@dataclass
class Parts:
    """Everything a step touches.

    `G`/`D` are what gradients flow through: compiled when `train.compile` is on, then DDP-wrapped when
    several processes run. `G_local`/`D_local` are the same (compiled) modules without DDP, for passes
    that must not synchronise: the D step's no-grad fakes and the G step's frozen D. `G_raw`/`D_raw` are
    the plain modules (state dicts, EMA, attention maps). `augment` sees every image batch D sees.
    """

    G: torch.nn.Module
    D: torch.nn.Module
    G_local: torch.nn.Module
    D_local: torch.nn.Module
    G_raw: Generator
    D_raw: Discriminator
    ema: EMA | None
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    scaler_g: torch.amp.GradScaler
    scaler_d: torch.amp.GradScaler
    rng: torch.Generator  # z, fake labels and augmentation draws of this process
    augment: Augment = no_augment
    ada: AdaptiveProbability | None = None  # steers augment.p (train.ada_target > 0)
    lecam: LeCamAnchors | None = None  # optim.lecam > 0


def augmentation(cfg: Config, world_size: int) -> tuple[Augment, AdaptiveProbability | None]:
    """The hook and ADA's controller that the config asks for: (no_augment, None) with train.augment empty."""
    t = cfg.train
    if not t.augment.strip():
        return no_augment, None
    if t.ada_target <= 0:
        return DiffAugment(t.augment, t.augment_p), None
    images_per_step = t.batch_size * cfg.optim.grad_accum * world_size  # real images of one D step
    ada = AdaptiveProbability(images_per_step, target=t.ada_target, interval=t.ada_interval,
                              speed_images=t.ada_speed_images, p=0.0)  # fmt: skip
    return DiffAugment(t.augment, ada.p), ada


def param_groups(net: torch.nn.Module, lr: float, attn_lr_mult: float) -> list[dict]:
    """Adam's parameter groups: every parameter at `lr`, except, when `attn_lr_mult` != 1, the non-local blocks'
    own (theta, phi, g, out, gamma) in a second group at lr * attn_lr_mult (after the first, so group 0 is the
    network's rate as before and a multiplier of 1 leaves the optimiser exactly as it was)."""
    block_ids = {id(p) for _, block in attention_blocks(net) for p in block.parameters()}
    if attn_lr_mult == 1.0 or not block_ids:
        return [{"params": list(net.parameters()), "lr": lr}]
    rest = [p for p in net.parameters() if id(p) not in block_ids]
    blocks = [p for p in net.parameters() if id(p) in block_ids]
    return [{"params": rest, "lr": lr}, {"params": blocks, "lr": lr * attn_lr_mult}]


def build_parts(cfg: Config, accelerator: Accelerator, augment: Augment | None = None) -> Parts:
    """G, D, optimisers, EMA and the step's generator; `augment` overrides the config's augmentation (tests)."""
    torch.manual_seed(cfg.train.seed)  # identical initial weights in every process
    G_raw, D_raw = Generator(cfg.model), Discriminator(cfg.model)
    G_raw.to(accelerator.device)
    D_raw.to(accelerator.device)
    if cfg.train.channels_last:
        G_raw.to(memory_format=torch.channels_last)
        D_raw.to(memory_format=torch.channels_last)
    o = cfg.optim
    opt_g = torch.optim.Adam(param_groups(G_raw, o.lr_g, o.attn_lr_mult), betas=(o.beta1, o.beta2), eps=o.eps)
    opt_d = torch.optim.Adam(param_groups(D_raw, o.lr_d, o.attn_lr_mult), betas=(o.beta1, o.beta2), eps=o.eps)
    G_local, D_local = (torch.compile(G_raw), torch.compile(D_raw)) if cfg.train.compile else (G_raw, D_raw)
    G, D = accelerator.prepare(G_local, D_local)  # DDP when several processes
    fp16 = cfg.train.mixed_precision == "fp16"
    device_type = accelerator.device.type
    rng = torch.Generator(accelerator.device).manual_seed(cfg.train.seed * 1009 + accelerator.process_index)
    ada = None
    if augment is None:
        augment, ada = augmentation(cfg, accelerator.num_processes)
    return Parts(
        G=G,
        D=D,
        G_local=G_local,
        D_local=D_local,
        G_raw=G_raw,
        D_raw=D_raw,
        ema=EMA(G_raw, o.ema_decay, o.ema_start) if o.ema_decay > 0 else None,
        opt_g=opt_g,
        opt_d=opt_d,
        scaler_g=torch.amp.GradScaler(device_type, enabled=fp16),
        scaler_d=torch.amp.GradScaler(device_type, enabled=fp16),
        rng=rng,
        augment=augment,
        ada=ada,
        lecam=LeCamAnchors(o.lecam_decay) if o.lecam > 0 else None,
    )


def samples_per_step(cfg: Config, world_size: int) -> int:
    """Real images consumed (over all processes) by one generator step."""
    return cfg.train.batch_size * cfg.optim.n_dis * cfg.optim.grad_accum * world_size


# ----------------------------------------------------------------------------------------------


class _Step:
    """What every micro-batch of a step shares: precision, devices, loss functions, sizes."""

    def __init__(self, parts: Parts, cfg: Config, accelerator: Accelerator) -> None:
        self.parts, self.cfg, self.accelerator = parts, cfg, accelerator
        self.d_loss, self.g_loss = LOSSES[cfg.optim.loss]
        self.dtype = PRECISION[cfg.train.mixed_precision]
        self.device = accelerator.device
        self.accum, self.n = cfg.optim.grad_accum, cfg.train.batch_size
        self.memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def context(self, module: torch.nn.Module, micro: int) -> contextlib.AbstractContextManager:
        """Gradients synchronise (DDP) only on the last micro-batch."""
        return contextlib.nullcontext() if micro == self.accum - 1 else self.accelerator.no_sync(module)

    def latents(self) -> tuple[Tensor, Tensor | None]:
        z = torch.randn(self.n, self.cfg.model.z_dim, device=self.device, generator=self.parts.rng)
        y = None
        if self.cfg.model.num_classes > 0:
            y = torch.randint(self.cfg.model.num_classes, (self.n,), device=self.device, generator=self.parts.rng)
        return z, y

    def sum_over_processes(self, t: Tensor) -> Tensor:
        return self.accelerator.reduce(t, "sum") if self.accelerator.num_processes > 1 else t

    def mean_over_processes(self, t: Tensor) -> Tensor:
        return self.accelerator.reduce(t, "mean") if self.accelerator.num_processes > 1 else t

    def backward(self, scaler: torch.amp.GradScaler, loss: Tensor) -> None:
        scaler.scale(loss / self.accum).backward()


def _optimizer_step(scaler: torch.amp.GradScaler, opt: torch.optim.Optimizer) -> None:
    """The end of every network's step (skipped by the scaler on an fp16 overflow)."""
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)


def d_step(s: _Step, batches: Iterator) -> tuple[dict[str, Tensor], tuple[Tensor, Tensor | None]]:
    """One D step over `grad_accum` micro-batches of real images and no-grad fakes (augmented together)."""
    parts = s.parts
    for micro in range(s.accum):
        x, y_real = next(batches)
        x = x.to(s.device, non_blocking=True).to(memory_format=s.memory_format)
        y_real = y_real.to(s.device, non_blocking=True) if s.cfg.model.num_classes > 0 else None
        z, y_fake = s.latents()
        with torch.no_grad(), s.autocast():
            fake = parts.G_local(z, y_fake)
        with s.context(parts.D, micro), s.autocast():
            both = parts.augment(torch.cat([x, fake.to(x.dtype)]), parts.rng)  # (2B, C, R, R)
            labels = torch.cat([y_real, y_fake]) if y_real is not None else None
            logits = parts.D(both, labels, per_position=True).float()  # (2B,) or a patch D's (2B, h, w)
            real_logits, fake_logits = logits[: s.n], logits[s.n :]
            loss_d = s.d_loss(real_logits, fake_logits)
            if parts.lecam is not None:
                anchors = parts.lecam.update(real_logits, fake_logits, reduce=s.mean_over_processes)
                lecam = lecam_regularizer(real_logits, fake_logits, *anchors)
                loss_d = loss_d + s.cfg.optim.lecam * lecam
        if parts.ada is not None:
            parts.ada.observe(real_logits)
        s.backward(parts.scaler_d, loss_d)
    _optimizer_step(parts.scaler_d, parts.opt_d)
    stats = {"loss_d": loss_d.detach(), "d_real": real_logits.detach().mean(), "d_fake": fake_logits.detach().mean()}
    if parts.lecam is not None:
        stats["lecam"] = lecam.detach()
    if parts.ada is not None:
        parts.augment.p = parts.ada.step(reduce=s.sum_over_processes)  # type: ignore[attr-defined]
    return stats, (x, y_real)


def g_step(s: _Step) -> dict[str, Tensor]:
    """One G step through the augmented fakes. D runs without DDP and with frozen parameters, so no D gradients
    are computed or synchronised."""
    parts = s.parts
    parts.D_raw.requires_grad_(False)
    for micro in range(s.accum):
        z, y_fake = s.latents()
        with s.context(parts.G, micro), s.autocast():
            fake = parts.augment(parts.G(z, y_fake), parts.rng)
            loss_g = s.g_loss(parts.D_local(fake, y_fake, per_position=True).float())
        s.backward(parts.scaler_g, loss_g)
    parts.D_raw.requires_grad_(True)
    _optimizer_step(parts.scaler_g, parts.opt_g)
    return {"loss_g": loss_g.detach()}


def train_step(
    parts: Parts, cfg: Config, batches: Iterator, accelerator: Accelerator, step: int
) -> tuple[dict[str, Tensor], tuple[Tensor, Tensor | None]]:
    """Generator step number `step` (1-based): n_dis D steps, one G step, the EMA update.

    Returns detached scalars (no host sync) and the last real (images, labels)."""
    s = _Step(parts, cfg, accelerator)
    for _ in range(cfg.optim.n_dis):
        stats, batch = d_step(s, batches)
    stats.update(g_step(s))
    if parts.ema:
        parts.ema.update(parts.G_raw, step)
    if parts.ada is not None:
        stats["augment_p"] = torch.tensor(parts.ada.p)
    return stats, batch
