"""Fine-tuning: a linear head on the pretrained encoder (frozen or unfrozen) or the same recipe from scratch.

What is fine-tuning's own: batches from the in-memory pixel cache in the imbalance plan's order
(sampler or class-weighted loss), batched tensor augmentation, label smoothing, a head / encoder
learning-rate split, validation macro-F1 each epoch. The rest (device, seeding of the head too,
warm-up + cosine, EMA, time budget, bf16 + channels_last, DDP, atomic checkpoints with exact
resume, progress, TensorBoard) is the training core's (`illustra.train`).
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from torch import nn

from illustra.config import build, yaml_defaults
from illustra.curation.balance import class_weights, epoch_indices
from illustra.errors import ConfigError, UserError
from illustra.finetune.mixstyle import MixStyle
from illustra.finetune.model import TTA, Classifier, predict_proba, save_classifier
from illustra.ssl.augment import ViewConfig, make_view, to_float
from illustra.ssl.encoder import Encoder, EncoderConfig, load_encoder
from illustra.train.device import barrier, cpu_bf16, cpu_precision_probe
from illustra.train.loop import CHECKPOINT, LoopSettings, Trainer, tensorboard_writer
from illustra.train.random import rand

__all__ = ["CHECKPOINT", "CLASSIFIER", "MODES", "FinetuneConfig", "build_model", "finetune", "make_optimizer"]
CLASSIFIER = "classifier.safetensors"
MODES = ("linear", "full", "scratch")


@dataclass
@yaml_defaults("finetune.yaml")
class FinetuneConfig:
    """The fine-tuning recipe (configs/finetune.yaml)."""

    mode: str  # linear: encoder frozen | full: unfrozen, lower lr | scratch: random init
    epochs: int
    batch_size: int
    lr: float  # head learning rate (AdamW)
    encoder_lr_scale: float  # encoder lr = lr * this in full / scratch mode ...
    encoder_lr_decay: float  # ... times this per block below the last (layer-wise lr decay; 1.0: one encoder lr)
    weight_decay: float
    warmup_epochs: int
    label_smoothing: float
    ema_decay: float  # per step; 0 = off
    imbalance: str  # none | over | under | weights (class-weighted loss)
    views: ViewConfig
    mix: str  # none | mixup | cutmix: mix pairs of a batch (mixing weight uniform in [0, 1]) ...
    mix_prob: float  # ... in this share of the batches
    probe_epochs: int  # full / scratch: the first epochs train the head only (encoder lr 0, batch-norm frozen)
    mixstyle: float  # MixStyle: per batch and block, the chance that feature statistics are mixed between images ...
    mixstyle_alpha: float  # ... with weights ~ Beta(alpha, alpha) ...
    mixstyle_blocks: int  # ... in the first this many blocks of the encoder (illustra/finetune/mixstyle.py)
    tta: str  # none | flip | zoom: test-time augmentation for validation, test and evaluate.py (kept in the weights)
    encoder: EncoderConfig  # used by scratch mode only
    input_size: int  # 0: the encoder's own; else train and predict at this size (<= cache size)
    seed: int
    val_share: float  # of each class's duplicate groups, held out for validation ...
    test_share: float  # ... and for the test score (split by groups, seeded by `seed`)
    time_budget_s: float  # wall time: loading, training, validation and checkpoints (not the test score after)
    val_every: int  # validation macro-F1 every this many epochs, and after the last (it counts against the budget)
    checkpoint_every_s: float  # 0: a resume checkpoint after every epoch; else at most this often
    threads: int
    channels_last_cpu: bool  # channels_last on CPU too (CUDA always uses it); see benchmarks/RESULTS.md
    precision_cpu: str  # fp32 | bf16 | auto (bf16 where the CPU has native bf16); CUDA always trains in bf16
    profile: str = ""                  # the device profile the config was resolved with (recorded in the weights)

    @classmethod
    def from_dict(cls, raw: dict) -> FinetuneConfig:
        """Config from a YAML mapping (nested views / encoder); unknown keys are an error."""
        return build(cls, raw)

    def to_dict(self) -> dict:
        """Plain mapping for metadata and logs."""
        return asdict(self)


def build_model(config: FinetuneConfig, classes: int, encoder_path: str | Path | None) -> tuple[Classifier, dict]:
    """Classifier from the pretrained encoder (linear / full) or a random one (scratch); (model, architecture)."""
    if config.mode not in MODES:
        raise ConfigError(f"unknown mode {config.mode!r}; one of {MODES}")
    if config.mix not in ("none", "mixup", "cutmix") or config.tta not in TTA:
        raise ConfigError(f"unknown mix {config.mix!r} or tta {config.tta!r}: mix is none | mixup | cutmix, "
                         f"tta one of {TTA}")
    if config.mode == "scratch" or encoder_path is None:  # initialised from the trainer's seed (seed_everything)
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
    """AdamW: the head at lr, the encoder at lr * encoder_lr_scale (no weight decay on norms and biases).

    Trick (layer-wise lr decay, as in BEiT / ELECTRA fine-tuning): with `encoder_lr_decay` d < 1 the encoder's last
    block keeps that lr and each layer below it gets d times the lr of the one above, down to the stem, so the
    low-level filters the SSL start learned move least. Scratch mode has no start to keep: one lr for all.
    """
    groups = [{"params": list(model.head.parameters()), "lr": config.lr, "base_lr": config.lr}]
    if config.mode != "linear":
        scale = 1.0 if config.mode == "scratch" else config.encoder_lr_scale
        decay = 1.0 if config.mode == "scratch" else config.encoder_lr_decay
        if not 0.0 < decay <= 1.0:
            raise ConfigError(f"encoder_lr_decay must be in (0, 1], not {decay}")
        # 1.0: the whole encoder as one layer, so the groups (and resume checkpoints) are as before the option
        layers = [model.encoder.stem, *model.encoder.body] if decay < 1.0 else [model.encoder]
        for depth, layer in enumerate(reversed(layers)):  # the pool has no parameters
            lr, params = config.lr * scale * decay**depth, list(layer.parameters())
            groups += [{"params": [p for p in params if p.ndim > 1], "lr": lr, "base_lr": lr},
                       {"params": [p for p in params if p.ndim <= 1], "lr": lr, "base_lr": lr, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


def macro_f1(model: Classifier, images: torch.Tensor, labels: np.ndarray, input_size: int, classes: int,
             tta: str = "none", resample: str = "grid") -> float:
    """Macro-F1 over all classes of a model on uint8 squares."""
    if len(labels) == 0:
        return float("nan")
    predicted = predict_proba(model, images, input_size, tta=tta, resample=resample).argmax(1)
    return float(f1_score(labels, predicted, average="macro", labels=list(range(classes)), zero_division=0))


class ClassifierTask:
    """Fine-tuning's batches (the imbalance plan's epoch order, this rank's share, batched views) and its loss."""

    def __init__(self, images: torch.Tensor, labels: np.ndarray, config: FinetuneConfig, input_size: int,
                 weights: torch.Tensor | None, trainer: Trainer, steps_per_epoch: int,
                 mixstyle: MixStyle | None = None) -> None:
        self.images, self.labels, self.config, self.size = images, labels, config, input_size
        self.weights, self.trainer, self.steps, self.mixstyle = weights, trainer, steps_per_epoch, mixstyle

    def batches(self, epoch: int, random, device: torch.device):
        order = epoch_indices(self.labels, self.config.imbalance, random.epoch_order(epoch))  # same on every rank
        batch, rank, world = self.config.batch_size, self.trainer.rank, self.trainer.world
        for step in range(self.steps):
            rows = order[step * batch:(step + 1) * batch][rank::world]  # this rank's share of the global batch
            views = make_view(to_float(self.images[torch.from_numpy(rows)].to(device, non_blocking=True)),
                              self.size, self.config.views, random.torch)
            target = torch.from_numpy(self.labels[rows]).long().to(device)
            if self.config.mix != "none" and rand(1, random.torch, views).item() < self.config.mix_prob:
                views, target = mix_batch(views, target, self.config.mix, random.torch)
            plan = self.mixstyle.draw(len(views), random.torch, views) if self.mixstyle is not None else None
            yield self.trainer.to_input(views), target, plan

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        views, target, plan = batch
        # Trick: MixStyle, feature statistics mixed between images (style, not content)
        with self.mixstyle.apply(plan) if self.mixstyle is not None else nullcontext():
            logits = model(views).float()
        # Trick: label smoothing; the class-weighted loss when the imbalance plan says `weights`
        if isinstance(target, tuple):  # a mixed batch: the loss of both labels, by the mixing weight
            first, second, weight = target
            return weight * self._ce(logits, first) + (1 - weight) * self._ce(logits, second)
        return self._ce(logits, target)

    def _ce(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target, weight=self.weights, label_smoothing=self.config.label_smoothing)


def mix_batch(views: torch.Tensor, target: torch.Tensor, how: str, gen: torch.Generator
              ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, float]]:
    """Mixup (weighted sum) or CutMix (a box of the partner pasted in) of each image with a shuffled partner.

    The weight is uniform in [0, 1] (Beta(1, 1), CutMix's default); for CutMix it is the kept area."""
    n, _, height, width = views.shape
    partner = rand(n, gen, views).argsort()
    weight = float(rand(1, gen, views).item())
    if how == "mixup":
        return weight * views + (1 - weight) * views[partner], (target, target[partner], weight)
    if how != "cutmix":
        raise ValueError(f"unknown mix {how!r}; one of none, mixup, cutmix")
    side = (1 - weight) ** 0.5
    box_h, box_w = round(height * side), round(width * side)
    top = int(rand(1, gen, views).item() * (height - box_h + 1))
    left = int(rand(1, gen, views).item() * (width - box_w + 1))
    mixed = views.clone()
    mixed[:, :, top:top + box_h, left:left + box_w] = views[partner, :, top:top + box_h, left:left + box_w]
    kept = 1 - box_h * box_w / (height * width)
    return mixed, (target, target[partner], kept)


def finetune(train_images: np.ndarray, train_labels: np.ndarray, val_images: np.ndarray, val_labels: np.ndarray,
             classes: list[str], run_dir: str | Path, config: FinetuneConfig, preprocessing: dict,
             encoder_path: str | Path | None, resume: bool = False, progress: bool = True,
             max_steps: int | None = None, budget_clock: float = 0.0) -> dict:
    """Train; write RUN/checkpoint.safetensors each epoch, RUN/classifier.safetensors (EMA) and RUN/metrics.json.

    `budget_clock` (a time.perf_counter() value) is when the job began: its loading counts against the budget."""
    if config.val_every < 1:
        raise UserError(f"val_every={config.val_every}: validate every 1 or more epochs (the last is always validated)")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    steps_per_epoch = max(1, len(epoch_indices(train_labels, config.imbalance, np.random.default_rng(0))) // config.batch_size)
    settings = LoopSettings(epochs=config.epochs, steps_per_epoch=steps_per_epoch, seed=config.seed,
                            warmup_epochs=config.warmup_epochs, time_budget_s=config.time_budget_s,
                            budget_clock=budget_clock or time.perf_counter(),
                            checkpoint_every_s=config.checkpoint_every_s,
                            ema_decay=config.ema_decay, label="finetune", cpu_channels_last=config.channels_last_cpu,
                            cpu_bf16=cpu_bf16(config.precision_cpu),
                            cpu_precision_probe=cpu_precision_probe(config.precision_cpu))
    trainer = Trainer(settings, run_dir, progress=progress)  # seeds everything: the head's init is reproducible too
    trainer.writer = tensorboard_writer(run_dir) if trainer.is_main else None
    model, architecture = build_model(config, len(classes), encoder_path)
    mixstyle = MixStyle(model.encoder, config.mixstyle, config.mixstyle_alpha, config.mixstyle_blocks) \
        if config.mixstyle > 0 and config.mode != "linear" else None
    model = trainer.prepare(model)
    optimizer = make_optimizer(model, config)
    counts = class_counts_array(train_labels, len(classes))
    weights = torch.tensor(class_weights_array(counts), dtype=torch.float32, device=trainer.device) \
        if config.imbalance == "weights" else None
    input_size = int(architecture["input_size"])
    images = torch.from_numpy(np.ascontiguousarray(train_images))
    val = torch.from_numpy(np.ascontiguousarray(val_images))
    task = ClassifierTask(images, train_labels, config, input_size, weights, trainer, steps_per_epoch, mixstyle)

    encoder_groups = optimizer.param_groups[1:]
    encoder_lrs = [group["base_lr"] for group in encoder_groups]

    def frozen_encoder_stays_frozen(model: Classifier) -> None:
        probing = trainer.state.epoch < config.probe_epochs  # Trick: linear probe, then the whole network
        if config.mode == "linear" or probing:
            model.encoder.eval()  # frozen: batch-norm statistics stay as pretrained
        for group, lr in zip(encoder_groups, encoder_lrs):
            group["base_lr"] = 0.0 if probing else lr

    def validate(evaluated: Classifier, state) -> dict:
        # Trick: validation only every `val_every` epochs (4 views of 1,183 images: ~6 s of an 60-100 s float32
        # epoch, and of a 28 s bf16 one), always after the last, which is the one shipped
        last = trainer.ending or state.epoch >= state.horizon_epochs or (max_steps is not None and state.step >= max_steps)
        if state.epoch % config.val_every and not last:
            return {}
        return {"val_macro_f1": macro_f1(evaluated, val, val_labels, input_size, len(classes), config.tta,
                                          preprocessing.get("resample", "grid"))}

    meta = {"illustra_kind": "finetune-checkpoint", "config": config.to_dict()}
    final = trainer.fit(task, model, optimizer, resume=resume, max_steps=max_steps, end_of_epoch=validate,
                        checkpoint_meta=meta, before_epoch=frozen_encoder_stays_frozen)
    state = trainer.state
    training = {"config": config.to_dict(), "epochs": state.epoch, "seconds": round(state.seconds, 1),
                "train_seconds": round(state.train_seconds, 1), "setup_seconds": round(state.setup_seconds, 1),
                "train_images": int(len(train_labels)), "encoder": str(encoder_path) if config.mode != "scratch" else None,
                "device": str(trainer.device), "precision": trainer.precision,
                "precision_probe": trainer.state.precision_probe, "world_size": trainer.world,
                "profile": config.profile or "custom", "history": state.history}
    if trainer.is_main:
        save_classifier(run_dir / CLASSIFIER, final.cpu(), classes, architecture, preprocessing, training)
        (run_dir / "metrics.json").write_text(json.dumps(training, indent=2), encoding="utf-8")
        if trainer.writer is not None:
            trainer.writer.close()
    barrier()
    return training


def class_counts_array(labels: np.ndarray, classes: int) -> np.ndarray:
    """Images per class id."""
    return np.bincount(labels, minlength=classes)


def class_weights_array(counts: np.ndarray) -> np.ndarray:
    """N / (K * n_c) per class id (0 for absent classes)."""
    import pandas as pd

    return class_weights(pd.Series(counts)).to_numpy()
