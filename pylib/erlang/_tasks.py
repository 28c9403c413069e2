# The task service behind py_event_loop / py_event_loop_pool / py:async_call (issue 9).
#
# Scope: what the Erlang side's task API asks of the port. `submit` runs on the caller's context
# thread, in the caller's environment (its `globals()`: what `py:exec` defined there is found for
# module '__main__'); it calls the function. A plain result is answered at once (the eval's reply).
# A coroutine goes to the interpreter's background ErlangEventLoop number `index` (_loop.py), where
# it runs as an asyncio Task; its outcome goes to the loop's Erlang worker process, which turns it into
# `{async_result, Ref, {ok, R} | {error, E}}` for the caller. With a task id (`y` > 0) the outcome is
# the task's own final `result` frame, which the Erlang side routes by id, raw, to the worker (nothing
# waits, nothing in the router decodes it); without one (a caller bound to an explicit context) it is
# an `erlang.send` to the worker, batched per loop iteration. `cancel` and `cancel_owner` cancel tasks
# (the caller's timeout, the caller's death): the coroutine gets asyncio.CancelledError and the caller
# gets nothing (a task id still gets its final frame, tagged "dropped", which the worker ignores).
#
# Bounds: at most `_limit` tasks in flight per loop (a submit past it raises RuntimeError); the outbox
# of a loop holds the outcomes of one loop iteration, so at most the tasks in flight.

import asyncio
import importlib
import threading
import traceback
from collections.abc import Coroutine
from typing import Any

import _erlang

from ._loop import background_loop

_limit = 100_000


class _LoopTasks:
    """The tasks of one background loop. Touched only on that loop's thread (call_soon_threadsafe)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, index: int) -> None:
        self.loop = loop
        self.index = index
        self.tasks: dict[Any, tuple[Any, asyncio.Task[Any]]] = {}  # ref -> (owner, task)
        self.outbox: list[tuple[Any, Any, str, Any]] = []
        self.count = 0  # in flight, incl. submitted but not started (guarded by _lock)


_loops: dict[int, _LoopTasks] = {}
_where: dict[Any, _LoopTasks] = {}  # ref -> its loop, for the tasks an owner waits for
_lock = threading.Lock()  # guards _loops, _where and every _LoopTasks.count: submitters on several threads


def _tasks_of(index: int) -> _LoopTasks:
    with _lock:
        lt = _loops.get(index)
        if lt is None:
            lt = _loops[index] = _LoopTasks(background_loop(index), index)
        return lt


def _resolve(env: dict[str, Any], module: str, function: str) -> Any:
    if module == "__main__":
        if function in env:
            return env[function]
        module_obj = importlib.import_module("__main__")
    else:
        module_obj = importlib.import_module(module)
    try:
        return getattr(module_obj, function)
    except AttributeError:
        raise AttributeError(f"module {module!r} has no attribute {function!r}") from None


def submit(env: dict[str, Any], index: int, worker: Any, owner: Any, ref: Any, module: str, function: str,
           args: list[Any], kwargs: dict[str, Any], task_id: int = 0) -> Any:
    """Start Module.Function(*args, **kwargs) as a task of loop `index`; `("done", R)` or `"pending"`.

    A function that returns a plain value is done here (asyncio short-circuits non-coroutines); an
    exception (a missing module or function included) ends the eval with it. A coroutine runs on the
    loop; `owner` None (spawn_task) means nobody wants the outcome.
    """
    result = _resolve(env, module, function)(*args, **kwargs)
    if not asyncio.iscoroutine(result) and not hasattr(result, "__await__"):
        return ("done", result)
    lt = _tasks_of(index)
    with _lock:
        if lt.count >= _limit:
            if asyncio.iscoroutine(result):
                result.close()
            raise RuntimeError(f"too many tasks in flight on event loop {index} (limit {_limit})")
        lt.count += 1
        if owner is not None:
            _where[ref] = lt
    lt.loop.call_soon_threadsafe(_start, lt, worker, owner, ref, result, task_id)
    return "pending"


def _start(lt: _LoopTasks, worker: Any, owner: Any, ref: Any, awaitable: Coroutine[Any, Any, Any],
           task_id: int) -> None:
    task = asyncio.ensure_future(awaitable, loop=lt.loop)
    if owner is not None:
        lt.tasks[ref] = (owner, task)
    task.add_done_callback(lambda t: _done(lt, worker, owner, ref, t, task_id))


def _done(
    lt: _LoopTasks, worker: Any, owner: Any, ref: Any, task: "asyncio.Task[Any]", task_id: int = 0
) -> None:
    with _lock:
        lt.count -= 1
        if owner is not None:
            _where.pop(ref, None)
    entry = lt.tasks.pop(ref, None)
    if not task.cancelled():
        task.exception()  # retrieved here: a dropped error is not logged as "never retrieved"
    if owner is None:
        return
    if entry is None:
        # Cancelled from Erlang (timeout, owner death): the caller no longer waits. A task id's entry
        # on the Erlang side still ends with this final frame.
        if task_id:
            _erlang._task_done(task_id, (owner, ref, "dropped", None))
        return
    if task.cancelled():
        outcome: tuple[str, Any] = ("error", ("CancelledError", "task was cancelled", ""))
    elif task.exception() is not None:
        exc = task.exception()
        assert exc is not None
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        outcome = ("error", (type(exc).__name__, str(exc), tb))
    else:
        outcome = ("ok", task.result())
    if task_id:
        if not _erlang._task_done(task_id, (owner, ref, outcome[0], outcome[1])):
            detail = f"task result of type {type(outcome[1]).__name__!r} has no Erlang form (or is too large)"
            _erlang._task_done(task_id, (owner, ref, "error", ("TypeError", detail, "")))
        return
    if not lt.outbox:
        lt.loop.call_soon(_flush, lt, worker)
    lt.outbox.append((owner, ref, outcome[0], outcome[1]))


def _flush(lt: _LoopTasks, worker: Any) -> None:
    # One send per loop iteration for every outcome of that iteration (one worker per loop, so one
    # destination). An outcome with no Erlang form fails the batch: then each goes alone, and the one
    # that cannot be converted becomes a TypeError for its caller. A worker that is gone (restarted:
    # ProcessError) loses the batch; its callers' awaits end at their deadlines.
    batch, lt.outbox = lt.outbox, []
    try:
        _erlang.send(worker, batch)
        return
    except TypeError:
        pass
    except _erlang.ProcessError:
        return
    for owner, ref, tag, value in batch:
        try:
            _erlang.send(worker, [(owner, ref, tag, value)])
        except TypeError as exc:
            _erlang.send(worker, [(owner, ref, "error", ("TypeError", str(exc), ""))])
        except _erlang.ProcessError:
            return


def cancel(ref: Any) -> bool:
    """Cancel the task `ref` (its caller gave up): True if it was still in flight."""
    with _lock:
        lt = _where.get(ref)
    if lt is None:
        return False
    lt.loop.call_soon_threadsafe(_cancel_ref, lt, ref)
    return True


def _cancel_ref(lt: _LoopTasks, ref: Any) -> None:
    entry = lt.tasks.pop(ref, None)
    if entry is not None:
        entry[1].cancel()


def cancel_owner(index: int, owner: Any) -> bool:
    """Cancel every task of `owner` (a pid that died) on loop `index`."""
    with _lock:
        lt = _loops.get(index)
    if lt is None:
        return False
    lt.loop.call_soon_threadsafe(_cancel_owner, lt, owner)
    return True


def _cancel_owner(lt: _LoopTasks, owner: Any) -> None:
    for ref in [r for r, (o, _) in lt.tasks.items() if o == owner]:
        lt.tasks.pop(ref)[1].cancel()


def stats() -> dict[str, int]:
    """Loops started in this interpreter and tasks in flight on them (for tests and get_stats)."""
    with _lock:
        tasks = sum(lt.count for lt in _loops.values())
        return {"loops": len(_loops), "tasks": tasks, "awaited": len(_where)}


def _set_limit(n: int) -> int:
    """For tests: set the per-loop bound, return the old one."""
    global _limit
    old, _limit = _limit, n
    return old
