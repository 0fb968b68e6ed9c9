"""Faults that must end in one clear line with nothing lost: a full disk, two runs in one directory, YAML
mistakes, file permissions, a closed pipe, sample.py's default output."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors import SafetensorError

import train as train_cli
from gan import atomic_folder, files, rundir
from gan.checkpoint import list_checkpoints, load_checkpoint
from gan.config import ConfigError, load_config

from shared import ROOT, TINY_RUN

ENOSPC_TEXT = os.strerror(errno.ENOSPC)  # "No space left on device"


def _train(run: Path, *extra: str) -> int:
    return train_cli.main(["--config", "configs/demo.yaml", *TINY_RUN, "--run-dir", str(run), *extra])


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _leftovers(folder: Path) -> list[Path]:
    """Hidden temporaries of the atomic writers (`.x.png.*.tmp`, `.tmp-step_*-<pid>`, `.old-*`)."""
    return [p for p in folder.rglob(".*") if p.name.endswith(".tmp") or p.name.startswith((".tmp-", ".old-"))]


# ----------------------------------------------------------------------------------------------
# A full disk


def _full_after(n_ok: int, write):
    """`write` that works `n_ok` times, then writes a few bytes and fails as a full disk would."""
    calls = []

    def failing(*args, **kwargs):
        calls.append(args)
        if len(calls) <= n_ok:
            return write(*args, **kwargs)
        Path(args[1]).write_bytes(b"partial")  # a half-written file, which must not survive
        raise SafetensorError(f"Error while serializing: I/O error: {ENOSPC_TEXT} (os error 28)")

    return failing


def _fsync_fails_for(pattern: str):
    """`os.fsync` that fails with ENOSPC for files whose path contains `pattern` (after their bytes were written)."""
    real = os.fsync

    def fsync(fd: int) -> None:
        if pattern in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, ENOSPC_TEXT)
        real(fd)

    return fsync


@pytest.mark.slow
@pytest.mark.parametrize("where", ["checkpoint", "sample grid", "export"])
def test_a_full_disk_ends_in_one_line_and_the_run_resumes_once_space_is_freed(tmp_path, capsys, monkeypatch, where):
    """Step 2's checkpoint is complete; the write at step 4 fails. One line names what could not be written,
    the step-2 checkpoint and the resume command; no partial file remains; resuming then finishes the run."""
    run = tmp_path / "run"
    args = ["train.steps=4", "train.checkpoint_every=2", "train.sample_every=4"]
    target = {"checkpoint": run / "checkpoints" / "step_00000004", "sample grid": run / "samples" / "step_00000004.png"}
    if where == "checkpoint":
        monkeypatch.setattr(atomic_folder, "save_file", _full_after(1, atomic_folder.save_file))
    elif where == "sample grid":
        monkeypatch.setattr(files.os, "fsync", _fsync_fails_for("/samples/.step_00000004.png."))
    else:  # the model card's sample grid inside the export's temporary folder
        monkeypatch.setattr(files.os, "fsync", _fsync_fails_for("/.tmp-generator-"))
        target["export"] = run / "generator"
    with pytest.raises(SystemExit) as exc:
        _train(run, *args)
    assert exc.value.code == 2
    line = _one_error_line(capsys.readouterr().err)
    last = run / "checkpoints" / ("step_00000004" if where == "export" else "step_00000002")
    assert line.startswith(f"error: disk full: could not write {target[where]} ({ENOSPC_TEXT}; nothing partial left)")
    assert f"the last complete checkpoint is {last}; free space, then resume with: " in line
    assert f"--run-dir {run} --resume latest " in line and line.endswith(" ".join(args))
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == (
        ["step_00000002", "step_00000004"] if where == "export" else ["step_00000002"]
    )
    assert load_checkpoint(last)[2] == int(last.name[5:])  # intact: the recorded SHA-256 matches
    assert not target[where].exists() and _leftovers(tmp_path) == []

    if where != "checkpoint":
        return  # one resume is enough to show the command works
    monkeypatch.undo()  # space freed
    assert _train(run, *args, "--resume", "latest") == 0
    assert (run / "generator" / "README.md").is_file() and (run / "samples" / "step_00000004.png").is_file()
    assert list_checkpoints(run / "checkpoints")[-1].name == "step_00000004"


def test_a_full_disk_while_appending_metrics_leaves_no_half_line(tmp_path, monkeypatch):
    log = tmp_path / "metrics.jsonl"
    files.append_line(log, '{"step": 1}')

    class HalfWriter:  # writes half of what it is given, then fails as a full disk does
        def __init__(self, path, mode):
            self.fh = open(path, mode)  # noqa: SIM115

        def write(self, text):
            self.fh.write(text[: len(text) // 2])
            self.fh.flush()
            raise OSError(errno.ENOSPC, ENOSPC_TEXT)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    monkeypatch.setattr(files, "open", HalfWriter, raising=False)
    with pytest.raises(OSError) as exc:
        files.append_line(log, '{"step": 2, "loss_d": 1.25}')
    assert files.disk_full(exc.value) and exc.value.filename == str(log)
    assert log.read_text() == '{"step": 1}\n'


def test_a_full_disk_message_without_any_checkpoint_says_to_start_again(tmp_path):
    exc = OSError(errno.ENOSPC, ENOSPC_TEXT, str(tmp_path / "run" / "config.yaml"))
    text = rundir.disk_full_message(exc, tmp_path / "run", "python train.py --resume latest")
    assert text == (
        f"disk full: could not write {tmp_path}/run/config.yaml ({ENOSPC_TEXT}; nothing partial left); no checkpoint "
        f"is complete yet: free space, then start again (add --overwrite to move {tmp_path}/run aside)"
    )


# ----------------------------------------------------------------------------------------------
# One run per directory

_HOLD = "import sys, time; from pathlib import Path; from gan import rundir; l = rundir.lock(Path(sys.argv[1])); print('locked', flush=True); time.sleep(60)"
# Take the lock or refuse in one line; a winner holds it until its stdin closes.
_TRY = "import sys; from pathlib import Path; from gan import rundir; from gan.cli import fail_cleanly\nwith fail_cleanly(): held = rundir.lock(Path(sys.argv[1])); print('locked', flush=True); sys.stdin.read()"


def _python(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _holder(run: Path) -> subprocess.Popen:
    proc = _python(_HOLD, str(run))
    assert proc.stdout.readline().strip() == "locked", proc.stderr.read()
    return proc


def test_two_runs_started_together_into_one_directory_one_refuses_naming_the_holder(tmp_path):
    run = tmp_path / "run"
    procs = [_python(_TRY, str(run)) for _ in range(2)]
    deadline = time.monotonic() + 60
    while all(p.poll() is None for p in procs) and time.monotonic() < deadline:  # the loser exits by itself
        time.sleep(0.05)
    outcomes = [p.communicate(timeout=60) + (p.returncode,) for p in procs]  # closes the winner's stdin
    winners = [i for i, (out, _, rc) in enumerate(outcomes) if out.strip() == "locked" and rc == 0]
    assert len(winners) == 1, outcomes
    out, err, rc = outcomes[1 - winners[0]]
    assert rc == 2 and out == ""
    line = _one_error_line(err)
    host = os.uname().nodename
    pattern = rf"error: {re.escape(str(run))} is in use by another run \(pid {procs[winners[0]].pid} on {re.escape(host)}, started \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC; lock file {re.escape(str(rundir.lock_path(run)))}\); wait for it to end or stop it, or pass another --run-dir"
    assert re.fullmatch(pattern, line), line


@pytest.mark.parametrize("resume", [False, True])
def test_training_refuses_a_directory_another_process_holds_fresh_or_resumed(tmp_path, capsys, resume):
    run = tmp_path / "run"
    holder = _holder(run)
    try:
        with pytest.raises(SystemExit) as exc:
            _train(run, "train.steps=1", *(["--resume", "latest"] if resume else []))
        assert exc.value.code == 2
        line = _one_error_line(capsys.readouterr().err)
        assert f"in use by another run (pid {holder.pid} on " in line
        assert not run.exists()  # refused before anything was written
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_dies_with_its_process_even_under_kill_9(tmp_path):
    run = tmp_path / "run"
    holder = _holder(run)
    with pytest.raises(rundir.RunDirError, match=f"pid {holder.pid} "):
        rundir.lock(run)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with rundir.lock(run) as held:  # free at once: nothing stale to clean up
        assert held.path.read_text().startswith(f"pid {os.getpid()} on ")
    with rundir.lock(run):  # and released again by `with`
        pass


def test_overwrite_keeps_the_lock_while_moving_the_old_run_aside(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "step_00000001").mkdir(parents=True)
    with rundir.lock(run):
        rundir.start_fresh(run, overwrite=True)
        with pytest.raises(rundir.RunDirError, match="in use by another run"):
            rundir.lock(run)
    assert [p.name.startswith("run.old-") for p in tmp_path.iterdir() if not p.name.startswith(".")] == [True]


# ----------------------------------------------------------------------------------------------
# YAML mistakes


def test_a_yaml_syntax_error_names_file_line_column_and_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  g_attention: [16\n  d_width: 3\n")  # the flow list never closes
    with pytest.raises(ConfigError) as exc:
        load_config(bad)
    assert str(exc.value) == (
        f"config file '{bad}', line 3, column 10 is not valid YAML: expected ',' or ']', but got ':' "
        "(while parsing a flow sequence)"
    )


def test_a_tab_in_yaml_is_located(tmp_path):
    bad = tmp_path / "tab.yaml"
    bad.write_text("train:\n\tsteps: 3\n")
    with pytest.raises(ConfigError, match=r"line 2, column 1 is not valid YAML: found character '\\t' that cannot"):
        load_config(bad)


def test_a_malformed_override_is_named_in_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        train_cli.main(["model.g_attention=[16,32"])
    assert exc.value.code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(
        "error: override 'model.g_attention=[16,32': the value is not valid YAML (expected ',' or ']'"
    )


# ----------------------------------------------------------------------------------------------
# Permissions


@pytest.mark.slow
def test_every_file_of_a_run_and_its_export_follows_the_umask(tmp_path):
    run = tmp_path / "run"
    previous = os.umask(0o027)
    try:
        assert _train(run, "train.steps=2", "train.sample_every=2", "log.attention_every=2") == 0
    finally:
        os.umask(previous)
    written = [p for p in run.rglob("*") if p.is_file()]
    names = {p.relative_to(run).as_posix() for p in written}
    for expected in ("generator/README.md", "generator/samples.png", "samples/step_00000002.png",
                     "attention/step_00000002_G.png", "config.yaml", "metrics.jsonl"):  # fmt: skip
        assert expected in names
    modes = {p.relative_to(run).as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in written}
    assert set(modes.values()) == {oct(0o640)}, modes  # 0666 minus 027, every one


def test_atomic_file_gives_the_umask_mode_and_leaves_nothing_on_failure(tmp_path):
    previous = os.umask(0o022)
    try:
        files.write_text(tmp_path / "a.txt", "x")
        with pytest.raises(RuntimeError), files.atomic_file(tmp_path / "b.txt", "w") as fh:
            fh.write("half")
            raise RuntimeError("writer failed")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


# ----------------------------------------------------------------------------------------------
# A closed pipe; sample.py's default output


@pytest.mark.parametrize("script", ["train.py", "evaluate.py", "explore.py"])  # sample.py loads torch first: 7 s
def test_output_into_a_closed_pipe_ends_quietly(script):
    """`--help-config` prints through gan.cli.run (status 141, as if killed by SIGPIPE); argparse's `--help`
    swallows the failed write itself (status 0). Either way: not a word on stderr."""
    args = ["--help-config"] if script == "train.py" else ["--help"]
    proc = subprocess.Popen([sys.executable, script, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first write, as `| head` is after ten lines
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == (128 + signal.SIGPIPE if script == "train.py" else 0)
    assert err == ""


def test_a_broken_pipe_after_output_is_quiet(capfd, monkeypatch):
    from gan.cli import run

    def main() -> int:
        print("some output")
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")  # what print raises once the reader has gone

    monkeypatch.setattr(os, "dup2", lambda fd, fd2: None)  # keep pytest's own stdout
    with pytest.raises(SystemExit) as exc:
        run(main)
    assert exc.value.code == 141 and capfd.readouterr().err == ""


def test_sample_without_an_output_option_says_where_the_grid_went(tmp_path, capsys, monkeypatch, tiny_cfg):
    import sample as sample_cli
    from gan.models import Generator
    from gan.pretrained import export_generator

    export_generator(tmp_path / "run" / "generator", Generator(tiny_cfg.model), tiny_cfg)
    monkeypatch.chdir(tmp_path)
    assert sample_cli.main(["--checkpoint", "run/generator", "--num", "4"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == (
        f"grid of 4 images: {tmp_path / 'samples.png'} (no output option given, so the default --grid samples.png; "
        "--grid, --out, --npz choose others)"
    )
    assert (tmp_path / "samples.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["run", "samples.png"]


def test_an_output_the_user_named_that_cannot_be_written_is_one_line(tmp_path):
    def full() -> None:
        raise OSError(errno.ENOSPC, ENOSPC_TEXT)

    with pytest.raises(files.OutputError) as exc:
        files.user_output(tmp_path / "scores.json", full, "the scores are printed above")
    assert str(exc.value) == f"cannot write {tmp_path}/scores.json ({ENOSPC_TEXT}); the scores are printed above"


def test_evaluate_on_a_full_disk_says_what_could_not_be_written(tmp_path, capsys, monkeypatch, tiny_cfg):
    """The closest-pairs grid (or the reference statistics' cache) hits a full disk inside the metric call:
    one line naming the file and what to do, exit status 2, no traceback (gan.cli.fail_cleanly, which every
    entry script runs under)."""
    import evaluate as evaluate_cli
    import gan.metrics
    from gan.cli import run
    from gan.models import Generator
    from gan.pretrained import export_generator

    export_generator(tmp_path / "generator", Generator(tiny_cfg.model), tiny_cfg)
    grid = tmp_path / "pairs.png"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, ENOSPC_TEXT, str(grid))

    monkeypatch.setattr(gan.metrics, "evaluate", full)
    argv = ["--checkpoint", str(tmp_path / "generator"), "--metrics", "copy", "--num", "8", "--pairs-grid", str(grid)]
    with pytest.raises(SystemExit) as exc:
        run(lambda: evaluate_cli.main(argv))
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert (
        err
        == f"error: disk full: could not write {grid} ({ENOSPC_TEXT}); free space, then run the same command again\n"
    )
    assert not grid.exists()


# ----------------------------------------------------------------------------------------------
# A diverging run


def _strict_json(line: str) -> dict:
    """json.loads that refuses NaN / Infinity, as jq and browsers do."""

    def refuse(name: str):
        raise ValueError(f"{name} is not JSON")

    return json.loads(line, parse_constant=refuse)


def _all_finite(ckpt: Path) -> bool:
    from gan.divergence import nonfinite

    return nonfinite(load_checkpoint(ckpt)[0]) == []


def test_a_diverging_run_stops_in_one_line_writing_nothing_non_finite(tmp_path, capsys):
    """The issue's case, scaled down: learning rates of 1e38 make G's loss non-finite in step 1 (D's update comes
    first). The run stops there (status 2) in one line naming the step, the loss, that no checkpoint exists and
    what to try; no checkpoint, export or `best` was written; metrics.jsonl holds the non-finite loss as null."""
    run = tmp_path / "run"
    args = ["optim.lr_d=1e38", "optim.lr_g=1e38", "train.checkpoint_every=2", "train.keep_last=2",
            "train.steps=6", "train.log_every=1"]  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        _train(run, *args)
    assert exc.value.code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("error: training diverged in step 1: loss_g went non-finite; no checkpoint was written ")
    assert f"--run-dir {run} --overwrite " in line
    assert line.endswith(f"{' '.join(args)} optim.lr_g=1e+37 optim.lr_d=1e+37")
    assert "try lower learning rates: " in line
    assert not (run / "checkpoints").exists() and not (run / "generator").exists()
    records = [_strict_json(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1]
    assert isinstance(records[0]["loss_d"], float) and records[0]["loss_g"] is None


def test_a_divergence_after_checkpoints_keeps_the_finite_ones_and_names_the_last(tmp_path, capsys):
    """Four good steps with a checkpoint each (keep_last 2: steps 3 and 4 stay), then a resume at learning
    rates of 1e38 diverges in step 5: no checkpoint after step 4 is written, so rotation prunes none of the
    finite ones, and the line names step 4's checkpoint and the exact command that resumes from it."""
    run = tmp_path / "run"
    good = ["train.checkpoint_every=1", "train.keep_last=2", "train.log_every=1"]
    assert _train(run, *good, "train.steps=4") == 0
    bad = [*good, "train.steps=8", "optim.lr_d=1e38", "optim.lr_g=1e38"]
    with pytest.raises(SystemExit) as exc:
        _train(run, *bad, "--resume", "latest")
    assert exc.value.code == 2
    line = _one_error_line(capsys.readouterr().err)
    last = run / "checkpoints" / "step_00000004"
    assert line.startswith(
        f"error: training diverged in step 5: loss_g went non-finite; nothing non-finite was written; the last "
        f"checkpoint, all finite, is {last}; try lower learning rates: "
    )
    assert f"--run-dir {run} --resume {last} " in line and line.endswith(" optim.lr_g=1e+37 optim.lr_d=1e+37")
    kept = list_checkpoints(run / "checkpoints")
    assert [p.name for p in kept] == ["step_00000003", "step_00000004"] and all(_all_finite(p) for p in kept)
    records = [_strict_json(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5] and records[-1]["loss_g"] is None
