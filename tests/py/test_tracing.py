# erlang.Span and @erlang.trace outside the port, against the fake `_erlang_ops` of test_logging.

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import erlang
from erlang import _logging

from test_logging import FakeOps

FIELDS = ("name", "span_id", "parent_id", "start", "end", "status", "attrs", "end_attrs", "events")


@pytest.fixture
def ops() -> Iterator[FakeOps]:
    fake = FakeOps()
    saved = _logging._native
    _logging._native = fake  # type: ignore[assignment]
    yield fake
    _logging._native = saved


def spans(ops: FakeOps) -> list[dict[str, Any]]:
    return [dict(zip(FIELDS, s)) for s in ops.spans]


def test_off_sends_nothing(ops: FakeOps) -> None:
    with erlang.Span("x", a=1) as s:
        s.event("e")
    assert ops.spans == [] and s.span_id == 0 and s.events == []


def test_nested_spans_link_to_parent(ops: FakeOps) -> None:
    ops.tracing_on = True
    with erlang.Span("process-request", user_id=123):
        with erlang.Span("query-database"):
            pass
    child, parent = spans(ops)
    assert child["name"] == "query-database" and child["parent_id"] == parent["span_id"]
    assert parent["parent_id"] is None and parent["attrs"] == {"user_id": 123}
    assert parent["status"] == child["status"] == "ok"
    assert 0 < parent["span_id"] < 2**63
    assert parent["start"] <= child["start"] <= child["end"] <= parent["end"]


def test_exception_marks_error_and_propagates(ops: FakeOps) -> None:
    ops.tracing_on = True
    with pytest.raises(ValueError):
        with erlang.Span("risky-operation"):
            raise ValueError("something went wrong")
    [s] = spans(ops)
    assert s["status"] == "error" and s["end_attrs"] == {"exception": "something went wrong"}


def test_events_and_unconvertible_attrs(ops: FakeOps) -> None:
    ops.tracing_on = True
    with erlang.Span("op", tags={1}) as span:
        span.event("checkpoint", items_processed=10, obj=object)
    [s] = spans(ops)
    assert s["attrs"] == {"tags": "{1}"}
    [(name, attrs, t)] = s["events"]
    assert name == "checkpoint" and attrs["items_processed"] == 10 and attrs["obj"] == repr(object)
    assert s["start"] <= t <= s["end"]


def test_trace_decorator_names(ops: FakeOps) -> None:
    ops.tracing_on = True

    @erlang.trace()
    def my_function() -> int:
        return 42

    @erlang.trace(name="custom-name")
    def another_function() -> None:
        pass

    @erlang.trace()
    async def coro() -> str:
        return "async"

    assert my_function() == 42 and another_function() is None and asyncio.run(coro()) == "async"
    assert [s["name"] for s in spans(ops)] == [
        "test_trace_decorator_names.<locals>.my_function",
        "custom-name",
        "test_trace_decorator_names.<locals>.coro",
    ]
    assert my_function.__name__ == "my_function"


def test_threads_have_their_own_stacks(ops: FakeOps) -> None:
    ops.tracing_on = True
    barrier = threading.Barrier(2)

    def work(tag: str) -> None:
        with erlang.Span("outer-" + tag):
            barrier.wait(5)
            with erlang.Span("inner-" + tag):
                barrier.wait(5)

    threads = [threading.Thread(target=work, args=(t,)) for t in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    by_id = {s["span_id"]: s["name"] for s in spans(ops)}
    for s in spans(ops):
        if s["name"].startswith("inner-"):
            assert by_id[s["parent_id"]] == "outer-" + s["name"][-1]


def test_out_of_order_exit_unlinks(ops: FakeOps) -> None:
    ops.tracing_on = True
    outer, inner = erlang.Span("outer"), erlang.Span("inner")
    outer.__enter__()
    inner.__enter__()
    outer.__exit__(None, None, None)
    inner.__exit__(None, None, None)
    with erlang.Span("next"):
        pass
    assert spans(ops)[-1]["parent_id"] is None


def test_name_must_be_str() -> None:
    with pytest.raises(TypeError, match="span name must be a str"):
        erlang.Span(1)  # type: ignore[arg-type]


def test_trace_without_parentheses(ops: FakeOps) -> None:
    ops.tracing_on = True

    @erlang.trace
    def bare() -> int:
        return 7

    assert bare() == 7 and spans(ops)[-1]["name"].endswith("bare")


def test_unsendable_span_does_not_break_the_code(ops: FakeOps, capsys: pytest.CaptureFixture[str]) -> None:
    ops.tracing_on = True

    def refuse(*fields: Any) -> bool:
        raise OverflowError("record of 5000000000 bytes exceeds the largest frame the port may send")

    ops.span = refuse  # type: ignore[method-assign]
    with erlang.Span("huge"):
        result = 1
    assert result == 1
    assert "erlang.Span 'huge' not recorded: record of" in capsys.readouterr().err
