// Decode microbenchmark for callgrind (instruction counts are deterministic; wall time on a shared
// machine is not):
//   valgrind --tool=callgrind --toggle-collect='bench_decode*' _build/<meson>/codec_decode_bench
// decodes every golden vector (protocol/vectors, run from the repository root) and a large mixed
// list, ROUNDS times, in both codecs. Prints the number of values decoded so nothing is optimised out.
#include <Python.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "codec.hpp"
#include "erlang_types.hpp"

namespace {

constexpr int kRounds = 10;

bool read_file(const std::string& path, std::string& out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  out.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  return true;
}

// 10000 records like a typical result: a map with short keys, ints, floats, text, a nested list.
const char* kLargeValue =
    "[{'id': i, 'name': 'user%d' % i, 'score': i * 0.5, 'tags': ['a', 'b', i], 'ok': i % 2 == 0,"
    "  'big': 2**40 + i, 'neg': -i, 'blob': b'\\x00\\xff' * 4} for i in range(10000)]";

template <class Writer>
std::string encode(PyObject* v) {
  std::string out;
  Writer w(out);
  w.version();
  if (!w.python(v)) {
    PyErr_Print();
    std::exit(1);
  }
  return out;
}

size_t decode_all(ep::CodecKind kind, const std::vector<std::string>& bodies) {
  size_t n = 0;
  for (int r = 0; r < kRounds; ++r) {
    for (const std::string& b : bodies) {
      std::string err;
      ep::PyRef v = ep::decode_body(kind, b, err);
      if (!v) {
        std::fprintf(stderr, "decode failed: %s\n", err.c_str());
        std::exit(1);
      }
      ++n;
    }
  }
  return n;
}

// One symbol per codec, for callgrind's --toggle-collect.
[[gnu::noinline]] size_t bench_decode_etf(const std::vector<std::string>& b) {
  return decode_all(ep::CodecKind::Etf, b);
}
[[gnu::noinline]] size_t bench_decode_msgpack(const std::vector<std::string>& b) {
  return decode_all(ep::CodecKind::Msgpack, b);
}

// As ep_embed::start_python (isolated config), but with a fixed string hash seed: with a random
// one, dict insertions collide differently from run to run and the counts vary by about 2%.
bool start_python() {
  PyConfig config;
  PyConfig_InitIsolatedConfig(&config);
  config.use_hash_seed = 1;
  config.hash_seed = 0;
#ifdef EP_PYTHON_HOME
  PyConfig_SetBytesString(&config, &config.home, EP_PYTHON_HOME);
#endif
  PyStatus status = Py_InitializeFromConfig(&config);
  PyConfig_Clear(&config);
  if (PyStatus_Exception(status)) {
    std::fprintf(stderr, "Python failed to start: %s\n", status.err_msg ? status.err_msg : "?");
    return false;
  }
  if (!ep::erlang_types_ready()) {
    PyErr_Print();
    return false;
  }
  return true;
}

}  // namespace

int main() {
  if (!start_python()) return 3;
  std::string manifest;
  if (!read_file("protocol/vectors/MANIFEST", manifest)) {
    std::fprintf(stderr, "run from the repository root (protocol/vectors/MANIFEST)\n");
    return 2;
  }
  std::vector<std::string> etf, msgpack;
  std::istringstream lines(manifest);
  for (std::string line; std::getline(lines, line);) {
    std::istringstream words(line);
    std::string name;
    if (!(words >> name) || name[0] == '#') continue;
    std::string e, m;
    if (!read_file("protocol/vectors/" + name + ".etf", e) ||
        !read_file("protocol/vectors/" + name + ".msgpack", m))
      return 2;
    etf.push_back(e);
    msgpack.push_back(m);
  }
  ep::PyRef globals(PyDict_New());
  PyDict_SetItemString(globals.get(), "__builtins__", PyEval_GetBuiltins());
  ep::PyRef large(PyRun_String(kLargeValue, Py_eval_input, globals.get(), globals.get()));
  if (!large) {
    PyErr_Print();
    return 1;
  }
  etf.push_back(encode<ep::EtfWriter>(large.get()));
  msgpack.push_back(encode<ep::MsgpackWriter>(large.get()));
  const size_t n = bench_decode_etf(etf) + bench_decode_msgpack(msgpack);
  std::printf("decoded %zu bodies (%zu vectors + 1 large list, %d rounds, both codecs)\n", n,
              etf.size() - 1, kRounds);
  return 0;
}
