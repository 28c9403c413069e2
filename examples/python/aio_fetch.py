"""Concurrent I/O-bound coroutines with asyncio, run inside one py:call (asyncio_example.escript)."""
import asyncio
import time


async def fetch(port, i):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"request {i}\n".encode())
    await writer.drain()
    line = await reader.readline()
    writer.close()
    await writer.wait_closed()
    return line.decode().strip()


async def fetch_all(port, n):
    return await asyncio.gather(*(fetch(port, i) for i in range(n)))


def run(port, n):
    """Fetches n replies concurrently; returns (replies, seconds)."""
    start = time.monotonic()
    replies = asyncio.run(fetch_all(port, n))
    return replies, time.monotonic() - start
