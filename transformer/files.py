"""Small file-system helpers that several parts of the package share: atomic writes, is a process alive.

Imports nothing of ours but ``errors``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from transformer.errors import OutputError, write_error


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through: it becomes ``path`` only when the block ends without an error.

    The data goes to ``.NAME.PID.tmp`` beside ``path`` (a run folder's sweep removes those of killed writers),
    is flushed to disk, then renamed over ``path``: readers, and a crash at any point, see the old file or the
    new one, never half of one. On an error the temporary file is removed and the error passes on unchanged.

    Raises:
        IsADirectoryError: ``path`` is a folder (the error names ``path``), before anything is written.
    """
    path = Path(path)
    if path.is_dir():  # else the rename at the end fails, and its error names the temporary file
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
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
        raise OutputError(f"{write_error(path, err, what=what)}{space_note(err, path, len(data))}") from None


def atomic_write_text(path: str | os.PathLike[str], text: str, *, what: str = "file") -> None:
    """``atomic_write_bytes`` of ``text`` in UTF-8 (line ends as given)."""
    atomic_write_bytes(path, text.encode("utf-8"), what=what)


def space_note(err: OSError, path: str | os.PathLike[str], needed: int) -> str:
    """For a write of about ``needed`` bytes to ``path`` that failed on a full disk or quota: how much it needed
    and how much is free there (e.g. " (it needs about 3.4 MB; 1.0 MB is free in /data)"); else ""."""
    if err.errno not in (errno.ENOSPC, errno.EDQUOT):
        return ""
    folder = Path(path).parent
    try:
        free = f"{size_text(shutil.disk_usage(folder).free)} is free in {folder}"
    except OSError:
        free = f"the free space of {folder} cannot be read"
    return f" (it needs about {size_text(needed)}; {free})"


def size_text(n: int) -> str:
    """A byte count for people: "912 bytes", "3.4 MB", "1.2 GB" (powers of 1000)."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


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
