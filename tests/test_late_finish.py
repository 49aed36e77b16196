"""Stage runs finished late (pipeline.late_finish): each is finished once, in order, inside its
own scope, and after a failed stage every one is still finished, so no run is left open."""

from __future__ import annotations

from contextlib import ExitStack

import pytest

from pipeline.late_finish import LateFinishes


def _scope(closed: list[str], name: str) -> ExitStack:
    scope = ExitStack()
    scope.callback(closed.append, name)
    return scope


def test_each_is_finished_once_in_order_inside_its_scope():
    closed: list[str] = []
    done: list[str] = []
    late = LateFinishes()
    with late:
        late.add(_scope(closed, "a"), done.append, "a")
        late.add(_scope(closed, "b"), done.append, "b")
        late.finish()
        assert done == ["a", "b"] and closed == ["a", "b"]
        late.finish()  # nothing is finished twice
    assert done == ["a", "b"] and closed == ["a", "b"]


def test_a_failed_stage_still_finishes_every_one_and_keeps_its_own_error(caplog):
    closed: list[str] = []
    done: list[str] = []

    def broken(name: str) -> None:
        raise OSError(f"{name}: no space left on device")

    late = LateFinishes()
    with pytest.raises(RuntimeError, match="the stage's own error"):
        with late:
            late.add(_scope(closed, "a"), broken, "a")
            late.add(_scope(closed, "b"), done.append, "b")
            raise RuntimeError("the stage's own error")
    assert closed == ["a", "b"] and done == ["b"]
    assert "a: no space left on device" in caplog.text
