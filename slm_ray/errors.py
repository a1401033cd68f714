"""User-facing errors.

Anything raised as a ``SlmRayError`` is a mistake the user can fix (a bad config value, a missing
file, an unreachable bucket). Entry points print it as one line and exit with code 2; every other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from typing import Iterator


class SlmRayError(Exception):
    """A problem with the user's input or environment, reported as one line."""


class ConfigError(SlmRayError):
    """The composed configuration is invalid: names the key, the bad value and what is valid."""


class DataError(SlmRayError):
    """A dataset or corpus file is missing, empty or malformed."""


class StorageError(DataError):
    """A remote file (s3://) could not be fetched or verified."""


class PreflightError(SlmRayError):
    """What was asked cannot run here: a model that cannot be loaded, a device or package that is
    missing, a cluster that does not answer. Found before anything heavy starts; one line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = list(problems)


class CompareError(SlmRayError):
    """Two runs cannot be compared: a folder that is not a finished run, an unknown trial, runs that
    share no example, or an output file that is not a previous comparison's."""


class FolderUnusable(SlmRayError):
    """A folder cannot be created or written (a file in the way, read-only, full disk, no
    permission): one line naming the folder and the setting that chose it."""


#: What each write fault means, and what the user can do about it (``{setting}``: the config key
#: that chose the folder). A read-only file system is never told to free space.
WRITE_FAULTS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("the disk is full", "free space there, or choose another {setting}"),
    errno.EDQUOT: ("the disk quota is exceeded", "free space there, or choose another {setting}"),
    errno.EFBIG: ("the file size limit is reached", "raise the limit (ulimit -f), or choose another {setting}"),
    errno.EROFS: ("the file system is read-only", "choose another {setting}"),
    errno.EACCES: ("permission denied", "make it writable, or choose another {setting}"),
    errno.EPERM: ("permission denied", "make it writable, or choose another {setting}"),
    errno.ENOTDIR: ("a file is in the way of a folder", "choose another {setting}"),
    errno.ENAMETOOLONG: ("the path is too long", "choose a shorter {setting}"),
}


def unwritable(folder: str | os.PathLike[str], exc: OSError, setting: str) -> FolderUnusable | None:
    """The one line for a write fault ``exc`` under ``folder``, which ``setting`` chose; None for
    any other OSError (a bug or a read problem: it keeps its traceback)."""
    fault = WRITE_FAULTS.get(exc.errno or 0)
    if fault is None:
        return None
    why, advice = fault
    return FolderUnusable(f"cannot write to {folder}: {why} ({advice.format(setting=setting)})")


#: Free space under which a failed write is taken for a full disk (see ``disk_fault``).
NEARLY_FULL_BYTES = 1 << 20


def disk_fault(path: str | os.PathLike[str]) -> OSError | None:
    """The write fault of the file system holding ``path`` (read-only, or under 1 MiB free), as an
    OSError, or None. For writers in C++ or Rust (faiss, safetensors) whose errors on a full or
    read-only disk are no OSError: asked after one of them failed, it says whether the disk did it."""
    from pathlib import Path

    for folder in (Path(path), *Path(path).parents):
        try:
            stat = os.statvfs(folder)
        except OSError:
            continue
        if stat.f_flag & os.ST_RDONLY:
            return OSError(errno.EROFS, os.strerror(errno.EROFS), str(folder))
        if stat.f_bavail * stat.f_frsize < NEARLY_FULL_BYTES:
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))
        return None
    return None


@contextmanager
def writes_to(folder: str | os.PathLike[str], setting: str) -> Iterator[None]:
    """Every write in the block goes under ``folder``, chosen by ``setting``: a write fault becomes
    its one line (``unwritable``), any other error passes unchanged."""
    try:
        yield
    except OSError as exc:
        # a short write (numpy's tofile) has no errno: the disk says whether it was full
        error = unwritable(folder, exc if exc.errno else (disk_fault(folder) or exc), setting)
        if error is None:
            raise
        raise error from exc


def describe_error(exc: BaseException) -> str:
    """``Type: message`` in one line. A Ray error's text starts with the remote traceback, so it is the
    cause that is named, by the last line of its text (where its own message is)."""
    cause = getattr(exc, "cause", None) or exc
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}".rstrip(": ")
