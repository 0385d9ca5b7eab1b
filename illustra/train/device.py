"""Device choice, torchrun ranks, bf16 autocast and channels_last: the hardware side of the core."""

from __future__ import annotations

import os
from contextlib import nullcontext

import torch
import torch.distributed as dist

from illustra.errors import UserError

DEVICE_ENV = "ILLUSTRA_DEVICE"
DEVICES = ("auto", "cpu", "cuda")


class DeviceError(UserError, ValueError):
    """A device was asked for that this machine does not have (one sentence for the user)."""


def requested_device() -> str:
    """What the user asked for: `--device` (exported as ILLUSTRA_DEVICE by the CLI), else auto."""
    return os.environ.get(DEVICE_ENV, "auto").strip().lower() or "auto"


def pick_device(requested: str | None = None) -> torch.device:
    """auto: CUDA (this rank's GPU under torchrun) when available, else CPU; cpu / cuda force one."""
    requested = (requested or requested_device()).lower()
    if requested not in DEVICES and not requested.startswith("cuda:"):
        raise DeviceError(f"unknown device {requested!r}: use one of {', '.join(DEVICES)}")
    if requested == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if requested == "auto":
            return torch.device("cpu")
        raise DeviceError(f"device {requested!r} was asked for, but this machine has no usable CUDA GPU "
                          "(use --device cpu or auto)")
    if requested.startswith("cuda:"):
        return torch.device(requested)
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())


def distributed() -> tuple[int, int]:
    """(rank, world size); initialises the process group under torchrun (NCCL on GPUs, else gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and requested_device() != "cpu" else "gloo"
        dist.init_process_group(backend)
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def barrier() -> None:
    """Wait for every rank (no-op outside torchrun)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def autocast(device: torch.device):
    """Trick: bf16 autocast on CUDA only (on CPU bf16 convolutions are slower than float32)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def full_precision(device: torch.device):
    """Leave autocast for a numerically delicate step (contrastive logits, losses) on CUDA."""
    return torch.autocast("cuda", enabled=False) if device.type == "cuda" else nullcontext()


def memory_format(device: torch.device, cpu_channels_last: bool = False) -> torch.memory_format:
    """Trick: channels_last on CUDA (tensor cores want NHWC); on CPU only where a stage measured it faster."""
    if device.type == "cuda" or cpu_channels_last:
        return torch.channels_last
    return torch.contiguous_format
