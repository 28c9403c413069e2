#include "erlang_module.hpp"

#include <chrono>
#include <cmath>
#include <thread>

#include "context.hpp"
#include "erlang_types.hpp"
#include "interp.hpp"
#include "frame.hpp"
#include "runtime.hpp"

namespace ep {

namespace {

// The runtime the module talks to. One per process (a C++ object, not Python state).
Runtime* g_rt = nullptr;

// Module state (multi-phase init, PEP 489): the Python objects the module owns live here, per module
// object, never in process-global statics, so each interpreter that imports _erlang gets its own.
// Functions reach it through their `self` (the module): state_of(self).
struct ModuleState {
  PyObject* erlang_error;     // erlang.ErlangError(RuntimeError)
  PyObject* process_error;    // erlang.ProcessError(Exception)
  PyObject* cancelled_error;  // erlang.CancelledError(BaseException)
};
ModuleState* state_of(PyObject* module) { return static_cast<ModuleState*>(PyModule_GetState(module)); }

// The ctx and request id that frames sent from the calling thread carry.
void origin(uint32_t& ctx, uint64_t& id) {
  Context* c = Context::current_thread_context();
  ActiveRequest* r = c ? c->current_request() : nullptr;
  ctx = c ? c->id() : 0;
  id = r ? r->id : 0;
}

// Decodes a callback_reply body: {ok, Value} or {error, Class, Reason}. Returns the Python tuple.
PyRef decode_reply(ModuleState* st, const std::string& reply) {
  std::string err;
  PyRef v = g_rt->decode(reply, err);
  if (!v) {
    PyErr_Format(st->erlang_error, "malformed reply from Erlang: %s", err.c_str());
    return PyRef();
  }
  if (!PyTuple_Check(v.get()) || PyTuple_GET_SIZE(v.get()) < 2 || !PyUnicode_Check(PyTuple_GET_ITEM(v.get(), 0))) {
    PyErr_SetString(st->erlang_error, "malformed reply from Erlang");
    return PyRef();
  }
  return v;
}

// Whether a finished callback/send frame may go out; else sets the Python exception.
bool sendable(ModuleState* st, const std::string& frame, size_t start) {
  if (Runtime::in_forked_child()) {
    PyErr_SetString(st->erlang_error, "Erlang cannot be reached from a forked child process");
    return false;
  }
  if (!g_rt->frame_fits(frame, start)) {
    PyErr_Format(PyExc_OverflowError, "message of %zu bytes exceeds the largest frame the port may send (%zu bytes)",
                 frame.size() - start - 4, g_rt->max_out_frame());
    return false;
  }
  return true;
}

bool is_ok(PyObject* reply) { return PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(reply, 0), "ok") == 0; }

void raise_from_reply(PyObject* exc_type, PyObject* reply) {
  PyObject* cls = PyTuple_GET_SIZE(reply) > 1 ? PyTuple_GET_ITEM(reply, 1) : Py_None;
  PyObject* reason = PyTuple_GET_SIZE(reply) > 2 ? PyTuple_GET_ITEM(reply, 2) : Py_None;
  PyErr_Format(exc_type, "%S: %S", cls, reason);
}

// erlang.call(name, *args)
PyObject* erl_call(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  ModuleState* st = state_of(self);
  if (nargs < 1 || !PyUnicode_Check(args[0])) {
    PyErr_SetString(PyExc_TypeError, "call() needs the registered function's name (a str) first");
    return nullptr;
  }
  uint32_t ctx;
  uint64_t id;
  origin(ctx, id);
  uint64_t cb = g_rt->next_callback_id();
  std::string frame;
  size_t start = begin_frame(frame, Header{static_cast<uint8_t>(Kind::Callback), 0, 0, ctx, id});
  bool ok = g_rt->write_body(frame, [&](auto& w) {
    w.tuple(3);
    w.integer(static_cast<int64_t>(cb));
    if (!w.python(args[0])) return false;
    w.list(static_cast<size_t>(nargs - 1));
    for (Py_ssize_t i = 1; i < nargs; ++i)
      if (!w.python(args[i])) return false;
    w.list_end();
    return true;
  });
  if (!ok) return nullptr;
  finish_frame(frame, start);
  if (!sendable(st, frame, start)) return nullptr;
  std::string reply;
  if (!g_rt->round_trip(cb, frame, reply)) return nullptr;
  PyRef r = decode_reply(st, reply);
  if (!r) return nullptr;
  if (is_ok(r.get())) return Py_NewRef(PyTuple_GET_ITEM(r.get(), 1));
  raise_from_reply(st->erlang_error, r.get());
  return nullptr;
}

// erlang.send(dest, message): dest is an erlang.Pid, a registered name (str) or (name, node).
PyObject* erl_send(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  ModuleState* st = state_of(self);
  if (nargs != 2) {
    PyErr_SetString(PyExc_TypeError, "send() takes a destination and a message");
    return nullptr;
  }
  PyObject* dest = args[0];
  if (Py_TYPE(dest) != pid_type() && !PyUnicode_Check(dest) &&
      !(PyTuple_Check(dest) && PyTuple_GET_SIZE(dest) == 2)) {
    PyErr_Format(PyExc_TypeError, "send() destination must be an erlang.Pid, a name or (name, node), not %.100s",
                 Py_TYPE(dest)->tp_name);
    return nullptr;
  }
  uint32_t ctx;
  uint64_t id;
  origin(ctx, id);
  uint64_t cb = g_rt->next_callback_id();
  std::string frame;
  size_t start = begin_frame(frame, Header{static_cast<uint8_t>(Kind::Send), 0, 0, ctx, 0});
  bool ok = g_rt->write_body(frame, [&](auto& w) {
    w.tuple(3);
    w.integer(static_cast<int64_t>(cb));
    return w.python(dest) && w.python(args[1]);
  });
  if (!ok) return nullptr;
  finish_frame(frame, start);
  if (!sendable(st, frame, start)) return nullptr;
  std::string reply;
  if (!g_rt->round_trip(cb, frame, reply)) return nullptr;
  PyRef r = decode_reply(st, reply);
  if (!r) return nullptr;
  if (is_ok(r.get())) Py_RETURN_NONE;
  raise_from_reply(st->process_error, r.get());
  return nullptr;
}

// Sleeps longer than this (about 31 years) are "forever": until the request is cancelled. The
// deadline of a finite sleep must fit the clock's 64-bit nanoseconds (about 292 years).
constexpr double kForeverSeconds = 1e9;

// erlang.sleep(seconds): on a context thread the context keeps serving requests meanwhile.
PyObject* erl_sleep(PyObject* self, PyObject* arg) {
  double seconds = PyFloat_AsDouble(arg);
  if (seconds == -1.0 && PyErr_Occurred()) return nullptr;
  if (!std::isfinite(seconds)) {
    PyErr_SetString(PyExc_ValueError, "sleep length must be a finite number");
    return nullptr;
  }
  if (seconds < 0) {
    PyErr_SetString(PyExc_ValueError, "sleep length must be non-negative");
    return nullptr;
  }
  const bool forever = seconds > kForeverSeconds;
  Clock::time_point deadline =
      forever ? Clock::time_point::max()
              : Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  Context* c = Context::current_thread_context();
  if (c && c->current_request()) {
    std::string unused;
    // No deadline for "forever": the wait ends with the request's cancel (its deadline).
    if (c->wait(0, forever ? nullptr : &deadline, unused) == Context::WaitEnd::Cancelled) {
      PyErr_SetString(state_of(self)->cancelled_error, "request cancelled during erlang.sleep");
      return nullptr;
    }
    Py_RETURN_NONE;
  }
  {
    GilRelease unlocked;
    if (forever) {
      for (;;) std::this_thread::sleep_for(std::chrono::hours(24));  // a thread outside contexts: no cancel
    }
    std::this_thread::sleep_until(deadline);
  }
  Py_RETURN_NONE;
}

// erlang._write(stream, text): stdout/stderr text for the Erlang side, under flow control.
PyObject* erl_write(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2 || !PyLong_Check(args[0]) || !PyUnicode_Check(args[1])) {
    PyErr_SetString(PyExc_TypeError, "_write(stream: int, text: str)");
    return nullptr;
  }
  long stream = PyLong_AsLong(args[0]);
  if (!g_rt->write_output(stream == 2 ? 2 : 1, args[1])) return nullptr;
  Py_RETURN_NONE;
}

// _erlang._pending(): (callback waiters, early replies kept by this thread's context), for tests.
PyObject* erl_pending(PyObject*, PyObject*) {
  Context* c = Context::current_thread_context();
  return Py_BuildValue("(nn)", static_cast<Py_ssize_t>(g_rt->waiter_count()),
                       static_cast<Py_ssize_t>(c ? c->early_reply_count() : 0));
}

// _erlang._output_unacked(): (unacknowledged output bytes, request ids they belong to) of this
// thread's context, (0, 0) outside contexts; for tests of the output window's accounting (§3.5).
PyObject* erl_output_unacked(PyObject*, PyObject*) {
  Context* c = Context::current_thread_context();
  std::pair<size_t, size_t> u = c ? c->output_unacked() : std::pair<size_t, size_t>{0, 0};
  return Py_BuildValue("(nn)", static_cast<Py_ssize_t>(u.first), static_cast<Py_ssize_t>(u.second));
}

PyObject* erl_env_count(PyObject*, PyObject*) { return PyLong_FromSize_t(g_rt->env_count()); }

PyObject* erl_current_request(PyObject*, PyObject*) {
  uint32_t ctx;
  uint64_t id;
  origin(ctx, id);
  return PyLong_FromUnsignedLongLong(id);
}

PyObject* erl_current_context(PyObject*, PyObject*) {
  uint32_t ctx;
  uint64_t id;
  origin(ctx, id);
  return PyLong_FromUnsignedLong(ctx);
}

// asyncio (issue 9): _set_loop_wakeup_fd(fd) -> previous fd. An ErlangEventLoop running on a context
// thread registers its self-pipe so that a cancel of the request wakes it (PROTOCOL.md §3.10); -1
// clears it. On any other thread it does nothing and returns -1.
PyObject* erl_set_loop_wakeup_fd(PyObject*, PyObject* arg) {
  long fd = PyLong_AsLong(arg);
  if (fd == -1 && PyErr_Occurred()) return nullptr;
  if (fd < -1 || fd > INT32_MAX) {
    PyErr_SetString(PyExc_ValueError, "fd must be a descriptor or -1");
    return nullptr;
  }
  Context* c = Context::current_thread_context();
  return PyLong_FromLong(c ? c->set_loop_wake_fd(static_cast<int>(fd)) : -1);
}

PyMethodDef methods[] = {
    {"call", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(erl_call)), METH_FASTCALL,
     "call(name, *args): call the Erlang function registered as name and return its result."},
    {"send", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(erl_send)), METH_FASTCALL,
     "send(dest, message): send message to an Erlang pid, registered name or (name, node)."},
    {"sleep", erl_sleep, METH_O, "sleep(seconds): wait without holding the context."},
    {"_write", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(erl_write)), METH_FASTCALL,
     "_write(stream, text): forward stdout (1) or stderr (2) text to Erlang."},
    {"_env_count", erl_env_count, METH_NOARGS, "number of live environments of pids and references, over all contexts"},
    {"_pending", erl_pending, METH_NOARGS, "(callback waiters, early replies of this context), for tests"},
    {"_output_unacked", erl_output_unacked, METH_NOARGS,
     "(unacknowledged output bytes, ids) of this context, for tests"},
    {"_current_request", erl_current_request, METH_NOARGS, "id of the request this thread serves, or 0"},
    {"_current_context", erl_current_context, METH_NOARGS, "id of the context this thread serves, or 0"},
    {"_set_loop_wakeup_fd", erl_set_loop_wakeup_fd, METH_O, "asyncio: the running loop's self-pipe fd (or -1)"},
    {nullptr, nullptr, 0, nullptr},
};

int module_traverse(PyObject* m, visitproc visit, void* arg) {
  ModuleState* st = state_of(m);
  Py_VISIT(st->erlang_error);
  Py_VISIT(st->process_error);
  Py_VISIT(st->cancelled_error);
  return 0;
}

int module_clear(PyObject* m) {
  ModuleState* st = state_of(m);
  Py_CLEAR(st->erlang_error);
  Py_CLEAR(st->process_error);
  Py_CLEAR(st->cancelled_error);
  return 0;
}

void module_free(void* m) { module_clear(static_cast<PyObject*>(m)); }

int module_exec(PyObject* m) {
  if (!erlang_types_ready()) return -1;
  ModuleState* st = state_of(m);
  st->erlang_error = PyErr_NewExceptionWithDoc("erlang.ErlangError",
                                               "An Erlang function called from Python raised, or none is registered.",
                                               PyExc_RuntimeError, nullptr);
  st->process_error = PyErr_NewExceptionWithDoc("erlang.ProcessError",
                                                "The destination process of erlang.send does not exist.",
                                                PyExc_Exception, nullptr);
  st->cancelled_error = PyErr_NewExceptionWithDoc(
      "erlang.CancelledError", "The Erlang caller gave up on this request (timeout); it is being cancelled.",
      PyExc_BaseException, nullptr);
  if (!st->erlang_error || !st->process_error || !st->cancelled_error) return -1;
  if (PyModule_AddObjectRef(m, "ErlangError", st->erlang_error) ||
      PyModule_AddObjectRef(m, "ProcessError", st->process_error) ||
      PyModule_AddObjectRef(m, "CancelledError", st->cancelled_error) ||
      PyModule_AddObjectRef(m, "Pid", reinterpret_cast<PyObject*>(pid_type())) ||
      PyModule_AddObjectRef(m, "Ref", reinterpret_cast<PyObject*>(ref_type())) ||
      PyModule_AddObjectRef(m, "Term", reinterpret_cast<PyObject*>(term_type())))
    return -1;
  // The runtime raises CancelledError from C++ (cancel, output waits): each interpreter's own, kept in
  // its Interp (interp.hpp; erlang_types_ready refused an interpreter that is not the port's).
  Interp& in = current_interp();
  if (!in.cancelled_error) in.cancelled_error = PyRef::borrow(st->cancelled_error);
  return 0;
}

PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, reinterpret_cast<void*>(module_exec)},
#if PY_VERSION_HEX >= 0x030C0000
    // Pid/Ref/Term and the runtime's cached objects are per interpreter (interp.hpp): owngil
    // contexts import it in their own sub-interpreters.
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
#ifdef Py_mod_gil
    // Free-threaded builds (3.13t): every C++ structure the module touches is guarded by its own lock
    // (see runtime.hpp, "Locking"), so importing _erlang does not turn the GIL back on.
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, nullptr},
};

PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_erlang", "Built-in half of the erlang package (erlang_python_port).",
    static_cast<Py_ssize_t>(sizeof(ModuleState)), methods, module_slots, module_traverse, module_clear,
    module_free,
};

}  // namespace

void erlang_module_bind(Runtime* rt) { g_rt = rt; }

extern "C" PyObject* erlang_module_init() { return PyModuleDef_Init(&module_def); }

}  // namespace ep
