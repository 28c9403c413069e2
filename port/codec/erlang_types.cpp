// erlang.Pid, erlang.Ref and erlang.Term: immutable holders of a term's ETF bytes (see erlang_types.hpp).
#include "erlang_types.hpp"
#include "interp.hpp"

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace ep {
namespace {

// One layout for the three types: the ETF bytes stored inline (ob_size = byte count), plus a cached hash.
struct OpaqueObject {
  PyObject_VAR_HEAD
  Py_hash_t hash;  // -1 until first computed
  char data[1];
};
constexpr Py_ssize_t kBasicSize = offsetof(OpaqueObject, data);

// Heap types from PyType_FromSpec, one set per interpreter (interp.hpp: owngil contexts run in
// sub-interpreters of their own), kept in that interpreter's Interp.
PyTypeObject* type_of(const PyRef& t) { return reinterpret_cast<PyTypeObject*>(t.get()); }

OpaqueObject* as_opaque(PyObject* o) { return reinterpret_cast<OpaqueObject*>(o); }
std::string_view bytes_of(PyObject* o) {
  return {as_opaque(o)->data, static_cast<size_t>(Py_SIZE(o))};
}

void opaque_dealloc(PyObject* self);

// Any interpreter's Pid/Ref/Term: the three types (of every interpreter) share this dealloc.
bool is_opaque(PyObject* o) { return Py_TYPE(o)->tp_dealloc == &opaque_dealloc; }
bool is_ref(PyObject* o) { return std::strcmp(Py_TYPE(o)->tp_name, "erlang.Ref") == 0; }

void opaque_dealloc(PyObject* self) {
  // Instances of heap types own a reference to their type.
  PyTypeObject* tp = Py_TYPE(self);
  tp->tp_free(self);
  Py_DECREF(tp);
}

Py_hash_t opaque_hash(PyObject* self) {
  OpaqueObject* o = as_opaque(self);
  if (o->hash != -1) return o->hash;
  // FNV-1a over the bytes: no private CPython hashing API needed, and the bytes are short.
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : bytes_of(self)) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  Py_hash_t r = static_cast<Py_hash_t>(h);
  if (r == -1) r = -2;  // -1 means "error" to CPython
  o->hash = r;
  return r;
}

PyObject* opaque_richcompare(PyObject* a, PyObject* b, int op) {
  // Only a Pid with a Pid, a Ref with a Ref, a Term with a Term; the types are final, so an exact
  // check suffices.
  if (!is_opaque(a) || Py_TYPE(a) != Py_TYPE(b)) Py_RETURN_NOTIMPLEMENTED;
  std::string_view x = bytes_of(a), y = bytes_of(b);
  int c = x.compare(y);
  Py_RETURN_RICHCOMPARE(c, 0, op);
}

// --- repr: a bounds-checked walk over the (already validated) ETF bytes -------------------------

struct Reader {
  const unsigned char* p;
  const unsigned char* end;
  bool ok = true;

  bool need(size_t n) {
    if (ok && static_cast<size_t>(end - p) >= n) return true;
    ok = false;
    return false;
  }
  unsigned u8() { return need(1) ? *p++ : 0; }
  uint32_t u16() {
    if (!need(2)) return 0;
    uint32_t v = (uint32_t{p[0]} << 8) | p[1];
    p += 2;
    return v;
  }
  uint32_t u32() {
    if (!need(4)) return 0;
    uint32_t v = (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
    p += 4;
    return v;
  }
  uint64_t u64() {
    uint64_t hi = u32();
    return (hi << 32) | u32();
  }
  std::string_view atom() {
    size_t n;
    switch (u8()) {
      case 100: case 118: n = u16(); break;  // ATOM_EXT, ATOM_UTF8_EXT
      case 115: case 119: n = u8(); break;   // SMALL_ATOM_EXT, SMALL_ATOM_UTF8_EXT
      default: ok = false; return {};
    }
    if (!need(n)) return {};
    std::string_view s(reinterpret_cast<const char*>(p), n);
    p += n;
    return s;
  }
  // SMALL_INTEGER_EXT or INTEGER_EXT.
  int64_t small_int() {
    switch (u8()) {
      case 97: return u8();
      case 98: return static_cast<int32_t>(u32());
      default: ok = false; return 0;
    }
  }
};

// Concatenation by append: GCC 12 warns falsely (-Wrestrict) on `"literal" + std::string`.
template <class... Parts>
std::string cat(const Parts&... parts) {
  std::string s;
  (s.append(parts), ...);
  return s;
}

std::string node_suffix(std::string_view node) {
  if (node == "nonode@nohost") return {};
  return cat(" @ ", node);
}

std::string pid_text(std::string_view etf) {
  Reader r{reinterpret_cast<const unsigned char*>(etf.data()),
           reinterpret_cast<const unsigned char*>(etf.data() + etf.size())};
  unsigned tag = r.u8();
  if (tag != 88 && tag != 103) return {};
  std::string_view node = r.atom();
  uint32_t id = r.u32(), serial = r.u32();
  if (!r.ok) return {};
  return cat("<0.", std::to_string(id), ".", std::to_string(serial), ">", node_suffix(node));
}

std::string term_text(std::string_view etf) {
  Reader r{reinterpret_cast<const unsigned char*>(etf.data()),
           reinterpret_cast<const unsigned char*>(etf.data() + etf.size())};
  std::string s;
  switch (r.u8()) {
    case 90: case 114: {  // NEWER_REFERENCE_EXT, NEW_REFERENCE_EXT
      unsigned tag = static_cast<unsigned char>(etf[0]);
      uint32_t len = r.u16();
      std::string_view node = r.atom();
      if (tag == 90) r.u32(); else r.u8();  // creation
      if (!r.need(size_t{len} * 4)) return {};
      uint32_t words[8];
      for (uint32_t i = 0; i < len && i < 8; ++i) words[i] = r.u32();
      s = "#Ref<0";
      // Erlang prints the id words most significant first.
      for (uint32_t i = len < 8 ? len : 8; i-- > 0;) s.append(".").append(std::to_string(words[i]));
      s.append(">").append(node_suffix(node));
      break;
    }
    case 101: {  // REFERENCE_EXT
      std::string_view node = r.atom();
      uint32_t id = r.u32();
      s = cat("#Ref<0.", std::to_string(id), ">", node_suffix(node));
      break;
    }
    case 120: case 89: case 102: {  // V4_PORT_EXT, NEW_PORT_EXT, PORT_EXT
      unsigned tag = static_cast<unsigned char>(etf[0]);
      std::string_view node = r.atom();
      uint64_t id = tag == 120 ? r.u64() : r.u32();
      s = cat("#Port<0.", std::to_string(id), ">", node_suffix(node));
      break;
    }
    case 112: {  // NEW_FUN_EXT: Size Arity Uniq[16] Index NumFree Module OldIndex OldUniq ...
      r.u32();
      r.u8();
      if (!r.need(16)) return {};
      r.p += 16;
      r.u32();
      r.u32();
      std::string_view mod = r.atom();
      int64_t old_index = r.small_int();
      int64_t old_uniq = r.small_int();
      s = cat("#Fun<", mod, ".", std::to_string(old_index), ".",
              std::to_string(static_cast<uint32_t>(old_uniq)), ">");
      break;
    }
    case 113: {  // EXPORT_EXT
      std::string_view mod = r.atom(), fun = r.atom();
      int64_t arity = r.small_int();
      s = cat("fun ", mod, ":", fun, "/", std::to_string(arity));
      break;
    }
    default:
      return {};
  }
  return r.ok ? s : std::string();
}

PyObject* opaque_repr(PyObject* self) {
  bool pid = std::strcmp(Py_TYPE(self)->tp_name, "erlang.Pid") == 0;
  std::string_view etf = bytes_of(self);
  std::string inner = pid ? pid_text(etf) : term_text(etf);
  std::string text = pid ? "<erlang.Pid " : is_ref(self) ? "<erlang.Ref " : "<erlang.Term ";
  if (inner.empty()) text.append("(").append(std::to_string(etf.size())).append(" bytes)");
  else text.append(inner);
  text.push_back('>');
  // Atom names are UTF-8 (or Latin-1 from ATOM_EXT); never fail a repr over that.
  return PyUnicode_DecodeUTF8(text.data(), static_cast<Py_ssize_t>(text.size()), "replace");
}

PyType_Slot pid_slots[] = {
    {Py_tp_dealloc, reinterpret_cast<void*>(opaque_dealloc)},
    {Py_tp_hash, reinterpret_cast<void*>(opaque_hash)},
    {Py_tp_richcompare, reinterpret_cast<void*>(opaque_richcompare)},
    {Py_tp_repr, reinterpret_cast<void*>(opaque_repr)},
    {Py_tp_doc, const_cast<char*>("An Erlang pid. Hashable, comparable; converts back to the same pid.")},
    {0, nullptr},
};
PyType_Slot ref_slots[] = {
    {Py_tp_dealloc, reinterpret_cast<void*>(opaque_dealloc)},
    {Py_tp_hash, reinterpret_cast<void*>(opaque_hash)},
    {Py_tp_richcompare, reinterpret_cast<void*>(opaque_richcompare)},
    {Py_tp_repr, reinterpret_cast<void*>(opaque_repr)},
    {Py_tp_doc, const_cast<char*>(
        "An Erlang reference. Hashable, comparable; converts back to the same reference.")},
    {0, nullptr},
};
PyType_Slot term_slots[] = {
    {Py_tp_dealloc, reinterpret_cast<void*>(opaque_dealloc)},
    {Py_tp_hash, reinterpret_cast<void*>(opaque_hash)},
    {Py_tp_richcompare, reinterpret_cast<void*>(opaque_richcompare)},
    {Py_tp_repr, reinterpret_cast<void*>(opaque_repr)},
    {Py_tp_doc, const_cast<char*>(
        "An opaque Erlang term (port or fun). Hashable, comparable; converts back to the same term.")},
    {0, nullptr},
};

constexpr unsigned kFlags =
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION;
PyType_Spec pid_spec = {"erlang.Pid", static_cast<int>(kBasicSize), 1, kFlags, pid_slots};
PyType_Spec ref_spec = {"erlang.Ref", static_cast<int>(kBasicSize), 1, kFlags, ref_slots};
PyType_Spec term_spec = {"erlang.Term", static_cast<int>(kBasicSize), 1, kFlags, term_slots};

PyRef make_opaque(PyTypeObject* type, std::string_view etf) {
  if (!type) {
    PyErr_SetString(PyExc_RuntimeError, "erlang types are not ready in this interpreter");
    return {};
  }
  OpaqueObject* o = PyObject_NewVar(OpaqueObject, type, static_cast<Py_ssize_t>(etf.size()));
  if (!o) return {};
  o->hash = -1;
  if (!etf.empty()) std::memcpy(o->data, etf.data(), etf.size());
  return PyRef(reinterpret_cast<PyObject*>(o));
}

}  // namespace

bool erlang_types_ready() {
  Interp* in = find_current_interp();
  if (!in && PyInterpreterState_Get() == PyInterpreterState_Main()) in = ensure_main_interp().get();
  if (!in) {
    PyErr_SetString(PyExc_ImportError, "_erlang is only available in the port's own interpreters");
    return false;
  }
  if (in->pid_type) return true;
  PyRef pid(PyType_FromSpec(&pid_spec));
  if (!pid) return false;
  PyRef ref(PyType_FromSpec(&ref_spec));
  if (!ref) return false;
  PyRef term(PyType_FromSpec(&term_spec));
  if (!term) return false;
  // Kept for the interpreter's life (instances hold their type too).
  in->pid_type = std::move(pid);
  in->ref_type = std::move(ref);
  in->term_type = std::move(term);
  return true;
}

PyTypeObject* pid_type() { return type_of(current_interp().pid_type); }
PyTypeObject* ref_type() { return type_of(current_interp().ref_type); }
PyTypeObject* term_type() { return type_of(current_interp().term_type); }

PyRef make_pid(std::string_view etf_fragment) { return make_opaque(pid_type(), etf_fragment); }
// chan: set by the channels module at start-up; read by every reference decode.
RefHook g_ref_hook = nullptr;

void set_ref_hook(RefHook hook) { g_ref_hook = hook; }

PyRef make_ref(std::string_view etf_fragment) {
  if (g_ref_hook) {
    PyRef special = g_ref_hook(etf_fragment);
    if (special || PyErr_Occurred()) return special;
  }
  return make_opaque(ref_type(), etf_fragment);
}
PyRef make_term(std::string_view etf_fragment) { return make_opaque(term_type(), etf_fragment); }

bool opaque_bytes(PyObject* obj, std::string_view& out) {
  if (!is_opaque(obj)) return false;
  out = bytes_of(obj);
  return true;
}

}  // namespace ep
