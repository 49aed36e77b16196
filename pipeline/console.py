"""What the person at the terminal sees: one line per event, and the libraries' own chatter routed
to the log file instead."""

from __future__ import annotations

import logging
import os

log = logging.getLogger("pipeline")


def say(message: str) -> None:
    """A line for the person at the terminal (and the log file)."""
    print(message, flush=True)
    log.info(message)


def quiet_libraries() -> None:
    """Route Optuna's and MLflow's messages to the log file instead of the terminal."""
    import optuna

    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    for name in ("mlflow", "alembic", "optuna", "urllib3"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.captureWarnings(True)
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow prints a "View run" line for every run against a server: the recorder logs them
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


class MaskingFormatter(logging.Formatter):
    """Log lines (tracebacks included) with passwords in URLs masked: the log file is written
    with whatever a library put in a message."""

    def format(self, record: logging.LogRecord) -> str:
        from pipeline.tracking.provenance import mask

        return mask(super().format(record))
