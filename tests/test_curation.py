"""Curation on real (small) images: exact / near / cross-class duplicates, style variants, photos, outputs."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw, ImageEnhance

from illustra.bench.assemble import cut_out
from illustra.curation.duplicates import DuplicateSettings, find_duplicates
from illustra.curation.photos import (
    PhotoSettings,
    cluster_scores,
    combine_views,
    cutout_anchors,
    detect_photos,
    drawing_label_share,
    frame_anchors,
    frame_votes,
    image_statistics,
    neighbour_promotion,
    neighbour_support,
    photo_anchors,
    photo_index,
    photo_share_estimate,
    support_needed,
    texture_boundary,
    texture_labels,
    texture_share,
    texture_view_logits,
)
from illustra.curation.run import CurationSettings, curate
from illustra.curation.texture import fit_texture_net, foreground_patches, patch_logits
from illustra.data.cache import CacheSpec, open_pixels
from illustra.data.index import IndexSettings, index_dataset
from illustra.ssl.encoder import Encoder, EncoderConfig
from illustra.train.device import cpu_has_bf16
from illustra.weights import save_weights


def drawing(kind: str = "face", fill=(250, 200, 40), outline=(20, 20, 20), size: int = 128) -> Image.Image:
    """A clipart-like drawing on white."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    if kind == "face":
        draw.ellipse((12, 12, 116, 116), fill=fill, outline=outline, width=4)
        draw.ellipse((40, 44, 54, 58), fill=outline)
        draw.ellipse((74, 44, 88, 58), fill=outline)
        draw.arc((38, 60, 90, 100), 20, 160, fill=outline, width=4)
    else:
        draw.rectangle((20, 30, 108, 100), fill=fill, outline=outline, width=4)
        draw.polygon([(20, 30), (64, 8), (108, 30)], fill=outline)
    return image


def photo(seed: int, size: int = 160) -> Image.Image:
    """A photograph-like image: smooth gradients plus sensor noise, full frame."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([120 + 80 * np.sin(3 * x + seed), 100 + 60 * y, 90 + 70 * np.cos(2 * x * y + seed)], 2)
    noisy = base + rng.normal(0, 6, base.shape)
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def photo_cut_out(seed: int, size: int = 160) -> Image.Image:
    """A photograph-like image cut out along a blob outline onto white (as the holdout builder makes them)."""
    piece = cut_out(photo(seed, size), seed=seed)
    return Image.alpha_composite(Image.new("RGBA", piece.size, "white"), piece).convert("RGB")


def with_mole(image: Image.Image) -> Image.Image:
    """The same drawing with one small extra detail (a dark dot on the cheek)."""
    marked = image.copy()
    ImageDraw.Draw(marked).ellipse((84, 70, 96, 82), fill=(20, 20, 20))
    return marked


def flag(star: bool = False) -> Image.Image:
    """A three-band flag, optionally with a small star in the middle band (Senegal vs Mali)."""
    image = Image.new("RGB", (150, 100), (0, 133, 63))
    draw = ImageDraw.Draw(image)
    draw.rectangle((50, 0, 99, 99), fill=(253, 239, 66))
    draw.rectangle((100, 0, 149, 99), fill=(227, 27, 35))
    if star:
        points = [(75 + r * np.sin(k * np.pi / 5), 50 - r * np.cos(k * np.pi / 5))
                  for k, r in zip(range(10), [12, 5] * 5)]
        draw.polygon(points, fill=(0, 133, 63))
    return image


def pixel_embeddings(work: Path) -> np.ndarray:
    """Stand-in embeddings (8 px thumbnails, L2-normalised), so the embedding candidates exist without an encoder."""
    pixels = torch.from_numpy(np.array(open_pixels(work))).permute(0, 3, 1, 2).float()
    small = torch.nn.functional.adaptive_avg_pool2d(pixels, 8).flatten(1).numpy()
    small -= small.mean(1, keepdims=True)
    return small / np.linalg.norm(small, axis=1, keepdims=True).clip(1e-6)


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def write_tree(root: Path, files: dict[str, Image.Image]) -> None:
    for rel, image in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / rel)


@pytest.fixture()
def duplicate_tree(tmp_path) -> tuple[Path, Path]:
    """Originals, exact / re-encoded / resized / cropped / brightened copies, a cross-class copy, style variants."""
    face, house = drawing("face"), drawing("house", fill=(60, 140, 220))
    w, h = face.size
    files = {
        "L2_2/face.png": face,
        "L2_2/face_exact.png": face.copy(),
        "L2_2/face_jpeg.jpg": jpeg(face, 70),
        "L2_2/face_small.png": face.resize((96, 96), Image.Resampling.LANCZOS),
        "L2_2/face_crop.png": face.crop((4, 5, w - 3, h - 5)),
        "L2_2/face_bright.png": ImageEnhance.Brightness(face).enhance(0.96),
        "L2_3/house.png": house,
        "L2_10/house_copy.png": house.copy(),  # label conflict: same pixels in another class
        "L2_3/face_lineart.png": drawing("face", fill=(255, 255, 255)),  # colour vs line art: not a duplicate
        "L2_3/face_green.png": drawing("face", fill=(60, 200, 90)),       # another style: not a duplicate
        "L2_10/house_red.png": drawing("house", fill=(220, 40, 40)),
        "L2_2/face_format.jpg": jpeg(face, 92),                                # PNG -> JPEG (format)
        "L2_2/face_big_crop.png": face.resize((160, 160), Image.Resampling.LANCZOS).crop((6, 3, 154, 155)),
        "L2_3/face_mole.png": with_mole(face),          # one local detail more: a near miss, not a copy
        "L2_3/flag.png": flag(),
        "L2_3/flag_jpeg.jpg": jpeg(flag(), 75),
        "L2_3/flag_star.png": flag(star=True),          # the same flag with a star: must stay apart
    }
    data, work = tmp_path / "data", tmp_path / "work"
    write_tree(data, files)
    index_dataset(data, work, IndexSettings(CacheSpec(size=64), workers=1))
    return data, work


def groups_by_path(manifest: pd.DataFrame, columns: pd.DataFrame) -> dict[str, int]:
    return dict(zip(manifest["path"], columns["dup_group"]))


def test_exact_and_near_copies_group_with_their_original(duplicate_tree):
    data, work = duplicate_tree
    from illustra.data.manifest import load_manifest

    manifest = load_manifest(work)
    # The frozen thresholds of configs/curation.yaml: crop, resize, JPEG, brightness and format copies all pass.
    columns, pairs = find_duplicates(manifest, open_pixels(work), pixel_embeddings(work), DuplicateSettings())
    group = groups_by_path(manifest, columns)
    face = group["L2_2/face.png"]
    assert face >= 0
    for copy in ("face_exact.png", "face_jpeg.jpg", "face_small.png", "face_bright.png", "face_crop.png",
                 "face_format.jpg", "face_big_crop.png"):
        assert group[f"L2_2/{copy}"] == face, copy
    assert group["L2_3/flag_jpeg.jpg"] == group["L2_3/flag.png"] >= 0
    assert set(pairs["kind"]) <= {"exact", "near"} and "exact" in set(pairs["kind"])
    assert {"residual", "worst_patch", "colour_shift", "transform"} <= set(pairs.columns)
    crop_pair = pairs[manifest["path"].to_numpy()[pairs["b"]] == "L2_2/face_crop.png"]
    crop_pair = crop_pair if len(crop_pair) else pairs[manifest["path"].to_numpy()[pairs["a"]] == "L2_2/face_crop.png"]
    assert "crop" in set(crop_pair["transform"])
    # exactly one keeper per group, by the stated rule (largest, then lossless, then path)
    kept = manifest[(columns["dup_group"] == face) & columns["dup_keep"]]["path"].tolist()
    assert kept == ["L2_2/face_big_crop.png"]


def test_style_variants_and_one_local_detail_are_not_duplicates(duplicate_tree):
    data, work = duplicate_tree
    from illustra.data.manifest import load_manifest

    manifest = load_manifest(work)
    columns, pairs = find_duplicates(manifest, open_pixels(work), pixel_embeddings(work), DuplicateSettings())
    group = groups_by_path(manifest, columns)
    for variant in ("L2_3/face_lineart.png", "L2_3/face_green.png", "L2_10/house_red.png", "L2_3/face_mole.png"):
        assert group[variant] not in (group["L2_2/face.png"], group["L2_3/house.png"]), variant
    assert group["L2_3/flag_star.png"] != group["L2_3/flag.png"]
    # the star was a candidate and was turned down by its worst patch, not by the global residual
    loose = DuplicateSettings(max_patch=float("inf"), max_colour_shift=float("inf"))
    loose_columns, _ = find_duplicates(manifest, open_pixels(work), pixel_embeddings(work), loose)
    loose_group = groups_by_path(manifest, loose_columns)
    assert loose_group["L2_3/flag_star.png"] == loose_group["L2_3/flag.png"]


def test_the_crop_search_samples_separably_what_grid_sample_gives(duplicate_tree):
    """The descent's fast path (`_axis_weights`: Wy @ image @ Wx^T) is `_sample`, crops reaching outside included;
    `_blur` as matrices is the 3 x 3 pooling twice."""
    from illustra.curation.duplicates import _axis_weights, _blur, _sample, content_rects
    from illustra.data.manifest import load_manifest

    data, work = duplicate_tree
    manifest = load_manifest(work)
    images = open_pixels(work)[manifest["cache_row"].to_numpy()]
    ink = 1 - torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2).float() / 255
    rects = content_rects(manifest["width"].to_numpy(float), manifest["height"].to_numpy(float), images.shape[1])
    crop = (torch.rand(len(ink), 4, generator=torch.Generator().manual_seed(0)) - 0.5) * 0.3
    for size, over in ((16, 2), (64, 1)):
        wx = _axis_weights(rects[:, 0], rects[:, 1], crop[:, 0], crop[:, 1], size, over, ink.shape[3])
        wy = _axis_weights(rects[:, 2], rects[:, 3], crop[:, 2], crop[:, 3], size, over, ink.shape[2])
        separable = wy[:, None] @ ink @ wx.transpose(1, 2)[:, None]
        assert torch.allclose(separable, _sample(ink, rects, crop, size, over), atol=1e-5)
    pooled = ink  # the blur, written as matrices, is the pooling it stands for (edges averaged over what is inside)
    for _ in range(2):
        pooled = torch.nn.functional.avg_pool2d(pooled, 3, stride=1, padding=1, count_include_pad=False)
    assert torch.allclose(_blur(ink), pooled, atol=1e-5)


def test_cross_class_copy_is_a_flagged_label_conflict(duplicate_tree):
    data, work = duplicate_tree
    from illustra.data.manifest import load_manifest

    manifest = load_manifest(work)
    columns, _ = find_duplicates(manifest, open_pixels(work), None, DuplicateSettings())
    rows = columns[manifest["path"].isin(["L2_3/house.png", "L2_10/house_copy.png"]).to_numpy()]
    assert rows["dup_group"].nunique() == 1 and rows["dup_label_conflict"].all()


def test_photo_statistics_put_clear_photos_and_drawings_on_their_sides():
    stats = pd.DataFrame([image_statistics(photo(s)) for s in range(4)]
                         + [image_statistics(drawing(k, fill=c)) for k in ("face", "house")
                            for c in ((250, 200, 40), (60, 140, 220))])
    index = photo_index(stats)
    assert index[:4].min() > index[4:].max()
    assert (stats["foreground_share"][:4] > 0.95).all() and (stats["sharp_edge_share"][:4] < 0.05).all()


def test_texture_share_sees_photo_texture_not_jpeg_noise_and_counts_cut_outs():
    drawings = [jpeg(drawing(k, fill=c), 80) for k in ("face", "house") for c in ((250, 200, 40), (60, 140, 220))]
    photos = [photo(s) for s in range(3)]
    cut_outs = [photo_cut_out(s) for s in range(3)]
    drawn = [texture_share(d) for d in drawings]
    assert max(drawn) < 0.05, drawn  # JPEG ringing around outlines is not texture
    assert min(texture_share(p) for p in photos + cut_outs) > 0.3


def test_white_background_is_no_evidence_against_a_photo_by_default():
    images = [photo(s) for s in range(3)] + [drawing(k, fill=c) for k in ("face", "house")
                                               for c in ((250, 200, 40), (60, 140, 220), (200, 60, 60))]
    cut = photo_cut_out(7)
    stats = pd.DataFrame([image_statistics(i) for i in images + [cut]])
    index = photo_index(stats)
    assert stats["foreground_share"].iloc[-1] < 0.9
    assert index[-1] > index[3:-1].max()  # the cut-out ranks above every drawing


def test_foreground_patches_lie_inside_the_foreground():
    rng = np.random.default_rng(0)
    patches = foreground_patches(drawing("face"), 32, 8, rng)
    assert len(patches) == 8
    assert all((p.min(2) < 240).mean() >= 0.95 for p in patches)
    assert len(foreground_patches(Image.new("RGB", (128, 128), "white"), 32, 8, rng)) == 0
    assert len(foreground_patches(photo(0, size=24), 32, 8, rng)) == 0  # smaller than one patch
    assert len(foreground_patches(photo_cut_out(3), 32, 8, rng)) == 8  # a cut-out has patches inside its outline


EMULATED_BF16 = ("this CPU has no native bf16: emulated, the case takes 270 s against 41 s in fp32 (2 Zen 3 cores), and "
                 "`auto` never picks bf16 here; the flag's path is checked by the forced-bf16 test below on every CPU")


@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=pytest.mark.skipif(not cpu_has_bf16(),
                                                                                           reason=EMULATED_BF16))])
def test_texture_view_learns_from_the_frame_view_and_calls_a_cut_out_it_missed(precision):
    photos = [photo(s) for s in range(6)]
    fills = ((250, 200, 40), (60, 140, 220), (200, 60, 60), (90, 200, 90), (150, 90, 200), (240, 140, 60))
    drawings = [drawing(k, fill=c) for k in ("face", "house") for c in fills]
    drawings += [jpeg(d, 75) for d in drawings]  # the cut-outs below are < 10 % of the negatives, as in real folders
    cut_outs = [photo_cut_out(s, size=200) for s in (1, 4)]  # new pixels, palettes like the photos'
    images = photos + drawings + cut_outs
    frame_score = np.array([0.99] * len(photos) + [0.01] * (len(drawings) + len(cut_outs)))  # the frame view misses cut-outs
    rng = np.random.default_rng(0)
    taken = [foreground_patches(image, 32, 8, rng) for image in images]
    owner = np.concatenate([np.full(len(t), i) for i, t in enumerate(taken)])
    settings = PhotoSettings(texture_steps=150, texture_precision_cpu=precision)
    logits = texture_view_logits(frame_score, np.concatenate(taken), owner, settings)
    assert logits[-2:].min() > 0 > logits[len(photos):-2].max(), logits.round(1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA trains the texture view in bf16 either way")
def test_a_forced_bf16_texture_view_computes_its_convolutions_in_bf16_on_any_cpu():
    rng = np.random.default_rng(0)
    patches, labels = rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8), np.array([1, 0] * 16)
    seen: list[torch.dtype] = []

    def record(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d) and module.training:
            seen.append(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        dtypes = {}
        for flag in (True, False):
            seen.clear()
            model = fit_texture_net(patches, labels, steps=2, batch=8, cpu_bf16=flag)
            dtypes[flag] = set(seen)
    finally:
        handle.remove()
    assert dtypes == {True: {torch.bfloat16}, False: {torch.float32}}
    logits = patch_logits(model, patches)
    assert logits.shape == (32,) and np.isfinite(logits).all()


def test_no_texture_view_where_the_frame_view_is_sure_of_too_few_of_the_drawings():
    rng = np.random.default_rng(0)
    sure, unsure = 6, 30  # a small folder: the frame view is sure of 6 drawings, unsure of 30 shaded ones
    frame = np.array([0.99] * 6 + [0.01] * sure + [0.5] * unsure + [0.01] * 4)  # the last 4 have no patch
    owner = np.repeat(np.arange(6 + sure + unsure), 4)
    patches = rng.integers(0, 256, (len(owner), 32, 32, 3), dtype=np.uint8)
    labels = texture_labels(frame, None, PhotoSettings())[owner]
    assert drawing_label_share(labels, owner) == pytest.approx(sure / (sure + unsure))  # patchless rows do not count
    assert drawing_label_share(np.ones(4, int), np.arange(4)) == 0.0  # nothing but photo labels
    fast = PhotoSettings(texture_steps=2, texture_batch=8, texture_rounds=1)
    assert np.isnan(texture_view_logits(frame, patches, owner, fast)).all()  # 6 / 36 < 0.2: no net, no calls
    trained = texture_view_logits(frame, patches, owner, replace(fast, texture_min_drawing_share=0.0))
    assert np.isfinite(trained[:-4]).all() and np.isnan(trained[-4:]).all()
    frame[6:6 + sure + unsure] = 0.01  # the frame view sure of them all: the net trains at the default
    assert np.isfinite(texture_view_logits(frame, patches, owner, fast)[:-4]).all()


def test_calm_foregrounds_are_the_drawing_labels_where_the_frame_view_is_sure_of_too_few():
    rng = np.random.default_rng(0)
    frame = np.array([0.99] * 6 + [0.01] * 6 + [0.5] * 30 + [0.9] * 2)  # unsure of 30; 2 voted photo, not sure
    texture = np.array([0.3] * 6 + [0.0] * 6 + [0.0] * 20 + [0.3] * 10 + [0.0] * 2)  # 20 of the 30 are calm
    owner = np.repeat(np.arange(len(frame)), 4)
    patches = rng.integers(0, 256, (len(owner), 32, 32, 3), dtype=np.uint8)
    fast = PhotoSettings(texture_steps=2, texture_batch=8, texture_rounds=1, foreground_negative_share=0.05)
    record: dict = {}
    off = texture_view_logits(frame, patches, owner, replace(fast, texture_calm_drawings=False), texture=texture,
                              examples=record)
    assert np.isnan(off).all()  # 6 sure drawings of 38: no net
    assert not record["calm"] and list(record["label"]) == [1] * 6 + [0] * 6 + [-1] * 32  # what it would have had
    calm = texture_view_logits(frame, patches, owner, replace(fast, texture_calm_drawings=True), texture=texture,
                               examples=record)
    assert np.isfinite(calm).all()  # 26 calm drawing labels of 38 (the 2 voted photos are not among them)
    assert record["calm"] and list(record["label"]) == [1] * 6 + [0] * 26 + [-1] * 10 + [-1] * 2  # the record says so
    unsure = frame.copy()
    unsure[6:12] = 0.5  # sure of no drawing at all (fewer than min_confident): the calm ones still teach it
    assert np.isfinite(texture_view_logits(unsure, patches, owner, replace(fast, texture_calm_drawings=True),
                                           texture=texture)).all()
    shaded = texture.copy()
    shaded[6:] = 0.3  # no calm foreground beyond the 6 sure ones: still no net
    assert np.isnan(texture_view_logits(frame, patches, owner, replace(fast, texture_calm_drawings=True),
                                        texture=shaded)).all()


def test_a_bad_texture_precision_is_refused_before_any_work():
    with pytest.raises(ValueError, match="fp16"):
        PhotoSettings.from_dict({"texture_precision_cpu": "fp16"})


def test_texture_labels_never_teach_a_textured_foreground_as_a_drawing():
    settings = PhotoSettings(foreground_negative_share=0.05)
    frame = np.array([0.99, 0.01, 0.01, 0.01, 0.5, np.nan])
    texture = np.array([0.30, 0.35, 0.00, 0.04, 0.00, 0.40])  # photo, cut-out, drawing, calm drawing, unsure, no frame
    assert texture_labels(frame, texture, settings).tolist() == [1, -1, 0, 0, -1, -1]
    assert texture_labels(frame, None, settings).tolist() == [1, 0, 0, 0, -1, -1]  # the frame view alone


def test_co_training_labels_add_confident_texture_calls_and_need_agreement_for_drawings():
    settings = PhotoSettings(foreground_negative_share=0.05, texture_round_logit=4.0)
    frame = np.array([0.99, 0.01, 0.01, 0.01, 0.01, 0.5])
    texture = np.array([0.30, 0.20, 0.00, 0.01, 0.00, 0.40])
    logit = np.array([9.0, 6.0, -8.0, 1.0, np.nan, 5.0])  # photo, photo the frame missed, drawing, unsure, no patch, unsure frame
    assert texture_labels(frame, texture, settings).tolist() == [1, -1, 0, 0, 0, -1]
    assert texture_labels(frame, texture, settings, logit).tolist() == [1, 1, 0, -1, 0, 1]  # no patch: the frame view's label


def test_a_cluster_lifts_its_doubtful_members_but_never_drags_a_confident_one_down():
    posterior = np.array([0.98, 0.96, 0.10, 0.05, 0.60, 0.02, 0.97])
    labels = np.array([0, 0, 0, 0, 1, 1, -1])  # cluster 0 mixes sure photos and doubtful ones; -1 is noise
    lifted = cluster_scores(posterior, labels, "lift")
    assert lifted[:4].tolist() == pytest.approx([0.98, 0.96, 0.5225, 0.5225])
    assert lifted[4:6].tolist() == pytest.approx([0.60, 0.31]) and lifted[6] == 0.97  # noise keeps its own
    assert (lifted >= posterior).all()
    assert cluster_scores(posterior, labels, "mean")[:4].tolist() == pytest.approx([0.5225] * 4)  # the old rule
    with pytest.raises(ValueError, match="cluster_rule"):
        cluster_scores(posterior, labels, "median")


@pytest.mark.parametrize("photos", [10, 100, 500])
def test_the_photo_share_is_read_from_the_logits_and_rare_photos_need_more_evidence(photos):
    rng = np.random.default_rng(0)
    logits = np.concatenate([rng.normal(-6, 2, 1000 - photos), rng.normal(6, 2, photos), [np.nan] * 5])  # NaN: no patch
    share = photo_share_estimate(logits)
    assert share == pytest.approx(photos / 1000, abs=0.01)
    boundary, same = texture_boundary(logits, PhotoSettings(texture_threshold=0.0, texture_prior_shift=0.5))
    assert same == share and boundary == pytest.approx(0.5 * np.log((1 - share) / share))
    assert (boundary > 1.0) == (photos < 200)  # rare photos: a higher bar; half the folder: about even odds
    assert texture_boundary(logits, PhotoSettings(texture_threshold=0.7, texture_prior_shift=0.0))[0] == 0.7
    assert texture_boundary(np.full(4, np.nan), PhotoSettings(texture_threshold=0.0))[0] == 0.0  # no texture view


def test_a_second_texture_round_runs_only_where_photos_are_common_enough(monkeypatch):
    """The gate, with the net replaced by a stand-in (patch contrast as its logit): how many nets are trained."""
    import illustra.curation.photos as photos_module

    trained = []
    monkeypatch.setattr(photos_module, "fit_texture_net", lambda patches, labels, **_: trained.append(len(labels)))
    monkeypatch.setattr(photos_module, "patch_logits",
                        lambda model, patches: (patches.astype(float).std(axis=(1, 2)).mean(1) - 20) / 2)
    rng = np.random.default_rng(0)

    def folder(photos: int):
        noisy = rng.integers(0, 256, (photos, 4, 8, 8, 3), dtype=np.uint8)
        flat = np.repeat(np.repeat(rng.integers(0, 256, (100 - photos, 4, 1, 1, 3), dtype=np.uint8), 8, 2), 8, 3)
        frame = np.r_[np.full(5, 0.99), np.full(photos - 5, 0.5), np.full(100 - photos, 0.01)]
        return frame, np.concatenate([noisy, flat]).reshape(-1, 8, 8, 3), np.repeat(np.arange(100), 4)

    settings = PhotoSettings(texture_rounds=2, texture_round_min_share=0.15, min_confident=2)
    for photos, nets in ((40, 2), (8, 1)):  # 40 % photos: a second round; 8 %: the first net's logits stand
        trained.clear()
        logits = texture_view_logits(*folder(photos), settings)
        assert len(trained) == nets and photo_share_estimate(logits) == pytest.approx(photos / 100, abs=0.02)


FILLS = ((250, 200, 40), (60, 140, 220), (200, 60, 60), (90, 200, 90), (150, 90, 200), (240, 140, 60))


@pytest.mark.parametrize("full_frame, cut_outs, drawings", [(3, 9, 12), (8, 12, 6)],
                         ids=["photos-mostly-cut-outs", "mostly-photos"])
def test_detector_finds_every_photo_when_cut_outs_or_photos_dominate(full_frame, cut_outs, drawings):
    """Issue #18: the texture view's labels must not depend on the mix (no frame-view call says 'cut-out')."""
    drawn = [drawing(k, fill=c) for k in ("face", "house") for c in FILLS][:drawings]
    drawn += [jpeg(d, 75) for d in drawn]
    images = [photo(s) for s in range(full_frame)] + [photo_cut_out(20 + s, size=200) for s in range(cut_outs)] + drawn
    truth = np.array([True] * (full_frame + cut_outs) + [False] * len(drawn))
    settings = PhotoSettings(min_cluster_size=5, min_samples=2, texture_steps=150, min_confident=2)
    stats = pd.DataFrame([image_statistics(image, settings) for image in images])
    rng = np.random.default_rng(0)
    taken = [foreground_patches(image, 32, 8, rng) for image in images]
    owner = np.concatenate([np.full(len(t), i) for i, t in enumerate(taken)])
    result = detect_photos(stats, None, settings, np.concatenate(taken), owner)
    assert (result["is_photo"].to_numpy() == truth).all(), result.assign(truth=truth).round(2)


def textured_icon(seed: int, fill=(90, 140, 200)) -> Image.Image:
    """A drawing on white whose shapes are noise-shaded (Oxygen's folder icons, glossy clipart): a textured
    foreground, like a photo's, but on a plain background."""
    image = np.asarray(drawing("face" if seed % 2 else "house", fill=fill)).astype(float)
    ink = image.min(2) < 240
    image[ink] += np.random.default_rng(seed).normal(0, 8, (int(ink.sum()), 3))
    return Image.fromarray(image.clip(0, 239 * ink[..., None] + 255 * ~ink[..., None]).astype(np.uint8))


def test_anchors_are_photos_that_fill_the_frame_never_a_drawing():
    """Issue #18: the absolute 'sure photo' test: a full-frame photo is one; a cut-out (it does not fill the
    frame), a textured icon on white and a flat full-frame flag are not."""
    images = [photo(s) for s in range(3)] + [photo_cut_out(5), textured_icon(1), textured_icon(2), flag(), flag(True)]
    stats = pd.DataFrame([image_statistics(image) for image in images])
    assert photo_anchors(stats).tolist() == [True] * 3 + [False] * 5, stats.round(3)
    assert stats["texture_share"].iloc[4:6].min() > 0.1  # the icons are textured: only the frame tells them apart
    frame = np.array([0.99, 0.99, 0.4, 0.99, 0.99, 0.2, 0.99, np.nan])
    votes = frame_votes(frame, stats)
    assert votes[:3].tolist() == [0.99, 0.99, 0.4] and (votes[3:6] == 0).all()  # cut-outs are the texture view's
    assert votes[6] == 0.99 and np.isnan(votes[7])  # a full-frame drawing keeps its frame score; NaN stays NaN
    assert (frame_votes(frame, stats, PhotoSettings(frame_full_only=False))[:7] == frame[:7]).all()


def gradient_ball(size: int = 256) -> Image.Image:
    """Glossy clipart (a planet, a moon): a smooth radial gradient on white, many colours but no texture."""
    y, x = np.mgrid[0:size, 0:size] / size
    r = np.hypot(x - 0.5, y - 0.5)
    image = np.stack([255 * (1 - 1.5 * r), 120 + 100 * x, 200 * y], 2)
    image[r > 0.45] = 255
    return Image.fromarray(image.clip(0, 255).astype(np.uint8))


def test_cut_out_anchors_need_texture_colours_and_no_flat_areas_together():
    """Issue #18: a cut-out photo with a rich, textured foreground is an anchor although it does not fill its frame;
    each drawing below shares one or two of its three properties, never all (the test fails when any is dropped)."""
    cut_outs = [photo_cut_out(s, size=224) for s in (20, 21, 22)]
    drawings = [textured_icon(1), textured_icon(3).resize((256, 256)), gradient_ball(), drawing("face"), flag()]
    stats = pd.DataFrame([image_statistics(image) for image in cut_outs + drawings])
    assert cutout_anchors(stats).tolist() == [True] * 3 + [False] * 5, stats.round(3)
    assert photo_anchors(stats).tolist() == [True] * 3 + [False] * 5
    assert cutout_anchors(stats, PhotoSettings(anchor_cutout_colours=0.0))[3:5].all()  # the icons: textured, not flat
    assert stats["colour_log_count"].iloc[5] > 6.5 and stats["flat_share"].iloc[5] > 0.9  # the ball: colours, flat
    assert not cutout_anchors(stats, PhotoSettings(anchor_cutout_texture=2.0)).any()  # above 1: off
    assert not frame_anchors(stats).any()  # none of them fills its frame


def test_a_folder_with_too_few_anchors_gets_its_anchors_called_and_nothing_else():
    """Below `min_anchors` the relative views are not run: the drawings stay, the one sure (cut-out) photo is called."""
    fills = ((250, 200, 40), (60, 140, 220), (200, 60, 60), (90, 200, 90), (150, 90, 200), (240, 140, 60))
    images = [drawing(k, fill=c) for k in ("face", "house") for c in fills]
    images += [textured_icon(s, fill=c) for s, c in enumerate(fills)] + [flag(), photo_cut_out(20, size=224)]
    settings = PhotoSettings(min_cluster_size=5, min_samples=2, texture_steps=150, min_confident=2)
    stats = pd.DataFrame([image_statistics(image) for image in images])
    result = detect_photos(stats, None, settings)
    assert result["is_photo"].tolist() == [False] * (len(images) - 1) + [True]
    assert result["photo_anchor"].sum() == 1 and result["photo_share_estimate"].eq(0).all()
    from illustra.curation.report import photos_section

    pixels = np.stack([np.asarray(image.resize((64, 64))) for image in images])
    manifest = stats.join(result).assign(path=[f"c/{i}.png" for i in range(len(images))], cache_row=range(len(images)))
    html = photos_section(manifest, pixels)
    assert "Only its 1 anchor called" in html and "a sure photo by the absolute test; its foreground covers" in html


def test_a_folder_of_drawings_alone_gets_no_photo_called():
    """Issue #18: with no photo in the folder, both views are relative and call its most textured drawings;
    without anchors nothing is called (with the gate off, some are: the test can fail)."""
    fills = ((250, 200, 40), (60, 140, 220), (200, 60, 60), (90, 200, 90), (150, 90, 200), (240, 140, 60))
    images = [drawing(k, fill=c) for k in ("face", "house") for c in fills]
    images += [jpeg(d, 75) for d in images] + [textured_icon(s, fill=c) for s, c in enumerate(fills)] + [flag(), flag(True)]
    settings = PhotoSettings(min_cluster_size=5, min_samples=2, texture_steps=150, min_confident=2)
    stats = pd.DataFrame([image_statistics(image) for image in images])
    rng = np.random.default_rng(0)
    taken = [foreground_patches(image, 32, 8, rng) for image in images]
    owner = np.concatenate([np.full(len(t), i) for i, t in enumerate(taken)])
    result = detect_photos(stats, None, settings, np.concatenate(taken), owner)
    assert not result["is_photo"].any() and not result["photo_anchor"].any()
    assert (result["photo_score"] == 0).all() and result["photo_share_estimate"].eq(0).all()
    from illustra.curation.report import photos_section

    pixels = np.stack([np.asarray(image.resize((64, 64))) for image in images])
    manifest = stats.join(result).assign(path=[f"c/{i}.png" for i in range(len(images))], cache_row=range(len(images)))
    html = photos_section(manifest, pixels)
    assert "No photo called" in html and "0 images are sure photos" in html and html.count("<img") == 24
    ungated = detect_photos(stats, None, replace(settings, min_anchors=0, frame_full_only=False), np.concatenate(taken),
                            owner)
    assert ungated["is_photo"].any()  # the relative views alone call the most photo-like drawings (here the flags)
    untrained = detect_photos(stats, None, replace(settings, min_anchors=0, frame_full_only=False,
                                                   texture_min_drawing_share=1.01), np.concatenate(taken), owner)
    assert untrained["patch_logit"].isna().all()  # above 1 the texture view never trains; the report says so
    html = photos_section(stats.join(untrained).assign(path=manifest["path"], cache_row=manifest["cache_row"]), pixels)
    assert "In this folder the texture view did not train" in html and "Its boundary" not in html


def test_a_call_with_no_called_neighbour_has_no_support():
    """Neighbour support: the share of an image's nearest embeddings that are called (itself and exact copies aside)."""
    rng = np.random.default_rng(0)
    photos = rng.normal(0, 0.1, (12, 8)) + np.eye(8)[0] * 3  # one kind of photo: a tight group
    drawings = rng.normal(0, 1, (60, 8))
    embeddings = np.concatenate([photos, drawings, drawings[:1]])  # the last row: an exact copy of a drawing
    called = np.r_[np.ones(12, bool), np.zeros(61, bool)]
    called[20] = True  # a lone drawing the texture view called
    support = neighbour_support(embeddings, called, 5)
    assert (support[:12] == 1).all() and support[20] == 0
    assert support[12] == neighbour_support(embeddings, called, 5)[72]  # a drawing and its copy see the same others
    assert neighbour_support(embeddings[:1], called[:1], 5).tolist() == [0.0]  # one image: nobody to ask


def test_an_uncalled_image_among_called_neighbours_is_called_when_its_texture_view_is_near_the_boundary():
    """Neighbour promotion: the support check's other side, gated by the texture view's margin."""
    rng = np.random.default_rng(0)
    photos = rng.normal(0, 0.1, (12, 8)) + np.eye(8)[0] * 3  # one kind of photo, 9 of 12 called
    drawings = rng.normal(0, 1, (60, 8)) - np.eye(8)[0] * 2  # elsewhere in the embedding
    embeddings = np.concatenate([photos, drawings])
    called = np.r_[np.ones(9, bool), np.zeros(63, bool)]
    margin = np.full(72, -1.0)  # every uncalled image sits 1 below the texture boundary ...
    margin[10], margin[11] = -5.0, np.nan  # ... but one photo far below it and one without patches
    settings = PhotoSettings(support_neighbours=5, promote_support=0.45, promote_lift=3.0, promote_margin=3.0)
    promoted, support, needed = neighbour_promotion(embeddings, called, margin, settings)
    assert promoted.tolist() == [False] * 9 + [True, False, False] + [False] * 60  # drawings: no called neighbour
    assert support[9] >= 0.6 and (support[12:] < 0.45).all() and needed == 0.45  # 3 x 9/72 is below the floor
    assert not neighbour_promotion(embeddings, called, margin, replace(settings, promote_support=0.0))[0].any()
    assert not neighbour_promotion(embeddings, np.zeros(72, bool), margin, settings)[0].any()  # nothing called
    # chance: where 3 x the called share is above the floor, that is what is needed (here 3 x 0.5 -> the 0.9 cap)
    half = np.r_[np.ones(9, bool), np.zeros(3, bool), np.ones(27, bool), np.zeros(33, bool)]
    wide = replace(settings, support_neighbours=20)
    lifted, support, needed = neighbour_promotion(embeddings, half, margin, wide)
    assert 0.45 <= support[9] < needed == 0.9 and not lifted[9]
    assert neighbour_promotion(embeddings, half, margin, replace(wide, promote_lift=0.0))[0][9]  # the floor alone


def test_support_needed_follows_the_called_share_between_a_floor_and_a_cap():
    """Support is judged against chance (the called share): a fixed floor where photos are few, a cap where many."""
    fixed = PhotoSettings(min_support=0.3, support_lift=0.0, max_support=0.3)
    lifted = replace(fixed, min_support=0.2, support_lift=1.5, max_support=0.4)
    assert support_needed(40, 600, fixed) == support_needed(300, 600, fixed) == 0.3
    assert support_needed(40, 600, lifted) == 0.2  # 7 % called: 1.5 x 0.067 = 0.1 is below the floor
    assert support_needed(150, 600, lifted) == pytest.approx(0.375)  # 25 % called: 1.5 x chance
    assert support_needed(300, 600, lifted) == 0.4  # half called: the cap
    assert support_needed(0, 0, lifted) == 0.2  # nothing to judge: the floor


def test_either_view_calls_a_photo_and_an_image_without_patches_keeps_its_frame_score():
    frame = np.array([0.9, 0.1, 0.1, 0.6, 0.2])
    patch = np.array([-5.0, 2.0, -2.0, np.nan, np.nan])
    score = combine_views(frame, patch)
    assert (score > 0.5).tolist() == [True, True, False, True, False]
    assert score[3] == 0.6 and score[4] == 0.2 and ((score >= frame) & (score <= 1)).all()
    stricter = combine_views(frame, patch, PhotoSettings(texture_threshold=3.0))
    assert (combine_views(frame, patch, PhotoSettings(), boundary=3.0) == stricter).all()  # a folder's own boundary
    assert (stricter > 0.5).tolist() == [True, False, False, True, False]


def tiny_encoder(path: Path) -> Path:
    """A randomly initialised encoder file (curation needs embeddings; quality is not under test here)."""
    torch.manual_seed(0)
    config = EncoderConfig(width=8, stages=2, input_size=32)
    encoder = Encoder(config)
    save_weights(path, {f"encoder.{k}": v for k, v in encoder.state_dict().items()},
                 {"illustra_kind": "encoder", "architecture": config.to_dict(), "preprocessing": {}})
    return path


def test_curate_writes_every_output_and_never_touches_data(fixture_bench, tmp_path):
    data = fixture_bench / "training"
    before = {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}
    encoder = tiny_encoder(tmp_path / "encoder.safetensors")
    settings = CurationSettings(photos=PhotoSettings(texture_steps=60))  # a short texture view keeps the test fast
    summary = curate(data, tmp_path / "cur", tmp_path / "work", encoder, settings)
    for name in ("manifest.csv", "clean.csv", "duplicates.csv", "photos.csv", "problems.csv", "report.html"):
        assert (tmp_path / "cur" / name).is_file(), name
    assert {p: p.read_bytes() for p in data.rglob("*") if p.is_file()} == before
    photos = pd.read_csv(tmp_path / "cur" / "photos.csv")
    assert list(photos.columns) == ["path", "file_id", "photo_score", "is_photo", "photo_anchor", "frame_score",
                                    "patch_logit", "texture_boundary", "texture_example", "texture_calm_examples",
                                    "photo_support", "photo_support_needed", "photo_promoted"]
    assert photos["photo_score"].between(0, 1).all()
    taught = summary["texture_examples"]  # what the texture view was taught is on record, per row and in total
    assert taught == {"photos": int((photos["texture_example"] == 1).sum()),
                      "drawings": int((photos["texture_example"] == 0).sum()),
                      "drawings_from": "calm foregrounds" if photos["texture_calm_examples"].any() else "frame view"}
    assert set(photos["texture_example"]) <= {-1, 0, 1}
    if taught["photos"] or taught["drawings"]:  # the report shows them, so a photo taught as a drawing can be seen
        assert "the texture view&#x27;s drawing examples" in (tmp_path / "cur" / "report.html").read_text() or \
            "the texture view's drawing examples" in (tmp_path / "cur" / "report.html").read_text()
    assert any((tmp_path / "cur" / "tb").glob("events.out.tfevents.*"))  # the texture view's loss curve
    trained = photos["patch_logit"].notna().any()  # its length is on record: 60 steps a round, in curation.json too
    assert (summary["texture_view_steps"] in (60, 120)) if trained else summary["texture_view_steps"] == 0
    assert json.loads((tmp_path / "cur" / "curation.json").read_text())["texture_view_steps"] == summary["texture_view_steps"]
    assert not photos["path"].str.contains("\\\\").any() and not photos["path"].str.startswith("/").any()
    truth = pd.read_csv(fixture_bench / "truth" / "duplicates.csv")
    exact = truth[truth["transform"] == "exact"]
    groups = pd.read_csv(tmp_path / "cur" / "duplicates.csv").set_index("path")["group"]
    for _, copy in exact.iterrows():
        original = truth[(truth["group"] == copy["group"]) & (truth["transform"] == "original")]["path"].iloc[0]
        assert groups.get(copy["path"]) == groups.get(original)
    clean = pd.read_csv(tmp_path / "cur" / "clean.csv")
    assert {"class_weight", "sample_weight"} <= set(clean.columns) and summary["clean"] == len(clean)
    manifest = pd.read_csv(tmp_path / "cur" / "manifest.csv")  # cleanvision-style score: >= 0.5 in a group
    grouped = manifest["dup_group"] >= 0
    assert (manifest.loc[grouped, "duplicate_score"] >= 0.5).all() and (manifest.loc[~grouped, "duplicate_score"] == 0).all()
    html = (tmp_path / "cur" / "report.html").read_text(encoding="utf-8")
    for section in ("classes", "properties", "colour", "embedding", "duplicates", "photos", "gallery", "problems"):
        assert f'id="{section}"' in html
    assert "http://" not in html and "https://" not in html  # self-contained


@pytest.mark.parametrize("plan", ["none", "over", "under", "weights"])
def test_the_imbalance_shown_is_what_fine_tuning_samples(plan):
    """The report's 'as the model sees it' column and the fine-tuning sampler / loss weights are one rule."""
    from illustra.curation.balance import class_counts, class_weights, epoch_class_mass, epoch_indices

    labels = np.repeat(np.arange(3), [50, 20, 5])
    counts = class_counts(pd.DataFrame({"class_folder": np.array(["a", "b", "c"])[labels]}), ["a", "b", "c", "d"])
    shown = epoch_class_mass(counts, plan)
    drawn = np.bincount(labels[epoch_indices(labels, plan, np.random.default_rng(0))], minlength=4).astype(float)
    if plan == "weights":
        drawn = drawn * class_weights(counts).to_numpy()  # the loss weights scale what is drawn
        assert np.allclose(shown[:3], shown.iloc[0])  # equal mass per present class
    assert np.allclose(shown.to_numpy(), drawn) and shown["d"] == 0


def test_photo_evidence_is_decoded_in_parallel_once_and_reused(fixture_bench, tmp_path, monkeypatch):
    from illustra.curation import photos
    from illustra.data.manifest import load_manifest

    data, work = fixture_bench / "training", tmp_path / "work"
    index_dataset(data, work, IndexSettings(CacheSpec(32)), progress=False)
    manifest = load_manifest(work)
    settings = PhotoSettings()
    serial = photos.photo_evidence(data, manifest, settings, workers=1)
    cache = tmp_path / "evidence.npz"
    parallel = photos.photo_evidence(data, manifest, settings, workers=2, cache=cache)
    assert serial.stats.equals(parallel.stats) and np.array_equal(serial.patches, parallel.patches)
    assert np.array_equal(serial.owner, parallel.owner) and cache.exists()

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded a file although the evidence was cached")

    monkeypatch.setattr(photos, "load_image", no_decoding)
    again = photos.photo_evidence(data, manifest, settings, cache=cache)
    assert again.stats.equals(serial.stats) and np.array_equal(again.patches, serial.patches)


def test_checks_plug_in_through_one_registry(fixture_bench, tmp_path, monkeypatch):
    """Every check writes <name>_score / is_<name>; a new check needs only a class and a registry entry."""
    from illustra.curation import run
    from illustra.curation.checks import CHECKS, Check
    from illustra.data.manifest import load_manifest

    class TinyCheck(Check):
        name = "tiny"

        def fit(self, context):
            small = context.manifest["bytes"] < context.manifest["bytes"].median()
            return pd.DataFrame({"tiny_score": small.astype(float), "is_tiny": small}, index=context.manifest.index)

    monkeypatch.setattr(run, "CHECKS", (*CHECKS, TinyCheck()))
    encoder = tiny_encoder(tmp_path / "encoder.safetensors")
    summary = curate(fixture_bench / "training", tmp_path / "cur", tmp_path / "work", encoder,
                     CurationSettings(), jobs=("duplicates",))
    manifest = load_manifest(tmp_path / "cur" / "manifest.csv")
    for name in ("blank", "duplicate", "photo", "tiny"):
        assert {f"{name}_score", f"is_{name}"} <= set(manifest.columns), name
    tiny = manifest["is_tiny"].astype(bool)
    assert tiny.any() and not manifest.loc[tiny, "clean"].astype(bool).any()  # flagged rows leave the set ...
    assert (manifest.loc[tiny & (manifest["decision"] != "keep"), "decision"].isin(
        ["drop: tiny", "drop: duplicate", "drop: blank image", "drop: duplicate group with conflicting labels"])).all()
    assert summary["flagged"]["tiny"] == int(tiny.sum())  # ... and are counted, with no other change anywhere


def test_candidate_search_switches_to_hnsw_above_the_exact_limit_and_finds_the_same_pairs():
    """Sub-quadratic search for large folders: on clustered data the HNSW graphs give the exact pairs."""
    from illustra.curation.duplicates import embedding_candidates, hash_candidates

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 32)).astype(np.float32)
    vectors = np.repeat(centres, 3, axis=0) + 0.05 * rng.standard_normal((120, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    exact = embedding_candidates(vectors, 5, 0.9)
    graph = embedding_candidates(vectors, 5, 0.9, exact_max=10)
    assert len(exact) == 120 and {tuple(p) for p in graph} == {tuple(p) for p in exact}
    codes = np.repeat(rng.integers(0, 256, (40, 8), dtype=np.uint8), 3, axis=0)
    codes[1::3, 0] ^= 1  # one bit off
    exact_codes = hash_candidates(codes, 4)
    assert {tuple(p) for p in hash_candidates(codes, 4, exact_max=10)} == {tuple(p) for p in exact_codes}
    assert len(exact_codes) == 120


def test_texture_view_training_scales_with_the_folder():
    """A large folder trains the texture view for the full 2,500 steps; a small one for 20 passes over its patches,
    but never fewer than the 1,300-step floor (and never more than `texture_steps`)."""
    from illustra.curation.photos import texture_step_count

    settings = PhotoSettings()
    assert settings.texture_min_steps == 1300
    assert texture_step_count(9_000 * 8, settings) == settings.texture_steps == 2500
    assert texture_step_count(150 * 8, settings) == 1300  # 20 passes would be 188 steps
    assert texture_step_count(1_200 * 8, settings) == 1500  # 20 passes: above the floor
    assert texture_step_count(150 * 8, replace(settings, texture_steps=400)) == 400
    unfloored = replace(settings, texture_min_steps=0)
    assert texture_step_count(150 * 8, unfloored) == 188
    assert texture_step_count(3, unfloored) == 50
