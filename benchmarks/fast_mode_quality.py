"""Does a speed option change what training learns? Float32 against the fast modes on Fashion-MNIST.

    python benchmarks/fast_mode_quality.py run --seeds 0,1,2 --jobs 2 --out runs/fast_mode_quality
    python benchmarks/fast_mode_quality.py report runs/fast_mode_quality --report docs/fast_mode_quality.md

`run` trains `configs/ablation_fashion.yaml` (class-conditional Fashion-MNIST, attention at 16 in G and D,
300 steps) once per (mode, seed) through the real `train.py`, one thread per run, and scores each final EMA
generator with the Frechet classifier distance (FCD, the repository's Fashion-MNIST classifier features),
reusing the ablation's runner: runs and scores are cached per run directory. Modes:

- `fp32`: plain float32, eager, NCHW, explicit attention (the reference, the throughput benchmark's baseline);
- `fast`: fused attention + channels_last + torch.compile in float32 (the fastest variant on this CPU);
- `bf16`: fused attention + channels_last + bf16 autocast (the fast mode on GPUs; slower than float32 on a
  CPU without AMX).

`report` writes a mean +/- std table per mode and a verdict generated from the numbers: a mode trains as
well as float32 when its mean FCD lies within the seed spread of float32 (the ablation's rule:
|diff of means| <= 2 x pooled std).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.ablation import AblationError, Arm, compare, evaluate_one, mean_std, parse_seeds, run_dir_of, train_one
from gan.cli import fail_cleanly

ROOT = Path(__file__).resolve().parent.parent

CONFIG = "configs/ablation_fashion.yaml"
MODES = {  # name -> (what it is, overrides)
    "fp32": ("float32, eager, NCHW, explicit attention (reference)", ["model.attn_fused=false"]),
    "fast": ("fused attention + channels_last + torch.compile, float32", ["model.attn_fused=true", "train.channels_last=true", "train.compile=true"]),
    "bf16": ("fused attention + channels_last + bf16 autocast", ["model.attn_fused=true", "train.channels_last=true", "train.mixed_precision=bf16"]),
}


def parse_modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",")]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise AblationError(f"--modes: unknown mode '{unknown[0]}'; choose from {', '.join(MODES)}")
    if "fp32" not in modes:
        raise AblationError("--modes must include 'fp32', the reference every mode is compared with")
    return list(dict.fromkeys(modes))


PER_MODE_KEYS = ("model.attn_fused", "train.seed", "train.channels_last", "train.compile", "train.mixed_precision", "model.g_attention", "model.d_attention")


def run(modes: list[str], seeds: list[int], out: Path, jobs: int, num_samples: int, extra: list[str]) -> None:
    from gan.config import load_config

    bad = [o for o in extra if o.split("=")[0] in PER_MODE_KEYS]
    if bad:
        raise AblationError(f"{bad[0]} is set per mode / seed here; use --modes / --seeds instead")
    cfg = load_config(CONFIG, extra)
    arm_of = {m: Arm(m, tuple(cfg.model.g_attention), tuple(cfg.model.d_attention)) for m in modes}
    for m in modes:  # check every mode's overrides before anything runs
        load_config(CONFIG, [*arm_of[m].overrides(), *MODES[m][1], *extra])
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def one(pair: tuple[str, int]) -> None:
        mode, seed = pair
        rd = run_dir_of(out, arm_of[mode], seed)
        t = train_one(CONFIG, arm_of[mode], seed, rd, [*MODES[mode][1], *extra])
        e = evaluate_one(rd, num_samples)
        print(f"{mode} seed {seed}: trained {t:.0f} s, evaluated {e:.0f} s", flush=True)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, [(m, s) for s in seeds for m in modes]))
    manifest = {
        "config": CONFIG, "overrides": extra, "modes": modes, "seeds": seeds, "num_samples": num_samples, "jobs": jobs,
        "wall_seconds_this_call": time.perf_counter() - started,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
    }  # fmt: skip
    (out / "fast_mode_quality.json").write_text(json.dumps(manifest, indent=1))


def collect(out: Path) -> tuple[dict, dict[str, dict[int, dict]]]:
    manifest_path = out / "fast_mode_quality.json"
    if not manifest_path.is_file():
        raise AblationError(f"{out} holds no fast_mode_quality.json; run `fast_mode_quality.py run --out {out}` first")
    manifest = json.loads(manifest_path.read_text())
    runs: dict[str, dict[int, dict]] = {}
    for mode in manifest["modes"]:
        for seed in manifest["seeds"]:
            rd = out / mode / f"seed{seed}"
            ev, tr = rd / "ablation_eval.json", rd / "ablation_run.json"
            if ev.is_file() and tr.is_file():
                runs.setdefault(mode, {})[seed] = {**json.loads(ev.read_text()), "train_seconds": json.loads(tr.read_text())["train_seconds"]}
    if "fp32" not in runs:
        raise AblationError(f"{out} holds no finished fp32 run; run `fast_mode_quality.py run --out {out}` first")
    return manifest, runs


def report(out: Path, path: Path) -> str:
    import torch

    from benchmarks.common import machine_line
    from gan.config import load_config

    manifest, runs = collect(out)
    cfg = load_config(manifest["config"], manifest.get("overrides", []))
    ref = [r["fcd"] for r in runs["fp32"].values()]
    ref_mean, _ = mean_std(ref)
    ref_time = statistics.median(r["train_seconds"] for r in runs["fp32"].values())
    lines = [
        "# Fast modes vs float32: does training learn the same?",
        "",
        "Generated by `benchmarks/fast_mode_quality.py report` from the run directories; re-running rewrites it.",
        "",
        f"Machine: {machine_line().split('; torch')[0]}; torch {torch.__version__}; runs used 1 thread each, "
        f"{manifest['jobs']} at a time; {manifest['date'][:10]}.",
        "",
        f"Config `{manifest['config']}` (Fashion-MNIST {cfg.model.resolution}x{cfg.model.resolution}, {cfg.model.num_classes} classes, "
        f"width {cfg.model.g_width}, attention G {list(cfg.model.g_attention)} / D {list(cfg.model.d_attention)}, "
        f"{cfg.train.steps} steps, batch {cfg.train.batch_size}), seeds {', '.join(map(str, manifest['seeds']))}; FCD = Frechet distance in the "
        f"repository's Fashion-MNIST classifier features (not FID), {manifest['num_samples']} images from the final EMA generator."
        + (f" Overrides for every mode: `{' '.join(manifest['overrides'])}`." if manifest.get("overrides") else ""),
        "",
        "```bash",
        manifest["command"],
        f"python benchmarks/fast_mode_quality.py report {out} --report {path}",
        "```",
        "",
        "| mode | what | seeds | FCD mean +/- std | per seed | train s (median) | time vs fp32 |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, by_seed in runs.items():
        fcd = [r["fcd"] for r in by_seed.values()]
        m, s = mean_std(fcd)
        t = statistics.median(r["train_seconds"] for r in by_seed.values())
        per_seed = ", ".join(f"{v:.1f}" for v in fcd)
        lines.append(f"| `{mode}` | {MODES[mode][0]} | {len(fcd)} | {m:.1f} +/- {s:.1f} | {per_seed} | {t:.0f} | {t / ref_time:.2f}x |")
    lines += ["", "**Verdict** (generated): a mode trains as well as float32 when |mean FCD - mean FCD(fp32)| <= 2 x pooled std.", ""]
    for mode, by_seed in runs.items():
        if mode == "fp32":
            continue
        c = compare(mode, [r["fcd"] for r in by_seed.values()], ref, higher_is_better=False)
        if c.seeds < 2:
            lines.append(f"- `{mode}`: one seed only, no spread to compare with, so no verdict.")
            continue
        how = "better" if c.better else "worse"
        within = f"within the seed spread (|diff| {abs(c.diff):.1f} <= 2 x {c.pooled_std:.1f})" if not c.exceeds else \
            f"beyond the seed spread (|diff| {abs(c.diff):.1f} > 2 x {c.pooled_std:.1f})"
        outcome = "trains as well as float32" if not c.exceeds else ("trains better than float32" if c.better else "trains worse than float32")
        lines.append(f"- `{mode}`: FCD {how} by {c.diff:+.1f} ({100 * c.diff / ref_mean:+.0f}% of fp32's mean), {within}: "
                     f"it {outcome} here (Welch t = {c.welch_t:+.2f}).")
    lines += ["", "Training times above include torch.compile's compilation (a minute or more per `fast` run on this CPU)"
              " and come from runs sharing the 2 cores with each other: a side note, not a benchmark. Section 2 of"
              " docs/benchmarks.md has the controlled step timings.", ""]
    text = "\n".join(lines)
    path.write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="train and score every (mode, seed), reusing finished runs")
    p_run.add_argument("--modes", default="fp32,fast,bf16", help=f"comma-separated, from {', '.join(MODES)}")
    p_run.add_argument("--seeds", default="0,1,2")
    p_run.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    p_run.add_argument("--num-samples", type=int, default=2000, help="generated images per FCD")
    p_run.add_argument("--out", type=Path, default=Path("runs/fast_mode_quality"))
    p_run.add_argument("overrides", nargs="*", help="config overrides for every mode (e.g. train.steps=2 for a smoke test)")
    p_rep = sub.add_parser("report", help="write the Markdown report from a finished `run`")
    p_rep.add_argument("out", type=Path)
    p_rep.add_argument("--report", type=Path, default=Path("docs/fast_mode_quality.md"))
    args = parser.parse_args(argv)
    with fail_cleanly():
        if args.command == "run":
            if args.jobs < 1 or args.num_samples < 2:
                raise AblationError("--jobs must be >= 1 and --num-samples >= 2")
            run(parse_modes(args.modes), parse_seeds(args.seeds), args.out, args.jobs, args.num_samples, args.overrides)
        else:
            print(report(args.out, args.report))


if __name__ == "__main__":
    main()
