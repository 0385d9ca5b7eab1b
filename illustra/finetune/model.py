"""The classifier: our encoder + a linear head, saved as one safetensors file with everything needed to evaluate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from illustra.data.cache import CacheSpec, fit_square
from illustra.ssl.augment import normalise, resize_batch, to_float
from illustra.ssl.encoder import Encoder, EncoderConfig
from illustra.weights import load_weights, save_weights, with_prefix

TTA = ("none", "flip")  # test-time augmentation: none, or the mean with the horizontally mirrored image


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
    model = Classifier(Encoder(EncoderConfig(**meta["architecture"])), len(meta["classes"])).to(device)
    model.encoder.load_state_dict(with_prefix(tensors, "encoder"))
    model.head.load_state_dict(with_prefix(tensors, "head"))
    return model.eval(), meta


def prepare(images: list[Image.Image], preprocessing: dict) -> torch.Tensor:
    """RGB images -> the uint8 (N, S, S, 3) squares the model was trained on (same fit as the pixel cache)."""
    spec = CacheSpec(size=int(preprocessing["cache_size"]), policy=preprocessing["cache_policy"])
    return torch.from_numpy(np.stack([fit_square(image, spec) for image in images]))


@torch.no_grad()
def predict_proba(model: Classifier, squares: torch.Tensor, input_size: int, batch_size: int = 256,
                  tta: str = "none") -> np.ndarray:
    """Class probabilities for uint8 squares (N, S, S, 3); tta="flip" averages them with the mirrored image's."""
    if tta not in TTA:
        raise ValueError(f"unknown test-time augmentation {tta!r}; one of {TTA}")
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(squares), batch_size):
        batch = normalise(resize_batch(to_float(squares[start:start + batch_size].to(device)), input_size))
        probabilities = torch.softmax(model(batch).float(), 1)
        if tta == "flip":
            probabilities = (probabilities + torch.softmax(model(batch.flip(3)).float(), 1)) / 2
        out.append(probabilities.cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, len(model.head.bias)), np.float32)


@torch.no_grad()
def adapt_batchnorm(model: Classifier, squares: torch.Tensor, input_size: int, batch_size: int = 256) -> Classifier:
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
        adapted(normalise(resize_batch(to_float(squares[start:start + batch_size].to(device)), input_size)))
    return adapted.eval()
