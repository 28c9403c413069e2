// AttachedMutex: a lock for C++ state that threads touch while attached to Python (GIL held on a GIL
// build, thread state attached on a free-threaded one).
//
// Why not std::mutex: on a free-threaded build CPython stops the world (GC, PyThreadState_SetAsyncExc
// on some versions) and waits for every attached thread to detach. A thread blocked in std::mutex::lock
// stays attached, so if the holder itself waits for the world to stop, both hang. PyMutex (public from
// 3.13) detaches the calling thread while it blocks. On 3.11/3.12 (GIL builds only) std::mutex is
// enough: whoever takes it holds the GIL, so it is never contended while attached.
//
// Rule: never call back into Python code (finalizers included) while holding one; short C++ sections.
#pragma once

#include <Python.h>

#include <mutex>

namespace ep {

class AttachedMutex {
 public:
  AttachedMutex() = default;
  AttachedMutex(const AttachedMutex&) = delete;
  AttachedMutex& operator=(const AttachedMutex&) = delete;
#if PY_VERSION_HEX >= 0x030D0000
  void lock() { PyMutex_Lock(&m_); }
  void unlock() { PyMutex_Unlock(&m_); }

 private:
  PyMutex m_ = {0};
#else
  void lock() { m_.lock(); }
  void unlock() { m_.unlock(); }

 private:
  std::mutex m_;
#endif
};

}  // namespace ep
