#include "ops_module.hpp"

#include <atomic>
#include <cstdint>
#include <deque>
#include <mutex>

#include "context.hpp"
#include "runtime.hpp"

namespace ep {

namespace {

// Port-wide, shared by every thread that logs and by the loop thread (acks). Not Python state, so one
// per process even when the module is loaded in several interpreters.
struct OpsState {
  Runtime* rt = nullptr;
  size_t window = 1024;                       // log + span frames the Erlang side may have unacknowledged
  size_t window_bytes = size_t{8} << 20;      // ... and their bytes (one bigger frame may go alone)
  std::atomic<bool> tracing{false};           // ops_config `tracing`: erlang.Span sends nothing while false
  // window_mutex guards the unacknowledged frames' sizes, oldest first (acks come in frame order, so an
  // ack of N gives back the first N), and their sum. Bounded by `window` entries.
  std::mutex window_mutex;
  std::deque<size_t> unacked_sizes;
  size_t unacked_bytes = 0;
  std::atomic<uint64_t> log_sent{0}, log_dropped{0}, span_sent{0}, span_dropped{0};
  // Dropped since the last frame of that kind went out: the next one carries the count (its last
  // element), so the Erlang side logs and counts every drop.
  std::atomic<uint64_t> log_unreported{0}, span_unreported{0};
};

OpsState g_ops;

struct KindCounters {
  Kind kind;
  std::atomic<uint64_t>& sent;
  std::atomic<uint64_t>& dropped;
  std::atomic<uint64_t>& unreported;
};

// Sends one frame whose body is {args..., Dropped}, without waiting for Erlang: True if it went out,
// False if it was dropped because the window is full (the owner is behind) or in a forked child.
// NULL with an exception if an argument has no Erlang form or the frame is too big.
PyObject* send_ops_frame(KindCounters k, PyObject* const* args, Py_ssize_t nargs) {
  if (Runtime::in_forked_child() || g_ops.rt == nullptr) Py_RETURN_FALSE;
  auto drop = [&] {
    k.dropped.fetch_add(1);
    k.unreported.fetch_add(1);
    Py_RETURN_FALSE;
  };
  {
    // The count first, before the encoding is paid for (the bytes are checked once it is known).
    std::lock_guard<std::mutex> lock(g_ops.window_mutex);
    if (g_ops.unacked_sizes.size() >= g_ops.window) return drop();
  }
  Context* c = Context::current_thread_context();
  uint64_t report = k.unreported.exchange(0);
  std::string frame;
  size_t start = begin_frame(frame, Header{static_cast<uint8_t>(k.kind), 0, 0, c ? c->id() : 0u, 0});
  bool ok = g_ops.rt->write_body(frame, [&](auto& w) {
    w.tuple(static_cast<size_t>(nargs) + 1);
    for (Py_ssize_t i = 0; i < nargs; ++i)
      if (!w.python(args[i])) return false;
    w.integer(static_cast<int64_t>(report));
    return true;
  });
  if (ok) {
    finish_frame(frame, start);
    if (!g_ops.rt->frame_fits(frame, start)) {
      PyErr_Format(PyExc_OverflowError, "record of %zu bytes exceeds the largest frame the port may send",
                   frame.size() - start - 4);
      ok = false;
    }
  }
  if (!ok) {
    k.unreported.fetch_add(report);
    return nullptr;
  }
  {
    // Bounded by frames and by bytes: a frame goes out only while fewer than `window` frames and, with
    // it, at most `window_bytes` are unacknowledged (a bigger one only when nothing else is).
    std::lock_guard<std::mutex> lock(g_ops.window_mutex);
    size_t n = frame.size() - start;
    if (g_ops.unacked_sizes.size() >= g_ops.window ||
        (!g_ops.unacked_sizes.empty() && g_ops.unacked_bytes + n > g_ops.window_bytes)) {
      k.unreported.fetch_add(report);
      return drop();
    }
    g_ops.unacked_sizes.push_back(n);
    g_ops.unacked_bytes += n;
  }
  {
    GilRelease unlocked;  // a pipe write; other threads run meanwhile
    g_ops.rt->output().write(frame);
  }
  k.sent.fetch_add(1);
  Py_RETURN_TRUE;
}

// _erlang_ops.log(levelno, logger_name, message, py_meta) -> bool
PyObject* ops_log(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 4 || !PyLong_Check(args[0]) || !PyUnicode_Check(args[1]) || !PyUnicode_Check(args[2]) ||
      !PyDict_Check(args[3])) {
    PyErr_SetString(PyExc_TypeError, "log(levelno: int, logger: str, message: str, meta: dict)");
    return nullptr;
  }
  return send_ops_frame(KindCounters{Kind::Log, g_ops.log_sent, g_ops.log_dropped, g_ops.log_unreported}, args,
                        nargs);
}

// _erlang_ops.span(name, span_id, parent_id, start_us, end_us, status, attrs, end_attrs, events) -> bool
// False without sending anything while tracing is off.
PyObject* ops_span(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 9) {
    PyErr_SetString(PyExc_TypeError, "span() takes the 9 fields of a finished span");
    return nullptr;
  }
  if (!g_ops.tracing.load(std::memory_order_relaxed)) Py_RETURN_FALSE;
  return send_ops_frame(KindCounters{Kind::Span, g_ops.span_sent, g_ops.span_dropped, g_ops.span_unreported},
                        args, nargs);
}

PyObject* ops_tracing(PyObject*, PyObject*) { return PyBool_FromLong(g_ops.tracing.load(std::memory_order_relaxed)); }

// _erlang_ops.counters() -> dict, for tests and diagnostics.
PyObject* ops_counters(PyObject*, PyObject*) {
  size_t unacked, unacked_bytes;
  {
    std::lock_guard<std::mutex> lock(g_ops.window_mutex);
    unacked = g_ops.unacked_sizes.size();
    unacked_bytes = g_ops.unacked_bytes;
  }
  return Py_BuildValue("{s:K,s:K,s:K,s:K,s:n,s:n,s:n,s:n}", "log_sent", (unsigned long long)g_ops.log_sent.load(),
                       "log_dropped", (unsigned long long)g_ops.log_dropped.load(), "span_sent",
                       (unsigned long long)g_ops.span_sent.load(), "span_dropped",
                       (unsigned long long)g_ops.span_dropped.load(), "unacked", static_cast<Py_ssize_t>(unacked),
                       "window", static_cast<Py_ssize_t>(g_ops.window), "unacked_bytes",
                       static_cast<Py_ssize_t>(unacked_bytes), "window_bytes",
                       static_cast<Py_ssize_t>(g_ops.window_bytes));
}

PyMethodDef methods[] = {
    {"log", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(ops_log)), METH_FASTCALL,
     "log(levelno, logger, message, meta): send a log record to Erlang without waiting; False if dropped."},
    {"span", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(ops_span)), METH_FASTCALL,
     "span(...): send a finished span to Erlang without waiting; False if tracing is off or it was dropped."},
    {"tracing", ops_tracing, METH_NOARGS, "whether py:enable_tracing() is in effect"},
    {"counters", ops_counters, METH_NOARGS, "sent/dropped/unacknowledged frame counts"},
    {nullptr, nullptr, 0, nullptr},
};

int ops_exec(PyObject*) { return 0; }

PyModuleDef_Slot slots[] = {
    {Py_mod_exec, reinterpret_cast<void*>(ops_exec)},
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
#if PY_VERSION_HEX >= 0x030D0000
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, nullptr},
};

PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_erlang_ops", "Log records and spans from Python to Erlang (erlang_python_port).", 0,
    methods, slots, nullptr, nullptr, nullptr,
};

// A non-negative integer body read without the GIL (ETF small/integer, msgpack fixint/uint8..32).
bool small_count(bool etf, std::string_view b, uint64_t& v) {
  auto c = [&](size_t i) { return static_cast<unsigned char>(b[i]); };
  if (etf) {
    if (b.size() == 3 && c(0) == 131 && c(1) == 97) return v = c(2), true;
    if (b.size() == 6 && c(0) == 131 && c(1) == 98 && !(c(2) & 0x80))
      return v = (uint64_t{c(2)} << 24) | (uint64_t{c(3)} << 16) | (uint64_t{c(4)} << 8) | c(5), true;
    return false;
  }
  if (b.size() == 1 && c(0) <= 0x7f) return v = c(0), true;
  if (b.size() == 2 && c(0) == 0xcc) return v = c(1), true;
  if (b.size() == 3 && c(0) == 0xcd) return v = (uint64_t{c(1)} << 8) | c(2), true;
  if (b.size() == 5 && c(0) == 0xce)
    return v = (uint64_t{c(1)} << 24) | (uint64_t{c(2)} << 16) | (uint64_t{c(3)} << 8) | c(4), true;
  return false;
}

}  // namespace

void ops_module_bind(Runtime* rt, size_t window) {
  g_ops.rt = rt;
  g_ops.window = window;
}

extern "C" PyObject* ops_module_init() { return PyModuleDef_Init(&module_def); }

void ops_on_ack(Runtime& rt, const Header& h, std::string_view body) {
  uint64_t n = 0;
  if (!small_count(rt.codec() == CodecKind::Etf, body, n)) {
    rt.protocol_error(h.ctx, h.id, "bad_body", "ops_ack body must be a non-negative integer");
    return;
  }
  std::lock_guard<std::mutex> lock(g_ops.window_mutex);
  // 0 resets: the Erlang side's consumer restarted, what it had is consumed or lost. More than are
  // outstanding empties the window too.
  if (n == 0 || n >= g_ops.unacked_sizes.size()) {
    g_ops.unacked_sizes.clear();
    g_ops.unacked_bytes = 0;
    return;
  }
  for (uint64_t i = 0; i < n; ++i) {
    g_ops.unacked_bytes -= g_ops.unacked_sizes.front();
    g_ops.unacked_sizes.pop_front();
  }
}

void ops_on_config(Runtime& rt, const Header& h, std::string payload) {
  rt.post_control([&rt, h, payload = std::move(payload)] {
    std::string out;
    {
      GilGuard gil;
      std::string err;
      PyRef cfg = rt.decode(std::string_view(payload).substr(kHeaderSize), err);
      if (!cfg || !PyDict_Check(cfg.get())) {
        PyErr_Clear();
        rt.protocol_error_frame(out, h.ctx, h.id, "bad_body", err.empty() ? "ops_config body must be a map" : err);
      } else {
        PyObject* tracing = PyDict_GetItemString(cfg.get(), "tracing");  // borrowed
        if (tracing) g_ops.tracing.store(PyObject_IsTrue(tracing) == 1);
        PyRef mod(PyImport_ImportModule("erlang._logging"));
        PyRef r(mod ? PyObject_CallMethod(mod.get(), "_apply_config", "O", cfg.get()) : nullptr);
        if (r) rt.ok_frame(out, h.ctx, h.id);
        else rt.error_frame_from_exception(out, h.ctx, h.id);
      }
    }
    if (h.id != 0) rt.output().write(out);
  });
}

}  // namespace ep
