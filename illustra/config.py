"""Configs are YAML files in configs/; any key can be overridden on the command line."""

from __future__ import annotations

import copy
import dataclasses
import functools
import sys
from pathlib import Path

import yaml

from illustra.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def yaml_defaults(path: str, *section: str):
    """Class decorator, under @dataclass: each annotated field's default is read from configs/PATH[section...].

    The YAML is the one source of a config's defaults: a field the YAML lacks is an error at import
    (unless the class gives it a default in code, for recorded values such as `profile`); a field
    typed as another dataclass is built from its YAML block; lists become tuples where the field is a tuple.
    """
    def wrap(cls):
        raw = yaml.safe_load((CONFIG_DIR / path).read_text(encoding="utf-8")) or {}
        for key in section:
            raw = raw[key]
        namespace = sys.modules[cls.__module__].__dict__
        for name, annotation in cls.__dict__.get("__annotations__", {}).items():
            if name in cls.__dict__:
                continue  # a recorded value with its own default in code
            if name not in raw:
                raise KeyError(f"configs/{path} has no `{'.'.join((*section, name))}` (default of {cls.__name__}.{name})")
            nested = namespace.get(str(annotation))
            if dataclasses.is_dataclass(nested):
                setattr(cls, name, dataclasses.field(default_factory=functools.partial(build, nested, raw[name])))
            else:
                setattr(cls, name, tuple(raw[name]) if str(annotation).startswith("tuple") else raw[name])
        return cls

    return wrap


def build(cls, raw: dict | None):
    """A config dataclass from a (partial) mapping: missing keys keep their YAML defaults, lists become tuples."""
    hints = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    unknown = set(raw or {}) - set(hints)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} keys: {sorted(unknown)}; known: {sorted(hints)}")
    namespace = sys.modules[cls.__module__].__dict__
    values = {}
    for key, value in (raw or {}).items():
        nested = namespace.get(hints[key])
        if dataclasses.is_dataclass(nested) and isinstance(value, dict):
            value = build(nested, value)
        elif isinstance(value, list) and hints[key].startswith("tuple"):
            value = tuple(value)
        _check_scalar(cls, key, hints[key], value)
        values[key] = value
    return cls(**values)


def _check_scalar(cls, key: str, hint: str, value) -> None:
    """A plain int / float / bool / str key must hold that kind of value (e.g. `--set lr=oops` is one sentence)."""
    ok = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          "bool": lambda v: isinstance(v, bool), "str": lambda v: isinstance(v, str)}.get(hint)
    if ok is not None and not ok(value):
        raise ConfigError(f"{cls.__name__} key {key!r} must be a {hint}, not {value!r}")


PROFILED = ("ssl", "finetune")  # configs whose dataclass records the profile it was resolved with


def load_config(path: str | Path, overrides: list[str] | None = None, section: str | None = None,
                profile: str | None = None) -> dict:
    """Read a YAML config, overlay the device profile's `section` (when given), then apply `key.sub=value`
    overrides (values parsed as YAML). The profile is `profile`, else --profile / ILLUSTRA_PROFILE, else
    picked from the device (illustra.train.profiles)."""
    path = Path(path)
    if not path.exists() and (CONFIG_DIR / path).exists():
        path = CONFIG_DIR / path
    config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if section is not None:
        from illustra.train.profiles import profile_section, resolve_profile

        name = resolve_profile(profile)
        config = merge(config, profile_section(name, section))
        if section in PROFILED:
            config["profile"] = name
    return apply_overrides(config, overrides or [])


def merge(base: dict, extra: dict) -> dict:
    """Recursive dict merge of `extra` over `base`; a null value in `extra` removes that key."""
    result = copy.deepcopy(base)
    for key, value in extra.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    """A copy of `config` with each `dotted.key=value` set; unknown keys are an error."""
    result = copy.deepcopy(config)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        dotted, raw = item.split("=", 1)
        *parents, leaf = dotted.strip().split(".")
        node = result
        for key in parents:
            if not isinstance(node.get(key), dict):
                raise KeyError(f"unknown config section {key!r} in override {item!r}")
            node = node[key]
        if leaf not in node:
            raise KeyError(f"unknown config key {dotted!r}; known here: {sorted(node)}")
        node[leaf] = yaml.safe_load(raw)
    return result
