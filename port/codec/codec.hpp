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
#include <utility>
#include <vector>

#include "py_ref.hpp"

namespace ep {

// How deep containers (lists, tuples, maps, dicts) may nest, in both directions and both codecs: a
// term the port accepts from Erlang can always be sent back, and the other way round. The outermost
// container is level 1; a body nesting deeper is refused on decode ("term nested deeper than 1000
// levels") and a Python value on encode (RecursionError). Decoding and encoding recurse once per
// level, so the context threads' stacks are sized from it (PROTOCOL.md §2). Python's own default
// recursion limit is the same 1000.
inline constexpr int kMaxDepth = 1000;

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

// A Python container being written and the one holding it. When the nesting cap is hit this chain
// tells a cycle (ValueError) from merely deep data (RecursionError); nesting_error sets that and
// returns false.
struct EncodePath {
  PyObject* obj;
  const EncodePath* parent;
};

}  // namespace codec_detail

enum class CodecKind { Etf, Msgpack };

// Decodes one whole body. On failure returns an empty PyRef, sets `err` to a short readable reason
// ("truncated term at byte 12", "improper list at byte 9", "unhashable map key of type 'list'") and
// leaves no Python exception set.
PyRef etf_decode(std::string_view body, std::string& err);
PyRef msgpack_decode(std::string_view body, std::string& err);
inline PyRef decode_body(CodecKind kind, std::string_view body, std::string& err) {
  return kind == CodecKind::Etf ? etf_decode(body, err) : msgpack_decode(body, err);
}

// The protocol_error reason (PROTOCOL.md §4.3) for a body that failed to decode with `err`:
// "improper_list" for an improper list (the one refusal the Erlang side reports to the caller as
// {badarg, improper_list}, as the msgpack encoder already does there), else "bad_body".
inline const char* decode_failure_reason(std::string_view err) {
  return err.substr(0, 13) == "improper list" ? "improper_list" : "bad_body";
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

// ---------------------------------------------------------------------------------------------------
// Internals shared by etf_codec.cpp and msgpack_codec.cpp; not for other callers.
namespace codec_detail {

// Sets ValueError (the path holds a cycle) or RecursionError (it is merely deep) for a container
// found past the nesting limit, and returns false.
bool nesting_error(PyObject* obj, const EncodePath* parent, int limit);

// The Python value of an atom (shared by both codecs): true/false, none/nil/undefined, nan/infinity/
// neg_infinity, else str. `latin1` for the old ATOM_EXT/SMALL_ATOM_EXT names. Empty PyRef with a
// Python exception set if the name does not decode.
PyRef atom_value(std::string_view name, bool latin1);

// A binary's Python value: str if it is valid UTF-8, else bytes (§2). Empty PyRef with a Python
// exception set on failure (MemoryError).
PyRef text_or_bytes(const char* data, size_t n);

// Map keys repeat (a list of records has the same keys in every record), so the decoders keep the
// str objects of recent short keys and hand them out again: no new str, and its hash is cached.
// Entries point into the body being decoded, so a cache lives only as long as one decode.
class KeyCache {
 public:
  static constexpr size_t kMaxKey = 64;
  // kind tells apart encodings whose bytes alone are ambiguous (a binary "true" vs the atom true).
  PyRef find(std::string_view raw, int kind) const {
    const Entry& e = entries_[slot(raw)];
    if (e.value && e.kind == kind && e.raw == raw) return PyRef::borrow(e.value.get());
    return {};
  }
  void store(std::string_view raw, int kind, PyObject* str) {
    Entry& e = entries_[slot(raw)];
    e.raw = raw;
    e.kind = kind;
    e.value = PyRef::borrow(str);
  }

 private:
  static constexpr size_t kSlots = 32;
  static size_t slot(std::string_view raw) {
    const size_t n = raw.size();
    if (n == 0) return 0;
    const auto first = static_cast<unsigned char>(raw[0]), last = static_cast<unsigned char>(raw[n - 1]);
    return (n * 131 + first * 31 + last) % kSlots;
  }
  struct Entry {
    std::string_view raw;
    int kind = 0;
    PyRef value;
  };
  Entry entries_[kSlots];
};

// Containers can change while they are converted: in free-threaded builds other threads may
// mutate them, and in any build a finalizer run by an allocation can. The writers therefore hold a
// strong reference to each item and check sizes; free-threaded builds also lock while reading.
#ifdef Py_GIL_DISABLED
#define EP_BEGIN_CRITICAL_SECTION(op) Py_BEGIN_CRITICAL_SECTION(op)
#define EP_END_CRITICAL_SECTION() Py_END_CRITICAL_SECTION()
#else
#define EP_BEGIN_CRITICAL_SECTION(op) {
#define EP_END_CRITICAL_SECTION() }
#endif

// Sets RuntimeError("<what> changed size during conversion to an Erlang term") and returns false.
bool changed_size(const char* what);

// Sets the documented TypeError ("cannot convert Python object of type 'set' to an Erlang term") and
// returns false: the one text both writers give for a value with no Erlang form.
bool unconvertible(PyObject* obj);

// The decimal digits of an int beyond int64 (int.__repr__ itself, so a subclass's own __repr__, e.g.
// IntEnum's, does not leak in), which both writers send as a charlist (§2). Empty, with a Python
// exception set, on failure.
PyRef int_digits(PyObject* obj);

// Item i of a list as a strong reference; empty (no exception) once the list is shorter.
inline PyRef list_item(PyObject* list, Py_ssize_t i) {
#ifdef Py_GIL_DISABLED
  PyRef item(PyList_GetItemRef(list, i));
  if (!item) PyErr_Clear();
  return item;
#else
  if (i >= PyList_GET_SIZE(list)) return {};
  return PyRef::borrow(PyList_GET_ITEM(list, i));
#endif
}

// Calls f(key, value) for each item of a dict that had n items when its header was written. False
// if f fails (its exception set) or the dict changed size (RuntimeError).
template <class F>
bool for_each_dict_item(PyObject* dict, Py_ssize_t n, F&& f) {
  PyObject *k, *v;
  Py_ssize_t pos = 0;
#ifdef Py_GIL_DISABLED
  // Copy the items under the dict's lock; convert them after, without it.
  std::vector<std::pair<PyRef, PyRef>> items;
  EP_BEGIN_CRITICAL_SECTION(dict);
  items.reserve(static_cast<size_t>(PyDict_GET_SIZE(dict)));
  while (PyDict_Next(dict, &pos, &k, &v)) items.emplace_back(PyRef::borrow(k), PyRef::borrow(v));
  EP_END_CRITICAL_SECTION();
  if (static_cast<Py_ssize_t>(items.size()) != n) return changed_size("dict");
  for (auto& [key, value] : items)
    if (!f(key.get(), value.get())) return false;
  return true;
#else
  Py_ssize_t count = 0;
  while (PyDict_Next(dict, &pos, &k, &v)) {
    if (++count > n) break;
    PyRef key = PyRef::borrow(k), value = PyRef::borrow(v);
    if (!f(key.get(), value.get())) return false;
  }
  if (count != n || PyDict_GET_SIZE(dict) != n) return changed_size("dict");
  return true;
#endif
}

// Clears the pending Python exception and returns it as a short text ("MemoryError: ...").
std::string take_python_error();
// dict[key] = value for a decoded map; false with `err` set ("unhashable map key of type 'list'").
bool dict_set(PyObject* dict, PyObject* key, PyObject* value, std::string& err);

// What both body decoders share: the read position in the body, bounds checks, and the failures that
// set `err` to a readable reason ("truncated term at byte 12"). A decoder derives from it and adds
// its own codec-specific failures.
class DecodeCursor {
 protected:
  DecodeCursor(std::string_view body, std::string& err)
      : base_(reinterpret_cast<const unsigned char*>(body.data())),
        p_(base_),
        end_(base_ + body.size()),
        err_(err),
        body_size_(body.size()) {}

  // The run() shape: a body is exactly one value, read by `value()`, with no bytes after it.
  template <class F>
  PyRef whole_body(F&& value) {
    if (p_ == end_) return fail("empty body");
    PyRef v = value();
    if (!v) return {};
    if (p_ != end_) return fail_at("trailing bytes", p_);
    return v;
  }

  size_t offset(const unsigned char* q) const { return static_cast<size_t>(q - base_); }
  size_t remaining() const { return static_cast<size_t>(end_ - p_); }

  // Failures are out of line so that the recursive functions keep small stack frames.
  [[gnu::cold, gnu::noinline]] PyRef fail(const char* msg) {
    err_ = msg;
    return {};
  }
  [[gnu::cold, gnu::noinline]] PyRef fail_at(const char* what, const unsigned char* where) {
    err_ = what;
    err_ += " at byte ";
    err_ += std::to_string(offset(where));
    return {};
  }
  [[gnu::cold, gnu::noinline]] PyRef fail_python() {
    err_ = take_python_error();
    return {};
  }
  // Wraps a new reference from a CPython call, turning failure into err_.
  PyRef py(PyObject* o) {
    if (!o) return fail_python();
    return PyRef(o);
  }
  PyRef py(PyRef o) {
    if (!o) return fail_python();
    return o;
  }
  bool need(size_t n) {
    if (remaining() >= n) return true;
    fail_at("truncated term", p_);
    return false;
  }
  PyRef truncated() { return fail_at("truncated term", p_); }

  // Containers are allocated at their announced size. Every element of every container is a value
  // of at least one byte of its own, so over a whole valid body the announced sizes add up to at
  // most the body's length; a body announcing more is truncated or hostile. Checking the running
  // sum (not each size against the bytes left) keeps nested headers that each claim the rest of
  // the body from allocating body-length x depth slots.
  bool claim(size_t elements) {
    claimed_ += elements;
    return claimed_ <= body_size_;
  }

  const unsigned char* base_;
  const unsigned char* p_;
  const unsigned char* end_;  // a decoder may narrow it while it reads a nested payload
  std::string& err_;
  const size_t body_size_;
  size_t claimed_ = 0;  // elements announced by container headers so far (claim)
};
}  // namespace codec_detail

}  // namespace ep
