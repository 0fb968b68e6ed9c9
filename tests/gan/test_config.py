"""Config: defaults, YAML deltas with `base:`, overrides, one-line errors, round trips, shipped files."""

import re
from pathlib import Path

import pytest

from gan.config import (
    Config,
    ConfigError,
    describe,
    from_dict,
    leaves,
    load_config,
    parse_overrides,
    save_config,
    to_dict,
)

from shared import ROOT

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_defaults_and_overrides_with_yaml_values():
    cfg = load_config(
        None,
        [
            "train.steps=7",
            "optim.lr_g=1e-3",
            "model.g_attention=[8, 16]",
            "log.tags=[a, b]",
            "train.channels_last=true",
            "optim.beta2=0",  # an int
        ],
    )
    assert cfg.train.steps == 7 and cfg.optim.lr_g == 1e-3
    assert cfg.model.g_attention == [8, 16] and cfg.log.tags == ["a", "b"]
    assert cfg.train.channels_last is True
    assert cfg.optim.beta2 == 0.0 and isinstance(cfg.optim.beta2, float)  # ints widen to floats
    assert load_config().train.steps == Config().train.steps


def test_yaml_booleans_read_back_as_their_choice(tmp_path):
    # YAML 1.1 turns `no` into False; for a string key with a "no" choice that means "no", on the command
    # line and in a file alike. A string key without such a choice still rejects a boolean.
    assert load_config(None, ["train.mixed_precision=bf16", "train.mixed_precision=no"]).train.mixed_precision == "no"
    (tmp_path / "c.yaml").write_text("train:\n  mixed_precision: no\n")
    assert load_config(tmp_path / "c.yaml").train.mixed_precision == "no"
    with pytest.raises(ConfigError, match="config key 'train.mixed_precision' expects str, got True"):
        load_config(None, ["train.mixed_precision=yes"])
    with pytest.raises(ConfigError, match="config key 'data.root' expects str, got False"):
        load_config(None, ["data.root=no"])


def test_parse_overrides_nests_and_rejects_malformed_words():
    assert parse_overrides(["a.b=1", "a.c=x", "d=[1]"]) == {"a": {"b": 1, "c": "x"}, "d": [1]}
    with pytest.raises(ConfigError, match="not of the form key.sub=value"):
        parse_overrides(["train.steps"])


@pytest.mark.parametrize(
    "words, message",
    [
        (["train.stepz=1"], "unknown config key 'train.stepz'; accepted: train.steps, train.batch_size"),
        (["trian.steps=1"], "unknown config key 'trian'; accepted: model, data, optim, train, eval, log"),
        (["train.steps=1.5"], "config key 'train.steps' expects int, got 1.5"),
        (["train.steps=true"], "config key 'train.steps' expects int, got True"),
        (["train.channels_last=1"], "config key 'train.channels_last' expects bool, got 1"),
        (["model.g_attention=16"], "config key 'model.g_attention' expects a list of int, got 16"),
        (["model.g_attention=[a]"], "config key 'model.g_attention[0]' expects int, got 'a'"),
        (["data.dataset=imagenet"], "config key 'data.dataset' must be one of builtin, cifar10, celeba"),
        (["model.resolution=48"], "config key 'model.resolution' must be one of 32, 64, 128; got 48"),
        (["train=3"], "config key 'train' is a section; give it a mapping of steps, batch_size"),
        (["model.g_attention=[12]"], "attention resolution 12 is not a feature-map side of a 32x32 model"),
        (["train.batch_size=0"], "config key 'train.batch_size' must be at least 1"),
        (["optim.ema_decay=1.0"], "config key 'optim.ema_decay' must be in [0, 1)"),
        (
            ["train.augment=color,flip"],
            "config key 'train.augment' accepts a comma list of color, translation, cutout (empty: none); got 'flip'",
        ),
        (["train.ada_target=1.5"], "config key 'train.ada_target' must be in [0, 1]"),
        (["optim.lecam=-1"], "config key 'optim.lecam' must be at least 0 (0: off); got -1.0"),
        (["data.subset=-5"], "config key 'data.subset' must be at least 0 (0: every image); got -5"),
        (["eval.metrics=[fid, pr]"], "config key 'eval.metrics' accepts fid, isc, kid, prc, copy, coherence; got 'pr'"),
    ],
)
def test_errors_are_one_line_naming_the_key(words, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, words)
    text = str(info.value)
    assert message in text and "\n" not in text


def test_yaml_delta_and_base_chain(tmp_path):
    (tmp_path / "a.yaml").write_text("model:\n  g_width: 32\ntrain:\n  steps: 5\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\ntrain:\n  steps: 9\n")
    cfg = load_config(tmp_path / "b.yaml", ["train.seed=3"])
    assert (cfg.model.g_width, cfg.train.steps, cfg.train.seed) == (32, 9, 3)
    assert cfg.model.d_width == Config().model.d_width  # untouched keys keep defaults


def test_yaml_file_errors(tmp_path):
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="names itself as a base"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "key.yaml").write_text("model:\n  widht: 3\n")
    with pytest.raises(ConfigError, match="unknown config key 'model.widht'"):
        load_config(tmp_path / "key.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_round_trip_through_yaml_and_dict(tmp_path):
    cfg = load_config(None, ["model.num_classes=10", "log.tags=[x]", "optim.lr_d=0.0003"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert to_dict(again) == to_dict(cfg)
    assert to_dict(from_dict(to_dict(cfg))) == to_dict(cfg)


def test_describe_lists_every_key_with_a_meaning():
    lines = describe().splitlines()
    keys = [line.split(" = ")[0] for line in lines]

    def flat(d: dict, prefix: str = "") -> list[str]:  # nested sections (model.attn_lab) one key a line
        return [
            k
            for name, v in d.items()
            for k in (flat(v, f"{prefix}{name}.") if isinstance(v, dict) else [prefix + name])
        ]

    assert keys == flat(to_dict(Config()))
    assert "model.attn_lab.pairwise" in keys
    assert all(line.split(": ", 1)[1].strip() for line in lines)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path):
    cfg = load_config(path)
    if path.stem.endswith("_noattn"):
        twin = load_config(path.with_name(path.stem.removesuffix("_noattn") + ".yaml"))
        assert cfg.model.g_attention == [] and cfg.model.d_attention == []
        cfg.model.g_attention, cfg.model.d_attention = twin.model.g_attention, twin.model.d_attention
        assert to_dict(cfg) == to_dict(twin)  # the twin differs in attention only


def test_cifar10_config_is_the_public_sagan32_recipe():
    cfg = load_config(Path(CONFIGS[0]).parent / "cifar10.yaml")
    m, o = cfg.model, cfg.optim
    assert (m.g_width, m.d_width, m.num_classes, m.g_attention, m.d_attention) == (256, 128, 10, [16], [16])
    assert (o.loss, o.lr_g, o.lr_d, o.beta1, o.beta2) == ("hinge", 1e-4, 4e-4, 0.0, 0.9)
    assert m.g_spectral_norm and m.d_spectral_norm and cfg.train.batch_size == 64 and o.ema_decay > 0


def test_docs_config_reference_is_exactly_the_help_config_output(capsys):
    import train

    assert train.main(["--help-config"]) == 0
    printed = capsys.readouterr().out
    page = (ROOT / "docs" / "configuration.md").read_text()
    block = page.split("```text\n", 1)[1].split("```", 1)[0]
    assert block == printed, "docs/configuration.md is stale: run `python tools/config_reference.py`"
    assert len(block.splitlines()) == len(describe().splitlines())  # every key, one line each
    assert "[configuration reference](configuration.md)" in (ROOT / "docs" / "README.md").read_text()


@pytest.mark.parametrize(
    "overrides, key",
    [
        (
            ["model.attn_lab.logit_scale=inv_sqrt_d", "model.attn_lab.pairwise=dot_product"],
            "model.attn_lab.logit_scale",
        ),
        (["model.attn_lab.gamma_init=0.1", "model.attn_gate=zero_init"], "model.attn_lab.gamma_init"),
        (["model.attn_lab.pairwise=l2", "model.attn_lab.logit_scale=inv_sqrt_d"], "model.attn_lab.logit_scale"),
    ],
)
def test_attention_levers_that_do_not_fit_are_one_line_errors(overrides, key):
    with pytest.raises(ConfigError, match=key) as exc:
        load_config(None, overrides)
    assert "\n" not in str(exc.value)


def test_choice_lists_are_written_once():
    """The config offers the very tuples that the implementing modules check against."""
    import dataclasses

    from gan import attention, choices, registry
    from gan.config import AttnLabConfig, DataConfig, ModelConfig

    classes = (ModelConfig, AttnLabConfig, DataConfig)
    choice = {f.name: f.metadata.get("choices") for cls in classes for f in dataclasses.fields(cls)}
    assert choice["pairwise"] is choices.PAIRWISE is attention.PAIRWISE
    assert choice["attn_gate"] is choices.GATES is attention.GATES
    assert choice["logit_scale"] is choices.LOGIT_SCALES is attention.LOGIT_SCALES
    assert choice["dataset"] == tuple(registry.DATASETS)
    with pytest.raises(ConfigError, match="accepts " + ", ".join(registry.METRICS)):
        load_config(None, ["eval.metrics=[nope]"])


def test_augment_policy_names_are_gan_augments():
    from gan.augment import POLICIES
    from gan.config import AUGMENT_POLICIES

    assert AUGMENT_POLICIES == tuple(POLICIES)


# ----------------------------------------------------------------------------------------------
# Every typed key, walked at run time, with values outside its domain

# What a message says is allowed: a range, a choice, a type, or (the block options' rules, gan/attention_rules.py)
# what the key needs or which setting takes none.
RANGE = r"(at least -?\d|in [\[(]|one of|finite|expects|accepts|feature-map side|needs|steers|must be|takes none)"
# Keys whose domain a type or choice list is all of (any text; any bool), or whose rules live with the
# attention options (model.attn_*: a real gamma start, a temperature checked there).
FREE_TEXT = {"data.root", "eval.inception_weights", "eval.cache_dir", "log.project", "log.entity", "log.run_name",
             "train.augment"}  # fmt: skip


def _typed_keys(cls: type = Config, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted key, type) of every field found at run time, nested sections (model.attn_lab) flattened."""
    import dataclasses
    import typing

    keys: list[tuple[str, object]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        nested = isinstance(tp, type) and dataclasses.is_dataclass(tp)
        keys += _typed_keys(tp, f"{prefix}{f.name}.") if nested else [(f"{prefix}{f.name}", tp)]
    return keys


def _bad_values(key: str, tp: object) -> list[object]:
    """Values outside every key's domain: negative numbers (nothing counts below zero), non-finite floats,
    a word where a bool, list or choice is expected."""
    import typing

    base = typing.get_args(tp)[0] if typing.get_origin(tp) is not None and type(None) in typing.get_args(tp) else tp
    if base is bool:
        return ["maybe"]
    if base is int:
        return [-1]
    if base is float:
        return [float("nan"), float("inf")] + ([] if key == "model.attn_lab.gamma_init" else [-1.0])
    if typing.get_origin(base) is list:
        return [5, [-1] if typing.get_args(base)[0] is int else ["nope"] if key == "eval.metrics" else [5]]
    return [["a", "list"]] + ([] if key in FREE_TEXT else ["nonsense"])


@pytest.mark.parametrize("key, tp", _typed_keys(), ids=[k for k, _ in _typed_keys()])
def test_every_key_refuses_values_outside_its_domain_in_one_line(key, tp):
    for value in _bad_values(key, tp):
        *sections, name = key.split(".")
        delta: dict = {name: value}
        for section in reversed(sections):
            delta = {section: delta}
        with pytest.raises(ConfigError) as exc:
            from_dict(delta)
        text = str(exc.value)
        assert f"'{key}" in text and "\n" not in text and re.search(RANGE, text), (value, text)


@pytest.mark.parametrize(
    "words, message",
    [
        (["optim.lr_g=0"], "config key 'optim.lr_g' must be in (0, inf); got 0.0"),
        (["optim.lr_d=-1e-4"], "config key 'optim.lr_d' must be in (0, inf); got -0.0001"),
        (["optim.beta1=1"], "config key 'optim.beta1' must be in [0, 1); got 1.0"),
        (["optim.beta2=-0.1"], "config key 'optim.beta2' must be in [0, 1); got -0.1"),
        (["optim.eps=0"], "config key 'optim.eps' must be in (0, inf); got 0.0"),
        (["optim.ema_decay=1"], "config key 'optim.ema_decay' must be in [0, 1) (0: no EMA); got 1.0"),
        (["optim.lecam_decay=1"], "config key 'optim.lecam_decay' must be in [0, 1); got 1.0"),
        (["optim.attn_lr_mult=0"], "config key 'optim.attn_lr_mult' must be in (0, inf) (1: the blocks learn at"),
        (["model.g_bn_eps=0"], "config key 'model.g_bn_eps' must be in (0, inf); got 0.0"),
        (["model.z_dim=0"], "config key 'model.z_dim' must be at least 1; got 0"),
        (["model.g_width=0"], "config key 'model.g_width' must be at least 1; got 0"),
        (["train.batch_size=0"], "config key 'train.batch_size' must be at least 1; got 0"),
        (["train.steps=0"], "config key 'train.steps' must be at least 1; got 0"),
        (["train.sample_grid=0"], "config key 'train.sample_grid' must be at least 1; got 0"),
        (["train.seed=4294967296"], "config key 'train.seed' must be in [0, 4294967295]; got 4294967296"),
        (["train.augment_p=1.5"], "config key 'train.augment_p' must be in [0, 1]; got 1.5"),
        (["eval.num_samples=0"], "config key 'eval.num_samples' must be at least 1; got 0"),
        (["optim.lr_g=.nan"], "config key 'optim.lr_g' must be a finite number; got nan"),
        (["train.ada_target=0.6"], "config key 'train.ada_target' steers train.augment's probability; name its"),
    ],
)
def test_boundaries_and_combinations_are_refused_naming_the_range(words, message):
    with pytest.raises(ConfigError) as exc:
        load_config(None, words)
    assert str(exc.value).startswith(message)


def test_the_edges_of_each_range_are_accepted():
    cfg = load_config(None, ["optim.lr_g=1e38", "optim.beta1=0", "optim.beta2=0.999999", "optim.ema_decay=0",
                             "train.keep_last=0", "train.seed=4294967295", "train.augment_p=1", "model.d_depth=0",
                             "train.augment=color", "train.ada_target=1"])  # fmt: skip
    assert cfg.optim.lr_g == 1e38 and cfg.train.seed == 2**32 - 1


def test_every_range_names_a_key_that_exists():
    from gan.config import RANGES

    assert set(RANGES) <= {key for key, _ in _typed_keys()}


def test_help_config_with_a_config_shows_its_values_and_marks_its_changes(capsys):
    import train

    assert train.main(["--config", "configs/demo.yaml", "--help-config", "train.steps=5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    demo = load_config(ROOT / "configs" / "demo.yaml", ["train.steps=5"])
    defaults = dict(leaves(Config()))
    changed = [k for k, v in leaves(demo) if v != defaults[k]]
    assert lines[0] == (
        f"# the values of configs/demo.yaml train.steps=5; * marks the {len(changed)} keys it changes from the defaults"
    )
    assert any(line.startswith("* model.g_width = 32 (default 256): generator base width") for line in lines)
    assert "* train.steps = 5 (default 1000): generator steps in the run" in lines
    assert sorted(line[2:].split(" = ")[0] for line in lines if line.startswith("* ")) == sorted(changed)
    assert len(lines) == 1 + len(describe().splitlines())
