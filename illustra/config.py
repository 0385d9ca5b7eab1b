"""Configs are YAML files in configs/; any key can be overridden on the command line."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def load_config(path: str | Path, overrides: list[str] | None = None) -> dict:
    """Read a YAML config and apply `key.sub=value` overrides (values parsed as YAML)."""
    path = Path(path)
    if not path.exists() and (CONFIG_DIR / path).exists():
        path = CONFIG_DIR / path
    config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return apply_overrides(config, overrides or [])


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
