# detect_mode: free-threaded build, subinterpreter, or the shared GIL of the main interpreter.

import importlib
import sys
import types
from pathlib import Path

import pytest

import erlang
from erlang import ExecutionMode, detect_mode


def test_values() -> None:
    assert {m.value for m in ExecutionMode} == {"free_threaded", "subinterp", "shared_gil"}


def test_this_interpreter() -> None:
    is_gil_enabled = getattr(sys, "_is_gil_enabled", None)
    expected = (
        ExecutionMode.FREE_THREADED if is_gil_enabled and not is_gil_enabled() else ExecutionMode.SHARED_GIL
    )
    assert detect_mode() is expected


def test_gil_disabled_means_free_threaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, raising=False)
    assert detect_mode() is ExecutionMode.FREE_THREADED


def test_gil_enabled_is_not_free_threaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: True, raising=False)
    assert detect_mode() is not ExecutionMode.FREE_THREADED


def fake_interpreters(current: object, main: object) -> types.ModuleType:
    module = types.ModuleType("_interpreters")
    module.get_current = lambda: current  # type: ignore[attr-defined]
    module.get_main = lambda: main  # type: ignore[attr-defined]
    return module


@pytest.mark.parametrize(
    ("current", "main", "expected"),
    [
        ((3, 1), (0, 1), ExecutionMode.SUBINTERP),  # 3.13+: (id, whence)
        ((0, 1), (0, 1), ExecutionMode.SHARED_GIL),
        (3, 0, ExecutionMode.SUBINTERP),  # up to 3.12: int-like InterpreterID
        (0, 0, ExecutionMode.SHARED_GIL),
    ],
)
def test_subinterpreter_detection(
    monkeypatch: pytest.MonkeyPatch, current: object, main: object, expected: ExecutionMode
) -> None:
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: True, raising=False)
    monkeypatch.setitem(sys.modules, "_interpreters", fake_interpreters(current, main))
    assert detect_mode() is expected


def test_free_threaded_wins_over_subinterpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, raising=False)
    monkeypatch.setitem(sys.modules, "_interpreters", fake_interpreters((3, 1), (0, 1)))
    assert detect_mode() is ExecutionMode.FREE_THREADED


def test_no_interpreters_module_means_main(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(sys, "_is_gil_enabled", raising=False)
    monkeypatch.setitem(sys.modules, "_interpreters", None)  # makes the import fail
    monkeypatch.setitem(sys.modules, "_xxsubinterpreters", None)
    assert detect_mode() is ExecutionMode.SHARED_GIL


def _subinterpreter_module() -> types.ModuleType | None:
    for name in ("_interpreters", "_xxsubinterpreters"):
        try:
            return importlib.import_module(name)
        except ImportError:
            pass
    return None


# CPython's private subinterpreter module (_xxsubinterpreters before 3.13, _interpreters after) is an
# implementation detail a build may lack; without it no subinterpreter can be created to detect from.
# It exists on every interpreter this project supports and tests (3.11, 3.13, 3.13t), so this runs there.
@pytest.mark.skipif(_subinterpreter_module() is None, reason="no subinterpreter support module")
def test_real_subinterpreter(tmp_path: Path) -> None:
    if not hasattr(sys, "_is_gil_enabled") or sys._is_gil_enabled():
        expected = "subinterp"
    else:
        expected = "free_threaded"
    interpreters = _subinterpreter_module()
    assert interpreters is not None
    # _mode.py needs nothing from the package, so load it on its own (the subinterpreter has no _erlang).
    mode_file = Path(erlang.__file__).with_name("_mode.py")
    out = tmp_path / "mode.txt"
    script = (
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('erlang_mode', {str(mode_file)!r})\n"
        "mod = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(mod)\n"
        f"open({str(out)!r}, 'w').write(mod.detect_mode().value)\n"
    )
    interp = interpreters.create()
    try:
        failure = interpreters.run_string(interp, script)  # 3.13+ returns the error instead of raising
        assert failure is None, failure
    finally:
        interpreters.destroy(interp)
    assert out.read_text() == expected
