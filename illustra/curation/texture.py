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
import time

import numpy as np
import torch
from PIL import Image
from torch import nn

from illustra.ssl.pretrain import bf16_autocast, pick_device


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


def fit_texture_net(patches: np.ndarray, labels: np.ndarray, steps: int = 1500, batch: int = 128,
                    learning_rate: float = 2e-3, seconds: float = 600.0, seed: int = 0, progress=None,
                    writer=None) -> TextureNet:
    """Train a TextureNet on patches labelled 1 (photo) / 0 (drawing), classes balanced in every batch.

    Augmentation: flips, quarter turns, a JPEG round trip (quality 60-95) on half the patches, and colour
    shuffles (channel order on half, grey on a fifth) so that texture, not a palette, is what it learns.
    `writer` (a TensorBoard SummaryWriter) gets the loss every 25 steps.
    Stops early when `seconds` run out (the one-cycle schedule is set for `steps`). Uses CUDA when there
    is one (bf16 autocast, channels_last).
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = pick_device()
    positives, negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    model = TextureNet().to(device, memory_format=torch.channels_last)
    optimiser = torch.optim.AdamW(model.parameters(), learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, learning_rate, total_steps=steps)
    targets = torch.cat([torch.ones(batch // 2), torch.zeros(batch // 2)]).to(device)
    started = time.perf_counter()
    model.train()
    for step in range(steps):
        chosen = np.concatenate([rng.choice(positives, batch // 2), rng.choice(negatives, batch // 2)])
        x = patches[chosen].copy()
        for i in np.flatnonzero(rng.random(len(x)) < 0.5):
            x[i] = _recompress(x[i], int(rng.integers(60, 96)))
        x = _shuffle_colours(x, rng)
        tensor = torch.rot90(_to_tensor(x), int(rng.integers(4)), (2, 3))
        if rng.random() < 0.5:
            tensor = tensor.flip(3)
        tensor = tensor.to(device, memory_format=torch.channels_last)
        with bf16_autocast(device):
            logits = model(tensor)
        loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), targets)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if progress is not None:
            progress.update(1)
        if writer is not None and step % 25 == 0:
            writer.add_scalar("texture_view/loss", loss.item(), step)
        if time.perf_counter() - started > seconds:
            break
    return model.eval()


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
def patch_logits(model: TextureNet, patches: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """The model's logit for every patch (float32, on the CPU)."""
    device = next(model.parameters()).device
    out = [np.zeros(0, np.float32)]
    for start in range(0, len(patches), chunk):
        tensor = _to_tensor(patches[start:start + chunk]).to(device, memory_format=torch.channels_last)
        with bf16_autocast(device):
            out.append(model(tensor).float().cpu().numpy())
    return np.concatenate(out)


def image_means(owner: np.ndarray, values: np.ndarray, rows: int) -> np.ndarray:
    """Mean of the patch values of each image (NaN for an image with no patch)."""
    sums = np.bincount(owner, weights=values, minlength=rows)
    counts = np.bincount(owner, minlength=rows)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
