"""Configs are YAML files in configs/; any key can be overridden on the command line."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


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
