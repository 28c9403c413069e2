# pytest set-up for the pure-Python `erlang` package (pylib/erlang).
#
# `_erlang` is built into erlang_python_port and exists nowhere else, so this file installs a fake one in
# sys.modules before anything imports `erlang`, and puts pylib/ first on sys.path. The fake records what
# the package asks of the port (`calls`, `sends`, `writes`, `sleeps`) and serves the owner's builtin
# callbacks (`_state_*`, `_sd_*`, `_whereis`, `_has_function`) from plain dicts, the way the Erlang side answers them:
# lookups reply `("ok", Value)` or `None`. Tests register Erlang functions in `functions`.
# The `fake_erlang` fixture hands out the fake's state, reset before every test.

import sys
import threading
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pytest

PYLIB = Path(__file__).resolve().parents[2] / "pylib"


class ErlangError(RuntimeError):
    pass


class ProcessError(Exception):
    pass


class CancelledError(BaseException):
    pass


@dataclass(frozen=True)
class Pid:
    ident: int


@dataclass(frozen=True)
class Ref:
    ident: int


@dataclass(frozen=True)
class Term:
    ident: int


@dataclass
class FakePort:
    """What the fake `_erlang` saw and what the fake Erlang side holds."""

    calls: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    sends: list[tuple[Any, Any]] = field(default_factory=list)
    writes: list[tuple[int, str]] = field(default_factory=list)
    sleeps: list[float] = field(default_factory=list)
    functions: dict[str, Callable[..., Any]] = field(default_factory=dict)
    registered: dict[str, Pid] = field(default_factory=dict)
    dead: set[Any] = field(default_factory=set)
    state: dict[Any, Any] = field(default_factory=dict)
    dicts: dict[Term, dict[Any, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        fresh = FakePort()
        for f in fields(self):
            setattr(self, f.name, getattr(fresh, f.name))

    def new_shared_dict(self) -> Term:
        handle = Term(len(self.dicts) + 1)
        self.dicts[handle] = {}
        return handle

    def output(self, stream: int) -> str:
        return "".join(text for s, text in self.writes if s == stream)

    # The owner's builtin callbacks, named as on the wire.

    def _whereis(self, name: str) -> Pid | None:
        return self.registered.get(name)

    def _has_function(self, name: str) -> bool:
        return name in self.functions

    def _state_set(self, key: Any, value: Any) -> bool:
        self.state[key] = value
        return True

    def _state_get(self, key: Any) -> tuple[str, Any] | None:
        return ("ok", self.state[key]) if key in self.state else None

    def _state_delete(self, key: Any) -> bool:
        self.state.pop(key, None)
        return True

    def _state_keys(self) -> list[Any]:
        return list(self.state)

    def _state_incr(self, key: Any, n: int) -> int:
        self.state[key] = self.state.get(key, 0) + n
        return int(self.state[key])

    def _state_decr(self, key: Any, n: int) -> int:
        self.state[key] = self.state.get(key, 0) - n
        return int(self.state[key])

    def _sd(self, handle: Term) -> dict[Any, Any]:
        if handle not in self.dicts:
            raise ErlangError(f"shared dict destroyed: {handle!r}")
        return self.dicts[handle]

    def _sd_get(self, handle: Term, key: Any) -> tuple[str, Any] | None:
        d = self._sd(handle)
        return ("ok", d[key]) if key in d else None

    def _sd_set(self, handle: Term, key: Any, value: Any) -> bool:
        self._sd(handle)[key] = value
        return True

    def _sd_del(self, handle: Term, key: Any) -> bool:
        d = self._sd(handle)
        return d.pop(key, _ABSENT) is not _ABSENT

    def _sd_keys(self, handle: Term) -> list[Any]:
        return list(self._sd(handle))

    def _sd_destroy(self, handle: Term) -> bool:
        self.dicts.pop(handle, None)
        return True


_ABSENT = object()
BUILTINS = frozenset(name for name in vars(FakePort) if name.startswith(("_state_", "_sd_", "_whereis", "_has_function")))

port = FakePort()


def _call(name: str, /, *args: Any) -> Any:
    with port.lock:
        port.calls.append((name, args))
    if name in BUILTINS:
        return getattr(port, name)(*args)
    function = port.functions.get(name)
    if function is None:
        raise ErlangError(f"function not registered: {name}")
    return function(*args)


def _send(dest: Any, msg: Any, /) -> None:
    if dest in port.dead or (isinstance(dest, str) and dest not in port.registered):
        raise ProcessError(f"no process: {dest!r}")
    port.sends.append((dest, msg))


def _sleep(seconds: float, /) -> None:
    port.sleeps.append(seconds)


def _write(stream: int, text: str, /) -> None:
    assert stream in (1, 2) and isinstance(text, str)
    with port.lock:
        port.writes.append((stream, text))


def _make_fake_module() -> types.ModuleType:
    module = types.ModuleType("_erlang", "Fake of erlang_python_port's built-in module (tests/py).")
    for name, value in {
        "call": _call,
        "send": _send,
        "sleep": _sleep,
        "_write": _write,
        "_env_count": lambda: 0,
        "_current_request": lambda: 0,
        "Pid": Pid,
        "Ref": Ref,
        "Term": Term,
        "ErlangError": ErlangError,
        "ProcessError": ProcessError,
        "CancelledError": CancelledError,
    }.items():
        setattr(module, name, value)
    return module


assert "erlang" not in sys.modules, "erlang was imported before the fake _erlang was installed"
sys.modules["_erlang"] = _make_fake_module()
sys.path.insert(0, str(PYLIB))


@pytest.fixture(autouse=True)
def fake_erlang() -> Iterator[FakePort]:
    port.reset()
    yield port
