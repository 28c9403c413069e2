# The task service behind py_event_loop (pylib/erlang/_tasks.py), against the fake `_erlang`: submit's
# plain and pending results, the batched outcomes sent to the loop's worker, errors, cancel and
# cancel_owner sending nothing, the per-loop bound, and an outcome with no Erlang form.

import asyncio
import threading
import time
from typing import Any

import pytest

from conftest import FakePort, Pid, Ref
from erlang import _tasks

WORKER = Pid(900)
OWNER = Pid(1)


def _wait_sends(port: FakePort, n: int, timeout: float = 5.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = [item for dest, batch in port.sends if dest == WORKER for item in batch]
        if len(items) >= n:
            return items
        time.sleep(0.005)
    raise AssertionError(f"expected {n} outcomes, got {port.sends!r}")


def _idle(index: int) -> None:
    deadline = time.monotonic() + 5.0
    while _tasks.stats()["tasks"] and time.monotonic() < deadline:
        time.sleep(0.005)
    assert _tasks.stats()["tasks"] == 0


def test_plain_function_is_done_at_once() -> None:
    env: dict[str, Any] = {}
    assert _tasks.submit(env, 0, WORKER, OWNER, Ref(1), "math", "sqrt", [16.0], {}) == ("done", 4.0)


def test_main_looks_in_the_environment_first(fake_erlang: FakePort) -> None:
    async def twice(x: int, *, k: int = 1) -> int:
        await asyncio.sleep(0)
        return x * 2 * k

    env = {"twice": twice}
    assert _tasks.submit(env, 1, WORKER, OWNER, Ref(2), "__main__", "twice", [21], {"k": 1}) == "pending"
    assert _wait_sends(fake_erlang, 1) == [(OWNER, Ref(2), "ok", 42)]
    _idle(1)


def test_missing_module_and_function_raise() -> None:
    with pytest.raises(ModuleNotFoundError):
        _tasks.submit({}, 0, WORKER, OWNER, Ref(3), "no_such_module_xyz", "f", [], {})
    with pytest.raises(AttributeError, match="no_such_function"):
        _tasks.submit({}, 0, WORKER, OWNER, Ref(3), "math", "no_such_function", [], {})
    with pytest.raises(AttributeError, match="nowhere"):
        _tasks.submit({}, 0, WORKER, OWNER, Ref(3), "__main__", "nowhere", [], {})


def test_coroutine_error_is_sent_as_an_error(fake_erlang: FakePort) -> None:
    async def boom() -> None:
        raise ValueError("bad input")

    assert _tasks.submit({"boom": boom}, 2, WORKER, OWNER, Ref(4), "__main__", "boom", [], {}) == "pending"
    [(owner, ref, tag, (cls, msg, tb))] = _wait_sends(fake_erlang, 1)
    assert (owner, ref, tag, cls, msg) == (OWNER, Ref(4), "error", "ValueError", "bad input")
    assert "ValueError" in tb
    _idle(2)


def test_outcomes_of_one_iteration_go_in_one_send(fake_erlang: FakePort) -> None:
    async def value(i: int) -> int:
        await asyncio.sleep(0.02)
        return i

    env = {"value": value}
    for i in range(50):
        assert _tasks.submit(env, 3, WORKER, OWNER, Ref(100 + i), "__main__", "value", [i], {}) == "pending"
    items = _wait_sends(fake_erlang, 50)
    assert sorted(v for _, _, _, v in items) == list(range(50))
    assert len(fake_erlang.sends) < 50  # batched
    _idle(3)


def test_cancel_cancels_and_sends_nothing(fake_erlang: FakePort) -> None:
    seen = threading.Event()

    async def hold() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.set()
            raise

    env = {"hold": hold}
    _tasks.submit(env, 4, WORKER, OWNER, Ref(5), "__main__", "hold", [], {})
    _tasks.submit(env, 4, WORKER, Pid(2), Ref(6), "__main__", "hold", [], {})
    _tasks.submit(env, 4, WORKER, Pid(2), Ref(7), "__main__", "hold", [], {})
    time.sleep(0.05)
    assert _tasks.cancel(Ref(5))
    assert seen.wait(5.0)
    assert _tasks.cancel_owner(4, Pid(2))
    _idle(4)
    time.sleep(0.05)
    assert fake_erlang.sends == []
    assert not _tasks.cancel(Ref(5))  # done: nothing to cancel
    assert _tasks.stats()["awaited"] == 0


def test_a_worker_that_is_gone_loses_the_batch(fake_erlang: FakePort) -> None:
    async def one() -> int:
        return 1

    fake_erlang.dead.add(Pid(901))
    _tasks.submit({"one": one}, 8, Pid(901), OWNER, Ref(13), "__main__", "one", [], {})
    _idle(8)
    _tasks.submit({"one": one}, 8, WORKER, OWNER, Ref(14), "__main__", "one", [], {})
    assert _wait_sends(fake_erlang, 1) == [(OWNER, Ref(14), "ok", 1)]  # the loop goes on
    _idle(8)


def test_fire_and_forget_sends_nothing(fake_erlang: FakePort) -> None:
    async def fail() -> None:
        raise RuntimeError("dropped")

    assert _tasks.submit({"fail": fail}, 5, WORKER, None, None, "__main__", "fail", [], {}) == "pending"
    _idle(5)
    time.sleep(0.05)
    assert fake_erlang.sends == []


def test_bound_on_tasks_in_flight(fake_erlang: FakePort) -> None:
    async def hold() -> None:
        await asyncio.sleep(30)

    env = {"hold": hold}
    old = _tasks._set_limit(2)
    try:
        _tasks.submit(env, 6, WORKER, OWNER, Ref(8), "__main__", "hold", [], {})
        _tasks.submit(env, 6, WORKER, OWNER, Ref(9), "__main__", "hold", [], {})
        with pytest.raises(RuntimeError, match="too many tasks"):
            _tasks.submit(env, 6, WORKER, OWNER, Ref(10), "__main__", "hold", [], {})
    finally:
        _tasks._set_limit(old)
        _tasks.cancel_owner(6, OWNER)
    _idle(6)


def test_unconvertible_outcome_becomes_a_type_error(
    fake_erlang: FakePort, monkeypatch: pytest.MonkeyPatch
) -> None:
    import _erlang

    def picky_send(dest: Any, msg: Any) -> None:
        if any(isinstance(item[3], set) for item in msg):
            raise TypeError("cannot convert Python object of type 'set' to an Erlang term")
        fake_erlang.sends.append((dest, msg))

    monkeypatch.setattr(_erlang, "send", picky_send)

    async def make_set() -> set[int]:
        return {1}

    async def fine() -> int:
        return 1

    env = {"make_set": make_set, "fine": fine}
    _tasks.submit(env, 7, WORKER, OWNER, Ref(11), "__main__", "make_set", [], {})
    _tasks.submit(env, 7, WORKER, OWNER, Ref(12), "__main__", "fine", [], {})
    items = _wait_sends(fake_erlang, 2)
    by_ref = {ref: (tag, value) for _, ref, tag, value in items}
    assert by_ref[Ref(12)] == ("ok", 1)
    tag, (cls, msg, _) = by_ref[Ref(11)]
    assert (tag, cls) == ("error", "TypeError") and "set" in msg
    _idle(7)


def test_task_id_outcomes_are_final_frames(fake_erlang: FakePort, monkeypatch: pytest.MonkeyPatch) -> None:
    # With a task id the outcome is the task's own final frame (_erlang._task_done), never a send; an
    # outcome the port cannot encode (False) becomes a TypeError outcome; an Erlang-side cancel still
    # ends the id with a "dropped" frame.
    import _erlang

    frames: list[tuple[int, Any]] = []
    lock = threading.Lock()

    def task_done(task_id: int, outcome: Any) -> bool:
        if isinstance(outcome[3], set):
            return False
        with lock:
            frames.append((task_id, outcome))
        return True

    monkeypatch.setattr(_erlang, "_task_done", task_done, raising=False)

    async def value(x: Any) -> Any:
        await asyncio.sleep(0)
        return x

    async def hold() -> None:
        await asyncio.sleep(30)

    env = {"value": value, "hold": hold}
    _tasks.submit(env, 9, WORKER, OWNER, Ref(20), "__main__", "value", [5], {}, 101)
    _tasks.submit(env, 9, WORKER, OWNER, Ref(21), "__main__", "value", [{1}], {}, 102)
    _tasks.submit(env, 9, WORKER, OWNER, Ref(22), "__main__", "hold", [], {}, 103)
    time.sleep(0.05)
    _tasks.cancel(Ref(22))
    _idle(9)
    by_id = dict(frames)
    assert by_id[101] == (OWNER, Ref(20), "ok", 5)
    owner, ref, tag, (cls, msg, _) = by_id[102]
    assert (owner, ref, tag, cls) == (OWNER, Ref(21), "error", "TypeError") and "set" in msg
    assert by_id[103] == (OWNER, Ref(22), "dropped", None)
    assert fake_erlang.sends == []
