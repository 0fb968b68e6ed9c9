"""Typed configuration: nested dataclasses, YAML deltas over the defaults, `key.sub=value` overrides.

Every field carries a one-line meaning in its metadata (`help`); `python train.py --help-config`
prints them. A YAML file only lists what it changes, optionally over another file named by `base:`
(the no-attention twins are a base plus two lines). Unknown keys and wrong types stop with one line
(`ConfigError`) that names the key and what it accepts; gan/config_merge.py holds that machinery, this module
the keys, their cross-field checks and the mapping of keys that moved.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gan.attention_rules import OptionError, check_block_options
from gan.choices import GATES, LOGIT_SCALES, PAIRWISE
from gan.config_merge import ConfigError, apply_delta, describe_fields, parse_overrides, read_deltas
from gan.config_merge import described_field as _f
from gan.files import write_text
from gan.registry import DATASETS, METRICS

# DiffAugment's policy names (gan/augment.py's POLICIES; kept here so the config loads without torch; a test checks).
AUGMENT_POLICIES = ("color", "translation", "cutout")


@dataclass
class AttnLabConfig:
    """The non-local block's research options: variants from the literature that the lab's experiments compare
    (gan/attention.py). Spelled `model.attn_lab.<key>`; configs saved before they moved here spelled them
    `model.attn_<key>`, which still load (`LAB_KEYS`)."""

    pairwise: str = _f(
        "embedded_gaussian",
        "pairwise function f of the non-local blocks (docs/attention.md, Pairwise functions)",
        PAIRWISE,
    )
    temperature: float | None = _f(None, "t of pairwise=cosine, logits t cos(theta_i, phi_j); null: 8")
    logit_scale: str = _f(
        "one", "factor on the softmax logits: 1 (SAGAN), 1/sqrt(d_qk), or a learned temperature", LOGIT_SCALES
    )
    gamma_init: float = _f(0.0, "start of the gamma gate (0: the block starts as the identity)")
    qk_spectral_norm: bool = _f(
        True, "spectral normalisation on theta/phi as on g/out (false: g/out only; no effect without SN)"
    )
    position_max_side: int = _f(
        0, "relative position term on the softmax logits, for feature maps with sides up to this (0: none)"
    )


# Where the research options lived before `model.attn_lab`: old key -> new key inside model.attn_lab
LAB_KEYS = {
    f"attn_{name}": name for name in ("pairwise", "temperature", "logit_scale", "gamma_init", "qk_spectral_norm")
}


@dataclass
class ModelConfig:
    resolution: int = _f(32, "image side in pixels", (32, 64, 128))
    image_channels: int = _f(3, "channels of the images (3 RGB, 1 grayscale)", (1, 3))
    num_classes: int = _f(0, "number of classes; 0 trains an unconditional GAN")
    z_dim: int = _f(128, "dimension of the latent vector z")
    g_width: int = _f(256, "generator base width (32x32: channels of every block; 64/128: BigGAN `ch`)")
    d_width: int = _f(128, "discriminator base width (32x32: channels of every block; 64/128: BigGAN `ch`)")
    g_attention: list[int] = _f([16], "feature-map sides at which G gets a non-local block ([] for none)")
    d_attention: list[int] = _f([16], "feature-map sides at which D gets a non-local block ([] for none)")
    attn_qk_divisor: int = _f(8, "theta/phi channels = block channels // this")
    attn_v_divisor: int = _f(2, "g channels = block channels // this")
    attn_subsample: bool = _f(True, "2x2 max-pool phi(x) and g(x) (4x fewer keys)")
    attn_gate: str = _f(
        "gamma",
        "residual gate of the non-local blocks: a learnable gamma starting at 0 (SAGAN), a zero-initialised output "
        "conv, or per-channel gains tanh(a) with a starting at 0 (docs/attention.md, Gates)",
        GATES,
    )
    attn_heads: int = _f(
        1, "attention heads of the non-local blocks, splitting theta/phi and g (1: SAGAN's single head)"
    )
    attn_fused: bool = _f(True, "use scaled_dot_product_attention when weights are not needed (softmax functions)")
    attn_lab: AttnLabConfig = field(default_factory=AttnLabConfig)  # the block's research options (above)
    g_spectral_norm: bool = _f(True, "spectral normalisation on every G conv / linear")
    g_shared_dim: int = _f(
        0, "BigGAN's shared class embedding width; G's BN gain/bias become linear in it (0: a gain/bias table per BN)"
    )
    g_hierarchical_z: bool = _f(
        False, "BigGAN's hierarchical z: one chunk for the linear layer and one per G block's BNs (needs g_shared_dim)"
    )
    g_cbn_bias: bool = _f(False, "the linear BN gain/bias maps of g_shared_dim > 0 have a bias (BigGAN-PyTorch: none)")
    g_bn_eps: float = _f(1e-5, "epsilon of the BatchNorms inside G's blocks (the output BatchNorm keeps 1e-5)")
    d_spectral_norm: bool = _f(True, "spectral normalisation on every D conv / linear")
    d_depth: int | None = _f(
        None,
        "residual blocks kept after D's first one (fewer: a local, PatchGAN-style D); null: SAGAN's D, all of them",
    )
    d_extra_blocks: int = _f(0, "residual blocks without downsampling added after D's last block, at its width")
    d_extra_kernel: int = _f(3, "kernel of the extra blocks' convs (1: capacity without widening the field)", (1, 3))
    d_output: str = _f(
        "sum",
        "D's logits: one per image (sum pooling) or one per position (PatchGAN, losses averaged)",
        ("sum", "patch"),
    )
    d_coords: bool = _f(
        False,
        "append two coordinate channels (x, y in [-1, 1]) to D's input (CoordConv): a local D knows where it looks",
    )


@dataclass
class DataConfig:
    dataset: str = _f("builtin", "which dataset to train on", tuple(DATASETS))
    root: str = _f("data", "directory holding (or receiving) the dataset files; the image folder for `folder`")
    download: bool = _f(False, "let torchvision download the dataset when it is missing (needs internet)")
    split: str = _f("train", "dataset split", ("train", "test", "valid", "all"))
    random_flip: bool = _f(False, "random horizontal flips")
    builtin_size: int = _f(8192, "number of images in the built-in generated dataset")
    builtin_variant: str = _f(
        "objects",
        "the built-in data's tie: mirrored objects, or `detail`: also a mirrored 2x2-px bit pattern inside them",
        ("objects", "detail"),
    )
    subset: int = _f(
        0, "train on the first N images of a fixed permutation of the dataset (not seeded by train.seed); 0: all"
    )
    num_workers: int = _f(0, "DataLoader worker processes")
    pin_memory: bool = _f(False, "pin host memory for faster GPU copies")
    persistent_workers: bool = _f(False, "keep DataLoader workers alive between epochs (needs num_workers > 0)")


@dataclass
class OptimConfig:
    loss: str = _f("hinge", "adversarial loss", ("hinge", "nonsaturating"))
    lr_g: float = _f(1e-4, "generator Adam learning rate")
    lr_d: float = _f(4e-4, "discriminator Adam learning rate")
    beta1: float = _f(0.0, "Adam beta1")
    beta2: float = _f(0.9, "Adam beta2")
    eps: float = _f(1e-8, "Adam epsilon")
    n_dis: int = _f(1, "discriminator steps per generator step")
    grad_accum: int = _f(1, "micro-batches accumulated into one optimiser step")
    ema_decay: float = _f(0.9999, "decay of the EMA generator weights (0 disables EMA)")
    ema_start: int = _f(0, "generator step at which the EMA starts tracking (copies weights until then)")
    lecam: float = _f(
        0.0, "weight of LeCam's regulariser on D (anchors: EMAs of D's mean real / fake output); 0 disables"
    )
    lecam_decay: float = _f(0.99, "decay of the LeCam anchors' EMA")
    attn_lr_mult: float = _f(
        1.0, "learning-rate multiplier of the non-local blocks' parameters in G and D (docs/long_range.md, Levers)"
    )


@dataclass
class TrainConfig:
    steps: int = _f(1000, "generator steps in the run")
    batch_size: int = _f(64, "images per step and process")
    seed: int = _f(0, "seed of every random number generator")
    checkpoint_every: int = _f(500, "write a checkpoint every this many generator steps (0: only at the end)")
    keep_last: int = _f(3, "number of recent checkpoints kept (the best one by eval.best_metric is kept besides)")
    sample_every: int = _f(250, "write a fixed-noise sample grid every this many steps (0: only at the end)")
    sample_grid: int = _f(64, "images in a sample grid")
    summary_samples: int = _f(
        1000, "generated images the closing coherence line of a run on the built-in data scores (0: no such line)"
    )
    log_every: int = _f(10, "log losses every this many steps (host sync happens only then)")
    mixed_precision: str = _f("no", "autocast precision", ("no", "bf16", "fp16"))
    channels_last: bool = _f(False, "channels_last memory format for G and D")
    compile: bool = _f(False, "torch.compile G and D")
    progress: bool = _f(True, "show a progress bar")
    threads: int = _f(0, "CPU threads for torch ops (0: automatic; see docs/benchmarks.md, Threads)")
    augment: str = _f(
        "", f"DiffAugment policies on every image D sees, a comma list of {', '.join(AUGMENT_POLICIES)}; empty: none"
    )
    augment_p: float = _f(
        1.0, "probability of each augmentation op per image, fixed (ADA, train.ada_target > 0, starts at 0 instead)"
    )
    ada_target: float = _f(
        0.0, "ADA's target for E[sign(D(real))] steering the probability (e.g. 0.6); 0: fixed train.augment_p"
    )
    ada_interval: int = _f(4, "D steps between ADA's adjustments of the probability")
    ada_speed_images: int = _f(500_000, "real images over which ADA can move the probability from 0 to 1")


@dataclass
class EvalConfig:
    every: int = _f(0, "evaluate every this many steps (0: never during training)")
    num_samples: int = _f(10000, "generated images per evaluation")
    metrics: list[str] = _f(["fid"], f"metrics to compute (gan/registry.py): {', '.join(METRICS)}")
    best_metric: str = _f("fid", "metric whose best value becomes checkpoints/best, when it is among eval.metrics")
    feature_extractor: str = _f("inception", "feature network", ("inception", "fashion_classifier"))
    inception_weights: str = _f("", "path to pt_inception-2015-12-05 weights; empty: torch hub cache / download")
    batch_size: int = _f(64, "batch size for generating and extracting features")
    use_ema: bool = _f(True, "evaluate the EMA generator")
    cache_dir: str = _f("", "where reference statistics are cached (empty: ~/.cache/sagan)")


@dataclass
class LogConfig:
    backend: str = _f("none", "experiment tracker", ("wandb", "tensorboard", "none"))
    project: str = _f("sagan", "tracker project")
    entity: str = _f("", "W&B entity (team or user); empty: default")
    run_name: str = _f("", "run name; empty: the run directory's name")
    tags: list[str] = _f([], "tracker tags")
    attention_every: int = _f(0, "log attention maps every this many steps (0: only at the end)")
    attention_queries: int = _f(3, "query points per image in the attention-map figure")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file's delta (after its `base:` file's, if it names one), then the overrides.

    Raises ConfigError on any bad input."""
    cfg = Config()
    if path is not None:
        for delta in read_deltas(Path(path)):
            apply_delta(cfg, _upgrade(delta))
    apply_delta(cfg, _upgrade(parse_overrides(overrides or [])))
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Cross-field checks that a single field's type cannot express."""
    m = cfg.model
    for key, sides in (("model.g_attention", m.g_attention), ("model.d_attention", m.d_attention)):
        for side in sides:
            if side < 4 or side > m.resolution or side & (side - 1):
                raise ConfigError(
                    f"config key '{key}': attention resolution {side} is not a feature-map side of a "
                    f"{m.resolution}x{m.resolution} model; use powers of two from 4 to {m.resolution}"
                )
    _validate_ranges(cfg)  # each key alone first, then the block options together
    try:
        check_block_options(**attention_options(m))
    except OptionError as exc:
        raise option_error(exc) from None
    _validate_augmentation(cfg)
    for key, names in (("eval.metrics", cfg.eval.metrics), ("eval.best_metric", [cfg.eval.best_metric])):
        for metric in names:
            if metric not in METRICS:
                raise ConfigError(f"config key '{key}' accepts {', '.join(METRICS)}; got {metric!r}")


# The config key of each block option that a config sets (gan/attention_rules.py names the option at fault)
OPTION_KEYS = {
    "pairwise": "model.attn_lab.pairwise",
    "gate": "model.attn_gate",
    "logit_scale": "model.attn_lab.logit_scale",
    "temperature": "model.attn_lab.temperature",
    "gamma_init": "model.attn_lab.gamma_init",
    "subsample": "model.attn_subsample",
    "heads": "model.attn_heads",
    "position_max_side": "model.attn_lab.position_max_side",
}


def option_error(exc: OptionError) -> ConfigError:
    """A block option's error as the config's one line, naming the key that sets it."""
    return ConfigError(f"config key '{OPTION_KEYS[exc.option]}': {exc}")


def attention_options(m: ModelConfig) -> dict[str, Any]:
    """The non-local block options a model config sets, as NonLocalBlock's keyword arguments (the same for every
    block; gan.models adds the widths, spectral normalisation and `fused`). gan/attention_rules.py checks them."""
    lab = m.attn_lab
    return {
        "pairwise": lab.pairwise,
        "gate": m.attn_gate,
        "logit_scale": lab.logit_scale,
        "temperature": lab.temperature,
        "gamma_init": lab.gamma_init,
        "subsample": m.attn_subsample,
        "heads": m.attn_heads,
        "position_max_side": lab.position_max_side,
    }


def _upgrade(delta: dict) -> dict:
    """`delta` with the research options' old flat spelling (`model.attn_pairwise`, ...; LAB_KEYS) moved under
    `model.attn_lab`, the one place old configs, run directories and exports are mapped to today's keys. A config
    saved whole before the move holds attn_temperature (then 8.0, used by cosine only) beside every pairwise
    function; where it names another function than cosine, the unused temperature is dropped."""
    model = delta.get("model")
    if not isinstance(model, dict) or not model.keys() & LAB_KEYS.keys():
        return delta
    model = dict(model)
    lab = dict(model.get("attn_lab") or {})
    if model.get("attn_pairwise", "cosine") != "cosine":
        model.pop("attn_temperature", None)
    lab.update({LAB_KEYS[old]: model.pop(old) for old in list(model) if old in LAB_KEYS})
    return {**delta, "model": {**model, "attn_lab": lab}}


# The range of every numeric key (the block options' rules are gan/attention_rules.py's): (lowest, highest, whether
# the lowest is excluded, whether the highest is, what the range says). A float must also be finite.
_UNIT = (0, 1, False, True, "")  # [0, 1)
_COUNT_OR_0 = {"data.subset": "0: every image", "data.num_workers": "0: load in the main process",
               "train.threads": "0: automatic", "train.keep_last": "0: keep all", "model.g_shared_dim": "0: none",
               "model.d_extra_blocks": "0: none", "model.num_classes": "0: unconditional",
               "optim.ema_start": "", "train.checkpoint_every": "0: only at the end",
               "train.sample_every": "0: only at the end", "train.log_every": "0: only at the end",
               "train.summary_samples": "0: no closing score", "eval.every": "0: never during training",
               "log.attention_every": "0: only at the end"}  # fmt: skip
_AT_LEAST_1 = ("model.z_dim", "model.g_width", "model.d_width", "model.attn_qk_divisor", "model.attn_v_divisor",
               "data.builtin_size", "optim.n_dis", "optim.grad_accum", "train.steps", "train.batch_size",
               "train.sample_grid", "train.ada_interval", "train.ada_speed_images", "eval.num_samples",
               "eval.batch_size", "log.attention_queries")  # fmt: skip
RANGES: dict[str, tuple[float, float | None, bool, bool, str]] = {
    **{key: (0, None, False, False, note) for key, note in _COUNT_OR_0.items()},
    **dict.fromkeys(_AT_LEAST_1, (1, None, False, False, "")),
    "model.d_depth": (0, None, False, False, "or null: SAGAN's D, all of its blocks"),
    "model.g_bn_eps": (0, None, True, False, ""),
    "optim.lr_g": (0, None, True, False, ""),
    "optim.lr_d": (0, None, True, False, ""),
    "optim.eps": (0, None, True, False, ""),
    "optim.beta1": _UNIT,
    "optim.beta2": _UNIT,
    "optim.ema_decay": (0, 1, False, True, "0: no EMA"),
    "optim.lecam": (0, None, False, False, "0: off"),
    "optim.lecam_decay": _UNIT,
    "optim.attn_lr_mult": (0, None, True, False, "1: the blocks learn at lr_g / lr_d"),
    "train.seed": (0, 2**32 - 1, False, False, ""),
    "train.augment_p": (0, 1, False, False, ""),
    "train.ada_target": (0, 1, False, False, "0: off"),
}


def _range_text(low: float, high: float | None, low_open: bool, high_open: bool, note: str) -> str:
    """E.g. "at least 1", "in [0, 1)", "in (0, inf)", with the note in brackets."""
    if high is None and not low_open:
        text = f"at least {low}"
    else:
        text = f"in {'(' if low_open else '['}{low}, {'inf' if high is None else high}{')' if high_open or high is None else ']'}"
    return f"{text} ({note})" if note else text


def leaves(section: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every field of dataclass `section`, nested sections flattened."""
    out = []
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        nested = dataclasses.is_dataclass(value)
        out += leaves(value, f"{prefix}{f.name}.") if nested else [(f"{prefix}{f.name}", value)]
    return out


def _validate_ranges(cfg: Config) -> None:
    """Every float finite; every key of RANGES within its range: else one line naming the key and the range."""
    for key, value in leaves(cfg):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"config key '{key}' must be a finite number; got {value!r}")
        if key not in RANGES or value is None:
            continue
        low, high, low_open, high_open, note = RANGES[key]
        above = value > low if low_open else value >= low
        below = high is None or (value < high if high_open else value <= high)
        if not (above and below):
            rule = _range_text(low, high, low_open, high_open, note)
            raise ConfigError(f"config key '{key}' must be {rule}; got {value!r}")


def _validate_augmentation(cfg: Config) -> None:
    t = cfg.train
    unknown = [n for n in (p.strip() for p in t.augment.split(",")) if n and n not in AUGMENT_POLICIES]
    if unknown:
        raise ConfigError(
            f"config key 'train.augment' accepts a comma list of {', '.join(AUGMENT_POLICIES)} (empty: none); got {unknown[0]!r}"
        )
    if t.ada_target > 0 and not unknown and not t.augment.strip():
        raise ConfigError("config key 'train.ada_target' steers train.augment's probability; name its policies too")


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(data: dict) -> Config:
    """Rebuild a Config from `to_dict` output (e.g. a checkpoint's config.json); same checks as a YAML file."""
    cfg = Config()
    apply_delta(cfg, _upgrade(data))
    validate(cfg)
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def describe(cfg: Config | None = None, source: str = "") -> str:
    """Every key with its value and meaning, for `--help-config` and docs/configuration.md: the defaults, or
    `cfg`'s values (read from `source`), each key it changes marked with `*` and its default."""
    if cfg is None:
        return "\n".join(describe_fields(Config()))
    lines = describe_fields(cfg, defaults=Config())
    changed = sum(line.startswith("* ") for line in lines)
    return "\n".join([f"# the values of {source}; * marks the {changed} keys it changes from the defaults", *lines])
