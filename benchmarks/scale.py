"""Scale check for `illustra run` (issue #19, item 6): a folder of ~25,000 images, wall time per stage, peak memory.

    python benchmarks/scale.py make --bench work/bench --out work/scale25k --target 25000
    python benchmarks/scale.py run --data work/scale25k/training --out work/scale25k_run [-- EXTRA illustra run ARGS]
    python benchmarks/scale.py score --bench work/bench --photos work/scale25k_run/curation/photos.csv

`make`: the benchmark has 9,147 files from ~8,000 distinct sources, all the sources the builder has.
To reach 25,000 without repeating bytes, every benchmark file is kept (hard link) and each gets
new, distinct images of the same drawing in its class folder: its mirror image (all files), then
a quarter turn (as many as the target still needs). The benchmark's duplicates and photos come
along (mirrored and turned with the rest), so curation meets them at the same rates. Mirrored
symmetric drawings are near copies of their original, which is what a crawled folder holds too.
Nothing in the source folder is written to.

`run`: `illustra run` as a child process; every 0.5 s the resident memory of the child and all
its descendants is summed from /proc, and the peak of that sum is printed beside the per-stage
wall times read back from WORK/run.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image, ImageOps

SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp"}


def _variant(task: tuple[str, str, str]) -> str:
    """Write one variant of `source` to `target`; returns '' or the reason it failed."""
    source, target, kind = task
    try:
        with Image.open(source) as image:
            image.load()
            fmt = image.format or "PNG"
            picture = ImageOps.mirror(image) if kind == "mirror" else image.transpose(Image.Transpose.ROTATE_90)
            if fmt == "JPEG":
                picture.convert("RGB").save(target, "JPEG", quality=90)
            elif fmt in ("PNG", "GIF", "BMP", "WEBP"):
                picture.save(target, fmt)
            else:
                picture.save(target, "PNG")
        return ""
    except Exception as error:  # a file the builder wrote unreadable on purpose: count it, go on
        return f"{source}: {error}"


def make(bench: Path, out: Path, target: int, workers: int) -> dict:
    training = bench / "training"
    files = sorted(p for p in training.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    others = sorted(p for p in training.rglob("*") if p.is_file() and p.suffix.lower() not in SUFFIXES)
    destination = out / "training"
    tasks, linked = [], 0
    for path in files + others:  # originals (and any non-image file the benchmark holds) as hard links
        link = destination / path.relative_to(training)
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            os.link(path, link)
        linked += 1
    needed = max(0, target - linked)
    for kind in ("mirror", "turn"):
        for path in files:
            if len(tasks) >= needed:
                break
            name = destination / path.relative_to(training)
            tasks.append((str(path), str(name.with_name(f"{name.stem}_{kind}{name.suffix}")), kind))
    tasks = [task for task in tasks if not Path(task[1]).exists()]
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        failures = [reason for reason in pool.map(_variant, tasks, chunksize=64) if reason]
    total = sum(1 for p in destination.rglob("*") if p.is_file())
    record = {"bench": str(bench), "linked": linked, "variants_written": len(tasks) - len(failures),
              "variant_failures": len(failures), "files": total, "seconds": round(time.perf_counter() - started, 1)}
    (out / "scale.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    return record


def _tree_rss(root: int) -> int:
    """Resident bytes of `root` and every descendant (from /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            parent, resident = int(fields[1]), int(fields[21])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
        rss[int(entry)] = resident * page
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def run(data: Path, out: Path, extra: list[str]) -> dict:
    command = [sys.executable, "-c", "import sys; from illustra.cli import main; sys.exit(main())",
               "run", str(data), "--out", str(out), *extra]  # this interpreter's illustra, venv activated or not
    print("$", " ".join(command), flush=True)
    started = time.perf_counter()
    child = subprocess.Popen(command)
    peak, peak_at = 0, 0.0
    while child.poll() is None:
        now = _tree_rss(child.pid)
        if now > peak:
            peak, peak_at = now, time.perf_counter() - started
        time.sleep(0.5)
    wall = time.perf_counter() - started
    record = json.loads((out / "run.json").read_text(encoding="utf-8")) if (out / "run.json").exists() else {}
    stages = {name: stage.get("seconds") for name, stage in record.get("stages", {}).items()}
    result = {"command": " ".join(command), "exit": child.returncode, "wall_s": round(wall, 1),
              "peak_rss_gb": round(peak / 1e9, 2), "peak_at_s": round(peak_at, 1), "stage_seconds": stages}
    (out / "scale_run.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


def score_photos(bench: Path, photos_csv: Path) -> dict:
    """The photo job's calls on the large folder against the benchmark's truth: a mirror or a turn of a photo is one."""
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    truth = pd.read_csv(bench / "truth" / "sources.csv")
    kind = dict(zip(truth["path"], truth["kind"]))
    calls = pd.read_csv(photos_csv)
    original = calls["path"].str.replace(r"_(?:mirror|turn)(\.[A-Za-z]+)$", r"\1", regex=True)
    known = original.map(kind).notna()
    photo, called = original.map(kind).eq("photo")[known], calls["is_photo"].astype(bool)[known]
    tp, fp, fn = int((photo & called).sum()), int((~photo & called).sum()), int((photo & ~called).sum())
    precision, recall = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    return {"images": int(known.sum()), "unknown": int((~known).sum()), "photos": int(photo.sum()), "tp": tp, "fp": fp,
            "fn": fn, "precision": round(precision, 4), "recall": round(recall, 4),
            "f1": round(2 * precision * recall / max(precision + recall, 1e-9), 4),
            "roc_auc": round(float(roc_auc_score(photo, calls["photo_score"].fillna(0)[known])), 4),
            "false_call_share": round(fp / max(int((~photo).sum()), 1), 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    making = commands.add_parser("make", help="write the large folder")
    making.add_argument("--bench", type=Path, default=Path("work/bench"))
    making.add_argument("--out", type=Path, default=Path("work/scale25k"))
    making.add_argument("--target", type=int, default=25000)
    making.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    running = commands.add_parser("run", help="illustra run under a memory sampler")
    running.add_argument("--data", type=Path, default=Path("work/scale25k/training"))
    running.add_argument("--out", type=Path, default=Path("work/scale25k_run"))
    running.add_argument("extra", nargs="*", help="more arguments for illustra run (after --)")
    scoring = commands.add_parser("score", help="score the run's photo calls against the benchmark's truth")
    scoring.add_argument("--bench", type=Path, default=Path("work/bench"))
    scoring.add_argument("--photos", type=Path, default=Path("work/scale25k_run/curation/photos.csv"))
    args = parser.parse_args(argv)
    if args.command == "make":
        result = make(args.bench, args.out, args.target, args.workers)
    elif args.command == "score":
        result = score_photos(args.bench, args.photos)
    else:
        result = run(args.data, args.out, args.extra)
    print(json.dumps(result, indent=2))
    return 0 if result.get("exit", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
