"""The benchmark scripts' variant definitions: each variant gets exactly the speed levers it names.

(Timings are never asserted; only what is being compared.)
"""

import pytest

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
