"""evaluate.py end to end: the JSON object it prints and writes, and its one-line errors (status 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import evaluate
from gan.config import Config, ModelConfig
from gan.models import Generator
from gan.pretrained import export_generator

from shared import ROOT


@pytest.fixture
def export(tmp_path) -> Path:
    cfg = Config()
    cfg.model = ModelConfig(z_dim=16, g_width=16, g_attention=[], d_attention=[])
    cfg.data.builtin_size = 40
    torch.manual_seed(0)
    return export_generator(tmp_path / "export", Generator(cfg.model), cfg)


@pytest.mark.slow
def test_evaluate_cli_prints_and_writes_the_json_object(tmp_path, export):
    out = tmp_path / "eval" / "scores.json"
    command = [sys.executable, "evaluate.py", "--checkpoint", str(export), "--num", "32", "--metrics", "fid,kid",
               "--feature-extractor", "fashion_classifier", "--allow-out-of-domain", "--json", str(out),
               f"eval.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    written = json.loads(out.read_text())
    assert json.loads(proc.stdout) == written
    assert written["feature_extractor"] == "fashion_classifier" and written["num_samples"] == 32
    assert written["dataset"] == "builtin" and "frechet_inception_distance" not in written
    assert written["frechet_classifier_distance"] > 0 and np.isfinite(written["kernel_classifier_distance_mean"])


OUT_OF_DOMAIN = (
    "the fashion_classifier only reads Fashion-MNIST-like images, but this generator's dataset is 'builtin': use "
    "--feature-extractor inception, or pass --allow-out-of-domain for a generic distance"
)


@pytest.mark.parametrize(
    "args, words",
    [
        (["--checkpoint", "{tmp}/missing"], "does not exist"),
        (
            ["--checkpoint", "{export}", "--feature-extractor", "inception", "--inception-weights", "{tmp}/none.pth"],
            "Inception weights file",
        ),  # fmt: skip
        (["--checkpoint", "{export}", "--metrics", "fid,ppl"], "subset of fid, isc, kid"),
        (["--checkpoint", "{export}", "data.bogus=1"], "unknown config key"),
        (["--checkpoint", "{export}", "--feature-extractor", "fashion_classifier"], OUT_OF_DOMAIN),
    ],
)
def test_evaluate_cli_user_errors_are_one_line_with_status_2(tmp_path, export, capsys, args, words):
    argv = [a.format(tmp=tmp_path, export=export) for a in args]
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and words in err
