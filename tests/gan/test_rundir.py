"""Run directories that never lose work, end to end through the real CLIs in temporary directories:
refusing a used directory, --overwrite, one consistent history after a resume, stale temporaries of killed
writers, damaged newest checkpoints, flipped bytes in every file kind. The CLIs' `main` runs in this process
(no start-up of Python and torch, ~4 CPU-s each); what SIGTERM leaves, which needs the real process, is
tests/cli/test_train.py's."""

import json
import os
import subprocess
import sys
from pathlib import Path

import evaluate as evaluate_cli
import sample as sample_cli
import train as train_cli
from gan import rundir
from gan.checkpoint import list_checkpoints

from shared import first_tensor_key, flip_bytes, tensor_offset

TINY = [
    "--config", "configs/demo.yaml", "model.g_width=8", "model.d_width=8", "data.builtin_size=64",
    "train.batch_size=4", "train.progress=false", "train.log_every=1", "train.sample_every=2",
    "log.attention_every=0", "train.checkpoint_every=2", "train.keep_last=5", "train.summary_samples=64",
]  # fmt: skip


def cli(capsys, entry, *args) -> tuple[int, str, str]:
    """`entry.main` (train.py's, sample.py's or evaluate.py's) in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        status = entry.main(list(map(str, args)))
    except SystemExit as exc:
        status = exc.code
    out = capsys.readouterr()
    return status, out.out, out.err


def train(capsys, run: Path, *args: str) -> tuple[int, str, str]:
    return cli(capsys, train_cli, *TINY, "--run-dir", run, *args)


def steps_in(metrics: Path) -> list[int]:
    return [json.loads(line)["step"] for line in metrics.read_text().splitlines()]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_fresh_run_refuses_a_used_directory_and_overwrite_moves_it_aside(tmp_path, capsys):
    run = tmp_path / "demo"
    assert train(capsys, run, "train.steps=4")[0] == 0
    before = snapshot(run)
    status, _, err = train(capsys, run, "train.steps=2")
    assert status == 2 and err.strip() == (
        f"error: {run} already holds a run (checkpoints or metrics.jsonl): continue it with `--resume latest`, "
        f"pass a new `--run-dir`, or add `--overwrite` to move it aside to {run}.old-<time>"
    )
    assert snapshot(run) == before  # nothing touched
    status, out, _ = train(capsys, run, "train.steps=2", "--overwrite")
    assert status == 0
    (aside,) = tmp_path.glob("demo.old-*")
    assert f"--overwrite: moved the previous run in {run} to {aside} (nothing deleted)" in out
    assert snapshot(aside) == before  # the old run, byte for byte
    assert steps_in(run / "metrics.jsonl") == [1, 2]
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step_00000002"]


def test_resume_from_an_earlier_step_leaves_one_consistent_history(tmp_path, capsys):
    """Old run to step 6; resume from step 2 to step 4: metrics 1..4 once each, checkpoints 2 and 4 only (the
    old 4 replaced, the old 6 moved aside, so keep_last never weighs them against the new ones)."""
    run = tmp_path / "run"
    assert train(capsys, run, "train.steps=6")[0] == 0
    old_lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    status, out, _ = train(capsys, run, "train.steps=4", "--resume", str(run / "checkpoints" / "step_00000002"))
    assert status == 0
    aside = run / "discarded-after-step_00000002"
    assert (
        f"resuming at step 2: moved what the old run wrote after it (4 metric lines, 2 checkpoints, 2 sample grids, 2 attention maps) to {aside}"
        in out
    )
    assert steps_in(run / "metrics.jsonl") == [1, 2, 3, 4]
    assert (run / "metrics.jsonl").read_text().splitlines(keepends=True)[:2] == old_lines[:2]
    assert (aside / "metrics.jsonl").read_text().splitlines(keepends=True) == old_lines[2:]
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step_00000002", "step_00000004"]
    assert [p.name for p in list_checkpoints(aside / "checkpoints")] == ["step_00000004", "step_00000006"]
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_00000002.png", "step_00000004.png"]
    # sampling the run directory now draws from the resumed run's step 4, the same model generator/ holds
    status, out, _ = cli(capsys, sample_cli, "--checkpoint", run, "--grid", tmp_path / "g.png", "--device", "cpu")
    assert status == 0 and f"using checkpoint {run / 'checkpoints' / 'step_00000004'}" in out


def test_stale_temporaries_of_dead_writers_are_removed_live_ones_kept(tmp_path, capsys):
    run = tmp_path / "run"
    assert train(capsys, run, "train.steps=2")[0] == 0
    dead, live = dead_pid(), os.getpid()
    stale = [run / "checkpoints" / f".tmp-step_00000009-{dead}", run / "checkpoints" / f".old-step_00000002-{dead}",
             run / f".tmp-generator-{dead}"]  # fmt: skip
    alive = run / "checkpoints" / f".tmp-step_00000009-{live}"
    for d in (*stale, alive):
        d.mkdir()
        (d / "state.safetensors").write_bytes(b"partial")
    status, out, _ = train(capsys, run, "train.steps=3", "--resume", "latest")
    assert status == 0
    lines = [line for line in out.splitlines() if "temporary" in line]
    assert lines == [
        f"removed 3 temporary directories left by killed writers in {run}: "
        + ", ".join(sorted(p.name for p in stale[2:]) + sorted(p.name for p in stale[:2]))
    ]
    assert not any(p.exists() for p in stale) and alive.is_dir()
    assert rundir.remove_stale_temporaries(run) == []  # nothing left to say


def test_damaged_newest_checkpoint_every_cli_says_which_it_used_and_why(tmp_path, capsys):
    run = tmp_path / "run"
    assert train(capsys, run, "train.steps=4")[0] == 0
    newest = run / "checkpoints" / "step_00000004"
    f = newest / "state.safetensors"
    flip_bytes(f, tensor_offset(f, first_tensor_key(f, "state/G_ema/")))
    skipped = f"skipped {newest}: state.safetensors fails its SHA-256 check"
    older = run / "checkpoints" / "step_00000002"

    status, out, _ = cli(capsys, sample_cli, "--checkpoint", run, "--grid", tmp_path / "g.png", "--device", "cpu")
    assert status == 0
    lines = out.splitlines()
    assert lines[0].startswith(skipped) and lines[1] == f"using checkpoint {older} (the newest intact one)"
    status, out, err = cli(capsys, evaluate_cli, "--checkpoint", run, "--num", 8, "--metrics", "fid",
                           "--feature-extractor", "fashion_classifier", "--allow-out-of-domain",
                           f"eval.cache_dir={tmp_path / 'cache'}", "eval.batch_size=8")  # fmt: skip
    assert status == 0, err[-2000:]
    assert json.loads(out)["num_samples"] == 8  # stdout holds only the JSON object
    err = err.splitlines()
    assert [line.startswith(skipped) for line in err].count(True) == 1
    assert err.count(f"using checkpoint {older} (the newest intact one)") == 1

    status, out, _ = train(capsys, run, "train.steps=5", "--resume", "latest")
    assert status == 0
    lines = out.splitlines()
    assert lines[0].startswith(skipped)
    assert lines[1] == f"--resume latest: using {older}, the newest intact checkpoint"
    assert f"resumed from {older} at step 2" in out
    assert (run / "discarded-after-step_00000002" / "checkpoints" / "step_00000004").is_dir()  # the damaged one, kept
    assert steps_in(run / "metrics.jsonl") == [1, 2, 3, 4, 5]


def test_flipped_bytes_refused_by_every_cli_in_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert train(capsys, run, "train.steps=2")[0] == 0
    export = run / "generator" / "generator.safetensors"
    flip_bytes(export, tensor_offset(export, first_tensor_key(export, "")))
    for status, _, err in (
        cli(capsys, sample_cli, "--checkpoint", run / "generator", "--device", "cpu", "--grid", tmp_path / "g.png"),
        cli(capsys, evaluate_cli, "--checkpoint", run / "generator", "--num", 8, "--allow-out-of-domain",
            "--feature-extractor", "fashion_classifier", f"eval.cache_dir={tmp_path / 'cache'}"),
    ):  # fmt: skip
        lines = err.splitlines()
        assert status == 2 and len(lines) == 1 and lines[0].startswith(f"error: {export} fails its SHA-256 check")
    assert not (tmp_path / "g.png").exists()
    state = run / "checkpoints" / "step_00000002" / "state.safetensors"
    flip_bytes(state, tensor_offset(state, first_tensor_key(state, "state/opt_d/state/")))
    status, _, err = train(capsys, run, "train.steps=3", "--resume", str(state.parent))
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: {state} fails its SHA-256 check")
