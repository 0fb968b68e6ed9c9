"""Run directories that never lose work, end to end through the real CLIs in temporary directories:
refusing a used directory, --overwrite, one consistent history after a resume, stale temporaries of killed
writers, damaged newest checkpoints, flipped bytes in every file kind."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import train as train_cli
from gan import rundir
from gan.checkpoint import list_checkpoints

from shared import ROOT, first_tensor_key, flip_bytes, tensor_offset

TINY = [
    "--config", "configs/demo.yaml", "model.g_width=8", "model.d_width=8", "data.builtin_size=64",
    "train.batch_size=4", "train.progress=false", "train.log_every=1", "train.sample_every=2",
    "log.attention_every=0", "train.checkpoint_every=2", "train.keep_last=5", "train.summary_samples=64",
]  # fmt: skip


def cli(script: str, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, script, *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )


def train(capsys, run: Path, *args: str) -> tuple[int, str, str]:
    """train.py's main in this process (faster than a subprocess); returns (status, stdout, stderr)."""
    try:
        status = train_cli.main([*TINY, "--run-dir", str(run), *args])
    except SystemExit as exc:
        status = exc.code
    out = capsys.readouterr()
    return status, out.out, out.err


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
    res = cli("sample.py", "--checkpoint", run, "--grid", tmp_path / "g.png", "--device", "cpu")
    assert res.returncode == 0 and f"using checkpoint {run / 'checkpoints' / 'step_00000004'}" in res.stdout


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

    res = cli("sample.py", "--checkpoint", run, "--grid", tmp_path / "g.png", "--device", "cpu")
    assert res.returncode == 0
    lines = res.stdout.splitlines()
    assert lines[0].startswith(skipped) and lines[1] == f"using checkpoint {older} (the newest intact one)"
    res = cli("evaluate.py", "--checkpoint", run, "--num", 8, "--metrics", "fid", "--feature-extractor", "fashion_classifier",
              "--allow-out-of-domain", f"eval.cache_dir={tmp_path / 'cache'}", "eval.batch_size=8")  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout)["num_samples"] == 8  # stdout holds only the JSON object
    err = res.stderr.splitlines()
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
    for res in (cli("sample.py", "--checkpoint", run / "generator", "--device", "cpu", "--grid", tmp_path / "g.png"),
                cli("evaluate.py", "--checkpoint", run / "generator", "--num", 8, "--allow-out-of-domain",
                    "--feature-extractor", "fashion_classifier", f"eval.cache_dir={tmp_path / 'cache'}")):  # fmt: skip
        lines = res.stderr.splitlines()
        assert (
            res.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {export} fails its SHA-256 check")
        )
    assert not (tmp_path / "g.png").exists()
    state = run / "checkpoints" / "step_00000002" / "state.safetensors"
    flip_bytes(state, tensor_offset(state, first_tensor_key(state, "state/opt_d/state/")))
    status, _, err = train(capsys, run, "train.steps=3", "--resume", str(state.parent))
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: {state} fails its SHA-256 check")


def test_sigterm_names_the_step_the_checkpoint_and_the_exact_resume_command(tmp_path):
    import signal
    import time

    run = tmp_path / "run"
    args = [*TINY, "--run-dir", str(run), "train.steps=100000"]
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 240
    while not (run / "metrics.jsonl").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err[-2000:]
    (ckpt,) = list_checkpoints(run / "checkpoints")[-1:]
    step = int(ckpt.name.split("_")[1])
    lines = out.strip().splitlines()[-2:]
    assert (
        lines[0]
        == f"interrupted at step {step} of 100000: checkpoint saved in {ckpt}, generator in {run / 'generator'}"
    )
    assert lines[1].startswith("resume with: ")
    command = shlex.split(lines[1].removeprefix("resume with: "))
    assert (ROOT / command[0]).resolve() == Path(sys.executable).resolve()
    assert command[1:] == ["train.py", "--config", "configs/demo.yaml", "--run-dir", str(run), "--resume", "latest",
                           *[a for a in TINY if "=" in a], "train.steps=100000"]  # fmt: skip
