"""The blind-D cell's runs (docs/blind_d.md): each checkpoint of a grid run scored as the runner scores a
finished run, and one summary JSON per run; experiments/blind_d.py makes the report from these summaries.
The cell's two references, the full D (its ceiling) and a full-field D at the blind D's size, are summarised
the same way, each under its own cell name (CELLS); experiments/blind_d_field.py reports them. So is issue 34's
cosine design in the blind D (`cosine_1k`, 1,000 steps; experiments/gan_designs.py reports it)."""

from __future__ import annotations

import datetime
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gan.errors import UserError  # (light: no torch)

STEPS = (1000, 2000)  # the checkpoints scored: train.checkpoint_every=1000, train.steps=2000
CELL = "blind16_2k"
CONTROL, BLOCK, UNIFORM = "none", "d32", "d32-uniform"
ARMS = (CONTROL, BLOCK, UNIFORM)
FULL, FIELD_W2 = "full_2k", "fieldw2_2k"  # the full D (width 16) and a full-field D of width 2, no block in either
COSINE, COSINE_CELL = "d32-cosine", "cosine_1k"  # issue 34's cosine design at 32 in the blind D, 1,000 steps
COSINE_2K = "cosine_2k"  # the same design at 2,000 steps, scored at 1,000 and 2,000 as the blind cell
CELLS = {
    CELL: ARMS,
    FULL: (CONTROL,),
    FIELD_W2: (CONTROL,),
    COSINE_CELL: (COSINE,),
    COSINE_2K: (COSINE,),
}  # summaries <cell>_<arm>_seed<k>.json
CELL_STEPS = {COSINE_CELL: (1000,)}  # a cell's scored checkpoints where they are not STEPS
SCORES = ("coherence", "valid", "shape_iou", "colour_agreement", "fcd", "d_auc", "d_paired")


class BlindDError(UserError, ValueError):
    """A problem with the cell's arguments or files; one line that says what to do."""


def write_between(report: Path, begin: str, end: str, body: str, what: str) -> None:
    """Replace the text between `report`'s markers `begin` and `end` with `body` (the rest stays as written);
    one line naming the markers and `what` goes between them when they are missing."""
    text = report.read_text() if report.is_file() else ""
    if begin not in text or end not in text:
        raise BlindDError(f"{report} lacks the markers {begin} and {end}; {what} go between them")
    head, rest = text.split(begin, 1)
    report.write_text(head + begin + "\n" + body + "\n" + end + rest.split(end, 1)[1])


def cell_arms(cell: str) -> tuple[str, ...]:
    if cell not in CELLS:
        raise BlindDError(f"unknown cell {cell!r}; the cells are {', '.join(CELLS)}")
    return CELLS[cell]


def _record(run_dir: Path, name: str) -> dict[str, Any] | None:
    """The runner's record `name` (experiment.RUN_SUMMARY or EVAL_SUMMARY, either spelling) of a run, or None."""
    from experiments.experiment import run_path

    path = run_path(run_dir, name)
    return json.loads(path.read_text()) if path.is_file() else None


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    from gan.checkpoint import list_checkpoints, step_of

    found = {step_of(p): p for p in list_checkpoints(run_dir / "checkpoints")}
    if step not in found:
        raise BlindDError(f"{run_dir} has no checkpoint at step {step} (has {sorted(found)}); train it with "
                          f"train.checkpoint_every dividing {step} and train.keep_last large enough")  # fmt: skip
    return found[step]


def export_is_checkpoint_ema(run_dir: Path, step: int) -> bool:
    """Does the run's generator export hold exactly the EMA generator of its checkpoint at `step`?"""
    import torch

    from gan.checkpoint import read_weights

    export = read_weights(run_dir / "generator", "G").state
    ema = read_weights(checkpoint_dir(run_dir, step), "G", use_ema=True)
    return (
        ema.what == "G_ema"
        and export.keys() == ema.state.keys()
        and all(torch.equal(export[k], ema.state[k]) for k in export)
    )


def score_checkpoint(run_dir: Path, step: int, num_samples: int) -> dict[str, Any]:
    """The runner's evaluation (`experiment.evaluate_run` with the ablation's hook, as `experiments.ablation run`
    evaluates every run) of the checkpoint at `step`: its EMA generator (exported into a temporary
    run-directory view) and its D (the view's only checkpoint)."""
    from experiments.ablation import EVAL_HOOK
    from experiments.experiment import evaluate_run
    from gan.checkpoint import write_export
    from gan.models import load_generator

    ckpt = checkpoint_dir(run_dir, step)
    with tempfile.TemporaryDirectory(prefix="blind_d_") as tmp:
        view = Path(tmp)
        G, cfg = load_generator(ckpt, use_ema=True)
        write_export(view / "generator", G, cfg)
        (view / "checkpoints").mkdir()
        (view / "checkpoints" / ckpt.name).symlink_to(ckpt.resolve(), target_is_directory=True)
        result = evaluate_run(view, num_samples, hook=EVAL_HOOK)
    if result["step"] != step:
        raise BlindDError(f"the view of {ckpt} was read at step {result['step']}, not {step}")
    return result


def block_state(gates: dict[str, list[list[float]]], step: int) -> dict[str, dict[str, float]]:
    """Per D block, its gate (|gamma| or norm(out)) and attention entropy over log N as logged at `step` (the
    last logged value at or before it): {block: {"gate": g, "entropy_fraction": e}}."""
    from experiments.gates import gate_key
    from experiments.local_d import ENTROPY_KEY, uniform_log_n, value_at

    out: dict[str, dict[str, float]] = {}
    for key, points in sorted(gates.items()):
        gate = gate_key(key)  # (kind, "<net>.<block>") in either logged spelling
        if gate and gate[1].startswith("D"):
            out.setdefault(gate[1], {})["gate"] = abs(value_at(points, step))
        elif key.startswith(ENTROPY_KEY):
            out.setdefault(key.split("/", 1)[1], {})["entropy_fraction"] = value_at(points, step) / uniform_log_n(key)
    return out


def step_scores(result: dict[str, Any], gates: dict[str, list[list[float]]], step: int, source: str) -> dict[str, Any]:
    return {"source": source, **{k: result[k] for k in SCORES if k in result},
            "d_look_share": result.get("d_look_share", {}), "blocks": block_state(gates, step)}  # fmt: skip


def summarise_run(
    run_dir: Path, arm: str, seed: int, cpu: dict[str, Any], steps: Sequence[int] = STEPS, cell: str = CELL
) -> dict[str, Any]:
    """The summary of one finished run (see the module's docstring), scored at each of `steps`."""
    from experiments.experiment import EVAL_SUMMARY, RUN_SUMMARY, run_path
    from experiments.local_d import run_summary

    run, result = _record(run_dir, RUN_SUMMARY), _record(run_dir, EVAL_SUMMARY)
    if run is None or result is None:
        raise BlindDError(f"{run_dir} is not a finished run (no {RUN_SUMMARY} or {EVAL_SUMMARY})")
    result = {**result, "run_dir": str(run_dir), "train_seconds": run.get("train_seconds", 0.0)}
    summary = run_summary(cell, arm, seed, run, result)
    final = summary["steps"]
    by_step: dict[str, Any] = {}
    cpu_own: dict[str, float] = {}
    for step in steps:
        if step == final and result.get("step") == final and export_is_checkpoint_ema(run_dir, final):
            scored, source = result, "the runner's evaluation (its export is this checkpoint's EMA generator)"
        else:
            t0 = time.process_time()
            scored, source = score_checkpoint(run_dir, step, result["num_samples"]), "this checkpoint, re-scored"
            cpu_own[f"score_step_{step}"] = round(time.process_time() - t0, 1)
        by_step[str(step)] = step_scores(scored, summary["gates"], step, source)
    finished = run_path(run_dir, EVAL_SUMMARY).stat().st_mtime
    summary.update({
        "scores_by_step": by_step,
        "num_samples": result["num_samples"],
        "cpu_seconds": {**{k: cpu.get(k) for k in ("train", "evaluate")}, **cpu_own},
        "command": " ".join(map(str, run.get("command", []))),
        "run_dir": str(run_dir),
        "finished": datetime.datetime.fromtimestamp(finished, datetime.timezone.utc).isoformat(timespec="seconds"),
    })  # fmt: skip
    return summary


def summarise(
    runs: Path,
    summaries: Path,
    cpu_seconds: Path | None = None,
    steps: Sequence[int] | None = None,
    partial: bool = False,
    num_samples: int = 1000,
    cell: str = CELL,
) -> list[Path]:
    """Summarise every finished run under `runs/<arm>/seed<k>/` (the arms of `cell`) that has no summary yet (or
    only a partial one); with `partial`, also score the checkpoints of runs still training (`partial_summary`).
    `steps`: the checkpoints scored (None: the cell's, CELL_STEPS or STEPS). The paths written."""
    arms = cell_arms(cell)
    steps = steps or CELL_STEPS.get(cell, STEPS)
    import torch

    from experiments.experiment import EVAL_SUMMARY

    torch.set_num_threads(1)
    if not runs.is_dir():
        raise BlindDError(f"--runs {runs} is not a directory; pass the grid's --out folder")
    cpu = json.loads(cpu_seconds.read_text()) if cpu_seconds and cpu_seconds.is_file() else {}
    summaries.mkdir(parents=True, exist_ok=True)
    written = []
    for seed in range(100):
        for arm in arms:
            rd = runs / arm / f"seed{seed}"
            path = summaries / f"{cell}_{arm}_seed{seed}.json"
            if path.exists() and not json.loads(path.read_text()).get("partial"):
                continue
            if _record(rd, EVAL_SUMMARY) is not None:
                summary = summarise_run(rd, arm, seed, cpu.get(str(rd), {}), steps, cell)
            elif partial and not path.exists() and rd.is_dir():
                summary = partial_summary(rd, arm, seed, cpu.get(str(rd), {}), steps, num_samples, cell)
                if summary is None:
                    continue
            else:
                continue
            path.write_text(json.dumps(summary, indent=1) + "\n")
            print(f"summarised {rd} -> {path}", flush=True)
            written.append(path)
    return written


def partial_summary(
    run_dir: Path, arm: str, seed: int, cpu: dict[str, Any], steps: Sequence[int], num_samples: int, cell: str = CELL
) -> dict[str, Any] | None:
    """A run still training: the scores of its checkpoints at the steps before the last one, marked `partial`
    (the finished run's summary replaces it); None before its first such checkpoint."""
    from experiments.gates import gate_history
    from gan.checkpoint import list_checkpoints, step_of
    from tools.report import machine_line

    have = {step_of(p) for p in list_checkpoints(run_dir / "checkpoints")}
    todo = [step for step in steps[:-1] if step in have]
    if not todo:
        return None
    gates = {k: [list(p) for p in v] for k, v in gate_history(run_dir).items()}
    t0 = time.process_time()
    by_step = {str(step): step_scores(score_checkpoint(run_dir, step, num_samples), gates, step,
                                      "this checkpoint, scored while the run trained") for step in todo}  # fmt: skip
    return {"setting": cell, "arm": arm, "seed": seed, "partial": True, "scores_by_step": by_step,
            "num_samples": num_samples, "run_dir": str(run_dir), "finished": None, "machine": machine_line(),
            "cpu_seconds": {"train_so_far": cpu.get("train"), "score_partial": round(time.process_time() - t0, 1)}}  # fmt: skip


def load_summaries(summaries: Path, cell: str = CELL) -> list[dict[str, Any]]:
    """The summaries of `cell`'s runs in `summaries`, by arm (in the cell's order), then seed."""
    arms = cell_arms(cell)
    found = [json.loads(p.read_text()) for p in sorted(summaries.glob(f"{cell}_*_seed*.json"))]
    return sorted(found, key=lambda s: (arms.index(s["arm"]) if s["arm"] in arms else len(arms), s["seed"]))


def value(summary: dict[str, Any], step: int, key: str) -> float:
    """A score of a run at `step`; `entropy_fraction`, `gate` and `look_share` of its (one) D block, nan without."""
    if str(step) not in summary["scores_by_step"]:
        return float("nan")  # a run summarised while it trained
    scores = summary["scores_by_step"][str(step)]
    if key in ("entropy_fraction", "gate"):
        return next((b[key] for b in scores["blocks"].values() if key in b), float("nan"))
    if key == "look_share":
        return next((v[0] for v in scores["d_look_share"].values()), float("nan"))
    return scores[key]
