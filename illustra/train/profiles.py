"""Device profiles: one recipe per kind of machine, overlaid on the YAML configs.

`configs/profiles/<name>.yaml` holds one section per config file (`ssl`, `finetune`, `curation`)
whose keys replace the base file's. The profile is picked from the device (`gpu` when training
would run on CUDA, else `cpu`) unless `--profile` (exported as ILLUSTRA_PROFILE) names one, and
its name is written into every weights file the run makes.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from illustra.train.device import pick_device

PROFILE_ENV = "ILLUSTRA_PROFILE"
PROFILE_DIR = Path(__file__).resolve().parent.parent.parent / "configs" / "profiles"


def available_profiles() -> list[str]:
    """Names of the profiles in configs/profiles/."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def resolve_profile(requested: str | None = None) -> str:
    """`auto` (default): gpu when the run's device is CUDA, else cpu; or the profile named."""
    requested = (requested or os.environ.get(PROFILE_ENV, "auto")).strip().lower() or "auto"
    if requested == "auto":
        return "gpu" if pick_device().type == "cuda" else "cpu"
    if requested not in available_profiles():
        raise ValueError(f"unknown profile {requested!r}: use auto or one of {', '.join(available_profiles())}")
    return requested


def profile_section(profile: str, section: str) -> dict:
    """The keys a profile sets for one config file (empty when it sets none)."""
    path = PROFILE_DIR / f"{profile}.yaml"
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return dict(raw.get(section) or {})
