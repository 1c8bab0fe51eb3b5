"""Position-wise feed-forward network (Section 3.3 of the paper)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from transformer.model.dropout import Dropout


class FeedForward(nn.Module):
    """d_model -> d_ff -> d_model, applied to each position independently."""

    def __init__(self, d_model: int, d_ff: int, *, activation: str = "relu", dropout: float = 0.0) -> None:
        super().__init__()
        if activation not in ("relu", "gelu"):
            raise ValueError(f"activation must be 'relu' or 'gelu', got {activation!r}")
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.activation = activation
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T, D)."""
        # On 2-D (tokens, D) rows: ``nn.Linear`` on a 3-D input returns a view, and an in-place op on a view
        # would make autograd copy the whole gradient back through ``as_strided`` in the backward pass.
        hidden = self.linear1(x.reshape(-1, x.size(-1)))
        # ReLU in place: the (tokens, d_ff) hidden is the largest activation of the layer, and its backward needs
        # only the ReLU's output, so one buffer serves both (no second allocation and its page faults on a CPU).
        hidden = F.relu(hidden, inplace=True) if self.activation == "relu" else F.gelu(hidden)
        return self.linear2(self.dropout(hidden)).view(x.shape)
