"""Experiment plans: expansion and variants, train-side data variants, a tiny resumable run with its report."""

from __future__ import annotations

import json

import pytest
import yaml
from test_curation import tiny_encoder

from illustra.config import CONFIG_DIR
from illustra.curation.photos import PhotoSettings
from illustra.curation.run import CurationSettings, curate
from illustra.experiments import runner
from illustra.experiments.plan import expand_runs, load_plan
from illustra.finetune.jobs import training_table

PLAN = {
    "name": "tiny",
    "seeds": [0, 1],
    "repeat": ["mode"],
    "defaults": {"epochs": 1, "batch_size": 16, "ema_decay": 0.9},
    "factors": {
        "mode": {"full": {"mode": "full"}, "linear": {"mode": "linear"}},
        "photos": {"removed": {}, "kept": {"photos": "kept"}, "random-drop": {"photos": "random-drop"}},
    },
    "variants": {"smaller": {"seeds": [0], "factors": {"photos": {"random-drop": None}, "mode": None}}},
}


def write_plan(path, plan=PLAN):
    path.write_text(yaml.safe_dump(plan, sort_keys=False), encoding="utf-8")
    return path


def test_plan_expands_one_factor_at_a_time_with_seeds(tmp_path):
    plan = load_plan(write_plan(tmp_path / "plan.yaml"))
    runs = expand_runs(plan)
    names = [r.name for r in runs]
    assert names == ["baseline-s0", "baseline-s1", "mode=linear-s0", "mode=linear-s1",
                     "photos=kept-s0", "photos=random-drop-s0"]
    by_name = {r.name: r for r in runs}
    assert by_name["baseline-s0"].overrides == {"epochs": 1, "batch_size": 16, "ema_decay": 0.9, "mode": "full"}
    assert by_name["photos=kept-s0"].overrides["photos"] == "kept"
    assert by_name["photos=kept-s0"].overrides["mode"] == "full"  # every other factor stays at its baseline
    assert runner.run_key(plan, by_name["baseline-s0"]) != runner.run_key(plan, by_name["baseline-s1"])


def test_a_run_is_keyed_by_its_resolved_recipe_and_encoder_content(tmp_path):
    """A finished run is read back only if nothing it depends on changed: the level and seed, but also the base
    recipe (profile or `base:`) and the encoder file's bytes, which the run's own overrides do not show."""
    encoder = tmp_path / "encoder.safetensors"
    encoder.write_bytes(b"first")
    plan = load_plan(write_plan(tmp_path / "plan.yaml", {**PLAN, "encoder_weights": str(encoder)}))
    baseline = expand_runs(plan)[0]
    key = runner.run_key(plan, baseline)
    assert runner.run_key(load_plan(tmp_path / "plan.yaml"), expand_runs(plan)[0]) == key  # stable
    plan.finetune = {**plan.finetune, "lr": plan.finetune["lr"] * 2}  # the profile's or `base:` recipe changed
    assert runner.run_key(plan, baseline) != key
    plan = load_plan(tmp_path / "plan.yaml")
    encoder.write_bytes(b"second")  # the same path, retrained
    assert runner.run_key(plan, baseline) != key


def test_variant_merges_and_null_removes(tmp_path):
    plan = load_plan(write_plan(tmp_path / "plan.yaml"), "smaller")
    assert plan.seeds == [0] and list(plan.factors) == ["photos"]
    assert [r.name for r in expand_runs(plan)] == ["baseline-s0", "photos=kept-s0"]
    with pytest.raises(ValueError, match="no variant"):
        load_plan(tmp_path / "plan.yaml", "nope")


def test_shipped_plan_covers_the_required_factors():
    plan = load_plan("experiments.yaml")
    assert {"pretraining", "mode", "ssl_epochs", "encoder_size", "resolution", "augmentation", "imbalance",
            "duplicates", "photos"} <= set(plan.factors)
    assert set(plan.factors["imbalance"]) == {"weights", "none", "over", "under"}
    assert set(plan.factors["photos"]) == {"removed", "kept", "random-drop"}
    assert len(plan.seeds) >= 2 and {"pretraining", "mode", "photos"} <= set(plan.repeat)
    assert len(expand_runs(load_plan("experiments.yaml", "quick"))) <= 8
    recipe = load_plan("experiments.yaml", "recipe")  # issue #16: the recipe and style factors, with a LOSO column
    assert {"style", "tta", "probe", "mix", "encoder_lr", "label_smoothing", "ema", "pretraining", "weight_decay",
            "encoder_lr_decay"} <= set(recipe.factors)
    assert {"pretraining", "style"} <= set(recipe.loso) and len(recipe.seeds) >= 2


@pytest.fixture(scope="module")
def curated(fixture_bench, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("exp")
    encoder = tiny_encoder(tmp / "encoder.safetensors")
    settings = CurationSettings(photos=PhotoSettings(texture_steps=40))  # a short texture view keeps the test fast
    curate(fixture_bench / "training", tmp / "cur", tmp / "work", encoder, settings, jobs=("duplicates", "photos"))
    return tmp, encoder


def test_data_variants_change_only_the_train_side(curated):
    tmp, _ = curated
    clean = training_table(tmp / "cur")
    held_out = clean[clean["split"] != "train"].sort_values("path")["path"].tolist()
    kept = training_table(tmp / "cur", photos="kept")
    dropped = training_table(tmp / "cur", photos="random-drop", seed=1)
    for table in (kept, dropped, training_table(tmp / "cur", duplicates="kept")):
        assert table[table["split"] != "train"].sort_values("path")["path"].tolist() == held_out
    added = kept[~kept["path"].isin(clean["path"])]
    assert len(added) and added["is_photo"].all() and (added["split"] == "train").all()
    assert (dropped["split"] == "train").sum() == (clean["split"] == "train").sum()
    copies = training_table(tmp / "cur", duplicates="kept")
    extra = copies[~copies["path"].isin(clean["path"])]
    assert len(extra) and not extra["dup_group"].isin(clean.loc[clean["split"] != "train", "dup_group"]).any()


def test_tiny_plan_runs_resumes_and_reports(curated, tmp_path, monkeypatch):
    tmp, encoder = curated
    plan = load_plan(write_plan(tmp_path / "plan.yaml"), "smaller")
    plan.encoder_weights = str(encoder)
    out = tmp_path / "exp"
    summary = runner.run_plan(plan, out, tmp / "cur", tmp / "work", progress=False, log=lambda *_: None)
    assert summary["run"].tolist() == ["baseline-s0", "photos=kept-s0"]
    assert summary["test_macro_f1"].between(0, 1).all() and (summary["images_per_second"] > 0).all()
    assert {"f1_L2_2", "images_per_second", "factor", "level", "seed"} <= set(summary.columns)
    assert (out / "runs" / "baseline-s0" / "config.yaml").exists() and (out / "runs" / "baseline-s0" / "tb").exists()
    analysis = json.loads((out / "analysis.json").read_text())
    assert analysis["factors"][0]["factor"] == "photos" and analysis["text"]
    ratio = analysis["factors"][0]["levels"][1]["time_ratio"]  # a level's time over the baseline's, or NaN where
    assert ratio != ratio or 0 < ratio < 1000  # a tiny run's clock reads 0 s (it was 1e8 x)
    kept = analysis["factors"][0]["levels"][1]
    assert kept["verdict"].startswith("no change") if kept["delta_test"] == 0 else "no change" not in kept["verdict"]
    report = (out / "report.html").read_text()
    assert "What mattered" in report and "data:image/png;base64" in report and "http" not in report.split("<body>")[1]

    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(runner, "finetune_folder", must_not_train)
    again = runner.run_plan(plan, out, tmp / "cur", tmp / "work", progress=False, log=lambda *_: None)
    assert again["test_macro_f1"].tolist() == summary["test_macro_f1"].tolist()
    assert (summary["train_seconds"] <= summary["budget_seconds"]).all()  # steps alone; + validation, checkpoints
    done = out / "runs" / "baseline-s0" / runner.RESULT  # a result written before budget_seconds existed ...
    old = json.loads(done.read_text())
    old["train_seconds"] = old.pop("budget_seconds")
    done.write_text(json.dumps(old))
    older = runner.run_plan(plan, out, tmp / "cur", tmp / "work", progress=False, log=lambda *_: None)
    assert older.iloc[0]["budget_seconds"] == summary.iloc[0]["budget_seconds"]  # ... reads as one written now
    assert older.iloc[0]["train_seconds"] == summary.iloc[0]["train_seconds"]


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_every_run_is_what_its_level_says_under_each_profile(profile, monkeypatch):
    """The device profile is the plan's base; a level's name must still describe the run (e.g. imbalance)."""
    monkeypatch.setenv("ILLUSTRA_PROFILE", profile)
    plan = load_plan("experiments.yaml")
    for run in expand_runs(plan):
        config, _, _ = runner.resolve_config(plan, run)
        if run.factor == "imbalance":
            assert config.imbalance == run.level, run.name
        assert config.time_budget_s == 0, run.name
        if run.factor != "epochs":
            assert config.epochs == plan.defaults["epochs"], run.name
        if run.factor not in ("encoder_lr", "mode", "pretraining"):  # `base:` pins what the profile changed since
            assert config.encoder_lr_scale == 0.3, run.name
        if run.factor != "tta":
            assert config.tta == "none", run.name


def test_loso_column_trains_without_each_style_and_scores_on_it(curated, tmp_path):
    """A plan's `loso` factors get the leave-one-style-out score: one run per style, tested on that style only."""
    import pandas as pd

    from illustra.finetune.jobs import split_table

    tmp, encoder = curated
    clean = split_table(tmp / "cur").sort_values("path").reset_index(drop=True)
    styles = pd.DataFrame({"path": clean["path"], "style": ["flat", "outline"] * (len(clean) // 2) + ["flat"] * (len(clean) % 2)})
    styles.to_csv(tmp_path / "styles.csv", index=False)
    plan = load_plan(write_plan(tmp_path / "plan.yaml", {**PLAN, "loso": ["photos"]}), "smaller")
    plan.encoder_weights = str(encoder)
    out = tmp_path / "exp"
    summary = runner.run_plan(plan, out, tmp / "cur", tmp / "work", progress=False, log=lambda *_: None,
                              styles=tmp_path / "styles.csv")
    assert summary["loso_macro_f1"].between(0, 1).all() and {"loso_flat", "loso_outline"} <= set(summary.columns)
    for style in ("flat", "outline"):
        split = pd.read_csv(out / "runs" / "baseline-s0" / "loso" / style / "split.csv")
        tested = set(split.loc[split["split"] == "test", "path"])
        assert tested == set(styles.loc[styles["style"] == style, "path"])  # the whole style, and only it, is test
        assert not tested & set(split.loc[split["split"] != "test", "path"])
    analysis = json.loads((out / "analysis.json").read_text())
    assert any("leave-one-style-out" in line for line in analysis["text"])
    assert "LOSO macro-F1" in (out / "report.html").read_text()


def test_the_report_says_what_each_profile_ships_and_why(tmp_path):
    """Profile keys come with their YAML comment (continued on comment-only lines) and the plan's measured level."""
    from illustra.experiments.report import plan_evidence, profile_choices

    profile = tmp_path / "p.yaml"
    profile.write_text("ssl:\n  epochs: 3   # not this section\nfinetune:\n  lr: 0.006   # faster\n"
                       "              #   and better\n  encoder:\n    width: 64  # wider\n  tta: zoom\n", encoding="utf-8")
    rows = profile_choices(profile)
    assert rows == [{"key": "lr", "value": 0.006, "why": "faster and better"},
                    {"key": "encoder.width", "value": 64, "why": "wider"},
                    {"key": "tta", "value": "zoom", "why": ""}]
    shipped = profile_choices(CONFIG_DIR / "profiles" / "cpu.yaml")
    assert {r["key"] for r in shipped} >= {"lr", "tta", "encoder_lr_scale"} and all(r["why"] for r in shipped)
    plan = load_plan("experiments.yaml", "recipe")
    analysis = {"factors": [{"factor": "lr", "levels": [
        {"level": "0.003", "baseline": True},
        {"level": "0.006", "baseline": False, "delta_test": 0.037, "delta_val": 0.032, "delta_loso": float("nan"),
         "verdict": "helps"}]}]}
    assert plan_evidence(plan, analysis, "lr", 0.006).startswith("lr=0.006: test +0.037, val +0.032 (helps)")
    assert plan_evidence(plan, analysis, "lr", 0.003) == "the plan's baseline"  # pinned by the plan's `base:`
    assert plan_evidence(plan, analysis, "epochs", 26) == "not a level of this plan (its baseline: 8)"


def test_test_figure_interval_matches_sklearn_and_brackets_it(tmp_path, capsys):
    """benchmarks/f1_interval.py: F1 from a confusion matrix equals sklearn's on the same labels; the bootstrap
    interval holds the figure and narrows as the test set grows."""
    import importlib.util

    import numpy as np
    from sklearn.metrics import confusion_matrix, f1_score

    spec = importlib.util.spec_from_file_location("f1_interval", CONFIG_DIR.parent / "benchmarks" / "f1_interval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 5, 400)
    predicted = np.where(rng.random(400) < 0.7, truth, rng.integers(0, 6, 400))  # class 5: predicted, never true
    confusion = confusion_matrix(truth, predicted, labels=range(7))  # class 6: neither, left out of the mean
    macro, micro = module.f1_from_confusion(confusion)
    assert macro == pytest.approx(f1_score(truth, predicted, average="macro"))
    assert micro == pytest.approx(f1_score(truth, predicted, average="micro"))
    widths = []
    for scale in (1, 16):
        drawn = module.bootstrap_confusion(confusion * scale, draws=300)
        low, high = module.interval(drawn[:, 0], 0.95)
        assert low < macro < high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2  # 16x the images: about a quarter of the width
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(json.dumps({"test_confusion": confusion.tolist()}))
    assert module.main([str(tmp_path / "run" / "metrics.json"), "--draws", "50"]) == 0
    assert f"macro-F1 {macro:.4f}" in capsys.readouterr().out
