"""The screenshot of the attention explorer in docs/explorer_and_hub.md, taken in headless system Chromium.

    python tools/explorer_screenshot.py --checkpoint runs/demo --out docs/explorer.png [--seed 0 --row 8 --col 24]

Serves the page on 127.0.0.1, clicks image pixel (--row, --col), waits for the attention panel to follow
and saves the top of the page (1280x1000) as PNG.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", default="docs/explorer.png")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--row", type=int, default=8)
    p.add_argument("--col", type=int, default=24)
    args = p.parse_args(argv)

    from playwright.sync_api import sync_playwright

    from gan.explorer import HEADLESS_CHROMIUM_ARGS, Explorer, load_models, serve_in_background

    chromium = shutil.which("chromium")
    if chromium is None:
        print("error: no system Chromium; apt-get install chromium", file=sys.stderr)
        return 2
    explorer = Explorer(load_models(args.checkpoint))
    side = explorer.models.config.model.resolution
    with serve_in_background(explorer) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=list(HEADLESS_CHROMIUM_ARGS))
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        page.locator("#image img").wait_for(state="visible", timeout=120_000)
        page.get_by_label("seed", exact=True).fill(str(args.seed))
        page.get_by_role("button", name="Generate").click()
        page.wait_for_timeout(3000)
        before = page.locator("#attention img").get_attribute("src")
        box = page.locator("#image img").bounding_box()
        s = box["width"] / side
        page.locator("#image img").click(position={"x": (args.col + 0.5) * s, "y": (args.row + 0.5) * s})
        page.wait_for_function("b => document.querySelector('#attention img')?.src !== b", arg=before, timeout=120_000)
        page.wait_for_timeout(1000)
        page.screenshot(path=args.out)  # the viewport: controls, image, figure, table
        browser.close()
    print(f"screenshot: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
