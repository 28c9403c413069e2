// Owned references to Python objects, and the GIL guards.
//
// PyRef is move-only: it owns exactly one strong reference and drops it in its destructor, so no code
// path here does Py_DECREF bookkeeping by hand. The GIL must be held wherever a PyRef is created,
// reset or destroyed.
#pragma once

#include <Python.h>

#include <utility>

namespace ep {

class PyRef {
 public:
  PyRef() = default;
  // Takes ownership of a new reference (what most CPython APIs return). nullptr is allowed.
  explicit PyRef(PyObject* owned) noexcept : obj_(owned) {}
  // Adds a reference to a borrowed pointer.
  static PyRef borrow(PyObject* borrowed) noexcept {
    Py_XINCREF(borrowed);
    return PyRef(borrowed);
  }
  PyRef(const PyRef&) = delete;
  PyRef& operator=(const PyRef&) = delete;
  PyRef(PyRef&& other) noexcept : obj_(std::exchange(other.obj_, nullptr)) {}
  PyRef& operator=(PyRef&& other) noexcept {
    if (this != &other) reset(std::exchange(other.obj_, nullptr));
    return *this;
  }
  ~PyRef() { Py_XDECREF(obj_); }

  PyObject* get() const noexcept { return obj_; }
  // Gives the reference away (for APIs that steal one, e.g. PyTuple_SET_ITEM).
  PyObject* release() noexcept { return std::exchange(obj_, nullptr); }
  void reset(PyObject* owned = nullptr) noexcept {
    PyObject* old = std::exchange(obj_, owned);
    Py_XDECREF(old);
  }
  explicit operator bool() const noexcept { return obj_ != nullptr; }

 private:
  PyObject* obj_ = nullptr;
};

// Holds the GIL for a scope, from a thread that has (or gets) a thread state of the main interpreter.
class GilGuard {
 public:
  GilGuard() : state_(PyGILState_Ensure()) {}
  ~GilGuard() { PyGILState_Release(state_); }
  GilGuard(const GilGuard&) = delete;
  GilGuard& operator=(const GilGuard&) = delete;

 private:
  PyGILState_STATE state_;
};

// Releases the GIL for a scope (a blocking wait) and takes it back at the end.
class GilRelease {
 public:
  GilRelease() : saved_(PyEval_SaveThread()) {}
  ~GilRelease() { PyEval_RestoreThread(saved_); }
  GilRelease(const GilRelease&) = delete;
  GilRelease& operator=(const GilRelease&) = delete;

 private:
  PyThreadState* saved_;
};

}  // namespace ep
