# SharedDict: dict-like semantics on top of the `_sd_*` builtin callbacks.

import pytest

import erlang
from conftest import FakePort, Term


@pytest.fixture
def sd(fake_erlang: FakePort) -> erlang.SharedDict:
    return erlang.SharedDict(fake_erlang.new_shared_dict())


def test_set_get_contains(sd: erlang.SharedDict, fake_erlang: FakePort) -> None:
    sd["k"] = {"v": 1}
    assert sd["k"] == {"v": 1}
    assert "k" in sd
    assert "other" not in sd
    assert sd.get("k") == {"v": 1}
    assert fake_erlang.calls[0] == ("_sd_set", (sd.handle, "k", {"v": 1}))
    assert fake_erlang.calls[1] == ("_sd_get", (sd.handle, "k"))


def test_missing_key_raises_key_error(sd: erlang.SharedDict) -> None:
    with pytest.raises(KeyError) as info:
        sd["missing"]
    assert info.value.args == ("missing",)


def test_stored_none_is_a_present_key(sd: erlang.SharedDict) -> None:
    sd["none"] = None
    assert sd["none"] is None
    assert "none" in sd
    assert sd.get("none", "default") is None


def test_get_default(sd: erlang.SharedDict) -> None:
    assert sd.get("missing") is None
    assert sd.get("missing", 42) == 42


def test_delete(sd: erlang.SharedDict, fake_erlang: FakePort) -> None:
    sd["k"] = 1
    del sd["k"]
    assert "k" not in sd
    with pytest.raises(KeyError) as info:
        del sd["k"]
    assert info.value.args == ("k",)
    assert ("_sd_del", (sd.handle, "k")) in fake_erlang.calls


def test_keys_iter_len(sd: erlang.SharedDict) -> None:
    assert sd.keys() == [] and len(sd) == 0
    sd["a"] = 1
    sd["b"] = 2
    assert sorted(sd.keys()) == ["a", "b"]
    assert isinstance(sd.keys(), list)
    assert sorted(sd) == ["a", "b"]
    assert len(sd) == 2


def test_values_written_by_erlang_are_visible(sd: erlang.SharedDict, fake_erlang: FakePort) -> None:
    fake_erlang.dicts[sd.handle]["computed"] = 42
    assert sd["computed"] == 42


def test_destroy_invalidates_every_reference(fake_erlang: FakePort) -> None:
    handle = fake_erlang.new_shared_dict()
    first, second = erlang.SharedDict(handle), erlang.SharedDict(handle)
    first["k"] = 1
    assert second["k"] == 1
    first.destroy()
    assert ("_sd_destroy", (handle,)) in fake_erlang.calls
    first.destroy()  # idempotent on the Erlang side
    with pytest.raises(erlang.ErlangError):
        second["k"]
    with pytest.raises(erlang.ErlangError):
        second["k"] = 2


def test_identity_follows_the_handle(fake_erlang: FakePort) -> None:
    a, b = fake_erlang.new_shared_dict(), fake_erlang.new_shared_dict()
    assert erlang.SharedDict(a) == erlang.SharedDict(a)
    assert erlang.SharedDict(a) != erlang.SharedDict(b)
    assert len({erlang.SharedDict(a), erlang.SharedDict(a)}) == 1
    assert repr(erlang.SharedDict(Term(9))) == "SharedDict(Term(ident=9))"


def test_malformed_reply_is_an_error(
    sd: erlang.SharedDict, fake_erlang: FakePort, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fake_erlang, "_sd_get", lambda handle, key: "undefined")
    with pytest.raises(erlang.ErlangError, match="_sd_get"):
        sd["k"]
