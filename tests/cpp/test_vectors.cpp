// Golden vectors (PROTOCOL.md §5): protocol/vectors/MANIFEST lists `name flag...`; <name>.etf and
// <name>.msgpack must decode to equal Python values, and a flag etf_exact / msgpack_exact means that
// re-encoding the value gives the file's bytes again.
//
// Paths are relative to the working directory (the repository root); EP_VECTORS_DIR overrides the
// directory. A missing or empty MANIFEST fails the test.
#include <doctest/doctest.h>

#include <Python.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "../../port/codec.hpp"

using ep::PyRef;

namespace {

bool read_file(const std::string& path, std::string& out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  out.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  return true;
}

std::string hex(const std::string& s) {
  static const char* digits = "0123456789abcdef";
  std::string h;
  for (unsigned char c : s) {
    if (!h.empty()) h.push_back(' ');
    h.push_back(digits[c >> 4]);
    h.push_back(digits[c & 15]);
  }
  return h;
}

std::string repr(PyObject* o) {
  PyRef r(PyObject_Repr(o));
  if (!r) {
    PyErr_Clear();
    return "<repr failed>";
  }
  const char* s = PyUnicode_AsUTF8(r.get());
  std::string out = s ? s : "";
  return out.size() > 300 ? out.substr(0, 300) + "..." : out;
}

// Equal values of identical types all the way down; nan equals nan, -0.0 differs from 0.0.
bool same_value(PyObject* a, PyObject* b) {
  if (Py_TYPE(a) != Py_TYPE(b)) return false;
  if (PyFloat_CheckExact(a)) {
    double x = PyFloat_AS_DOUBLE(a), y = PyFloat_AS_DOUBLE(b);
    if (std::isnan(x) || std::isnan(y)) return std::isnan(x) && std::isnan(y);
    return x == y && std::signbit(x) == std::signbit(y);
  }
  if (PyList_CheckExact(a) || PyTuple_CheckExact(a)) {
    Py_ssize_t n = PySequence_Fast_GET_SIZE(a);
    if (n != PySequence_Fast_GET_SIZE(b)) return false;
    for (Py_ssize_t i = 0; i < n; ++i)
      if (!same_value(PySequence_Fast_GET_ITEM(a, i), PySequence_Fast_GET_ITEM(b, i))) return false;
    return true;
  }
  if (PyDict_CheckExact(a)) {
    if (PyDict_GET_SIZE(a) != PyDict_GET_SIZE(b)) return false;
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(a, &pos, &k, &v)) {
      PyObject* other = PyDict_GetItemWithError(b, k);
      if (!other) {
        PyErr_Clear();
        return false;
      }
      if (!same_value(v, other)) return false;
    }
    return true;
  }
  int r = PyObject_RichCompareBool(a, b, Py_EQ);
  if (r < 0) PyErr_Clear();
  return r == 1;
}

struct Vector {
  std::string name;
  std::vector<std::string> flags;
};

template <class Writer>
std::string reencode(PyObject* value) {
  std::string out;
  Writer w(out);
  w.version();
  if (!w.python(value)) {
    std::string e = ep::codec_detail::take_python_error();
    return "<encoding failed: " + e + ">";
  }
  return out;
}

}  // namespace

TEST_CASE("golden vectors decode alike in both codecs and re-encode exactly") {
  const char* env = std::getenv("EP_VECTORS_DIR");
  const std::string dir = env && *env ? env : "protocol/vectors";
  std::string manifest;
  REQUIRE_MESSAGE(read_file(dir + "/MANIFEST", manifest),
                  "cannot read " << dir << "/MANIFEST (tests run from the repository root)");

  std::vector<Vector> vectors;
  std::istringstream lines(manifest);
  for (std::string line; std::getline(lines, line);) {
    std::istringstream words(line);
    Vector v;
    if (!(words >> v.name) || v.name[0] == '#') continue;
    for (std::string flag; words >> flag;) v.flags.push_back(flag);
    vectors.push_back(std::move(v));
  }
  REQUIRE_MESSAGE(!vectors.empty(), dir << "/MANIFEST lists no vectors");

  for (const Vector& v : vectors) {
    INFO("vector " << v.name);
    std::string etf, msgpack;
    REQUIRE_MESSAGE(read_file(dir + "/" + v.name + ".etf", etf), "missing " << v.name << ".etf");
    REQUIRE_MESSAGE(read_file(dir + "/" + v.name + ".msgpack", msgpack), "missing " << v.name << ".msgpack");
    std::string etf_err, msgpack_err;
    PyRef from_etf = ep::etf_decode(etf, etf_err);
    PyRef from_msgpack = ep::msgpack_decode(msgpack, msgpack_err);
    CHECK_MESSAGE(from_etf, "ETF decode: " << etf_err);
    CHECK_MESSAGE(from_msgpack, "msgpack decode: " << msgpack_err);
    if (!from_etf || !from_msgpack) continue;
    CHECK_MESSAGE(same_value(from_etf.get(), from_msgpack.get()),
                  "ETF gives " << repr(from_etf.get()) << ", msgpack gives " << repr(from_msgpack.get()));
    for (const std::string& flag : v.flags) {
      if (flag == "etf_exact") {
        CHECK(hex(reencode<ep::EtfWriter>(from_etf.get())) == hex(etf));
      } else if (flag == "msgpack_exact") {
        CHECK(hex(reencode<ep::MsgpackWriter>(from_msgpack.get())) == hex(msgpack));
      } else {
        FAIL_CHECK("unknown flag " << flag);
      }
    }
  }
}
