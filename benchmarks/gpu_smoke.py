"""GPU smoke test: a few steps of every training job and the inference paths on CUDA, saying where each ran.

Builds the small synthetic fixture (no download), then runs: scan, SimCLR pretraining (a few steps),
embed, curation with the photo texture view (a few steps), fine-tuning (a few steps) and evaluate;
each line names the device the stage actually computed on (read from the run's own record or the
model's parameters), its seconds, and CUDA's peak memory. Any stage that falls back to the CPU on a
CUDA machine is an error (exit 1).

    python benchmarks/gpu_smoke.py                # on a GPU machine (device auto -> cuda)
    python benchmarks/gpu_smoke.py --device cpu   # the same path on a CPU (what the tests run)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=6, help="training steps per job")
    parser.add_argument("--out", help="keep the outputs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    os.environ["ILLUSTRA_DEVICE"] = args.device
    from illustra.bench.build import build_fixture
    from illustra.curation.texture import fit_texture_net
    from illustra.data.cache import CacheSpec
    from illustra.finetune.jobs import evaluate_folder, finetune_folder
    from illustra.finetune.train import FinetuneConfig
    from illustra.ssl.encoder import EncoderConfig
    from illustra.ssl.jobs import embed_folder, pretrain_folder
    from illustra.ssl.pretrain import PretrainConfig
    from illustra.train.device import pick_device
    from illustra.train.profiles import resolve_profile

    device = pick_device()
    expected = device.type
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}; device {device} ({name}); profile {resolve_profile()}", flush=True)
    rows, failed = [], False

    def record(stage: str, ran_on: str, started: float, detail: str = "") -> None:
        nonlocal failed
        ok = ran_on.split(":")[0] == expected
        failed |= not ok
        peak = f"{torch.cuda.max_memory_allocated() / 2**20:7.0f} MiB" if torch.cuda.is_available() else "      -"
        rows.append(f"{stage:<22} {ran_on:<8} {time.perf_counter() - started:7.1f} s  peak {peak}  "
                    f"{'ok' if ok else 'WRONG DEVICE'}  {detail}")
        print(rows[-1], flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        data, work, spec = out / "fixture" / "training", out / "work", CacheSpec(32)
        build_fixture(out / "fixture", seed=0, classes=5, per_class=12)
        tiny = EncoderConfig(width=16, stages=3, input_size=32)

        started = time.perf_counter()
        ssl = PretrainConfig(encoder=tiny, epochs=1, batch_size=16, knn_every=0, projection_hidden=64, projection_dim=32,
                             profile="smoke")
        metrics = pretrain_folder(data, out / "ssl", work, ssl, spec)
        record("pretrain (SimCLR)", metrics["device"], started, f"{metrics['steps']} steps, "
               f"{metrics['view_images_per_second']:.0f} view-images/s")
        encoder = out / "ssl" / "encoder.safetensors"

        started = time.perf_counter()
        embed_folder(data, encoder, out / "emb", work, spec)
        record("embed", str(pick_device()), started)

        started = time.perf_counter()
        patches = np.random.default_rng(0).integers(0, 256, (256, 32, 32, 3), dtype=np.uint8)
        model = fit_texture_net(patches, np.arange(256) % 2, steps=args.steps, batch=32)
        record("texture view (alone)", str(next(model.parameters()).device), started, f"{args.steps} steps")

        started = time.perf_counter()
        missing = [name for name in ("faiss", "hdbscan") if importlib.util.find_spec(name) is None]
        if missing:  # a bare GPU machine may lack the CPU-side curation packages: said, never silent
            print(f"{'curate (+ texture)':<22} SKIPPED: {', '.join(missing)} not installed here "
                  "(the texture view ran above)", flush=True)
        else:
            from illustra.curation.photos import PhotoSettings
            from illustra.curation.run import CurationSettings, curate

            curate(data, out / "cur", work, encoder, CurationSettings(photos=PhotoSettings(texture_steps=args.steps)),
                   spec, jobs=("duplicates", "photos"))
            record("curate (+ texture)", str(pick_device()), started)

        started = time.perf_counter()
        config = FinetuneConfig(epochs=2, batch_size=16, ema_decay=0.9, profile="smoke")
        if missing:  # no curation: the same trainer on the whole fixture (train = val), no test score
            summary = finetune_uncurated(work, out / "ft", config, encoder, spec)
            detail = f"{summary['epochs']} epochs (uncurated fixture)"
        else:
            summary = finetune_folder(out / "cur", out / "ft", work, config, encoder, spec, progress=False)
            detail = f"{summary['epochs']} epochs, test macro F1 {summary['test_macro_f1']:.3f}"
        record("finetune (full, EMA)", summary["device"], started, detail)

        started = time.perf_counter()
        result = evaluate_folder(data, out / "ft" / "classifier.safetensors")
        record("evaluate", str(pick_device()), started, f"{result['evaluated']} images, macro F1 {result['macro_f1']:.3f}")
    print("smoke: " + ("FAILED (a stage ran on the wrong device)" if failed else f"every stage ran on {expected}"))
    return 1 if failed else 0


def finetune_uncurated(work: Path, out: Path, config, encoder: Path, spec) -> dict:
    """Fine-tune on every usable image of an index (for machines without the curation packages)."""
    from illustra.data.cache import open_pixels
    from illustra.data.index import read_classes
    from illustra.data.manifest import load_manifest
    from illustra.finetune.jobs import resolved_input_size
    from illustra.finetune.train import finetune
    from illustra.ssl.jobs import preprocessing_of

    manifest = load_manifest(work)
    usable = manifest[manifest["cache_row"] >= 0].sort_values("cache_row")
    pixels = np.asarray(open_pixels(work, spec)[usable["cache_row"].to_numpy()])
    labels = usable["class_id"].to_numpy()
    preprocessing = {**preprocessing_of(spec, resolved_input_size(config, encoder)), "tta": config.tta, "resample": "grid"}
    return finetune(pixels, labels, pixels, labels, read_classes(work), out, config, preprocessing, encoder,
                    progress=False)


if __name__ == "__main__":
    sys.exit(main())
