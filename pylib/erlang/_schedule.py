# Cooperative scheduling: markers a handler returns to end its Python frame and continue elsewhere.
#
# Scope: `schedule`, `schedule_py`, `schedule_inline`, the `ScheduleMarker` they return, and
# `consume_time_slice`. The port looks at a request's result: when it is a ScheduleMarker (exactly this
# type), the request's Python frame has ended and the context is free; the request continues with the
# marker's call (PROTOCOL.md §3.17):
#   - `schedule(name, *args)`: the waiting Erlang caller runs the registered Erlang function `name` and
#     that function's return value is the request's result;
#   - `schedule_py(module, func, args, kwargs)`: the Erlang caller sends `module.func(*args, **kwargs)`
#     to the same context as a new request (other requests may run on the context in between);
#   - `schedule_inline(module, func, args, kwargs)`: the port queues the continuation behind the requests
#     already waiting for the context, without a round trip to Erlang (faster; the arguments stay Python
#     objects, never converted), resolving `module` `'__main__'` in the caller's environment.
# A marker that is not returned does nothing; markers are not nested values (a marker inside a list is
# just an object that cannot be converted).

from typing import Any, final

import _erlang


@final
class ScheduleMarker:
    """What `erlang.schedule*` return: return it from the handler to continue with its call.

    `kind` is ``"erlang"`` (an Erlang callback), ``"py"`` (a Python call through Erlang) or ``"inline"``
    (a Python call queued in the port). The fields are read by the port; the object is immutable.
    """

    __slots__ = ("kind", "name", "args", "kwargs")

    kind: str
    name: Any  # the callback name (str), or the (module, func) pair of a Python continuation
    args: tuple[Any, ...] | list[Any]
    kwargs: dict[str, Any]

    def __init__(self, kind: str, name: Any, args: Any, kwargs: dict[str, Any]) -> None:
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "args", args)
        object.__setattr__(self, "kwargs", kwargs)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("ScheduleMarker is immutable")

    def __repr__(self) -> str:
        return f"<ScheduleMarker {self.kind} {self.name!r}>"


def _name(value: Any, what: str) -> str:
    if isinstance(value, bytes):
        value = value.decode()
    if not isinstance(value, str) or not value:
        raise TypeError(f"{what} must be a non-empty str, not {type(value).__name__}")
    return value


def _call_parts(module: Any, func: Any, args: Any, kwargs: Any) -> tuple[tuple[str, str], list[Any], dict[str, Any]]:
    m = _name(module, "module")
    f = _name(func, "func")
    a = [] if args is None else args
    if not isinstance(a, (list, tuple)):
        raise TypeError(f"args must be a list or tuple, not {type(a).__name__}")
    k = {} if kwargs is None else kwargs
    if not isinstance(k, dict) or not all(isinstance(key, str) for key in k):
        raise TypeError("kwargs must be a dict with str keys")
    return (m, f), list(a), dict(k)


def schedule(callback_name: Any = None, *args: Any) -> ScheduleMarker | None:
    """Ends the handler's Python frame; the Erlang function `callback_name` gives the result.

    Return the marker from the handler: ``return erlang.schedule('compute', x)``; the caller gets what
    the Erlang function registered as ``compute`` returns for ``[x]``. Called with no name (the form the
    migration guide shows, "yield"), it releases the GIL for a moment so that other threads run, and
    returns None: in a port there is no scheduler to free.
    """
    if callback_name is None:
        if args:
            raise TypeError("schedule() arguments need a callback name")
        _erlang.sleep(0)
        return None
    return ScheduleMarker("erlang", _name(callback_name, "callback_name"), args, {})


def schedule_py(module: Any, func: Any, args: Any = None, kwargs: Any = None) -> ScheduleMarker:
    """Ends the handler's Python frame; ``module.func(*args, **kwargs)`` gives the result.

    The continuation is a new request on the same context, sent by the waiting Erlang caller, so other
    requests can use the context in between and the caller's timeout still covers the whole chain.
    Its arguments cross to Erlang and back, so they must be convertible.
    """
    name, a, k = _call_parts(module, func, args, kwargs)
    return ScheduleMarker("py", name, a, k)


def schedule_inline(module: Any, func: Any, args: Any = None, kwargs: Any = None) -> ScheduleMarker:
    """Like `schedule_py`, but continued inside the port, without a round trip to Erlang.

    The continuation is queued on the context behind the requests already waiting for it (so they get
    their turn), and its arguments are passed as the Python objects they are. ``'__main__'`` resolves in
    the caller's environment, as for the request itself.
    """
    name, a, k = _call_parts(module, func, args, kwargs)
    return ScheduleMarker("inline", name, a, k)


# consume_time_slice: the share of a time slice used so far by the request this thread serves, in
# percent, as enif_consume_timeslice counts it: each call adds `percent`; at 100 the slice is exhausted
# (True) and the count starts again. Per thread, reset when the thread serves another request.
_slice = __import__("threading").local()


def consume_time_slice(percent: Any) -> bool:
    """Reports `percent` (1-100) of a time slice used; True when the slice is used up (yield now).

    The count belongs to the request being served (a new request starts at 0) and starts again at 0
    each time it returns True, so a handler that reschedules itself then starts its continuation with
    a fresh slice.
    """
    if isinstance(percent, bool) or not isinstance(percent, int):
        raise TypeError(f"percent must be an int, not {type(percent).__name__}")
    if not 1 <= percent <= 100:
        raise ValueError(f"percent must be between 1 and 100, not {percent}")
    request = _erlang._current_request()
    if getattr(_slice, "request", None) != request:
        _slice.request = request
        _slice.used = 0
    _slice.used += percent
    if _slice.used >= 100:
        _slice.used = 0
        return True
    return False
