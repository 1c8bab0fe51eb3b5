"""Label-smoothed cross-entropy that ignores padding."""

from __future__ import annotations

import torch


def label_smoothed_nll_loss(
    logits: torch.Tensor, target: torch.Tensor, *, smoothing: float, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed label-smoothed loss and summed NLL over the non-pad targets.

    The smoothed target puts 1 - smoothing on the gold token and spreads ``smoothing`` uniformly over the
    vocabulary. Sums (not means) are returned so that the caller can normalise by the number of target tokens
    of the whole update, which makes gradient accumulation equal to one large batch. No boolean indexing:
    nothing here waits for the device.

    Args:
        logits: (B, T, V) unnormalised scores (any float dtype; the softmax runs in float32).
        target: (B, T) gold ids, ``ignore_index`` at padding.

    Returns:
        (loss_sum, nll_sum): 0-dim float32 tensors; both are 0 for an all-pad target.
    """
    lprobs = logits.float().log_softmax(dim=-1)
    keep = target != ignore_index
    gold = target.masked_fill(~keep, 0).unsqueeze(-1)  # pad rows gather a dummy id, zeroed below
    nll = -lprobs.gather(-1, gold).squeeze(-1)
    smooth = -lprobs.mean(dim=-1)
    loss = (1.0 - smoothing) * nll + smoothing * smooth
    zero = torch.zeros((), device=logits.device)
    return torch.where(keep, loss, zero).sum(), torch.where(keep, nll, zero).sum()
