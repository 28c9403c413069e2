# Python side of py_channel_SUITE: the reference docs' examples and the consumers the cases use.
import asyncio
import threading

import _erlang_chan
import erlang
from erlang.channel import Channel, ChannelClosed, reply


def drain(ref):
    return list(Channel(ref))


def receive_one(ref):
    return Channel(ref).receive()


def receive_or_report(ref, pid):
    # The caller times out: the blocked receive must end with erlang.CancelledError.
    try:
        return Channel(ref).receive()
    except erlang.CancelledError:
        erlang.send(pid, "cancelled")
        raise


def try_one(ref):
    return Channel(ref).try_receive()


def try_after_close(ref):
    ch = Channel(ref)
    first = ch.try_receive()
    try:
        ch.try_receive()
    except ChannelClosed:
        return [first, "closed"]
    return [first, "not closed"]


def closed_name():
    return [ChannelClosed.__name__, ChannelClosed.__module__]


# Reference docs, "Request-Response Pattern" / Quick Start (sync).
def handle_requests(channel_ref):
    ch = Channel(channel_ref)
    n = 0
    for msg in ch:
        if msg[0] == "request":
            _, sender_pid, data = msg
            reply(sender_pid, ("response", data.upper()))
            n += 1
    return n


# Reference docs, "Streaming Data" (async for), in a plain asyncio loop.
def process_stream(channel_ref):
    async def main():
        ch = Channel(channel_ref)
        results = []
        async for item in ch:
            results.append(item * 2)
        return results

    return asyncio.run(main())


def async_one(ref):
    async def main():
        return await Channel(ref).async_receive()

    return asyncio.run(main())


# Reference docs, "Worker Pool Pattern": n async workers on one channel, one loop.
def async_workers(ref, n):
    async def worker(ch, i, got):
        async for msg in ch:
            if msg[0] == "work":
                got.append((i, msg[1]))
                await asyncio.sleep(0)

    async def main():
        got = []
        await asyncio.gather(*(worker(Channel(ref), i, got) for i in range(n)))
        return got

    got = asyncio.run(main())
    return [sorted(item for _, item in got), len({i for i, _ in got})]


# Several threads (outside contexts) consuming one channel.
def thread_consumers(ref, n):
    ch = Channel(ref)
    got = []
    lock = threading.Lock()

    def run():
        for m in ch:
            with lock:
                got.append(m)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return sorted(got)


# A sync reader (thread) and an async reader blocked at once; Erlang's close must end both.
def blocked_readers(ref):
    ch = Channel(ref)
    ends = {}

    def sync_reader():
        try:
            ch.receive()
            ends["sync"] = "message"
        except ChannelClosed:
            ends["sync"] = "closed"

    t = threading.Thread(target=sync_reader)
    t.start()

    async def main():
        try:
            await ch.async_receive()
            return "message"
        except ChannelClosed:
            return "closed"

    ends["async"] = asyncio.run(main())
    t.join(30)
    return [ends.get("sync"), ends["async"]]


def close_from_python(ref):
    ch = Channel(ref)
    ch.close()
    ch.close()  # safe twice
    return True


def with_block(ref):
    with Channel(ref) as ch:
        return ch.receive()


def count():
    return _erlang_chan._count()


def rss_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def consume_count(ref):
    n = 0
    for _ in Channel(ref):
        n += 1
    return n
