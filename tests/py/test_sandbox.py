# The audit-hook sandbox (pylib/erlang/_sandbox.py) outside the port.
#
# An audit hook cannot be removed, so every check that installs it runs in a fresh interpreter (a child
# process started before the hook exists there); the module is loaded from its file, without `_erlang`.

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from erlang import _sandbox

SANDBOX_PY = Path(__file__).resolve().parents[2] / "pylib" / "erlang" / "_sandbox.py"

TAIL = "fork()/exec() would corrupt the Erlang runtime.\nUse Erlang ports (open_port/2) for subprocess management."


def run_child(body: str) -> dict:
    """Runs `body` in a new interpreter with the sandbox module loaded as `sb`; returns its JSON output."""
    script = textwrap.dedent(
        f"""
        import importlib.util, json, os, subprocess, sys, asyncio
        spec = importlib.util.spec_from_file_location("sb", {str(SANDBOX_PY)!r})
        sb = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sb)
        out = {{}}
        def attempt(name, fn):
            try:
                fn()
                out[name] = "ran"
            except RuntimeError as e:
                out[name] = str(e)
        """
    ) + textwrap.dedent(body) + "\nprint(json.dumps(out))\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_message_is_the_documented_one() -> None:
    assert _sandbox.blocked_message("subprocess.Popen") == (
        "subprocess.Popen is blocked in Erlang VM context.\n" + TAIL
    )
    assert _sandbox.blocked_message("os.fork") == "os.fork is blocked in Erlang VM context.\n" + TAIL


def test_not_sandboxed_until_installed() -> None:
    # This (pytest) interpreter never installs it.
    assert _sandbox.is_sandboxed() is False


def test_blocked_operations_and_their_messages() -> None:
    out = run_child(
        """
        out["before"] = sb.is_sandboxed()
        sb.install()
        sb.install()  # idempotent
        out["after"] = sb.is_sandboxed()
        sb.BLOCKED_EVENTS = frozenset()  # rebinding the global does not open the hook
        attempt("subprocess.run", lambda: subprocess.run(["true"]))
        attempt("subprocess.call", lambda: subprocess.call(["true"]))
        attempt("subprocess.Popen", lambda: subprocess.Popen(["true"]))
        attempt("os.popen", lambda: os.popen("true"))
        attempt("os.fork", os.fork)
        attempt("os.forkpty", os.forkpty)
        attempt("os.system", lambda: os.system("true"))
        attempt("os.execv", lambda: os.execv("/bin/true", ["true"]))
        attempt("os.spawnv", lambda: os.spawnv(os.P_WAIT, "/bin/true", ["true"]))
        attempt("os.posix_spawn", lambda: os.posix_spawn("/bin/true", ["true"], os.environ))
        attempt("os.posix_spawnp", lambda: os.posix_spawnp("true", ["true"], os.environ))
        async def child():
            await asyncio.create_subprocess_exec("true")
        attempt("asyncio.create_subprocess_exec", lambda: asyncio.run(child()))
        import multiprocessing.util
        attempt("spawnv_passfds", lambda: multiprocessing.util.spawnv_passfds(sys.executable, [sys.executable, "-c", ""], []))
        attempt("open", lambda: open(os.devnull).close())
        """
    )
    assert out.pop("before") is False
    assert out.pop("after") is True
    assert out.pop("open") == "ran"
    popen = "subprocess.Popen is blocked in Erlang VM context.\n" + TAIL
    expected = {
        "subprocess.run": popen,
        "subprocess.call": popen,
        "subprocess.Popen": popen,
        "os.popen": popen,
        "asyncio.create_subprocess_exec": popen,
        "os.fork": "os.fork is blocked in Erlang VM context.\n" + TAIL,
        "os.forkpty": "os.forkpty is blocked in Erlang VM context.\n" + TAIL,
        "os.system": "os.system is blocked in Erlang VM context.\n" + TAIL,
        "os.execv": "os.exec is blocked in Erlang VM context.\n" + TAIL,
        # On POSIX os.spawn* is Python code around os.fork, which is what the hook sees first.
        "os.spawnv": "os.fork is blocked in Erlang VM context.\n" + TAIL,
        "os.posix_spawn": "os.posix_spawn is blocked in Erlang VM context.\n" + TAIL,
        "os.posix_spawnp": "os.posix_spawn is blocked in Erlang VM context.\n" + TAIL,
        # multiprocessing's spawn and forkserver start methods: no audit event of their own.
        "spawnv_passfds": "_posixsubprocess.fork_exec is blocked in Erlang VM context.\n" + TAIL,
    }
    assert out == expected


def test_without_the_hook_subprocess_runs() -> None:
    out = run_child(
        """
        attempt("subprocess.run", lambda: subprocess.run(["true"], check=True))
        out["sandboxed"] = sb.is_sandboxed()
        """
    )
    assert out == {"subprocess.run": "ran", "sandboxed": False}


def test_doc_import_path() -> None:
    from _erlang_impl._sandbox import is_sandboxed

    assert is_sandboxed is _sandbox.is_sandboxed
