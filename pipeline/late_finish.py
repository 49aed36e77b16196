"""Stage runs left open after their stage's work, to be finished later (Stage.finish_late): the
prepare stage's outputs are saved once the tune stage has started its workers, so that they do
not wait for the save. The runner finishes each one before the next stage's own run ends, or at
the end of the stages, even when a later stage failed (the outputs are sound: the next
invocation reuses them)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from typing import Any

log = logging.getLogger(__name__)


class LateFinishes:
    """The open runs' scopes, each with what finishes it; `finish()` runs them in order, once,
    each inside its scope: the run ends with it, FAILED if it fails."""

    def __init__(self) -> None:
        self._waiting: list[Callable[[], None]] = []

    def add(self, scope: ExitStack, finish: Callable[..., None], *args: Any) -> None:
        self._waiting.append(partial(_finish_in, scope, finish, *args))

    def finish(self) -> None:
        while self._waiting:
            self._waiting.pop(0)()

    def __enter__(self) -> LateFinishes:
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, traceback: Any) -> None:
        if kind is None:
            self.finish()
            return
        while self._waiting:  # each one, whatever the others do: no run is left open
            try:
                self._waiting.pop(0)()
            except Exception as exc:  # noqa: BLE001 - the stage's own error is the one to report
                log.warning("could not save the outputs of an earlier stage: %s", exc)


def _finish_in(scope: ExitStack, finish: Callable[..., None], *args: Any) -> None:
    with scope:
        finish(*args)
