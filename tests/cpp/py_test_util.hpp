// Helpers shared by the C++ test files: a hex dump, a short repr, and a strict deep equality of
// Python values.
#pragma once

#include <Python.h>

#include <cmath>
#include <string>

#include "py_ref.hpp"

namespace ep_test {

// Bytes as space-separated hex pairs, for failure messages.
inline std::string hex(const std::string& s) {
  static const char* digits = "0123456789abcdef";
  std::string h;
  for (unsigned char c : s) {
    if (!h.empty()) h.push_back(' ');
    h.push_back(digits[c >> 4]);
    h.push_back(digits[c & 15]);
  }
  return h;
}

// repr(o), cut to 300 characters; never leaves a Python exception set.
inline std::string repr(PyObject* o) {
  ep::PyRef r(PyObject_Repr(o));
  if (!r) {
    PyErr_Clear();
    return "<repr failed>";
  }
  const char* s = PyUnicode_AsUTF8(r.get());
  std::string out = s ? s : "";
  if (!s) PyErr_Clear();
  return out.size() > 300 ? out.substr(0, 300) + "..." : out;
}

// Equal values of identical types all the way down (so True != 1, 1.0 != 1, 'a' != b'a'); nan equals
// nan and -0.0 differs from 0.0.
inline bool strict_equal(PyObject* a, PyObject* b) {
  if (Py_TYPE(a) != Py_TYPE(b)) return false;
  if (PyFloat_CheckExact(a)) {
    double x = PyFloat_AS_DOUBLE(a), y = PyFloat_AS_DOUBLE(b);
    if (std::isnan(x) || std::isnan(y)) return std::isnan(x) && std::isnan(y);
    return x == y && std::signbit(x) == std::signbit(y);
  }
  if (PyList_CheckExact(a) || PyTuple_CheckExact(a)) {
    Py_ssize_t n = PySequence_Fast_GET_SIZE(a);
    if (n != PySequence_Fast_GET_SIZE(b)) return false;
    for (Py_ssize_t i = 0; i < n; ++i)
      if (!strict_equal(PySequence_Fast_GET_ITEM(a, i), PySequence_Fast_GET_ITEM(b, i))) return false;
    return true;
  }
  if (PyDict_CheckExact(a)) {
    if (PyDict_GET_SIZE(a) != PyDict_GET_SIZE(b)) return false;
    // Same order (the usual case): keys compared strictly too.
    Py_ssize_t pa = 0, pb = 0;
    PyObject *ka, *va, *kb, *vb;
    bool same = true;
    while (same && PyDict_Next(a, &pa, &ka, &va) && PyDict_Next(b, &pb, &kb, &vb))
      same = strict_equal(ka, kb) && strict_equal(va, vb);
    if (same) return true;
    pa = 0;
    while (PyDict_Next(a, &pa, &ka, &va)) {
      PyObject* other = PyDict_GetItemWithError(b, ka);
      if (!other) {
        PyErr_Clear();
        return false;
      }
      if (!strict_equal(va, other)) return false;
    }
    return true;
  }
  int r = PyObject_RichCompareBool(a, b, Py_EQ);
  if (r < 0) PyErr_Clear();
  return r == 1;
}

}  // namespace ep_test
