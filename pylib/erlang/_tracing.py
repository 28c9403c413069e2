# Spans from Python code, collected on the Erlang side (py:get_traces/0; PROTOCOL.md §3.14).
#
# `with erlang.Span(name, **attrs) as span:` times a block; spans entered inside it on the same thread
# are its children (a per-thread stack). When the block ends the span goes to Erlang as one `span`
# frame, written without waiting (`_erlang_ops.span`). While tracing is off (the default; see
# `py:enable_tracing/0`) a Span asks the port one flag on entry and does nothing else: no ids, no
# clock reads, no frame. The port drops spans (and counts them) when the Erlang side is a window of
# frames behind; the Erlang side keeps at most `max_traces` spans (the oldest go first).

import functools
import inspect
import random
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ._logging import _ops

F = TypeVar("F", bound=Callable[..., Any])

_local = threading.local()
# 63 random bits: span ids stay within int64, which both codecs carry as integers (a larger Python int
# reaches Erlang as a string of digits).
_rng = random.SystemRandom()


def _stack() -> list["Span"]:
    stack: list[Span] | None = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


def _now_us() -> int:
    return time.monotonic_ns() // 1000


def _value(v: Any) -> Any:
    # Attribute values the Erlang side can hold as they are; anything else as its repr().
    if v is None or isinstance(v, (bool, int, float, str, bytes)):
        return v
    return repr(v)


def _attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    return {str(k): _value(v) for k, v in attrs.items()}


class Span:
    """A timed operation: `with erlang.Span('name', key=value) as span: ...`.

    `span.event(name, **attrs)` records a point in time inside it. An exception leaving the block marks
    the span `status => error` with `end_attrs => #{<<"exception">> => str(exc)}` (and is not caught).
    """

    __slots__ = ("name", "attributes", "span_id", "parent_id", "start_us", "events", "end_attrs", "_on")

    def __init__(self, name: str, **attributes: Any) -> None:
        if not isinstance(name, str):
            raise TypeError(f"span name must be a str, not {type(name).__name__}")
        self.name = name
        self.attributes = attributes
        self.span_id = 0
        self.parent_id: int | None = None
        self.start_us = 0
        self.events: list[tuple[str, dict[str, Any], int]] = []
        self.end_attrs: dict[str, Any] = {}
        self._on = False

    def __enter__(self) -> "Span":
        if not _ops().tracing():
            return self
        self._on = True
        stack = _stack()
        self.parent_id = stack[-1].span_id if stack else None
        self.span_id = _rng.getrandbits(63) or 1
        self.start_us = _now_us()
        stack.append(self)
        return self

    def event(self, name: str, **attrs: Any) -> None:
        """Records event `name` with `attrs` at this moment (nothing while tracing is off)."""
        if self._on:
            self.events.append((str(name), _attrs(attrs), _now_us()))

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if not self._on:
            return False
        self._on = False
        end_us = _now_us()
        stack = _stack()
        if stack and stack[-1] is self:
            stack.pop()
        elif self in stack:  # exited out of order (a generator, a manual __exit__): still unlinked
            stack.remove(self)
        status = "ok"
        if exc_type is not None:
            status = "error"
            self.end_attrs["exception"] = str(exc)
        try:
            _ops().span(self.name, self.span_id, self.parent_id, self.start_us, end_us, status,
                        _attrs(self.attributes), _attrs(self.end_attrs), self.events)
        except Exception as e:  # a span that cannot be sent (too big) must not break the traced code
            print(f"erlang.Span {self.name!r} not recorded: {e}", file=sys.stderr)
        return False


def trace(name: str | Callable[..., Any] | None = None) -> Any:
    """Decorator: each call of the function runs in a `Span` named `name` (default: its qualified
    name). Coroutine functions get a span around the whole await. `@erlang.trace` without the
    parentheses works too."""
    if callable(name):  # used bare: @erlang.trace
        return trace()(name)

    def decorate(fn: F) -> F:
        span_name = name if isinstance(name, str) else fn.__qualname__
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with Span(span_name):
                    return await fn(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with Span(span_name):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


__all__ = ["Span", "trace"]
