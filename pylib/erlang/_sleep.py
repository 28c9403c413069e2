# `erlang.sleep`, async-aware (issue 9), without importing asyncio.
#
# Scope: one function. It lives apart from `_loop.py` so that importing the `erlang` package (which
# the port does at start-up) does not import asyncio: the loop is imported on first use.

import math
import sys
from typing import Any

import _erlang


def _check_seconds(seconds: float) -> float:
    value = float(seconds)
    if not math.isfinite(value):
        raise ValueError("sleep length must be a finite number")
    if value < 0:
        raise ValueError("sleep length must be non-negative")
    return value


def sleep(seconds: float) -> Any:
    """Sleep for `seconds`, in a coroutine or in plain code.

    On a thread whose event loop is running (inside a coroutine, a task, a loop callback) it returns an
    awaitable: `await erlang.sleep(0.1)` yields to the loop (it is `asyncio.sleep`). Elsewhere it blocks
    the calling thread without holding the context: the context keeps serving nested requests, and
    the request's cancel (its deadline) ends the sleep with `erlang.CancelledError` (the port's sleep).
    So a plain function that a running loop calls directly must use `time.sleep` to block, or be a
    coroutine: `erlang.sleep` there only makes the awaitable.
    """
    asyncio = sys.modules.get("asyncio")  # no asyncio imported: no loop can be running
    if asyncio is not None and asyncio._get_running_loop() is not None:
        return asyncio.sleep(_check_seconds(seconds))
    return _erlang.sleep(seconds)
