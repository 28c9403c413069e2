// Logging and tracing from Python to Erlang (PROTOCOL.md §3.14): the built-in `_erlang_ops` module
// (log and span frames written without a round trip, under a window of unacknowledged frames) and
// the two Erlang -> port kinds that serve it (ops_config, ops_ack).
#pragma once

#include <Python.h>

#include <string>
#include <string_view>

#include "frame.hpp"

namespace ep {

class Runtime;

// Binds the module to the runtime and sets the window (frames in flight); call before Python starts.
void ops_module_bind(Runtime* rt, size_t window);
// The init function registered with PyImport_AppendInittab (multi-phase).
extern "C" PyObject* ops_module_init();

// Loop thread. ops_config: applied on the control thread (GIL), answered `result ok` (or `error`)
// unless id is 0. ops_ack: Count more log/span frames were consumed (no GIL needed).
void ops_on_config(Runtime& rt, const Header& h, std::string payload);
void ops_on_ack(Runtime& rt, const Header& h, std::string_view body);

}  // namespace ep
