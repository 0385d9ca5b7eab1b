"""The `gpu` profile end to end on an indexed, curated benchmark: SimCLR, SSL fine-tune, scratch baseline.

Runs on the pixel cache and the curation that `illustra pipeline` made (no image files needed, so a
lent GPU machine gets only WORK and CURATION), with the recipes of `configs/profiles/<profile>.yaml`:

1. SimCLR pretraining from random initialisation on every usable image (the profile's budget);
2. the card's path: that encoder + linear head, fine-tuned on the clean split's train part;
3. the plain supervised baseline: the same network and fine-tuning recipe from random
   initialisation (`mode=scratch`), at the same time budget, so that SSL's share is visible.

Each run scores the held-out test part once (as `illustra finetune` does) and the table at the end
gives epochs, seconds, throughput, best / last validation and test macro / micro F1.

    python benchmarks/gpu_profile.py --work W --curation C --out O [--profile gpu] [--deadline 560]
        [--set ssl.KEY=V] [--set finetune.KEY=V]

`--deadline` (seconds from the start) shortens the scratch run's budget when too little time is
left, and says so: the comparison is then matched by epochs, not by time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

STARTED = time.perf_counter()


def elapsed() -> float:
    return time.perf_counter() - STARTED


def stage_overrides(sets: list[str], stage: str) -> list[str]:
    """The `--set stage.key=value` items for one stage, without the stage prefix."""
    prefix = stage + "."
    return [item[len(prefix):] for item in sets if item.startswith(prefix)]


def finetune_row(name: str, summary: dict) -> dict:
    history = summary.get("history") or [{}]
    vals = [h["val_macro_f1"] for h in history if "val_macro_f1" in h]
    images = summary.get("train_images", 0)
    return {"run": name, "device": summary.get("device"), "epochs": summary.get("epochs"),
            "seconds": summary.get("seconds"),
            "val_best": round(max(vals), 4) if vals else None, "val_last": round(vals[-1], 4) if vals else None,
            "test_macro_f1": round(summary.get("test_macro_f1", float("nan")), 4),
            "test_micro_f1": round(summary.get("test_micro_f1", float("nan")), 4), "train_images": images,
            "budget_s": summary.get("config", {}).get("time_budget_s")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, help="the benchmark's index folder (manifest + pixel cache)")
    parser.add_argument("--curation", required=True, help="the curation folder (clean.csv, curation.json)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--profile", default="gpu")
    parser.add_argument("--deadline", type=float, default=0.0, help="seconds from the start the script must end by")
    parser.add_argument("--skip", action="append", default=[], choices=["ssl", "scratch"],
                        help="leave a stage out (ssl: fine-tune from --encoder instead)")
    parser.add_argument("--encoder", help="with --skip ssl: the encoder to fine-tune")
    parser.add_argument("--set", action="append", default=[], help="ssl.KEY=V or finetune.KEY=V (repeatable)")
    parser.add_argument("--pack", metavar="DIR", help="also write the SSL encoder and the SSL classifier to DIR in "
                        "float16 (convolution and linear weights; batch norm stays float32), cut into 15 MB parts")
    args = parser.parse_args(argv)

    import torch

    from illustra.config import load_config
    from illustra.data.cache import CacheSpec
    from illustra.finetune.jobs import finetune_folder
    from illustra.finetune.train import FinetuneConfig
    from illustra.ssl.jobs import pretrain_cached
    from illustra.ssl.pretrain import PretrainConfig
    from illustra.train.device import pick_device

    out, spec = Path(args.out), CacheSpec(64)
    device = pick_device()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}; device {device} ({name}); profile {args.profile}", flush=True)
    rows, record = [], {"device": name, "torch": torch.__version__, "profile": args.profile, "sets": args.set}

    encoder = args.encoder
    if "ssl" not in args.skip:
        raw = load_config("ssl.yaml", stage_overrides(args.set, "ssl"), section="ssl", profile=args.profile)
        config = PretrainConfig.from_dict(raw)
        started = elapsed()
        ssl = pretrain_cached(out / "ssl", args.work, config, spec)
        knn = [h for h in ssl["history"] if any(k.startswith("knn") for k in h)]
        rows.append({"run": "simclr", "device": ssl["device"], "epochs": ssl["epochs"], "seconds": ssl["wall_seconds"],
                     "view_images_per_second": ssl["view_images_per_second"], "knn_last": knn[-1] if knn else {},
                     "wall_with_setup": round(elapsed() - started, 1)})
        print(json.dumps(rows[-1]), flush=True)
        encoder = str(out / "ssl" / "encoder.safetensors")

    base = load_config("finetune.yaml", stage_overrides(args.set, "finetune"), section="finetune", profile=args.profile)
    started = elapsed()
    summary = finetune_folder(args.curation, out / "ft_ssl", args.work, FinetuneConfig.from_dict(base), encoder, spec,
                              progress=False)
    rows.append({**finetune_row("ssl+head, full fine-tune", summary), "wall_with_setup": round(elapsed() - started, 1)})
    print(json.dumps(rows[-1]), flush=True)

    if "scratch" not in args.skip:
        budget = float(base.get("time_budget_s") or 0)
        scratch = {**base, "mode": "scratch"}
        if args.deadline and budget:
            left = args.deadline - elapsed() - 45  # set-up, test scoring and export of the last run
            if left < budget:
                scratch["time_budget_s"] = max(30.0, left)
                print(f"scratch run: budget {budget:.0f} s -> {scratch['time_budget_s']:.0f} s (deadline)", flush=True)
        started = elapsed()
        summary = finetune_folder(args.curation, out / "ft_scratch", args.work, FinetuneConfig.from_dict(scratch), None,
                                  spec, progress=False)
        rows.append({**finetune_row("scratch (random init), same recipe", summary),
                     "wall_with_setup": round(elapsed() - started, 1)})
        print(json.dumps(rows[-1]), flush=True)

    record["rows"], record["total_seconds"] = rows, round(elapsed(), 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_profile.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    print(f"\n{'run':<36} {'epochs':>6} {'s':>7} {'val best':>8} {'val last':>8} {'test macro':>10} {'test micro':>10}")
    for row in rows:
        if row["run"] == "simclr":
            print(f"{'SimCLR':<36} {row['epochs']:>6} {row['seconds']:>7} kNN {row['knn_last']}")
        else:
            print(f"{row['run']:<36} {row['epochs']:>6} {row['seconds']:>7} {row['val_best']!s:>8} {row['val_last']!s:>8} "
                  f"{row['test_macro_f1']:>10} {row['test_micro_f1']:>10}")
    print(f"total {elapsed():.0f} s")
    if args.pack:
        for source, name in ((out / "ssl" / "encoder.safetensors", "encoder_gpu"),
                             (out / "ft_ssl" / "classifier.safetensors", "classifier_gpu")):
            if source.exists():
                parts = pack_half(source, Path(args.pack) / f"{name}.safetensors")
                print(f"packed {source} -> {', '.join(p.name for p in parts)}")
    return 0


def pack_half(source: Path, target: Path, part_bytes: int = 15 * 2**20) -> list[Path]:
    """illustra.weights.half_copy, cut into parts of at most `part_bytes` (`cat target.part* > target` joins them)."""
    from illustra.weights import half_copy

    half_copy(source, target)
    data, parts = target.read_bytes(), []
    for number, start in enumerate(range(0, len(data), part_bytes)):
        parts.append(target.with_name(f"{target.name}.part{number}"))
        parts[-1].write_bytes(data[start:start + part_bytes])
    target.unlink()
    return parts


if __name__ == "__main__":
    sys.exit(main())
