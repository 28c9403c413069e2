// Object references (PROTOCOL.md §3.8): `call ... #{return => ref}` keeps its result in the context
// and answers {py_ref, ObjId, TypeName}; ref_op works on the kept object. Context thread, GIL held.
#include <string>

#include "runtime.hpp"

namespace ep {

namespace {
std::string_view text_of(PyObject* s) {
  Py_ssize_t n = 0;
  const char* p = s ? PyUnicode_AsUTF8AndSize(s, &n) : nullptr;
  if (!p) {
    PyErr_Clear();
    return "object";
  }
  return std::string_view(p, static_cast<size_t>(n));
}
}  // namespace

void Runtime::ref_result_frame(std::string& out, const Header& h, PyObject* obj, uint64_t serial,
                               const std::string& key) {
  uint64_t id = envs_.keep(serial, key, obj);
  if (id == 0) {
    error_frame(out, h.ctx, h.id, "RuntimeError", "the environment was dropped while the call ran", "");
    return;
  }
  PyRef name(PyObject_GetAttrString(reinterpret_cast<PyObject*>(Py_TYPE(obj)), "__name__"));
  if (!name || !PyUnicode_Check(name.get())) PyErr_Clear();
  std::string_view type_name = name && PyUnicode_Check(name.get()) ? text_of(name.get()) : "object";
  size_t start = begin_frame(out, Header{static_cast<uint8_t>(Kind::Result), 0, 0, h.ctx, h.id});
  write_body(out, [&](auto& w) {
    w.tuple(3);
    w.atom("py_ref");
    w.integer(static_cast<int64_t>(id));
    w.str(type_name);
    return true;
  });
  finish_frame(out, start);
}

void Runtime::serve_ref_op(std::string& out, const Header& h, PyObject* body, uint64_t serial) {
  if (!PyTuple_Check(body) || PyTuple_GET_SIZE(body) != 6 || !PyLong_Check(PyTuple_GET_ITEM(body, 1)) ||
      !PyUnicode_Check(PyTuple_GET_ITEM(body, 2)) || !PyList_Check(PyTuple_GET_ITEM(body, 4)) ||
      !PyDict_Check(PyTuple_GET_ITEM(body, 5))) {
    protocol_error_frame(out, h.ctx, h.id, "bad_shape",
                         "expected {Env, ObjId :: integer, Op, Name, Args :: list, Kwargs :: map}");
    return;
  }
  std::string key;
  EnvKind kind;
  if (!env_key(PyTuple_GET_ITEM(body, 0), key, kind)) {
    error_frame_from_exception(out, h.ctx, h.id);
    return;
  }
  unsigned long long obj_id = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(body, 1));
  if (PyErr_Occurred()) {
    PyErr_Clear();
    obj_id = 0;  // never an ObjId: answered KeyError below
  }
  PyObject* op = PyTuple_GET_ITEM(body, 2);
  PyObject* name = PyTuple_GET_ITEM(body, 3);
  auto unknown = [&] {
    std::string msg = "no object " + std::to_string(obj_id) + " for this environment in context " +
                      std::to_string(h.ctx);
    error_frame(out, h.ctx, h.id, "KeyError", msg, "");
  };
  if (PyUnicode_CompareWithASCIIString(op, "release") == 0) {
    if (envs_.release(serial, key, obj_id)) ok_frame(out, h.ctx, h.id);
    else unknown();
    return;
  }
  bool is_getattr = PyUnicode_CompareWithASCIIString(op, "getattr") == 0;
  bool is_call = PyUnicode_CompareWithASCIIString(op, "call_method") == 0;
  bool is_term = PyUnicode_CompareWithASCIIString(op, "to_term") == 0;
  if (!is_getattr && !is_call && !is_term) {
    protocol_error_frame(out, h.ctx, h.id, "bad_shape", "Op must be getattr, call_method, to_term or release");
    return;
  }
  if ((is_getattr || is_call) && !PyUnicode_Check(name)) {
    protocol_error_frame(out, h.ctx, h.id, "bad_shape", "getattr and call_method need a Name");
    return;
  }
  PyRef obj = envs_.object(serial, key, obj_id);
  if (!obj) {
    unknown();
    return;
  }
  PyRef result;
  if (is_term) {
    result = std::move(obj);
  } else if (is_getattr) {
    result = PyRef(PyObject_GetAttr(obj.get(), name));
  } else {
    PyRef method(PyObject_GetAttr(obj.get(), name));
    PyRef args(method ? PyList_AsTuple(PyTuple_GET_ITEM(body, 4)) : nullptr);
    PyObject* kwargs = PyTuple_GET_ITEM(body, 5);
    if (args) result = PyRef(PyObject_Call(method.get(), args.get(), PyDict_GET_SIZE(kwargs) ? kwargs : nullptr));
  }
  if (!result) {
    error_frame_from_exception(out, h.ctx, h.id);
    return;
  }
  result_frame(out, h.ctx, h.id, result.get());
}

}  // namespace ep
