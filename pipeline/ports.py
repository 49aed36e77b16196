"""Loopback ports for the servers the make targets start: checked before starting, so a port
that is taken ends in one line saying which setting picks another, not in a link that points at
whatever owns the port."""

from __future__ import annotations

import socket

from pipeline.errors import PipelineError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_free(host: str, port: int, setting: str) -> None:
    """Refuse a port that another process holds; `setting` says how to choose another
    (e.g. `make ui UI_PORT=<port>`)."""
    if not 1 <= port <= 65535:
        raise PipelineError(f"port {port} is out of range; it must be 1-65535 ({setting})")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            suggestion = free_port()
            raise PipelineError(
                f"port {port} on {host} is in use by another program; choose another, "
                f"e.g. {setting.replace('<port>', str(suggestion))}"
            ) from None
