"""The training loop: update, log, validate and checkpoint on schedule, stop.

It reads top to bottom: each group of ``grad_accum_steps`` batches is one update (``UpdateStep``: forward
under autocast, backward, clip, step, schedule, faults); every ``log_every`` updates the accumulated metrics
are read back from the device (the loop's one sync besides the update's finiteness check); validation and
checkpoints come when due (``checkpointing``). SIGINT/SIGTERM finish the current update, save ``last.pt`` and
stop; ``resume.resume_trainer`` continues a run.

A run of several translation directions trains on ``MixedBatches`` and validates each direction on its own
(``ValidationData`` per direction, the source tagged with the target language); its validation record holds the
mean over the directions as ``loss``/``nll``/``ppl``/``bleu`` and each direction's as ``"en-de/loss"`` etc.
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
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from transformer.config import Config, parse_direction
from transformer.data.batching import Batch, BatchIterator
from transformer.data.mixing import MixedBatches, pair_counts
from transformer.data.tokenizer import Tokenizer
from transformer.errors import DivergenceError, write_error
from transformer.evaluation import evaluate_model
from transformer.files import atomic_write_text
from transformer.inference.torch_engine import TorchTranslator
from transformer.training.checkpointing import RunCheckpoints
from transformer.training.distributed import DistributedContext
from transformer.training.loss import Seq2SeqLoss
from transformer.training.optim import build_optimizer
from transformer.training.precision import autocast_context, grad_scaler
from transformer.training.rng import rng_states
from transformer.training.run_dir import trim_metrics
from transformer.training.schedule import build_scheduler
from transformer.training.update import UpdateStep

logger = logging.getLogger(__name__)


@dataclass
class ValidationData:
    """What validation needs: batches for the loss and raw text for BLEU."""

    batches: BatchIterator
    src_texts: list[str]
    ref_texts: list[str]


class Trainer:
    """Trains ``model`` on ``train_batches``; validates, logs and checkpoints into ``config.train.run_dir``.

    ``validation`` is one ``ValidationData``, or one per direction (``{"en-de": ..., "de-en": ...}``) for a
    multilingual run, whose ``train_batches`` are then ``MixedBatches``.

    Raises:
        ConfigError: train.precision is not available on the device.
    """

    def __init__(
        self,
        config: Config,
        model: nn.Module,
        tokenizer: Tokenizer,
        train_batches: BatchIterator | MixedBatches,
        validation: ValidationData | dict[str, ValidationData] | None = None,
        *,
        context: DistributedContext | None = None,
    ) -> None:
        t = config.train
        self.config = config
        self.context = context or DistributedContext()
        self.device = self.context.device
        self.autocast = autocast_context(t.precision, self.device)  # validation's decoding (the loss has its own)
        self.model = model.to(self.device)  # the unwrapped module: what is saved and decoded with
        self.tokenizer = tokenizer
        self.train_batches = train_batches
        self.validation = validation
        self.run_dir = Path(t.run_dir)
        self.optimizer = build_optimizer(self.model, t)
        updates_per_epoch = max(1, math.ceil(len(train_batches) / t.grad_accum_steps))
        self.total_steps = t.max_steps if t.max_steps > 0 else t.max_epochs * updates_per_epoch
        self.scheduler = build_scheduler(self.optimizer, t, d_model=config.model.d_model, total_steps=self.total_steps)
        self.scaler = grad_scaler(t.precision, self.device)
        # The one loss of training and validation (the output projection fused into it).
        self.loss = Seq2SeqLoss(self.model, smoothing=t.label_smoothing, precision=t.precision, device=self.device)

        wrapped: nn.Module = self.model
        if t.compile:
            wrapped = torch.compile(wrapped)
        if self.context.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = nn.parallel.DistributedDataParallel(wrapped, device_ids=device_ids)
        self.train_model = wrapped  # what the forward/backward pass runs through
        self.update = UpdateStep(
            self.model, partial(self.loss, run_model=self.train_model), self.optimizer, self.scheduler,
            clip_grad_norm=t.clip_grad_norm, scaler=self.scaler, max_skipped_updates=t.max_skipped_updates,
            context=self.context, ddp_model=wrapped if self.context.enabled else None,
        )
        self.checkpoints = RunCheckpoints(self.run_dir / "checkpoints", keep_last=t.keep_last, context=self.context)

        self.step = 0
        self.best_score: float | None = None
        self.best_step: int | None = None  # the step best.pt holds
        self.bad_evals = 0  # validations in a row without improvement (early stopping)
        self.elapsed = 0.0  # seconds spent in fit(), carried across resumes: the metrics' "time"
        self._clock_origin = time.perf_counter()  # perf_counter() - elapsed, set again when fit() starts
        self._stop_signal: int | None = None
        self._tensorboard: Any | None = None
        # The loss of the updates since the last log, on the device; checkpoints carry it, so that the first
        # record after a resume covers its whole log_every interval, as an uninterrupted run's does.
        self.log_window = LogWindow(self.device)

    # ----------------------------------------------------------------------------------------------- loop
    def fit(self) -> dict[str, Any]:
        """Train until ``max_steps``/``max_epochs``, early stopping or a signal; returns the last metrics.

        A signal before the first update stops the run with nothing trained and nothing saved.

        Raises:
            DivergenceError: ``train.max_skipped_updates`` updates in a row were skipped, or the run ended (or a
                signal stopped it) with weights that are not finite, which are never saved.
        """
        t = self.config.train
        previous = self._install_signal_handlers()  # first: a signal from here on stops the run cleanly
        self._start_run_files()
        self._tensorboard = open_tensorboard(self.run_dir / "tensorboard") if self.context.is_main else None
        progress = tqdm(
            # A bar on a terminal only (disable=None); logs and CI get a logged line for the first update, then
            # one per log_every.
            total=self.total_steps, initial=self.step, disable=None if self.context.is_main else True,
            desc="train", unit="step",
        )
        window = self.log_window
        window.restart_clock()
        last_metrics: dict[str, Any] = {}
        self._clock_origin = time.perf_counter() - self.elapsed
        started, first_step = time.perf_counter(), self.step + 1
        try:
            self.train_model.train()
            # Checked before the iterator is touched: a finished or resumed-at-the-end run consumes no batch.
            due = self.step < self.total_steps and self._stop_signal is None
            groups = self._micro_batch_groups() if due else iter(())
            for group in groups:
                loss_sum, nll_sum = self.update(group)
                if self.update.skipped_in_a_row == 0:  # a skipped update's loss is not part of the logged mean
                    window.add(loss_sum, nll_sum, sum(b.n_tgt_tokens for b in group), sum(b.n_src_tokens for b in group))
                self.step += 1
                progress.update(1)
                self._tick()
                if self.step == first_step and progress.disable and self.context.is_main:
                    self._log_first_update(time.perf_counter() - started)
                if self.step % t.log_every == 0 and window.tgt_tokens:  # not when every update was skipped
                    last_metrics = self._log(window.flush(), progress)
                finished = self.step >= self.total_steps
                out_of_patience = False
                if finished or self._validation_due():
                    last_metrics = self._validate_and_save()
                    out_of_patience = t.patience > 0 and self.bad_evals >= t.patience
                elif t.save_every > 0 and self.step % t.save_every == 0:
                    self.checkpoints.save(self.state_dict(), self.model)
                if finished or out_of_patience or self._stop_signal is not None:
                    break  # before the next group is drawn, so the saved data position is exact
            trained = self.step >= first_step
            if self._stop_signal is not None and trained and self.checkpoints.saved_step != self.step:
                logger.warning("signal %d received: saving %s and stopping", self._stop_signal, self.checkpoints.last)
                self.checkpoints.save_last(self.state_dict(), self.model)
            if trained and self.checkpoints.refused_step == self.step:
                how = "stopped by " + signal.Signals(self._stop_signal).name if self._stop_signal else "ended"
                raise DivergenceError(
                    f"training {how} at step {self.step} and nothing was saved: the weights are not finite (the "
                    f"run has diverged; see the warnings above); lower train.lr (now {t.lr:g}) or set "
                    f"train.clip_grad_norm (now {t.clip_grad_norm:g})"
                )
        except DivergenceError as err:
            saved = self.checkpoints.saved_step
            where = (f"the newest good checkpoint is {self.checkpoints.last} (step {saved}): continue from it with "
                     "--resume and those changes" if saved is not None else
                     "no checkpoint was saved: start again with those changes")
            raise DivergenceError(f"{err}; checkpoints hold finite weights only: {where}") from None
        finally:
            progress.close()
            self._restore_signal_handlers(previous)
            if self._tensorboard is not None:
                self._tensorboard.close()
        return last_metrics

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where the latest update left off (what checkpoints hold)."""
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
            "skipped": dict(self.update.skipped),
            "skipped_in_a_row": self.update.skipped_in_a_row,
            "train_pairs": pair_counts(self.train_batches),  # resume checks that the corpus is the same size
            "log_window": self.log_window.state_dict(),  # the loss of the updates since the last log
        }

    @property
    def stop_signal(self) -> int | None:
        """The signal (SIGINT, SIGTERM) that stopped the last ``fit`` early, or None."""
        return self._stop_signal

    def _start_run_files(self) -> None:
        """Write the run's config.json; drop the metrics of the steps after the checkpoint (they run again)."""
        if not self.context.is_main:
            return
        path = self.run_dir / "config.json"
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise write_error(path, err, what="run config") from None
        atomic_write_text(path, json.dumps(self.config.to_dict(), indent=2), what="run config")
        trim_metrics(self.run_dir / "metrics.jsonl", after=self.step)  # and a line cut off by a kill

    def _tick(self) -> None:
        """Advance the run's wall clock (a host timer; no device sync)."""
        self.elapsed = time.perf_counter() - self._clock_origin

    def _validation_due(self) -> bool:
        """Every ``eval_every`` updates, or at the end of each epoch when it is 0."""
        eval_every = self.config.train.eval_every
        if eval_every > 0:
            return self.step % eval_every == 0
        return self.train_batches.state_dict()["position"] >= len(self.train_batches)

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

    # -------------------------------------------------------------------------------- logging, validation
    def _log_first_update(self, seconds: float) -> None:
        """Without a bar (stderr is not a terminal): say that training runs, and when the loss comes."""
        every = self.config.train.log_every
        next_log = (self.step // every + 1) * every
        then = f", next at step {next_log}" if next_log <= self.total_steps else ""
        logger.info(
            "step %d/%d: training runs; the first update took %.1fs; the loss is logged every %d updates "
            "(train.log_every=%d)%s", self.step, self.total_steps, seconds, every, every, then,
        )

    def _log(self, stats: dict[str, float], progress: tqdm) -> dict[str, Any]:
        metrics = {"step": self.step, "epoch": self.train_batches.epoch, "time": round(self.elapsed, 1),
                   "lr": self.scheduler.get_last_lr()[0], **stats}
        metrics.update({f"skipped_{kind}": n for kind, n in self.update.skipped.items() if n})
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
        """Validation loss (per target token) and, when enabled, greedy-decoding BLEU via ``evaluate_model``; for
        several directions, each one's as ``"en-de/loss"`` etc. and their means as ``loss``, ``bleu``, ..."""
        if self.validation is None:
            return {}
        self.model.eval()
        if isinstance(self.validation, ValidationData):
            metrics = self._validate_one(self.validation, self.tokenizer)
        else:
            metrics = mean_over_directions({
                name: self._validate_one(data, self.tokenizer.for_target(parse_direction(name)[1]))
                for name, data in self.validation.items()
            })
        self.model.train()
        return metrics

    def _validate_one(self, data: ValidationData, tokenizer: Tokenizer) -> dict[str, Any]:
        """Loss, NLL, perplexity (and BLEU) of one direction; ``tokenizer`` puts its tag first, if it has one."""
        t = self.config.train
        loss_sum = torch.zeros((), device=self.device)
        nll_sum = torch.zeros((), device=self.device)
        n_tokens = 0
        for batch in data.batches:
            batch = batch.to(self.device, non_blocking=True)
            loss, nll = self.loss(batch)
            loss_sum += loss
            nll_sum += nll
            n_tokens += batch.n_tgt_tokens
        n_tokens = max(1, n_tokens)
        nll = nll_sum.item() / n_tokens
        metrics: dict[str, Any] = {"loss": loss_sum.item() / n_tokens, "nll": nll, "ppl": math.exp(min(nll, 50.0))}
        if t.eval_bleu:
            # The very function `transformer evaluate` uses, so validation BLEU equals offline BLEU.
            greedy = replace(self.config.decode, beam_size=1, n_best=1)
            translator = TorchTranslator(self.model, tokenizer, device=self.device)
            with self.autocast:
                scores, _ = evaluate_model(
                    translator, data.src_texts, data.ref_texts, greedy, max_sentences=t.eval_max_sentences,
                )
            metrics["bleu"] = scores["bleu"]
        return metrics

    def _validate_and_save(self) -> dict[str, Any]:
        """Validate, keep the best score (a NaN is never the best), record, and save the checkpoints."""
        metrics = self.validate()
        self._tick()  # validation time counts in the record
        t = self.config.train
        improved = False
        if metrics:
            # train.best_direction names the direction whose score picks best.pt; else the mean over them.
            prefix = f"{t.best_direction}/" if f"{t.best_direction}/loss" in metrics else ""
            bleu, loss = metrics.get(prefix + "bleu"), metrics[prefix + "loss"]
            score = bleu if t.best_metric == "bleu" and bleu is not None else -loss
            finite = math.isfinite(score) and math.isfinite(loss)
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
        self.checkpoints.save(self.state_dict(), self.model, best=improved)  # every rank: it gathers their RNG states
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


def mean_over_directions(per_direction: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each metric's mean over the directions (what a multilingual run reports, and picks best.pt by), then
    every direction's own as ``"en-de/loss"``: keys that ``plot run`` and TensorBoard (``valid/en-de/loss``) use."""
    names = [key for key in next(iter(per_direction.values())) if all(key in m for m in per_direction.values())]
    means = {key: sum(m[key] for m in per_direction.values()) / len(per_direction) for key in names}
    if "nll" in means:  # the perplexity of the mean NLL, as for one direction (not the mean of perplexities)
        means["ppl"] = math.exp(min(means["nll"], 50.0))
    return {**means, **{f"{name}/{key}": value for name, m in per_direction.items() for key, value in m.items()}}


def open_tensorboard(log_dir: Path) -> Any | None:
    """A TensorBoard ``SummaryWriter`` when the ``tensorboard`` package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(log_dir))


class LogWindow:
    """The loss and NLL summed over the updates since the last log, on the device; ``flush`` is the one sync.

    The sums and their target tokens carry across a resume (``state_dict``); the throughput counts the tokens
    of this process since its clock last started.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.load_state_dict({})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss = torch.tensor(state.get("loss", 0.0), dtype=torch.float32, device=self.device)
        self.nll = torch.tensor(state.get("nll", 0.0), dtype=torch.float32, device=self.device)
        self.tgt_tokens = int(state.get("tgt_tokens", 0))
        self.restart_clock()

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers (a host-device sync: at checkpoints only)."""
        return {"loss": self.loss.item(), "nll": self.nll.item(), "tgt_tokens": self.tgt_tokens}

    def restart_clock(self) -> None:
        self.timed_tgt_tokens = 0
        self.timed_src_tokens = 0
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor, nll: torch.Tensor, tgt_tokens: int, src_tokens: int) -> None:
        self.loss += loss
        self.nll += nll
        self.tgt_tokens += tgt_tokens
        self.timed_tgt_tokens += tgt_tokens
        self.timed_src_tokens += src_tokens

    def flush(self) -> dict[str, float]:
        n = max(1, self.tgt_tokens)
        nll = self.nll.item() / n
        elapsed = max(1e-9, time.perf_counter() - self.start)
        stats = {
            "loss": self.loss.item() / n,
            "nll": nll,
            "ppl": math.exp(min(nll, 50.0)),
            "tgt_tokens_per_s": self.timed_tgt_tokens / elapsed,
            "tokens_per_s": (self.timed_tgt_tokens + self.timed_src_tokens) / elapsed,
        }
        self.load_state_dict({})
        return stats
