"""Pickle-free optimizer state, so a checkpoint is one safetensors file (tensors + JSON metadata)."""

from __future__ import annotations

import torch

from illustra.errors import UserError
from illustra.weights import with_prefix


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer state as flat tensors + JSON-able rest."""
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
    """Inverse of `optimizer_tensors`; a checkpoint whose parameter groups differ from this run's is a UserError."""
    saved = [len(group["params"]) for group in meta["param_groups"]]
    here = [len(group["params"]) for group in optimizer.param_groups]
    if saved != here:
        raise UserError(f"the checkpoint's optimizer has parameter groups of {saved} tensors, this run's {here}: "
                        "resume with the config the run was started with (e.g. the same encoder_lr_decay), "
                        "or start a new run")
    state: dict[int, dict] = {}
    for name, value in with_prefix(tensors, "optimizer").items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    for name, value in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
