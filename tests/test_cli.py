"""The command line: every command listed, unbuilt stages fail honestly, scan works end to end."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from illustra.cli import main, time_budget

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


def test_a_time_budget_without_a_unit_is_seconds_and_a_short_one_is_said_aloud(capsys):
    assert time_budget("2") == 2.0 and "is 2 seconds" in capsys.readouterr().err  # not two minutes: say so
    assert time_budget("2m") == 120.0 and time_budget("90s") == 90.0 and time_budget("90") == 90.0
    assert time_budget("1.5h") == 5400.0 and capsys.readouterr().err == ""  # a unit, or a minute or more: silent
    with pytest.raises(ValueError, match="20m"):
        time_budget("two minutes")
    with pytest.raises(SystemExit):  # refused by argparse before any stage runs, with the reason and no traceback
        main(["run", "no-such-folder", "--out", "x", "--ssl-budget", "two minutes"])
    assert "--ssl-budget: cannot read duration 'two minutes'" in capsys.readouterr().err


def test_end_to_end_pretrain_curate_finetune_evaluate(fixture_bench, tmp_path, capsys):
    """The user's path through the CLI on a tiny folder: every stage runs and the report is printed."""
    data, work = str(fixture_bench / "training"), str(tmp_path / "work")
    tiny = ["--set", "encoder.width=8", "--set", "encoder.stages=2"]
    assert main(["pretrain", "--data", data, "--out", str(tmp_path / "ssl"), "--work", work,
                 "--set", "epochs=1", "--set", "batch_size=32", "--set", "knn_every=0", *tiny]) == 0
    encoder = str(tmp_path / "ssl" / "encoder.safetensors")
    assert main(["curate", data, "--out", str(tmp_path / "cur"), "--encoder", encoder, "--work", work,
                 "--only", "photos", "--set", "photos.texture_steps=40"]) == 0
    assert re.search(r"photos \d+ \(\d+ anchors(, texture view 40 steps on \d+ photo and \d+ drawing examples"
                     r"( \(calm foregrounds: the frame view was sure of too few drawings\))?\)|, texture view not "
                     r"trained: too few sure examples \(\d+ photo, \d+ drawing\)\)|: too few for the relative views, "
                     r"only they are called\))",
                     capsys.readouterr().out)  # the view's length and what it was taught
    assert main(["finetune", "--curation", str(tmp_path / "cur"), "--out", str(tmp_path / "ft"), "--encoder", encoder,
                 "--work", work, "--set", "epochs=1", "--set", "batch_size=16"]) == 0
    assert main(["finetune", "--curation", str(tmp_path / "cur"), "--out", str(tmp_path / "ft1"), "--encoder", encoder,
                 "--work", work, "--set", "epochs=1", "--set", "batch_size=16", "--set", "seed=1", "--split-seed", "0"]) == 0
    split_of = {run: (tmp_path / run / "split.csv").read_text(encoding="utf-8") for run in ("ft", "ft1")}
    assert split_of["ft"] == split_of["ft1"]  # another training seed, the same split
    capsys.readouterr()
    assert main(["evaluate", "--data", data, "--weights", str(tmp_path / "ft" / "classifier.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "precision" in out and "macro F1:" in out and "micro F1:" in out


def test_user_errors_are_one_sentence_and_exit_2(fixture_bench, tmp_path, capsys):
    """Wrong weights, empty or mis-laid folders: a sentence that says what to do, never a traceback."""
    assert main(["finetune", "--curation", str(tmp_path), "--out", str(tmp_path / "ft"), "--set", "mixstyle=oops"]) == 2
    assert "'mixstyle' must be a float" in capsys.readouterr().err
    from test_curation import tiny_encoder

    from illustra.cli import evaluate_main

    encoder = tiny_encoder(tmp_path / "encoder.safetensors")
    data = fixture_bench / "training"
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "not_weights.safetensors").write_text("hello")
    assert evaluate_main(["--data", str(data), "--weights", str(encoder)]) == 2
    assert "not an illustra classifier" in capsys.readouterr().err
    assert evaluate_main(["--data", str(data), "--weights", str(tmp_path / "not_weights.safetensors")]) == 2
    assert "not a readable safetensors" in capsys.readouterr().err
    assert main(["curate", str(empty), "--out", str(tmp_path / "cur"), "--encoder", str(encoder),
                 "--work", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "no readable image" in err and "Traceback" not in err
    assert main(["curate", str(tmp_path / "no_such_folder"), "--out", str(tmp_path / "cur2"), "--encoder",
                 str(encoder), "--work", str(tmp_path / "w2")]) == 2  # a mistyped folder: a sentence, not a traceback
    assert "data folder not found" in capsys.readouterr().err


def test_evaluate_on_a_folder_with_some_classes_says_what_the_macro_average_is_over(tmp_path, capsys):
    from PIL import Image

    from illustra.cli import evaluate_main
    from illustra.finetune.model import Classifier, save_classifier
    from illustra.ssl.encoder import Encoder, EncoderConfig

    classes = ["L2_2", "L2_3", "L2_5", "L2_7"]
    model = Classifier(Encoder(EncoderConfig(width=8, stages=2, input_size=16)), len(classes))
    path = save_classifier(tmp_path / "c.safetensors", model, classes, model.encoder.config.to_dict(),
                           {"cache_size": 32, "cache_policy": "letterbox", "input_size": 16,
                            "mean": [0.5] * 3, "std": [0.25] * 3}, {})
    folder = tmp_path / "eval" / "L2_3"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (20, 20), (i * 60, 10, 10)).save(folder / f"{i}.png")
    assert evaluate_main(["--data", str(tmp_path / "eval"), "--weights", str(path)]) == 0
    out = capsys.readouterr().out
    assert "macro F1:" in out and "the folder holds 1 of the model's 4 classes" in out
