"""The versions of the installed packages, looked up once a process: what is installed does not
change while a process runs, and each look-up scans the metadata of every installed package."""

from __future__ import annotations

import functools
from importlib import metadata


@functools.cache
def version(name: str) -> str:
    """The installed version of a distribution; `metadata.PackageNotFoundError` when it is not
    installed."""
    return metadata.version(name)
