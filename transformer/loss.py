"""Label-smoothed cross-entropy that ignores padding.

For logits x of one position, gold token y, vocabulary size V and ``lse = logsumexp(x)``:

    nll    = lse - x[y]
    smooth = lse - mean(x)                      (the cross-entropy against the uniform distribution)
    loss   = (1 - smoothing) * nll + smoothing * smooth
    d loss / dx = softmax(x) - (1 - smoothing) * onehot(y) - smoothing / V

A hand-written backward uses this closed form, so neither the (N, V) log-probabilities nor their
gradient graph are ever materialised: the forward pass reads the logits, the backward pass writes one
(N, V) gradient. On the CPU both walk the rows in cache-sized chunks (large fresh tensors cost page
faults there); on a GPU one chunk is all rows. A caller that no longer needs the logits after the backward
pass (the trainer) can let the gradient overwrite them (``overwrite_logits``): no second (N, V) buffer at all.
"""

from __future__ import annotations

import torch

CPU_CHUNK_ELEMENTS = 1 << 20  # 4 MiB of float32 per chunk: served from the heap, no page faults


class _LabelSmoothedCrossEntropy(torch.autograd.Function):
    """(N, V) logits, (N,) targets -> summed smoothed loss and summed NLL over non-pad rows (float32)."""

    @staticmethod
    def forward(
        ctx, logits: torch.Tensor, target: torch.Tensor, smoothing: float, ignore_index: int, overwrite: bool
    ):
        rows = _chunk_rows(logits)
        lse = torch.empty(logits.size(0), dtype=torch.float32, device=logits.device)
        mean = torch.empty_like(lse)
        for i in range(0, logits.size(0), rows):
            chunk = logits[i : i + rows].float()
            torch.logsumexp(chunk, dim=-1, out=lse[i : i + rows])
            torch.mean(chunk, dim=-1, out=mean[i : i + rows])
        keep = target != ignore_index
        gold = target.masked_fill(~keep, 0)  # pad rows look up a dummy id, zeroed below
        nll = lse - logits.gather(-1, gold.unsqueeze(-1)).squeeze(-1).float()
        loss = (1.0 - smoothing) * nll + smoothing * (lse - mean)
        zero = torch.zeros((), device=logits.device)
        ctx.save_for_backward(logits, lse, gold, keep)
        ctx.smoothing = smoothing
        ctx.overwrite = overwrite
        ctx.set_materialize_grads(False)
        return torch.where(keep, loss, zero).sum(), torch.where(keep, nll, zero).sum()

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor | None, grad_nll: torch.Tensor | None):
        logits, lse, gold, keep = ctx.saved_tensors
        s, vocab = ctx.smoothing, logits.size(-1)
        zero = torch.zeros((), device=logits.device)
        g_loss = grad_loss if grad_loss is not None else zero
        g_nll = grad_nll if grad_nll is not None else zero
        w = keep.float().unsqueeze(-1)  # (N, 1): pad rows get no gradient
        on_softmax = w * (g_loss + g_nll)
        on_uniform = w * (g_loss * s / vocab)
        on_gold = -w * (g_loss * (1.0 - s) + g_nll)
        grad = logits if ctx.overwrite else torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
        lse = lse.unsqueeze(-1)
        rows = _chunk_rows(logits)
        for i in range(0, logits.size(0), rows):
            j = slice(i, i + rows)
            torch.sub(logits[j], lse[j], out=grad[j]).exp_().mul_(on_softmax[j]).sub_(on_uniform[j])  # softmax
        grad.scatter_add_(-1, gold.unsqueeze(-1), on_gold)
        return grad.to(logits.dtype), None, None, None, None


def _chunk_rows(logits: torch.Tensor) -> int:
    if logits.device.type != "cpu":
        return max(1, logits.size(0))
    return max(1, CPU_CHUNK_ELEMENTS // logits.size(-1))


def label_smoothed_nll_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    smoothing: float,
    ignore_index: int,
    overwrite_logits: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed label-smoothed loss and summed NLL over the non-pad targets.

    The smoothed target puts 1 - smoothing on the gold token and spreads ``smoothing`` uniformly over the
    vocabulary. Sums (not means) are returned so that the caller can normalise by the number of target tokens
    of the whole update, which makes gradient accumulation equal to one large batch. No boolean indexing:
    nothing here waits for the device.

    Args:
        logits: (B, T, V) unnormalised scores (any float dtype; the softmax runs in float32).
        target: (B, T) gold ids, ``ignore_index`` at padding.
        overwrite_logits: let the backward pass write the gradient over ``logits`` (float32 non-leaf
            logits only; others are left alone). Their values are then gone: for callers that are done
            with them, like a training step.

    Returns:
        (loss_sum, nll_sum): 0-dim float32 tensors; both are 0 for an all-pad target.
    """
    # A leaf is the caller's own data, and other dtypes get a float32 gradient anyway: neither is overwritten.
    overwrite = overwrite_logits and logits.dtype == torch.float32 and not logits.is_leaf
    flat = logits.reshape(-1, logits.size(-1))
    return _LabelSmoothedCrossEntropy.apply(flat, target.reshape(-1), smoothing, ignore_index, overwrite)
