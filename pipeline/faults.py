"""Faults of the environment, not of the user's config or data, told in one line: a read-only
folder, a full disk, a file that cannot be opened. Each names the path and the cause."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from pipeline.errors import PipelineError

WRITE_ERRORS = {
    errno.EROFS: "the file system is read-only",
    errno.ENOSPC: "no space is left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
# what SQLite (through SQLAlchemy and MLflow) says for the same causes
STORE_MESSAGES = {
    "attempt to write a readonly database": "the file system is read-only",
    "readonly database": "the file system is read-only",
    "database or disk is full": "no space is left on the device",
    "disk i/o error": "the disk failed to write (full or read-only)",
    "unable to open database file": "the database file cannot be opened (a read-only or missing folder)",
}


def explain(exc: BaseException) -> str | None:
    """One line for an environment fault anywhere in `exc`'s chain, or None for anything else."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in WRITE_ERRORS:
            where = seen.filename or "a file"
            return f"cannot write {where}: {WRITE_ERRORS[seen.errno]}; free space or choose a writable folder"
        text = str(seen).lower()
        for message, cause in STORE_MESSAGES.items():
            if message in text:
                return (
                    f"cannot write the tracking store: {cause}; free space or choose a writable tracking.uri"
                )
        seen = seen.__cause__ or seen.__context__
    return None


def check_writable(folder: Path, fix: str) -> None:
    """Refuse a folder where nothing can be written, before anything is (root ignores file modes,
    so try it rather than reading them)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".write-check-"):
            pass
    except OSError as exc:
        cause = WRITE_ERRORS.get(exc.errno or 0, os.strerror(exc.errno or 0) if exc.errno else str(exc))
        raise PipelineError(f"cannot write in {existing}: {cause}; {fix}") from None
