"""gan/divergence.py: non-finite losses are folded on the device and caught at a check; a state about to be
written is refused when any tensor is non-finite; fp16 loss-scaler skips are not a divergence."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from accelerate import Accelerator

from gan.checkpoint import save_checkpoint
from gan.config import load_config
from gan.divergence import DivergenceError, FiniteWatch, advice, nonfinite
from gan.step import build_parts, train_step
from gan.tracking import RunLog

from shared import TINY_MODEL

NAN, INF = float("nan"), float("inf")


def _stats(loss_d: float, loss_g: float) -> dict[str, torch.Tensor]:
    return {"loss_d": torch.tensor(loss_d), "loss_g": torch.tensor(loss_g), "d_real": torch.tensor(NAN)}


def test_finite_steps_pass_and_a_nan_between_checks_is_caught_at_the_next_with_the_range():
    watch = FiniteWatch(torch.device("cpu"))
    for _ in range(3):  # steps 1-3
        watch.fold(_stats(1.0, -0.5))
    watch.check(3)  # d_real is not a loss: its NaN is no divergence
    assert watch.checked == 3
    watch.fold(_stats(1.0, -0.5))  # step 4
    watch.fold(_stats(1.0, INF))  # step 5: G's loss overflows
    watch.fold(_stats(1.0, -0.5))  # step 6: a finite value does not clear the flag
    with pytest.raises(DivergenceError) as exc:
        watch.check(6, tail=lambda: "TAIL")
    assert str(exc.value) == "training diverged in steps 4-6 (checked every few): loss_g went non-finite; TAIL"


def test_a_state_with_a_non_finite_tensor_is_refused_and_names_it():
    state = {"G": {"w": torch.ones(3)}, "opt_d": {"state": [{"exp_avg_sq": torch.tensor([1.0, INF])}]},
             "rng": torch.zeros(5, dtype=torch.uint8), "step": 3}  # fmt: skip
    assert nonfinite(state) == ["opt_d.state[0].exp_avg_sq"]
    assert nonfinite({"G": {"w": torch.ones(3)}}) == []
    watch = FiniteWatch(torch.device("cpu"))
    watch.checked = 7
    with pytest.raises(DivergenceError, match=r"^training diverged in step 8: weight opt_d.state\[0\].exp_avg_sq "):
        watch.check(8, state)


def test_advice_names_the_last_all_finite_checkpoint_and_an_exact_resume_command(tmp_path):
    cfg = load_config(None, ["optim.lr_g=2e-4", "optim.lr_d=1e-3", "train.mixed_precision=bf16"])
    for step, value in ((4, 1.0), (6, NAN)):  # step 6: a non-finite checkpoint, as older code could leave
        state = {"G": {"w": torch.full((3,), value)}, "consumed": step}
        save_checkpoint(tmp_path, state, step=step, config=cfg, keep_last=0)
    cmd = "python train.py --config c.yaml --run-dir r --resume latest optim.lr_g=2e-4"
    assert advice(tmp_path, cfg, cmd) == (
        f"nothing non-finite was written; the last checkpoint, all finite, is {tmp_path}/step_00000004; try lower "
        f"learning rates and float32: python train.py --config c.yaml --run-dir r --resume {tmp_path}/step_00000004 "
        "optim.lr_g=2e-4 optim.lr_g=2e-05 optim.lr_d=0.0001 train.mixed_precision=no"
    )
    assert advice(tmp_path / "none", load_config(None, []), cmd).endswith(
        "try lower learning rates: python train.py --config c.yaml --run-dir r --overwrite optim.lr_g=2e-4 "
        "optim.lr_g=1e-05 optim.lr_d=4e-05"
    )


def test_fp16_loss_scaler_skips_are_not_a_divergence():
    """fp16 autocast runs on CPU here. A loss scale of 2**127 overflows every scaled gradient: the scaler skips
    each step (the weights stay as they were, the scale halves), the losses stay finite, and no check fails."""
    cfg = load_config(None, [*TINY_MODEL, "train.batch_size=2", "train.mixed_precision=fp16", "model.d_attention=[]"])
    accelerator = Accelerator(cpu=True)
    parts = build_parts(cfg, accelerator)
    for scaler in (parts.scaler_d, parts.scaler_g):
        scaler.load_state_dict({**scaler.state_dict(), "scale": 2.0**127})
    before = [p.detach().clone() for p in parts.G_raw.parameters()]
    g = torch.Generator().manual_seed(0)
    batches = itertools.repeat((torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, torch.zeros(2, dtype=torch.long)))
    watch = FiniteWatch(accelerator.device)
    for step in (1, 2):
        stats, _ = train_step(parts, cfg, batches, accelerator, step)
        watch.fold(stats)
    assert parts.scaler_g.get_scale() == 2.0**125 and parts.scaler_d.get_scale() == 2.0**125  # two skips each
    assert all(torch.equal(a, b) for a, b in zip(before, parts.G_raw.parameters()))  # skipped: G unchanged
    watch.check(2, {"G": parts.G_raw.state_dict(), "opt_g": parts.opt_g.state_dict()})
    assert watch.checked == 2


def _strict(line: str) -> dict:
    def refuse(name: str):
        raise ValueError(f"not JSON: {name}")

    return json.loads(line, parse_constant=refuse)


def test_metrics_jsonl_is_strict_json_with_null_for_non_finite_values(tmp_path):
    log = RunLog(tmp_path, Accelerator(cpu=True))
    log.write(1, {"loss_d": 1.5, "loss_g": NAN, "d_real": INF, "d_fake": -INF, "lr_g": 1e-4})
    with pytest.raises(ValueError, match="not JSON: NaN"):
        _strict(json.dumps({"x": NAN}))  # the parser does refuse what json.dumps writes by default
    record = _strict((tmp_path / "metrics.jsonl").read_text())
    assert {k: record[k] for k in ("step", "loss_d", "loss_g", "d_real", "d_fake", "lr_g")} == {
        "step": 1,
        "loss_d": 1.5,
        "loss_g": None,
        "d_real": None,
        "d_fake": None,
        "lr_g": 1e-4,
    }
    assert math.isfinite(record["time"])
