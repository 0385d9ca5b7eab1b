"""The classifier: our encoder + a linear head, saved as one safetensors file with everything needed to evaluate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from illustra.data.cache import CacheSpec, fit_square
from illustra.ssl.augment import normalise, resize_batch, to_float
from illustra.ssl.encoder import Encoder, EncoderConfig
from illustra.train.device import for_inference, inference_batch
from illustra.weights import load_weights, save_weights, with_prefix

# Test-time augmentation: the class probabilities of these views are averaged. none: the whole square; flip: and its
# mirror; zoom: the whole square and its central 90 % crop, each also mirrored (4 views; benchmarks/tta.py).
TTA = ("none", "flip", "zoom")
ZOOM_SIDE = 0.9
# How a cached square becomes network input at prediction. grid: one bilinear grid_sample, exactly as the training views
# are made (at 64 -> 32 px that is a 2x2 box mean); resize: an antialiased resize, which blurs more than anything the
# network saw in training. Weights written before 2026-11-27 carry no `resample` key and were validated with resize.
RESAMPLE = ("grid", "resize")


class Classifier(nn.Module):
    """Encoder features -> linear head over the class folders."""

    def __init__(self, encoder: Encoder, classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.feature_dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def save_classifier(path: str | Path, model: Classifier, classes: list[str], architecture: dict, preprocessing: dict,
                    training: dict) -> Path:
    """encoder.* + head.* tensors; class folder names in model order, preprocessing and architecture in metadata."""
    tensors = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return save_weights(path, tensors, {"illustra_kind": "classifier", "classes": classes, "architecture": architecture,
                                        "preprocessing": preprocessing, "training": training})


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> tuple[Classifier, dict]:
    """Rebuild a classifier from its weights file alone (no pickle); eval mode."""
    from safetensors import SafetensorError

    from illustra.errors import UserError

    try:
        tensors, meta = load_weights(path, device)
    except (SafetensorError, ValueError, OSError) as exc:
        raise UserError(f"{path} is not a readable safetensors weights file ({exc})") from exc
    if meta.get("illustra_kind") != "classifier" or "classes" not in meta:
        kind = meta.get("illustra_kind")
        hint = " (that is the SSL encoder; a classifier comes from `illustra finetune`)" if kind == "encoder" else ""
        raise UserError(f"{path} is not an illustra classifier: its metadata says illustra_kind={kind!r}{hint}")
    model = for_inference(Classifier(Encoder(EncoderConfig(**meta["architecture"])), len(meta["classes"])),
                          torch.device(device))
    model.encoder.load_state_dict(with_prefix(tensors, "encoder"))
    model.head.load_state_dict(with_prefix(tensors, "head"))
    return model.eval(), meta


def prepare(images: list[Image.Image], preprocessing: dict) -> torch.Tensor:
    """RGB images -> the uint8 (N, S, S, 3) squares the model was trained on (same fit as the pixel cache)."""
    spec = CacheSpec(size=int(preprocessing["cache_size"]), policy=preprocessing["cache_policy"])
    return torch.from_numpy(np.stack([fit_square(image, spec) for image in images]))


def check_views(tta: str, resample: str) -> None:
    """ValueError unless `tta` and `resample` name views that `eval_views` can make."""
    if tta not in TTA or resample not in RESAMPLE:
        raise ValueError(f"unknown test-time augmentation {tta!r} or resampling {resample!r}; tta one of {TTA}, "
                         f"resample one of {RESAMPLE}")
    if tta == "zoom" and resample == "resize":
        raise ValueError("tta='zoom' crops, so it needs resample='grid'")


def eval_views(images: torch.Tensor, size: int, tta: str = "none", resample: str = "grid") -> list[torch.Tensor]:
    """[0, 1] squares (N, 3, S, S) -> the views a prediction averages over, each (N, 3, size, size)."""
    check_views(tta, resample)
    if resample == "resize":
        whole = resize_batch(images, size)
        return [whole, whole.flip(3)] if tta == "flip" else [whole]
    sides = {"none": [(1.0, False)], "flip": [(1.0, False), (1.0, True)],
             "zoom": [(1.0, False), (1.0, True), (ZOOM_SIDE, False), (ZOOM_SIDE, True)]}[tta]
    return [crop_view(images, size, side, mirrored=mirrored) for side, mirrored in sides]


def crop_view(images: torch.Tensor, size: int, side: float = 1.0, centre: tuple[float, float] = (0.0, 0.0),
              mirrored: bool = False) -> torch.Tensor:
    """A square crop of `side` (share of the square) at `centre` (in [-1, 1]), resampled to `size` as the training
    views are (one bilinear grid_sample, border padding), mirrored or not."""
    theta = torch.zeros(len(images), 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0], theta[:, 1, 1] = side * (-1.0 if mirrored else 1.0), side
    theta[:, 0, 2], theta[:, 1, 2] = centre
    grid = F.affine_grid(theta, [len(images), 3, size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


@torch.no_grad()
def predict_proba(model: Classifier, squares: torch.Tensor, input_size: int, batch_size: int | None = None,
                  tta: str = "none", resample: str = "grid") -> np.ndarray:
    """Class probabilities for uint8 squares (N, S, S, 3): the mean over the views of `eval_views`.

    `batch_size` (default 64 on the CPU, 256 on CUDA): on the CPU, small batches keep the activations in cache.
    64 ran 1.5x the rate of 256 on 2 Zen 4 cores, with the same probabilities (benchmarks/RESULTS.md)."""
    check_views(tta, resample)
    device = next(model.parameters()).device
    batch_size = batch_size or inference_batch(device, cuda=256)
    out = []
    for start in range(0, len(squares), batch_size):
        views = eval_views(to_float(squares[start:start + batch_size].to(device)), input_size, tta, resample)
        out.append((sum(torch.softmax(model(normalise(view)).float(), 1) for view in views) / len(views)).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, len(model.head.bias)), np.float32)


def predict_as_trained(model: Classifier, squares: torch.Tensor, preprocessing: dict, batch_size: int | None = None
                       ) -> np.ndarray:
    """`predict_proba` with a weights file's own preprocessing (input size, tta, resampling)."""
    return predict_proba(model, squares, int(preprocessing["input_size"]), batch_size,
                         tta=preprocessing.get("tta", "none"), resample=preprocessing.get("resample", "resize"))


@torch.no_grad()
def adapt_batchnorm(model: Classifier, squares: torch.Tensor, input_size: int, batch_size: int = 256,
                    resample: str = "grid") -> Classifier:
    """AdaBN (Li et al., 2016): a copy of the model whose batch-norm statistics are re-estimated on these images.

    Unlabelled and transductive: the statistics of the folder being classified replace the training
    ones, which helps when its drawing style (colours, line weight) differs from the training set's.
    Weights are untouched; the copy is in eval mode."""
    import copy

    adapted = copy.deepcopy(model).eval()
    norms = [m for m in adapted.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or len(squares) == 0:
        return adapted
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative mean over every batch, not an exponential one
        norm.train()
    device = next(adapted.parameters()).device
    for start in range(0, len(squares), batch_size):
        adapted(normalise(eval_views(to_float(squares[start:start + batch_size].to(device)), input_size,
                                     resample=resample)[0]))
    return adapted.eval()
