"""The training core: device guard, seeding, schedule, budget, EMA, exact resume, profiles, DDP fine-tuning."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import free_port
from torch import nn

from illustra.config import load_config
from illustra.ssl.augment import ViewConfig, make_view, to_float
from illustra.train.device import DeviceError, pick_device
from illustra.train.loop import CHECKPOINT, LoopSettings, Trainer
from illustra.train.profiles import resolve_profile
from illustra.train.random import GeneratorDeviceError, RunRandom, device_generator, rand
from illustra.train.schedule import budgeted_horizon, warmup_cosine
from illustra.weights import read_metadata

REPO = Path(__file__).resolve().parent.parent


# --- device guard -------------------------------------------------------------------------------------------


def test_a_draw_with_a_generator_on_another_device_fails_loudly():
    """The CUDA crash of issue #14 (CPU generator, GPU batch), reproduced on a CPU with the meta device."""
    on_meta = torch.empty(4, 3, 8, 8, device="meta")
    with pytest.raises(GeneratorDeviceError, match="generator on cpu"):
        rand(4, device_generator("cpu", 0), on_meta)
    with pytest.raises(GeneratorDeviceError):
        make_view(on_meta, 8, ViewConfig(), device_generator("cpu", 0))  # every augmentation draws through the guard


def test_same_device_draws_pass_and_are_seeded():
    images = to_float(torch.randint(0, 256, (4, 16, 16, 3), dtype=torch.uint8))
    a = make_view(images, 8, ViewConfig(), device_generator("cpu", 5))
    b = make_view(images, 8, ViewConfig(), device_generator("cpu", 5))
    assert torch.equal(a, b)


def test_generators_are_made_only_by_the_core():
    """Nothing outside illustra/train/random.py makes a torch.Generator (so none can sit on the wrong device)."""
    offenders = []
    for path in (REPO / "illustra").rglob("*.py"):
        if path.name == "random.py" and path.parent.name == "train":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            func = getattr(node, "func", None) if isinstance(node, ast.Call) else None
            if isinstance(func, ast.Attribute) and func.attr == "Generator" and getattr(func.value, "id", "") == "torch":
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, offenders


def test_every_stage_draws_on_its_batch_device():
    """Each stage's batch maker draws its augmentation with the run's generator, on the batch's device."""
    from illustra.finetune.train import ClassifierTask, FinetuneConfig
    from illustra.ssl.pretrain import PretrainConfig, SimCLRTask

    trainer = Trainer(LoopSettings(epochs=1, steps_per_epoch=1), progress=False)
    pixels = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8)
    ssl = SimCLRTask(pixels, PretrainConfig(batch_size=8), trainer, 1)
    views, _, _ = next(ssl.batches(0, trainer.random, trainer.device))
    labels = np.arange(32) % 4
    ft = ClassifierTask(pixels.permute(0, 2, 3, 1), labels, FinetuneConfig(batch_size=8, imbalance="none"), 16, None,
                        trainer, 1)
    batch, target, _ = next(ft.batches(0, trainer.random, trainer.device))
    assert trainer.random.torch.device.type == views.device.type == batch.device.type == target.device.type


def test_forcing_cuda_without_a_gpu_is_one_clear_sentence():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(DeviceError, match="no usable CUDA GPU"):
        pick_device("cuda")
    assert pick_device("auto").type == "cpu" and pick_device("cpu").type == "cpu"
    with pytest.raises(DeviceError, match="unknown device"):
        pick_device("tpu")


# --- schedule, budget ---------------------------------------------------------------------------------------


def test_warmup_then_cosine_to_zero():
    factors = [warmup_cosine(step, 10, 100) for step in range(101)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))
    assert factors[100] == pytest.approx(0.0, abs=1e-9)


def test_budget_shortens_the_horizon_never_below_what_is_done():
    assert budgeted_horizon(30, 0, 0.0, 100) == 30
    assert budgeted_horizon(30, 2, 20.0, 100) == 10  # 10 s per epoch, 100 s budget
    assert budgeted_horizon(30, 5, 100.0, 60) == 5
    assert budgeted_horizon(30, 2, 2.0, 0) == 30
    assert budgeted_horizon(30, 2, 20.0, 100, spent_outside=30.0) == 7  # 30 s of loading: 70 s left for epochs
    assert budgeted_horizon(30, 2, 20.0, 100, spent_outside=300.0) == 2


def test_an_annealed_horizon_is_never_extended():
    # 23 epochs done of a 23-epoch horizon (lr at zero); a faster pace would now fit 25: the run is over
    assert budgeted_horizon(60, 23, 1345.9, 1500, current=23) == 23
    assert budgeted_horizon(60, 23, 1345.9, 1500) == 25  # what it did before
    # before the end the estimate may still move either way
    assert budgeted_horizon(60, 20, 1164.6, 1500, current=26) == 25
    assert budgeted_horizon(60, 20, 1000.0, 1500, current=26) == 30


# --- the loop on a toy task: EMA, deadline, exact resume ---------------------------------------------------


class ToyTask:
    """Noisy linear regression whose batches draw from the core's streams (torch and NumPy)."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def batches(self, epoch, random: RunRandom, device):
        order = random.epoch_order(epoch).permutation(64)
        for step in range(self.steps):
            x = torch.from_numpy(order[step * 8:(step + 1) * 8]).float().view(-1, 1) / 64
            noise = rand(8, random.torch, x).view(-1, 1) * 0.1 + float(random.numpy.random())
            yield (x.to(device), (3 * x + noise).to(device))

    def loss(self, model, batch):
        x, y = batch
        return nn.functional.mse_loss(model(x), y)


class Killed(RuntimeError):
    """A run stopped from outside (the process killed) at the end of an epoch, before its checkpoint."""


def _toy_run(run_dir, epochs=4, resume=False, max_steps=None, checkpoint_every_s=0.0, kill_after=None):
    settings = LoopSettings(epochs=epochs, steps_per_epoch=4, seed=3, warmup_epochs=1, ema_decay=0.9, label="toy",
                            checkpoint_every_s=checkpoint_every_s)
    trainer = Trainer(settings, run_dir, progress=False)
    model = trainer.prepare(nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)

    def metrics(m, state):
        if kill_after is not None and state.epoch >= kill_after:
            raise Killed
        return {"weight_sum": float(sum(p.detach().sum() for p in m.parameters()))}

    final = trainer.fit(ToyTask(4), model, optimizer, resume=resume, max_steps=max_steps, end_of_epoch=metrics)
    return final, trainer


def test_trainer_resumes_bit_identically_with_ema(tmp_path):
    full, trainer = _toy_run(tmp_path / "full")
    assert trainer.state.epoch == 4 and trainer.state.step == 16 and trainer.state.history[-1]["loss"] < \
        trainer.state.history[0]["loss"]
    _toy_run(tmp_path / "cut", max_steps=8)  # "killed" after epoch 2's checkpoint
    assert read_metadata(tmp_path / "cut" / CHECKPOINT)["state"]["epoch"] == 2
    resumed, trainer = _toy_run(tmp_path / "cut", resume=True)
    assert trainer.state.epoch == 4 and len(trainer.state.history) == 4
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name  # the EMA weights, bit for bit


def test_sparse_checkpoints_resume_from_the_last_one_bit_identically(tmp_path):
    full, _ = _toy_run(tmp_path / "full")
    cut = tmp_path / "cut"
    with pytest.raises(Killed):  # an hour between checkpoints: killed in epoch 3, nothing was saved
        _toy_run(cut, checkpoint_every_s=3600, kill_after=3)
    assert not (cut / CHECKPOINT).exists()
    _toy_run(cut, checkpoint_every_s=3600, max_steps=8)  # a deliberate stop saves (epoch 2) ...
    assert read_metadata(cut / CHECKPOINT)["state"]["epoch"] == 2
    with pytest.raises(Killed):  # ... then a resumed run is killed after epoch 3, before any new checkpoint
        _toy_run(cut, checkpoint_every_s=3600, resume=True, kill_after=3)
    assert read_metadata(cut / CHECKPOINT)["state"]["epoch"] == 2
    resumed, trainer = _toy_run(cut, checkpoint_every_s=3600, resume=True)  # replays epoch 3 from epoch 2's state
    assert trainer.state.epoch == 4 and read_metadata(cut / CHECKPOINT)["state"]["epoch"] == 4  # the last is saved
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_hard_deadline_stops_mid_epoch(tmp_path):
    settings = LoopSettings(epochs=1, steps_per_epoch=10_000, time_budget_s=1e-9, hard_deadline=True)
    trainer = Trainer(settings, progress=False)
    model = trainer.prepare(nn.Linear(1, 1))

    class Endless(ToyTask):
        def batches(self, epoch, random, device):
            while True:
                yield (torch.ones(2, 1), torch.ones(2, 1))

    trainer.fit(Endless(0), model, torch.optim.SGD(model.parameters(), 0.1))
    assert trainer.state.step == 1 and trainer.stopped_early


class Sleepy(ToyTask):
    """The toy task with a set wall time per epoch (seconds by epoch index; the last value repeats)."""

    def __init__(self, steps: int, epoch_seconds: list[float]) -> None:
        super().__init__(steps)
        self.epoch_seconds = epoch_seconds

    def batches(self, epoch, random, device):
        time.sleep(self.epoch_seconds[min(epoch, len(self.epoch_seconds) - 1)])
        yield from super().batches(epoch, random, device)


def _budget_run(budget_s, epoch_seconds, end_of_epoch, budget_clock=0.0, epochs=50):
    settings = LoopSettings(epochs=epochs, steps_per_epoch=2, seed=0, time_budget_s=budget_s, budget_clock=budget_clock)
    trainer = Trainer(settings, progress=False)
    model = trainer.prepare(nn.Linear(1, 1))
    began = time.perf_counter()
    trainer.fit(Sleepy(2, epoch_seconds), model, torch.optim.SGD(model.parameters(), 0.01),
                end_of_epoch=lambda m, state: end_of_epoch(trainer, state))
    return trainer, time.perf_counter() - began


def test_the_budget_is_wall_time_with_evaluation_and_set_up_counted():
    def slow_validation(trainer, state):  # a 0.25 s evaluation after a 0.01 s epoch (was outside the budget)
        time.sleep(0.25)
        return {"val": 1.0}

    trainer, wall = _budget_run(1.5, [0.01], slow_validation)
    assert 4 <= trainer.state.epoch <= 6, trainer.state.history  # 50 epochs before (training alone fits them)
    assert wall < 1.5 + 0.3
    assert trainer.state.seconds == pytest.approx(wall, abs=0.1) and trainer.state.train_seconds < 0.3
    # a job that spent 1 s loading before `fit` has 0.5 s left of its 1.5 s
    trainer, wall = _budget_run(1.5, [0.01], slow_validation, budget_clock=time.perf_counter() - 1.0)
    assert trainer.state.epoch <= 2 and trainer.state.setup_seconds == pytest.approx(1.0, abs=0.1)


def test_an_every_k_monitor_still_evaluates_the_epoch_the_budget_makes_the_last():
    def every_third(trainer, state):
        if state.epoch % 3 and state.epoch < state.horizon_epochs and not trainer.ending:
            return {}
        return {"val": float(state.epoch)}

    # three quick epochs (the horizon is then 20), then a slow one: after it the budget is spent, at epoch 4
    trainer, _ = _budget_run(1.0, [0.05, 0.05, 0.05, 1.0], every_third)
    history = trainer.state.history
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert ["val" in h for h in history] == [False, False, True, True]  # epoch 4 was not a multiple of 3


def test_seeding_makes_initialisation_reproducible():
    def first_weights():
        trainer = Trainer(LoopSettings(epochs=1, steps_per_epoch=1, seed=11), progress=False)
        return trainer.prepare(nn.Linear(4, 4)).weight.detach().clone()

    assert torch.equal(first_weights(), first_weights())


# --- fine-tuning: exact resume through the folder job ------------------------------------------------------


@pytest.fixture(scope="module")
def curated(fixture_bench, tmp_path_factory):
    from test_curation import tiny_encoder

    from illustra.curation.photos import PhotoSettings
    from illustra.curation.run import CurationSettings, curate

    tmp = tmp_path_factory.mktemp("core")
    encoder = tiny_encoder(tmp / "encoder.safetensors")
    curate(fixture_bench / "training", tmp / "cur", tmp / "work", encoder,
           CurationSettings(photos=PhotoSettings(texture_steps=20)), jobs=("duplicates", "photos"))
    return tmp, encoder


def test_finetune_killed_and_resumed_gives_bit_identical_weights(curated, tmp_path):
    from illustra.finetune.jobs import finetune_folder
    from illustra.finetune.model import load_classifier
    from illustra.finetune.train import FinetuneConfig

    tmp, encoder = curated
    config = FinetuneConfig(epochs=3, batch_size=8, ema_decay=0.9, imbalance="over")
    first = finetune_folder(tmp / "cur", tmp_path / "a", tmp / "work", config, encoder, progress=False)
    assert first["epochs"] == 3
    steps_per_epoch = read_metadata(tmp_path / "a" / CHECKPOINT)["state"]["step"] // 3
    assert steps_per_epoch >= 2
    finetune_folder(tmp / "cur", tmp_path / "b", tmp / "work", config, encoder, progress=False,
                    max_steps=steps_per_epoch)  # killed right after epoch 1's checkpoint
    resumed = finetune_folder(tmp / "cur", tmp_path / "b", tmp / "work", config, encoder, progress=False, resume=True)
    assert resumed["epochs"] == 3 and len(resumed["history"]) == 3
    a, meta_a = load_classifier(tmp_path / "a" / "classifier.safetensors")
    b, _ = load_classifier(tmp_path / "b" / "classifier.safetensors")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    assert meta_a["training"]["device"] == "cpu" and meta_a["training"]["profile"] == "custom"


# --- profiles -----------------------------------------------------------------------------------------------


def test_profile_is_picked_from_the_device_and_overlays_the_config(monkeypatch):
    monkeypatch.delenv("ILLUSTRA_PROFILE", raising=False)
    monkeypatch.delenv("ILLUSTRA_DEVICE", raising=False)
    if not torch.cuda.is_available():
        assert resolve_profile() == "cpu"
    gpu = load_config("ssl.yaml", ["epochs=7"], section="ssl", profile="gpu")
    assert gpu["profile"] == "gpu" and gpu["encoder"]["width"] == 64 and gpu["encoder"]["input_size"] == 64
    assert gpu["epochs"] == 7  # --set wins over the profile
    cpu = load_config("ssl.yaml", section="ssl", profile="cpu")
    assert cpu["encoder"]["width"] == 32 and cpu["time_budget_s"] == 1500
    monkeypatch.setenv("ILLUSTRA_PROFILE", "gpu")
    assert load_config("finetune.yaml", section="finetune")["profile"] == "gpu"
    with pytest.raises(ValueError, match="unknown profile"):
        resolve_profile("tpu")


def test_finetune_under_torchrun_two_processes_gloo(curated, tmp_path):
    """DDP fine-tuning on CPU: two ranks share each batch; rank 0 writes a classifier with the profile in it."""
    tmp, encoder = curated
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               "-m", "illustra.cli", "finetune", "--curation", str(tmp / "cur"), "--out", str(tmp_path / "run"),
               "--work", str(tmp / "work"), "--encoder", str(encoder), "--profile", "cpu",
               "--set", "epochs=2", "--set", "batch_size=8", "--set", "threads=1"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("held-out test") == 1  # rank 0 alone reports
    meta = read_metadata(tmp_path / "run" / "classifier.safetensors")
    assert meta["training"]["world_size"] == 2 and meta["training"]["epochs"] == 2
    assert meta["training"]["profile"] == "cpu"


def test_gpu_smoke_script_runs_every_stage_on_the_cpu_path(monkeypatch, capsys):
    """benchmarks/gpu_smoke.py is what a GPU machine runs; here its CPU path keeps it from rotting."""
    import importlib.util

    monkeypatch.setenv("ILLUSTRA_DEVICE", "cpu")  # restored after the test (the script sets it too)
    spec = importlib.util.spec_from_file_location("gpu_smoke", REPO / "benchmarks" / "gpu_smoke.py")
    smoke = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(smoke)
    assert smoke.main(["--device", "cpu", "--steps", "3"]) == 0
    printed = capsys.readouterr().out
    for stage in ("pretrain", "embed", "texture view", "curate", "finetune", "evaluate"):
        assert stage in printed
    assert "every stage ran on cpu" in printed


def _module_imports() -> dict[str, set[str]]:
    """illustra module -> illustra modules it imports (top-level and inside functions)."""
    graph: dict[str, set[str]] = {}
    for path in (REPO / "illustra").rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("illustra"):
                targets.add(node.module)
            elif isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names if alias.name.startswith("illustra")}
        graph[name] = targets
    return graph


def test_no_import_cycles_and_no_stage_imports_another_stages_trainer():
    graph = _module_imports()
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for target in graph.get(node, ()):
            if target in path:
                cycles.append(path[path.index(target):] + [target])
            elif len(path) < 12:
                visit(target, path + [target])

    for module in graph:
        visit(module, [module])
    assert not cycles, cycles[:3]
    trainer_of = {"ssl": "illustra.ssl.pretrain", "finetune": "illustra.finetune.train"}
    for module, targets in graph.items():
        stage = module.split(".")[1] if "." in module else ""
        if stage in ("ssl", "finetune", "curation"):
            foreign = {trainer for owner, trainer in trainer_of.items() if owner != stage} & targets
            assert not foreign, (module, foreign)


def test_narrow_networks_stay_nchw_on_the_cpu_where_torch_segfaults(tmp_path):
    """torch 2.14.1's CPU backward segfaults for channels_last convolutions narrower than 16 channels on odd
    batch sizes; the core keeps such networks NCHW (a subprocess, so a regression cannot kill the test run)."""
    import subprocess
    import sys

    script = (
        "import torch, torch.nn as nn, torch.nn.functional as F\n"
        "from illustra.ssl.encoder import Encoder, EncoderConfig\n"
        "from illustra.train.loop import LoopSettings, Trainer\n"
        "trainer = Trainer(LoopSettings(epochs=1, steps_per_epoch=1, cpu_channels_last=True, device='cpu'), "
        "progress=False)\n"
        "encoder = Encoder(EncoderConfig(width=8, stages=2, input_size=32))  # crashed with channels_last\n"
        "model = trainer.prepare(nn.Sequential(encoder, nn.Linear(encoder.feature_dim, 4)))\n"
        "x = trainer.to_input(torch.rand(15, 3, 32, 32))\n"
        "F.cross_entropy(model(x), torch.randint(0, 4, (15,))).backward()\n"
        "wide = Trainer(LoopSettings(epochs=1, steps_per_epoch=1, cpu_channels_last=True, device='cpu'), progress=False)\n"
        "wide.prepare(nn.Sequential(nn.Conv2d(3, 32, 3)))\n"
        "assert wide.to_input(torch.rand(2, 3, 8, 8)).is_contiguous(memory_format=torch.channels_last)\n"
        "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]


# --- bf16 on the CPU (`precision_cpu`) -----------------------------------------------------------------------


def test_precision_cpu_resolves_and_rejects_unknown_values(monkeypatch):
    import illustra.train.device as device

    assert device.cpu_bf16("bf16") and not device.cpu_bf16("fp32")
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: False)
    assert not device.cpu_bf16("auto")  # no native bf16: float32 (bf16 convolutions would be slower)
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: True)
    assert device.cpu_bf16("AUTO")
    with pytest.raises(ValueError, match="precision_cpu"):
        device.cpu_bf16("fp16")
    for section in ("ssl", "finetune"):  # every training config carries the key
        assert load_config(REPO / "configs" / f"{section}.yaml")["precision_cpu"] in device.PRECISIONS_CPU


class ConvTask:
    """Two classes of 8 px images told apart by brightness: a conv net must learn it in bf16 as in float32."""

    def batches(self, epoch, random: RunRandom, device):
        for _ in range(6):
            target = (rand(16, random.torch, torch.zeros(1)) > 0.5).long()
            images = rand(16 * 3 * 8 * 8, random.torch, torch.zeros(1)).view(16, 3, 8, 8) * 0.5 \
                + target.view(-1, 1, 1, 1) * 0.5
            yield (images.to(device), target.to(device))

    def loss(self, model, batch):
        images, target = batch
        self.dtype = model[0](images).dtype  # what the convolution computed in, under the core's autocast
        return nn.functional.cross_entropy(model(images).float(), target)


class SlowInTask(ConvTask):
    """ConvTask whose step is slower by `delay` seconds in one precision: what the precision probe must see."""

    def __init__(self, slow: str, delay: float = 0.03) -> None:
        self.slow, self.delay, self.precisions = slow, delay, []
        self.memory: torch.Tensor | None = None  # state of its own, updated in place as NNCLR's bank is

    def loss(self, model, batch):
        precision = "bf16" if torch.is_autocast_enabled("cpu") else "fp32"
        self.precisions.append(precision)
        if precision == self.slow:
            time.sleep(self.delay)
        seen = batch[0].mean().detach().reshape(1)
        self.memory = seen.clone() if self.memory is None else self.memory.add_(seen)
        return super().loss(model, batch)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {} if self.memory is None else {"memory": self.memory}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.memory = tensors["memory"].clone() if "memory" in tensors else None


def conv_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(16, 2))


def fit_conv(task, run_dir=None, probe=True, bf16=True, epochs=3, resume=False,
             max_steps=None) -> tuple[Trainer, nn.Module]:
    settings = LoopSettings(epochs=epochs, steps_per_epoch=6, seed=0, label="probe", device="cpu", cpu_bf16=bf16,
                            cpu_precision_probe=probe, cpu_channels_last=True)
    trainer = Trainer(settings, run_dir, progress=False)
    model = trainer.prepare(conv_net())
    trainer.fit(task, model, torch.optim.AdamW(model.parameters(), lr=0.02), resume=resume, max_steps=max_steps)
    return trainer, model


@pytest.mark.parametrize("slow", ["bf16", "fp32"])
def test_precision_probe_trains_in_the_faster_precision_and_leaves_the_run_as_it_was(slow, monkeypatch):
    import illustra.train.loop as loop

    monkeypatch.setattr(loop, "_PROBED", {})
    task = SlowInTask(slow)
    trainer, model = fit_conv(task)
    chosen = "fp32" if slow == "bf16" else "bf16"
    assert trainer.precision == chosen and trainer.state.precision == chosen
    assert task.precisions[:2 * loop.PROBE_ROUNDS].count("bf16") == loop.PROBE_ROUNDS  # both timed, alternating
    assert set(task.precisions[2 * loop.PROBE_ROUNDS:]) == {chosen}  # then every training step in the faster one
    probe = trainer.state.precision_probe
    assert (probe["bf16_s"] > probe["fp32_s"]) == (slow == "bf16")
    # the probe moved nothing: the same run with the chosen precision fixed gives the same weights and losses
    plain_task = SlowInTask(slow, 0.0)
    plain_trainer, plain = fit_conv(plain_task, probe=False, bf16=chosen == "bf16")
    assert [h["loss"] for h in trainer.state.history] == [h["loss"] for h in plain_trainer.state.history]
    assert torch.equal(task.memory, plain_task.memory)  # the task's own state too
    for (name, mine), theirs in zip(model.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(mine, theirs), name  # batch norm's running statistics included


def test_precision_probe_choice_survives_a_resume(tmp_path, monkeypatch):
    import illustra.train.loop as loop

    monkeypatch.setattr(loop, "_PROBED", {})
    first, _ = fit_conv(SlowInTask("bf16"), tmp_path, epochs=4, max_steps=12)  # stopped after 2 of 4 epochs
    assert first.precision == "fp32"
    saved = read_metadata(tmp_path / CHECKPOINT)
    assert saved["state"]["precision"] == "fp32"
    monkeypatch.setattr(loop, "_PROBED", {})  # a new process, on a machine where bf16 now looks faster
    task = SlowInTask("fp32")
    resumed, _ = fit_conv(task, tmp_path, epochs=4, resume=True)
    assert resumed.state.epoch == 4 and len(task.precisions) == 12
    assert resumed.precision == "fp32" and set(task.precisions) == {"fp32"}  # no probe: the run's choice holds


def test_precision_probe_runs_only_for_auto_on_a_cpu_with_native_bf16(monkeypatch):
    import illustra.train.device as device

    monkeypatch.setattr(device, "cpu_has_bf16", lambda: True)
    assert device.cpu_precision_probe("auto") and not device.cpu_precision_probe("bf16")
    assert not device.cpu_precision_probe("fp32")
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: False)
    assert not device.cpu_precision_probe("auto")
    task = SlowInTask("fp32")
    trainer, _ = fit_conv(task, probe=False)  # `precision_cpu: bf16` pinned: no probe, bf16 throughout
    assert trainer.precision == "bf16" and set(task.precisions) == {"bf16"} and not trainer.state.precision_probe


@pytest.mark.parametrize("bf16", [False, True])
def test_cpu_bf16_autocast_trains_a_conv_net_and_keeps_float32_weights(bf16):
    settings = LoopSettings(epochs=3, steps_per_epoch=6, seed=0, label="bf16", device="cpu", cpu_bf16=bf16,
                            cpu_channels_last=True)
    trainer = Trainer(settings, None, progress=False)
    model = trainer.prepare(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2)))
    task = ConvTask()
    trainer.fit(task, model, torch.optim.AdamW(model.parameters(), lr=0.02))
    history = trainer.state.history
    assert task.dtype == (torch.bfloat16 if bf16 else torch.float32)
    assert trainer.precision == ("bf16" if bf16 else "fp32")  # recorded in metrics.json and the weights
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast: the weights stay float32
    assert np.isfinite(history[-1]["loss"]) and history[-1]["loss"] < history[0]["loss"]
