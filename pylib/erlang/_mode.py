# Execution mode detection: how the interpreter running this code shares the GIL.
#
# Scope: `ExecutionMode` and `detect_mode()`. The port reports its build in the hello frame
# (PROTOCOL.md §4.1); this is the same fact seen from inside Python, for code that adapts to it.
#
# Strategy: CPython exposes no public "am I a subinterpreter" call before 3.14, so we compare the current
# interpreter's id with the main one's through the private module that every version from 3.11 ships
# (`_interpreters` from 3.13, `_xxsubinterpreters` before). Their ids are `InterpreterID` objects (int-like)
# up to 3.12 and `(id, whence)` tuples from 3.13. If neither module can be used we answer "not a
# subinterpreter", which is right for the port's worker mode.

import enum
import importlib
import sys
from typing import Any


class ExecutionMode(enum.Enum):
    """How Python code runs in this context."""

    FREE_THREADED = "free_threaded"
    """A free-threaded build (3.13t) with the GIL disabled: threads run in parallel."""

    SUBINTERP = "subinterp"
    """A subinterpreter (the port's OWN_GIL contexts): isolated modules, its own GIL."""

    SHARED_GIL = "shared_gil"
    """The main interpreter of a GIL build: every context shares one GIL."""


def detect_mode() -> ExecutionMode:
    """The execution mode of the calling interpreter (free-threaded is checked first)."""
    is_gil_enabled = getattr(sys, "_is_gil_enabled", None)
    if is_gil_enabled is not None and not is_gil_enabled():
        return ExecutionMode.FREE_THREADED
    if _in_subinterpreter():
        return ExecutionMode.SUBINTERP
    return ExecutionMode.SHARED_GIL


def _in_subinterpreter() -> bool:
    for module_name in ("_interpreters", "_xxsubinterpreters"):
        try:
            module = importlib.import_module(module_name)
            return _interpreter_id(module.get_current()) != _interpreter_id(module.get_main())
        except (ImportError, AttributeError, TypeError, ValueError):
            continue
    return False


def _interpreter_id(ident: Any) -> int:
    if isinstance(ident, tuple):
        ident = ident[0]
    return int(ident)


def _current_interp_id() -> int:
    """The calling interpreter's id (0: the main one), for py_context:get_interp_id/1."""
    for module_name in ("_interpreters", "_xxsubinterpreters"):
        try:
            module = importlib.import_module(module_name)
            return _interpreter_id(module.get_current())
        except (ImportError, AttributeError, TypeError, ValueError):
            continue
    return 0
