"""The checkpoints of a run: what they hold, the order they are written in, and completing cut-off writes.

``RUN_DIR/checkpoints`` holds ``last.pt`` (the newest state; the commit point), ``step_N.pt`` (the newest
``train.keep_last``) and ``best.pt`` (the best validation). They are written in that order, ``last.pt`` first,
so a kill anywhere leaves a folder that resume continues exactly: a kill before ``last.pt`` leaves the previous
one, from which the run replays the lost steps; a kill after it leaves a ``last.pt`` that says a step file goes
with it (``step_file``) and whether it is the best (``best_step``), from which ``complete_cut_off_writes``
writes what is missing. Weights that are not finite are never saved. The files themselves are written and read
by ``transformer.checkpoint``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transformer.checkpoint import load_checkpoint, save_checkpoint
from transformer.errors import CheckpointError
from transformer.training.distributed import DistributedContext
from transformer.training.rng import rng_states

logger = logging.getLogger(__name__)


class RunCheckpoints:
    """Writes a run's checkpoints into ``folder``; every rank calls ``save`` (it gathers their RNG states)."""

    def __init__(self, folder: str | Path, *, keep_last: int, context: DistributedContext) -> None:
        self.folder = Path(folder)
        self.last = self.folder / "last.pt"
        self.keep_last = keep_last
        self.context = context
        # Known on every rank: the step of the newest last.pt (written here, or the one a run resumed from), and
        # the step of the latest save refused because the weights were not finite.
        self.saved_step: int | None = None
        self.refused_step: int | None = None

    def save(self, state: dict[str, Any], model: nn.Module, *, best: bool = False) -> None:
        """``state`` (a trainer's ``state_dict``) as ``last.pt``, then ``step_N.pt`` (if ``keep_last``), then
        ``best.pt`` if ``best``; old step files go. Nothing is written while ``model`` has non-finite weights.

        Raises:
            CheckpointWriteError: a file cannot be written (the files before it are written, the rest not).
        """
        rng_ranks = self._rng_states_of_all_ranks()  # a collective: before the other ranks return
        step = state["step"]
        if not self._finite(model, step):
            return
        if self.context.is_main:
            self._write(state, rng_ranks, best=best)
        self.saved_step = step

    def _write(self, state: dict[str, Any], rng_ranks: list[dict[str, Any]] | None, *, best: bool) -> None:
        step = state["step"]
        state = {**state, "step_file": self.keep_last > 0}
        if rng_ranks is not None:
            state["rng_ranks"] = rng_ranks
        save_checkpoint(state, self.last)
        if self.keep_last > 0:
            save_checkpoint(state, self.folder / f"step_{step:08d}.pt")
        if best:
            save_checkpoint(state, self.folder / "best.pt")
        if self.keep_last > 0:
            for old in sorted(self.folder.glob("step_*.pt"))[: -self.keep_last]:
                old.unlink()

    def save_last(self, state: dict[str, Any], model: nn.Module) -> None:
        """``last.pt`` alone, on the main process only (a signal stopped the run: the ranks may be one update
        apart, so there is no collective, and rank 0's RNG states stand for all)."""
        if not self._finite(model, state["step"]):
            return
        if self.context.is_main:
            save_checkpoint(state, self.last)
        self.saved_step = state["step"]

    def _finite(self, model: nn.Module, step: int) -> bool:
        """``weights_are_finite`` on every rank (the weights are the same; the main process warns)."""
        if weights_are_finite(model, step, warn=self.context.is_main):
            return True
        self.refused_step = step
        return False

    def _rng_states_of_all_ranks(self) -> list[dict[str, Any]] | None:
        """Under DDP, every rank's RNG states (each rank draws its own dropout masks), else None."""
        if not self.context.enabled:
            return None
        states: list[Any] = [None] * self.context.world_size
        torch.distributed.all_gather_object(states, rng_states())
        return states


def weights_are_finite(model: nn.Module, step: int, *, warn: bool = True) -> bool:
    """True when every weight is finite; else warn (if ``warn``): a checkpoint never holds NaN or inf."""
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad and warn:
        logger.warning("step %d: not saving a checkpoint: %d weight tensor(s) are not finite (%s)",
                       step, len(bad), ", ".join(bad[:3]))
    return not bad


def complete_cut_off_writes(last: Path, state: dict[str, Any]) -> None:
    """Write the ``step_N.pt`` and ``best.pt`` that belong with ``last`` (a run folder's ``last.pt``, the commit
    point, read as ``state``) if a kill cut their writes off. For the main process only."""
    step = state["step"]
    step_file = last.with_name(f"step_{step:08d}.pt")
    if state.get("step_file") and not step_file.is_file():
        logger.warning("writing %s: it belongs with %s, and a kill cut off its write", step_file, last.name)
        save_checkpoint(state, step_file)
    best = last.with_name("best.pt")
    if state.get("best_step") != step:
        return
    try:
        current = load_checkpoint(best, map_location="cpu").get("step") if best.is_file() else None
    except CheckpointError:
        current = None
    if current != step:
        logger.warning("writing %s: %s holds the best validation (step %d)", best, last.name, step)
        save_checkpoint(state, best)
