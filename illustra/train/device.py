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


def agreed_int(value: int, device: torch.device) -> int:
    """Rank 0's value on every rank (the value itself outside torchrun): one decision, taken once."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    tensor = torch.tensor([int(value)], dtype=torch.int64, device=device)
    dist.broadcast(tensor, 0)
    return int(tensor.item())


PRECISIONS_CPU = ("auto", "bf16", "fp32")


def cpu_has_bf16() -> bool:
    """True where the CPU computes bf16 natively (AVX512-BF16 or AMX, e.g. AMD Zen 4, Intel Sapphire Rapids)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, so absent in some torch builds
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def cpu_bf16(precision_cpu: str) -> bool:
    """Resolve a config's `precision_cpu`: bf16, fp32, or auto (bf16 considered where the CPU has native bf16; the
    training core then times both and keeps the faster, `cpu_precision_probe`)."""
    precision_cpu = str(precision_cpu).lower()
    if precision_cpu not in PRECISIONS_CPU:
        raise DeviceError(f"precision_cpu must be one of {', '.join(PRECISIONS_CPU)}, not {precision_cpu!r}")
    return precision_cpu == "bf16" or (precision_cpu == "auto" and cpu_has_bf16())


def cpu_precision_probe(precision_cpu: str) -> bool:
    """True for `precision_cpu: auto`: where the CPU has native bf16, the training core times a step in bf16 and in
    float32 and trains in bf16 only where it is clearly faster (a CPU flag is no promise of speed)."""
    return cpu_bf16(precision_cpu) and str(precision_cpu).lower() == "auto"


def compute_dtype(device: torch.device, cpu_bf16: bool = False) -> torch.dtype:
    """What a training forward pass computes in: bf16 on CUDA, and on the CPU when asked (`precision_cpu`)."""
    return torch.bfloat16 if device.type == "cuda" or (device.type == "cpu" and cpu_bf16) else torch.float32


def autocast(device: torch.device, cpu_bf16: bool = False):
    """Trick: bf16 autocast on CUDA; on the CPU only when asked (`precision_cpu`): with native bf16 (AVX512-BF16,
    a 2-core Zen 4) a width-32 training step is 1.7x faster; without it bf16 convolutions are slower than float32."""
    if compute_dtype(device, cpu_bf16) == torch.bfloat16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def full_precision(device: torch.device):
    """Leave autocast for a numerically delicate step (contrastive logits, losses)."""
    return torch.autocast(device.type, enabled=False) if device.type in ("cuda", "cpu") else nullcontext()


CPU_CHANNELS_LAST_MIN_WIDTH = 16  # narrower convolutions stay NCHW on the CPU (a torch 2.14.1 segfault, see below)


def too_narrow_for_cpu_channels_last(model: torch.nn.Module) -> bool:
    """True for networks with a convolution narrower than 16 channels: torch 2.14.1's CPU backward segfaults
    there in channels_last on odd batch sizes (reproduced: width 8 and 12 crash with batches of 3, 5, ..., 33;
    width 16 and more do not; tests/test_train.py)."""
    widths = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    return min(widths, default=64) < CPU_CHANNELS_LAST_MIN_WIDTH


def for_inference(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Trick: channels_last for prediction and embedding too, on the CPU as well (2 cores, 256 benchmark images,
    four views: shipped classifier 158 -> 216 images/s, the gpu profile's 6.9 -> 8.4; probabilities within 3e-7)."""
    return model.to(device, memory_format=memory_format(device, not too_narrow_for_cpu_channels_last(model)))


def inference_batch(device: torch.device | str, cuda: int) -> int:
    """Images per forward pass for prediction and embedding: 64 on the CPU, where small batches keep the
    activations in cache (embeddings 1.8x the rate of 512, predictions 1.5x that of 256 on 2 Zen 4 cores, same
    outputs; benchmarks/RESULTS.md, CPU inference in small batches), `cuda` elsewhere."""
    return 64 if torch.device(device).type == "cpu" else cuda


def memory_format(device: torch.device, cpu_channels_last: bool = False) -> torch.memory_format:
    """Trick: channels_last on CUDA (tensor cores want NHWC); on CPU only where a stage measured it faster."""
    if device.type == "cuda" or cpu_channels_last:
        return torch.channels_last
    return torch.contiguous_format
