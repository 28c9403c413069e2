# The task service behind py_event_loop / py_event_loop_pool / py:async_call (issue 9).
#
# Scope: the Python half of the port's native task path (PROTOCOL.md §3.10; the C++ half is
# port/runtime/task_loops.cpp, the `_erlang_loop` module). Erlang sends `task_submit` frames that the
# port's I/O thread queues for background loop `index` (an ErlangEventLoop on its own thread,
# _loop.py); it wakes the loop through an eventfd, once per batch. `_drain` runs on the loop thread:
# it takes the whole queue and, for each submission, resolves Module.Function in the caller's
# environment (what `py:exec` defined there is found for module '__main__'), calls it, and runs a
# coroutine as an asyncio Task. The outcomes of one loop iteration go back together (`_flush`): the
# port writes them as task_result frames, which the Erlang side routes by task reference to the
# caller as `{async_result, Ref, {ok, R} | {error, E}}`.
#
# Cancellation: a cancel (the caller's await timed out) or an owner gone (its environment was
# dropped: the process exited) cancels the tasks: the coroutine gets asyncio.CancelledError. Every
# task still hands back exactly one outcome (the Erlang side drops those nobody waits for), which is
# what releases its place under the port's per-loop bound.
#
# Bounds: the port admits at most `_erlang_loop._set_limit` tasks in flight per loop (100,000 by
# default; past it a submission is answered with RuntimeError without reaching this module); `tasks`
# and `outbox` below hold at most those.

import asyncio
import importlib
import inspect
import sys
import threading
import traceback
from typing import Any

from ._loop import background_loop

_EAGER: dict[str, bool] = {"eager_start": True} if sys.version_info >= (3, 12) else {}

_native: Any = None  # the `_erlang_loop` module (the tests put a fake here)


def _module() -> Any:
    global _native
    if _native is None:
        _native = importlib.import_module("_erlang_loop")
    return _native


class _LoopTasks:
    """The tasks of one background loop. Touched only on that loop's thread (after `start`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, index: int, native: Any) -> None:
        self.loop = loop
        self.index = index
        self.native = native
        self.tasks: dict[bytes, tuple[bytes, asyncio.Task[Any]]] = {}  # ref -> (owner key, task)
        self.outbox: list[tuple[Any, bytes, bool, Any]] = []


_loops: dict[int, _LoopTasks] = {}
_lock = threading.Lock()  # guards _loops: start runs on the port's control thread, stats anywhere


def start(index: int) -> None:
    """Start background loop `index` and attach it to its native queue (the port calls this once)."""
    native = _module()
    with _lock:
        if index in _loops:
            return
        lt = _loops[index] = _LoopTasks(background_loop(index), index, native)
    fd = native.attach(index)
    ready = threading.Event()

    def attach() -> None:
        lt.loop.end_of_iteration = lambda: _flush(lt) if lt.outbox else None  # type: ignore[attr-defined]
        lt.loop.add_reader(fd, _drain, lt)
        ready.set()
        _drain(lt)  # submissions that came before the reader was added

    lt.loop.call_soon_threadsafe(attach)
    if not ready.wait(30.0):
        raise RuntimeError(f"event loop {index} did not attach within 30 s")


def _resolve(env: dict[str, Any] | None, module: str, function: str) -> Any:
    if module == "__main__":
        if env is not None and function in env:
            return env[function]
        module_obj = importlib.import_module("__main__")
    else:
        module_obj = sys.modules.get(module) or importlib.import_module(module)
    try:
        return getattr(module_obj, function)
    except AttributeError:
        raise AttributeError(f"module {module!r} has no attribute {function!r}") from None


def _name(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _drain(lt: _LoopTasks) -> None:
    for item in lt.native.take(lt.index):
        kind = item[0]
        if kind == 0:
            _, ref, owner, env, module, function, args, kwargs = item
            _submit(lt, ref or None, owner, env, _name(module), _name(function), args, kwargs)
        elif kind == 1:
            entry = lt.tasks.pop(item[1], None)
            if entry is not None:
                _cancel(lt, item[1], entry)
        else:
            owner = item[1]
            for ref in [r for r, (o, _) in lt.tasks.items() if o == owner]:
                _cancel(lt, ref, lt.tasks.pop(ref))


def _cancel(lt: _LoopTasks, ref: bytes, entry: tuple[bytes, "asyncio.Task[Any]"]) -> None:
    owner, task = entry
    # A task whose first step has not run (Python < 3.12 starts tasks at the next iteration; the
    # cancel can come in the same batch as the submission) gets the CancelledError thrown in before
    # _run's try: _run hands back nothing, so the outcome that frees its place goes from here.
    if inspect.getcoroutinestate(task.get_coro()) == inspect.CORO_CREATED:
        _outcome(lt, ref, owner, False, ("CancelledError", "task was cancelled"))
    task.cancel()


def _submit(lt: _LoopTasks, ref: bytes | None, owner: bytes, env: dict[str, Any] | None, module: str,
            function: str, args: Any, kwargs: Any) -> None:
    try:
        result = _resolve(env, module, function)(*(args or ()), **(kwargs or {}))
    except BaseException as exc:  # noqa: BLE001 - a missing module or function, a sync function that
        # raised; SystemExit (sys.exit) and KeyboardInterrupt too: raised on, they would end the
        # loop's run_forever and strand every later task on it.
        _outcome(lt, ref, owner, False, (type(exc).__name__, str(exc)))
        return
    if not asyncio.iscoroutine(result) and not hasattr(result, "__await__"):
        _outcome(lt, ref, owner, True, result)
        return
    try:
        # Python 3.12+: the task's first step runs now (eager_start), so a coroutine that finishes
        # without suspending costs no loop iteration; on 3.11 it starts at the next one.
        task = asyncio.Task(_run(lt, ref, owner, result), loop=lt.loop, **_EAGER)
    except Exception as exc:
        _outcome(lt, ref, owner, False, (type(exc).__name__, str(exc)))
        return
    if ref is not None and not task.done():
        lt.tasks[ref] = (owner, task)


async def _run(lt: _LoopTasks, ref: bytes | None, owner: bytes, awaitable: Any) -> None:
    # The outcome is taken inside the task's last step (a done callback would cost one more loop
    # iteration).
    try:
        value = await awaitable
    except asyncio.CancelledError:
        _finish(lt, ref, owner, False, ("CancelledError", "task was cancelled"))
        raise
    except BaseException as exc:  # noqa: BLE001 - every outcome goes back, SystemExit included
        _finish(lt, ref, owner, False, (type(exc).__name__, str(exc)))
        # Not raised on (but GeneratorExit, a close of this coroutine): a Task re-raises SystemExit and
        # KeyboardInterrupt out of the loop, which would end the loop thread with this outcome unsent.
        if isinstance(exc, GeneratorExit):
            raise
    else:
        _finish(lt, ref, owner, True, value)


def _finish(lt: _LoopTasks, ref: bytes | None, owner: bytes, ok: bool, value: Any) -> None:
    if ref is not None:
        lt.tasks.pop(ref, None)
    _outcome(lt, ref, owner, ok, value)


def _outcome(lt: _LoopTasks, ref: bytes | None, owner: bytes, ok: bool, value: Any) -> None:
    # Every outcome of one loop iteration goes out in one `done` call at the iteration's end (the port
    # batches them into task_result frames); a spawn_task's (ref None) only releases its place under
    # the bound.
    lt.outbox.append((ref, owner, ok, None if ref is None else value))


def _flush(lt: _LoopTasks) -> None:
    batch, lt.outbox = lt.outbox, []
    try:
        lt.native.done(lt.index, batch)
    except Exception:  # a bug here must not end the loop thread (it runs inside _run_once)
        traceback.print_exc()


def stats() -> dict[str, int]:
    """Loops started in this interpreter, tasks in flight in the port and tasks awaited on the loops."""
    with _lock:
        loops = list(_loops.values())
    awaited = sum(len(lt.tasks) for lt in loops)
    tasks = _module().in_flight() if loops else 0
    return {"loops": len(loops), "tasks": tasks, "awaited": awaited}


def _set_limit(n: int) -> int:
    """For tests: set the per-loop bound on tasks in flight, return the old one."""
    return int(_module()._set_limit(n))
