// Python types for Erlang values that have no Python equivalent: erlang.Pid (pids), erlang.Ref
// (references) and erlang.Term (ports, funs).
//
// Each holds the value's ETF bytes (without the 131 version byte), so it converts back to exactly the
// term it came from. They compare and hash by those bytes (a value only equals one of its own type).
// They are created by the codecs and exposed by the _erlang module (port/module/erlang_module.cpp) as
// erlang.Pid / erlang.Ref / erlang.Term.
#pragma once

#include <Python.h>

#include <string_view>

#include "py_ref.hpp"

namespace ep {

// Readies the three types; call once with the GIL held before any codec use. Returns false with a
// Python exception set on failure.
bool erlang_types_ready();
PyTypeObject* pid_type();
PyTypeObject* ref_type();
PyTypeObject* term_type();

// New erlang.Pid / erlang.Ref / erlang.Term from a term's ETF bytes (no version byte).
PyRef make_pid(std::string_view etf_fragment);
PyRef make_ref(std::string_view etf_fragment);
PyRef make_term(std::string_view etf_fragment);

// chan (PROTOCOL.md §3.11): a hook make_ref asks first (GIL held). It returns the object a reference
// stands for (a py_buffer handle decodes as erlang.PyBuffer), or an empty PyRef (no Python error) for
// an ordinary erlang.Ref. Set once, before Python runs any request.
using RefHook = PyRef (*)(std::string_view etf_fragment);
void set_ref_hook(RefHook hook);

// If obj is an erlang.Pid, erlang.Ref or erlang.Term, stores its bytes in `out` and returns true.
bool opaque_bytes(PyObject* obj, std::string_view& out);

}  // namespace ep
