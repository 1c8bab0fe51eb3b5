"""Which settings may change when a run is resumed, and the check of the others against the checkpoint.

A run continues exactly only with the model, vocabulary, batching, seed and optimizer it started with: the
checkpoint's weights, data position and optimizer state mean nothing under others. What only steers the run
from here on (the learning rate and its schedule, when to stop, validate, log and save, where the files are,
the device, decoding) may change; ``Trainer.resume`` applies the new values from the current step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformer.config import Config, ConfigError
from transformer.errors import ResumeError

# section -> keys that may differ from the checkpoint's ("*": every key of the section).
CHANGEABLE: dict[str, frozenset[str]] = {
    "train": frozenset({
        "run_dir", "device", "threads", "compile", "lr", "min_lr", "schedule", "warmup_steps", "max_steps",
        "max_epochs", "max_minutes", "log_every", "eval_every", "eval_bleu", "eval_max_sentences", "patience",
        "keep_last", "save_every", "clip_grad_norm", "max_skipped_updates",
    }),
    # Where the files are, not what they hold: the number of training pairs is checked separately.
    "data": frozenset({
        "data_dir", "train_src", "train_tgt", "valid_src", "valid_tgt", "test_src", "test_tgt", "train_tsv",
        "valid_tsv", "test_tsv", "hub_data_files", "test_split", "cache_dir", "prepare_workers",
    }),
    "decode": frozenset({"*"}),
}


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

    ``saved`` goes through ``Config.from_dict`` first, so keys added since the checkpoint was written take
    their defaults and renamed values their new names, as when the checkpoint is loaded for inference.
    """
    try:
        old = Config.from_dict(saved, where=f"config in {where}").to_dict()
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


def _normal(value: Any) -> Any:
    """Lists and tuples compare equal (a checkpoint that went through JSON or YAML keeps lists)."""
    return [_normal(v) for v in value] if isinstance(value, (list, tuple)) else value


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(_show, value)) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)
