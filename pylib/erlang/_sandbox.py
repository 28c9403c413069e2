# The audit-hook sandbox: blocks fork/exec/subprocess in a port that was started with it.
#
# Scope: `install()` (once per interpreter, at start-up, when the owner asks for it: PROTOCOL.md §3.15)
# and `is_sandboxed()`. The reference docs' module path `_erlang_impl._sandbox` re-exports both.
#
# Why it is optional here: the reference implementation runs Python inside the BEAM, where a fork copies
# the VM with one thread and corrupts it. erlang_python_port is an OS process of its own, and a child it
# forks closes the protocol pipes at once (README "fork"), so subprocess and os.fork are safe; the sandbox
# is kept for operators who want the documented behaviour (no child processes from Python).
#
# Mechanism: a PEP 578 audit hook (`sys.addaudithook`). It cannot be removed once installed, and it sees
# the audit event before the operation runs. It is not a security boundary (no audit hook is: ctypes or a
# C extension can call fork(2) directly); it stops ordinary Python code from starting processes.

import sys
import threading
from typing import Any

# The audit events of the documented operations (os.fork, os.forkpty, os.system, os.exec*, os.spawn*,
# os.posix_spawn*, subprocess.Popen and what wraps it: subprocess.run/call/check_output, os.popen,
# asyncio.create_subprocess_*, multiprocessing's fork start method); the spawn and forkserver start
# methods go through _posixsubprocess.fork_exec, blocked below.
BLOCKED_EVENTS = frozenset(
    {
        "os.fork",
        "os.forkpty",
        "os.system",
        "os.exec",
        "os.spawn",
        "os.posix_spawn",
        "subprocess.Popen",
    }
)

_lock = threading.Lock()
_installed = False


def blocked_message(event: str) -> str:
    """The documented three-line message for a blocked audit event (reference docs, Security)."""
    return (
        f"{event} is blocked in Erlang VM context.\n"
        "fork()/exec() would corrupt the Erlang runtime.\n"
        "Use Erlang ports (open_port/2) for subprocess management."
    )


def _make_hook() -> Any:
    # The blocked set is bound in the closure, so rebinding the module global later changes nothing.
    blocked = BLOCKED_EVENTS
    message = blocked_message

    def _erlang_python_sandbox(event: str, args: tuple[Any, ...]) -> None:
        if event in blocked:
            raise RuntimeError(message(event))

    return _erlang_python_sandbox


# `_posixsubprocess.fork_exec` starts a child without an audit event of its own: subprocess.Popen raises
# its event first, but multiprocessing's spawn and forkserver start methods (multiprocessing.util.
# spawnv_passfds) call it directly. Both look it up on the module at each call, so replacing the
# module's attribute stops them too.
FORK_EXEC = "_posixsubprocess.fork_exec"


def _block_fork_exec() -> None:
    try:
        import _posixsubprocess
    except ImportError:  # not POSIX: nothing to block
        return
    message = blocked_message

    def fork_exec(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(message(FORK_EXEC))

    _posixsubprocess.fork_exec = fork_exec  # type: ignore[attr-defined]


def install() -> None:
    """Installs the sandbox's audit hook in this interpreter (idempotent; it cannot be removed)."""
    global _installed
    with _lock:
        if _installed:
            return
        sys.addaudithook(_make_hook())
        _block_fork_exec()
        _installed = True


def is_sandboxed() -> bool:
    """True when this interpreter runs with the sandbox (fork, exec and subprocess blocked)."""
    return _installed
