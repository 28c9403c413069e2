#include "runtime.hpp"

#include <unistd.h>

#include <csignal>
#include <cstring>

#include "erlang_module.hpp"
#include "erlang_types.hpp"
#include "log.hpp"

namespace ep {

namespace {

std::string_view utf8_of(PyObject* s) {
  Py_ssize_t n = 0;
  const char* p = PyUnicode_AsUTF8AndSize(s, &n);
  if (!p) {
    PyErr_Clear();
    return "<unprintable>";
  }
  return std::string_view(p, static_cast<size_t>(n));
}

// The current exception as (class name, message, formatted traceback); clears it.
struct ErrorText {
  std::string cls, msg, tb;
};

ErrorText take_error(PyObject* format_exception) {
  ErrorText e;
#if PY_VERSION_HEX >= 0x030C0000
  PyRef value(PyErr_GetRaisedException());
#else
  PyObject *t = nullptr, *v = nullptr, *tb = nullptr;
  PyErr_Fetch(&t, &v, &tb);
  PyErr_NormalizeException(&t, &v, &tb);
  if (tb && v) PyException_SetTraceback(v, tb);
  PyRef type_ref(t), tb_ref(tb);
  PyRef value(v);
#endif
  if (!value) {
    e.cls = "SystemError";
    e.msg = "error indicator set without an exception";
    return e;
  }
  const char* name = Py_TYPE(value.get())->tp_name;
  const char* dot = std::strrchr(name, '.');
  e.cls = dot ? dot + 1 : name;
  PyRef msg(PyObject_Str(value.get()));
  if (msg) e.msg = utf8_of(msg.get());
  else PyErr_Clear();
  if (format_exception) {
    PyRef lines(PyObject_CallOneArg(format_exception, value.get()));
    if (lines) {
      PyRef empty(PyUnicode_FromString(""));
      PyRef joined(PyUnicode_Join(empty.get(), lines.get()));
      if (joined) e.tb = utf8_of(joined.get());
    }
    PyErr_Clear();
  }
  return e;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// ControlThread

ControlThread::ControlThread() : thread_([this] { run(); }) {}

ControlThread::~ControlThread() {
  if (thread_.joinable()) thread_.detach();
}

void ControlThread::post(std::function<void()> job) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    jobs_.push_back(std::move(job));
  }
  cv_.notify_one();
}

void ControlThread::run() {
  for (;;) {
    std::function<void()> job;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      cv_.wait(lock, [this] { return !jobs_.empty(); });
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    job();
  }
}

// ---------------------------------------------------------------------------------------------
// Start-up

Runtime::Runtime(Options opts, Output& out) : opts_(std::move(opts)), out_(out) {}

Runtime::~Runtime() = default;

bool Runtime::init_python() {
  erlang_module_bind(this);
  if (PyImport_AppendInittab("_erlang", &erlang_module_init) != 0) return false;
  PyConfig config;
  PyConfig_InitPythonConfig(&config);
  config.install_signal_handlers = 0;  // SIGINT & co. belong to the VM's process group, not to us
  config.parse_argv = 0;
#ifdef EP_PYTHON_HOME
  PyStatus st = PyConfig_SetBytesString(&config, &config.home, EP_PYTHON_HOME);
  if (PyStatus_Exception(st)) {
    PyConfig_Clear(&config);
    return false;
  }
#endif
  PyStatus status = Py_InitializeFromConfig(&config);
  PyConfig_Clear(&config);
  if (PyStatus_Exception(status)) {
    EP_LOG("Python failed to start: %s", status.err_msg ? status.err_msg : "?");
    return false;
  }
  if (!erlang_types_ready()) return false;

  PyObject* sys_path = PySys_GetObject("path");  // borrowed
  if (!opts_.pylib.empty()) {
    PyRef dir(PyUnicode_FromString(opts_.pylib.c_str()));
    if (!dir || PyList_Insert(sys_path, 0, dir.get()) != 0) return false;
  }
  erlang_module_ = PyRef(PyImport_ImportModule("erlang"));
  if (!erlang_module_) return false;
  PyRef installed(PyObject_CallMethod(erlang_module_.get(), "_install_std_streams", nullptr));
  if (!installed) return false;
  PyRef eval_mod(PyImport_ImportModule("erlang._eval"));
  if (!eval_mod) return false;
  compile_block_ = PyRef(PyObject_GetAttrString(eval_mod.get(), "compile_block"));
  PyRef tb_mod(PyImport_ImportModule("traceback"));
  if (!tb_mod || !compile_block_) return false;
  format_exception_ = PyRef(PyObject_GetAttrString(tb_mod.get(), "format_exception"));
  builtins_ = PyRef(PyImport_ImportModule("builtins"));
  eval_cache_ = PyRef(PyDict_New());
  exec_cache_ = PyRef(PyDict_New());
  main_str_ = PyRef(PyUnicode_InternFromString("__main__"));
  if (!format_exception_ || !builtins_ || !eval_cache_ || !exec_cache_ || !main_str_) return false;
  bool created = false;
  if (!env_for(Py_None, created)) return false;  // the default environment, made up front

  if (!opts_.crash_file.empty()) {
    // faulthandler writes the Python traceback of a fatal signal here; the owner reports it.
    PyRef open(PyObject_GetAttrString(builtins_.get(), "open"));
    PyRef file(open ? PyObject_CallFunction(open.get(), "ss", opts_.crash_file.c_str(), "w") : nullptr);
    PyRef fh(PyImport_ImportModule("faulthandler"));
    if (!file || !fh) return false;
    PyRef kwargs(Py_BuildValue("{s:O,s:O}", "file", file.get(), "all_threads", Py_True));
    PyRef enable(PyObject_GetAttrString(fh.get(), "enable"));
    PyRef empty(PyTuple_New(0));
    if (!kwargs || !enable || !PyRef(PyObject_Call(enable.get(), empty.get(), kwargs.get()))) return false;
    PyRef reg(PyObject_GetAttrString(fh.get(), "register"));
    PyRef sigargs(Py_BuildValue("(i)", SIGUSR1));
    if (!reg || !sigargs || !PyRef(PyObject_Call(reg.get(), sigargs.get(), kwargs.get()))) return false;
    if (PyObject_SetAttrString(erlang_module_.get(), "_crash_file", file.get()) != 0) return false;
  }
  return true;
}

bool Runtime::start() {
  if (!init_python()) {
    if (PyErr_Occurred()) PyErr_Print();
    return false;
  }
  PyEval_SaveThread();  // the loop thread never runs Python; contexts and the control thread do
  control_ = std::make_unique<ControlThread>();
  for (int i = 1; i <= opts_.contexts; ++i) {
    auto ctx = std::make_unique<Context>(*this, static_cast<uint32_t>(i), opts_.spin_us);
    ctx->start();
    contexts_.emplace(static_cast<uint32_t>(i), std::move(ctx));
  }
  return true;
}

void Runtime::write_hello() {
  std::string out;
  size_t start = begin_frame(out, Header{static_cast<uint8_t>(Kind::Hello), 0, 0, 0, 0});
  std::string version(Py_GetVersion());
  version = version.substr(0, version.find(' '));
#ifdef Py_GIL_DISABLED
  const char* build = "free_threaded";
#else
  const char* build = "gil";
#endif
  write_body(out, [&](auto& w) {
    w.map(7);
    w.atom("protocol");
    w.integer(2);
    w.atom("python");
    w.str(version);
    w.atom("build");
    w.atom(build);
    w.atom("modes");
    w.list(1);
    w.atom("worker");
    w.list_end();
    w.atom("contexts");
    w.list(contexts_.size());
    for (auto& [id, c] : contexts_) w.integer(id);
    w.list_end();
    w.atom("codec");
    w.atom(opts_.codec == CodecKind::Etf ? "etf" : "msgpack");
    w.atom("os_pid");
    w.integer(getpid());
    return true;
  });
  finish_frame(out, start);
  out_.write(out);
}

// ---------------------------------------------------------------------------------------------
// Loop thread: routing

Context* Runtime::find_context(uint32_t id) {
  auto it = contexts_.find(id);
  return it == contexts_.end() ? nullptr : it->second.get();
}

void Runtime::protocol_error_frame(std::string& out, uint32_t ctx, uint64_t id, const char* reason,
                                   std::string_view detail) {
  size_t start = begin_frame(out, Header{static_cast<uint8_t>(Kind::ProtocolError), 0, 0, ctx, id});
  write_body(out, [&](auto& w) {
    w.tuple(2);
    w.atom(reason);
    w.str(detail);
    return true;
  });
  finish_frame(out, start);
}

void Runtime::protocol_error(uint32_t ctx, uint64_t id, const char* reason, const std::string& detail) {
  std::string out;
  protocol_error_frame(out, ctx, id, reason, detail);
  out_.write(out);
}

void Runtime::write_ok(const Header& h) {
  std::string out;
  size_t start = begin_frame(out, Header{static_cast<uint8_t>(Kind::Result), 0, 0, h.ctx, h.id});
  write_body(out, [](auto& w) {
    w.atom("ok");
    return true;
  });
  finish_frame(out, start);
  out_.write(out);
}

void Runtime::dispatch(std::string payload) {
  if (payload.size() < kHeaderSize) {
    protocol_error(0, 0, "too_short",
                   "frame of " + std::to_string(payload.size()) + " bytes is shorter than the 16-byte header");
    return;
  }
  Header h = parse_header(payload.data());
  if (h.flags != 0 || h.reserved != 0) {
    protocol_error(h.ctx, h.id, "bad_flags", "flags and reserved header bytes must be 0");
    return;
  }
  switch (static_cast<Kind>(h.kind)) {
    case Kind::Call:
    case Kind::Eval:
    case Kind::Exec:
    case Kind::Cast: {
      Context* c = find_context(h.ctx);
      if (!c) {
        protocol_error(h.ctx, h.id, "unknown_context", "no context " + std::to_string(h.ctx));
        return;
      }
      c->push(Item{h, std::move(payload)});
      return;
    }
    case Kind::Cancel:
      on_cancel(h);
      return;
    case Kind::CallbackReply:
      on_callback_reply(Item{h, std::move(payload)});
      return;
    case Kind::ContextCreate:
      on_context_create(h, std::string_view(payload).substr(kHeaderSize));
      return;
    case Kind::ContextDestroy:
      on_context_destroy(h);
      return;
    case Kind::EnvDrop: {
      auto body = std::make_shared<std::string>(payload.substr(kHeaderSize));
      control_->post([this, body] {
        GilGuard gil;
        std::string err;
        PyRef pid = decode(*body, err);
        std::string_view key;
        if (pid && opaque_bytes(pid.get(), key)) {
          auto it = envs_.find(std::string(key));
          if (it != envs_.end()) {
            PyDict_Clear(it->second.get());  // break cycles (functions refer to their globals)
            envs_.erase(it);
          }
        }
      });
      return;
    }
    case Kind::Stats:
      on_stats(h);
      return;
    case Kind::StreamNext:
      protocol_error(h.ctx, h.id, "not_implemented", "streaming is not implemented yet");
      return;
    default:
      protocol_error(h.ctx, h.id, "unknown_kind", "unknown message kind " + std::to_string(h.kind));
      return;
  }
}

void Runtime::on_cancel(const Header& h) {
  if (h.ctx == 0) {
    // The sender does not know the context (the owner cancelling a dead caller's requests).
    for (auto& [id, ctx] : contexts_) on_cancel(Header{h.kind, 0, 0, id, h.id});
    return;
  }
  Context* c = find_context(h.ctx);
  if (!c) {
    protocol_error(h.ctx, h.id, "unknown_context", "no context " + std::to_string(h.ctx));
    return;
  }
  if (c->cancel_queued(h.id)) {
    std::string out;
    error_frame(out, h.ctx, h.id, "CancelledError", "request cancelled before it started", "");
    out_.write(out);
    return;
  }
  uint64_t id = h.id;
  auto delivered = std::make_shared<std::atomic<bool>>(false);
  control_->post([c, id, delivered] {
    GilGuard gil;
    c->cancel_running(id);
    delivered->store(true);
  });
  // Watchdog: a request stuck in C code that holds the GIL can be neither interrupted nor worked
  // around inside this process. faulthandler (registered on SIGUSR1) dumps every thread's traceback to
  // the crash file for the Erlang side, then the port exits so it can be restarted.
  int stuck_ms = opts_.cancel_stuck_ms;
  std::thread([c, id, delivered, stuck_ms] {
    std::this_thread::sleep_for(std::chrono::milliseconds(stuck_ms));
    if (delivered->load() || c->running_id() != id) return;
    EP_LOG("request %llu ignores cancellation while holding the GIL: exiting", static_cast<unsigned long long>(id));
    raise(SIGUSR1);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    _exit(kExitCancelStuck);
  }).detach();
}

void Runtime::on_callback_reply(Item item) {
  Waiter w;
  {
    std::lock_guard<std::mutex> lock(waiters_mutex_);
    auto it = waiters_.find(item.h.id);
    if (it == waiters_.end()) return;  // its waiter was cancelled
    w = it->second;
    waiters_.erase(it);
  }
  if (w.ctx) {
    w.ctx->push(std::move(item));
    return;
  }
  {
    std::lock_guard<std::mutex> lock(w.thread->mutex);
    w.thread->reply = std::string(item.body());
    w.thread->done = true;
  }
  w.thread->cv.notify_one();
}

void Runtime::on_stats(const Header& h) {
  control_->post([this, h] {
    std::string out;
    {
      GilGuard gil;
      size_t start = begin_frame(out, Header{static_cast<uint8_t>(Kind::Result), 0, 0, h.ctx, h.id});
      size_t envs = envs_.size();
      write_body(out, [&](auto& w) {
        w.map(3);
        w.atom("envs");
        w.integer(static_cast<int64_t>(envs));
        w.atom("contexts");
        w.integer(static_cast<int64_t>(contexts_.size()));
        w.atom("os_pid");
        w.integer(getpid());
        return true;
      });
      finish_frame(out, start);
    }
    out_.write(out);
  });
}

void Runtime::on_context_create(const Header& h, std::string_view) {
  if (h.ctx == 0 || find_context(h.ctx)) {
    protocol_error(h.ctx, h.id, "bad_shape", "context id 0 or already in use");
    return;
  }
  auto ctx = std::make_unique<Context>(*this, h.ctx, opts_.spin_us);
  ctx->start();
  contexts_.emplace(h.ctx, std::move(ctx));
  write_ok(h);
}

void Runtime::on_context_destroy(const Header& h) {
  auto it = contexts_.find(h.ctx);
  if (it == contexts_.end()) {
    protocol_error(h.ctx, h.id, "unknown_context", "no context " + std::to_string(h.ctx));
    return;
  }
  // The thread finishes what it has queued, then exits. The object stays alive (leaked on purpose):
  // waiters and nested frames may still point at it.
  it->second->request_stop();
  (void)it->second.release();
  contexts_.erase(it);
  write_ok(h);
}

// ---------------------------------------------------------------------------------------------
// Replies

void Runtime::error_frame(std::string& out, uint32_t ctx, uint64_t id, std::string_view cls, std::string_view msg,
                          std::string_view tb) {
  size_t start = begin_frame(out, Header{static_cast<uint8_t>(Kind::Error), 0, 0, ctx, id});
  write_body(out, [&](auto& w) {
    w.tuple(3);
    w.str(cls);
    w.str(msg);
    w.str(tb);
    return true;
  });
  finish_frame(out, start);
}

void Runtime::error_frame_from_exception(std::string& out, uint32_t ctx, uint64_t id) {
  ErrorText e = take_error(format_exception_.get());
  error_frame(out, ctx, id, e.cls, e.msg, e.tb);
}

void Runtime::result_frame(std::string& out, uint32_t ctx, uint64_t id, PyObject* value) {
  size_t start = begin_frame(out, Header{static_cast<uint8_t>(Kind::Result), 0, 0, ctx, id});
  if (!write_body(out, [&](auto& w) { return w.python(value); })) {
    out.resize(start);
    error_frame_from_exception(out, ctx, id);
    return;
  }
  finish_frame(out, start);
}

// ---------------------------------------------------------------------------------------------
// Requests (context thread, GIL held)

PyRef Runtime::new_env() {
  PyRef env(PyDict_New());
  if (!env || PyDict_SetItemString(env.get(), "__builtins__", builtins_.get()) ||
      PyDict_SetItemString(env.get(), "__name__", main_str_.get()) ||
      PyDict_SetItemString(env.get(), "erlang", erlang_module_.get()))
    return PyRef();
  return env;
}

PyRef Runtime::env_for(PyObject* pid, bool& created) {
  created = false;
  if (pid == Py_None) {
    if (!default_env_) default_env_ = new_env();
    return PyRef::borrow(default_env_.get());
  }
  std::string_view key;
  if (Py_TYPE(pid) != pid_type() || !opaque_bytes(pid, key)) {
    PyErr_SetString(PyExc_TypeError, "environment key must be a pid or undefined");
    return PyRef();
  }
  auto it = envs_.find(std::string(key));
  if (it != envs_.end()) return PyRef::borrow(it->second.get());
  PyRef env = new_env();
  if (!env) return env;
  envs_.emplace(std::string(key), PyRef::borrow(env.get()));
  created = true;
  return env;
}

void Runtime::announce_env(uint32_t ctx, PyObject* pid) {
  std::string_view key;
  if (!opaque_bytes(pid, key)) return;
  std::string frame;
  size_t start = begin_frame(frame, Header{static_cast<uint8_t>(Kind::EnvCreated), 0, 0, ctx, 0});
  write_body(frame, [&](auto& w) {
    w.opaque(key);
    return true;
  });
  finish_frame(frame, start);
  // Now, not with the reply: the owner must monitor the caller while the request runs (a request
  // blocked on a callback of a caller that dies is cancelled through that monitor).
  GilRelease unlocked;
  out_.write(frame);
}

PyObject* Runtime::resolve(PyObject* module, PyObject* function, PyObject* env) {
  if (env && PyUnicode_Compare(module, main_str_.get()) == 0) {
    PyObject* f = PyDict_GetItemWithError(env, function);  // borrowed
    if (f) return Py_NewRef(f);
    if (PyErr_Occurred()) return nullptr;
  }
  PyRef mod(PyImport_GetModule(module));
  if (!mod) {
    if (PyErr_Occurred()) return nullptr;
    mod = PyRef(PyImport_Import(module));
    if (!mod) return nullptr;
  }
  // A dotted function name walks attributes: py:call(os, 'path.join', ...).
  if (PyUnicode_FindChar(function, '.', 0, PyUnicode_GET_LENGTH(function), 1) < 0)
    return PyObject_GetAttr(mod.get(), function);
  PyRef dot(PyUnicode_FromString("."));
  PyRef parts(PyUnicode_Split(function, dot.get(), -1));
  if (!parts) return nullptr;
  PyRef obj = std::move(mod);
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(parts.get()); ++i) {
    obj = PyRef(PyObject_GetAttr(obj.get(), PyList_GET_ITEM(parts.get(), i)));
    if (!obj) return nullptr;
  }
  return obj.release();
}

PyObject* Runtime::compiled(PyObject* code, bool eval_mode) {
  PyObject* cache = eval_mode ? eval_cache_.get() : exec_cache_.get();
  PyObject* hit = PyDict_GetItemWithError(cache, code);  // borrowed
  if (hit) return Py_NewRef(hit);
  if (PyErr_Occurred()) return nullptr;
  Py_ssize_t n = 0;
  const char* src = PyUnicode_AsUTF8AndSize(code, &n);
  if (!src) return nullptr;
  if (static_cast<size_t>(n) != std::strlen(src)) {
    PyErr_SetString(PyExc_ValueError, "source code contains a null byte");
    return nullptr;
  }
  PyRef result;
  if (eval_mode) {
    result = PyRef(Py_CompileString(src, "<string>", Py_eval_input));
    if (!result && PyErr_ExceptionMatches(PyExc_SyntaxError)) {
      // Not a single expression: statements, maybe followed by an expression to return.
      PyErr_Clear();
      result = PyRef(PyObject_CallOneArg(compile_block_.get(), code));
    }
  } else {
    result = PyRef(Py_CompileString(src, "<string>", Py_file_input));
  }
  if (!result) return nullptr;
  if (PyDict_Size(cache) >= 4096) PyDict_Clear(cache);  // bounded: a simple reset beats LRU here
  if (PyDict_SetItem(cache, code, result.get()) != 0) PyErr_Clear();
  return result.release();
}

void Runtime::handle(Context& ctx, Item& item, std::string& out) {
  const Header& h = item.h;
  std::string err;
  PyRef body = decode(item.body(), err);
  if (!body) {
    protocol_error_frame(out, h.ctx, h.id, decode_failure_reason(err), err);  // improper_list or bad_body
    return;
  }
  (void)ctx;
  switch (static_cast<Kind>(h.kind)) {
    case Kind::Call:
      serve_call(out, h, body.get(), false);
      break;
    case Kind::Cast:
      serve_call(out, h, body.get(), true);
      break;
    case Kind::Eval:
      serve_eval(out, h, body.get());
      break;
    case Kind::Exec:
      serve_exec(out, h, body.get());
      break;
    default:
      break;
  }
  if (PyErr_Occurred()) PyErr_Clear();  // never carry an error indicator into the next request
}

namespace {
void bad_shape(Runtime& rt, std::string& out, const Header& h, const char* expected) {
  rt.protocol_error_frame(out, h.ctx, h.id, "bad_shape", std::string("expected ") + expected);
}
}  // namespace

void Runtime::serve_call(std::string& out, const Header& h, PyObject* body, bool is_cast) {
  if (!PyTuple_Check(body) || PyTuple_GET_SIZE(body) != 5 || !PyUnicode_Check(PyTuple_GET_ITEM(body, 1)) ||
      !PyUnicode_Check(PyTuple_GET_ITEM(body, 2)) || !PyList_Check(PyTuple_GET_ITEM(body, 3)) ||
      !PyDict_Check(PyTuple_GET_ITEM(body, 4))) {
    bad_shape(*this, out, h, "{Env, Module, Function, Args :: list, Kwargs :: map}");
    return;
  }
  PyObject* pid = PyTuple_GET_ITEM(body, 0);
  bool created = false;
  PyRef env = env_for(pid, created);
  if (created) announce_env(h.ctx, pid);
  PyRef result;
  if (env) {
    PyRef func(resolve(PyTuple_GET_ITEM(body, 1), PyTuple_GET_ITEM(body, 2), env.get()));
    if (func) {
      PyRef args(PyList_AsTuple(PyTuple_GET_ITEM(body, 3)));
      PyObject* kwargs = PyTuple_GET_ITEM(body, 4);
      if (args) result = PyRef(PyObject_Call(func.get(), args.get(), PyDict_GET_SIZE(kwargs) ? kwargs : nullptr));
    }
  }
  if (is_cast) {
    if (!result) {
      // Fire and forget: nobody waits, so the failure goes to the Erlang logger as stderr output.
      ErrorText e = take_error(format_exception_.get());
      std::string text = "py:cast failed: " + e.cls + ": " + e.msg + "\n" + e.tb;
      size_t start = begin_frame(out, Header{static_cast<uint8_t>(Kind::Output), 0, 0, h.ctx, 0});
      write_body(out, [&](auto& w) {
        w.tuple(2);
        w.integer(2);
        w.str(text);
        return true;
      });
      finish_frame(out, start);
    }
    return;
  }
  if (!result) {
    error_frame_from_exception(out, h.ctx, h.id);
    return;
  }
  result_frame(out, h.ctx, h.id, result.get());
}

void Runtime::serve_eval(std::string& out, const Header& h, PyObject* body) {
  if (!PyTuple_Check(body) || PyTuple_GET_SIZE(body) != 3 || !PyUnicode_Check(PyTuple_GET_ITEM(body, 1)) ||
      !PyDict_Check(PyTuple_GET_ITEM(body, 2))) {
    bad_shape(*this, out, h, "{Env, Code :: binary, Locals :: map}");
    return;
  }
  PyObject* pid = PyTuple_GET_ITEM(body, 0);
  bool created = false;
  PyRef env = env_for(pid, created);
  if (created) announce_env(h.ctx, pid);
  PyObject* globals = env.get();
  PyRef result;
  if (globals) {
    PyObject* locals_in = PyTuple_GET_ITEM(body, 2);
    PyObject* locals = PyDict_GET_SIZE(locals_in) ? locals_in : globals;
    PyRef code(compiled(PyTuple_GET_ITEM(body, 1), true));
    if (code && PyTuple_Check(code.get())) {
      // (statements, trailing expression or None)
      PyRef done(PyEval_EvalCode(PyTuple_GET_ITEM(code.get(), 0), globals, locals));
      if (done) {
        PyObject* last = PyTuple_GET_ITEM(code.get(), 1);
        result = last == Py_None ? PyRef::borrow(Py_None) : PyRef(PyEval_EvalCode(last, globals, locals));
      }
    } else if (code) {
      result = PyRef(PyEval_EvalCode(code.get(), globals, locals));
    }
  }
  if (!result) {
    error_frame_from_exception(out, h.ctx, h.id);
    return;
  }
  result_frame(out, h.ctx, h.id, result.get());
}

void Runtime::serve_exec(std::string& out, const Header& h, PyObject* body) {
  if (!PyTuple_Check(body) || PyTuple_GET_SIZE(body) != 2 || !PyUnicode_Check(PyTuple_GET_ITEM(body, 1))) {
    bad_shape(*this, out, h, "{Env, Code :: binary}");
    return;
  }
  PyObject* pid = PyTuple_GET_ITEM(body, 0);
  bool created = false;
  PyRef env = env_for(pid, created);
  if (created) announce_env(h.ctx, pid);
  PyObject* globals = env.get();
  PyRef result;
  if (globals) {
    PyRef code(compiled(PyTuple_GET_ITEM(body, 1), false));
    if (code) result = PyRef(PyEval_EvalCode(code.get(), globals, globals));
  }
  if (!result) {
    error_frame_from_exception(out, h.ctx, h.id);
    return;
  }
  result_frame(out, h.ctx, h.id, Py_None);
}

// ---------------------------------------------------------------------------------------------
// Python -> Erlang round trips

bool Runtime::round_trip(uint64_t callback_id, const std::string& frame, std::string& reply) {
  Context* c = Context::current_thread_context();
  if (c && c->current_request()) {
    {
      std::lock_guard<std::mutex> lock(waiters_mutex_);
      waiters_[callback_id] = Waiter{c, nullptr};
    }
    {
      GilRelease unlocked;
      out_.write(frame);
    }
    if (c->wait(callback_id, nullptr, reply) == Context::WaitEnd::Reply) return true;
    {
      std::lock_guard<std::mutex> lock(waiters_mutex_);
      waiters_.erase(callback_id);
    }
    PyErr_SetString(cancelled_error_, "request cancelled while waiting for Erlang");
    return false;
  }
  ThreadWaiter tw;
  {
    std::lock_guard<std::mutex> lock(waiters_mutex_);
    waiters_[callback_id] = Waiter{nullptr, &tw};
  }
  {
    GilRelease unlocked;
    out_.write(frame);
    std::unique_lock<std::mutex> lock(tw.mutex);
    tw.cv.wait(lock, [&] { return tw.done; });
  }
  reply = std::move(tw.reply);
  return true;
}

}  // namespace ep
