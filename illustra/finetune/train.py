"""Fine-tuning: a linear head on the pretrained encoder (frozen or unfrozen) or the same recipe from scratch.

The loop follows airbench's habit of naming every trick: batches from the in-memory pixel cache,
batched tensor augmentation, label smoothing, warm-up + cosine, EMA of weights, the imbalance plan
(sampler or class-weighted loss), bf16 autocast + channels_last on CUDA, an atomic safetensors
checkpoint every epoch and `--resume`, and a wall-time budget that shortens the cosine horizon.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from torch import nn
from tqdm import tqdm

from illustra.curation.balance import class_weights, epoch_indices
from illustra.finetune.model import Classifier, predict_proba, save_classifier
from illustra.ssl.augment import ViewConfig, make_view, to_float
from illustra.ssl.encoder import Encoder, EncoderConfig
from illustra.ssl.pretrain import load_encoder, optimizer_tensors, pick_device, restore_optimizer, tensorboard_writer
from illustra.weights import load_weights, save_weights, with_prefix

CHECKPOINT = "checkpoint.safetensors"
CLASSIFIER = "classifier.safetensors"
MODES = ("linear", "full", "scratch")


@dataclass
class FinetuneConfig:
    """The fine-tuning recipe (configs/finetune.yaml)."""

    mode: str = "full"                 # linear: encoder frozen | full: unfrozen, lower lr | scratch: random init
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.003                  # head learning rate (AdamW)
    encoder_lr_scale: float = 0.3      # encoder lr = lr * this in full / scratch mode
    weight_decay: float = 0.0005
    warmup_epochs: int = 1
    label_smoothing: float = 0.1
    ema_decay: float = 0.998           # per step; 0 = off
    imbalance: str = "weights"         # none | over | under | weights (class-weighted loss)
    views: ViewConfig = field(default_factory=lambda: ViewConfig(crop_scale=(0.6, 1.0), jitter=0.5, brightness=0.2,
                                                                  contrast=0.2, saturation=0.2, hue=0.02, grayscale=0.05))
    encoder: EncoderConfig = field(default_factory=EncoderConfig)  # used by scratch mode only
    input_size: int = 0                # 0: the encoder's own; else train and predict at this size (<= cache size)
    seed: int = 0
    time_budget_s: float = 0.0
    threads: int = 0

    @classmethod
    def from_dict(cls, raw: dict) -> FinetuneConfig:
        """Config from a YAML mapping (nested views / encoder)."""
        raw = dict(raw)
        views = raw.pop("views", None) or {}
        encoder = raw.pop("encoder", None) or {}
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown fine-tuning keys: {sorted(unknown)}")
        views = {k: tuple(v) if isinstance(v, list) else v for k, v in views.items()}
        return cls(views=ViewConfig(**views), encoder=EncoderConfig(**encoder), **raw)

    def to_dict(self) -> dict:
        """Plain mapping for metadata and logs."""
        return asdict(self)


def learning_rate_factor(step: int, steps_per_epoch: int, warmup_epochs: int, horizon_epochs: int) -> float:
    """Linear warm-up, then cosine to zero at the horizon."""
    warmup = max(1, warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    total = max(warmup + 1, horizon_epochs * steps_per_epoch)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / (total - warmup))))


def build_model(config: FinetuneConfig, classes: int, encoder_path: str | Path | None) -> tuple[Classifier, dict]:
    """Classifier from the pretrained encoder (linear / full) or a random one (scratch); (model, architecture)."""
    if config.mode not in MODES:
        raise ValueError(f"unknown mode {config.mode!r}; one of {MODES}")
    if config.mode == "scratch" or encoder_path is None:
        torch.manual_seed(config.seed)
        encoder, architecture = Encoder(config.encoder), config.encoder.to_dict()
    else:
        encoder, meta = load_encoder(encoder_path)
        architecture = meta["architecture"]
    if config.input_size:  # the network is fully convolutional + global pool, so any input size works
        architecture = {**architecture, "input_size": int(config.input_size)}
    model = Classifier(encoder, classes)
    if config.mode == "linear":
        model.encoder.requires_grad_(False)
    return model, architecture


def make_optimizer(model: Classifier, config: FinetuneConfig) -> torch.optim.Optimizer:
    """AdamW with the head at lr and the encoder at lr * encoder_lr_scale (no decay on norms and biases)."""
    groups = [{"params": list(model.head.parameters()), "lr": config.lr, "base_lr": config.lr}]
    if config.mode != "linear":
        scale = 1.0 if config.mode == "scratch" else config.encoder_lr_scale
        decay = [p for p in model.encoder.parameters() if p.ndim > 1]
        plain = [p for p in model.encoder.parameters() if p.ndim <= 1]
        groups += [{"params": decay, "lr": config.lr * scale, "base_lr": config.lr * scale},
                   {"params": plain, "lr": config.lr * scale, "base_lr": config.lr * scale, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


class EMA:
    """Exponential moving average of the weights (and a copy of the buffers), evaluated instead of the raw model.

    The decay warms up as min(decay, (1 + step) / (10 + step)), so a short run's average is not
    dominated by the random initial head (at 0.998 the average spans ~500 steps).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.state = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for key, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                self.state[key].mul_(decay).add_(value.detach().float(), alpha=1 - decay)
            else:
                self.state[key].copy_(value)

    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in self.state.items()})


def macro_f1(model: Classifier, images: torch.Tensor, labels: np.ndarray, input_size: int, classes: int) -> float:
    """Macro-F1 over all classes of a model on uint8 squares."""
    if len(labels) == 0:
        return float("nan")
    predicted = predict_proba(model, images, input_size).argmax(1)
    return float(f1_score(labels, predicted, average="macro", labels=list(range(classes)), zero_division=0))


def finetune(train_images: np.ndarray, train_labels: np.ndarray, val_images: np.ndarray, val_labels: np.ndarray,
             classes: list[str], run_dir: str | Path, config: FinetuneConfig, preprocessing: dict,
             encoder_path: str | Path | None, resume: bool = False, progress: bool = True,
             max_steps: int | None = None) -> dict:
    """Train; write RUN/checkpoint.safetensors each epoch, RUN/classifier.safetensors (EMA) and RUN/metrics.json."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = pick_device()
    model, architecture = build_model(config, len(classes), encoder_path)
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, config)
    ema = EMA(model, config.ema_decay) if config.ema_decay > 0 else None
    gen = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    state = {"epoch": 0, "step": 0, "seconds": 0.0, "history": []}
    if resume and (run_dir / CHECKPOINT).exists():
        state, rng = _restore(run_dir / CHECKPOINT, model, optimizer, ema, gen)
    images = torch.from_numpy(np.ascontiguousarray(train_images))
    val = torch.from_numpy(np.ascontiguousarray(val_images))
    counts = class_counts_array(train_labels, len(classes))
    weights = torch.tensor(class_weights_array(counts), dtype=torch.float32, device=device) \
        if config.imbalance == "weights" else None
    input_size = int(architecture["input_size"])
    steps_per_epoch = max(1, len(epoch_indices(train_labels, config.imbalance, np.random.default_rng(0))) // config.batch_size)
    writer = tensorboard_writer(run_dir)
    horizon = config.epochs
    while state["epoch"] < horizon:
        started = time.perf_counter()
        order = epoch_indices(train_labels, config.imbalance, rng)
        model.train()
        if config.mode == "linear":
            model.encoder.eval()  # frozen: batch-norm statistics stay as pretrained
        losses = []
        bar = tqdm(range(steps_per_epoch), desc=f"finetune epoch {state['epoch'] + 1}/{horizon}", leave=False,
                   disable=not progress)
        for step in bar:
            batch_rows = torch.from_numpy(order[step * config.batch_size:(step + 1) * config.batch_size])
            batch = make_view(to_float(images[batch_rows].to(device)), input_size, config.views, gen)
            target = torch.from_numpy(train_labels[batch_rows.numpy()]).long().to(device)
            factor = learning_rate_factor(state["step"], steps_per_epoch, config.warmup_epochs, horizon)
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(batch.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else batch)
            loss = F.cross_entropy(logits.float(), target, weight=weights, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if ema is not None:
                ema.update(model, state["step"])
            losses.append(loss.item())
            state["step"] += 1
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if max_steps is not None and state["step"] >= max_steps:
                break
        state["epoch"] += 1
        state["seconds"] += time.perf_counter() - started
        evaluated = _evaluation_model(model, ema, architecture, len(classes), device)
        val_f1 = macro_f1(evaluated, val, val_labels, input_size, len(classes))
        record = {"epoch": state["epoch"], "loss": float(np.mean(losses)), "val_macro_f1": val_f1,
                  "lr": optimizer.param_groups[0]["lr"], "seconds": round(state["seconds"], 1),
                  "images_per_second": round(len(losses) * config.batch_size / (time.perf_counter() - started), 1)}
        state["history"].append(record)
        if writer is not None:
            for key in ("loss", "val_macro_f1", "lr", "images_per_second"):
                writer.add_scalar(f"finetune/{key}", record[key], state["epoch"])
        _save(run_dir / CHECKPOINT, model, optimizer, ema, gen, rng, state, config)
        horizon = _budgeted_horizon(config, state)
        if max_steps is not None and state["step"] >= max_steps:
            break
    final = _evaluation_model(model, ema, architecture, len(classes), device).cpu()
    training = {"config": config.to_dict(), "epochs": state["epoch"], "seconds": round(state["seconds"], 1),
                "train_images": int(len(train_labels)), "encoder": str(encoder_path) if config.mode != "scratch" else None,
                "history": state["history"]}
    save_classifier(run_dir / CLASSIFIER, final, classes, architecture, preprocessing, training)
    if writer is not None:
        writer.close()
    (run_dir / "metrics.json").write_text(json.dumps(training, indent=2), encoding="utf-8")
    return training


def class_counts_array(labels: np.ndarray, classes: int) -> np.ndarray:
    """Images per class id."""
    return np.bincount(labels, minlength=classes)


def class_weights_array(counts: np.ndarray) -> np.ndarray:
    """N / (K * n_c) per class id (0 for absent classes)."""
    import pandas as pd

    return class_weights(pd.Series(counts)).to_numpy()


def _evaluation_model(model: Classifier, ema: EMA | None, architecture: dict, classes: int, device) -> Classifier:
    """The EMA weights in a fresh model (or the model itself without EMA), eval mode."""
    if ema is None:
        return model.eval()
    copy = Classifier(Encoder(EncoderConfig(**architecture)), classes).to(device)
    ema.copy_to(copy)
    return copy.eval()


def _budgeted_horizon(config: FinetuneConfig, state: dict) -> int:
    """Epochs that fit the time budget at the measured pace (the cosine schedule anneals by then)."""
    if config.time_budget_s <= 0 or state["epoch"] == 0:
        return config.epochs
    per_epoch = state["seconds"] / state["epoch"]
    return max(state["epoch"], min(config.epochs, int(config.time_budget_s / per_epoch)))


def _save(path: Path, model, optimizer, ema, gen, rng, state, config) -> None:
    """Model, optimizer, EMA, RNGs and progress in one atomic safetensors checkpoint (no pickle)."""
    tensors = {f"model.{k}": v.detach().cpu() for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = optimizer_tensors(optimizer)
    tensors.update({k: v.cpu() for k, v in opt_tensors.items()})
    if ema is not None:
        tensors.update({f"ema.{k}": v.cpu() for k, v in ema.state.items()})
    tensors["rng.augment"] = gen.get_state()
    save_weights(path, tensors, {"illustra_kind": "finetune-checkpoint", "state": state, "optimizer": opt_meta,
                                 "rng_numpy": rng.bit_generator.state, "config": config.to_dict()})


def _restore(path: Path, model, optimizer, ema, gen) -> tuple[dict, np.random.Generator]:
    """Inverse of `_save`."""
    tensors, meta = load_weights(path)
    model.load_state_dict(with_prefix(tensors, "model"))
    restore_optimizer(optimizer, tensors, meta["optimizer"])
    if ema is not None:
        ema.state = {k: v.float() for k, v in with_prefix(tensors, "ema").items()}
    gen.set_state(tensors["rng.augment"])
    rng = np.random.default_rng()
    rng.bit_generator.state = meta["rng_numpy"]
    return meta["state"], rng


