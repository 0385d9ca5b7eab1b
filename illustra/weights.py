"""Weights files: safetensors with JSON metadata (architecture, preprocessing, classes, training).

Loading never unpickles: safetensors holds raw tensors, metadata is JSON text.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def save_weights(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict) -> Path:
    """Write tensors + metadata atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {name: tensor.detach().to("cpu").contiguous() for name, tensor in tensors.items()}
    text = {key: json.dumps(value, sort_keys=True) for key, value in metadata.items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(flat, tmp, metadata=text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; weights are meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def read_metadata(path: str | Path) -> dict:
    """The JSON metadata of a weights file, without loading its tensors."""
    with safe_open(str(path), framework="pt") as handle:
        raw = handle.metadata() or {}
    return {key: json.loads(value) for key, value in raw.items()}


def load_weights(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and metadata of a weights file (no pickle involved)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights file not found: {path}")
    tensors = {}
    with safe_open(str(path), framework="pt", device=str(device)) as handle:
        for name in handle.keys():
            tensors[name] = handle.get_tensor(name)
    return tensors, read_metadata(path)


def with_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under `prefix.`, with the prefix removed."""
    start = len(prefix) + 1
    return {name[start:]: value for name, value in tensors.items() if name.startswith(prefix + ".")}


HALF_STORAGE = "float16 convolution and linear weights (batch norm and biases float32); loaded as float32"


def half_copy(source: str | Path, target: str | Path) -> Path:
    """A copy of a weights file with its floating convolution / linear weights stored as float16 (half the bytes).

    Batch-norm statistics and biases (1-d) stay float32; the metadata is kept and gains `storage`. Loading
    needs nothing special: `load_state_dict` copies into the float32 model."""
    tensors, meta = load_weights(source)
    small = {name: t.half() if t.is_floating_point() and t.ndim > 1 else t for name, t in tensors.items()}
    if not all(torch.isfinite(t).all() for t in small.values() if t.is_floating_point()):
        raise ValueError(f"{source} has weights outside float16's range: keep it in float32")
    return save_weights(target, small, {**meta, "storage": HALF_STORAGE})
