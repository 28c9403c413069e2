# Python `logging` to the Erlang `logger` (PROTOCOL.md §3.14).
#
# `ErlangHandler` turns each record it gets into one `log` frame that the port writes at once, without
# waiting for Erlang (`_erlang_ops.log`): Python never blocks on the Erlang side's logging. Level
# filtering is Python's own: `setup_logging(level)` (or `py:configure_logging/1`, which calls
# `_apply_config` in every port) sets the root logger's level, so `logging.debug(...)` under level INFO
# never even makes a record, and nothing below the level is encoded or crosses the pipe. The port
# keeps at most a window of frames unacknowledged (1024): past it, records are dropped and counted,
# and the next frame that goes out carries the count (the Erlang side logs a warning with it).

import logging
from types import ModuleType
from typing import Any

DEFAULT_FORMAT = "%(message)s"

_native: ModuleType | None = None


def _ops() -> ModuleType:
    # `_erlang_ops` is built into the port; imported on first use so that the package imports (and
    # tests run) where it does not exist.
    global _native
    if _native is None:
        import _erlang_ops

        _native = _erlang_ops
    return _native


class ErlangHandler(logging.Handler):
    """A `logging.Handler` that forwards records to the Erlang `logger`.

    The Erlang side logs each with `domain => [python]`, `py_logger` (the logger's name) and `py_meta`
    (module, lineno, funcName); the level maps DEBUG → debug, INFO → info, WARNING → warning,
    ERROR → error, CRITICAL → critical. The message is the record formatted with this handler's
    formatter (default `%(message)s`). `emit` never waits for Erlang.
    """

    def __init__(self, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.setFormatter(logging.Formatter(DEFAULT_FORMAT))
        self.dropped = 0  # records this handler could not send (the window was full)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            meta = {"module": record.module, "lineno": record.lineno, "funcName": record.funcName}
            if not _ops().log(record.levelno, record.name, message, meta):
                self.dropped += 1
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def _root_handler() -> ErlangHandler | None:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, ErlangHandler):
            return handler
    return None


def setup_logging(level: int = logging.DEBUG, format: str | None = None) -> ErlangHandler:  # noqa: A002
    """Sends Python logging to Erlang: one `ErlangHandler` on the root logger (added once, updated
    after), with `level` on the root logger and the handler and `format` as its format string."""
    if not isinstance(level, int) or isinstance(level, bool):
        raise TypeError(f"level must be an int (logging.INFO is 20), not {type(level).__name__}")
    handler = _root_handler()
    root = logging.getLogger()
    if handler is None:
        handler = ErlangHandler()
        root.addHandler(handler)
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter(format if format is not None else DEFAULT_FORMAT))
    root.setLevel(level)
    return handler


def _apply_config(cfg: dict[str, Any]) -> None:
    """The port's half of `py:configure_logging/1` and `py:enable_tracing/0` (an `ops_config` frame):
    `log_level` None leaves logging alone."""
    level = cfg.get("log_level")
    if level is not None:
        setup_logging(level, cfg.get("log_format"))


__all__ = ["ErlangHandler", "setup_logging"]
