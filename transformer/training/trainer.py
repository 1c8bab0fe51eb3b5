"""The training loop: teacher forcing, mixed precision, gradient accumulation, validation, checkpoints.

It reads top to bottom: for each update, forward each micro-batch under autocast, backward the loss normalised
by the update's target-token count, unscale, clip, step, schedule; every ``log_every`` updates read the
accumulated metrics back from the device (the loop's only host-device sync); validate and checkpoint on schedule.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import time
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
from transformer.errors import write_error
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
        self.bad_evals = 0  # validations in a row without improvement (early stopping)
        self._stop_signal: int | None = None
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
                path.write_text(json.dumps(self.config.to_dict(), indent=2))
            except OSError as err:
                raise write_error(path, err, what="run config") from None
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
                window.add(loss_sum, nll_sum, sum(b.n_tgt_tokens for b in group), sum(b.n_src_tokens for b in group))
                self.step += 1
                progress.update(1)
                self._tick()
                if self.step % t.log_every == 0:
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
        update equals one over a single large batch. Under DDP gradients sync on the last batch only.

        Returns:
            (loss_sum, nll_sum): the label-smoothed loss and the NLL summed over the non-pad target tokens of
            ``batches``, 0-dim float32 tensors left on the device (reading them is a host-device sync).
        """
        t = self.config.train
        n_tokens = max(1, sum(b.n_tgt_tokens for b in batches))  # host ints: the whole update's target tokens
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
        self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        if t.clip_grad_norm > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), t.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_total, nll_total

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
            improved = self.best_score is None or score > self.best_score
            if improved:
                self.best_score, self.bad_evals = score, 0
            else:
                self.bad_evals += 1
            shown = {k: round(v, 4) for k, v in metrics.items()}
            if self.context.is_main:  # every rank validates (they must agree on early stopping); one reports
                logger.info("step %d validation %s%s", self.step, shown, " (best)" if improved else "")
            record = {"split": "valid", "step": self.step, "epoch": self.train_batches.epoch, "time": round(self.elapsed, 1)}
            self._write_metrics({**record, **metrics})
        if self.context.is_main:
            self._save_step_checkpoint()
            if improved:
                self._save(self.checkpoint_dir / "best.pt")
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
            "rng": rng_states(),
            "tokenizer": self.tokenizer.to_state(),
            "best_score": self.best_score,
            "bad_evals": self.bad_evals,
            "elapsed": self.elapsed,
        }

    def load_state_dict(self, state: dict[str, Any], *, where: str = "checkpoint") -> None:
        load_model_state(self.model, state["model"], where=where)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = state["step"]
        self.train_batches.load_state_dict(state["data"])
        self.best_score = state["best_score"]
        self.bad_evals = state["bad_evals"]
        self.elapsed = state.get("elapsed", 0.0)  # absent from checkpoints written before max_minutes existed
        set_rng_states(state["rng"])

    def resume(self, path: str | Path | None = None) -> None:
        """Continue from ``path`` (default: the run's ``checkpoints/last.pt``)."""
        path = Path(path) if path is not None else self._last_path()
        self.load_state_dict(load_checkpoint(path, map_location=self.device), where=str(path))
        logger.info("resumed from %s at step %d", path, self.step)

    def _last_path(self) -> Path:
        return self.checkpoint_dir / "last.pt"

    def _save(self, path: Path) -> None:
        if self.context.is_main:
            save_checkpoint(self.state_dict(), path)

    def _save_step_checkpoint(self) -> None:
        """``step_N.pt`` and ``last.pt``; only the newest ``keep_last`` step checkpoints are kept."""
        if not self.context.is_main:
            return
        state = self.state_dict()
        save_checkpoint(state, self._last_path())
        keep = self.config.train.keep_last
        if keep > 0:
            save_checkpoint(state, self.checkpoint_dir / f"step_{self.step:08d}.pt")
            for old in sorted(self.checkpoint_dir.glob("step_*.pt"))[:-keep]:
                old.unlink()

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
