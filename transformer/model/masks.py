"""Attention masks as small pure functions.

One convention everywhere, the one of ``torch.nn.functional.scaled_dot_product_attention``:
a boolean mask is True where a query MAY attend to a key. Masks broadcast against attention
scores of shape (B, H, T_query, T_key).
"""

from __future__ import annotations

import torch


def padding_mask(tokens: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Key-padding mask: (B, S) token ids -> (B, 1, 1, S), True at real (non-pad) tokens."""
    return (tokens != pad_id)[:, None, None, :]


def causal_mask(size: int, device: torch.device | None = None, *, offset: int = 0) -> torch.Tensor:
    """(size, offset + size) mask; query i (at absolute position offset + i) may attend to keys j <= offset + i.

    ``offset`` is the number of earlier positions already held in a cache.
    """
    return torch.ones(size, offset + size, dtype=torch.bool, device=device).tril(diagonal=offset)


def target_mask(tgt: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Causal and key-padding mask for decoder self-attention: (B, T) -> (B, 1, T, T)."""
    return padding_mask(tgt, pad_id) & causal_mask(tgt.size(1), tgt.device)
