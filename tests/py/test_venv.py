# Venv activation in a port (pylib/erlang/_venv.py), outside the port: on hand-made venv directories (no
# network, no pip). Every test restores sys.path, sys.prefix and the environment it changed.

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from erlang import _venv

VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


@pytest.fixture(autouse=True)
def restore() -> Iterator[None]:
    path, prefix, exec_prefix = list(sys.path), sys.prefix, sys.exec_prefix
    environ = {k: os.environ.get(k) for k in ("VIRTUAL_ENV", "PATH")}
    yield
    _venv.deactivate()
    sys.path[:] = path
    sys.prefix, sys.exec_prefix = prefix, exec_prefix
    for k, v in environ.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    for name in [m for m in sys.modules if m.startswith(("opsc_fake_pkg", "opsc_pth_pkg"))]:
        del sys.modules[name]


def make_venv(root: Path, version: str = VERSION) -> Path:
    root.mkdir(parents=True)
    (root / "pyvenv.cfg").write_text(f"home = /usr/bin\ninclude-system-site-packages = false\nversion = {version}.1\n")
    sp = Path(_venv.site_packages(str(root))[0])
    sp.mkdir(parents=True)
    (sp / "opsc_fake_pkg.py").write_text("VALUE = 42\n")
    # A .pth naming another directory, as an editable install writes.
    extra = root / "src"
    extra.mkdir()
    (extra / "opsc_pth_pkg.py").write_text("VALUE = 7\n")
    (sp / "editable.pth").write_text(str(extra) + "\n")
    return root


def test_check_errors(tmp_path: Path) -> None:
    with pytest.raises(_venv.VenvError) as e:
        _venv.check(str(tmp_path))
    assert (e.value.reason, e.value.detail) == ("not_a_venv", (str(tmp_path),))
    other = tmp_path / "other"
    other.mkdir()
    (other / "pyvenv.cfg").write_text("version = 2.7.18\n")
    with pytest.raises(_venv.VenvError) as e:
        _venv.check(str(other))
    assert (e.value.reason, e.value.detail) == ("python_version_mismatch", ("2.7.18", VERSION))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "pyvenv.cfg").write_text(f"version_info = {VERSION}.0\n")  # uv writes version_info
    with pytest.raises(_venv.VenvError) as e:
        _venv.check(str(empty))
    assert e.value.reason == "no_site_packages"
    assert _venv.result(_venv.check, str(tmp_path)) == ("error", "not_a_venv", [str(tmp_path)])


def test_activate_puts_site_packages_first_and_deactivate_restores(tmp_path: Path) -> None:
    venv = make_venv(tmp_path / "v")
    sys.path.insert(0, "/pylib-stand-in")
    sys.path.insert(1, "/registered")
    before = list(sys.path)
    info = _venv.activate(str(venv), ["/registered"])
    sp = _venv.site_packages(str(venv))[0]
    assert info == {
        "active": True,
        "venv_path": str(venv),
        "site_packages": sp,
        "python": VERSION,
        "sys_prefix": str(venv),
    }
    # pylib, the registered paths, then the venv (site-packages and what its .pth named).
    assert sys.path[:4] == ["/pylib-stand-in", "/registered", sp, str(venv / "src")]
    assert sys.prefix == sys.exec_prefix == str(venv)
    assert os.environ["VIRTUAL_ENV"] == str(venv)
    assert os.environ["PATH"].startswith(str(venv / "bin") + os.pathsep)
    import opsc_fake_pkg
    import opsc_pth_pkg

    assert (opsc_fake_pkg.VALUE, opsc_pth_pkg.VALUE) == (42, 7)
    assert _venv.info() == info
    # Activating it again changes nothing.
    assert _venv.activate(str(venv), ["/registered"]) == info
    assert sys.path.count(sp) == 1
    assert _venv.deactivate() is True
    assert sys.path == before
    assert _venv.info() is None
    assert _venv.deactivate() is False


def test_activating_another_replaces_the_first(tmp_path: Path) -> None:
    first = make_venv(tmp_path / "a")
    (tmp_path / "b").mkdir()
    second = tmp_path / "b"
    (second / "pyvenv.cfg").write_text(f"version = {VERSION}.2\n")
    Path(_venv.site_packages(str(second))[0]).mkdir(parents=True)
    _venv.activate(str(first))
    _venv.activate(str(second))
    assert _venv.info()["venv_path"] == str(second)
    assert _venv.site_packages(str(first))[0] not in sys.path
    assert str(first / "src") not in sys.path


def test_startup_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    venv = make_venv(tmp_path / "v")
    monkeypatch.setenv(_venv.ENV_VENV, str(venv))
    _venv.apply_startup_env()
    assert _venv.info()["venv_path"] == str(venv)
    # Kept, for interpreters created later in the process.
    assert os.environ[_venv.ENV_VENV] == str(venv)


def test_interpreter_is_executable() -> None:
    assert os.access(_venv.interpreter(), os.X_OK)
