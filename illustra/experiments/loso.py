"""Leave-one-style-out (LOSO): fine-tune without one whole drawing style, score on that style only.

The generalisation figure: a random split lets a network key on drawing style (every style is in
train and test); LOSO asks whether it learnt what is drawn. The style of each file comes from a
truth table (a CSV with `path` and `style`, e.g. the benchmark's truth/sources.csv); the tool never
needs one to curate or train. The other styles are split train / val by class and duplicate group
(val only monitors); the whole held-out style is the test part.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from illustra.data.cache import CacheSpec
from illustra.finetune.jobs import finetune_folder, split_table
from illustra.finetune.split import split_manifest

# openmoji-black and openmoji-color are line-art and colour renders of the same drawings: held out together
LINKED = {"openmoji-black": "openmoji", "openmoji-color": "openmoji"}
NOT_DRAWING_STYLES = {"photo", "photo-cutout", "unknown"}  # photos are not a drawing style (and not in the clean set)
HOLDOUTS = {"google": ["google"], "twitter": ["twitter"], "openclipart": ["openclipart"],
            "openmoji": ["openmoji-black", "openmoji-color"]}  # what holdouts_for gives on the benchmark


def holdouts_for(styles: pd.Series, paths: pd.Series | None = None) -> dict[str, list[str]]:
    """One holdout per drawing style (of `paths` when given), linked renders of the same drawings together."""
    present = styles[styles.index.isin(paths)] if paths is not None else styles
    groups: dict[str, list[str]] = {}
    for style in sorted(set(present.astype(str)) - NOT_DRAWING_STYLES):
        groups.setdefault(LINKED.get(style, style), []).append(style)
    return groups


def read_styles(path: str | Path) -> pd.Series:
    """path -> style from a truth CSV (columns `path`, `style`)."""
    table = pd.read_csv(path)
    missing = {"path", "style"} - set(table.columns)
    if missing:
        raise ValueError(f"{path} needs columns path and style; it lacks {sorted(missing)}")
    return table.set_index("path")["style"]


def style_table(curation: str | Path, styles: pd.Series, held_out: list[str], seed: int,
                split_seed: int = 0) -> pd.DataFrame:
    """The clean set with `split`: the held-out styles are test, the rest train / val by class and group."""
    clean = split_table(curation, split_seed).drop(columns="split")
    clean["style"] = clean["path"].map(styles).fillna("unknown")
    test = clean["style"].isin(held_out)
    if not test.any():
        raise ValueError(f"no image of style(s) {held_out} in {curation}")
    rest = clean[~test].copy()
    rest["split"] = split_manifest(rest, seed, val=0.15, test=0.0).replace("test", "train")
    return pd.concat([rest, clean[test].assign(split="test")]).reset_index(drop=True)


def leave_style_out(curation: str | Path, out: str | Path, work: str | Path | None, config, encoder,
                    styles: pd.Series, holdouts: dict[str, list[str]] | None = None, split_seed: int = 0,
                    progress: bool = False, log=print, cache: CacheSpec = CacheSpec()) -> dict:
    """One fine-tuning per held-out style into OUT/<name>/ (read back when done); per-style rows and the mean."""
    out = Path(out)
    if holdouts is None:
        holdouts = holdouts_for(styles, split_table(curation, split_seed)["path"])
    if len(holdouts) < 2:
        raise ValueError(f"leave-one-style-out needs at least two drawing styles; the truth gives {list(holdouts)}")
    rows = []
    for name, held_out in holdouts.items():
        done = out / name / "loso.json"
        if done.exists():
            rows.append(json.loads(done.read_text(encoding="utf-8")))
            continue
        table = style_table(curation, styles, held_out, config.seed, split_seed)
        started = time.perf_counter()
        result = finetune_folder(curation, out / name, work, config, encoder, cache, progress=progress,
                                 table=table, log=log)
        sizes = table["split"].value_counts().to_dict()
        row = {"held_out": name, "train": int(sizes.get("train", 0)), "test": int(sizes.get("test", 0)),
               "classes_in_test": int(table.loc[table["split"] == "test", "class_folder"].nunique()),
               "test_macro_f1": round(result["test_macro_f1"], 4), "test_micro_f1": round(result["test_micro_f1"], 4),
               "val_macro_f1_other_styles": round(result["history"][-1]["val_macro_f1"], 4),
               "seconds": round(time.perf_counter() - started, 1)}
        done.write_text(json.dumps(row), encoding="utf-8")
        rows.append(row)
        log(f"    LOSO {name}: macro-F1 {row['test_macro_f1']:.4f} ({row['seconds']:.0f} s)")
    return {"mean_macro_f1": float(np.mean([r["test_macro_f1"] for r in rows])),
            "per_style": {r["held_out"]: r["test_macro_f1"] for r in rows}, "rows": rows}
