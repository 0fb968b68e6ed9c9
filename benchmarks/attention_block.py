"""Time and peak memory of one non-local block's forward + backward: explicit (Nq x N) matrix vs fused SDPA.

    python benchmarks/attention_block.py [--sizes 16 32 64 128] [--repeats 5] [--max-gib 12]
    python benchmarks/attention_block.py --grids 8x32x32 16x56x56 --subsample yes   # video: (T, H, W)
    python benchmarks/attention_block.py --device cuda --max-gib 100                # on a GPU

One `NonLocalBlock(256)` (embedded Gaussian, theta/phi 32 channels, g 128, spectral norm, training mode)
at batch 16 on 16x16 ... 64x64 maps and batch 8 on 128x128, with and without 2x2 subsampling of the keys.
`--grids` takes grids of any dimension instead (`TxHxW` gives a `dim=3` block, subsampled (1, 2, 2)) at
batch 1 unless `--batch` says otherwise.

- Time: both paths share weights and input and run interleaved in one fresh process per (grid, subsample):
  explicit, fused, explicit, fused, ... after one warm-up pair; the table gives each path's median and the
  median of the per-pair ratios fused / explicit.
- Peak memory: one fresh process per cell builds the block, the input and the output gradient, resets the
  kernel's resident high-water mark (/proc/self/clear_refs), runs ONE forward + backward and reads VmHWM -
  VmRSS: the resident memory that forward + backward needed on top of the module and its inputs, allocator
  behaviour included (what decides whether a run fits in RAM). No warm-up first: memory a warm-up freed but
  the allocator kept resident would be reused unseen. Per-process fixed costs (thread pools, kernel
  caches) are a few MiB, the same for both paths.
- A cell whose explicit peak is predicted above --max-gib (from the (HW x N) matrices it holds at once) is
  measured at two smaller batches and extrapolated linearly (peak is affine in the batch size); only the
  fused path is timed at the full batch, and an extra row compares both paths at the smaller batch.
- The SDPA kernel that runs is read from torch.profiler's op names in the fused forward + backward.
- `--device cuda`: the same cells on the GPU; times are synchronised before and after every call, and the
  peak is the CUDA memory allocated above the level at entry (torch.cuda.max_memory_allocated), not RSS.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch

from benchmarks.common import interleaved, median, mib, paired_ratio, peak_memory, run_child
from gan.attention import NonLocalBlock
from gan.cli import fail_cleanly
from gan.runtime import resolve_device
from tools.report import device_line, machine_line, table

CHANNELS = 256
MODULE = "benchmarks.attention_block"  # children run as `python -m` from the repository root


Grid = tuple[int, ...]  # (H, W) or (T, H, W); written "32x32", "8x32x32" on command lines


def parse_grid(text: str) -> Grid:
    """ "8x32x32" -> (8, 32, 32); a bare "64" is the 64x64 map (as the commands in docs/ were written)."""
    grid = tuple(int(n) for n in text.split("x"))
    return grid * 2 if len(grid) == 1 else grid


def label(grid: Grid) -> str:
    return "x".join(map(str, grid))


def batch_for(grid: Grid) -> int:
    return 1 if len(grid) == 3 else (16 if max(grid) <= 64 else 8)


def n_keys(grid: Grid, subsample: bool) -> int:
    """Keys after the block's default pooling: 2 per spatial axis (the last two), time unpooled."""
    return math.prod(math.ceil(n / 2) if subsample and a >= len(grid) - 2 else n for a, n in enumerate(grid))


def predicted_explicit_bytes(grid: Grid, subsample: bool, batch: int) -> int:
    """The explicit path holds at most about four (B, Nq, N) float32 matrices at once (logits, softmax,
    and in backward their two gradients)."""
    return 4 * batch * math.prod(grid) * n_keys(grid, subsample) * 4


def make(grid: Grid, subsample: bool, batch: int, seed: int = 0, device: str = "cpu"):
    """A block pair (explicit, fused) with equal weights, an input and an output gradient, on `device`
    (drawn on the CPU, so every device gets the same numbers)."""
    torch.manual_seed(seed)
    explicit = NonLocalBlock(CHANNELS, dim=len(grid), subsample=subsample, fused=False)
    fused = NonLocalBlock(CHANNELS, dim=len(grid), subsample=subsample, fused=True)
    fused.load_state_dict(explicit.state_dict())
    for block in (explicit, fused):
        block.gamma.data.fill_(0.5)  # a trained-looking gate, so the attention branch gets gradients
        block.to(device)
    x = torch.randn(batch, CHANNELS, *grid).to(device).requires_grad_()
    gz = torch.randn(batch, CHANNELS, *grid).to(device)
    return explicit, fused, x, gz


def step(block: NonLocalBlock, x: torch.Tensor, gz: torch.Tensor) -> None:
    """One forward + backward; gradients dropped afterwards so every call starts alike."""
    block(x).backward(gz)
    x.grad = None
    block.zero_grad(set_to_none=True)


def kernels(block: NonLocalBlock, x: torch.Tensor, gz: torch.Tensor) -> list[str]:
    """The attention-related aten ops that one forward + backward runs (forward and backward kernels)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step(block, x, gz)
    keep = ("scaled_dot_product", "flash", "efficient", "softmax", "bmm")
    return sorted({e.key for e in prof.key_averages() if any(k in e.key for k in keep) and e.key.startswith("aten::")})


# ----------------------------------------------------------------------------------------------
# Child processes


def child_memory(grid: Grid, subsample: bool, path: str, batch: int, device: str = "cpu") -> dict:
    explicit, fused, x, gz = make(grid, subsample, batch, device=device)
    block = fused if path == "fused" else explicit
    del explicit, fused
    with peak_memory(device) as peak:
        step(block, x, gz)
    return {"peak_bytes": peak.bytes, "exact": peak.exact}


def child_time(
    grid: Grid, subsample: bool, batch: int, repeats: int, with_explicit: bool = True, device: str = "cpu"
) -> dict:
    explicit, fused, x, gz = make(grid, subsample, batch, device=device)
    fns = {"explicit": lambda: step(explicit, x, gz), "fused": lambda: step(fused, x, gz)}
    if not with_explicit:
        del fns["explicit"]
    times = interleaved(fns, repeats)
    out = {"fused_s": median(times["fused"]), "repeats": repeats, "kernels_fused": kernels(fused, x, gz)}
    if with_explicit:
        out["explicit_s"] = median(times["explicit"])
        out["ratio"] = paired_ratio(times["fused"], times["explicit"])
        out["kernels_explicit"] = kernels(explicit, x, gz)
    return out


# ----------------------------------------------------------------------------------------------
# Parent


def child(args: list[str], device: str) -> dict | None:
    """One measurement in a fresh process on `device` (see run_child)."""
    return run_child(MODULE, [*args, "--device", device])


def memory(
    grid: Grid, subsample: bool, path: str, batch: int, max_bytes: float, device: str = "cpu"
) -> tuple[float | None, str]:
    """Peak bytes of one cell, measured, or extrapolated from two smaller batches when predicted too large."""
    if path == "fused" or predicted_explicit_bytes(grid, subsample, batch) <= max_bytes:
        out = child(["--child-memory", label(grid), str(int(subsample)), path, str(batch)], device)
        return (out["peak_bytes"], "") if out else (None, "failed (out of memory?)")
    small = batch
    while small > 1 and predicted_explicit_bytes(grid, subsample, small) > max_bytes:
        small //= 2
    if small < 2:
        return None, "skipped: even batch 2 predicted above the limit"
    points = {}
    for b in (small // 2, small):
        out = child(["--child-memory", label(grid), str(int(subsample)), path, str(b)], device)
        if out is None:
            return None, f"failed at batch {b}"
        points[b] = out["peak_bytes"]
    b1, b2 = small // 2, small
    slope = (points[b2] - points[b1]) / (b2 - b1)
    extrapolated = points[b2] + slope * (batch - b2)
    predicted = predicted_explicit_bytes(grid, subsample, batch) / 2**30
    note = (
        f"extrapolated from batches {b1}, {b2} ({mib(points[b1])}, {mib(points[b2])} MiB); "
        f"predicted {predicted:.0f} GiB > --max-gib"
    )
    return extrapolated, note


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64, 128], help="feature-map sides")
    parser.add_argument(
        "--grids", type=parse_grid, nargs="+", help="grids such as 8x32x32 (T, H, W), instead of --sizes"
    )
    parser.add_argument("--batch", type=int, help="batch for every row (default: 16 / 8 for maps, 1 for videos)")
    parser.add_argument(
        "--subsample", choices=("both", "yes", "no"), default="both", help="rows with pooled keys, unpooled, or both"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed forward+backward pairs per row")
    parser.add_argument("--max-gib", type=float, default=12.0, help="largest predicted explicit peak to run as is")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (every measurement runs there)")
    parser.add_argument("--child-memory", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--child-time", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_memory:
        grid, sub, path, batch = args.child_memory
        print(json.dumps(child_memory(parse_grid(grid), bool(int(sub)), path, int(batch), args.device)))
        return 0
    if args.child_time:
        grid, (sub, batch, repeats, with_explicit) = parse_grid(args.child_time[0]), map(int, args.child_time[1:])
        print(json.dumps(child_time(grid, bool(sub), batch, repeats, bool(with_explicit), args.device)))
        return 0

    with fail_cleanly():
        resolve_device(args.device)  # asking for CUDA without it: one line, before any child starts
    max_bytes = args.max_gib * 2**30
    grids = args.grids or [(size, size) for size in args.sizes]
    dims = sorted({len(grid) for grid in grids})
    print(f"machine: {machine_line()}\ndevice: {device_line(args.device)}")
    print(
        f"NonLocalBlock({CHANNELS}, dim={'/'.join(map(str, dims))}), forward + backward, float32; time: median of {args.repeats} interleaved pairs\n"
    )
    rows, seen_kernels = [], {}
    subsamples = {"both": (True, False), "yes": (True,), "no": (False,)}[args.subsample]
    for grid in grids:
        for subsample in subsamples:
            batch = args.batch or batch_for(grid)
            mem = {p: memory(grid, subsample, p, batch, max_bytes, args.device) for p in ("explicit", "fused")}
            explicit_fits = predicted_explicit_bytes(grid, subsample, batch) <= max_bytes
            time_batches = [batch]
            if not explicit_fits:  # add a row where both paths run
                time_batches.append(
                    max(b for b in (4, 2, 1) if predicted_explicit_bytes(grid, subsample, b) <= max_bytes)
                )
            for tb in time_batches:
                with_explicit = tb != batch or explicit_fits  # else: its time is the smaller-batch row's
                t = child(
                    [
                        "--child-time",
                        label(grid),
                        str(int(subsample)),
                        str(tb),
                        str(args.repeats),
                        str(int(with_explicit)),
                    ],
                    args.device,
                )
                if t and with_explicit:
                    seen_kernels[(grid, subsample)] = t
                if tb == batch:
                    (me, note_e), (mf, note_f) = mem["explicit"], mem["fused"]
                else:
                    me = child(["--child-memory", label(grid), str(int(subsample)), "explicit", str(tb)], args.device)
                    mf = child(["--child-memory", label(grid), str(int(subsample)), "fused", str(tb)], args.device)
                    me, mf = (me or {}).get("peak_bytes"), (mf or {}).get("peak_bytes")
                    note_e, note_f = "", ""
                rows.append(
                    [
                        label(grid),
                        "yes" if subsample else "no",
                        tb,
                        n_keys(grid, subsample),
                        f"{t['explicit_s'] * 1e3:,.1f}" if t and "explicit_s" in t else "-",
                        f"{t['fused_s'] * 1e3:,.1f}" if t else "-",
                        f"{t['ratio']:.2f}" if t and "ratio" in t else "-",
                        mib(me) if me is not None else "-",
                        mib(mf) if mf is not None else "-",
                        f"{mf / me:.3f}" if me and mf else "-",
                        "; ".join(n for n in (note_e, note_f) if n),
                    ]
                )
                print(f"  done {label(grid)} subsample={subsample} batch={tb}", file=sys.stderr)
    headers = [
        "map" if dims == [2] else "grid",
        "subsample",
        "batch",
        "keys N",
        "explicit ms",
        "fused ms",
        "time fused/explicit",
        "explicit peak MiB",
        "fused peak MiB",
        "memory fused/explicit",
        "note",
    ]
    print(table(headers, rows))
    print("\nKernels seen by torch.profiler in one forward + backward:")
    groups: dict[tuple, list[str]] = {}
    for (grid, subsample), t in seen_kernels.items():
        key = (tuple(t["kernels_fused"]), tuple(t["kernels_explicit"]))
        groups.setdefault(key, []).append(f"{label(grid)}{'' if subsample else ' no-subsample'}")
    for (fused_ops, explicit_ops), where in groups.items():
        print(f"- {', '.join(where)}:\n  fused: {', '.join(fused_ops)}\n  explicit: {', '.join(explicit_ops)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
