"""SimCLR pretraining of our encoder from random initialisation, on the pixel cache.

The loop, each trick named: two batched views per image (augment.py), both views in one forward
pass, lightly's NTXentLoss with negatives gathered across ranks, AdamW (or LARS) with linear
warm-up then cosine decay, bf16 autocast + channels_last on CUDA, an atomic checkpoint every
epoch (resume loses at most one epoch), a time budget that shortens the cosine horizon so the
learning rate still anneals, and a kNN monitor on a labelled slice.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from illustra.ssl.augment import ViewConfig, make_view, to_float
from illustra.ssl.encoder import Encoder, EncoderConfig
from illustra.ssl.knn import knn_monitor
from illustra.weights import load_weights, save_weights, with_prefix

CHECKPOINT = "checkpoint.safetensors"
ENCODER_FILE = "encoder.safetensors"


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that shapes a pretraining run (configs/ssl.yaml)."""

    encoder: EncoderConfig = EncoderConfig()
    views: ViewConfig = ViewConfig()
    epochs: int = 30
    batch_size: int = 256
    optimizer: str = "adamw"  # adamw | lars
    lr: float = 2e-3  # for batch 256; scaled linearly with the global batch
    weight_decay: float = 1e-4
    warmup_epochs: float = 2.0
    temperature: float = 0.2
    projection_hidden: int = 512
    projection_dim: int = 128
    knn_every: int = 5  # epochs between kNN monitor runs (0: never)
    knn_k: int = 20
    seed: int = 0
    time_budget_s: float = 0.0  # 0: no budget
    threads: int = 0  # torch CPU threads; 0: all cores

    @classmethod
    def from_dict(cls, raw: dict) -> PretrainConfig:
        """Build from a YAML dict (nested `encoder` and `views` sections)."""
        raw = dict(raw)
        views = raw.pop("views", {}) or {}
        views = {k: tuple(v) if isinstance(v, list) else v for k, v in views.items()}
        return cls(encoder=EncoderConfig(**(raw.pop("encoder", {}) or {})), views=ViewConfig(**views), **raw)

    def to_dict(self) -> dict:
        """Plain nested dict (for metadata and logs)."""
        return asdict(self)


class SimCLR(nn.Module):
    """Encoder + lightly's SimCLR projection head."""

    def __init__(self, config: PretrainConfig) -> None:
        super().__init__()
        from lightly.models.modules import SimCLRProjectionHead

        self.encoder = Encoder(config.encoder)
        self.head = SimCLRProjectionHead(self.encoder.feature_dim, config.projection_hidden, config.projection_dim)

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(views))


@dataclass
class RunState:
    """Where a run stands: epoch, step, effective horizon, timings, history."""

    epoch: int = 0
    step: int = 0
    horizon_epochs: int = 0
    seconds: float = 0.0
    augment_seconds: float = 0.0
    compute_seconds: float = 0.0
    images_seen: int = 0
    history: list = field(default_factory=list)


def pick_device() -> torch.device:
    """CUDA when available, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def distributed() -> tuple[int, int]:
    """(rank, world size); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def learning_rate(config: PretrainConfig, step: int, steps_per_epoch: int, horizon_epochs: int, world: int) -> float:
    """Linear warm-up, then cosine decay to zero at the (budget-adjusted) horizon."""
    peak = config.lr * config.batch_size * world / 256
    warmup = max(1, round(config.warmup_epochs * steps_per_epoch))
    total = max(warmup + 1, horizon_epochs * steps_per_epoch)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / (total - warmup))
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, config: PretrainConfig) -> torch.optim.Optimizer:
    """AdamW or LARS; no weight decay on norms and biases."""
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "lars":
        from lightly.utils.lars import LARS

        return LARS(groups, lr=config.lr, momentum=0.9)
    if config.optimizer != "adamw":
        raise ValueError(f"unknown optimizer {config.optimizer!r}: use adamw or lars")
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.99))


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer state as flat tensors + JSON-able rest (for a pickle-free checkpoint)."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, entries in state["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Inverse of `optimizer_tensors`."""
    state: dict[int, dict] = {}
    for name, value in with_prefix(tensors, "optimizer").items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    for name, value in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(run_dir: Path, model: SimCLR, optimizer, gen: torch.Generator, state: RunState,
                    config: PretrainConfig, preprocessing: dict) -> None:
    """Model, optimizer, RNG and progress in one safetensors file, written atomically."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = optimizer_tensors(optimizer)
    tensors.update(opt_tensors)
    tensors["rng.augment"] = gen.get_state()
    save_weights(run_dir / CHECKPOINT, tensors, {"illustra_kind": "ssl-checkpoint", "config": config.to_dict(),
                                                 "state": asdict(state), "optimizer": opt_meta,
                                                 "preprocessing": preprocessing})


def export_encoder(path: Path, encoder: Encoder, config: PretrainConfig, preprocessing: dict, training: dict) -> Path:
    """The encoder alone, with architecture and preprocessing in its metadata."""
    tensors = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    return save_weights(path, tensors, {"illustra_kind": "encoder", "architecture": config.encoder.to_dict(),
                                        "preprocessing": preprocessing, "training": training})


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> tuple[Encoder, dict]:
    """Rebuild an encoder from its weights file (architecture from metadata); eval mode."""
    tensors, meta = load_weights(path, device)
    architecture = meta.get("architecture")
    if architecture is None:
        raise ValueError(f"{path} has no 'architecture' metadata: not an illustra encoder or classifier")
    encoder = Encoder(EncoderConfig(**architecture)).to(device)
    encoder.load_state_dict(with_prefix(tensors, "encoder"))
    return encoder.eval(), meta


def pretrain(
    pixels: np.ndarray, labels: np.ndarray, run_dir: str | Path, config: PretrainConfig,
    preprocessing: dict, *, resume: bool = False, progress: bool = True, max_steps: int | None = None,
) -> dict:
    """Train SimCLR on uint8 pixels (N, S, S, 3); write checkpoint, encoder and metrics to run_dir.

    `labels` are used only by the kNN monitor (a label-free run passes -1 everywhere).
    """
    run_dir = Path(run_dir)
    rank, world = distributed()
    device = pick_device()
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    model = SimCLR(config).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, config)
    gen = torch.Generator(device=device).manual_seed(config.seed * 1000 + rank)
    state = RunState(horizon_epochs=config.epochs)
    if resume and (run_dir / CHECKPOINT).exists():
        state = _resume(run_dir, model, optimizer, gen, device)
    from lightly.loss import NTXentLoss

    criterion = NTXentLoss(temperature=config.temperature, gather_distributed=world > 1)
    trainable = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    writer = tensorboard_writer(run_dir) if rank == 0 else None
    data = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2)  # uint8, stays uint8 in RAM
    steps_per_epoch = len(data) // (config.batch_size * world)
    if steps_per_epoch < 1:
        raise ValueError(f"{len(data)} images are fewer than one global batch of {config.batch_size * world}")
    while state.epoch < state.horizon_epochs:
        started = time.perf_counter()
        loss = _train_epoch(trainable, criterion, optimizer, data, gen, config, state, steps_per_epoch,
                            rank, world, device, writer, progress, max_steps)
        state.seconds += time.perf_counter() - started
        state.epoch += 1
        state.horizon_epochs = _budgeted_horizon(config, state)
        record = {"epoch": state.epoch, "loss": loss, "seconds": round(state.seconds, 1)}
        if rank == 0 and config.knn_every and (state.epoch % config.knn_every == 0 or
                                               state.epoch == state.horizon_epochs):
            record.update(knn_monitor(model.encoder, data, labels, config, device))
            for key, value in record.items():
                if key.startswith("knn"):
                    writer.add_scalar(f"monitor/{key}", value, state.epoch)
            snapshot = run_dir / "snapshots" / f"encoder_e{state.epoch:03d}.safetensors"
            export_encoder(snapshot, model.encoder, config, preprocessing, {"epochs": state.epoch})
        state.history.append(record)
        if rank == 0:
            writer.add_scalar("epoch/loss", loss, state.epoch)
            save_checkpoint(run_dir, model, optimizer, gen, state, config, preprocessing)
            print(json.dumps(record), flush=True)
        if max_steps is not None and state.step >= max_steps:
            break
    summary = _finish(run_dir, model, config, state, preprocessing, data, labels, writer, rank, world)
    if world > 1:
        dist.barrier()
    return summary


def _resume(run_dir: Path, model: SimCLR, optimizer, gen: torch.Generator, device) -> RunState:
    """Load model, optimizer, RNG and progress from the last epoch's checkpoint."""
    tensors, meta = load_weights(run_dir / CHECKPOINT, device)
    model.load_state_dict(with_prefix(tensors, "model"))
    restore_optimizer(optimizer, tensors, meta["optimizer"])
    gen.set_state(tensors["rng.augment"].cpu())
    state = RunState(**meta["state"])
    print(f"resumed from epoch {state.epoch} (step {state.step})", flush=True)
    return state


def tensorboard_writer(run_dir: Path):
    """TensorBoard writer under run_dir/tb, or None when tensorboard is missing (every long job uses this one)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover
        return None
    return SummaryWriter(str(Path(run_dir) / "tb"))


def bf16_autocast(device: torch.device):
    """bf16 autocast on CUDA only: on CPU bf16 convolutions are slower than float32."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def _train_epoch(trainable, criterion, optimizer, data, gen, config, state, steps_per_epoch, rank, world,
                 device, writer, progress, max_steps) -> float:
    """One pass over a fresh permutation (this rank's share); returns the mean loss."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(config.seed + state.epoch))
    share = order[rank::world]
    size, batch = config.encoder.input_size, config.batch_size
    autocast = bf16_autocast(device)
    trainable.train()
    losses = []
    bar = tqdm(range(steps_per_epoch), desc=f"ssl epoch {state.epoch + 1}/{state.horizon_epochs}",
               disable=not progress or rank != 0, leave=False)
    for step in bar:
        t0 = time.perf_counter()
        images = to_float(data[share[step * batch:(step + 1) * batch]].to(device, non_blocking=True))
        views = torch.cat([make_view(images, size, config.views, gen), make_view(images, size, config.views, gen)])
        if device.type == "cuda":
            views = views.contiguous(memory_format=torch.channels_last)
        t1 = time.perf_counter()
        lr = learning_rate(config, state.step, steps_per_epoch, state.horizon_epochs, world)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast:
            projections = trainable(views)
        first, second = projections.float().chunk(2)
        loss = criterion(first, second)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        t2 = time.perf_counter()
        state.augment_seconds += t1 - t0
        state.compute_seconds += t2 - t1
        state.images_seen += 2 * len(images) * world
        state.step += 1
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{lr:.2e}")
        if writer is not None and state.step % 10 == 0:
            writer.add_scalar("train/loss", losses[-1], state.step)
            writer.add_scalar("train/lr", lr, state.step)
        if max_steps is not None and state.step >= max_steps:
            break
    return float(np.mean(losses))


def _budgeted_horizon(config: PretrainConfig, state: RunState) -> int:
    """Epochs that fit the time budget at the measured pace (never more than configured)."""
    if not config.time_budget_s or state.epoch == 0:
        return state.horizon_epochs
    per_epoch = state.seconds / state.epoch
    fits = int(config.time_budget_s // per_epoch)
    return max(state.epoch, min(config.epochs, fits))


def _finish(run_dir, model, config, state, preprocessing, data, labels, writer, rank, world) -> dict:
    """Export the encoder, the metrics file and the TensorBoard projector (rank 0)."""
    throughput = state.images_seen / state.seconds if state.seconds else 0.0
    training = {"epochs": state.epoch, "steps": state.step, "wall_seconds": round(state.seconds, 1),
                "view_images_per_second": round(throughput, 1), "world_size": world,
                "augment_seconds": round(state.augment_seconds, 1),
                "compute_seconds": round(state.compute_seconds, 1),
                "config": config.to_dict(), "history": state.history}
    if rank != 0:
        return training
    export_encoder(run_dir / ENCODER_FILE, model.encoder, config, preprocessing, training)
    (run_dir / "metrics.json").write_text(json.dumps(training, indent=2), encoding="utf-8")
    _projector(writer, model.encoder, data, labels, config)
    writer.close()
    return training


def _projector(writer, encoder: Encoder, data: torch.Tensor, labels: np.ndarray, config: PretrainConfig,
               count: int = 500) -> None:
    """TensorBoard embedding projector with thumbnails for a fixed sample of images."""
    from illustra.ssl.embed import embed_tensor

    picks = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:count]
    images = data[picks]
    features = embed_tensor(encoder, images, config.encoder.input_size)
    writer.add_embedding(torch.from_numpy(features), metadata=[int(labels[i]) for i in picks],
                         label_img=images.float() / 255.0, tag="encoder")

