# The shared state API: each function is one builtin callback with the right name and arguments.

import pytest

import erlang
from conftest import FakePort


def test_set_get_delete_keys(fake_erlang: FakePort) -> None:
    assert erlang.state_set("my_key", {"data": [1, 2, 3]}) is None
    assert erlang.state_get("my_key") == {"data": [1, 2, 3]}
    assert erlang.state_keys() == ["my_key"]
    assert erlang.state_delete("my_key") is None
    assert erlang.state_get("my_key") is None
    assert erlang.state_keys() == []
    assert fake_erlang.calls == [
        ("_state_set", ("my_key", {"data": [1, 2, 3]})),
        ("_state_get", ("my_key",)),
        ("_state_keys", ()),
        ("_state_delete", ("my_key",)),
        ("_state_get", ("my_key",)),
        ("_state_keys", ()),
    ]


def test_get_tells_a_stored_none_from_a_missing_key(fake_erlang: FakePort) -> None:
    erlang.state_set("nothing", None)
    assert erlang.state_get("nothing") is None
    assert erlang.state_get("missing") is None
    assert "nothing" in fake_erlang.state


def test_get_reads_values_stored_by_erlang(fake_erlang: FakePort) -> None:
    fake_erlang.state["config"] = {"api_key": "secret"}
    assert erlang.state_get("config")["api_key"] == "secret"


@pytest.mark.parametrize("reply", ["not_found", ("error", "x"), ("ok",), ["ok", 1, 2], 0])
def test_get_rejects_a_reply_outside_the_contract(
    fake_erlang: FakePort, reply: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_erlang.state.clear()
    monkeypatch.setattr(fake_erlang, "_state_get", lambda key: reply)
    with pytest.raises(erlang.ErlangError, match="_state_get"):
        erlang.state_get("k")


def test_counters(fake_erlang: FakePort) -> None:
    assert erlang.state_incr("requests") == 1
    assert erlang.state_incr("requests", 10) == 11
    assert erlang.state_decr("requests") == 10
    assert erlang.state_decr("requests", 5) == 5
    assert fake_erlang.calls == [
        ("_state_incr", ("requests", 1)),
        ("_state_incr", ("requests", 10)),
        ("_state_decr", ("requests", 1)),
        ("_state_decr", ("requests", 5)),
    ]


def test_keys_returns_a_list(fake_erlang: FakePort, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fake_erlang, "_state_keys", lambda: ("a", "b"))
    keys = erlang.state_keys()
    assert keys == ["a", "b"] and isinstance(keys, list)


def test_erlang_side_errors_propagate(fake_erlang: FakePort, monkeypatch: pytest.MonkeyPatch) -> None:
    def badarg(key: str, n: int) -> int:
        raise erlang.ErlangError("badarg: not a counter")

    monkeypatch.setattr(fake_erlang, "_state_incr", badarg)
    with pytest.raises(erlang.ErlangError, match="badarg"):
        erlang.state_incr("config")
