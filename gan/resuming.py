"""What a resume may change, and how a change is applied and recorded.

A resume may change how long and how fast the run goes and what it writes (`RESUMABLE`: steps, Adam's
learning rates, betas and epsilon, precision, logging, sampling, evaluation, checkpoint cadence, the data's
location and loaders). Everything else fixes what is being trained: the model (refused by
gan.train_state.model_changes, as before), the data and its order (dataset, split, size, subset, flips,
batch size, seed), the objective (loss, n_dis, gradient accumulation, augmentation, LeCam) and the state's
layout (EMA on or off, the attention learning-rate multiplier's parameter groups). Changing one of those is
refused in one line: the checkpoint's step count would no longer describe one run; `--init-from` starts a
new run from the weights instead.

A checkpoint's optimiser state carries the learning rates, betas and epsilon it was saved with;
`apply_optimiser` sets the config's over them after `load_state_dict`, so the run trains with what its
config.yaml records. There is no learning-rate scheduler in gan/, so nothing else holds a rate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gan.config import Config, ConfigError, leaves
from gan.files import append_line

RESUMABLE = frozenset(
    {
        *(f"train.{k}" for k in ("steps", "checkpoint_every", "keep_last", "sample_every", "sample_grid",
                                 "log_every", "mixed_precision", "channels_last", "compile", "progress", "threads")),
        *(f"optim.{k}" for k in ("lr_g", "lr_d", "beta1", "beta2", "eps", "ema_start")),
        *(f"data.{k}" for k in ("root", "download", "num_workers", "pin_memory", "persistent_workers")),
    }
)  # fmt: skip
FREE_SECTIONS = ("eval", "log")  # every key of these may change


def resumable(key: str) -> bool:
    return key in RESUMABLE or key.split(".")[0] in FREE_SECTIONS


def changes(saved: Config, new: Config) -> dict[str, list]:
    """{key: [the checkpoint's value, the new one]} for every key a resume changes; ConfigError, one line,
    when a change is not resumable (model keys are refused before this, in gan.train_loop)."""
    old, now = dict(leaves(saved)), dict(leaves(new))
    diff = {key: [old[key], now[key]] for key in now if old.get(key) != now[key] and not key.startswith("model.")}
    fixed = [key for key in diff if not resumable(key)]
    if fixed:
        shown = ", ".join(f"{k} ({json.dumps(diff[k][0])} -> {json.dumps(diff[k][1])})" for k in fixed)
        raise ConfigError(
            f"a resume cannot change {shown}: it fixes the data order, the objective or the state's layout "
            "(docs/training.md, Resume); resume with the checkpoint's value, or start a new run from its weights "
            "with --init-from"
        )
    return diff


def apply_optimiser(opt: Any, lr: float, betas: tuple[float, float], eps: float, attn_lr_mult: float) -> None:
    """The config's hyper-parameters over those a restored Adam state carried (gan.step.param_groups' layout:
    group 0 at `lr`, a second group, the attention blocks', at lr * attn_lr_mult)."""
    for i, group in enumerate(opt.param_groups):
        group.update(lr=lr * attn_lr_mult if i else lr, betas=betas, eps=eps)


def record(run_dir: Path, step: int, where: Path, diff: dict[str, list]) -> None:
    """One line of `run_dir/resumes.jsonl` per resume: the step, the checkpoint and every key it changed."""
    append_line(run_dir / "resumes.jsonl", json.dumps({"step": step, "checkpoint": str(where), "changes": diff}))


def describe(diff: dict[str, list]) -> str:
    """The line a resume prints about what it changed."""
    if not diff:
        return "the config is the checkpoint's"
    return "changed on resume: " + ", ".join(f"{k} {v[0]!r} -> {v[1]!r}" for k, v in diff.items())
