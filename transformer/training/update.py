"""One optimizer update over a list of micro-batches, with its faults handled; knows nothing of the model.

Forward and backward each micro-batch (its loss divided by the update's target tokens, so that accumulating
equals one large batch), unscale, clip, check, step, schedule. An update whose loss or gradient norm is not
finite, or that runs out of GPU memory, is skipped with a warning naming the step; after ``max_skipped_updates``
of them in a row a ``DivergenceError`` stops the run.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

from transformer.data.batching import Batch
from transformer.errors import DeviceError, DivergenceError
from transformer.training.distributed import DistributedContext

logger = logging.getLogger(__name__)


class UpdateStep:
    """``update(batches)``: one optimizer update of ``model`` on the micro-batches ``batches``.

    Args:
        model: the unwrapped module, whose gradients are clipped.
        loss_fn: ``loss_fn(batch)`` -> (summed loss, summed NLL) of one micro-batch on the device, 0-dim; it runs
            the forward pass (under autocast, through the DDP wrapper if any) itself. Only the loss is backwarded.
        optimizer, scheduler: stepped once per update; the scheduler advances on skipped updates too, so
            ``scheduler.last_epoch`` counts the updates (it names the step in warnings).
        clip_grad_norm: clip the total gradient norm to this; 0: no clipping.
        scaler: fp16's loss scaler; None: no scaling.
        max_skipped_updates: updates skipped in a row before ``DivergenceError``.
        context: the process's rank and device under torchrun; None: one process on ``model``'s device.
        ddp_model: the ``DistributedDataParallel`` wrapper ``loss_fn`` runs through: its gradients are
            all-reduced on the last micro-batch only.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Batch], tuple[Tensor, Tensor]],
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        *,
        clip_grad_norm: float = 0.0,
        scaler: torch.amp.GradScaler | None = None,
        max_skipped_updates: int = 5,
        context: DistributedContext | None = None,
        ddp_model: nn.Module | None = None,
    ) -> None:
        if max_skipped_updates < 1:
            raise ValueError(f"max_skipped_updates must be >= 1, got {max_skipped_updates}")
        self.model = model
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.clip_grad_norm = clip_grad_norm
        self.context = context if context is not None else DistributedContext(device=next(model.parameters()).device)
        self.device = self.context.device
        self.scaler = scaler if scaler is not None else torch.amp.GradScaler(self.device.type, enabled=False)
        self.max_skipped_updates = max_skipped_updates
        self.ddp_model = ddp_model
        # Skipped updates: "nonfinite" (loss or gradient norm), "oom" (out of GPU memory), "overflow" (fp16's
        # scaler lowered its scale; normal, never stops the run); and updates skipped in a row (the first two).
        self.skipped = {"nonfinite": 0, "oom": 0, "overflow": 0}
        self.skipped_in_a_row = 0

    def __call__(self, batches: list[Batch]) -> tuple[Tensor, Tensor]:
        """Forward and backward each batch of ``batches``, then clip, step, schedule.

        Their gradients accumulate, each loss divided by the target tokens of all of them, so the update equals
        one over a single large batch. Under DDP the divisor is the target tokens of every rank's batches: N
        processes equal one accumulating N times as many. A skipped update changes no weight and no optimizer
        state (the schedule still advances, as for fp16's skipped steps).

        Returns:
            (loss_sum, nll_sum): the loss and NLL summed over ``batches``, 0-dim float32 tensors left on the
            device (reading them is a host-device sync).

        Raises:
            DivergenceError: ``max_skipped_updates`` updates in a row were skipped.
            DeviceError: out of memory under DDP (one rank cannot skip an update alone).
        """
        oom = False
        try:
            loss_total, nll_total = self._forward_backward(batches)
        except torch.OutOfMemoryError:
            oom = True  # handled below, once the exception (and the frames holding activations) are gone
        if oom:
            return self._skip_out_of_memory(batches)
        self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        grad_norm = self._clip_and_norm()
        problem = self._check(loss_total, grad_norm)
        if problem is None:
            self.scaler.step(self.optimizer)  # with fp16 the scaler itself skips steps with overflowed gradients
            self.skipped_in_a_row = 0
        self.scaler.update()
        self._advance_schedule(skipped=problem is not None)
        self.optimizer.zero_grad(set_to_none=True)
        if problem is not None:
            self._skip(problem, "nonfinite")
        return loss_total, nll_total

    def _forward_backward(self, batches: list[Batch]) -> tuple[Tensor, Tensor]:
        n_tokens: int | Tensor = max(1, sum(b.n_tgt_tokens for b in batches))  # this rank's target tokens
        if self.context.enabled:
            # Every rank divides by the target tokens of the whole update, over all ranks (times the world size,
            # since DDP averages the ranks' gradients): N processes then make the update that one process makes
            # accumulating the same batches, whatever the ranks' token counts.
            n_tokens = self.context.sum_over_ranks(n_tokens) / self.context.world_size
        loss_total = torch.zeros((), device=self.device)
        nll_total = torch.zeros((), device=self.device)
        for i, batch in enumerate(batches):
            batch = batch.to(self.device, non_blocking=True)
            last = i == len(batches) - 1
            # DDP: gradients are all-reduced on the last micro-batch only.
            sync = contextlib.nullcontext() if last or self.ddp_model is None else self.ddp_model.no_sync()
            with sync:
                loss, nll = self.loss_fn(batch)
                self.scaler.scale(loss / n_tokens).backward()
            loss_total += loss.detach()
            nll_total += nll.detach()
        return loss_total, nll_total

    def _clip_and_norm(self) -> Tensor:
        """The total gradient norm (0-dim, on the device), after clipping to ``clip_grad_norm`` if set."""
        if self.clip_grad_norm > 0:
            return nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if not grads:
            return torch.zeros((), device=self.device)
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))

    def _check(self, loss: Tensor, grad_norm: Tensor) -> str | None:
        """Why this update must be skipped, or None. Under DDP every rank gets the same answer.

        With fp16, gradients that overflowed with a finite loss are the scaler's business (it skips the step
        and lowers its scale): counted as "overflow", not as divergence.
        """
        flags = torch.stack([~torch.isfinite(loss), ~torch.isfinite(grad_norm)]).float()
        if self.context.enabled:  # the losses differ between ranks; the gradient norms do not
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        bad_loss, bad_grad = (bool(x) for x in flags.tolist())  # the one host-device sync of an update
        if bad_loss:
            return f"the loss is not finite ({loss.item()})"
        if bad_grad and self.scaler.is_enabled():
            self.skipped["overflow"] += 1
            return None
        if bad_grad:
            return f"the gradient norm is not finite ({grad_norm.item()})"
        return None

    def _skip_out_of_memory(self, batches: list[Batch]) -> tuple[Tensor, Tensor]:
        """Free what the failed update holds, advance the schedule as for any skipped update, warn, go on."""
        n_tokens = sum(b.n_tgt_tokens for b in batches)
        if self.context.enabled:  # the other ranks wait in the gradient all-reduce this one would skip
            raise DeviceError(
                f"out of memory in update {self.scheduler.last_epoch + 1} on rank {self.context.rank} ({n_tokens} target tokens); "
                "a multi-process run cannot skip it on one process: lower data.max_tokens"
            )
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self._advance_schedule(skipped=True)
        self._skip(f"out of memory ({n_tokens} target tokens); lower data.max_tokens if this repeats", "oom")
        zero = torch.zeros((), device=self.device)
        return zero, zero.clone()

    def _advance_schedule(self, *, skipped: bool) -> None:
        if not skipped:
            self.scheduler.step()
            return
        with warnings.catch_warnings():  # PyTorch's advice on the order of steps is not about skipped updates
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            self.scheduler.step()

    def _skip(self, reason: str, kind: str) -> None:
        """Count a skipped update (the schedule has advanced for it); too many in a row raise DivergenceError."""
        self.skipped[kind] += 1
        self.skipped_in_a_row += 1
        step, limit = self.scheduler.last_epoch, self.max_skipped_updates
        if self.context.is_main:
            logger.warning(
                "step %d: %s; update skipped (%d in a row; the run stops at %d, train.max_skipped_updates)",
                step, reason, self.skipped_in_a_row, limit,
            )
        if self.skipped_in_a_row >= limit:
            raise DivergenceError(
                f"training stopped at step {step}: the last {limit} updates (train.max_skipped_updates) were skipped, "
                f"the latest because {reason}; lower train.lr (now {self.scheduler.base_lrs[0]:g}), set "
                f"train.clip_grad_norm (now {self.clip_grad_norm:g}) or use train.precision=fp32"
            )
