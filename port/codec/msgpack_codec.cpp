// msgpack body codec, straight to and from Python objects (PROTOCOL.md §1.2, §2).
//
// Decoding goes through msgpack-cxx's visitor parser, straight to PyObjects with no msgpack::object
// tree. Encoding stays hand-written: msgpack-cxx's packer writes a float with an integral value
// (1.0) as an integer, so a Python float would come back to Erlang as an integer, and a tuple's ext
// header (written before its payload, whose size is known only after) is back-patched in place.
// Extension types: 1 atom (UTF-8 name), 2 tuple (payload: one array), 3 opaque term (payload:
// term_to_binary bytes), 4 bigint (decimal).
#include <climits>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include <msgpack.hpp>  // MSGPACK_NO_BOOST comes from the build (meson.build: msgpack_dep)

#include "big_bytes.hpp"
#include "codec.hpp"
#include "erlang_types.hpp"

namespace ep {
namespace {

constexpr int8_t kExtAtom = 1;
constexpr int8_t kExtTuple = 2;
constexpr int8_t kExtEtf = 3;
constexpr int8_t kExtBigint = 4;

constexpr int kPlainContainer = 0;
constexpr int kTupleContainer = 2;  // gets its ext header when closed

inline uint32_t be16(const unsigned char* p) { return (uint32_t{p[0]} << 8) | p[1]; }
inline uint32_t be32(const unsigned char* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}

// ---------------------------------------------------------------------------------------------------
// Decoding: msgpack-cxx's parser (msgpack::parse with a visitor: no msgpack::object tree) reads the
// bytes; the visitor builds the Python objects as the parser reports them, keeping the containers
// being filled on its own stack. Ext payloads are ours to read: a tuple's (ext 2) is one array,
// parsed by a nested msgpack::parse; atoms, opaque ETF terms and bigints are read here.

class Decoder;

// One msgpack::parse: of the body, or of a tuple ext's payload (`tuple`: its top array becomes a
// tuple). The containers open in this parse are on open_; they nest at most kMaxDepth levels
// counting those of the parses around it (`depth`), so open_ is bounded by kMaxDepth too.
//
// The parser keeps its own stack of open containers and says, through the *_item/*_key/*_value
// callbacks, where each finished value belongs, so the visitor does not work that out again: a
// visit_* leaves its value in value_, and the end_* callback that follows stores it in the
// container on top of open_ (end_array_item, end_map_key, end_map_value); at the top level it stays
// there for take().
class Visitor : public msgpack::null_visitor {
 public:
  Visitor(Decoder& d, int depth, bool tuple) : d_(d), depth_(depth), tuple_(tuple) {}
  Visitor(const Visitor&) = delete;
  Visitor& operator=(const Visitor&) = delete;
  ~Visitor() {
    // After a failure: the containers still open (their unfilled slots are NULL, which list and
    // tuple deallocation allow), a pending key and the value not yet stored.
    for (const Open& o : open_) {
      Py_XDECREF(o.key);
      Py_DECREF(o.obj);
    }
    Py_XDECREF(value_);
  }

  PyRef take() { return PyRef(std::exchange(value_, nullptr)); }
  // Where the parser found a malformed byte, if it did (else the parse's end offset is used).
  size_t error_at(size_t end) const { return error_at_ == kNone ? end : error_at_; }

  bool visit_nil() { return set(Py_NewRef(Py_None)); }
  bool visit_boolean(bool v) { return set(Py_NewRef(v ? Py_True : Py_False)); }
  bool visit_positive_integer(uint64_t v) {
    // PyLong_FromLong hands out the cached small ints without a call chain.
    return py(v <= static_cast<uint64_t>(LONG_MAX) ? PyLong_FromLong(static_cast<long>(v))
                                                    : PyLong_FromUnsignedLongLong(v));
  }
  // Every signed format (int 8..64, negative fixint), whatever its sign.
  bool visit_negative_integer(int64_t v) { return py(PyLong_FromLongLong(v)); }
  bool visit_float32(float v) { return py(PyFloat_FromDouble(v)); }
  bool visit_float64(double v) { return py(PyFloat_FromDouble(v)); }
  bool visit_str(const char* v, uint32_t n);
  bool visit_bin(const char* v, uint32_t n) { return py(big_bytes(v, n)); }
  bool visit_ext(const char* v, uint32_t n);

  bool start_array(uint32_t n);
  bool start_array_item() {
    key_next_ = false;
    return true;
  }
  bool end_array_item() {
    *open_.back().next++ = std::exchange(value_, nullptr);
    return true;
  }
  bool end_array() { return close(); }
  bool start_map(uint32_t n);
  bool start_map_key() {
    key_next_ = true;
    return true;
  }
  bool end_map_key() {
    open_.back().key = std::exchange(value_, nullptr);
    return true;
  }
  bool start_map_value() {
    key_next_ = false;
    return true;
  }
  bool end_map_value();
  bool end_map() { return close(); }
  void parse_error(size_t at, size_t);
  void insufficient_bytes(size_t, size_t at);

 private:
  struct Open {
    PyObject* obj;    // owned
    PyObject** next;  // list/tuple: its next slot
    PyObject* key;    // dict: the key read, waiting for its value (owned)
  };
  // A value for the end_* callback that follows (the parser calls one after every value).
  bool set(PyObject* v) {
    value_ = v;
    return true;
  }
  // A new reference from CPython (empty: its exception becomes the error).
  bool py(PyObject* v);
  // A value from our own readers (empty: they have set the error).
  bool own(PyRef v);
  bool close() {
    value_ = open_.back().obj;
    open_.pop_back();
    return true;
  }
  bool open(size_t claim);

  Decoder& d_;
  const int depth_;
  const bool tuple_;
  bool key_next_ = false;  // the value being parsed is a map key (short ones: the key cache)
  PyObject* value_ = nullptr;  // owned
  std::vector<Open> open_;
  static constexpr size_t kNone = ~size_t{0};
  size_t error_at_ = kNone;
};

class Decoder {
 public:
  Decoder(std::string_view body, std::string& err)
      : base_(body.data()), size_(body.size()), err_(err) {}

  PyRef run() {
    if (size_ == 0) return fail("empty body");
    return parse(base_, size_, 0, false, "trailing bytes");
  }

 private:
  friend class Visitor;

  size_t offset(const char* q) const { return static_cast<size_t>(q - base_); }

  // Parses exactly one value from [data, data + n) with a fresh visitor. flatten: msgpack-cxx's
  // state machine, its after-visit step and the visitor's callbacks become one loop (GCC otherwise
  // keeps after_visit_proc and the visit_* functions out of line: calls per value). ext() stays out
  // of line, and with it the nested parse of a tuple's payload.
  [[gnu::flatten]] PyRef parse(const char* data, size_t n, int depth, bool tuple, const char* trailing) {
    Visitor v(*this, depth, tuple);
    size_t off = 0;
    const bool ok = msgpack::parse(data, n, off, v);
    if (!ok) {
      // A visitor failure that could not know its offset gets it here, from the parser.
      if (err_.empty()) fail_here("truncated term");  // the parser ran out of bytes
      if (err_at_) at(offset(data) + v.error_at(off));
      return {};
    }
    if (off != n) return fail_at(trailing, offset(data) + off);
    return v.take();
  }

  [[gnu::cold, gnu::noinline]] PyRef fail(const char* msg) {
    err_ = msg;
    return {};
  }
  [[gnu::cold, gnu::noinline]] PyRef fail_at(const char* what, size_t where) {
    err_ = what;
    at(where);
    return {};
  }
  // The innermost failure sets err_; the parses around it must not overwrite it.
  void at(size_t where) {
    err_ += " at byte ";
    err_ += std::to_string(where);
    err_at_ = false;
  }
  // A failure whose offset the visitor does not know: the enclosing parse() appends it.
  [[gnu::cold, gnu::noinline]] bool fail_here(const char* msg) {
    err_ = msg;
    err_at_ = true;
    return false;
  }
  [[gnu::cold, gnu::noinline]] bool fail_python() {
    err_ = codec_detail::take_python_error();
    return false;
  }
  // codec_detail::dict_set's failure half (the same texts), for the inlined PyDict_SetItem.
  [[gnu::cold, gnu::noinline]] bool dict_set_failed(PyObject* key) {
    if (PyErr_ExceptionMatches(PyExc_TypeError)) {
      PyErr_Clear();
      err_ = std::string("unhashable map key of type '") + Py_TYPE(key)->tp_name + "'";
    } else {
      err_ = codec_detail::take_python_error();
    }
    return false;
  }
  [[gnu::cold, gnu::noinline]] bool too_deep() {
    err_ = "term nested deeper than " + std::to_string(kMaxDepth) + " levels";
    return false;
  }
  // Every element of every container is a value of at least one byte of its own, so the sizes the
  // headers announce add up to at most the body's length; more means truncated or hostile. Checked
  // before a container is allocated at its announced size, this bounds what a body makes us allocate
  // by its length (nested headers that each claim the rest of the body would multiply it).
  bool claim(size_t elements) {
    claimed_ += elements;
    return claimed_ <= size_;
  }

  [[gnu::noinline]] PyRef ext(const char* v, uint32_t n, int depth);
  PyRef tuple(const char* payload, size_t n, int depth);
  PyRef bytes_pair(const unsigned char* q, size_t avail, bool& matched);
  PyRef etf(std::string_view data, const char* payload);
  PyRef bigint(std::string_view digits, const char* payload);

  const char* base_;
  const size_t size_;
  std::string& err_;
  bool err_at_ = false;
  size_t claimed_ = 0;
  codec_detail::KeyCache keys_;
};

[[gnu::always_inline]] inline bool Visitor::py(PyObject* v) { return v ? set(v) : d_.fail_python(); }
[[gnu::always_inline]] inline bool Visitor::own(PyRef v) { return v ? set(v.release()) : false; }

bool Visitor::open(size_t claim) {
  if (depth_ + static_cast<int>(open_.size()) >= kMaxDepth) return d_.too_deep();
  if (!d_.claim(claim)) return d_.fail_here("truncated term");
  return true;
}

bool Visitor::start_array(uint32_t n) {
  if (!open(n)) return false;
  PyObject* o;
  PyObject** items;
  if (tuple_ && open_.empty()) {
    o = PyTuple_New(n);
    if (!o) return d_.fail_python();
    items = reinterpret_cast<PyTupleObject*>(o)->ob_item;
  } else {
    o = PyList_New(n);
    if (!o) return d_.fail_python();
    items = reinterpret_cast<PyListObject*>(o)->ob_item;
  }
  open_.push_back({o, items, nullptr});
  return true;
}

bool Visitor::start_map(uint32_t n) {
  if (!open(size_t{2} * n)) return false;
  PyObject* o = PyDict_New();
  if (!o) return d_.fail_python();
  open_.push_back({o, nullptr, nullptr});
  return true;
}

bool Visitor::end_map_value() {
  Open& top = open_.back();
  PyRef key(std::exchange(top.key, nullptr)), value(std::exchange(value_, nullptr));
  // PyDict_SetItem inline, codec_detail::dict_set (its error text) only once it has failed: the
  // call per map entry was a measurable part of decoding a list of records.
  if (PyDict_SetItem(top.obj, key.get(), value.get()) == 0) [[likely]] return true;
  return d_.dict_set_failed(key.get());
}

// Whether s[0..n) is all ASCII, for 2 <= n <= kShortStr: a few (overlapping) word loads.
inline bool short_ascii(const char* s, size_t n) {
  uint64_t acc;
  if (n >= 8) {
    acc = 0;
    uint64_t w;
    for (size_t i = 0; i + 8 <= n; i += 8) {
      std::memcpy(&w, s + i, 8);
      acc |= w;
    }
    std::memcpy(&w, s + n - 8, 8);
    acc |= w;
  } else if (n >= 4) {
    uint32_t a, b;
    std::memcpy(&a, s, 4);
    std::memcpy(&b, s + n - 4, 4);
    acc = a | b;
  } else {
    acc = static_cast<unsigned char>(s[0]) | static_cast<unsigned char>(s[1]) |
          static_cast<unsigned char>(s[n - 1]);
  }
  return (acc & 0x8080808080808080u) == 0;
}

// A str's Python value. Short ASCII text (map keys, names, tags: most strs) is copied straight into
// a new str, the object PyUnicode_DecodeUTF8 would build, without the UTF-8 pre-scan and decoder
// calls that text_or_bytes goes through. One ASCII character or none: CPython's shared strs, as
// PyUnicode_DecodeUTF8 gives them.
constexpr size_t kShortStr = 64;
inline PyObject* str_value(const char* v, size_t n) {
  if (n >= 2 && n <= kShortStr) {
    if (short_ascii(v, n)) {
      PyObject* s = PyUnicode_New(static_cast<Py_ssize_t>(n), 127);  // writes the terminating NUL
      if (s) std::memcpy(PyUnicode_1BYTE_DATA(s), v, n);
      return s;
    }
  } else if (n == 1 && static_cast<unsigned char>(v[0]) < 0x80) {
    return PyUnicode_FromOrdinal(static_cast<unsigned char>(v[0]));
  } else if (n == 0) {
    return PyUnicode_New(0, 0);
  }
  // Not valid UTF-8: the Erlang side sends such binaries as bin, but be lenient and give bytes.
  return codec_detail::text_or_bytes(v, n).release();
}

bool Visitor::visit_str(const char* v, uint32_t n) {
  if (key_next_ && n <= codec_detail::KeyCache::kMaxKey) {
    std::string_view raw(v, n);
    if (PyRef hit = d_.keys_.find(raw, 0)) return set(hit.release());
    PyObject* k = str_value(v, n);
    if (!k) return d_.fail_python();
    if (PyUnicode_CheckExact(k)) d_.keys_.store(raw, 0, k);
    return set(k);
  }
  return py(str_value(v, n));
}

bool Visitor::visit_ext(const char* v, uint32_t n) {
  // v[0] is the type byte, then n - 1 payload bytes. Atoms as map keys come from the key cache.
  const int depth = depth_ + static_cast<int>(open_.size());
  if (key_next_ && n >= 1 && static_cast<int8_t>(v[0]) == kExtAtom && n - 1 <= codec_detail::KeyCache::kMaxKey) {
    std::string_view raw(v + 1, n - 1);
    if (PyRef hit = d_.keys_.find(raw, 1)) return set(hit.release());
    PyRef k = d_.ext(v, n, depth);
    if (k && PyUnicode_CheckExact(k.get())) d_.keys_.store(raw, 1, k.get());  // not true, none...
    return own(std::move(k));
  }
  return own(d_.ext(v, n, depth));
}

void Visitor::parse_error(size_t at, size_t) {
  // 0xc1, the one byte msgpack leaves unused. `at` is within this parse: parse() makes it absolute.
  d_.fail_here("invalid msgpack byte 0xc1");
  error_at_ = at;
}

void Visitor::insufficient_bytes(size_t, size_t) {}  // parse() reports "truncated term" at its end

// `v` is at the type byte; `depth` is the level the value sits at.
PyRef Decoder::ext(const char* v, uint32_t n, int depth) {
  const int8_t type = static_cast<int8_t>(v[0]);
  const char* payload = v + 1;
  std::string_view data(payload, n - 1);
  switch (type) {
    case kExtAtom: {
      PyRef a = codec_detail::atom_value(data, false);
      if (a) return a;
      if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
        fail_python();
        return {};
      }
      PyErr_Clear();
      return fail_at("invalid UTF-8 in atom", offset(payload));
    }
    case kExtTuple:
      return tuple(payload, data.size(), depth);
    case kExtEtf:
      return etf(data, payload);
    case kExtBigint:
      return bigint(data, payload);
    default:
      err_ = "unknown ext type " + std::to_string(type);
      at(offset(v));
      return {};
  }
}

// Ext 2: the payload is exactly one array, whose elements become the tuple.
PyRef Decoder::tuple(const char* payload, size_t n, int depth) {
  if (depth >= kMaxDepth) {
    too_deep();
    return {};
  }
  const auto* q = reinterpret_cast<const unsigned char*>(payload);
  if (n == 0) return fail_at("truncated term", offset(payload));
  const unsigned b = q[0];
  if (!((b >= 0x90 && b <= 0x9f) || b == 0xdc || b == 0xdd))
    return fail_at("tuple ext does not hold an array", offset(payload));
  if (b == 0x92) {  // {bytes, B} has two elements
    bool matched = false;
    PyRef pair = bytes_pair(q + 1, n - 1, matched);
    if (matched || !err_.empty()) return pair;
  }
  return parse(payload, n, depth, true, "trailing bytes in tuple ext");
}

// {bytes, B}: first element the atom `bytes` (ext 1), second a str or bin, filling the payload ->
// always bytes. Hand-written: the visitor could only tell after building a str from B. `matched`
// only for that exact shape (anything else is left to the general path, which reports errors).
PyRef Decoder::bytes_pair(const unsigned char* q, size_t avail, bool& matched) {
  size_t len, hdr;
  if (avail < 1) return {};
  const unsigned b = q[0];
  if (b >= 0xd4 && b <= 0xd8) {
    len = size_t{1} << (b - 0xd4);
    hdr = 2;
  } else if (b == 0xc7 && avail >= 2) {
    len = q[1];
    hdr = 3;
  } else if (b == 0xc8 && avail >= 3) {
    len = be16(q + 1);
    hdr = 4;
  } else if (b == 0xc9 && avail >= 5) {
    len = be32(q + 1);
    hdr = 6;
  } else {
    return {};
  }
  if (len != 5 || avail < hdr + 5 || static_cast<int8_t>(q[hdr - 1]) != kExtAtom ||
      std::memcmp(q + hdr, "bytes", 5) != 0)
    return {};
  q += hdr + 5;
  avail -= hdr + 5;
  if (avail < 1) return {};
  const unsigned c = q[0];
  if (c >= 0xa0 && c <= 0xbf) {
    len = c & 0x1f;
    hdr = 1;
  } else if ((c == 0xd9 || c == 0xc4) && avail >= 2) {
    len = q[1];
    hdr = 2;
  } else if ((c == 0xda || c == 0xc5) && avail >= 3) {
    len = be16(q + 1);
    hdr = 3;
  } else if ((c == 0xdb || c == 0xc6) && avail >= 5) {
    len = be32(q + 1);
    hdr = 5;
  } else {
    return {};
  }
  if (avail - hdr != len) return {};  // truncated or trailing bytes: the general path reports it
  matched = true;
  PyRef v(big_bytes(reinterpret_cast<const char*>(q + hdr), len));
  if (!v) fail_python();
  return v;
}

// Ext 3: term_to_binary bytes. A pid gives erlang.Pid, a reference erlang.Ref, a port or fun
// erlang.Term (any other term is decoded as usual).
PyRef Decoder::etf(std::string_view data, const char* payload) {
  if (data.empty() || static_cast<unsigned char>(payload[0]) != 131)
    return fail_at("ext 3 payload is not ETF", offset(payload));
  std::string sub;
  PyRef v = etf_decode(data, sub);
  if (!v) {
    fail_at("bad ETF in ext 3", offset(payload));
    err_ += ": " + sub;
  }
  return v;
}

PyRef Decoder::bigint(std::string_view digits, const char* payload) {
  // Signed decimal ASCII; checked here because PyLong_FromString also takes '_', spaces, "0x"...
  size_t i = !digits.empty() && (digits[0] == '-' || digits[0] == '+') ? 1 : 0;
  bool ok = i < digits.size();
  for (; ok && i < digits.size(); ++i) ok = digits[i] >= '0' && digits[i] <= '9';
  if (!ok) return fail_at("bad integer in ext 4", offset(payload));
  std::string text(digits);  // PyLong_FromString wants a NUL-terminated string
  PyRef v(PyLong_FromString(text.c_str(), nullptr, 10));
  if (!v) fail_python();
  return v;
}

// ---------------------------------------------------------------------------------------------------
// Encoding: raw writers shared by the typed API and python().

inline void put_be(std::string& o, unsigned char marker, uint64_t v, int bytes) {
  char b[9];
  b[0] = static_cast<char>(marker);
  for (int i = 0; i < bytes; ++i) b[1 + i] = static_cast<char>(v >> (8 * (bytes - 1 - i)));
  o.append(b, static_cast<size_t>(1 + bytes));
}

// Smallest encoding, as msgpack-c and the Erlang encoder choose: unsigned family for v >= 0.
void put_uint(std::string& o, uint64_t v) {
  if (v <= 0x7f) o.push_back(static_cast<char>(v));
  else if (v <= 0xff) put_be(o, 0xcc, v, 1);
  else if (v <= 0xffff) put_be(o, 0xcd, v, 2);
  else if (v <= 0xffffffffu) put_be(o, 0xce, v, 4);
  else put_be(o, 0xcf, v, 8);
}

void put_int(std::string& o, int64_t v) {
  if (v >= 0) return put_uint(o, static_cast<uint64_t>(v));
  if (v >= -32) o.push_back(static_cast<char>(v));  // negative fixint
  else if (v >= -128) put_be(o, 0xd0, static_cast<uint64_t>(v), 1);
  else if (v >= -32768) put_be(o, 0xd1, static_cast<uint64_t>(v), 2);
  else if (v >= std::numeric_limits<int32_t>::min()) put_be(o, 0xd2, static_cast<uint64_t>(v), 4);
  else put_be(o, 0xd3, static_cast<uint64_t>(v), 8);
}

void put_str_header(std::string& o, size_t n) {
  if (n <= 31) o.push_back(static_cast<char>(0xa0 | n));
  else if (n <= 0xff) put_be(o, 0xd9, n, 1);
  else if (n <= 0xffff) put_be(o, 0xda, n, 2);
  else put_be(o, 0xdb, n, 4);
}

void put_bin_header(std::string& o, size_t n) {
  if (n <= 0xff) put_be(o, 0xc4, n, 1);
  else if (n <= 0xffff) put_be(o, 0xc5, n, 2);
  else put_be(o, 0xc6, n, 4);
}

void put_array_header(std::string& o, size_t n) {
  if (n <= 15) o.push_back(static_cast<char>(0x90 | n));
  else if (n <= 0xffff) put_be(o, 0xdc, n, 2);
  else put_be(o, 0xdd, n, 4);
}

void put_map_header(std::string& o, size_t n) {
  if (n <= 15) o.push_back(static_cast<char>(0x80 | n));
  else if (n <= 0xffff) put_be(o, 0xde, n, 2);
  else put_be(o, 0xdf, n, 4);
}

// Writes an ext header into h (at most 6 bytes); returns its length.
size_t ext_header(char* h, int8_t type, size_t len) {
  size_t n;
  switch (len) {
    case 1: h[0] = static_cast<char>(0xd4); n = 1; break;
    case 2: h[0] = static_cast<char>(0xd5); n = 1; break;
    case 4: h[0] = static_cast<char>(0xd6); n = 1; break;
    case 8: h[0] = static_cast<char>(0xd7); n = 1; break;
    case 16: h[0] = static_cast<char>(0xd8); n = 1; break;
    default:
      if (len <= 0xff) {
        h[0] = static_cast<char>(0xc7);
        h[1] = static_cast<char>(len);
        n = 2;
      } else if (len <= 0xffff) {
        h[0] = static_cast<char>(0xc8);
        h[1] = static_cast<char>(len >> 8);
        h[2] = static_cast<char>(len);
        n = 3;
      } else {
        h[0] = static_cast<char>(0xc9);
        for (int i = 0; i < 4; ++i) h[1 + i] = static_cast<char>(len >> (24 - 8 * i));
        n = 5;
      }
  }
  h[n] = static_cast<char>(type);
  return n + 1;
}

void put_ext(std::string& o, int8_t type, std::string_view payload) {
  char h[6];
  o.append(h, ext_header(h, type, payload.size()));
  o.append(payload);
}

void put_float(std::string& o, double d) {
  if (std::isnan(d)) return put_ext(o, kExtAtom, "nan");
  if (std::isinf(d)) return put_ext(o, kExtAtom, d > 0 ? "infinity" : "neg_infinity");
  uint64_t bits;
  std::memcpy(&bits, &d, sizeof bits);
  put_be(o, 0xcb, bits, 8);
}

void put_charlist(std::string& o, std::string_view chars) {
  put_array_header(o, chars.size());
  for (char c : chars) put_uint(o, static_cast<unsigned char>(c));
}

void put_opaque(std::string& o, std::string_view etf_fragment) {
  // Ext 3 carries the whole term_to_binary output, version byte included.
  char h[6];
  o.append(h, ext_header(h, kExtEtf, etf_fragment.size() + 1));
  o.push_back(static_cast<char>(131));
  o.append(etf_fragment);
}

// msgpack lengths are 32-bit.
bool check_len(size_t n, const char* what) {
  if (n <= 0xffffffffu) return true;
  PyErr_Format(PyExc_OverflowError, "%s too large for msgpack", what);
  return false;
}

bool put_str(std::string& o, PyObject* s) {
  Py_ssize_t n;
  const char* utf8 = PyUnicode_AsUTF8AndSize(s, &n);  // lone surrogates: UnicodeEncodeError
  if (!utf8 || !check_len(static_cast<size_t>(n), "str")) return false;
  put_str_header(o, static_cast<size_t>(n));
  o.append(utf8, static_cast<size_t>(n));
  return true;
}

bool put_bin(std::string& o, const char* data, size_t n) {
  if (!check_len(n, "bytes")) return false;
  put_bin_header(o, n);
  o.append(data, n);
  return true;
}

bool put_buffer(std::string& o, PyObject* obj) {
  Py_buffer view;
  if (PyObject_GetBuffer(obj, &view, PyBUF_FULL_RO) < 0) return false;
  struct Release {
    Py_buffer* v;
    ~Release() { PyBuffer_Release(v); }
  } release{&view};
  size_t n = static_cast<size_t>(view.len);
  if (PyBuffer_IsContiguous(&view, 'C')) return put_bin(o, static_cast<const char*>(view.buf), n);
  if (!check_len(n, "buffer")) return false;
  put_bin_header(o, n);
  size_t at = o.size();
  o.resize(at + n);
  return PyBuffer_ToContiguous(o.data() + at, &view, view.len, 'C') == 0;
}

}  // namespace

PyRef msgpack_decode(std::string_view body, std::string& err) { return Decoder(body, err).run(); }

// ---------------------------------------------------------------------------------------------------
// MsgpackWriter

size_t MsgpackWriter::ext_begin() {
  out_.append(6, '\0');  // room for the largest ext header
  return out_.size();
}

void MsgpackWriter::ext_end(size_t payload_pos, int8_t type) {
  char h[6];
  size_t n = ext_header(h, type, out_.size() - payload_pos);
  size_t header_pos = payload_pos - 6;
  if (n < 6) out_.erase(header_pos, 6 - n);  // slide the payload down onto the real header size
  std::memcpy(out_.data() + header_pos, h, n);
}

void MsgpackWriter::array_header(size_t n) { put_array_header(out_, n); }
void MsgpackWriter::map_header(size_t n) { put_map_header(out_, n); }
void MsgpackWriter::ext(int8_t type, std::string_view payload) { put_ext(out_, type, payload); }

void MsgpackWriter::close_finished() {
  while (!open_.empty() && open_.top().remaining == 0) {
    if (open_.top().kind == kTupleContainer) ext_end(open_.top().pos, kExtTuple);
    open_.pop();
  }
}

void MsgpackWriter::container(size_t n, int kind, size_t pos) {
  if (n == 0) {
    if (kind == kTupleContainer) ext_end(pos, kExtTuple);
    return done();
  }
  open_.push({n, pos, kind});
}

void MsgpackWriter::tuple(size_t arity) {
  element();
  size_t pos = ext_begin();
  array_header(arity);
  container(arity, kTupleContainer, pos);
}

void MsgpackWriter::list(size_t n) {
  element();
  array_header(n);
  container(n, kPlainContainer);
}

void MsgpackWriter::map(size_t n) {
  element();
  map_header(n);
  container(2 * n, kPlainContainer);
}

void MsgpackWriter::atom(std::string_view name) {
  element();
  if (name == "true") out_.push_back(static_cast<char>(0xc3));
  else if (name == "false") out_.push_back(static_cast<char>(0xc2));
  else if (name == "none") out_.push_back(static_cast<char>(0xc0));
  else ext(kExtAtom, name);
  done();
}

void MsgpackWriter::str(std::string_view utf8) {
  element();
  put_str_header(out_, utf8.size());
  out_.append(utf8);
  done();
}

void MsgpackWriter::bytes(std::string_view raw) {
  element();
  put_bin_header(out_, raw.size());
  out_.append(raw);
  done();
}

void MsgpackWriter::integer(int64_t v) {
  element();
  put_int(out_, v);
  done();
}

void MsgpackWriter::float64(double v) {
  element();
  put_float(out_, v);
  done();
}

void MsgpackWriter::boolean(bool v) {
  element();
  out_.push_back(static_cast<char>(v ? 0xc3 : 0xc2));
  done();
}

void MsgpackWriter::none() {
  element();
  out_.push_back(static_cast<char>(0xc0));
  done();
}

void MsgpackWriter::charlist(std::string_view chars) {
  element();
  put_charlist(out_, chars);
  done();
}

void MsgpackWriter::opaque(std::string_view etf_fragment) {
  element();
  put_opaque(out_, etf_fragment);
  done();
}

bool MsgpackWriter::python(PyObject* obj) {
  element();
  if (!python_at(obj, nullptr, 0)) return false;
  done();
  return true;
}

bool MsgpackWriter::python_at(PyObject* obj, const Path* parent, int depth) {
  // Exact built-in types first: the common case costs one pointer compare each.
  PyTypeObject* t = Py_TYPE(obj);
  if (t == &PyUnicode_Type) return put_str(out_, obj);
  if (t == &PyLong_Type) return put_long(obj);
  if (t == &PyFloat_Type) {
    put_float(out_, PyFloat_AS_DOUBLE(obj));
    return true;
  }
  if (obj == Py_None) {
    out_.push_back(static_cast<char>(0xc0));
    return true;
  }
  if (t == &PyBool_Type) {  // before any int check: bool is an int
    out_.push_back(static_cast<char>(obj == Py_True ? 0xc3 : 0xc2));
    return true;
  }
  if (t == &PyList_Type) return put_list(obj, parent, depth);
  if (t == &PyTuple_Type) return put_tuple(obj, parent, depth);
  if (t == &PyDict_Type) return put_dict(obj, parent, depth);
  if (t == &PyBytes_Type)
    return put_bin(out_, PyBytes_AS_STRING(obj), static_cast<size_t>(PyBytes_GET_SIZE(obj)));
  std::string_view etf;
  if (opaque_bytes(obj, etf)) {
    put_opaque(out_, etf);
    return true;
  }
  return python_slow(obj, parent, depth);
}

bool MsgpackWriter::python_slow(PyObject* obj, const Path* parent, int depth) {
  // Subclasses of the built-in types, bytearray and memoryview.
  if (PyLong_Check(obj)) return put_long(obj);
  if (PyFloat_Check(obj)) {
    put_float(out_, PyFloat_AS_DOUBLE(obj));
    return true;
  }
  if (PyUnicode_Check(obj)) return put_str(out_, obj);
  if (PyList_Check(obj)) return put_list(obj, parent, depth);
  if (PyTuple_Check(obj)) return put_tuple(obj, parent, depth);
  if (PyDict_Check(obj)) return put_dict(obj, parent, depth);
  if (PyBytes_Check(obj))
    return put_bin(out_, PyBytes_AS_STRING(obj), static_cast<size_t>(PyBytes_GET_SIZE(obj)));
  // Through the buffer protocol: a bytearray cannot be resized while exported.
  if (PyByteArray_Check(obj) || PyMemoryView_Check(obj)) return put_buffer(out_, obj);
  return codec_detail::unconvertible(obj);
}

bool MsgpackWriter::put_long(PyObject* obj) {
  int overflow;
  long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
  if (!overflow) {
    if (v == -1 && PyErr_Occurred()) return false;
    put_int(out_, v);
    return true;
  }
  // Beyond int64 (2**63 .. 2**64-1 included, though msgpack has uint64): the charlist of its decimal
  // digits, so a Python value gives the same Erlang term in both codecs (§2).
  PyRef digits = codec_detail::int_digits(obj);
  if (!digits) return false;
  Py_ssize_t n;
  const char* s = PyUnicode_AsUTF8AndSize(digits.get(), &n);
  if (!s) return false;
  put_charlist(out_, {s, static_cast<size_t>(n)});
  return true;
}

bool MsgpackWriter::put_list(PyObject* obj, const Path* parent, int depth) {
  if (depth >= kMaxDepth) return codec_detail::nesting_error(obj, parent, kMaxDepth);
  Py_ssize_t n = PyList_GET_SIZE(obj);
  if (!check_len(static_cast<size_t>(n), "list")) return false;
  put_array_header(out_, static_cast<size_t>(n));
  const Path here{obj, parent};
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyRef item = codec_detail::list_item(obj, i);
    if (!item) break;
    if (!python_at(item.get(), &here, depth + 1)) return false;
  }
  if (PyList_GET_SIZE(obj) != n) return codec_detail::changed_size("list");
  return true;
}

bool MsgpackWriter::put_tuple(PyObject* obj, const Path* parent, int depth) {
  if (depth >= kMaxDepth) return codec_detail::nesting_error(obj, parent, kMaxDepth);
  Py_ssize_t n = PyTuple_GET_SIZE(obj);
  if (!check_len(static_cast<size_t>(n), "tuple")) return false;
  size_t pos = ext_begin();
  put_array_header(out_, static_cast<size_t>(n));
  const Path here{obj, parent};
  for (Py_ssize_t i = 0; i < n; ++i) {
    // Tuples are immutable and held by our caller: borrowed items stay valid.
    if (!python_at(PyTuple_GET_ITEM(obj, i), &here, depth + 1)) return false;
  }
  if (!check_len(out_.size() - pos, "tuple")) return false;
  ext_end(pos, kExtTuple);
  return true;
}

bool MsgpackWriter::put_dict(PyObject* obj, const Path* parent, int depth) {
  if (depth >= kMaxDepth) return codec_detail::nesting_error(obj, parent, kMaxDepth);
  Py_ssize_t n = PyDict_GET_SIZE(obj);
  put_map_header(out_, static_cast<size_t>(n));
  const Path here{obj, parent};
  return codec_detail::for_each_dict_item(obj, n, [&](PyObject* k, PyObject* v) {
    return python_at(k, &here, depth + 1) && python_at(v, &here, depth + 1);
  });
}

}  // namespace ep
