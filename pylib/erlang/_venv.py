# Virtual environments in this port: py:activate_venv/1, py:deactivate_venv/0, py:venv_info/0, and the
# venv a port is started with (a pool with a venv of its own, or the default pool after activate_venv).
#
# Scope: checking that a directory is a venv this interpreter can use, putting its site-packages on
# sys.path (with .pth processing, so editable installs work), and undoing that. Creating venvs and
# installing packages is not done here: the Erlang side runs `python -m venv` and pip/uv as OS processes
# (erl/src/py_venv.erl), outside the port.
#
# sys.path is shared by every context of the port, so activation is per port (per OS process); the
# Erlang side applies it to every port of the default pool, and a pool started with a venv has ports of
# its own. The venv's entries go to the front of sys.path, after the port's pylib entry and the paths
# registered with py_import (which the caller passes as `keep_first`): venv packages take priority over
# system ones, and nothing shadows the `erlang` package.
#
# Start-up: the owner names the venv in ERLANG_PYTHON_VENV (PROTOCOL.md §3.15); `apply_startup_env()`
# activates it while the `erlang` package is imported, before the port says hello. A venv that cannot be
# used there fails the start (the traceback reaches the Erlang side as a start failure).

import importlib
import os
import site
import sys
import sysconfig
import threading
from typing import Any

ENV_VENV = "ERLANG_PYTHON_VENV"
ENV_SANDBOX = "ERLANG_PYTHON_SANDBOX"

# Guards _active: activation may be asked from two contexts of the port at once.
_lock = threading.Lock()
# The active venv: path, site-packages, the sys.path entries activation added, what it replaced.
_active: dict[str, Any] | None = None


class VenvError(ValueError):
    """A directory that cannot be activated; `reason` is one of the Erlang side's error atoms."""

    def __init__(self, reason: str, *detail: Any) -> None:
        super().__init__(f"{reason}: {', '.join(map(str, detail))}")
        self.reason = reason
        self.detail = detail


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def site_packages(venv: str) -> list[str]:
    """The site-packages directories this interpreter uses in venv `venv` (purelib, then platlib)."""
    scheme = "venv" if "venv" in sysconfig.get_scheme_names() else "posix_prefix"
    paths: list[str] = []
    for key in ("purelib", "platlib"):
        path = sysconfig.get_path(key, scheme=scheme, vars={"base": venv, "platbase": venv})
        if path not in paths:
            paths.append(path)
    return paths


def _venv_version(cfg: str) -> str | None:
    """The `version` (or `version_info`, written by uv) of a pyvenv.cfg, or None."""
    found: dict[str, str] = {}
    with open(cfg, encoding="utf-8") as f:
        for line in f:
            key, sep, value = line.partition("=")
            if sep:
                found[key.strip().lower()] = value.strip()
    return found.get("version") or found.get("version_info")


def check(venv: str) -> tuple[str, list[str]]:
    """`(AbsolutePath, SitePackages)` of a usable venv; raises VenvError otherwise."""
    path = os.path.abspath(venv)
    cfg = os.path.join(path, "pyvenv.cfg")
    if not os.path.isfile(cfg):
        raise VenvError("not_a_venv", path)
    version = _venv_version(cfg)
    ours = python_version()
    if version is not None and ".".join(version.split(".")[:2]) != ours:
        raise VenvError("python_version_mismatch", version, ours)
    found = [p for p in site_packages(path) if os.path.isdir(p)]
    if not found:
        raise VenvError("no_site_packages", path, ours)
    return path, found


def _front(entries: list[str], keep_first: list[str]) -> None:
    """Moves `entries` to the front of sys.path, after sys.path[0] (pylib) and the `keep_first` paths
    that follow it."""
    rest = [p for p in sys.path if p not in entries]
    n = 1 if rest else 0
    while n < len(rest) and rest[n] in keep_first:
        n += 1
    sys.path[:] = rest[:n] + entries + rest[n:]


def activate(venv: str, keep_first: list[str] | None = None) -> dict[str, Any]:
    """Activates `venv` in this port (replacing another active one); returns `info()`."""
    global _active
    path, found = check(venv)
    with _lock:
        if _active is not None and _active["venv_path"] == path:
            return _info_locked()
        if _active is not None:
            _deactivate_locked()
        before = set(sys.path)
        for sp in found:
            site.addsitedir(sp)  # appends sp and what its .pth files name; runs their import lines
        added = [p for p in sys.path if p not in before]
        _front(added, list(keep_first or []))
        bindir = os.path.join(path, "bin")
        _active = {
            "venv_path": path,
            "site_packages": found,
            "added": added,
            "prefix": (sys.prefix, sys.exec_prefix),
            "environ": {k: os.environ.get(k) for k in ("VIRTUAL_ENV", "PATH")},
        }
        # What a venv's own interpreter would show, and what its activate script sets for children.
        sys.prefix = sys.exec_prefix = path
        os.environ["VIRTUAL_ENV"] = path
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
        importlib.invalidate_caches()
        return _info_locked()


def _deactivate_locked() -> None:
    global _active
    if _active is None:
        return
    added = set(_active["added"])
    sys.path[:] = [p for p in sys.path if p not in added]
    sys.prefix, sys.exec_prefix = _active["prefix"]
    for key, value in _active["environ"].items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _active = None
    importlib.invalidate_caches()


def deactivate() -> bool:
    """Removes the active venv's entries from sys.path and restores sys.prefix and the environment.

    Modules already imported from the venv stay imported (Python cannot unload them). True if a venv
    was active."""
    with _lock:
        was = _active is not None
        _deactivate_locked()
        return was


def _info_locked() -> dict[str, Any]:
    if _active is None:
        return {"active": False}
    return {
        "active": True,
        "venv_path": _active["venv_path"],
        "site_packages": _active["site_packages"][0],
        "python": python_version(),
        "sys_prefix": sys.prefix,
    }


def info() -> dict[str, Any] | None:
    """`None`, or the active venv: active, venv_path, site_packages (purelib), python, sys_prefix."""
    with _lock:
        return None if _active is None else _info_locked()


def result(fun: Any, *args: Any) -> Any:
    """`("ok", Value)` or `("error", Reason, Detail)` for the Erlang side (VenvError as data)."""
    try:
        return ("ok", fun(*args))
    except VenvError as e:
        return ("error", e.reason, [str(d) for d in e.detail])


def interpreter() -> str:
    """The python executable of the interpreter this port embeds (to create venvs it can use)."""
    bindir = sysconfig.get_config_var("BINDIR") or os.path.join(sys.base_prefix, "bin")
    version = sysconfig.get_config_var("VERSION") or python_version()
    for name in (f"python{version}{getattr(sys, 'abiflags', '')}", f"python{version}", "python3"):
        candidate = os.path.join(bindir, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return os.path.join(bindir, "python3")


def apply_startup_env() -> None:
    """Start-up: the sandbox and the venv the owner asked for in the port's environment (§3.15).

    The variables stay in the environment: an interpreter created later in this process (a
    sub-interpreter imports `erlang` too) must find them. Child processes inherit them, which is harmless:
    only this package reads them, and it runs only inside the port."""
    sandbox = os.environ.get(ENV_SANDBOX, "")
    venv = os.environ.get(ENV_VENV, "")
    if sandbox == "1":
        from . import _sandbox

        _sandbox.install()
    if venv:
        activate(venv)
