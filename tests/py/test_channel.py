# erlang.channel outside the port: Channel, ByteChannel and PyBuffer over a fake `_erlang_chan`.
#
# The fake keeps each queue in Python with the port's semantics (receive blocks until data or close,
# the closed exception once closed and drained, one-shot eventfd waiters signalled on data and close),
# so these tests check the wrappers: iteration ending at close, the async path waiting on the eventfd
# with a plain asyncio loop (several coroutines on one channel), try_receive's None, the context
# manager, send_bytes, and PyBuffer's file interface built on the primitives.

import asyncio
import os
import threading
import time
from collections import deque

import pytest

import erlang
import erlang.channel as channel
from erlang.channel import ByteChannel, ByteChannelClosed, Channel, ChannelClosed, PyBuffer


class _Chan:
    def __init__(self, typ):
        self.typ = typ
        self.queue = deque()
        self.eof = False
        self.cond = threading.Condition()
        self.fds = []
        self.sent = []
        self.data = bytearray()
        self.pos = 0

    def signal(self):
        for fd in self.fds:
            os.eventfd_write(fd, 1)
        self.fds.clear()
        self.cond.notify_all()


class FakeChan:
    """Stands in for the port's _erlang_chan (ids, not pointers, as there)."""

    def __init__(self):
        self.chans = {}
        self.by_ref = {}
        self.closed_by_python = []

    # what the Erlang side does
    def open(self, ref, typ):
        ident = len(self.chans) + 1
        self.chans[ident] = _Chan(typ)
        self.by_ref[ref] = ident
        return ident

    def push(self, ident, msg):
        c = self.chans[ident]
        with c.cond:
            if c.typ == 3:
                c.data += msg
            else:
                c.queue.append(msg)
            c.signal()

    def erlang_close(self, ident):
        c = self.chans[ident]
        with c.cond:
            c.eof = True
            c.signal()

    # _erlang_chan's API
    def lookup(self, ref, typ):
        ident = self.by_ref.get(ref)
        if ident is None:
            raise ChannelClosed("no open channel or buffer of this port has this handle")
        if self.chans[ident].typ != typ:
            raise TypeError("wrong handle type")
        return ident

    def _exc(self, c):
        return ByteChannelClosed if c.typ == 2 else ChannelClosed

    def receive(self, ident):
        c = self.chans[ident]
        with c.cond:
            while not c.queue:
                if c.eof:
                    raise self._exc(c)("channel closed")
                c.cond.wait(5)
            return c.queue.popleft()

    def try_receive(self, ident, empty):
        c = self.chans[ident]
        with c.cond:
            if c.queue:
                return c.queue.popleft()
            if c.eof:
                raise self._exc(c)("channel closed")
            return empty

    def waiter(self, ident):
        c = self.chans[ident]
        fd = os.eventfd(0, os.EFD_NONBLOCK)
        with c.cond:
            if c.queue or c.eof:
                os.eventfd_write(fd, 1)
            else:
                c.fds.append(fd)
        return fd

    def unwait(self, ident, fd):
        c = self.chans[ident]
        with c.cond:
            if fd in c.fds:
                c.fds.remove(fd)
        os.close(fd)

    def close(self, ident):
        c = self.chans[ident]
        with c.cond:
            c.eof = True
            c.queue.clear()
            c.signal()
        self.closed_by_python.append(ident)

    def send_bytes(self, ident, data):
        self.chans[ident].sent.append(bytes(data))

    def buf_read(self, ident, size, block):
        c = self.chans[ident]
        with c.cond:
            while block and not c.eof and (size < 0 or len(c.data) == c.pos) and size != 0:
                c.cond.wait(5)
            end = len(c.data) if size < 0 else min(len(c.data), c.pos + size)
            out = bytes(c.data[c.pos:end])
            c.pos = end
            return out

    def buf_readline(self, ident, limit):
        c = self.chans[ident]
        with c.cond:
            while True:
                end = len(c.data) if limit < 0 else min(len(c.data), c.pos + limit)
                nl = c.data.find(b"\n", c.pos, end)
                if nl >= 0:
                    end = nl + 1
                    break
                if c.eof or (limit >= 0 and end - c.pos >= limit):
                    break
                c.cond.wait(5)
            out = bytes(c.data[c.pos:end])
            c.pos = end
            return out

    def buf_state(self, ident):
        c = self.chans[ident]
        return (c.pos, len(c.data), c.eof, 0)

    def buf_seek(self, ident, offset, whence):
        c = self.chans[ident]
        base = {0: 0, 1: c.pos, 2: len(c.data)}[whence]
        c.pos = base + offset
        return c.pos

    def buf_find(self, ident, sub, start, end):
        return self.chans[ident].data.find(sub, start, end if end is not None else len(self.chans[ident].data))


@pytest.fixture
def fake(monkeypatch):
    f = FakeChan()
    monkeypatch.setattr(channel, "_c", f)
    return f


def later(delay, fn, *args):
    t = threading.Timer(delay, fn, args)
    t.start()
    return t


def test_public_names():
    assert erlang.ByteChannel is ByteChannel
    assert erlang.PyBuffer is PyBuffer
    assert erlang.ByteChannelClosed is ByteChannelClosed
    assert issubclass(ByteChannelClosed, ChannelClosed)


def test_iteration_ends_at_close(fake):
    ident = fake.open("r", 1)
    for m in [1, None, "x"]:
        fake.push(ident, m)
    fake.erlang_close(ident)
    assert list(Channel("r")) == [1, None, "x"]


def test_receive_blocks_until_data(fake):
    ident = fake.open("r", 1)
    later(0.1, fake.push, ident, "late")
    t0 = time.monotonic()
    assert Channel("r").receive() == "late"
    assert time.monotonic() - t0 >= 0.05


def test_try_receive_none_and_closed(fake):
    ident = fake.open("r", 1)
    ch = Channel("r")
    assert ch.try_receive() is None
    fake.push(ident, None)
    assert ch.try_receive() is None  # a None message
    fake.erlang_close(ident)
    with pytest.raises(ChannelClosed):
        ch.try_receive()
    with pytest.raises(ChannelClosed):
        ch.receive()


def test_unknown_handle(fake):
    with pytest.raises(ChannelClosed):
        Channel("nope")
    fake.open("b", 2)
    with pytest.raises(TypeError):
        Channel("b")


def test_context_manager_closes(fake):
    ident = fake.open("r", 1)
    fake.push(ident, 5)
    with Channel("r") as ch:
        assert ch.receive() == 5
    assert fake.closed_by_python == [ident]


def test_channel_from_channel(fake):
    fake.open("r", 1)
    ch = Channel("r")
    assert Channel(ch)._id == ch._id


def test_async_receive_waits_on_eventfd(fake):
    ident = fake.open("r", 1)

    async def main():
        later(0.1, fake.push, ident, "a")
        return await Channel("r").async_receive()

    assert asyncio.run(main()) == "a"
    assert fake.chans[ident].fds == []  # the waiter was unregistered


def test_async_for_several_consumers(fake):
    ident = fake.open("r", 1)

    async def worker(got):
        async for m in Channel("r"):
            got.append(m)
            await asyncio.sleep(0)

    async def main():
        got = []
        tasks = [asyncio.create_task(worker(got)) for _ in range(3)]
        await asyncio.sleep(0.01)

        def produce():
            for i in range(50):
                fake.push(ident, i)
            fake.erlang_close(ident)

        threading.Thread(target=produce).start()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        return got

    assert sorted(asyncio.run(main())) == list(range(50))


def test_async_receive_cancelled_unregisters(fake):
    ident = fake.open("r", 1)

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(Channel("r").async_receive(), 0.05)

    asyncio.run(main())
    assert fake.chans[ident].fds == []


def test_async_closed_raises(fake):
    ident = fake.open("r", 1)
    later(0.05, fake.erlang_close, ident)

    async def main():
        with pytest.raises(ChannelClosed):
            await Channel("r").async_receive()

    asyncio.run(main())


def test_byte_channel(fake):
    ident = fake.open("b", 2)
    fake.push(ident, b"one")
    fake.push(ident, b"two")
    ch = ByteChannel("b")
    assert ch.receive_bytes() == b"one"
    assert ch.try_receive_bytes() == b"two"
    assert ch.try_receive_bytes() is None
    fake.push(ident, b"three")
    fake.erlang_close(ident)
    assert list(ch) == [b"three"]
    with pytest.raises(ByteChannelClosed):
        ch.receive_bytes()
    ch.send_bytes(b"back")
    ch.send_bytes(memoryview(b"view"))
    assert fake.chans[ident].sent == [b"back", b"view"]


def test_byte_channel_async(fake):
    ident = fake.open("b", 2)

    async def main():
        later(0.05, fake.push, ident, b"x")
        first = await ByteChannel("b").async_receive_bytes()
        later(0.05, fake.erlang_close, ident)
        rest = [c async for c in ByteChannel("b")]
        return first, rest

    assert asyncio.run(main()) == (b"x", [])


def test_pybuffer_file_interface(fake):
    ident = fake.open("buf", 3)
    fake.push(ident, b"l1\nl2\nl")
    later(0.05, fake.push, ident, b"3\n")
    later(0.1, fake.erlang_close, ident)
    buf = PyBuffer("buf")
    assert buf.readline() == b"l1\n"
    assert buf.readable_amount() == 4
    assert len(buf) == 4
    assert list(buf) == [b"l2\n", b"l3\n"]
    assert buf.at_eof()
    assert buf.tell() == 9
    buf.seek(0)
    assert buf.readlines(4) == [b"l1\n", b"l2\n"]
    assert buf.find(b"l3") == 6
    assert [buf.readable(), buf.writable(), buf.seekable(), buf.closed] == [True, False, True, False]
    with buf:
        pass
    assert buf.closed
    with pytest.raises(ValueError):
        buf.read()
