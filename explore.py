"""Explore where a generator attends, in the browser: `python explore.py --checkpoint PATH [--port 7860]`.

PATH is a training checkpoint, a run directory (its latest checkpoint), a generator export or a Hugging
Face Hub repo id (owner/name). The page (gan/explorer.py) generates images by seed, class and truncation
exactly as `sample.py --seed S --num 1` does; a click on an image shows where that point attends in every
non-local block of G and, for a training checkpoint, of D. The server listens on 127.0.0.1 unless --host
says otherwise (0.0.0.0 exposes it to your network).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from gan.cli import fail_cleanly, run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint dir, run dir, generator export dir or Hub repo id")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on")
    p.add_argument("--no-ema", action="store_true", help="explore the raw generator instead of its EMA weights")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    args = p.parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry from a local tool
    with fail_cleanly():
        from gan.explorer import Explorer, build_app, load_models
        from gan.runtime import resolve_device

        models = load_models(args.checkpoint, use_ema=not args.no_ema, device=resolve_device(args.device))
        # SIGTERM stops the server as Ctrl+C does, through the `with`, which removes the explorer's folder.
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
        try:
            with Explorer(models) as explorer:
                app = build_app(explorer)
                print(f"explorer for {args.checkpoint} on http://{args.host}:{args.port} (Ctrl+C stops it)", flush=True)
                # quiet: Gradio's own lines repeat the URL above and suggest `share=True`, which no option here offers
                app.launch(server_name=args.host, server_port=args.port, share=False, show_error=True, quiet=True)
        finally:
            signal.signal(signal.SIGTERM, previous)
        return 0
    return 2


if __name__ == "__main__":
    run(main)
