"""The training loop: teacher forcing, mixed precision, gradient accumulation, validation, checkpoints.

It reads top to bottom: for each update, forward each micro-batch under autocast, backward the loss normalised
by the update's target-token count, unscale, clip, check, step, schedule; every ``log_every`` updates read the
accumulated metrics back from the device; validate and checkpoint on schedule.

Faults: an update whose loss or gradient norm is not finite (one flag read back per update, the loop's other
host-device sync), or that runs out of GPU memory, is skipped with a warning naming the step; after
``train.max_skipped_updates`` of them in a row the run stops with a ``DivergenceError``. A non-finite
validation is never the best, and weights that are not finite are never saved. Checkpoints are written
``last.pt`` (the commit point), then the step file, then ``best.pt``, so a kill anywhere leaves a folder that
``resume`` continues exactly and completes (see ``resume``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from transformer.config import Config
from transformer.data.batching import Batch, BatchIterator
from transformer.data.tokenizer import PAD_ID, Tokenizer
from transformer.errors import CheckpointError, DeviceError, DivergenceError, ResumeError, write_error
from transformer.evaluation import evaluate_model
from transformer.training.checkpoint import (
    load_checkpoint,
    load_model_state,
    rng_states,
    save_checkpoint,
    set_rng_states,
)
from transformer.training.distributed import DistributedContext
from transformer.training.loss import linear_label_smoothed_nll_loss
from transformer.training.resume import Change, changed_settings, check_resume_settings
from transformer.training.run_dir import atomic_write_text, trim_metrics
from transformer.training.schedule import build_scheduler

logger = logging.getLogger(__name__)


@dataclass
class ValidationData:
    """What validation needs: batches for the loss and raw text for BLEU."""

    batches: BatchIterator
    src_texts: list[str]
    ref_texts: list[str]


def build_optimizer(model: nn.Module, config: Config) -> torch.optim.Optimizer:
    """Adam or AdamW; weight decay on matrices only (biases and LayerNorm weights excluded)."""
    t = config.train
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": t.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    # The fused update is one pass over all parameters; on the CPU it made the whole update of the "small" model
    # about 1.2x faster than the default per-tensor loop (docs/PERFORMANCE.md). Other devices keep the default.
    fused = next(model.parameters()).device.type in ("cuda", "cpu")
    return cls(groups, lr=t.lr, betas=t.betas, eps=t.eps, fused=fused)


def autocast_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """One autocast context chosen at start-up.

    Raises:
        ConfigError: train.precision is not available on ``device`` (fp16 off CUDA, bf16 on an old GPU).
    """
    from transformer.errors import ConfigError

    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"train.precision=fp16 needs a CUDA device, but training runs on {device.type}; "
            "use train.precision=bf16 or train.precision=fp32 there"
        )
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"train.precision=bf16: {device} does not support bfloat16; use train.precision=fp16")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class Trainer:
    """Trains ``model`` on ``train_batches``; validates, logs and checkpoints into ``config.train.run_dir``."""

    def __init__(
        self,
        config: Config,
        model: nn.Module,
        tokenizer: Tokenizer,
        train_batches: BatchIterator,
        validation: ValidationData | None = None,
        *,
        context: DistributedContext | None = None,
    ) -> None:
        self.config = config
        self.context = context or DistributedContext()
        self.device = self.context.device
        self.model = model.to(self.device)  # the unwrapped module: what is saved and decoded with
        self.tokenizer = tokenizer
        self.train_batches = train_batches
        self.validation = validation
        t = config.train
        self.run_dir = Path(t.run_dir)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.optimizer = build_optimizer(self.model, config)
        updates_per_epoch = max(1, math.ceil(len(train_batches) / t.grad_accum_steps))
        self.total_steps = t.max_steps if t.max_steps > 0 else t.max_epochs * updates_per_epoch
        self.scheduler = build_scheduler(self.optimizer, t, d_model=config.model.d_model, total_steps=self.total_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=t.precision == "fp16")
        self.autocast = autocast_context(t.precision, self.device)
        # The fused loss's products run in the autocast dtype (bf16/fp16), its softmax and sums in float32.
        self.loss_matmul_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.precision)
        self.step = 0
        self.best_score: float | None = None
        self.best_step: int | None = None  # the step best.pt holds
        self.bad_evals = 0  # validations in a row without improvement (early stopping)
        # Skipped updates: "nonfinite" (loss or gradient norm), "oom" (out of GPU memory), "overflow" (fp16's
        # scaler lowered its scale; normal, never stops the run); and updates skipped in a row (the first two).
        self.skipped = {"nonfinite": 0, "oom": 0, "overflow": 0}
        self.skipped_in_a_row = 0
        self._stop_signal: int | None = None
        self.saved_step: int | None = None  # the step of the newest last.pt this trainer wrote
        self.elapsed = 0.0  # seconds spent in fit(), carried across resumes for train.max_minutes
        self._clock_origin = time.perf_counter()  # perf_counter() - elapsed, set again when fit() starts
        self._tensorboard: Any | None = None

        wrapped: nn.Module = self.model
        if t.compile:
            wrapped = torch.compile(wrapped)
        if self.context.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = nn.parallel.DistributedDataParallel(wrapped, device_ids=device_ids)
        self.train_model = wrapped  # what the forward/backward pass runs through

    # ----------------------------------------------------------------------------------------------- loop
    def fit(self) -> dict[str, Any]:
        """Train until ``max_steps``/``max_epochs``, early stopping or a signal; returns the last metrics."""
        t = self.config.train
        if self.context.is_main:
            path = self.run_dir / "config.json"
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise write_error(path, err, what="run config") from None
            atomic_write_text(path, json.dumps(self.config.to_dict(), indent=2), what="run config")
            # The steps after the checkpoint run again; their old records (and a line cut by a kill) go.
            trim_metrics(self.run_dir / "metrics.jsonl", after=self.step)
        self._tensorboard = open_tensorboard(self.run_dir / "tensorboard") if self.context.is_main else None
        previous = self._install_signal_handlers()
        progress = tqdm(
            # A bar on a terminal only (disable=None); logs and CI get one logged line per log_every.
            total=self.total_steps, initial=self.step, disable=None if self.context.is_main else True,
            desc="train", unit="step",
        )
        window = _Window(self.device)
        last_metrics: dict[str, Any] = {}
        self._clock_origin = time.perf_counter() - self.elapsed
        try:
            self.train_model.train()
            # Checked before the iterator is touched: a finished or resumed-at-the-end run consumes no batch.
            groups = self._micro_batch_groups() if self.step < self.total_steps else iter(())
            for group in groups:
                loss_sum, nll_sum = self.train_step(group)
                if self.skipped_in_a_row == 0:  # a skipped update's loss is not part of the logged mean
                    window.add(loss_sum, nll_sum, sum(b.n_tgt_tokens for b in group), sum(b.n_src_tokens for b in group))
                self.step += 1
                progress.update(1)
                self._tick()
                if self.step % t.log_every == 0 and window.tgt_tokens:  # not when every update was skipped
                    last_metrics = self._log(window.flush(), progress)
                end_of_epoch = self.train_batches.state_dict()["position"] >= len(self.train_batches)
                due = (t.eval_every > 0 and self.step % t.eval_every == 0) or (t.eval_every == 0 and end_of_epoch)
                # Under DDP the clocks are compared (a collective) only where the loop syncs anyway.
                check_clock = not self.context.enabled or due or self.step % t.log_every == 0
                finished = self.step >= self.total_steps or (check_clock and self._out_of_time())
                stop = finished or self._stop_signal is not None  # a signal saves last.pt below, unvalidated
                if due or finished:
                    last_metrics = self._validate_and_save()
                    # Validation time counts: a budget it used up ends the run here, not one update later.
                    stop = stop or self._out_of_time() or (t.patience > 0 and self.bad_evals >= t.patience)
                elif t.save_every > 0 and self.step % t.save_every == 0:
                    self._save_step_checkpoint()
                if stop:
                    break  # before the next group is drawn, so the saved data position is exact
            if self._stop_signal is not None:
                logger.warning("signal %d received: saving %s and stopping", self._stop_signal, self._last_path())
                self._save(self._last_path())
        finally:
            progress.close()
            self._restore_signal_handlers(previous)
            if self._tensorboard is not None:
                self._tensorboard.close()
        return last_metrics

    @property
    def stop_signal(self) -> int | None:
        """The signal (SIGINT, SIGTERM) that stopped the last ``fit`` early, or None."""
        return self._stop_signal

    def _tick(self) -> None:
        """Advance the wall clock of the run (a host timer; no device sync)."""
        self.elapsed = time.perf_counter() - self._clock_origin

    def _out_of_time(self) -> bool:
        limit = self.config.train.max_minutes
        if limit <= 0:
            return False
        over = self.elapsed >= 60.0 * limit
        if self.context.enabled:  # every rank must stop after the same update: rank 0's clock decides
            flag = torch.tensor([float(over)], device=self.device)
            torch.distributed.broadcast(flag, src=0)
            over = bool(flag.item())
        return over

    def _micro_batch_groups(self) -> Iterator[list[Batch]]:
        """Groups of ``grad_accum_steps`` batches; an update never spans two epochs."""
        accum = self.config.train.grad_accum_steps
        while True:
            group: list[Batch] = []
            for batch in self.train_batches:
                group.append(batch)
                if len(group) == accum:
                    yield group
                    group = []
            if group:
                yield group
            # The iterator moved itself to the next epoch when this one ran out.

    def train_step(self, batches: list[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer update: forward and backward each batch of ``batches``, then clip, step, schedule.

        The batches are the micro-batches of one update (``grad_accum_steps`` of them in ``fit``; any number
        here): their gradients accumulate, each loss divided by the target tokens of all of them, so the
        update equals one over a single large batch. Under DDP gradients sync on the last batch only, and the
        divisor is the target tokens of every rank's batches: N processes equal one accumulating N times as many.

        An update with a non-finite loss or gradient norm, or that runs out of GPU memory, changes no weight
        and no optimizer state (the schedule still advances, as for fp16's skipped steps); ``skipped_in_a_row``
        is then positive, and ``train.max_skipped_updates`` of them in a row raise ``DivergenceError``.

        Returns:
            (loss_sum, nll_sum): the label-smoothed loss and the NLL summed over the non-pad target tokens of
            ``batches``, 0-dim float32 tensors left on the device (reading them is a host-device sync).
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
        problem = self._check_update(loss_total, grad_norm)
        if problem is None:
            self.scaler.step(self.optimizer)  # with fp16 the scaler itself skips steps with overflowed gradients
            self.skipped_in_a_row = 0
        self.scaler.update()
        self._advance_schedule(skipped=problem is not None)
        self.optimizer.zero_grad(set_to_none=True)
        if problem is not None:
            self._skip(problem, "nonfinite")
        return loss_total, nll_total

    def _forward_backward(self, batches: list[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward each micro-batch; gradients accumulate. Returns the summed loss and NLL."""
        n_tokens: int | torch.Tensor = max(1, sum(b.n_tgt_tokens for b in batches))  # this rank's target tokens
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
            sync = contextlib.nullcontext() if last or not self.context.enabled else self.train_model.no_sync()
            with sync:
                loss, nll = self.loss(self.train_model, batch)
                self.scaler.scale(loss / n_tokens).backward()
            loss_total += loss.detach()
            nll_total += nll.detach()
        return loss_total, nll_total

    def _clip_and_norm(self) -> torch.Tensor:
        """The total gradient norm (0-dim, on the device), after clipping to ``train.clip_grad_norm`` if set."""
        max_norm = self.config.train.clip_grad_norm
        if max_norm > 0:
            return nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if not grads:
            return torch.zeros((), device=self.device)
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))

    def _check_update(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> str | None:
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

    def _skip_out_of_memory(self, batches: list[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
        """Free what the failed update holds, advance the schedule as for any skipped update, warn, go on."""
        n_tokens = sum(b.n_tgt_tokens for b in batches)
        if self.context.enabled:  # the other ranks wait in the gradient all-reduce this one would skip
            raise DeviceError(
                f"out of memory in update {self.step + 1} on rank {self.context.rank} ({n_tokens} target tokens); "
                f"a multi-process run cannot skip it on one process: lower data.max_tokens "
                f"(now {self.config.data.max_tokens})"
            )
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self._advance_schedule(skipped=True)
        self._skip(
            f"out of memory ({n_tokens} target tokens); lower data.max_tokens (now {self.config.data.max_tokens}) "
            "if this repeats", "oom",
        )
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
        """Count a skipped update; too many in a row stop the run.

        Raises:
            DivergenceError: ``train.max_skipped_updates`` updates in a row were skipped.
        """
        self.skipped[kind] += 1
        self.skipped_in_a_row += 1
        step, limit = self.step + 1, self.config.train.max_skipped_updates
        if self.context.is_main:
            logger.warning(
                "step %d: %s; update skipped (%d in a row; the run stops at %d, train.max_skipped_updates)",
                step, reason, self.skipped_in_a_row, limit,
            )
        if self.skipped_in_a_row >= limit:
            saved = f"last saved at step {self.saved_step}" if self.saved_step is not None else "none saved"
            t = self.config.train
            raise DivergenceError(
                f"training stopped at step {step}: the last {limit} updates (train.max_skipped_updates) were skipped, "
                f"the latest because {reason}; lower train.lr (now {t.lr:g}), set train.clip_grad_norm (now "
                f"{t.clip_grad_norm:g}) or use train.precision=fp32; the checkpoints in {self.checkpoint_dir} "
                f"hold finite weights only ({saved})"
            )

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed label-smoothed loss and NLL of ``batch`` (on the device), the one loss of training and validation.

        ``model`` is the module to run (the DDP/compiled wrapper in training, the plain model in validation);
        the output projection is applied inside the fused loss, so the full logits never exist at once.
        """
        with self.autocast:
            hidden = model(batch.src, batch.tgt_in, return_hidden=True)  # (B, T, D)
        return linear_label_smoothed_nll_loss(
            hidden, self.model.output.weight, batch.tgt_out, smoothing=self.config.train.label_smoothing,
            ignore_index=PAD_ID, matmul_dtype=self.loss_matmul_dtype,
        )

    # -------------------------------------------------------------------------------- logging, validation
    def _log(self, stats: dict[str, float], progress: tqdm) -> dict[str, Any]:
        metrics = {"step": self.step, "epoch": self.train_batches.epoch, "time": round(self.elapsed, 1), "lr": self.scheduler.get_last_lr()[0], **stats}
        metrics.update({f"skipped_{kind}": n for kind, n in self.skipped.items() if n})
        progress.set_postfix(loss=f"{stats['loss']:.3f}", lr=f"{metrics['lr']:.2e}", tok_s=f"{stats['tgt_tokens_per_s']:.0f}")
        self._write_metrics({"split": "train", **metrics})
        if progress.disable and self.context.is_main:
            logger.info(
                "step %d loss %.4f ppl %.2f lr %.3g tgt tok/s %.0f",
                self.step, stats["loss"], stats["ppl"], metrics["lr"], stats["tgt_tokens_per_s"],
            )
        return metrics

    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        """Validation loss (per target token) and, when enabled, greedy-decoding BLEU via ``evaluate_model``."""
        if self.validation is None:
            return {}
        t = self.config.train
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        nll_sum = torch.zeros((), device=self.device)
        n_tokens = 0
        for batch in self.validation.batches:
            batch = batch.to(self.device, non_blocking=True)
            loss, nll = self.loss(self.model, batch)
            loss_sum += loss
            nll_sum += nll
            n_tokens += batch.n_tgt_tokens
        n_tokens = max(1, n_tokens)
        nll = nll_sum.item() / n_tokens
        metrics: dict[str, Any] = {"loss": loss_sum.item() / n_tokens, "nll": nll, "ppl": math.exp(min(nll, 50.0))}
        if t.eval_bleu:
            # The very function `transformer evaluate` uses, so validation BLEU equals offline BLEU.
            greedy = replace(self.config.decode, beam_size=1, n_best=1)
            with self.autocast:
                scores, _ = evaluate_model(
                    self.model,
                    self.tokenizer,
                    self.validation.src_texts,
                    self.validation.ref_texts,
                    greedy,
                    device=self.device,
                    max_sentences=t.eval_max_sentences,
                )
            metrics["bleu"] = scores["bleu"]
        self.model.train()
        return metrics

    def _validate_and_save(self) -> dict[str, Any]:
        metrics = self.validate()
        self._tick()  # validation time counts towards the budget and the record
        t = self.config.train
        improved = False
        if metrics:
            score = metrics["bleu"] if t.best_metric == "bleu" and "bleu" in metrics else -metrics["loss"]
            finite = math.isfinite(score) and math.isfinite(metrics["loss"])  # a NaN is never the best
            improved = finite and (self.best_score is None or score > self.best_score)
            if improved:
                self.best_score, self.best_step, self.bad_evals = score, self.step, 0
            else:
                self.bad_evals += 1
            shown = {k: round(v, 4) for k, v in metrics.items()}
            if self.context.is_main:  # every rank validates (they must agree on early stopping); one reports
                note = " (best)" if improved else "" if finite else " (not finite: never the best)"
                (logger.info if finite else logger.warning)("step %d validation %s%s", self.step, shown, note)
            record = {"split": "valid", "step": self.step, "epoch": self.train_batches.epoch, "time": round(self.elapsed, 1)}
            self._write_metrics({**record, **metrics})
        self._save_step_checkpoint(best=improved)  # every rank: it gathers their RNG states
        return metrics

    def _write_metrics(self, record: dict[str, Any]) -> None:
        if not self.context.is_main:
            return
        path = self.run_dir / "metrics.jsonl"
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as err:
            raise write_error(path, err, what="metrics file") from None
        if self._tensorboard is not None:
            for key, value in record.items():
                if key not in ("split", "step") and isinstance(value, (int, float)):
                    self._tensorboard.add_scalar(f"{record['split']}/{key}", value, record["step"])

    # ------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where this update left off."""
        return {
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "data": self.train_batches.state_dict(),
            "world_size": self.context.world_size,  # the data position counts this many ranks' batches
            "rng": rng_states(),
            "tokenizer": self.tokenizer.to_state(),
            "best_score": self.best_score,
            "best_step": self.best_step,
            "bad_evals": self.bad_evals,
            "elapsed": self.elapsed,
            "skipped": dict(self.skipped),
            "skipped_in_a_row": self.skipped_in_a_row,
            "train_pairs": len(self.train_batches.dataset),  # resume checks that the corpus is the same size
        }

    def load_state_dict(self, state: dict[str, Any], *, where: str = "checkpoint") -> None:
        load_model_state(self.model, state["model"], where=where)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = state["step"]
        self.train_batches.load_state_dict(data_position(state, self.context.world_size, where=where))
        self.best_score = state["best_score"]
        self.bad_evals = state["bad_evals"]
        self.elapsed = state.get("elapsed", 0.0)  # absent from checkpoints written before max_minutes existed
        # Absent from checkpoints written before fault handling: no best step known, nothing skipped.
        self.best_step = state.get("best_step")
        self.skipped = {**{kind: 0 for kind in self.skipped}, **state.get("skipped", {})}
        self.skipped_in_a_row = state.get("skipped_in_a_row", 0)
        ranks = state.get("rng_ranks")  # absent from single-process checkpoints and older ones
        same_world = ranks is not None and len(ranks) == self.context.world_size
        set_rng_states(ranks[self.context.rank] if same_world else state["rng"])
        if not same_world and self.context.rank > 0:  # a new world: the other ranks draw their own dropout masks
            torch.manual_seed(self.config.train.seed + 1000 * self.context.rank + self.step)

    def resume(self, path: str | Path | None = None) -> None:
        """Continue from ``path`` (default: the run's ``checkpoints/last.pt``).

        Settings that cannot change mid-run (model, vocabulary, batching, seed, optimizer) must equal the
        checkpoint's; the others (``resume.CHANGEABLE``: the learning rate and its schedule, the limits, the
        intervals) take effect now: the next update's learning rate is this config's schedule at this step.
        On the main process, the ``step_N.pt`` and ``best.pt`` that a kill kept from being written after
        ``last.pt`` are written.

        Raises:
            CheckpointError: ``path`` cannot be read or does not fit the model.
            ResumeError: a setting that cannot change differs, or the corpus has another number of pairs.
        """
        path = Path(path) if path is not None else self._last_path()
        state = load_checkpoint(path, map_location=self.device)
        changes = changed_settings(state["config"], self.config, where=str(path))
        check_resume_settings(self._world_change_allowed(changes, state, where=str(path)), where=str(path))
        pairs, now = state.get("train_pairs"), len(self.train_batches.dataset)
        if pairs is not None and pairs != now:
            raise ResumeError(
                f"cannot resume {path}: the training corpus has {now} pairs after filtering, the checkpoint's had "
                f"{pairs}, so its data position means nothing now; use the corpus of the run, or start a new run"
            )
        self.load_state_dict(state, where=str(path))
        self._apply_lr_schedule()
        if self.context.is_main:
            for change in changes:
                logger.info("resuming with %s: in effect from step %d", change, self.step + 1)
            self._complete_checkpoints(path, state)
        logger.info("resumed from %s at step %d", path, self.step)

    def _world_change_allowed(self, changes: list[Change], state: dict[str, Any], *, where: str) -> list[Change]:
        """``changes`` without a ``train.grad_accum_steps`` change that keeps the batches per update.

        A run may resume on another number of processes when ``grad_accum_steps x processes`` stays the same
        (2 processes accumulating 1 batch = 1 process accumulating 2): the updates are the same.

        Raises:
            ResumeError: the number of processes changed and the batches per update with it.
        """
        saved_world, world = state.get("world_size", 1), self.context.world_size
        saved_accum = state["config"].get("train", {}).get("grad_accum_steps", 1)
        accum = self.config.train.grad_accum_steps
        if saved_accum * saved_world != accum * world:
            if saved_world == world:
                return changes  # an accumulation change on the same processes: check_resume_settings names it
            fits = saved_accum * saved_world % world == 0
            advice = (f"set train.grad_accum_steps={saved_accum * saved_world // world}" if fits
                      else f"resume it on {saved_world} process(es)")
            raise ResumeError(
                f"cannot resume {where} on {world} process(es) with train.grad_accum_steps={accum}: it was trained on "
                f"{saved_world} with train.grad_accum_steps={saved_accum}, {saved_accum * saved_world} batches per "
                f"update; {advice} to keep the updates the same"
            )
        return [c for c in changes if c.key != "train.grad_accum_steps"]

    def _apply_lr_schedule(self) -> None:
        """Set the next update's learning rate from this config's ``train.lr`` and schedule at the current step.

        The loaded optimizer and scheduler states carry the checkpoint's base rate; with an unchanged config the
        result is the very value they held (the scheduler's own formula).
        """
        lr = self.config.train.lr
        self.scheduler.base_lrs = [lr] * len(self.optimizer.param_groups)
        for group, factor in zip(self.optimizer.param_groups, self.scheduler.lr_lambdas):
            group["initial_lr"] = lr
            group["lr"] = lr * factor(self.scheduler.last_epoch)

    def _complete_checkpoints(self, last: Path, state: dict[str, Any]) -> None:
        """Write the step file and ``best.pt`` that belong with ``last`` (the commit point) if a kill cut them off."""
        if last != self._last_path():
            return
        step_file = self.checkpoint_dir / f"step_{self.step:08d}.pt"
        if state.get("step_file") and not step_file.is_file():
            logger.warning("writing %s: it belongs with %s, and a kill cut off its write", step_file, last.name)
            save_checkpoint(state, step_file)
        best = self.checkpoint_dir / "best.pt"
        if self.best_step is None or self.best_step != self.step:
            return
        try:
            current = load_checkpoint(best, map_location="cpu").get("step") if best.is_file() else None
        except CheckpointError:
            current = None
        if current != self.best_step:
            logger.warning("writing %s: %s holds the best validation (step %d)", best, last.name, self.step)
            save_checkpoint(state, best)

    def _last_path(self) -> Path:
        return self.checkpoint_dir / "last.pt"

    def _save(self, path: Path) -> None:
        if self.context.is_main and self._weights_are_finite():
            save_checkpoint(self.state_dict(), path)
            self.saved_step = self.step

    def _save_step_checkpoint(self, *, best: bool = False) -> None:
        """``step_N.pt``, ``last.pt``, and ``best.pt`` if ``best``; the newest ``keep_last`` step files are kept.

        ``last.pt`` is the commit point: a kill before it leaves the previous one, from which ``resume``
        replays these steps; a kill after it leaves a ``last.pt`` that says a step file goes with it
        (``step_file``) and whether it is the best (``best_step``), from which ``resume`` writes what is missing.
        """
        rng_ranks = self._rng_states_of_all_ranks()  # a collective: before the other ranks return
        if not self.context.is_main or not self._weights_are_finite():
            return
        keep = self.config.train.keep_last
        state = {**self.state_dict(), "step_file": keep > 0}
        if rng_ranks is not None:
            state["rng_ranks"] = rng_ranks
        save_checkpoint(state, self._last_path())
        self.saved_step = self.step
        if keep > 0:
            save_checkpoint(state, self.checkpoint_dir / f"step_{self.step:08d}.pt")
        if best:
            save_checkpoint(state, self.checkpoint_dir / "best.pt")
        if keep > 0:
            for old in sorted(self.checkpoint_dir.glob("step_*.pt"))[:-keep]:
                old.unlink()

    def _rng_states_of_all_ranks(self) -> list[dict[str, Any]] | None:
        """Under DDP, every rank's RNG states (each rank draws its own dropout masks), else None.

        Gathered where all ranks save together (validation, ``save_every``); a signal's ``last.pt`` holds
        rank 0's only, since the ranks may stop one update apart.
        """
        if not self.context.enabled:
            return None
        states: list[Any] = [None] * self.context.world_size
        torch.distributed.all_gather_object(states, rng_states())
        return states

    def _weights_are_finite(self) -> bool:
        """True when every weight is finite; else warn: a checkpoint never holds NaN or inf."""
        bad = [k for k, v in self.model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            logger.warning("step %d: not saving a checkpoint: %d weight tensor(s) are not finite (%s)",
                           self.step, len(bad), ", ".join(bad[:3]))
        return not bad

    # ------------------------------------------------------------------------------------------ signals
    def _install_signal_handlers(self) -> dict[int, Any]:
        """SIGINT/SIGTERM finish the current update, save ``last.pt`` and stop cleanly."""

        def handler(signum: int, frame: Any) -> None:
            self._stop_signal = signum

        previous = {}
        with contextlib.suppress(ValueError):  # not in the main thread: leave signals alone
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, handler)
        return previous

    @staticmethod
    def _restore_signal_handlers(previous: dict[int, Any]) -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)


def data_position(state: dict[str, Any], world_size: int, *, where: str) -> dict[str, int]:
    """The checkpoint's data position for a run on ``world_size`` processes.

    A position counts one rank's batches of the epoch; rank r of N takes batches r, r + N, ... So N processes
    at position p have used the first p * N batches, which M processes reach at position p * N / M. The tokens
    per update (``data.max_tokens`` x ``train.grad_accum_steps`` x processes) are kept by the resume check, so
    the division is exact at every update boundary.

    Raises:
        ResumeError: the position cannot be split evenly over ``world_size`` processes.
    """
    saved_world = state.get("world_size", 1)  # absent from checkpoints written before it was recorded
    position = dict(state["data"])
    if saved_world == world_size:
        return position
    used = position["position"] * saved_world
    if used % world_size:
        raise ResumeError(
            f"{where} was written by {saved_world} process(es) after {used} batches of epoch {position['epoch']}, "
            f"which {world_size} processes cannot share evenly; resume it with {saved_world} process(es)"
        )
    logger.info("resuming a %d-process run on %d process(es): data position %d -> %d", saved_world, world_size,
                position["position"], used // world_size)
    return {"epoch": position["epoch"], "position": used // world_size}


def open_tensorboard(log_dir: Path) -> Any | None:
    """A TensorBoard ``SummaryWriter`` when the ``tensorboard`` package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(log_dir))


class _Window:
    """Metrics accumulated on the device between two logs; ``flush`` is the one sync."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._reset()

    def _reset(self) -> None:
        self.loss = torch.zeros((), device=self.device)
        self.nll = torch.zeros((), device=self.device)
        self.tgt_tokens = 0
        self.src_tokens = 0
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor, nll: torch.Tensor, tgt_tokens: int, src_tokens: int) -> None:
        self.loss += loss
        self.nll += nll
        self.tgt_tokens += tgt_tokens
        self.src_tokens += src_tokens

    def flush(self) -> dict[str, float]:
        n = max(1, self.tgt_tokens)
        nll = self.nll.item() / n
        elapsed = max(1e-9, time.perf_counter() - self.start)
        stats = {
            "loss": self.loss.item() / n,
            "nll": nll,
            "ppl": math.exp(min(nll, 50.0)),
            "tgt_tokens_per_s": self.tgt_tokens / elapsed,
            "tokens_per_s": (self.tgt_tokens + self.src_tokens) / elapsed,
        }
        self._reset()
        return stats
