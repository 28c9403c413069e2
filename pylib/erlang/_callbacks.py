# Calling Erlang from Python by name.
#
# Scope: `ErlangFunction`, the callable that `erlang.<name>` / `from erlang import <name>` give for a
# function registered on the Erlang side, and `whereis`, a lookup served by the owner's builtin callback.
# Both go through `_erlang.call` (a `callback` frame, PROTOCOL.md §3.3).

from typing import Any, final

from _erlang import Pid, call


@final
class ErlangFunction:
    """The Erlang function registered under `name` (`py:register_function/2,3`), as a Python callable.

    Calling it is `erlang.call(name, *args)`: it blocks until the Erlang function returns and raises
    `erlang.ErlangError` when that function raised or nothing is registered under `name`. The object holds
    only the name, so it stays valid when the function is registered or replaced later.
    """

    __slots__ = ("name",)

    name: str

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args: Any) -> Any:
        return call(self.name, *args)

    def __repr__(self) -> str:
        return f"<erlang function {self.name!r}>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ErlangFunction):
            return NotImplemented
        return self.name == other.name

    def __hash__(self) -> int:
        return hash((ErlangFunction, self.name))


def whereis(name: str) -> Pid | None:
    """The pid registered under `name` on the local node, or None (Erlang's `whereis/1`).

    Raises TypeError when `name` is not a str (checked here: the Erlang side would only say badarg).
    """
    if not isinstance(name, str):
        raise TypeError(f"whereis() argument must be str, not {type(name).__name__}")
    pid: Pid | None = call("_whereis", name)
    return pid
