// Python types for Erlang values that have no Python equivalent: erlang.Pid and erlang.Term.
//
// Both hold the value's ETF bytes (without the 131 version byte), so they convert back to exactly the
// term they came from. They compare and hash by those bytes. They are created by the codecs and exposed
// by the _erlang module (port/erlang_module.cpp) as erlang.Pid / erlang.Term.
#pragma once

#include <Python.h>

#include <string_view>

#include "py_ref.hpp"

namespace ep {

// Readies the two types; call once with the GIL held before any codec use. Returns false with a
// Python exception set on failure.
bool erlang_types_ready();
PyTypeObject* pid_type();
PyTypeObject* term_type();

// New erlang.Pid / erlang.Term from a term's ETF bytes (no version byte).
PyRef make_pid(std::string_view etf_fragment);
PyRef make_term(std::string_view etf_fragment);

// If obj is an erlang.Pid or erlang.Term, stores its bytes in `out` and returns true.
bool opaque_bytes(PyObject* obj, std::string_view& out);

}  // namespace ep
