# Calling Erlang by name: erlang.call/send/sleep re-exports, module __getattr__ (PEP 562), whereis.

import copy
import importlib
import pickle
import sys
from pathlib import Path

import pytest

import _erlang
import erlang
from conftest import FakePort, Pid


def test_primitives_are_the_port_module_objects() -> None:
    for name in ("call", "send", "Pid", "Term", "ErlangError", "ProcessError", "CancelledError"):
        assert getattr(erlang, name) is getattr(_erlang, name)
    assert issubclass(erlang.ErlangError, RuntimeError)
    assert not issubclass(erlang.CancelledError, Exception)


def test_all_lists_only_defined_public_names() -> None:
    for name in erlang.__all__:
        assert not name.startswith("_")
        assert name in vars(erlang) or name in erlang._LAZY, name
    namespace: dict[str, object] = {}
    exec("from erlang import *", namespace)
    assert set(erlang.__all__) <= set(namespace)


def test_attribute_calls_the_registered_function(fake_erlang: FakePort) -> None:
    fake_erlang.functions["add"] = lambda x, y: x + y
    assert erlang.add(10, 20) == 30
    assert fake_erlang.calls == [("_has_function", ("add",)), ("add", (10, 20))]


def test_from_import_gives_a_callable(fake_erlang: FakePort) -> None:
    fake_erlang.functions["my_func"] = lambda *args: ("got", args)
    from erlang import my_func

    assert my_func() == ("got", ())
    assert my_func(1, "two") == ("got", (1, "two"))
    assert repr(my_func) == "<erlang function 'my_func'>"
    assert my_func == erlang.ErlangFunction("my_func")
    assert hash(my_func) == hash(erlang.my_func)


def test_unregistered_names_are_no_attributes(fake_erlang: FakePort) -> None:
    assert not hasattr(erlang, "anything")
    with pytest.raises(AttributeError, match="no Erlang function registered as 'anything'"):
        erlang.anything
    with pytest.raises(ImportError):
        from erlang import anything  # noqa: F401
    fake_erlang.functions["anything"] = lambda: 1
    assert hasattr(erlang, "anything")


def test_nothing_is_cached_so_later_changes_are_seen(fake_erlang: FakePort) -> None:
    fake_erlang.functions["later"] = lambda x: x * 2
    from erlang import later

    assert later(21) == 42
    fake_erlang.functions["later"] = lambda x: x * 3
    assert erlang.later(2) == 6
    assert "later" not in vars(erlang)
    del fake_erlang.functions["later"]
    with pytest.raises(erlang.ErlangError):
        later(1)


def test_erlang_errors_propagate(fake_erlang: FakePort) -> None:
    def boom() -> None:
        raise erlang.ErlangError("badarith")

    fake_erlang.functions["boom"] = boom
    with pytest.raises(RuntimeError, match="badarith"):
        erlang.boom()


@pytest.mark.parametrize("name", ["__path__x", "__wrapped__", "__loader_state__", "_private", "_", "__foo__"])
def test_private_and_dunder_names_raise_attribute_error(name: str) -> None:
    with pytest.raises(AttributeError, match=repr(name)):
        getattr(erlang, name)
    assert not hasattr(erlang, name)


def test_module_probes_behave_like_an_ordinary_module(fake_erlang: FakePort) -> None:
    assert hasattr(erlang, "__path__")
    assert hasattr(erlang, "__spec__")
    assert not hasattr(erlang, "__wrapped__")  # inspect.unwrap, doctest
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("erlang.no_such_submodule")
    with pytest.raises(TypeError):  # modules do not pickle; the error must not come from __getattr__
        pickle.dumps(erlang)
    assert copy.copy(erlang.ErlangFunction("f")).name == "f"
    assert fake_erlang.calls == []


def test_public_submodules_are_imported_not_called(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_erlang: FakePort
) -> None:
    # Stand-in for a future public submodule such as erlang.channel.
    (tmp_path / "chan.py").write_text("KIND = 'submodule'\n")
    monkeypatch.setattr(erlang, "__path__", [*erlang.__path__, str(tmp_path)])
    monkeypatch.setattr(erlang, "_SUBMODULES", frozenset({"chan"}))
    try:
        from erlang import chan

        assert chan.KIND == "submodule"
        assert fake_erlang.calls == []
    finally:
        sys.modules.pop("erlang.chan", None)
        vars(erlang).pop("chan", None)


def test_whereis(fake_erlang: FakePort) -> None:
    fake_erlang.registered["logger"] = Pid(7)
    assert erlang.whereis("logger") == Pid(7)
    assert erlang.whereis("nobody") is None
    assert fake_erlang.calls == [("_whereis", ("logger",)), ("_whereis", ("nobody",))]


@pytest.mark.parametrize("name", [123, None, b"logger", ("a",)])
def test_whereis_refuses_non_str(name: object, fake_erlang: FakePort) -> None:
    with pytest.raises(TypeError, match="must be str"):
        erlang.whereis(name)  # type: ignore[arg-type]
    assert fake_erlang.calls == []


def test_send_and_sleep_reach_the_port(fake_erlang: FakePort) -> None:
    fake_erlang.registered["srv"] = Pid(1)
    erlang.send(Pid(3), ("notification", {"a": 1}))
    erlang.send("srv", "hi")
    erlang.send(("srv", "node@host"), "remote")
    erlang.sleep(0.25)
    assert fake_erlang.sends == [
        (Pid(3), ("notification", {"a": 1})),
        ("srv", "hi"),
        (("srv", "node@host"), "remote"),
    ]
    assert fake_erlang.sleeps == [0.25]
    fake_erlang.dead.add(Pid(4))
    with pytest.raises(erlang.ProcessError):
        erlang.send(Pid(4), "late")


def test_port_entry_points_are_reachable_as_attributes() -> None:
    # What the port calls at start-up and for `eval` blocks, looked up as attributes of `erlang`.
    assert callable(erlang._install_std_streams)
    assert callable(erlang._eval.compile_block)
    assert "_install_std_streams" not in erlang.__all__
