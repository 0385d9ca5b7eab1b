"""SimCLR encoder: augmentation, training signal, checkpoints, resume, embeddings, DDP on CPU."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import free_port
from torch.nn import functional as F

from illustra.data.cache import CacheSpec, open_pixels
from illustra.data.index import IndexSettings, index_dataset
from illustra.data.manifest import load_manifest
from illustra.errors import UserError
from illustra.ssl.augment import (
    ViewConfig,
    channel_shuffle,
    colour_jitter,
    crop_and_flip,
    invert,
    line_art,
    make_view,
    normalise,
    outline,
    random_blur,
    random_conv,
    random_grayscale,
    to_float,
)
from illustra.ssl.encoder import Encoder, EncoderConfig
from illustra.ssl.jobs import embed_folder, parse_duration
from illustra.ssl.pretrain import (
    PretrainConfig,
    SimCLR,
    SimCLRTask,
    export_encoder,
    load_encoder,
    make_optimizer,
    multi_view_ntxent,
    pretrain,
)
from illustra.train.checkpoint import optimizer_tensors, restore_optimizer
from illustra.train.device import cpu_has_bf16
from illustra.weights import read_metadata

TINY = PretrainConfig(encoder=EncoderConfig(width=8, stages=2, input_size=16), epochs=3, batch_size=16,
                      lr=3e-3, warmup_epochs=0.5, knn_every=0, projection_hidden=32, projection_dim=16, threads=1)
PRE = {"cache_size": 32, "cache_policy": "letterbox", "input_size": 16}


@pytest.fixture(scope="module")
def tiny_pixels(fixture_bench, tmp_path_factory):
    work = tmp_path_factory.mktemp("index")
    index_dataset(fixture_bench / "training", work, IndexSettings(CacheSpec(32)), progress=False)
    manifest = load_manifest(work)
    usable = manifest[manifest["cache_row"] >= 0]
    return np.asarray(open_pixels(work, CacheSpec(32))[usable["cache_row"].to_numpy()]), usable["class_id"].to_numpy()


def test_views_have_the_right_shape_and_scale():
    images = to_float(torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8))
    view = make_view(images, 16, ViewConfig(blur=0.5), torch.Generator().manual_seed(0))
    assert view.shape == (8, 3, 16, 16) and torch.isfinite(view).all()
    assert -2.1 <= view.min() and view.max() <= 2.1  # (x - 0.5) / 0.25 of [0, 1]


def test_identity_crop_and_flip_are_exact():
    images = torch.rand(4, 3, 16, 16)
    gen = torch.Generator().manual_seed(0)
    same = crop_and_flip(images, 16, ViewConfig(crop_scale=(1, 1), crop_ratio=(1, 1), flip=0.0), gen)
    assert torch.allclose(same, images, atol=1e-5)
    mirrored = crop_and_flip(images, 16, ViewConfig(crop_scale=(1, 1), crop_ratio=(1, 1), flip=1.0), gen)
    assert torch.allclose(mirrored, images.flip(-1), atol=1e-5)


def test_grayscale_and_blur():
    images = torch.rand(4, 3, 16, 16)
    gen = torch.Generator().manual_seed(0)
    grey = random_grayscale(images, 1.0, gen)
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])
    blurred = random_blur(images, ViewConfig(blur=1.0, blur_sigma=(1.0, 1.0)), gen)
    assert blurred.shape == images.shape and blurred.std() < images.std() * 0.7
    kept = random_blur(images, ViewConfig(blur=0.0), gen)
    assert torch.allclose(kept, images, atol=1e-4)


def drawing(size: int = 32) -> torch.Tensor:
    """A red disc with a 1 px black outline on white, (1, 3, S, S) in [0, 1]."""
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    radius = ((x - size / 2) ** 2 + (y - size / 2) ** 2).sqrt()
    image = torch.ones(3, size, size)
    image[1:, radius < size / 3] = 0.0  # red fill
    image[:, (radius >= size / 3) & (radius < size / 3 + 1)] = 0.0  # black outline
    return image.unsqueeze(0)


def test_style_steps_change_style_and_keep_the_drawing():
    image, gen = drawing(), torch.Generator().manual_seed(0)
    lines = line_art(image, 1.0, gen)[0]
    assert torch.allclose(lines[0], lines[1]) and torch.allclose(lines[1], lines[2])  # no colour left
    assert lines[:, 0, 0].min() > 0.95 and lines[:, 16, 16].min() > 0.95  # flat background and fill turn white
    assert lines[0, 16, 24:30].min() < 0.2  # the disc's edge is drawn dark
    thick = outline(image, 1.0, gen)
    assert (thick.amax(1) < 0.1).sum() > (image.amax(1) < 0.1).sum() * 1.5  # more black stroke pixels
    shuffled = channel_shuffle(image.repeat(16, 1, 1, 1), 1.0, gen)
    assert torch.equal(shuffled.sort(1).values, image.repeat(16, 1, 1, 1).sort(1).values)  # a permutation per pixel
    assert not all(torch.equal(s, image[0]) for s in shuffled)  # and not always the identity
    assert torch.allclose(invert(image, 1.0, gen), 1 - image)
    mixed = random_conv(image.repeat(4, 1, 1, 1), 1.0, gen)
    assert mixed.shape == (4, 3, 32, 32) and mixed.min() >= 0 and mixed.max() <= 1
    assert not torch.allclose(mixed, image.repeat(4, 1, 1, 1), atol=0.05)
    for step in (line_art, outline, channel_shuffle, invert, random_conv):
        assert torch.equal(step(image, 0.0, gen), image), step.__name__  # probability 0: untouched


def test_style_steps_that_are_off_draw_no_random_numbers():
    """Adding the style steps leaves every earlier recipe's views (and the shipped runs) exactly as they were."""
    images, config = torch.rand(4, 3, 32, 32), ViewConfig()
    plain = make_view(images, 16, config, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)  # the view pipeline as it was before the style steps
    before = normalise(random_grayscale(colour_jitter(crop_and_flip(images, 16, config, gen), config, gen),
                                        config.grayscale, gen))
    assert torch.equal(plain, before)
    styled = make_view(images, 16, ViewConfig(line_art=1.0), torch.Generator().manual_seed(3))
    assert not torch.equal(plain, styled)


def test_loss_decreases_on_a_tiny_set(tiny_pixels, tmp_path):
    pixels, labels = tiny_pixels
    summary = pretrain(pixels, labels, tmp_path, TINY.__class__(**{**TINY.__dict__, "epochs": 8}), PRE, progress=False)
    losses = [h["loss"] for h in summary["history"]]
    assert np.mean(losses[-2:]) < losses[0] - 0.1, losses


def test_multi_view_ntxent_is_simclr_for_two_views_and_counts_every_view_as_positive():
    from lightly.loss import NTXentLoss

    generator = torch.Generator().manual_seed(0)
    first, second = torch.randn(12, 16, generator=generator), torch.randn(12, 16, generator=generator)
    assert multi_view_ntxent([first, second], 0.2).item() == pytest.approx(NTXentLoss(temperature=0.2)(first, second).item(),
                                                                          rel=1e-5)
    images = torch.randn(12, 16, generator=generator)
    noisy = [images + 0.1 * torch.randn(12, 16, generator=generator) for _ in range(4)]
    aligned = multi_view_ntxent(noisy, 0.2)
    shuffled = multi_view_ntxent([noisy[0], noisy[1], noisy[2][torch.randperm(12, generator=generator)], noisy[3]], 0.2)
    # the floor is log(3): three positives share the probability mass; a view of another image is punished
    assert math.log(3) < aligned < math.log(3) + 0.3 < shuffled


def test_decoupled_loss_is_lightlys_dcl_and_drops_only_the_positive_from_the_denominator():
    from lightly.loss import DCLLoss

    generator = torch.Generator().manual_seed(1)
    first = torch.randn(12, 16, generator=generator)
    second = first + 0.3 * torch.randn(12, 16, generator=generator)
    decoupled = multi_view_ntxent([first, second], 0.2, decoupled=True)
    assert decoupled.item() == pytest.approx(DCLLoss(temperature=0.2)(first, second).item(), rel=1e-5)
    # NT-Xent's denominator holds the positive too, so it is the larger loss, by at most log(1 + e^(2/T))
    coupled = multi_view_ntxent([first, second], 0.2)
    assert decoupled < coupled < decoupled + math.log(1 + math.exp(2 / 0.2))


def test_pretraining_with_the_decoupled_loss_learns(tiny_pixels, tmp_path):
    pixels, labels = tiny_pixels
    config = TINY.__class__(**{**TINY.__dict__, "epochs": 12, "loss": "dcl"})
    summary = pretrain(pixels, labels, tmp_path, config, PRE, progress=False)
    losses = [h["loss"] for h in summary["history"]]
    assert np.mean(losses[-2:]) < losses[0] - 0.1, losses
    assert read_metadata(tmp_path / "encoder.safetensors")["training"]["config"]["loss"] == "dcl"
    with pytest.raises(UserError, match="unknown loss"):
        pretrain(pixels, labels, tmp_path / "bad", TINY.__class__(**{**TINY.__dict__, "loss": "infonce"}), PRE,
                 progress=False)
    assert not (tmp_path / "bad").exists()  # refused before anything is written


def test_nnclr_bank_returns_the_nearest_past_projection_and_forgets_the_oldest_first():
    from types import SimpleNamespace

    from illustra.ssl.pretrain import SimCLRTask

    task = SimCLRTask.__new__(SimCLRTask)  # only the bank's two methods; no data, no trainer
    task.config, task.bank, task.bank_filled, task.bank_next = SimpleNamespace(nn_bank=3), None, 0, 0
    query = torch.tensor([[1.0, 0.1], [0.1, 1.0]])
    assert torch.allclose(task.neighbours(query), F.normalize(query, dim=1))  # empty bank: the view itself
    east, north, west, south = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 3.0]]), torch.tensor([[-1.0, 0.0]]), \
        torch.tensor([[0.0, -1.0]])
    task.remember(torch.cat([east, north]))
    assert torch.equal(task.neighbours(query), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # unit rows, nearest one
    task.remember(torch.cat([west, south]))  # four into three rows: east, the oldest, is overwritten
    assert task.bank_filled == 3
    assert torch.equal(task.neighbours(torch.tensor([[1.0, -0.9]])), torch.tensor([[0.0, -1.0]]))


def test_pretraining_with_nearest_neighbour_positives_learns(tiny_pixels, tmp_path):
    pixels, labels = tiny_pixels
    config = TINY.__class__(**{**TINY.__dict__, "epochs": 12, "nn_bank": 64, "loss": "dcl"})
    summary = pretrain(pixels, labels, tmp_path, config, PRE, progress=False)
    losses = [h["loss"] for h in summary["history"]]
    assert np.mean(losses[-2:]) < losses[0] - 0.1, losses
    assert read_metadata(tmp_path / "encoder.safetensors")["training"]["config"]["nn_bank"] == 64
    with pytest.raises(UserError, match="nn_bank"):
        pretrain(pixels, labels, tmp_path / "bad", TINY.__class__(**{**TINY.__dict__, "nn_bank": -1}), PRE,
                 progress=False)


def test_chunked_forward_shuffles_the_views_and_puts_each_projection_back_in_its_place(tiny_pixels, tmp_path):
    from illustra.train.loop import LoopSettings, Trainer

    pixels, labels = tiny_pixels
    data = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2)
    model = SimCLR(TINY).eval()  # running statistics: the chunking cannot change a projection
    batches = {}
    for chunk in (0, 8):
        trainer = Trainer(LoopSettings(epochs=1, steps_per_epoch=1, seed=3), progress=False)
        task = SimCLRTask(data, TINY.__class__(**{**TINY.__dict__, "forward_chunk": chunk}), trainer, 1)
        batches[chunk] = next(task.batches(0, trainer.random, trainer.device))
        with torch.no_grad():
            batches[chunk] += (task.project(model, *batches[chunk][:2]),)
    whole, chunked = batches[0], batches[8]
    assert whole[1] is None and chunked[1] is not None  # 0: no shuffle, no extra random draw
    assert torch.equal(chunked[0][chunked[1]], whole[0])  # the same views, shuffled; `inverse` undoes it
    assert not torch.equal(chunked[0], whole[0])
    order = chunked[1].argsort()  # where each view went: an image's two views share a chunk only by chance
    together = (order[:TINY.batch_size] // 8 == order[TINY.batch_size:] // 8).float().mean()
    assert together < 0.75
    assert torch.allclose(chunked[3], whole[3], atol=1e-5)  # each projection back in its view's place
    # in training, batch norm normalises per chunk (ghost BN): the chunks' statistics, not the batch's
    model.train()
    with torch.no_grad():
        assert not torch.allclose(task.project(model, *chunked[:2]), model(whole[0]), atol=1e-3)
    # (whether it learns as well is a benchmark on real images, not a 69-image test: RESULTS.md, chunked forward)
    config = TINY.__class__(**{**TINY.__dict__, "epochs": 1, "forward_chunk": 8})
    pretrain(pixels, labels, tmp_path, config, PRE, progress=False)
    assert read_metadata(tmp_path / "encoder.safetensors")["training"]["config"]["forward_chunk"] == 8
    with pytest.raises(UserError, match="forward_chunk"):
        pretrain(pixels, labels, tmp_path / "bad", TINY.__class__(**{**TINY.__dict__, "forward_chunk": -1}), PRE,
                 progress=False)


def test_small_views_train_an_encoder_that_is_read_at_its_input_size(tiny_pixels, tmp_path):
    from illustra.train.loop import LoopSettings, Trainer

    pixels, labels = tiny_pixels
    small = TINY.__class__(**{**TINY.__dict__, "view_size": 12, "epochs": 12, "lr": 1e-2})
    trainer = Trainer(LoopSettings(epochs=1, steps_per_epoch=1, seed=3), progress=False)
    task = SimCLRTask(torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2), small, trainer, 1)
    views = next(task.batches(0, trainer.random, trainer.device))[0]
    assert views.shape[-2:] == (12, 12)  # SimCLR's views at view_size ...
    summary = pretrain(pixels, labels, tmp_path, small, PRE, progress=False)
    losses = [h["loss"] for h in summary["history"]]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.2, losses  # 12 px views: noisier, so means of three
    meta = read_metadata(tmp_path / "encoder.safetensors")  # ... and the file read at the encoder's input size
    assert meta["architecture"]["input_size"] == meta["preprocessing"]["input_size"] == 16
    assert meta["training"]["config"]["view_size"] == 12
    for size in (7, 40):  # smaller than a usable view, or larger than the 32 px cache: refused before any work
        with pytest.raises(UserError, match="view_size"):
            pretrain(pixels, labels, tmp_path / "bad", TINY.__class__(**{**TINY.__dict__, "view_size": size}), PRE,
                     progress=False)
    assert not (tmp_path / "bad").exists()


def test_multi_crop_pretraining_learns_and_records_its_views(tiny_pixels, tmp_path):
    pixels, labels = tiny_pixels
    config = TINY.__class__(**{**TINY.__dict__, "epochs": 20, "lr": 1e-2, "local_crops": 2, "local_size": 12})
    summary = pretrain(pixels, labels, tmp_path, config, PRE, progress=False)
    losses = [h["loss"] for h in summary["history"]]
    assert np.mean(losses[-3:]) < losses[0] - 0.3, losses  # 4 views: noisier per epoch than two, so longer
    training = read_metadata(tmp_path / "encoder.safetensors")["training"]
    assert training["config"]["local_crops"] == 2 and training["config"]["local_size"] == 12
    with pytest.raises(UserError, match="local_size"):
        pretrain(pixels, labels, tmp_path / "bad", TINY.__class__(**{**TINY.__dict__, "local_crops": 2, "local_size": 32}),
                 PRE, progress=False)


def test_embeddings_patch_logits_and_predictions_do_not_depend_on_the_batch(tiny_pixels):
    """The CPU defaults are small batches (speed, benchmarks/RESULTS.md): eval-mode inference must not care."""
    from illustra.curation.texture import TextureNet, patch_logits
    from illustra.finetune.model import Classifier, predict_proba
    from illustra.ssl.embed import embed_tensor

    images, _ = tiny_pixels
    torch.manual_seed(0)
    encoder = Encoder(EncoderConfig(width=8, stages=2, input_size=32)).eval()
    pixels = torch.from_numpy(images)
    np.testing.assert_allclose(embed_tensor(encoder, pixels, 32), embed_tensor(encoder, pixels, 32, batch_size=7),
                               atol=1e-6)
    patches = images[:, :16, :16]  # real drawing corners as patches
    texture = TextureNet(8).eval()
    np.testing.assert_allclose(patch_logits(texture, patches), patch_logits(texture, patches, chunk=5), atol=1e-6)
    classifier = Classifier(encoder, 3).eval()
    np.testing.assert_allclose(predict_proba(classifier, pixels, 32, tta="zoom"),
                               predict_proba(classifier, pixels, 32, batch_size=7, tta="zoom"), atol=1e-6)


def test_encoder_file_round_trip_with_metadata(tmp_path):
    encoder = Encoder(EncoderConfig(width=8, stages=2, input_size=16)).eval()
    path = export_encoder(tmp_path / "e.safetensors", encoder, TINY, PRE, {"epochs": 0})
    loaded, meta = load_encoder(path)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(loaded(x), encoder(x))
    assert meta["architecture"]["width"] == 8 and meta["preprocessing"]["input_size"] == 16
    assert read_metadata(path)["illustra_kind"] == "encoder"
    assert b"pickle" not in path.read_bytes()[:64]


def test_optimizer_state_round_trip():
    model = SimCLR(TINY)
    optimizer = make_optimizer(model, TINY)
    model(torch.randn(4, 3, 16, 16)).sum().backward()
    optimizer.step()
    tensors, meta = optimizer_tensors(optimizer)
    fresh = make_optimizer(model, TINY)
    restore_optimizer(fresh, tensors, json.loads(json.dumps(meta)))
    for (_, a), (_, b) in zip(optimizer.state_dict()["state"].items(), fresh.state_dict()["state"].items()):
        assert all(torch.equal(a[k], b[k]) for k in a if torch.is_tensor(a[k]))


def test_weight_average_is_what_the_run_exports(tiny_pixels, tmp_path):
    from illustra.train.loop import CHECKPOINT
    from illustra.weights import load_weights, with_prefix

    pixels, labels = tiny_pixels
    pretrain(pixels, labels, tmp_path, TINY.__class__(**{**TINY.__dict__, "ema_decay": 0.9}), PRE, progress=False)
    tensors, _ = load_weights(tmp_path / CHECKPOINT)
    exported, _ = load_encoder(tmp_path / "encoder.safetensors")
    averaged, raw = with_prefix(tensors, "ema.encoder"), with_prefix(tensors, "model.encoder")
    weights = [k for k, v in exported.state_dict().items() if v.dtype.is_floating_point and v.ndim > 1]
    assert weights and all(torch.equal(exported.state_dict()[k], averaged[k]) for k in weights)
    assert not all(torch.equal(exported.state_dict()[k], raw[k]) for k in weights)  # the average, not the last step
    assert read_metadata(tmp_path / "encoder.safetensors")["training"]["config"]["ema_decay"] == 0.9
    with pytest.raises(UserError, match="ema_decay"):
        pretrain(pixels, labels, tmp_path / "bad", TINY.__class__(**{**TINY.__dict__, "ema_decay": 1.0}), PRE,
                 progress=False)


@pytest.mark.parametrize("nn_bank, ema_decay, forward_chunk", [(0, 0.0, 0), (40, 0.0, 0), (0, 0.9, 0), (0, 0.0, 8)],
                         ids=["simclr", "nnclr-bank", "ema", "chunked"])
def test_resume_after_interruption_matches_an_uninterrupted_run(tiny_pixels, tmp_path, nn_bank, ema_decay,
                                                                forward_chunk):
    pixels, labels = tiny_pixels
    # NNCLR's bank and the weight average are in the checkpoint too; the chunks' shuffle draws from the run's stream
    config = TINY.__class__(**{**TINY.__dict__, "nn_bank": nn_bank, "ema_decay": ema_decay,
                               "forward_chunk": forward_chunk})
    steps_per_epoch = len(pixels) // TINY.batch_size
    pretrain(pixels, labels, tmp_path / "full", config, PRE, progress=False)
    pretrain(pixels, labels, tmp_path / "cut", config, PRE, progress=False, max_steps=steps_per_epoch)  # "killed"
    assert json.loads((tmp_path / "cut" / "metrics.json").read_text())["epochs"] == 1
    summary = pretrain(pixels, labels, tmp_path / "cut", config, PRE, progress=False, resume=True)
    assert summary["epochs"] == 3
    full, _ = load_encoder(tmp_path / "full" / "encoder.safetensors")
    resumed, _ = load_encoder(tmp_path / "cut" / "encoder.safetensors")
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)  # bit-identical: every random stream is restored


def test_embeddings_are_normalised_aligned_and_reused(fixture_bench, tmp_path):
    encoder = Encoder(EncoderConfig(width=8, stages=2, input_size=16))
    path = export_encoder(tmp_path / "e.safetensors", encoder, TINY, PRE, {})
    data, out, work = fixture_bench / "training", tmp_path / "emb", tmp_path / "work"
    manifest, reused = embed_folder(data, path, out, work, CacheSpec(32))
    features = np.load(tmp_path / "emb" / "embeddings.npy")
    assert not reused and len(features) == len(manifest)
    loaded = manifest["embedding_row"].to_numpy() >= 0
    assert np.allclose(np.linalg.norm(features[loaded], axis=1), 1, atol=1e-4)
    _, reused = embed_folder(data, path, out, work, CacheSpec(32))
    assert reused
    # a second consumer of the same index and encoder (`curate` after `embed`) reuses them, bit for bit
    _, reused = embed_folder(data, path, tmp_path / "curation" / "embeddings", work, CacheSpec(32))
    assert reused and np.array_equal(np.load(tmp_path / "curation" / "embeddings" / "embeddings.npy"), features)
    other = export_encoder(tmp_path / "f.safetensors", Encoder(EncoderConfig(width=8, stages=2, input_size=16)), TINY,
                           PRE, {"note": "another encoder file"})
    _, reused = embed_folder(data, other, tmp_path / "other", work, CacheSpec(32))
    assert not reused  # another encoder is never served the first one's embeddings


def test_parse_duration():
    assert parse_duration("20m") == 1200 and parse_duration("1.5h") == 5400 and parse_duration("90") == 90


@pytest.mark.parametrize("local_crops", [0, 2])
def test_ddp_two_processes_on_cpu_with_gloo(fixture_bench, tmp_path, local_crops):
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               "-m", "illustra.cli", "pretrain", "--data", str(fixture_bench / "training"),
               "--out", str(tmp_path / "run"), "--work", str(tmp_path / "work"),
               "--set", "epochs=2", "--set", "batch_size=8", "--set", "knn_every=0", "--set", "threads=1",
               "--set", "encoder.width=8", "--set", "encoder.stages=2", "--set", "encoder.input_size=16",
               "--set", "projection_hidden=32", "--set", "projection_dim=16",
               "--set", f"local_crops={local_crops}", "--set", "local_size=8"]
    done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["epochs"] == 2 and metrics["profile"] == "cpu"
    # on a CPU with native bf16 the precision probe ran on both ranks, gathered negatives and all, without a hang
    assert bool(metrics["precision_probe"]) == cpu_has_bf16() and metrics["precision"] in ("bf16", "fp32")
    assert read_metadata(tmp_path / "run" / "encoder.safetensors")["profile"] == "cpu"  # picked from the device
    assert (tmp_path / "run" / "encoder.safetensors").exists()


def test_centred_knn_reads_past_the_mean_direction_that_relu_features_share(tiny_pixels):
    from illustra.ssl.embed import embed_tensor
    from illustra.ssl.knn import centre, knn_predict

    pixels, labels = tiny_pixels
    torch.manual_seed(0)
    encoder = Encoder(EncoderConfig(width=8, stages=2, input_size=16))
    features = embed_tensor(encoder, torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2), 16)
    bank, queries, bank_y = features[::2], features[1::2], labels[::2]
    off_diagonal = ~np.eye(len(bank), dtype=bool)
    assert (bank @ bank.T)[off_diagonal].mean() > 0.8  # pooled ReLU features: every pair looks alike
    centred_bank, centred_queries = centre(bank, queries)
    assert np.allclose(np.linalg.norm(centred_queries, axis=1), 1, atol=1e-5)
    assert abs((centred_bank @ centred_bank.T)[off_diagonal].mean()) < 0.2  # not 0: each is normalised again
    assert np.array_equal(centre(bank, queries[:3])[0], centred_bank)  # the bank's mean: queries change nothing
    shift = np.random.default_rng(0).normal(size=bank.shape[1]).astype(np.float32) * 5
    centred = knn_predict(bank, bank_y, queries, k=5)  # an offset shared by every feature is removed
    assert (knn_predict(bank + shift, bank_y, queries + shift, k=5) == centred).mean() >= 0.9  # (float rounding)
    assert (centred == labels[1::2]).mean() > 0.5  # a random net already tells the fixture's shapes apart (chance 1/6)


def test_knn_monitor_records_the_centred_and_the_plain_read_out(tiny_pixels, tmp_path):
    pixels, labels = tiny_pixels
    summary = pretrain(pixels, labels, tmp_path, TINY.__class__(**{**TINY.__dict__, "epochs": 2, "knn_every": 1}),
                       PRE, progress=False)
    monitored = [h for h in summary["history"] if "knn_macro_f1" in h]
    assert len(monitored) == 2
    for row in monitored:
        assert {"knn_top1", "knn_macro_f1", "knn_top1_plain", "knn_macro_f1_plain"} <= set(row)
    from illustra.ssl.embed import embed_tensor
    from illustra.ssl.knn import knn_monitor, knn_scores, monitor_split

    torch.manual_seed(1)  # the monitor's figures are the two read-outs of the same features
    encoder = Encoder(TINY.encoder)
    data = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2)
    scores = knn_monitor(encoder, data, labels, TINY, torch.device("cpu"))
    bank, queries = monitor_split(len(labels))
    features = embed_tensor(encoder, data[np.concatenate([bank, queries])], 16)
    split = (features[: len(bank)], labels[bank], features[len(bank):], labels[queries], TINY.knn_k)
    assert scores["knn_macro_f1"] == round(knn_scores(*split)["knn_macro_f1"], 4)
    assert scores["knn_macro_f1_plain"] == round(knn_scores(*split, centred=False)["knn_macro_f1"], 4)
    assert scores["knn_macro_f1"] != scores["knn_macro_f1_plain"]
