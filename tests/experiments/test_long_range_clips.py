"""The temporal long-range probe: the clip data's guarantees, the 3D ladder's temporal field, the script end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from scipy.stats import ks_2samp

from experiments import long_range_clips as clips_probe
from experiments import long_range_data, long_range_model, long_range_training
from experiments.clips import CoherentClips
from gan.synthetic import FOREGROUND_THRESHOLD

T = 8


def _stack(data: CoherentClips, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([data[i][0] for i in range(n)]), torch.stack([data.incoherent(i)[0] for i in range(n)])


def test_clip_is_a_pure_function_of_seed_and_index() -> None:
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    a, b = CoherentClips(50, seed=3), CoherentClips(50, seed=3)
    x, label = a[17]
    _ = a[5], a.incoherent(17)
    assert x.shape == (3, T, 32, 32) and x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1
    assert torch.equal(b[17][0], x) and b[17][1] == label and 0 <= label < 4
    assert torch.equal(a[-1][0], a[49][0])
    assert not torch.equal(CoherentClips(50, seed=4)[17][0], x) and not torch.equal(a[18][0], x)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert all(np.array_equal(u, v) for u, v in zip(np.random.get_state(), np_state))
    for bad in ({"size": 0}, {"size": 2, "frames": 1}, {"size": 2, "resolution": 8}, {"size": 2, "channels": 2}):
        with pytest.raises(ValueError, match="CoherentClips"):
            CoherentClips(**bad)
    with pytest.raises(IndexError):
        a[50]


def test_last_frame_repeats_the_first_and_the_incoherent_version_changes_only_its_object() -> None:
    coh, inc = _stack(CoherentClips(40, seed=7), 40)
    assert torch.equal(coh[:, :, 0], coh[:, :, -1])  # coherent: the same object, pixel for pixel
    assert torch.equal(coh[:, :, :-1], inc[:, :, :-1])  # frames 0..T-2 untouched
    fg = lambda x: x.amax(1) > FOREGROUND_THRESHOLD  # noqa: E731  (B, H, W)
    first, last_coh, last_inc = coh[:, :, 0], coh[:, :, -1], inc[:, :, -1]
    differs = (last_coh != last_inc).any(1)
    assert not (differs & ~(fg(last_coh) | fg(last_inc))).any()  # only object pixels change: the same background
    assert differs.flatten(1).any(1).all()  # the redrawn object differs in every clip here
    # the middle frames hold no object, only the background and the moving distractor square
    assert (coh[:, :, 1:-1].amax(1) <= FOREGROUND_THRESHOLD).all()
    moved = (coh[:, :, 1:-1] != first.unsqueeze(2)).any(1)  # (B, T-2, H, W): where a middle frame differs
    assert moved.flatten(2).any(2).float().mean() > 0.9  # the distractor is visible (it may overlap the object)
    assert fg(first).flatten(1).sum(1).min() >= 0.5 * 7 * 7 * 0.5  # frame 0 always shows an object


def _object_stats(frame: torch.Tensor) -> np.ndarray:
    """(top row, left column, area, mean of each channel) of the foreground of frames (B, C, H, W)."""
    fg = frame.amax(1) > FOREGROUND_THRESHOLD  # (B, H, W)
    rows = fg.any(2).float().argmax(1)
    cols = fg.any(1).float().argmax(1)
    area = fg.flatten(1).sum(1).float()
    colour = (frame * fg[:, None]).sum((2, 3)) / area[:, None]
    return torch.cat([torch.stack([rows, cols, area], 1), colour], 1).numpy()


def test_every_frame_has_the_same_distribution_in_both_classes_and_only_the_relation_differs() -> None:
    n = 600
    coh, inc = _stack(CoherentClips(n, seed=11), n)
    first, last_coh, last_inc = (_object_stats(x) for x in (coh[:, :, 0], coh[:, :, -1], inc[:, :, -1]))
    # The last frame alone: whole-frame mean and variance and every object attribute have the same
    # distribution in both classes (two-sample Kolmogorov-Smirnov, p > 0.001) ...
    for stat in (lambda x: x.mean((1, 2, 3)), lambda x: x.var((1, 2, 3))):
        assert ks_2samp(stat(coh[:, :, -1]).numpy(), stat(inc[:, :, -1]).numpy()).pvalue > 1e-3
    for k in range(first.shape[1]):
        assert ks_2samp(last_coh[:, k], last_inc[:, k]).pvalue > 1e-3
        # ... while its tie to frame 0 is exact in coherent clips and absent in incoherent ones
        np.testing.assert_array_equal(last_coh[:, k], first[:, k])
        assert abs(np.corrcoef(first[:, k], last_inc[:, k])[0, 1]) < 0.15  # 3.7 standard errors at n = 600


def test_a_model_seeing_one_frame_at_a_time_stays_at_chance_where_both_ends_together_learn() -> None:
    """The same small 2D probe and budget on the last frame alone (the only frame that differs; frames
    0..T-2 are identical within a pair) and on frames 0 and T-1 stacked as 6 channels."""
    train, test = clips_probe.clip_pairs(1, 256), clips_probe.clip_pairs(2, 200)
    views = {"last": lambda x: x[:, :, -1], "both ends": lambda x: torch.cat([x[:, :, 0], x[:, :, -1]], 1)}
    acc = {}
    for name, view in views.items():
        torch.manual_seed(0)
        model = long_range_model.Probe(0, width=8, channels=3 if name == "last" else 6)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        x, y = view(train[0]), train[1]
        for step in range(60):
            k = torch.randint(len(x), (32,), generator=torch.Generator().manual_seed(step))
            loss = F.binary_cross_entropy_with_logits(model(x[k]), y[k])
            opt.zero_grad()
            loss.backward()
            opt.step()
        acc[name] = long_range_training.accuracy(model, view(test[0]), test[1])
    assert abs(acc["last"] - 0.5) < 3 * 0.5 / 400**0.5  # within 3 binomial standard errors of chance
    assert acc["both ends"] > 0.8  # the budget suffices once one model sees both ends


def _hand_count(depth: int, w: int, attention: bool) -> int:
    stem = (3 * w * 9 + w) + (w * w * 9 + w) + (3 * w + w)  # DBlockOptimized: conv3x3, conv3x3, 1x1 shortcut
    block = (w * w * 27 + w) + (w * w * 9 + w) + (w * w + w)  # conv3x3x3, conv1x3x3, 1x1x1 shortcut
    attn = 2 * w * (w // 8) + w * (w // 2) + (w // 2) * w + 1  # theta, phi, g, out (no bias), gamma
    return stem + depth * block + (w + 1) + (attn if attention else 0)


@pytest.mark.parametrize("depth", [0, 2])
@pytest.mark.parametrize("attention", [None, {}])
def test_clip_probe_shapes_and_parameter_count(depth: int, attention: dict | None) -> None:
    torch.manual_seed(0)
    model = clips_probe.ClipProbe(depth, width=16, attention=attention)
    x = torch.randn(2, 3, T, 32, 32)
    side = 32 // 2 ** (depth + 1)
    assert model.trunk(x).shape == (2, 16, T, side, side) and model(x).shape == (2,)
    assert sum(p.numel() for p in model.parameters()) == _hand_count(depth, 16, attention is not None)


def _frames_reached(model: torch.nn.Module, out_frame: int) -> list[int]:
    """Input frames with a non-zero gradient of the trunk's output frame `out_frame` (summed over space)."""
    x = torch.randn(2, 3, T, 32, 32, requires_grad=True)
    model.trunk(x)[:, :, out_frame].sum().backward()
    return x.grad.abs().sum((0, 1, 3, 4)).nonzero().flatten().tolist()


@pytest.mark.parametrize("depth", [0, 1, 2, 3, 4])
def test_temporal_field_is_one_plus_two_per_block(depth: int) -> None:
    assert clips_probe.temporal_rf(depth) == 1 + 2 * depth  # by hand: one 3-tap temporal conv per block
    torch.manual_seed(0)
    model = clips_probe.ClipProbe(depth, width=8)
    assert _frames_reached(model, 3) == list(range(max(0, 3 - depth), min(T, 4 + depth)))
    # some output frame relates frame 0 to frame T-1 exactly when 1 + 2 depth >= T
    spans = any({0, T - 1} <= set(_frames_reached(model, t)) for t in (3, 4))
    assert spans == (depth >= 4)


@pytest.mark.parametrize("depth", [0, 1, 2, 3])
def test_time_ladder_doubles_the_temporal_field_and_keeps_the_map(depth: int) -> None:
    reach = 2**depth - 1  # by hand: block i's taps at t - 2^i, t, t + 2^i; 1 + 2 + ... + 2^(depth-1) each side
    assert clips_probe.temporal_rf(depth, "time") == 1 + 2 * reach
    torch.manual_seed(0)
    model = clips_probe.ClipProbe(depth, width=8, ladder="time")
    assert model.trunk(torch.randn(1, 3, T, 32, 32)).shape == (1, 8, T, 16, 16)  # space never pooled
    # which input frames reach output frame 3: dilated taps skip frames, so the set is computed by hand
    reached = {3}
    for i in range(depth):
        reached = {t + o for t in reached for o in (-(2**i), 0, 2**i) if 0 <= t + o < T}
    assert _frames_reached(model, 3) == sorted(reached)
    # depth 2 reaches 3 frames each side (7 in all): no unit sees frames 0 and T-1; depth 3 reaches 7
    spans = any({0, T - 1} <= set(_frames_reached(model, t)) for t in range(T))
    assert spans == (depth >= 3)
    params = sum(p.numel() for p in model.parameters())
    assert params == _hand_count(depth, 8, False)  # dilation and no pooling change no parameter count


def test_unknown_ladder_or_pool_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match="ladder must be one of"):
        clips_probe.ClipProbe(1, width=8, ladder="spiral")
    with pytest.raises(ValueError, match="pool must be one of"):
        clips_probe.ClipProbe(1, width=8, pool="max")


def test_mean_read_out_is_the_sum_read_out_over_the_number_of_positions() -> None:
    torch.manual_seed(0)
    summed = clips_probe.ClipProbe(2, width=8, ladder="time").eval()  # eval: spectral norm's vectors stay put
    meaned = clips_probe.ClipProbe(2, width=8, ladder="time", pool="mean").eval()
    meaned.load_state_dict(summed.state_dict())
    x = torch.randn(3, 3, T, 32, 32)
    bias = summed.head.bias.detach()
    n = T * 16 * 16  # the time ladder's positions: 8 frames of 16x16
    torch.testing.assert_close((meaned(x) - bias) * n, summed(x) - bias, rtol=1e-4, atol=1e-3)


def test_space_time_attention_reaches_the_last_frame_once_its_gate_is_open() -> None:
    torch.manual_seed(0)
    model = clips_probe.ClipProbe(1, width=8, attention={})
    assert _frames_reached(model, 0) == [0, 1]  # gamma = 0: the block is the identity
    model.attention.gamma.data.fill_(0.5)
    assert _frames_reached(model, 0) == list(range(T))  # every position depends on every other


def test_script_end_to_end(tmp_path, capsys) -> None:
    out, plot = tmp_path / "runs", tmp_path / "clips.png"
    common = ["--out", str(out), "--plot", str(plot), "--seeds", "0"]
    tiny = ["--steps", "3", "--batch", "4", "--train-pairs", "4", "--test-pairs", "6", "--log-every", "2"]
    clips_probe.main(["run", "--arms", "conv", "attn_zero_init", "--depths", "0", "1", *common, *tiny])
    result = json.loads((out / "t8" / "attn_zero_init" / "depth1" / "seed0.json").read_text())
    assert result["params"] == _hand_count(1, 8, True) - 1  # the zero-initialised gate has no gamma
    assert result["temporal_rf"] == 3 and result["settings"]["steps"] == 3
    assert [e["step"] for e in result["log"]] == [1, 2] and "out_weight_norm" in result["log"][0]
    assert 0.0 <= result["test_acc"] <= 1.0 and (result["test_acc"] * 12) % 1 == 0  # 12 test clips
    capsys.readouterr()
    clips_probe.main(["report", *common])
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith("| `")]
    table = rows[:4]  # the main table: one row per (arm, depth)
    assert [r.split(" | ")[:2] for r in table] == [
        ["| `conv`", "0"],
        ["| `conv`", "1"],
        ["| `attn_zero_init`", "0"],
        ["| `attn_zero_init`", "1"],
    ]
    assert (
        f"| `attn_zero_init` | 1 | {_hand_count(1, 8, True) - 1:,} | 3 | {result['test_acc']:.3f} (1 seed) |" in printed
    )
    assert "| `attn_zero_init` depth 1 | `conv` depth 1 |" in printed and "no verdict (one seed)" in printed
    assert plot.stat().st_size > 0 and (tmp_path / "block_opening_t8.png").stat().st_size > 0
    # the trained block's attention from frame 0's object, per temporal key slot: 4 shares summing to 1, twice
    table = printed.split("Where frame 0's object looks")[1]
    row = next(line for line in table.splitlines() if line.startswith("| `attn_zero_init` | 1 | 0 | "))
    shares = [[float(v) for v in cell.split(", ")] for cell in row.strip("| ").split(" | ")[3:]]
    assert [len(c) for c in shares] == [4, 4] and all(abs(sum(c) - 1) < 0.01 for c in shares)


def test_fresh_stream_never_repeats_a_clip_and_is_the_same_for_every_run(tmp_path) -> None:
    batch = clips_probe.clip_stream(seed=7, half=2, steps=3, frames=4, resolution=16)
    again = clips_probe.clip_stream(seed=7, half=2, steps=3, frames=4, resolution=16)
    data = CoherentClips(6, 16, 4, seed=7)
    seen = []
    for step in (1, 2, 3):
        x, y = batch(step)
        assert x.shape == (4, 3, 4, 16, 16) and y.tolist() == [1.0, 1.0, 0.0, 0.0]
        assert torch.equal(x, again(step)[0])
        for j, i in enumerate((2 * step - 2, 2 * step - 1)):  # clips 2(s-1), 2(s-1)+1 and their incoherent versions
            assert torch.equal(x[j], data[i][0]) and torch.equal(x[2 + j], data.incoherent(i)[0])
        seen += list(x[:2])
    assert all(not torch.equal(a, b) for k, a in enumerate(seen) for b in seen[k + 1 :])
    out = tmp_path / "runs"
    tiny = ["--steps", "2", "--batch", "4", "--test-pairs", "4", "--log-every", "1", "--fresh"]
    clips_probe.main(["run", "--arms", "conv", "--depths", "1", "--seeds", "0", "--out", str(out), *tiny])
    result = json.loads((out / "t8" / "conv" / "depth1" / "seed0.json").read_text())
    assert result["settings"]["fresh"] is True and [e["step"] for e in result["log"]] == [1, 2]


def test_time_ladder_end_to_end_is_kept_apart_from_the_space_ladder(tmp_path, capsys) -> None:
    out = tmp_path / "runs"
    tiny = ["--steps", "2", "--batch", "4", "--test-pairs", "4", "--log-every", "1", "--fresh", "--seeds", "0"]
    common = ["--out", str(out), "--plot", str(tmp_path / "clips.png")]
    clips_probe.main(["run", "--arms", "conv", "--depths", "3", "--ladder", "time", *common, *tiny])
    result = json.loads((out / "t8-time" / "conv" / "depth3" / "seed0.json").read_text())
    assert result["settings"]["ladder"] == "time" and result["temporal_rf"] == 15
    weights = load_file(out / "t8-time" / "conv" / "depth3" / "seed0.safetensors")  # the trained model, reloadable
    model = clips_probe.ClipProbe(3, width=8, ladder="time")
    model.load_state_dict(weights)  # kept in training mode: the same power iterations as the run's own evaluation
    assert (
        long_range_training.accuracy(model, *clips_probe.clip_pairs(long_range_data.TEST_SEED, 4)) == result["test_acc"]
    )
    assert not (out / "t8").exists()  # the space ladder's results stay where the first design wrote them
    capsys.readouterr()
    clips_probe.main(["report", "--ladder", "time", *common])
    assert (
        f"| `conv` | 3 | {_hand_count(3, 8, False):,} | 15 | {result['test_acc']:.3f} (1 seed) |"
        in capsys.readouterr().out
    )
    clips_probe.main(["run", "--arms", "conv", "--depths", "3", "--ladder", "time", "--pool", "mean", *common, *tiny])
    meaned = json.loads((out / "t8-time-mean" / "conv" / "depth3" / "seed0.json").read_text())
    assert meaned["settings"]["pool"] == "mean" and meaned["log"][0]["loss"] < result["log"][0]["loss"]


def test_first_object_cells_find_frame_zeros_object_and_nothing_else() -> None:
    data = CoherentClips(6, 32, T, seed=3)
    x = torch.stack([data[i][0] for i in range(6)] + [data.incoherent(i)[0] for i in range(6)])
    pixels = clips_probe.first_object_cells(x, cell=1)  # (12, 32, 32)
    for i in range(12):
        on = pixels[i]
        assert 7 * 7 // 2 <= int(on.sum()) <= 10 * 10  # one object of side 7-10 px (a triangle or cross fills less)
        # everywhere else frame 0 is the static background: frame 1 where frame 1 shows no distractor (grey >= 0.25)
        background = ~on & (x[i, :, 1].amax(0) < 0.25 * 2 - 1)
        assert torch.equal(x[i, :, 0][:, background], x[i, :, 1][:, background])
        if i < 6:  # coherent: frame 7 repeats the object
            assert torch.equal(x[i, :, 0][:, on], x[i, :, T - 1][:, on])
    assert torch.equal(pixels[:6], pixels[6:])  # frame 0 is the same in a clip and its incoherent version
    cells = clips_probe.first_object_cells(x)  # (12, 16, 16): a 2x2 cell counts when any of its pixels does
    assert torch.equal(cells, F.max_pool2d(pixels.float().unsqueeze(1), 2).squeeze(1) > 0)


def test_frame_attention_reads_the_slots_of_frame_zeros_object_queries() -> None:
    torch.manual_seed(0)
    model = clips_probe.ClipProbe(2, width=8, attention=clips_probe.ARMS["attn_zero_init"]["attention"], ladder="time")
    x, _ = clips_probe.clip_pairs(long_range_data.TEST_SEED, 3)
    mass = clips_probe.frame_attention(model, x)  # (6, 4): 8 frames in key slots of 2, the trained-free block
    assert mass.shape == (6, 4)
    torch.testing.assert_close(mass.sum(1), torch.ones(6))
    # hand-made weights: uniform over the 256 keys -> 1/4 per slot
    model.attention._weights = lambda q, k, bias=None: torch.full((q.shape[0], q.shape[1], k.shape[1]), 1 / k.shape[1])
    torch.testing.assert_close(clips_probe.frame_attention(model, x), torch.full((6, 4), 0.25))
    # frame 0's object cells look at slot 3 (frames 6-7), every other query at slot 0 (or 1 for frame 0's background)
    cells = clips_probe.first_object_cells(x)  # (6, 16, 16)

    def weights(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        target = torch.zeros(q.shape[0], T, 16, 16, dtype=torch.long)  # slot per query
        target[:, 0] = torch.where(cells, 3, 1)
        onehot = F.one_hot(target.flatten(1), 4).float()  # (B, Nq, 4)
        return onehot.repeat_interleave(k.shape[1] // 4, dim=2) / (k.shape[1] // 4)  # (B, Nq, N)

    model.attention._weights = weights
    torch.testing.assert_close(clips_probe.frame_attention(model, x), torch.tensor([[0.0, 0, 0, 1]]).expand(6, 4))


def test_the_three_levers_run_at_the_decisive_depth_and_record_where_frame_zero_looks(tmp_path, capsys) -> None:
    """Issue 33 part 3's arms (the 10x block rate, cosine with 4 query/key channels, the zero-initialised gate; and
    1-channel cosine) are the image probe's, keys pooled (2, 2, 2); each run's summary keeps its frame attention,
    which the report prints without weights."""
    for arm, options in (
        ("attn_lr10", {}),
        ("attn_cosine_qk4", {"pairwise": "cosine", "qk_channels": 4}),
        ("attn_zero_init", {"gate": "zero_init"}),
        ("attn_cosine", {"pairwise": "cosine"}),
    ):
        assert clips_probe.ARMS[arm]["attention"] == {**options, "pool": (2, 2, 2)}
        assert clips_probe.ARMS[arm].get("attn_lr_mult", 1.0) == long_range_model.ARMS[arm].get("attn_lr_mult", 1.0)
    assert clips_probe.ARMS["attn_lr10"]["attn_lr_mult"] == 10.0
    out = tmp_path / "runs"
    tiny = ["--steps", "2", "--batch", "4", "--test-pairs", "3", "--log-every", "1", "--fresh", "--seeds", "0"]
    common = ["--ladder", "time", "--pool", "mean", "--out", str(out), "--plot", str(tmp_path / "clips.png")]
    clips_probe.main(["run", "--arms", "conv", "attn_cosine", "--depths", "2", *common, *tiny])
    path = out / "t8-time-mean" / "attn_cosine" / "depth2" / "seed0.json"
    result = json.loads(path.read_text())
    model = clips_probe.ClipProbe(
        2, 8, attention=clips_probe.ARMS["attn_cosine"]["attention"], ladder="time", pool="mean"
    )
    model.load_state_dict(load_file(path.with_suffix(".safetensors")))
    mass = clips_probe.frame_attention(model.eval(), clips_probe.clip_pairs(long_range_data.TEST_SEED, 3)[0])
    torch.testing.assert_close(torch.tensor(result["frame_attention"]["coherent"]), mass[:3].mean(0))
    torch.testing.assert_close(torch.tensor(result["frame_attention"]["incoherent"]), mass[3:].mean(0))
    path.with_suffix(".safetensors").unlink()  # the report reads the summary's shares
    capsys.readouterr()
    clips_probe.main(["report", *common, "--test-pairs", "3"])
    printed = capsys.readouterr().out
    fmt = ", ".join(f"{v:.3f}" for v in result["frame_attention"]["coherent"])
    assert f"| `attn_cosine` | 2 | 0 | {fmt} |" in printed
    conv = json.loads((out / "t8-time-mean" / "conv" / "depth2" / "seed0.json").read_text())["test_acc"]
    threshold = conv + 2 * 0.5 / 6**0.5  # one conv seed: the binomial term at 6 test clips
    learns = int(result["test_acc"] > threshold)
    assert f"| `attn_cosine` depth 2 | `conv` depth 2 | {threshold:.3f} | {learns} of 1 |" in printed


def test_own_block_stream_keeps_the_conv_arms_trunk_and_has_its_own_folder(tmp_path) -> None:
    """--block-init own: at seed s every lever trains on the conv arm's stem, ladder and head (paired seeds); the
    default (shared) draws the block between the stem and the ladder, as the first clip runs did."""

    def build(arm: str, block_init: str) -> dict:
        torch.manual_seed(4)
        spec = clips_probe.ARMS[arm]["attention"]
        seed = long_range_model.block_seed(4, block_init)
        return clips_probe.ClipProbe(2, 8, attention=spec, ladder="time", pool="mean", block_seed=seed).state_dict()

    conv = build("conv", "own")
    for arm in ("attn_lr10", "attn_cosine", "attn_zero_init"):
        own = build(arm, "own")
        assert all(torch.equal(conv[k], own[k]) for k in conv)
        assert not all(torch.equal(conv[k], v) for k, v in build(arm, "shared").items() if k in conv)
    out = tmp_path / "runs"
    tiny = ["--steps", "1", "--batch", "4", "--test-pairs", "2", "--log-every", "1", "--fresh", "--seeds", "0"]
    clips_probe.main(
        ["run", "--arms", "conv", "--depths", "1", "--ladder", "time", "--block-init", "own", "--out", str(out), *tiny]
    )
    result = json.loads((out / "t8-time-owninit" / "conv" / "depth1" / "seed0.json").read_text())
    assert result["settings"]["block_init"] == "own"


def test_the_uniform_control_averages_every_key_and_has_attn_cosines_parameters() -> None:
    # attn_uniform: cosine logits at t = 1e-6, so each query's weights are 1/N to about 1e-6 whatever the clip;
    # attn_cosine at its default t = 8 on the same block is not uniform on the same clips
    torch.manual_seed(0)
    x = torch.randn(2, 8, T, 16, 16)
    uniform = clips_probe.ClipProbe(2, width=8, attention=clips_probe.ARMS["attn_uniform"]["attention"],
                                    ladder="time", block_seed=7)  # fmt: skip
    cosine = clips_probe.ClipProbe(2, width=8, attention=clips_probe.ARMS["attn_cosine_qk4"]["attention"],
                                   ladder="time", block_seed=7)  # fmt: skip
    same = clips_probe.ClipProbe(2, width=8, attention=clips_probe.ARMS["attn_cosine"]["attention"], ladder="time",
                                 block_seed=7)  # fmt: skip
    assert {k: v.shape for k, v in uniform.state_dict().items()} == {k: v.shape for k, v in same.state_dict().items()}
    _, w = uniform.attention(x, return_attention=True)
    n = w.shape[-1]
    assert n == (T // 2) * 8 * 8  # keys pooled (2, 2, 2) from the 8 x 16 x 16 grid
    torch.testing.assert_close(w, torch.full_like(w, 1.0 / n), rtol=0, atol=1e-8)
    _, w = cosine.attention(x, return_attention=True)
    assert (w.max(-1).values * n).min() > 1.5  # t = 8 with 4 query/key channels: far from uniform
