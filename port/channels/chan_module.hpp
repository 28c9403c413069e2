// The built-in `_erlang_chan` module and the loop thread's entry for chan_* frames (PROTOCOL.md §3.11).
#pragma once

#include <Python.h>

#include <cstdint>
#include <string>

#include "frame.hpp"

namespace ep {

class Runtime;

// Binds the module to the runtime; call before Python starts.
void chan_module_bind(Runtime* rt);
// The init function registered with PyImport_AppendInittab (multi-phase).
extern "C" PyObject* chan_module_init();
// Whether `kind` is chan_open, chan_data or chan_ctl.
bool chan_is_kind(uint8_t kind);
// Loop thread, no GIL: applies one chan_* frame (payload = header + body) to the channel table.
void chan_dispatch(const Header& h, std::string payload);

}  // namespace ep
