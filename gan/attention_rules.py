"""The non-local block's option rules, written once and without torch.

`NonLocalBlock.__init__` (gan/attention.py) checks its arguments with `check_block_options`, and gan/config.py
checks a config's block options with the same function before any torch code runs, naming the config key of the
option at fault (`OptionError.option`). So a contradictory pair is refused in the same way by both, and in one
line.
"""

from __future__ import annotations

from dataclasses import dataclass

from gan.choices import GATES, LOGIT_SCALES, PAIRWISE, SOFTMAX_PAIRWISE

OWN_SCALE = ("l2", "cosine")  # their formula fixes the logits' scale (1/sqrt(d), the temperature)
COSINE_TEMPERATURE = 8.0  # the default t of pairwise="cosine" (R3GAN2's choice)
AXES = {1: "L", 2: "H, W", 3: "T, H, W"}  # the grid of each `dim`, for messages
SUBSAMPLE = {1: (2,), 2: (2, 2), 3: (1, 2, 2)}  # subsample=True's kernel: video pools space only


class OptionError(ValueError):
    """A block option that does not fit; `option` names the constructor argument at fault."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


@dataclass(frozen=True)
class Resolved:
    """What the rules settle besides yes / no: the cosine temperature (None for every other function), the
    key pooling kernel (None without subsampling) and, given the block's channels, the query/key and value
    widths (the Gaussian's queries and keys are the input's channels; else C/8 and C/2 by default)."""

    temperature: float | None
    pool: tuple[int, ...] | None
    qk_channels: int | None = None
    v_channels: int | None = None


def _one_of(option: str, value: object, names: tuple[str, ...]) -> None:
    if value not in names:
        raise OptionError(option, f"{option} must be one of {', '.join(names)}; got {value!r}")


def check_block_options(
    *,
    dim: int = 2,
    pairwise: str = "embedded_gaussian",
    gate: str = "gamma",
    logit_scale: str = "one",
    temperature: float | None = None,
    gamma_init: float = 0.0,
    subsample: bool = True,
    pool: tuple[int, ...] | None = None,
    heads: int = 1,
    position_max_side: int = 0,
    channels: int | None = None,
    qk_channels: int | None = None,
    v_channels: int | None = None,
) -> Resolved:
    """Every rule on the block's options; raise OptionError (one line) for the first that is broken. The
    widths are resolved and checked when `channels` is given (the block gives it; a config check, which does
    not know each block's width, leaves it out, and gan.models checks the widths as it builds the blocks)."""
    if dim not in AXES:
        raise OptionError("dim", f"dim must be 1, 2 or 3 (sequence, image, video); got {dim!r}")
    per_axis = isinstance(pool, (tuple, list)) and len(pool) == dim and min(pool) >= 1
    if pool is not None and not (subsample and per_axis):
        raise OptionError(
            "pool",
            f"pool must be {dim} positive kernel sizes (one per axis of {AXES[dim]}) with subsample=True; got {pool!r}",
        )
    _one_of("pairwise", pairwise, PAIRWISE)
    _one_of("gate", gate, GATES)
    _one_of("logit_scale", logit_scale, LOGIT_SCALES)
    if logit_scale != "one" and pairwise not in SOFTMAX_PAIRWISE:
        raise OptionError(
            "logit_scale",
            f"logit_scale={logit_scale!r} scales softmax logits; pairwise={pairwise!r} has no softmax "
            "(its C(x) = N already normalises): use logit_scale='one'",
        )
    if logit_scale != "one" and pairwise in OWN_SCALE:
        raise OptionError(
            "logit_scale",
            f"pairwise={pairwise!r} fixes its logits' scale (l2: 1/sqrt(d), cosine: the temperature); use logit_scale='one'",
        )
    if temperature is not None and not temperature > 0:
        raise OptionError(
            "temperature", f"temperature must be positive (cosine logits are t cos, in [-t, t]); got {temperature!r}"
        )
    if temperature is not None and pairwise != "cosine":
        raise OptionError("temperature", f"temperature sets pairwise='cosine'; pairwise={pairwise!r} takes none")
    if gamma_init != 0.0 and gate != "gamma":
        raise OptionError("gamma_init", f"gamma_init={gamma_init} needs gate='gamma'; gate={gate!r} has no gamma")
    if channels is not None:
        qk_channels = channels if pairwise == "gaussian" else (qk_channels or max(channels // 8, 1))
        v_channels = v_channels or max(channels // 2, 1)
    _check_heads(pairwise, heads, qk_channels, v_channels)
    if not (isinstance(position_max_side, int) and position_max_side >= 0):
        raise OptionError(
            "position_max_side",
            f"position_max_side must be 0 (no position term) or the largest map side it covers; got {position_max_side!r}",
        )
    if position_max_side and pairwise not in SOFTMAX_PAIRWISE:
        raise OptionError(
            "position_max_side",
            f"the position term adds to softmax logits; pairwise={pairwise!r} has none: use position_max_side=0 "
            f"or one of {', '.join(SOFTMAX_PAIRWISE)}",
        )
    if pairwise == "cosine":
        temperature = COSINE_TEMPERATURE if temperature is None else float(temperature)
    kernel = (tuple(int(k) for k in pool) if pool is not None else SUBSAMPLE[dim]) if subsample else None
    return Resolved(temperature, kernel, qk_channels, v_channels)


def _check_heads(pairwise: str, heads: int, qk_channels: int | None, v_channels: int | None) -> None:
    if not (isinstance(heads, int) and heads >= 1):
        raise OptionError("heads", f"heads must be a positive number of heads (1: SAGAN's single head); got {heads!r}")
    if heads > 1 and pairwise == "concatenation":
        raise OptionError(
            "heads", f"pairwise='concatenation' scores all of [theta; phi] with one w_f; use heads=1, not {heads}"
        )
    widths = [w for w in (qk_channels, v_channels) if w is not None]
    if any(w % heads for w in widths):
        raise OptionError(
            "heads",
            f"heads={heads} must divide the query/key channels ({qk_channels}) and the value channels "
            f"({v_channels}) of every block",
        )
