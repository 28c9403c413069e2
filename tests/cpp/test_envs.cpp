// Environments and object references (port/runtime/envs.*): keys, the copy of a context's base,
// env_created once per pid, what env_drop and a context's end free; and which queued items a waiting
// context may serve (port/runtime/context.hpp).
#include <doctest/doctest.h>

#include <Python.h>

#include <string>

#include "context.hpp"
#include "envs.hpp"
#include "erlang_types.hpp"

using ep::EnvKind;
using ep::Envs;
using ep::PyRef;

namespace {
// Opaque terms by their first (tag) byte: 88 NEW_PID_EXT, 90 NEWER_REFERENCE_EXT, 89 NEW_PORT_EXT.
PyRef pid(char n) { return ep::make_pid(std::string("\x58\x77\x01x") + n); }
PyRef ref(char n) { return ep::make_term(std::string("\x5a\x00\x01\x77\x01x", 6) + n); }

struct Fixture {
  Envs envs;
  PyRef builtins{PyImport_ImportModule("builtins")};
  PyRef erlang{PyModule_New("erlang")};
  PyRef main{PyUnicode_FromString("__main__")};
  Fixture() { envs.init(builtins.get(), erlang.get(), main.get()); }
  PyRef get(uint64_t ctx, PyObject* env, bool& announce) {
    std::string key;
    EnvKind kind;
    REQUIRE(ep::env_key(env, key, kind));
    return envs.get(ctx, key, kind, announce);
  }
  static std::string key_of(PyObject* env) {
    std::string key;
    EnvKind kind;
    REQUIRE(ep::env_key(env, key, kind));
    return key;
  }
};

PyObject* item(PyObject* dict, const char* name) { return PyDict_GetItemString(dict, name); }
}  // namespace

TEST_CASE("an Env is a pid, a reference or undefined") {
  std::string key;
  EnvKind kind;
  CHECK(ep::env_key(Py_None, key, kind));
  CHECK((kind == EnvKind::Default && key.empty()));
  PyRef p = pid('a');
  CHECK(ep::env_key(p.get(), key, kind));
  CHECK((kind == EnvKind::Pid && key[0] == '\x58'));
  PyRef r = ref('a');
  CHECK(ep::env_key(r.get(), key, kind));
  CHECK((kind == EnvKind::Ref && key[0] == '\x5a'));
  PyRef port(ep::make_term(std::string("\x59\x77\x01x", 4)));
  CHECK_FALSE(ep::env_key(port.get(), key, kind));
  CHECK(PyErr_ExceptionMatches(PyExc_TypeError));
  PyErr_Clear();
  PyRef n(PyLong_FromLong(42));
  CHECK_FALSE(ep::env_key(n.get(), key, kind));
  PyErr_Clear();
}

TEST_CASE("environments are per context; a pid is announced once per port") {
  Fixture f;
  PyRef p = pid('b'), r = ref('b');
  bool announce = false;
  PyRef e1 = f.get(1, p.get(), announce);
  CHECK(announce);
  PyRef again = f.get(1, p.get(), announce);
  CHECK_FALSE(announce);
  CHECK(again.get() == e1.get());
  PyRef e2 = f.get(2, p.get(), announce);
  CHECK_FALSE(announce);
  CHECK(e2.get() != e1.get());
  f.get(1, r.get(), announce);
  CHECK_FALSE(announce);  // references are never announced
  f.get(1, Py_None, announce);
  CHECK_FALSE(announce);
  CHECK(f.envs.env_count() == 3);  // not the default
  CHECK(item(e1.get(), "erlang") == f.erlang.get());
  CHECK(item(e1.get(), "__builtins__") == f.builtins.get());
  f.envs.drop_key(Fixture::key_of(p.get()));
  CHECK(f.envs.env_count() == 1);
  CHECK(PyDict_Size(e1.get()) == 0);  // cleared: cycles through its functions are broken
  f.get(2, p.get(), announce);
  CHECK(announce);  // after env_drop, a new one is announced again
}

TEST_CASE("an environment starts as a copy of its context's base") {
  Fixture f;
  PyRef base = f.envs.fresh();
  PyRef shared(PyList_New(0));
  PyRef zero(PyLong_FromLong(0));
  PyDict_SetItemString(base.get(), "COUNTER", zero.get());
  PyDict_SetItemString(base.get(), "SHARED", shared.get());
  f.envs.set_base(1, PyRef::borrow(base.get()));
  PyRef a = pid('c'), b = ref('c');
  bool announce;
  PyRef ea = f.get(1, a.get(), announce);
  PyRef hundred(PyLong_FromLong(100));
  PyDict_SetItemString(ea.get(), "COUNTER", hundred.get());
  PyRef eb = f.get(1, b.get(), announce);
  CHECK(PyLong_AsLong(item(eb.get(), "COUNTER")) == 0);
  CHECK(PyLong_AsLong(item(base.get(), "COUNTER")) == 0);
  CHECK(item(eb.get(), "SHARED") == shared.get());  // dict.copy(): the objects are shared
  PyRef other = f.get(2, a.get(), announce);
  CHECK(item(other.get(), "COUNTER") == nullptr);  // another context has no base
  f.envs.set_base(1, PyRef());
  PyRef fresh = f.get(1, Py_None, announce);
  CHECK(item(fresh.get(), "COUNTER") == nullptr);
}

TEST_CASE("objects belong to (context, Env) and go with release, env_drop and the context") {
  Fixture f;
  PyRef p = pid('d'), r = ref('d');
  bool announce;
  f.get(1, p.get(), announce);
  f.get(1, r.get(), announce);
  std::string kp = Fixture::key_of(p.get()), kr = Fixture::key_of(r.get());
  PyRef obj(PyList_New(0));
  Py_ssize_t before = Py_REFCNT(obj.get());
  uint64_t a = f.envs.keep(1, kp, obj.get());
  uint64_t b = f.envs.keep(1, kp, obj.get());
  uint64_t c = f.envs.keep(1, kr, obj.get());
  CHECK((a > 0 && b > a && c > b));
  CHECK(f.envs.object_count() == 3);
  CHECK(f.envs.keep(2, kp, obj.get()) == 0);  // no such environment
  CHECK(f.envs.object(1, kp, a).get() == obj.get());
  CHECK_FALSE(f.envs.object(1, kr, a));  // another Env's
  CHECK_FALSE(f.envs.object(2, kp, a));  // another context's
  CHECK(f.envs.release(1, kp, a));
  CHECK_FALSE(f.envs.release(1, kp, a));
  CHECK_FALSE(f.envs.object(1, kp, a));
  f.envs.drop_key(kp);
  CHECK(f.envs.object_count() == 1);
  CHECK_FALSE(f.envs.object(1, kp, b));
  f.envs.drop_context(1);
  CHECK(f.envs.object_count() == 0);
  CHECK(f.envs.env_count() == 0);
  CHECK(Py_REFCNT(obj.get()) == before);
}

TEST_CASE("a waiting context serves only callback replies and nested call/eval/exec") {
  using ep::Header;
  using ep::Kind;
  auto h = [](Kind k, uint8_t flags) { return Header{static_cast<uint8_t>(k), flags, 0, 1, 7}; };
  CHECK(ep::servable_while_waiting(h(Kind::CallbackReply, 0)));
  CHECK(ep::servable_while_waiting(h(Kind::Call, ep::kFlagNested)));
  CHECK(ep::servable_while_waiting(h(Kind::Eval, ep::kFlagNested)));
  CHECK(ep::servable_while_waiting(h(Kind::Exec, ep::kFlagNested)));
  CHECK_FALSE(ep::servable_while_waiting(h(Kind::Call, 0)));
  CHECK_FALSE(ep::servable_while_waiting(h(Kind::Cast, ep::kFlagNested)));
  CHECK_FALSE(ep::servable_while_waiting(h(Kind::ContextInit, 0)));
  CHECK_FALSE(ep::servable_while_waiting(h(Kind::RefOp, 0)));
  CHECK(ep::is_request_kind(static_cast<uint8_t>(Kind::Cast)));
  CHECK_FALSE(ep::is_request_kind(static_cast<uint8_t>(Kind::CallbackReply)));
  CHECK_FALSE(ep::is_request_kind(static_cast<uint8_t>(Kind::RefOp)));
}
