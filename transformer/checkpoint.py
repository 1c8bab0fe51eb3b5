"""Checkpoints: plain tensors and Python values only, written atomically, loaded with ``weights_only=True``.

A training checkpoint holds everything needed to continue exactly: model, optimizer, scheduler and scaler
states, the step, the data iterator's position (epoch and batch), every RNG state, the resolved config and the
vocabulary. It never holds pickled objects, so loading one can never run code.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from transformer.config import Config, ConfigError
from transformer.data.tokenizer import Tokenizer
from transformer.errors import CheckpointError, CheckpointWriteError, os_reason
from transformer.files import atomic_open, space_note
from transformer.model.transformer import Transformer

FORMAT_VERSION = 1


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically (``files.atomic_open``): a crash mid-write leaves the previous file.

    Raises:
        CheckpointWriteError: (a ``CheckpointError`` and an ``OSError``) the file cannot be written (full disk,
            no permission, a file where a folder should be, a folder at ``path``); the message names the path and
            the reason (on a full disk, about how much the file needs and how much is free), the previous file is
            intact and the temporary file removed.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path) as f:
            torch.save({"format_version": FORMAT_VERSION, **state}, f)
    except (OSError, RuntimeError) as err:
        # torch's zip writer turns a failed write of the file (ENOSPC, EIO, ...) into a RuntimeError ("enforce fail
        # at inline_container.cc ... unexpected pos") raised while handling it: the OSError is in its context.
        cause = _os_error_in(err)
        if cause is None:
            raise
        kept = " (the previous file is unchanged)" if path.is_file() else ""
        reason = os_reason(cause, path) + space_note(cause, path, _payload_bytes(state))
        raise CheckpointWriteError(f"cannot write checkpoint {path}{kept}: {reason}") from None


def _os_error_in(err: BaseException | None) -> OSError | None:
    """``err`` if it is an ``OSError``, else the first one in the chain of errors it was raised from or during."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _payload_bytes(obj: Any) -> int:
    """Bytes of the tensor storages (each once) and byte strings (the vocabulary) in a nested state: about the
    size of its file."""
    storages: dict[tuple[str, int], int] = {}

    def visit(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            storage = x.untyped_storage()
            storages[(str(x.device), storage.data_ptr())] = storage.nbytes()
        elif isinstance(x, (bytes, bytearray)):  # pickle protocol 2 stores bytes as latin-1 text in UTF-8
            storages[("bytes", id(x))] = len(bytes(x).decode("latin-1").encode("utf-8"))
        elif isinstance(x, dict):
            for v in x.values():
                visit(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                visit(v)

    visit(obj)
    return sum(storages.values())


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``.

    Raises:
        CheckpointError: the file is missing, a folder, unreadable, empty, truncated, not a checkpoint, or
            holds pickled objects; the message says which and what to give instead.
    """
    path = Path(path)
    instead = "give a .pt file written by `transformer train` (RUN_DIR/checkpoints/best.pt) or `transformer average`"
    if path.is_dir():
        found = [p for folder in (path, path / "checkpoints") for p in (folder / "best.pt", folder / "last.pt")]
        found = [p for p in found if p.is_file()] or sorted(path.glob("*.pt"))
        example = f", e.g. {found[0]}" if found else ""
        raise CheckpointError(f"checkpoint {path} is a folder, not a file; {instead}{example}")
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path} does not exist; {instead}")
    try:
        f = open(path, "rb")
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {os_reason(err, path)}") from None
    with f, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about pickle protocols of foreign files
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise CheckpointError(f"cannot read checkpoint {path}: the file is empty (cut off in writing?); {instead}")
        try:
            state = torch.load(f, map_location=map_location, weights_only=True)
        except Exception as err:  # torch raises many types (UnpicklingError, OSError, RuntimeError, EOFError, ...)
            # Never pass on PyTorch's own text: for a file its safe loader refuses, it advises weights_only=False,
            # which would run whatever code the file holds.
            what = "its safe loader refuses it" if isinstance(err, pickle.UnpicklingError) else type(err).__name__
            raise CheckpointError(
                f"cannot read checkpoint {path} ({size} bytes): it is not a checkpoint of this project, or it is "
                f"truncated or corrupt (PyTorch: {what}); {instead}"
            ) from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not a checkpoint of this project (no 'model'/'config' entries); {instead}")
    return state


def load_model_state(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], *, where: str) -> None:
    """``load_state_dict`` with an error that names every missing, unexpected or mis-shaped entry."""
    own = model.state_dict()
    problems = [f"missing: {k}" for k in own if k not in state_dict]
    problems += [f"unexpected: {k}" for k in state_dict if k not in own]
    problems += [
        f"shape of {k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and v.shape != own[k].shape
    ]
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... ({len(problems)} in all)" if len(problems) > 8 else "")
        raise CheckpointError(f"{where} does not match the model built from its config: {shown}")
    model.load_state_dict(state_dict)


def load_for_inference(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[Transformer, Tokenizer, Config]:
    """Rebuild the model (in eval mode on ``device``), the tokenizer and the config from one checkpoint file.

    Raises:
        CheckpointError: see ``load_checkpoint``; or the file's config, vocabulary or weights cannot be used
            (weights that are not finite, NaN or inf, translate to nothing: the message names the first of them).
    """
    state = load_checkpoint(path)
    try:
        config = Config.from_saved(state["config"], where=f"config in {path}")
    except ConfigError as err:
        raise CheckpointError(str(err)) from None
    if "tokenizer" not in state:
        raise CheckpointError(f"{path} carries no vocabulary ('tokenizer' entry); it cannot translate text")
    try:
        tokenizer = Tokenizer.from_state(state["tokenizer"])
    except (ValueError, TypeError, RuntimeError) as err:  # RuntimeError: SentencePiece cannot parse the model
        raise CheckpointError(f"the vocabulary stored in {path} cannot be read: {err}") from None
    bad = [
        k for k, v in state["model"].items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()
    ]
    if bad:
        shown = ", ".join(bad[:3]) + (f" ... ({len(bad)} in all)" if len(bad) > 3 else "")
        raise CheckpointError(
            f"{path} has weights that are not finite (NaN or inf): {shown}; it cannot translate: use another "
            "checkpoint (an earlier one of its run, e.g. RUN_DIR/checkpoints/best.pt or a step_*.pt)"
        )
    model = Transformer(config.model)
    load_model_state(model, state["model"], where=str(path))
    return model.to(device).eval(), tokenizer, config


def average_checkpoints(
    paths: list[str | Path], *, progress: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Element-wise mean of the model weights of ``paths`` (as fairseq's ``average_checkpoints.py``).

    The result keeps the config and vocabulary of the last checkpoint and drops the optimizer state: it is
    for evaluation and translation, not for resuming. ``progress``, if given, is called with 1 after each
    checkpoint is added.

    Raises:
        CheckpointError: no paths, or checkpoints whose weights differ in names or shapes.
    """
    if not paths:
        raise CheckpointError("no checkpoints to average (a run keeps its step checkpoints in RUN_DIR/checkpoints/step_*.pt)")
    total: dict[str, torch.Tensor] = {}
    last: dict[str, Any] = {}
    for path in paths:
        last = load_checkpoint(path)
        weights = last["model"]
        if total and (weights.keys() != total.keys() or any(weights[k].shape != total[k].shape for k in total)):
            raise CheckpointError(f"{path} has different weights than {paths[0]}; average checkpoints of one run")
        for name, tensor in weights.items():
            # Out of place: tied weights are one tensor under several names, and a float64 ``tensor.double()``
            # is that very tensor, so an in-place sum would add it once per name.
            if not tensor.is_floating_point():
                total.setdefault(name, tensor.clone())
            else:
                total[name] = total[name] + tensor.double() if name in total else tensor.double().clone()
        if progress is not None:
            progress(1)
    first = load_checkpoint(paths[0])["model"]
    model = {
        name: (t / len(paths)).to(first[name].dtype) if first[name].is_floating_point() else t
        for name, t in total.items()
    }
    kept = {k: last[k] for k in ("config", "tokenizer", "step") if k in last}
    return {**kept, "model": model, "averaged_from": [str(p) for p in paths]}
