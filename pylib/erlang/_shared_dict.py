# SharedDict: a dict-like view of a shared dictionary owned by an Erlang process.
#
# Scope: the Python class only. The dictionary itself lives on the Erlang side (`py:shared_dict_new/0`
# creates it and hands Python an opaque handle, an `erlang.Term`); every operation is one builtin callback
# that the port owner serves:
#
#   _sd_get(H, Key)        -> {ok, Value} | none   _sd_keys(H)    -> [Key]
#   _sd_set(H, Key, Value) -> ok                   _sd_destroy(H) -> ok (idempotent)
#   _sd_del(H, Key)        -> true | false (whether the key was there)
#
# After `destroy()` the Erlang side refuses the handle, so any operation raises `erlang.ErlangError`, from
# this object and from every other reference to the same dictionary.

from collections.abc import Iterator
from typing import Any, final

from _erlang import Term, call

from ._util import unwrap_lookup


@final
class SharedDict:
    """A dictionary shared between Erlang processes and Python contexts, reached through `handle`.

    `sd[key]` and `del sd[key]` raise KeyError for a missing key; `get` returns a default instead.
    Values are copied in and out, so changing a value you read does not change the stored one.
    """

    __slots__ = ("_handle",)

    def __init__(self, handle: Term) -> None:
        self._handle = handle

    @property
    def handle(self) -> Term:
        """The Erlang-side handle; pass it back to Erlang to name the same dictionary."""
        return self._handle

    def __getitem__(self, key: str) -> Any:
        found, value = unwrap_lookup(call("_sd_get", self._handle, key), "_sd_get")
        if not found:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        call("_sd_set", self._handle, key, value)

    def __delitem__(self, key: str) -> None:
        if not call("_sd_del", self._handle, key):
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        found, _value = unwrap_lookup(call("_sd_get", self._handle, key), "_sd_get")
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def get(self, key: str, default: Any = None) -> Any:
        """The value under `key`, or `default` when there is none."""
        found, value = unwrap_lookup(call("_sd_get", self._handle, key), "_sd_get")
        return value if found else default

    def keys(self) -> list[str]:
        """A list (a snapshot) of the keys."""
        return list(call("_sd_keys", self._handle))

    def destroy(self) -> None:
        """Free the dictionary on the Erlang side; every reference to it becomes unusable."""
        call("_sd_destroy", self._handle)

    def __repr__(self) -> str:
        return f"SharedDict({self._handle!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SharedDict):
            return NotImplemented
        return self._handle == other._handle

    def __hash__(self) -> int:
        return hash((SharedDict, self._handle))
