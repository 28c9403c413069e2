// Interpreters (issue 8): the registry, run_in, and owngil sub-interpreters. See interp.hpp.
#include "interp.hpp"

#include <algorithm>
#include <atomic>
#include <vector>

namespace ep {
namespace {

// The registry mutex guards g_interps. Bounded: the main interpreter plus one per live owngil context
// (a context's is unregistered as its thread ends). g_generation changes at every unregister, so a
// thread's cached answer is never one for an interpreter that has ended (a new one may reuse the
// PyInterpreterState address).
std::mutex g_registry_mutex;
std::vector<std::shared_ptr<Interp>> g_interps;
std::atomic<uint64_t> g_generation{0};
Interp* g_main = nullptr;  // set once at start-up, before any other thread runs Python

struct Cache {
  PyInterpreterState* state = nullptr;
  Interp* interp = nullptr;
  uint64_t generation = ~uint64_t{0};
};
thread_local Cache tl_cache;

}  // namespace

void Interp::clear() {
  builtins.reset();
  erlang_module.reset();
  compile_block.reset();
  format_exception.reset();
  schedule_marker_type.reset();
  eval_cache.reset();
  exec_cache.reset();
  main_str.reset();
  cancelled_error.reset();
  pid_type.reset();
  ref_type.reset();
  term_type.reset();
}

Interp* find_current_interp() {
  PyInterpreterState* is = PyInterpreterState_Get();
  uint64_t gen = g_generation.load(std::memory_order_acquire);
  if (tl_cache.state == is && tl_cache.generation == gen) return tl_cache.interp;
  Interp* found = nullptr;
  {
    std::lock_guard<std::mutex> lock(g_registry_mutex);
    for (auto& in : g_interps)
      if (in->state == is) found = in.get();
    gen = g_generation.load(std::memory_order_acquire);
  }
  tl_cache = Cache{is, found, gen};
  return found;
}

Interp& current_interp() {
  Interp* in = find_current_interp();
  return in ? *in : *g_main;
}

std::shared_ptr<Interp> current_interp_ref() { return current_interp().shared_from_this(); }

std::shared_ptr<Interp> ensure_main_interp() {
  {
    std::lock_guard<std::mutex> lock(g_registry_mutex);
    if (g_main) return g_main->shared_from_this();
  }
  auto in = std::make_shared<Interp>();
  in->state = PyInterpreterState_Main();
  in->is_main = true;
  register_interp(in);
  return in;
}

void register_interp(const std::shared_ptr<Interp>& in) {
  std::lock_guard<std::mutex> lock(g_registry_mutex);
  if (in->is_main) g_main = in.get();
  g_interps.push_back(in);
  g_generation.fetch_add(1, std::memory_order_acq_rel);  // a cached "not ours" answer goes too
}

void unregister_interp(const Interp* in) {
  std::lock_guard<std::mutex> lock(g_registry_mutex);
  g_interps.erase(std::remove_if(g_interps.begin(), g_interps.end(), [&](auto& p) { return p.get() == in; }),
                  g_interps.end());
  g_generation.fetch_add(1, std::memory_order_acq_rel);
}

bool run_in(const std::shared_ptr<Interp>& target, const std::function<void()>& f) {
  if (!target || target->state == PyInterpreterState_Get()) {
    f();
    return true;
  }
  PyThreadState* home = PyEval_SaveThread();
  bool ran = false;
  {
    std::lock_guard<std::mutex> lock(target->attach_mutex);
    if (target->alive) {
      PyThreadState* ts = PyThreadState_New(target->state);
      if (ts) {
        PyEval_RestoreThread(ts);
        f();
        PyThreadState_Clear(ts);
        PyThreadState_DeleteCurrent();  // releases the target's GIL
        ran = true;
      }
    }
  }
  PyEval_RestoreThread(home);
  return ran;
}

bool load_interp(Interp& in, const std::string& pylib) {
  PyObject* sys_path = PySys_GetObject("path");  // borrowed
  if (!pylib.empty()) {
    PyRef dir(PyUnicode_FromString(pylib.c_str()));
    if (!dir || !sys_path || PyList_Insert(sys_path, 0, dir.get()) != 0) return false;
  }
  in.builtins = PyRef(PyImport_ImportModule("builtins"));
  if (!in.builtins) return false;
  in.erlang_module = PyRef(PyImport_ImportModule("erlang"));
  if (!in.erlang_module) return false;
  PyRef installed(PyObject_CallMethod(in.erlang_module.get(), "_install_std_streams", nullptr));
  if (!installed) return false;
  PyRef eval_mod(PyImport_ImportModule("erlang._eval"));
  if (!eval_mod) return false;
  in.compile_block = PyRef(PyObject_GetAttrString(eval_mod.get(), "compile_block"));
  PyRef tb_mod(PyImport_ImportModule("traceback"));
  if (!tb_mod || !in.compile_block) return false;
  in.format_exception = PyRef(PyObject_GetAttrString(tb_mod.get(), "format_exception"));
  PyRef sched_mod(PyImport_ImportModule("erlang._schedule"));
  if (!sched_mod) return false;
  in.schedule_marker_type = PyRef(PyObject_GetAttrString(sched_mod.get(), "ScheduleMarker"));
  if (!in.schedule_marker_type) return false;
  in.eval_cache = PyRef(PyDict_New());
  in.exec_cache = PyRef(PyDict_New());
  in.main_str = PyRef(PyUnicode_InternFromString("__main__"));
  return in.format_exception && in.eval_cache && in.exec_cache && in.main_str && in.cancelled_error;
}

bool owngil_available() {
#if PY_VERSION_HEX >= 0x030C0000 && !defined(Py_GIL_DISABLED)
  return true;
#else
  return false;
#endif
}

namespace {
// Attached: the pending exception as "Type: message" (cleared).
std::string take_error_text() {
  std::string text = "unknown error";
  PyObject *t = nullptr, *v = nullptr, *tb = nullptr;
  PyErr_Fetch(&t, &v, &tb);
  if (v || t) {
    PyRef s(PyObject_Str(v ? v : t));
    const char* name = t ? reinterpret_cast<PyTypeObject*>(t)->tp_name : "?";
    const char* msg = s ? PyUnicode_AsUTF8(s.get()) : nullptr;
    text = std::string(name) + ": " + (msg ? msg : "?");
  }
  Py_XDECREF(t);
  Py_XDECREF(v);
  Py_XDECREF(tb);
  PyErr_Clear();
  return text;
}
}  // namespace

std::shared_ptr<Interp> new_owngil_interp(const std::string& pylib, PyThreadState** home, std::string& err) {
#if PY_VERSION_HEX >= 0x030C0000 && !defined(Py_GIL_DISABLED)
  *home = PyThreadState_Get();
  PyInterpreterConfig cfg = {};
  cfg.use_main_obmalloc = 0;  // required by OWN_GIL
  cfg.allow_fork = 0;         // the port never forks behind the VM's back
  cfg.allow_exec = 1;         // subprocess works (fork+exec in one step)
  cfg.allow_threads = 1;
  cfg.allow_daemon_threads = 0;  // a destroy would otherwise leave threads of an ended interpreter
  cfg.check_multi_interp_extensions = 1;  // single-phase C extensions: ImportError, never a crash
  cfg.gil = PyInterpreterConfig_OWN_GIL;
  PyThreadState* ts = nullptr;
  PyStatus st = Py_NewInterpreterFromConfig(&ts, &cfg);
  if (PyStatus_Exception(st) || !ts) {
    // CPython attached *home again.
    err = std::string("cannot create a sub-interpreter: ") + (st.err_msg ? st.err_msg : "?");
    return nullptr;
  }
  auto in = std::make_shared<Interp>();
  in->state = PyThreadState_GetInterpreter(ts);
  register_interp(in);
  if (!load_interp(*in, pylib)) {
    err = "the sub-interpreter could not import the erlang package: " + take_error_text();
    end_owngil_interp(in, *home);
    return nullptr;
  }
  return in;
#else
  (void)pylib;
  (void)home;
  err = "owngil needs a GIL build of CPython >= 3.12";
  return nullptr;
#endif
}

void end_owngil_interp(const std::shared_ptr<Interp>& in, PyThreadState* home) {
#if PY_VERSION_HEX >= 0x030C0000
  PyThreadState* ts = PyThreadState_Get();
  in->clear();
  if (PyErr_Occurred()) PyErr_Clear();
  {
    // Detached while waiting: an outside thread attached to it finishes first (the attach mutex).
    PyThreadState* saved = PyEval_SaveThread();
    {
      std::lock_guard<std::mutex> lock(in->attach_mutex);
      in->alive = false;
    }
    PyEval_RestoreThread(saved);
  }
  Py_EndInterpreter(ts);  // leaves no thread state attached
  unregister_interp(in.get());
  PyEval_RestoreThread(home);
#else
  (void)in;
  (void)home;
#endif
}

}  // namespace ep
