"""Self-contained HTML report of a curation run: every plot and thumbnail is embedded, it opens offline."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402

from illustra.data.manifest import atomic_write_text  # noqa: E402

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
section{margin-bottom:3em}h2{border-bottom:1px solid #ccc}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}.row{display:flex;gap:2em;align-items:flex-start;
flex-wrap:wrap}.thumbs img{margin:1px;border:1px solid #eee}.cap{font-size:12px;color:#555}"""


def figure_tag(fig) -> str:
    """A matplotlib figure as an inline PNG <img>."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def thumb_tag(pixels: np.ndarray, title: str = "") -> str:
    """One cached image as an inline PNG thumbnail."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels)).save(buffer, format="PNG")
    return (f'<img width="64" height="64" title="{html.escape(title)}" '
            f'src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">')


def table_tag(frame: pd.DataFrame) -> str:
    """A small DataFrame as an HTML table."""
    return frame.to_html(border=0, float_format=lambda v: f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}")


def section(anchor: str, title: str, body: str) -> str:
    """One titled, anchored section of a report."""
    return f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{body}</section>'


def _thumbs(manifest: pd.DataFrame, pixels: np.ndarray, rows, limit: int = 24, data: Path | None = None,
            why=None) -> str:
    """Thumbnails (64 px) of manifest rows (by index), path (and `why(row)`) as tooltip; a click opens the file
    when `data` is known."""
    rows = list(rows)[:limit]
    tags = []
    for r in rows:
        if manifest.at[r, "cache_row"] < 0:
            continue
        title = manifest.at[r, "path"] + (f" \u2014 {why(r)}" if why else "")
        tag = thumb_tag(pixels[manifest.at[r, "cache_row"]], title)
        tags.append(f'<a href="{(data / manifest.at[r, "path"]).resolve().as_uri()}">{tag}</a>' if data else tag)
    return f'<div class="thumbs">{"".join(tags) or "<i>none</i>"}</div>'


def class_section(manifest: pd.DataFrame, classes: list[str], summary: dict) -> str:
    """Class counts before/after cleaning, as a bar chart and a table."""
    plan = summary.get("imbalance_plan", "none")
    seen_label = {"none": "per epoch (no correction)", "over": "draws per epoch (over-sampling)",
                  "under": "draws per epoch (under-sampling)", "weights": "loss mass per epoch (class weights)"}[plan]
    table = pd.DataFrame({"before cleaning": summary["class_counts_before"], "after cleaning": summary["class_counts_after"],
                          seen_label: summary.get("class_mass_per_epoch", {})}).reindex(classes)
    fig, ax = plt.subplots(figsize=(9, 3.2))
    x = np.arange(len(classes))
    for offset, column in zip((-0.27, 0.0, 0.27), table.columns):
        ax.bar(x + offset, table[column], 0.27, label=column)
    ax.set_xticks(x, classes, rotation=60)
    ax.legend()
    ax.set_ylabel("images")
    text = (f"<p>Imbalance (largest / smallest class): <b>{summary['imbalance_before']}x</b> before cleaning, "
            f"<b>{summary['imbalance_after']}x</b> after cleaning, and <b>{summary.get('imbalance_as_trained', '?')}x</b> "
            f"as the model sees it under fine-tuning's plan <code>{plan}</code> (configs/finetune.yaml "
            "<code>imbalance</code>; the same rule fine-tuning samples or weights with, "
            "<code>illustra/curation/balance.py</code>).</p>")
    return section("classes", "Class distribution", text + f'<div class="row">{figure_tag(fig)}{table_tag(table)}</div>')


def properties_section(manifest: pd.DataFrame) -> str:
    """Sizes, aspect ratios, file sizes, formats and colour modes."""
    usable = manifest[manifest["cache_row"] >= 0]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3))
    axes[0].scatter(usable["width"], usable["height"], s=3, alpha=0.3)
    axes[0].set(xscale="log", yscale="log", xlabel="width", ylabel="height", title="image size (px)")
    for axis in (axes[0].xaxis, axes[0].yaxis):  # powers of two as plain numbers: 64, 128, 256 (no crowded minor labels)
        axis.set_major_locator(LogLocator(base=2))
        axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.set_minor_formatter(NullFormatter())
    axes[1].hist(np.log2(usable["width"] / usable["height"]), bins=40)
    axes[1].set(title="aspect ratio, log2(w/h)")
    axes[2].hist(np.log10(usable["bytes"].clip(lower=1)), bins=40)
    axes[2].set(title="file size, log10(bytes)")
    formats = usable.groupby(["format", "mode"]).size().rename("files").reset_index()
    stats = usable[["width", "height", "bytes"]].describe().T[["min", "50%", "mean", "max"]]
    return section("properties", "Image properties",
                    f'{figure_tag(fig)}<div class="row">{table_tag(formats)}{table_tag(stats)}</div>')


def colour_section(manifest: pd.DataFrame, pixels: np.ndarray, classes: list[str]) -> str:
    """Mean colour, brightness and saturation per class (from the pixel cache)."""
    usable = manifest[manifest["cache_row"] >= 0]
    rows = []
    for folder in classes:
        members = usable[usable["class_folder"] == folder]["cache_row"].to_numpy()[:400]
        if len(members) == 0:
            continue
        sample = np.asarray(pixels[np.sort(members)], np.float32) / 255
        high, low = sample.max(3), sample.min(3)
        rows.append({"class": folder, "R": sample[..., 0].mean(), "G": sample[..., 1].mean(), "B": sample[..., 2].mean(),
                     "brightness": sample.mean(), "saturation": ((high - low) / np.maximum(high, 1e-3)).mean(),
                     "white share": (low > 0.94).mean()})
    table = pd.DataFrame(rows).set_index("class")
    fig, ax = plt.subplots(figsize=(9, 2.8))
    ax.bar(table.index, table["saturation"], color=table[["R", "G", "B"]].to_numpy().clip(0, 1))
    ax.set(title="mean saturation per class (bar colour = mean RGB)")
    ax.tick_params(axis="x", rotation=60)
    return section("colour", "Colour statistics", f'<div class="row">{figure_tag(fig)}{table_tag(table)}</div>')


def gallery_section(manifest: pd.DataFrame, pixels: np.ndarray, classes: list[str]) -> str:
    """A few thumbnails per class from the cleaned set."""
    parts = []
    for folder in classes:
        rows = manifest[(manifest["class_folder"] == folder) & manifest["clean"]].index
        sample = np.random.default_rng(0).permutation(rows)[:16]
        parts.append(f"<h4>{html.escape(folder)}</h4>{_thumbs(manifest, pixels, sample)}")
    return section("gallery", "Thumbnails per class (cleaned set)", "".join(parts))


def embedding_section(manifest: pd.DataFrame, embeddings: np.ndarray) -> str:
    """2-D PCA map of the SSL embeddings, coloured by class and by curation decision."""
    usable = manifest[manifest["cache_row"] >= 0]
    points = PCA(2, random_state=0).fit_transform(embeddings[usable.index.to_numpy()])
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    axes[0].scatter(points[:, 0], points[:, 1], c=usable["class_id"], cmap="tab20", s=3)
    axes[0].set(title="coloured by class")
    for decision, colour in (("keep", "#bbb"), ("drop: duplicate", "tab:blue"), ("drop: photo", "tab:red"),
                             ("drop: blank image", "k"), ("drop: duplicate group with conflicting labels", "tab:orange")):
        selected = (usable["decision"] == decision).to_numpy()
        axes[1].scatter(points[selected, 0], points[selected, 1], s=3 if decision == "keep" else 8, c=colour,
                        label=f"{decision} ({selected.sum()})")
    axes[1].legend(markerscale=3, fontsize=8)
    axes[1].set(title="coloured by curation decision")
    return section("embedding", "Embedding map (PCA of the SSL encoder's features)", figure_tag(fig))


def duplicates_section(manifest: pd.DataFrame, pixels: np.ndarray, pairs: pd.DataFrame, summary: dict,
                       data: Path | None = None) -> str:
    """Counts, the keep rule, conflicts, and every group (keeper first) with its evidence."""
    kinds = summary.get("duplicate_pairs", {})
    in_words = ", ".join(f"{count:,} {'pixel-identical' if kind == 'exact' else 'near-identical'}"
                         for kind, count in sorted(kinds.items())) or "none"
    text = (f"<p>{summary['duplicate_groups']:,} groups; {summary['duplicate_copies_dropped']:,} copies dropped; "
            f"confirmed pairs: {in_words}. Keep rule: largest resolution, then lossless format, then "
            f"path. {summary['label_conflict_groups']} groups span several classes; a conflicted group keeps its "
            f"keeper only when the keeper's class is the group's strict majority, otherwise the whole group "
            f"({summary['label_ambiguous_rows']} rows) leaves the training set.</p>")
    grouped = manifest[manifest["dup_group"] >= 0]
    evidence = _group_evidence(manifest, pairs)
    rows = []
    for group, members in grouped.groupby("dup_group"):
        members = members.sort_values("dup_keep", ascending=False)
        flag = " <b>label conflict</b>" if members["dup_label_conflict"].any() else ""
        rows.append(f"<div>group {group}: {', '.join(members['class_folder'].unique())}{flag}"
                    f"{evidence.get(group, '')}{_thumbs(manifest, pixels, members.index, 12, data)}</div>")
    shown = "".join(rows[:40])
    rest = (f"<details><summary>show the other {len(rows) - 40} groups</summary>{''.join(rows[40:])}</details>"
            if len(rows) > 40 else "")
    text += "<p class='cap'>The keeper is first; a click on a thumbnail opens the file.</p>" if data else ""
    return section("duplicates", "Duplicates", text + shown + rest)


def _group_evidence(manifest: pd.DataFrame, pairs: pd.DataFrame) -> dict[int, str]:
    """Per duplicate group: how its copies were made (the detector's guess) and its worst local difference."""
    if not len(pairs) or "transform" not in pairs:
        return {}
    groups = manifest["dup_group"].to_numpy()[pairs["a"].to_numpy()]
    out = {}
    for group, members in pairs.assign(group=groups).groupby("group"):
        kinds = ", ".join(f"{name} ({count})" if count > 1 else name
                          for name, count in members["transform"].value_counts().items())
        out[int(group)] = (f" &middot; copies made by: {kinds} &middot; largest local difference "
                           f"{members['worst_patch'].max():.3f} (worst 8x8 patch after alignment; a pair above "
                           "<code>duplicates.max_patch</code> is not a duplicate)")
    return out


def _photo_evidence(manifest: pd.DataFrame):
    """Tooltip text: each view's evidence for one row."""
    def why(r) -> str:
        parts = [f"photo_score {manifest.at[r, 'photo_score']:.2f}"]
        if "photo_anchor" in manifest and bool(manifest.at[r, "photo_anchor"]):
            cover = (f"; its foreground covers {manifest.at[r, 'foreground_share']:.0%} of the picture"
                     if "foreground_share" in manifest and pd.notna(manifest.at[r, "foreground_share"]) else "")
            parts.append(f"anchor (a sure photo by the absolute test{cover})")
        if pd.notna(manifest.at[r, "frame_score"]):
            parts.append(f"frame view {manifest.at[r, 'frame_score']:.2f}")
            if "frame_vote" in manifest and manifest.at[r, "frame_vote"] == 0 and manifest.at[r, "frame_score"] > 0.5:
                parts.append("(not frame-filling: the frame view has no say)")
        if pd.notna(manifest.at[r, "patch_logit"]):
            parts.append(f"texture view {manifest.at[r, 'patch_logit']:+.1f}")
        if "texture_example" in manifest and manifest.at[r, "texture_example"] in (0, 1):
            parts.append(f"a {'photo' if manifest.at[r, 'texture_example'] == 1 else 'drawing'} example of the "
                         "texture view")
        promoted = "photo_promoted" in manifest and bool(manifest.at[r, "photo_promoted"])
        if "photo_support" in manifest and pd.notna(manifest.at[r, "photo_support"]):
            needed = (f" (a {'promotion' if promoted else 'texture-view-only call'} needs "
                      f"{manifest.at[r, 'photo_support_needed']:.0%})"
                      if "photo_support_needed" in manifest and pd.notna(manifest.at[r, "photo_support_needed"]) else "")
            parts.append(f"{manifest.at[r, 'photo_support']:.0%} of its nearest neighbours called{needed}")
        if promoted:
            parts.append("called for its neighbours (after the support check), its texture view near the boundary")
        if "texture_share" in manifest and pd.notna(manifest.at[r, "texture_share"]):
            parts.append(f"textured foreground {manifest.at[r, 'texture_share']:.0%}")
        return ", ".join(parts)
    return why


def photos_section(manifest: pd.DataFrame, pixels: np.ndarray) -> str:
    """Why each image was called a photo: both views side by side, the texture view's boundary, samples."""
    scored = manifest[manifest["photo_score"].notna()]
    if scored.empty:
        return section("photos", "Photos", "<p>photo detection was not run</p>")
    anchors = int(scored["photo_anchor"].astype(bool).sum()) if "photo_anchor" in scored else 0
    anchor_text = (f"<p><b>Anchors</b>: {anchors} images are sure photos by an absolute test: they fill their "
                   "frame with photographic texture (foreground covers at least <code>photos.anchor_frame</code> of the "
                   "picture, texture share at least <code>photos.anchor_texture</code>), or they are cut out onto a "
                   "plain background with a foreground that is textured, rich in colour and hardly ever flat "
                   "(<code>photos.anchor_cutout_texture</code>, <code>anchor_cutout_colours</code>, "
                   "<code>anchor_cutout_flat</code>). No drawing of the benchmark or the dev grid passes either test. "
                   "Anchors are called photos and are the texture view's first photo examples. Both views below are "
                   "relative to the folder and would always find a 'photo' side, so in a folder with fewer than "
                   "<code>photos.min_anchors</code> anchors only the anchors are called.</p>")
    why = _photo_evidence(manifest)
    if "photo_anchor" in scored and scored["photo_share_estimate"].eq(0).all():
        frame_would = scored["frame_score"].fillna(0) > 0.5
        called = scored[scored["is_photo"].astype(bool)]
        plural = "" if len(called) == 1 else "s"
        return section("photos", "Photos", anchor_text + (
            f"<p><b>{'No photo called' if called.empty else f'Only its {len(called)} anchor{plural} called'}: this folder "
            "shows too little photo evidence for the relative views.</b> The frame view's relative rule would "
            f"have called {int(frame_would.sum())} images; the most photo-like of them are below, so you can check "
            "that none is a photograph (a folder whose photos are nearly all cut out onto white may have too few "
            "anchors: then curate with <code>--set photos.min_anchors=0 --set photos.frame_full_only=false</code>).</p>"
            + (f"<h4>called (anchors)</h4>{_thumbs(manifest, pixels, called.index, why=why)}" if len(called) else "")
            + f"<h4>most photo-like by the frame view</h4>"
            f"{_thumbs(manifest, pixels, scored.sort_values('frame_score', ascending=False).index, why=why)}"))
    boundaries = scored["texture_boundary"].dropna() if "texture_boundary" in scored else pd.Series(dtype=float)
    threshold = float(boundaries.iloc[0]) if len(boundaries) else 0.0
    shares = scored["photo_share_estimate"].dropna() if "photo_share_estimate" in scored else pd.Series(dtype=float)
    has_patch = scored["patch_logit"].notna()
    example = scored["texture_example"].fillna(-1) if "texture_example" in scored else pd.Series(-1, scored.index)
    calm = "texture_calm_examples" in scored and scored["texture_calm_examples"].fillna(False).astype(bool).any()
    taught = f"{int((example == 1).sum())} photo and {int((example == 0).sum())} drawing examples"
    if not has_patch.any():
        share = ("<b>In this folder the texture view did not train</b>: the frame view was sure of too few examples "
                 "(fewer than <code>photos.min_confident</code> on a side, or drawing examples for less than "
                 "<code>photos.texture_min_drawing_share</code> of the images with patches that are no photo "
                 "example, as in a small folder, where a net taught so few drawings calls every shaded one a "
                 f"photo; here {taught}"
                 + (", with every calm foreground the frame view does not vote a photo as a drawing example"
                    if calm else "") + "), so the frame view and the anchors call the photos alone.")
    elif len(shares):
        share = (f"From its outputs alone the texture view estimates that {100 * float(shares.iloc[0]):.1f} % of this "
                 "folder are photos; the rarer photos are, the more evidence a call needs, so its boundary (dashed "
                 f"line) sits at mean patch logit {threshold:+.1f} here (0 would be even odds).")
    else:
        share = f"Its boundary (dashed line) is at mean patch logit {threshold:+.1f}."
    flagged = scored["is_photo"].astype(bool)
    frame_call = (scored["frame_vote"] if "frame_vote" in scored else scored["frame_score"]).fillna(0) > 0.5
    texture_call = scored["patch_logit"].fillna(-np.inf) > threshold
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    axes[0].hist(scored["photo_score"], bins=50, log=True)
    axes[0].set(title="photo_score (0 = drawing, 1 = photograph)", xlabel="photo_score", ylabel="images")
    if not has_patch.any():  # no texture view: say so on the panel rather than show empty axes
        axes[1].set_axis_off()
        axes[1].text(0.5, 0.5, "the texture view did not train in this folder\n(too few sure examples: see the text)",
                     ha="center", va="center", fontsize=10, transform=axes[1].transAxes)
    else:
        for called, colour, label in ((False, "#999", "kept (drawing)"), (True, "tab:red", "called a photo")):
            part = scored[has_patch & (flagged == called)]
            axes[1].scatter(part["frame_score"], part["patch_logit"], s=5, c=colour, label=f"{label}: {len(part)}")
        axes[1].axvline(0.5, color="k", lw=0.8, ls=":")
        axes[1].axhline(threshold, color="k", lw=0.8, ls="--")
        axes[1].set(title="each view's evidence (images with foreground patches)", xlabel="frame view score",
                    ylabel="texture view: mean patch logit")
        axes[1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    order = scored.sort_values("photo_score")
    border = scored.iloc[(scored["photo_score"] - 0.5).abs().argsort()[:24]].index
    clusters = []
    for cluster, members in scored[scored["photo_cluster"] >= 0].groupby("photo_cluster"):
        clusters.append(f"<div>cluster {cluster}: {len(members)} images, mean score "
                        f"{members['photo_score'].mean():.2f}{_thumbs(manifest, pixels, members.index, 12)}</div>")
    both, frame_only, texture_only = (flagged & frame_call & texture_call, flagged & frame_call & ~texture_call,
                                      flagged & ~frame_call & texture_call)
    promoted = flagged & ~frame_call & ~texture_call & (
        scored["photo_promoted"].astype(bool) if "photo_promoted" in scored else False)
    body = (f"{anchor_text}<p>{int(flagged.sum())} images called photographs (dropped from the cleaned set): "
            f"{int(both.sum())} by both views, {int(frame_only.sum())} by the frame view alone, "
            f"{int(texture_only.sum())} by the texture view alone, {int(promoted.sum())} for their neighbours. "
            "Hover over a thumbnail for its evidence.</p>"
            "<p><b>Frame view</b>: statistics of the whole picture (fills the frame, soft edges, few sharp edges, "
            "textured foreground) in a Gaussian mixture, lifted to its HDBSCAN cluster's mean where that is "
            "higher, refined with the SSL embedding; it calls a photo above 0.5, and (with "
            "<code>photos.frame_full_only</code>) only among images that fill their frame. <b>Texture view</b>: a small "
            "CNN trained on this folder's foreground patches only, so a photo cut out onto white looks to it "
            "like a full-frame one. Its examples are chosen without labels: photos are the anchors and the "
            "frame-filling images the frame view is sure of; drawings are images the frame view is sure of "
            "<i>and</i> whose foreground is calm, so a "
            "cut-out the frame view mistakes for a drawing is never taught as one"
            + (" (<b>in this folder the frame view was sure of too few drawings, so every image with a calm "
               "foreground that the frame view does not vote a photo was a drawing example</b>, "
               "<code>photos.texture_calm_drawings</code>: a small folder's drawings and cut-outs sit on white, where "
               "a frame score says little)" if calm and has_patch.any() else "")
            + f"; here {taught}, samples below (where the first net "
            "estimates at least <code>photos.texture_round_min_share</code> photos, a second net also learns "
            "from the first's confident calls). It trains on equal numbers of both in every batch, so its logit "
            f"reads as evidence at even odds. {share} A call of the texture view alone is withdrawn when too few of "
            "the image's nearest neighbours in the SSL embedding are called too (<code>photos.min_support</code> "
            "of <code>photos.support_neighbours</code>, or <code>photos.support_lift</code> times the folder's called "
            "share, the chance level, if more, up to <code>photos.max_support</code>): crawled photos come in kinds, "
            "a glossy drawing sits among drawings. The other side: an image neither view called is called when many of "
            "its neighbours are (<code>photos.promote_support</code>, or <code>photos.promote_lift</code> times the "
            "called share) and its texture view is near its boundary (<code>photos.promote_margin</code>): crops of "
            "one smooth wallpaper, product shots on white.</p>"
            f"{figure_tag(fig)}<h4>most photo-like</h4>{_thumbs(manifest, pixels, order.index[::-1], why=why)}"
            f"<h4>called by the texture view only (most confident first)</h4>"
            f"{_thumbs(manifest, pixels, scored[texture_only].sort_values('patch_logit', ascending=False).index, why=why)}"
            f"<h4>called for their neighbours (neither view called them)</h4>"
            f"{_thumbs(manifest, pixels, scored[promoted].sort_values('photo_score', ascending=False).index, why=why)}"
            f"<h4>called by the frame view only</h4>"
            f"{_thumbs(manifest, pixels, scored[frame_only].sort_values('frame_score', ascending=False).index, why=why)}"
            f"<h4>least photo-like</h4>{_thumbs(manifest, pixels, order.index, why=why)}"
            f"<h4>borderline (score near 0.5)</h4>{_thumbs(manifest, pixels, border, why=why)}"
            f"{_example_thumbs(manifest, pixels, scored, example, why)}"
            f"<h4>HDBSCAN clusters</h4>{''.join(clusters)}")
    return section("photos", "Photos", body)


def _example_thumbs(manifest: pd.DataFrame, pixels: np.ndarray, scored: pd.DataFrame, example: pd.Series,
                    why) -> str:
    """The texture view's examples, the least sure first: a photo among the drawing examples (or the reverse)
    was taught the wrong way, and these are where it would show."""
    if not (example >= 0).any():
        return ""
    logit = scored["patch_logit"].fillna(0)
    drawings = logit[example == 0].sort_values(ascending=False).index
    photos = logit[example == 1].sort_values().index
    trained = scored["patch_logit"].notna().any()
    order = ("the most photo-like by its logit first", "the least photo-like first") if trained else ("no net trained",) * 2
    return (f"<h4>the texture view's drawing examples ({len(drawings)}; {order[0]})</h4>"
            f"{_thumbs(manifest, pixels, drawings, why=why)}"
            f"<h4>the texture view's photo examples ({len(photos)}; {order[1]})</h4>"
            f"{_thumbs(manifest, pixels, photos, why=why)}")


def problems_section(manifest: pd.DataFrame) -> str:
    """Unusable files with their reasons."""
    bad = manifest[(manifest["cache_row"] < 0) | manifest["is_blank"].astype(bool)]
    table = bad[["path", "status", "reason"]].assign(
        reason=np.where(bad["is_blank"].astype(bool), "blank image", bad["reason"]))
    return section("problems", f"Problems ({len(table)} files)", table_tag(table.head(200)) if len(table) else "<p>none</p>")


OVERVIEW = {"files": "files in the folder", "usable": "decodable images", "blank": "blank images (no ink)",
            "duplicate_groups": "duplicate groups", "duplicate_copies_dropped": "duplicate copies dropped",
            "label_conflict_groups": "duplicate groups spanning several classes",
            "label_ambiguous_rows": "images dropped for conflicting labels", "photos": "photographs flagged",
            "clean": "images in the cleaned set", "imbalance_plan": "imbalance plan (fine-tuning)",
            "imbalance_before": "imbalance before cleaning (largest / smallest class)",
            "imbalance_after": "imbalance after cleaning", "imbalance_as_trained": "imbalance as fine-tuning samples it"}


def _overview(summary: dict) -> str:
    """The summary as a two-column table in words: integers as integers, ratios with one decimal."""
    rows = []
    for key, label in OVERVIEW.items():
        if key not in summary:
            continue
        value = summary[key]
        shown = (f"{value:,}" if isinstance(value, int | np.integer) and not isinstance(value, bool)
                 else f"{value:.1f}x" if isinstance(value, float) else html.escape(str(value)))
        rows.append(f"<tr><td style='text-align:left'>{html.escape(label)}</td><td>{shown}</td></tr>")
    seconds = summary.get("seconds", {})
    if seconds:
        rows.append("<tr><td style='text-align:left'>time (s)</td><td>" + ", ".join(
            f"{html.escape(str(k))} {v:.0f}" for k, v in seconds.items()) + "</td></tr>")
    return f"<table>{''.join(rows)}</table>"


def write_report(path: str | Path, manifest: pd.DataFrame, pixels: np.ndarray, embeddings: np.ndarray,
                 pairs: pd.DataFrame, classes: list[str], summary: dict, data: str | Path | None = None) -> Path:
    """Write the self-contained report.html of a curation run (`data`: the folder, so thumbnails open the file)."""
    sections = [
        section("overview", "Overview", _overview(summary)),
        class_section(manifest, classes, summary),
        properties_section(manifest),
        colour_section(manifest, pixels, classes),
        embedding_section(manifest, embeddings),
        duplicates_section(manifest, pixels, pairs, summary, Path(data) if data else None),
        photos_section(manifest, pixels),
        gallery_section(manifest, pixels, classes),
        problems_section(manifest),
    ]
    nav = " · ".join(f'<a href="#{a}">{a}</a>' for a in
                     ("overview", "classes", "properties", "colour", "embedding", "duplicates", "photos", "gallery", "problems"))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>illustra curation report</title>"
            f"<style>{STYLE}</style></head><body><h1>illustra curation report</h1><p>{nav}</p>{''.join(sections)}</body></html>")
    atomic_write_text(Path(path), page)
    return Path(path)
