# Helpers shared by the modules that talk to the owner's builtin callbacks.
#
# Scope: decoding the `{ok, Value} | none` replies of the lookup builtins (`_state_get`, `_sd_get`).

from typing import Any

from _erlang import ErlangError


def unwrap_lookup(reply: Any, builtin: str) -> tuple[bool, Any]:
    """`(True, Value)` for an `{ok, Value}` reply, `(False, None)` for `none`.

    The owner wraps a found value so that a stored None differs from a missing key; the term mapping
    (PROTOCOL.md §2) makes those `("ok", value)` and `None` in Python. Any other reply means the two sides
    disagree on the builtin's contract: that raises `ErlangError`, it is not taken as "missing".
    """
    match reply:
        case ("ok", value):
            return True, value
        case None:
            return False, None
        case _:
            raise ErlangError(f"unexpected reply from {builtin}: {reply!r}")
