// The built-in `_erlang` module: what Python code needs from the port (erlang.call, send, sleep,
// output, the Pid/Term types, the exceptions). The pure-Python `erlang` package (pylib/) wraps it.
#pragma once

#include <Python.h>

namespace ep {

class Runtime;

// Binds the module to the runtime; call before Python starts.
void erlang_module_bind(Runtime* rt);
// The init function registered with PyImport_AppendInittab.
extern "C" PyObject* erlang_module_init();

}  // namespace ep
