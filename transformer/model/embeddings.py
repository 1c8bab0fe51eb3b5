"""Token embeddings and positional encodings."""

from __future__ import annotations

import math

import torch
from torch import nn

from transformer.tokens import PAD_ID


class TokenEmbedding(nn.Module):
    """Embedding lookup scaled by sqrt(d_model) (Section 3.4 of the paper); the ``PAD_ID`` row is zero and
    gets no gradient."""

    def __init__(self, vocab_size: int, d_model: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model, padding_idx=PAD_ID)
        self.scale = math.sqrt(d_model)
        # With the sqrt(d_model) scale, N(0, d_model^-1/2) keeps embedded tokens at unit scale.
        nn.init.normal_(self.embedding.weight, mean=0.0, std=d_model**-0.5)
        nn.init.zeros_(self.embedding.weight[PAD_ID])

    @property
    def weight(self) -> nn.Parameter:
        return self.embedding.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, D)."""
        return self.embedding(tokens) * self.scale


def sinusoidal_table(length: int, d_model: int, *, offset: int = 0, device: torch.device | None = None) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d)) for pos in [offset, offset+length).

    Returns a float32 (length, d_model) tensor.
    """
    position = torch.arange(offset, offset + length, dtype=torch.float32, device=device)[:, None]
    inv_freq = torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / d_model)
    )
    table = torch.zeros(length, d_model, device=device)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)[:, : d_model // 2]
    return table


class SinusoidalPositionalEncoding(nn.Module):
    """Adds the fixed sinusoidal table; precomputed as a buffer, computed on the fly past its end."""

    def __init__(self, d_model: int, *, max_len: int = 1024) -> None:
        super().__init__()
        self.d_model = d_model
        # Not persistent: it is a function of d_model, so checkpoints need not carry it.
        self.register_buffer("table", sinusoidal_table(max_len, d_model), persistent=False)

    def forward(self, x: torch.Tensor, *, offset: int = 0) -> torch.Tensor:
        """(B, T, D) -> (B, T, D): adds positions offset .. offset+T-1."""
        length = x.size(1)
        if offset + length <= self.table.size(0):
            pe = self.table[offset : offset + length]
        else:  # longer than the precomputed table: never fail on a long input
            pe = sinusoidal_table(length, self.d_model, offset=offset, device=x.device)
        return x + pe.to(x.dtype)


class LearnedPositionalEmbedding(nn.Module):
    """Adds a trained embedding per position, up to ``max_positions``."""

    def __init__(self, d_model: int, *, max_positions: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(max_positions, d_model)
        nn.init.normal_(self.embedding.weight, mean=0.0, std=d_model**-0.5)

    def forward(self, x: torch.Tensor, *, offset: int = 0) -> torch.Tensor:
        """(B, T, D) -> (B, T, D)."""
        length = x.size(1)
        if offset + length > self.embedding.num_embeddings:
            raise ValueError(
                f"position {offset + length - 1} is beyond model.max_positions={self.embedding.num_embeddings} "
                "of the learned positional embedding; truncate the input or use positional: sinusoidal"
            )
        positions = torch.arange(offset, offset + length, device=x.device)
        return x + self.embedding(positions).to(x.dtype)
