"""The non-local block's option rules are written once (gan/attention_rules.py): the config check refuses, in
one line naming the config key, exactly the option combinations that NonLocalBlock's constructor refuses, and
accepts exactly those it accepts (widths aside: a config does not know each block's width, so gan.models checks
heads against them as it builds the blocks, tests/gan/test_attention_heads_position.py). Configs saved with the
research options' old flat keys still load."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest

from gan.attention import NonLocalBlock
from gan.attention_rules import OptionError
from gan.choices import GATES, LOGIT_SCALES, PAIRWISE
from gan.config import LAB_KEYS, OPTION_KEYS, ConfigError, attention_options, from_dict, load_config, to_dict

from shared import ROOT

# Every option a config sets on the block, each over its choices and over set / unset, valid / invalid values
OPTIONS = {
    "pairwise": PAIRWISE,
    "gate": GATES,
    "logit_scale": LOGIT_SCALES,
    "temperature": (None, 4.0, 0.0),
    "gamma_init": (0.0, 0.5),
    "subsample": (True, False),
    "heads": (1, 2, 3),
    "position_max_side": (0, 8, -1),
}


def test_each_config_key_sets_its_option() -> None:
    """OPTION_KEYS (which key names an option in errors) against what the key really sets."""
    assert set(OPTION_KEYS) == set(OPTIONS)
    for option, key in OPTION_KEYS.items():
        value = next(v for v in OPTIONS[option] if v != attention_options(load_config(None, []).model)[option])
        if option == "temperature":  # a temperature is taken by cosine only
            cfg = load_config(None, [f"{key}={_yaml(value)}", "model.attn_lab.pairwise=cosine"])
        else:
            cfg = load_config(None, [f"{key}={_yaml(value)}"])
        assert attention_options(cfg.model)[option] == value, key


def _yaml(value: object) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def test_the_config_refuses_exactly_what_the_block_refuses() -> None:
    combos = [dict(zip(OPTIONS, values)) for values in itertools.product(*OPTIONS.values())]
    refused = 0
    for options in combos:
        try:
            NonLocalBlock(48, qk_channels=6, v_channels=24, spectral_norm=False, **options)  # widths: any heads
            block_error = None
        except OptionError as exc:
            block_error, at_fault = str(exc), OPTION_KEYS[exc.option]
        overrides = [f"{OPTION_KEYS[name]}={_yaml(value)}" for name, value in options.items()]
        try:
            load_config(None, overrides)
            config_error = None
        except ConfigError as exc:
            config_error = str(exc)
        if block_error is None:
            assert config_error is None, (options, config_error)
            continue
        refused += 1
        assert config_error is not None, (options, block_error)
        key, message = config_error.removeprefix("config key '").split("': ", 1)
        assert "\n" not in config_error and key == at_fault and message == block_error, options
    assert len(combos) == 6 * 3 * 3 * 3 * 2 * 2 * 3 * 3 and 0 < refused < len(combos)


@pytest.mark.parametrize(
    "options, key",
    [
        ({"pairwise": "l2", "logit_scale": "inv_sqrt_d"}, "logit_scale"),  # the pair
        ({"pairwise": "dot_product", "logit_scale": "learned"}, "logit_scale"),
        ({"pairwise": "l2", "temperature": 4.0}, "temperature"),
        ({"pairwise": "cosine", "temperature": 0.0}, "temperature"),
        ({"gate": "channel", "gamma_init": 0.5}, "gamma_init"),
        ({"pairwise": "concatenation", "heads": 2}, "heads"),
        ({"pairwise": "dot_product", "position_max_side": 8}, "position_max_side"),
    ],
)
def test_each_rule_names_the_key_at_fault(options: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"^config key '{OPTION_KEYS[key]}': ") as exc:
        load_config(None, [f"{OPTION_KEYS[k]}={_yaml(v)}" for k, v in options.items()])
    assert "\n" not in str(exc.value)


def test_the_rules_and_the_config_load_without_torch() -> None:
    code = "import sys, gan.attention_rules, gan.config; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def _flat(lab: dict) -> dict:
    """A config's model section as saved before the research options moved under model.attn_lab (which then
    held none of the later ones, such as position_max_side)."""
    return {f"attn_{name}": value for name, value in lab.items() if f"attn_{name}" in LAB_KEYS}


def test_configs_saved_with_the_old_flat_keys_load() -> None:
    saved = to_dict(load_config(None, []))
    lab = saved["model"].pop("attn_lab")
    old = {**saved, "model": {**saved["model"], **_flat({**lab, "temperature": 8.0})}}  # as written before
    assert to_dict(from_dict(old)) == to_dict(load_config(None, []))  # the unused temperature dropped
    cosine = {**old, "model": {**old["model"], "attn_pairwise": "cosine", "attn_gamma_init": 0.25}}
    cfg = from_dict(cosine).model.attn_lab
    assert (cfg.pairwise, cfg.temperature, cfg.gamma_init) == ("cosine", 8.0, 0.25)
    over = load_config(None, ["model.attn_pairwise=cosine", "model.attn_temperature=1e-6"]).model.attn_lab
    assert (over.pairwise, over.temperature) == ("cosine", 1e-6)


def test_an_old_yaml_file_loads(tmp_path) -> None:
    path = tmp_path / "old.yaml"
    path.write_text("model:\n  attn_pairwise: l2\n  attn_qk_spectral_norm: false\n  attn_gate: channel\n")
    cfg = load_config(path)
    assert (cfg.model.attn_lab.pairwise, cfg.model.attn_lab.qk_spectral_norm, cfg.model.attn_gate) == (
        "l2",
        False,
        "channel",
    )


def test_the_uniform_arm_overrides_load() -> None:
    from experiments.ablation import UNIFORM_OVERRIDES

    lab = load_config(None, list(UNIFORM_OVERRIDES)).model.attn_lab
    assert (lab.pairwise, lab.temperature) == ("cosine", 1e-6)
