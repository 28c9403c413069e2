# Python side of py_buffer_SUITE: the reference docs' PyBuffer examples.
import asyncio
import json

from erlang import PyBuffer


def read_all(ref):
    return PyBuffer(ref).read()


def read_chunks(ref, size):
    buf = PyBuffer(ref)
    out = []
    while True:
        chunk = buf.read(size)
        if not chunk:
            return out
        out.append(chunk)


def handle_request(environ):
    # Reference docs, Quick Start: the handle in the map arrives as a PyBuffer.
    input_buf = environ["input"]
    return input_buf.read()


def lines(ref):
    return [line for line in PyBuffer(ref)]


def file_api(ref):
    buf = PyBuffer(ref)
    first = buf.readline()
    limited = buf.readline(3)
    pos = buf.tell()
    rest = buf.readlines()
    buf.seek(0)
    again = buf.read(5)
    buf.seek(2, 1)
    cur = buf.tell()
    end = buf.seek(-3, 2)
    tail = buf.read()
    eof = buf.at_eof()
    flags = [buf.readable(), buf.writable(), buf.seekable(), buf.closed]
    buf.close()
    closed = buf.closed
    try:
        buf.read()
        after_close = "read"
    except ValueError:
        after_close = "ValueError"
    return [first, limited, pos, rest, again, cur, end, tail, eof, flags, closed, after_close]


def readlines_hint(ref, hint):
    return PyBuffer(ref).readlines(hint)


def seek_errors(ref):
    buf = PyBuffer(ref)
    out = []
    for args in [(-1,), (10**6,), (0, 2), (0, 7)]:
        try:
            buf.seek(*args)
            out.append("ok")
        except ValueError as e:
            out.append(str(e).split(":")[0])
    return out


def find_and_view(ref):
    buf = PyBuffer(ref)
    idx = buf.find(b"\n")
    boundary = buf.find(b"--boundary")
    missing = buf.find(b"nothere")
    bounded = buf.find(b"a", 3, 5)
    mv = memoryview(buf)
    props = [mv.readonly, mv.ndim, len(mv)]
    first_byte = mv[0]
    part = bytes(mv[:boundary])
    try:
        mv[0] = 1
        write = "written"
    except TypeError:
        write = "TypeError"
    mv.release()
    return [idx, boundary, missing, bounded, props, first_byte, part, write, len(buf)]


def view_survives_growth(ref):
    # A view taken now keeps its bytes valid while Erlang's later writes grow the buffer.
    buf = PyBuffer(ref)
    first = buf.read(4)
    mv = memoryview(buf)
    before = bytes(mv)
    rest = buf.read()  # waits for the rest and the close
    after = bytes(mv)
    mv.release()
    return [first, before, after, len(rest), len(bytes(memoryview(buf)))]


def nonblock(ref):
    buf = PyBuffer(ref)
    return [buf.readable_amount(), buf.read_nonblock(2), buf.read_nonblock(), buf.read_nonblock(), buf.at_eof(), len(buf)]


# Reference docs, "Async I/O Integration".
def process_body_async(environ):
    async def read_buffer_async(buf):
        chunks = []
        while not buf.at_eof():
            available = buf.readable_amount()
            if available > 0:
                chunks.append(buf.read_nonblock(4096))
            else:
                await asyncio.sleep(0.001)
        return b"".join(chunks)

    async def main():
        buf = environ["body"]
        body = await read_buffer_async(buf)
        return json.loads(body)

    return asyncio.run(main())


def content_length_eof(ref):
    # With a content length, read() ends once that many bytes came, even before close.
    return PyBuffer(ref).read()


def wrong_type(ref):
    try:
        PyBuffer(ref)
    except TypeError as e:
        return str(e)
    return "accepted"
