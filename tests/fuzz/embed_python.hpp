// Starts the embedded CPython the way the port and the doctest runner do (isolated config, the
// relocatable home if the build names one) and readies erlang.Pid/Ref/Term. For the fuzz harnesses
// and the decode benchmark, which have no doctest main. Leaves the GIL held by the calling thread.
#pragma once

#include <Python.h>

#include <cstdio>

#include "erlang_types.hpp"

namespace ep_embed {

inline bool start_python() {
  if (Py_IsInitialized()) return true;
  PyConfig config;
  PyConfig_InitIsolatedConfig(&config);  // no PYTHON* environment or user site-packages
#ifdef EP_PYTHON_HOME
  PyConfig_SetBytesString(&config, &config.home, EP_PYTHON_HOME);
#endif
  PyStatus status = Py_InitializeFromConfig(&config);
  PyConfig_Clear(&config);
  if (PyStatus_Exception(status)) {
    std::fprintf(stderr, "Python failed to start: %s\n", status.err_msg ? status.err_msg : "?");
    return false;
  }
  if (!ep::erlang_types_ready()) {
    PyErr_Print();
    return false;
  }
  return true;
}

}  // namespace ep_embed
