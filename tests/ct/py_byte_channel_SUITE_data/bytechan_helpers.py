# Python side of py_byte_channel_SUITE: the reference docs' ByteChannel examples and consumers.
import asyncio

import erlang
from erlang import ByteChannel, ByteChannelClosed


def receive_one(ref):
    return erlang.ByteChannel(ref).receive_bytes()


def try_one(ref):
    return ByteChannel(ref).try_receive_bytes()


# Reference docs, "Python API": receive, try_receive, iterate, send back, close.
def process_bytes(channel_ref):
    ch = ByteChannel(channel_ref)
    first = ch.receive_bytes()
    rest = b"".join(chunk for chunk in ch)
    ch.send_bytes(b"response data")
    ch.send_bytes(bytearray(b"+") + memoryview(first))
    ch.close()
    return [first, rest]


def with_block(channel_ref):
    with ByteChannel(channel_ref) as ch:
        return [len(chunk) for chunk in ch]


def process_bytes_async(channel_ref):
    async def main():
        ch = ByteChannel(channel_ref)
        first = await ch.async_receive_bytes()
        chunks = [first]
        async for chunk in ch:
            chunks.append(chunk)
        return b"".join(chunks)

    return asyncio.run(main())


def echo(channel_ref):
    # Sends every chunk back until Erlang closes; returns the byte count.
    ch = ByteChannel(channel_ref)
    n = 0
    for chunk in ch:
        ch.send_bytes(chunk)
        n += len(chunk)
    return n


def send_many(channel_ref, count, size):
    ch = ByteChannel(channel_ref)
    block = b"y" * size
    for _ in range(count):
        ch.send_bytes(block)
    return count


def closed_after_drain(channel_ref):
    ch = ByteChannel(channel_ref)
    got = ch.receive_bytes()
    try:
        ch.receive_bytes()
    except ByteChannelClosed as e:
        return [got, type(e).__name__, isinstance(e, erlang.channel.ChannelClosed)]
    return [got, "no exception", False]


def send_after_python_close(channel_ref):
    ch = ByteChannel(channel_ref)
    ch.close()
    try:
        ch.send_bytes(b"x")
    except ByteChannelClosed:
        return "closed"
    return "sent"
