# The shared state API: a global key-value store kept by the Erlang side (ETS), visible to every context.
#
# Scope: `state_set`, `state_get`, `state_delete`, `state_keys`, `state_incr`, `state_decr`. Each one is
# one `_erlang.call` of a builtin callback that the port owner serves itself (no registration needed):
#
#   _state_set(Key, Value)  -> ok                 _state_keys()        -> [Key]
#   _state_get(Key)         -> {ok, Value} | none _state_incr(Key, N)  -> NewValue
#   _state_delete(Key)      -> ok                 _state_decr(Key, N)  -> NewValue
#
# `_state_get` wraps the value so a stored None is told apart from a missing key on the Erlang side; by the
# term mapping (PROTOCOL.md §2) Python sees `("ok", value)` or `None`. The counters are atomic there
# (`ets:update_counter`), so several threads and contexts may count on one key.

from typing import Any

from _erlang import call

from ._util import unwrap_lookup


def state_set(key: str, value: Any) -> None:
    """Store `value` under `key`, replacing any previous value."""
    call("_state_set", key, value)


def state_get(key: str) -> Any:
    """The value stored under `key`, or None when there is none."""
    _found, value = unwrap_lookup(call("_state_get", key), "_state_get")
    return value


def state_delete(key: str) -> None:
    """Remove `key`; removing a missing key is not an error."""
    call("_state_delete", key)


def state_keys() -> list[Any]:
    """All keys currently stored, in no particular order."""
    return list(call("_state_keys"))


def state_incr(key: str, n: int = 1) -> int:
    """Atomically add `n` to the counter under `key` (a missing key counts from 0); the new value."""
    value: int = call("_state_incr", key, n)
    return value


def state_decr(key: str, n: int = 1) -> int:
    """Atomically subtract `n` from the counter under `key` (a missing key counts from 0); the new value."""
    value: int = call("_state_decr", key, n)
    return value
