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
        rows = _chunk_rows(logits.device, *logits.shape)
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
        w = keep.float().unsqueeze(-1)  # (N, 1): pad rows get no gradient
        a, b, c = _gradient_coefficients(grad_loss, grad_nll, ctx.smoothing, logits.size(-1), logits.device)
        on_softmax, on_gold, on_uniform = w * a, -w * b, w * c
        grad = logits if ctx.overwrite else torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
        lse = lse.unsqueeze(-1)
        rows = _chunk_rows(logits.device, *logits.shape)
        for i in range(0, logits.size(0), rows):
            j = slice(i, i + rows)
            torch.sub(logits[j], lse[j], out=grad[j]).exp_().mul_(on_softmax[j]).sub_(on_uniform[j])  # softmax
        grad.scatter_add_(-1, gold.unsqueeze(-1), on_gold)
        return grad.to(logits.dtype), None, None, None, None


def _chunk_rows(device: torch.device, n: int, vocab: int) -> int:
    """Rows of (n, vocab) scores per chunk: about ``CPU_CHUNK_ELEMENTS`` on the CPU, all n elsewhere."""
    return max(1, CPU_CHUNK_ELEMENTS // vocab if device.type == "cpu" else n)


def _gradient_coefficients(
    grad_loss: torch.Tensor | None, grad_nll: torch.Tensor | None, smoothing: float, vocab: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a, b, c) such that, per non-pad row, the incoming gradients give d/dx = a*softmax(x) - b*onehot(y) - c."""
    zero = torch.zeros((), device=device)
    g_loss = grad_loss if grad_loss is not None else zero
    g_nll = grad_nll if grad_nll is not None else zero
    return g_loss + g_nll, g_loss * (1.0 - smoothing) + g_nll, g_loss * smoothing / vocab


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


class _LinearLabelSmoothedCrossEntropy(torch.autograd.Function):
    """(N, D) hidden, (V, D) weight, (N,) targets -> the sums of ``_LabelSmoothedCrossEntropy`` on
    ``hidden @ weight.T``, with the (N, V) logits alive one chunk of rows at a time.

    The gradient of both sums is a mix of softmax(x), onehot(y) and the uniform 1/V (module docstring). When
    gradients are needed, the forward pass multiplies each chunk's softmax with the weight and the hidden states
    at once (the two products a backward pass through the logits would make), so the backward pass only adds the
    gold and uniform terms for the mix of d loss and d nll it is given.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, smoothing: float,
                ignore_index: int, rows: int, matmul_dtype: torch.dtype | None):
        n, vocab = hidden.size(0), weight.size(0)
        rows = _chunk_rows(hidden.device, n, vocab) if rows <= 0 else rows
        keep = target != ignore_index
        gold = target.masked_fill(~keep, 0)  # pad rows look up a dummy id; their weight ``w`` is 0
        w = keep.to(torch.float32).unsqueeze(-1)
        grads = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        loss = torch.empty(n, dtype=torch.float32, device=hidden.device)
        nll = torch.empty_like(loss)
        softmax_weight = torch.empty(n, hidden.size(1), dtype=torch.float32, device=hidden.device) if grads else None
        softmax_hidden = torch.zeros(vocab, hidden.size(1), dtype=torch.float32, device=hidden.device) if grads else None
        # The three products run in ``matmul_dtype`` (bf16: the CPU's AMX units, several times the float32
        # rate); the softmax and all sums across chunks stay in float32.
        mm_dtype = matmul_dtype or torch.float32
        low = mm_dtype != torch.float32
        h, wt = hidden.to(mm_dtype), weight.to(mm_dtype)
        for i in range(0, n, rows):
            j = slice(i, i + rows)
            logits = torch.mm(h[j], wt.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            nll[j] = lse - logits.gather(-1, gold[j].unsqueeze(-1)).squeeze(-1)
            loss[j] = (1.0 - smoothing) * nll[j] + smoothing * (lse - logits.mean(dim=-1))
            if grads:
                probs = logits.sub_(lse.unsqueeze(-1)).exp_().mul_(w[j])  # pad rows: no gradient
                if low:
                    probs = probs.to(mm_dtype)
                    softmax_weight[j] = torch.mm(probs, wt)
                    softmax_hidden += torch.mm(probs.t(), h[j])
                else:
                    torch.mm(probs, wt, out=softmax_weight[j])
                    softmax_hidden.addmm_(probs.t(), h[j])
        ctx.save_for_backward(hidden, weight, gold, w, softmax_weight, softmax_hidden)
        ctx.smoothing = smoothing
        ctx.set_materialize_grads(False)
        zero = torch.zeros((), device=hidden.device)
        return torch.where(keep, loss, zero).sum(), torch.where(keep, nll, zero).sum()

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor | None, grad_nll: torch.Tensor | None):
        hidden, weight, gold, w, softmax_weight, softmax_hidden = ctx.saved_tensors
        on_softmax, b, c = _gradient_coefficients(grad_loss, grad_nll, ctx.smoothing, weight.size(0), hidden.device)
        on_gold, on_uniform = w * b, w * c  # (N, 1); the softmax part already carries ``w``
        weight_f, hidden_f = weight.float(), hidden.float()
        grad_hidden = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_hidden = on_softmax * softmax_weight - on_gold * weight_f[gold] - on_uniform * weight_f.sum(0)
            grad_hidden = grad_hidden.to(hidden.dtype)
        if ctx.needs_input_grad[1]:
            grad_weight = on_softmax * softmax_hidden - (on_uniform * hidden_f).sum(0)
            grad_weight.index_add_(0, gold, -on_gold * hidden_f)
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None, None, None


def linear_label_smoothed_nll_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    *,
    smoothing: float,
    ignore_index: int,
    chunk_rows: int = 0,
    matmul_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``label_smoothed_nll_loss(hidden @ weight.T, target, ...)`` without the (tokens x vocabulary) logits.

    The output projection and the loss are computed together, a chunk of rows at a time: the largest
    tensor of a training step then never exists whole, nor does its gradient.

    Args:
        hidden: (B, T, D) decoder states; weight: (V, D) output projection (no bias).
        target: (B, T) gold ids, ``ignore_index`` at padding.
        chunk_rows: rows per chunk; 0: about ``CPU_CHUNK_ELEMENTS`` logits per chunk on the CPU, all rows elsewhere.
        matmul_dtype: run the products with the logits in this dtype (e.g. bfloat16, as autocast would);
            None or float32: float32.

    Returns:
        (loss_sum, nll_sum), as ``label_smoothed_nll_loss``.
    """
    flat = hidden.reshape(-1, hidden.size(-1))
    return _LinearLabelSmoothedCrossEntropy.apply(
        flat, weight, target.reshape(-1), smoothing, ignore_index, chunk_rows, matmul_dtype
    )
