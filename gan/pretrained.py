"""Networks from and to files and the Hub, for any network class built as `cls(ModelConfig)`; no class is named here.

- `load_network(cls, path, network)`: `cls(config.model)` with the weights of `network` ("G" or "D") from a run
  directory, a training checkpoint, a generator export or a Hub id (gan.hub fetches it, gan.checkpoint reads
  it), in eval mode. `gan.models.load_generator` / `load_discriminator` are this with their class.
- `export_generator(path, generator, config)`: the export files (gan.checkpoint) and the model card (gan.hub).
- `PretrainedMixin`: huggingface_hub's `from_pretrained` / `save_pretrained` / `push_to_hub` in that export
  format. The generator class inherits it (as diffusers' models inherit `ModelMixin`), so the networks import
  this module and never the reverse: the mixin gets the class from `cls` and the rest from the instance.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from huggingface_hub import PyTorchModelHubMixin

from gan.checkpoint import EXPORT_FILES, CheckpointError, load_into, read_weights, write_export
from gan.config import Config, ModelConfig
from gan.hub import CARD_FILES, local_path, write_model_card

Network = TypeVar("Network", bound=torch.nn.Module)


def load_network(
    cls: Callable[[ModelConfig], Network],
    path: str | Path,
    network: str,
    *,
    use_ema: bool = True,
    map_location: str | torch.device = "cpu",
    say: Callable[[str], None] | None = None,
    **hub_kwargs: Any,
) -> tuple[Network, Config, int | None]:
    """(model in eval mode on `map_location`, its run Config, training step or None for an export).

    `path` is a local path or a Hub id (`hub_kwargs`: revision, cache_dir, force_download, local_files_only,
    token); see `gan.checkpoint.read_weights` for the local forms, `use_ema` and `say`. The model remembers
    the whole run config (`run_config`, which `save_pretrained` writes back), the step (`checkpoint_step`,
    which figure titles name) and an export's provenance (`source`, which the model card prints)."""
    weights = read_weights(local_path(path, **hub_kwargs), network, use_ema=use_ema, say=say)
    model = cls(weights.config.model)
    load_into(model, weights.state, weights.what, weights.where)
    model.run_config = weights.config
    model.checkpoint_step = weights.step
    model.source = weights.source  # an export's provenance; save_pretrained keeps it on the card
    return model.to(map_location).eval(), weights.config, weights.step


def export_generator(
    path: str | Path,
    generator: PretrainedMixin,
    config: Config,
    discriminator: torch.nn.Module | None = None,
    source: dict[str, Any] | None = None,
) -> Path:
    """A shareable generator as directory `path` (replaced whole): `generator.safetensors` and `config.json`,
    and the model card (README.md, samples.png) quoting the scores of `metrics.jsonl` beside `path`, if any.
    `discriminator` and `source` (provenance of weights not trained here) as in `gan.checkpoint.write_export`."""
    path = Path(path)
    card = functools.partial(
        write_model_card,
        generator=generator,
        config=config,
        counts=generator.card_parameter_counts(config.model),
        metrics_jsonl=path.parent / "metrics.jsonl",
        source=source,
    )  # written into the temporary folder: the export appears whole, card included, or not at all
    return write_export(path, generator, config, discriminator=discriminator, source=source, finish=card)


class PretrainedMixin(PyTorchModelHubMixin):
    """`from_pretrained(dir_or_repo_id)`, `save_pretrained(dir)` and `push_to_hub(repo_id)` in the generator
    export format, for a class built as `cls(model_config)` that keeps `model_config` and `run_config`."""

    model_config: ModelConfig
    run_config: Config | None  # the whole run config when loaded from a checkpoint; save_pretrained writes it
    source: dict[str, Any] | None  # an export's provenance (converted weights); save_pretrained keeps it

    def card_parameter_counts(self, model_config: ModelConfig) -> dict[str, int]:
        """The model card's parameter table: name -> parameters. This network's own; a class may add the
        networks trained with it (the generator adds its discriminator)."""
        return {type(self).__name__.lower(): sum(p.numel() for p in self.parameters())}

    def _save_pretrained(self, save_directory: Path) -> None:
        """Write `save_directory` as a generator export (replacing it whole) with its model card."""
        foreign = sorted(p.name for p in Path(save_directory).iterdir() if p.name not in EXPORT_FILES + CARD_FILES)
        if foreign:
            raise CheckpointError(
                f"{save_directory} holds other files ({', '.join(foreign[:3])}); save into a new directory"
            )
        config = self.run_config or Config(model=self.model_config)
        export_generator(save_directory, self, config, source=getattr(self, "source", None))

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        map_location: str | torch.device = "cpu",
        use_ema: bool = True,
        **hub_kwargs: Any,
    ) -> PretrainedMixin:
        """A local export / checkpoint / run directory, or a Hub repo's snapshot, read by `load_network`."""
        return load_network(cls, model_id, "G", use_ema=use_ema, map_location=map_location, **hub_kwargs)[0]
