// Context administration (PROTOCOL.md §3.6, §3.7, kinds 7, 8, 13, 14): creating, initialising and
// destroying contexts, reaping their threads, and draining a condemned port.
#include <utility>

#include "log.hpp"
#include "runtime.hpp"

namespace ep {

// ---------------------------------------------------------------------------------------------
// Loop thread

void Runtime::on_context_create(const Header& h, std::string payload) {
  if (h.ctx == 0) {
    protocol_error(h.ctx, h.id, "bad_shape", "context id 0 is the port itself");
    return;
  }
  auto it = contexts_.find(h.ctx);
  if (it != contexts_.end()) {
    if (!it->second->stopping()) {
      protocol_error(h.ctx, h.id, "bad_shape", "context id already in use");
      return;
    }
    // A context whose create was refused, still finishing: it goes, the id is free again.
    std::shared_ptr<Context> old = std::move(it->second);
    contexts_.erase(it);
    destroying_.emplace(old->serial(), std::move(old));
  }
  // Bounded: each context is a thread; contexts still finishing count until they are reaped.
  if (contexts_.size() + destroying_.size() >= static_cast<size_t>(opts_.max_contexts)) {
    std::string out;
    error_frame(out, h.ctx, h.id, "RuntimeError",
                "too many contexts: this port's limit is " + std::to_string(opts_.max_contexts) +
                    " (--max-contexts)",
                "");
    out_.write(out);
    return;
  }
  // The mode is checked on the new context's own thread (decoding needs the GIL, which the loop thread
  // never waits for): the create is the first item it serves, and it answers ok or error.
  std::shared_ptr<Context> ctx = new_context(h.ctx);
  ctx->push(Item{h, std::move(payload)});
  if (!ctx->start()) {
    std::string out;
    error_frame(out, h.ctx, h.id, "OSError", "cannot start a thread for the context", "");
    out_.write(out);
    return;
  }
  contexts_.emplace(h.ctx, std::move(ctx));
}

void Runtime::on_context_destroy(const Header& h) {
  auto it = contexts_.find(h.ctx);
  if (it == contexts_.end() || it->second->stopping()) {
    protocol_error(h.ctx, h.id, "unknown_context", "no context " + std::to_string(h.ctx));
    return;
  }
  // No request reaches it from now on; its thread finishes the queue, frees its environments and
  // objects, answers `ok` and ends; reap_contexts then joins it.
  std::shared_ptr<Context> ctx = std::move(it->second);
  contexts_.erase(it);
  ctx->request_stop(h.id);
  destroying_.emplace(ctx->serial(), std::move(ctx));
}

void Runtime::context_finished(uint64_t serial) {
  std::lock_guard<std::mutex> lock(finished_mutex_);
  finished_.push_back(serial);
  finished_pending_.store(true, std::memory_order_release);
}

void Runtime::reap_contexts() {
  if (!finished_pending_.load(std::memory_order_acquire)) return;
  std::vector<uint64_t> done;
  {
    std::lock_guard<std::mutex> lock(finished_mutex_);
    done.swap(finished_);
    finished_pending_.store(false, std::memory_order_release);
  }
  // Bounded: one entry per context whose thread has ended; each join returns at once (the thread
  // signalled as its last step).
  for (uint64_t serial : done) {
    std::shared_ptr<Context> ctx;
    auto d = destroying_.find(serial);
    if (d != destroying_.end()) {
      ctx = std::move(d->second);
      destroying_.erase(d);
    } else {
      for (auto it = contexts_.begin(); it != contexts_.end(); ++it) {
        if (it->second->serial() != serial) continue;  // a refused create still under its id
        ctx = std::move(it->second);
        contexts_.erase(it);
        break;
      }
    }
    if (ctx) ctx->join();
  }
}

void Runtime::on_drain() {
  // Condemned (§3.7): nothing that has not started will start here.
  draining_ = true;
  std::string out;
  auto requeue_all = [&](Context& c) {
    for (const Item& item : c.take_queued()) requeue_frame(out, item.h.ctx, item.h.id);
  };
  for (auto& [id, c] : contexts_) requeue_all(*c);
  for (auto& [serial, c] : destroying_) requeue_all(*c);
  if (!out.empty()) out_.write(out);
}

// ---------------------------------------------------------------------------------------------
// Context thread, GIL held

void Runtime::serve_context_create(Context& ctx, std::string& out, const Header& h, PyObject* body) {
  PyObject* mode = PyTuple_Check(body) && PyTuple_GET_SIZE(body) == 1 ? PyTuple_GET_ITEM(body, 0) : nullptr;
  if (mode && PyUnicode_Check(mode) && PyUnicode_CompareWithASCIIString(mode, "worker") == 0) {
    ok_frame(out, h.ctx, h.id);
    return;
  }
  if (mode && PyUnicode_Check(mode) && PyUnicode_CompareWithASCIIString(mode, "owngil") == 0 &&
      owngil_available()) {
    ctx.owngil_requested = true;  // handle() calls start_owngil once the body is dropped
    return;
  }
  // Refused: the context goes away (stopping first, so that no request is routed to it any more).
  ctx.request_stop(0, true);
  if (!mode || !PyUnicode_Check(mode)) {
    protocol_error_frame(out, h.ctx, h.id, "bad_shape", "expected {Mode}");
    return;
  }
  PyRef msg(PyUnicode_FromFormat("unsupported context mode: %U", mode));
  Py_ssize_t n = 0;
  const char* text = msg ? PyUnicode_AsUTF8AndSize(msg.get(), &n) : nullptr;
  if (!text) PyErr_Clear();
  error_frame(out, h.ctx, h.id, "ValueError",
              text ? std::string_view(text, static_cast<size_t>(n)) : "unsupported context mode", "");
}

// owngil (PROTOCOL.md §3.16), on the context's own thread, attached to the main interpreter: a
// sub-interpreter with its own GIL; from here on this thread runs in it (interp.hpp). Answers the create.
void Runtime::start_owngil(Context& ctx, std::string& out, const Header& h) {
  ctx.owngil_requested = false;
  std::string err;
  PyThreadState* home = nullptr;
  std::shared_ptr<Interp> in = new_owngil_interp(opts_.pylib, &home, err);
  if (!in) {
    ctx.request_stop(0, true);
    error_frame(out, h.ctx, h.id, "RuntimeError", err, "");
    return;
  }
  ctx.set_interp(std::move(in), home);
  ok_frame(out, h.ctx, h.id);
}

bool Runtime::add_sys_paths(PyObject* paths) {
  // Contexts run context_init at the same time (each on its own thread, no GIL on free-threaded
  // builds): the read-modify-write of sys.path is one at a time, over a snapshot (strong references).
  std::lock_guard<AttachedMutex> sys_path_lock(sys_path_mutex_);
  PyObject* sys_path = PySys_GetObject("path");  // borrowed from sys, which keeps it
  if (!sys_path || !PyList_Check(sys_path)) {
    PyErr_SetString(PyExc_RuntimeError, "sys.path is not a list");
    return false;
  }
  PyRef wanted(PyList_New(0));
  if (!wanted) return false;
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(paths); ++i) {
    PyObject* p = PyList_GET_ITEM(paths, i);
    PyRef s = PyUnicode_Check(p) ? PyRef::borrow(p)
                                 : PyRef(PyUnicode_DecodeFSDefaultAndSize(PyBytes_AS_STRING(p), PyBytes_GET_SIZE(p)));
    if (!s) return false;
    int dup = PySequence_Contains(wanted.get(), s.get());
    if (dup < 0 || (dup == 0 && PyList_Append(wanted.get(), s.get()) != 0)) return false;
  }
  // Each path once: earlier occurrences go, and the paths go in, in order, ahead of the rest but
  // after the port's own pylib entry (the erlang package must not be shadowed).
  PyRef rest(PyList_New(0));
  PyRef current(PyList_GetSlice(sys_path, 0, PY_SSIZE_T_MAX));
  if (!rest || !current) return false;
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(current.get()); ++i) {
    PyRef e = PyRef::borrow(PyList_GET_ITEM(current.get(), i));
    int in = PySequence_Contains(wanted.get(), e.get());
    if (in < 0 || (in == 0 && PyList_Append(rest.get(), e.get()) != 0)) return false;
  }
  Py_ssize_t pos = 0;
  if (!opts_.pylib.empty()) {
    PyRef pylib(PyUnicode_FromString(opts_.pylib.c_str()));
    if (!pylib) return false;
    Py_ssize_t at = PySequence_Index(rest.get(), pylib.get());
    if (at >= 0) pos = at + 1;
    else PyErr_Clear();
  }
  if (PyList_SetSlice(rest.get(), pos, pos, wanted.get()) != 0) return false;
  return PyList_SetSlice(sys_path, 0, PY_SSIZE_T_MAX, rest.get()) == 0;
}

void Runtime::serve_context_init(std::string& out, const Header& h, PyObject* body, uint64_t serial) {
  const char* shape = "{Paths :: [binary], Imports :: [{Module, Func | all}], Preload :: binary | undefined}";
  if (!PyTuple_Check(body) || PyTuple_GET_SIZE(body) != 3 || !PyList_Check(PyTuple_GET_ITEM(body, 0)) ||
      !PyList_Check(PyTuple_GET_ITEM(body, 1))) {
    protocol_error_frame(out, h.ctx, h.id, "bad_shape", std::string("expected ") + shape);
    return;
  }
  PyObject* paths = PyTuple_GET_ITEM(body, 0);
  PyObject* imports = PyTuple_GET_ITEM(body, 1);
  PyObject* preload = PyTuple_GET_ITEM(body, 2);
  bool ok = preload == Py_None || PyUnicode_Check(preload);
  for (Py_ssize_t i = 0; ok && i < PyList_GET_SIZE(paths); ++i) {
    PyObject* p = PyList_GET_ITEM(paths, i);
    ok = PyUnicode_Check(p) || PyBytes_Check(p);
  }
  for (Py_ssize_t i = 0; ok && i < PyList_GET_SIZE(imports); ++i) {
    PyObject* t = PyList_GET_ITEM(imports, i);
    ok = PyTuple_Check(t) && PyTuple_GET_SIZE(t) == 2 && PyUnicode_Check(PyTuple_GET_ITEM(t, 0)) &&
         PyUnicode_Check(PyTuple_GET_ITEM(t, 1));
  }
  if (!ok) {
    protocol_error_frame(out, h.ctx, h.id, "bad_shape", std::string("expected ") + shape);
    return;
  }
  if (!add_sys_paths(paths)) {
    error_frame_from_exception(out, h.ctx, h.id);
    return;
  }
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(imports); ++i) {
    PyObject* t = PyList_GET_ITEM(imports, i);
    PyObject* func = PyTuple_GET_ITEM(t, 1);
    PyRef mod(PyImport_Import(PyTuple_GET_ITEM(t, 0)));
    // `all`: the module alone; a name must resolve (dotted names walk attributes).
    PyRef found = mod && PyUnicode_CompareWithASCIIString(func, "all") != 0
                      ? PyRef(resolve(PyTuple_GET_ITEM(t, 0), func, nullptr))
                      : std::move(mod);
    if (!found) {
      error_frame_from_exception(out, h.ctx, h.id);
      return;
    }
  }
  if (preload == Py_None) {
    envs_.set_base(serial, PyRef());
  } else {
    PyRef base = envs_.fresh();
    PyRef code(base ? compiled(preload, false) : nullptr);
    PyRef done(code ? PyEval_EvalCode(code.get(), base.get(), base.get()) : nullptr);
    if (!done) {
      error_frame_from_exception(out, h.ctx, h.id);
      return;
    }
    envs_.set_base(serial, std::move(base));
  }
  ok_frame(out, h.ctx, h.id);
}

}  // namespace ep
