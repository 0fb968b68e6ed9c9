"""The long-range probe's figures: accuracy against depth, the ERF's cumulative mass, and the block's opening
over training. `groups` maps (arm, depth) to that cell's run results, as `long_range_probe.report` reads them."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

from tools.report import pyplot

Groups = dict[tuple[str, int], list[dict]]


def accuracy_vs_depth(groups: Groups, path: Path, rf: Callable[[int], int]) -> None:
    """Test accuracy against depth (theoretical RF as the second tick label), mean +/- std and every seed."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, colour in (
        ("conv", "tab:blue"),
        ("attn", "tab:orange"),
        ("attn_zero_init", "tab:green"),
        ("attn_lr10", "tab:red"),
    ):
        depths = sorted(d for a, d in groups if a == arm)
        if not depths:
            continue
        accs = [[r["test_acc"] for r in groups[(arm, d)]] for d in depths]
        ax.errorbar(
            depths,
            [statistics.mean(a) for a in accs],
            yerr=[statistics.stdev(a) if len(a) > 1 else 0 for a in accs],
            label=arm,
            color=colour,
            capsize=3,
            marker="o",
        )
        for d, a in zip(depths, accs):
            ax.scatter([d] * len(a), a, color=colour, s=8, alpha=0.5)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(sorted({d for _, d in groups}))
    ax.set_xticklabels([f"{d}\nRF {rf(d)}" for d in sorted({d for _, d in groups})])
    ax.set_xlabel("residual down-blocks before pooling (theoretical RF, px)")
    ax.set_ylabel("test accuracy (coherent vs incoherent)")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def erf_profiles(groups: Groups, path: Path, rf: Callable[[int], int]) -> None:
    """Cumulative ERF gradient mass against distance, seed 0 of each full-image arm and depth."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for (arm, depth), rs in sorted(groups.items()):
        r = min(rs, key=lambda r: r["seed"])
        if r["erf_profile"] is None or arm not in ("conv", "attn", "attn_lr10"):
            continue
        d, m = zip(*r["erf_profile"])
        cum = [sum(m[: k + 1]) for k in range(len(m))]
        ax.plot(d, cum, ls="-" if arm == "conv" else "--", label=f"{arm} depth {depth} (RF {rf(depth)})")
    ax.axhline(0.9, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("Chebyshev distance from the output cell's centre (input px)")
    ax.set_ylabel("cumulative |d out / d in| mass")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def block_opening(groups: Groups, path: Path, has_block: set[str]) -> None:
    """Over training, per attention arm (seed 0): gate, theta's share of the gradient, entropy, accuracy. Draws
    nothing when no arm has a block."""
    if not any(arm in has_block for arm, _ in groups):
        return
    plt = pyplot()
    panels = (
        (
            "gate: |gamma| (gamma gate) or |out weight| (zero_init)",
            lambda e: abs(e["gamma"]) if e["gamma"] == e["gamma"] else e["out_weight_norm"],
        ),
        ("|grad theta| / |grad g|", lambda e: e["grad_theta"] / max(e["grad_g"], 1e-12)),
        ("attention entropy / log N", lambda e: e["entropy_ratio"]),
        ("test accuracy (256 images)", lambda e: e["test_acc_256"]),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(16, 3.5))
    for (arm, depth), rs in sorted(groups.items()):
        if arm not in has_block:
            continue
        log = min(rs, key=lambda r: r["seed"])["log"][1:]  # step 1 has no gradient through the closed gate
        for ax, (title, value) in zip(axes, panels):
            ax.plot([e["step"] for e in log], [value(e) for e in log], label=f"{arm} d{depth}")
            ax.set_title(title, fontsize=8)
            ax.set_xlabel("step")
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    axes[-1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
