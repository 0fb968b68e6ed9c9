"""Building blocks of the ResNet generator and discriminator (SNGAN / BigGAN / mimicry `modules/`).

- `conv2d`, `linear`, `embedding`: layers with BigGAN's orthogonal weight init and zero bias, spectrally
  normalised when `sn=True` (torch's parametrization: the stored parameter is `...weight.original`, the
  power-iteration vectors are the buffers `_u`, `_v`; one power iteration per training forward).
- `spectral_norm`: that parametrization with autocast switched off inside, so the power iteration and
  sigma stay float32 under mixed precision (CUDA's autocast runs `mv` in fp16; CPU's leaves it alone).
- `ConditionalBatchNorm2d`: BatchNorm with a per-class gain and bias (plain affine BatchNorm when
  `num_classes=0`).
- `LinearConditionalBatchNorm2d`: BigGAN's conditional BatchNorm, gain and bias linear in a conditioning
  vector (the shared class embedding, with a z chunk under hierarchical latents).
- `GBlock`: the generator's residual up-block; `DBlock` / `DBlockOptimized`: the discriminator's residual
  down-blocks (the optimised one is the first block, which sees the image).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm


class _Float32SpectralNorm(_SpectralNorm):
    """torch's spectral-norm parametrization, evaluated with autocast off: u, v and sigma in float32.

    The weight it receives is the float32 parameter; autocast would otherwise lower `torch.mv` (on CUDA's
    fp16/bf16 list) and so compute the power iteration and sigma from a rounded weight. The returned
    weight stays float32; the layer's own conv / matmul is still autocast.
    """

    def forward(self, weight: Tensor) -> Tensor:
        with torch.autocast(weight.device.type, enabled=False):
            return super().forward(weight)


def spectral_norm(module: nn.Module, name: str = "weight") -> nn.Module:
    """Spectrally normalise `module.<name>` like `torch.nn.utils.parametrizations.spectral_norm` (same
    state-dict keys and buffers, one power iteration per training forward), in float32 under autocast."""
    weight = getattr(module, name)
    transposed = isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d))
    parametrize.register_parametrization(module, name, _Float32SpectralNorm(weight, dim=1 if transposed else 0))
    return module


def _identity(module: nn.Module) -> nn.Module:
    return module


def init_layer(module: nn.Module, sn: bool) -> nn.Module:
    """Orthogonal weight (BigGAN's default `G_init`/`D_init='ortho'`), zero bias, then the SN wrap."""
    nn.init.orthogonal_(module.weight)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)
    wrap: Callable[[nn.Module], nn.Module] = spectral_norm if sn else _identity
    return wrap(module)


def conv2d(in_channels: int, out_channels: int, kernel_size: int = 3, *, sn: bool) -> nn.Module:
    """A stride-1 'same' convolution (padding kernel_size // 2)."""
    return init_layer(nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2), sn)


def linear(in_features: int, out_features: int, *, sn: bool, bias: bool = True) -> nn.Module:
    return init_layer(nn.Linear(in_features, out_features, bias=bias), sn)


def embedding(num_embeddings: int, embedding_dim: int, *, sn: bool) -> nn.Module:
    return init_layer(nn.Embedding(num_embeddings, embedding_dim), sn)


class ConditionalBatchNorm2d(nn.Module):
    """out = gain[y] * (x - mean) / sqrt(var + eps) + bias[y], with batch statistics shared by all classes.

    gain starts at 1 and bias at 0 (the identity affine map), so a fresh layer equals plain BatchNorm.
    The class embeddings are not spectrally normalised (mimicry, SNGAN). With `num_classes=0` this is a
    plain affine `BatchNorm2d` and `y` is ignored.
    """

    def __init__(self, num_features: int, num_classes: int = 0, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.bn = nn.BatchNorm2d(num_features, eps=eps, affine=num_classes == 0)
        if num_classes > 0:
            self.gain = nn.Embedding(num_classes, num_features)
            self.bias = nn.Embedding(num_classes, num_features)
            nn.init.ones_(self.gain.weight)
            nn.init.zeros_(self.bias.weight)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        h = self.bn(x)
        if self.num_classes == 0:
            return h
        gain = self.gain(y)[:, :, None, None]  # (B, C, 1, 1)
        bias = self.bias(y)[:, :, None, None]  # (B, C, 1, 1)
        return gain * h + bias


class LinearConditionalBatchNorm2d(nn.Module):
    """BigGAN's conditional BatchNorm: out = (1 + W_gain c) * (x - mean) / sqrt(var + eps) + W_bias c.

    c (B, cond_dim) is the conditioning vector: BigGAN-PyTorch's shared class embedding, concatenated with
    the block's z chunk under hierarchical latents. W_gain and W_bias are (spectrally normalised) linear maps,
    without bias as in BigGAN-PyTorch's `G_shared` generator unless `bias=True`; orthogonal init as every
    other layer here, so unlike `ConditionalBatchNorm2d` a fresh layer is not plain BatchNorm.
    """

    def __init__(self, num_features: int, cond_dim: int, *, sn: bool, bias: bool = False, eps: float = 1e-5) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, eps=eps, affine=False)
        self.gain = linear(cond_dim, num_features, sn=sn, bias=bias)
        self.bias = linear(cond_dim, num_features, sn=sn, bias=bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        gain = 1 + self.gain(c)[:, :, None, None]  # (B, C, 1, 1)
        bias = self.bias(c)[:, :, None, None]  # (B, C, 1, 1)
        return gain * self.bn(x) + bias


def _upsample(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


class GBlock(nn.Module):
    """Residual up-block: BN-ReLU-up-conv3x3-BN-ReLU-conv3x3, plus shortcut up + conv1x1 (2x the side).

    `norm(channels)` builds its two BatchNorms (default: `ConditionalBatchNorm2d` over `num_classes`);
    `y` is whatever they take: labels, or BigGAN's conditioning vectors.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        num_classes: int = 0,
        sn: bool = True,
        norm: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        norm = norm or (lambda channels: ConditionalBatchNorm2d(channels, num_classes))
        self.bn1 = norm(in_channels)
        self.conv1 = conv2d(in_channels, out_channels, 3, sn=sn)
        self.bn2 = norm(out_channels)
        self.conv2 = conv2d(out_channels, out_channels, 3, sn=sn)
        self.shortcut = conv2d(in_channels, out_channels, 1, sn=sn)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        h = self.conv1(_upsample(F.relu(self.bn1(x, y))))
        h = self.conv2(F.relu(self.bn2(h, y)))
        # A 1x1 conv commutes with nearest upsampling, so convolving first is the same map at 1/4 the cost.
        return h + _upsample(self.shortcut(x))


class DBlock(nn.Module):
    """Pre-activation residual block: ReLU-conv3x3-ReLU-conv3x3[-avgpool2].

    The hidden width is `out_channels` (BigGAN's `D_wide`; the same as SNGAN's at constant width). The
    shortcut is a learnable conv1x1[-avgpool2] when the channels change or the block downsamples, else x.
    `kernel_size=1` makes both convs 1x1: a per-position block that adds depth without widening the field.
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, downsample: bool, sn: bool = True, kernel_size: int = 3
    ) -> None:
        super().__init__()
        self.downsample = downsample
        self.conv1 = conv2d(in_channels, out_channels, kernel_size, sn=sn)
        self.conv2 = conv2d(out_channels, out_channels, kernel_size, sn=sn)
        learnable = in_channels != out_channels or downsample
        self.shortcut = conv2d(in_channels, out_channels, 1, sn=sn) if learnable else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv2(F.relu(self.conv1(F.relu(x))))
        s = x if self.shortcut is None else self.shortcut(x)
        if self.downsample:
            h, s = F.avg_pool2d(h, 2), F.avg_pool2d(s, 2)
        return h + s


class DBlockOptimized(nn.Module):
    """The first D block (no ReLU on the image): conv3x3-ReLU-conv3x3-avgpool2, shortcut avgpool2-conv1x1."""

    def __init__(self, in_channels: int, out_channels: int, *, sn: bool = True) -> None:
        super().__init__()
        self.conv1 = conv2d(in_channels, out_channels, 3, sn=sn)
        self.conv2 = conv2d(out_channels, out_channels, 3, sn=sn)
        self.shortcut = conv2d(in_channels, out_channels, 1, sn=sn)

    def forward(self, x: Tensor) -> Tensor:
        h = F.avg_pool2d(self.conv2(F.relu(self.conv1(x))), 2)
        return h + self.shortcut(F.avg_pool2d(x, 2))
