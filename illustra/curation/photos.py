"""Label-free photo detection: image statistics that separate photographs from drawings, HDBSCAN, a stated rule.

Two views. The frame view (statistics, HDBSCAN, a Gaussian-mixture rule, self-training with the SSL
embedding) judges the whole picture. The texture view (`illustra.curation.texture`) judges small patches
inside the foreground, so it also sees a photo cut out onto white; it learns from the frame view's
confident decisions. Either view can call a photo.

Statistics and patches are taken at native resolution (at most 256 px on the long side) because the
64 px cache smooths away exactly the texture that tells a photograph from a drawing. They are computed
on the foreground when the background is plain white. Nothing here reads file names, folders or formats.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import hdbscan
import numpy as np
import pandas as pd
from PIL import Image, ImageFilter
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture
from sklearn.preprocessing import RobustScaler

from illustra.config import build, yaml_defaults
from illustra.curation.duplicates import nearest_neighbours
from illustra.curation.texture import fit_texture_net, foreground_patches, image_means, patch_logits
from illustra.data.imageio import load_image
from illustra.data.index import ordered_map
from illustra.train.device import cpu_bf16, cpu_precision_probe

STAT_COLUMNS = ("foreground_share", "flat_share", "soft_edge_share", "sharp_edge_share", "colour_log_count",
                "texture_share")


@dataclass(frozen=True)
@yaml_defaults("curation.yaml", "photos")
class PhotoSettings:
    """Knobs of the photo job (label-free; see benchmarks/RESULTS.md for how they score)."""

    stats_side: int  # long side the statistics are measured at (native if smaller)
    white: int  # a pixel whose every channel is >= this is background
    sharp_edge: int  # neighbour difference (max over RGB) counted as a sharp edge
    flat: int  # ... and at most this counts as flat
    texture_scale: int  # texture is measured after shrinking by this (averages JPEG noise away)
    texture_step: int  # luma minus its 3x3 median, at least this, counts as texture
    frame_weight: float  # photo index: weight of 'fills the frame' evidence
    penalise_background: bool  # False: a white background is no evidence against a photo (cut-outs)
    texture_weight: float  # photo index: weight of foreground texture evidence
    embedding_components: int  # PCA dims of the SSL embedding joined to the stats; 0: measured better (RESULTS.md)
    embedding_weight: float
    min_cluster_size: int
    min_samples: int
    cluster_rule: str  # 'lift': an HDBSCAN cluster's mean posterior can raise a member's score, never lower it
    max_components: int  # mixture sizes tried on the photo index, chosen by BIC
    threshold: float
    anchor_frame: float  # foreground share at which an image fills its frame
    anchor_texture: float  # ... and texture_share at which such an image is a sure photo (an anchor)
    anchor_cutout_texture: float  # an image that does not fill its frame is an anchor with this texture_share ...
    anchor_cutout_colours: float  # ... at least this colour_log_count ...
    anchor_cutout_flat: float  # ... and at most this flat_share (texture above 1: no cut-out anchors)
    min_anchors: int  # fewer anchors in a folder: only they are called (both views are relative to the folder)
    frame_full_only: bool  # the frame view calls only images that fill their frame (cut-outs: the texture view)
    support_neighbours: int  # k SSL-embedding neighbours that a texture-view-only call is checked against ...
    min_support: float  # ... and the share of them that must be called too (0: no check) ...
    support_lift: float  # ... or this many times the folder's called share, if more (0: min_support alone) ...
    max_support: float  # ... but never more than this
    promote_support: float  # an uncalled image whose neighbours are called at least this share (0: off) ...
    promote_lift: float  # ... or this many times the folder's called share, if more (at most 0.9) ...
    promote_margin: float  # ... and whose mean patch logit is within this of the texture boundary is called too
    self_training_rounds: int  # logistic regression on confident pseudo-labels, stats + embedding PCA; 0: off
    self_training_components: int
    self_training_confidence: float  # round 1 trusts scores above this / below 1 - this
    texture_view: bool  # patch CNN on the foreground, trained on the frame view's confident calls
    patch_size: int  # patch side, pixels at stats_side scale
    patches_per_image: int
    texture_steps: int  # training steps (batch 128); about 2 min on 2 bf16 CPU cores
    texture_passes: float  # ... but at most this many passes over the confident patches (small folders) ...
    texture_min_steps: int  # ... and never fewer than this many steps (nor more than texture_steps); 0: no floor
    texture_seconds: float  # time budget for that training
    texture_confidence: float  # frame scores above this / below 1 - this are its pseudo-labels
    texture_rounds: int  # co-training: later rounds also learn from the previous round's confident texture calls
    texture_round_logit: float  # ... a mean patch logit above this is a photo label, below minus this a drawing label
    texture_round_min_share: float  # ... and a later round runs only where the photo share estimated so far is at least this
    texture_min_drawing_share: float  # the first round trains only where its drawing labels cover at least this share
                                      #   of the images with patches that are not photo labels ...
    texture_calm_drawings: bool  # ... else (True) calm foregrounds the frame view does not call photos are the drawing labels
    foreground_negative_share: float  # a drawing pseudo-label also needs texture_share at most this (1: frame alone)
    texture_threshold: float  # mean patch logit above which the texture view calls a photo (before the prior shift)
    texture_prior_shift: float  # boundary += this * log((1 - share) / share), share estimated from the logits; 0: fixed
    texture_width: int  # channels of the texture CNN's first layer
    texture_batch: int  # patches per training step, half from each side
    texture_lr: float  # peak learning rate of its one-cycle schedule
    texture_precision_cpu: str  # fp32 | bf16 | auto (bf16 where the CPU has native bf16); CUDA trains it in bf16
    patch_min_cover: float  # share of a patch that must be foreground
    min_confident: int  # fewest confident images per side before a learner is trained on them
    self_training_later_confidence: float  # confidence of self-training rounds after the first
    seed: int

    @classmethod
    def from_dict(cls, raw: dict | None) -> PhotoSettings:
        """Settings from a config mapping (unknown keys are an error; a bad precision too, before any work)."""
        settings = build(cls, raw)
        cpu_bf16(settings.texture_precision_cpu)
        return settings

    def to_dict(self) -> dict:
        """Plain mapping, for the run record."""
        return asdict(self)


def stats_image(image: Image.Image, settings: PhotoSettings = PhotoSettings()) -> Image.Image:
    """The RGB image statistics and patches are measured on: at most `stats_side` on the long side."""
    if max(image.size) > settings.stats_side:
        image = image.copy()
        image.thumbnail((settings.stats_side, settings.stats_side), Image.Resampling.BOX)
    return image if image.mode == "RGB" else image.convert("RGB")


def image_statistics(image: Image.Image, settings: PhotoSettings = PhotoSettings()) -> dict[str, float]:
    """Photo-vs-drawing statistics of one RGB image (see STAT_COLUMNS)."""
    image = stats_image(image, settings)  # once, shared with texture_share
    pixels = np.asarray(image).astype(np.int16)
    foreground = pixels.min(2) < settings.white
    stats = dict.fromkeys(STAT_COLUMNS, 0.0)
    stats["foreground_share"] = float(foreground.mean())
    across = np.abs(np.diff(pixels, axis=1)).max(2)[foreground[:, 1:] & foreground[:, :-1]]
    down = np.abs(np.diff(pixels, axis=0)).max(2)[foreground[1:, :] & foreground[:-1, :]]
    steps = np.concatenate([across, down])
    if len(steps) < 16:
        return stats
    stats["flat_share"] = float((steps <= settings.flat).mean())
    stats["sharp_edge_share"] = float((steps > settings.sharp_edge).mean())
    stats["soft_edge_share"] = 1.0 - stats["flat_share"] - stats["sharp_edge_share"]
    quantised = pixels[foreground] // 8
    codes = (quantised[:, 0] * 1024 + quantised[:, 1] * 32 + quantised[:, 2]).astype(np.int32)
    stats["colour_log_count"] = float(np.log1p(len(np.unique(codes))))
    stats["texture_share"] = texture_share(image, settings)
    return stats


def texture_share(image: Image.Image, settings: PhotoSettings = PhotoSettings()) -> float:
    """Share of calm foreground pixels with fine texture: luma off its 3x3 median, away from edges.

    Measured after shrinking (JPEG noise averages out; natural texture survives), inside the
    foreground (so a photo cut out onto white counts like a full-frame one) and away from strong
    edges (so drawn outlines and their ringing do not count).
    """
    scale = settings.texture_scale
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    small = rgb.resize((max(1, image.width // scale), max(1, image.height // scale)),
                                        Image.Resampling.BOX)
    foreground = Image.fromarray(((np.asarray(small).min(2) < settings.white) * 255).astype(np.uint8))
    luma = small.convert("L")
    values = np.asarray(luma).astype(np.int16)
    residual = np.abs(values - np.asarray(luma.filter(ImageFilter.MedianFilter(3))).astype(np.int16))
    step = np.zeros_like(values)
    step[:, 1:] = np.abs(np.diff(values, axis=1))
    step[1:, :] = np.maximum(step[1:, :], np.abs(np.diff(values, axis=0)))
    edges = Image.fromarray((step > settings.sharp_edge).astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(5))
    calm = (np.asarray(foreground.filter(ImageFilter.MinFilter(5))) > 0) & (np.asarray(edges) == 0)
    return float((residual[calm] >= settings.texture_step).mean()) if calm.sum() >= 16 else 0.0


class PhotoEvidence(NamedTuple):
    """What one decoding pass measures: statistics per row, foreground patches and the row position each came from."""

    stats: pd.DataFrame
    patches: np.ndarray  # (N, P, P, 3) uint8
    owner: np.ndarray    # (N,) row position in the manifest


EVIDENCE_KEYS = ("stats_side", "white", "sharp_edge", "flat", "texture_scale", "texture_step", "texture_view",
                 "patch_size", "patches_per_image", "patch_min_cover", "seed")  # the settings the evidence depends on


def _evidence_chunk(task: tuple[str, list[tuple[int, str, bool]], PhotoSettings]) -> list[tuple[int, dict, np.ndarray]]:
    """Decode one chunk of rows: (position, statistics, patches) each (run in a worker process)."""
    data, rows, settings = task
    out = []
    empty = np.zeros((0, settings.patch_size, settings.patch_size, 3), np.uint8)
    for position, path, usable in rows:
        result = load_image(Path(data) / path) if usable else None
        if result is None or result.image is None:
            out.append((position, dict.fromkeys(STAT_COLUMNS, np.nan), empty))
            continue
        image = stats_image(result.image, settings)
        taken = empty
        if settings.texture_view:
            rng = np.random.default_rng([settings.seed, position])
            taken = foreground_patches(image, settings.patch_size, settings.patches_per_image, rng, settings.white,
                                       settings.patch_min_cover)
        out.append((position, image_statistics(image, settings), taken))
    return out


def evidence_cache_path(work: str | Path, fingerprint: str, settings: PhotoSettings) -> Path:
    """Where the evidence of one index state (its fingerprint) and these settings is kept."""
    key = json.dumps({"index": fingerprint, **{k: getattr(settings, k) for k in EVIDENCE_KEYS}}, sort_keys=True)
    return Path(work) / f"photo_evidence_{hashlib.blake2b(key.encode(), digest_size=8).hexdigest()}.npz"


def photo_evidence(data: str | Path, manifest: pd.DataFrame, settings: PhotoSettings = PhotoSettings(),
                   progress=None, workers: int = 0, cache: str | Path | None = None) -> PhotoEvidence:
    """Statistics and foreground patches for every usable manifest row, from one decode per file.

    Rows are decoded in parallel (`workers`, 0 = one per core; results do not depend on it). With
    `cache` (a path from `evidence_cache_path`, keyed by the index fingerprint), a second run on an
    unchanged folder decodes nothing.
    """
    if cache is not None and Path(cache).exists():
        with np.load(cache) as stored:
            if len(stored["stats"]) == len(manifest):
                if progress is not None:
                    progress.update(len(manifest))
                return PhotoEvidence(pd.DataFrame(stored["stats"], index=manifest.index, columns=list(STAT_COLUMNS)),
                                     stored["patches"], stored["owner"].astype(int))
    rows = list(zip(range(len(manifest)), manifest["path"], manifest["cache_row"] >= 0))
    chunks = [(str(data), rows[start:start + 32], settings) for start in range(0, len(rows), 32)]
    workers = workers or os.cpu_count() or 1
    stats, patches, owners = [None] * len(rows), [], []
    results = list(_progress(ordered_map(_evidence_chunk, chunks, workers, min_tasks=3, chunksize=1), progress))
    for chunk in results:
        for position, values, taken in chunk:
            stats[position] = values
            patches.append(taken)
            owners.append(np.full(len(taken), position))
    empty = np.zeros((0, settings.patch_size, settings.patch_size, 3), np.uint8)
    evidence = PhotoEvidence(pd.DataFrame(stats, index=manifest.index, columns=list(STAT_COLUMNS)),
                             np.concatenate(patches or [empty]), np.concatenate(owners or [np.zeros(0, int)]).astype(int))
    if cache is not None:
        tmp = Path(cache).with_suffix(".tmp.npz")
        np.savez(tmp, stats=evidence.stats.to_numpy(float), patches=evidence.patches, owner=evidence.owner)
        os.replace(tmp, cache)
        for old in Path(cache).parent.glob("photo_evidence_*.npz"):  # evidence of earlier index states
            if old.name != Path(cache).name:
                old.unlink(missing_ok=True)
    return evidence


def _progress(chunks, bar):
    """Tick the bar by each chunk's rows."""
    for chunk in chunks:
        if bar is not None:
            bar.update(len(chunk))
        yield chunk


def photo_index(stats: pd.DataFrame, settings: PhotoSettings = PhotoSettings()) -> np.ndarray:
    """One number per image, larger = more photo-like: fills the frame, soft edges, few sharp edges,
    textured foreground (robust z-scores, clipped to +-3 so no single statistic decides alone)."""
    columns = ["foreground_share", "soft_edge_share", "sharp_edge_share", "texture_share"]
    scaled = np.clip(RobustScaler().fit_transform(stats[columns]), -3, 3)
    frame = scaled[:, 0] if settings.penalise_background else np.maximum(scaled[:, 0], 0)
    return (settings.frame_weight * frame + scaled[:, 1] - scaled[:, 2]
            + settings.texture_weight * scaled[:, 3])


def detect_photos(stats: pd.DataFrame, embeddings: np.ndarray | None, settings: PhotoSettings = PhotoSettings(),
                  patches: np.ndarray | None = None, owner: np.ndarray | None = None, progress=None,
                  writer=None) -> pd.DataFrame:
    """`photo_score` (0-1), `is_photo`, `photo_cluster`, `photo_anchor`, and each view's own output (`frame_score`,
    `frame_vote`: its say in the decision, `patch_logit`), for every row with statistics.

    Anchors first (`photo_anchors`): images that fill their frame with photographic texture, or cut-outs
    whose foreground is textured, rich in colour and hardly flat; absolute tests. In a folder with fewer than
    `min_anchors` only the anchors are called, because both views below are relative to the folder and
    always find a 'photo' side (a folder of drawings alone lost 56 % of its drawings before;
    benchmarks/RESULTS.md). Anchors are photos, and they are the texture view's first photo labels.

    Frame view, stated: a Gaussian mixture (size by BIC) on the photo index; the component with the most
    photo-like mean is 'photo'; each image's HDBSCAN cluster (stats + embedding PCA) can lift its posterior
    to the cluster's mean (`cluster_scores`), and noise points keep their own posterior; then
    `self_train` refines the scores with the SSL embedding (`frame_score`); it has a say only where the image
    fills its frame (`frame_votes`, `frame_vote`). Texture view: a patch CNN trained on the anchors and the
    frame view's confident calls (`patch_logit`, `texture_view_logits`), with a boundary that moves with the
    folder's estimated photo share (`texture_boundary`). `combine_views` lets either call a photo; a call of
    the texture view alone is withdrawn without support among the image's SSL-embedding neighbours
    (`neighbour_support`, `photo_support`); then an image neither view called is called when enough of its
    neighbours are and its texture view is near the boundary (`neighbour_promotion`, `photo_promoted`).
    Measured numbers are in benchmarks/RESULTS.md.
    """
    out = no_photo_columns(stats.index)
    valid = stats.notna().all(axis=1).to_numpy()
    if valid.sum() < max(settings.min_cluster_size, 10):
        return out
    anchor = photo_anchors(stats, settings)
    out["photo_anchor"] = anchor
    table = stats[valid]
    index = photo_index(table, settings)[:, None]
    posterior = _photo_posterior(index, settings)
    features = RobustScaler().fit_transform(table)
    if embeddings is not None and settings.embedding_components > 0:
        reduced = PCA(min(settings.embedding_components, embeddings.shape[1]), random_state=settings.seed)
        projected = reduced.fit_transform(embeddings[valid])
        features = np.column_stack([features, settings.embedding_weight * projected / projected.std()])
    labels = hdbscan.HDBSCAN(min_cluster_size=settings.min_cluster_size,
                             min_samples=settings.min_samples).fit(features).labels_
    score = cluster_scores(posterior, labels, settings.cluster_rule)
    if embeddings is not None and settings.self_training_rounds > 0:
        score = self_train(table, embeddings[valid], score, settings)
    out.loc[valid, "frame_score"] = score
    out.loc[valid, "photo_cluster"] = labels
    if anchor.sum() < settings.min_anchors:  # too little photo evidence: the views' 'photo' side would be textured drawings
        out.loc[valid, "photo_score"] = anchor[valid].astype(float)  # the anchors alone are called
        out["photo_share_estimate"] = 0.0
        out["is_photo"] = out["photo_score"].fillna(0) > settings.threshold
        return out
    frame_vote = frame_votes(out["frame_score"].to_numpy(), stats, settings)
    if settings.texture_view and patches is not None and owner is not None and len(patches):
        examples: dict = {}
        out["patch_logit"] = texture_view_logits(frame_vote, patches, owner, settings, progress, writer,
                                                 stats["texture_share"].to_numpy(), anchor,
                                                 negative_score=out["frame_score"].to_numpy(), examples=examples)
        if examples:  # what the first net was taught, per row, and where its drawing examples came from
            out["texture_example"] = examples["label"]
            out["texture_calm_examples"] = examples["calm"]
    boundary, share = texture_boundary(out["patch_logit"].to_numpy(), settings)
    out["texture_boundary"], out["photo_share_estimate"] = boundary, share
    frame_vote = np.where(np.isnan(frame_vote), np.nan, np.fmax(frame_vote, anchor.astype(float)))
    out["frame_vote"] = frame_vote
    out["photo_score"] = combine_views(frame_vote, out["patch_logit"].to_numpy(), settings, boundary)
    others = (nearest_others(embeddings[valid], settings.support_neighbours)
              if embeddings is not None and settings.support_neighbours > 0
              and max(settings.min_support, settings.promote_support) > 0 else None)
    if others is not None and settings.min_support > 0:
        called = out["photo_score"].fillna(0).to_numpy()[valid] > settings.threshold
        support = np.full(len(out), np.nan)
        support[valid] = neighbour_support(embeddings[valid], called, settings.support_neighbours, others)
        out["photo_support"] = support
        needed = support_needed(int(called.sum()), len(called), settings)
        out["photo_support_needed"] = needed
        alone = (support < needed) & ~(np.nan_to_num(frame_vote) > settings.threshold)
        out.loc[alone, "photo_score"] = np.fmin(out.loc[alone, "photo_score"], settings.threshold)
    if others is not None and settings.promote_support > 0:
        called = out["photo_score"].fillna(0).to_numpy()[valid] > settings.threshold
        margin = (out["patch_logit"].to_numpy() - boundary)[valid]
        promoted, support, needed = neighbour_promotion(embeddings[valid], called, margin, settings, others)
        rows = out.index[valid][promoted]
        out.loc[rows, "photo_promoted"] = True  # its support and need are now the promotion's
        out.loc[rows, "photo_support"], out.loc[rows, "photo_support_needed"] = support[promoted], needed
        out.loc[rows, "photo_score"] = np.fmax(support[promoted], np.nextafter(settings.threshold, 1.0))
    out["is_photo"] = out["photo_score"].fillna(0) > settings.threshold
    return out


def no_photo_columns(index: pd.Index) -> pd.DataFrame:
    """The photo job's columns for rows it did not judge (no statistics, too few images, job skipped)."""
    return pd.DataFrame({"photo_score": np.nan, "is_photo": False, "photo_cluster": -1, "frame_score": np.nan,
                         "patch_logit": np.nan, "texture_boundary": np.nan, "photo_share_estimate": np.nan,
                         "photo_anchor": False, "frame_vote": np.nan, "photo_support": np.nan,
                         "photo_support_needed": np.nan, "photo_promoted": False, "texture_example": -1,
                         "texture_calm_examples": False}, index=index)


def fills_frame(stats: pd.DataFrame, settings: PhotoSettings = PhotoSettings()) -> np.ndarray:
    """Whether each image's foreground covers at least `anchor_frame` of the picture (NaN: no)."""
    return stats["foreground_share"].to_numpy(float) >= settings.anchor_frame


def neighbour_support(embeddings: np.ndarray, called: np.ndarray, k: int, others: np.ndarray | None = None
                      ) -> np.ndarray:
    """Per image: the share of its `k` nearest neighbours (cosine, SSL embedding; itself excluded) that are called.

    Photos crawled into a folder come in kinds, so a photo's nearest neighbours hold other photos; a glossy
    drawing the texture view calls sits among drawings. A call of the texture view alone whose support is
    below `support_needed` is withdrawn: on the benchmark 2 of 20 took back 31 drawings and 1 photo; 6 of 20
    halved the false calls of glossy icons where photos are common, at a cost in folders with few photos, whose
    cut-outs have drawings among their neighbours; so the share asked now follows the folder's called share
    (benchmarks/RESULTS.md). `others`: the neighbours from `nearest_others`, if already found.
    """
    others = nearest_others(embeddings, k) if others is None else others
    if others.shape[1] < 1:
        return np.zeros(len(others))
    return np.asarray(called, bool)[np.clip(others, 0, None)].mean(axis=1)


def nearest_others(embeddings: np.ndarray, k: int) -> np.ndarray:
    """(N, min(k, N - 1)) indices of each image's `k` nearest neighbours (cosine, SSL embedding), itself excluded."""
    vectors = np.asarray(embeddings, dtype=np.float32)
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-12)
    k = min(k, len(vectors) - 1)
    if k < 1:
        return np.zeros((len(vectors), 0), dtype=np.int64)
    _, neighbours = nearest_neighbours(vectors, k + 1)
    own = neighbours == np.arange(len(vectors))[:, None]
    own[~own.any(axis=1), -1] = True  # an exact copy may stand before the image itself: drop the last instead
    return neighbours[~own].reshape(len(vectors), k)


def support_needed(calls: int, images: int, settings: PhotoSettings = PhotoSettings()) -> float:
    """The neighbour support a texture-view-only call needs, in a folder of `images` where `calls` are called.

    A random image's neighbours are called about as often as the folder's called share, so support is judged
    against that chance level: `support_lift` times the called share, at least `min_support` and at most
    `max_support`. A fixed share asks too much where photos are few (a cut-out photo on white has drawings
    among its neighbours, and few photos of its kind) and too little where they are many (a glossy drawing in
    a folder that is half photos sits at chance); chosen on dev folders of two sizes (benchmarks/RESULTS.md).
    """
    if settings.support_lift <= 0 or images <= 0:
        return settings.min_support
    return float(np.clip(settings.support_lift * calls / images, settings.min_support,
                         max(settings.max_support, settings.min_support)))


def neighbour_promotion(embeddings: np.ndarray, called: np.ndarray, margin: np.ndarray,
                        settings: PhotoSettings = PhotoSettings(), others: np.ndarray | None = None
                        ) -> tuple[np.ndarray, np.ndarray, float]:
    """Which uncalled images to call because their neighbours are called (the support check's other side),
    every image's support from those calls, and the support needed.

    Photos crawled into a folder come in kinds, and some of a kind escape both views: crops of one smooth
    black-and-white wallpaper, product shots on white whose mean patch logit sits just below the texture
    boundary. Such an image is called when at least `promote_support` of its `support_neighbours` nearest SSL
    embeddings are called (after the support check), or `promote_lift` times the folder's called share (chance)
    if more, at most 0.9, and its mean patch logit is at most `promote_margin` below the boundary (`margin`:
    logit minus boundary; NaN, no patches: never). One pass, from the calls before it. Chosen on the dev grid
    and the benchmark from the dumped per-image outputs (benchmarks/RESULTS.md).
    """
    called = np.asarray(called, bool)
    margin = np.asarray(margin, float)
    needed = float(np.clip(settings.promote_lift * called.mean(), settings.promote_support,
                           max(0.9, settings.promote_support))) if len(called) else 1.0
    if settings.promote_support <= 0 or settings.support_neighbours <= 0 or not called.any():
        return np.zeros(len(called), bool), np.zeros(len(called)), needed
    support = neighbour_support(embeddings, called, settings.support_neighbours, others)
    near = np.where(np.isnan(margin), False, margin >= -settings.promote_margin)
    return ~called & (support >= needed) & near, support, needed


def photo_anchors(stats: pd.DataFrame, settings: PhotoSettings = PhotoSettings()) -> np.ndarray:
    """Sure photos by an absolute test: `frame_anchors` or `cutout_anchors`."""
    return frame_anchors(stats, settings) | cutout_anchors(stats, settings)


def frame_anchors(stats: pd.DataFrame, settings: PhotoSettings = PhotoSettings()) -> np.ndarray:
    """Sure photos that fill their frame: the foreground fills the frame and has fine texture.

    Drawings that fill their frame (flags, scenes with a background) are flat or smoothly shaded, and
    drawings with texture (noise-shaded icons, glossy clipart) sit on a plain background. Measured on
    the benchmark and the dev grid (benchmarks/RESULTS.md): with the defaults no drawing is an anchor
    (the benchmark's 82 frame-filling drawings all have texture_share below 0.1), 361 of the
    benchmark's 640 photos are, and a folder of drawings alone has none.
    """
    return fills_frame(stats, settings) & (stats["texture_share"].to_numpy(float) >= settings.anchor_texture)


def cutout_anchors(stats: pd.DataFrame, settings: PhotoSettings = PhotoSettings()) -> np.ndarray:
    """Sure photos cut out onto a plain background: a textured foreground with many colours and few flat steps.

    Each statistic alone is shared by some drawings (noise-shaded icons are as textured; gradient clipart
    has as many colours; airbrushed drawings have as few flat steps), all three together by none measured:
    0 of the 9,769 distinct drawings of the benchmark and the dev grid pass, and the defaults sit above
    those drawings' largest values (texture 0.29, colours 6.95, flat share 0.27 of the one drawing that
    passes the other two). About a fifth of the dev grid's cut-out photos pass, which is what a folder
    whose photos are nearly all cut-outs lacked: photo labels for the texture view (benchmarks/RESULTS.md).
    """
    return (~fills_frame(stats, settings)
            & (stats["texture_share"].to_numpy(float) >= settings.anchor_cutout_texture)
            & (stats["colour_log_count"].to_numpy(float) >= settings.anchor_cutout_colours)
            & (stats["flat_share"].to_numpy(float) <= settings.anchor_cutout_flat))


def frame_votes(frame_score: np.ndarray, stats: pd.DataFrame, settings: PhotoSettings = PhotoSettings()) -> np.ndarray:
    """The frame view's say in the decision: its score where the image fills its frame, else 0 (NaN stays NaN).

    With `frame_full_only` the frame view judges whole pictures only. On the dev grid every frame-view
    call of a drawing was an image on a plain background (a textured icon), and the cut-out photos it
    gave up are the texture view's to find (benchmarks/RESULTS.md).
    """
    score = np.asarray(frame_score, float)
    if not settings.frame_full_only:
        return score.copy()
    return np.where(np.isnan(score), np.nan, np.where(fills_frame(stats, settings), score, 0.0))


def photo_share_estimate(logits: np.ndarray, iterations: int = 200) -> float:
    """The share of photos in a folder, from the texture view's mean patch logits alone (NaN: no logit).

    The texture view trains on equal numbers of photo and drawing patches, so its logit reads as a
    log-likelihood ratio at even odds; the folder's own prior is the fixed point of 'prior = mean
    posterior at that prior' (the EM of Saerens, Latinne & Decaestecker 2002, "Adjusting the outputs
    of a classifier to new a priori probabilities"). Measured on the photo grid it follows the truth
    (1 % photos: 3-10 %; 7 %: 7-8 %; 25 %: 16-26 %; 50 %: 36-53 %; benchmarks/RESULTS.md).
    """
    logits = np.asarray(logits, float)
    logits = logits[np.isfinite(logits)]
    if len(logits) == 0:
        return float("nan")
    share = 0.5
    for _ in range(iterations):
        posterior = 1 / (1 + np.exp(-np.clip(logits + np.log(share / (1 - share)), -50, 50)))
        updated = float(np.clip(posterior.mean(), 1e-4, 1 - 1e-4))
        if abs(updated - share) < 1e-7:
            break
        share = updated
    return share


def texture_boundary(logits: np.ndarray, settings: PhotoSettings = PhotoSettings()) -> tuple[float, float]:
    """(boundary on the mean patch logit, estimated photo share) for one folder.

    The balanced training puts the texture view's own boundary at even odds; a folder where photos are
    rare needs stronger evidence before calling one. `texture_prior_shift` moves the boundary by that
    share of the Bayes correction log((1 - share) / share) (1: all of it; 0: fixed at `texture_threshold`).
    Half was chosen on the dev grid: the network's logits are over-confident, and the full shift cost
    recall where photos are a quarter of the folder (benchmarks/RESULTS.md).
    """
    share = photo_share_estimate(logits)
    if not np.isfinite(share) or settings.texture_prior_shift == 0:
        return settings.texture_threshold, share
    return settings.texture_threshold + settings.texture_prior_shift * float(np.log((1 - share) / share)), share


def cluster_scores(posterior: np.ndarray, labels: np.ndarray, rule: str = "lift") -> np.ndarray:
    """Each image's frame score from its mixture posterior and its HDBSCAN cluster (-1: noise, keeps its own).

    'mean': the cluster's mean posterior replaces each member's, so whole clusters move together. 'lift':
    the larger of the two, so a cluster can carry its doubtful members up but never drags a confident
    member down. With 'mean', a folder whose photos are common loses most of its confident photos: one
    cluster holds the most photo-like mixture component and the next one, and its mean is doubtful
    (25 % full-frame photos: 25 confident photos with 'mean', 101 with 'lift', none of them a drawing;
    benchmarks/RESULTS.md).
    """
    if rule not in ("lift", "mean"):
        raise ValueError(f"photos.cluster_rule must be 'lift' or 'mean', not {rule!r}")
    score = np.asarray(posterior, float).copy()
    for cluster in np.unique(labels[labels >= 0]):
        members = labels == cluster
        mean = posterior[members].mean()
        score[members] = np.maximum(posterior[members], mean) if rule == "lift" else mean
    return score


def texture_step_count(patches: int, settings: PhotoSettings) -> int:
    """Training steps of the texture view: `texture_steps`, but at most `texture_passes` passes over its patches.

    The cap keeps a small folder from paying the 25,000-image case's minutes; `texture_min_steps` (at most
    `texture_steps`) keeps it from training too briefly: 20 passes were a few hundred steps in the test part's folders
    and cost F1 on dev (benchmarks/RESULTS.md). At 1,300 steps a small folder's texture view takes about 70 s."""
    passes = int(np.ceil(settings.texture_passes * patches / max(settings.texture_batch, 1)))
    floor = min(max(50, settings.texture_min_steps), settings.texture_steps)
    return max(min(settings.texture_steps, passes), floor)


def texture_labels(frame_score: np.ndarray, texture: np.ndarray | None, settings: PhotoSettings,
                   patch_logit: np.ndarray | None = None, anchor: np.ndarray | None = None,
                   negative_score: np.ndarray | None = None) -> np.ndarray:
    """Per-image pseudo-label for the texture view: 1 photo, 0 drawing, -1 not used.

    A photo: the frame view is confident. A drawing: the frame view is confident *and* the foreground is
    calm (`texture_share`, measured inside the foreground, at most `foreground_negative_share`). Without the
    second condition a folder whose photos are mostly cut-outs teaches its cut-outs as drawings, because
    the frame view calls a cut-out on white a drawing (issue #18; measured in benchmarks/RESULTS.md).
    Textured foregrounds are not taken as photo labels: shaded emoji have them too (measured there as well).

    Co-training (`patch_logit`, the previous texture round's mean logits): a confident texture call
    (|logit| > `texture_round_logit`) is a label too, so photos that the frame view misses (a folder
    where photos are common: its mixture's photo component holds only the most photo-like few) are
    learnt from; a drawing label then also needs the texture view's agreement (a row without patches
    keeps the frame view's label).

    `anchor` (`photo_anchors`) adds photo labels that do not depend on the folder's mix; `negative_score`
    (default `frame_score`) is the score whose confident lows are drawing labels, so that `frame_votes`
    (0 for an image on a plain background) can give the photo labels without making every such image a
    drawing label.
    """
    confidence = settings.texture_confidence
    frame = np.nan_to_num(np.asarray(frame_score, float), nan=0.5)
    low = frame if negative_score is None else np.nan_to_num(np.asarray(negative_score, float), nan=0.5)
    positive = frame > confidence
    if anchor is not None:
        positive |= np.asarray(anchor, bool)
    negative = (low < 1 - confidence) & ~positive
    if texture is not None:
        negative &= np.nan_to_num(np.asarray(texture, float), nan=0.0) <= settings.foreground_negative_share
    if patch_logit is not None:
        logit = np.asarray(patch_logit, float)
        positive |= np.nan_to_num(logit, nan=-np.inf) > settings.texture_round_logit
        negative &= np.nan_to_num(logit, nan=-np.inf) < -settings.texture_round_logit
        negative &= ~positive
    return np.where(positive, 1, np.where(negative, 0, -1))


def drawing_label_share(labels: np.ndarray, owner: np.ndarray) -> float:
    """Of the images with patches that are not photo labels, the share that are drawing labels (per-patch
    `labels` and their `owner` image, as the texture view trains on them; 0 where there are none)."""
    rest = np.unique(owner[labels != 1])
    return len(np.unique(owner[labels == 0])) / len(rest) if len(rest) else 0.0


def texture_view_logits(frame_score: np.ndarray, patches: np.ndarray, owner: np.ndarray,
                        settings: PhotoSettings = PhotoSettings(), progress=None, writer=None,
                        texture: np.ndarray | None = None, anchor: np.ndarray | None = None,
                        negative_score: np.ndarray | None = None, examples: dict | None = None) -> np.ndarray:
    """Mean patch logit per row from a TextureNet trained on pseudo-labels (`texture_labels`; NaN: no patch).

    `examples`, if given, is filled with what the first net was taught (or would have been, had it trained):
    `label` per row (1 photo example, 0 drawing example, -1 neither or no patch) and `calm` (whether the drawing
    examples are the calm foregrounds of `texture_calm_drawings`, below), so that a report can say so.

    `texture` is each row's `texture_share` (None: the frame view alone labels); `anchor` and
    `negative_score` go to `texture_labels`. All NaN when either side
    has fewer than `min_confident` labelled images with patches (nothing to learn from). With
    `texture_rounds` > 1, each later round trains a new net on labels that include the previous round's
    confident calls (co-training); a round with too few labels keeps the previous round's logits, and so does
    a folder whose estimated photo share (`photo_share_estimate`) is below `texture_round_min_share`: where
    photos are rare, the first net's confident calls are mostly textured drawings (benchmarks/RESULTS.md).

    No net is trained (all NaN) where the first round's drawing labels cover less than
    `texture_min_drawing_share` of the images with patches that are not photo labels: the frame view of a small
    folder can be sure of only a few drawings (line art without patches, a handful of flat icons), and a net that
    has seen those alone calls every shaded drawing a photo (a 180-image folder: 6 drawing labels, 54 false calls;
    at least 0.45 in every folder of the benchmark and the photo grid; benchmarks/RESULTS.md). With
    `texture_calm_drawings`, such a folder (or one with fewer than `min_confident` drawing labels) first takes every
    calm foreground that the frame view does not vote a photo as a drawing label, in both rounds: a frame score
    says little of an image on white, which is what a small folder's drawings and cut-outs are. Only if that share
    also falls short is no net trained (4 small folders: cut-outs 6 -> 20 of 41 called, drawings 2 -> 4 of 682).
    """
    logits = np.full(len(frame_score), np.nan)
    for round_ in range(max(1, settings.texture_rounds)):
        if round_ and not photo_share_estimate(logits) >= settings.texture_round_min_share:
            break
        per_image = texture_labels(frame_score, texture, settings, logits if round_ else None, anchor,
                                   negative_score)
        labels = per_image[owner]
        few_drawings = len(np.unique(owner[labels == 0])) < settings.min_confident \
            or drawing_label_share(labels, owner) < settings.texture_min_drawing_share
        calm = not round_ and few_drawings and settings.texture_calm_drawings and texture is not None
        if calm:
            # a small folder's frame view is sure of few drawings, and its score says little for an image on white:
            # every calm foreground it does not vote a photo is a drawing label, in this round and the next
            negative_score = np.where(np.nan_to_num(np.asarray(frame_score, float), nan=0.5) > 0.5, 1.0, 0.0)
            per_image = texture_labels(frame_score, texture, settings, None, anchor, negative_score)
            labels = per_image[owner]
        if not round_ and examples is not None:
            with_patch = np.zeros(len(frame_score), bool)
            with_patch[owner] = True
            examples.update(label=np.where(with_patch, per_image, -1), calm=bool(calm))
        if min(len(np.unique(owner[labels == 1])), len(np.unique(owner[labels == 0]))) < settings.min_confident:
            break
        if not round_ and drawing_label_share(labels, owner) < settings.texture_min_drawing_share:
            break
        train = labels >= 0
        model = fit_texture_net(patches[train], labels[train],
                                steps=texture_step_count(int(train.sum()), settings), batch=settings.texture_batch,
                                learning_rate=settings.texture_lr, seconds=settings.texture_seconds,
                                seed=settings.seed + round_, progress=progress, writer=writer,
                                width=settings.texture_width, cpu_bf16=cpu_bf16(settings.texture_precision_cpu),
                                precision_probe=cpu_precision_probe(settings.texture_precision_cpu))
        logits = image_means(owner, patch_logits(model, patches), len(frame_score))
    return logits


def combine_views(frame_score: np.ndarray, patch_logit: np.ndarray, settings: PhotoSettings = PhotoSettings(),
                  boundary: float | None = None) -> np.ndarray:
    """Either view can call a photo: the larger of the frame score and the texture view's shifted sigmoid.

    With the default threshold 0.5 this is `frame_score > 0.5 or patch_logit > boundary` (default
    `texture_threshold`; `texture_boundary` gives the folder's own); a row without patches keeps its frame score.
    """
    boundary = settings.texture_threshold if boundary is None else boundary
    texture = 1 / (1 + np.exp(-(np.asarray(patch_logit, float) - boundary)))
    return np.where(np.isnan(texture), frame_score, np.fmax(frame_score, texture))


def self_train(stats: pd.DataFrame, embeddings: np.ndarray, score: np.ndarray, settings: PhotoSettings) -> np.ndarray:
    """Refine scores by self-training: fit a logistic regression on the confidently scored images only
    (statistics + SSL embedding PCA), re-score everything, repeat with the new confident set.

    The embedding brings what the statistics miss (what the picture shows); the confident pseudo-labels
    come from the statistics rule, so no label is used. Returns the input unchanged when either side
    has too few confident images to learn from.
    """
    from sklearn.linear_model import LogisticRegression

    reduced = PCA(min(settings.self_training_components, embeddings.shape[1]), random_state=settings.seed)
    projected = reduced.fit_transform(embeddings)
    features = np.column_stack([RobustScaler().fit_transform(stats), projected / projected.std()])
    confidence = settings.self_training_confidence
    for _ in range(settings.self_training_rounds):
        confident = (score > confidence) | (score < 1 - confidence)
        positives = int((score[confident] > 0.5).sum())
        if positives < settings.min_confident or confident.sum() - positives < settings.min_confident:
            return score
        model = LogisticRegression(max_iter=2000).fit(features[confident], score[confident] > 0.5)
        score = model.predict_proba(features)[:, 1]
        confidence = max(confidence, settings.self_training_later_confidence)
    return score


def _photo_posterior(index: np.ndarray, settings: PhotoSettings) -> np.ndarray:
    """Posterior of the most photo-like mixture component, mixture size chosen by BIC."""
    best, best_bic = None, np.inf
    for components in range(2, settings.max_components + 1):
        mixture = GaussianMixture(components, random_state=settings.seed, n_init=2).fit(index)
        bic = mixture.bic(index)
        if bic < best_bic:
            best, best_bic = mixture, bic
    return best.predict_proba(index)[:, int(np.argmax(best.means_.ravel()))]
