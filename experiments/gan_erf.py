"""Effective receptive fields (Luo et al. 2016) of trained GANs: D over real images, G over its first stage.

    python -m experiments.gan_erf RUN_DIR [RUN_DIR ...] --out DIR --report FILE.md

For each run directory, the newest intact checkpoint's EMA generator and discriminator are loaded with
gan.checkpoint's loaders (safetensors + JSON, nothing executed) in eval mode (BatchNorm on its running
statistics, spectral norm on its stored vectors: no power iteration), and measured with experiments/erf.py:

- D: `d_effective_rf`, the ERF of each middle position's term of D's logit, (w + embed(y)) . ReLU(h_p) on
  D's last map (the terms sum to the logit), over `--num-images` real images of the run's own dataset
  config; distances in input pixels. Summaries: r90 and the mass beyond N px, N = half the mean distance
  between the centres of the coherence dataset's two objects at the run's resolution (`object_half_distance`:
  9.75 px at 32x32, 20.25 px at 64x64), the reach a middle unit needs to see both objects' centres.
- G: `g_effective_rf`, |d pixel / d h_q| for the middle output pixels over the 4x4 first-stage map h,
  over as many latents (and uniform labels when conditional); distances in output pixels, one first-stage
  cell (R / 4 px) per step. Summaries: the share of the mass outside the cell holding the pixel, and outside
  the 2x2 middle cells (the image's middle is the corner of four cells, so the first share is about 3/4
  even for a purely local G; the second is about 0 for one).

Both are measured as trained and again with every non-local block switched off (`attention_off`: gamma = 0,
the block is then exactly the identity), so the attention's own contribution to the field is the difference.
Writes FILE.md (the table, the command, the machine, the date), DIR/gan_erf.png (cumulative mass against
distance, per run) and DIR/<k>_<run name>.json (the full mass profiles).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

from experiments.erf import EffectiveRF, attention_off, d_effective_rf, g_effective_rf, gates
from gan.cli import fail_cleanly
from gan.data import build_dataset
from gan.models import load_discriminator, load_generator
from gan.synthetic import MAX_EDGE_OFFSET, SIZE_RANGE
from tools.report import machine_line, pyplot, table


def object_half_distance(resolution: int) -> float:
    """Half the mean distance (px) between the centres of a CoherenceDataset image's two objects.

    The left object spans columns [x0, x0 + s), its mirror image [R - x0 - s, R - x0), so the centres are
    R - 2 x0 - s apart; x0 and s are uniform integers over the dataset's ranges (CoherenceDataset._draw_object).
    """
    sizes = range(round(SIZE_RANGE[0] * resolution), round(SIZE_RANGE[1] * resolution) + 1)
    edges = range(1, max(1, round(MAX_EDGE_OFFSET * resolution)) + 1)
    return (resolution - 2 * statistics.mean(edges) - statistics.mean(sizes)) / 2


def outside_middle_cells(grad_map: Tensor) -> float:
    """Share of a (4, 4) first-stage gradient map outside its central 2x2 cells (those holding the middle pixels)."""
    return float(1 - grad_map[1:3, 1:3].sum() / grad_map.sum())


def _profile(erf: EffectiveRF, beyond: float, first_stage: bool) -> dict:
    return {
        "r90": erf.r90,
        "mass_beyond": erf.mass_beyond(beyond),
        "outside_middle_cells": outside_middle_cells(erf.grad_map) if first_stage else None,
        "distances": erf.distances.tolist(),
        "mass": erf.mass.tolist(),
    }


def measure(run_dir: Path, num_images: int, seed: int) -> dict:
    """Both ERFs of one run, as trained and with attention off (the latter only where there is attention)."""
    start = time.process_time()
    generator, config = load_generator(run_dir, use_ema=True, say=print)
    discriminator, _, step = load_discriminator(run_dir)
    m = config.model
    draws = torch.Generator().manual_seed(seed)
    dataset = build_dataset(config.data, m)
    picked = torch.randperm(len(dataset), generator=draws)[:num_images].tolist()
    images = torch.stack([dataset[i][0] for i in picked])  # (B, C, R, R)
    real_labels = torch.tensor([dataset[i][1] for i in picked]) if m.num_classes else None
    z = torch.randn(len(picked), m.z_dim, generator=draws)
    fake_labels = torch.randint(m.num_classes, (len(picked),), generator=draws) if m.num_classes else None

    beyond = object_half_distance(m.resolution)
    result = {
        "run": str(run_dir),
        "step": step,
        "resolution": m.resolution,
        "dataset": config.data.dataset,
        "num_images": len(picked),
        "g_attention": list(m.g_attention),
        "d_attention": list(m.d_attention),
        "gate": m.attn_gate,
        "gates": {
            **{f"G.{k}": v for k, v in gates(generator).items()},
            **{f"D.{k}": v for k, v in gates(discriminator).items()},
        },
        "beyond_px": beyond,
        "cell_px": m.resolution // 4,
    }
    # D: mass beyond N px; G: mass beyond distance 0, i.e. outside the pixel's own first-stage cell
    for side, model, measure_one, limit in (
        ("D", discriminator, lambda: d_effective_rf(discriminator, images, real_labels), beyond),
        ("G", generator, lambda: g_effective_rf(generator, z, fake_labels), 0.0),
    ):
        result[side] = _profile(measure_one(), limit, side == "G")
        if gates(model):
            with attention_off(model):
                result[f"{side}_attention_off"] = _profile(measure_one(), limit, side == "G")
    result["cpu_s"] = time.process_time() - start
    return result


def _sides(sides: list[int]) -> str:
    return ", ".join(map(str, sides)) if sides else "none"


def _off(r: dict, side: str, key: str, fmt: str) -> str:
    off = r.get(f"{side}_attention_off")
    return format(off[key], fmt) if off else "-"


def _cells(profile: dict, cell: int) -> str:
    """Mass at 0, 1, 2, ... cells from the pixel's own cell."""
    by_cell = {round(d / cell): m for d, m in zip(profile["distances"], profile["mass"])}
    return " / ".join(f"{by_cell.get(k, 0.0):.3f}" for k in range(max(by_cell) + 1))


def report_table(results: list[dict]) -> str:
    """One Markdown row per run; "off": the same model with every non-local block switched off."""
    label = {"gamma": "gamma", "zero_init": "norm(out)"}
    rows = [
        [
            f"`{r['run']}`",
            r["step"],
            _sides(r["g_attention"]),
            _sides(r["d_attention"]),
            "; ".join(f"{k.replace('blocks.', '')} {label[r['gate']]} {v:+.4f}" for k, v in r["gates"].items()) or "-",
            f"{r['D']['r90']:g}",
            _off(r, "D", "r90", "g"),
            f"{r['beyond_px']:g}",
            f"{r['D']['mass_beyond']:.4f}",
            _off(r, "D", "mass_beyond", ".4f"),
            f"{r['G']['mass_beyond']:.4f}",
            _off(r, "G", "mass_beyond", ".4f"),
            f"{r['G']['outside_middle_cells']:.4f}",
            _off(r, "G", "outside_middle_cells", ".4f"),
            _cells(r["G"], r["cell_px"]),
            f"{r['cpu_s']:.1f}",
        ]
        for r in results
    ]
    headers = [
        "run",
        "step",
        "G attention",
        "D attention",
        "gates",
        "D r90 (px)",
        "D r90, off",
        "N (px)",
        "D mass beyond N px",
        "D mass beyond N px, off",
        "G mass outside own cell",
        "G outside own cell, off",
        "G mass outside the 2x2 middle cells",
        "G outside middle cells, off",
        "G mass at 0 / 1 / 2 cells",
        "CPU s",
    ]
    return table(headers, rows)


def plot(results: list[dict], path: Path) -> None:
    """Cumulative gradient mass against distance: D (input px) and G (output px); dashed: attention off."""
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, r in enumerate(results):
        colour = colours[k % len(colours)]
        for ax, side in zip(axes, ("D", "G")):
            for key, style, note in ((side, "-", ""), (f"{side}_attention_off", "--", ", attention off")):
                if key in r:
                    cumulative = torch.tensor(r[key]["mass"]).cumsum(0)
                    ax.plot(
                        r[key]["distances"],
                        cumulative,
                        ls=style,
                        marker=".",
                        color=colour,
                        label=f"{Path(r['run']).name}{note}",
                    )
    beyond = sorted({r["beyond_px"] for r in results})
    for n in beyond:
        axes[0].axvline(n, color="grey", lw=0.8, ls=":")
    axes[0].set_title(f"D: score term of a middle position (dotted: N = {', '.join(f'{n:g}' for n in beyond)} px)")
    axes[0].set_xlabel("Chebyshev distance from the position's input patch (input px)")
    axes[1].set_title("G: a middle pixel over the 4x4 first-stage map")
    axes[1].set_xlabel("distance from the pixel's own first-stage cell (output px)")
    for ax in axes:
        ax.axhline(0.9, color="grey", lw=0.8, ls=":")
        ax.set_ylabel("cumulative |gradient| mass")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(results: list[dict], report: Path, figure: Path, command: str) -> None:
    n = results[0]["num_images"]
    text = f"""# Effective receptive fields of trained GANs

Generated by `{command}`; machine: {machine_line()}.

Mean |gradient| over {n} real images (D) and {n} latents (G), at the middle positions of D's last map and
the middle output pixels of G (experiments/gan_erf.py, experiments/erf.py). D r90: the distance holding 90% of the
mass of a middle position's share of D's logit; N: half the mean distance between the coherence dataset's
object centres at the run's resolution. G: a middle pixel's gradient mass over the 4x4 first-stage map,
the share outside the pixel's own cell (the middle pixels sit at the corner of four cells, so even a field
of a few pixels puts about 3/4 of it there), the share outside the 2x2 middle cells (those holding the
middle pixels; of the mean map) and the mass at 0, 1, 2 cells from the own cell. "off": the same weights
with every non-local block switched off (gamma = 0, the block is the identity).

{report_table(results)}

![cumulative gradient mass against distance]({os.path.relpath(figure, report.parent)})
"""
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (their newest intact checkpoint)")
    parser.add_argument("--out", type=Path, required=True, help="directory for the figure and the JSON profiles")
    parser.add_argument("--report", type=Path, required=True, help="the Markdown report to write")
    parser.add_argument("--num-images", type=int, default=64, help="real images for D, latents for G")
    parser.add_argument("--seed", type=int, default=0, help="seeds the choice of images and the latents")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.num_images < 1:
        parser.error("--num-images must be at least 1")
    torch.set_num_threads(args.threads)
    with fail_cleanly():
        results = []
        for k, run in enumerate(args.runs):
            result = measure(run, args.num_images, args.seed)
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"{k}_{run.name}.json").write_text(json.dumps(result, indent=1))
            print(
                f"{run}: D r90 {result['D']['r90']:g} px, G outside own cell {result['G']['mass_beyond']:.4f}, "
                f"{result['cpu_s']:.1f} CPU s",
                flush=True,
            )
            results.append(result)
        figure = args.out / "gan_erf.png"
        plot(results, figure)
        command = shlex.join(["python", "-m", "experiments.gan_erf", *(sys.argv[1:] if argv is None else argv)])
        write_report(results, args.report, figure, command)
    print(f"wrote {args.report} and {figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
