"""Randomness of a run: seed everything, one generator per device, and a guard on every draw.

The crash this prevents: a generator made on the CPU while the batch lives on the GPU
(`Expected a 'cuda' device type for generator but found 'cpu'`). Generators of a run are made
here and nowhere else (a test checks), on the run's device, and every augmentation draws through
`rand`, which checks that the generator and the tensor it draws for share a device type.
"""

from __future__ import annotations

import random as _python_random

import numpy as np
import torch


class GeneratorDeviceError(RuntimeError):
    """A random draw whose generator lives on another device than the tensor it is drawn for."""


def seed_everything(seed: int) -> None:
    """Trick: seed Python, NumPy and torch (every device) before any model is built, so init is reproducible."""
    _python_random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def device_generator(device: torch.device | str, seed: int) -> torch.Generator:
    """A torch generator on `device`, seeded (the only way illustra makes one)."""
    return torch.Generator(device=torch.device(device)).manual_seed(int(seed))


def check_device(gen: torch.Generator, like: torch.Tensor) -> None:
    """Raise when `gen` cannot draw for a tensor on `like`'s device."""
    if gen.device.type != like.device.type:
        raise GeneratorDeviceError(f"random draw for a tensor on {like.device} with a generator on {gen.device}: "
                                   "make the generator with illustra.train.random.device_generator(tensor.device, seed)")


def rand(n: int, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """n uniform [0, 1) samples on `like`'s device, drawn from `gen` (checked)."""
    check_device(gen, like)
    return torch.rand(n, generator=gen, device=like.device)


class RunRandom:
    """The run's random streams, all restored exactly on resume.

    - `torch`: on the run's device, per rank (augmentation draws);
    - `numpy`: per rank, for batch making on the CPU;
    - `epoch_order(epoch)`: the same on every rank, fresh per epoch (sampling order; needs no state).
    """

    def __init__(self, device: torch.device, seed: int, rank: int = 0) -> None:
        self.seed, self.rank = int(seed), int(rank)
        self.torch = device_generator(device, self.seed * 1000 + self.rank)
        self.numpy = np.random.default_rng(self.seed + 1000 * self.rank)

    def epoch_order(self, epoch: int) -> np.random.Generator:
        """A NumPy generator for one epoch's sampling order, identical on every rank."""
        return np.random.default_rng((self.seed, int(epoch)))

    def cpu_generator(self, salt: int) -> torch.Generator:
        """A CPU torch generator for index draws (permutations), identical on every rank."""
        return device_generator("cpu", self.seed * 7919 + int(salt))

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, JSON-able) of every stream, including torch's global generators."""
        tensors = {"rng.torch": self.torch.get_state(), "rng.global": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            tensors["rng.cuda"] = torch.cuda.get_rng_state()
        return tensors, {"numpy": self.numpy.bit_generator.state, "python": list(_python_random.getstate()[1])}

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Inverse of `state`."""
        self.torch.set_state(tensors["rng.torch"].cpu())
        torch.set_rng_state(tensors["rng.global"].cpu())
        if "rng.cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng.cuda"].cpu())
        self.numpy.bit_generator.state = meta["numpy"]
        _python_random.setstate((3, tuple(meta["python"]), None))
