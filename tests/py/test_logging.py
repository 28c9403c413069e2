# erlang.ErlangHandler and erlang.setup_logging outside the port, against a fake `_erlang_ops`
# (the port's built-in module) that records what would be sent.

import logging
from collections.abc import Iterator
from typing import Any

import pytest

import erlang
from erlang import _logging


class FakeOps:
    def __init__(self) -> None:
        self.logs: list[tuple[int, str, str, dict[str, Any]]] = []
        self.full = False  # the port's window: log() returns False (dropped) while full
        self.tracing_on = False
        self.spans: list[tuple[Any, ...]] = []

    def log(self, levelno: int, name: str, message: str, meta: dict[str, Any]) -> bool:
        if self.full:
            return False
        self.logs.append((levelno, name, message, meta))
        return True

    def tracing(self) -> bool:
        return self.tracing_on

    def span(self, *fields: Any) -> bool:
        if not self.tracing_on:
            return False
        self.spans.append(fields)
        return True


@pytest.fixture
def ops() -> Iterator[FakeOps]:
    fake = FakeOps()
    saved = _logging._native
    _logging._native = fake  # type: ignore[assignment]
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield fake
    root.handlers[:] = handlers
    root.setLevel(level)
    _logging._native = saved


def my_function() -> None:
    logging.getLogger("mymodule").warning("from %s", "my_function")


def test_handler_sends_level_name_message_and_meta(ops: FakeOps) -> None:
    erlang.setup_logging(level=10)
    my_function()
    [(levelno, name, message, meta)] = ops.logs
    assert (levelno, name, message) == (30, "mymodule", "from my_function")
    assert meta == {"module": "test_logging", "lineno": meta["lineno"], "funcName": "my_function"}
    assert isinstance(meta["lineno"], int) and meta["lineno"] > 0


def test_records_below_the_level_are_never_made(ops: FakeOps, monkeypatch: pytest.MonkeyPatch) -> None:
    erlang.setup_logging(level=logging.INFO)
    made: list[logging.LogRecord] = []
    factory = logging.getLogRecordFactory()

    def recording(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        made.append(record)
        return record

    monkeypatch.setattr(logging, "_logRecordFactory", recording)
    logging.debug("hidden")
    assert made == [] and ops.logs == []
    logging.info("shown")
    assert [m for _, _, m, _ in ops.logs] == ["shown"]


def test_setup_logging_format_and_one_handler(ops: FakeOps) -> None:
    erlang.setup_logging(level=20)
    erlang.setup_logging(level=10, format="%(name)s: %(message)s")
    assert sum(isinstance(h, erlang.ErlangHandler) for h in logging.getLogger().handlers) == 1
    logging.getLogger("p").debug("x")
    assert ops.logs[-1][2] == "p: x"


def test_default_format_is_message_only(ops: FakeOps) -> None:
    handler = erlang.ErlangHandler()
    log = logging.getLogger("own")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        log.info("plain %d", 1)
    finally:
        log.removeHandler(handler)
    assert ops.logs[-1][1:3] == ("own", "plain 1")


def test_dropped_records_are_counted(ops: FakeOps) -> None:
    handler = erlang.setup_logging(level=20)
    ops.full = True
    for _ in range(5):
        logging.info("dropped")
    assert handler.dropped == 5 and ops.logs == []


def test_level_must_be_an_int(ops: FakeOps) -> None:
    with pytest.raises(TypeError, match="level must be an int"):
        erlang.setup_logging(level="INFO")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        erlang.setup_logging(level=True)


def test_apply_config_none_leaves_logging_alone(ops: FakeOps) -> None:
    before = list(logging.getLogger().handlers)
    _logging._apply_config({"log_level": None, "log_format": None, "tracing": True})
    assert logging.getLogger().handlers == before
    _logging._apply_config({"log_level": 30, "log_format": None, "tracing": False})
    assert logging.getLogger().level == 30
    logging.warning("w")
    assert ops.logs[-1][2] == "w"


def test_bad_format_raises(ops: FakeOps) -> None:
    with pytest.raises(ValueError):
        erlang.setup_logging(level=10, format="%(message")


def test_emit_errors_go_to_handle_error(ops: FakeOps, capsys: pytest.CaptureFixture[str]) -> None:
    logging.getLogger().handlers[:] = [erlang.setup_logging(level=10)]  # no pytest handler, which raises
    logging.info("bad %d", "not a number")  # a formatting error: logging's handleError, not an exception
    assert ops.logs == []
    assert "Logging error" in capsys.readouterr().err
