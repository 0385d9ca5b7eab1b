"""The workspace: stable file ids, one index per data folder, stale curations re-mapped by id or stopped."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from test_curation import tiny_encoder

from illustra.cli import main
from illustra.curation.photos import PhotoSettings
from illustra.curation.run import CurationSettings, curate
from illustra.data.cache import CacheSpec, open_pixels
from illustra.data.index import IndexSettings, index_dataset
from illustra.data.manifest import load_manifest
from illustra.data.workspace import WorkspaceError, default_work, file_id_of
from illustra.finetune.jobs import finetune_folder
from illustra.finetune.train import FinetuneConfig

SETTINGS = CurationSettings(photos=PhotoSettings(texture_view=False))
FAST = FinetuneConfig(epochs=1, batch_size=8, ema_decay=0.0, imbalance="none")


@pytest.fixture()
def curated_copy(fixture_bench, tmp_path):
    """A private copy of the fixture folder, indexed and curated (so the test may change the folder)."""
    data = tmp_path / "data"
    shutil.copytree(fixture_bench / "training", data)
    encoder = tiny_encoder(tmp_path / "encoder.safetensors")
    curate(data, tmp_path / "cur", tmp_path / "work", encoder, SETTINGS, jobs=("duplicates",))
    return data, tmp_path, encoder


def _pixels_by_id(work: Path) -> dict[str, np.ndarray]:
    manifest = load_manifest(work)
    pixels = open_pixels(work, CacheSpec())
    return {fid: pixels[row] for fid, row in zip(manifest["file_id"], manifest["cache_row"]) if row >= 0}


def test_file_ids_are_stable_across_rescans_and_follow_the_path(curated_copy):
    data, tmp, _ = curated_copy
    before = load_manifest(tmp / "work").set_index("path")["file_id"]
    assert before.is_unique and all(before.index.map(file_id_of) == before)
    index_dataset(data, tmp / "work", IndexSettings(CacheSpec()), progress=False)
    assert load_manifest(tmp / "work").set_index("path")["file_id"].equals(before)


@pytest.mark.parametrize("change", ["delete", "add", "rename"])
def test_finetune_on_a_stale_curation_trains_on_exactly_the_images_that_still_exist(curated_copy, change):
    data, tmp, encoder = curated_copy
    clean = load_manifest(tmp / "cur" / "clean.csv")
    victims = clean.groupby("class_folder").head(1)["path"].tolist()  # one image per class
    if change == "delete":
        for path in victims:
            (data / path).unlink()
    elif change == "add":
        for path in victims:
            shutil.copy(data / path, (data / path).with_name("zz_added_" + Path(path).name))
    else:
        for path in victims:
            (data / path).rename((data / path).with_name("renamed_" + Path(path).name))
    index_dataset(data, tmp / "work", IndexSettings(CacheSpec()), progress=False)  # re-scan: rows shift
    messages = []
    summary = finetune_folder(tmp / "cur", tmp / "run", None, FAST, encoder, progress=False, log=messages.append)
    split = load_manifest(tmp / "run" / "split.csv")
    expected = len(clean) - (0 if change == "add" else len(victims))
    assert len(split) == expected and summary["index"]["kept"] == expected
    assert not set(split["path"]) & (set() if change == "add" else set(victims))
    said = " ".join(messages)  # what was dropped or left out is said
    assert ("no longer exist" in said) == (change != "add")
    assert ("added to the folder" in said) == (change != "delete")  # a renamed file is a new file
    # every row's pixels are the ones of its own file in the new index (never a neighbour's)
    now = _pixels_by_id(tmp / "work")
    pixels = open_pixels(tmp / "work", CacheSpec())
    for file_id, row in zip(split["file_id"], split["cache_row"]):
        assert np.array_equal(pixels[row], now[file_id])


def test_a_changed_image_is_dropped_not_trained_on_with_old_decisions(curated_copy):
    data, tmp, encoder = curated_copy
    clean = load_manifest(tmp / "cur" / "clean.csv")
    first, second = clean["path"].iloc[0], clean["path"].iloc[1]
    shutil.copy(data / second, data / first)  # same name, other content
    index_dataset(data, tmp / "work", IndexSettings(CacheSpec()), progress=False)
    summary = finetune_folder(tmp / "cur", tmp / "run", None, FAST, encoder, progress=False, log=lambda m: None)
    assert summary["index"]["changed"] == 1
    assert first not in set(load_manifest(tmp / "run" / "split.csv")["path"])


def test_two_folders_never_share_an_index(curated_copy, tmp_path):
    data, tmp, encoder = curated_copy
    other = tmp_path / "other"
    shutil.copytree(data, other)
    with pytest.raises(WorkspaceError, match="holds the index of"):
        index_dataset(other, tmp / "work", IndexSettings(CacheSpec()), progress=False)
    assert default_work(data) != default_work(other)
    code = main(["curate", str(other), "--out", str(tmp_path / "cur_b"), "--encoder", str(encoder),
                 "--work", str(tmp / "work"), "--only", "duplicates"])
    assert code == 2  # one sentence, no traceback


def test_cli_finetune_finds_the_curations_index_and_stops_cleanly_when_everything_is_gone(curated_copy, capsys):
    data, tmp, encoder = curated_copy
    args = ["finetune", "--curation", str(tmp / "cur"), "--out", str(tmp / "run"), "--encoder", str(encoder),
            "--set", "epochs=1", "--set", "batch_size=8"]
    assert main(args) == 0  # no --work: the curation's own index is used
    for folder in data.iterdir():
        for image in folder.iterdir():
            image.rename(image.with_name("new_" + image.name))
    index_dataset(data, tmp / "work", IndexSettings(CacheSpec()), progress=False)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "re-run `illustra curate`" in err and "Traceback" not in err


def test_later_stages_keep_what_scan_set(fixture_bench, tmp_path):
    """`scan --set cache.size=48 --set max_pixels=...` is not undone by the next stage (no re-decode)."""
    import json

    data, work = fixture_bench / "training", tmp_path / "work"
    encoder = tiny_encoder(tmp_path / "encoder.safetensors")
    assert main(["scan", str(data), "--out", str(work), "--set", "cache.size=48", "--set", "max_pixels=50000000"]) == 0
    assert main(["curate", str(data), "--out", str(tmp_path / "cur"), "--encoder", str(encoder), "--work", str(work),
                 "--only", "duplicates"]) == 0
    info = json.loads((work / "index.json").read_text())
    assert info["settings"] == {"size": 48, "policy": "letterbox", "max_pixels": 50000000}
    assert info["decoded"] == 0  # curate re-used the scan's decode
    assert not (work / "pixels_64_letterbox.npy").exists()
