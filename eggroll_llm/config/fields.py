"""How every config section is typed, built and checked: the machinery behind recipes, overrides and the dataclasses.

A YAML value (or a Python argument) is checked against its field's annotation (`str | None`, `list[str]`, ...), an
unknown key names the nearest valid one, and a section runs its own checks where it is built (`check_section`, from
`__post_init__`): one line naming the key and the fix, before anything is written.

    python -m pytest -q tests/test_config.py
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import field

import yaml


class ConfigError(ValueError):
    """A recipe or override that does not fit the config; the message names the key and the fix."""


def help_field(text: str, default=dataclasses.MISSING, factory=dataclasses.MISSING):
    """A dataclass field with its help string (what `train --list-keys` and docs print)."""
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


def check_section(section, prefix: str, checks: typing.Callable[[], list[tuple[bool, str]]]) -> None:
    """A section's own checks, where it is built: field types (check_fields), finite floats, then `checks()` (called
    once the types are right), each an (ok, message naming the key and the fix) pair; the first that fails raises
    ConfigError."""
    check_fields(section, prefix)
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{prefix}{f.name} must be a finite number, got {value}")
    raise_first(checks())


def raise_first(checks: list[tuple[bool, str]]) -> None:
    """Raise ConfigError with the message of the first (ok, message) pair that is not ok."""
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def check_fields(section, prefix: str = "") -> None:
    """Every plain field of a config section checked against its annotation, in place (an int where a float is due
    becomes a float): `EggrollConfig(max_steps="10")` is refused with the key's name, as a recipe would be."""
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if not dataclasses.is_dataclass(hints[f.name]):
            object.__setattr__(section, f.name, check_type(value, hints[f.name], prefix + f.name))
        elif not isinstance(value, hints[f.name]):
            raise ConfigError(f"{prefix}{f.name} must be a {hints[f.name].__name__} or a dict of its keys, got "
                              f"{type(value).__name__} {value!r:.80}")


def build_sections(config) -> None:
    """Nested sections given as plain dicts, as a recipe gives them (`EggrollConfig(es={"sigma": 0.01})`), built
    into their dataclasses in place."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, dict) and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
            if dataclasses.is_dataclass(default):
                setattr(config, f.name, build(type(default), value, f"{f.name}."))


def check_type(value, annotation, key: str):
    """Coerce/validate a YAML value against a field annotation (str | None, int | str, list[str], ...)."""
    hint = typing.get_origin(annotation)
    options = typing.get_args(annotation) if hint in (typing.Union, types.UnionType) else (annotation,)
    for option in options:
        if option is type(None) and value is None:
            return None
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is float and isinstance(value, str):  # YAML 1.1 reads 2e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option in (str, bool, dict) and type(value) is option:
            return value
        if typing.get_origin(option) is list and isinstance(value, list):
            (item,) = typing.get_args(option)
            try:
                return [check_type(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
            except ConfigError:
                pass
    lists = [o for o in options if typing.get_origin(o) is list]
    if lists and not isinstance(value, (list, dict)):  # `rewards: gsm8k`, `--rewards gsm8k`: a list of one
        try:
            return check_type([value], lists[0], key)
        except ConfigError:
            pass
    names = " or ".join(_type_name(o) for o in options)
    raise ConfigError(f"{key} must be {names}, got {value!r}")


def _type_name(option) -> str:
    """'an int', 'a list of str', 'null': how an error names a field's type."""
    if option is type(None):
        return "null"
    if typing.get_origin(option) is list:
        return f"a list of {_type_name(typing.get_args(option)[0]).split(' ', 1)[1]}"
    name = getattr(option, "__name__", str(option))
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def build(cls, values: dict, prefix: str = ""):
    """`cls` from a mapping of its keys (nested sections from nested mappings); an unknown key names the nearest."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'recipe'} must be a mapping of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            close = sorted((f for f in fields if key.startswith(f) or f.startswith(key)), key=len, reverse=True)[:1] \
                or difflib.get_close_matches(key, list(fields), n=1, cutoff=0.5)
            hint = (f"; did you mean {prefix}{close[0]}?" if close
                    else f"; valid keys: {', '.join(prefix + f for f in fields)}")
            raise ConfigError(f"unknown recipe key {prefix}{key}{hint}")
        if dataclasses.is_dataclass(hints[key]):
            kwargs[key] = build(hints[key], value or {}, f"{prefix}{key}.")
        else:
            kwargs[key] = check_type(value, hints[key], f"{prefix}{key}")
    return cls(**kwargs)


def parse_overrides(args: list[str]) -> dict:
    """`--es.sigma 0.002 --output_dir DIR` (or `--key=value`, or dashes: `--output-dir`) -> nested dict; values
    parsed as YAML scalars."""
    nested, it = {}, iter(args)
    for arg in it:
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"unexpected argument {arg!r}; overrides look like --es.sigma 0.002")
        key, sep, raw = arg[2:].partition("=")
        if not sep:
            raw = next(it, None)
            if raw is None:
                raise ConfigError(f"override --{key} needs a value")
        *parents, leaf = key.replace("-", "_").split(".")  # --output-dir and --output_dir alike
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return nested


def merge(base: dict, extra: dict) -> dict:
    """`extra` laid over `base`, nested mappings merged key by key."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def flatten(values: dict, prefix: str = "") -> dict:
    """A nested config dict as dotted keys: {"es": {"sigma": 0.1}} -> {"es.sigma": 0.1}."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
