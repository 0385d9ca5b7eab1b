"""WORK/index.html of `illustra run`: one self-contained page from the folder to the verified classifier.

It links the curation report (and an experiment report when WORK holds one) and shows the held-out
evaluation: the classification report, per-class F1 bars, the confusion matrix and every misclassified
test image with its true and predicted class (thumbnails; click for the full-size file in WORK/export).
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from illustra.curation.report import STYLE, figure_tag, section  # noqa: E402
from illustra.data.manifest import atomic_write_text  # noqa: E402
from illustra.finetune.jobs import confusion_figure  # noqa: E402

GALLERY_LIMIT = 200
THUMB = 96


def _thumbnail(path: Path) -> str:
    """A file as an inline PNG (white behind transparency), at most THUMB px; '' if unreadable."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGBA")
            canvas = Image.new("RGBA", image.size, "white")
            canvas.alpha_composite(image)
            picture = canvas.convert("RGB")
            picture.thumbnail((THUMB, THUMB))
    except OSError:
        return ""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return f'data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}'


def _per_class_bars(per_class: dict[str, float]):
    """Horizontal bars of each class's F1."""
    names = list(per_class)
    fig, ax = plt.subplots(figsize=(6, 0.28 * len(names) + 0.8))
    ax.barh(range(len(names)), [per_class[n] for n in names], color="tab:blue")
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1), xlabel="F1 on the held-out test folder")
    for i, name in enumerate(names):
        ax.text(min(per_class[name] + 0.01, 0.9), i, f"{per_class[name]:.2f}", va="center", fontsize=8)
    return fig


def write_index(work: str | Path) -> Path:
    """Write WORK/index.html from run.json, evaluation.json and the exported test folder."""
    work = Path(work)
    record = json.loads((work / "run.json").read_text(encoding="utf-8"))
    evaluation = json.loads((work / "evaluation.json").read_text(encoding="utf-8"))
    summary = record.get("summary", {})
    from illustra.workflow import summary_lines

    lines = "".join(f"<li>{html.escape(line)}</li>" for line in summary_lines(summary)) if summary else ""
    links = ['<a href="curation/report.html">curation report</a> (duplicates, photos, imbalance, EDA)']
    for report in sorted(work.glob("*/report.html")):
        if report.parent.name != "curation":
            links.append(f'<a href="{report.parent.name}/report.html">{html.escape(report.parent.name)} report</a>')
    from illustra.workflow import STAGES

    done = record.get("stages", {})
    stages = "".join(f"<tr><td style='text-align:left'>{name}</td><td>{done[name].get('seconds', '')}</td>"
                     f"<td style='text-align:left'>{'done' if done[name].get('done') else 'not finished'}</td></tr>"
                     for name in STAGES if name in done)
    names = [evaluation["classes"][i] for i in evaluation["labels"]]
    wrong = [p for p in evaluation.get("predictions", []) if p["true"] != p["predicted"]]
    tiles = []
    for item in wrong[:GALLERY_LIMIT]:
        target = work / "export" / "test" / item["path"]
        source = _thumbnail(target)
        if source:
            tiles.append(f'<figure style="display:inline-block;margin:4px;width:{THUMB + 8}px;font-size:11px">'
                         f'<a href="export/test/{html.escape(item["path"])}"><img src="{source}" '
                         f'style="max-width:{THUMB}px;max-height:{THUMB}px"></a><figcaption>'
                         f'{html.escape(item["true"])} &rarr; <b>{html.escape(item["predicted"])}</b> '
                         f'({item["probability"]:.2f})</figcaption></figure>')
    more = (f"<p class='cap'>showing {GALLERY_LIMIT} of {len(wrong)}; every prediction is in evaluation.json</p>"
            if len(wrong) > GALLERY_LIMIT else "")
    body = [
        section("summary", "Summary", f"<ul>{lines}</ul><p>{' · '.join(links)}</p>"
                f"<table><tr><th>stage</th><th>seconds</th><th>state</th></tr>{stages}</table>"),
        section("evaluation", "Held-out evaluation (the exported test folder)",
                f"<p>macro F1 <b>{evaluation['macro_f1']:.4f}</b> over the {len(names)} classes present or predicted; "
                f"micro F1 <b>{evaluation['micro_f1']:.4f}</b>; {evaluation['evaluated']} images.</p>"
                f"<pre>{html.escape(evaluation.get('report', ''))}</pre>"
                f"<div class='row'>{figure_tag(_per_class_bars(evaluation['per_class']))}"
                f"{figure_tag(confusion_figure(evaluation['confusion'], names, 'confusion (rows: true class)'))}</div>"),
        section("mistakes", f"Misclassified test images ({len(wrong)})",
                (f"<div>{''.join(tiles)}</div>{more}" if tiles else "<p><i>none</i></p>")),
    ]
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>illustra run</title><style>{STYLE}</style>"
            f"</head><body><h1>illustra run: {html.escape(record.get('data', ''))}</h1>{''.join(body)}</body></html>")
    path = work / "index.html"
    atomic_write_text(path, page)
    return path
