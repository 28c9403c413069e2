# Standard streams for Python running inside erlang_python_port.
#
# Scope: `ErlangWriter` (sys.stdout / sys.stderr), `ErlangStdin` (sys.stdin) and `_install_std_streams()`,
# which the port calls once at start-up. The port's fd 1 carries protocol frames and fd 0 is /dev/null
# (PROTOCOL.md §1), so text written to sys.stdout/sys.stderr travels to the Erlang side as `output`
# frames through `_erlang._write(stream, text)`, and stdin cannot be read at all.
# `sys.__stdout__`, `sys.__stderr__` and `sys.__stdin__` are left alone: they are the real descriptors
# (fd 1 points at stderr), which is what faulthandler and last-resort error printing want.
#
# Strategy: line buffering. `write` keeps text until it holds a newline and then forwards everything up to
# the last newline in one `_write`, so `print()` costs one frame and a line never arrives in pieces. Text
# without a newline goes out on `flush()`, or at once when more than `FLUSH_THRESHOLD` characters pile up
# (then everything pending goes, the partial last line included).
# One lock per stream serialises writers; it is held across `_write` so frames leave in write order. It is
# reentrant, and the buffer is settled before `_write` runs, in case the port writes to the same stream
# while forwarding (an error report on stderr, say).

import io
import sys
import threading
from typing import NoReturn

from _erlang import _write

STDOUT = 1
STDERR = 2

FLUSH_THRESHOLD = 8 * 1024
"""Characters buffered without a newline before they are forwarded anyway."""

STDIN_UNAVAILABLE = "stdin is not available in erlang_python (stdin carries the protocol)"


class ErlangWriter(io.TextIOBase):
    """A text stream that forwards to the Erlang side as `output` frames on `stream` (1 or 2)."""

    encoding = "utf-8"
    errors = "strict"

    def __init__(self, stream: int, name: str) -> None:
        super().__init__()
        self._stream = stream
        self._name = name
        self._lock = threading.RLock()
        self._pending: list[str] = []
        self._pending_size = 0

    @property
    def name(self) -> str:
        return self._name

    @property
    def line_buffering(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> NoReturn:
        raise io.UnsupportedOperation(f"{self._name} has no file descriptor in erlang_python")

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if self.closed:
            raise ValueError("I/O operation on closed file.")
        if not text:
            return 0
        with self._lock:
            self._pending.append(text)
            self._pending_size += len(text)
            if self._pending_size > FLUSH_THRESHOLD:
                self._forward_all()
            elif "\n" in text:
                buffered = "".join(self._pending)
                cut = buffered.rfind("\n") + 1
                out, rest = buffered[:cut], buffered[cut:]
                self._pending = [rest] if rest else []
                self._pending_size = len(rest)
                _write(self._stream, out)
        return len(text)

    def flush(self) -> None:
        # IOBase.close() calls this before marking the stream closed, so closing forwards the rest too.
        if self.closed:
            return
        with self._lock:
            self._forward_all()

    def _forward_all(self) -> None:
        # Called with the lock held.
        if not self._pending:
            return
        out = "".join(self._pending)
        self._pending = []
        self._pending_size = 0
        _write(self._stream, out)


class ErlangStdin(io.TextIOBase):
    """sys.stdin inside the port: there is no input, so every read raises RuntimeError."""

    encoding = "utf-8"
    errors = "strict"

    @property
    def name(self) -> str:
        return "<stdin>"

    def readable(self) -> bool:
        return False

    def isatty(self) -> bool:
        return False

    def fileno(self) -> NoReturn:
        raise io.UnsupportedOperation("<stdin> has no file descriptor in erlang_python")

    def read(self, size: int | None = -1) -> NoReturn:
        raise RuntimeError(STDIN_UNAVAILABLE)

    def readline(self, size: int | None = -1) -> NoReturn:
        raise RuntimeError(STDIN_UNAVAILABLE)

    def readlines(self, hint: int | None = -1) -> NoReturn:
        raise RuntimeError(STDIN_UNAVAILABLE)


def _install_std_streams() -> None:
    """Make sys.stdout, sys.stderr and sys.stdin the port's streams (called once by the port)."""
    for old in (sys.stdout, sys.stderr):
        if isinstance(old, ErlangWriter):
            old.flush()
    sys.stdout = ErlangWriter(STDOUT, "<stdout>")
    sys.stderr = ErlangWriter(STDERR, "<stderr>")
    sys.stdin = ErlangStdin()
