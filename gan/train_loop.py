"""The training loop: the only module that knows Accelerate.

One generator step (gan/step.py) = `n_dis` discriminator steps then one generator step, each over
`grad_accum` micro-batches, then the EMA update. Accelerate provides the processes, devices, DDP wrapping and
trackers; mixed precision is done in the step, with one GradScaler per network (fp16).
Every random draw of a step comes from a dedicated per-process generator whose state is checkpointed, and
the data order is a pure function of (seed, samples consumed), so resuming reproduces the uninterrupted run.
Scalars are read on the host only at log intervals.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from gan import attention_maps, divergence, grids, progress, registry, resuming, rundir
from gan import checkpoint as ckpt
from gan.classifier import IN_DOMAIN
from gan.config import Config, ConfigError, save_config, to_dict
from gan.data import build_dataset
from gan.data_order import build_loader
from gan.errors import UserError
from gan.files import disk_full
from gan.pretrained import export_generator
from gan.runtime import eval_mode, set_threads
from gan.step import build_parts, samples_per_step, train_step
from gan.tracking import RunLog, StopSignal, attention_stats, log_image
from gan.train_state import initialise, model_changes, record_init, restore, training_state


class DiskFullError(UserError):
    """A write failed on a full disk; nothing partial was left and the message says how to go on."""


# ----------------------------------------------------------------------------------------------
# Periodic work: logs, samples, attention maps, evaluation


def _due(step: int, every: int, last: int) -> bool:
    return (every > 0 and step % every == 0) or step == last


def _head(n: int, *tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    return [None if t is None else t[:n] for t in tensors]


# ----------------------------------------------------------------------------------------------
# The run


class Trainer:
    """One run: the step loop plus what happens between steps (logs, samples, maps, evaluation, checkpoints)."""

    def __init__(self, cfg: Config, run_dir: Path, accelerator: Accelerator, resume_command: str) -> None:
        self.cfg, self.run_dir, self.accelerator = cfg, run_dir, accelerator
        self.resume_command = resume_command
        self.ckpt_dir = run_dir / "checkpoints"
        self.dataset = build_dataset(cfg.data, cfg.model)
        self.parts = build_parts(cfg, accelerator)
        self.log = RunLog(run_dir, accelerator)
        self.step, self.consumed, self.best, self.last_ckpt = 0, 0, {}, -1
        sum_flags = (lambda t: accelerator.reduce(t, "sum")) if accelerator.num_processes > 1 else (lambda t: t)
        self.watch = divergence.FiniteWatch(accelerator.device, sum_flags)  # divergence: see guard()
        fixed = torch.Generator().manual_seed(cfg.train.seed + 12345)  # the same sample-grid noise in every run
        self.z_fixed = torch.randn(cfg.train.sample_grid, cfg.model.z_dim, generator=fixed).to(accelerator.device)
        n = cfg.model.num_classes
        self.y_fixed = (torch.arange(cfg.train.sample_grid) % n).to(accelerator.device) if n else None

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def sampler_model(self) -> torch.nn.Module:
        return self.parts.ema.module if self.parts.ema else self.parts.G_raw

    # -- state ------------------------------------------------------------------------------------

    def resume(self, resume: str | Path) -> None:
        """Load the state of checkpoint `resume` ('latest': the newest intact one in this run directory)."""
        where = resume_point(str(resume), self.ckpt_dir)[0] if str(resume) == "latest" else ckpt.resolve(resume)
        state, old_cfg, self.step = ckpt.load_checkpoint(where)
        changed = model_changes(self.cfg, old_cfg)
        if changed:
            raise ConfigError(
                f"the model config differs from the checkpoint's in {', '.join(changed)}; resume with the same model"
            )
        diff = resuming.changes(old_cfg, self.cfg)  # refuses what a resume may not change (gan/resuming.py)
        restore(self.parts, state, self.accelerator, where)
        o = self.cfg.optim  # the config's rates over the restored optimiser state's: config.yaml tells the truth
        resuming.apply_optimiser(self.parts.opt_g, o.lr_g, (o.beta1, o.beta2), o.eps, o.attn_lr_mult)
        resuming.apply_optimiser(self.parts.opt_d, o.lr_d, (o.beta1, o.beta2), o.eps, o.attn_lr_mult)
        if self.main:
            resuming.record(self.run_dir, self.step, where, diff)
        self.consumed, self.best, self.last_ckpt = state["consumed"], state["best"], self.step
        self.watch.checked = self.step
        self.accelerator.print(f"resumed from {where} at step {self.step}; {resuming.describe(diff)}")

    def checkpoint(self) -> Path | None:
        """Every process contributes its RNG state; the main one writes. Returns the path there."""
        state = training_state(self.parts, self.accelerator, self.consumed, self.best)
        self.guard(state)
        path = None
        if self.main:
            path = ckpt.save_checkpoint(
                self.ckpt_dir, state, step=self.step, config=self.cfg, keep_last=self.cfg.train.keep_last
            )
        self.accelerator.wait_for_everyone()
        self.last_ckpt = self.step
        return path

    def guard(self, state: Any = None) -> None:
        """Stop in one line if a loss went non-finite since the last check or `state`, about to be written,
        holds a non-finite tensor (gan/divergence.py): at log steps and before every write."""
        self.watch.check(self.step, state, lambda: divergence.advice(self.ckpt_dir, self.cfg, self.resume_command))

    # -- between steps ----------------------------------------------------------------------------

    def write_logs(self, running: list[dict[str, torch.Tensor]], seconds: float, steps: int, batch) -> dict[str, float]:
        """The only host synchronisation of the loop: averaged step scalars plus attention statistics."""
        values = {k: torch.stack([s[k] for s in running]).mean().item() for k in running[0]}
        values["images_per_s"] = steps * self.cfg.train.batch_size * self.accelerator.num_processes / seconds
        values["lr_g"] = self.parts.opt_g.param_groups[0]["lr"]
        values["lr_d"] = self.parts.opt_d.param_groups[0]["lr"]
        values.update(
            attention_stats(self.parts.G_raw, self.parts.D_raw, *_head(8, self.z_fixed, self.y_fixed, *batch))
        )
        self.log.write(self.step, values)
        return values

    def write_samples(self) -> None:

        with eval_mode(self.sampler_model()) as g:
            images = g(self.z_fixed, self.y_fixed).float().cpu()
        grids.save_image_grid(images, self.run_dir / "samples" / f"step_{self.step:08d}.png")
        log_image(self.accelerator, "samples", grids.make_grid_array(images), self.step)

    def write_attention_maps(self, batch) -> None:
        """The SAGAN-paper figure for G (fixed noise) and D (real images), saved as PNG and logged."""

        z, y, real, y_real = _head(4, self.z_fixed, self.y_fixed, *batch)
        figures = attention_maps.attention_figures(self.sampler_model(), self.parts.D_raw, z, y, real, y_real,
                                        queries=self.cfg.log.attention_queries, step=self.step)  # fmt: skip
        for net, figure in figures.items():
            attention_maps.save_attention_figure(figure, self.run_dir / "attention" / f"step_{self.step:08d}_{net}.png")
            log_image(self.accelerator, f"attention/{net}", figure, self.step)

    def evaluate_and_checkpoint(self) -> None:
        """Scores of the sampling generator (computed by the main process), then a checkpoint; a new best
        score also becomes `checkpoints/best`."""
        scores: dict[str, float] = {}
        self.guard()  # no scores of a diverged generator
        if self.main:
            from gan.metrics import evaluate  # torch-fidelity loads only for runs that evaluate

            with torch.random.fork_rng(devices=[]):
                scores = evaluate(self.sampler_model(), self.cfg, device=self.accelerator.device)
            self.log.write(self.step, scores)
        scores = gather_object([scores])[0]  # every process needs the same verdict on "best"
        improved, key = self.is_new_best(scores)
        if improved:
            self.best = {"metric": key, "value": scores[key], "step": self.step}
        path = self.checkpoint()
        if improved and path is not None:
            ckpt.save_best(self.ckpt_dir, path)

    def is_new_best(self, scores: dict[str, float]) -> tuple[bool, str | None]:
        """Whether `scores` beat the best so far on eval.best_metric (in its registered direction), and its key."""
        name = self.cfg.eval.best_metric
        if name not in self.cfg.eval.metrics:
            return False, None
        key = registry.result_key(name, self.cfg.eval.feature_extractor)
        if key not in scores:
            return False, key
        better = (lambda a, b: a > b) if registry.higher_is_better(name) else (lambda a, b: a < b)
        fresh = not self.best or self.best.get("metric") != key  # nothing yet, or a best by another metric
        return fresh or better(scores[key], self.best["value"]), key

    def stop_requested(self, stop: StopSignal) -> bool:
        """With several processes, all must agree to stop at the same step (one tiny all-reduce per step)."""
        if self.accelerator.num_processes == 1:
            return stop.requested
        flag = torch.tensor(float(stop.requested), device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        cfg, acc = self.cfg, self.accelerator
        batches = iter(
            build_loader(
                self.dataset,
                cfg.data,
                batch_size=cfg.train.batch_size,
                seed=cfg.train.seed,
                start=self.consumed,
                rank=acc.process_index,
                world_size=acc.num_processes,
            )
        )
        total, per_step = cfg.train.steps, samples_per_step(cfg, acc.num_processes)
        bar = progress.bar(total, initial=self.step, enabled=self.main and cfg.train.progress)  # lines if no tty
        running: list[dict[str, torch.Tensor]] = []
        last_time, last_step = time.perf_counter(), self.step
        with StopSignal() as stop:
            while self.step < total and not self.stop_requested(stop):
                stats, batch = train_step(self.parts, cfg, batches, acc, self.step + 1)
                self.step += 1
                self.consumed += per_step
                running.append(stats)
                self.watch.fold(stats)
                bar.update(1)
                if _due(self.step, cfg.train.log_every, total):
                    now = time.perf_counter()
                    values = self.write_logs(running, now - last_time, self.step - last_step, batch)
                    bar.set_postfix(
                        loss_d=f"{values['loss_d']:.3f}",
                        loss_g=f"{values['loss_g']:.3f}",
                        img_s=f"{values['images_per_s']:.1f}",
                    )
                    running, last_time, last_step = [], now, self.step
                    self.guard()
                if self.main and _due(self.step, cfg.train.sample_every, total):
                    self.write_samples()
                if self.main and _due(self.step, cfg.log.attention_every, total):
                    self.write_attention_maps(batch)
                if cfg.eval.every > 0 and _due(self.step, cfg.eval.every, total):
                    self.evaluate_and_checkpoint()
                elif cfg.train.checkpoint_every > 0 and self.step % cfg.train.checkpoint_every == 0:
                    self.checkpoint()
            if self.last_ckpt != self.step:
                self.checkpoint()
        bar.close()
        export = None
        interrupted = self.step < total
        self.guard(self.sampler_model().state_dict())
        if self.main:
            export = export_generator(self.run_dir / "generator", self.sampler_model(), cfg)
            acc.print("\n".join(self.interrupted_lines(export) if interrupted else self.summary_lines(export)))
        return {
            "step": self.step,
            "interrupted": interrupted,
            "run_dir": str(self.run_dir),
            "export": str(export) if export else None,
        }

    # -- what the user reads at the end -----------------------------------------------------------

    def interrupted_lines(self, export: Path) -> list[str]:
        saved = ckpt.latest_checkpoint(self.ckpt_dir)
        return [
            f"interrupted at step {self.step} of {self.cfg.train.steps}: checkpoint saved in {saved}, generator in {export}",
            f"resume with: {self.resume_command}",
        ]

    def summary_lines(self, export: Path) -> list[str]:
        """Where every output landed, and for the built-in dataset how coherent the samples are."""
        lines = rundir.outputs_summary(self.run_dir, self.step, self.cfg.train.keep_last, export)
        if self.cfg.data.dataset == "builtin" and self.cfg.train.summary_samples:
            from gan.synthetic import coherence_report

            lines.append(
                "  "
                + coherence_report(
                    self.sampler_model(),
                    self.cfg.model,
                    seed=self.cfg.train.seed + 54321,
                    n=self.cfg.train.summary_samples,
                    variant=self.cfg.data.builtin_variant,
                )
            )
        return lines


def resume_point(resume: str, ckpt_dir: Path) -> tuple[Path, list[str]]:
    """The checkpoint `--resume` names ('latest': the newest intact one in `ckpt_dir`), and one line per newer
    checkpoint skipped with the reason, then one naming the checkpoint used."""
    if resume != "latest":
        return ckpt.resolve(resume), []
    where, skipped = ckpt.newest_usable(ckpt_dir)
    if where is None:
        why = f" ({skipped[0]})" if skipped else ""
        raise ckpt.CheckpointError(
            f"--resume latest: no complete checkpoint in {ckpt_dir}{why}; start without --resume"
        )
    if skipped:
        skipped.append(f"--resume latest: using {where}, the newest intact checkpoint")
    return where, skipped


def train(
    cfg: Config,
    run_dir: str | Path,
    resume: str | None = None,
    *,
    overwrite: bool = False,
    resume_command: str | None = None,
    init_from: str | Path | None = None,
) -> dict[str, Any]:
    """Train per `cfg`, writing into `run_dir`; returns a summary (final step, whether interrupted, paths).

    The run holds the directory's lock throughout (a second run into it refuses); a fresh run refuses a
    directory that holds another run unless `overwrite` (which moves it aside); a resume from step k first
    moves the old run's later outputs aside (gan/rundir.py). A write that fails on a full disk ends in one
    line (UserError) naming the file, the last complete checkpoint and `resume_command`. `init_from` (a
    generator export, e.g. convert.py's, or a training checkpoint / run directory) starts a new run at step 0
    from its weights (`initialise`) with fresh optimisers; its model config must equal `cfg.model`."""
    run_dir = Path(run_dir)
    resume_command = resume_command or f"python train.py --run-dir {run_dir} --resume latest"
    networks = None
    if init_from is not None:  # read and checked before the run directory is touched
        if resume:
            raise ConfigError("--init-from starts a new run and --resume continues one; pass only one of them")
        init_cfg, networks, init_where = ckpt.read_networks(init_from)
        changed = model_changes(cfg, init_cfg)
        if changed:
            fix = " ".join(f"model.{k}={json.dumps(v, separators=(',', ':'))}" for k, v in changed.items())
            raise ConfigError(
                f"--init-from {init_from}: the model config differs from its config in {', '.join(changed)}; "
                f"use its architecture: {fix}"
            )
    set_threads(cfg.train.threads)
    log_with = None if cfg.log.backend == "none" else cfg.log.backend
    # cpu=True without CUDA: torchrun / `accelerate launch --multi_gpu` on CPUs then forms a gloo group.
    accelerator = Accelerator(log_with=log_with, project_dir=str(run_dir), cpu=not torch.cuda.is_available())
    held, refusal = None, None
    if accelerator.is_main_process:
        try:
            held = rundir.lock(run_dir)
        except rundir.RunDirError as exc:
            refusal = str(exc)
    refusal = gather_object([refusal])[0]  # the main process's verdict: every process stops, or none
    if refusal is not None:
        raise rundir.RunDirError(refusal)
    try:
        init = (networks, init_where) if networks is not None else None
        return _train_locked(cfg, run_dir, accelerator, resume, overwrite, resume_command, log_with, init)
    except OSError as exc:
        if not disk_full(exc):
            raise
        raise DiskFullError(rundir.disk_full_message(exc, run_dir, resume_command)) from None
    finally:
        if held is not None:
            held.release()


def _train_locked(
    cfg: Config,
    run_dir: Path,
    accelerator: Accelerator,
    resume: str | None,
    overwrite: bool,
    resume_command: str,
    log_with: str | None,
    init: tuple[dict, Path] | None = None,
) -> dict[str, Any]:
    """`train`'s body, under the run directory's lock; `init`: (weights, where read) of `--init-from`."""
    where, notes = resume_point(resume, run_dir / "checkpoints") if resume else (None, [])
    if where is None and not overwrite:
        rundir.refuse_if_taken(run_dir)  # every process: all of them stop, not only the main one
    if cfg.eval.every > 0 and cfg.eval.feature_extractor == "fashion_classifier" and cfg.data.dataset not in IN_DOMAIN:
        notes.append(
            f"note: eval.feature_extractor=fashion_classifier on {cfg.data.dataset!r} data is out of domain: "
            "its scores are a generic distribution distance, not image quality (docs/metrics.md)"
        )
    if accelerator.is_main_process:
        step = ckpt.checkpoint_step(where) if where is not None else None
        notes += rundir.discard_after(run_dir, step) if step is not None else rundir.start_fresh(run_dir, overwrite)
        for line in notes:
            accelerator.print(line)
    accelerator.wait_for_everyone()
    trainer = Trainer(cfg, run_dir, accelerator, resume_command)
    accelerator.print(trainer.parts.D_raw.summary())  # its receptive field and size (model.d_depth, ...)
    if where is not None:
        trainer.resume(where)
    elif init is not None:
        initialise(trainer.parts, *init, accelerator.print)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        if init is not None and where is None:
            record_init(run_dir, *init)
    if log_with:
        init = {"wandb": {"dir": str(run_dir), "name": cfg.log.run_name or run_dir.name, "tags": cfg.log.tags}}
        if cfg.log.entity:
            init["wandb"]["entity"] = cfg.log.entity
        accelerator.init_trackers(cfg.log.project, config=_flat(to_dict(cfg)), init_kwargs=init)
    try:
        return trainer.run()
    finally:
        accelerator.end_training()


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v) if isinstance(v, list) else v
    return out
