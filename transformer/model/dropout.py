"""Dropout with a cheaper random mask on the CPU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Dropout(nn.Module):
    """``nn.Dropout`` whose CPU mask costs a quarter of the random draws.

    On the CPU, drawing the mask is most of dropout's cost: torch draws one random number per element from a
    serial generator (several ms per million elements, about a tenth of a training step of the "small"
    model). Here each random 64-bit word gives four uniform 16-bit integers, so the drop probability is
    rounded to a multiple of 2^-16 (0.1 becomes 0.100006), and the input is multiplied by a float32 mask of
    0 or 1/(1-p) (one multiply; the mask, kept for the backward pass, takes 4 bytes an element instead of
    ``nn.Dropout``'s 1). Other devices use ``F.dropout`` unchanged. Seeded by ``torch.manual_seed``.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.cut = min(round(p * 2**16), 2**16 - 1)  # a position is dropped when its 16-bit uniform is below this

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
        uniform = words.view(torch.int16)[: x.numel()].view(x.shape)  # each uniform in [-2^15, 2^15)
        mask = (uniform >= self.cut - 2**15).to(torch.float32).mul_(2**16 / (2**16 - self.cut))  # 0 or 1/(1-p)
        return (x * mask).to(x.dtype)
