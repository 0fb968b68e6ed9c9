"""Generators on the Hugging Face Hub: Hub ids as checkpoints, and the model card written with every export.

A Hub repository holds exactly a generator export (gan/checkpoint.py): `generator.safetensors` and
`config.json`, plus this module's `README.md` card and `samples.png`. Hub ids are fetched into the usual
Hub cache (`HF_HUB_CACHE`, `HF_HUB_OFFLINE=1` reads only the cache) and then read by the same local loader
as any export, so every check that loader makes applies to downloads too.

This module knows files (gan.checkpoint) and draws images (gan.sampling), but no network class: the card's
parameter counts come from the caller (gan.pretrained), so the networks' mixin can use it.
huggingface_hub is imported inside the functions: reading a local checkpoint never loads it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gan.checkpoint import EXPORT_FILES
from gan.config import Config, to_dict
from gan.errors import UserError
from gan.files import write_text

if TYPE_CHECKING:
    import torch

CARD_FILES = ("README.md", "samples.png")  # the model card, written beside them on every export
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")  # owner/name, as the Hub spells them
# Keys of evaluation scores in metrics.jsonl (gan.metrics): FID/KID distances and IS-style scores.
_SCORE_KEY = re.compile(r"(distance|score)(_mean|_std)?$")
CARD_SAMPLES = 16  # images in the card's sample grid (seed 0)


class HubError(UserError, ValueError):
    """A Hub id that cannot be fetched; one line that says what to do."""


def is_hub_id(checkpoint: str | Path) -> bool:
    """True when `checkpoint` is no existing path and looks like `owner/name`; local paths always win."""
    text = str(checkpoint)
    return not Path(text).exists() and _HUB_ID.match(text) is not None and ".." not in text


def local_path(checkpoint: str | Path, **hub_kwargs: Any) -> Path:
    """The local directory to load: `checkpoint` itself, or a Hub id's snapshot in the Hub cache.

    Only the export files are fetched (`snapshot_download`, which reuses the cache and, offline, reads it
    alone; `hub_kwargs` such as revision, cache_dir or token go to it). Anything that is not a Hub id
    comes back unchanged for the local loader to judge.
    """
    if not is_hub_id(checkpoint):
        return Path(checkpoint)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    repo_id = str(checkpoint)
    try:
        return Path(snapshot_download(repo_id, allow_patterns=list(EXPORT_FILES), **hub_kwargs))
    except (LocalEntryNotFoundError, RepositoryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        if isinstance(exc, LocalEntryNotFoundError):
            reason = "not in the Hub cache, and downloads are switched off (HF_HUB_OFFLINE) or failed"
        else:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise HubError(
            f"checkpoint {repo_id} is no local path and could not be fetched from the Hugging Face Hub ({reason}); "
            "check the path or the repo id, your connection, or HF_HUB_OFFLINE / HF_HUB_CACHE"
        ) from None


# ----------------------------------------------------------------------------------------------
# Model card


def evaluation_scores(metrics_jsonl: Path) -> list[dict[str, Any]]:
    """The evaluation lines of a run's metrics.jsonl ({"step": ..., score: value, ...}), oldest first."""
    if not metrics_jsonl.is_file():
        return []
    found = []
    for line in metrics_jsonl.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash; the others still count
        scores = {k: v for k, v in entry.items() if isinstance(k, str) and _SCORE_KEY.search(k)}
        if scores and "step" in entry:
            found.append({"step": entry["step"], **scores})
    return found


def model_card(
    config: Config, counts: dict[str, int], scores: list[dict[str, Any]], source: dict[str, Any] | None = None
) -> str:
    """README.md text: Hub metadata, how to load, parameter counts, evaluation scores, samples, config.

    `source` says where weights come from that this repository did not train (convert.py writes it into the
    export's config.json): {"summary": the title's phrase instead of "trained on <data.dataset>",
    "about": a paragraph, "files": {source file name: its SHA-256}}; the card prints it under "Source"."""
    m = config.model
    kind = f"class-conditional ({m.num_classes} classes)" if m.num_classes else "unconditional"
    origin = source["summary"] if source else f"trained on {config.data.dataset}"
    lines = [
        "---",
        "library_name: sagan",
        "pipeline_tag: unconditional-image-generation",
        "tags: [gan, sagan, self-attention, pytorch_model_hub_mixin]",
        "---",
        f"# SAGAN generator: {m.resolution}x{m.resolution}, {kind}, {origin}",
        "",
        "A self-attention GAN generator (non-local blocks at sides "
        f"{m.g_attention or 'none'} in G, {m.d_attention or 'none'} in D) in this repository's export format: "
        "`generator.safetensors` and `config.json`, loaded without running code.",
        "",
        *(_source_lines(source) if source else []),
        "```bash",
        "python sample.py --checkpoint OWNER/NAME --num 16 --seed 0 --grid samples.png",
        "python explore.py --checkpoint OWNER/NAME   # the attention explorer, on http://127.0.0.1:7860",
        "```",
        "```python",
        "from gan.models import Generator",
        'G = Generator.from_pretrained("OWNER/NAME")   # or a local export directory',
        "```",
        "",
        "## Parameters",
        "",
        "| network | parameters |",
        "|---|---|",
        *(f"| {name} | {n:,} |" for name, n in counts.items()),
        "",
        "## Evaluation",
        "",
    ]
    if scores:
        keys = sorted({k for s in scores for k in s if k != "step"})
        lines += ["| step | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        lines += ["| " + " | ".join([str(s["step"])] + [_number(s.get(k)) for k in keys]) + " |" for s in scores]
        lines += ["", f"Scores use the `{config.eval.feature_extractor}` features (docs/metrics.md)."]
    else:
        lines.append("No evaluation was recorded for this run (metrics.jsonl has no scores).")
    lines += [
        "",
        "## Samples",
        "",
        f"![samples](samples.png): `python sample.py --checkpoint OWNER/NAME --num {CARD_SAMPLES} --seed 0`.",
        "",
        "## Config",
        "",
        "```json",
        json.dumps(to_dict(config), indent=1),
        "```",
        "",
    ]
    return "\n".join(lines)


def _source_lines(source: dict[str, Any]) -> list[str]:
    files = source.get("files") or {}
    lines = ["## Source", "", source.get("about", source["summary"]), ""]
    if files:
        lines += [
            "| source file | SHA-256 |",
            "|---|---|",
            *(f"| {name} | `{sha}` |" for name, sha in files.items()),
            "",
        ]
    return lines


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else ""


def write_model_card(
    path: Path,
    generator: torch.nn.Module,
    config: Config,
    counts: dict[str, int],
    metrics_jsonl: Path | None,
    source: dict[str, Any] | None = None,
) -> None:
    """README.md (with `counts`, the parameter table's rows) and samples.png (`sample.py --num 16 --seed 0`)
    into the export directory `path`; `source` as in `model_card`."""
    from gan.grids import save_image_grid
    from gan.sampling import sample_images

    save_image_grid(sample_images(generator, CARD_SAMPLES, seed=0), path / "samples.png")
    scores = evaluation_scores(metrics_jsonl) if metrics_jsonl is not None else []
    text = model_card(config, counts, scores, source)
    write_text(path / "README.md", text)
