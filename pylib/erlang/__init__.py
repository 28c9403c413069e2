# The `erlang` package: the Python face of erlang_python.
#
# Scope: Python code running inside erlang_python_port imports this package to call registered Erlang
# functions, send messages, use the shared state and SharedDicts, and detect the execution mode. The
# port-level primitives (`call`, `send`, `sleep`, `Pid`, `Term`, the exceptions) come from the built-in
# extension module `_erlang`, which only exists inside the port; the rest is pure Python built on them.
# The code lives in private modules; this file re-exports the public names (h11 layout).
#
# The port imports this package at start-up, then calls `_install_std_streams()` and, for `eval` of a
# block of statements, `_eval.compile_block(code)`. Both are private: they are not in `__all__`.

import importlib
import pkgutil
from typing import Any

from _erlang import (
    CancelledError,
    ErlangError,
    Pid,
    ProcessError,
    Ref,
    Term,
    call,
    send,
)

from . import _eval as _eval
from ._callbacks import ErlangFunction, whereis
from ._io import _install_std_streams as _install_std_streams
from ._logging import ErlangHandler, setup_logging  # opsa: logging (§3.14)
# asyncio (issue 9): the async-aware sleep here; the loop's names (_LAZY) on first use.
from ._sleep import sleep
from ._mode import ExecutionMode, detect_mode
from ._schedule import ScheduleMarker, consume_time_slice, schedule, schedule_inline, schedule_py
from ._shared_dict import SharedDict
from ._tracing import Span, trace  # opsa: tracing (§3.14)

# chan: byte channels and buffers (channels: erlang.channel.Channel)
from .channel import ByteChannel, ByteChannelClosed, PyBuffer
from ._state import (
    state_decr,
    state_delete,
    state_get,
    state_incr,
    state_keys,
    state_set,
)

__all__ = [
    "ByteChannel",
    "ByteChannelClosed",
    "PyBuffer",
    "CancelledError",
    "ErlangError",
    "ErlangEventLoop",
    "ErlangEventLoopPolicy",
    "ErlangFunction",
    "ExecutionMode",
    "Pid",
    "ProcessError",
    "Ref",
    "ScheduleMarker",
    "SharedDict",
    "Term",
    "async_call",
    "call",
    "consume_time_slice",
    "detect_mode",
    "schedule",
    "schedule_inline",
    "schedule_py",
    "install",
    "new_event_loop",
    "run",
    "send",
    "sleep",
    "spawn_task",
    "state_decr",
    "state_delete",
    "state_get",
    "state_incr",
    "state_keys",
    "state_set",
    "whereis",
    # opsa: logging and tracing
    "ErlangHandler",
    "Span",
    "setup_logging",
    "trace",
]

# asyncio names from `_loop.py`, imported on first use (importing asyncio costs ~30 ms at port start).
_LAZY = frozenset(
    {"ErlangEventLoop", "ErlangEventLoopPolicy", "async_call", "install", "new_event_loop", "run", "spawn_task"}
)

# Public submodules (none yet; e.g. a future `erlang.channel`). `__getattr__` imports these instead of
# turning their names into Erlang functions, so `from erlang import channel` keeps working.
_SUBMODULES = frozenset(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def __getattr__(name: str) -> Any:
    """Module attribute fallback (PEP 562): `erlang.my_func` and `from erlang import my_func`.

    A public name that is not defined here stands for the Erlang function registered under that name
    (`py:register_function(my_func, ...)`): the registry is asked (one builtin callback), so
    `hasattr(erlang, "anything")` is False and `erlang.not_registered` raises AttributeError. Nothing is
    cached: the function may be unregistered later, and then calling the wrapper raises `ErlangError`.

    Names starting with `_` raise AttributeError, so the import system, pickle, copy, inspect and
    `hasattr(erlang, "__path__")`-style probes see an ordinary module.

    Returns Any rather than `ErlangFunction` so that typed code can call `from erlang import my_func`.
    """
    if name.startswith("_"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name in _LAZY:
        from . import _loop

        value = getattr(_loop, name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if not call("_has_function", name):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r} (no Erlang function registered as {name!r})")
    return ErlangFunction(name)

# Venvs and the sandbox (opsc): `erlang.is_sandboxed()`, and at start-up the sandbox and the venv the
# owner started this port with (PROTOCOL.md §3.15), before any request runs.
from ._sandbox import is_sandboxed  # noqa: E402
from ._venv import apply_startup_env as _apply_startup_env  # noqa: E402

__all__ += ["is_sandboxed"]  # noqa: PLE0605
_apply_startup_env()
