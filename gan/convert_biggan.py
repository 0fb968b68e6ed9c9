"""BigGAN-PyTorch (github.com/ajbrock/BigGAN-PyTorch) state dicts -> this repository's Generator / Discriminator.

Source format (BigGAN.py and layers.py of that repository, as published; `ch` = G_ch / D_ch):
    G: shared.weight (classes, shared_dim)              nn.Embedding, no spectral norm
       linear.{weight, bias, u0, sv0}                   SNLinear(z_chunk, 16 ch * 4 * 4)
       blocks.i.0.{conv1, conv2, conv_sc}.{weight, bias, u0, sv0}     GBlock i (SNConv2d; conv_sc 1x1)
       blocks.i.0.bn{1,2}.{gain, bias}.{weight, u0, sv0}              ccbn: SNLinear(shared_dim + z_chunk, C)
       blocks.i.0.bn{1,2}.{stored_mean, stored_var}                   ccbn running statistics
       blocks.i.1.{theta, phi, g, o}.{weight, u0, sv0}, blocks.i.1.gamma   Attention after block i
       output_layer.0.{gain, bias, stored_mean, stored_var}, output_layer.2.{weight, bias, u0, sv0}
    D: blocks.i.0.{conv1, conv2, conv_sc}.*, blocks.i.1.* (Attention), linear.*, embed.{weight, u0, sv0}
Every SN layer of that code holds its raw `weight`, a power-iteration vector `u0` (1, out) and a log of its
last singular value `sv0`. `sv0` is a training log and is ignored (named in the report); every other tensor
is used, and any tensor this mapping does not know stops the conversion in one line, so a file of another
configuration (mybn, several singular values, no shared embedding) fails loudly instead of loading wrongly.

Spectral norm. In eval mode BigGAN-PyTorch divides W (out, in*k*k) by sv = u' W v, where
v = normalize(u0 W) and u' = normalize(v W^T): one power iteration from the stored u0, which is not updated.
torch's spectral-norm parametrization divides, in eval mode, by u^T W v with its stored (u, v) and no
iteration. The converter runs that one iteration (float64) and stores u := u', v := v, so this repository's
model keeps the raw weight under spectral norm and reproduces BigGAN's eval-mode sigma exactly. Fine-tuning
then continues spectral normalisation from the converged vectors (one power iteration per training forward,
as both codes do), so the converted pair trains like the original rather than as an unconstrained copy.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan.config import Config, ConfigError, ModelConfig
from gan.errors import UserError

PUBLISHED_BN_EPS = 1e-5  # --BN_eps of BigGAN-PyTorch's ImageNet launch scripts (the generator's ccbn)
PUBLISHED_SN_EPS = 1e-6  # --SN_eps of those scripts (only matters for a weight with ||u0 W|| below it)
TFHUB_EPS = 1e-4  # batch-norm and spectral-norm epsilon of TF-Hub's BigGAN, whose PyTorch conversions lack sv0
PUBLISHED_ORIGIN = "trained on ImageNet by its authors"  # the model card's words for the published checkpoints
_G_BLOCKS = {4: 64, 5: 128}  # number of G blocks -> resolution (BigGAN's 64 and 128 tables)
_D_BLOCKS = {5: 64, 6: 128}
_OTHER_G_BLOCKS = {3: 32, 6: 256, 7: 512}  # BigGAN's other tables, which this converter does not map
_DEEP = re.compile(r"^blocks\.\d+\.0\.conv4\.weight$")  # BigGAN-deep's bottleneck blocks: conv1 ... conv4
_BLOCK = re.compile(r"^blocks\.(\d+)\.0\.conv1\.weight$")


class ConversionError(UserError, ValueError):
    """A source file this converter cannot map; one line naming the file or tensor and what to do."""


# ----------------------------------------------------------------------------------------------
# Reading


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A plain state dict (name -> tensor) read with `torch.load(weights_only=True)`: nothing is unpickled
    beyond tensors and containers, so a file that needs arbitrary pickle is refused in one line."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path} does not exist; pass BigGAN-PyTorch's G.pth, G_ema.pth or D.pth")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = re.search(r"WeightsUnpickler error:\s*([^\n]*?)(?: was not an allowed global|\.?\n|\.?$)", str(exc))
        first = detail.group(1)[:120] if detail and detail.group(1) else "not a plain state dict"
        raise ConversionError(
            f"{path} needs pickle beyond tensors to load ({first}); refusing it: pass a plain state dict "
            "(torch.save(G.state_dict(), ...)) such as BigGAN-PyTorch's G.pth / G_ema.pth / D.pth"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ConversionError(f"{path} is not a readable torch file ({first})") from None
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ConversionError(f"{path} is not a state dict of tensors; pass G.pth, G_ema.pth or D.pth itself")
    prefix = "module."  # a state dict saved through DataParallel
    if all(k.startswith(prefix) for k in obj):
        obj = {k.removeprefix(prefix): v for k, v in obj.items()}
    return dict(obj)


# ----------------------------------------------------------------------------------------------
# Inferring the architecture


def _n_blocks(state: dict[str, Tensor]) -> int:
    ids = sorted(int(m.group(1)) for k in state if (m := _BLOCK.match(k)))
    if ids != list(range(len(ids))):
        raise ConversionError(f"the blocks.i.0.conv1.weight tensors are numbered {ids}; expected 0, 1, 2, ...")
    return len(ids)


def refuse_deep(state: dict[str, Tensor], what: str) -> None:
    """BigGAN-deep (BigGANdeep.py: bottleneck blocks with conv1-conv4, no conv_sc) is another architecture."""
    if any(_DEEP.match(k) for k in state):
        raise ConversionError(
            f"the {what} is BigGAN-deep's (blocks with conv1 to conv4 bottlenecks); this converter maps "
            "BigGAN-PyTorch's BigGAN (BigGAN.py) only, not BigGAN-deep"
        )


def _need(state: dict[str, Tensor], key: str, what: str) -> Tensor:
    if key not in state:
        raise ConversionError(f"the source lacks tensor {key}; is it a BigGAN-PyTorch {what} state dict?")
    return state[key]


def _attention_blocks(state: dict[str, Tensor]) -> list[int]:
    return sorted(int(m.group(1)) for k in state if (m := re.match(r"^blocks\.(\d+)\.1\.gamma$", k)))


def infer_generator_config(state: dict[str, Tensor], **overrides) -> ModelConfig:
    """The ModelConfig of a BigGAN-PyTorch generator state dict, from its names and shapes; `overrides`
    (ModelConfig field -> value, None ignored) replace what was inferred (the mapping then checks them)."""
    refuse_deep(state, "generator")
    n = _n_blocks(state)
    if n not in _G_BLOCKS and overrides.get("resolution") is None:
        other = _OTHER_G_BLOCKS.get(n)
        which = f", BigGAN's {other}x{other} table" if other else ""
        raise ConversionError(
            f"the generator has {n} blocks{which}; this converter maps BigGAN's 64x64 (4 blocks) and 128x128 "
            "(5 blocks) tables only"
        )
    shared = _need(state, "shared.weight", "generator (G_shared)")
    z_chunk = _need(state, "linear.weight", "generator").shape[1]
    cond = _need(state, "blocks.0.0.bn1.gain.weight", "generator").shape[1]
    classes, shared_dim = shared.shape
    if cond not in (shared_dim, shared_dim + z_chunk):
        raise ConversionError(
            f"blocks.0.0.bn1.gain.weight reads {cond} inputs; expected shared_dim {shared_dim} or, with hierarchical "
            f"z, shared_dim + z chunk = {shared_dim + z_chunk}"
        )
    hierarchical = cond == shared_dim + z_chunk
    width_in = _need(state, "blocks.0.0.conv1.weight", "generator").shape[1]  # 16 ch
    inferred = dict(
        resolution=_G_BLOCKS.get(n, 0),
        image_channels=_need(state, "output_layer.2.weight", "generator").shape[0],
        num_classes=classes,
        z_dim=z_chunk * (n + 1) if hierarchical else z_chunk,
        g_width=width_in // 16,
        d_width=width_in // 16,
        g_attention=[8 * 2**i for i in _attention_blocks(state)],  # block i outputs side 4 * 2^(i+1)
        g_shared_dim=shared_dim,
        g_hierarchical_z=hierarchical,
        g_cbn_bias="blocks.0.0.bn1.gain.bias" in state,
        g_bn_eps=PUBLISHED_BN_EPS,
    )
    inferred.update({k: v for k, v in overrides.items() if v is not None})
    # The published runs set D_attn = G_attn; D's blocks output sides R/2 ... 4, so R itself has no D block.
    inferred["d_attention"] = [s for s in inferred["g_attention"] if s < inferred["resolution"]]
    return _model_config(inferred)


def infer_discriminator_fields(state: dict[str, Tensor], resolution: int) -> dict:
    """d_width, d_attention and num_classes of a BigGAN-PyTorch discriminator state dict."""
    refuse_deep(state, "discriminator")
    n = _n_blocks(state)
    if _D_BLOCKS.get(n) != resolution:
        raise ConversionError(
            f"the discriminator has {n} blocks; a {resolution}x{resolution} BigGAN D has "
            f"{next(k for k, r in _D_BLOCKS.items() if r == resolution)}: is it the generator's pair?"
        )
    sides = [resolution // 2 ** min(i + 1, n - 1) for i in range(n)]  # the last block keeps its side
    return dict(
        d_width=_need(state, "blocks.0.0.conv1.weight", "discriminator").shape[0],
        d_attention=[sides[i] for i in _attention_blocks(state)],
        num_classes=_need(state, "embed.weight", "discriminator").shape[0],
    )


def _model_config(fields: dict) -> ModelConfig:
    try:
        return ModelConfig(**fields)
    except TypeError as exc:
        raise ConversionError(f"cannot describe the source as a model config ({exc})") from None


# ----------------------------------------------------------------------------------------------
# Mapping tensors


def eval_sn_vectors(weight: Tensor, u0: Tensor, eps: float = PUBLISHED_SN_EPS) -> tuple[Tensor, Tensor]:
    """(u', v) of BigGAN-PyTorch's eval-mode power iteration from the stored u0, in float64:
    v = normalize(u0 W), u' = normalize(v W^T), so that u'^T W v is the singular value it divides by."""
    w = weight.double().flatten(1)  # (out, in * k * k)
    v = F.normalize(u0.double().reshape(1, -1) @ w, dim=1, eps=eps)  # (1, in * k * k)
    u = F.normalize(v @ w.t(), dim=1, eps=eps)  # (1, out)
    return u.reshape(-1), v.reshape(-1)


@dataclass
class _Mapping:
    """Target tensors built from a source state dict, remembering which source tensor each one came from."""

    source: dict[str, Tensor]
    sn_eps: float
    tensors: dict[str, Tensor] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)

    def take(self, key: str) -> Tensor:
        if key not in self.source:
            raise ConversionError(f"the source lacks tensor {key}, which the inferred architecture needs")
        self.used.add(key)
        return self.source[key].float()

    def put(self, target: str, value: Tensor, source: str) -> None:
        self.tensors[target], self.origin[target] = value, source

    def copy(self, source: str, target: str) -> None:
        self.put(target, self.take(source), source)

    def sn(self, source: str, target: str, *, bias: bool) -> None:
        """An SN layer: raw weight, the eval-mode (u, v) of BigGAN's power iteration, and its bias if any."""
        weight = self.take(f"{source}.weight")
        u, v = eval_sn_vectors(weight, self.take(f"{source}.u0"), self.sn_eps)
        self.used.add(f"{source}.sv0")  # a training log, named among the ignored tensors
        p = f"{target}.parametrizations.weight"
        self.put(f"{p}.original", weight, f"{source}.weight")
        self.put(f"{p}.0._u", u.float(), f"{source}.u0")
        self.put(f"{p}.0._v", v.float(), f"{source}.u0")
        if bias:
            self.copy(f"{source}.bias", f"{target}.bias")

    def bn_stats(self, source: str, target: str) -> None:
        self.copy(f"{source}.stored_mean", f"{target}.running_mean")
        self.copy(f"{source}.stored_var", f"{target}.running_var")
        self.put(f"{target}.num_batches_tracked", torch.zeros((), dtype=torch.long), f"{source}.stored_mean")

    def attention(self, source: str, target: str) -> None:
        for src, dst in (("theta", "theta"), ("phi", "phi"), ("g", "g"), ("o", "out")):
            self.sn(f"{source}.{src}", f"{target}.{dst}", bias=False)
        self.copy(f"{source}.gamma", f"{target}.gamma")

    def load_into(self, module: nn.Module) -> list[str]:
        """Load the mapped tensors into `module` after checking every name and shape; return the ignored
        source tensors. Raises ConversionError naming the first tensor that does not fit."""
        expected = module.state_dict()
        for key, value in self.tensors.items():
            if key not in expected:
                raise ConversionError(f"source tensor {self.origin[key]} has no place in the model ({key})")
            if value.shape != expected[key].shape:
                raise ConversionError(
                    f"source tensor {self.origin[key]} has shape {tuple(value.shape)}; the inferred model needs "
                    f"{tuple(expected[key].shape)} for {key} (check the override flags)"
                )
        missing = [k for k in expected if k not in self.tensors]
        if missing:
            raise ConversionError(f"no source tensor fills {missing[0]}; the source is of another architecture")
        unused = [k for k in self.source if k not in self.used]
        if unused:
            more = f" (and {len(unused) - 1} more)" if len(unused) > 1 else ""
            raise ConversionError(
                f"source tensor {unused[0]}{more} is not used by this mapping; the file is of "
                "another BigGAN-PyTorch configuration (mybn, several SVs, no shared embedding?), see docs/biggan.md"
            )
        module.load_state_dict(self.tensors)
        return sorted(k for k in self.source if k.endswith(".sv0"))


def _blocks(module: nn.Module, kind: type | tuple[type, ...]) -> list[str]:
    return [name for name, block in module.blocks.items() if isinstance(block, kind)]


def convert_generator(state: dict[str, Tensor], cfg: ModelConfig, *, sn_eps: float = PUBLISHED_SN_EPS):
    """(this repository's Generator in eval mode, ignored source tensors) for a BigGAN-PyTorch G state dict."""
    from gan.layers import GBlock
    from gan.models import Generator

    G = _build(Generator, cfg)
    m = _Mapping(state, sn_eps)
    m.copy("shared.weight", "shared.weight")
    m.sn("linear", "linear", bias=True)
    for i, name in enumerate(_blocks(G, GBlock)):
        src, dst = f"blocks.{i}.0", f"blocks.{name}"
        for conv, target in (("conv1", "conv1"), ("conv2", "conv2"), ("conv_sc", "shortcut")):
            m.sn(f"{src}.{conv}", f"{dst}.{target}", bias=True)
        for bn in ("bn1", "bn2"):
            for part in ("gain", "bias"):
                m.sn(f"{src}.{bn}.{part}", f"{dst}.{bn}.{part}", bias=cfg.g_cbn_bias)
            m.bn_stats(f"{src}.{bn}", f"{dst}.{bn}.bn")
        side = 8 * 2**i  # block i outputs side 4 * 2^(i+1)
        if f"attn{side}" in G.blocks:
            m.attention(f"blocks.{i}.1", f"blocks.attn{side}")
    m.copy("output_layer.0.gain", "out_bn.weight")
    m.copy("output_layer.0.bias", "out_bn.bias")
    m.bn_stats("output_layer.0", "out_bn")
    m.sn("output_layer.2", "out_conv", bias=True)
    ignored = m.load_into(G)
    return G.eval(), ignored


def convert_discriminator(state: dict[str, Tensor], cfg: ModelConfig, *, sn_eps: float = PUBLISHED_SN_EPS):
    """(this repository's Discriminator in eval mode, ignored source tensors) for a BigGAN-PyTorch D state dict."""
    from gan.layers import DBlock, DBlockOptimized
    from gan.models import Discriminator

    D = _build(Discriminator, cfg)
    m = _Mapping(state, sn_eps)
    blocks = _blocks(D, (DBlock, DBlockOptimized))
    sides = [cfg.resolution // 2 ** min(i + 1, len(blocks) - 1) for i in range(len(blocks))]
    for i, (name, side) in enumerate(zip(blocks, sides)):
        src, dst = f"blocks.{i}.0", f"blocks.{name}"
        m.sn(f"{src}.conv1", f"{dst}.conv1", bias=True)
        m.sn(f"{src}.conv2", f"{dst}.conv2", bias=True)
        if D.blocks[name].shortcut is not None:
            m.sn(f"{src}.conv_sc", f"{dst}.shortcut", bias=True)
        if side in cfg.d_attention and sides.index(side) == i:  # after the first block of that side
            m.attention(f"blocks.{i}.1", f"blocks.attn{side}")
    m.sn("linear", "linear", bias=True)
    if D.embed is not None:
        m.sn("embed", "embed", bias=False)
    ignored = m.load_into(D)
    return D.eval(), ignored


def _build(cls: Callable[[ModelConfig], nn.Module], cfg: ModelConfig) -> nn.Module:
    try:
        return cls(cfg)
    except ConfigError as exc:
        raise ConversionError(f"the inferred architecture is not buildable here ({exc})") from None


# ----------------------------------------------------------------------------------------------
# The whole conversion


def convert(
    generator_path: str | Path,
    out: str | Path,
    *,
    discriminator_path: str | Path | None = None,
    sn_eps: float | None = None,
    origin: str | None = None,
    say: Callable[[str], None] = print,
    **overrides,
) -> Path:
    """Convert BigGAN-PyTorch's G (and D) state dicts into a generator export at `out` (generator.safetensors,
    config.json, model card) plus `discriminator.safetensors` when D is given; returns `out`. The card's
    source names BigGAN-PyTorch, `origin` (how those weights were trained; default: the published checkpoints)
    and each source file's SHA-256. `sn_eps` and overrides' `g_bn_eps` None: the published 1e-6 and 1e-5, or
    TF-Hub's 1e-4 for a generator without sv0 buffers (the layout of TF-Hub conversions), said in one line."""
    from gan.pretrained import export_generator  # imports the Hub client: only a conversion needs it

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConversionError(f"--out {out} exists and is not an empty directory; pick a new one")
    g_state = read_state_dict(generator_path)
    d_state = read_state_dict(discriminator_path) if discriminator_path is not None else None
    sn_eps = epsilons(g_state, sn_eps, overrides, lambda line: say(f"{generator_path}: {line}"))
    cfg = infer_generator_config(g_state, **overrides)
    if d_state is not None:
        d_fields = infer_discriminator_fields(d_state, cfg.resolution)
        if d_fields.pop("num_classes") != cfg.num_classes:
            raise ConversionError("the discriminator's embed.weight and G's shared.weight count different classes")
        cfg = _model_config({**vars(cfg), **d_fields})
    G, ignored = convert_generator(g_state, cfg, sn_eps=sn_eps)
    D, d_ignored = convert_discriminator(d_state, cfg, sn_eps=sn_eps) if d_state is not None else (None, [])
    config = Config(model=cfg)
    config.data.dataset = "folder"  # ImageNet as an image folder: evaluate.py's data.root names it (docs/biggan.md)
    config.data.root = "data/imagenet/train"
    export_generator(
        out,
        G,
        config,
        discriminator=D,
        source=provenance(generator_path, discriminator_path, origin or PUBLISHED_ORIGIN),
    )
    say(
        f"{generator_path}: {cfg.resolution}x{cfg.resolution}, ch {cfg.g_width}, {cfg.num_classes} classes, z_dim {cfg.z_dim}"
        f"{' (hierarchical)' if cfg.g_hierarchical_z else ''}, shared_dim {cfg.g_shared_dim}, G attention at "
        f"{cfg.g_attention or 'none'}; {len(g_state) - len(ignored)} tensors mapped, {len(ignored)} sv0 logs ignored"
    )
    if D is not None:
        say(
            f"{discriminator_path}: ch {cfg.d_width}, D attention at {cfg.d_attention or 'none'}; "
            f"{len(d_state) - len(d_ignored)} tensors mapped, {len(d_ignored)} sv0 logs ignored"
        )
    say(f"wrote {out} (generator export{' + discriminator.safetensors' if D is not None else ''})")
    return out


def epsilons(state: dict[str, Tensor], sn_eps: float | None, overrides: dict, say: Callable[[str], None]) -> float:
    """The spectral-norm epsilon to convert with, setting overrides["g_bn_eps"] too: TF-Hub's 1e-4 for both when
    the generator has no sv0 buffers (a conversion from TF-Hub), unless given; else the published values."""
    if any(k.endswith(".sv0") for k in state):
        return PUBLISHED_SN_EPS if sn_eps is None else sn_eps
    if overrides.get("g_bn_eps") is None or sn_eps is None:
        say(
            "no sv0 buffers, the layout of a conversion from TF-Hub's BigGAN: converting with its batch-norm and "
            "spectral-norm epsilons of 1e-4 (--bn-eps / --sn-eps set them otherwise)"
        )
    if overrides.get("g_bn_eps") is None:
        overrides["g_bn_eps"] = TFHUB_EPS
    return TFHUB_EPS if sn_eps is None else sn_eps


def provenance(generator_path: str | Path, discriminator_path: str | Path | None, origin: str) -> dict:
    """The export's `source` (gan.hub.model_card): converted from BigGAN-PyTorch, `origin`, and the SHA-256 of
    each file read, so a card names exactly which published checkpoint it holds."""
    from gan.files import sha256_of

    paths = [Path(p) for p in (generator_path, discriminator_path) if p is not None]
    return {
        "summary": f"converted from BigGAN-PyTorch, {origin}",
        "about": (
            f"Weights converted with `python convert.py biggan-pytorch` from checkpoints of "
            f"[BigGAN-PyTorch](https://github.com/ajbrock/BigGAN-PyTorch), {origin}; this repository did not "
            "train them. The config's data section only names where evaluate.py finds reference images."
        ),
        "files": {p.name: sha256_of(p) for p in paths},
    }
