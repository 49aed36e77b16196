"""What a run records about where it came from, without MLflow: who runs it (process tags), the
git state and package versions, and secrets masked out of anything written or printed."""

from __future__ import annotations

import os
import platform
import re
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline import installed

KEY_PACKAGES = ("torch", "mlflow", "optuna", "hydra-core", "scikit-learn", "numpy", "pandas")
_CREDENTIALS = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<password>[^@/\s]+)@"
)


def mask(text: str) -> str:
    """Hide passwords in URLs (`postgresql://user:secret@host` -> `postgresql://user:***@host`)."""
    return _CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


def mask_values(values: Any) -> Any:
    if isinstance(values, dict):
        return {k: mask_values(v) for k, v in values.items()}
    if isinstance(values, list):
        return [mask_values(v) for v in values]
    return mask(values) if isinstance(values, str) else values


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_tags() -> dict[str, str]:
    """Who runs a run: `reap_orphaned_runs` ends it KILLED once that process is gone."""
    return {"pid": str(os.getpid()), "host": socket.gethostname()}


def git_state(root: Path | None = None) -> dict[str, str]:
    """Commit and dirty flag (and the diff when dirty), or 'no git' outside a repository."""
    cwd = str(root or Path.cwd())

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=20
        ).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {"commit": "no git", "dirty": "unknown", "diff": ""}
    dirty = bool(status.strip())
    return {"commit": commit, "dirty": str(dirty).lower(), "diff": git("diff", "HEAD") if dirty else ""}


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in KEY_PACKAGES:
        try:
            versions[name] = installed.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def apply_credentials(path: str | None) -> None:
    """Read an env file of credentials (KEY=value lines, like make server's) into this process's
    environment, where MLflow and libpq look for them; what the environment already sets wins.
    Nothing of it is ever printed or logged."""
    if not path:
        return
    from pipeline.errors import ConfigError

    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(
            f"tracking.credentials={path!r} is not a file; start the server (make server) or fix the path"
        )
    for line in file.read_text().splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            os.environ.setdefault(key, value)
