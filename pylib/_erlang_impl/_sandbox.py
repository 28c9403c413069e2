# The reference docs' import path of the sandbox check: `from _erlang_impl._sandbox import is_sandboxed`.
# The implementation is `erlang._sandbox`.

from erlang._sandbox import BLOCKED_EVENTS, blocked_message, is_sandboxed

__all__ = ["BLOCKED_EVENTS", "blocked_message", "is_sandboxed"]
