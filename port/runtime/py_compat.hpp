// Python C-API calls that differ between the CPythons we build against (3.11 to 3.13t), in the form
// that is safe without a GIL.
#pragma once

#include <Python.h>

#include "py_ref.hpp"

namespace ep {

// dict[key] as a strong reference: empty with no exception if absent, empty with one on error. A
// borrowed result (PyDict_GetItemWithError) is unsafe on a free-threaded build: another thread may
// replace or clear the entry (env_drop, the code caches' reset) while we use it.
inline PyRef dict_get_ref(PyObject* dict, PyObject* key) {
#if PY_VERSION_HEX >= 0x030D0000
  PyObject* v = nullptr;
  if (PyDict_GetItemRef(dict, key, &v) < 0) return {};
  return PyRef(v);
#else
  return PyRef::borrow(PyDict_GetItemWithError(dict, key));  // GIL builds: the GIL covers the incref
#endif
}

// Whether the GIL is on right now: always on a GIL build; on a free-threaded one, off unless an
// extension module without free-threading support (no Py_mod_gil slot) turned it back on.
inline bool gil_enabled() {
#if defined(Py_GIL_DISABLED) && PY_VERSION_HEX >= 0x030D0000
  PyObject* sys_fn = PySys_GetObject("_is_gil_enabled");  // borrowed from sys, which lives forever
  if (!sys_fn) return true;
  PyRef r(PyObject_CallNoArgs(sys_fn));
  if (!r) {
    PyErr_Clear();
    return true;
  }
  return PyObject_IsTrue(r.get()) == 1;
#else
  return true;
#endif
}

}  // namespace ep
