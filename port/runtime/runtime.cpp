#include "runtime.hpp"

#include <unistd.h>

#include <csignal>
#include <cstring>

#include "bulk.hpp"
#include "chan_module.hpp"
#include "erlang_module.hpp"
#include "erlang_types.hpp"
#include "log.hpp"
#include "ops_module.hpp"
#include "mem_limit.hpp"
#include "py_compat.hpp"
#include "task_loops.hpp"  // aio (§3.10)

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

// A body that is one non-negative integer (output_ack), read without the GIL. ETF: small integer,
// integer, small big; msgpack: positive fixint and uint8..64 (and non-negative int8..64).
bool parse_count(CodecKind codec, std::string_view b, uint64_t& v) {
  auto u = [&](size_t at, size_t n) {
    uint64_t x = 0;
    for (size_t i = 0; i < n; ++i) x = (x << 8) | static_cast<unsigned char>(b[at + i]);
    return x;
  };
  auto c = [&](size_t i) { return static_cast<unsigned char>(b[i]); };
  if (codec == CodecKind::Etf) {
    if (b.size() < 2 || c(0) != 131) return false;
    if (c(1) == 97 && b.size() == 3) return v = c(2), true;
    if (c(1) == 98 && b.size() == 6) {
      auto x = static_cast<int32_t>(static_cast<uint32_t>(u(2, 4)));
      if (x < 0) return false;
      return v = static_cast<uint64_t>(x), true;
    }
    if (c(1) == 110 && b.size() >= 4 && b.size() == 4 + size_t{c(2)} && c(2) <= 8 && c(3) == 0) {
      v = 0;
      for (size_t i = c(2); i > 0; --i) v = (v << 8) | c(3 + i);  // little-endian digits
      return true;
    }
    return false;
  }
  if (b.empty()) return false;
  unsigned char t = c(0);
  if (t <= 0x7f && b.size() == 1) return v = t, true;
  size_t n = 0;
  bool is_signed = false;
  switch (t) {
    case 0xcc: n = 1; break;
    case 0xcd: n = 2; break;
    case 0xce: n = 4; break;
    case 0xcf: n = 8; break;
    case 0xd0: n = 1; is_signed = true; break;
    case 0xd1: n = 2; is_signed = true; break;
    case 0xd2: n = 4; is_signed = true; break;
    case 0xd3: n = 8; is_signed = true; break;
    default: return false;
  }
  if (b.size() != 1 + n) return false;
  if (is_signed && (c(1) & 0x80)) return false;
  v = u(1, n);
  return true;
}

// Cuts `s` to at most `max` bytes without splitting a UTF-8 sequence.
std::string_view utf8_prefix(std::string_view s, size_t max) {
  if (s.size() <= max) return s;
  size_t n = max;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  return s.substr(0, n);
}

pid_t g_port_pid = 0;  // the port's own pid, for in_forked_child

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

PyObject* Runtime::cancelled_error() const {
  PyObject* e = current_interp().cancelled_error.get();
  return e ? e : PyExc_RuntimeError;  // only while an interpreter ends (interp.cpp)
}

bool Runtime::init_python() {
  erlang_module_bind(this);
  if (PyImport_AppendInittab("_erlang", &erlang_module_init) != 0) return false;
  ops_module_bind(this, 1024);  // opsa: logging and tracing (§3.14)
  if (PyImport_AppendInittab("_erlang_ops", &ops_module_init) != 0) return false;
  // chan: channels, byte channels, buffers (PROTOCOL.md §3.11)
  chan_module_bind(this);
  if (PyImport_AppendInittab("_erlang_chan", &chan_module_init) != 0) return false;
  // aio: native asyncio task queues (PROTOCOL.md §3.10)
  task_loops_bind(this);
  if (PyImport_AppendInittab("_erlang_loop", &task_loop_module_init) != 0) return false;
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
    if (!opts_.crash_file.empty()) {
      if (FILE* f = std::fopen(opts_.crash_file.c_str(), "w")) {
        std::fprintf(f, "Python failed to start: %s\n", status.err_msg ? status.err_msg : "?");
        std::fclose(f);
      }
    }
    return false;
  }
  if (!erlang_types_ready()) return false;
  mem::install(opts_.memory_limit);  // opsb: wraps the allocators Python now has (mem_limit.hpp)

  main_ = ensure_main_interp();
  if (!opts_.crash_file.empty()) {
    // First, before any of our Python runs: faulthandler writes the Python traceback of a fatal signal
    // here (and start() the exception of a failed start-up); the owner reports it.
    PyRef builtins(PyImport_ImportModule("builtins"));
    PyRef open(builtins ? PyObject_GetAttrString(builtins.get(), "open") : nullptr);
    crash_file_ = PyRef(open ? PyObject_CallFunction(open.get(), "ss", opts_.crash_file.c_str(), "w") : nullptr);
    PyRef fh(PyImport_ImportModule("faulthandler"));
    if (!crash_file_ || !fh) return false;
    PyRef kwargs(Py_BuildValue("{s:O,s:O}", "file", crash_file_.get(), "all_threads", Py_True));
    PyRef enable(PyObject_GetAttrString(fh.get(), "enable"));
    PyRef empty(PyTuple_New(0));
    if (!kwargs || !enable || !PyRef(PyObject_Call(enable.get(), empty.get(), kwargs.get()))) return false;
    PyRef reg(PyObject_GetAttrString(fh.get(), "register"));
    PyRef sigargs(Py_BuildValue("(i)", SIGUSR1));
    if (!reg || !sigargs || !PyRef(PyObject_Call(reg.get(), sigargs.get(), kwargs.get()))) return false;
  }
  // sys.path, the erlang package and the caches: what an owngil sub-interpreter loads too (interp.cpp).
  if (!load_interp(*main_, opts_.pylib)) return false;
  if (crash_file_ && PyObject_SetAttrString(main_->erlang_module.get(), "_crash_file", crash_file_.get()) != 0)
    return false;
  envs_.init(main_->builtins.get(), main_->erlang_module.get(), main_->main_str.get());

  return true;
}

// GIL held, a start-up exception set: writes its formatted traceback to the crash file (the owner
// reports it with exit status 3) and leaves the exception set for PyErr_Print.
bool Runtime::write_startup_error() {
  if (!crash_file_) return false;
#if PY_VERSION_HEX >= 0x030C0000
  PyRef value(PyErr_GetRaisedException());
#else
  PyObject *t = nullptr, *v = nullptr, *tb = nullptr;
  PyErr_Fetch(&t, &v, &tb);
  PyErr_NormalizeException(&t, &v, &tb);
  if (tb && v) PyException_SetTraceback(v, tb);
  Py_XDECREF(t);
  Py_XDECREF(tb);
  PyRef value(v);
#endif
  if (!value) return false;
  bool ok = false;
  PyRef tb_mod(PyImport_ImportModule("traceback"));
  PyRef lines(tb_mod ? PyObject_CallMethod(tb_mod.get(), "format_exception", "O", value.get()) : nullptr);
  PyRef empty(PyUnicode_FromString(""));
  PyRef text(lines && empty ? PyUnicode_Join(empty.get(), lines.get()) : PyObject_Str(value.get()));
  if (text) {
    PyRef head(PyUnicode_FromString("erlang_python_port: Python failed to start\n"));
    ok = head && PyRef(PyObject_CallMethod(crash_file_.get(), "write", "O", head.get())) &&
         PyRef(PyObject_CallMethod(crash_file_.get(), "write", "O", text.get())) &&
         PyRef(PyObject_CallMethod(crash_file_.get(), "flush", nullptr));
  }
  PyErr_Clear();
#if PY_VERSION_HEX >= 0x030C0000
  PyErr_SetRaisedException(value.release());
#else
  PyErr_Restore(Py_NewRef(reinterpret_cast<PyObject*>(Py_TYPE(value.get()))), Py_NewRef(value.get()),
                PyException_GetTraceback(value.get()));
#endif
  return ok;
}

bool Runtime::start() {
  g_port_pid = getpid();
  if (!init_python()) {
    if (PyErr_Occurred()) {
      write_startup_error();
      PyErr_Print();
    }
    return false;
  }
  gil_at_start_ = gil_enabled();  // after _erlang and the erlang package are imported (hello, §4.1)
  PyEval_SaveThread();  // the loop thread never runs Python; contexts and the control thread do
  control_ = std::make_unique<ControlThread>();
  for (int i = 1; i <= opts_.contexts; ++i) {
    auto ctx = new_context(static_cast<uint32_t>(i));
    if (!ctx->start()) return false;
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
    w.map(8);
    w.atom("gil");  // §4.1: whether the GIL is on (a free-threaded build turns it back on for old extensions)
    w.atom(gil_at_start_ ? "enabled" : "disabled");
    w.atom("protocol");
    w.integer(2);
    w.atom("python");
    w.str(version);
    w.atom("build");
    w.atom(build);
    w.atom("modes");
    w.list(owngil_available() ? 2 : 1);
    w.atom("worker");
    if (owngil_available()) w.atom("owngil");  // §4.1, §3.16: a GIL build of CPython >= 3.12
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
  return it == contexts_.end() || it->second->stopping() ? nullptr : it->second.get();
}

std::shared_ptr<Context> Runtime::new_context(uint32_t id) {
  return std::make_shared<Context>(*this, id, ++next_serial_, opts_.spin_us);
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

void Runtime::ok_frame(std::string& out, uint32_t ctx, uint64_t id) {
  size_t start = begin_frame(out, Header{static_cast<uint8_t>(Kind::Result), 0, 0, ctx, id});
  write_body(out, [](auto& w) {
    w.atom("ok");
    return true;
  });
  finish_frame(out, start);
}

void Runtime::requeue_frame(std::string& out, uint32_t ctx, uint64_t id) {
  size_t start = begin_frame(out, Header{static_cast<uint8_t>(Kind::Requeue), 0, 0, ctx, id});
  write_body(out, [](auto& w) {
    w.list(0);
    return true;
  });
  finish_frame(out, start);
}

void Runtime::dispatch(std::string payload) {
  if (payload.size() < kHeaderSize) {
    protocol_error(0, 0, "too_short",
                   "frame of " + std::to_string(payload.size()) + " bytes is shorter than the 16-byte header");
    return;
  }
  reap_contexts();
  Header h = parse_header(payload.data());
  // The nested flag (§3.4) is the only flag, and only on call/eval/exec/ref_op.
  bool nestable = h.kind == static_cast<uint8_t>(Kind::Call) || h.kind == static_cast<uint8_t>(Kind::Eval) ||
                  h.kind == static_cast<uint8_t>(Kind::Exec) || h.kind == static_cast<uint8_t>(Kind::RefOp);
  // bulk (§3.12): the shm flag too, on the same kinds, when shared memory is on; shm_release.
  const uint8_t allowed = kFlagNested | (shm_ && shm_->enabled() ? kFlagShm : 0);
  // bulk (§3.12): a callback_reply may carry the shm flag alone (on_callback_reply copies it out).
  const bool shm_reply = h.kind == static_cast<uint8_t>(Kind::CallbackReply) && h.flags == kFlagShm &&
                         shm_ && shm_->enabled();
  if (h.reserved != 0 || (h.flags & ~allowed) != 0 || (h.flags != 0 && !nestable && !shm_reply)) {
    protocol_error(h.ctx, h.id, "bad_flags", "only the nested and shm flags, on call/eval/exec/ref_op; reserved bytes must be 0");
    return;
  }
  if (h.kind == kKindShmRelease) {
    uint64_t k = 0;
    if (!parse_count(opts_.codec, std::string_view(payload).substr(kHeaderSize), k) || !shm_ ||
        k > UINT32_MAX || !shm_->release(static_cast<uint32_t>(k)))
      protocol_error(h.ctx, h.id, "bad_shm", "shm_release names no region in use");
    return;
  }
  if (h.kind == kKindTaskSubmit || h.kind == kKindTaskCancel) {
    // aio (§3.10): straight to the task loop's queue; ctx only names the namespaces of a submission.
    Context* c = h.kind == kKindTaskSubmit ? find_context(h.ctx) : nullptr;
    // The task loops run in the main interpreter: an owngil context's environments are objects of
    // another interpreter, which a loop thread must never touch (refused, as an outcome).
    bool foreign = c && c->interp() != nullptr;
    task_loops_dispatch(h, std::move(payload), c ? c->serial() : 0, foreign);
    return;
  }
  switch (static_cast<Kind>(h.kind)) {
    case Kind::Call:
    case Kind::Eval:
    case Kind::Exec:
    case Kind::Cast:
    case Kind::ContextInit:
    case Kind::MemoryLimit:  // opsb: set on the context's own thread
    case Kind::RefOp: {
      Context* c = find_context(h.ctx);
      if (!c) {
        protocol_error(h.ctx, h.id, "unknown_context", "no context " + std::to_string(h.ctx));
        return;
      }
      if (draining_ && is_request_kind(h.kind)) {
        // Condemned (§3.7): it never starts here; the Erlang side sends it elsewhere.
        std::string out;
        requeue_frame(out, h.ctx, h.id);
        out_.write(out);
        return;
      }
      if (!c->push(Item{h, std::move(payload)}))
        protocol_error(h.ctx, h.id, "unknown_context", "no context " + std::to_string(h.ctx));
      return;
    }
    case Kind::Drain:
      on_drain();
      return;
    case Kind::Record:  // opsb
      on_record(h, std::move(payload));
      return;
    case Kind::Interrupt:  // opsb
      on_interrupt(h);
      return;
    case Kind::Cancel:
      on_cancel(h);
      return;
    case Kind::CallbackReply:
      on_callback_reply(Item{h, std::move(payload)});
      return;
    case Kind::ContextCreate:
      on_context_create(h, std::move(payload));
      return;
    case Kind::ContextDestroy:
      on_context_destroy(h);
      return;
    case Kind::EnvDrop:
      on_env_drop(std::string_view(payload).substr(kHeaderSize));
      return;
    case Kind::Stats:
      on_stats(h);
      return;
    case Kind::OutputAck:
      on_output_ack(h, std::string_view(payload).substr(kHeaderSize));
      return;
    case Kind::OpsConfig:  // opsa: logging and tracing (§3.14)
      ops_on_config(*this, h, std::move(payload));
      return;
    case Kind::OpsAck:
      ops_on_ack(*this, h, std::string_view(payload).substr(kHeaderSize));
      return;
    // chan: channels, byte channels, buffers (PROTOCOL.md §3.11): applied here, on the loop thread.
    case Kind::ChanOpen:
    case Kind::ChanData:
    case Kind::ChanCtl:
      chan_dispatch(h, std::move(payload));
      return;
    case Kind::StreamNext: {
      // Queued on its context like a request (§3.9): one pull at a time, between other requests.
      Context* c = find_context(h.ctx);
      if (!c || !c->push(Item{h, std::move(payload)}))
        protocol_error(h.ctx, h.id, "unknown_context", "no context " + std::to_string(h.ctx));
      return;
    }
    default:
      protocol_error(h.ctx, h.id, "unknown_kind", "unknown message kind " + std::to_string(h.kind));
      return;
  }
}

void Runtime::on_cancel(const Header& h) {
  if (h.ctx == 0) {
    // The sender does not know the context (the owner cancelling a dead caller's requests): every
    // context, those being destroyed included (they still finish their requests).
    for (auto& [id, ctx] : contexts_) cancel_in(ctx, h.id);
    for (auto& [serial, ctx] : destroying_) cancel_in(ctx, h.id);
    return;
  }
  // The live context with this id and any being destroyed under it (a new context may reuse the id
  // of one still finishing): request ids are unique, so only the one that has the request acts.
  std::vector<std::shared_ptr<Context>> named;  // held by the jobs below: the context may be destroyed
  auto live = contexts_.find(h.ctx);
  if (live != contexts_.end()) named.push_back(live->second);
  for (auto& [serial, ctx] : destroying_)
    if (ctx->id() == h.ctx) named.push_back(ctx);
  if (named.empty()) {
    protocol_error(h.ctx, h.id, "unknown_context", "no context " + std::to_string(h.ctx));
    return;
  }
  for (auto& ctx : named) cancel_in(ctx, h.id);
}

void Runtime::cancel_in(const std::shared_ptr<Context>& c, uint64_t id) {
  if (c->cancel_queued(id)) {
    if (continuation_pending(c->serial(), id)) {
      // A queued schedule_inline continuation: its kept call is freed with the GIL (schedule.cpp).
      uint64_t serial = c->serial();
      std::shared_ptr<Interp> in = c->interp();
      control_->post([this, serial, id, in] {
        GilGuard gil;
        run_in(in, [&] { drop_continuation(serial, id); });
      });
    }
    std::string out;
    error_frame(out, c->id(), id, "CancelledError", "request cancelled before it started", "");
    out_.write(out);
    return;
  }
  // Cancels wait for the control thread in one batch, delivered under one GIL acquisition: a storm of
  // cancels costs one job at a time, never a backlog of GIL hand-offs that would make a delivered
  // cancel look stuck. The batch holds each (context, id) once, so it is bounded by the requests.
  std::shared_ptr<std::atomic<bool>> delivered;
  bool post = false;
  {
    std::lock_guard<std::mutex> lock(cancel_mutex_);
    if (cancel_batch_.empty()) {
      cancel_delivered_ = std::make_shared<std::atomic<bool>>(false);
      post = true;
    }
    if (cancel_batched_.emplace(c->serial(), id).second) cancel_batch_.emplace_back(c, id);
    delivered = cancel_delivered_;
  }
  if (post) {
    control_->post([this] {
      GilGuard gil;
      std::vector<std::pair<std::shared_ptr<Context>, uint64_t>> batch;
      std::shared_ptr<std::atomic<bool>> done;
      {
        std::lock_guard<std::mutex> lock(cancel_mutex_);
        batch.swap(cancel_batch_);
        cancel_batched_.clear();
        done = std::move(cancel_delivered_);
      }
      // Each in its context's interpreter (owngil: attached to that sub-interpreter meanwhile).
      for (auto& [ctx, rid] : batch) {
        Context* c = ctx.get();
        uint64_t r = rid;
        run_in(c->interp(), [c, r] { c->cancel_running(r); });
      }
      done->store(true);
    });
  }
  // Watchdog: a request stuck in C code that holds the GIL can be neither interrupted nor worked
  // around inside this process. If the cancel is still undelivered after cancel_stuck_ms while the
  // request still runs, check_stuck_cancels (the loop's timer) makes the port exit. Only a request that
  // runs now can be stuck (a queued one was refused above, a starting one is refused when it starts).
  if (c->running_id() != id || !stuck_armed_.emplace(c->serial(), id).second) return;
  if (stuck_checks_.size() >= kMaxStuckChecks) {
    stuck_armed_.erase({c->serial(), id});
    return;
  }
  bool idle = stuck_checks_.empty();
  stuck_checks_.push_back(
      StuckCheck{c, id, std::move(delivered), Clock::now() + std::chrono::milliseconds(opts_.cancel_stuck_ms)});
  if (idle && arm_watchdog_) arm_watchdog_(static_cast<uint64_t>(opts_.cancel_stuck_ms));
}

int64_t Runtime::check_stuck_cancels() {
  auto now = Clock::now();
  while (!stuck_checks_.empty() && stuck_checks_.front().due <= now) {
    StuckCheck s = std::move(stuck_checks_.front());
    stuck_checks_.pop_front();
    stuck_armed_.erase({s.ctx->serial(), s.id});
    if (!s.delivered->load() && s.ctx->running_id() == s.id) exit_cancel_stuck(s.id);
  }
  if (stuck_checks_.empty()) return -1;
  auto left = std::chrono::ceil<std::chrono::milliseconds>(stuck_checks_.front().due - now).count();
  return left < 1 ? 1 : left;
}

void Runtime::exit_cancel_stuck(uint64_t id) {
  EP_LOG("request %llu ignores cancellation while holding the GIL: exiting", static_cast<unsigned long long>(id));
  // faulthandler (registered on SIGUSR1) dumps every thread's traceback to the crash file for the
  // Erlang side; the handler runs in this thread, before raise returns. Without a crash file nothing
  // handles SIGUSR1, whose default action would kill the port before the requeues below.
  if (crash_file_) raise(SIGUSR1);
  // What never started goes back to the Erlang side to run elsewhere (PROTOCOL.md §3.7).
  // Contexts being destroyed too: their queues would otherwise be lost with the port.
  std::string out;
  for (auto& [cid, ctx] : contexts_) {
    for (const Item& item : ctx->take_queued()) requeue_frame(out, item.h.ctx, item.h.id);
  }
  for (auto& [serial, ctx] : destroying_) {
    for (const Item& item : ctx->take_queued()) requeue_frame(out, item.h.ctx, item.h.id);
  }
  if (!out.empty()) out_.write(out);
  _exit(kExitCancelStuck);
}

void Runtime::on_callback_reply(Item item) {
  if (item.h.flags & kFlagShm) {  // bulk (§3.12): the body out of its region, the region handed back
    std::string consumed, why;
    take_shm_reply(shm_, opts_.codec, item.frame, consumed, why);
    item.h.flags = 0;
    if (!why.empty()) protocol_error_frame(consumed, 0, 0, "bad_shm", why);
    if (!consumed.empty()) out_.write(consumed);
  }
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
  // Notified under the lock: once the waiter sees `done` it may return and destroy the condition
  // variable, so nothing may touch it after the lock is released.
  std::lock_guard<std::mutex> lock(w.thread->mutex);
  w.thread->reply = std::string(item.body());
  w.thread->done = true;
  w.thread->cv.notify_one();
}

size_t Runtime::waiter_count() {
  std::lock_guard<std::mutex> lock(waiters_mutex_);
  return waiters_.size();
}

void Runtime::on_stats(const Header& h) {
  size_t contexts = 0;  // counted here: contexts_ belongs to the loop thread
  for (auto& [id, c] : contexts_) contexts += c->stopping() ? 0 : 1;
  control_->post([this, h, contexts] {
    std::string out;
    {
      GilGuard gil;
      size_t start = begin_frame(out, Header{static_cast<uint8_t>(Kind::Result), 0, 0, h.ctx, h.id});
      size_t envs = envs_.env_count(), objects = envs_.object_count();
      const bool gil_on = gil_enabled();  // now: an import since the hello may have turned it back on
      write_body(out, [&](auto& w) {
        w.map(5);
        w.atom("gil");
        w.atom(gil_on ? "enabled" : "disabled");
        w.atom("envs");
        w.integer(static_cast<int64_t>(envs));
        w.atom("objects");
        w.integer(static_cast<int64_t>(objects));
        w.atom("contexts");
        w.integer(static_cast<int64_t>(contexts));
        w.atom("os_pid");
        w.integer(getpid());
        return true;
      });
      finish_frame(out, start);
    }
    out_.write(out);
  });
}

void Runtime::on_output_ack(const Header& h, std::string_view body) {
  uint64_t bytes = 0;
  if (!parse_count(opts_.codec, body, bytes)) {
    protocol_error(h.ctx, h.id, "bad_body", "output_ack body must be a non-negative integer");
    return;
  }
  if (h.ctx == 0) {
    std::lock_guard<std::mutex> lock(out0_mutex_);
    out0_unacked_ -= std::min<uint64_t>(bytes, out0_unacked_);
    out0_cv_.notify_all();
    return;
  }
  // A context being destroyed (destroying_) still counts its output: its last requests may be blocked
  // on this very ack. Request ids are unique per port, so the context that knows the id takes the ack
  // (one being destroyed under an id a new context reuses included). One that has gone is ignored.
  const size_t n = static_cast<size_t>(std::min<uint64_t>(bytes, SIZE_MAX));
  auto live = contexts_.find(h.ctx);
  if (live != contexts_.end() && live->second->output_acked(h.id, n)) return;
  for (auto& [serial, c] : destroying_)
    if (c->id() == h.ctx && c->output_acked(h.id, n)) return;
}

void Runtime::on_env_drop(std::string_view body_view) {
  auto body = std::make_shared<std::string>(body_view);
  control_->post([this, body] {
    GilGuard gil;
    std::string err, key;
    EnvKind kind;
    PyRef env = decode(*body, err);
    if (env && env_key(env.get(), key, kind) && kind != EnvKind::Default) {
      envs_.drop_key(key);
      task_loops_owner_gone(key);  // aio: its asyncio tasks are cancelled (§3.10)
    }
    if (PyErr_Occurred()) PyErr_Clear();
  });
}

PyRef Runtime::decode(std::string_view body, std::string& err) {
  GcPause paused(body.size());  // bulk: no collections over the objects being built
  return decode_body(opts_.codec, body, err);
}

// ---------------------------------------------------------------------------------------------
// Replies

void Runtime::error_frame(std::string& out, uint32_t ctx, uint64_t id, std::string_view cls, std::string_view msg,
                          std::string_view tb) {
  // Always sendable: past max_out_frame the traceback, then the message, are cut (the 256 bytes
  // cover the header and the codecs' envelope around the three strings).
  const size_t room = opts_.max_out_frame > 512 ? opts_.max_out_frame - 256 : 256;
  cls = utf8_prefix(cls, room / 4);
  msg = utf8_prefix(msg, room - cls.size());
  tb = utf8_prefix(tb, room - cls.size() - msg.size());
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
  ErrorText e = take_error(current_interp().format_exception.get());
  // opsb: a request py:interrupt cancelled ends with its own class (a dotted name no exception has).
  Context* c = Context::current_thread_context();
  if (e.cls == "CancelledError" && c && c->is_interrupted(id)) {
    e.cls = kInterruptedClass;
    e.msg = kInterruptedMessage;
  }
  // opsb: a MemoryError because this context's memory_limit refused an allocation.
  int64_t limit = 0, used = 0, requested = 0;
  if (e.cls == "MemoryError" && c && mem::take_refusal(limit, used, requested)) {
    e.cls = "erlang.MemoryLimit";
    e.msg = "memory limit of " + std::to_string(limit) + " bytes reached (" + std::to_string(used) +
            " bytes in use, " + std::to_string(requested) + " more requested)";
  }
  error_frame(out, ctx, id, e.cls, e.msg, e.tb);
}

void Runtime::result_frame(std::string& out, uint32_t ctx, uint64_t id, PyObject* value) {
  if (shm_ && shm_bytes_result(shm_, opts_.codec, out, ctx, id, value)) return;  // bulk (§3.12)
  size_t start = begin_frame(out, Header{static_cast<uint8_t>(Kind::Result), 0, 0, ctx, id});
  if (!write_body(out, [&](auto& w) { return w.python(value); })) {
    out.resize(start);
    error_frame_from_exception(out, ctx, id);
    return;
  }
  finish_frame(out, start);
  if (!frame_fits(out, start)) {
    // Its length would not fit the frame's length field (or exceeds --max-out-frame): sending it
    // would desynchronise every later frame. Refuse this one reply instead.
    size_t size = out.size() - start - 4;
    out.resize(start);
    error_frame(out, ctx, id, "OverflowError",
                "result of " + std::to_string(size) + " bytes exceeds the largest frame the port may send (" +
                    std::to_string(opts_.max_out_frame) + " bytes)",
                "");
  }
}

// ---------------------------------------------------------------------------------------------
// Output (PROTOCOL.md §3.5)

void Runtime::output_frame(std::string& out, uint32_t ctx, uint64_t id, int stream, std::string_view text) {
  // Counted before it is written, so its ack can never arrive first.
  Context* c = Context::current_thread_context();
  if (c && c->id() == ctx) {
    c->output_sent(id, text.size());
  } else {
    std::lock_guard<std::mutex> lock(out0_mutex_);
    out0_unacked_ += text.size();
  }
  size_t start = begin_frame(out, Header{static_cast<uint8_t>(Kind::Output), 0, 0, ctx, id});
  write_body(out, [&](auto& w) {
    w.tuple(2);
    w.integer(stream == 2 ? 2 : 1);
    w.str(text);
    return true;
  });
  finish_frame(out, start);
}

bool Runtime::wait_output_window() {
  if (Context* c = Context::current_thread_context()) return c->wait_output_window(opts_.output_window);
  {
    std::lock_guard<std::mutex> lock(out0_mutex_);
    if (out0_unacked_ <= opts_.output_window) return true;
  }
  // GIL first, then the lock (the lock order): released here, taken back after the lock is gone.
  // Bounded by the Erlang side's acks only: a thread outside contexts serves no request to cancel; it
  // ends with the port at the latest.
  GilRelease unlocked;
  std::unique_lock<std::mutex> lock(out0_mutex_);
  out0_cv_.wait(lock, [&] { return out0_unacked_ <= opts_.output_window; });
  return true;
}

bool Runtime::write_output(int stream, PyObject* text) {
  Py_ssize_t n = 0;
  const char* p = PyUnicode_AsUTF8AndSize(text, &n);
  if (!p) return false;
  if (in_forked_child()) {
    // No protocol here (fork child): the text goes to stderr as it is.
    GilRelease unlocked;
    for (Py_ssize_t off = 0; off < n;) {
      ssize_t w = ::write(2, p + off, static_cast<size_t>(n - off));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) break;
      off += w;
    }
    return true;
  }
  Context* c = Context::current_thread_context();
  ActiveRequest* r = c ? c->current_request() : nullptr;
  uint32_t ctx = c ? c->id() : 0;
  uint64_t id = r ? r->id : 0;
  // Pieces of at most 64 KiB (and within the frame limit), so a long text cannot overrun the window
  // by more than one piece.
  size_t piece_max = std::min<size_t>(size_t{64} << 10, opts_.max_out_frame > 1024 ? opts_.max_out_frame - 256 : 768);
  std::string_view rest(p, static_cast<size_t>(n));
  std::string frame;
  while (!rest.empty()) {
    std::string_view piece = utf8_prefix(rest, piece_max);
    if (piece.empty()) piece = rest.substr(0, piece_max);  // not UTF-8 (cannot happen for a str)
    rest.remove_prefix(piece.size());
    if (!wait_output_window()) {
      PyErr_SetString(cancelled_error(), "request cancelled while its output waited for the Erlang side");
      return false;
    }
    frame.clear();
    output_frame(frame, ctx, id, stream, piece);
    GilRelease unlocked;
    out_.write(frame);
  }
  return true;
}

bool Runtime::in_forked_child() { return g_port_pid != 0 && getpid() != g_port_pid; }

// ---------------------------------------------------------------------------------------------
// Requests (context thread, GIL held)

PyRef Runtime::env_for(uint64_t serial, PyObject* env, std::string& key) {
  EnvKind kind;
  if (!env_key(env, key, kind)) return PyRef();
  bool announce = false;
  PyRef globals = envs_.get(serial, key, kind, announce);
  if (announce) announce_env(0, env);  // §3: env_created is the port's, ctx 0
  return globals;
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
  if (env && PyUnicode_Compare(module, current_interp().main_str.get()) == 0) {
    PyRef f = dict_get_ref(env, function);
    if (f) return f.release();
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
  Interp& in = current_interp();
  PyObject* cache = eval_mode ? in.eval_cache.get() : in.exec_cache.get();
  // The caches are shared by every context thread: dict operations lock the dict on free-threaded
  // builds; the hit is taken as a strong reference (another thread may reset the cache meanwhile).
  PyRef hit = dict_get_ref(cache, code);
  if (hit) return hit.release();
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
      result = PyRef(PyObject_CallOneArg(in.compile_block.get(), code));
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
  if (static_cast<Kind>(h.kind) == Kind::Continue) {  // internal, no body (schedule.cpp)
    serve_continue(out, h, ctx.serial());
    if (PyErr_Occurred()) PyErr_Clear();
    return;
  }
  std::string err;
  // bulk (§3.12): a shm body is decoded straight from its mapped region (the view holds the mapping).
  std::string_view raw = item.body();
  ShmView shm_view;
  if (h.flags & kFlagShm) {
    ShmDesc d;
    if (!shm_ || !parse_shm_desc(raw, d)) err = "a shm frame's body must be a 20-byte descriptor";
    else if (shm_->view(d, shm_view, err)) raw = shm_view.bytes;
    if (!err.empty()) {
      protocol_error_frame(out, h.ctx, h.id, "bad_shm", err);
      return;
    }
  }
  PyRef body = decode(raw, err);
  shm_view = ShmView();
  if (!body) {
    protocol_error_frame(out, h.ctx, h.id, decode_failure_reason(err), err);  // improper_list or bad_body
    return;
  }
  const uint64_t serial = ctx.serial();
  switch (static_cast<Kind>(h.kind)) {
    case Kind::Call:
      serve_call(out, h, body.get(), false, serial);
      break;
    case Kind::Cast:
      serve_call(out, h, body.get(), true, serial);
      break;
    case Kind::Eval:
      serve_eval(out, h, body.get(), serial);
      break;
    case Kind::Exec:
      serve_exec(out, h, body.get(), serial);
      break;
    case Kind::ContextInit:
      serve_context_init(out, h, body.get(), serial);
      break;
    case Kind::RefOp:
      serve_ref_op(out, h, body.get(), serial);
      break;
    case Kind::StreamNext:
      serve_stream_next(out, h, body.get(), serial);
      break;
    case Kind::ContextCreate:
      serve_context_create(ctx, out, h, body.get());
      if (ctx.owngil_requested) {
        body.reset();  // a main-interpreter object: dropped before the thread leaves for its own
        start_owngil(ctx, out, h);
      }
      break;
    case Kind::MemoryLimit:  // opsb
      serve_memory_limit(out, h, body.get());
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

void Runtime::serve_call(std::string& out, const Header& h, PyObject* body, bool is_cast, uint64_t serial) {
  Py_ssize_t n = PyTuple_Check(body) ? PyTuple_GET_SIZE(body) : 0;
  if ((n != 5 && n != 6) || !PyUnicode_Check(PyTuple_GET_ITEM(body, 1)) ||
      !PyUnicode_Check(PyTuple_GET_ITEM(body, 2)) || !PyList_Check(PyTuple_GET_ITEM(body, 3)) ||
      !PyDict_Check(PyTuple_GET_ITEM(body, 4)) || (n == 6 && !PyDict_Check(PyTuple_GET_ITEM(body, 5)))) {
    bad_shape(*this, out, h, "{Env, Module, Function, Args :: list, Kwargs :: map[, Opts :: map]}");
    return;
  }
  // Opts (§3.1): #{return => ref} keeps the result in the context and answers a reference to it.
  bool want_ref = false;
  uint64_t credit = 0;
  bool want_stream = false;  // #{stream => Credit} (§3.9)
  if (n == 6) {
    PyObject* ret = PyDict_GetItemString(PyTuple_GET_ITEM(body, 5), "return");  // borrowed
    want_ref = ret && PyUnicode_Check(ret) && PyUnicode_CompareWithASCIIString(ret, "ref") == 0;
    want_stream = !is_cast && stream_credit(PyTuple_GET_ITEM(body, 5), credit);
  }
  std::string key;
  PyRef env = env_for(serial, PyTuple_GET_ITEM(body, 0), key);
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
      ErrorText e = take_error(current_interp().format_exception.get());
      std::string text = "py:cast failed: " + e.cls + ": " + e.msg + "\n" + e.tb;
      output_frame(out, h.ctx, 0, 2, utf8_prefix(text, opts_.max_out_frame > 512 ? opts_.max_out_frame - 256 : 256));
    }
    return;
  }
  if (!result) {
    error_frame_from_exception(out, h.ctx, h.id);
    return;
  }
  if (!want_stream && !want_ref && is_schedule_marker(result.get())) {
    schedule_result(out, h, result.get(), env.get(), serial);
    return;
  }
  if (want_stream) {
    stream_open(out, h, result.get(), serial, key, credit);
    return;
  }
  if (want_ref) {
    ref_result_frame(out, h, result.get(), serial, key);
    return;
  }
  result_frame(out, h.ctx, h.id, result.get());
}

void Runtime::serve_eval(std::string& out, const Header& h, PyObject* body, uint64_t serial) {
  Py_ssize_t n = PyTuple_Check(body) ? PyTuple_GET_SIZE(body) : 0;
  if ((n != 3 && n != 4) || !PyUnicode_Check(PyTuple_GET_ITEM(body, 1)) || !PyDict_Check(PyTuple_GET_ITEM(body, 2)) ||
      (n == 4 && !PyDict_Check(PyTuple_GET_ITEM(body, 3)))) {
    bad_shape(*this, out, h, "{Env, Code :: binary, Locals :: map[, Opts :: map]}");
    return;
  }
  uint64_t credit = 0;
  bool want_stream = n == 4 && stream_credit(PyTuple_GET_ITEM(body, 3), credit);  // §3.9
  std::string key;
  PyRef env = env_for(serial, PyTuple_GET_ITEM(body, 0), key);
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
  if (!want_stream && is_schedule_marker(result.get())) {
    schedule_result(out, h, result.get(), globals, serial);
    return;
  }
  if (want_stream) {
    stream_open(out, h, result.get(), serial, key, credit);
    return;
  }
  result_frame(out, h.ctx, h.id, result.get());
}

void Runtime::serve_exec(std::string& out, const Header& h, PyObject* body, uint64_t serial) {
  if (!PyTuple_Check(body) || PyTuple_GET_SIZE(body) != 2 || !PyUnicode_Check(PyTuple_GET_ITEM(body, 1))) {
    bad_shape(*this, out, h, "{Env, Code :: binary}");
    return;
  }
  std::string key;
  PyRef env = env_for(serial, PyTuple_GET_ITEM(body, 0), key);
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
    PyErr_SetString(cancelled_error(), "request cancelled while waiting for Erlang");
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
