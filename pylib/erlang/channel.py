# Channels, byte channels and buffers: the Python side of py_channel, py_byte_channel and py_buffer.
#
# Scope: thin classes over the port's built-in `_erlang_chan` module, where the queues live
# (port/channels/, PROTOCOL.md §3.11). A handle is the Erlang reference the Erlang side created; it
# reaches Python as an erlang.Ref (an argument of py:call, in either codec) and names one channel of the
# port it was created in. Blocking reads release the GIL and, inside a request, end with
# erlang.CancelledError when the request is cancelled (its caller's timeout).
#
# Async receive is event-driven on any selector event loop: the slow path registers a one-shot eventfd
# with the running loop's add_reader, which the port signals when data, EOF or a drop arrives.

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio  # imported when a coroutine first waits (importing erlang must not cost asyncio's 30 ms)

try:
    import _erlang_chan as _c
except ImportError:  # outside the port (pytest installs a fake as erlang.channel._c)
    _c = None  # type: ignore[assignment]

from _erlang import send as _send

__all__ = ["ByteChannel", "ByteChannelClosed", "Channel", "ChannelClosed", "PyBuffer", "reply"]

_TYPE_CHANNEL = 1
_TYPE_BYTES = 2
_TYPE_BUFFER = 3

if _c is not None:
    ChannelClosed = _c.ChannelClosed
    ByteChannelClosed = _c.ByteChannelClosed
    _BufferBase: type = _c.BufferBase
else:

    class ChannelClosed(Exception):  # type: ignore[no-redef]
        """The channel was closed (and drained), or freed."""

    class ByteChannelClosed(ChannelClosed):  # type: ignore[no-redef]
        """The byte channel was closed (and drained), or freed."""

    class _BufferBase:  # type: ignore[no-redef]
        _id = 0


_EMPTY = object()  # try_receive's "nothing queued" (None is a message like any other)


def reply(pid: Any, term: Any) -> None:
    """Send `term` to the Erlang process `pid` (erlang.send)."""
    _send(pid, term)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def _wait_event(ident: int) -> None:
    """Waits, without polling, until channel `ident` has data, is closed or freed."""
    import asyncio

    loop = asyncio.get_running_loop()
    fd = _c.waiter(ident)
    fut = loop.create_future()
    try:
        loop.add_reader(fd, _wake, fut)
        try:
            await fut
        finally:
            loop.remove_reader(fd)
    finally:
        _c.unwait(ident, fd)


class _Queue:
    _type = _TYPE_CHANNEL

    def __init__(self, handle: Any) -> None:
        if isinstance(handle, _Queue):
            self._id: int = handle._id
        else:
            self._id = _c.lookup(handle, self._type)

    def _receive(self) -> Any:
        return _c.receive(self._id)

    def _try(self) -> Any:
        return _c.try_receive(self._id, _EMPTY)

    async def _async_receive(self) -> Any:
        while True:
            msg = self._try()
            if msg is not _EMPTY:
                return msg
            await _wait_event(self._id)

    def close(self) -> None:
        """Close the channel from Python: queued messages are dropped, every waiting reader wakes with
        the closed exception, and Erlang's sends answer {error, closed}. Safe to call more than once."""
        _c.close(self._id)

    def __enter__(self) -> _Queue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._id}>"


class Channel(_Queue):
    """Messages (Erlang terms) sent by py_channel:send/2."""

    def receive(self) -> Any:
        """The next message; blocks (without the GIL) until one arrives. Raises ChannelClosed once the
        channel is closed and drained."""
        return self._receive()

    def try_receive(self) -> Any:
        """The next message, or None if none is queued. Raises ChannelClosed when closed and drained."""
        msg = self._try()
        return None if msg is _EMPTY else msg

    async def async_receive(self) -> Any:
        """The next message, awaiting it without blocking the event loop."""
        return await self._async_receive()

    def __iter__(self) -> Iterator[Any]:
        try:
            while True:
                yield self._receive()
        except ChannelClosed:
            return

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._aiter()

    async def _aiter(self) -> AsyncIterator[Any]:
        try:
            while True:
                yield await self._async_receive()
        except ChannelClosed:
            return


class ByteChannel(_Queue):
    """Raw bytes both ways, no term encoding (py_byte_channel)."""

    _type = _TYPE_BYTES

    def receive_bytes(self) -> bytes:
        """The next chunk; blocks (without the GIL). Raises ByteChannelClosed once closed and drained."""
        return self._receive()  # type: ignore[no-any-return]

    def try_receive_bytes(self) -> bytes | None:
        """The next chunk, or None if none is queued."""
        msg = self._try()
        return None if msg is _EMPTY else msg  # type: ignore[no-any-return]

    async def async_receive_bytes(self) -> bytes:
        """The next chunk, awaited without blocking the event loop."""
        return await self._async_receive()  # type: ignore[no-any-return]

    def send_bytes(self, data: bytes | bytearray | memoryview) -> None:
        """Send bytes to Erlang (py_byte_channel:recv/1,2). Blocks (without the GIL) while Erlang has
        max_size (16 MiB if unbounded) of them unread."""
        _c.send_bytes(self._id, data)

    def __iter__(self) -> Iterator[bytes]:
        try:
            while True:
                yield self._receive()
        except ByteChannelClosed:
            return

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._aiter()

    async def _aiter(self) -> AsyncIterator[bytes]:
        try:
            while True:
                yield await self._async_receive()
        except ByteChannelClosed:
            return


class PyBuffer(_BufferBase):
    """A file-like, read-only view of a py_buffer that Erlang may still be writing (a WSGI input).

    Positions (tell, seek, find, memoryview indexes) count from the first byte written. Everything
    written stays readable until the buffer's owner exits: seek only moves within written data, and
    SEEK_END needs the end (py_buffer:close/1, or the content length reached)."""

    def __init__(self, handle: Any) -> None:
        if isinstance(handle, PyBuffer):
            self._id = handle._id
        else:
            self._id = _c.lookup(handle, _TYPE_BUFFER)
        self._closed = False

    @classmethod
    def _from_id(cls, ident: int) -> PyBuffer:
        # The port decodes a py_buffer handle as a PyBuffer (through this).
        buf = cls.__new__(cls)
        buf._id = ident
        buf._closed = False
        return buf

    def _check(self) -> None:
        if self._closed:
            raise ValueError("I/O operation on closed PyBuffer")

    def read(self, size: int | None = -1) -> bytes:
        """Up to `size` bytes (all, to the end, if -1), waiting (GIL released) for at least one; b''
        at the end."""
        self._check()
        return _c.buf_read(self._id, -1 if size is None else size, True)  # type: ignore[no-any-return]

    def read_nonblock(self, size: int = -1) -> bytes:
        """Up to `size` of the bytes available now (all if -1); never blocks, b'' if none."""
        self._check()
        return _c.buf_read(self._id, size, False)  # type: ignore[no-any-return]

    def readable_amount(self) -> int:
        """Bytes readable now without blocking."""
        r, w, _eof, _cl = _c.buf_state(self._id)
        return w - r  # type: ignore[no-any-return]

    def at_eof(self) -> bool:
        """True once the end was signalled (or the content length reached) and everything was read."""
        r, w, eof, _cl = _c.buf_state(self._id)
        return bool(eof and r == w)

    def readline(self, size: int | None = -1) -> bytes:
        """One line, with its b'\\n' (at most `size` bytes); waits for it; b'' at the end."""
        self._check()
        return _c.buf_readline(self._id, -1 if size is None else size)  # type: ignore[no-any-return]

    def readlines(self, hint: int = -1) -> list[bytes]:
        """The remaining lines; stops once about `hint` bytes were read if hint > 0."""
        lines: list[bytes] = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                return lines

    def seek(self, offset: int, whence: int = 0) -> int:
        """Moves the read position within written data (SEEK_END needs the end); returns it."""
        self._check()
        return _c.buf_seek(self._id, offset, whence)  # type: ignore[no-any-return]

    def tell(self) -> int:
        """The read position."""
        return _c.buf_state(self._id)[0]  # type: ignore[no-any-return]

    def find(self, sub: bytes, start: int = 0, end: int | None = None) -> int:
        """Lowest index of `sub` in the written bytes [start, end), or -1 (memchr/memmem; never blocks)."""
        return _c.buf_find(self._id, sub, start, end)  # type: ignore[no-any-return]

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        """True after close() (Python's side; the end of the data is at_eof())."""
        return self._closed

    def close(self) -> None:
        """Marks this object closed: reads raise ValueError. The data stays for other readers."""
        self._closed = True

    def __len__(self) -> int:
        return self.readable_amount()

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line

    def __enter__(self) -> PyBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<PyBuffer {self._id}>"
