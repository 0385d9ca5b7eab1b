"""SimCLR pretraining of our encoder from random initialisation, on the pixel cache.

What is SimCLR's own here: two batched views per image (augment.py) run in one forward pass,
lightly's NTXentLoss with negatives gathered across ranks (or, with `local_crops`, multi-crop: small
extra views in a second pass and a multi-positive NT-Xent over all views; the decoupled loss with `loss: dcl`;
NNCLR's nearest-neighbour positives with `nn_bank`), AdamW (or LARS) with the lr scaled
linearly with the global batch, a kNN monitor on a labelled slice and an encoder snapshot at each
monitor point. Everything else (device, seeding, warm-up + cosine, the time budget, bf16 +
channels_last, DDP, atomic checkpoints with exact resume, progress, TensorBoard) is the training
core's (`illustra.train`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from illustra.config import build, yaml_defaults
from illustra.errors import UserError
from illustra.ssl.augment import ViewConfig, make_view, to_float
from illustra.ssl.encoder import Encoder, EncoderConfig, load_encoder
from illustra.ssl.knn import knn_monitor
from illustra.train.device import barrier, cpu_bf16, cpu_precision_probe, distributed, full_precision
from illustra.train.loop import LoopSettings, RunState, Trainer, tensorboard_writer
from illustra.train.random import device_generator, rand
from illustra.weights import save_weights

ENCODER_FILE = "encoder.safetensors"
__all__ = ["ENCODER_FILE", "PretrainConfig", "SimCLR", "export_encoder", "load_encoder", "make_optimizer",
           "multi_view_ntxent", "pretrain"]


@dataclass(frozen=True)
@yaml_defaults("ssl.yaml")
class PretrainConfig:
    """Everything that shapes a pretraining run (configs/ssl.yaml, overlaid by the device profile)."""

    encoder: EncoderConfig
    views: ViewConfig
    view_size: int  # pixels of SimCLR's two views (0: `encoder.input_size`); the encoder is still read (kNN monitor,
    #                 embeddings, fine-tuning) at `encoder.input_size`: train small, read larger (FixRes)
    local_crops: int  # multi-crop: extra small views per image (0: plain two-view SimCLR)
    local_size: int
    local_crop_scale: tuple[float, float]
    epochs: int
    batch_size: int
    optimizer: str  # adamw | lars
    lr: float  # for batch 256; scaled linearly with the global batch
    weight_decay: float
    warmup_epochs: float
    ema_decay: float  # EMA of the weights per step (the averaged encoder is monitored and exported); 0: off
    temperature: float
    loss: str  # ntxent (SimCLR) | dcl (decoupled: the positive leaves the denominator; Yeh et al. 2021)
    forward_chunk: int  # views per forward pass (ghost batch norm over a shuffled batch); 0: the whole batch at once
    nn_bank: int  # NNCLR positives: each view's partner is its nearest neighbour in a bank of this many past
    #               projections (Dwibedi et al. 2021); 0: off (the view itself, plain SimCLR)
    projection_hidden: int
    projection_dim: int
    knn_every: int  # epochs between kNN monitor runs (0: never)
    knn_k: int
    seed: int
    time_budget_s: float  # 0: no budget
    checkpoint_every_s: float  # 0: a resume checkpoint after every epoch; else at most this often
    threads: int  # torch CPU threads; 0: all cores
    channels_last_cpu: bool  # channels_last on CPU too (CUDA always uses it); see benchmarks/RESULTS.md
    precision_cpu: str  # fp32 | bf16 | auto (bf16 where the CPU has native bf16); CUDA always trains in bf16
    profile: str = ""  # the device profile the config was resolved with (recorded in the weights)

    @classmethod
    def from_dict(cls, raw: dict) -> PretrainConfig:
        """Build from a YAML dict (nested `encoder` and `views` sections); unknown keys are an error."""
        return build(cls, raw)

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


def make_optimizer(model: nn.Module, config: PretrainConfig, world: int = 1) -> torch.optim.Optimizer:
    """AdamW or LARS at the peak lr (scaled linearly with the global batch); no weight decay on norms and biases."""
    peak = config.lr * config.batch_size * world / 256
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "lars":
        from lightly.utils.lars import LARS

        return LARS(groups, lr=peak, momentum=0.9)
    if config.optimizer != "adamw":
        raise ValueError(f"unknown optimizer {config.optimizer!r}: use adamw or lars")
    return torch.optim.AdamW(groups, lr=peak, betas=(0.9, 0.99))


def export_encoder(path: Path, encoder: Encoder, config: PretrainConfig, preprocessing: dict, training: dict) -> Path:
    """The encoder alone, with architecture, preprocessing and profile in its metadata."""
    tensors = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    return save_weights(path, tensors, {"illustra_kind": "encoder", "architecture": config.encoder.to_dict(),
                                        "preprocessing": preprocessing, "training": training,
                                        "profile": config.profile or "custom"})


def multi_view_ntxent(projections: list[torch.Tensor], temperature: float, gather: bool = False,
                      decoupled: bool = False) -> torch.Tensor:
    """NT-Xent over V views of the same B images: every other view of an image is a positive, every view of
    another image a negative; the loss is the mean over anchors of the mean -log softmax of its positives.

    With V = 2 this is SimCLR's NT-Xent (lightly's `NTXentLoss`) exactly; with local crops it is the
    multi-crop form of SwAV/solo-learn. `gather` adds the other ranks' views as negatives (DDP).
    `decoupled` takes every positive out of the softmax's denominator (DCL; with V = 2, lightly's `DCLLoss`).
    """
    from lightly.utils import dist as lightly_dist

    views, batch = len(projections), projections[0].shape[0]
    anchors = F.normalize(torch.cat(projections), dim=1)  # (V*B, d), view-major
    bank, offset = anchors, 0
    if gather and lightly_dist.world_size() > 1:
        bank = torch.cat(lightly_dist.gather(anchors))
        offset = lightly_dist.rank() * len(anchors)
    logits = anchors @ bank.T / temperature
    rows = torch.arange(len(anchors), device=anchors.device)
    logits[rows, rows + offset] = float("-inf")  # never its own positive or negative
    image = rows % batch
    positive = torch.zeros_like(logits, dtype=torch.bool)
    positive[:, offset:offset + len(anchors)] = image.view(-1, 1) == image.view(1, -1)
    positive[rows, rows + offset] = False
    if decoupled:  # each positive against the negatives alone
        log_prob = logits - logits.masked_fill(positive, float("-inf")).logsumexp(dim=1, keepdim=True)
    else:
        log_prob = logits.log_softmax(dim=1)
    return -(log_prob.masked_fill(~positive, 0.0).sum(1) / (views - 1)).mean()


def view_size(config: PretrainConfig) -> int:
    """Pixels of SimCLR's views: `view_size`, or the encoder's input size.

    Trick (FixRes, Touvron et al. 2019, as a speed lever): on a CPU short of compute, views of 24 px cost about
    0.57x those of 32 px, so 1.7x the epochs fit a budget, and the encoder, fully convolutional, is then read at
    32 px, where random-resized-crop training shows objects larger than whole images do (float32 CPU, 10 min of
    lr 0.016 + DCL + temperature 0.1: 12 epochs instead of 7, kNN macro-F1 0.350 -> 0.389; off by default, its
    classifier does not gain; benchmarks/RESULTS.md, "SimCLR's views smaller than the encoder's reading size")."""
    return int(config.view_size) or int(config.encoder.input_size)


class SimCLRTask:
    """SimCLR's batches (two views of this rank's share of a fresh permutation, plus `local_crops` small
    ones) and its loss."""

    def __init__(self, data: torch.Tensor, config: PretrainConfig, trainer: Trainer, steps_per_epoch: int) -> None:
        from lightly.loss import NTXentLoss

        self.data, self.config, self.trainer, self.steps = data, config, trainer, steps_per_epoch
        self.criterion = NTXentLoss(temperature=config.temperature, gather_distributed=trainer.world > 1)
        self.local_views = replace(config.views, crop_scale=config.local_crop_scale)  # multi-crop's small views
        self.bank: torch.Tensor | None = None  # NNCLR's support set: this rank's last `nn_bank` projections
        self.bank_filled = self.bank_next = 0

    def batches(self, epoch: int, random, device: torch.device):
        order = torch.randperm(len(self.data), generator=random.cpu_generator(epoch))  # same on every rank
        share = order[self.trainer.rank::self.trainer.world]
        size, batch = view_size(self.config), self.config.batch_size
        for step in range(self.steps):
            images = to_float(self.data[share[step * batch:(step + 1) * batch]].to(device, non_blocking=True))
            views = torch.cat([make_view(images, size, self.config.views, random.torch),
                               make_view(images, size, self.config.views, random.torch)])
            inverse = None
            if 0 < self.config.forward_chunk < len(views):  # chunked forward: the views in a random order
                order = rand(len(views), random.torch, views).argsort()
                views, inverse = views[order], order.argsort()
            small = None
            if self.config.local_crops:
                small = self.trainer.to_input(torch.cat([make_view(images, self.config.local_size, self.local_views,
                                                                   random.torch) for _ in range(self.config.local_crops)]))
            yield self.trainer.to_input(views), inverse, small

    def project(self, model: nn.Module, views: torch.Tensor, inverse: torch.Tensor | None) -> torch.Tensor:
        """Projections of the global views, in their batch order (view-major).

        Trick: with `forward_chunk`, the forward runs over chunks of that many views (a single backward still
        follows the one loss), so each layer works on activations that stay in the CPU's caches: at 128 of 512,
        1.36x the epochs per minute on 2 float32 Zen 3 cores (benchmarks/RESULTS.md). Batch norm then normalises
        per chunk (ghost batch norm); `batches` shuffles the views first, so that an image's two views share a
        chunk only by chance and the chunk's statistics cannot tell a positive from a negative (MoCo's shuffled BN).
        """
        if inverse is None:
            return model(views)
        return torch.cat([model(part) for part in views.split(self.config.forward_chunk)])[inverse]

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        views, inverse, small = batch
        projections = self.project(model, views, inverse)  # Trick: both views in one forward pass
        decoupled = self.config.loss == "dcl"
        if small is None and not decoupled and not self.config.nn_bank:
            with full_precision(projections.device):  # the contrastive logits in float32, outside bf16
                first, second = projections.float().chunk(2)
                return self.criterion(first, second)
        if small is not None:  # local views at their own size: a second pass
            small = model(small)
        with full_precision(projections.device):
            first, second = projections.float().chunk(2)
            rest = list(small.float().chunk(self.config.local_crops)) if small is not None else []

            def contrast(views: list[torch.Tensor]) -> torch.Tensor:
                return multi_view_ntxent(views, self.config.temperature, gather=self.trainer.world > 1,
                                         decoupled=decoupled)

            if not self.config.nn_bank:
                return contrast([first, second, *rest])
            # NNCLR: each global view's partner is the other view's nearest neighbour in the bank (no gradient
            # through it), both ways, as lightly's NNCLR example; the bank then takes the second views.
            neighbour_first, neighbour_second = self.neighbours(first), self.neighbours(second)
            self.remember(second)
            return 0.5 * (contrast([neighbour_first, second, *rest]) + contrast([first, neighbour_second, *rest]))

    def neighbours(self, projections: torch.Tensor) -> torch.Tensor:
        """Each row's nearest neighbour (cosine) among the bank's filled rows; the row itself, detached, while
        the bank is empty."""
        unit = F.normalize(projections.detach(), dim=1)
        if not self.bank_filled:
            return unit
        bank = self.bank[:self.bank_filled]
        return bank[(unit @ bank.T).argmax(dim=1)]

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The bank, for the checkpoint (under DDP, rank 0's: every rank resumes with it)."""
        if self.bank is None:
            return {}
        return {"nn_bank": self.bank, "nn_bank_pointer": torch.tensor([self.bank_filled, self.bank_next])}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if "nn_bank" in tensors:
            self.bank = tensors["nn_bank"].to(self.trainer.device, torch.float32)
            self.bank_filled, self.bank_next = (int(v) for v in tensors["nn_bank_pointer"])
        else:  # saved before the bank existed (or put back after the training core's precision probe): empty
            self.bank, self.bank_filled, self.bank_next = None, 0, 0

    def remember(self, projections: torch.Tensor) -> None:
        """Write this batch's projections into the bank, first in, first out."""
        size = self.config.nn_bank
        unit = F.normalize(projections.detach(), dim=1)[-size:]
        if self.bank is None:
            self.bank = unit.new_zeros(size, unit.shape[1])
        rows = (self.bank_next + torch.arange(len(unit), device=unit.device)) % size
        self.bank[rows] = unit
        self.bank_next = (self.bank_next + len(unit)) % size
        self.bank_filled = min(size, self.bank_filled + len(unit))


def pretrain(
    pixels: np.ndarray, labels: np.ndarray, run_dir: str | Path, config: PretrainConfig,
    preprocessing: dict, *, resume: bool = False, progress: bool = True, max_steps: int | None = None,
    budget_clock: float = 0.0,
) -> dict:
    """Train SimCLR on uint8 pixels (N, S, S, 3); write checkpoint, encoder and metrics to run_dir.

    `labels` are used only by the kNN monitor (a label-free run passes -1 everywhere). `budget_clock` (a
    time.perf_counter() value) is when the job began: its loading counts against the time budget.
    """
    budget_clock = budget_clock or time.perf_counter()
    run_dir = Path(run_dir)
    if config.local_crops < 0 or (config.local_crops and not 4 <= config.local_size <= view_size(config)):
        raise UserError(f"local_crops={config.local_crops}, local_size={config.local_size}: use local_crops >= 0 "
                        f"and a local_size between 4 and the view size ({view_size(config)})")
    if not 0 <= config.view_size <= int(preprocessing.get("cache_size", config.view_size)) or 0 < config.view_size < 8:
        raise UserError(f"view_size={config.view_size}: use 0 (the encoder's input size) or 8 to the pixel cache's "
                        f"{preprocessing.get('cache_size')} px")
    if config.loss not in ("ntxent", "dcl"):
        raise UserError(f"unknown loss {config.loss!r}: use ntxent or dcl")
    if config.forward_chunk < 0:
        raise UserError(f"forward_chunk={config.forward_chunk}: use 0 (the whole batch in one pass) or the views per pass")
    if config.nn_bank < 0:
        raise UserError(f"nn_bank={config.nn_bank}: use 0 (off) or the number of past projections to keep")
    if config.threads:
        torch.set_num_threads(config.threads)
    data = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2)  # uint8, stays uint8 in RAM
    _, world = distributed()
    steps_per_epoch = len(data) // (config.batch_size * world)
    if steps_per_epoch < 1:
        raise UserError(f"{len(data)} images are fewer than one global batch of {config.batch_size * world}: "
                        "use a smaller --set batch_size=...")
    settings = LoopSettings(epochs=config.epochs, steps_per_epoch=steps_per_epoch, seed=config.seed,
                            warmup_epochs=config.warmup_epochs, time_budget_s=config.time_budget_s,
                            budget_clock=budget_clock, label="ssl",
                            checkpoint_every_s=config.checkpoint_every_s, ema_decay=config.ema_decay,
                            cpu_channels_last=config.channels_last_cpu,
                            cpu_bf16=cpu_bf16(config.precision_cpu),
                            cpu_precision_probe=cpu_precision_probe(config.precision_cpu), print_epochs=True)
    trainer = Trainer(settings, run_dir, progress=progress)
    trainer.writer = tensorboard_writer(run_dir) if trainer.is_main else None
    model = trainer.prepare(SimCLR(config))
    optimizer = make_optimizer(model, config, trainer.world)

    def monitor(evaluated: SimCLR, state: RunState) -> dict:
        """kNN monitor and an encoder snapshot every `knn_every` epochs and at the end."""
        if not config.knn_every or (state.epoch % config.knn_every and state.epoch < state.horizon_epochs
                                    and not trainer.ending):
            return {}
        scores = knn_monitor(evaluated.encoder, data, labels, config, trainer.device)
        evaluated.train()
        snapshot = run_dir / "snapshots" / f"encoder_e{state.epoch:03d}.safetensors"
        export_encoder(snapshot, evaluated.encoder, config, preprocessing, {"epochs": state.epoch})
        return scores

    meta = {"illustra_kind": "ssl-checkpoint", "config": config.to_dict(), "preprocessing": preprocessing}
    model = trainer.fit(SimCLRTask(data, config, trainer, steps_per_epoch), model, optimizer, resume=resume,
                        max_steps=max_steps, end_of_epoch=monitor, checkpoint_meta=meta)
    state = trainer.state
    training = {"epochs": state.epoch, "steps": state.step,
                "wall_seconds": round(state.setup_seconds + state.seconds, 1),  # what the budget counts
                "train_seconds": round(state.train_seconds, 1), "setup_seconds": round(state.setup_seconds, 1),
                "view_images_per_second": round(state.images_seen / state.train_seconds if state.train_seconds
                                                else 0.0, 1),
                "world_size": trainer.world, "device": str(trainer.device), "precision": trainer.precision,
                "precision_probe": trainer.state.precision_probe,
                "profile": config.profile or "custom", "config": config.to_dict(), "history": state.history}
    if trainer.is_main:
        export_encoder(run_dir / ENCODER_FILE, model.encoder, config, preprocessing, training)
        (run_dir / "metrics.json").write_text(json.dumps(training, indent=2), encoding="utf-8")
        if trainer.writer is not None:
            _projector(trainer.writer, model.encoder, data, labels, config)
            trainer.writer.close()
    barrier()
    return training


def _projector(writer, encoder: Encoder, data: torch.Tensor, labels: np.ndarray, config: PretrainConfig,
               count: int = 500) -> None:
    """TensorBoard embedding projector with thumbnails for a fixed sample of images."""
    from illustra.ssl.embed import embed_tensor

    picks = torch.randperm(len(data), generator=device_generator("cpu", 0))[:count]
    images = data[picks]
    features = embed_tensor(encoder, images, config.encoder.input_size)
    writer.add_embedding(torch.from_numpy(features), metadata=[int(labels[i]) for i in picks],
                         label_img=images.float() / 255.0, tag="encoder")
