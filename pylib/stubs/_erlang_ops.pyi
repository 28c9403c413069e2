# Type stub for `_erlang_ops`, the built-in module of erlang_python_port that sends Python log records
# and spans to Erlang without waiting (port/module/ops_module.cpp, PROTOCOL.md §3.14). It exists only
# inside the port; tests/py/test_logging.py supplies a fake.

from typing import Any

def log(levelno: int, logger: str, message: str, meta: dict[str, Any], /) -> bool:
    """Sends one record; False if it was dropped (the port's window of unacknowledged frames is full)."""

def span(
    name: str,
    span_id: int,
    parent_id: int | None,
    start_us: int,
    end_us: int,
    status: str,
    attrs: dict[str, Any],
    end_attrs: dict[str, Any],
    events: list[tuple[str, dict[str, Any], int]],
    /,
) -> bool:
    """Sends one finished span; False if tracing is off or it was dropped."""

def tracing() -> bool:
    """Whether py:enable_tracing() is in effect in this port."""

def counters() -> dict[str, int]:
    """log_sent, log_dropped, span_sent, span_dropped, unacked, window."""
