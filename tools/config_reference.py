"""Rewrite the block of docs/configuration.md with what `python train.py --help-config` prints.

python tools/config_reference.py           # after adding or changing a config key
python tools/config_reference.py --check   # exit 1 if the page is stale (what tests/gan/test_config.py asserts)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "configuration.md"


def help_config() -> str:
    train = ROOT / "train.py"
    return subprocess.run(
        [sys.executable, str(train), "--help-config"], check=True, capture_output=True, text=True
    ).stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say whether the page is current")
    args = parser.parse_args(argv)
    page = PAGE.read_text()
    head, rest = page.split("```text\n", 1)
    tail = rest.split("```", 1)[1]
    new = f"{head}```text\n{help_config()}```{tail}"
    if new == page:
        print(f"{PAGE.name} is current")
        return 0
    if args.check:
        print(f"{PAGE.name} is stale: run python tools/config_reference.py", file=sys.stderr)
        return 1
    PAGE.write_text(new)
    print(f"rewrote the key list in {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
