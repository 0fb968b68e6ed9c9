"""The benchmark scripts' variant definitions (each variant gets exactly the speed levers it names) and their
one-line errors for a missing GPU or a bad override.

(Timings are never asserted; only what is being compared.)
"""

import pytest
import torch

from benchmarks.train_throughput import COMMON, CONFIG, VARIANTS
from gan.config import load_config

EXPECTED = {  # variant -> (fused attention, channels_last, compile, precision)
    "baseline": (False, False, False, "no"),
    "fused": (True, False, False, "no"),
    "channels_last": (True, True, False, "no"),
    "bf16": (True, True, False, "bf16"),
    "compile": (True, True, True, "bf16"),
    "compile_fp32": (True, True, True, "no"),
    "bf16_nchw": (True, False, False, "bf16"),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_training_variants_get_exactly_their_levers(name):
    cfg = load_config(CONFIG, [*COMMON, *VARIANTS[name][1]])
    got = (cfg.model.attn_fused, cfg.train.channels_last, cfg.train.compile, cfg.train.mixed_precision)
    assert got == EXPECTED[name]
    assert cfg.train.batch_size == 64 and cfg.model.g_width == 256 and cfg.model.d_width == 128  # the CIFAR-10 model


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a machine without CUDA gives")
@pytest.mark.parametrize("module", ["train_throughput", "attention_block"])
def test_cuda_without_cuda_is_one_line(module, capsys):
    import importlib

    main = importlib.import_module(f"benchmarks.{module}").main
    with pytest.raises(SystemExit) as exit_:
        main(["--device", "cuda"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "error: device 'cuda' requested but CUDA is not available; use cpu\n"


def test_throughput_config_overrides_are_checked_first(capsys):
    from benchmarks.train_throughput import main

    with pytest.raises(SystemExit) as exit_:
        main(["model.no_such_key=1", "--variants", "baseline"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "model.no_such_key" in err
