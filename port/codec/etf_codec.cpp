// ETF body codec: the external term format straight to and from Python objects (PROTOCOL.md §1.2, §2).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "big_bytes.hpp"
#include "codec.hpp"
#include "erlang_types.hpp"

namespace ep {
namespace {

enum Tag : unsigned char {
  kNewFloat = 70,
  kBitBinary = 77,
  kCompressed = 80,
  kNewPid = 88,
  kNewPort = 89,
  kNewerReference = 90,
  kSmallInteger = 97,
  kInteger = 98,
  kFloat = 99,
  kAtom = 100,
  kReference = 101,
  kPort = 102,
  kPid = 103,
  kSmallTuple = 104,
  kLargeTuple = 105,
  kNil = 106,
  kString = 107,
  kList = 108,
  kBinary = 109,
  kSmallBig = 110,
  kLargeBig = 111,
  kNewFun = 112,
  kExport = 113,
  kNewReference = 114,
  kSmallAtom = 115,
  kMap = 116,
  kAtomUtf8 = 118,
  kSmallAtomUtf8 = 119,
  kV4Port = 120,
  kVersion = 131,
};

// Open-container kinds of the typed writer API.
constexpr int kPlainContainer = 0;
constexpr int kListContainer = 1;  // gets its NIL tail when closed

inline uint32_t be16(const unsigned char* p) { return (uint32_t{p[0]} << 8) | p[1]; }
inline uint32_t be32(const unsigned char* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}
inline uint64_t be64(const unsigned char* p) { return (uint64_t{be32(p)} << 32) | be32(p + 4); }

// ---------------------------------------------------------------------------------------------------
// Decoding

class Decoder : codec_detail::DecodeCursor {
 public:
  Decoder(std::string_view body, std::string& err) : DecodeCursor(body, err) {}

  PyRef run() {
    return whole_body([this]() -> PyRef {
      if (*p_ != kVersion) {
        err_ = "bad version byte " + std::to_string(*p_) + " (expected 131)";
        return {};
      }
      ++p_;
      return term(0);
    });
  }

 private:
  [[gnu::cold, gnu::noinline]] PyRef fail_tag(unsigned tag, const unsigned char* where) {
    err_ = "unknown tag " + std::to_string(tag) + " at byte " + std::to_string(offset(where));
    return {};
  }
  [[gnu::cold, gnu::noinline]] PyRef too_deep() {
    err_ = "term nested deeper than " + std::to_string(kMaxDepth) + " levels";
    return {};
  }

  PyRef term(int depth) {
    if (!need(1)) return {};
    const unsigned char* start = p_;
    const unsigned char tag = *p_++;
    switch (tag) {
      case kSmallInteger:
        if (!need(1)) return {};
        return py(PyLong_FromLong(*p_++));
      case kInteger: {
        if (!need(4)) return {};
        int32_t v = static_cast<int32_t>(be32(p_));
        p_ += 4;
        return py(PyLong_FromLong(v));
      }
      case kNewFloat: {
        if (!need(8)) return {};
        uint64_t bits = be64(p_);
        p_ += 8;
        double d;
        std::memcpy(&d, &bits, sizeof d);
        return py(PyFloat_FromDouble(d));
      }
      case kFloat:
        return old_float();
      case kAtom:
      case kAtomUtf8: {
        if (!need(2)) return {};
        size_t n = be16(p_);
        p_ += 2;
        return atom(n, tag == kAtom);
      }
      case kSmallAtom:
      case kSmallAtomUtf8: {
        if (!need(1)) return {};
        size_t n = *p_++;
        return atom(n, tag == kSmallAtom);
      }
      case kSmallTuple:
        if (!need(1)) return {};
        return tuple(*p_++, depth);
      case kLargeTuple: {
        if (!need(4)) return {};
        size_t n = be32(p_);
        p_ += 4;
        return tuple(n, depth);
      }
      case kNil:  // an empty list is a level of nesting too, as for the encoder
        if (depth >= kMaxDepth) return too_deep();
        return py(PyList_New(0));
      case kString:
        if (depth >= kMaxDepth) return too_deep();
        return string_list();
      case kList: {
        if (!need(4)) return {};
        size_t n = be32(p_);
        p_ += 4;
        return list(n, depth);
      }
      case kBinary: {
        if (!need(4)) return {};
        size_t n = be32(p_);
        p_ += 4;
        if (!need(n)) return {};
        const char* data = reinterpret_cast<const char*>(p_);
        p_ += n;
        return binary(data, n);
      }
      case kSmallBig: {
        if (!need(2)) return {};
        size_t n = p_[0];
        bool negative = p_[1] != 0;
        p_ += 2;
        return bignum(n, negative);
      }
      case kLargeBig: {
        if (!need(5)) return {};
        size_t n = be32(p_);
        bool negative = p_[4] != 0;
        p_ += 5;
        return bignum(n, negative);
      }
      case kMap: {
        if (!need(4)) return {};
        size_t n = be32(p_);
        p_ += 4;
        return map(n, depth);
      }
      case kNewPid:
      case kPid:
        p_ = start;
        if (!skip_opaque()) return {};
        return py(make_pid(span(start)));
      case kNewerReference:
      case kNewReference:
      case kReference:
        p_ = start;
        if (!skip_opaque()) return {};
        return py(make_ref(span(start)));
      case kV4Port:
      case kNewPort:
      case kPort:
      case kNewFun:
      case kExport:
        p_ = start;
        if (!skip_opaque()) return {};
        return py(make_term(span(start)));
      case kBitBinary:
        return fail_at("unsupported bit binary", start);
      case kCompressed:
        return fail("compressed terms are not supported");
      default:
        return fail_tag(tag, start);
    }
  }

  std::string_view span(const unsigned char* start) const {
    return {reinterpret_cast<const char*>(start), static_cast<size_t>(p_ - start)};
  }

  PyRef old_float() {
    // FLOAT_EXT: 31 bytes of "%.20e" text, NUL padded.
    if (!need(31)) return {};
    char buf[32];
    std::memcpy(buf, p_, 31);
    buf[31] = '\0';
    const unsigned char* at = p_;
    p_ += 31;
    char* endp = nullptr;
    double d = PyOS_string_to_double(buf, &endp, nullptr);
    if (d == -1.0 && PyErr_Occurred()) {
      PyErr_Clear();
      endp = buf;
    }
    bool ok = endp != buf;
    for (const char* q = endp; ok && q < buf + 31; ++q) ok = *q == '\0';
    if (!ok) return fail_at("bad float", at);
    return py(PyFloat_FromDouble(d));
  }

  PyRef atom(size_t n, bool latin1) {
    if (!need(n)) return {};
    std::string_view name(reinterpret_cast<const char*>(p_), n);
    const unsigned char* at = p_;
    p_ += n;
    PyRef v = codec_detail::atom_value(name, latin1);
    if (v) return v;
    if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) return fail_python();
    PyErr_Clear();
    return fail_at("invalid UTF-8 in atom", at);
  }

  PyRef binary(const char* data, size_t n) { return py(codec_detail::text_or_bytes(data, n)); }

  PyRef bignum(size_t n, bool negative) {
    if (!need(n)) return {};
    const unsigned char* d = p_;  // little-endian magnitude
    p_ += n;
    if (n <= 8) {
      uint64_t mag = 0;
      for (size_t i = 0; i < n; ++i) mag |= uint64_t{d[i]} << (8 * i);
      if (!negative) return py(PyLong_FromUnsignedLongLong(mag));
      if (mag <= (uint64_t{1} << 63)) {
        // -mag without overflowing at INT64_MIN.
        return py(PyLong_FromLongLong(mag == 0 ? 0 : -static_cast<long long>(mag - 1) - 1));
      }
      PyRef pos = py(PyLong_FromUnsignedLongLong(mag));
      return pos ? py(PyNumber_Negative(pos.get())) : PyRef();
    }
#if PY_VERSION_HEX >= 0x030D0000
    PyRef pos = py(PyLong_FromUnsignedNativeBytes(
        d, static_cast<Py_ssize_t>(n), Py_ASNATIVEBYTES_LITTLE_ENDIAN | Py_ASNATIVEBYTES_UNSIGNED_BUFFER));
#else
    PyRef pos = py(_PyLong_FromByteArray(d, n, /*little_endian=*/1, /*is_signed=*/0));
#endif
    if (!pos || !negative) return pos;
    return py(PyNumber_Negative(pos.get()));
  }

  // {bytes, Binary} -> bytes. Sets `matched` only for that exact shape; the binary is always bytes.
  PyRef bytes_pair(bool& matched) {
    const unsigned char* q = p_;
    size_t avail = remaining();
    size_t len, hdr;
    if (avail < 2) return {};
    if (q[0] == kSmallAtomUtf8 || q[0] == kSmallAtom) {
      len = q[1];
      hdr = 2;
    } else if ((q[0] == kAtomUtf8 || q[0] == kAtom) && avail >= 3) {
      len = be16(q + 1);
      hdr = 3;
    } else {
      return {};
    }
    if (len != 5 || avail < hdr + 5 || std::memcmp(q + hdr, "bytes", 5) != 0) return {};
    q += hdr + 5;
    avail -= hdr + 5;
    if (avail < 5 || q[0] != kBinary) return {};
    size_t n = be32(q + 1);
    if (avail - 5 < n) return {};  // truncated: the general path reports it
    matched = true;
    p_ = q + 5 + n;
    return py(big_bytes(reinterpret_cast<const char*>(q + 5), n));
  }

  PyRef tuple(size_t n, int depth) {
    if (depth >= kMaxDepth) return too_deep();
    if (n == 2) {
      bool matched = false;
      PyRef b = bytes_pair(matched);
      if (matched) return b;
    }
    if (n > remaining() || !claim(n)) return truncated();  // every element takes at least one byte
    PyRef t = py(PyTuple_New(static_cast<Py_ssize_t>(n)));
    if (!t) return {};
    for (size_t i = 0; i < n; ++i) {
      PyRef item = term(depth + 1);
      if (!item) return {};
      PyTuple_SET_ITEM(t.get(), static_cast<Py_ssize_t>(i), item.release());
    }
    return t;
  }

  PyRef list(size_t n, int depth) {
    if (depth >= kMaxDepth) return too_deep();
    if (n > remaining() || !claim(n)) return truncated();
    PyRef l = py(PyList_New(static_cast<Py_ssize_t>(n)));
    if (!l) return {};
    for (size_t i = 0; i < n; ++i) {
      PyRef item = term(depth + 1);
      if (!item) return {};
      PyList_SET_ITEM(l.get(), static_cast<Py_ssize_t>(i), item.release());
    }
    if (!need(1)) return {};
    if (*p_ == kNil) {
      ++p_;
      return l;
    }
    // term_to_binary never splits a proper list, but [1 | [2]] written as two LIST_EXTs is legal ETF.
    if (*p_ == kList || *p_ == kString) {
      PyRef tail = term(depth + 1);
      if (!tail) return {};
      Py_ssize_t at = static_cast<Py_ssize_t>(n);
      if (PyList_SetSlice(l.get(), at, at, tail.get()) < 0) return fail_python();
      return l;
    }
    return fail_at("improper list", p_);  // codec.hpp: decode_failure_reason keys on this text
  }

  PyRef string_list() {
    // STRING_EXT: a list of small integers stored as bytes.
    if (!need(2)) return {};
    size_t n = be16(p_);
    p_ += 2;
    if (!need(n)) return {};
    PyRef l = py(PyList_New(static_cast<Py_ssize_t>(n)));
    if (!l) return {};
    for (size_t i = 0; i < n; ++i) {
      PyObject* c = PyLong_FromLong(p_[i]);  // small ints are cached: no allocation
      if (!c) return fail_python();
      PyList_SET_ITEM(l.get(), static_cast<Py_ssize_t>(i), c);
    }
    p_ += n;
    return l;
  }

  PyRef map(size_t n, int depth) {
    if (depth >= kMaxDepth) return too_deep();
    if (n > remaining() / 2 || !claim(2 * n)) return truncated();
    PyRef d = py(PyDict_New());
    if (!d) return {};
    for (size_t i = 0; i < n; ++i) {
      PyRef k = key(depth + 1);
      if (!k) return {};
      PyRef v = term(depth + 1);
      if (!v) return {};
      if (!codec_detail::dict_set(d.get(), k.get(), v.get(), err_)) return {};
    }
    return d;
  }

  // A map key: short binaries and atoms that decode to str come from the key cache.
  PyRef key(int depth) {
    const size_t avail = remaining();
    if (avail < 2) return term(depth);
    size_t n, header;
    int kind;
    switch (p_[0]) {
      case kBinary:
        if (avail < 5) return term(depth);
        n = be32(p_ + 1);
        header = 5;
        kind = 0;
        break;
      case kSmallAtomUtf8:
      case kSmallAtom:
        n = p_[1];
        header = 2;
        kind = p_[0] == kSmallAtom ? 2 : 1;  // Latin-1 or UTF-8 name
        break;
      case kAtomUtf8:
      case kAtom:
        if (avail < 3) return term(depth);
        n = be16(p_ + 1);
        header = 3;
        kind = p_[0] == kAtom ? 2 : 1;
        break;
      default:
        return term(depth);
    }
    if (n > codec_detail::KeyCache::kMaxKey || avail - header < n) return term(depth);
    std::string_view raw(reinterpret_cast<const char*>(p_ + header), n);
    if (PyRef hit = keys_.find(raw, kind)) {
      p_ += header + n;
      return hit;
    }
    PyRef k = term(depth);
    if (k && PyUnicode_CheckExact(k.get())) keys_.store(raw, kind, k.get());  // not true, none, bytes...
    return k;
  }

  bool skip(size_t n) {
    if (!need(n)) return false;
    p_ += n;
    return true;
  }

  bool skip_atom() {
    if (!need(1)) return false;
    switch (*p_) {
      case kAtom:
      case kAtomUtf8:
        if (!need(3)) return false;
        return skip(3 + be16(p_ + 1));
      case kSmallAtom:
      case kSmallAtomUtf8:
        if (!need(2)) return false;
        return skip(2 + size_t{p_[1]});
      default:
        fail_at("expected an atom", p_);
        return false;
    }
  }

  // Moves past a pid, reference, port or fun, checking every field is there.
  bool skip_opaque() {
    const unsigned char tag = *p_++;
    switch (tag) {
      case kNewPid:  // Node ID:4 Serial:4 Creation:4
        return skip_atom() && skip(12);
      case kPid:  // Node ID:4 Serial:4 Creation:1
        return skip_atom() && skip(9);
      case kNewerReference:  // Len:2 Node Creation:4 ID:4*Len
      case kNewReference: {  // Len:2 Node Creation:1 ID:4*Len
        if (!need(2)) return false;
        size_t words = be16(p_);
        p_ += 2;
        return skip_atom() && skip((tag == kNewerReference ? 4 : 1) + 4 * words);
      }
      case kReference:  // Node ID:4 Creation:1
        return skip_atom() && skip(5);
      case kV4Port:  // Node ID:8 Creation:4
        return skip_atom() && skip(12);
      case kNewPort:  // Node ID:4 Creation:4
        return skip_atom() && skip(8);
      case kPort:  // Node ID:4 Creation:1
        return skip_atom() && skip(5);
      case kNewFun: {  // Size:4 counts itself and everything after it
        if (!need(4)) return false;
        size_t size = be32(p_);
        if (size < 4) {
          fail_at("bad fun size", p_);
          return false;
        }
        return skip(size);
      }
      case kExport:  // Module Function Arity(SMALL_INTEGER_EXT)
        if (!skip_atom() || !skip_atom() || !need(2)) return false;
        if (*p_ != kSmallInteger) {
          fail_at("bad export arity", p_);
          return false;
        }
        p_ += 2;
        return true;
      default:
        return false;  // not reached: callers dispatch on the tag
    }
  }

  codec_detail::KeyCache keys_;
};

// ---------------------------------------------------------------------------------------------------
// Encoding: raw writers shared by the typed API and python().

inline void put_u16(std::string& o, size_t v) {
  char b[2] = {static_cast<char>(v >> 8), static_cast<char>(v)};
  o.append(b, 2);
}
inline void put_u32(std::string& o, size_t v) {
  char b[4] = {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
               static_cast<char>(v)};
  o.append(b, 4);
}

void put_atom(std::string& o, std::string_view name) {
  if (name.size() <= 255) {
    o.push_back(static_cast<char>(kSmallAtomUtf8));
    o.push_back(static_cast<char>(name.size()));
  } else {
    o.push_back(static_cast<char>(kAtomUtf8));
    put_u16(o, name.size());
  }
  o.append(name);
}

void put_binary(std::string& o, const char* data, size_t n) {
  o.push_back(static_cast<char>(kBinary));
  put_u32(o, n);
  o.append(data, n);
}

void put_integer(std::string& o, int64_t v) {
  if (v >= 0 && v <= 255) {
    char b[2] = {static_cast<char>(kSmallInteger), static_cast<char>(v)};
    o.append(b, 2);
  } else if (v >= std::numeric_limits<int32_t>::min() && v <= std::numeric_limits<int32_t>::max()) {
    uint32_t u = static_cast<uint32_t>(v);
    char b[5] = {static_cast<char>(kInteger), static_cast<char>(u >> 24), static_cast<char>(u >> 16),
                 static_cast<char>(u >> 8), static_cast<char>(u)};
    o.append(b, 5);
  } else {
    // SMALL_BIG_EXT: byte count, sign, little-endian magnitude.
    uint64_t mag = v < 0 ? 0 - static_cast<uint64_t>(v) : static_cast<uint64_t>(v);
    char b[11];
    size_t n = 0;
    for (; mag; mag >>= 8) b[3 + n++] = static_cast<char>(mag & 0xff);
    b[0] = static_cast<char>(kSmallBig);
    b[1] = static_cast<char>(n);
    b[2] = v < 0 ? 1 : 0;
    o.append(b, 3 + n);
  }
}

void put_float(std::string& o, double d) {
  if (std::isnan(d)) return put_atom(o, "nan");
  if (std::isinf(d)) return put_atom(o, d > 0 ? "infinity" : "neg_infinity");
  uint64_t bits;
  std::memcpy(&bits, &d, sizeof bits);
  char b[9] = {static_cast<char>(kNewFloat)};
  for (int i = 0; i < 8; ++i) b[1 + i] = static_cast<char>(bits >> (56 - 8 * i));
  o.append(b, 9);
}

void put_charlist(std::string& o, std::string_view chars) {
  if (chars.empty()) {
    o.push_back(static_cast<char>(kNil));
  } else if (chars.size() <= 65535) {
    o.push_back(static_cast<char>(kString));
    put_u16(o, chars.size());
    o.append(chars);
  } else {
    o.push_back(static_cast<char>(kList));
    put_u32(o, chars.size());
    for (char c : chars) {
      char b[2] = {static_cast<char>(kSmallInteger), c};
      o.append(b, 2);
    }
    o.push_back(static_cast<char>(kNil));
  }
}

// ETF lengths are 32-bit.
bool check_len(size_t n, const char* what) {
  if (n <= 0xffffffffu) return true;
  PyErr_Format(PyExc_OverflowError, "%s too large for an Erlang term", what);
  return false;
}

bool put_str(std::string& o, PyObject* s) {
  Py_ssize_t n;
  const char* utf8 = PyUnicode_AsUTF8AndSize(s, &n);  // lone surrogates: UnicodeEncodeError
  if (!utf8 || !check_len(static_cast<size_t>(n), "str")) return false;
  put_binary(o, utf8, static_cast<size_t>(n));
  return true;
}

// memoryview (or anything exporting a buffer), contiguous or not.
bool put_buffer(std::string& o, PyObject* obj) {
  Py_buffer view;
  if (PyObject_GetBuffer(obj, &view, PyBUF_FULL_RO) < 0) return false;
  struct Release {
    Py_buffer* v;
    ~Release() { PyBuffer_Release(v); }
  } release{&view};
  size_t n = static_cast<size_t>(view.len);
  if (!check_len(n, "buffer")) return false;
  o.push_back(static_cast<char>(kBinary));
  put_u32(o, n);
  if (PyBuffer_IsContiguous(&view, 'C')) {
    o.append(static_cast<const char*>(view.buf), n);
    return true;
  }
  size_t at = o.size();
  o.resize(at + n);
  return PyBuffer_ToContiguous(o.data() + at, &view, view.len, 'C') == 0;
}

// A list of 0..255 ints is what term_to_binary writes as STRING_EXT; doing the same keeps the bytes
// identical to the VM's (and halves their size). Writes it and returns true if the list is one; most
// lists fail on the first element. Only reads ints, so it can hold the list's lock throughout.
bool put_byte_list(std::string& o, PyObject* list) {
  bool ok = true;
  EP_BEGIN_CRITICAL_SECTION(list);
  const Py_ssize_t n = PyList_GET_SIZE(list);
  ok = n > 0 && n <= 65535;
  for (Py_ssize_t i = 0; ok && i < n; ++i) {
    PyObject* item = PyList_GET_ITEM(list, i);
    ok = PyLong_CheckExact(item);
    if (ok) {
      int overflow;
      long v = PyLong_AsLongAndOverflow(item, &overflow);
      ok = !overflow && v >= 0 && v <= 255;
    }
  }
  if (ok) {
    o.push_back(static_cast<char>(kString));
    put_u16(o, static_cast<size_t>(n));
    for (Py_ssize_t i = 0; i < n; ++i)
      o.push_back(static_cast<char>(PyLong_AsLong(PyList_GET_ITEM(list, i))));
  }
  EP_END_CRITICAL_SECTION();
  return ok;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// Shared with the msgpack codec.

namespace codec_detail {

PyRef atom_value(std::string_view s, bool latin1) {
  switch (s.size()) {
    case 3:
      if (s == "nil") return PyRef::borrow(Py_None);
      if (s == "nan") return PyRef(PyFloat_FromDouble(std::numeric_limits<double>::quiet_NaN()));
      break;
    case 4:
      if (s == "true") return PyRef::borrow(Py_True);
      if (s == "none") return PyRef::borrow(Py_None);
      break;
    case 5:
      if (s == "false") return PyRef::borrow(Py_False);
      break;
    case 8:
      if (s == "infinity") return PyRef(PyFloat_FromDouble(std::numeric_limits<double>::infinity()));
      break;
    case 9:
      if (s == "undefined") return PyRef::borrow(Py_None);
      break;
    case 12:
      if (s == "neg_infinity") return PyRef(PyFloat_FromDouble(-std::numeric_limits<double>::infinity()));
      break;
  }
  Py_ssize_t n = static_cast<Py_ssize_t>(s.size());
  return PyRef(latin1 ? PyUnicode_DecodeLatin1(s.data(), n, nullptr)
                      : PyUnicode_DecodeUTF8(s.data(), n, nullptr));
}

namespace {

// True if an invalid UTF-8 sequence (by Python's strict rules: no overlongs, no surrogates, nothing
// past U+10FFFF, no truncated sequence) starts within the first `limit` bytes.
bool invalid_utf8_within(const unsigned char* s, size_t n, size_t limit) {
  const size_t stop = n < limit ? n : limit;
  size_t i = 0;
  while (i < stop) {
    const unsigned c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    unsigned lo = 0x80, hi = 0xbf;  // range of the second byte
    if (c >= 0xc2 && c <= 0xdf) {
      len = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
      len = 3;
      if (c == 0xe0) lo = 0xa0;
      if (c == 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      len = 4;
      if (c == 0xf0) lo = 0x90;
      if (c == 0xf4) hi = 0x8f;
    } else {
      return true;
    }
    if (n - i < len || s[i + 1] < lo || s[i + 1] > hi) return true;
    for (size_t k = 2; k < len; ++k)
      if ((s[i + k] & 0xc0) != 0x80) return true;
    i += len;
  }
  return false;
}

}  // namespace

PyRef text_or_bytes(const char* data, size_t n) {
  const Py_ssize_t len = static_cast<Py_ssize_t>(n);
  // Binary data nearly always shows itself in its first bytes. Checking those here spares the
  // UnicodeDecodeError, which copies the whole input (4 ms for 10 MB).
  if (!invalid_utf8_within(reinterpret_cast<const unsigned char*>(data), n, 256)) {
    if (PyObject* s = PyUnicode_DecodeUTF8(data, len, nullptr)) return PyRef(s);
    if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) return {};
    PyErr_Clear();
  }
  return PyRef(big_bytes(data, n));
}

std::string take_python_error() {
#if PY_VERSION_HEX >= 0x030C0000
  PyRef value(PyErr_GetRaisedException());
  PyObject* type = value ? reinterpret_cast<PyObject*>(Py_TYPE(value.get())) : nullptr;
#else
  PyObject *t = nullptr, *v = nullptr, *tb = nullptr;
  PyErr_Fetch(&t, &v, &tb);
  PyRef type_ref(t), value(v), trace(tb);
  PyObject* type = t;
#endif
  if (!type) return "python error";
  std::string s = PyType_Check(type) ? reinterpret_cast<PyTypeObject*>(type)->tp_name : "python error";
  if (value) {
    PyRef text(PyObject_Str(value.get()));
    Py_ssize_t n = 0;
    const char* c = text ? PyUnicode_AsUTF8AndSize(text.get(), &n) : nullptr;
    if (c && n) s.append(": ").append(c, static_cast<size_t>(n));
    PyErr_Clear();
  }
  return s;
}

bool dict_set(PyObject* dict, PyObject* key, PyObject* value, std::string& err) {
  if (PyDict_SetItem(dict, key, value) == 0) return true;
  // Decoded keys can only fail to hash by being (or containing) a list or dict.
  if (PyErr_ExceptionMatches(PyExc_TypeError)) {
    PyErr_Clear();
    err = std::string("unhashable map key of type '") + Py_TYPE(key)->tp_name + "'";
  } else {
    err = take_python_error();
  }
  return false;
}

bool changed_size(const char* what) {
  PyErr_Format(PyExc_RuntimeError, "%s changed size during conversion to an Erlang term", what);
  return false;
}

bool unconvertible(PyObject* obj) {
  PyErr_Format(PyExc_TypeError, "cannot convert Python object of type '%s' to an Erlang term",
               Py_TYPE(obj)->tp_name);
  return false;
}

PyRef int_digits(PyObject* obj) { return PyRef(PyLong_Type.tp_repr(obj)); }

bool nesting_error(PyObject* obj, const EncodePath* parent, int limit) {
  // Only on failure: a repeated container on the path means a cycle rather than deep data.
  std::vector<PyObject*> path{obj};
  for (const EncodePath* p = parent; p; p = p->parent) path.push_back(p->obj);
  std::sort(path.begin(), path.end());
  if (std::adjacent_find(path.begin(), path.end()) != path.end()) {
    PyErr_SetString(PyExc_ValueError,
                    "cannot convert a self-referencing (cyclic) Python object to an Erlang term");
  } else {
    PyErr_Format(PyExc_RecursionError,
                 "Python object nested deeper than %d levels cannot be converted to an Erlang term", limit);
  }
  return false;
}

}  // namespace codec_detail

PyRef etf_decode(std::string_view body, std::string& err) { return Decoder(body, err).run(); }

// ---------------------------------------------------------------------------------------------------
// EtfWriter

void EtfWriter::close_finished() {
  while (!open_.empty() && open_.top().remaining == 0) {
    if (open_.top().kind == kListContainer) out_.push_back(static_cast<char>(kNil));
    open_.pop();
  }
}

void EtfWriter::container(size_t n, int kind) {
  if (n == 0) return done();
  open_.push({n, 0, kind});
}

void EtfWriter::version() { out_.push_back(static_cast<char>(kVersion)); }

void EtfWriter::tuple(size_t arity) {
  element();
  if (arity <= 255) {
    out_.push_back(static_cast<char>(kSmallTuple));
    out_.push_back(static_cast<char>(arity));
  } else {
    out_.push_back(static_cast<char>(kLargeTuple));
    put_u32(out_, arity);
  }
  container(arity, kPlainContainer);
}

void EtfWriter::list(size_t n) {
  element();
  if (n == 0) {
    out_.push_back(static_cast<char>(kNil));
    return done();
  }
  out_.push_back(static_cast<char>(kList));
  put_u32(out_, n);
  container(n, kListContainer);
}

void EtfWriter::list_end() {}  // the tail is written after the n-th element (close_finished)

void EtfWriter::map(size_t n) {
  element();
  out_.push_back(static_cast<char>(kMap));
  put_u32(out_, n);
  container(2 * n, kPlainContainer);
}

void EtfWriter::atom(std::string_view name) {
  element();
  put_atom(out_, name);
  done();
}

void EtfWriter::str(std::string_view utf8) {
  element();
  put_binary(out_, utf8.data(), utf8.size());
  done();
}

void EtfWriter::bytes(std::string_view raw) {
  element();
  put_binary(out_, raw.data(), raw.size());
  done();
}

void EtfWriter::integer(int64_t v) {
  element();
  put_integer(out_, v);
  done();
}

void EtfWriter::float64(double v) {
  element();
  put_float(out_, v);
  done();
}

void EtfWriter::boolean(bool v) {
  element();
  put_atom(out_, v ? "true" : "false");
  done();
}

void EtfWriter::none() {
  element();
  put_atom(out_, "none");
  done();
}

void EtfWriter::charlist(std::string_view chars) {
  element();
  put_charlist(out_, chars);
  done();
}

void EtfWriter::opaque(std::string_view etf_fragment) {
  element();
  out_.append(etf_fragment);
  done();
}

bool EtfWriter::python(PyObject* obj) {
  element();
  if (!python_at(obj, nullptr, 0)) return false;
  done();
  return true;
}

bool EtfWriter::python_at(PyObject* obj, const Path* parent, int depth) {
  // Exact built-in types first: the common case costs one pointer compare each.
  PyTypeObject* t = Py_TYPE(obj);
  if (t == &PyUnicode_Type) return put_str(out_, obj);
  if (t == &PyLong_Type) return put_long(obj);
  if (t == &PyFloat_Type) {
    put_float(out_, PyFloat_AS_DOUBLE(obj));
    return true;
  }
  if (obj == Py_None) {
    put_atom(out_, "none");
    return true;
  }
  if (t == &PyBool_Type) {  // before any int check: bool is an int
    put_atom(out_, obj == Py_True ? "true" : "false");
    return true;
  }
  if (t == &PyList_Type) return put_list(obj, parent, depth);
  if (t == &PyTuple_Type) return put_tuple(obj, parent, depth);
  if (t == &PyDict_Type) return put_dict(obj, parent, depth);
  if (t == &PyBytes_Type) {
    if (!check_len(static_cast<size_t>(PyBytes_GET_SIZE(obj)), "bytes")) return false;
    put_binary(out_, PyBytes_AS_STRING(obj), static_cast<size_t>(PyBytes_GET_SIZE(obj)));
    return true;
  }
  std::string_view etf;
  if (opaque_bytes(obj, etf)) {
    out_.append(etf);
    return true;
  }
  return python_slow(obj, parent, depth);
}

bool EtfWriter::python_slow(PyObject* obj, const Path* parent, int depth) {
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
  if (PyBytes_Check(obj)) {
    if (!check_len(static_cast<size_t>(PyBytes_GET_SIZE(obj)), "bytes")) return false;
    put_binary(out_, PyBytes_AS_STRING(obj), static_cast<size_t>(PyBytes_GET_SIZE(obj)));
    return true;
  }
  // Through the buffer protocol: a bytearray cannot be resized while exported.
  if (PyByteArray_Check(obj) || PyMemoryView_Check(obj)) return put_buffer(out_, obj);
  return codec_detail::unconvertible(obj);
}

bool EtfWriter::put_long(PyObject* obj) {
  int overflow;
  long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
  if (!overflow) {
    if (v == -1 && PyErr_Occurred()) return false;
    put_integer(out_, v);
    return true;
  }
  // Beyond int64: the charlist of its decimal digits (§2).
  PyRef digits = codec_detail::int_digits(obj);
  if (!digits) return false;
  Py_ssize_t n;
  const char* s = PyUnicode_AsUTF8AndSize(digits.get(), &n);
  if (!s) return false;
  put_charlist(out_, {s, static_cast<size_t>(n)});
  return true;
}

bool EtfWriter::put_list(PyObject* obj, const Path* parent, int depth) {
  if (depth >= kMaxDepth) return codec_detail::nesting_error(obj, parent, kMaxDepth);
  Py_ssize_t n = PyList_GET_SIZE(obj);
  if (n == 0) {
    out_.push_back(static_cast<char>(kNil));
    return true;
  }
  if (put_byte_list(out_, obj)) return true;
  if (!check_len(static_cast<size_t>(n), "list")) return false;
  out_.push_back(static_cast<char>(kList));
  put_u32(out_, static_cast<size_t>(n));
  const Path here{obj, parent};
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyRef item = codec_detail::list_item(obj, i);
    if (!item) break;
    if (!python_at(item.get(), &here, depth + 1)) return false;
  }
  if (PyList_GET_SIZE(obj) != n) return codec_detail::changed_size("list");
  out_.push_back(static_cast<char>(kNil));
  return true;
}

bool EtfWriter::put_tuple(PyObject* obj, const Path* parent, int depth) {
  if (depth >= kMaxDepth) return codec_detail::nesting_error(obj, parent, kMaxDepth);
  Py_ssize_t n = PyTuple_GET_SIZE(obj);
  if (n <= 255) {
    out_.push_back(static_cast<char>(kSmallTuple));
    out_.push_back(static_cast<char>(n));
  } else {
    if (!check_len(static_cast<size_t>(n), "tuple")) return false;
    out_.push_back(static_cast<char>(kLargeTuple));
    put_u32(out_, static_cast<size_t>(n));
  }
  const Path here{obj, parent};
  for (Py_ssize_t i = 0; i < n; ++i) {
    // Tuples are immutable and held by our caller: borrowed items stay valid.
    if (!python_at(PyTuple_GET_ITEM(obj, i), &here, depth + 1)) return false;
  }
  return true;
}

bool EtfWriter::put_dict(PyObject* obj, const Path* parent, int depth) {
  if (depth >= kMaxDepth) return codec_detail::nesting_error(obj, parent, kMaxDepth);
  Py_ssize_t n = PyDict_GET_SIZE(obj);
  out_.push_back(static_cast<char>(kMap));
  put_u32(out_, static_cast<size_t>(n));
  const Path here{obj, parent};
  return codec_detail::for_each_dict_item(obj, n, [&](PyObject* k, PyObject* v) {
    return python_at(k, &here, depth + 1) && python_at(v, &here, depth + 1);
  });
}

}  // namespace ep
