"""How far the attention blocks opened, read from the metrics.jsonl that train.py writes at every log step
(gan.tracking.attention_stats): per block `gate/<kind>/<net>.<block>`, the gate's kind and value as
gan.attention.gate_of gives them (gamma; the Frobenius norm of `out`'s weight under the zero-initialised gate;
the RMS of tanh(a) under the channel gate; 0 at init), and `attn_entropy/<net>.<block>` (mean row entropy of its
attention). Runs logged before the gate had its own key wrote `gamma/<net>.<block>` and `out_norm/<net>.<block>`
(every other gate); `gate_key` reads both spellings. Used by the ablation report and the GPU evidence summary.

What these cannot: they see only the logged steps (train.log_every), G's blocks on fixed latents and D's on a
few real images; a gate near 0 means the block barely changes the network, but a large gate does not by itself
say that the block helps.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments.experiment import mean_std

# train.py's per-block keys (gan.tracking.attention_stats): the gate's value, then the entropy
GATE_PREFIX = "gate/"  # gate/<kind>/<net>.<block>
OLD_GATE_PREFIXES = ("gamma/", "out_norm/")  # <kind>/<net>.<block>, as logged before gate/
GATE_VALUE_PREFIXES = (GATE_PREFIX, *OLD_GATE_PREFIXES)
ENTROPY_PREFIX = "attn_entropy/"
GATE_PREFIXES = (*GATE_VALUE_PREFIXES, ENTROPY_PREFIX)
# What each kind's value is, for tables ("out_norm": an old log's non-gamma gate, norm(out) or rms tanh(a))
GATE_LABELS = {"gamma": "gamma", "zero_init": "norm(out)", "channel": "rms tanh(a)", "out_norm": "norm(out)"}


def gate_key(key: str) -> tuple[str, str] | None:
    """(kind, "<net>.<block>") of a logged gate key in either spelling; None for any other key."""
    if key.startswith(GATE_PREFIX):
        kind, block = key.removeprefix(GATE_PREFIX).split("/", 1)
        return kind, block
    if key.startswith(OLD_GATE_PREFIXES):
        kind, block = key.split("/", 1)
        return kind, block
    return None


def gate_history(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every logged gate value and attention entropy of a run, per key: {key: [(step, value), ...]}."""
    history: dict[str, list[tuple[int, float]]] = {}
    path = run_dir / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        record = json.loads(line) if line.strip() else {}
        for k, v in record.items():
            if k.startswith(GATE_PREFIXES):
                history.setdefault(k, []).append((record["step"], v))
    return history


def final_gates(run_dir: Path) -> dict[str, float]:
    """The last logged gate (gamma, or the norm of `out` under the zero-initialised gate) and attention entropy
    of every block (train.py's metrics.jsonl); {} if none logged."""
    return {key: points[-1][1] for key, points in gate_history(run_dir).items()}


def uniform_entropy(side: int, subsample: bool) -> float:
    """log(number of keys): the entropy of uniform attention over a side x side map (keys 2x2-pooled, ceil)."""
    keys_side = -(-side // 2) if subsample else side
    return math.log(keys_side * keys_side)


def gates_table(runs: dict[str, dict[int, dict[str, Any]]], subsample: bool) -> list[str]:
    """Markdown: per attention block, the final gate (gamma, or norm(out) under the zero-initialised gate; mean +/-
    std and every seed) and the final mean row entropy of its attention as a fraction of uniform attention's
    (1.0 = attends everywhere equally)."""
    lines = [
        "| arm | block | final gate (mean +/- std) | per seed | entropy / uniform (mean) |",
        "|---|---|---|---|---|",
    ]
    for name, by_seed in runs.items():
        gates = sorted({k for r in by_seed.values() for k in r["gates"] if gate_key(k)})
        for key in gates:
            kind, block = gate_key(key)
            gammas = [r["gates"][key] for r in by_seed.values() if key in r["gates"]]
            entropies = [
                r["gates"][f"attn_entropy/{block}"] for r in by_seed.values() if f"attn_entropy/{block}" in r["gates"]
            ]
            side = int(re.search(r"attn(\d+)$", block)[1])
            m, sd = mean_std(gammas)
            rel = mean_std(entropies)[0] / uniform_entropy(side, subsample) if entropies else float("nan")
            label = GATE_LABELS[kind]
            lines.append(
                f"| `{name}` | {block} | {label} {m:+.4f} +/- {sd:.4f} | {', '.join(f'{g:+.4f}' for g in gammas)} "
                f"| {rel:.3f} |"
            )
    return lines


GATE_ROWS = (  # the figure's rows: (kind, label); an old log's out_norm/ is drawn as the zero-init gate was
    ("gamma", "gamma"),
    ("zero_init", "norm(out), zero-init gate"),
    ("channel", "rms tanh(a), channel gate"),
    ("attn_entropy", "entropy / uniform"),
)


def _row_block(key: str) -> tuple[str, str]:
    """(figure row, block) of a logged gate or entropy key."""
    kind, block = gate_key(key) or key.split("/", 1)
    return ("zero_init" if kind == "out_norm" else kind), block


def plot_gates(runs: dict[str, dict[int, dict[str, Any]]], subsample: bool, path: Path) -> bool:
    """Gate and attention entropy of every block over training (metrics.jsonl), one column per block and one
    row per quantity, every arm in its colour and every seed as its own line; False (nothing drawn) when no
    run logged any."""
    histories = {(name, seed): {_row_block(k): v for k, v in gate_history(Path(r["run_dir"])).items()}
                 for name, by_seed in runs.items() for seed, r in by_seed.items()}  # fmt: skip
    keys = {k for h in histories.values() for k in h}
    blocks = sorted({block for _, block in keys})
    rows = [(kind, label) for kind, label in GATE_ROWS if any(k[0] == kind for k in keys)]
    if not blocks:
        return False
    from tools.report import pyplot  # (late: it imports torch)

    plt = pyplot()

    colours = {name: f"C{i}" for i, name in enumerate(runs)}
    fig, axes = plt.subplots(len(rows), len(blocks), figsize=(4.2 * len(blocks), 2.6 * len(rows)), squeeze=False)
    for col, block in enumerate(blocks):
        side = int(re.search(r"attn(\d+)$", block)[1])
        for row, (kind, label) in enumerate(rows):
            ax = axes[row][col]
            scale = uniform_entropy(side, subsample) if kind == "attn_entropy" else 1.0
            for (name, seed), history in histories.items():
                points = history.get((kind, block))
                if points:
                    steps, values = zip(*points)
                    ax.plot(steps, [v / scale for v in values], color=colours[name], lw=1.2, alpha=0.8,
                            label=name if seed == min(runs[name]) else None)  # fmt: skip
            ax.set_title(f"{block}: {label}", fontsize=9)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
            if row == len(rows) - 1:
                ax.set_xlabel("generator step", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def over_training_table(runs: Path, points: int = 6) -> list[str]:
    """Markdown: every block's gate (mean +/- std over seeds, number of seeds) at `points` evenly spread logged
    steps, one row per (arm, block), for the run directories `runs/<arm>/seed<N>` (the experiment runner's)."""
    gates: dict[tuple[str, str], dict[int, list[float]]] = {}  # (arm, block) -> step -> gate of each seed
    for run_dir in sorted(p.parent for p in runs.glob("*/seed*/metrics.jsonl")):
        for key, history in gate_history(run_dir).items():
            if gate_key(key):
                kind, block = gate_key(key)
                label = block if kind == "gamma" else f"{block} ({GATE_LABELS[kind]})"
                for step, value in history:
                    gates.setdefault((run_dir.parent.name, label), {}).setdefault(step, []).append(value)
    if not gates:
        return ["(no gate was logged: no attention run reached a log step)"]
    steps = sorted({step for by_step in gates.values() for step in by_step})
    shown = sorted({steps[round(i * (len(steps) - 1) / max(points - 1, 1))] for i in range(points)})
    lines = ["| arm | block | " + " | ".join(f"step {s}" for s in shown) + " |", "|---|---|" + "---|" * len(shown)]
    for (arm, block), by_step in sorted(gates.items()):
        cells = [_cell(by_step[s]) if s in by_step else "-" for s in shown]
        lines.append(f"| `{arm}` | {block} | " + " | ".join(cells) + " |")
    return lines


def _cell(values: Sequence[float]) -> str:
    m, s = mean_std(values)
    return f"{m:+.4f} +/- {s:.4f} ({len(values)})"
