"""Small file-system helpers that several parts of the package share: atomic writes, is a process alive.

Imports nothing of ours but ``errors``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from transformer.errors import write_error


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through: it becomes ``path`` only when the block ends without an error.

    The data goes to ``.NAME.PID.tmp`` beside ``path`` (a run folder's sweep removes those of killed writers),
    is flushed to disk, then renamed over ``path``: readers, and a crash at any point, see the old file or the
    new one, never half of one. On an error the temporary file is removed and the error passes on unchanged.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, what: str = "file") -> None:
    """Write ``data`` to ``path`` atomically (``atomic_open``).

    Raises:
        OutputError: the file cannot be written (the message names ``what`` and the reason).
    """
    try:
        with atomic_open(path) as f:
            f.write(data)
    except OSError as err:
        raise write_error(path, err, what=what) from None


def atomic_write_text(path: str | os.PathLike[str], text: str, *, what: str = "file") -> None:
    """``atomic_write_bytes`` of ``text`` in UTF-8 (line ends as given)."""
    atomic_write_bytes(path, text.encode("utf-8"), what=what)


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (one run by another user counts).

    Pids 0 and below name process groups, not a process, for ``os.kill``: they are never alive here.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, run by someone else
        return True
    return True
