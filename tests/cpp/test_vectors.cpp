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

#include "codec.hpp"
#include "py_test_util.hpp"

using ep::PyRef;

namespace {

bool read_file(const std::string& path, std::string& out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  out.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  return true;
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
    CHECK_MESSAGE(ep_test::strict_equal(from_etf.get(), from_msgpack.get()),
                  "ETF gives " << ep_test::repr(from_etf.get()) << ", msgpack gives " << ep_test::repr(from_msgpack.get()));
    for (const std::string& flag : v.flags) {
      if (flag == "etf_exact") {
        CHECK(ep_test::hex(reencode<ep::EtfWriter>(from_etf.get())) == ep_test::hex(etf));
      } else if (flag == "msgpack_exact") {
        CHECK(ep_test::hex(reencode<ep::MsgpackWriter>(from_msgpack.get())) == ep_test::hex(msgpack));
      } else {
        FAIL_CHECK("unknown flag " << flag);
      }
    }
  }
}
