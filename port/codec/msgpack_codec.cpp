// msgpack body codec, straight to and from Python objects (PROTOCOL.md §1.2, §2).
//
// Hand-written rather than through msgpack-cxx: decoding goes byte -> PyObject with no intermediate
// msgpack::object tree, encoding appends to the caller's string. Extension types: 1 atom (UTF-8 name),
// 2 tuple (payload: one array), 3 opaque term (payload: term_to_binary bytes), 4 bigint (decimal).
#include <cmath>
#include <cstring>
#include <limits>

#include "codec.hpp"
#include "erlang_types.hpp"

namespace ep {
namespace {

constexpr int kMaxDecodeDepth = 10000;
constexpr int kMaxEncodeDepth = 1000;

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
inline uint64_t be64(const unsigned char* p) { return (uint64_t{be32(p)} << 32) | be32(p + 4); }

// ---------------------------------------------------------------------------------------------------
// Decoding

class Decoder : codec_detail::DecodeCursor {
 public:
  Decoder(std::string_view body, std::string& err) : DecodeCursor(body, err) {}

  PyRef run() {
    return whole_body([this] { return value(0); });
  }

 private:
  [[gnu::cold, gnu::noinline]] PyRef fail_ext_type(int type, const unsigned char* where) {
    err_ = "unknown ext type " + std::to_string(type) + " at byte " + std::to_string(offset(where));
    return {};
  }
  // Big-endian unsigned of `n` bytes (1, 2, 4 or 8); false if truncated.
  bool read_uint(size_t n, uint64_t& v) {
    if (!need(n)) return false;
    switch (n) {
      case 1: v = p_[0]; break;
      case 2: v = be16(p_); break;
      case 4: v = be32(p_); break;
      default: v = be64(p_); break;
    }
    p_ += n;
    return true;
  }

  PyRef value(int depth) {
    if (!need(1)) return {};
    const unsigned char* start = p_;
    const unsigned b = *p_++;
    if (b <= 0x7f) return py(PyLong_FromLong(static_cast<long>(b)));  // positive fixint
    if (b >= 0xe0) return py(PyLong_FromLong(static_cast<int8_t>(b)));  // negative fixint
    if (b <= 0x8f) return map(b & 0x0f, depth);
    if (b <= 0x9f) return array(b & 0x0f, depth);
    if (b <= 0xbf) return str(b & 0x1f);
    uint64_t n;
    switch (b) {
      case 0xc0: return PyRef::borrow(Py_None);
      case 0xc2: return PyRef::borrow(Py_False);
      case 0xc3: return PyRef::borrow(Py_True);
      case 0xc4: case 0xc5: case 0xc6:  // bin 8/16/32
        if (!read_uint(size_t{1} << (b - 0xc4), n)) return {};
        if (!need(n)) return {};
        p_ += n;
        return py(PyBytes_FromStringAndSize(reinterpret_cast<const char*>(p_ - n),
                                            static_cast<Py_ssize_t>(n)));
      case 0xc7: case 0xc8: case 0xc9:  // ext 8/16/32
        if (!read_uint(size_t{1} << (b - 0xc7), n)) return {};
        return ext(n, start, depth);
      case 0xca: {  // float 32
        if (!read_uint(4, n)) return {};
        uint32_t bits = static_cast<uint32_t>(n);
        float f;
        std::memcpy(&f, &bits, sizeof f);
        return py(PyFloat_FromDouble(f));
      }
      case 0xcb: {  // float 64
        if (!read_uint(8, n)) return {};
        double d;
        std::memcpy(&d, &n, sizeof d);
        return py(PyFloat_FromDouble(d));
      }
      case 0xcc: case 0xcd: case 0xce: case 0xcf:  // uint 8/16/32/64
        if (!read_uint(size_t{1} << (b - 0xcc), n)) return {};
        return py(PyLong_FromUnsignedLongLong(n));
      case 0xd0: if (!read_uint(1, n)) return {}; return py(PyLong_FromLong(static_cast<int8_t>(n)));
      case 0xd1: if (!read_uint(2, n)) return {}; return py(PyLong_FromLong(static_cast<int16_t>(n)));
      case 0xd2: if (!read_uint(4, n)) return {}; return py(PyLong_FromLong(static_cast<int32_t>(n)));
      case 0xd3: if (!read_uint(8, n)) return {}; return py(PyLong_FromLongLong(static_cast<int64_t>(n)));
      case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8:  // fixext 1/2/4/8/16
        return ext(size_t{1} << (b - 0xd4), start, depth);
      case 0xd9: case 0xda: case 0xdb:  // str 8/16/32
        if (!read_uint(size_t{1} << (b - 0xd9), n)) return {};
        return str(n);
      case 0xdc: case 0xdd:  // array 16/32
        if (!read_uint(size_t{2} << (b - 0xdc), n)) return {};
        return array(n, depth);
      case 0xde: case 0xdf:  // map 16/32
        if (!read_uint(size_t{2} << (b - 0xde), n)) return {};
        return map(n, depth);
      default:  // 0xc1, never used
        return fail_at("invalid msgpack byte 0xc1", start);
    }
  }

  PyRef str(size_t n) {
    if (!need(n)) return {};
    const char* data = reinterpret_cast<const char*>(p_);
    p_ += n;
    // Not valid UTF-8: the Erlang side sends such binaries as bin, but be lenient and give bytes.
    return py(codec_detail::text_or_bytes(data, n));
  }

  PyRef array(size_t n, int depth) {
    if (depth >= kMaxDecodeDepth) return too_deep();
    if (n > remaining()) return truncated();  // every element takes at least one byte
    PyRef l = py(PyList_New(static_cast<Py_ssize_t>(n)));
    if (!l) return {};
    for (size_t i = 0; i < n; ++i) {
      PyRef item = value(depth + 1);
      if (!item) return {};
      PyList_SET_ITEM(l.get(), static_cast<Py_ssize_t>(i), item.release());
    }
    return l;
  }

  PyRef map(size_t n, int depth) {
    if (depth >= kMaxDecodeDepth) return too_deep();
    if (n > remaining() / 2) return truncated();
    PyRef d = py(PyDict_New());
    if (!d) return {};
    for (size_t i = 0; i < n; ++i) {
      PyRef k = key(depth + 1);
      if (!k) return {};
      PyRef v = value(depth + 1);
      if (!v) return {};
      if (!codec_detail::dict_set(d.get(), k.get(), v.get(), err_)) return {};
    }
    return d;
  }

  // A map key: short strs and atoms that decode to str come from the key cache.
  PyRef key(int depth) {
    const size_t avail = remaining();
    if (avail < 2) return value(depth);
    const unsigned b = p_[0];
    size_t n, header;
    int kind;
    if (b >= 0xa0 && b <= 0xbf) {  // fixstr
      n = b & 0x1f;
      header = 1;
      kind = 0;
    } else if (b == 0xd9) {  // str 8
      n = p_[1];
      header = 2;
      kind = 0;
    } else if (b >= 0xd4 && b <= 0xd8 && static_cast<int8_t>(p_[1]) == kExtAtom) {  // fixext atom
      n = size_t{1} << (b - 0xd4);
      header = 2;
      kind = 1;
    } else if (b == 0xc7 && avail >= 3 && static_cast<int8_t>(p_[2]) == kExtAtom) {  // ext 8 atom
      n = p_[1];
      header = 3;
      kind = 1;
    } else {
      return value(depth);
    }
    if (n > codec_detail::KeyCache::kMaxKey || avail - header < n) return value(depth);
    std::string_view raw(reinterpret_cast<const char*>(p_ + header), n);
    if (PyRef hit = keys_.find(raw, kind)) {
      p_ += header + n;
      return hit;
    }
    PyRef k = value(depth);
    if (k && PyUnicode_CheckExact(k.get())) keys_.store(raw, kind, k.get());  // not true, none, bytes...
    return k;
  }

  [[gnu::cold, gnu::noinline]] PyRef too_deep() {
    err_ = "term nested deeper than " + std::to_string(kMaxDecodeDepth) + " levels";
    return {};
  }

  // p_ is at the type byte; `start` is the ext's first byte (for messages).
  PyRef ext(size_t len, const unsigned char* start, int depth) {
    if (!need(1)) return {};
    const int8_t type = static_cast<int8_t>(*p_++);
    if (!need(len)) return {};
    const unsigned char* payload = p_;
    std::string_view data(reinterpret_cast<const char*>(payload), len);
    switch (type) {
      case kExtAtom: {
        p_ += len;
        PyRef v = codec_detail::atom_value(data, false);
        if (v) return v;
        if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) return fail_python();
        PyErr_Clear();
        return fail_at("invalid UTF-8 in atom", payload);
      }
      case kExtTuple:
        return tuple(payload + len, depth);
      case kExtEtf:
        p_ += len;
        return etf(data, payload);
      case kExtBigint:
        p_ += len;
        return bigint(data, payload);
      default:
        return fail_ext_type(type, start);
    }
  }

  // Ext 2: the payload is exactly one array, whose elements become the tuple.
  PyRef tuple(const unsigned char* payload_end, int depth) {
    if (depth >= kMaxDecodeDepth) return too_deep();
    const unsigned char* outer_end = end_;
    end_ = payload_end;  // reads inside the payload stop at its end
    const unsigned char* start = p_;
    if (!need(1)) return {};
    const unsigned b = *p_++;
    uint64_t n;
    if (b >= 0x90 && b <= 0x9f) {
      n = b & 0x0f;
    } else if (b == 0xdc || b == 0xdd) {
      if (!read_uint(size_t{2} << (b - 0xdc), n)) return {};
    } else {
      return fail_at("tuple ext does not hold an array", start);
    }
    PyRef t;
    bool matched = false;
    if (n == 2) t = bytes_pair(matched);
    if (!matched) {
      if (n > remaining()) return truncated();
      t = py(PyTuple_New(static_cast<Py_ssize_t>(n)));
      if (!t) return {};
      for (size_t i = 0; i < n; ++i) {
        PyRef item = value(depth + 1);
        if (!item) return {};
        PyTuple_SET_ITEM(t.get(), static_cast<Py_ssize_t>(i), item.release());
      }
    }
    if (!t) return {};
    if (p_ != end_) return fail_at("trailing bytes in tuple ext", p_);
    end_ = outer_end;
    return t;
  }

  // {bytes, B}: first element the atom `bytes` (ext 1), second a str or bin -> always bytes.
  PyRef bytes_pair(bool& matched) {
    const unsigned char* q = p_;
    size_t avail = remaining();
    if (avail < 1) return {};
    size_t len, hdr;
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
    if (avail - hdr < len) return {};  // truncated: the general path reports it
    matched = true;
    p_ = q + hdr + len;
    return py(PyBytes_FromStringAndSize(reinterpret_cast<const char*>(q + hdr),
                                        static_cast<Py_ssize_t>(len)));
  }

  // Ext 3: term_to_binary bytes. A pid gives erlang.Pid, a reference/port/fun erlang.Term (any other
  // term is decoded as usual). Not a leaf of the recursion, so out of line with its own std::string.
  [[gnu::noinline]] PyRef etf(std::string_view data, const unsigned char* payload) {
    if (data.empty() || payload[0] != 131) return fail_at("ext 3 payload is not ETF", payload);
    std::string sub;
    PyRef v = etf_decode(data, sub);
    if (!v) {
      fail_at("bad ETF in ext 3", payload);
      err_ += ": " + sub;
    }
    return v;
  }

  [[gnu::noinline]] PyRef bigint(std::string_view digits, const unsigned char* payload) {
    // Signed decimal ASCII; checked here because PyLong_FromString also takes '_', spaces, "0x"...
    size_t i = !digits.empty() && (digits[0] == '-' || digits[0] == '+') ? 1 : 0;
    bool ok = i < digits.size();
    for (; ok && i < digits.size(); ++i) ok = digits[i] >= '0' && digits[i] <= '9';
    if (!ok) return fail_at("bad integer in ext 4", payload);
    std::string text(digits);  // PyLong_FromString wants a NUL-terminated string
    return py(PyLong_FromString(text.c_str(), nullptr, 10));
  }

  codec_detail::KeyCache keys_;
};

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
  if (depth >= kMaxEncodeDepth) return codec_detail::nesting_error(obj, parent, kMaxEncodeDepth);
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
  if (depth >= kMaxEncodeDepth) return codec_detail::nesting_error(obj, parent, kMaxEncodeDepth);
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
  if (depth >= kMaxEncodeDepth) return codec_detail::nesting_error(obj, parent, kMaxEncodeDepth);
  Py_ssize_t n = PyDict_GET_SIZE(obj);
  put_map_header(out_, static_cast<size_t>(n));
  const Path here{obj, parent};
  return codec_detail::for_each_dict_item(obj, n, [&](PyObject* k, PyObject* v) {
    return python_at(k, &here, depth + 1) && python_at(v, &here, depth + 1);
  });
}

}  // namespace ep
