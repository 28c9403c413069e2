// The `memory_limit` frame (PROTOCOL.md §3.13), served on the context's own thread: Bytes (a
// non-negative integer, 0 = none) becomes that thread's limit. Answers `ok`.
#include "mem_limit.hpp"
#include "runtime.hpp"

namespace ep {

void Runtime::serve_memory_limit(std::string& out, const Header& h, PyObject* body) {
  long long limit = PyLong_Check(body) ? PyLong_AsLongLong(body) : -1;
  if (limit < 0) {
    if (PyErr_Occurred()) PyErr_Clear();
    protocol_error_frame(out, h.ctx, h.id, "bad_body", "memory_limit body must be a non-negative integer");
    return;
  }
  mem::set_limit(limit);
  ok_frame(out, h.ctx, h.id);
}

}  // namespace ep
