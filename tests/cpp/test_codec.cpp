// Body codecs (port/etf_codec.cpp, port/msgpack_codec.cpp) and erlang.Pid/erlang.Term.
//
// The exact ETF bytes below were checked against term_to_binary(T, [{minor_version, 2}]) (OTP 25);
// the msgpack integer/str/bin/ext headers are also checked against msgpack-cxx's packer.
#include <doctest/doctest.h>

#ifndef MSGPACK_NO_BOOST
#define MSGPACK_NO_BOOST
#endif
#include <msgpack.hpp>

#include <Python.h>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <pthread.h>
#include <random>
#include <string>
#include <vector>

#include "codec.hpp"
#include "erlang_types.hpp"
#include "py_test_util.hpp"

using ep::PyRef;
using ep_test::repr;
using ep_test::hex;
using ep_test::strict_equal;

namespace {

std::string B(std::initializer_list<int> bytes) {
  std::string s;
  for (int b : bytes) s.push_back(static_cast<char>(b));
  return s;
}

// The pending Python exception as "Type: message", cleared.
std::string py_error() { return ep::codec_detail::take_python_error(); }

// Globals for evaluating test expressions; leaked on purpose (outlives Py_FinalizeEx otherwise).
PyObject* globals() {
  static PyObject* g = [] {
    PyObject* d = PyDict_New();
    PyDict_SetItemString(d, "__builtins__", PyEval_GetBuiltins());
    PyRef r(PyRun_String(
        "import math, enum, collections\n"
        "class IE(enum.IntEnum):\n    A = 5\n"
        "class S(str): pass\n"
        "class L(list): pass\n"
        "class T(tuple): pass\n"
        "class D(dict): pass\n"
        "class F(float): pass\n"
        "class I(int): pass\n"
        "def nest_list(n):\n    v = []\n    for _ in range(n - 1): v = [v]\n    return v\n"
        "def nest_tuple(n):\n    v = ()\n    for _ in range(n - 1): v = (v,)\n    return v\n"
        "def nest_dict(n):\n    v = {}\n    for _ in range(n - 1): v = {1: v}\n    return v\n",
        Py_file_input, d, d));
    if (!r) PyErr_Print();
    return d;
  }();
  return g;
}

PyRef ev(const std::string& expr) {
  PyRef r(PyRun_String(expr.c_str(), Py_eval_input, globals(), globals()));
  if (!r) {
    std::string e = py_error();
    FAIL("cannot evaluate " << expr << ": " << e);
  }
  return r;
}

void set_global(const char* name, PyObject* value) { PyDict_SetItemString(globals(), name, value); }

std::string etf_enc(PyObject* o) {
  std::string out;
  ep::EtfWriter w(out);
  w.version();
  bool ok = w.python(o);
  if (!ok) FAIL("ETF encoding of " << repr(o) << " failed: " << py_error());
  return out;
}

std::string mp_enc(PyObject* o) {
  std::string out;
  ep::MsgpackWriter w(out);
  w.version();
  bool ok = w.python(o);
  if (!ok) FAIL("msgpack encoding of " << repr(o) << " failed: " << py_error());
  return out;
}

PyRef decode(ep::CodecKind kind, const std::string& body) {
  std::string err;
  PyRef v = ep::decode_body(kind, body, err);
  CHECK(PyErr_Occurred() == nullptr);
  if (!v) FAIL("decoding " << hex(body) << " failed: " << err);
  CHECK(err.empty());
  return v;
}

// The err text of a failing decode ("" if it unexpectedly succeeded).
std::string decode_err(ep::CodecKind kind, const std::string& body) {
  std::string err;
  PyRef v = ep::decode_body(kind, body, err);
  CHECK(PyErr_Occurred() == nullptr);
  PyErr_Clear();
  if (v) {
    CHECK_MESSAGE(false, "decoding " << hex(body) << " unexpectedly gave " << repr(v.get()));
    return "";
  }
  CHECK(!err.empty());
  return err;
}

// Type name and message of the pending exception, cleared.
std::string encode_error(ep::CodecKind kind, PyObject* o) {
  std::string out;
  bool ok;
  if (kind == ep::CodecKind::Etf) {
    ep::EtfWriter w(out);
    ok = w.python(o);
  } else {
    ep::MsgpackWriter w(out);
    ok = w.python(o);
  }
  if (ok) return "(no error)";
  CHECK(PyErr_Occurred() != nullptr);
  return py_error();
}

// Decodes on a thread with a 256 MiB stack and returns "ok" or the err text. The nesting-cap tests go
// 10000 levels deep: ~250 bytes a level in a release build, several KiB with sanitizers.
std::string decode_deep(ep::CodecKind kind, const std::string& body) {
  struct Job {
    ep::CodecKind kind;
    const std::string* body;
    std::string result;
  } job{kind, &body, {}};
  auto run = [](void* p) -> void* {
    Job* j = static_cast<Job*>(p);
    ep::GilGuard gil;
    std::string err;
    PyRef v = ep::decode_body(j->kind, *j->body, err);
    j->result = v ? "ok" : err;
    if (PyErr_Occurred()) j->result += " (and a Python exception left set)";
    return nullptr;
  };
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, size_t{256} << 20);
  pthread_t thread;
  ep::GilRelease release;  // the decoding thread takes the GIL
  if (pthread_create(&thread, &attr, run, &job) != 0) return "pthread_create failed";
  pthread_join(thread, nullptr);
  pthread_attr_destroy(&attr);
  return job.result;
}

constexpr ep::CodecKind kEtf = ep::CodecKind::Etf;
constexpr ep::CodecKind kMsgpack = ep::CodecKind::Msgpack;

// Terms made by the VM (OTP 25 term_to_binary, so node names are ATOM_EXT): self(), make_ref(),
// hd(erlang:ports()), fun(X) -> X end, fun lists:map/2. Without the 131 version byte.
const std::string kPid = B({88, 100, 0, 13, 110, 111, 110, 111, 100, 101, 64, 110, 111, 104, 111, 115, 116,
                            0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0});
const std::string kPid2 = B({88, 100, 0, 13, 110, 111, 110, 111, 100, 101, 64, 110, 111, 104, 111, 115, 116,
                             0, 0, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0});
const std::string kOldPid = B({103, 119, 13, 110, 111, 110, 111, 100, 101, 64, 110, 111, 104, 111, 115, 116,
                               0, 0, 0, 85, 0, 0, 0, 1, 0});
const std::string kRef = B({90, 0, 3, 100, 0, 13, 110, 111, 110, 111, 100, 101, 64, 110, 111, 104, 111, 115,
                            116, 0, 0, 0, 0, 0, 0, 180, 96, 209, 136, 0, 1, 244, 63, 67, 199});
const std::string kPort = B({89, 100, 0, 13, 110, 111, 110, 111, 100, 101, 64, 110, 111, 104, 111, 115, 116,
                             0, 0, 0, 0, 0, 0, 0, 0});
const std::string kV4Port = B({120, 119, 4, 110, 64, 104, 120, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 7});
const std::string kFun = B({
    112, 0,   0,   0,   160, 1,   6,   83,  97,  170, 70,  21,  144, 209, 189, 241, 235, 98,  209, 166,
    235, 8,   0,   0,   0,   42,  0,   0,   0,   1,   100, 0,   8,   101, 114, 108, 95,  101, 118, 97,
    108, 97,  42,  98,  0,   50,  155, 13,  88,  100, 0,   13,  110, 111, 110, 111, 100, 101, 64,  110,
    111, 104, 111, 115, 116, 0,   0,   0,   9,   0,   0,   0,   0,   0,   0,   0,   0,   104, 6,   97,
    1,   106, 100, 0,   4,   110, 111, 110, 101, 100, 0,   4,   110, 111, 110, 101, 116, 0,   0,   0,
    0,   108, 0,   0,   0,   1,   104, 5,   100, 0,   6,   99,  108, 97,  117, 115, 101, 97,  1,   108,
    0,   0,   0,   1,   104, 3,   100, 0,   3,   118, 97,  114, 97,  1,   100, 0,   1,   88,  106, 106,
    108, 0,   0,   0,   1,   104, 3,   100, 0,   3,   118, 97,  114, 97,  1,   100, 0,   1,   88,  106,
    106});
const std::string kExport = B({113, 100, 0, 5, 108, 105, 115, 116, 115, 100, 0, 3, 109, 97, 112, 97, 2});

std::string V(const std::string& fragment) { return "\x83" + fragment; }

// Puts pid/ref/port/fun/export objects into the eval globals.
void define_opaque_globals() {
  set_global("pid", decode(kEtf, V(kPid)).get());
  set_global("pid2", decode(kEtf, V(kPid2)).get());
  set_global("ref", decode(kEtf, V(kRef)).get());
  set_global("port", decode(kEtf, V(kPort)).get());
  set_global("fun", decode(kEtf, V(kFun)).get());
  set_global("export", decode(kEtf, V(kExport)).get());
}

template <class T>
std::string mp_pack(const T& v) {
  msgpack::sbuffer sb;
  msgpack::pack(sb, v);
  return {sb.data(), sb.size()};
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// ETF

TEST_CASE("etf: exact encodings of Python values") {
  define_opaque_globals();
  struct Case {
    const char* expr;
    std::string bytes;  // after the version byte
  };
  const std::vector<Case> cases = {
      {"1", B({97, 1})},
      {"0", B({97, 0})},
      {"255", B({97, 255})},
      {"256", B({98, 0, 0, 1, 0})},
      {"-1", B({98, 255, 255, 255, 255})},
      {"2**31-1", B({98, 127, 255, 255, 255})},
      {"-2**31", B({98, 128, 0, 0, 0})},
      {"2**31", B({110, 4, 0, 0, 0, 0, 128})},
      {"-2**31-1", B({110, 4, 1, 1, 0, 0, 128})},
      {"2**63-1", B({110, 8, 0, 255, 255, 255, 255, 255, 255, 255, 127})},
      {"-2**63", B({110, 8, 1, 0, 0, 0, 0, 0, 0, 0, 128})},
      // Beyond int64: the charlist of the decimal digits, as STRING_EXT.
      {"2**63", B({107, 0, 19, 57, 50, 50, 51, 51, 55, 50, 48, 51, 54, 56, 53, 52, 55, 55, 53, 56, 48, 56})},
      {"-2**63-1",
       B({107, 0, 20, 45, 57, 50, 50, 51, 51, 55, 50, 48, 51, 54, 56, 53, 52, 55, 55, 53, 56, 48, 57})},
      {"1.5", B({70, 63, 248, 0, 0, 0, 0, 0, 0})},
      {"-0.0", B({70, 128, 0, 0, 0, 0, 0, 0, 0})},
      {"float('nan')", B({119, 3, 'n', 'a', 'n'})},
      {"float('inf')", B({119, 8, 'i', 'n', 'f', 'i', 'n', 'i', 't', 'y'})},
      {"float('-inf')", B({119, 12, 'n', 'e', 'g', '_', 'i', 'n', 'f', 'i', 'n', 'i', 't', 'y'})},
      {"True", B({119, 4, 't', 'r', 'u', 'e'})},
      {"False", B({119, 5, 'f', 'a', 'l', 's', 'e'})},
      {"None", B({119, 4, 'n', 'o', 'n', 'e'})},
      {"'abc'", B({109, 0, 0, 0, 3, 'a', 'b', 'c'})},
      {"''", B({109, 0, 0, 0, 0})},
      {"'\\u00e9'", B({109, 0, 0, 0, 2, 195, 169})},
      {"b'\\xff'", B({109, 0, 0, 0, 1, 255})},
      {"bytearray(b'ab')", B({109, 0, 0, 0, 2, 'a', 'b'})},
      {"memoryview(b'abcd')[::2]", B({109, 0, 0, 0, 2, 'a', 'c'})},  // not contiguous
      {"[]", B({106})},
      {"[1, 2]", B({107, 0, 2, 1, 2})},  // all 0..255: STRING_EXT, like term_to_binary
      {"[1, 'a']", B({108, 0, 0, 0, 2, 97, 1, 109, 0, 0, 0, 1, 'a', 106})},
      {"[256]", B({108, 0, 0, 0, 1, 98, 0, 0, 1, 0, 106})},
      {"[True]", B({108, 0, 0, 0, 1, 119, 4, 't', 'r', 'u', 'e', 106})},
      {"()", B({104, 0})},
      {"(1,)", B({104, 1, 97, 1})},
      {"{'a': 1}", B({116, 0, 0, 0, 1, 109, 0, 0, 0, 1, 'a', 97, 1})},
      {"{}", B({116, 0, 0, 0, 0})},
      {"pid", kPid},
      {"ref", kRef},
      {"fun", kFun},
      {"export", kExport},
  };
  for (const Case& c : cases) {
    INFO(std::string(c.expr));
    PyRef v = ev(c.expr);
    CHECK(hex(etf_enc(v.get())) == hex(V(c.bytes)));
  }
  std::string big = etf_enc(ev("tuple(range(256))").get());
  CHECK(hex(big.substr(0, 8)) == hex(B({131, 105, 0, 0, 1, 0, 97, 0})));
  std::string longlist = etf_enc(ev("[7] * 65536").get());  // too long for STRING_EXT
  CHECK(hex(longlist.substr(0, 8)) == hex(B({131, 108, 0, 1, 0, 0, 97, 7})));
  CHECK(longlist.size() == 1 + 5 + 2 * 65536 + 1);
}

TEST_CASE("etf: typed writer API") {
  SUBCASE("envelope with lists, list_end called") {
    // {ok, [1, []], #{<<"k">> => none}}
    std::string out;
    ep::EtfWriter w(out);
    w.version();
    w.tuple(3);
    w.atom("ok");
    w.list(2);
    w.integer(1);
    w.list(0);
    w.list_end();
    w.list_end();
    w.map(1);
    w.str("k");
    w.none();
    CHECK(hex(out) == hex(B({131, 104, 3, 119, 2, 111, 107, 108, 0, 0, 0, 2, 97, 1, 106, 106, 116, 0, 0, 0, 1,
                             109, 0, 0, 0, 1, 107, 119, 4, 110, 111, 110, 101})));
  }
  SUBCASE("same without list_end") {
    std::string out;
    ep::EtfWriter w(out);
    w.version();
    w.tuple(3);
    w.atom("ok");
    w.list(2);
    w.integer(1);
    w.list(0);
    w.map(1);
    w.str("k");
    w.none();
    CHECK(hex(out) == hex(B({131, 104, 3, 119, 2, 111, 107, 108, 0, 0, 0, 2, 97, 1, 106, 106, 116, 0, 0, 0, 1,
                             109, 0, 0, 0, 1, 107, 119, 4, 110, 111, 110, 101})));
  }
  SUBCASE("scalars") {
    std::string out;
    ep::EtfWriter w(out);
    w.version();
    w.list(9);
    w.boolean(true);
    w.float64(std::nan(""));
    w.float64(-INFINITY);
    w.float64(0.5);
    w.bytes(std::string("\xff", 1));
    w.charlist("ab");
    w.charlist("");
    w.opaque(kPid);
    w.python(ev("(1,)").get());
    w.list_end();
    PyRef v = decode(kEtf, out);
    set_global("v", v.get());
    CHECK(repr(v.get()) ==
          "[True, nan, -inf, 0.5, b'\\xff', [97, 98], [], <erlang.Pid <0.9.0>>, (1,)]");
  }
  SUBCASE("long atom and charlist") {
    std::string out;
    ep::EtfWriter w(out);
    w.version();
    w.tuple(2);
    w.atom(std::string(300, 'x'));
    w.charlist(std::string(70000, 'y'));
    CHECK(hex(out.substr(0, 6)) == hex(B({131, 104, 2, 118, 1, 44})));
    PyRef v = decode(kEtf, out);
    CHECK(strict_equal(v.get(), ev("('x' * 300, [121] * 70000)").get()));
  }
  SUBCASE("nesting beyond the inline open-container stack") {
    std::string out;
    ep::EtfWriter w(out);
    w.version();
    for (int i = 0; i < 40; ++i) w.list(1);
    w.integer(300);
    for (int i = 0; i < 40; ++i) w.list_end();
    CHECK(strict_equal(decode(kEtf, out).get(), ev("eval('[' * 40 + '300' + ']' * 40)").get()));
  }
}

TEST_CASE("etf: decoding every tag") {
  define_opaque_globals();
  struct Case {
    std::string bytes;  // after the version byte
    const char* expect;
  };
  const std::vector<Case> cases = {
      {B({97, 200}), "200"},
      {B({98, 255, 255, 255, 254}), "-2"},
      {B({70, 63, 248, 0, 0, 0, 0, 0, 0}), "1.5"},
      {B({99, 49, 46, 53, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48,
          101, 43, 48, 48, 0, 0, 0, 0, 0}),
       "1.5"},
      {B({100, 0, 4, 't', 'r', 'u', 'e'}), "True"},
      {B({115, 5, 'f', 'a', 'l', 's', 'e'}), "False"},
      {B({118, 0, 4, 'n', 'o', 'n', 'e'}), "None"},
      {B({119, 3, 'n', 'i', 'l'}), "None"},
      {B({119, 9, 'u', 'n', 'd', 'e', 'f', 'i', 'n', 'e', 'd'}), "None"},
      {B({119, 8, 'i', 'n', 'f', 'i', 'n', 'i', 't', 'y'}), "math.inf"},
      {B({119, 12, 'n', 'e', 'g', '_', 'i', 'n', 'f', 'i', 'n', 'i', 't', 'y'}), "-math.inf"},
      {B({119, 2, 'o', 'k'}), "'ok'"},
      {B({100, 0, 1, 0xe9}), "'\\u00e9'"},               // ATOM_EXT is Latin-1
      {B({115, 1, 0xe9}), "'\\u00e9'"},                  // SMALL_ATOM_EXT too
      {B({119, 2, 0xc3, 0xa9}), "'\\u00e9'"},            // SMALL_ATOM_UTF8_EXT
      {B({104, 2, 97, 1, 97, 2}), "(1, 2)"},
      {B({105, 0, 0, 0, 1, 106}), "([],)"},
      {B({106}), "[]"},
      {B({107, 0, 3, 'a', 'b', 'c'}), "[97, 98, 99]"},
      {B({107, 0, 0}), "[]"},
      {B({108, 0, 0, 0, 2, 97, 1, 106, 106}), "[1, []]"},
      {B({108, 0, 0, 0, 1, 97, 1, 107, 0, 1, 2}), "[1, 2]"},  // proper list split over two tags
      {B({108, 0, 0, 0, 1, 97, 1, 108, 0, 0, 0, 1, 97, 2, 106}), "[1, 2]"},
      {B({109, 0, 0, 0, 2, 'h', 'i'}), "'hi'"},
      {B({109, 0, 0, 0, 2, 0xc3, 0x28}), "b'\\xc3('"},     // not UTF-8: bytes
      {B({109, 0, 0, 0, 3, 0xed, 0xa0, 0x80}), "b'\\xed\\xa0\\x80'"},  // encoded surrogate: not UTF-8
      {B({110, 0, 0}), "0"},
      {B({110, 1, 1, 5}), "-5"},
      {B({110, 8, 0, 255, 255, 255, 255, 255, 255, 255, 255}), "2**64-1"},
      {B({110, 8, 1, 255, 255, 255, 255, 255, 255, 255, 255}), "-(2**64-1)"},
      {B({110, 8, 1, 0, 0, 0, 0, 0, 0, 0, 128}), "-2**63"},
      {B({110, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}), "2**64"},
      {B({110, 9, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1}), "-2**64"},
      {B({111, 0, 0, 0, 10, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1}), "2**72 + 1"},
      {B({116, 0, 0, 0, 2, 119, 1, 'a', 97, 1, 104, 2, 97, 1, 97, 2, 106}), "{'a': 1, (1, 2): []}"},
      {B({116, 0, 0, 0, 1, 119, 4, 'n', 'o', 'n', 'e', 109, 0, 0, 0, 0}), "{None: ''}"},
      // {bytes, Binary} is always bytes
      {B({104, 2, 119, 5, 'b', 'y', 't', 'e', 's', 109, 0, 0, 0, 3, 'a', 'b', 'c'}), "b'abc'"},
      {B({104, 2, 100, 0, 5, 'b', 'y', 't', 'e', 's', 109, 0, 0, 0, 0}), "b''"},
      {B({104, 2, 115, 5, 'b', 'y', 't', 'e', 's', 109, 0, 0, 0, 1, 255}), "b'\\xff'"},
      {B({104, 2, 119, 5, 'b', 'y', 't', 'e', 's', 97, 1}), "('bytes', 1)"},
      {B({104, 2, 109, 0, 0, 0, 5, 'b', 'y', 't', 'e', 's', 109, 0, 0, 0, 1, 'a'}), "('bytes', 'a')"},
      {B({104, 3, 119, 5, 'b', 'y', 't', 'e', 's', 109, 0, 0, 0, 1, 'a', 106}), "('bytes', 'a', [])"},
      {B({104, 2, 119, 4, 'b', 'y', 't', 'e', 109, 0, 0, 0, 1, 'a'}), "('byte', 'a')"},
  };
  for (const Case& c : cases) {
    INFO(hex(c.bytes) << " -> " << std::string(c.expect));
    PyRef v = decode(kEtf, V(c.bytes));
    CHECK_MESSAGE(strict_equal(v.get(), ev(c.expect).get()), "got " << repr(v.get()));
  }
  PyRef nan = decode(kEtf, V(B({119, 3, 'n', 'a', 'n'})));
  CHECK(PyFloat_CheckExact(nan.get()));
  CHECK(std::isnan(PyFloat_AS_DOUBLE(nan.get())));
  PyRef huge = decode(kEtf, V(B({111, 0, 0, 1, 0, 1}) + std::string(255, '\0') + B({1})));
  CHECK(strict_equal(huge.get(), ev("-(2**2040)").get()));
}

TEST_CASE("erlang.Pid, erlang.Ref and erlang.Term") {
  define_opaque_globals();
  PyRef pid = decode(kEtf, V(kPid));
  PyRef same = decode(kEtf, V(kPid));
  CHECK(Py_TYPE(pid.get()) == ep::pid_type());
  CHECK(repr(pid.get()) == "<erlang.Pid <0.9.0>>");
  CHECK(repr(decode(kEtf, V(kOldPid)).get()) == "<erlang.Pid <0.85.1>>");
  CHECK(repr(ev("type(pid)").get()) == "<class 'erlang.Pid'>");
  CHECK(repr(ev("type(ref)").get()) == "<class 'erlang.Ref'>");
  CHECK(repr(ev("type(port)").get()) == "<class 'erlang.Term'>");
  // A reference, in every ETF form, is an erlang.Ref; equal, with equal hashes, to the same ref
  // decoded again, and never equal to a Term with the same bytes.
  PyRef ref = decode(kEtf, V(kRef));
  PyRef ref_again = decode(kEtf, V(kRef));
  CHECK(Py_TYPE(ref.get()) == ep::ref_type());
  CHECK(PyObject_RichCompareBool(ref.get(), ref_again.get(), Py_EQ) == 1);
  CHECK(PyObject_Hash(ref.get()) == PyObject_Hash(ref_again.get()));
  CHECK(PyObject_RichCompareBool(ref.get(), ep::make_term(kRef).get(), Py_EQ) == 0);
  CHECK(Py_TYPE(decode(kEtf, V(B({114, 0, 1, 119, 1, 'n', 1, 0, 0, 0, 7}))).get()) == ep::ref_type());
  CHECK(Py_TYPE(decode(kEtf, V(B({101, 119, 1, 'n', 0, 0, 0, 7, 1}))).get()) == ep::ref_type());
  CHECK(Py_TYPE(decode(kMsgpack, B({0xc7, static_cast<int>(kRef.size() + 1), 3, 131}) + kRef).get()) ==
        ep::ref_type());
  std::string_view ref_bytes;
  CHECK(ep::opaque_bytes(ref.get(), ref_bytes));
  CHECK(ref_bytes == kRef);
  CHECK(pid.get() != same.get());
  CHECK(PyObject_RichCompareBool(pid.get(), same.get(), Py_EQ) == 1);
  CHECK(PyObject_Hash(pid.get()) == PyObject_Hash(same.get()));
  CHECK(ev("pid == pid2").get() == Py_False);
  CHECK(ev("pid != pid2").get() == Py_True);
  CHECK(ev("(pid < pid2) != (pid2 < pid)").get() == Py_True);
  CHECK(ev("len({pid, pid2, ref, port, fun, export})").get() == ev("6").get());
  CHECK(ev("pid != ref and pid != 1 and ref != 'x'").get() == Py_True);
  CHECK(ev("{pid: 1}[pid]").get() == ev("1").get());
  CHECK(repr(ev("ref").get()) == "<erlang.Ref #Ref<0.4097786823.3515351041.46176>>");
  CHECK(repr(ev("port").get()) == "<erlang.Term #Port<0.0>>");
  CHECK(repr(ev("fun").get()) == "<erlang.Term #Fun<erl_eval.42.3316493>>");
  CHECK(repr(ev("export").get()) == "<erlang.Term fun lists:map/2>");
  CHECK(repr(decode(kEtf, V(kV4Port)).get()) == "<erlang.Term #Port<0.4294967298> @ n@hx>");
  CHECK(repr(ep::make_term("junk").get()) == "<erlang.Term (4 bytes)>");
  // Not constructible from Python, and not mutable.
  PyRef r(PyRun_String("type(pid)()", Py_eval_input, globals(), globals()));
  CHECK(!r);
  CHECK(py_error().rfind("TypeError", 0) == 0);
  std::string_view bytes;
  CHECK(ep::opaque_bytes(pid.get(), bytes));
  CHECK(bytes == kPid);
  CHECK(!ep::opaque_bytes(ev("1").get(), bytes));
}

TEST_CASE("map keys: the key cache tells atoms from binaries") {
  // ETF: #{<<"true">> => 1, true => 2, <<"nil">> => 3, nil => 4, 'é' (Latin-1) => 5, <<"é">> => 6,
  //        <<233>> => 7, ok => 8, <<"ok">> => 9} -- 'ok' and <<"ok">> are the same Python key.
  std::string etf = B({131, 116, 0, 0, 0, 9,
                       109, 0, 0, 0, 4, 't', 'r', 'u', 'e', 97, 1,
                       119, 4, 't', 'r', 'u', 'e', 97, 2,
                       109, 0, 0, 0, 3, 'n', 'i', 'l', 97, 3,
                       119, 3, 'n', 'i', 'l', 97, 4,
                       100, 0, 1, 0xe9, 97, 5,
                       109, 0, 0, 0, 2, 0xc3, 0xa9, 97, 6,
                       109, 0, 0, 0, 1, 0xe9, 97, 7,
                       119, 2, 'o', 'k', 97, 8,
                       109, 0, 0, 0, 2, 'o', 'k', 97, 9});
  PyRef v = decode(kEtf, etf);
  CHECK_MESSAGE(strict_equal(v.get(), ev("{'true': 1, True: 2, 'nil': 3, None: 4, '\\u00e9': 6, b'\\xe9': 7, "
                                         "'ok': 9}").get()),
                repr(v.get()));
  // msgpack: {"true": 1, true (ext atom): 2, "none": 3, none (ext atom): 4, ok (ext atom): 5, "ok": 6}
  std::string mp = B({0x86, 0xa4, 't', 'r', 'u', 'e', 1, 0xd6, 1, 't', 'r', 'u', 'e', 2,
                      0xa4, 'n', 'o', 'n', 'e', 3, 0xd6, 1, 'n', 'o', 'n', 'e', 4,
                      0xd5, 1, 'o', 'k', 5, 0xa2, 'o', 'k', 6});
  v = decode(kMsgpack, mp);
  CHECK_MESSAGE(strict_equal(v.get(), ev("{'true': 1, True: 2, 'none': 3, None: 4, 'ok': 6}").get()),
                repr(v.get()));
  // Records share their key objects.
  for (ep::CodecKind kind : {kEtf, kMsgpack}) {
    PyRef records = ev("[{'id': i, 'name': 'n'} for i in range(3)]");
    PyRef back = decode(kind, kind == kEtf ? etf_enc(records.get()) : mp_enc(records.get()));
    CHECK(strict_equal(back.get(), records.get()));
    PyRef k0(PyDict_Keys(PyList_GET_ITEM(back.get(), 0))), k2(PyDict_Keys(PyList_GET_ITEM(back.get(), 2)));
    CHECK(PyList_GET_ITEM(k0.get(), 0) == PyList_GET_ITEM(k2.get(), 0));
    CHECK(PyList_GET_ITEM(k0.get(), 1) == PyList_GET_ITEM(k2.get(), 1));
  }
}

TEST_CASE("no reference leaks in either direction") {
  define_opaque_globals();
  PyRef value = ev("[{'k': (1.5, 'v' * 50, b'\\xff' * 9)}, 2**40, [pid, ref], 'x' * 30]");
  PyObject* inner = PyList_GET_ITEM(value.get(), 0);
  const Py_ssize_t before_value = Py_REFCNT(value.get()), before_inner = Py_REFCNT(inner);
  const Py_ssize_t before_pid_type = Py_REFCNT(reinterpret_cast<PyObject*>(ep::pid_type()));
  for (int i = 0; i < 100; ++i) {
    for (ep::CodecKind kind : {kEtf, kMsgpack}) {
      std::string body = kind == kEtf ? etf_enc(value.get()) : mp_enc(value.get());
      PyRef back = decode(kind, body);
      // The decoded value and its containers are referenced only by their parents.
      CHECK(Py_REFCNT(back.get()) == 1);
      PyObject* dict = PyList_GET_ITEM(back.get(), 0);
      CHECK(Py_REFCNT(dict) == 1);
      CHECK(Py_REFCNT(PyDict_GetItemString(dict, "k")) == 1);
      CHECK(Py_REFCNT(PyList_GET_ITEM(PyList_GET_ITEM(back.get(), 2), 0)) == 1);  // a fresh Pid
    }
    std::string err;
    CHECK(!ep::etf_decode(B({131, 108, 0, 0, 0, 2, 119, 1, 'a', 116, 0, 0, 0, 1, 106, 97, 1}), err));
    CHECK(!ep::msgpack_decode(B({0x92, 0xa1, 'a', 0x81, 0x90, 1}), err));
  }
  CHECK(Py_REFCNT(value.get()) == before_value);
  CHECK(Py_REFCNT(inner) == before_inner);
  CHECK(Py_REFCNT(reinterpret_cast<PyObject*>(ep::pid_type())) == before_pid_type);
}

TEST_CASE("etf: decode errors") {
  struct Case {
    std::string body;
    const char* err;
  };
  const std::vector<Case> cases = {
      {"", "empty body"},
      {B({130, 97, 1}), "bad version byte 130 (expected 131)"},
      {B({131}), "truncated term at byte 1"},
      {B({131, 97}), "truncated term at byte 2"},
      {B({131, 98, 0, 0}), "truncated term at byte 2"},
      {B({131, 70, 0}), "truncated term at byte 2"},
      {B({131, 109, 0, 0, 0, 5, 'a'}), "truncated term at byte 6"},
      {B({131, 108, 0, 0, 0, 2, 97, 1}), "truncated term at byte 8"},
      {B({131, 108, 0, 0, 0, 1, 97, 1}), "truncated term at byte 8"},  // no tail
      {B({131, 108, 255, 255, 255, 255, 97, 1}), "truncated term at byte 6"},
      {B({131, 104, 3, 97, 1}), "truncated term at byte 3"},
      {B({131, 116, 0, 0, 0, 1, 97, 1}), "truncated term at byte 8"},
      {B({131, 110, 9, 0, 1}), "truncated term at byte 4"},
      {B({131, 119, 5, 'b'}), "truncated term at byte 3"},
      {B({131, 88, 119, 1, 'n', 0, 0, 0}), "truncated term at byte 5"},
      {B({131, 104, 2, 119, 5, 'b', 'y', 't', 'e', 's', 109, 0, 0, 0, 9, 'a'}), "truncated term at byte 15"},
      {B({131, 97, 1, 0}), "trailing bytes at byte 3"},
      {B({131, 106, 106}), "trailing bytes at byte 2"},
      {B({131, 200}), "unknown tag 200 at byte 1"},
      {B({131, 104, 1, 82, 0}), "unknown tag 82 at byte 3"},  // ATOM_CACHE_REF: distribution only
      {B({131, 108, 0, 0, 0, 1, 97, 1, 97, 2}), "improper list at byte 8"},
      {B({131, 80, 0, 0, 0, 3, 120, 156, 0}), "compressed terms are not supported"},
      {B({131, 77, 0, 0, 0, 1, 3, 0xe0}), "unsupported bit binary at byte 1"},
      {B({131, 116, 0, 0, 0, 1, 106, 97, 1}), "unhashable map key of type 'list'"},
      {B({131, 116, 0, 0, 0, 1, 116, 0, 0, 0, 0, 97, 1}), "unhashable map key of type 'dict'"},
      {B({131, 116, 0, 0, 0, 1, 104, 1, 106, 97, 1}), "unhashable map key of type 'tuple'"},
      {B({131, 119, 1, 0xff}), "invalid UTF-8 in atom at byte 3"},
      {B({131, 99}) + std::string(31, 'x'), "bad float at byte 2"},
      {B({131, 88, 97, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}), "expected an atom at byte 2"},
      {B({131, 113, 119, 1, 'm', 119, 1, 'f', 98, 0, 0, 0, 1}), "bad export arity at byte 8"},
      {B({131, 112, 0, 0, 0, 2}), "bad fun size at byte 2"},
      {B({131, 112, 0, 0, 0, 9, 1, 2}), "truncated term at byte 2"},
  };
  for (const Case& c : cases) {
    INFO(hex(c.body));
    CHECK(decode_err(kEtf, c.body) == c.err);
  }
}

TEST_CASE("etf: nesting cap on decode") {
  // `levels` nested lists, the innermost empty: kMaxDepth levels are accepted, one more is refused.
  auto nested = [](int levels) {
    std::string s = B({131});
    for (int i = 0; i < levels - 1; ++i) s += B({108, 0, 0, 0, 1});
    s += B({106});
    for (int i = 0; i < levels - 1; ++i) s += B({106});
    return s;
  };
  const std::string too_deep = "term nested deeper than " + std::to_string(ep::kMaxDepth) + " levels";
  CHECK(decode_deep(kEtf, nested(ep::kMaxDepth)) == "ok");
  CHECK(decode_deep(kEtf, nested(ep::kMaxDepth + 1)) == too_deep);
  // A charlist (STRING_EXT) is a level too: it arrives as a list.
  std::string chars = B({131});
  for (int i = 0; i < ep::kMaxDepth; ++i) chars += B({108, 0, 0, 0, 1});
  chars += B({107, 0, 1, 'a'});
  for (int i = 0; i < ep::kMaxDepth; ++i) chars += B({106});
  CHECK(decode_deep(kEtf, chars) == too_deep);
  std::string tuples = B({131});
  for (int i = 0; i < 200000; ++i) tuples += B({104, 1});
  CHECK(decode_deep(kEtf, tuples) == too_deep);
  std::string maps = B({131});
  for (int i = 0; i < 200000; ++i) maps += B({116, 0, 0, 0, 1, 97, 1});
  CHECK(decode_deep(kEtf, maps) == too_deep);
  // Nested headers that each claim the rest of the body are refused before anything is allocated.
  std::string claims = B({131});
  for (int i = 0; i < 500; ++i) claims += B({108, 0, 0x0f, 0xff, 0xff});
  claims += std::string(1 << 20, '\x6a');
  CHECK(decode_deep(kEtf, claims).rfind("truncated term at byte ", 0) == 0);
}

TEST_CASE("the nesting limit agrees in both directions and both codecs") {
  // What decodes can be sent back, and what is refused on decode is refused on encode (issue 7: a
  // 9,000-deep list used to decode and then fail to encode).
  const std::string too_deep = "term nested deeper than " + std::to_string(ep::kMaxDepth) + " levels";
  for (ep::CodecKind kind : {kEtf, kMsgpack}) {
    INFO(std::string(kind == kEtf ? "etf" : "msgpack"));
    for (const char* shape : {"nest_list", "nest_tuple", "nest_dict"}) {
      INFO(shape);
      PyRef at_limit = ev(std::string(shape) + "(" + std::to_string(ep::kMaxDepth) + ")");
      PyRef past = ev(std::string(shape) + "(" + std::to_string(ep::kMaxDepth + 1) + ")");
      REQUIRE(at_limit);
      REQUIRE(past);
      std::string body;
      bool ok;
      if (kind == kEtf) {
        ep::EtfWriter w(body);
        w.version();
        ok = w.python(at_limit.get());
      } else {
        ok = ep::MsgpackWriter(body).python(at_limit.get());
      }
      REQUIRE_MESSAGE(ok, py_error());
      CHECK(decode_deep(kind, body) == "ok");
      CHECK(encode_error(kind, past.get()).rfind("RecursionError: ", 0) == 0);
      // The same value one level deeper, built by wrapping the encoded body by hand.
      std::string deeper;
      if (kind == kEtf) {
        deeper = shape == std::string("nest_tuple") ? B({131, 104, 1})
                 : shape == std::string("nest_dict") ? B({131, 116, 0, 0, 0, 1, 97, 1})
                                                     : B({131, 108, 0, 0, 0, 1});
        deeper += body.substr(1);
        if (shape == std::string("nest_list")) deeper += B({106});
      } else {
        deeper = shape == std::string("nest_tuple") ? B({0xd5, 2, 0x91})  // fixed below
                 : shape == std::string("nest_dict") ? B({0x81, 1})
                                                     : B({0x91});
        if (shape == std::string("nest_tuple")) {
          // ext 32 holding [body]: c9 len(4) 02 91 body
          const uint32_t len = static_cast<uint32_t>(body.size() + 1);
          deeper = B({0xc9, int(len >> 24), int((len >> 16) & 255), int((len >> 8) & 255), int(len & 255), 2, 0x91});
        }
        deeper += body;
      }
      CHECK(decode_deep(kind, deeper) == too_deep);
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// msgpack

TEST_CASE("msgpack: exact encodings of Python values") {
  define_opaque_globals();
  struct Case {
    const char* expr;
    std::string bytes;
  };
  const std::vector<Case> cases = {
      {"0", B({0x00})},
      {"127", B({0x7f})},
      {"128", B({0xcc, 0x80})},
      {"255", B({0xcc, 0xff})},
      {"256", B({0xcd, 0x01, 0x00})},
      {"65535", B({0xcd, 0xff, 0xff})},
      {"65536", B({0xce, 0x00, 0x01, 0x00, 0x00})},
      {"2**32-1", B({0xce, 0xff, 0xff, 0xff, 0xff})},
      {"2**32", B({0xcf, 0, 0, 0, 1, 0, 0, 0, 0})},
      {"2**63-1", B({0xcf, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})},
      {"-1", B({0xff})},
      {"-32", B({0xe0})},
      {"-33", B({0xd0, 0xdf})},
      {"-128", B({0xd0, 0x80})},
      {"-129", B({0xd1, 0xff, 0x7f})},
      {"-32768", B({0xd1, 0x80, 0x00})},
      {"-32769", B({0xd2, 0xff, 0xff, 0x7f, 0xff})},
      {"-2**31", B({0xd2, 0x80, 0, 0, 0})},
      {"-2**31-1", B({0xd3, 0xff, 0xff, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff})},
      {"-2**63", B({0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0})},
      // Beyond int64 (even where msgpack has uint64): the charlist of the decimal digits, as in ETF.
      {"2**63", B({0xdc, 0, 19, '9', '2', '2', '3', '3', '7', '2', '0', '3', '6', '8', '5', '4', '7', '7',
                   '5', '8', '0', '8'})},
      {"2**64", B({0xdc, 0, 20, '1', '8', '4', '4', '6', '7', '4', '4', '0', '7', '3', '7', '0', '9', '5',
                   '5', '1', '6', '1', '6'})},
      {"-2**63-1", B({0xdc, 0, 20, '-', '9', '2', '2', '3', '3', '7', '2', '0', '3', '6', '8', '5', '4',
                      '7', '7', '5', '8', '0', '9'})},
      {"1.5", B({0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0})},
      {"float('nan')", B({0xc7, 3, 1, 'n', 'a', 'n'})},
      {"float('inf')", B({0xd7, 1, 'i', 'n', 'f', 'i', 'n', 'i', 't', 'y'})},
      {"float('-inf')", B({0xc7, 12, 1, 'n', 'e', 'g', '_', 'i', 'n', 'f', 'i', 'n', 'i', 't', 'y'})},
      {"None", B({0xc0})},
      {"True", B({0xc3})},
      {"False", B({0xc2})},
      {"'abc'", B({0xa3, 'a', 'b', 'c'})},
      {"''", B({0xa0})},
      {"'\\u00e9'", B({0xa2, 0xc3, 0xa9})},
      {"b'\\xff'", B({0xc4, 1, 0xff})},
      {"b''", B({0xc4, 0})},
      {"bytearray(b'a')", B({0xc4, 1, 'a'})},
      {"memoryview(b'abcd')[::2]", B({0xc4, 2, 'a', 'c'})},
      {"[]", B({0x90})},
      {"[1, 2]", B({0x92, 1, 2})},
      {"()", B({0xd4, 2, 0x90})},
      {"(1,)", B({0xd5, 2, 0x91, 1})},
      {"(1, 2, 3)", B({0xd6, 2, 0x93, 1, 2, 3})},
      {"(1, 2)", B({0xc7, 3, 2, 0x92, 1, 2})},
      {"(1, 2, 3, 4, 5, 6, 7)", B({0xd7, 2, 0x97, 1, 2, 3, 4, 5, 6, 7})},
      {"((),)", B({0xd6, 2, 0x91, 0xd4, 2, 0x90})},
      {"{}", B({0x80})},
      {"{'a': 1}", B({0x81, 0xa1, 'a', 1})},
      {"pid", B({0xc7, 30, 3, 131}) + kPid},
      {"export", B({0xc7, 18, 3, 131}) + kExport},
  };
  for (const Case& c : cases) {
    INFO(std::string(c.expr));
    PyRef v = ev(c.expr);
    CHECK(hex(mp_enc(v.get())) == hex(c.bytes));
  }
  std::string big_tuple = mp_enc(ev("tuple(range(200))").get());
  CHECK(hex(big_tuple.substr(0, 7)) == hex(B({0xc8, 0x01, 0x13, 2, 0xdc, 0, 200})));  // 3 + 128 + 2*72
  std::string many = mp_enc(ev("[None] * 70000").get());
  CHECK(hex(many.substr(0, 6)) == hex(B({0xdd, 0, 1, 0x11, 0x70, 0xc0})));
}

TEST_CASE("msgpack: headers agree with msgpack-cxx") {
  const std::vector<int64_t> ints = {0,      1,      31,     32,         127,        128,         255,
                                     256,    65535,  65536,  4294967295, 4294967296, INT64_MAX,   -1,
                                     -31,    -32,    -33,    -127,       -128,       -129,        -32767,
                                     -32768, -32769, INT32_MIN,          int64_t{INT32_MIN} - 1, INT64_MIN};
  for (int64_t v : ints) {
    INFO(v);
    std::string out;
    ep::MsgpackWriter w(out);
    w.integer(v);
    CHECK(hex(out) == hex(mp_pack(v)));
    CHECK(hex(mp_enc(PyRef(PyLong_FromLongLong(v)).get())) == hex(mp_pack(v)));
  }
  for (uint64_t v : {uint64_t{INT64_MAX} + 1, UINT64_MAX}) {
    INFO(v);
    std::string digits = std::to_string(v);
    std::vector<int> chars(digits.begin(), digits.end());
    CHECK(hex(mp_enc(PyRef(PyLong_FromUnsignedLongLong(v)).get())) == hex(mp_pack(chars)));
  }
  for (size_t n : {size_t{0}, size_t{1}, size_t{31}, size_t{32}, size_t{255}, size_t{256}, size_t{65535},
                   size_t{65536}}) {
    INFO(n);
    std::string s(n, 'q');
    std::string out;
    ep::MsgpackWriter w(out);
    w.str(s);
    CHECK(hex(out.substr(0, 8)) == hex(mp_pack(s).substr(0, 8)));
    CHECK(out == mp_enc(PyRef(PyUnicode_FromStringAndSize(s.data(), static_cast<Py_ssize_t>(n))).get()));
    out.clear();
    w.bytes(s);
    std::vector<char> bin(s.begin(), s.end());
    CHECK(out == mp_pack(bin));
    CHECK(out == mp_enc(PyRef(PyBytes_FromStringAndSize(s.data(), static_cast<Py_ssize_t>(n))).get()));
    // ext headers: an atom name of n bytes
    if (n > 0 && n <= 255) {
      out.clear();
      w.atom(s);
      msgpack::sbuffer sb;
      msgpack::packer<msgpack::sbuffer> pk(sb);
      pk.pack_ext(n, 1);
      pk.pack_ext_body(s.data(), static_cast<uint32_t>(n));
      CHECK(hex(out) == hex(std::string(sb.data(), sb.size())));
    }
  }
  {
    std::string out;
    ep::MsgpackWriter w(out);
    w.tuple(0);
    msgpack::sbuffer sb;
    msgpack::packer<msgpack::sbuffer> pk(sb);
    pk.pack_ext(1, 2);
    CHECK(hex(out) == hex(std::string(sb.data(), sb.size()) + B({0x90})));
  }
  for (size_t n : {2, 3, 4, 5, 8, 9, 16, 17, 33, 255, 256, 257, 65535, 65536, 70000}) {
    INFO(n);
    // A 1-tuple holding a string, sized so that the ext payload is n bytes.
    auto str_header = [](size_t len) -> size_t {
      return len <= 31 ? 1 : len <= 255 ? 2 : len <= 65535 ? 3 : 5;
    };
    size_t len = n - 2;
    while (len > 0 && 1 + str_header(len) + len > n) --len;
    REQUIRE(1 + str_header(len) + len == n);
    std::string out;
    ep::MsgpackWriter w(out);
    w.tuple(1);
    w.str(std::string(len, 's'));
    msgpack::sbuffer sb;
    msgpack::packer<msgpack::sbuffer> pk(sb);
    pk.pack_ext(n, 2);
    std::string expect(sb.data(), sb.size());
    CHECK(hex(out.substr(0, expect.size())) == hex(expect));
    CHECK(out.size() == expect.size() + n);
    CHECK(out == mp_enc(ev("('" + std::string(len, 's') + "',)").get()));
  }
  // Non-integral only: msgpack-cxx packs an integral double (even via pack_double) as an int.
  for (double d : {0.5, -1.5, 0.1, 1e300, -2.5e-300, 5e-324}) {
    std::string out;
    ep::MsgpackWriter w(out);
    w.float64(d);
    msgpack::sbuffer sb;
    msgpack::packer<msgpack::sbuffer> pk(sb);
    pk.pack_double(d);  // msgpack::pack(double) would write integral values as ints
    CHECK(hex(out) == hex(std::string(sb.data(), sb.size())));
  }
}

TEST_CASE("msgpack: typed writer API") {
  SUBCASE("nested tuples get their ext headers when their last element is written") {
    std::string out;
    ep::MsgpackWriter w(out);
    w.version();
    w.tuple(2);
    w.atom("ok");
    w.tuple(2);
    w.integer(1);
    w.str("x");
    CHECK(hex(out) == hex(B({0xc7, 11, 2, 0x92, 0xd5, 1, 'o', 'k', 0xd6, 2, 0x92, 1, 0xa1, 'x'})));
    CHECK(strict_equal(decode(kMsgpack, out).get(), ev("('ok', (1, 'x'))").get()));
  }
  SUBCASE("atoms, lists, maps, scalars") {
    std::string out;
    ep::MsgpackWriter w(out);
    w.tuple(3);
    w.atom("error");
    w.list(0);
    w.list_end();
    w.map(8);
    w.atom("true");
    w.atom("false");
    w.atom("none");
    w.atom("undefined");
    w.boolean(false);
    w.none();
    w.str("f");
    w.float64(INFINITY);
    w.str("c");
    w.charlist("ab");
    w.str("o");
    w.opaque(kPid);
    w.str("b");
    w.bytes(std::string("\x80", 1));
    w.str("t");
    w.tuple(0);
    PyRef v = decode(kMsgpack, out);
    set_global("pid", decode(kEtf, V(kPid)).get());
    PyRef expect = ev("('error', [], {True: False, None: None, False: None, 'f': math.inf, "
                      "'c': [97, 98], 'o': pid, 'b': b'\\x80', 't': ()})");
    CHECK_MESSAGE(strict_equal(v.get(), expect.get()), repr(v.get()));
  }
  SUBCASE("python() values inside typed containers, deep nesting") {
    std::string out;
    ep::MsgpackWriter w(out);
    for (int i = 0; i < 40; ++i) {
      w.tuple(2);
      w.integer(i);
    }
    w.python(ev("[(1,), {'k': (2, 3)}]").get());
    PyRef expect = ev("[(1,), {'k': (2, 3)}]");
    for (int i = 39; i >= 0; --i) {
      PyRef n(PyLong_FromLong(i));
      expect = PyRef(PyTuple_Pack(2, n.get(), expect.get()));
    }
    CHECK(strict_equal(decode(kMsgpack, out).get(), expect.get()));
  }
}

TEST_CASE("msgpack: decoding every format") {
  define_opaque_globals();
  struct Case {
    std::string bytes;
    const char* expect;
  };
  const std::vector<Case> cases = {
      {B({0x05}), "5"},
      {B({0xfb}), "-5"},
      {B({0xcc, 0xff}), "255"},
      {B({0xcd, 0, 5}), "5"},  // not minimal: accepted
      {B({0xce, 0xff, 0xff, 0xff, 0xff}), "2**32-1"},
      {B({0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}), "2**64-1"},
      {B({0xd0, 0x80}), "-128"},
      {B({0xd1, 0x80, 0}), "-32768"},
      {B({0xd2, 0x80, 0, 0, 0}), "-2**31"},
      {B({0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0}), "-2**63"},
      {B({0xd3, 0, 0, 0, 0, 0, 0, 0, 7}), "7"},
      {B({0xca, 0x3f, 0xc0, 0, 0}), "1.5"},
      {B({0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0}), "1.5"},
      {B({0xc0}), "None"},
      {B({0xc2}), "False"},
      {B({0xc3}), "True"},
      {B({0xa2, 'h', 'i'}), "'hi'"},
      {B({0xd9, 2, 'h', 'i'}), "'hi'"},
      {B({0xda, 0, 2, 'h', 'i'}), "'hi'"},
      {B({0xdb, 0, 0, 0, 2, 'h', 'i'}), "'hi'"},
      {B({0xa1, 0xff}), "b'\\xff'"},  // invalid UTF-8 str: bytes
      {B({0xc4, 2, 'h', 'i'}), "b'hi'"},  // bin is always bytes
      {B({0xc5, 0, 1, 'h'}), "b'h'"},
      {B({0xc6, 0, 0, 0, 0}), "b''"},
      {B({0x92, 1, 0x90}), "[1, []]"},
      {B({0xdc, 0, 1, 1}), "[1]"},
      {B({0xdd, 0, 0, 0, 1, 1}), "[1]"},
      {B({0x82, 0xa1, 'a', 1, 0xc0, 0x80}), "{'a': 1, None: {}}"},
      {B({0xde, 0, 1, 1, 2}), "{1: 2}"},
      {B({0xdf, 0, 0, 0, 1, 1, 2}), "{1: 2}"},
      {B({0x81, 0xd4, 2, 0x90, 1}), "{(): 1}"},
      // ext 1: atoms
      {B({0xd6, 1, 't', 'r', 'u', 'e'}), "True"},
      {B({0xc7, 5, 1, 'f', 'a', 'l', 's', 'e'}), "False"},
      {B({0xd6, 1, 'n', 'o', 'n', 'e'}), "None"},
      {B({0xc7, 3, 1, 'n', 'i', 'l'}), "None"},
      {B({0xc7, 9, 1, 'u', 'n', 'd', 'e', 'f', 'i', 'n', 'e', 'd'}), "None"},
      {B({0xd7, 1, 'i', 'n', 'f', 'i', 'n', 'i', 't', 'y'}), "math.inf"},
      {B({0xc7, 12, 1, 'n', 'e', 'g', '_', 'i', 'n', 'f', 'i', 'n', 'i', 't', 'y'}), "-math.inf"},
      {B({0xd5, 1, 'o', 'k'}), "'ok'"},
      {B({0xc8, 0, 2, 1, 0xc3, 0xa9}), "'\\u00e9'"},
      {B({0xc7, 0, 1}), "''"},
      // ext 2: tuples
      {B({0xd4, 2, 0x90}), "()"},
      {B({0xc7, 3, 2, 0x92, 1, 2}), "(1, 2)"},
      {B({0xc7, 5, 2, 0xdc, 0, 2, 1, 2}), "(1, 2)"},
      {B({0xd6, 2, 0x91, 0xd4, 2, 0x90}), "((),)"},
      {B({0xc7, 11, 2, 0x92, 0xc7, 5, 1, 'b', 'y', 't', 'e', 's', 0xa1, 'a'}), "b'a'"},
      {B({0xc7, 11, 2, 0x92, 0xc7, 5, 1, 'b', 'y', 't', 'e', 's', 0xc4, 0}), "b''"},
      {B({0xc7, 12, 2, 0x92, 0xc7, 5, 1, 'b', 'y', 't', 'e', 's', 0xd9, 1, 'a'}), "b'a'"},
      {B({0xc7, 10, 2, 0x92, 0xc7, 5, 1, 'b', 'y', 't', 'e', 's', 1}), "('bytes', 1)"},
      {B({0xc7, 9, 2, 0x92, 0xa5, 'b', 'y', 't', 'e', 's', 0xa1, 'a'}), "('bytes', 'a')"},
      // ext 4: integers beyond 64 bits
      {B({0xc7, 20, 4}) + "18446744073709551616", "2**64"},
      {B({0xc7, 20, 4}) + "-9223372036854775809", "-2**63-1"},
      {B({0xc7, 3, 4}) + "+12", "12"},
      // ext 3: term_to_binary bytes
      {B({0xc7, 30, 3, 131}) + kPid, "pid"},
      {B({0xc7, static_cast<int>(kRef.size() + 1), 3, 131}) + kRef, "ref"},
      {B({0xc8, 0, static_cast<int>(kFun.size() + 1), 3, 131}) + kFun, "fun"},
      {B({0xd5, 3, 131, 106}), "[]"},
      {B({0xc7, 3, 3, 131, 97, 1}), "1"},  // any term is accepted
  };
  for (const Case& c : cases) {
    INFO(hex(c.bytes) << " -> " << std::string(c.expect));
    PyRef v = decode(kMsgpack, c.bytes);
    CHECK_MESSAGE(strict_equal(v.get(), ev(c.expect).get()), "got " << repr(v.get()));
  }
  PyRef nan = decode(kMsgpack, B({0xc7, 3, 1, 'n', 'a', 'n'}));
  CHECK(std::isnan(PyFloat_AS_DOUBLE(nan.get())));
  PyRef big = decode(kMsgpack, B({0xc8, 0x01, 0x2d, 4}) + "-" + std::string(300, '9'));
  CHECK(strict_equal(big.get(), ev("-(10**300 - 1)").get()));
}

// The decoder builds short ASCII strs itself (and hands out CPython's shared one-character and
// empty strs); anything else goes through the UTF-8 check. Every length around the word sizes it
// reads in, with a non-ASCII character or an invalid byte at every position, as a value and as a key.
TEST_CASE("msgpack: strs decode as PyUnicode_DecodeUTF8 decodes them, or to bytes") {
  for (size_t n = 0; n <= 80; ++n) {
    std::string ascii;
    for (size_t i = 0; i < n; ++i) ascii.push_back(static_cast<char>('a' + i % 26));
    std::vector<std::string> texts = {ascii};
    for (size_t p = 0; p < n; ++p) {
      std::string bad = ascii, accented = ascii;
      bad[p] = static_cast<char>(0xff);  // not UTF-8: bytes
      texts.push_back(bad);
      if (p + 1 < n) {
        accented[p] = static_cast<char>(0xc3);  // é
        accented[p + 1] = static_cast<char>(0xa9);
        texts.push_back(accented);
      }
    }
    for (const std::string& t : texts) {
      INFO("n = " << n << ": " << hex(t));
      PyRef expect(PyUnicode_DecodeUTF8(t.data(), static_cast<Py_ssize_t>(t.size()), nullptr));
      if (!expect) {
        PyErr_Clear();
        expect.reset(PyBytes_FromStringAndSize(t.data(), static_cast<Py_ssize_t>(t.size())));
      }
      const std::string str8 = B({0xd9, static_cast<int>(t.size())}) + t;
      PyRef v = decode(kMsgpack, str8);
      CHECK_MESSAGE(strict_equal(v.get(), expect.get()), "got " << repr(v.get()));
      if (PyUnicode_Check(v.get())) {
        CHECK(PyUnicode_IS_ASCII(v.get()) == PyUnicode_IS_ASCII(expect.get()));
        if (t.size() <= 1) CHECK(v.get() == expect.get());  // the shared str
      }
      PyRef m = decode(kMsgpack, B({0x82}) + str8 + B({1, 0xa1, '~', 2}));
      PyRef expect_m(PyDict_New());
      PyDict_SetItem(expect_m.get(), expect.get(), PyRef(PyLong_FromLong(1)).get());
      PyDict_SetItemString(expect_m.get(), "~", PyRef(PyLong_FromLong(2)).get());
      CHECK_MESSAGE(strict_equal(m.get(), expect_m.get()), "got " << repr(m.get()));
    }
  }
}

TEST_CASE("msgpack: decode errors") {
  struct Case {
    std::string body;
    const char* err;
  };
  const std::vector<Case> cases = {
      {"", "empty body"},
      {B({0xc1}), "invalid msgpack byte 0xc1 at byte 0"},
      // Offsets of truncations are where msgpack-cxx's parser stopped.
      {B({0x92, 0x01}), "truncated term at byte 2"},  // fewer bytes than elements
      {B({0x92, 0x01, 0x92}), "truncated term at byte 2"},
      {B({0xdc, 0x00}), "truncated term at byte 1"},
      {B({0xdd, 0xff, 0xff, 0xff, 0xff, 1}), "truncated term at byte 4"},  // refused before allocating
      {B({0x81, 0x01}), "truncated term at byte 2"},
      {B({0x81, 0x01, 0x91}), "truncated term at byte 3"},
      {B({0xa3, 'a'}), "truncated term at byte 1"},
      {B({0xcb, 0, 0}), "truncated term at byte 1"},
      {B({0xc7, 5, 1, 'a'}), "truncated term at byte 2"},
      {B({0xd4}), "truncated term at byte 1"},
      {B({0x01, 0x02}), "trailing bytes at byte 1"},
      {B({0xd4, 9, 0}), "unknown ext type 9 at byte 1"},  // the type byte
      {B({0x91, 0xd4, 0xff, 0}), "unknown ext type -1 at byte 2"},  // timestamp
      {B({0x81, 0x90, 0x01}), "unhashable map key of type 'list'"},
      {B({0x81, 0x80, 0x01}), "unhashable map key of type 'dict'"},
      {B({0x81, 0xd5, 2, 0x91, 0x90, 0x01}), "unhashable map key of type 'tuple'"},
      {B({0xd4, 2, 1}), "tuple ext does not hold an array at byte 2"},
      {B({0xc7, 3, 2, 0x91, 1, 2}), "trailing bytes in tuple ext at byte 5"},
      {B({0xc7, 2, 2, 0x92, 1, 2}), "truncated term at byte 5"},  // the array overruns its ext
      {B({0xc7, 0, 2}), "truncated term at byte 3"},
      {B({0xd4, 3, 0}), "ext 3 payload is not ETF at byte 2"},
      {B({0xc7, 0, 3}), "ext 3 payload is not ETF at byte 3"},
      {B({0xc7, 2, 3, 131, 97}), "bad ETF in ext 3 at byte 3: truncated term at byte 2"},
      {B({0xc7, 3, 4, '1', 'x', '2'}), "bad integer in ext 4 at byte 3"},
      {B({0xc7, 0, 4}), "bad integer in ext 4 at byte 3"},
      {B({0xd4, 4, '-'}), "bad integer in ext 4 at byte 2"},
      {B({0xc7, 3, 4, '1', '_', '2'}), "bad integer in ext 4 at byte 3"},
      {B({0xd4, 1, 0xff}), "invalid UTF-8 in atom at byte 2"},
  };
  for (const Case& c : cases) {
    INFO(hex(c.body));
    CHECK(decode_err(kMsgpack, c.body) == c.err);
  }
  const std::string too_deep = "term nested deeper than " + std::to_string(ep::kMaxDepth) + " levels";
  std::string deep(ep::kMaxDepth, static_cast<char>(0x91));
  deep.push_back(static_cast<char>(0x90));  // the innermost empty array is level kMaxDepth + 1
  CHECK(decode_deep(kMsgpack, deep) == too_deep);
  std::string ok(ep::kMaxDepth - 1, static_cast<char>(0x91));
  ok.push_back(static_cast<char>(0x90));
  CHECK(decode_deep(kMsgpack, ok) == "ok");
  std::string tuples;
  const size_t levels = ep::kMaxDepth + 1;
  for (size_t i = 0; i < levels; ++i) tuples += B({0xc9, 0, 0, 0, 0, 2, 0x91});  // lengths fixed below
  tuples.push_back(0);
  // Patch each ext32 length: the rest of the buffer after its header.
  for (size_t i = 0; i < levels; ++i) {
    size_t at = i * 7;
    uint32_t len = static_cast<uint32_t>(tuples.size() - at - 6);
    tuples[at + 1] = static_cast<char>(len >> 24);
    tuples[at + 2] = static_cast<char>(len >> 16);
    tuples[at + 3] = static_cast<char>(len >> 8);
    tuples[at + 4] = static_cast<char>(len);
  }
  CHECK(decode_deep(kMsgpack, tuples) == too_deep);
  // Nested headers that each claim the rest of the body are refused before anything is allocated.
  std::string claims;
  for (int i = 0; i < 500; ++i) claims += B({0xdd, 0, 0x0f, 0xff, 0xff});
  claims += std::string(1 << 20, '\x01');
  CHECK(decode_deep(kMsgpack, claims).rfind("truncated term at byte ", 0) == 0);
}

// ---------------------------------------------------------------------------------------------------
// Both codecs

TEST_CASE("round trips through both codecs") {
  define_opaque_globals();
  struct Case {
    const char* in;
    const char* etf;      // value after the ETF round trip (nullptr: same as `in`)
    const char* msgpack;  // after the msgpack round trip (nullptr: same as etf)
  };
  const std::vector<Case> cases = {
      {"0", nullptr, nullptr},
      {"1", nullptr, nullptr},
      {"-1", nullptr, nullptr},
      {"255", nullptr, nullptr},
      {"256", nullptr, nullptr},
      {"-129", nullptr, nullptr},
      {"2**31", nullptr, nullptr},
      {"-2**31-1", nullptr, nullptr},
      {"2**63-1", nullptr, nullptr},
      {"-2**63", nullptr, nullptr},
      {"2**63", "list(b'9223372036854775808')", nullptr},  // though msgpack has uint64
      {"2**64-1", "list(b'18446744073709551615')", nullptr},
      {"2**64", "list(b'18446744073709551616')", nullptr},
      {"-2**63-1", "list(b'-9223372036854775809')", nullptr},
      {"-10**40", "list(b'-1' + b'0' * 40)", nullptr},
      {"1.5", nullptr, nullptr},
      {"-0.0", nullptr, nullptr},
      {"0.1", nullptr, nullptr},
      {"1e308", nullptr, nullptr},
      {"5e-324", nullptr, nullptr},
      {"float('inf')", nullptr, nullptr},
      {"float('-inf')", nullptr, nullptr},
      {"float('nan')", nullptr, nullptr},
      {"True", nullptr, nullptr},
      {"False", nullptr, nullptr},
      {"None", nullptr, nullptr},
      {"'abc'", nullptr, nullptr},
      {"''", nullptr, nullptr},
      {"'\\u00e9\\u20ac\\U0001f600'", nullptr, nullptr},
      {"'\\x00'", nullptr, nullptr},
      {"'x' * 70000", nullptr, nullptr},
      {"b'abc'", "'abc'", "b'abc'"},  // ETF: a UTF-8 binary arrives as str; msgpack keeps bin
      {"b'\\xff\\xfe'", nullptr, nullptr},
      {"b'\\x80' * 70000", nullptr, nullptr},
      {"bytearray(b'\\x80')", "b'\\x80'", nullptr},
      {"memoryview(b'\\x80\\x81')", "b'\\x80\\x81'", nullptr},
      {"[]", nullptr, nullptr},
      {"[1, 2, 3]", nullptr, nullptr},
      {"[1, [2, [3, []]]]", nullptr, nullptr},
      {"[None, True, 'x', 1.0, -7]", nullptr, nullptr},
      {"list(range(1000))", nullptr, nullptr},
      {"[0] * 70000", nullptr, nullptr},
      {"[255, 0, 256]", nullptr, nullptr},
      {"()", nullptr, nullptr},
      {"(1,)", nullptr, nullptr},
      {"(1, 'a', (2.5, []), {})", nullptr, nullptr},
      {"tuple(range(300))", nullptr, nullptr},
      {"{}", nullptr, nullptr},
      {"{'a': 1, 'b': [1, 2]}", nullptr, nullptr},
      {"{1: 'x', (1, 2): None, None: 0, 1.5: 2, (): ()}", nullptr, nullptr},
      {"{'k': {'n': {}}}", nullptr, nullptr},
      {"{i: str(i) for i in range(100)}", nullptr, nullptr},
      {"{'t': ('bytes', 'abc')}", nullptr, nullptr},
      {"('bytes', b'abc')", "('bytes', 'abc')", "('bytes', b'abc')"},  // a str 'bytes' is not the atom
      {"pid", nullptr, nullptr},
      {"ref", nullptr, nullptr},
      {"[pid, (ref, fun), {port: export}]", nullptr, nullptr},
      {"IE.A", "5", nullptr},
      {"S('x')", "'x'", nullptr},
      {"L([1])", "[1]", nullptr},
      {"T((1,))", "(1,)", nullptr},
      {"D(a=1)", "{'a': 1}", nullptr},
      {"collections.OrderedDict(a=(1,))", "{'a': (1,)}", nullptr},
      {"collections.defaultdict(list, a=[1])", "{'a': [1]}", nullptr},
      {"F(2.5)", "2.5", nullptr},
      {"I(7)", "7", nullptr},
      {"I(2**70)", "list(str(2**70).encode())", nullptr},
  };
  for (const Case& c : cases) {
    INFO(std::string(c.in));
    PyRef in = ev(c.in);
    PyRef expect_etf = ev(c.etf ? c.etf : c.in);
    PyRef expect_mp = ev(c.msgpack ? c.msgpack : c.etf ? c.etf : c.in);
    PyRef via_etf = decode(kEtf, etf_enc(in.get()));
    CHECK_MESSAGE(strict_equal(via_etf.get(), expect_etf.get()), "etf gave " << repr(via_etf.get()));
    PyRef via_mp = decode(kMsgpack, mp_enc(in.get()));
    CHECK_MESSAGE(strict_equal(via_mp.get(), expect_mp.get()), "msgpack gave " << repr(via_mp.get()));
  }
}

TEST_CASE("encoding errors") {
  struct Case {
    const char* expr;
    const char* err;
  };
  const std::vector<Case> cases = {
      {"{1, 2}", "TypeError: cannot convert Python object of type 'set' to an Erlang term"},
      {"object()", "TypeError: cannot convert Python object of type 'object' to an Erlang term"},
      {"[1, (2, {'k': frozenset()})]",
       "TypeError: cannot convert Python object of type 'frozenset' to an Erlang term"},
      {"{(1, 2j): 1}", "TypeError: cannot convert Python object of type 'complex' to an Erlang term"},
      {"len",
       "TypeError: cannot convert Python object of type 'builtin_function_or_method' to an Erlang term"},
      {"'\\ud800'",
       "UnicodeEncodeError: 'utf-8' codec can't encode character '\\ud800' in position 0: surrogates not "
       "allowed"},
      {"['ok', 'a\\udfff']",
       "UnicodeEncodeError: 'utf-8' codec can't encode character '\\udfff' in position 1: surrogates not "
       "allowed"},
  };
  for (ep::CodecKind kind : {kEtf, kMsgpack}) {
    for (const Case& c : cases) {
      INFO(std::string(c.expr) << (kind == kEtf ? " (etf)" : " (msgpack)"));
      CHECK(encode_error(kind, ev(c.expr).get()) == c.err);
    }
  }
}

TEST_CASE("encoding depth cap and cycles") {
  PyRef ok = ev("nest_list(" + std::to_string(ep::kMaxDepth) + ")");
  PyRef deep = ev("nest_list(" + std::to_string(ep::kMaxDepth + 1) + ")");
  PyRef deep_tuple = ev("nest_tuple(" + std::to_string(ep::kMaxDepth + 1) + ")");
  PyRef deep_dict = ev("nest_dict(" + std::to_string(ep::kMaxDepth + 1) + ")");
  PyRef cycle(PyRun_String("l = [1, [2]]\nl[1].append(l)\n", Py_file_input, globals(), globals()));
  REQUIRE(cycle);
  PyRef self_dict(PyRun_String("d = {}\nd['d'] = [d]\n", Py_file_input, globals(), globals()));
  REQUIRE(self_dict);
  const std::string deep_err =
      "RecursionError: Python object nested deeper than 1000 levels cannot be converted to an Erlang term";
  const std::string cycle_err =
      "ValueError: cannot convert a self-referencing (cyclic) Python object to an Erlang term";
  for (ep::CodecKind kind : {kEtf, kMsgpack}) {
    INFO(std::string(kind == kEtf ? "etf" : "msgpack"));
    std::string out;
    if (kind == kEtf) CHECK(ep::EtfWriter(out).python(ok.get()));
    else CHECK(ep::MsgpackWriter(out).python(ok.get()));
    CHECK(strict_equal(decode(kind, kind == kEtf ? "\x83" + out : out).get(), ok.get()));
    CHECK(encode_error(kind, deep.get()) == deep_err);
    CHECK(encode_error(kind, deep_tuple.get()) == deep_err);
    CHECK(encode_error(kind, deep_dict.get()) == deep_err);
    CHECK(encode_error(kind, ev("l").get()) == cycle_err);
    CHECK(encode_error(kind, ev("d").get()) == cycle_err);
  }
}

TEST_CASE("containers mutated by another thread while they are encoded") {
  // Meaningful on free-threaded builds, where the mutator really runs during encoding; elsewhere the
  // encoder holds the GIL throughout. Each encoding must succeed or fail with RuntimeError.
  PyRef started(PyRun_String(
      "import threading\n"
      "shared_l = [1, 'a', [2], (3,), {'k': 4}] * 40\n"
      "shared_d = {i: [i, str(i)] for i in range(100)}\n"
      "stop = False\n"
      "def mutate():\n"
      "    i = 0\n"
      "    while not stop:\n"
      "        shared_l.append([i, 'x'])\n"
      "        del shared_l[0]\n"
      "        if i % 7 == 0: shared_l.append(i % 300)\n"
      "        if i % 11 == 0 and len(shared_l) > 150: del shared_l[-1]\n"
      "        shared_d[i % 150] = (i, [i])\n"
      "        shared_d.pop((i + 75) % 150, None)\n"
      "        i += 1\n"
      "mutator = threading.Thread(target=mutate)\n"
      "mutator.start()\n",
      Py_file_input, globals(), globals()));
  REQUIRE(started);
  int ok = 0, changed = 0;
  for (int i = 0; i < 3000; ++i) {
    for (ep::CodecKind kind : {kEtf, kMsgpack}) {
      for (const char* name : {"shared_l", "shared_d"}) {
        PyObject* value = PyDict_GetItemString(globals(), name);
        std::string err = encode_error(kind, value);
        if (err == "(no error)") ++ok;
        else if (err.rfind("RuntimeError: ", 0) == 0) ++changed;
        else FAIL_CHECK(err);
      }
    }
  }
  PyRef stopped(PyRun_String("stop = True\nmutator.join()\n", Py_file_input, globals(), globals()));
  REQUIRE(stopped);
  CHECK(ok + changed == 12000);
}

// ---------------------------------------------------------------------------------------------------
// Hostile input

namespace {

// Decodes; must either succeed with no err, or fail with err set. Never a Python exception left set.
// A success is re-encoded by both writers, which may refuse (e.g. a map key decoded as a float nan)
// but must not crash.
void decode_any(ep::CodecKind kind, const std::string& body) {
  std::string err;
  PyRef v = ep::decode_body(kind, body, err);
  REQUIRE_MESSAGE(PyErr_Occurred() == nullptr, hex(body));
  if (!v) {
    REQUIRE_MESSAGE(!err.empty(), hex(body));
    return;
  }
  REQUIRE_MESSAGE(err.empty(), hex(body));
  std::string out;
  if (!ep::EtfWriter(out).python(v.get())) PyErr_Clear();
  out.clear();
  if (!ep::MsgpackWriter(out).python(v.get())) PyErr_Clear();
}

std::vector<std::string> sample_bodies(ep::CodecKind kind) {
  std::vector<std::string> bodies;
  const char* exprs[] = {
      "[1, -1, 300, 2**40, -2**40, 2**63, 2**64, 1.5, float('nan'), True, None, 'ok', b'\\xff', 'x' * 40]",
      "{'a': (1, 2), 'b': [[], {}], (1,): {'n': None}, 7: -0.5}",
      "(pid, ref, port, fun, export, [pid], {'p': pid})",
      "('bytes', b'abc', list(range(20)), [0] * 300)",
      "list(range(70000, 70040)) + [2**70, -2**70]",
  };
  define_opaque_globals();
  for (const char* e : exprs) bodies.push_back(kind == kEtf ? etf_enc(ev(e).get()) : mp_enc(ev(e).get()));
  if (kind == kEtf) {
    bodies.push_back(V(B({104, 2, 119, 5, 'b', 'y', 't', 'e', 's', 109, 0, 0, 0, 3, 'a', 'b', 'c'})));
    bodies.push_back(V(B({99, 49, 46, 53, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48,
                          48, 48, 101, 43, 48, 48, 0, 0, 0, 0, 0})));
    bodies.push_back(V(B({111, 0, 0, 0, 10, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1})));
    bodies.push_back(V(B({108, 0, 0, 0, 1, 97, 1, 107, 0, 1, 2})));
    bodies.push_back(V(kOldPid));
    bodies.push_back(V(kV4Port));
  } else {
    bodies.push_back(B({0xc7, 11, 2, 0x92, 0xc7, 5, 1, 'b', 'y', 't', 'e', 's', 0xa1, 'a'}));
    bodies.push_back(B({0xc7, 20, 4}) + "18446744073709551616");
    bodies.push_back(B({0xca, 0x3f, 0xc0, 0, 0}));
  }
  return bodies;
}

}  // namespace

TEST_CASE("hostile input: truncations, mutations and random bytes never crash") {
  std::mt19937 rng(20240611);
  for (ep::CodecKind kind : {kEtf, kMsgpack}) {
    INFO(std::string(kind == kEtf ? "etf" : "msgpack"));
    const std::vector<std::string> bodies = sample_bodies(kind);
    for (const std::string& body : bodies) {
      decode(kind, body);  // the samples themselves are valid
      // Every proper prefix is a truncated term.
      for (size_t cut = kind == kEtf ? 1 : 0; cut < body.size(); ++cut) {
        std::string err = decode_err(kind, body.substr(0, cut));
        if (cut == 0) continue;
        CHECK_MESSAGE(err.rfind("truncated term at byte ", 0) == 0, "cut " << cut << ": " << err);
      }
    }
    // Mutations: overwrite, insert, delete a few bytes.
    for (int i = 0; i < 6000; ++i) {
      std::string body = bodies[rng() % bodies.size()];
      int edits = 1 + static_cast<int>(rng() % 3);
      for (int e = 0; e < edits && !body.empty(); ++e) {
        size_t at = rng() % body.size();
        switch (rng() % 4) {
          case 0: body[at] = static_cast<char>(rng()); break;
          case 1: body.insert(at, 1, static_cast<char>(rng())); break;
          case 2: body.erase(at, 1); break;
          default: body[at] = static_cast<char>(body[at] ^ (1 << (rng() % 8))); break;
        }
      }
      if (kind == kEtf && !body.empty() && rng() % 4) body[0] = static_cast<char>(131);
      decode_any(kind, body);
    }
    // Random bytes, biased towards tags and small lengths so decoding gets somewhere.
    const std::vector<int> etf_bytes = {70, 77, 80, 88, 89, 90, 97, 98, 99, 100, 101, 102, 103, 104, 105,
                                        106, 107, 108, 109, 110, 111, 112, 113, 114, 115, 116, 118, 119, 120,
                                        0, 1, 2, 3, 5, 'b', 'y', 't', 'e', 's', 255};
    for (int i = 0; i < 6000; ++i) {
      std::string body;
      if (kind == kEtf) body.push_back(static_cast<char>(131));
      size_t len = rng() % 48;
      for (size_t j = 0; j < len; ++j) {
        if (kind == kEtf && rng() % 3) body.push_back(static_cast<char>(etf_bytes[rng() % etf_bytes.size()]));
        else if (rng() % 3 == 0) body.push_back(static_cast<char>(rng() % 4));
        else body.push_back(static_cast<char>(rng()));
      }
      decode_any(kind, body);
    }
  }
}

namespace {

// A random Python value whose round trip through either codec is the identity.
PyRef random_value(std::mt19937& rng, int depth) {
  int pick = static_cast<int>(rng() % (depth > 4 ? 8 : 12));
  switch (pick) {
    case 0: {
      static const int64_t edges[] = {0, 1, 127, 128, 255, 256, -1, -32, -33, 65535, 65536,
                                      INT32_MAX, INT32_MIN, int64_t{INT32_MAX} + 1, INT64_MAX, INT64_MIN};
      if (rng() % 2) return PyRef(PyLong_FromLongLong(edges[rng() % std::size(edges)]));
      return PyRef(PyLong_FromLongLong(static_cast<int64_t>((uint64_t{rng()} << 32) | rng()) >>
                                       (rng() % 64)));
    }
    case 1: {
      uint64_t bits = (uint64_t{rng()} << 32) | rng();
      double d;
      std::memcpy(&d, &bits, sizeof d);
      if (rng() % 4 == 0) d = static_cast<double>(rng() % 1000) / 8;
      return PyRef(PyFloat_FromDouble(d));  // nan and inf included
    }
    case 2: return PyRef::borrow(rng() % 2 ? Py_True : Py_False);
    case 3: return PyRef::borrow(Py_None);
    case 4:
    case 5: {
      static const char* pieces[] = {"a",  "ok",   "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80",
                                     " ", "\x01", "bytes"};
      std::string s;
      for (size_t n = rng() % 40; n > 0; --n) s += pieces[rng() % std::size(pieces)];
      return PyRef(PyUnicode_FromStringAndSize(s.data(), static_cast<Py_ssize_t>(s.size())));
    }
    case 6: {
      std::string s(1, static_cast<char>(0x80 | (rng() % 64)));  // never valid UTF-8
      for (size_t n = rng() % 40; n > 0; --n) s.push_back(static_cast<char>(rng()));
      return PyRef(PyBytes_FromStringAndSize(s.data(), static_cast<Py_ssize_t>(s.size())));
    }
    case 7: {
      // Leaked: they must not be released after Py_FinalizeEx.
      static PyObject* opaque[] = {ep::make_pid(kPid).release(), ep::make_pid(kOldPid).release(),
                                   ep::make_ref(kRef).release(), ep::make_term(kFun).release()};
      return PyRef::borrow(opaque[rng() % std::size(opaque)]);
    }
    case 8:
    case 9: {
      size_t n = rng() % 6;
      PyRef l(PyList_New(static_cast<Py_ssize_t>(n)));
      for (size_t i = 0; i < n; ++i)
        PyList_SET_ITEM(l.get(), static_cast<Py_ssize_t>(i), random_value(rng, depth + 1).release());
      return l;
    }
    case 10: {
      size_t n = rng() % 5;
      PyRef t(PyTuple_New(static_cast<Py_ssize_t>(n)));
      for (size_t i = 0; i < n; ++i)
        PyTuple_SET_ITEM(t.get(), static_cast<Py_ssize_t>(i), random_value(rng, depth + 1).release());
      return t;
    }
    default: {
      PyRef d(PyDict_New());
      for (size_t n = rng() % 5; n > 0; --n) {
        PyRef k = random_value(rng, 5);  // scalars only: hashable
        PyRef v = random_value(rng, depth + 1);
        if (PyFloat_Check(k.get()) || PyBool_Check(k.get())) continue;  // nan keys, 1 == True == 1.0
        PyDict_SetItem(d.get(), k.get(), v.get());
      }
      return d;
    }
  }
}

}  // namespace

TEST_CASE("random values round-trip through both codecs") {
  std::mt19937 rng(7);
  for (int i = 0; i < 3000; ++i) {
    PyRef v = random_value(rng, 0);
    INFO(repr(v.get()));
    PyRef via_etf = decode(kEtf, etf_enc(v.get()));
    CHECK_MESSAGE(strict_equal(via_etf.get(), v.get()), "etf gave " << repr(via_etf.get()));
    PyRef via_mp = decode(kMsgpack, mp_enc(v.get()));
    CHECK_MESSAGE(strict_equal(via_mp.get(), v.get()), "msgpack gave " << repr(via_mp.get()));
    // Re-encoding a decoded value gives the same bytes.
    CHECK(etf_enc(via_etf.get()) == etf_enc(v.get()));
    CHECK(mp_enc(via_mp.get()) == mp_enc(v.get()));
  }
}

TEST_CASE("a map key beyond int64 comes back as a charlist, which is no Python key (fuzz finding)") {
  // Found by tests/fuzz (seeds regress_bigint_key, regress_bigint_in_tuple_key): the decoded dict
  // is fine, but §2 sends an int beyond int64 to Erlang as the charlist of its digits, so the
  // re-encoded map has a list key, which Python refuses when it comes back. Documented, not a bug;
  // the harnesses allow exactly this.
  for (ep::CodecKind kind : {kEtf, kMsgpack}) {
    INFO(std::string(kind == kEtf ? "etf" : "msgpack"));
    for (const char* expr : {"{2**64: 1}", "{(1, 2**70): 1}"}) {
      INFO(expr);
      PyRef v = ev(expr);
      std::string body;
      bool ok;
      if (kind == kEtf) {
        ep::EtfWriter w(body);
        w.version();
        ok = w.python(v.get());
      } else {
        ok = ep::MsgpackWriter(body).python(v.get());
      }
      REQUIRE(ok);
      CHECK(decode_err(kind, body).rfind("unhashable map key of type '", 0) == 0);
    }
  }
}

TEST_CASE("decode_failure_reason: improper_list for an improper list, else bad_body") {
  const std::string improper = decode_err(kEtf, B({131, 104, 1, 108, 0, 0, 0, 1, 97, 1, 97, 2}));
  CHECK(improper == "improper list at byte 10");
  CHECK(std::string(ep::decode_failure_reason(improper)) == "improper_list");
  CHECK(std::string(ep::decode_failure_reason(decode_err(kEtf, B({131, 200})))) == "bad_body");
  CHECK(std::string(ep::decode_failure_reason(decode_err(kMsgpack, B({0x92, 1})))) == "bad_body");
  // Inside a msgpack ext 3 it is a malformed ext payload, which the Erlang side never writes.
  const std::string nested = decode_err(kMsgpack, B({0xc7, 10, 3, 131, 108, 0, 0, 0, 1, 97, 1, 97, 2}));
  CHECK(nested.rfind("bad ETF in ext 3", 0) == 0);
  CHECK(std::string(ep::decode_failure_reason(nested)) == "bad_body");
}

TEST_CASE("failed decodes leave no objects behind") {
  // Lists, tuples and dicts are tracked by the garbage collector: a container leaked by an error
  // path (a half-filled list, a map key waiting for its value, a nested tuple parse) would show as
  // more tracked objects after many failures.
  std::vector<std::pair<ep::CodecKind, std::string>> bad = {
      {kMsgpack, B({0x93, 0x91, 0x81, 0xa1, 'k'})},                  // truncated, key pending
      {kMsgpack, B({0x92, 0x81, 0x91, 0x01, 0x02})},                 // unhashable key
      {kMsgpack, B({0x91, 0xd5, 2, 0x91, 0x92, 0xc7, 1, 2, 0x93})},  // bad tuple inside a list
      {kMsgpack, B({0x92, 0x90, 0xd4, 9, 0})},                        // unknown ext after a list
      {kMsgpack, B({0x92, 0xc1})},                                    // 0xc1 inside an array
      {kEtf, B({131, 108, 0, 0, 0, 2, 116, 0, 0, 0, 0, 104, 1, 97, 1, 97, 2})},  // improper
      {kEtf, B({131, 104, 2, 108, 0, 0, 0, 1, 106, 106, 200})},       // unknown tag
  };
  std::string deep(ep::kMaxDepth + 5, static_cast<char>(0x91));
  deep.push_back(0);
  bad.push_back({kMsgpack, deep});
  PyRef gc(PyImport_ImportModule("gc"));
  REQUIRE(gc);
  auto tracked = [&] {
    PyRef objs(PyObject_CallMethod(gc.get(), "get_objects", nullptr));
    return objs ? PyList_GET_SIZE(objs.get()) : -1;
  };
  // A leak grows with the number of failures; whatever else the interpreter allocates does not.
  auto after_failures = [&](int rounds) {
    for (int i = 0; i < rounds; ++i)
      for (const auto& [kind, body] : bad) CHECK(!decode_err(kind, body).empty());
    return tracked();
  };
  (void)after_failures(10);  // warm up
  const Py_ssize_t base = tracked();
  const Py_ssize_t after_100 = after_failures(100);
  const Py_ssize_t after_400 = after_failures(300);
  // 300 more rounds: a leak of one container per failing body would add at least 300 (the
  // interpreter's own churn is a handful either way).
  CHECK(after_400 - after_100 < 100);
  CHECK(after_100 - base < 100);
}
