# erlang._schedule: the markers and consume_time_slice, outside the port (the fake `_erlang` of
# conftest.py). What the port does with a marker is tested by tests/ct/py_schedule_SUITE.erl.

from typing import Any

import pytest

import erlang
from erlang import ScheduleMarker


def test_schedule_marker_fields(fake_erlang: Any) -> None:
    m = erlang.schedule("compute", 5, 6)
    assert isinstance(m, ScheduleMarker)
    assert (m.kind, m.name, tuple(m.args), m.kwargs) == ("erlang", "compute", (5, 6), {})


def test_schedule_py_and_inline_fields(fake_erlang: Any) -> None:
    p = erlang.schedule_py("__main__", "compute", [1], {"multiplier": 3})
    assert (p.kind, p.name, p.args, p.kwargs) == ("py", ("__main__", "compute"), [1], {"multiplier": 3})
    i = erlang.schedule_inline("mod", "f", args=(1, 2))
    assert (i.kind, i.name, i.args, i.kwargs) == ("inline", ("mod", "f"), [1, 2], {})
    assert erlang.schedule_py("m", "f").args == [] and erlang.schedule_py("m", "f").kwargs == {}


def test_marker_is_immutable(fake_erlang: Any) -> None:
    m = erlang.schedule("compute")
    with pytest.raises(AttributeError):
        m.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    "make",
    [
        lambda: erlang.schedule(5),
        lambda: erlang.schedule(""),
        lambda: erlang.schedule(None, 1),
        lambda: erlang.schedule_py("m", "f", 5),
        lambda: erlang.schedule_py("m", "f", [], {1: 2}),
        lambda: erlang.schedule_py("m", 3),
        lambda: erlang.schedule_inline("", "f"),
        lambda: erlang.schedule_inline("m", "f", kwargs=[1]),
    ],
)
def test_bad_arguments_raise_type_error(fake_erlang: Any, make: Any) -> None:
    with pytest.raises(TypeError):
        make()


def test_schedule_without_name_yields(fake_erlang: Any) -> None:
    assert erlang.schedule() is None
    assert fake_erlang.sleeps == [0]


def test_consume_time_slice_counts_percent(fake_erlang: Any, monkeypatch: Any) -> None:
    import _erlang

    monkeypatch.setattr(_erlang, "_current_request", lambda: 7)
    assert [erlang.consume_time_slice(30) for _ in range(4)] == [False, False, False, True]
    # The count starts again after a True.
    assert erlang.consume_time_slice(99) is False
    assert erlang.consume_time_slice(1) is True


def test_consume_time_slice_is_per_request(fake_erlang: Any, monkeypatch: Any) -> None:
    import _erlang

    monkeypatch.setattr(_erlang, "_current_request", lambda: 1)
    assert erlang.consume_time_slice(90) is False
    monkeypatch.setattr(_erlang, "_current_request", lambda: 2)
    assert erlang.consume_time_slice(90) is False  # a new request: a fresh slice
    assert erlang.consume_time_slice(10) is True


@pytest.mark.parametrize("bad, exc", [(0, ValueError), (101, ValueError), (-5, ValueError), (1.5, TypeError), (True, TypeError), ("1", TypeError)])
def test_consume_time_slice_checks_percent(fake_erlang: Any, bad: Any, exc: type) -> None:
    with pytest.raises(exc):
        erlang.consume_time_slice(bad)
