"""Split without leakage, safetensors round trip, folder-name mapping, tiny curate -> finetune -> evaluate."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from test_curation import tiny_encoder

from illustra.curation.photos import PhotoSettings
from illustra.curation.run import CurationSettings, curate
from illustra.errors import UserError
from illustra.finetune.jobs import UnknownClassError, evaluate_folder, finetune_folder
from illustra.finetune.model import load_classifier
from illustra.finetune.split import leaking_groups, split_manifest
from illustra.finetune.train import FinetuneConfig
from illustra.weights import read_metadata


def test_split_is_stratified_and_keeps_groups_together():
    rows = pd.DataFrame({"class_folder": np.repeat(["L2_2", "L2_3"], 40), "dup_group": -1})
    rows.loc[[0, 1, 2], "dup_group"] = 7
    split = split_manifest(rows, seed=1)
    assert not leaking_groups(rows, split)
    assert split[:3].nunique() == 1
    for _, part in split.groupby(rows["class_folder"]):
        assert set(part) == {"train", "val", "test"}
    assert split.equals(split_manifest(rows, seed=1))


@pytest.fixture(scope="module")
def tiny_run(fixture_bench, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ft")
    data = fixture_bench / "training"
    encoder = tiny_encoder(tmp / "encoder.safetensors")
    settings = CurationSettings(photos=PhotoSettings(texture_steps=40))  # a short texture view keeps the test fast
    curate(data, tmp / "cur", tmp / "work", encoder, settings, jobs=("duplicates", "photos"))
    config = FinetuneConfig(epochs=2, batch_size=16, ema_decay=0.9)
    summary = finetune_folder(tmp / "cur", tmp / "run", tmp / "work", config, encoder, progress=False)
    return data, tmp, summary


def test_finetune_writes_a_self_describing_classifier(tiny_run):
    data, tmp, summary = tiny_run
    meta = read_metadata(tmp / "run" / "classifier.safetensors")
    assert meta["illustra_kind"] == "classifier"
    from illustra.data.scan import natural_sorted

    folders = [p.name for p in data.iterdir() if p.is_dir()]
    assert meta["classes"] == natural_sorted(folders)  # model order = natural sort (L2_5 before L2_10)
    assert {"input_size", "mean", "std", "cache_policy"} <= set(meta["preprocessing"])
    model, _ = load_classifier(tmp / "run" / "classifier.safetensors")
    assert model.head.out_features == len(meta["classes"])
    assert 0.0 <= summary["test_macro_f1"] <= 1.0 and summary["epochs"] == 2


def test_resume_continues_to_the_same_weights(tiny_run, tmp_path):
    data, tmp, _ = tiny_run
    config = FinetuneConfig(epochs=2, batch_size=16, ema_decay=0.9, imbalance="none")
    encoder = tmp / "encoder.safetensors"
    first = finetune_folder(tmp / "cur", tmp_path / "a", tmp / "work", config, encoder, progress=False)
    one = FinetuneConfig(epochs=2, batch_size=16, ema_decay=0.9, imbalance="none")
    per_epoch = first["train_images"] // 16  # stop after exactly one epoch, as a kill after its checkpoint would
    finetune_folder(tmp / "cur", tmp_path / "b", tmp / "work", one, encoder, progress=False, max_steps=per_epoch)
    resumed = finetune_folder(tmp / "cur", tmp_path / "b", tmp / "work", one, encoder, progress=False, resume=True)
    assert resumed["epochs"] == 2 and len(resumed["history"]) == 2  # continued, did not restart
    finetune_folder(tmp / "cur", tmp_path / "c", tmp / "work", one, encoder, progress=False, max_steps=per_epoch)
    other = FinetuneConfig(epochs=2, batch_size=16, ema_decay=0.9, imbalance="none", encoder_lr_decay=0.8)
    with pytest.raises(UserError, match="parameter groups"):  # a changed optimizer layout says so, not torch's error
        finetune_folder(tmp / "cur", tmp_path / "c", tmp / "work", other, encoder, progress=False, resume=True)


def test_validation_every_k_epochs_and_always_after_the_last(tiny_run, tmp_path):
    data, tmp, _ = tiny_run
    config = FinetuneConfig(epochs=3, batch_size=16, ema_decay=0.9, imbalance="none", val_every=2)
    summary = finetune_folder(tmp / "cur", tmp_path / "run", tmp / "work", config, tmp / "encoder.safetensors",
                              progress=False)
    assert ["val_macro_f1" in h for h in summary["history"]] == [False, True, True]
    assert summary["setup_seconds"] >= 0.0 and summary["train_seconds"] <= summary["seconds"]  # on the budget clock
    with pytest.raises(UserError, match="val_every"):
        finetune_folder(tmp / "cur", tmp_path / "bad", tmp / "work", FinetuneConfig(epochs=1, val_every=0),
                        tmp / "encoder.safetensors", progress=False)


def test_evaluate_maps_folders_by_name_and_rejects_unknown(tiny_run, tmp_path):
    data, tmp, _ = tiny_run
    weights = tmp / "run" / "classifier.safetensors"
    subset = tmp_path / "eval"
    for folder in ("L2_10", "L2_2"):  # natural order differs from string order; mapping is by name
        shutil.copytree(data / folder, subset / folder)
    (subset / "L2_2" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    result = evaluate_folder(subset, weights)
    assert result["images"] == result["evaluated"] + 1 and len(result["unreadable"]) == 1
    classes = result["classes"]
    assert {classes[i] for i in result["labels"]} >= {"L2_10", "L2_2"} - {None}
    assert "macro avg" in result["report"] and 0 <= result["micro_f1"] <= 1
    (subset / "L2_99").mkdir()
    shutil.copy(next((data / "L2_2").iterdir()), subset / "L2_99" / "x.jpg")
    with pytest.raises(UnknownClassError, match="L2_99"):
        evaluate_folder(subset, weights)


def test_probe_epochs_leave_the_encoder_untouched_and_tta_travels_in_the_weights(tiny_run, tmp_path):
    """LP-FT's probe phase trains the head only (batch-norm statistics too stay); the weights carry tta=flip."""
    import torch

    from illustra.ssl.encoder import load_encoder

    _, tmp, _ = tiny_run
    encoder = tmp / "encoder.safetensors"
    config = FinetuneConfig(epochs=1, batch_size=16, ema_decay=0.0, probe_epochs=1, tta="flip", mix="cutmix",
                            mix_prob=1.0)
    finetune_folder(tmp / "cur", tmp_path / "probe", tmp / "work", config, encoder, progress=False)
    model, meta = load_classifier(tmp_path / "probe" / "classifier.safetensors")
    pretrained = load_encoder(encoder)[0].state_dict()
    assert all(torch.equal(value, model.encoder.state_dict()[name]) for name, value in pretrained.items())
    assert meta["preprocessing"]["tta"] == "flip"
    unfrozen = FinetuneConfig(epochs=1, batch_size=16, ema_decay=0.0, probe_epochs=0)
    finetune_folder(tmp / "cur", tmp_path / "full", tmp / "work", unfrozen, encoder, progress=False)
    changed, _ = load_classifier(tmp_path / "full" / "classifier.safetensors")
    assert not all(torch.equal(value, changed.encoder.state_dict()[name]) for name, value in pretrained.items())


def test_flip_tta_is_the_mean_over_the_mirrored_image(tiny_run):
    import torch

    from illustra.finetune.model import predict_proba

    _, tmp, _ = tiny_run
    model, meta = load_classifier(tmp / "run" / "classifier.safetensors")
    size = int(meta["preprocessing"]["input_size"])
    squares = torch.randint(0, 256, (5, 32, 32, 3), dtype=torch.uint8)
    for resample in ("grid", "resize"):
        plain = predict_proba(model, squares, size, resample=resample)
        mirrored = predict_proba(model, squares.flip(2), size, resample=resample)
        assert np.allclose(predict_proba(model, squares, size, tta="flip", resample=resample), (plain + mirrored) / 2,
                           atol=1e-5)
    with pytest.raises(ValueError):
        predict_proba(model, squares, size, tta="rotate")
    with pytest.raises(ValueError):  # zoom crops: only the training views' resampling makes crops
        predict_proba(model, squares, size, tta="zoom", resample="resize")


def test_prediction_resamples_as_the_training_views_do():
    """At 64 -> 32 px the training views' grid_sample is a 2x2 box mean; the old antialiased resize blurs more."""
    import dataclasses

    import torch
    import torch.nn.functional as F

    from illustra.finetune.model import eval_views
    from illustra.ssl.augment import ViewConfig, crop_and_flip

    images = torch.rand(3, 3, 64, 64)
    (grid,) = eval_views(images, 32, "none", "grid")
    assert torch.allclose(grid, F.avg_pool2d(images, 2), atol=1e-5)
    (resized,) = eval_views(images, 32, "none", "resize")
    assert not torch.allclose(resized, grid, atol=1e-2)
    # the same image through the training augmentation with a whole-square, never-mirrored crop
    whole = dataclasses.replace(ViewConfig(), crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=0.0)
    trained_view = crop_and_flip(images, 32, whole, torch.Generator().manual_seed(0))
    assert torch.allclose(trained_view, grid, atol=1e-5)


def test_zoom_tta_adds_the_central_crop_and_old_weights_keep_their_resampling(tiny_run):
    """zoom = whole square + its central 90 % crop, each mirrored; a 3 px frame at 64 px is outside the crop."""
    import torch

    from illustra.finetune.model import eval_views, predict_as_trained, predict_proba

    framed = torch.ones(1, 3, 64, 64)
    framed[:, 1:, :3], framed[:, 1:, -3:], framed[:, 1:, :, :3], framed[:, 1:, :, -3:] = 0, 0, 0, 0  # red frame
    views = eval_views(framed, 32, "zoom", "grid")
    assert len(views) == 4
    assert views[0][:, 1].min() < 0.5 and views[1][:, 1].min() < 0.5  # the whole square and its mirror see the frame
    assert views[2][:, 1].min() > 0.99 and views[3][:, 1].min() > 0.99  # the crops do not
    _, tmp, _ = tiny_run
    model, meta = load_classifier(tmp / "run" / "classifier.safetensors")
    assert meta["preprocessing"]["resample"] == "grid"  # new weights say how they were validated
    squares = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
    old = {key: value for key, value in meta["preprocessing"].items() if key != "resample"}
    size = int(meta["preprocessing"]["input_size"])
    assert np.allclose(predict_as_trained(model, squares, old),
                       predict_proba(model, squares, size, tta=old.get("tta", "none"), resample="resize"))


@pytest.mark.parametrize("how", ["cutmix", "mixup"])
def test_mixed_batch_weights_match_what_was_mixed(how):
    import torch

    from illustra.finetune.train import mix_batch

    views = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 3, 16, 16).contiguous()
    mixed, (own, partner, weight) = mix_batch(views, torch.arange(6), how, torch.Generator().manual_seed(2))
    assert torch.equal(own, torch.arange(6)) and sorted(partner.tolist()) == list(range(6))
    expected = weight * own.float() + (1 - weight) * partner.float()  # each image's mean is its label mix
    assert torch.allclose(mixed.mean(dim=(1, 2, 3)), expected, atol=1e-5)


def test_adapt_bn_re_estimates_statistics_on_the_folder_only(tiny_run):
    """AdaBN: a copy whose batch-norm running means are the new images' own; weights and the original untouched."""
    import torch
    from torch import nn

    from illustra.finetune.jobs import evaluate_folder
    from illustra.finetune.model import adapt_batchnorm

    data, tmp, _ = tiny_run
    weights = tmp / "run" / "classifier.safetensors"
    model, meta = load_classifier(weights)
    size = int(meta["preprocessing"]["input_size"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dark = torch.randint(0, 60, (12, 32, 32, 3), dtype=torch.uint8)  # far from the training images' statistics
    adapted = adapt_batchnorm(model, dark, size)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the original is untouched
    first = next(m for m in adapted.modules() if isinstance(m, nn.BatchNorm2d))
    original = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert not torch.allclose(first.running_mean, original.running_mean) and not adapted.training
    assert all(torch.equal(p, model.state_dict()[k]) for k, p in adapted.state_dict().items()
               if "running" not in k and "num_batches" not in k)  # only the statistics moved
    plain, adapted_result = evaluate_folder(data, weights), evaluate_folder(data, weights, adapt_bn=True)
    assert adapted_result["adapted_batchnorm"] and adapted_result["evaluated"] == plain["evaluated"]
    assert adapted_result["warnings"] and not plain["warnings"]  # a tiny folder: AdaBN's statistics are noise, said so
    assert 0.0 <= adapted_result["macro_f1"] <= 1.0


def test_export_writes_the_split_as_folders_and_evaluate_reproduces_the_test_score(tiny_run, tmp_path):
    """`illustra export RUN --to DIR`: hard links, CSV lists, originals untouched; evaluate.py on DIR/test
    gives the run's own held-out macro-F1 (the submission contract on the user's data)."""
    import os

    from illustra.cli import main
    from illustra.errors import UserError
    from illustra.finetune.export import export_split

    data, tmp, summary = tiny_run
    before = {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file()}
    result = export_split(tmp / "run", tmp_path / "export")
    split = pd.read_csv(tmp / "run" / "split.csv")
    for part in ("train", "val", "test"):
        listed = pd.read_csv(tmp_path / "export" / f"{part}.csv")
        assert len(listed) == (split["split"] == part).sum() == result["counts"][part]
        for rel, source in zip(listed["path"], listed["source_path"]):
            exported = tmp_path / "export" / part / rel
            assert os.path.samefile(exported, data / source)  # a hard link to the user's file, not a copy
    assert {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file()} == before
    evaluated = evaluate_folder(tmp_path / "export" / "test", tmp / "run" / "classifier.safetensors")
    assert evaluated["evaluated"] == result["counts"]["test"]
    assert evaluated["macro_f1"] == pytest.approx(summary["test_macro_f1"], abs=1e-9)
    assert evaluated["micro_f1"] == pytest.approx(summary["test_micro_f1"], abs=1e-9)
    with pytest.raises(UserError, match="already holds files"):
        export_split(tmp / "run", tmp_path / "export")
    with pytest.raises(UserError, match="inside the data folder"):
        export_split(tmp / "run", data / "exported")
    assert main(["export", str(tmp / "run"), "--to", str(tmp_path / "copies"), "--copy"]) == 0
    copied = next((tmp_path / "copies" / "test").rglob("*.*"))
    assert not any(os.path.samefile(copied, p) for p in data.rglob("*") if p.is_file())


def test_illustra_run_takes_a_folder_to_a_verified_classifier_and_skips_what_is_done(fixture_bench, tmp_path,
                                                                                     monkeypatch):
    """`illustra run DATA --out WORK` end to end on a small generated folder: the exported test folder reproduces
    the fine-tuning run's held-out F1, and a second run redoes nothing but the (cheap) scan, also when the first
    was recorded with the keys of an older illustra (the configs' text)."""
    import json

    from illustra import workflow
    from illustra.cli import main
    from illustra.workflow import run_workflow

    encoder = tiny_encoder(tmp_path / "encoder.safetensors")
    work = tmp_path / "work"
    sets = ["curate.photos.texture_steps=40", "finetune.epochs=2", "finetune.batch_size=16"]
    argv = ["run", str(fixture_bench / "training"), "--out", str(work), "--encoder", str(encoder)]
    with monkeypatch.context() as patch:
        patch.setattr(workflow, "stage_key", workflow.text_stage_key)  # the first run writes the older keys
        assert main([*argv, *[arg for item in sets for arg in ("--set", item)]]) == 0
    record = json.loads((work / "run.json").read_text(encoding="utf-8"))
    assert all(stage["done"] for stage in record["stages"].values()) and "pretrain" not in record["stages"]
    metrics = json.loads((work / "finetune" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["epochs"] == 2
    assert record["summary"]["test_macro_f1"] == pytest.approx(metrics["test_macro_f1"], abs=1e-9)
    assert record["summary"]["split"]["test"] == metrics["split_sizes"]["test"]
    page = (work / "index.html").read_text(encoding="utf-8")
    assert "Misclassified test images" in page and "curation/report.html" in page
    executed = []
    run_workflow(fixture_bench / "training", work, lambda command: executed.append(command[0]) or main(command),
                 encoder=encoder, sets=sets, log=lambda *_: None)
    assert executed == ["scan"]  # nothing changed: every later stage is up to date, its older key carried over
    carried = json.loads((work / "run.json").read_text(encoding="utf-8"))["stages"]
    assert carried["finetune"]["key"] != record["stages"]["finetune"]["key"]  # now the values' key
    executed.clear()
    run_workflow(fixture_bench / "training", work, lambda command: executed.append(command[0]) or main(command),
                 encoder=encoder, sets=sets, start_from="export", log=lambda *_: None)
    assert executed == ["scan", "export", "evaluate"]


def test_mixstyle_swaps_statistics_and_keeps_content():
    """MixStyle: weight 1 leaves a map as it is; weight 0 gives it the partner's per-channel mean and std,
    while its normalised map (the content) is unchanged."""
    import torch

    from illustra.finetune.mixstyle import mix_statistics

    gen = torch.Generator().manual_seed(0)
    features = torch.randn(4, 8, 6, 6, generator=gen) * torch.arange(1, 5).view(4, 1, 1, 1) + torch.arange(4).view(4, 1, 1, 1)
    partner = torch.tensor([1, 0, 3, 2])
    assert torch.allclose(mix_statistics(features, partner, torch.ones(4)), features, atol=1e-4)
    swapped = mix_statistics(features, partner, torch.zeros(4))
    assert torch.allclose(swapped.mean(dim=(2, 3)), features[partner].mean(dim=(2, 3)), atol=1e-4)
    assert torch.allclose(swapped.std(dim=(2, 3)), features[partner].std(dim=(2, 3)), atol=1e-3)

    def normalised(x):
        return (x - x.mean(dim=(2, 3), keepdim=True)) / x.std(dim=(2, 3), keepdim=True)
    assert torch.allclose(normalised(swapped), normalised(features), atol=1e-3)


def test_mixstyle_acts_in_training_only_and_the_run_is_reproducible(tiny_run, tmp_path):
    """The hooks change the training forward pass and nothing at prediction; two runs of one seed give the
    same weights; the weights file is a plain classifier (no MixStyle in it)."""
    import torch

    from illustra.finetune.mixstyle import MixStyle
    from illustra.ssl.encoder import load_encoder

    _, tmp, _ = tiny_run
    encoder_path = tmp / "encoder.safetensors"
    encoder = load_encoder(encoder_path)[0]
    images = torch.rand(6, 3, 32, 32)
    before = encoder(images)
    mixstyle = MixStyle(encoder, p=1.0, alpha=0.1, blocks=2)
    plan = mixstyle.draw(6, torch.Generator().manual_seed(1), images)
    assert all(step is not None for step in plan)
    with mixstyle.apply(plan):
        assert torch.allclose(encoder(images), before)  # eval mode: no mixing
        encoder.train()
        mixed = encoder(images)
    assert not torch.allclose(mixed, encoder(images), atol=1e-4)  # outside `apply`: no mixing either
    config = FinetuneConfig(epochs=1, batch_size=16, ema_decay=0.0, mixstyle=0.5)
    for name in ("a", "b"):
        finetune_folder(tmp / "cur", tmp_path / name, tmp / "work", config, encoder_path, progress=False)
    first, _ = load_classifier(tmp_path / "a" / "classifier.safetensors")
    second, _ = load_classifier(tmp_path / "b" / "classifier.safetensors")
    assert all(torch.equal(value, second.state_dict()[key]) for key, value in first.state_dict().items())
    plain = FinetuneConfig(epochs=1, batch_size=16, ema_decay=0.0)
    finetune_folder(tmp / "cur", tmp_path / "plain", tmp / "work", plain, encoder_path, progress=False)
    other, _ = load_classifier(tmp_path / "plain" / "classifier.safetensors")
    assert not all(torch.equal(value, other.state_dict()[key]) for key, value in first.state_dict().items())


def test_half_copy_halves_the_file_and_predicts_as_the_float32_file(tiny_run, tmp_path):
    from illustra.weights import half_copy, load_weights

    data, tmp, _ = tiny_run
    weights = tmp / "run" / "classifier.safetensors"
    small = half_copy(weights, tmp_path / "half.safetensors")
    tensors, meta = load_weights(small)
    assert meta["storage"].startswith("float16") and meta["classes"] == read_metadata(weights)["classes"]
    assert {t.dtype for t in tensors.values() if t.ndim > 1} == {torch.float16}
    assert all(t.dtype != torch.float16 for t in tensors.values() if t.ndim <= 1)  # batch norm stays float32
    original, _ = load_weights(weights)
    assert sum(t.nbytes for t in tensors.values()) < 0.6 * sum(t.nbytes for t in original.values())
    model, _ = load_classifier(small)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    full, halved = evaluate_folder(data, weights), evaluate_folder(data, small)
    same = [a["predicted"] == b["predicted"] for a, b in zip(full["predictions"], halved["predictions"])]
    assert len(same) == full["evaluated"] and np.mean(same) >= 0.97


def test_the_shipped_gpu_classifier_loads_on_a_cpu_and_predicts_real_images(fixture_bench, tmp_path):
    from pathlib import Path

    shipped = Path(__file__).resolve().parent.parent / "checkpoints" / "classifier_gpu.safetensors"
    meta = read_metadata(shipped)
    assert meta["training"]["profile"] == "gpu" and meta["training"]["device"].startswith("cuda")
    assert meta["architecture"]["width"] == 64 and meta["storage"].startswith("float16")
    subset = tmp_path / "eval"
    for folder in ("L2_2", "L2_10"):
        (subset / folder).mkdir(parents=True)
        for path in sorted((fixture_bench / "training" / folder).iterdir())[:3]:
            shutil.copy(path, subset / folder / path.name)
    result = evaluate_folder(subset, shipped)
    assert result["evaluated"] == 6 and {row["predicted"] for row in result["predictions"]} <= set(meta["classes"])
    assert all(0.0 < row["probability"] <= 1.0 for row in result["predictions"])


def test_layer_wise_lr_decay_moves_the_stem_least_and_keeps_every_parameter_once():
    """encoder_lr_decay 0.5: last block at lr * scale, each layer below at half the one above; 1.0: the old 3 groups."""
    from illustra.finetune.model import Classifier
    from illustra.finetune.train import make_optimizer
    from illustra.ssl.encoder import Encoder, EncoderConfig

    torch.manual_seed(0)
    model = Classifier(Encoder(EncoderConfig(width=8, stages=3, blocks_per_stage=1, input_size=16)), classes=4)
    plain = make_optimizer(model, FinetuneConfig(encoder_lr_scale=0.5, lr=0.01))
    assert [len(g["params"]) > 0 for g in plain.param_groups] == [True] * 3
    assert [g["lr"] for g in plain.param_groups] == pytest.approx([0.01, 0.005, 0.005])
    optimizer = make_optimizer(model, FinetuneConfig(encoder_lr_scale=0.5, encoder_lr_decay=0.5, lr=0.01,
                                                     weight_decay=0.0))
    ids = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # each parameter in exactly one group
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    stem, last = model.encoder.stem[0].weight, model.encoder.body[-1].conv2.weight
    assert lr_of[id(last)] == pytest.approx(0.005) and lr_of[id(stem)] == pytest.approx(0.005 * 0.5**3)
    assert lr_of[id(model.encoder.body[0].conv1.weight)] == pytest.approx(0.005 * 0.5**2)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    images, labels = torch.randn(8, 3, 16, 16), torch.arange(8) % 4
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    optimizer.step()  # Adam's first step moves each weight by about its lr, whatever the gradient's size
    moved = {name: (p.detach() - before[name]).abs().mean().item() for name, p in model.named_parameters()}
    assert moved["encoder.stem.0.weight"] < 0.2 * moved["encoder.body.2.shortcut.0.weight"]  # residual branches start at 0
    with pytest.raises(ValueError, match="encoder_lr_decay"):
        make_optimizer(model, FinetuneConfig(encoder_lr_decay=0.0))


def test_stage_keys_follow_config_values_not_their_text(tmp_path):
    """`illustra run` redoes a stage when a value it reads changes, not when a comment does; of the device
    profile, a stage reads only its own section (curation also shows fine-tuning's imbalance plan)."""
    import shutil

    import yaml

    from illustra.config import CONFIG_DIR
    from illustra.workflow import stage_key

    configs = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, configs)
    profile = configs / "profiles" / "cpu.yaml"

    def keys(name: str = "cpu") -> dict:
        return {stage: stage_key(stage, ["argv"], "index", "", name, configs) for stage in ("pretrain", "curate", "finetune")}

    def set_value(path, section, key, value):  # a value change (the file is rewritten without its comments)
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        (raw[section] if section else raw)[key] = value
        path.write_text(yaml.safe_dump(raw), encoding="utf-8")

    before = keys()
    for path in (configs / "ssl.yaml", configs / "finetune.yaml", profile):
        path.write_text("# a comment on top\n\n" + path.read_text(encoding="utf-8") + "\n# and one below\n",
                        encoding="utf-8")
    assert keys() == before
    set_value(profile, "finetune", "time_budget_s", 600)
    after = keys()
    assert after["finetune"] != before["finetune"]
    assert after["pretrain"] == before["pretrain"] and after["curate"] == before["curate"]
    set_value(profile, "finetune", "imbalance", "weights")  # the curation report shows it
    assert keys()["curate"] != after["curate"]
    set_value(profile, "ssl", "time_budget_s", 60)
    assert keys()["pretrain"] != after["pretrain"]
    set_value(configs / "ssl.yaml", None, "temperature", 0.1)
    assert keys()["pretrain"] != before["pretrain"]
    assert keys("cpu")["finetune"] != keys("no-such-profile")["finetune"]  # a profile's name is recorded in the weights
