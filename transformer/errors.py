"""The errors a user can cause, as opposed to bugs in this package.

Every mistake a user can make (a config key, a data file, a checkpoint, a device, the file system) raises a
subclass of ``UserError`` whose message names the file, line or key at fault and says what to do. The
command line prints such an error as one ``error: ...`` line and exits with status 2; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import importlib
import os
from types import ModuleType


class UserError(Exception):
    """A mistake the user can fix; the message says where it is and what to do."""


class ConfigError(UserError, ValueError):
    """A configuration value or key is invalid; the message names the key at fault."""


class DataError(UserError, ValueError):
    """Bad or missing input data; the message names the file and line (or the config key) at fault."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file is missing, unreadable, or does not fit the model or the other checkpoints."""


class DeviceError(UserError, RuntimeError):
    """The requested device or precision is not available on this machine."""


class OutputError(UserError, OSError):
    """A file or folder cannot be written: a full disk, no permission, or a path through a regular file."""


class CheckpointWriteError(CheckpointError, OutputError):
    """A checkpoint file cannot be written (both a ``CheckpointError`` and an ``OSError``)."""


class RunDirError(UserError, RuntimeError):
    """A run folder is in use by another training process, or holds a run that was not asked to continue."""


class ResumeError(ConfigError):
    """``--resume`` with settings that cannot change in the middle of a run; the message names each key."""


class DivergenceError(UserError, RuntimeError):
    """Training stopped after too many updates in a row were skipped (a non-finite loss or gradient norm)."""


class EngineError(UserError, ValueError):
    """The decoding engine's options do not fit together (e.g. a checkpoint given to CTranslate2, which reads a
    folder)."""


class MissingExtraError(UserError, ImportError):
    """An optional dependency of the feature asked for is not installed; the message gives the install command."""


def require_extra(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module``, an optional dependency that ``pip install -e ".[extra]"`` brings.

    Raises:
        MissingExtraError: it is not installed (e.g. "plotting needs matplotlib, which is not installed: ...").
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(
            f'{feature} needs {module}, which is not installed: pip install -e ".[{extra}]"'
        ) from None


def os_reason(err: OSError, path: str | os.PathLike[str] | None = None) -> str:
    """The operating system's reason for ``err`` in words, with what to do about the common ones.

    The path the error is about is named when it is not ``path`` (e.g. a parent folder that is a file).
    """
    reason = err.strerror or str(err) or type(err).__name__
    if err.filename is not None and (path is None or os.fspath(err.filename) != os.fspath(path)):
        reason = f"{reason}: {os.fspath(err.filename)}"
    advice = {
        errno.ENOSPC: "free some disk space or write to another disk",
        errno.EDQUOT: "free some space within your quota or write to another disk",
        errno.EACCES: "choose a folder you may write to",
        errno.EPERM: "choose a folder you may write to",
        errno.EROFS: "the file system is read-only; choose a writable folder",
        errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
        errno.EEXIST: "a file of that name is in the way; remove it or choose another path",
        errno.EISDIR: "that path is a folder; give a file name",
    }.get(err.errno or 0)
    code = errno.errorcode.get(err.errno or 0)
    reason = f"{reason} [{code}]" if code else reason
    return f"{reason}; {advice}" if advice else reason


def write_error(path: str | os.PathLike[str], err: OSError, *, what: str = "file") -> OutputError:
    """The ``OutputError`` for a failed write of ``path`` (e.g. ``what="metrics file"``)."""
    return OutputError(f"cannot write the {what} {os.fspath(path)}: {os_reason(err, path)}")
