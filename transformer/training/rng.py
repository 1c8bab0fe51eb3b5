"""The random number generators a training run draws from, saved in and restored from checkpoints."""

from __future__ import annotations

import random
from typing import Any

import torch


def rng_states() -> dict[str, Any]:
    """Every RNG the training loop draws from (dropout, shuffling helpers)."""
    states: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what ``rng_states`` saved."""
    random.setstate(_as_python_state(states["python"]))
    torch.set_rng_state(states["torch"].cpu())
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in states["cuda"]])


def _as_python_state(state: Any) -> tuple:
    # torch.save keeps tuples, but be lenient with lists (e.g. a state that went through JSON).
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
