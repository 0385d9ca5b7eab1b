"""Learning-rate schedule and time budget, shared by every loop."""

from __future__ import annotations

import math


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Trick: linear warm-up to 1, then cosine decay to 0 at `total_steps` (a factor of the peak lr)."""
    warmup = max(1, int(warmup_steps))
    if step < warmup:
        return (step + 1) / warmup
    total = max(warmup + 1, int(total_steps))
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / (total - warmup))))


def budgeted_horizon(configured: int, epochs_done: int, seconds: float, budget_s: float,
                     current: int | None = None, spent_outside: float = 0.0) -> int:
    """Trick: the time budget shortens the cosine horizon to the epochs that fit at the measured pace,
    so the schedule still anneals in time (never more than configured, never fewer than done).

    `seconds` is the wall time of the epochs done, their validation and checkpoints included;
    `spent_outside` is the job's time before its first epoch (loading, model set-up), which the budget
    also pays: the budget is wall time, not training time.

    `current` is the horizon the run has followed so far: once it is reached, the lr has annealed to zero
    and the run is done. A slightly faster epoch must not extend it into epochs at a near-zero lr that
    climbs back up (seen: a SimCLR run whose horizon went 23 -> 25 after its 23rd epoch had ended at lr 0)."""
    if current is not None and epochs_done >= current:
        return current
    if budget_s <= 0 or epochs_done == 0:
        return configured
    per_epoch = seconds / epochs_done
    return max(epochs_done, min(configured, int(max(0.0, budget_s - spent_outside) // per_epoch)))
