"""Sizing, diagnosing and reporting the local discriminator of issue 25 (docs/local_d.md), on one CPU thread.

    python -m experiments.local_d cost  --out docs/local_d/step_cost.json
    python -m experiments.local_d judge RUN_DIR/generator --out docs/local_d/judge.json
    python -m experiments.local_d ladder --runs OUT --summaries docs/local_d/ladder --figure docs/local_d/ladder.png

`cost`: CPU seconds per training step (`gan.step.train_step`, built as training builds it; median of 20 steps
after 2 warm-up steps) of the 64x64 pilot's models, G width 8 without attention, D cut to two blocks plus a
1x1 block (16-px field, per-position logits), D width 8 and 16, without a non-local block and with one at the
32x32 or the 16x16 stage. Real images are one fixed batch of the built-in data (the loader is not timed).

`judge`: can the local D learn to tell real images from a fixed set of a trained G's samples, without G
moving? A fresh D per variant (sum or patch output, spectral norm on or off, D learning rate) trains 150 hinge
steps (Adam 0 / 0.9, batch 16 + 16, 512 images of each kind) and is scored on 128 held-out images of each:
the per-image AUC of real against fake and the gap of the mean logits.

`ladder`: the GAN ladder's runs (`experiments.ablation run`, one OUT folder per D setting below --runs: for
example `blind16` and `full`) summarised into one small JSON per run under --summaries (setting, arm, seed,
overrides, D's receptive field, the scores, D's look share, the gate and loss history), then the table, the
verdicts and the figure (G's coherence and D's AUC against D's receptive field) from those summaries alone, so
an interrupted grid is finished later without rerunning what is done.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from experiments.gates import ENTROPY_PREFIX, gate_key

PILOT_D = ["model.resolution=64", "model.image_channels=1", "model.d_depth=1", "model.d_extra_blocks=1",
           "model.d_extra_kernel=1"]  # fmt: skip
JUDGES = [  # name, overrides, D learning rate
    ("patch-sn", ["model.d_output=patch"], 2e-4),
    ("sum-sn", ["model.d_output=sum"], 2e-4),
    ("patch-nosn", ["model.d_output=patch", "model.d_spectral_norm=false"], 2e-4),
    ("patch-sn-lr1e-3", ["model.d_output=patch"], 1e-3),
]


def step_cost() -> list[dict]:
    from accelerate import Accelerator

    from gan.config import load_config
    from gan.step import build_parts, train_step
    from gan.synthetic import CoherenceDataset

    common = [*PILOT_D, "model.g_width=8", "model.g_attention=[]", "train.batch_size=16", "model.d_output=patch"]
    data = CoherenceDataset(64, 64, 1)
    x = torch.stack([data[i][0] for i in range(16)])
    y = torch.tensor([data[i][1] for i in range(16)])
    acc = Accelerator(cpu=True)
    rows = []
    for width in (8, 16):
        for attn in ("[]", "[32]", "[16]"):
            overrides = [*common, f"model.d_width={width}", f"model.d_attention={attn}"]
            cfg = load_config("configs/ablation_coherence.yaml", overrides)
            parts = build_parts(cfg, acc)
            batches = iter(lambda: (x, y), None)
            times = []
            for step in range(1, 23):
                t0 = time.process_time()
                train_step(parts, cfg, batches, acc, step)
                times.append(time.process_time() - t0)
            timed = sorted(times[2:])
            row = {"d_width": width, "d_attention": attn, "median_cpu_s_per_step": timed[len(timed) // 2],
                   "summary": parts.D_raw.summary()}  # fmt: skip
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def judge(generator_dir: Path) -> list[dict]:
    from experiments.mismatch import rank_auc
    from gan.config import load_config
    from gan.losses import d_hinge
    from gan.models import Discriminator, load_generator
    from gan.synthetic import CoherenceDataset

    G, _ = load_generator(generator_dir)
    torch.manual_seed(0)
    with torch.no_grad():
        y = torch.randint(4, (640,))
        fakes = torch.cat([G(torch.randn(128, G.z_dim), y[i : i + 128]) for i in range(0, 640, 128)])
    data = CoherenceDataset(640, 64, 1, seed=7)
    real = torch.stack([data[i][0] for i in range(640)])
    ry = torch.tensor([data[i][1] for i in range(640)])
    te = slice(512, 640)
    base = [*PILOT_D, "model.num_classes=4", "model.d_width=16", "model.d_attention=[]"]
    rows = []
    for name, extra, lr in JUDGES:
        cfg = load_config(None, base + extra).model
        torch.manual_seed(1)
        D = Discriminator(cfg)
        opt = torch.optim.Adam(D.parameters(), lr=lr, betas=(0.0, 0.9))
        t0 = time.process_time()
        g = torch.Generator().manual_seed(2)
        for _ in range(150):
            i = torch.randint(512, (16,), generator=g)
            out = D(torch.cat([real[i], fakes[i]]), torch.cat([ry[i], y[i]]))
            loss = d_hinge(out[:16], out[16:])
            opt.zero_grad()
            loss.backward()
            opt.step()
        D.eval()
        with torch.no_grad():
            sr, sf = D(real[te], ry[te]), D(fakes[te], y[te])  # (B,): a patch D's mean over positions
        row = {"d": name, "lr_d": lr, "loss_last": round(loss.item(), 3), "auc_real_vs_fake": round(rank_auc(sr, sf), 3),
               "gap": round((sr.mean() - sf.mean()).item(), 3), "cpu_s": round(time.process_time() - t0, 1)}  # fmt: skip
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


LADDER_SCORES = ("coherence", "valid", "shape_iou", "colour_agreement", "fcd", "d_auc")
LADDER_LABELS = {"coherence": "coherence", "valid": "valid", "shape_iou": "shape IoU",
                 "colour_agreement": "grey agreement", "fcd": "FCD", "d_auc": "D's AUC"}  # fmt: skip
CHANCE = {"coherence": 0.067, "d_auc": 0.5}  # grayscale coherence of independently drawn pairs (docs/coherence.md)


def summarise_ladder(runs: Path, summaries: Path) -> list[dict[str, Any]]:
    """One JSON per evaluated run under `runs/<setting>/` (an `experiments.ablation run` OUT folder) written
    to `summaries/<setting>_<arm>_seed<k>.json` unless there already; returns every summary there."""
    from experiments import ablation, experiment

    summaries.mkdir(parents=True, exist_ok=True)
    for out in sorted(p for p in runs.glob("*") if (p / ablation.MANIFEST).is_file()):
        found = experiment.collect(out, ablation.MANIFEST, "none", "python -m experiments.ablation run")
        for arm, by_seed in found["runs"].items():
            for seed, result in by_seed.items():
                path = summaries / f"{out.name}_{arm}_seed{seed}.json"
                if path.exists():
                    continue
                run = json.loads(experiment.run_path(Path(result["run_dir"]), experiment.RUN_SUMMARY).read_text())
                path.write_text(json.dumps(run_summary(out.name, arm, seed, run, result), indent=1) + "\n")
    return [json.loads(p.read_text()) for p in sorted(summaries.glob("*_seed*.json"))]


def run_summary(setting: str, arm: str, seed: int, run: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """The ladder's summary of one run: `run` is the runner's record of its training (config, overrides),
    `result` its evaluation (the scores, D's look share, parameter counts, seconds; `run_dir` where it lies)."""
    from experiments.gates import gate_history
    from gan.config import load_config
    from gan.models import d_receptive_field
    from tools.report import machine_line

    rd = Path(result["run_dir"])
    cfg = load_config(run["config"], run["overrides"])
    log = [json.loads(line) for line in (rd / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {
        "setting": setting,
        "arm": arm,
        "seed": seed,
        "config": run["config"],
        "overrides": run["overrides"],
        "steps": cfg.train.steps,
        "d_receptive_field": d_receptive_field(cfg.model)[0],
        "d_depth": cfg.model.d_depth,
        "scores": {k: result[k] for k in (*LADDER_SCORES, "d_paired") if k in result},
        "d_look_share": result.get("d_look_share", {}),
        "params": result["params"],
        "gates": {k: v for k, v in gate_history(rd).items()},
        "losses": [{k: e[k] for k in ("step", "loss_d", "d_real", "d_fake", "loss_g")} for e in log if "loss_d" in e],
        "train_wall_s": result.get("train_seconds", 0.0),
        "eval_wall_s": result.get("eval_seconds", 0.0),
        "machine": machine_line(),
    }


def uniform_log_n(key: str) -> float:
    """log N of a D block's logged entropy key (attn_entropy/D.blocks.attn<side>; keys 2x2-pooled)."""
    from experiments.gates import uniform_entropy

    return uniform_entropy(int(key.rsplit("attn", 1)[1]), subsample=True)


def _by_cell(summaries: list[dict[str, Any]]) -> dict[tuple[int, str, str], list[dict[str, Any]]]:
    cells: dict[tuple[int, str, str], list[dict[str, Any]]] = {}
    for s in summaries:
        cells.setdefault((s["d_receptive_field"], s["setting"], s["arm"]), []).append(s)
    return dict(sorted(cells.items()))


def _ms(xs: list[float], digits: int = 3) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f} (1 seed)"
    return f"{statistics.mean(xs):.{digits}f} +/- {statistics.stdev(xs):.{digits}f}"


ARM_STYLES = {
    "none": ("C0", "o", "no attention in D"),
    "d32-zero": ("C1", "s", "one block in D (32x32, zero-init gate)"),
    "d32": ("C2", "^", "one block in D (32x32, SAGAN's gamma)"),
    "d32-lr10": ("C3", "v", "one block in D (32x32, gamma, 10x block rate)"),
}
ENTROPY_KEY = f"{ENTROPY_PREFIX}D"  # a D block's logged attention entropy
QUARTERS = (0.25, 0.5, 0.75, 1.0)  # of the run's steps: where the report reads the block's gate and entropy


def _arm_style(arm: str, i: int) -> tuple[str, str, str]:
    return ARM_STYLES.get(arm, (f"C{3 + i}", "D", f"D arm {arm}"))


def value_at(points: list[list[float]], step: float) -> float:
    """The last logged value at or before `step` (points: [[step, value], ...] in logging order)."""
    before = [v for s, v in points if s <= step]
    return before[-1] if before else float("nan")


def _d_gate(key: str) -> bool:
    """Whether `key` is a D block's logged gate (either spelling, experiments.gates.gate_key)."""
    return (gate_key(key) or ("", ""))[1].startswith("D")


def _fmt(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.3f}"


def block_trajectories(summaries: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, list[list[float]]]]:
    """Per (D setting, arm) with a block in D: the gate (|gamma| or norm(out)) and the attention entropy over
    log N at each quarter of the run (QUARTERS), one list per seed in seed order:
    {(setting, arm): {"gate": [[q1, q2, q3, q4], ...], "entropy": [...]}}."""
    out: dict[tuple[str, str], dict[str, list[list[float]]]] = {}
    for s in sorted(summaries, key=lambda s: (s["setting"], s["arm"], s["seed"])):
        gates = [(k, v) for k, v in s["gates"].items() if _d_gate(k)]
        entropy = [(k, v) for k, v in s["gates"].items() if k.startswith(ENTROPY_KEY)]
        if not gates:
            continue
        steps = [q * s["steps"] for q in QUARTERS]
        cell = out.setdefault((s["setting"], s["arm"]), {"gate": [], "entropy": []})
        cell["gate"].append([abs(value_at(gates[0][1], t)) for t in steps])
        if entropy:
            cell["entropy"].append([value_at(entropy[0][1], t) / uniform_log_n(entropy[0][0]) for t in steps])
    return out


def ladder_report(summaries: list[dict[str, Any]]) -> str:
    """Markdown: one row per (D setting, arm), mean +/- std over seeds and each seed; the final gates and where
    D's block looks; verdicts by the repository's rule (|diff| > 2 x pooled std): each attention arm against
    the no-attention arm of its setting, and each setting's no-attention arm against the most local one."""
    from experiments.experiment import compare, verdict

    cells = _by_cell(summaries)
    head = ["D setting", "D field (px)", "arm", "steps", "seeds", *(LADDER_LABELS[k] for k in LADDER_SCORES)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (field, setting, arm), rs in cells.items():
        cols = [_ms([r["scores"][k] for r in rs], 2 if k == "fcd" else 3) for k in LADDER_SCORES]
        lines.append(f"| `{setting}` | {field} | `{arm}` | {rs[0]['steps']} | {len(rs)} | " + " | ".join(cols) + " |")
    lines += ["", "Per seed (coherence, D's AUC; the block's final gate and attention entropy over log N; the "
              "left object's queries' share on the right object, uniform in brackets):", "",
              "| D setting | arm | seed | coherence | valid | D's AUC | FCD | D block: gate | entropy / log N | look share |",
              "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for (_, setting, arm), rs in cells.items():
        for r in sorted(rs, key=lambda r: r["seed"]):
            sc = r["scores"]
            gate = {k: v[-1][1] for k, v in r["gates"].items() if _d_gate(k)}
            entropy = {k: v[-1][1] / uniform_log_n(k) for k, v in r["gates"].items() if k.startswith(ENTROPY_KEY)}
            look = next(iter(r["d_look_share"].values()), None)
            lines.append(
                f"| `{setting}` | `{arm}` | {r['seed']} | {sc['coherence']:.3f} | {sc['valid']:.3f} | "
                f"{sc['d_auc']:.3f} | {sc['fcd']:.2f} | "
                + (", ".join(f"{gate_key(k)[0]} {v:.3f}" for k, v in gate.items()) or "-")
                + " | "
                + (", ".join(f"{v:.3f}" for v in entropy.values()) or "-")
                + " | "
                + (f"{look[0]:.3f} ({look[1]:.3f})" if look else "-")
                + " |"
            )
    trajectories = block_trajectories(summaries)
    if trajectories:
        quarters = ", ".join(f"{q:g}" for q in QUARTERS)
        lines += ["", f"D's block over training: the gate (|gamma| or norm(out)) and the attention entropy over log N "
                  f"at {quarters} of the run's steps (mean over seeds; [docs/local_d/ladder_gates.png]"
                  "(local_d/ladder_gates.png) draws every logged step):", "",
                  "| D setting | arm | seeds | gate | entropy / log N |", "|---|---|---|---|---|"]  # fmt: skip
        for (setting, arm), t in trajectories.items():
            cols = [" / ".join(_fmt(statistics.mean(x)) for x in zip(*t[k])) if t[k] else "-"
                    for k in ("gate", "entropy")]  # fmt: skip
            lines.append(f"| `{setting}` | `{arm}` | {len(t['gate'])} | {cols[0]} | {cols[1]} |")
    lines += ["", "Verdicts (rule: a difference counts when |diff| > 2 x pooled std; the arms of one seed share G's "
              "initialisation, data order and latents, so the seeds where the arm is higher are counted pairwise):",
              ""]  # fmt: skip
    most_local = min(cells)[0] if cells else None
    for (field, setting, arm), rs in cells.items():
        controls = []
        if arm != "none" and (field, setting, "none") in cells:
            controls.append(((field, setting, "none"), f"`{arm}` vs `none` in `{setting}`"))
        if arm == "none" and most_local is not None and field != most_local:
            local = [k for k in cells if k[0] == most_local and k[2] == "none"]
            controls += [(k, f"`{setting}` vs `{k[1]}` (no attention)") for k in local]
        if arm != "none":  # the gates against each other: every earlier attention arm of the same setting
            others = [k for k in cells if k[:2] == (field, setting) and k[2] != "none" and k[2] < arm]
            controls += [(k, f"`{arm}` vs `{k[2]}` in `{setting}` (between gates)") for k in others]
        for key, label in controls:
            for k in ("coherence", "d_auc", "fcd"):
                higher = k != "fcd"
                c = compare(arm, [r["scores"][k] for r in rs], [r["scores"][k] for r in cells[key]], higher)
                outcome = verdict(c)  # attention: helped / hurt / within; the field: beyond or within the spread
                if (arm == "none" or key[2] != "none") and c.seeds >= 2:
                    outcome = f"{'beyond' if c.exceeds else 'within'} the seed spread"
                up, n = _paired_signs(rs, cells[key], k)
                size = f" ({abs(c.diff) / c.pooled_std:.2f} pooled stds)" if c.pooled_std > 0 else ""
                lines.append(f"- {label}, {LADDER_LABELS[k]}: diff {c.diff:+.3f}, pooled std {c.pooled_std:.3f}"
                             f"{size}, higher in {up} of {n} paired seeds: {outcome}")  # fmt: skip
    first = summaries[0] if summaries else {}
    lines += ["", f"{len(summaries)} runs, {sum(s['train_wall_s'] + s['eval_wall_s'] for s in summaries) / 60:.0f} "
              f"wall-minutes of training and evaluation (one thread each); machine: {first.get('machine', '-')}"]  # fmt: skip
    return "\n".join(lines) + "\n"


def _paired_signs(runs: list[dict[str, Any]], control: list[dict[str, Any]], key: str) -> tuple[int, int]:
    """(seeds where the arm's `key` is above the control's, seeds both have): the arms share train.seed, so
    G's initialisation, the data order and the latents, and compare seed by seed."""
    theirs = {r["seed"]: r["scores"][key] for r in control}
    pairs = [(r["scores"][key], theirs[r["seed"]]) for r in runs if r["seed"] in theirs]
    return sum(a > b for a, b in pairs), len(pairs)


def ladder_figure(summaries: list[dict[str, Any]], path: Path) -> None:
    """Two panels against D's receptive field (px, log axis): G's coherence and D's AUC (coherent vs
    incoherent), with and without a block in D, mean +/- std over seeds and every seed as a dot; chance and
    real-data levels as lines."""
    from tools.report import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    cells = _by_cell(summaries)
    for ax, key, real in ((axes[0], "coherence", 1.0), (axes[1], "d_auc", None)):
        arms = sorted({a for _, _, a in cells}, key=lambda a: (a != "none", a))
        for i, arm in enumerate(arms):
            colour, marker, label = _arm_style(arm, i)
            pts = [(field, [r["scores"][key] for r in rs]) for (field, _, a), rs in cells.items() if a == arm]
            xs = [f * 1.06**i for f, _ in pts]  # nudge each attention arm sideways
            means = [statistics.mean(v) for _, v in pts]
            stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for _, v in pts]
            ax.errorbar(xs, means, yerr=stds, fmt=marker + "-", color=colour, capsize=4, label=label)
            for x, (_, v) in zip(xs, pts):
                ax.plot([x] * len(v), v, ".", color=colour, alpha=0.5)
        ax.axhline(CHANCE[key], color="grey", ls=":", label="chance")
        if real is not None:
            ax.axhline(real, color="k", ls="--", lw=0.8, label="real data")
        ax.set_xscale("log")
        fields = sorted({field for field, _, _ in cells})
        ax.set_xticks(fields, [str(f) for f in fields])
        ax.minorticks_off()
        ax.set_xlim(min(fields) / 1.4, max(fields) * 1.4)
        ax.set_xlabel("D's receptive field through its convolutions (px of 64)")
        ax.set_ylabel(
            {"coherence": "G's coherence (1,000 EMA samples)", "d_auc": "D's AUC, coherent vs incoherent"}[key]
        )
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle("The GAN where locality binds: 64x64 built-in data, D with coordinate channels", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def gates_figure(summaries: list[dict[str, Any]], path: Path) -> None:
    """Two panels against the training step, one line per run with a block in D (colour: the D setting; line
    style: the arm): the block's gate (|gamma| or norm(out)) and its attention entropy over log N (1 = uniform)."""
    from tools.report import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    settings = sorted({s["setting"] for s in summaries})
    arms = sorted({s["arm"] for s in summaries if s["arm"] != "none"})
    styles = ("-", "--", ":", "-.")
    for s in sorted(summaries, key=lambda s: (s["setting"], s["arm"], s["seed"])):
        for ax, wanted in ((axes[0], _d_gate), (axes[1], lambda k: k.startswith(ENTROPY_KEY))):
            for key, points in s["gates"].items():
                if not wanted(key):
                    continue
                scale = uniform_log_n(key) if key.startswith(ENTROPY_KEY) else 1.0
                ax.plot([p[0] for p in points], [abs(p[1]) / scale for p in points],
                        color=f"C{settings.index(s['setting'])}", ls=styles[arms.index(s["arm"]) % len(styles)],
                        lw=1, label=f"{s['setting']} / {s['arm']}" if s["seed"] == 0 else None)  # fmt: skip
    axes[0].set_ylabel("gate: |gamma| or norm(out)")
    axes[1].set_ylabel("attention entropy / log N")
    axes[1].axhline(1.0, color="grey", ls=":", lw=0.8)
    for ax in axes:
        ax.set_xlabel("training step")
    if axes[0].lines:
        axes[0].legend(fontsize=7)
    fig.suptitle("D's block over training (every seed)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("cost", help="CPU seconds per step of the pilot's models").add_argument("--out", required=True)
    p_judge = sub.add_parser("judge", help="train fresh local Ds on real images vs a G's fixed samples")
    p_judge.add_argument("generator", help="a generator export (RUN_DIR/generator)")
    p_judge.add_argument("--out", required=True)
    p_ladder = sub.add_parser("ladder", help="summaries, table and figure of the GAN ladder's runs")
    p_ladder.add_argument("--runs", default=None, help="a folder of `experiments.ablation run` OUT folders (optional)")
    p_ladder.add_argument("--summaries", default="docs/local_d/ladder")
    p_ladder.add_argument("--figure", default="docs/local_d/ladder.png")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.command == "ladder":
        summaries = Path(args.summaries)
        found = summarise_ladder(Path(args.runs), summaries) if args.runs else [
            json.loads(p.read_text()) for p in sorted(summaries.glob("*_seed*.json"))]  # fmt: skip
        print(ladder_report(found), end="")
        ladder_figure(found, Path(args.figure))
        gates_figure(found, Path(args.figure).with_name(Path(args.figure).stem + "_gates.png"))
        return 0
    rows = step_cost() if args.command == "cost" else judge(Path(args.generator))
    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
