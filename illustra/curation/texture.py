"""Patch texture view of photo detection: a small CNN, trained label-free, that judges the inside of an object.

The statistics rule and the SSL embedding look at the whole frame, so a photograph cut out onto a
white background reads as 'drawing on white'. This view looks only at small patches taken fully
inside the foreground, where a cut-out photo and a full-frame photo look the same. It is trained
from scratch on the folder being curated, with the confident decisions of the statistics rule as
pseudo-labels (no truth, no file names, no formats), and with random JPEG re-compression on both
sides so that compression noise is not what it learns.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torch import nn

from illustra.train.device import autocast, memory_format
from illustra.train.loop import LoopSettings, Trainer


def foreground_patches(image: Image.Image, size: int, count: int, rng: np.random.Generator,
                       white: int = 240, min_cover: float = 0.95) -> np.ndarray:
    """Up to `count` random `size`-pixel RGB patches lying (at least `min_cover`) on non-white pixels."""
    pixels = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    height, width, _ = pixels.shape
    if height < size or width < size:
        return np.zeros((0, size, size, 3), np.uint8)
    integral = np.pad((pixels.min(2) < white).astype(np.int32).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    cover = integral[size:, size:] - integral[:-size, size:] - integral[size:, :-size] + integral[:-size, :-size]
    ys, xs = np.nonzero(cover >= min_cover * size * size)
    if len(ys) == 0:
        return np.zeros((0, size, size, 3), np.uint8)
    picked = rng.choice(len(ys), size=min(count, len(ys)), replace=False)
    return np.stack([pixels[ys[i]:ys[i] + size, xs[i]:xs[i] + size] for i in picked])


class TextureNet(nn.Module):
    """Five 3x3 conv-BN-ReLU layers, two poolings, global average, one logit: texture, not shape."""

    def __init__(self, width: int = 16):
        super().__init__()

        def block(inputs: int, outputs: int) -> list[nn.Module]:
            return [nn.Conv2d(inputs, outputs, 3, padding=1, bias=False), nn.BatchNorm2d(outputs), nn.ReLU()]

        self.layers = nn.Sequential(*block(3, width), *block(width, 2 * width), nn.MaxPool2d(2),
                                    *block(2 * width, 2 * width), nn.MaxPool2d(2), *block(2 * width, 4 * width),
                                    nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, 1))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """Photo-vs-drawing logit per patch (N, 3, P, P) in [-0.5, 0.5]."""
        return self.layers(patches).squeeze(1)


def _to_tensor(patches: np.ndarray) -> torch.Tensor:
    """uint8 (N, P, P, 3) -> float (N, 3, P, P) centred on 0."""
    return torch.from_numpy(np.ascontiguousarray(patches)).permute(0, 3, 1, 2).float() / 255 - 0.5


def _recompress(patch: np.ndarray, quality: int) -> np.ndarray:
    """The patch after a JPEG round trip: compression noise on both classes, so it cannot be the cue."""
    buffer = io.BytesIO()
    Image.fromarray(patch).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


class TextureTask:
    """The texture view's batches (balanced classes, JPEG round trips, colour shuffles, turns, flips) and loss."""

    def __init__(self, patches: np.ndarray, labels: np.ndarray, steps: int, batch: int, trainer: Trainer) -> None:
        self.patches, self.steps, self.batch, self.trainer = patches, steps, batch, trainer
        self.positives, self.negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
        self.targets = torch.cat([torch.ones(batch // 2), torch.zeros(batch // 2)]).to(trainer.device)

    def batches(self, epoch: int, random, device: torch.device):
        rng, half = random.numpy, self.batch // 2  # CPU-side augmentation draws from the run's NumPy stream
        for _ in range(self.steps):
            chosen = np.concatenate([rng.choice(self.positives, half), rng.choice(self.negatives, half)])
            x = self.patches[chosen].copy()
            for i in np.flatnonzero(rng.random(len(x)) < 0.5):
                x[i] = _recompress(x[i], int(rng.integers(60, 96)))
            x = _shuffle_colours(x, rng)
            tensor = torch.rot90(_to_tensor(x), int(rng.integers(4)), (2, 3))
            if rng.random() < 0.5:
                tensor = tensor.flip(3)
            yield (self.trainer.to_input(tensor.to(device)),)

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(model(batch[0]).float(), self.targets)


def fit_texture_net(patches: np.ndarray, labels: np.ndarray, steps: int = 1500, batch: int = 128,
                    learning_rate: float = 2e-3, seconds: float = 600.0, seed: int = 0, progress=None,
                    writer=None, width: int = 16, cpu_bf16: bool = False,
                    precision_probe: bool = False) -> TextureNet:
    """Train a TextureNet on patches labelled 1 (photo) / 0 (drawing), classes balanced in every batch.

    Augmentation: flips, quarter turns, a JPEG round trip (quality 60-95) on half the patches, and colour
    shuffles (channel order on half, grey on a fifth) so that texture, not a palette, is what it learns.
    `writer` (a TensorBoard SummaryWriter) gets the loss every 25 steps, `progress` (a tqdm bar) a tick per step.
    The training core runs it: one epoch of `steps`, torch's one-cycle schedule, a hard deadline at
    `seconds` (the schedule is set for `steps`), CUDA when there is one, channels_last on CPU too (measured
    23 % faster there, benchmarks/texture_speed.py), bf16 autocast on CUDA and with `cpu_bf16`
    (1.7x on 2 Zen 4 cores; with `precision_probe` only where a timed step says bf16 is clearly faster on this CPU).
    """
    settings = LoopSettings(epochs=1, steps_per_epoch=steps, seed=seed, time_budget_s=seconds, hard_deadline=True,
                            label="texture_view", log_every=25, cpu_channels_last=True, cpu_bf16=cpu_bf16,
                            cpu_precision_probe=precision_probe)
    trainer = Trainer(settings, progress=progress if progress is not None else False, writer=writer)
    model = trainer.prepare(TextureNet(width))
    optimiser = torch.optim.AdamW(model.parameters(), learning_rate, weight_decay=1e-4)

    def one_cycle(optimiser: torch.optim.Optimizer, total_steps: int):
        return torch.optim.lr_scheduler.OneCycleLR(optimiser, learning_rate, total_steps=total_steps)

    return trainer.fit(TextureTask(patches, labels, steps, batch, trainer), model, optimiser, scheduler=one_cycle)


def _shuffle_colours(patches: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Channel order permuted on half the patches, grey on a fifth: colour is not the cue to learn."""
    orders = np.stack([rng.permutation(3) if flip else np.arange(3) for flip in rng.random(len(patches)) < 0.5])
    patches = patches.copy()
    for order in np.unique(orders, axis=0):  # at most 6 orders: one slice each, not a per-pixel gather
        rows = (orders == order).all(1)
        patches[rows] = patches[rows][..., order]
    grey = rng.random(len(patches)) < 0.2
    patches[grey] = patches[grey].mean(3, keepdims=True).astype(np.uint8)
    return patches


@torch.no_grad()
def patch_logits(model: TextureNet, patches: np.ndarray, chunk: int | None = None) -> np.ndarray:
    """The model's logit for every patch (float32, on the CPU).

    `chunk` (default 128 on the CPU, 4,096 on CUDA): on the CPU, small chunks keep the activations in cache.
    128 ran 3x the rate of 2,048 on 2 Zen 4 cores, with the same logits (benchmarks/RESULTS.md)."""
    device = next(model.parameters()).device
    chunk = chunk or (128 if device.type == "cpu" else 4096)
    out = [np.zeros(0, np.float32)]
    for start in range(0, len(patches), chunk):
        tensor = _to_tensor(patches[start:start + chunk]).to(device, memory_format=memory_format(device, True))
        with autocast(device):
            out.append(model(tensor).float().cpu().numpy())
    return np.concatenate(out)


def image_means(owner: np.ndarray, values: np.ndarray, rows: int) -> np.ndarray:
    """Mean of the patch values of each image (NaN for an image with no patch)."""
    sums = np.bincount(owner, weights=values, minlength=rows)
    counts = np.bincount(owner, minlength=rows)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
