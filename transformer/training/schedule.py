"""Learning-rate schedules as pure functions of the update number, wrapped in ``LambdaLR``.

Each function returns the multiplier applied to the optimizer's base learning rate (``train.lr``) for the
given 1-based update number. ``LambdaLR`` counts from 0, so ``build_scheduler`` passes ``step + 1``.
"""

from __future__ import annotations

import math
from functools import partial

import torch

from transformer.config import TrainConfig


def noam(step: int, *, d_model: int, warmup_steps: int) -> float:
    """The paper's schedule: d_model^-0.5 * min(step^-0.5, step * warmup^-1.5).

    With it, ``train.lr`` is the paper's scale factor: 1.0 gives exactly Equation (3) of the paper.
    """
    step = max(step, 1)
    return d_model**-0.5 * min(step**-0.5, step * warmup_steps**-1.5)


def inverse_sqrt(step: int, *, warmup_steps: int) -> float:
    """fairseq's inverse square root: linear warmup to 1, then sqrt(warmup / step)."""
    step = max(step, 1)
    if step < warmup_steps:
        return step / warmup_steps
    return math.sqrt(warmup_steps / step) if warmup_steps > 0 else 1.0 / math.sqrt(step)


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """Linear warmup to 1, then a half cosine down to ``min_ratio`` at ``total_steps`` (flat after)."""
    step = max(step, 1)
    if step < warmup_steps:
        return step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_constant(step: int, *, warmup_steps: int) -> float:
    """Linear warmup to 1, then constant."""
    step = max(step, 1)
    return min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, *, d_model: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule named by ``config.schedule``; ``total_steps`` is only used by "cosine"."""
    if config.schedule == "noam":
        fn = partial(noam, d_model=d_model, warmup_steps=config.warmup_steps)
    elif config.schedule == "inverse_sqrt":
        fn = partial(inverse_sqrt, warmup_steps=config.warmup_steps)
    elif config.schedule == "cosine":
        fn = partial(
            warmup_cosine,
            warmup_steps=config.warmup_steps,
            total_steps=total_steps,
            min_ratio=config.min_lr / config.lr,
        )
    else:
        fn = partial(warmup_constant, warmup_steps=config.warmup_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: fn(step + 1))
