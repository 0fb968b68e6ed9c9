"""ResNet `Generator` and `Discriminator` with non-local blocks, each built from one `ModelConfig`.

Architectures (`W` = `g_width` / `d_width`):
- 32x32, the SNGAN / SAGAN CIFAR ResNet. G: linear z -> (W, 4, 4), three up-blocks at width W (sides 8, 16,
  32), BN-ReLU-conv3x3-tanh. D: optimised block (side 16), down block (8), two blocks without downsampling
  (8), ReLU, global sum pooling, linear.
- 64x64 / 128x128, BigGAN's ResNet tables with W as BigGAN's `ch`: G block widths 16W-16W-8W-4W(-2W)-2W/1W,
  starting from a 4x4 map; D block widths W-2W-4W-8W-16W(-16W), the last block without downsampling.
  Conditioning follows SNGAN (per-class BN gain/bias, one embedding table per BN layer), not BigGAN's
  shared embedding with hierarchical z.

Conditional models (`num_classes > 0`) use class-conditional BatchNorm in G and the projection
<embed(y), h> in D. A non-local block goes after the first block whose output map has side s, for every s in
`g_attention` / `d_attention`; its name is `blocks.attn{s}`
(the residual blocks are `blocks.block{i}`). Weights are orthogonally initialised
(BigGAN's default) inside `gan.layers`; the non-local blocks keep their own init.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn

from gan.attention import NonLocalBlock
from gan.config import ConfigError, ModelConfig
from gan.layers import DBlock, DBlockOptimized, GBlock, conv2d, embedding, linear

# G: block i maps _G_WIDTHS[i] * W -> _G_WIDTHS[i + 1] * W channels and doubles the side, from 4x4.
_G_WIDTHS = {32: (1, 1, 1, 1), 64: (16, 16, 8, 4, 2), 128: (16, 16, 8, 4, 2, 1)}
# D: (output width multiplier, downsample) per block; the first block is the optimised one.
_D_BLOCKS = {
    32: ((1, True), (1, True), (1, False), (1, False)),
    64: ((1, True), (2, True), (4, True), (8, True), (16, False)),
    128: ((1, True), (2, True), (4, True), (8, True), (16, True), (16, False)),
}
_BOTTOM = 4  # side of G's first feature map


def _check_resolution(cfg: ModelConfig) -> None:
    if cfg.resolution not in _G_WIDTHS:
        raise ConfigError(f"config key 'model.resolution' must be one of 32, 64, 128; got {cfg.resolution}")


def _attention(cfg: ModelConfig, channels: int, sn: bool) -> NonLocalBlock:
    return NonLocalBlock(
        channels,
        pairwise=cfg.attn_pairwise,
        qk_channels=max(channels // cfg.attn_qk_divisor, 1),
        v_channels=max(channels // cfg.attn_v_divisor, 1),
        subsample=cfg.attn_subsample,
        gate=cfg.attn_gate,
        spectral_norm=sn,
        fused=cfg.attn_fused,
        temperature=cfg.attn_temperature if cfg.attn_pairwise == "cosine" else None,
    )


def _check_attention_sides(key: str, wanted: Sequence[int], sides: Sequence[int], resolution: int) -> None:
    for side in wanted:
        if side not in sides:
            valid = ", ".join(str(s) for s in sorted(set(sides)))
            raise ConfigError(
                f"config key '{key}' has side {side}, which no block outputs at resolution {resolution}; "
                f"valid sides: {valid}"
            )


def _check_labels(y: Tensor | None, num_classes: int, batch: int, who: str) -> Tensor | None:
    """Validate labels for a conditional model; None for an unconditional one (its labels are ignored).

    The range check reads the values, which would stall an accelerator; it runs on CPU tensors only
    (`sample()` always checks user-given labels on the CPU first).
    """
    if num_classes == 0:
        return None
    if y is None:
        raise ValueError(
            f"this {who} is class-conditional ({num_classes} classes): pass integer labels y of shape ({batch},)"
        )
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool or tuple(y.shape) != (batch,):
        raise ValueError(f"{who} labels must be an integer tensor of shape ({batch},); got {y.dtype} {tuple(y.shape)}")
    if y.device.type == "cpu" and not torch.compiler.is_compiling() and batch > 0:
        if int(y.min()) < 0 or int(y.max()) >= num_classes:
            raise ValueError(
                f"{who} labels must lie in [0, {num_classes - 1}]; got values in [{int(y.min())}, {int(y.max())}]"
            )
    return y


def truncated_normal(
    shape: Sequence[int],
    truncation: float | None = None,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """N(0, I) samples; with `truncation`, every entry beyond |truncation| is redrawn until none is left.

    Draws on `generator`'s device when a generator is given (torch requires it), else on `device`.
    """
    draw_device = generator.device if generator is not None else device
    z = torch.randn(*shape, generator=generator, device=draw_device)
    if truncation is None:
        return z
    if not truncation > 0:
        raise ValueError(f"truncation must be a positive number; got {truncation}")
    while True:
        outside = z.abs() > truncation
        count = int(outside.sum())
        if count == 0:
            return z
        z[outside] = torch.randn(count, generator=generator, device=draw_device)


class Generator(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="sagan",
    tags=["gan", "sagan", "self-attention"],
    pipeline_tag="unconditional-image-generation",
):
    """z (B, z_dim) [+ labels y (B,)] -> images (B, image_channels, R, R) in [-1, 1].

    `from_pretrained(dir_or_repo_id)`, `save_pretrained(dir)` and `push_to_hub(repo_id)` come from
    huggingface_hub's mixin but read and write this repository's generator export (gan/checkpoint.py).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        _check_resolution(cfg)
        self.model_config = cfg
        self.run_config = None  # the whole Config when loaded from a checkpoint; save_pretrained writes it
        self.z_dim = cfg.z_dim
        self.num_classes = cfg.num_classes
        self.resolution = cfg.resolution
        sn = cfg.g_spectral_norm
        widths = [m * cfg.g_width for m in _G_WIDTHS[cfg.resolution]]
        sides = [_BOTTOM * 2 ** (i + 1) for i in range(len(widths) - 1)]
        _check_attention_sides("model.g_attention", cfg.g_attention, sides, cfg.resolution)

        self.bottom_channels = widths[0]
        self.linear = linear(cfg.z_dim, _BOTTOM * _BOTTOM * widths[0], sn=sn)
        self.blocks = nn.ModuleDict()
        for i, (cin, cout, side) in enumerate(zip(widths[:-1], widths[1:], sides)):
            self.blocks[f"block{i}"] = GBlock(cin, cout, num_classes=cfg.num_classes, sn=sn)
            if side in cfg.g_attention:
                self.blocks[f"attn{side}"] = _attention(cfg, cout, sn)
        self.out_bn = nn.BatchNorm2d(widths[-1])
        self.out_conv = conv2d(widths[-1], cfg.image_channels, 3, sn=sn)

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """`y` (integer labels) is required when conditional and ignored when unconditional."""
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"generator expects z of shape (B, {self.z_dim}); got {tuple(z.shape)}")
        y = _check_labels(y, self.num_classes, z.shape[0], "generator")
        return self.from_first_stage(self.first_stage(z), y)

    def first_stage(self, z: Tensor) -> Tensor:
        """The first feature map, the linear layer's output: (B, C, 4, 4)."""
        return self.linear(z).view(z.shape[0], self.bottom_channels, _BOTTOM, _BOTTOM)  # (B, C, 4, 4)

    def from_first_stage(self, h: Tensor, y: Tensor | None = None) -> Tensor:
        """Images from a first-stage map h (B, C, 4, 4): the up-blocks and the output layer (labels as in forward)."""
        for block in self.blocks.values():
            h = block(h, y) if isinstance(block, GBlock) else block(h)
        return torch.tanh(self.out_conv(F.relu(self.out_bn(h))))

    def sample(
        self,
        n: int,
        labels: Tensor | Sequence[int] | int | None = None,
        truncation: float | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """n images from z ~ N(0, I) (truncated at |truncation| by resampling), on the module's device.

        Conditional models draw uniform random labels when `labels` is None; an int asks for n images of
        that class. z, then the labels, come from `generator` (on its own device). Runs under the caller's
        grad mode and train/eval mode: wrap it in `torch.no_grad()` and call `.eval()` for inference.
        """
        device = next(self.parameters()).device
        z = truncated_normal((n, self.z_dim), truncation, generator=generator, device=device)
        y = None
        if self.num_classes > 0:
            if labels is None:
                y = torch.randint(self.num_classes, (n,), generator=generator, device=z.device)
            else:
                y = torch.full((n,), labels) if isinstance(labels, int) else torch.as_tensor(labels).cpu()
                _check_labels(y, self.num_classes, n, "generator")
            y = y.to(device)
        elif labels is not None:
            raise ValueError("this generator is unconditional (num_classes=0): sample it without labels")
        return self(z.to(device), y)

    # -- Hugging Face Hub: the mixin's entry points, in the export format ----------------------------

    def _save_pretrained(self, save_directory: Path) -> None:
        """Write `save_directory` as a generator export (replacing it whole) with its model card."""
        from gan.checkpoint import CheckpointError, export_generator
        from gan.config import Config
        from gan.hub import CARD_FILES, EXPORT_FILES

        foreign = sorted(p.name for p in Path(save_directory).iterdir() if p.name not in EXPORT_FILES + CARD_FILES)
        if foreign:
            raise CheckpointError(
                f"{save_directory} holds other files ({', '.join(foreign[:3])}); save into a new directory"
            )
        export_generator(save_directory, self, self.run_config or Config(model=self.model_config))

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        map_location: str | torch.device = "cpu",
        use_ema: bool = True,
        **hub_kwargs,
    ) -> Generator:
        """A local export / checkpoint / run directory, or a Hub repo's snapshot (hub_kwargs: revision,
        cache_dir, force_download, local_files_only, token), read by `gan.checkpoint.load_generator`."""
        from gan.checkpoint import load_generator
        from gan.hub import local_path

        return load_generator(local_path(model_id, **hub_kwargs), use_ema=use_ema, map_location=map_location)[0]


class Discriminator(nn.Module):
    """images (B, image_channels, R, R) [+ labels y (B,)] -> logits (B,)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        _check_resolution(cfg)
        self.num_classes = cfg.num_classes
        self.resolution = cfg.resolution
        self.image_channels = cfg.image_channels
        sn = cfg.d_spectral_norm
        spec = _D_BLOCKS[cfg.resolution]
        sides, side = [], cfg.resolution
        for _, down in spec:
            side = side // 2 if down else side
            sides.append(side)
        _check_attention_sides("model.d_attention", cfg.d_attention, sides, cfg.resolution)

        self.blocks = nn.ModuleDict()
        cin, attended = cfg.image_channels, set()
        for i, ((mult, down), side) in enumerate(zip(spec, sides)):
            cout = mult * cfg.d_width
            first = i == 0
            block = DBlockOptimized(cin, cout, sn=sn) if first else DBlock(cin, cout, downsample=down, sn=sn)
            self.blocks[f"block{i}"] = block
            if side in cfg.d_attention and side not in attended:
                self.blocks[f"attn{side}"] = _attention(cfg, cout, sn)
                attended.add(side)
            cin = cout
        self.linear = linear(cin, 1, sn=sn)
        self.embed = embedding(cfg.num_classes, cin, sn=sn) if cfg.num_classes > 0 else None

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """`y` (integer labels) is required when conditional and ignored when unconditional."""
        expected = (self.image_channels, self.resolution, self.resolution)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"discriminator expects images (B, {', '.join(map(str, expected))}); got {tuple(x.shape)}")
        y = _check_labels(y, self.num_classes, x.shape[0], "discriminator")
        h = F.relu(self.features(x)).sum(dim=(2, 3))  # (B, C): global sum pooling
        out = self.linear(h).squeeze(1)  # (B,)
        if self.embed is not None:
            out = out + (self.embed(y) * h).sum(dim=1)  # projection <embed(y), h>
        return out

    def features(self, x: Tensor) -> Tensor:
        """The last feature map, before the final ReLU and the global sum pooling: (B, C, h, w)."""
        for block in self.blocks.values():
            x = block(x)
        return x
