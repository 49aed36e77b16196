"""Faults of the environment, not of the user's config or data, told in one line: a read-only
folder, a full disk, a file that cannot be opened. Each names the path and the cause."""

from __future__ import annotations

import errno
import io
import os
import shutil
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
FULL = (errno.ENOSPC, errno.EDQUOT)
DENIED = (errno.EACCES, errno.EPERM)
READ_ONLY_FIX = "make its folder writable"
FULL_FIX = "free space on its disk"
# what SQLite (through SQLAlchemy and MLflow) says for the same causes, and what to do
STORE_MESSAGES = {
    "attempt to write a readonly database": ("the file system is read-only", READ_ONLY_FIX),
    "readonly database": ("the file system is read-only", READ_ONLY_FIX),
    "database or disk is full": ("no space is left on the device", FULL_FIX),
    "disk i/o error": ("the disk failed to write (full or read-only)", f"{FULL_FIX} or {READ_ONLY_FIX}"),
    "unable to open database file": (
        "the database file cannot be opened (a read-only or missing folder)",
        READ_ONLY_FIX,
    ),
}
STORE_NOTE = " (tracking.uri sets the store's folder)"  # after the fix for a path in the store
# below this, a folder cannot take even Hydra's config files and the log: refused before Hydra
MIN_FREE_BYTES = 1 << 20
PROBE_BYTES = 64 << 10  # written by check_writable: a full disk or quota refuses it, not 0 bytes


def explain(exc: BaseException, store: str | None = None) -> str | None:
    """One line for an environment fault anywhere in `exc`'s chain, or None for anything else.
    `store`: where the tracking store is (a database file or a masked URI), named when SQLite
    reports the fault without a path."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in WRITE_ERRORS:
            # a copy names its source first and the file it failed to write second
            where = seen.filename2 or seen.filename or _file_being_written(seen) or "a file"
            verb = "open" if seen.errno in DENIED else "write"  # a read may be denied too
            fix = _fix(seen.errno) + (STORE_NOTE if _inside_store(where, store) else "")
            return f"cannot {verb} {where}: {WRITE_ERRORS[seen.errno]}; {fix}"
        text = str(seen).lower()
        for message, (cause, fix) in STORE_MESSAGES.items():
            if message in text:
                where = f"the tracking store {store}" if store else "the tracking store"
                return f"cannot write {where}: {cause}; {fix} or set tracking.uri to a writable store"
        seen = seen.__cause__ or seen.__context__
    return None


def _inside_store(where: object, store: str | None) -> bool:
    """Whether a path lies in the folder of a local store (its database, locks, artifacts)."""
    where = os.fspath(where) if isinstance(where, os.PathLike) else where
    if not store or "://" in store or not isinstance(where, str):
        return False
    return Path(where).is_relative_to(Path(store).parent)


def _fix(code: int) -> str:
    if code in FULL:
        return "free space on that disk, or choose a folder on another one"
    if code in DENIED:
        return "give this user access to it, or choose another folder"
    return "choose a writable folder"


def _file_being_written(exc: BaseException) -> str | None:
    """The file a bare `write()` failed on (it raises without a filename): the innermost open
    file object among the frames the error passed through."""
    found = None
    tb = exc.__traceback__
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            name = getattr(value, "name", None) if isinstance(value, io.IOBase) else None
            if isinstance(name, str) and not name.startswith("<"):  # not <stdout>
                found = name
        tb = tb.tb_next
    return found


def check_writable(folder: Path, fix: str) -> None:
    """Refuse a folder where nothing can be written, or that has no room left, before anything
    is (root ignores file modes, so try it rather than reading them)."""
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        free = shutil.disk_usage(existing).free
        if free < MIN_FREE_BYTES:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".write-check-") as probe:
            probe.write(b"\0" * PROBE_BYTES)
            probe.flush()
    except OSError as exc:
        code = exc.errno or 0
        cause = WRITE_ERRORS.get(code, os.strerror(code) if code else str(exc))
        raise PipelineError(f"cannot write in {existing}: {cause}; {fix}") from None
