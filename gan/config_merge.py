"""Reading typed dataclass configs: YAML deltas over the defaults (a file may name a `base:` file), `key.sub=value`
overrides parsed as YAML, and the check of each value against its field's type and choices, every problem one
line (`ConfigError`). gan/config.py holds the keys themselves and their cross-field checks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml

from gan.errors import UserError


class ConfigError(UserError, ValueError):
    """A user-caused configuration problem; its message is one line that says what to do."""


def described_field(default: Any, help: str, choices: tuple | None = None) -> Any:
    """A dataclass field with its one-line meaning (`help`) and the values it accepts (`choices`, or None)."""
    meta = {"help": help, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        return f"list of {typing.get_args(tp)[0].__name__}"
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any, choices: tuple | None) -> Any:
    """Check `value` against the field type; return it (ints widen to floats). Raise ConfigError."""
    origin = typing.get_origin(tp)
    nullable = origin in (typing.Union, types.UnionType)  # `X | None`: null, or an X
    if nullable:
        if value is None:
            return None
        (tp,) = [a for a in typing.get_args(tp) if a is not type(None)]
        origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' expects a {_type_name(tp)}, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, item_tp, choices) for i, v in enumerate(value)]
    if tp is float and isinstance(value, str):
        # YAML 1.1 reads `1e-4` (no dot) as a string; accept any spelling Python reads as a number.
        with contextlib.suppress(ValueError):
            value = float(value)
    if tp is str and isinstance(value, bool) and choices is not None:
        # YAML 1.1 reads `no` / `off` (and `yes` / `on`) as booleans: `train.mixed_precision=no` means "no".
        spellings = ("no", "off", "false") if value is False else ("yes", "on", "true")
        value = next((c for c in choices if c in spellings), value)
    ok = (
        (tp is bool and isinstance(value, bool))
        or (tp is int and isinstance(value, int) and not isinstance(value, bool))
        or (tp is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (tp is str and isinstance(value, str))
    )
    if not ok:
        raise ConfigError(f"config key '{key}' expects {_type_name(tp)}{' or null' if nullable else ''}, got {value!r}")
    if tp is float:
        value = float(value)
    if choices is not None and value not in choices:
        raise ConfigError(f"config key '{key}' must be one of {', '.join(map(str, choices))}; got {value!r}")
    return value


def _fields(obj: Any) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(obj)}


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """The resolved field types of a config class: evaluating its string annotations is about half of what a
    `load_config` costs, and they never change."""
    return typing.get_type_hints(cls)


def apply_delta(obj: Any, delta: dict, prefix: str = "") -> None:
    """Set the fields of dataclass `obj` (recursively for nested sections) from `delta`; ConfigError names an
    unknown key or a value of the wrong type or outside the choices."""
    fields = _fields(obj)
    hints = _type_hints(type(obj))
    for name, value in delta.items():
        key = f"{prefix}{name}"
        if name not in fields:
            raise ConfigError(f"unknown config key '{key}'; accepted: {', '.join(f'{prefix}{n}' for n in fields)}")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(
                    f"config key '{key}' is a section; give it a mapping of {', '.join(_fields(current))}"
                )
            apply_delta(current, value, prefix=f"{key}.")
        else:
            setattr(obj, name, _coerce(key, value, hints[name], fields[name].metadata.get("choices")))


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's problem and its context in one line, e.g. "expected ',' or ']', but got ':' (while parsing a
    flow sequence)", without the source excerpt that follows them."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    return f"{problem} ({context})" if context else problem


def parse_overrides(words: list[str]) -> dict:
    """Turn `["train.steps=10", "model.g_attention=[16,32]"]` into a nested dict (values parsed as YAML)."""
    delta: dict = {}
    for word in words:
        if "=" not in word:
            raise ConfigError(f"override '{word}' is not of the form key.sub=value")
        dotted, raw = word.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"override '{word}': the value is not valid YAML ({_yaml_problem(exc)}); "
                "close every bracket, e.g. model.g_attention=[16,32], and quote text holding ':' or '['"
            ) from None
        node = delta
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{word}' conflicts with an earlier override of '{part}'")
        node[parts[-1]] = value
    return delta


def read_deltas(path: Path, seen: tuple[Path, ...] = ()) -> list[dict]:
    """The deltas a YAML file stands for: its `base:` file's first (recursively), then its own."""
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist; pass one of configs/*.yaml")
    if path.resolve() in seen:
        raise ConfigError(f"config file '{path}' names itself as a base through {' -> '.join(map(str, seen))}")
    try:
        delta = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"config file '{path}'{where} is not valid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(delta, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of sections (model, data, ...)")
    base = delta.pop("base", None)
    if base is None:
        return [delta]
    if not isinstance(base, str):
        raise ConfigError(f"config file '{path}': 'base' must be the path of another config file")
    return [*read_deltas(path.parent / base, (*seen, path.resolve())), delta]


def describe_fields(section: Any, prefix: str = "", defaults: Any = None) -> list[str]:
    """`key = value: meaning (one of ...)` for every field of dataclass `section`, nested sections flattened;
    with `defaults` (the same dataclass at its defaults), a value that differs reads `* key = value (default d)`."""
    lines = []
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        default = getattr(defaults, f.name) if defaults is not None else value
        if dataclasses.is_dataclass(value):
            lines += describe_fields(value, f"{prefix}{f.name}.", default if defaults is not None else None)
            continue
        choices = f.metadata.get("choices")
        extra = f" (one of {', '.join(map(str, choices))})" if choices else ""
        key = (
            f"{prefix}{f.name} = {value!r}"
            if value == default
            else f"* {prefix}{f.name} = {value!r} (default {default!r})"
        )
        lines.append(f"{key}: {f.metadata['help']}{extra}")
    return lines
