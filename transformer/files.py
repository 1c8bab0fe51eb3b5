"""Small file-system helpers that several parts of the package share: atomic writes, is a process alive.

Imports nothing of ours but ``errors``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from transformer.errors import write_error


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, what: str = "file") -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: readers see the old or the new file.

    The temporary file is ``.NAME.PID.tmp`` beside ``path`` (a run folder's sweep removes those of killed
    writers); it is removed when the write fails.

    Raises:
        OutputError: the file cannot be written (the message names ``what`` and the reason).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
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
