"""The command line: every command listed, unbuilt stages fail honestly, scan works end to end."""

from __future__ import annotations

import subprocess
import sys

import pytest

from illustra.cli import main

COMMANDS = ["bench", "pretrain", "embed", "curate", "finetune", "evaluate", "predict", "experiment", "scan"]


def test_help_lists_every_command():
    text = subprocess.run([sys.executable, "-m", "illustra.cli", "--help"], capture_output=True, text=True).stdout
    for command in COMMANDS:
        assert f"    {command}" in text


def test_scan_command_prints_classes_in_natural_order(fixture_bench, tmp_path, capsys):
    assert main(["scan", str(fixture_bench / "training"), "--out", str(tmp_path / "w"), "--set", "cache.size=32"]) == 0
    out = capsys.readouterr().out
    assert out.index("L2_7") < out.index("L2_10")
    assert (tmp_path / "w" / "manifest.csv").exists() and (tmp_path / "w" / "pixels_32_letterbox.npy").exists()
    assert (tmp_path / "w" / "problems.csv").exists()


def test_unknown_override_is_an_error(fixture_bench, tmp_path):
    with pytest.raises(KeyError):
        main(["scan", str(fixture_bench / "training"), "--out", str(tmp_path / "w"), "--set", "cache.sise=32"])


def test_evaluate_script_runs_from_the_repo_root():
    done = subprocess.run([sys.executable, "evaluate.py", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--weights" in done.stdout


def test_end_to_end_pretrain_curate_finetune_evaluate(fixture_bench, tmp_path, capsys):
    """The user's path through the CLI on a tiny folder: every stage runs and the report is printed."""
    data, work = str(fixture_bench / "training"), str(tmp_path / "work")
    tiny = ["--set", "encoder.width=8", "--set", "encoder.stages=2"]
    assert main(["pretrain", "--data", data, "--out", str(tmp_path / "ssl"), "--work", work,
                 "--set", "epochs=1", "--set", "batch_size=32", "--set", "knn_every=0", *tiny]) == 0
    encoder = str(tmp_path / "ssl" / "encoder.safetensors")
    assert main(["curate", data, "--out", str(tmp_path / "cur"), "--encoder", encoder, "--work", work,
                 "--only", "photos", "--set", "photos.texture_steps=40"]) == 0
    assert main(["finetune", "--curation", str(tmp_path / "cur"), "--out", str(tmp_path / "ft"), "--encoder", encoder,
                 "--work", work, "--set", "epochs=1", "--set", "batch_size=16"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--data", data, "--weights", str(tmp_path / "ft" / "classifier.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "precision" in out and "macro F1:" in out and "micro F1:" in out
