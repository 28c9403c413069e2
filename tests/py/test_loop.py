# erlang.ErlangEventLoop and its entry points (pylib/erlang/_loop.py): the documented examples of the
# asyncio guide (run, Runner, install, manual loop, sleep, gather, wait_for, wait, create_task, timeout,
# spawn_task), TCP/UDP on the loop, the unsupported methods, the sleep latency and the idle cost.

import asyncio
import os
import resource
import socket
import sys
import threading
import time
import warnings
from typing import Any

import pytest

import erlang
from conftest import FakePort


async def _answer() -> int:
    await asyncio.sleep(0.01)
    return 42


def test_run_returns_the_coroutine_result_on_an_erlang_loop() -> None:
    async def main() -> type:
        await asyncio.sleep(0.01)
        return type(asyncio.get_running_loop())

    assert erlang.run(main()) is erlang.ErlangEventLoop
    assert erlang.run(_answer()) == 42


def test_run_propagates_the_coroutine_exception() -> None:
    async def boom() -> None:
        await asyncio.sleep(0)
        raise KeyError("missing")

    with pytest.raises(KeyError, match="missing"):
        erlang.run(boom())


def test_runner_with_loop_factory() -> None:
    with asyncio.Runner(loop_factory=erlang.new_event_loop) as runner:
        assert runner.run(_answer()) == 42
        assert isinstance(runner.get_loop(), erlang.ErlangEventLoop)


def test_manual_loop_management() -> None:
    loop = erlang.new_event_loop()
    assert isinstance(loop, erlang.ErlangEventLoop) and isinstance(loop, asyncio.AbstractEventLoop)
    asyncio.set_event_loop(loop)
    try:
        assert loop.run_until_complete(_answer()) == 42
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    assert loop.is_closed()


def test_constructor_and_low_level_methods() -> None:
    loop = erlang.ErlangEventLoop()
    seen: list[str] = []
    try:
        loop.call_soon(seen.append, "soon")
        loop.call_later(0.01, seen.append, "later")
        loop.call_at(loop.time() + 0.02, seen.append, "at")
        loop.call_later(0.03, loop.stop)
        loop.run_forever()
    finally:
        loop.close()
    assert seen == ["soon", "later", "at"]


def test_install_sets_the_policy() -> None:
    old = asyncio.get_event_loop_policy()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            erlang.install()
        deprecated = [
            w for w in caught
            if issubclass(w.category, DeprecationWarning) and "erlang.install" in str(w.message)
        ]
        assert bool(deprecated) == (sys.version_info >= (3, 12))
        assert isinstance(asyncio.get_event_loop_policy(), erlang.ErlangEventLoopPolicy)

        async def which() -> type:
            return type(asyncio.get_running_loop())

        assert asyncio.run(which()) is erlang.ErlangEventLoop
    finally:
        asyncio.set_event_loop_policy(old)


def test_standard_asyncio_functions() -> None:
    async def task(n: int) -> int:
        await asyncio.sleep(0.01)
        return n * 2

    async def fast() -> str:
        await asyncio.sleep(0.01)
        return "done"

    async def background() -> str:
        await asyncio.sleep(0.1)
        return "background_done"

    async def main() -> None:
        assert await asyncio.gather(task(1), task(2), task(3)) == [2, 4, 6]
        assert await asyncio.wait_for(fast(), timeout=1.0) == "done"
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.sleep(10), timeout=0.01)
        t = asyncio.create_task(background(), name="bg")
        assert t.get_name() == "bg"
        await asyncio.sleep(0.05)
        assert await t == "background_done"
        tasks = [asyncio.create_task(asyncio.sleep(0.01)) for _ in range(3)]
        done, pending = await asyncio.wait(tasks, return_when=asyncio.ALL_COMPLETED)
        assert len(done) == 3 and not pending
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await asyncio.sleep(10)
        fut = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.01, fut.set_result, "fut")
        assert await fut == "fut"

    erlang.run(main())


def test_gather_return_exceptions() -> None:
    async def bad() -> None:
        raise ValueError("bad")

    async def main() -> list[Any]:
        return await asyncio.gather(_answer(), bad(), return_exceptions=True)

    first, second = erlang.run(main())
    assert first == 42 and isinstance(second, ValueError)


def test_sleep_awaits_in_a_coroutine_and_blocks_in_plain_code(fake_erlang: FakePort) -> None:
    async def main() -> str:
        t0 = time.monotonic()
        await erlang.sleep(0.05)
        assert time.monotonic() - t0 >= 0.045
        return "done"

    assert erlang.run(main()) == "done"
    assert fake_erlang.sleeps == []  # the coroutine form never reached the port's blocking sleep
    erlang.sleep(0.25)
    assert fake_erlang.sleeps == [0.25]


def test_async_sleep_checks_its_argument() -> None:
    async def main(value: float) -> None:
        await erlang.sleep(value)

    with pytest.raises(ValueError, match="non-negative"):
        erlang.run(main(-1))
    with pytest.raises(ValueError, match="finite"):
        erlang.run(main(float("nan")))


def test_sleep_one_millisecond_costs_about_a_millisecond() -> None:
    # Median of 50 sleeps of 1 ms: well under the 10 ms of a polling loop, with room for a loaded box.
    async def main() -> list[float]:
        samples = []
        for _ in range(50):
            t0 = time.perf_counter()
            await asyncio.sleep(0.001)
            samples.append(time.perf_counter() - t0)
        return sorted(samples)

    samples = erlang.run(main())
    median = samples[len(samples) // 2]
    assert 0.001 <= median < 0.005, samples


def test_ten_thousand_concurrent_sleeps() -> None:
    async def main() -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(asyncio.sleep(0.01) for _ in range(10_000)))
        return time.perf_counter() - t0

    assert erlang.run(main()) < 2.0  # target 0.2 s on an idle machine; margin for a loaded one


def test_idle_loop_costs_no_cpu() -> None:
    # A loop that waits 0.5 s for a timer sleeps in epoll_wait: its thread uses (almost) no CPU time.
    async def main() -> float:
        t0 = resource.getrusage(resource.RUSAGE_THREAD)
        await asyncio.sleep(0.5)
        t1 = resource.getrusage(resource.RUSAGE_THREAD)
        return (t1.ru_utime + t1.ru_stime) - (t0.ru_utime + t0.ru_stime)

    assert erlang.run(main()) < 0.02


def test_subprocess_and_signals_are_not_supported() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with pytest.raises(NotImplementedError, match="Subprocess operations are not supported"):
            await loop.subprocess_shell(asyncio.SubprocessProtocol, "true")
        with pytest.raises(NotImplementedError, match="Subprocess operations are not supported"):
            await loop.subprocess_exec(asyncio.SubprocessProtocol, "true")
        with pytest.raises(NotImplementedError, match="Subprocess operations are not supported"):
            await asyncio.create_subprocess_shell("true")
        with pytest.raises(NotImplementedError, match="Subprocess operations are not supported"):
            await asyncio.create_subprocess_exec("true")
        with pytest.raises(NotImplementedError, match="Signal handlers not supported"):
            loop.add_signal_handler(15, lambda: None)
        with pytest.raises(NotImplementedError, match="Signal handlers not supported"):
            loop.remove_signal_handler(15)

    erlang.run(main())


def test_spawn_task_in_a_coroutine_goes_on_the_running_loop() -> None:
    async def background() -> str:
        await asyncio.sleep(0.01)
        return "bg"

    async def main() -> str:
        task = erlang.spawn_task(background(), name="named")
        assert isinstance(task, asyncio.Task) and task.get_loop() is asyncio.get_running_loop()
        assert task.get_name() == "named"
        return await task

    assert erlang.run(main()) == "bg"


def test_spawn_task_from_plain_code_runs_on_the_background_loop() -> None:
    ran = threading.Event()
    where: list[str] = []

    async def work() -> str:
        await asyncio.sleep(0.01)
        where.append(threading.current_thread().name)
        ran.set()
        return "ok"

    task = erlang.spawn_task(work())
    assert isinstance(task, asyncio.Task)
    assert isinstance(task.get_loop(), erlang.ErlangEventLoop)
    assert ran.wait(5.0)
    assert where == ["erlang-loop-0"]


def test_spawn_task_from_plain_code_can_be_cancelled() -> None:
    cancelled = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    task = erlang.spawn_task(forever())
    time.sleep(0.02)
    task.get_loop().call_soon_threadsafe(task.cancel)
    assert cancelled.wait(5.0)


def test_spawn_task_refuses_a_non_coroutine() -> None:
    with pytest.raises(TypeError, match="needs a coroutine"):
        erlang.spawn_task(lambda: None)  # type: ignore[arg-type]


def test_async_call_does_not_block_the_loop(fake_erlang: FakePort) -> None:
    gate = threading.Event()

    def slow(x: int) -> int:
        assert gate.wait(5.0)
        return x * 2

    fake_erlang.functions["slow"] = slow

    async def ticker() -> int:
        ticks = 0
        while not gate.is_set():
            await asyncio.sleep(0.005)
            ticks += 1
            if ticks == 5:
                gate.set()  # the loop kept running while the Erlang call waited
        return ticks

    async def main() -> list[Any]:
        return await asyncio.gather(erlang.async_call("slow", 21), ticker())

    assert erlang.run(main()) == [42, 5]


def test_async_call_error_raises_erlang_error(fake_erlang: FakePort) -> None:
    async def main() -> None:
        await erlang.async_call("not_registered", 1)

    with pytest.raises(erlang.ErlangError, match="not registered"):
        erlang.run(main())


def test_async_call_gather_of_several(fake_erlang: FakePort) -> None:
    fake_erlang.functions["query_a"] = lambda p: ("a", p)
    fake_erlang.functions["query_b"] = lambda p: ("b", p)

    async def main() -> list[Any]:
        return await asyncio.gather(erlang.async_call("query_a", 1), erlang.async_call("query_b", 2))

    assert erlang.run(main()) == [("a", 1), ("b", 2)]


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


def test_tcp_echo_server_serves_100_concurrent_clients() -> None:
    async def client(port: int, n: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        payload = f"hello {n}\n".encode()
        writer.write(payload)
        await writer.drain()
        line = await reader.readline()
        writer.close()
        await writer.wait_closed()
        return line

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Echo, host="127.0.0.1", port=0, reuse_address=True, backlog=200)
        port = server.sockets[0].getsockname()[1]
        async with server:
            lines = await asyncio.wait_for(asyncio.gather(*(client(port, n) for n in range(100))), 30)
        assert lines == [f"hello {n}\n".encode() for n in range(100)]

    erlang.run(main())


def test_tcp_create_connection_protocol_and_extra_info() -> None:
    class Client(asyncio.Protocol):
        def __init__(self, done: asyncio.Future[bytes]) -> None:
            self.done = done

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.peer = transport.get_extra_info("peername")
            assert transport.get_extra_info("socket") is not None
            assert transport.get_extra_info("sockname") is not None
            transport.write(b"Hello, World!")  # type: ignore[attr-defined]

        def data_received(self, data: bytes) -> None:
            self.done.set_result(data)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Echo, host="127.0.0.1", port=0)
        port = server.sockets[0].getsockname()[1]
        done = loop.create_future()
        transport, protocol = await loop.create_connection(lambda: Client(done), host="127.0.0.1", port=port)
        try:
            assert await asyncio.wait_for(done, 5) == b"Hello, World!"
            assert protocol.peer == ("127.0.0.1", port)
        finally:
            transport.close()
            server.close()
            await server.wait_closed()

    erlang.run(main())


def test_udp_echo_connected_and_unconnected() -> None:
    class Server(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: Any) -> None:
            self.transport.sendto(data, addr)  # type: ignore[attr-defined]

    class Client(asyncio.DatagramProtocol):
        def __init__(self, got: asyncio.Future[tuple[bytes, Any]]) -> None:
            self.got = got

        def datagram_received(self, data: bytes, addr: Any) -> None:
            self.got.set_result((data, addr))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server, _ = await loop.create_datagram_endpoint(Server, local_addr=("127.0.0.1", 0), reuse_port=True)
        addr = server.get_extra_info("sockname")
        try:
            got = loop.create_future()
            connected, _ = await loop.create_datagram_endpoint(lambda: Client(got), remote_addr=addr)
            connected.sendto(b"Hello UDP!")
            data, src = await asyncio.wait_for(got, 5)
            assert data == b"Hello UDP!" and src == addr
            connected.close()

            got2 = loop.create_future()
            free, _ = await loop.create_datagram_endpoint(
                lambda: Client(got2), local_addr=("127.0.0.1", 0), allow_broadcast=True
            )
            free.sendto(b"to any", addr)
            assert (await asyncio.wait_for(got2, 5))[0] == b"to any"
            free.close()

            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            got3 = loop.create_future()
            own, _ = await loop.create_datagram_endpoint(lambda: Client(got3), sock=sock)
            own.sendto(b"own sock", addr)
            assert (await asyncio.wait_for(got3, 5))[0] == b"own sock"
            own.close()
        finally:
            server.close()

    erlang.run(main())


def test_add_reader_wakes_the_loop() -> None:
    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        r, w = os.pipe()
        got = loop.create_future()
        loop.add_reader(r, lambda: got.set_result(os.read(r, 10)))
        try:
            loop.call_later(0.01, os.write, w, b"ping")
            return await asyncio.wait_for(got, 5)
        finally:
            loop.remove_reader(r)
            os.close(r)
            os.close(w)

    assert erlang.run(main()) == b"ping"


def test_background_loop_index_is_bounded() -> None:
    from erlang import _loop

    with pytest.raises(ValueError, match="loop index"):
        _loop.background_loop(_loop._MAX_LOOPS)
    with pytest.raises(ValueError, match="loop index"):
        _loop.background_loop(-1)


def test_importing_erlang_does_not_import_asyncio() -> None:
    # The port imports the package at start-up; asyncio (~30 ms) comes with the first use of the loop.
    import subprocess
    from pathlib import Path

    here = Path(__file__).resolve().parent
    code = (
        "import sys; sys.path.insert(0, %r); import conftest, erlang; "
        "assert 'asyncio' not in sys.modules, 'eager'; erlang.run; assert 'asyncio' in sys.modules" % str(here)
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
