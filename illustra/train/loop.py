"""The training loop every stage uses: a stage gives its model, optimizer, loss and batches; the core does the rest.

Each trick is named where it is applied below: seeding before the model is built, one generator
per device, channels_last + bf16 autocast on CUDA (and CPUs with native bf16), DDP under torchrun, linear warm-up + cosine
(or the stage's own torch scheduler), the time budget that shortens the horizon (or a hard
deadline for single-epoch jobs), EMA of the weights, an atomic safetensors checkpoint every epoch
with exact resume (model, optimizer, EMA, every random stream), a progress bar and TensorBoard.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from illustra.errors import UserError
from illustra.train.checkpoint import optimizer_tensors, restore_optimizer
from illustra.train.device import (
    agreed_int,
    autocast,
    compute_dtype,
    distributed,
    memory_format,
    pick_device,
    too_narrow_for_cpu_channels_last,
)
from illustra.train.ema import EMA
from illustra.train.random import RunRandom, seed_everything
from illustra.train.schedule import budgeted_horizon, warmup_cosine
from illustra.weights import load_weights, save_weights, with_prefix

CHECKPOINT = "checkpoint.safetensors"
PROBE_ROUNDS = 4     # the CPU precision probe: a warm-up round, then the fastest of three steps in each precision
PROBE_MARGIN = 0.85  # bf16 (less exact) only where its step takes under 85 % of float32's: clear of timing noise
_PROBED: dict = {}   # this process's probe results, by model and batch shapes


@dataclass(frozen=True)
class LoopSettings:
    """How the core runs a stage's training (the stage's own config fills these)."""

    epochs: int
    steps_per_epoch: int
    seed: int = 0
    warmup_epochs: float = 0.0
    time_budget_s: float = 0.0       # 0: none. Wall time: the epochs, their validation and checkpoints, and the
                                     #   set-up since `budget_clock`
    budget_clock: float = 0.0        # time.perf_counter() when the job's budget began (its loading and set-up count
                                     #   too); 0: when `fit` begins
    hard_deadline: bool = False      # stop mid-epoch when the budget is spent (single-epoch jobs)
    checkpoint_every_s: float = 0.0  # 0: a checkpoint after every epoch; else at most this often, and after the last
    ema_decay: float = 0.0           # 0: off
    label: str = "train"             # progress bar and TensorBoard prefix
    log_every: int = 10              # steps between TensorBoard points
    cpu_channels_last: bool = False  # channels_last on CPU too (only where it measured faster)
    cpu_bf16: bool = False           # bf16 autocast on CPU too (`precision_cpu`; only with native bf16)
    cpu_precision_probe: bool = False  # with cpu_bf16 (`precision_cpu: auto`): time a step in bf16 and in float32
                                     #   before the first epoch and train in bf16 only where it is clearly faster
    device: str | None = None        # None: --device / ILLUSTRA_DEVICE, else auto
    print_epochs: bool = False       # one JSON line per epoch on the main rank

    def __post_init__(self) -> None:  # every stage's EMA: 1.0 would export the initial weights, silently
        if not 0.0 <= self.ema_decay < 1.0:
            raise UserError(f"ema_decay={self.ema_decay}: use 0 (off) or a decay in (0, 1), e.g. 0.996")


@dataclass
class RunState:
    """Where a run stands; saved in every checkpoint."""

    epoch: int = 0
    step: int = 0
    horizon_epochs: int = 0
    seconds: float = 0.0             # wall time of the epochs: training, epoch-end evaluation, checkpoint writes
    train_seconds: float = 0.0       # of which training steps alone (throughput)
    setup_seconds: float = 0.0       # the job's time before its first epoch (each start, a resume's too)
    images_seen: int = 0
    history: list = field(default_factory=list)
    precision: str = ""              # what the run trains in (bf16 | fp32), fixed at its first start ...
    precision_device: str = ""       # ... on this kind of device (a resume elsewhere decides afresh)
    precision_probe: dict = field(default_factory=dict)  # the probe's seconds a step, when it ran


class Task(Protocol):
    """What a stage brings: its batches and its loss (plus optional epoch-end metrics)."""

    def batches(self, epoch: int, random: RunRandom, device: torch.device) -> Iterator[Any]:
        """This rank's batches of one epoch (the first element of each batch is counted as images)."""

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """The training loss of one batch (called under the core's autocast)."""

    # Optional: a task with state of its own (NNCLR's bank) gives `state_tensors() -> dict[str, Tensor]` and
    # `load_state_tensors(tensors)`; the checkpoint keeps them under "task.", so a resume stays exact.


class Trainer:
    """Runs a Task. Make it first (it seeds everything), then build the model, then `prepare`, then `fit`."""

    def __init__(self, settings: LoopSettings, run_dir: str | Path | None = None, *, progress: bool | Any = True,
                 writer: Any = None) -> None:
        self.settings = settings
        self.rank, self.world = distributed()
        self.device = pick_device(settings.device)
        seed_everything(settings.seed)  # Trick: everything seeded before the model exists, so init is reproducible
        self.random = RunRandom(self.device, settings.seed, self.rank)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.progress = progress
        self.writer = writer
        self.state = RunState(horizon_epochs=settings.epochs)
        self.ema: EMA | None = None
        self.stopped_early = False
        self.ending = False  # True while `end_of_epoch` is called again for an epoch the budget made the last
        self._task: Any = None  # the Task being fitted (its own state, if any, goes into the checkpoint)
        self._batch_images = 0  # images in the last batch (throughput)
        self._cpu_channels_last = settings.cpu_channels_last
        self._cpu_bf16 = settings.cpu_bf16

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def precision(self) -> str:
        """What the forward passes compute in: bf16 (autocast on CUDA, or on the CPU with `cpu_bf16`) or fp32."""
        return "bf16" if compute_dtype(self.device, self._cpu_bf16) == torch.bfloat16 else "fp32"

    def prepare(self, model: nn.Module) -> nn.Module:
        """The model on the run's device, in the memory format the device wants.

        channels_last on the CPU is skipped for networks with a convolution narrower than 16 channels
        (`too_narrow_for_cpu_channels_last`: a torch 2.14.1 segfault in the backward)."""
        if self.device.type == "cpu" and too_narrow_for_cpu_channels_last(model):
            self._cpu_channels_last = False
        return model.to(self.device, memory_format=memory_format(self.device, self._cpu_channels_last))

    def to_input(self, images: torch.Tensor) -> torch.Tensor:
        """A batch in the run's memory format (Trick: channels_last where it pays)."""
        return images.contiguous(memory_format=memory_format(self.device, self._cpu_channels_last))

    def fit(self, task: Task, model: nn.Module, optimizer: torch.optim.Optimizer, *,
            scheduler: Callable[[torch.optim.Optimizer, int], Any] | None = None, resume: bool = False,
            max_steps: int | None = None, end_of_epoch: Callable[[nn.Module, RunState], dict] | None = None,
            checkpoint_meta: dict | None = None, before_epoch: Callable[[nn.Module], None] | None = None) -> nn.Module:
        """Train until the (budgeted) horizon; returns the model to evaluate and ship (the EMA one when on).

        `scheduler(optimizer, total_steps)` replaces warm-up + cosine with the stage's own torch
        scheduler; `end_of_epoch(eval_model, state)` returns metrics for the history (main rank). One that runs
        only every k epochs returns {} in between; when the budget then makes that epoch the last, it is called
        again with `trainer.ending` True, so the last epoch is always evaluated.
        """
        settings = self.settings
        for group in optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
        if settings.ema_decay > 0:
            self.ema = EMA(model, settings.ema_decay)
        self._task = task
        if resume and self.run_dir is not None and (self.run_dir / CHECKPOINT).exists():
            self._restore(model, optimizer)
        state = self.state
        if self._probing:
            if state.precision and state.precision_device == self.device.type:  # a resume keeps its run's choice
                self._cpu_bf16 = state.precision == "bf16"
            else:
                began_probe = time.perf_counter()
                self._probe_cpu_precision(task, model)
                if not settings.budget_clock:  # the probe's seconds count against the budget (hard deadlines too)
                    state.setup_seconds += time.perf_counter() - began_probe
        state.precision, state.precision_device = self.precision, self.device.type
        lr_scheduler = scheduler(optimizer, settings.epochs * settings.steps_per_epoch) if scheduler else None
        trainable = model
        if self.world > 1:  # Trick: DDP under torchrun (gradients averaged across ranks, buffers from rank 0)
            trainable = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        writer = self.writer if self.is_main else None
        started_run = last_save = time.perf_counter()
        # Trick: the budget is wall time. The job's set-up before this call, and every epoch's evaluation and
        # checkpoint, count against it (they were outside it: a 20-minute fine-tuning took 21.4 minutes)
        if settings.budget_clock:
            state.setup_seconds += max(0.0, started_run - settings.budget_clock)
        saving = 0.0  # the last checkpoint write, charged to the next epoch
        while state.epoch < state.horizon_epochs:
            started = time.perf_counter()
            model.train()
            if before_epoch is not None:
                before_epoch(model)
            losses = self._epoch(task, trainable, model, optimizer, lr_scheduler, writer, max_steps, started_run)
            trained = time.perf_counter() - started
            state.train_seconds += trained
            state.epoch += 1
            evaluated = self.evaluation_model(model)
            record = {"epoch": state.epoch, "loss": float(np.mean(losses)) if losses else float("nan"),
                      "lr": optimizer.param_groups[0]["lr"],
                      "images_per_second": round(len(losses) * self._batch_images / max(trained, 1e-9), 1)}
            metrics = end_of_epoch(evaluated, state) if end_of_epoch is not None and self.is_main else {}
            state.seconds += time.perf_counter() - started + saving
            # Trick: the time budget shortens the cosine horizon (before the checkpoint, so a resume sees it too)
            state.horizon_epochs = budgeted_horizon(settings.epochs, state.epoch, state.seconds, settings.time_budget_s,
                                                   current=state.horizon_epochs, spent_outside=state.setup_seconds)
            if self.world > 1:  # each rank's clock differs (rank 0 validates): rank 0's horizon, or a rank hangs
                state.horizon_epochs = agreed_int(state.horizon_epochs, self.device)
            last = self.stopped_early or (max_steps is not None and state.step >= max_steps) \
                or state.epoch >= state.horizon_epochs
            if last and not metrics and end_of_epoch is not None and self.is_main:
                # the budget made this epoch the last after its epoch-end skipped (every-k monitors): run it as the last
                began_end, self.ending = time.perf_counter(), True
                metrics = end_of_epoch(evaluated, state)
                self.ending = False
                state.seconds += time.perf_counter() - began_end
            record.update(metrics)
            record["seconds"] = round(state.seconds, 1)
            state.history.append(record)
            if settings.print_epochs and self.is_main:
                print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}), flush=True)
            if writer is not None:
                for key, value in record.items():
                    if key != "epoch" and isinstance(value, (int, float)):
                        writer.add_scalar(f"{settings.label}/epoch_{key}", value, state.epoch)
            # Trick: checkpoints at most every `checkpoint_every_s` (model + optimiser + EMA is 132-176 MiB at width 64,
            # 0.15-0.27 s a write: after every 1.4 s GPU epoch, ~15 % of the run); a resume replays from the last exactly
            if self.is_main and self.run_dir is not None and \
                    (last or time.perf_counter() - last_save >= settings.checkpoint_every_s):
                began_save = time.perf_counter()
                self._save(model, optimizer, checkpoint_meta or {})
                last_save = time.perf_counter()
                saving = last_save - began_save
            else:
                saving = 0.0
            if last:
                break
        return self.evaluation_model(model)

    def _epoch(self, task, trainable, model, optimizer, lr_scheduler, writer, max_steps, started_run) -> list[float]:
        """One pass over the task's batches; the losses of its steps."""
        settings, state = self.settings, self.state
        warmup = round(settings.warmup_epochs * settings.steps_per_epoch)
        bar = self.progress if hasattr(self.progress, "update") else tqdm(
            total=settings.steps_per_epoch, leave=False, disable=not self.progress or not self.is_main,
            desc=f"{settings.label} epoch {state.epoch + 1}/{state.horizon_epochs}")
        losses: list[float] = []
        for batch in task.batches(state.epoch, self.random, self.device):
            if lr_scheduler is None:  # Trick: linear warm-up, then cosine to zero at the budgeted horizon
                factor = warmup_cosine(state.step, warmup, state.horizon_epochs * settings.steps_per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = group["base_lr"] * factor
            with autocast(self.device, self._cpu_bf16):  # Trick: bf16 autocast on CUDA (and native-bf16 CPUs, where faster)
                loss = task.loss(trainable, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if lr_scheduler is not None:
                lr_scheduler.step()
            if self.ema is not None:  # Trick: EMA of the weights
                self.ema.update(model, state.step)
            self._batch_images = len(batch[0]) if isinstance(batch, (tuple, list)) else len(batch)
            state.images_seen += self._batch_images * self.world
            state.step += 1
            losses.append(loss.detach())  # no per-step host sync: read back only at log points
            bar.update(1)
            if state.step % settings.log_every == 0:
                value = losses[-1].item()
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{value:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
                if writer is not None:
                    writer.add_scalar(f"{settings.label}/loss", value, state.step)
                    writer.add_scalar(f"{settings.label}/lr", optimizer.param_groups[0]["lr"], state.step)
            if max_steps is not None and state.step >= max_steps:
                break
            if settings.hard_deadline and settings.time_budget_s > 0 and \
                    state.setup_seconds + time.perf_counter() - started_run > settings.time_budget_s:
                self.stopped_early = True  # Trick: a hard deadline for single-epoch jobs (schedule set for the full length)
                break
        if bar is not self.progress:
            bar.close()
        return torch.stack(losses).float().cpu().tolist() if losses else []

    @property
    def _probing(self) -> bool:
        return self.device.type == "cpu" and self.settings.cpu_bf16 and self.settings.cpu_precision_probe

    def _probe_cpu_precision(self, task, model: nn.Module) -> None:
        """Trick (cudnn.benchmark's idea, for the CPU's precision): native bf16 is no promise of speed. bf16 autocast
        is 1.7x float32 on 2 Zen 4 cores, yet 0.8x on 2 Intel Xeon (family 6 model 207) cores with the same
        AVX512-BF16 flag (benchmarks/RESULTS.md). So time this run's own step (forward + backward of its first batch)
        in both, and train in bf16 only where it is at least `1 / PROBE_MARGIN` as fast; float32 otherwise.

        Nothing of the run moves: the batch's random draws, the weights and buffers (batch norm statistics) and a
        task's own state are put back, and no optimiser step is taken. The choice is kept per process for the same
        model, trainable parameters, batch shapes and threads (so two runs of one process agree; not under torchrun,
        where every rank probes so that the loss's collectives match) and in the checkpoint (a resume on the same
        kind of device keeps it); under torchrun rank 0's choice holds."""
        random_tensors, random_meta = self.random.state()
        task_state = {key: value.clone() for key, value in task.state_tensors().items()} \
            if hasattr(task, "state_tensors") else None  # copies: a task may update its tensors in place
        weights = {key: value.clone() for key, value in model.state_dict().items()}
        try:
            batch = next(iter(task.batches(self.state.epoch, self.random, self.device)), None)
            if batch is None:  # no batch to time: the config's precision stands
                return
            key = (type(model).__name__, tuple((tuple(p.shape), p.requires_grad) for p in model.parameters()),
                   _shapes(batch), torch.get_num_threads())
            if self.world > 1 or key not in _PROBED:  # under torchrun every rank probes: the same collectives on each
                seconds: dict[bool, list[float]] = {False: [], True: []}
                for _ in range(PROBE_ROUNDS):  # alternating, so that a slow moment of the machine hits both
                    for bf16 in (False, True):
                        began = time.perf_counter()
                        with autocast(self.device, bf16):
                            loss = task.loss(model, batch)
                        loss.backward()
                        seconds[bf16].append(time.perf_counter() - began)
                        model.zero_grad(set_to_none=True)
                fastest = {bf16: min(times[1:]) for bf16, times in seconds.items()}  # the first round warms caches
                _PROBED[key] = (fastest[True] < PROBE_MARGIN * fastest[False], fastest)
            choice, fastest = _PROBED[key]
        finally:  # the run as it was, whatever happened above
            model.load_state_dict(weights)
            self.random.restore(random_tensors, random_meta)
            if task_state is not None:
                task.load_state_tensors(task_state)
        self._cpu_bf16 = bool(agreed_int(int(choice), self.device))
        self.state.precision_probe = {"bf16_s": round(fastest[True], 4), "fp32_s": round(fastest[False], 4)}
        if self.is_main and (self.progress or self.settings.print_epochs):
            tqdm.write(f"{self.settings.label}: a step takes {1000 * fastest[True]:.0f} ms in bf16, "
                       f"{1000 * fastest[False]:.0f} ms in float32 on this CPU: training in {self.precision}")

    def evaluation_model(self, model: nn.Module) -> nn.Module:
        """The EMA weights in a copy of the model (or the model itself), eval mode."""
        return self.ema.averaged(model) if self.ema is not None else model.eval()

    def _save(self, model: nn.Module, optimizer, meta: dict) -> None:
        """Trick: model, optimizer, EMA, every random stream and progress in one atomic safetensors file."""
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        opt_tensors, opt_meta = optimizer_tensors(optimizer)
        tensors.update(opt_tensors)
        if self.ema is not None:
            tensors.update({f"ema.{k}": v for k, v in self.ema.state.items()})
        rng_tensors, rng_meta = self.random.state()
        tensors.update(rng_tensors)
        if hasattr(self._task, "state_tensors"):
            tensors.update({f"task.{k}": v for k, v in self._task.state_tensors().items()})
        save_weights(self.run_dir / CHECKPOINT, tensors, {**meta, "state": asdict(self.state), "optimizer": opt_meta,
                                                          "random": rng_meta})

    def _restore(self, model: nn.Module, optimizer) -> None:
        """Exact resume: everything `_save` wrote, so the run continues as if never stopped."""
        tensors, meta = load_weights(self.run_dir / CHECKPOINT, self.device)
        model.load_state_dict(with_prefix(tensors, "model"))
        restore_optimizer(optimizer, tensors, meta["optimizer"])
        if self.ema is not None:
            self.ema.state = {k: v.float() for k, v in with_prefix(tensors, "ema").items()}
        self.random.restore(tensors, meta["random"])
        if hasattr(self._task, "load_state_tensors"):
            self._task.load_state_tensors(with_prefix(tensors, "task"))
        self.state = RunState(**meta["state"])
        if not self.state.precision:  # written before the precision probe: it trained as the settings said, go on so
            self.state.precision, self.state.precision_device = self.precision, self.device.type
        if self.is_main:
            print(f"resumed {self.settings.label} from epoch {self.state.epoch} (step {self.state.step})", flush=True)


def _shapes(batch: Any) -> Any:
    """The tensor shapes of a batch (nested tuples, lists and dicts), as a hashable key."""
    if isinstance(batch, torch.Tensor):
        return tuple(batch.shape)
    if isinstance(batch, (tuple, list)):
        return tuple(_shapes(item) for item in batch)
    if isinstance(batch, dict):
        return tuple((key, _shapes(value)) for key, value in sorted(batch.items()))
    return None


def tensorboard_writer(run_dir: str | Path):
    """TensorBoard writer under run_dir/tb, or None when tensorboard is missing (every long job uses this one)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover
        return None
    return SummaryWriter(str(Path(run_dir) / "tb"))
