"""Errors a user can act on. The CLI prints their message (no traceback unless --debug) and
exits non-zero; everything else is a bug and keeps its traceback."""
from __future__ import annotations

import errno


class UserError(Exception):
    """A mistake in a config, a file or the environment, with a message saying what to do."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """A config that cannot work; the message names the field."""


class CorruptFileError(UserError):
    """A file the run needs cannot be read; the message names it (and the tensor or key)."""


class ResourceError(UserError):
    """The machine ran out of something (disk space, memory); the message names what."""

    exit_code = 3


def user_message(error: BaseException, workdir=None) -> tuple[str, int] | None:
    """(message, exit code) for an error the user can act on; None for a bug."""
    if isinstance(error, UserError):
        return str(error), error.exit_code
    if isinstance(error, OSError):
        where = error.filename or workdir
        if error.errno == errno.ENOSPC:
            return (f"no space left on the device holding {where}: free some, or use another --workdir",
                    ResourceError.exit_code)
        if error.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            return f"{where}: cannot write ({error.strerror}); use a writable --workdir", 2
    if isinstance(error, MemoryError):
        return "out of host memory: use a smaller batch, a shorter max_len or a smaller model", ResourceError.exit_code
    return None
