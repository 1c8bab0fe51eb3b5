"""Label-smoothed cross-entropy that ignores padding.

For logits x of one position, gold token y, vocabulary size V and ``lse = logsumexp(x)``:

    nll    = lse - x[y]
    smooth = lse - mean(x)                      (the cross-entropy against the uniform distribution)
    loss   = (1 - smoothing) * nll + smoothing * smooth

which is exactly ``F.cross_entropy(x, y, label_smoothing=smoothing)``: ``label_smoothed_nll_loss`` is that
plain loss on logits (the reference, and the stock baseline's loss). The trainer uses one loss on every device,
in training and in validation: ``linear_label_smoothed_nll_loss``, the same sums with the output projection
fused in, so that the (tokens x vocabulary) logits exist one chunk of rows at a time. Its gradient has the
closed form

    d loss / dx = softmax(x) - (1 - smoothing) * onehot(y) - smoothing / V

It exists for speed and memory; docs/PERFORMANCE.md has its measured row against the plain loss.
``Seq2SeqLoss`` runs a model on a batch and applies it: what the trainer backwards and validates with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from transformer.data.batching import Batch
from transformer.tokens import PAD_ID
from transformer.training.precision import autocast_context, loss_matmul_dtype

CPU_CHUNK_ELEMENTS = 1 << 20  # 4 MiB of float32 per chunk: served from the heap, no page faults


def label_smoothed_nll_loss(
    logits: torch.Tensor, target: torch.Tensor, *, smoothing: float, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed label-smoothed loss and summed NLL over the non-pad targets.

    The smoothed target puts 1 - smoothing on the gold token and spreads ``smoothing`` uniformly over the
    vocabulary. Sums (not means) are returned so that the caller can normalise by the number of target tokens
    of the whole update, which makes gradient accumulation equal to one large batch. No boolean indexing:
    nothing here waits for the device.

    Args:
        logits: (B, T, V) unnormalised scores (any float dtype; scored in float32).
        target: (B, T) gold ids, ``ignore_index`` at padding.

    Returns:
        (loss_sum, nll_sum): 0-dim float32 tensors, both 0 for an all-pad target. Only ``loss_sum`` has a
        gradient; ``nll_sum`` is a metric.
    """
    logits = logits.reshape(-1, logits.size(-1)).float()  # (B, T, V) -> (B*T, V)
    target = target.reshape(-1)
    loss = F.cross_entropy(logits, target, ignore_index=ignore_index, label_smoothing=smoothing, reduction="sum")
    with torch.no_grad():
        nll = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")
    return loss, nll


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


class Seq2SeqLoss:
    """``loss(batch)`` -> (summed label-smoothed loss, summed NLL) of a teacher-forced batch, on its device.

    Args:
        model: the unwrapped model; its ``output_projection()`` is applied inside the fused loss, so the full
            (B, T, V) logits never exist at once.
        smoothing: ``train.label_smoothing``.
        precision: ``train.precision``: the forward pass runs under its autocast, the fused loss's products in
            its dtype.
        fused: False computes the full logits and ``label_smoothed_nll_loss`` (the plain reference).

    Raises:
        ConfigError: ``precision`` is not available on ``device``.
    """

    def __init__(self, model: nn.Module, *, smoothing: float, precision: str, device: torch.device,
                 fused: bool = True) -> None:
        self.model = model
        self.smoothing = smoothing
        self.autocast = autocast_context(precision, device)
        self.matmul_dtype = loss_matmul_dtype(precision)
        self.fused = fused

    def __call__(self, batch: Batch, run_model: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The sums over the non-pad targets of ``batch``; ``run_model``: the module to run (e.g. the DDP or
        compiled wrapper of ``model``), ``model`` itself when None."""
        run = self.model if run_model is None else run_model
        if not self.fused:
            with self.autocast:
                logits = run(batch.src, batch.tgt_in)  # (B, T, V)
            return label_smoothed_nll_loss(logits, batch.tgt_out, smoothing=self.smoothing, ignore_index=PAD_ID)
        with self.autocast:
            hidden = run(batch.src, batch.tgt_in, return_hidden=True)  # (B, T, D)
        return linear_label_smoothed_nll_loss(
            hidden, self.model.output_projection().weight, batch.tgt_out, smoothing=self.smoothing,
            ignore_index=PAD_ID, matmul_dtype=self.matmul_dtype,
        )
