"""One config: every field of the typed configs is in YAML (so `--set` reaches it), with the same value as in code."""

from __future__ import annotations

import dataclasses

import pytest

from illustra.config import apply_overrides, load_config
from illustra.curation.run import CurationSettings
from illustra.finetune.train import FinetuneConfig
from illustra.ssl.pretrain import PretrainConfig

CONFIGS = [(PretrainConfig, "ssl.yaml"), (FinetuneConfig, "finetune.yaml"), (CurationSettings, "curation.yaml")]
RECORDED = {"profile"}  # set by the loader from the device profile, not a recipe key


def _flat_fields(obj, prefix: str = "") -> dict:
    out = {}
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if dataclasses.is_dataclass(value):
            out.update(_flat_fields(value, f"{prefix}{field.name}."))
        elif field.name not in RECORDED:
            out[prefix + field.name] = list(value) if isinstance(value, tuple) else value
    return out


def _flat_yaml(raw: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            out.update(_flat_yaml(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


@pytest.mark.parametrize(("cls", "path"), CONFIGS, ids=[p for _, p in CONFIGS])
def test_yaml_holds_every_field_with_the_codes_value(cls, path):
    in_code, in_yaml = _flat_fields(cls()), _flat_yaml(load_config(path))
    assert sorted(set(in_code) - set(in_yaml)) == [], "fields --set cannot reach"
    assert sorted(set(in_yaml) - set(in_code)) == [], "YAML keys no config reads"
    assert {k: v for k, v in in_code.items() if in_yaml[k] != v} == {}, "code and YAML disagree"


@pytest.mark.parametrize("override", ["photos.white=230", "photos.seed=3", "duplicates.batch_pairs=512",
                                      "photos.min_confident=8", "photos.texture_width=8"])
def test_set_reaches_keys_that_were_unreachable(override):
    key, value = override.split("=")
    section, leaf = key.split(".")
    settings = CurationSettings.from_dict(load_config("curation.yaml", [override]))
    assert getattr(getattr(settings, section), leaf) == int(value)


def test_set_reaches_fine_tuning_input_size_and_split_shares():
    config = FinetuneConfig.from_dict(load_config("finetune.yaml", ["input_size=48", "test_share=0.2"],
                                                  section="finetune", profile="cpu"))
    assert config.input_size == 48 and config.test_share == 0.2 and config.profile == "cpu"


def test_unknown_keys_name_the_known_ones():
    with pytest.raises(KeyError, match="known here"):
        apply_overrides(load_config("curation.yaml"), ["photos.whte=3"])
