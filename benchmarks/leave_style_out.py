"""Leave-one-style-out macro-F1: fine-tune without one whole drawing style, test on that style only.

The builder's truth (truth/sources.csv, column `style`) says which style each file is; the tool
itself never reads it. openmoji-black and openmoji-color are line-art and colour renders of the same
drawings, so they are held out together as "openmoji". The other styles are split train / val
(val only monitors); the whole held-out style is the test set. Same recipe as configs/finetune.yaml
(no device profile) unless --set / --profile says otherwise. The experiment plan runs the same
function (`illustra.experiments.loso`) for its LOSO column.

    python benchmarks/leave_style_out.py --bench work/bench --curation work/curation --work work/index \\
        --out work/loso --set epochs=10
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from illustra.config import load_config
from illustra.experiments.loso import HOLDOUTS, leave_style_out, read_styles
from illustra.finetune.train import FinetuneConfig


def main() -> None:
    """One fine-tuning run per held-out style; print and save macro-F1 per style."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", default="work/bench", type=Path)
    parser.add_argument("--curation", default="work/curation", type=Path)
    parser.add_argument("--work", default="work/index")
    parser.add_argument("--encoder", default="checkpoints/encoder.safetensors", help="'none' for random init")
    parser.add_argument("--out", default="work/loso", type=Path)
    parser.add_argument("--config", default="finetune.yaml")
    parser.add_argument("--profile", help="overlay a device profile's finetune section (cpu, gpu); default none")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--only", action="append", choices=sorted(HOLDOUTS))
    args = parser.parse_args()
    raw = load_config(args.config, args.set, section="finetune", profile=args.profile) if args.profile \
        else load_config(args.config, args.set)
    config = FinetuneConfig.from_dict(raw)
    holdouts = {k: v for k, v in HOLDOUTS.items() if not args.only or k in args.only}
    encoder = None if args.encoder == "none" else args.encoder
    result = leave_style_out(args.curation, args.out, args.work, config, encoder,
                             read_styles(args.bench / "truth" / "sources.csv"), holdouts)
    frame = pd.DataFrame(result["rows"])
    print(frame.to_string(index=False))
    print(f"mean leave-one-style-out macro-F1: {result['mean_macro_f1']:.4f} (config: {config.mode}, "
          f"{config.epochs} epochs)")
    frame.to_csv(args.out / "leave_style_out.csv", index=False)


if __name__ == "__main__":
    main()
