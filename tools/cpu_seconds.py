"""Record the CPU seconds of an experiment grid's processes while it runs (Linux: reads /proc).

    python -m tools.cpu_seconds --under OUT --out OUT/cpu_seconds.json &   # beside `experiments.ablation run --out OUT`

Every `interval` seconds it reads utime + stime of each `train.py --run-dir D` and each
`experiments.experiment evaluate D` process with D under `--under`, and writes {D: {"train": s, "evaluate": s}}
(atomically, keeping what the file already held). The last reading before a process exits is kept, so each
figure is low by at most one interval of one thread. `experiments.blind_d summarise --cpu-seconds` reads it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def read_processes(under: str) -> dict[str, dict[str, float]]:
    """{run_dir: {"train" or "evaluate": CPU seconds so far}} of the grid's live processes."""
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[str, dict[str, float]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = [c.decode() for c in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if c]
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended between listing and reading
            continue
        if "--run-dir" in cmd and any(c.endswith("train.py") for c in cmd):
            run_dir, kind = cmd[cmd.index("--run-dir") + 1], "train"
        elif "experiments.experiment" in cmd and "evaluate" in cmd:
            run_dir, kind = cmd[cmd.index("evaluate") + 1], "evaluate"
        else:
            continue
        if run_dir.startswith(under):
            found.setdefault(run_dir, {})[kind] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--under", required=True, help="record processes whose run directory starts with this")
    parser.add_argument("--out", required=True, type=Path, help="the JSON file to keep up to date")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between readings")
    args = parser.parse_args(argv)
    data = json.loads(args.out.read_text()) if args.out.is_file() else {}
    while True:
        for run_dir, kinds in read_processes(args.under).items():
            data.setdefault(run_dir, {}).update(kinds)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, args.out)
        time.sleep(args.interval)


if __name__ == "__main__":
    raise SystemExit(main())
