"""Resuming a run: the settings check, the trainer's state loaded back, and another number of processes.

A run continues exactly only with the model, vocabulary, batching, seed and optimizer it started with: the
checkpoint's weights, data position and optimizer state mean nothing under others. What only steers the run
from here on (the learning rate and its schedule, when to stop, validate, log and save, where the files are,
the device, decoding) may change; ``resume_trainer`` applies them from the current step. A run may also
continue on another number of processes that keeps the batches per update.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from transformer.checkpoint import load_checkpoint, load_model_state
from transformer.config import Config, ConfigError
from transformer.data.mixing import pair_counts
from transformer.errors import ResumeError
from transformer.training.checkpointing import complete_cut_off_writes
from transformer.training.rng import set_rng_states

if TYPE_CHECKING:
    from transformer.training.trainer import Trainer

logger = logging.getLogger(__name__)

# section -> keys that may differ from the checkpoint's ("*": every key of the section).
CHANGEABLE: dict[str, frozenset[str]] = {
    "train": frozenset({
        "run_dir", "device", "threads", "compile", "lr", "min_lr", "schedule", "warmup_steps", "max_steps",
        "max_epochs", "log_every", "eval_every", "eval_bleu", "eval_max_sentences", "patience",
        "keep_last", "save_every", "clip_grad_norm", "max_skipped_updates",
    }),
    # Where the files are, not what they hold: the number of training pairs is checked separately.
    "data": frozenset({
        "data_dir", "files", "hub_data_files", "test_split", "cache_dir", "prepare_workers",
    }),
    "decode": frozenset({"*"}),
}


def resume_trainer(trainer: Trainer, path: str | Path | None = None) -> None:
    """Continue ``trainer``'s run from ``path`` (default: the run's ``checkpoints/last.pt``).

    Settings that cannot change mid-run must equal the checkpoint's; the others (``CHANGEABLE``) take effect
    now: the next update's learning rate is this config's schedule at this step. On the main process, the
    ``step_N.pt`` and ``best.pt`` that a kill kept from being written after ``last.pt`` are written.

    Raises:
        CheckpointError: ``path`` cannot be read or does not fit the model.
        ResumeError: a setting that cannot change differs, or the corpus has another number of pairs.
    """
    last = trainer.checkpoints.last
    path = Path(path) if path is not None else last
    where = str(path)
    state = load_checkpoint(path, map_location=trainer.device)
    changes = changed_settings(state["config"], trainer.config, where=where)
    check_resume_settings(_world_change_allowed(changes, state, trainer, where=where), where=where)
    pairs, now = state.get("train_pairs"), pair_counts(trainer.train_batches)
    if pairs is not None and pairs != now:
        raise ResumeError(
            f"cannot resume {path}: the training corpus has {_count(now)} pairs after filtering, the checkpoint's "
            f"had {_count(pairs)}, so its data position means nothing now; use the corpus of the run, or start a "
            "new run"
        )
    load_training_state(trainer, state, where=where)
    apply_lr_schedule(trainer.optimizer, trainer.scheduler, trainer.config.train.lr)
    if path == last:
        trainer.checkpoints.saved_step = trainer.step  # the newest good checkpoint, until this run saves one
    if trainer.context.is_main:
        for change in changes:
            logger.info("resuming with %s: in effect from step %d", change, trainer.step + 1)
        if path == last:
            complete_cut_off_writes(path, state)
    logger.info("resumed from %s at step %d", path, trainer.step)


def load_training_state(trainer: Trainer, state: dict[str, Any], *, where: str = "checkpoint") -> None:
    """Put back what ``Trainer.state_dict`` saved; the data position converted to this world size."""
    context = trainer.context
    load_model_state(trainer.model, state["model"], where=where)
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.scaler.load_state_dict(state["scaler"])
    trainer.step = state["step"]
    trainer.train_batches.load_state_dict(data_position(state, context.world_size, where=where))
    trainer.best_score = state["best_score"]
    trainer.bad_evals = state["bad_evals"]
    trainer.elapsed = state.get("elapsed", 0.0)  # absent from checkpoints written before it was recorded
    # Absent from checkpoints written before fault handling: no best step known, nothing skipped.
    trainer.best_step = state.get("best_step")
    update = trainer.update
    update.skipped = {**{kind: 0 for kind in update.skipped}, **state.get("skipped", {})}
    update.skipped_in_a_row = state.get("skipped_in_a_row", 0)
    # The loss of the updates since the last log (absent from older checkpoints: the first record after the
    # resume then covers the updates since the resume only).
    trainer.log_window.load_state_dict(state.get("log_window", {}))
    ranks = state.get("rng_ranks")  # absent from single-process checkpoints and older ones
    same_world = ranks is not None and len(ranks) == context.world_size
    set_rng_states(ranks[context.rank] if same_world else state["rng"])
    if not same_world and context.rank > 0:  # a new world: the other ranks draw their own dropout masks
        torch.manual_seed(trainer.config.train.seed + 1000 * context.rank + trainer.step)


def apply_lr_schedule(
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR, lr: float
) -> None:
    """Set the next update's learning rate from base rate ``lr`` and the schedule at the scheduler's step.

    The loaded optimizer and scheduler states carry the checkpoint's base rate; with an unchanged config the
    result is the very value they held (the scheduler's own formula).
    """
    scheduler.base_lrs = [lr] * len(optimizer.param_groups)
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group["initial_lr"] = lr
        group["lr"] = lr * factor(scheduler.last_epoch)


def data_position(state: dict[str, Any], world_size: int, *, where: str) -> dict[str, int]:
    """The checkpoint's data position for a run on ``world_size`` processes.

    A position counts one rank's batches of the epoch; rank r of N takes batches r, r + N, ... So N processes
    at position p have used the first p * N batches, which M processes reach at position p * N / M. The tokens
    per update (``data.max_tokens`` x ``train.grad_accum_steps`` x processes) are kept by the resume check, so
    the division is exact at every update boundary.

    Raises:
        ResumeError: the position cannot be split evenly over ``world_size`` processes, or the run mixes several
            directions (each rank's draws of a direction depend on the number of processes).
    """
    saved_world = state.get("world_size", 1)  # absent from checkpoints written before it was recorded
    position = dict(state["data"])
    if saved_world == world_size:
        return position
    if "directions" in position:
        raise ResumeError(
            f"{where} was written by {saved_world} process(es) and mixes several data.directions, whose batches "
            f"depend on the number of processes; resume it with {saved_world} process(es)"
        )
    used = position["position"] * saved_world
    if used % world_size:
        raise ResumeError(
            f"{where} was written by {saved_world} process(es) after {used} batches of epoch {position['epoch']}, "
            f"which {world_size} processes cannot share evenly; resume it with {saved_world} process(es)"
        )
    logger.info("resuming a %d-process run on %d process(es): data position %d -> %d", saved_world, world_size,
                position["position"], used // world_size)
    return {"epoch": position["epoch"], "position": used // world_size}


def _world_change_allowed(changes: list[Change], state: dict[str, Any], trainer: Trainer, *, where: str) -> list[Change]:
    """``changes`` without a ``train.grad_accum_steps`` change that keeps the batches per update.

    A run may resume on another number of processes when ``grad_accum_steps x processes`` stays the same
    (2 processes accumulating 1 batch = 1 process accumulating 2): the updates are the same.

    Raises:
        ResumeError: the number of processes changed and the batches per update with it.
    """
    saved_world, world = state.get("world_size", 1), trainer.context.world_size
    saved_accum = state["config"].get("train", {}).get("grad_accum_steps", 1)
    accum = trainer.config.train.grad_accum_steps
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


@dataclass(frozen=True)
class Change:
    """One setting that differs between the checkpoint and the config asked for."""

    key: str  # "train.lr"
    saved: Any
    asked: Any

    def __str__(self) -> str:
        return f"{self.key}={_show(self.asked)} (checkpoint: {_show(self.saved)})"


def changed_settings(saved: dict[str, Any], current: Config, *, where: str) -> list[Change]:
    """Every key whose value in ``current`` differs from the checkpoint's config ``saved``.

    ``saved`` goes through ``Config.from_saved`` first, so keys added since the checkpoint was written take
    their defaults and renamed values their new names, as when the checkpoint is loaded for inference.
    """
    try:
        old = Config.from_saved(saved, where=f"config in {where}").to_dict()
    except ConfigError as err:
        raise ResumeError(str(err)) from None
    new = current.to_dict()
    return [
        Change(f"{section}.{key}", old[section].get(key), value)
        for section, values in new.items()
        for key, value in values.items()
        if _normal(old[section].get(key)) != _normal(value)
    ]


def is_changeable(key: str) -> bool:
    section, name = key.split(".", 1)
    allowed = CHANGEABLE.get(section, frozenset())
    return "*" in allowed or name in allowed


def check_resume_settings(changes: list[Change], *, where: str) -> None:
    """Raise for the changes that cannot be applied in the middle of a run.

    Raises:
        ResumeError: names every fixed key with its asked and saved values, and what to do.
    """
    fixed = [c for c in changes if not is_changeable(c.key)]
    if fixed:
        shown = ", ".join(map(str, fixed))
        raise ResumeError(
            f"cannot resume {where} with other settings: {shown}; these cannot change in the middle of a run "
            "(model, vocabulary, batching, seed, optimizer): set them back to the checkpoint's values, or start a "
            "new run with another train.run_dir (or --overwrite)"
        )


def _count(pairs: int | dict[str, int]) -> str:
    """``520``, or ``en-de 520, de-en 520`` for several directions."""
    return ", ".join(f"{name} {n}" for name, n in pairs.items()) if isinstance(pairs, dict) else str(pairs)


def _normal(value: Any) -> Any:
    """Lists and tuples compare equal (a checkpoint that went through JSON or YAML keeps lists)."""
    return [_normal(v) for v in value] if isinstance(value, (list, tuple)) else value


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(_show, value)) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)
