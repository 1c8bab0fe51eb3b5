"""A run folder belongs to one run: a lock file, the ownership check, ``--overwrite``, the sweep of stale files.

The layout of ``RUN_DIR``: ``config.json``, ``metrics.jsonl``, ``tokenizer/`` (the vocabulary files),
``tensorboard/`` (event files), ``checkpoints/{last,best,step_*}.pt`` and, while a process trains into it,
``train.lock`` with that process's pid and host. Anything else in it is the user's and is never removed. The lock is an ``flock`` held for the life of the process, so the kernel drops it when the
process dies, however it dies; a lock file that nobody holds is stale and is taken over with a warning.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from transformer.data.tokenizer import JOINT_MODEL, META_FILE, SRC_MODEL, TGT_MODEL
from transformer.errors import RunDirError, write_error
from transformer.files import atomic_write_text, process_alive

if sys.platform != "win32":
    import fcntl
else:  # pragma: no cover - no flock on Windows: the pid check alone decides whether a lock is stale
    fcntl = None

logger = logging.getLogger(__name__)

LOCK_FILE = "train.lock"
# What training writes into a run folder, and nothing else: --overwrite removes these only.
RUN_FILES = ("config.json", "metrics.jsonl")
VOCABULARY_FILES = (META_FILE, JOINT_MODEL, SRC_MODEL, TGT_MODEL)  # in tokenizer/
TENSORBOARD_PATTERN = "events.out.tfevents.*"  # in tensorboard/ (SummaryWriter's event files)
CHECKPOINT_PATTERNS = ("last.pt", "best.pt", "step_*.pt")


class RunFolder:
    """``RUN_DIR`` as one training process claims it: lock, check, clear, sweep (rank 0 only under torchrun)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.checkpoint_dir = self.path / "checkpoints"
        self.tokenizer_dir = self.path / "tokenizer"
        self.tensorboard_dir = self.path / "tensorboard"
        self.lock_path = self.path / LOCK_FILE
        self._fd: int | None = None

    # ---------------------------------------------------------------------------------------------- lock
    def lock(self) -> None:
        """Take ``train.lock`` (a no-op when this object holds it already).

        Raises:
            RunDirError: another live process holds it; the message names its pid, host and start time.
            OutputError: the folder or the lock file cannot be written.
        """
        if self._fd is not None:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = self._open_locked()
            previous = _read_owner(fd)
            if previous:
                logger.warning(
                    "%s: taking over a stale lock of pid %s on %s (started %s): that process has ended",
                    self.lock_path, previous.get("pid"), previous.get("host"), previous.get("started"),
                )
            owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(owner).encode(), 0)
            os.fsync(fd)
        except OSError as err:
            raise write_error(self.lock_path, err, what="lock file") from None
        self._fd = fd

    def lock_if_possible(self) -> None:
        """``lock`` if the folder exists or can be made; otherwise leave it to the first write to say why."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError:
            return
        self.lock()

    def _open_locked(self) -> int:
        while True:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            if not self._try_lock(fd):
                owner = _read_owner(fd)
                os.close(fd)
                raise RunDirError(
                    f"{self.path} is in use by another training run (pid {owner.get('pid', '?')} on "
                    f"{owner.get('host', '?')}, started {owner.get('started', '?')}; lock file {self.lock_path}): "
                    "wait for it to finish or stop it, or choose another train.run_dir"
                )
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.lock_path).st_ino == os.fstat(fd).st_ino:
                    return fd
            os.close(fd)  # its owner released it (removed the file) between our open and our lock: again

    def _try_lock(self, fd: int) -> bool:
        if fcntl is None:
            owner = _read_owner(fd)
            return not owner or owner.get("host") != socket.gethostname() or not process_alive(int(owner.get("pid", 0)))
        # A plain flock, not the filelock package: its FileLock (3.x) opens the file with O_TRUNC before it tries
        # the lock, erasing the holder's pid, host and start time that a refused run reports; it also keeps its
        # descriptor to itself (the owner is written through ours) and leaves the file in place on release.
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def release(self) -> None:
        """Remove ``train.lock`` and let it go (the file goes first, so that a waiting process sees a new one)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.lock_path.unlink()
        os.close(self._fd)
        self._fd = None

    # -------------------------------------------------------------------------------- what the folder holds
    def checkpoints(self) -> list[Path]:
        """The checkpoints training wrote here (``average``'s output or other files are not among them)."""
        found = {p for pattern in CHECKPOINT_PATTERNS for p in self.checkpoint_dir.glob(pattern) if p.is_file()}
        return sorted(found)

    def has_vocabulary(self) -> bool:
        """True when ``tokenizer/`` holds a complete vocabulary (``tokenizer.json`` is written last)."""
        return (self.tokenizer_dir / META_FILE).is_file()

    def check(self, *, resume: bool) -> None:
        """Check that the folder may be trained into; changes nothing (call it under the lock).

        Raises:
            RunDirError: the folder holds a run and ``resume`` is False; or ``resume`` is True and there is no
                ``checkpoints/last.pt`` to continue.
        """
        held = self.checkpoints()
        last = self.checkpoint_dir / "last.pt"
        if resume and not last.is_file():
            found = f" (it holds {_names(held, self.path)})" if held else ""
            raise RunDirError(f"--resume: there is no {last} to continue{found}; start the run without --resume")
        if not resume and held:
            raise RunDirError(
                f"{self.path} already holds a run ({_names(held, self.path)}); add --resume to continue it, "
                "--overwrite to delete it and start again, or choose another train.run_dir"
            )

    def take(self, *, overwrite: bool, resume: bool) -> None:
        """Before anything is written: lock (``overwrite``: ``clear``), and with ``resume`` check for ``last.pt``.

        A folder that cannot be made is not locked: the first write into it says why.

        Raises:
            RunDirError: the folder is in use, or ``resume`` has no ``last.pt`` to continue.
        """
        self.clear() if overwrite else self.lock_if_possible()
        if resume:
            self.check(resume=True)

    def claim(self, *, resume: bool) -> None:
        """Lock the folder, ``check`` it, and sweep what killed writes left behind.

        Raises:
            RunDirError: the folder is in use, or ``check`` refuses it.
        """
        self.lock()
        self.check(resume=resume)
        self.sweep()

    def sweep(self) -> list[Path]:
        """Remove the temporary files of writes that a kill cut short (only the lock holder may)."""
        stale = [p for folder in (self.path, self.checkpoint_dir) for p in folder.glob(".*.tmp") if p.is_file()]
        for path in stale:
            path.unlink(missing_ok=True)
        if stale:
            logger.warning("removed %d temporary file(s) of interrupted writes: %s", len(stale), _names(stale, self.path))
        return stale

    def written_by_training(self) -> list[Path]:
        """The files training wrote here: ``RUN_FILES``, the vocabulary files, TensorBoard's event files, the
        checkpoints, and the temporary files of cut-off writes. A user's files beside them are not among them."""
        found = [self.path / name for name in RUN_FILES]
        found += [self.tokenizer_dir / name for name in VOCABULARY_FILES]
        found += sorted(self.tensorboard_dir.glob(TENSORBOARD_PATTERN)) + self.checkpoints()
        for folder in (self.path, self.tokenizer_dir, self.checkpoint_dir):
            found += sorted(folder.glob(".*.tmp"))
        return [p for p in found if p.is_file()]

    def clear(self) -> list[Path]:
        """``--overwrite``: remove what training wrote here (under the lock), log it, and return the paths.

        Everything else is kept, and logged as kept: e.g. ``checkpoints/avg10.pt`` from ``transformer average``,
        or the user's notes in ``tokenizer/``; a folder is removed only when nothing is left in it.
        """
        self.lock()
        removed = self.written_by_training()
        try:
            for path in removed:
                path.unlink(missing_ok=True)
        except OSError as err:
            raise write_error(err.filename or self.path, err, what="old run's file") from None
        _remove_empty(self.tokenizer_dir, self.tensorboard_dir, self.checkpoint_dir)
        if removed:
            logger.warning("--overwrite: removed the previous run in %s: %s", self.path, _names(removed, self.path, None))
        kept = sorted(p for p in self.path.rglob("*") if p.is_file() and p != self.lock_path)
        if kept:
            logger.warning("--overwrite: kept %s (not written by training)", _names(kept, self.path, 20))
        return removed

    def remove_vocabulary(self) -> None:
        """Remove the vocabulary files from ``tokenizer/`` (and the folder, if nothing else is in it).

        A clean-up after a failed start: it never raises (the error that ended the start is the one to report).
        """
        for name in VOCABULARY_FILES:
            with contextlib.suppress(OSError):
                (self.tokenizer_dir / name).unlink(missing_ok=True)
        _remove_empty(self.tokenizer_dir)

    def remove_if_empty(self) -> None:
        """Remove the run folder if nothing is in it (a command that made it and then wrote nothing)."""
        _remove_empty(self.path)

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def trim_metrics(path: str | os.PathLike[str], *, after: int) -> int:
    """Drop the records of ``metrics.jsonl`` past step ``after`` (and a line cut off by a kill).

    A resumed run replays the steps after its checkpoint and logs them again; without this they would
    appear twice. Returns the number of lines dropped. The file is rewritten atomically.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            step = int(record["step"])
        except (ValueError, KeyError, TypeError):
            dropped += 1  # a half-written line
            continue
        if step <= after:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        atomic_write_text(path, "".join(line + "\n" for line in kept), what="metrics file")
        logger.info("%s: dropped %d record(s) after step %d (those steps run again)", path, dropped, after)
    return dropped


def _read_owner(fd: int) -> dict[str, Any]:
    try:
        owner = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
    except (OSError, ValueError):
        return {"pid": "?"}  # unreadable: still an owner to report
    return owner if isinstance(owner, dict) else {"pid": "?"}


def _remove_empty(*folders: Path) -> None:
    for folder in folders:
        with contextlib.suppress(OSError):  # not empty, or not there
            folder.rmdir()


def _names(paths: Iterable[Path], root: Path, limit: int | None = 6) -> str:
    names = [str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in paths]
    if limit is None or len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f" and {len(names) - limit} more"
