"""Leave-one-style-out macro-F1: fine-tune without one whole drawing style, test on that style only.

The builder's truth (truth/sources.csv, column `style`) says which style each file is; the tool
itself never reads it. openmoji-black and openmoji-color are line-art and colour renders of the same
drawings, so they are held out together as "openmoji". The other styles are split train / val
(val only monitors); the whole held-out style is the test set. Same recipe as the experiment plan's
baseline unless --set overrides it.

    python benchmarks/leave_style_out.py --bench work/bench --curation work/curation --work work/index \\
        --out work/loso --set epochs=10
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from illustra.config import load_config
from illustra.finetune.jobs import finetune_folder, split_table
from illustra.finetune.split import split_manifest
from illustra.finetune.train import FinetuneConfig

HOLDOUTS = {"google": ["google"], "twitter": ["twitter"], "openclipart": ["openclipart"],
            "openmoji": ["openmoji-black", "openmoji-color"]}


def style_table(curation: Path, bench: Path, held_out: list[str], seed: int) -> pd.DataFrame:
    """The clean set with `split`: the held-out styles are test, the rest train / val by class and group."""
    clean = split_table(curation, seed).drop(columns="split")
    styles = pd.read_csv(bench / "truth" / "sources.csv").set_index("path")["style"]
    clean["style"] = clean["path"].map(styles).fillna("unknown")
    test = clean["style"].isin(held_out)
    rest = clean[~test].copy()
    rest["split"] = split_manifest(rest, seed, val=0.15, test=0.0).replace("test", "train")
    return pd.concat([rest, clean[test].assign(split="test")]).reset_index(drop=True)


def main() -> None:
    """One fine-tuning run per held-out style; print and save macro-F1 per style."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", default="work/bench", type=Path)
    parser.add_argument("--curation", default="work/curation", type=Path)
    parser.add_argument("--work", default="work/index")
    parser.add_argument("--encoder", default="checkpoints/encoder.safetensors")
    parser.add_argument("--out", default="work/loso", type=Path)
    parser.add_argument("--config", default="finetune.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--only", action="append", choices=sorted(HOLDOUTS))
    args = parser.parse_args()
    config = FinetuneConfig.from_dict(load_config(args.config, args.set))
    rows = []
    for name, styles in HOLDOUTS.items():
        if args.only and name not in args.only:
            continue
        table = style_table(args.curation, args.bench, styles, config.seed)
        started = time.perf_counter()
        result = finetune_folder(args.curation, args.out / name, args.work, config, args.encoder, progress=False,
                                 table=table)
        sizes = table["split"].value_counts().to_dict()
        classes_in_test = table.loc[table["split"] == "test", "class_folder"].nunique()
        rows.append({"held_out": name, "train": sizes.get("train", 0), "test": sizes.get("test", 0),
                     "classes_in_test": classes_in_test,
                     "test_macro_f1": round(result["test_macro_f1"], 4), "test_micro_f1": round(result["test_micro_f1"], 4),
                     "val_macro_f1_other_styles": round(result["history"][-1]["val_macro_f1"], 4),
                     "seconds": round(time.perf_counter() - started, 1)})
        print(json.dumps(rows[-1]), flush=True)
    frame = pd.DataFrame(rows)
    print(frame.to_string(index=False))
    print(f"mean leave-one-style-out macro-F1: {frame['test_macro_f1'].mean():.4f} (config: {config.mode}, "
          f"{config.epochs} epochs)")
    frame.to_csv(args.out / "leave_style_out.csv", index=False)


if __name__ == "__main__":
    main()
