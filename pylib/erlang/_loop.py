# The asyncio event loop of erlang_python (issue 9): `erlang.ErlangEventLoop` and its entry points.
#
# Scope: the loop class, `new_event_loop`, `run`, `install` and the policy, `erlang.spawn_task` and
# `erlang.async_call` (the async-aware `erlang.sleep` is in `_sleep.py`). The package imports this
# module on first use of one of these names, so a port that never uses asyncio never imports it. The task service that runs
# `py_event_loop` tasks lives in `_tasks.py`; both use the background loop threads defined here.
#
# Why a selector loop: the port is an ordinary OS process, so the kernel's epoll gives timers, socket
# readiness and wake-ups with no round trip to Erlang; an idle loop sleeps in epoll_wait and costs no
# CPU; `asyncio.sleep(0.001)` costs about a millisecond (tests/py/test_loop.py measures both). Keeping
# it a selector loop means `loop.add_reader(fd)` works for anything that hands the loop a descriptor
# (channels' `async_receive`). TCP, UDP and Unix sockets are the stock SelectorEventLoop's.
#
# What it does not do: subprocesses (the port must not fork children behind the VM's back) and signal
# handlers (signals belong to the BEAM): those raise NotImplementedError with the documented reason.

import asyncio
import selectors
import sys
import threading
import warnings
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import _erlang

T = TypeVar("T")

_SUBPROCESS_MSG = (
    "Subprocess operations are not supported by ErlangEventLoop: fork() would corrupt the Erlang VM. "
    "Use Erlang ports (open_port/2) and call them through erlang.call()."
)
_SIGNAL_MSG = (
    "Signal handlers not supported by ErlangEventLoop: signals are handled by the Erlang VM."
)

# The port's cancel hook (PROTOCOL.md §3.10): a request's loop registers its self-pipe so that a cancel
# of the request wakes epoll_wait at once, where the asynchronous erlang.CancelledError is raised. The
# fake `_erlang` of the Python tests and older ports have no hook: the cancel then lands at the loop's
# next wake-up.
_set_wakeup = getattr(_erlang, "_set_loop_wakeup_fd", None)


def _new_selector() -> selectors.BaseSelector:
    return selectors.EpollSelector() if hasattr(selectors, "EpollSelector") else selectors.DefaultSelector()


class ErlangEventLoop(asyncio.SelectorEventLoop):  # type: ignore[misc,valid-type]
    """An asyncio event loop for code running inside erlang_python_port.

    A `SelectorEventLoop` on epoll: every standard asyncio facility works on it (tasks, futures,
    `sleep`, `gather`, `wait_for`, `wait`, `timeout`, TCP `create_connection`/`create_server`, UDP
    `create_datagram_endpoint`, `add_reader`/`add_writer`). While it runs on a thread that serves an
    Erlang request, a cancel of that request wakes it and ends the run with `erlang.CancelledError`.
    """

    def __init__(self, selector: selectors.BaseSelector | None = None) -> None:
        super().__init__(selector if selector is not None else _new_selector())

    # A callable run at the end of every loop iteration, after its callbacks (None: nothing). The task
    # service (_tasks.py) sends the outcomes of one iteration there, together, without scheduling
    # one more iteration to do it.
    end_of_iteration: Callable[[], None] | None = None

    def _run_once(self) -> None:
        super()._run_once()  # type: ignore[misc]
        hook = self.end_of_iteration
        if hook is not None:
            hook()

    def run_forever(self) -> None:
        previous = -1
        if _set_wakeup is not None:
            previous = _set_wakeup(self._csock.fileno())  # type: ignore[attr-defined]
        try:
            super().run_forever()
        finally:
            if _set_wakeup is not None:
                _set_wakeup(previous)

    async def subprocess_shell(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(_SUBPROCESS_MSG)

    async def subprocess_exec(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(_SUBPROCESS_MSG)

    def add_signal_handler(self, sig: int, callback: Any, *args: Any) -> None:
        raise NotImplementedError(_SIGNAL_MSG)

    def remove_signal_handler(self, sig: int) -> bool:
        raise NotImplementedError(_SIGNAL_MSG)


def new_event_loop() -> ErlangEventLoop:
    """A new, not yet running ErlangEventLoop (for `asyncio.Runner(loop_factory=erlang.new_event_loop)`)."""
    return ErlangEventLoop()


def run(main: Coroutine[Any, Any, T], *, debug: bool | None = None) -> T:
    """Run a coroutine to completion on a fresh ErlangEventLoop and return its result (like asyncio.run)."""
    with asyncio.Runner(loop_factory=new_event_loop, debug=debug) as runner:
        return runner.run(main)


def _policy_base() -> type:
    # Python 3.14 deprecates the public policy classes; the Unix default policy is the same class.
    from asyncio import unix_events

    base = getattr(unix_events, "_UnixDefaultEventLoopPolicy", None)
    return base if base is not None else asyncio.DefaultEventLoopPolicy


class ErlangEventLoopPolicy(_policy_base()):  # type: ignore[misc]
    """An event loop policy whose loops are ErlangEventLoops (what `erlang.install()` sets)."""

    def new_event_loop(self) -> ErlangEventLoop:
        return ErlangEventLoop()


def install() -> None:
    """Make ErlangEventLoop the default for `asyncio.run()` and `asyncio.new_event_loop()` (global policy).

    Deprecated on Python 3.12+ (asyncio deprecates global policies): use `erlang.run()` or
    `asyncio.Runner(loop_factory=erlang.new_event_loop)`.
    """
    if sys.version_info >= (3, 12):
        warnings.warn(
            "erlang.install() is deprecated on Python 3.12+: use erlang.run() or "
            "asyncio.Runner(loop_factory=erlang.new_event_loop)",
            DeprecationWarning,
            stacklevel=2,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        asyncio.set_event_loop_policy(ErlangEventLoopPolicy())


class _LoopThread:
    """One ErlangEventLoop running forever on its own daemon thread.

    Bounded: the threads are made on demand, at most `_MAX_LOOPS` per interpreter (the loop index is
    checked), and each lives as long as the interpreter. Work reaches it only through
    `call_soon_threadsafe`, which writes the loop's self-pipe: an idle one sleeps in epoll_wait.
    """

    def __init__(self, index: int) -> None:
        self.loop = ErlangEventLoop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._main, name=f"erlang-loop-{index}", daemon=True)
        self.thread.start()
        self.ready.wait()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self.ready.set)
        self.loop.run_forever()


_MAX_LOOPS = 256
_loops: dict[int, _LoopThread] = {}
_loops_lock = threading.Lock()  # guards _loops: submitters on several context threads


def background_loop(index: int = 0) -> asyncio.AbstractEventLoop:
    """The interpreter's background loop number `index` (started on first use)."""
    if not 0 <= index < _MAX_LOOPS:
        raise ValueError(f"loop index must be in 0..{_MAX_LOOPS - 1}, got {index}")
    with _loops_lock:
        lt = _loops.get(index)
        if lt is None:
            lt = _loops[index] = _LoopThread(index)
    return lt.loop


def spawn_task(coro: Coroutine[Any, Any, T], *, name: str | None = None) -> "asyncio.Task[T]":
    """Start `coro` as an asyncio Task, from a coroutine or from plain code, and return the Task.

    With a running loop on this thread the task goes on it (`loop.create_task`). Without one (plain code
    that Erlang called) it goes on the interpreter's background ErlangEventLoop, which the submission
    wakes at once; the Task belongs to that loop's thread: cancel it with
    `task.get_loop().call_soon_threadsafe(task.cancel)`.
    """
    if not asyncio.iscoroutine(coro):
        raise TypeError(f"spawn_task() needs a coroutine, got {type(coro).__name__}")
    running = asyncio._get_running_loop()
    if running is not None:
        return running.create_task(coro, name=name)
    loop = background_loop(0)
    made: list[asyncio.Task[T]] = []
    done = threading.Event()

    def create() -> None:
        try:
            made.append(loop.create_task(coro, name=name))
        finally:
            done.set()

    loop.call_soon_threadsafe(create)
    # The loop thread runs `create` at its next iteration; a loop blocked by a callback delays it.
    if not done.wait(30.0) or not made:
        coro.close()
        raise RuntimeError("the background event loop did not take the task within 30 s")
    return made[0]


async def async_call(name: str, /, *args: Any) -> Any:
    """`await erlang.async_call('name', *args)`: call a registered Erlang function without blocking the loop.

    The blocking `erlang.call` runs on the loop's default executor (a bounded thread pool: asyncio's
    `min(32, cpus + 4)` threads), so other tasks go on meanwhile; the result resolves the future. An
    error in the Erlang function raises `erlang.ErlangError` (a RuntimeError). A plain `erlang.call`
    in a coroutine blocks the whole loop until Erlang answers.
    """
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, lambda: _erlang.call(name, *args))


