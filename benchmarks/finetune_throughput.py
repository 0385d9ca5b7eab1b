"""Fine-tuning throughput: our batch-from-cache loop vs a plain DataLoader that decodes files every epoch.

Same network (the shipped encoder + a linear head, full fine-tune), same batch size, same optimiser
and loss, same kind of augmentation (random resized crop, flip, colour jitter). The plain loop is
what a torchvision tutorial does: a Dataset that opens each file with PIL, torchvision transforms
per image, a DataLoader with one worker per core. Both are timed over the same number of steps
after one warm-up step; images/s counts training images through forward + backward + step.

    python benchmarks/finetune_throughput.py --data work/bench/training --work work/index --steps 20
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from illustra.data.cache import CacheSpec, fit_square, open_pixels
from illustra.data.imageio import load_image
from illustra.data.manifest import load_manifest
from illustra.finetune.train import FinetuneConfig, build_model, make_optimizer
from illustra.ssl.augment import MEAN, STD, make_view, to_float


class FileDataset(torch.utils.data.Dataset):
    """Decode the file, fit it into the 64 px square, augment with torchvision: per image, every epoch."""

    def __init__(self, root: Path, paths: list[str], labels: np.ndarray, size: int, spec: CacheSpec) -> None:
        self.root, self.paths, self.labels, self.spec = root, paths, labels, spec
        self.transform = v2.Compose([
            v2.ToImage(), v2.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True), v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(0.2, 0.2, 0.2, 0.02)], p=0.5), v2.RandomGrayscale(0.05),
            v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        image = load_image(self.root / self.paths[index]).image  # only usable manifest rows are listed
        return self.transform(fit_square(image, self.spec)), int(self.labels[index])


def train_steps(model, optimizer, batches, steps: int) -> float:
    """Seconds for `steps` training steps after one warm-up step (batches yields (images, labels))."""
    iterator = iter(batches)
    started = None
    for step in range(steps + 1):
        if step == 1:
            started = time.perf_counter()
        images, labels = next(iterator)
        loss = F.cross_entropy(model(images), labels, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def main() -> None:
    """Print images/s of both loops and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="work/bench/training", type=Path)
    parser.add_argument("--work", default="work/index")
    parser.add_argument("--encoder", default="checkpoints/encoder.safetensors")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    spec = CacheSpec()
    manifest = load_manifest(args.work)
    usable = manifest[manifest["cache_row"] >= 0].reset_index(drop=True)
    labels = usable["class_id"].to_numpy()
    config = FinetuneConfig()
    rng = np.random.default_rng(0)
    results = {}

    pixels = torch.from_numpy(np.asarray(open_pixels(args.work, spec)[usable["cache_row"].to_numpy()]))
    gen = torch.Generator().manual_seed(0)

    def cache_batches():
        while True:
            rows = torch.from_numpy(rng.choice(len(usable), args.batch, replace=False))
            yield make_view(to_float(pixels[rows]), 32, config.views, gen), torch.from_numpy(labels[rows.numpy()])

    dataset = FileDataset(args.data, usable["path"].tolist(), labels, 32, spec)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                                         drop_last=True, persistent_workers=args.workers > 0)
    for name, batches in (("cache loop (ours)", cache_batches()), ("plain DataLoader, decode per epoch", loader)):
        torch.manual_seed(0)
        model, _ = build_model(config, 20, args.encoder)
        optimizer = make_optimizer(model, config)
        seconds = train_steps(model.train(), optimizer, batches, args.steps)
        results[name] = args.steps * args.batch / seconds
        print(f"{name:<36} {results[name]:8.1f} images/s  ({args.steps} steps of {args.batch}, {seconds:.1f} s)",
              flush=True)
    ours, plain = results.values()
    print(f"ratio cache / DataLoader: {ours / plain:.2f}x  — torch {torch.__version__}, {os.cpu_count()} cores, "
          f"{platform.machine()}, DataLoader workers {args.workers}")


if __name__ == "__main__":
    main()
