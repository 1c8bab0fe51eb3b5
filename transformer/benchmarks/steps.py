"""The training updates the benchmarks time, and the interleaved rounds that time them.

``our_update`` is the update the ``Trainer`` runs (``UpdateStep`` with the fused ``Seq2SeqLoss``, the
default optimizer, schedule, autocast and scaler); ``StockStep`` is the stock baseline's update written the
way tutorials write it, with the same Adam, schedule, autocast and loss (label-smoothed cross-entropy summed
and divided by the update's target tokens).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from transformer.benchmarks.common import timed
from transformer.benchmarks.stock import StockTransformer
from transformer.config import ModelConfig, TrainConfig
from transformer.data.batching import Batch
from transformer.model.transformer import Transformer
from transformer.tokens import PAD_ID
from transformer.training.loss import Seq2SeqLoss
from transformer.training.optim import build_optimizer
from transformer.training.precision import autocast_context, grad_scaler
from transformer.training.schedule import build_scheduler
from transformer.training.update import UpdateStep

StepFn = Callable[[Batch], torch.Tensor]  # one update on one batch -> its summed loss (0-dim, on the device)


def train_config(precision: str, *, compile: bool = False) -> TrainConfig:
    """The training settings of every benchmark: the defaults, a long run (the schedule stays in warm-up)."""
    return TrainConfig(precision=precision, max_steps=10**6, warmup_steps=4000, compile=compile)


def build_pair(config: ModelConfig, seed: int, device: torch.device) -> tuple[Transformer, StockTransformer]:
    """Our model and the stock one, holding the same weights."""
    torch.manual_seed(seed)
    ours = Transformer(config)
    stock = StockTransformer(config)
    stock.copy_weights_from(ours)
    return ours.to(device), stock.to(device)


def our_update(
    model: Transformer, train: TrainConfig, device: torch.device, *, fused_loss: bool = True,
    fused_adam: bool | None = None,
) -> UpdateStep:
    """The Trainer's update of ``model`` (on ``device``), in training mode.

    ``fused_loss`` False: full logits and the plain label-smoothed loss; ``fused_adam``: ``build_optimizer``'s
    ``fused`` (None: its default). Both are the ablation's switches, not config keys.
    """
    model.train()
    loss = Seq2SeqLoss(model, smoothing=train.label_smoothing, precision=train.precision, device=device,
                       fused=fused_loss)
    # torch.compile wraps the module the loss runs; the loss still reads the unwrapped model's output projection.
    loss_fn = functools.partial(loss, run_model=torch.compile(model)) if train.compile else loss
    optimizer = build_optimizer(model, train, fused=fused_adam)
    scheduler = build_scheduler(optimizer, train, d_model=model.config.d_model, total_steps=train.max_steps)
    return UpdateStep(model, loss_fn, optimizer, scheduler, clip_grad_norm=train.clip_grad_norm,
                      scaler=grad_scaler(train.precision, device), max_skipped_updates=train.max_skipped_updates)


def on_one_batch(update: UpdateStep) -> StepFn:
    """``update`` as a step on one batch that returns the summed loss."""
    return lambda batch: update([batch])[0]


class StockStep:
    """``step(batch)``: the stock update, the AMP recipe of the PyTorch tutorials, with ``our_update``'s
    optimizer, schedule, autocast, scaler and loss."""

    def __init__(self, model: StockTransformer, train: TrainConfig, device: torch.device) -> None:
        self.model, self.device, self.smoothing = model.train(), device, train.label_smoothing
        self.optimizer = build_optimizer(model, train)
        self.scheduler = build_scheduler(self.optimizer, train, d_model=model.config.d_model,
                                         total_steps=train.max_steps)
        self.scaler = grad_scaler(train.precision, device)
        self.autocast = autocast_context(train.precision, device)
        self.forward = torch.compile(model) if train.compile else model  # the same treatment as ours

    def __call__(self, batch: Batch) -> torch.Tensor:
        batch = batch.to(self.device, non_blocking=True)
        with self.autocast:  # forward and loss under autocast
            logits = self.forward(batch.src, batch.tgt_in)  # (B, T, V)
            loss = F.cross_entropy(logits.flatten(0, 1), batch.tgt_out.flatten(), ignore_index=PAD_ID,
                                   label_smoothing=self.smoothing, reduction="sum")
        self.scaler.scale(loss / max(1, batch.n_tgt_tokens)).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()


@dataclass
class Rounds:
    """Per step name: wall seconds and CPU share (see ``common.timed``) of each round, and the loss per target
    token of every update (warm-up first)."""

    seconds: dict[str, list[float]]
    cpu_share: dict[str, list[float]]
    losses: dict[str, list[float]]


def time_rounds(
    steps: dict[str, StepFn], warm: list[Batch], batches: list[Batch], rounds: int, device: torch.device, *,
    rotate: bool = False, on_round: Callable[[int, Rounds], None] | None = None,
) -> Rounds:
    """Each step on ``warm`` untimed, then ``rounds`` interleaved rounds of each on ``batches``.

    Interleaving spreads the machine's slow moments over all steps. ``rotate``: each round starts one step
    later in the order (no step always runs first); ``on_round(r, rounds_so_far)`` after each round.
    """
    names = list(steps)
    result = Rounds({n: [] for n in names}, {n: [] for n in names}, {n: [] for n in names})
    for name, step in steps.items():
        result.losses[name].extend(step(b).item() / b.n_tgt_tokens for b in warm)
    for r in range(rounds):
        shift = r % len(names) if rotate else 0
        for name in names[shift:] + names[:shift]:
            step = steps[name]
            losses, seconds, share = timed(lambda: [step(b) for b in batches], device)
            result.seconds[name].append(seconds)
            result.cpu_share[name].append(share)
            result.losses[name].extend(loss.item() / b.n_tgt_tokens for loss, b in zip(losses, batches))
        if on_round is not None:
            on_round(r, result)
    return result
