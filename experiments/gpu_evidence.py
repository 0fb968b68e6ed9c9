"""Evidence from one GPU in one command, within a time budget (default 8 minutes):

    python -m experiments.gpu_evidence --out runs/gpu_evidence            # on the GPU (cuda when present)
    python -m experiments.gpu_evidence --tiny --out /tmp/gpu_evidence     # the CPU smoke test (~100 CPU s)

Stages, in this order, each one or two commands of the existing benchmark scripts run as subprocesses
(nothing here measures anything itself):

1. `ablation`: experiments/ablation.py on the 64x64 coherence GAN, arms `none` (no attention), `gd32`
   (a non-local block at the 32x32 stage of G and of D) and `gd32-lr10` (the same blocks learning 10x faster,
   the lever that opened the long-range probe's block), 3 seeds, all nine runs at once on the one device
   (`--jobs 9`), then its report (coherence, FCD, D's AUC on incoherent images, final gates and entropy)
   into OUT/ablation/report.md.
   This script adds the gates over training (OUT/summary.md), read from each run's metrics.jsonl.
2. `throughput`: benchmarks/train_throughput.py, the eager rows (fp32, fused attention, channels_last,
   bf16 with and without channels_last) of the CIFAR-10 model's training step on the device.
3. `attention`: benchmarks/attention_block.py, time and peak memory of one block at 32x32, 64x64 and
   128x128, keys pooled and not (16x16 left out: each cell costs three fresh processes, ~3 s each).
4. `throughput_compile`: train_throughput.py's torch.compile row against the fp32 baseline (last: a cold
   compile is the least predictable cost).

The budget: a stage may run for its share of the time left (shares in SHARES, renormalised over the stages
not yet run, so time an early stage leaves unused goes to the later ones); at that limit its process group
gets SIGTERM (train_throughput.py then prints the rounds it finished), then SIGKILL GRACE_S later (kept
back from the budget, so the last stage's grace also ends within it). A stage whose limit
would fall under MIN_STAGE_SECONDS is not started, nor is any stage after it: the summary names them in one
line. Everything goes under --out: the run directories, each stage's output and log, and summary.md
(device, torch version, date, the exact commands, every table).

How the ablation's default size was estimated (docs/benchmarks.md, "Evidence from a GPU"): one training
step of the 64x64 model at width 16, batch 32, attention at 32 in G and D, is 145 GFLOP (144 without
attention; torch.utils.flop_counter, counted on the CPU). Nine runs sharing the GPU at an assumed 25 TFLOP/s
in all (a few per cent of an H200's dense TF32/bf16 peak: the convolutions of a width-16 model are small and
the step is partly bound by kernel launches) take 9 x 145 GFLOP / 25 TFLOP/s = 52 ms per step each, so 2,500
steps take about 130 s of the ablation's ~305 s share (260 s if the assumption is 2x too kind).
The rest: start-up (~15 s), the six evaluations, which run on the CPU, one thread each, in parallel
(experiment.evaluate_run: G forward is 0.86 GFLOP per image, 11.5 CPU s per 250 images on the development
machine's loaded core, so 1,000 samples for each score plus the grid cost ~40-100 s), and the report (~10 s).
The assumption is the weak part: the summary prints the images/s each run measured, and --steps adjusts.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from experiments import gates
from experiments.experiment import command_line
from gan.cli import fail_cleanly  # (light: no torch)
from gan.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 480.0  # the 8 minutes
MIN_STAGE_SECONDS = 5.0  # a stage that would get less than this is not started
GRACE_S = 10.0  # between SIGTERM and SIGKILL at a stage's limit
GPU_STEPS = 2500  # see the module docstring for the estimate
# experiments/ablation.py's names: no attention; attention at the 32x32 stage of G and D; the same, 10x block rate
ARMS = "none,gd32,gd32-lr10"
SHARES = {"ablation": 0.65, "throughput": 0.08, "attention": 0.15, "throughput_compile": 0.12}  # of 480 s:
# 305, 38, 70 and 56 s of the 470 s left after the grace, when every stage takes its whole share


@dataclasses.dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    stdout: str  # file under --out receiving the command's standard output (its log gets standard error)


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    commands: tuple[Command, ...]  # run in turn, within the stage's one time limit
    share: float  # of the budget (renormalised over the stages not yet run)
    output: str  # the stage's product under --out


@dataclasses.dataclass
class Outcome:
    name: str
    status: str  # "done", "failed (...)", "stopped at its time limit", "skipped"
    seconds: float
    limit: float


def python_m(module: str, *args: object) -> tuple[str, ...]:
    return (sys.executable, "-m", module, *map(str, args))


def build_stages(out: Path, device: str, tiny: bool, steps: int) -> list[Stage]:
    """The stages for a GPU (or a CPU with the same sizes) or, with `tiny`, the CPU smoke test's sizes."""
    runs, report = out / "ablation" / "runs", out / "ablation" / "report.md"
    # Both settings: the coherence config at 64x64, gamma logged every 1/20 of the run, the FCD reference
    # statistics cached under --out, one loader worker per run (the built-in dataset renders each image on
    # the fly, ~0.5 ms each: a worker keeps that off the GPU's critical path).
    shared = ["model.resolution=64", f"train.log_every={max(1, steps // 20)}", f"train.steps={steps}",
              f"eval.cache_dir={out / 'cache'}", "data.num_workers=1", "data.persistent_workers=true"]  # fmt: skip
    if tiny:  # width 4, batch 4, 64 images, 16 samples: seconds per run on one CPU core; three jobs (one job
        seeds, jobs, samples = "0", 3, 16  # trains them in turn and ran past the stage's 347 s on a loaded machine)
        ablation = [*shared, "model.g_width=4", "model.d_width=4", "train.batch_size=4", "data.builtin_size=64"]
        variants, rounds = ["baseline", "channels_last", "bf16"], ["--repeats", 2, "--warmup", 1]
        model = ["model.g_width=8", "model.d_width=8", "train.batch_size=4"]  # the CIFAR-10 model, narrowed
        attention = ["--sizes", 8, "--subsample", "yes", "--repeats", 1]
    else:
        seeds, jobs, samples = "0,1,2", 9, 1000  # 1,000 samples (not the ablation's usual 2,000): see above
        ablation = [*shared, "model.g_width=16", "model.d_width=16"]
        variants, rounds = ["baseline", "fused", "channels_last", "bf16", "bf16_nchw"], ["--repeats", 20, "--warmup", 3]
        model = []
        attention = ["--sizes", 32, 64, 128, "--repeats", 5, "--max-gib", 100]  # 128x128 unpooled: 32 GiB
    ablation_run = python_m("experiments.ablation", "run", "--config", "configs/ablation_coherence.yaml",
                            "--arms", ARMS, "--seeds", seeds, "--jobs", jobs, "--out", runs,
                            "--num-samples", samples, *ablation)  # fmt: skip
    ablation_report = python_m("experiments.ablation", "report", runs, "--report", report,
                               "--figures", out / "ablation" / "figures")  # fmt: skip
    # overrides before --variants, which takes every word after it
    throughput = python_m("benchmarks.train_throughput", "--device", device, *rounds, *model, "--variants", *variants)
    stages = [
        Stage(
            "ablation",
            (Command(ablation_run, "logs/ablation_run.out"), Command(ablation_report, "logs/ablation_report.out")),
            SHARES["ablation"],
            "ablation/report.md",
        ),
        Stage("throughput", (Command(throughput, "throughput.md"),), SHARES["throughput"], "throughput.md"),
        Stage(
            "attention",
            (Command(python_m("benchmarks.attention_block", "--device", device, *attention), "attention.md"),),
            SHARES["attention"],
            "attention.md",
        ),
    ]
    if not tiny:  # a cold torch.compile costs minutes of CPU time: not part of the smoke test
        compiled = python_m("benchmarks.train_throughput", "--device", device, *rounds, *model,
                            "--variants", "baseline", "compile")  # fmt: skip
        stages.append(
            Stage(
                "throughput_compile",
                (Command(compiled, "throughput_compile.md"),),
                SHARES["throughput_compile"],
                "throughput_compile.md",
            )
        )
    return stages


# ----------------------------------------------------------------------------------------------
# Running within the budget


def run_command(command: Command, out: Path, log: Path, limit: float, env: dict[str, str]) -> str:
    """Run one command from the repository root for at most `limit` seconds; "done" or what went wrong."""
    stdout = out / command.stdout
    stdout.parent.mkdir(parents=True, exist_ok=True)
    with open(stdout, "w") as fh, open(log, "a") as err:
        err.write(f"$ {shlex.join(command.argv)}\n")
        err.flush()
        proc = subprocess.Popen(command.argv, cwd=ROOT, env=env, stdout=fh, stderr=err, start_new_session=True)
        try:
            code = proc.wait(timeout=max(limit, 0.0))
        except subprocess.TimeoutExpired:  # the whole group: the ablation's train.py children too
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            return "stopped at its time limit"
    return "done" if code == 0 else f"failed (exit {code}; see {log.relative_to(out)})"


def run_stages(stages: Sequence[Stage], budget: float, out: Path, env: dict[str, str] | None = None) -> list[Outcome]:
    """Run the stages in order within `budget` seconds (see the module docstring); one Outcome per stage."""
    env = dict(os.environ if env is None else env)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    start, outcomes, stopped = time.monotonic(), [], False
    for i, stage in enumerate(stages):
        left = budget - GRACE_S - (time.monotonic() - start)  # the last stage's grace still ends in the budget
        limit = left * stage.share / sum(s.share for s in stages[i:])
        if stopped or limit < MIN_STAGE_SECONDS:
            stopped = True
            outcomes.append(Outcome(stage.name, "skipped", 0.0, max(limit, 0.0)))
            continue
        t0, status = time.monotonic(), "done"
        print(f"[{stage.name}] up to {limit:.0f} s", flush=True)
        for command in stage.commands:
            status = run_command(command, out, out / "logs" / f"{stage.name}.log", limit - (time.monotonic() - t0), env)
            if status != "done":
                break
        outcomes.append(Outcome(stage.name, status, time.monotonic() - t0, limit))
        print(f"[{stage.name}] {status} in {outcomes[-1].seconds:.0f} s", flush=True)
    return outcomes


def skipped_line(outcomes: Sequence[Outcome], budget: float) -> str:
    """The one line naming the stages the budget left out ('' when none was)."""
    skipped = [o.name for o in outcomes if o.status == "skipped"]
    return f"Skipped (the {budget:g} s budget was spent): {', '.join(skipped)}." if skipped else ""


# ----------------------------------------------------------------------------------------------
# The summary


def images_per_second(runs: Path) -> list[str]:
    """One line per run: the median training images/s over its logged steps (what sizes the next --steps)."""
    lines = []
    for path in sorted(runs.glob("*/seed*/metrics.jsonl")):
        rates = [json.loads(x)["images_per_s"] for x in path.read_text().splitlines() if '"images_per_s"' in x]
        if rates:
            run = f"`{path.parent.parent.name}` {path.parent.name}"
            lines.append(f"- {run}: {statistics.median(rates):,.0f} images/s (median of {len(rates)} log steps)")
    return lines


def shown_command(command: Command) -> str:
    """The command as a person would type it from the repository root (`python`, not the venv's path)."""
    argv = ["python" if a == sys.executable else a for a in command.argv]
    return shlex.join(argv) + f" > {command.stdout}"


def device_description(device: str) -> str:
    from tools.report import device_line, machine_line

    return f"{device_line(device)}; host {machine_line()}"


def write_summary(out: Path, stages: Sequence[Stage], outcomes: Sequence[Outcome], budget: float, device: str,
                  command: str, started: str) -> Path:  # fmt: skip
    import torch

    text = [f"# Evidence from one device: {device_description(device).split(';')[0]}", "",
            f"- Device: {device_description(device)}", f"- torch {torch.__version__}",
            f"- Date (UTC): {started}", f"- Command: `{command}`",
            f"- Budget: {budget:g} s; used {sum(o.seconds for o in outcomes):.0f} s", "",
            "| stage | status | seconds | limit s | output |", "|---|---|---|---|---|"]  # fmt: skip
    for stage, o in zip(stages, outcomes):
        text.append(f"| {o.name} | {o.status} | {o.seconds:.0f} | {o.limit:.0f} | `{stage.output}` |")
    text += ["", skipped_line(outcomes, budget) or "Every stage was started.", "", "Each stage's commands:", "",
             "```bash", *(shown_command(c) for s in stages for c in s.commands), "```", ""]  # fmt: skip
    runs = out / "ablation" / "runs"
    if runs.is_dir():
        text += ["## Ablation: the gates over training", "", "Mean +/- std over seeds (number of seeds):", "",
                 *gates.over_training_table(runs), "",
                 "Training speed of each run (all runs shared the device):", "", *images_per_second(runs), ""]  # fmt: skip
    for stage in stages:
        path = out / stage.output
        if stage.output.endswith(".md") and path.is_file() and path.stat().st_size:
            body = path.read_text().strip()
            text += [f"## {stage.name}: `{stage.output}`", "", body if stage.name != "ablation" else
                     f"(the ablation's report: {len(body.splitlines())} lines, figures beside it)", ""]  # fmt: skip
    path = out / "summary.md"
    path.write_text("\n".join(text).rstrip() + "\n")
    return path


# ----------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for everything this writes")
    parser.add_argument("--device", default="auto", help="auto (cuda when present, else cpu), cpu or cuda")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for all stages together")
    parser.add_argument("--steps", type=int, help=f"training steps per ablation run (default {GPU_STEPS}; --tiny: 4)")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke-test sizes (about 100 CPU seconds)")
    args = parser.parse_args(argv)
    with fail_cleanly():
        from gan.runtime import resolve_device

        device = str(resolve_device(args.device))
        steps = args.steps if args.steps is not None else (4 if args.tiny else GPU_STEPS)
        if steps < 1 or args.budget < 0:
            raise UserError("--steps must be at least 1 and --budget at least 0")
        started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        args.out.mkdir(parents=True, exist_ok=True)
        out = args.out.resolve()
        stages = build_stages(out, device, args.tiny, steps)
        env = dict(os.environ)
        if device == "cpu":  # train.py takes CUDA whenever it sees it
            env["CUDA_VISIBLE_DEVICES"] = ""
        outcomes = run_stages(stages, args.budget, out, env)
        command = command_line("experiments.gpu_evidence")
        summary = write_summary(out, stages, outcomes, args.budget, device, command, started)
        print(" ".join([f"wrote {summary}", skipped_line(outcomes, args.budget)]).strip())
        return 0 if all(o.status == "done" for o in outcomes) else 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
