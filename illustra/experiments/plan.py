"""Experiment plans: a YAML file names a base recipe and the factors to vary; this expands it into runs.

The design is one-factor-at-a-time around a baseline: every factor's first level is the baseline,
every other level is one run that changes only that factor. The baseline (and any factor named in
`repeat`) runs once per seed, so the seed-to-seed spread sits next to every effect in the analysis.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from illustra.config import CONFIG_DIR, load_config, merge

# Keys of a level that are not fine-tuning config keys.
DATA_KEYS = ("duplicates", "photos")
ENCODER_KEY = "encoder_weights"  # a path, "none" (random init) or {pretrain: {...ssl overrides...}}


@dataclass
class Run:
    """One training run of a plan: which factor level it tests, its seed, and its overrides on the base."""

    name: str
    factor: str
    level: str
    seed: int
    overrides: dict = field(default_factory=dict)


@dataclass
class Plan:
    """A parsed plan: base recipe, per-run defaults, factors (ordered levels) and seeds."""

    name: str
    finetune: dict
    defaults: dict
    factors: dict[str, dict[str, dict]]
    seeds: list[int]
    repeat: list[str]
    split_seed: int = 0
    encoder_weights: str | None = None
    ssl_base: dict = field(default_factory=dict)
    source: str = ""
    loso: list[str] = field(default_factory=list)  # factors whose runs (and the baseline) also get a LOSO score


def _resolve(path: str | Path) -> Path:
    """A config path as given, else relative to configs/."""
    path = Path(path)
    return path if path.exists() or not (CONFIG_DIR / path).exists() else CONFIG_DIR / path


def load_plan(path: str | Path, variant: str | None = None) -> Plan:
    """Read a plan file; a `variant` (e.g. quick) is merged over it from its `variants:` section."""
    path = _resolve(path)
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    variants = raw.pop("variants", None) or {}
    if variant:
        if variant not in variants:
            raise ValueError(f"plan {path} has no variant {variant!r}; it has: {sorted(variants)}")
        raw = merge(raw, variants[variant])
    factors = {name: levels for name, levels in (raw.get("factors") or {}).items() if levels}
    for name, levels in factors.items():
        if not isinstance(levels, dict):
            raise ValueError(f"factor {name!r} needs a mapping of level name -> overrides")
    # the device profile's recipe is the base; runs compare at fixed epochs, so no time budget unless the plan sets one
    finetune = {**load_config(_resolve(raw.get("finetune", "finetune.yaml")), section="finetune"), "time_budget_s": 0}
    # `base:` pins recipe keys whatever the device profile ships, so a plan's baseline stays what its results measured
    finetune = merge(finetune, raw.get("base") or {})
    ssl = {**load_config(_resolve(raw.get("ssl", "ssl.yaml")), section="ssl"), "time_budget_s": 0}
    return Plan(name=str(raw.get("name", path.stem)), finetune=finetune,
                defaults=raw.get("defaults") or {}, factors=factors, seeds=list(raw.get("seeds") or [0]),
                repeat=list(raw.get("repeat") or []), split_seed=int(raw.get("split_seed", 0)),
                encoder_weights=raw.get("encoder_weights"),
                ssl_base=ssl, source=str(path), loso=list(raw.get("loso") or []))


def expand_runs(plan: Plan) -> list[Run]:
    """Baseline once per seed, then each non-baseline level (once per seed if its factor is in `repeat`)."""
    baseline = {name: next(iter(levels.values())) or {} for name, levels in plan.factors.items()}
    base_overrides = merge(plan.defaults, _combine(baseline.values()))
    runs = [Run(f"baseline-s{seed}", "baseline", "baseline", seed, base_overrides) for seed in plan.seeds]
    for factor, levels in plan.factors.items():
        for level, overrides in list(levels.items())[1:]:
            seeds = plan.seeds if factor in plan.repeat else plan.seeds[:1]
            for seed in seeds:
                runs.append(Run(f"{factor}={level}-s{seed}", factor, level, seed, merge(base_overrides, overrides or {})))
    return runs


def wants_loso(plan: Plan, run: Run) -> bool:
    """Whether a run also gets the leave-one-style-out score: the baselines and the factors listed in `loso`."""
    return bool(plan.loso) and (run.factor == "baseline" or run.factor in plan.loso or "all" in plan.loso)


def baseline_levels(plan: Plan) -> dict[str, str]:
    """Factor -> the name of its baseline (first) level."""
    return {name: next(iter(levels)) for name, levels in plan.factors.items()}


def _combine(parts) -> dict:
    """Merge several override mappings in order."""
    result: dict = {}
    for part in parts:
        result = merge(result, part or {})
    return result


def split_overrides(overrides: dict) -> tuple[dict, dict, object]:
    """(fine-tuning config overrides, data variant, encoder weights spec) of one run."""
    finetune = {k: v for k, v in overrides.items() if k not in DATA_KEYS and k != ENCODER_KEY}
    data = {k: overrides[k] for k in DATA_KEYS if k in overrides}
    return finetune, data, overrides.get(ENCODER_KEY)
