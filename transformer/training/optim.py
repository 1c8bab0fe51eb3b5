"""The optimizer: Adam or AdamW, weight decay on matrices only."""

from __future__ import annotations

import torch
from torch import nn

from transformer.config import TrainConfig


def build_optimizer(model: nn.Module, train: TrainConfig, *, fused: bool | None = None) -> torch.optim.Optimizer:
    """Adam or AdamW (``train.optimizer``); biases and LayerNorm weights get no weight decay.

    Args:
        fused: one pass over all parameters (True) or PyTorch's default implementation (False: a per-tensor
            loop on the CPU, ``foreach`` on CUDA); None: fused on the CPU and CUDA, where it made the whole update
            of the "small" model about 1.2x faster on the CPU (docs/PERFORMANCE.md), the default elsewhere.
            Build the optimizer after the model is on its device.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": train.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    cls = torch.optim.AdamW if train.optimizer == "adamw" else torch.optim.Adam
    if fused is None:
        fused = next(model.parameters()).device.type in ("cuda", "cpu")
    return cls(groups, lr=train.lr, betas=train.betas, eps=train.eps, fused=fused or None)
