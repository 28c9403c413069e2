// The body of the two decoder harnesses: decode the input; a failure must leave no Python exception
// set; a success must re-encode (what decodes can always be sent back, kMaxDepth included) and the
// re-encoded bytes must decode again (but see the bigint key below). Any violation aborts, which libFuzzer reports as a crash.
#pragma once

#include <Python.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "codec.hpp"
#include "embed_python.hpp"

namespace ep_fuzz {

[[noreturn]] inline void broken(const char* what, const std::string& detail) {
  std::fprintf(stderr, "fuzz invariant broken: %s: %s\n", what, detail.c_str());
  std::abort();
}

template <class Writer>
inline void decode_one(ep::CodecKind kind, const uint8_t* data, size_t size) {
  std::string_view body(reinterpret_cast<const char*>(data), size);
  std::string err;
  ep::PyRef v = ep::decode_body(kind, body, err);
  if (PyErr_Occurred()) broken("decode left a Python exception set", err);
  if (!v) {
    if (err.empty()) broken("decode failed without a reason", "");
    return;
  }
  std::string out;
  Writer w(out);
  w.version();
  if (!w.python(v.get())) broken("a decoded value does not re-encode", ep::codec_detail::take_python_error());
  std::string err2;
  ep::PyRef again = ep::decode_body(kind, out, err2);
  // The one documented exception (PROTOCOL.md §2): an int beyond int64 goes back to Erlang as the
  // charlist of its digits, which cannot be a Python dict key (nor can a tuple holding one) when it comes back.
  if (!again && err2.rfind("unhashable map key", 0) != 0) broken("re-encoded bytes do not decode", err2);
}

}  // namespace ep_fuzz

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (!ep_embed::start_python()) std::abort();
  return 0;
}
