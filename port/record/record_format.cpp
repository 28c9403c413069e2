#include "record_format.hpp"

#include <cctype>
#include <cstdio>
#include <cstring>

#include "frame.hpp"

namespace ep::rec {

namespace {

uint64_t be(std::string_view s, size_t at, size_t n) { return ep::be(s.data() + at, static_cast<int>(n)); }

// Bounded by the input: every step consumes bytes, and nesting is capped like the port's codecs.
constexpr int kMaxDepth = 1000;

class Reader {
 public:
  explicit Reader(std::string_view s) : s_(s) {}
  bool need(size_t n) const { return s_.size() - pos_ >= n; }
  uint64_t u(size_t n) {
    uint64_t v = be(s_, pos_, n);
    pos_ += n;
    return v;
  }
  std::string_view take(size_t n) {
    auto v = s_.substr(pos_, n);
    pos_ += n;
    return v;
  }
  bool done() const { return pos_ == s_.size(); }
  size_t pos() const { return pos_; }

 private:
  std::string_view s_;
  size_t pos_ = 0;
};

std::string hex_id(const char* what, std::string_view node, const std::vector<uint64_t>& parts) {
  std::string t = std::string("#") + what + "<" + std::string(node);
  for (uint64_t p : parts) t += "." + std::to_string(p);
  return t + ">";
}

// ---- ETF ----

bool etf_term(Reader& r, Term& t, int depth, std::string& err);

bool etf_atom_name(Reader& r, std::string& name, std::string& err) {
  Term a;
  if (!etf_term(r, a, 1, err)) return false;
  if (a.k != Term::K::Atom && a.k != Term::K::Bool && a.k != Term::K::Nil) return err = "expected an atom", false;
  name = a.k == Term::K::Atom ? a.text : a.k == Term::K::Bool ? (a.integer ? "true" : "false") : "nil";
  return true;
}

bool etf_term(Reader& r, Term& t, int depth, std::string& err) {
  if (depth > kMaxDepth) return err = "term nested too deeply", false;
  if (!r.need(1)) return err = "truncated term", false;
  unsigned tag = static_cast<unsigned>(r.u(1));
  auto atom = [&](size_t lenbytes) {
    if (!r.need(lenbytes)) return err = "truncated atom", false;
    size_t n = r.u(lenbytes);
    if (!r.need(n)) return err = "truncated atom", false;
    t.k = Term::K::Atom;
    t.text = std::string(r.take(n));
    if (t.text == "true" || t.text == "false") {
      t.k = Term::K::Bool;
      t.integer = t.text == "true";
    }
    return true;
  };
  auto seq = [&](Term::K k, size_t n) {
    t.k = k;
    if (n > r.pos() + 1 + (1u << 30)) return err = "absurd length", false;
    for (size_t i = 0; i < n; ++i) {
      t.items.emplace_back();
      if (!etf_term(r, t.items.back(), depth + 1, err)) return false;
    }
    return true;
  };
  switch (tag) {
    case 97:
      if (!r.need(1)) break;
      t.k = Term::K::Integer;
      t.integer = static_cast<int64_t>(r.u(1));
      return true;
    case 98:
      if (!r.need(4)) break;
      t.k = Term::K::Integer;
      t.integer = static_cast<int32_t>(static_cast<uint32_t>(r.u(4)));
      return true;
    case 70: {
      if (!r.need(8)) break;
      uint64_t bits = r.u(8);
      t.k = Term::K::Float;
      std::memcpy(&t.real, &bits, 8);
      return true;
    }
    case 100:
    case 118:
      return atom(2);
    case 115:
    case 119:
      return atom(1);
    case 104:
      if (!r.need(1)) break;
      return seq(Term::K::Tuple, r.u(1));
    case 105:
      if (!r.need(4)) break;
      return seq(Term::K::Tuple, r.u(4));
    case 106:
      t.k = Term::K::List;
      return true;
    case 107: {
      if (!r.need(2)) break;
      size_t n = r.u(2);
      if (!r.need(n)) break;
      t.k = Term::K::List;
      for (char c : r.take(n)) {
        Term i;
        i.k = Term::K::Integer;
        i.integer = static_cast<unsigned char>(c);
        t.items.push_back(i);
      }
      return true;
    }
    case 108: {
      if (!r.need(4)) break;
      if (!seq(Term::K::List, r.u(4))) return false;
      Term tail;
      if (!etf_term(r, tail, depth + 1, err)) return false;
      if (!(tail.k == Term::K::List && tail.items.empty())) {
        t.items.push_back(tail);
        t.text = "improper";
      }
      return true;
    }
    case 109: {
      if (!r.need(4)) break;
      size_t n = r.u(4);
      if (!r.need(n)) break;
      t.k = Term::K::Binary;
      t.text = std::string(r.take(n));
      return true;
    }
    case 77: {
      if (!r.need(5)) break;
      size_t n = r.u(4);
      r.u(1);
      if (!r.need(n)) break;
      t.k = Term::K::Opaque;
      t.text = "#Bits<" + std::to_string(n) + " bytes>";
      r.take(n);
      return true;
    }
    case 110:
    case 111: {
      size_t lb = tag == 110 ? 1 : 4;
      if (!r.need(lb + 1)) break;
      size_t n = r.u(lb);
      bool neg = r.u(1) != 0;
      if (!r.need(n)) break;
      std::string_view digits = r.take(n);
      // Little-endian base-256 digits to decimal (schoolbook, fine for the sizes on the wire).
      std::vector<unsigned char> mag;
      for (char c : digits) mag.push_back(static_cast<unsigned char>(c));
      std::string dec;
      while (!mag.empty()) {
        uint32_t rem = 0;
        for (size_t i = mag.size(); i-- > 0;) {
          uint32_t cur = (rem << 8) | mag[i];
          mag[i] = static_cast<unsigned char>(cur / 10);
          rem = cur % 10;
        }
        dec.push_back(static_cast<char>('0' + rem));
        while (!mag.empty() && mag.back() == 0) mag.pop_back();
      }
      if (dec.empty()) dec = "0";
      std::string s(dec.rbegin(), dec.rend());
      if (s.size() <= 18) {
        t.k = Term::K::Integer;
        t.integer = std::stoll(s) * (neg ? -1 : 1);
      } else {
        t.k = Term::K::BigInt;
        t.text = (neg ? "-" : "") + s;
      }
      return true;
    }
    case 116: {
      if (!r.need(4)) break;
      return seq(Term::K::Map, r.u(4) * 2);
    }
    case 88:
    case 103: {
      std::string node;
      if (!etf_atom_name(r, node, err)) return false;
      size_t cr = tag == 88 ? 4 : 1;
      if (!r.need(8 + cr)) break;
      uint64_t id = r.u(4), serial = r.u(4);
      r.u(cr);
      t.k = Term::K::Pid;
      t.text = hex_id("Pid", node, {id, serial});
      return true;
    }
    case 90:
    case 114: {
      if (!r.need(2)) break;
      size_t n = r.u(2);
      std::string node;
      if (!etf_atom_name(r, node, err)) return false;
      size_t cr = tag == 90 ? 4 : 1;
      if (!r.need(cr + 4 * n)) break;
      r.u(cr);
      std::vector<uint64_t> ids;
      for (size_t i = 0; i < n; ++i) ids.push_back(r.u(4));
      t.k = Term::K::Ref;
      t.text = hex_id("Ref", node, ids);
      return true;
    }
    case 120:
    case 89:
    case 102: {
      std::string node;
      if (!etf_atom_name(r, node, err)) return false;
      size_t idn = tag == 120 ? 8 : 4, cr = tag == 102 ? 1 : 4;
      if (!r.need(idn + cr)) break;
      uint64_t id = r.u(idn);
      r.u(cr);
      t.k = Term::K::Opaque;
      t.text = hex_id("Port", node, {id});
      return true;
    }
    case 112: {
      if (!r.need(4)) break;
      size_t n = r.u(4);
      if (n < 4 || !r.need(n - 4)) break;
      r.take(n - 4);
      t.k = Term::K::Opaque;
      t.text = "#Fun<>";
      return true;
    }
    case 113: {
      std::string m, f;
      Term arity;
      if (!etf_atom_name(r, m, err) || !etf_atom_name(r, f, err) || !etf_term(r, arity, depth + 1, err)) return false;
      t.k = Term::K::Opaque;
      t.text = "fun " + m + ":" + f + "/" + std::to_string(arity.integer);
      return true;
    }
    default:
      err = "unknown ETF tag " + std::to_string(tag);
      return false;
  }
  err = "truncated term";
  return false;
}

// ---- msgpack ----

bool mp_term(Reader& r, Term& t, int depth, std::string& err);

bool mp_seq(Reader& r, Term& t, Term::K k, size_t n, int depth, std::string& err) {
  t.k = k;
  for (size_t i = 0; i < n; ++i) {
    if (!r.need(1)) return err = "truncated term", false;
    t.items.emplace_back();
    if (!mp_term(r, t.items.back(), depth + 1, err)) return false;
  }
  return true;
}

bool mp_ext(Reader& r, Term& t, size_t n, int depth, std::string& err) {
  if (!r.need(1 + n)) return err = "truncated ext", false;
  int type = static_cast<int8_t>(r.u(1));
  std::string_view p = r.take(n);
  switch (type) {
    case 1:
      t.k = Term::K::Atom;
      t.text = std::string(p);
      return true;
    case 2: {
      Reader inner(p);
      Term arr;
      if (!mp_term(inner, arr, depth + 1, err)) return false;
      t.k = Term::K::Tuple;
      t.items = std::move(arr.items);
      return true;
    }
    case 3: {
      Reader inner(p);
      if (!inner.need(1) || inner.u(1) != 131) return err = "ext 3 without ETF", false;
      return etf_term(inner, t, depth + 1, err);
    }
    case 4:
      t.k = Term::K::BigInt;
      t.text = std::string(p);
      return true;
    default:
      t.k = Term::K::Opaque;
      t.text = "#Ext<" + std::to_string(type) + ">";
      return true;
  }
}

bool mp_term(Reader& r, Term& t, int depth, std::string& err) {
  if (depth > kMaxDepth) return err = "term nested too deeply", false;
  if (!r.need(1)) return err = "truncated term", false;
  unsigned c = static_cast<unsigned>(r.u(1));
  auto bytes = [&](size_t lb) {
    if (!r.need(lb)) return err = "truncated term", false;
    size_t n = r.u(lb);
    if (!r.need(n)) return err = "truncated term", false;
    t.k = Term::K::Binary;
    t.text = std::string(r.take(n));
    return true;
  };
  auto uint = [&](size_t n) {
    if (!r.need(n)) return err = "truncated term", false;
    uint64_t v = r.u(n);
    if (v > static_cast<uint64_t>(INT64_MAX)) {
      t.k = Term::K::BigInt;
      t.text = std::to_string(v);
    } else {
      t.k = Term::K::Integer;
      t.integer = static_cast<int64_t>(v);
    }
    return true;
  };
  auto sint = [&](size_t n) {
    if (!r.need(n)) return err = "truncated term", false;
    uint64_t v = r.u(n);
    int shift = static_cast<int>(64 - 8 * n);
    t.k = Term::K::Integer;
    t.integer = static_cast<int64_t>(v << shift) >> shift;
    return true;
  };
  if (c <= 0x7f) return t.k = Term::K::Integer, t.integer = c, true;
  if (c >= 0xe0) return t.k = Term::K::Integer, t.integer = static_cast<int8_t>(c), true;
  if ((c & 0xf0) == 0x80) return mp_seq(r, t, Term::K::Map, (c & 0x0f) * 2, depth, err);
  if ((c & 0xf0) == 0x90) return mp_seq(r, t, Term::K::List, c & 0x0f, depth, err);
  if ((c & 0xe0) == 0xa0) {
    size_t n = c & 0x1f;
    if (!r.need(n)) return err = "truncated term", false;
    t.k = Term::K::Binary;
    t.text = std::string(r.take(n));
    return true;
  }
  switch (c) {
    case 0xc0: t.k = Term::K::Atom; t.text = "none"; return true;
    case 0xc2: t.k = Term::K::Bool; t.integer = 0; return true;
    case 0xc3: t.k = Term::K::Bool; t.integer = 1; return true;
    case 0xc4: case 0xd9: return bytes(1);
    case 0xc5: case 0xda: return bytes(2);
    case 0xc6: case 0xdb: return bytes(4);
    case 0xc7: case 0xc8: case 0xc9: {
      size_t lb = c == 0xc7 ? 1 : c == 0xc8 ? 2 : 4;
      if (!r.need(lb)) break;
      return mp_ext(r, t, r.u(lb), depth, err);
    }
    case 0xca: {
      if (!r.need(4)) break;
      uint32_t bits = static_cast<uint32_t>(r.u(4));
      float f;
      std::memcpy(&f, &bits, 4);
      t.k = Term::K::Float;
      t.real = f;
      return true;
    }
    case 0xcb: {
      if (!r.need(8)) break;
      uint64_t bits = r.u(8);
      t.k = Term::K::Float;
      std::memcpy(&t.real, &bits, 8);
      return true;
    }
    case 0xcc: return uint(1);
    case 0xcd: return uint(2);
    case 0xce: return uint(4);
    case 0xcf: return uint(8);
    case 0xd0: return sint(1);
    case 0xd1: return sint(2);
    case 0xd2: return sint(4);
    case 0xd3: return sint(8);
    case 0xd4: return mp_ext(r, t, 1, depth, err);
    case 0xd5: return mp_ext(r, t, 2, depth, err);
    case 0xd6: return mp_ext(r, t, 4, depth, err);
    case 0xd7: return mp_ext(r, t, 8, depth, err);
    case 0xd8: return mp_ext(r, t, 16, depth, err);
    case 0xdc: if (!r.need(2)) break; return mp_seq(r, t, Term::K::List, r.u(2), depth, err);
    case 0xdd: if (!r.need(4)) break; return mp_seq(r, t, Term::K::List, r.u(4), depth, err);
    case 0xde: if (!r.need(2)) break; return mp_seq(r, t, Term::K::Map, r.u(2) * 2, depth, err);
    case 0xdf: if (!r.need(4)) break; return mp_seq(r, t, Term::K::Map, r.u(4) * 2, depth, err);
    default:
      err = "unknown msgpack byte " + std::to_string(c);
      return false;
  }
  err = "truncated term";
  return false;
}

bool plain_atom(const std::string& a) {
  if (a.empty() || !(a[0] >= 'a' && a[0] <= 'z')) return false;
  for (char c : a)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '@')) return false;
  return true;
}

bool printable(const std::string& s) {
  for (unsigned char c : s)
    if (c < 0x20 && c != '\n' && c != '\t' && c != '\r') return false;
  return true;
}

void text_of(const Term& t, std::string& o, size_t max_binary) {
  switch (t.k) {
    case Term::K::Integer: o += std::to_string(t.integer); return;
    case Term::K::BigInt: o += t.text; return;
    case Term::K::Float: {
      char b[40];
      std::snprintf(b, sizeof b, "%.17g", t.real);
      o += b;
      if (!std::strpbrk(b, ".eE")) o += ".0";
      return;
    }
    case Term::K::Bool: o += t.integer ? "true" : "false"; return;
    case Term::K::Nil: o += "[]"; return;
    case Term::K::Atom:
      if (plain_atom(t.text)) o += t.text;
      else o += "'" + t.text + "'";
      return;
    case Term::K::Pid:
    case Term::K::Ref:
    case Term::K::Opaque: o += t.text; return;
    case Term::K::Binary: {
      std::string_view s = t.text;
      bool cut = max_binary && s.size() > max_binary;
      if (cut) s = s.substr(0, max_binary);
      if (printable(t.text)) {
        o += "<<\"";
        for (char c : s) {
          if (c == '"' || c == '\\') o += '\\', o += c;
          else if (c == '\n') o += "\\n";
          else if (c == '\t') o += "\\t";
          else if (c == '\r') o += "\\r";
          else o += c;
        }
        o += "\"";
      } else {
        o += "<<";
        for (size_t i = 0; i < s.size(); ++i) o += (i ? "," : "") + std::to_string(static_cast<unsigned char>(s[i]));
      }
      if (cut) o += "...(" + std::to_string(t.text.size()) + " bytes)";
      o += ">>";
      return;
    }
    case Term::K::List:
    case Term::K::Tuple: {
      bool list = t.k == Term::K::List;
      o += list ? "[" : "{";
      for (size_t i = 0; i < t.items.size(); ++i) {
        if (i) o += (list && i + 1 == t.items.size() && t.text == "improper") ? "|" : ",";
        text_of(t.items[i], o, max_binary);
      }
      o += list ? "]" : "}";
      return;
    }
    case Term::K::Map: {
      o += "#{";
      for (size_t i = 0; i + 1 < t.items.size(); i += 2) {
        if (i) o += ",";
        text_of(t.items[i], o, max_binary);
        o += " => ";
        text_of(t.items[i + 1], o, max_binary);
      }
      o += "}";
      return;
    }
  }
}

// 0x followed by 4 or more hex digits (object addresses in reprs and tracebacks) -> 0x_.
std::string without_addresses(const std::string& s) {
  std::string o;
  for (size_t i = 0; i < s.size();) {
    if (s[i] == '0' && i + 1 < s.size() && (s[i + 1] == 'x' || s[i + 1] == 'X')) {
      size_t j = i + 2;
      while (j < s.size() && std::isxdigit(static_cast<unsigned char>(s[j]))) ++j;
      if (j - i - 2 >= 4) {
        o += "0x_";
        i = j;
        continue;
      }
    }
    o += s[i++];
  }
  return o;
}

void normalise(Term& t) {
  if (t.k == Term::K::Binary) t.text = without_addresses(t.text);
  for (Term& i : t.items) normalise(i);
}

Term wildcard() {
  Term w;
  w.k = Term::K::Opaque;  // printed bare: _
  w.text = "_";
  return w;
}

}  // namespace

std::string encode_file_header(const FileHeader& h) {
  std::string o(kMagic, sizeof kMagic);
  put_be(o, h.version, 2);
  o.push_back(static_cast<char>(h.codec));
  o.push_back(0);
  put_be(o, 0, 4);
  put_be(o, h.start_unix_ns, 8);
  put_be(o, h.max_bytes, 8);
  return o;
}

std::string encode_record_header(Type type, uint32_t length, uint64_t t_ns) {
  std::string o;
  o.push_back(static_cast<char>(type));
  o.append(3, '\0');
  put_be(o, length, 4);
  put_be(o, t_ns, 8);
  return o;
}

ParsedFile parse_file(std::string_view b) {
  ParsedFile f;
  if (b.size() < kFileHeaderSize || std::memcmp(b.data(), kMagic, sizeof kMagic) != 0) {
    f.error = "not a recording (no EPREC1 header)";
    return f;
  }
  f.header.version = static_cast<uint16_t>(be(b, 8, 2));
  f.header.codec = static_cast<uint8_t>(b[10]);
  f.header.start_unix_ns = be(b, 16, 8);
  f.header.max_bytes = be(b, 24, 8);
  if (f.header.version != kVersion) {
    f.error = "recording format version " + std::to_string(f.header.version) + " (this tool reads 1)";
    return f;
  }
  size_t at = kFileHeaderSize;
  while (at < b.size()) {
    if (b.size() - at < kRecordHeaderSize) {
      f.torn_tail = true;
      break;
    }
    size_t len = be(b, at + 4, 4);
    if (b.size() - at - kRecordHeaderSize < len) {
      f.torn_tail = true;
      break;
    }
    Record r;
    r.type = static_cast<Type>(b[at]);
    r.t_ns = be(b, at + 8, 8);
    r.payload = std::string(b.substr(at + kRecordHeaderSize, len));
    f.records.push_back(std::move(r));
    at += kRecordHeaderSize + len;
  }
  return f;
}

bool parse_body(int codec, std::string_view body, Term& out, std::string& err) {
  Reader r(body);
  out = Term();
  if (codec == 0) {
    if (!r.need(1) || r.u(1) != 131) return err = "no ETF version byte", false;
    if (!etf_term(r, out, 1, err)) return false;
  } else if (!mp_term(r, out, 1, err)) {
    return false;
  }
  if (!r.done()) return err = "bytes after the term", false;
  return true;
}

std::string to_text(const Term& t, size_t max_binary) {
  std::string o;
  text_of(t, o, max_binary);
  return o;
}

std::string normalised_text(uint8_t kind, const Term& body) {
  Term t = body;
  normalise(t);
  if ((kind == 64 || kind == 65) && t.k == Term::K::Map) {
    for (size_t i = 0; i + 1 < t.items.size(); i += 2)
      if (t.items[i].k == Term::K::Atom && t.items[i].text == "os_pid") t.items[i + 1] = wildcard();
  }
  if ((kind == 67 || kind == 68) && t.k == Term::K::Tuple && !t.items.empty()) t.items[0] = wildcard();
  return to_text(t);
}

std::string kind_name(uint8_t kind) {
  static const char* const e2p[] = {nullptr, "call", "eval", "exec", "cast", "cancel", "callback_reply",
                                    "context_create", "context_destroy", "env_drop", "stats", "stream_next",
                                    "output_ack", "context_init", "drain", "ref_op"};
  static const char* const p2e[] = {"hello", "result", "error", "callback", "send", "output",
                                    "protocol_error", "env_created", "stream_chunk", "stream_end", "log",
                                    "requeue"};
  if (kind >= 1 && kind <= 15) return e2p[kind];
  if (kind >= 64 && kind <= 75) return p2e[kind - 64];
  if (kind == 25) return "record";
  if (kind == 26) return "interrupt";
  return "kind " + std::to_string(kind);
}

std::string describe_frame(int codec, std::string_view frame, size_t max_binary) {
  if (frame.size() < 16) return "short frame (" + std::to_string(frame.size()) + " bytes)";
  uint8_t kind = static_cast<uint8_t>(frame[0]), flags = static_cast<uint8_t>(frame[1]);
  std::string o = kind_name(kind) + " ctx=" + std::to_string(be(frame, 4, 4)) + " id=" + std::to_string(be(frame, 8, 8));
  if (flags & 0x01) o += " nested";
  if (flags & 0x02) {
    // The bulk transport (PROTOCOL.md §3.12): the body lives in shared memory, not in the frame.
    o += " shm(flag 0x02): body in shared memory, not in the recording (" + std::to_string(frame.size() - 16) +
         " descriptor bytes)";
    return o;
  }
  if (flags & ~0x03) o += " flags=0x" + std::to_string(flags);
  Term t;
  std::string err;
  if (parse_body(codec, frame.substr(16), t, err)) o += " " + to_text(t, max_binary);
  else o += " <undecodable body, " + std::to_string(frame.size() - 16) + " bytes: " + err + ">";
  return o;
}

}  // namespace ep::rec
