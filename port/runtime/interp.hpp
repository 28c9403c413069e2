// Interpreters (issue 8, owngil): what the port caches from one Python interpreter, per interpreter.
//
// The main interpreter serves the start-up contexts and every worker context. An owngil context
// (PROTOCOL.md §3.16) runs in a sub-interpreter of its own, with its own GIL (CPython >= 3.12, GIL
// builds), created and ended on the context's own thread. Python objects belong to one interpreter:
// the Pid/Ref/Term types, the erlang module, the code caches, CancelledError all exist once per
// interpreter, here, and are found through current_interp() (the calling thread's interpreter).
//
// Locking: the registry (register/unregister, lookups that miss the thread's cache) is guarded by its
// own mutex (the registry mutex). An Interp's cached objects are set while it loads, before any other
// thread can find it, and cleared by its owner thread before it ends; attach_mutex (the attach mutex)
// guards `alive`: a thread that attaches from outside (run_in, the control thread) holds it while
// attached, and the owner takes it, detached, to mark the interpreter gone before it ends it, so
// Py_EndInterpreter never meets a foreign thread state. Order: the attach mutex, then the target's GIL.
#pragma once

#include <Python.h>

#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "py_ref.hpp"

namespace ep {

struct Interp : std::enable_shared_from_this<Interp> {
  PyInterpreterState* state = nullptr;
  bool is_main = false;
  PyRef builtins, erlang_module, compile_block, format_exception, schedule_marker_type;
  PyRef eval_cache;  // source -> code object (eval) or (exec_code, eval_code|None)
  PyRef exec_cache;  // source -> code object
  PyRef main_str;
  PyRef cancelled_error;  // erlang.CancelledError of this interpreter (set by _erlang's exec)
  PyRef pid_type, ref_type, term_type;  // erlang.Pid/Ref/Term (erlang_types.cpp)

  std::mutex attach_mutex;  // the attach mutex: guards alive (see above)
  bool alive = true;

  // Attached to this interpreter: drops every cached object (before the interpreter ends).
  void clear();
};

// Attached (GIL held): the state of the calling thread's interpreter, or nullptr if it is not one of
// the port's (a sub-interpreter user code made itself). Cheap: a thread-local cache answers repeats.
Interp* find_current_interp();
// As find_current_interp, but never null: an unknown interpreter gets the main one's state.
Interp& current_interp();
std::shared_ptr<Interp> current_interp_ref();
// Main thread at start-up (or a test), attached to the main interpreter: its Interp, registered once.
std::shared_ptr<Interp> ensure_main_interp();
// Registry: an interpreter is registered before its erlang package is imported (its _erlang module
// fills the types in), and unregistered once it has ended.
void register_interp(const std::shared_ptr<Interp>& in);
void unregister_interp(const Interp* in);

// Attached to some interpreter. Runs f attached to `target` (the calling thread's own if it is the
// same, or target is null): detaches, attaches a fresh thread state of the target's interpreter,
// runs f, deletes that thread state and attaches back. False (f not run) if the target has ended:
// its objects went with it, so the caller must drop its references without a decref (PyRef::release).
bool run_in(const std::shared_ptr<Interp>& target, const std::function<void()>& f);

// Attached to in's interpreter: sys.path gets pylib, then the erlang package and the caches.
bool load_interp(Interp& in, const std::string& pylib);

// Whether this build can make owngil sub-interpreters (>= 3.12, not free-threaded).
bool owngil_available();
// A context thread, attached to the main interpreter: makes an owngil sub-interpreter and loads it.
// On success the calling thread is attached to the new interpreter (its main thread state is kept,
// detached, in *home). On failure returns null with `err` set; the thread is attached to main again.
std::shared_ptr<Interp> new_owngil_interp(const std::string& pylib, PyThreadState** home, std::string& err);
// The owner thread, attached to in's interpreter: ends it, then attaches `home` again.
void end_owngil_interp(const std::shared_ptr<Interp>& in, PyThreadState* home);

}  // namespace ep
