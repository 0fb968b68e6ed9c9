"""End-to-end training: the real train.py in a temporary directory, exact resume, signals, two processes."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train as train_cli
from gan.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint

from shared import ROOT, TINY_RUN

TINY = [*TINY_RUN, "train.log_every=2"]


def run_cli(*args: str, timeout: int = 300, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def tensors_of(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt / "state.safetensors"))


def refused(capsys: pytest.CaptureFixture, *argv: str) -> list[str]:
    """train.py's main in this process (no start-up of Python and torch, ~4 CPU-s) ending in a user error: exit
    status 2, which the process passes on (test_missing_config_file_and_bad_yaml); returns stderr's lines."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        train_cli.main(list(argv))
    assert exc.value.code == 2
    return capsys.readouterr().err.strip().splitlines()


@pytest.mark.slow
def test_cli_trains_and_writes_run_directory(tmp_path):
    run = tmp_path / "run"
    res = run_cli(
        "train.py",
        "--config",
        "configs/demo.yaml",
        "--run-dir",
        str(run),
        *[a for a in TINY if not a.startswith("train.summary_samples=")],  # the default: 1,000
        "train.steps=4",
        "train.sample_every=2",
        "log.attention_every=4",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert (run / "config.yaml").is_file() and "g_width: 16" in (run / "config.yaml").read_text()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    for key in (
        "loss_d",
        "loss_g",
        "d_real",
        "d_fake",
        "images_per_s",
        "lr_g",
        "gate/gamma/G.blocks.attn16",
        "attn_entropy/G.blocks.attn16",
        "gate/gamma/D.blocks.attn16",
        "attn_entropy/D.blocks.attn16",
    ):
        assert key in rows[-1] and rows[-1][key] == rows[-1][key]  # present and not NaN
    # the entropy of an (8x8 query) x (8x8 pooled key) softmax is at most log(64)
    assert 0 < rows[-1]["attn_entropy/G.blocks.attn16"] <= torch.log(torch.tensor(64.0)).item() + 1e-5
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_00000002.png", "step_00000004.png"]
    assert sorted(p.name for p in (run / "attention").iterdir()) == ["step_00000004_D.png", "step_00000004_G.png"]
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step_00000004"]
    assert (run / "generator" / "generator.safetensors").is_file()
    # the final summary says where every output landed, and how coherent 1,000 samples are
    lines = res.stdout.splitlines()
    start = lines.index(f"step 4: done; outputs in {run}")
    assert lines[start + 1 : start + 6] == [
        f"  samples: {run / 'samples' / 'step_00000004.png'} (fixed-noise grids)",
        f"  attention maps: {run / 'attention' / 'step_00000004_D.png'}, {run / 'attention' / 'step_00000004_G.png'} (G on generated, D on real images)",
        f"  metrics: {run / 'metrics.jsonl'} (one JSON object per log step)",
        f"  checkpoint: {run / 'checkpoints' / 'step_00000004'} (newest of the last 3 kept)",
        f"  generator export: {run / 'generator'} (generator.safetensors + config.json, for sample.py / evaluate.py)",
    ]
    score = float(lines[start + 6].split("coherence of 1000 samples: ")[1].split()[0])
    assert 0.0 <= score <= 1.0
    assert lines[start + 6].endswith("(real data 1.000, chance 0.012; docs/coherence.md)")


RECIPE = ["optim.n_dis=2", "optim.grad_accum=2", "model.num_classes=4"]
# ADA adjusts after D steps 3, 6, ...: the resume at step 2 cuts an interval in two, and step 4 leaves one open.
AUGMENTED = [
    "train.augment=color,translation,cutout",
    "train.ada_target=0.6",
    "train.ada_interval=3",
    "train.ada_speed_images=24",
    "optim.lecam=0.3",
]
# A local D (two blocks, a 1x1 extra block, its block at 8x8) with per-position logits (issue 25).
LOCAL_D = ["model.d_depth=1", "model.d_extra_blocks=1", "model.d_extra_kernel=1", "model.d_attention=[8]",
           "model.d_output=patch", "model.num_classes=4"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides, n",
    # fp16 starts at scale 2**16 and skips its first ~5 overflowing steps; the recipe does 4 D micro-steps a step
    [
        ([], 4),
        (["train.mixed_precision=fp16"], 7),
        (RECIPE, 3),
        (AUGMENTED, 4),
        (AUGMENTED[:1] + AUGMENTED[-1:], 3),
        (["optim.attn_lr_mult=10", "model.attn_gate=zero_init"], 3),
        (LOCAL_D, 3),
    ],
    ids=[
        "plain",
        "fp16",
        "ndis-accum-conditional",
        "augment-ada-lecam",
        "augment-p1-lecam",
        "attn-lr10-zero-gate",
        "local-patch-d",
    ],  # fmt: skip
)
def test_resume_is_exact(tmp_path, overrides, n):
    """n steps in one go == 2 steps, then --resume latest to n: every tensor and scaler bit for bit."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = ["--config", "configs/demo.yaml", *TINY, *overrides]
    assert train_cli.main([*common, "--run-dir", str(straight), f"train.steps={n}"]) == 0
    assert train_cli.main([*common, "--run-dir", str(split), "train.steps=2"]) == 0
    assert train_cli.main([*common, "--run-dir", str(split), f"train.steps={n}", "--resume", "latest"]) == 0
    a, b = tensors_of(latest_checkpoint(straight / "checkpoints")), tensors_of(latest_checkpoint(split / "checkpoints"))
    assert a.keys() == b.keys()
    # Adam moments exist only once a step was taken: under fp16 the first steps overflow and are skipped,
    # so this also shows the resumed loss scale (not a fresh 2**16) let the last step through.
    assert any(k.startswith("state/opt_g/") for k in a) and any("_u" in k for k in a)  # optimiser + SN vectors
    for key in a:
        assert torch.equal(a[key], b[key]), key
    state, _, step = load_checkpoint(latest_checkpoint(split / "checkpoints"))
    reference, _, _ = load_checkpoint(latest_checkpoint(straight / "checkpoints"))
    assert step == n and state["consumed"] == n * 4 * (2 * 2 if overrides == RECIPE else 1)
    assert (state["scaler_g"], state["scaler_d"]) == (reference["scaler_g"], reference["scaler_d"])
    if "train.mixed_precision=fp16" in overrides:  # both loss scalers are checkpointed, each with its own scale
        assert 0 < state["scaler_g"]["scale"] < 2.0**16 and 0 < state["scaler_d"]["scale"] < 2.0**16
    # metrics after the resume continue the same series
    rows = [json.loads(line) for line in (split / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss_d"] for r in rows] == [r["loss_d"] for r in ref]
    if overrides == AUGMENTED:  # ADA's state (with the open interval's sign sum) and the LeCam anchors resumed too
        assert (state["ada"], state["lecam"]) == (reference["ada"], reference["lecam"])
        assert state["lecam"]["updates"] == n and state["ada"][0]["steps"] == n and state["ada"][0]["count"] == 4
        assert [r["augment_p"] for r in rows] == [r["augment_p"] for r in ref]
        assert [r["lecam"] for r in rows] == [r["lecam"] for r in ref]


@pytest.mark.slow
def test_resume_refuses_a_different_model(tmp_path, capsys):
    run = tmp_path / "run"
    common = ["--config", "configs/demo.yaml", *TINY, "--run-dir", str(run)]
    assert train_cli.main([*common, "train.steps=1"]) == 0
    assert refused(capsys, *common, "train.steps=2", "model.g_width=32", "--resume", "latest") == [
        "error: the model config differs from the checkpoint's in g_width; resume with the same model"
    ]


@pytest.mark.slow
def test_progress_into_a_pipe_is_plain_lines_not_bar_redraws(tmp_path):
    """stderr is a pipe: 40 steps give 20 lines (one per 2 steps), no carriage return; the closing coherence
    line says how many samples it scored (TINY_RUN's 64)."""
    res = run_cli("train.py", "--config", "configs/demo.yaml", "--run-dir", str(tmp_path / "run"), *TINY,
                  "train.steps=40", "train.progress=true", "train.log_every=20")  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert "\r" not in res.stderr and "\r" not in res.stdout
    bar = [line for line in res.stderr.splitlines() if line.split(" ")[0].endswith("/40")]
    assert len(bar) == 20 and bar[-1].startswith("40/40 steps (100%) loss_d=")
    assert "  coherence of 64 samples: " in res.stdout


def test_the_closing_coherence_line_scores_summary_samples_and_zero_leaves_it_out(tmp_path, capsys):
    """TINY_RUN's 64 (the default, 1,000: test_cli_trains_and_writes_run_directory); 0: no line at all."""
    common = ["--config", "configs/demo.yaml", *TINY, "train.steps=1"]
    assert train_cli.main([*common, "--run-dir", str(tmp_path / "a")]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("  coherence of 64 samples: ")
    assert train_cli.main([*common, "--run-dir", str(tmp_path / "b"), "train.summary_samples=0"]) == 0
    out = capsys.readouterr().out
    assert "step 1: done; outputs in" in out and "coherence of" not in out


def test_resume_applies_a_changed_learning_rate_and_records_it(tmp_path, capsys):
    """--resume latest optim.lr_g=1e-5: the restored optimiser state carried the demo's 4e-4; the run trains at 1e-5
    (the checkpoint's param group, metrics.jsonl's lr_g) and config.yaml and resumes.jsonl say so."""
    run = tmp_path / "run"
    common = ["--config", "configs/demo.yaml", *TINY, "--run-dir", str(run)]
    assert train_cli.main([*common, "train.steps=2"]) == 0
    assert train_cli.main([*common, "train.steps=4", "optim.lr_g=1e-5", "--resume", "latest"]) == 0
    assert "changed on resume: optim.lr_g 0.0004 -> 1e-05, train.steps 2 -> 4" in capsys.readouterr().out
    state, cfg, step = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    assert step == 4 and cfg.optim.lr_g == 1e-5
    assert [g["lr"] for g in state["opt_g"]["param_groups"]] == [1e-5]
    assert [g["lr"] for g in state["opt_d"]["param_groups"]] == [4e-4]  # unchanged
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["lr_g"]) for r in rows] == [(2, 4e-4), (4, 1e-5)]
    assert "lr_g: 1.0e-05" in (run / "config.yaml").read_text()
    records = [json.loads(line) for line in (run / "resumes.jsonl").read_text().splitlines()]
    assert records == [{"step": 2, "checkpoint": str(run / "checkpoints" / "step_00000002"),
                        "changes": {"optim.lr_g": [4e-4, 1e-5], "train.steps": [2, 4]}}]  # fmt: skip


@pytest.mark.parametrize(
    "change, shown",
    [("train.batch_size=2", "train.batch_size (4 -> 2)"), ("optim.loss=nonsaturating",
     'optim.loss ("hinge" -> "nonsaturating")'), ("data.builtin_size=32", "data.builtin_size (64 -> 32)")],
)  # fmt: skip
def test_resume_refuses_a_key_that_fixes_the_run_in_one_line(tmp_path, capsys, change, shown):
    run = tmp_path / "run"
    common = ["--config", "configs/demo.yaml", *TINY, "--run-dir", str(run)]
    assert train_cli.main([*common, "train.steps=1"]) == 0
    config_before = (run / "config.yaml").read_text()
    assert refused(capsys, *common, "train.steps=2", change, "--resume", "latest") == [
        f"error: a resume cannot change {shown}: it fixes the data order, the objective or the state's layout "
        "(docs/training.md, Resume); resume with the checkpoint's value, or start a new run from its weights "
        "with --init-from"
    ]
    assert (run / "config.yaml").read_text() == config_before and not (run / "resumes.jsonl").exists()


@pytest.mark.slow
def test_resume_latest_without_checkpoint_is_one_line(tmp_path, capsys):
    lines = refused(capsys, "--config", "configs/demo.yaml", *TINY, "--run-dir", str(tmp_path / "none"), "--resume",
                    "latest")  # fmt: skip
    assert len(lines) == 1 and "no complete checkpoint" in lines[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["train.stepz=3"], "unknown config key 'train.stepz'; accepted: train.steps"),
        (["train.steps=many"], "config key 'train.steps' expects int, got 'many'"),
        (["train.summary_samples=-1"], "config key 'train.summary_samples' must be at least 0 (0: no closing score)"),
        (["model.attn_lab.pairwise=sine"], "config key 'model.attn_lab.pairwise' must be one of embedded_gaussian"),
        # a contradictory pair of block options, in the old flat spelling too: the config refuses it (one rule set)
        (["model.attn_pairwise=l2", "model.attn_logit_scale=inv_sqrt_d"], "config key 'model.attn_lab.logit_scale'"),
        (["model.attn_lab.pairwise=cosine", "model.attn_lab.temperature=0"], "temperature must be positive"),
        pytest.param(
            ["model.d_depth=1", "model.d_attention=[4]"],
            "config key 'model.d_attention' has side 4, which no block outputs at resolution 32; valid sides: 8, 16",
            marks=pytest.mark.slow,
        ),  # slow: it fails once D is built, after torch loads
        pytest.param(["data.dataset=cifar10", "data.root=/nonexistent"], "cifar-10-batches-py", marks=pytest.mark.slow),
    ],
)
def test_bad_input_fails_in_one_line(tmp_path, capsys, args, message):
    run = tmp_path / "run"
    lines = refused(capsys, "--config", "configs/demo.yaml", "--run-dir", str(run), *TINY, *args)
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (run / "checkpoints").exists()


def test_missing_config_file_and_bad_yaml(tmp_path):
    """The real process (exit status 2, one line on stderr), before torch loads: ~0.1 CPU-s each."""
    res = run_cli("train.py", "--config", str(tmp_path / "nope.yaml"))
    assert res.returncode == 2 and "does not exist" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  g_width: [\n")
    res = run_cli("train.py", "--config", str(bad))
    assert res.returncode == 2 and "not valid YAML" in res.stderr


@pytest.mark.slow
def test_sigterm_saves_a_final_checkpoint_and_names_it_and_the_exact_resume_command(tmp_path):
    run = tmp_path / "run"
    overrides = [*TINY, "train.steps=100000", "train.log_every=1"]
    proc = subprocess.Popen([sys.executable, "train.py", "--config", "configs/demo.yaml", "--run-dir", str(run),
                             *overrides], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 240
    while not (run / "metrics.jsonl").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err[-2000:]
    latest = latest_checkpoint(run / "checkpoints")
    assert latest is not None and list_checkpoints(run / "checkpoints")[-1] == latest
    state, _, step = load_checkpoint(latest)
    assert 1 <= step < 100000 and state["consumed"] == step * 4
    assert (run / "generator" / "config.json").is_file()
    # the last two lines name the step, the checkpoint and the command that continues the run
    lines = out.strip().splitlines()[-2:]
    assert lines[0] == (
        f"interrupted at step {step} of 100000: checkpoint saved in {latest}, generator in {run / 'generator'}"
    )
    assert lines[1].startswith("resume with: ")
    command = shlex.split(lines[1].removeprefix("resume with: "))
    assert (ROOT / command[0]).resolve() == Path(sys.executable).resolve()
    assert command[1:] == ["train.py", "--config", "configs/demo.yaml", "--run-dir", str(run), "--resume", "latest",
                           *overrides]  # fmt: skip


@pytest.mark.slow
def test_two_processes_under_accelerate_launch(tmp_path):
    """gloo on CPU: both replicas end with identical weights; only one process writes files."""
    run = tmp_path / "run"
    res = run_cli(
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "train.py",
        "--config",
        "configs/demo.yaml",
        "--run-dir",
        str(run),
        *TINY,
        "train.steps=3",
        timeout=400,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    state, _, step = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    assert step == 3 and state["world_size"] == 2 and state["consumed"] == 3 * 4 * 2
    a, b = state["replica_checksums"]
    assert a == b
    assert len(state["rng"]) == 2 and not torch.equal(state["rng"][0]["train"], state["rng"][1]["train"])
    rows = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [2, 3]  # written once, not once per process
    assert res.stdout.count("done; outputs in") == 1


@pytest.mark.slow
def test_evaluation_during_training_logs_scores_and_keeps_the_best(tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        train_cli.main(
            [
                "--config",
                "configs/demo.yaml",
                "--run-dir",
                str(run),
                *TINY,
                "train.steps=4",
                "eval.every=2",
                "eval.num_samples=16",
                "eval.batch_size=8",
                "eval.metrics=[fid]",
                "eval.feature_extractor=fashion_classifier",
                f"eval.cache_dir={tmp_path / 'cache'}",
                "train.keep_last=1",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.splitlines()[0] == (
        "note: eval.feature_extractor=fashion_classifier on 'builtin' data is out of domain: its scores are a generic "
        "distribution distance, not image quality (docs/metrics.md)"
    )  # allowed during training (the ablation's configs choose it on purpose), but said
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    scores = {r["step"]: r["frechet_classifier_distance"] for r in rows if "frechet_classifier_distance" in r}
    assert sorted(scores) == [2, 4] and all(v > 0 for v in scores.values())
    best_step = min(scores, key=scores.get)
    best, _, step = load_checkpoint(run / "checkpoints" / "best")
    assert step == best_step
    assert best["best"] == {"metric": "frechet_classifier_distance", "value": scores[best_step], "step": best_step}
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step_00000004"]  # best survives pruning
    final, _, _ = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    assert final["best"] == {"metric": "frechet_classifier_distance", "value": scores[best_step], "step": best_step}


# One short run per dataset kind, on small files in each real on-disk format (tests/shared.py).
@pytest.mark.slow
@pytest.mark.parametrize("name", ["cifar10", "fashion_mnist", "folder", "celeba"])
def test_trains_on_each_dataset_kind(tmp_path, dataset_on_disk, name):
    run = tmp_path / "run"
    extra = dataset_on_disk(name, tmp_path / "data")
    assert (
        train_cli.main(
            [
                "--config",
                "configs/demo.yaml",
                "--run-dir",
                str(run),
                *TINY,
                *extra,
                "train.steps=2",
                "train.sample_every=2",
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 2 and all(torch.isfinite(torch.tensor(rows[-1][k])) for k in ("loss_d", "loss_g"))
    assert (run / "samples" / "step_00000002.png").is_file()
