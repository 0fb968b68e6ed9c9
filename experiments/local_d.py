"""Sizing and diagnosing the local discriminator of issue 25 (docs/local_d.md), on one CPU thread.

    python -m experiments.local_d cost  --out docs/local_d/step_cost.json
    python -m experiments.local_d judge RUN_DIR/generator --out docs/local_d/judge.json

`cost`: CPU seconds per training step (`gan.step.train_step`, built as training builds it; median of 20 steps
after 2 warm-up steps) of the 64x64 pilot's models, G width 8 without attention, D cut to two blocks plus a
1x1 block (16-px field, per-position logits), D width 8 and 16, without a non-local block and with one at the
32x32 or the 16x16 stage. Real images are one fixed batch of the built-in data (the loader is not timed).

`judge`: can the local D learn to tell real images from a fixed set of a trained G's samples, without G
moving? A fresh D per variant (sum or patch output, spectral norm on or off, D learning rate) trains 150 hinge
steps (Adam 0 / 0.9, batch 16 + 16, 512 images of each kind) and is scored on 128 held-out images of each:
the per-image AUC of real against fake and the gap of the mean logits.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

PILOT_D = ["model.resolution=64", "model.image_channels=1", "model.d_depth=1", "model.d_extra_blocks=1",
           "model.d_extra_kernel=1"]  # fmt: skip
JUDGES = [  # name, overrides, D learning rate
    ("patch-sn", ["model.d_output=patch"], 2e-4),
    ("sum-sn", ["model.d_output=sum"], 2e-4),
    ("patch-nosn", ["model.d_output=patch", "model.d_spectral_norm=false"], 2e-4),
    ("patch-sn-lr1e-3", ["model.d_output=patch"], 1e-3),
]


def step_cost() -> list[dict]:
    from accelerate import Accelerator

    from gan.config import load_config
    from gan.step import build_parts, train_step
    from gan.synthetic import CoherenceDataset

    common = [*PILOT_D, "model.g_width=8", "model.g_attention=[]", "train.batch_size=16", "model.d_output=patch"]
    data = CoherenceDataset(64, 64, 1)
    x = torch.stack([data[i][0] for i in range(16)])
    y = torch.tensor([data[i][1] for i in range(16)])
    acc = Accelerator(cpu=True)
    rows = []
    for width in (8, 16):
        for attn in ("[]", "[32]", "[16]"):
            overrides = [*common, f"model.d_width={width}", f"model.d_attention={attn}"]
            cfg = load_config("configs/ablation_coherence.yaml", overrides)
            parts = build_parts(cfg, acc)
            batches = iter(lambda: (x, y), None)
            times = []
            for step in range(1, 23):
                t0 = time.process_time()
                train_step(parts, cfg, batches, acc, step)
                times.append(time.process_time() - t0)
            timed = sorted(times[2:])
            row = {"d_width": width, "d_attention": attn, "median_cpu_s_per_step": timed[len(timed) // 2],
                   "summary": parts.D_raw.summary()}  # fmt: skip
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def judge(generator_dir: Path) -> list[dict]:
    from experiments.mismatch import rank_auc
    from gan.config import load_config
    from gan.losses import d_hinge
    from gan.models import Discriminator, load_generator
    from gan.synthetic import CoherenceDataset

    G, _ = load_generator(generator_dir)
    torch.manual_seed(0)
    with torch.no_grad():
        y = torch.randint(4, (640,))
        fakes = torch.cat([G(torch.randn(128, G.z_dim), y[i : i + 128]) for i in range(0, 640, 128)])
    data = CoherenceDataset(640, 64, 1, seed=7)
    real = torch.stack([data[i][0] for i in range(640)])
    ry = torch.tensor([data[i][1] for i in range(640)])
    te = slice(512, 640)
    base = [*PILOT_D, "model.num_classes=4", "model.d_width=16", "model.d_attention=[]"]
    rows = []
    for name, extra, lr in JUDGES:
        cfg = load_config(None, base + extra).model
        torch.manual_seed(1)
        D = Discriminator(cfg)
        opt = torch.optim.Adam(D.parameters(), lr=lr, betas=(0.0, 0.9))
        t0 = time.process_time()
        g = torch.Generator().manual_seed(2)
        for _ in range(150):
            i = torch.randint(512, (16,), generator=g)
            out = D(torch.cat([real[i], fakes[i]]), torch.cat([ry[i], y[i]]))
            loss = d_hinge(out[:16], out[16:])
            opt.zero_grad()
            loss.backward()
            opt.step()
        D.eval()
        with torch.no_grad():
            sr, sf = D(real[te], ry[te]), D(fakes[te], y[te])  # (B,): a patch D's mean over positions
        row = {"d": name, "lr_d": lr, "loss_last": round(loss.item(), 3), "auc_real_vs_fake": round(rank_auc(sr, sf), 3),
               "gap": round((sr.mean() - sf.mean()).item(), 3), "cpu_s": round(time.process_time() - t0, 1)}  # fmt: skip
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("cost", help="CPU seconds per step of the pilot's models").add_argument("--out", required=True)
    p_judge = sub.add_parser("judge", help="train fresh local Ds on real images vs a G's fixed samples")
    p_judge.add_argument("generator", help="a generator export (RUN_DIR/generator)")
    p_judge.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = step_cost() if args.command == "cost" else judge(Path(args.generator))
    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
