"""The errors a user can cause, as opposed to bugs in this package.

Every mistake a user can make (a config key, a data file, a checkpoint, a device, the file system) raises a
subclass of ``UserError`` whose message names the file, line or key at fault and says what to do. The
command line prints such an error as one ``error: ...`` line and exits with status 2; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations


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
