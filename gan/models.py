"""ResNet `Generator` and `Discriminator` with non-local blocks, each built from one `ModelConfig`.

Architectures (`W` = `g_width` / `d_width`):
- 32x32, the SNGAN / SAGAN CIFAR ResNet. G: linear z -> (W, 4, 4), three up-blocks at width W (sides 8, 16,
  32), BN-ReLU-conv3x3-tanh. D: optimised block (side 16), down block (8), two blocks without downsampling
  (8), ReLU, global sum pooling, linear.
- 64x64 / 128x128, BigGAN's ResNet tables with W as BigGAN's `ch`: G block widths 16W-16W-8W-4W(-2W)-2W/1W,
  starting from a 4x4 map; D block widths W-2W-4W-8W-16W(-16W), the last block without downsampling.
  Conditioning follows SNGAN (per-class BN gain/bias, one embedding table per BN layer) by default;
  `g_shared_dim > 0` switches to BigGAN's: one shared class embedding, each block's BN gain and bias linear
  in it (`LinearConditionalBatchNorm2d`), with `g_hierarchical_z` also in the block's own chunk of z (the
  first chunk feeds the linear layer). With these options the generator is BigGAN-PyTorch's (docs/biggan.md).

D's receptive field is a setting (issue 25): `d_depth` keeps only the first block and that many more (a
local, PatchGAN-style D), `d_extra_blocks` adds blocks that keep the side (1x1 convs with `d_extra_kernel=1`:
depth without a wider field), and `d_output="patch"` makes D decide at every position of its last map (the
losses average those decisions); `d_receptive_field` is the resulting field. The defaults are SAGAN's D.

Conditional models (`num_classes > 0`) use class-conditional BatchNorm in G and the projection
<embed(y), h> in D. A non-local block goes after the first block whose output map has side s, for every s in
`g_attention` / `d_attention`; its name is `blocks.attn{s}`
(the residual blocks are `blocks.block{i}`). Weights are orthogonally initialised
(BigGAN's default) inside `gan.layers`; the non-local blocks keep their own init.

The networks know nothing of files or the Hub beyond gan.pretrained's mixin (`Generator.from_pretrained`,
`save_pretrained`, `push_to_hub`) and its `load_network`, which `load_generator` / `load_discriminator` call
with their class.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan.attention import NonLocalBlock
from gan.attention_rules import OptionError
from gan.config import Config, ConfigError, ModelConfig, attention_options, option_error
from gan.layers import (
    ConditionalBatchNorm2d,
    DBlock,
    DBlockOptimized,
    GBlock,
    LinearConditionalBatchNorm2d,
    conv2d,
    embedding,
    linear,
)
from gan.pretrained import PretrainedMixin, load_network

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
    """A block of `channels`; options that do not fit its widths (heads) fail as the config's one line."""
    try:
        return NonLocalBlock(
            channels,
            qk_channels=max(channels // cfg.attn_qk_divisor, 1),
            v_channels=max(channels // cfg.attn_v_divisor, 1),
            spectral_norm=sn,
            fused=cfg.attn_fused,
            qk_spectral_norm=sn and cfg.attn_lab.qk_spectral_norm,
            **attention_options(cfg),
        )
    except OptionError as exc:
        raise option_error(exc) from None


def _z_chunk(cfg: ModelConfig, n_blocks: int) -> int:
    """z entries per chunk: all of z, or z_dim / (n_blocks + 1) under hierarchical z (BigGAN's `hier`)."""
    if not cfg.g_hierarchical_z:
        return cfg.z_dim
    if cfg.g_shared_dim == 0 or cfg.z_dim % (n_blocks + 1):
        raise ConfigError(
            f"config key 'model.g_hierarchical_z' needs model.g_shared_dim > 0 and model.z_dim divisible by "
            f"{n_blocks + 1} (one chunk per G block plus one); got g_shared_dim {cfg.g_shared_dim}, z_dim {cfg.z_dim}"
        )
    return cfg.z_dim // (n_blocks + 1)


def _g_norm(cfg: ModelConfig, sn: bool, z_chunk: int) -> Callable[[int], nn.Module]:
    """The BatchNorm of G's blocks: per-class tables, or BigGAN's linear maps of [shared(y), z chunk]."""
    if cfg.g_shared_dim == 0:
        return functools.partial(ConditionalBatchNorm2d, num_classes=cfg.num_classes, eps=cfg.g_bn_eps)
    if cfg.num_classes == 0:
        raise ConfigError("config key 'model.g_shared_dim' is a class embedding: it needs model.num_classes > 0")
    cond_dim = cfg.g_shared_dim + (z_chunk if cfg.g_hierarchical_z else 0)
    return functools.partial(
        LinearConditionalBatchNorm2d, cond_dim=cond_dim, sn=sn, bias=cfg.g_cbn_bias, eps=cfg.g_bn_eps
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
    (gan.sampling checks user-given classes on the CPU first).
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


class Generator(
    nn.Module,
    PretrainedMixin,
    library_name="sagan",
    tags=["gan", "sagan", "self-attention"],
    pipeline_tag="unconditional-image-generation",
):
    """z (B, z_dim) [+ labels y (B,)] -> images (B, image_channels, R, R) in [-1, 1].

    `from_pretrained(dir_or_repo_id)`, `save_pretrained(dir)` and `push_to_hub(repo_id)` come from
    gan.pretrained's mixin and read and write this repository's generator export. Latents and batched
    generation: gan/sampling.py.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        _check_resolution(cfg)
        self.model_config = cfg
        self.run_config = None  # the whole Config when loaded from a checkpoint; save_pretrained writes it
        self.source = None  # an export's provenance (gan.checkpoint.export_source); save_pretrained keeps it
        self.checkpoint_step: int | None = None  # the training step it was loaded from (None: fresh or export)
        self.z_dim = cfg.z_dim
        self.num_classes = cfg.num_classes
        self.resolution = cfg.resolution
        sn = cfg.g_spectral_norm
        widths = [m * cfg.g_width for m in _G_WIDTHS[cfg.resolution]]
        sides = [_BOTTOM * 2 ** (i + 1) for i in range(len(widths) - 1)]
        _check_attention_sides("model.g_attention", cfg.g_attention, sides, cfg.resolution)

        self.bottom_channels = widths[0]
        self.z_chunk = _z_chunk(cfg, len(sides))  # z entries the linear layer (and each block's BNs) reads
        self.linear = linear(self.z_chunk, _BOTTOM * _BOTTOM * widths[0], sn=sn)
        self.shared = embedding(cfg.num_classes, cfg.g_shared_dim, sn=False) if cfg.g_shared_dim else None
        norm = _g_norm(cfg, sn, self.z_chunk)
        self.blocks = nn.ModuleDict()
        for i, (cin, cout, side) in enumerate(zip(widths[:-1], widths[1:], sides)):
            self.blocks[f"block{i}"] = GBlock(cin, cout, sn=sn, norm=norm)
            if side in cfg.g_attention:
                self.blocks[f"attn{side}"] = _attention(cfg, cout, sn)
        self.out_bn = nn.BatchNorm2d(widths[-1])
        self.out_conv = conv2d(widths[-1], cfg.image_channels, 3, sn=sn)

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """`y` (integer labels) is required when conditional and ignored when unconditional."""
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"generator expects z of shape (B, {self.z_dim}); got {tuple(z.shape)}")
        y = _check_labels(y, self.num_classes, z.shape[0], "generator")
        return self.from_first_stage(self.first_stage(z), y, z)

    def first_stage(self, z: Tensor) -> Tensor:
        """The first feature map, the linear layer's output (of z's first chunk, hierarchical z): (B, C, 4, 4)."""
        h = self.linear(z[:, : self.z_chunk])  # (B, 16 C)
        return h.view(z.shape[0], self.bottom_channels, _BOTTOM, _BOTTOM)  # (B, C, 4, 4)

    def from_first_stage(self, h: Tensor, y: Tensor | None = None, z: Tensor | None = None) -> Tensor:
        """Images from a first-stage map h (B, C, 4, 4): the up-blocks and the output layer (labels as in
        forward; z, whose later chunks condition the blocks, only with hierarchical z)."""
        conditions = iter(self.block_conditions(y, z))
        for block in self.blocks.values():
            h = block(h, next(conditions)) if isinstance(block, GBlock) else block(h)
        return torch.tanh(self.out_conv(F.relu(self.out_bn(h))))

    def block_conditions(self, y: Tensor | None, z: Tensor | None = None) -> list[Tensor | None]:
        """What each G block's BNs take: the labels y (per-class tables), or BigGAN's conditioning vectors
        [shared(y), z chunk i + 1] (B, g_shared_dim + z_chunk) under `g_shared_dim`."""
        n = sum(isinstance(b, GBlock) for b in self.blocks.values())
        if self.shared is None:
            return [y] * n
        embedded = self.shared(y)  # (B, shared)
        if not self.model_config.g_hierarchical_z:
            return [embedded] * n
        if z is None:
            raise ValueError("this generator has hierarchical z: pass z to from_first_stage as well")
        chunks = z[:, self.z_chunk :].split(self.z_chunk, dim=1)  # n tensors (B, z_chunk)
        return [torch.cat([embedded, chunk], dim=1) for chunk in chunks]  # (B, shared + z_chunk)

    def card_parameter_counts(self, model_config: ModelConfig) -> dict[str, int]:
        """The model card's parameter table: this generator's and the discriminator's its config describes."""
        discriminator = sum(p.numel() for p in Discriminator(model_config).parameters())
        return super().card_parameter_counts(model_config) | {"discriminator": discriminator}


def d_block_plan(cfg: ModelConfig) -> list[tuple[int, bool, int]]:
    """(output width multiplier, downsample, kernel) of each D residual block, the optimised first block first:
    the resolution's table cut to its first block and `d_depth` more, then `d_extra_blocks` blocks that keep
    the last side and width, with `d_extra_kernel` convs. Raises ConfigError for a depth the table lacks."""
    _check_resolution(cfg)
    table = _D_BLOCKS[cfg.resolution]
    most = len(table) - 1
    depth = most if cfg.d_depth is None else cfg.d_depth
    if not 0 <= depth <= most:
        raise ConfigError(
            f"config key 'model.d_depth' must be 0 to {most} at resolution {cfg.resolution} "
            f"(residual blocks after D's first; null: all {most}); got {cfg.d_depth}"
        )
    plan = [(mult, down, 3) for mult, down in table[: depth + 1]]
    return plan + [(plan[-1][0], False, cfg.d_extra_kernel)] * cfg.d_extra_blocks


def d_receptive_field(cfg: ModelConfig) -> tuple[int, int]:
    """(side, jump) in input pixels of one position of D's last feature map through its convolutions.

    Each block is conv, conv[, avgpool2] (its shortcut's field is smaller): a k x k conv widens the field by
    (k - 1) jumps, a 2x2 pool by one jump and doubles the jump. Position (i, j) sees rows and columns
    jump * i + (jump - 1) / 2 +/- (side - 1) / 2. A non-local block in D makes every position depend on the
    whole image; this is the field without it."""
    side, jump = 1, 1
    for _, down, kernel in d_block_plan(cfg):
        side += 2 * (kernel - 1) * jump
        if down:
            side, jump = side + jump, jump * 2
    return side, jump


class Discriminator(nn.Module):
    """images (B, image_channels, R, R) [+ labels y (B,)] -> logits (B,).

    With `d_output="patch"` D decides at every position of its last map: linear(ReLU(h_p)) [+ <embed(y),
    ReLU(h_p)>], the image-level head applied to one position's features, a function of its receptive field
    alone. `forward(..., per_position=True)` returns those (B, h, w) logits (what training's losses average);
    without it, their mean over positions is the image's logit."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        plan = d_block_plan(cfg)
        self.num_classes = cfg.num_classes
        self.resolution = cfg.resolution
        self.image_channels = cfg.image_channels
        self.output = cfg.d_output
        self.coords = cfg.d_coords
        self.receptive_field = d_receptive_field(cfg)[0]  # side in pixels, through the convolutions
        sn = cfg.d_spectral_norm
        sides, side = [], cfg.resolution
        for _, down, _ in plan:
            side = side // 2 if down else side
            sides.append(side)
        self.map_side = sides[-1]  # side of the last feature map (of the patch logits)
        _check_attention_sides("model.d_attention", cfg.d_attention, sides, cfg.resolution)

        self.blocks = nn.ModuleDict()
        cin, attended = cfg.image_channels + (2 if cfg.d_coords else 0), set()
        for i, ((mult, down, kernel), side) in enumerate(zip(plan, sides)):
            cout = mult * cfg.d_width
            first = i == 0
            block = (
                DBlockOptimized(cin, cout, sn=sn)
                if first
                else DBlock(cin, cout, downsample=down, sn=sn, kernel_size=kernel)
            )
            self.blocks[f"block{i}"] = block
            if side in cfg.d_attention and side not in attended:
                self.blocks[f"attn{side}"] = _attention(cfg, cout, sn)
                attended.add(side)
            cin = cout
        self.linear = linear(cin, 1, sn=sn)
        self.embed = embedding(cfg.num_classes, cin, sn=sn) if cfg.num_classes > 0 else None

    def forward(self, x: Tensor, y: Tensor | None = None, per_position: bool = False) -> Tensor:
        """`y` (integer labels) is required when conditional and ignored when unconditional. `per_position`:
        a patch D's (B, h, w) logits instead of their mean per image (a sum D has one per image either way)."""
        expected = (self.image_channels, self.resolution, self.resolution)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"discriminator expects images (B, {', '.join(map(str, expected))}); got {tuple(x.shape)}")
        y = _check_labels(y, self.num_classes, x.shape[0], "discriminator")
        h = F.relu(self.features(x))  # (B, C, h, w)
        # global sum pooling (B, C), or every position on its own (B, h, w, C)
        h = h.sum(dim=(2, 3)) if self.output == "sum" else h.permute(0, 2, 3, 1)
        out = self.linear(h).squeeze(-1)  # (B,) or (B, h, w)
        if self.embed is not None:
            e = self.embed(y).view(y.shape[0], *[1] * (h.dim() - 2), -1)  # (B, C) or (B, 1, 1, C)
            out = out + (e * h).sum(dim=-1)  # projection <embed(y), h>
        return out if per_position or out.dim() == 1 else out.flatten(1).mean(dim=1)  # (B, h, w) or (B,)

    def summary(self) -> str:
        """One line: blocks, last map, theoretical field, output and parameter count."""
        side, blocks = self.map_side, sum(name.startswith("block") for name in self.blocks)
        attention = [name.removeprefix("attn") for name in self.blocks if name.startswith("attn")]
        field = f"theoretical receptive field {self.receptive_field} px of {self.resolution}"
        if attention:
            field += f" through its convolutions (the non-local block at {', '.join(attention)} sees the whole image)"
        output = "one logit per image" if self.output == "sum" else f"one logit per position ({side}x{side})"
        output += ", coordinate channels" if self.coords else ""
        params = sum(p.numel() for p in self.parameters())
        return f"D: {blocks} residual blocks to a {side}x{side} map, {field}, {output}, {params:,} parameters"

    def features(self, x: Tensor) -> Tensor:
        """The last feature map, before the final ReLU and the global sum pooling: (B, C, h, w). With
        `d_coords`, the images get two more channels first: x (column) and y (row), each from -1 to 1."""
        if self.coords:
            axis = torch.linspace(-1.0, 1.0, self.resolution, dtype=x.dtype, device=x.device)  # (R,)
            cols = axis.view(1, 1, 1, -1).expand(x.shape[0], 1, self.resolution, self.resolution)
            rows = axis.view(1, 1, -1, 1).expand(x.shape[0], 1, self.resolution, self.resolution)
            x = torch.cat([x, cols, rows], dim=1)  # (B, C + 2, R, R)
        for block in self.blocks.values():
            x = block(x)
        return x


# ----------------------------------------------------------------------------------------------
# Loading (the files and the Hub are gan.pretrained's: these name the class and the checkpoint entry)


def load_generator(
    path: str | Path,
    *,
    use_ema: bool = True,
    map_location: str | torch.device = "cpu",
    say: Callable[[str], None] | None = None,
) -> tuple[Generator, Config]:
    """(Generator in eval mode, Config) from a training checkpoint (its EMA weights when `use_ema`), a run
    directory, an export or a Hub id; `say` hears which checkpoint of a run directory was used and why newer
    ones were skipped."""
    generator, config, _ = load_network(Generator, path, "G", use_ema=use_ema, map_location=map_location, say=say)
    return generator, config


def load_discriminator(
    path: str | Path, *, map_location: str | torch.device = "cpu"
) -> tuple[Discriminator, Config, int | None]:
    """(Discriminator in eval mode, Config, step) from a training checkpoint, a run directory (its latest) or a
    generator export holding `discriminator.safetensors` (convert.py writes one; step None)."""
    return load_network(Discriminator, path, "D", map_location=map_location)
