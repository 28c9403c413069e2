// Body codecs: ETF (default) and msgpack, both straight between bytes and Python objects.
//
// The wire mapping is protocol/PROTOCOL.md §1.2 and §2. Decoding builds Python objects directly from
// the bytes; encoding writes a Python object (or protocol envelope pieces) directly into a byte string.
// Every function here needs the GIL.
#pragma once

#include <Python.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "py_ref.hpp"

namespace ep {

namespace codec_detail {
// The containers a writer's typed API has open, innermost last, each with the number of values still
// to come: a writer closes a container itself once its last value is written (ETF: the list's NIL
// tail; msgpack: the tuple's ext header, whose length is known only then). Inline up to 16 levels.
struct OpenContainer {
  size_t remaining;
  size_t pos;  // msgpack tuple: offset of its reserved ext header
  int kind;
};
class OpenStack {
 public:
  bool empty() const { return n_ == 0; }
  OpenContainer& top() { return n_ <= kInline ? inline_[n_ - 1] : spill_.back(); }
  void push(const OpenContainer& c) {
    if (n_ < kInline) inline_[n_] = c;
    else spill_.push_back(c);
    ++n_;
  }
  void pop() {
    if (n_ > kInline) spill_.pop_back();
    --n_;
  }

 private:
  static constexpr size_t kInline = 16;
  OpenContainer inline_[kInline];
  std::vector<OpenContainer> spill_;
  size_t n_ = 0;
};

// The Python value of an atom (shared by both codecs): true/false, none/nil/undefined, nan/infinity/
// neg_infinity, else str. `latin1` for the old ATOM_EXT/SMALL_ATOM_EXT names. Empty PyRef with a
// Python exception set if the name does not decode.
PyRef atom_value(std::string_view name, bool latin1);

// A Python container being written and the one holding it. When the nesting cap is hit this chain
// tells a cycle (ValueError) from merely deep data (RecursionError); nesting_error sets that and
// returns false.
struct EncodePath {
  PyObject* obj;
  const EncodePath* parent;
};
bool nesting_error(PyObject* obj, const EncodePath* parent, int limit);

// Clears the pending Python exception and returns it as a short text ("MemoryError: ...").
std::string take_python_error();
// dict[key] = value for a decoded map; false with `err` set ("unhashable map key of type 'list'").
bool dict_set(PyObject* dict, PyObject* key, PyObject* value, std::string& err);
}  // namespace codec_detail

enum class CodecKind { Etf, Msgpack };

// Decodes one whole body. On failure returns an empty PyRef, sets `err` to a short readable reason
// ("truncated term at byte 12", "improper list", "unhashable map key of type 'list'") and leaves no
// Python exception set.
PyRef etf_decode(std::string_view body, std::string& err);
PyRef msgpack_decode(std::string_view body, std::string& err);
inline PyRef decode_body(CodecKind kind, std::string_view body, std::string& err) {
  return kind == CodecKind::Etf ? etf_decode(body, err) : msgpack_decode(body, err);
}

// Term writers append to `out`. Envelope pieces are written with the typed methods; a Python value
// with python(). Both classes have the same methods so the dispatcher can be a template over them.
//
// Lists: list(n) then n elements then list_end() (list(0) writes the empty list; list_end() is then a
// no-op, but calling it is allowed). The writers count the values written into each open
// container and close it after its last one, so list_end() never writes anything and may be omitted.
class EtfWriter {
 public:
  explicit EtfWriter(std::string& out) : out_(out) {}
  void version();  // the 131 version byte; call once at the start of a body
  void tuple(size_t arity);
  void list(size_t n);
  void list_end();
  void map(size_t n);
  void atom(std::string_view name);
  void str(std::string_view utf8);     // a text binary (msgpack: str)
  void bytes(std::string_view raw);    // a raw binary (msgpack: bin)
  void integer(int64_t v);
  void float64(double v);              // nan/inf are written as the atoms nan/infinity/neg_infinity
  void boolean(bool v);
  void none();                         // the atom none
  void charlist(std::string_view chars);
  void opaque(std::string_view etf_fragment);  // a term's ETF bytes without the 131 version byte
  // Writes a Python value per PROTOCOL.md §2. Returns false with a Python exception set (TypeError
  // for an unconvertible object, ValueError for a cycle, RecursionError past the depth cap); `out`
  // is then left partially written and must be discarded by the caller.
  bool python(PyObject* obj);

 private:
  using Path = codec_detail::EncodePath;
  bool python_at(PyObject* obj, const Path* parent, int depth);
  bool python_slow(PyObject* obj, const Path* parent, int depth);
  bool put_long(PyObject* obj);
  bool put_list(PyObject* obj, const Path* parent, int depth);
  bool put_tuple(PyObject* obj, const Path* parent, int depth);
  bool put_dict(PyObject* obj, const Path* parent, int depth);
  void element() {
    if (!open_.empty()) --open_.top().remaining;
  }
  void done() {
    if (!open_.empty()) close_finished();
  }
  void close_finished();
  void container(size_t n, int kind);
  std::string& out_;
  codec_detail::OpenStack open_;
};

class MsgpackWriter {
 public:
  explicit MsgpackWriter(std::string& out) : out_(out) {}
  void version() {}
  void tuple(size_t arity);
  void list(size_t n);
  void list_end() {}
  void map(size_t n);
  void atom(std::string_view name);
  void str(std::string_view utf8);
  void bytes(std::string_view raw);
  void integer(int64_t v);
  void float64(double v);
  void boolean(bool v);
  void none();
  void charlist(std::string_view chars);
  void opaque(std::string_view etf_fragment);
  bool python(PyObject* obj);

 private:
  using Path = codec_detail::EncodePath;
  bool python_at(PyObject* obj, const Path* parent, int depth);
  bool python_slow(PyObject* obj, const Path* parent, int depth);
  bool put_long(PyObject* obj);
  bool put_list(PyObject* obj, const Path* parent, int depth);
  bool put_tuple(PyObject* obj, const Path* parent, int depth);
  bool put_dict(PyObject* obj, const Path* parent, int depth);
  void array_header(size_t n);
  void map_header(size_t n);
  void ext(int8_t type, std::string_view payload);
  size_t ext_begin();                          // reserves a header; returns the payload offset
  void ext_end(size_t payload_pos, int8_t type);  // writes the header, closing the gap
  void element() {
    if (!open_.empty()) --open_.top().remaining;
  }
  void done() {
    if (!open_.empty()) close_finished();
  }
  void close_finished();
  void container(size_t n, int kind, size_t pos = 0);
  std::string& out_;
  codec_detail::OpenStack open_;
};

}  // namespace ep
