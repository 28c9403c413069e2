// The port's state: options, the embedded interpreter, contexts, callback waiters, and the request
// handlers that turn a decoded request into a reply frame. Environments and objects live in envs.hpp;
// context administration (create, init, destroy, drain) is in context_admin.cpp, object references in
// ref_ops.cpp.
#pragma once

#include <Python.h>

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <deque>
#include <set>
#include <vector>

#include "codec.hpp"
#include "attached_mutex.hpp"
#include "context.hpp"
#include "envs.hpp"
#include "frame.hpp"
#include "interp.hpp"
#include "output.hpp"
#include "py_ref.hpp"
#include "shm.hpp"
#include "streams.hpp"

namespace ep {

struct Options {
  CodecKind codec = CodecKind::Etf;
  int contexts = 2;
  // Live contexts (those at start-up included), each one OS thread: context_create beyond it is refused.
  int max_contexts = 1024;
  std::string pylib;
  std::string crash_file;
  size_t max_frame = kDefaultMaxFrame;
  int spin_us = 0;  // measured: on 2 cores any spin slows round trips (bench/, README)
  // A cancel that cannot get the GIL this long, while its request still runs, means C code holds the
  // GIL and ignores cancellation: nothing else in this port can run, so the port exits (status 5).
  int cancel_stuck_ms = 250;
  // Unacknowledged output bytes a context (ctx 0: threads outside contexts) may have before its next
  // write blocks (PROTOCOL.md §3.5).
  size_t output_window = 256 * 1024;
  // The largest frame the port sends: the length field is 32 bits. A reply that would be bigger is
  // refused with an error reply (tests lower it with --max-out-frame).
  size_t max_out_frame = kMaxOutFrame;
  // opsb: the memory limit of every context thread that sets none (--memory-limit; 0 none).
  int64_t memory_limit = 0;
  // bulk (PROTOCOL.md §3.12): shared-memory regions for big bodies (--shm-*); dir empty: off.
  ShmOptions shm;
  // F_SETPIPE_SZ for the protocol pipes (--pipe-size); 0: the kernel's default.
  int pipe_size = 1 << 20;
};

constexpr int kExitCancelStuck = 5;
// Context threads get this stack, whatever `ulimit -s` says: the codecs' nesting limit (10,000 levels
// of decode) needs about 1.5 MiB, and Python's own recursion more; 16 MiB leaves room to spare. Only
// touched pages are committed.
constexpr size_t kContextStackSize = size_t{16} << 20;

// Runs small jobs that need the GIL but must not hold up the loop thread (cancel, env drop, stats).
class ControlThread {
 public:
  ControlThread();
  ~ControlThread();
  void post(std::function<void()> job);

 private:
  void run();
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  std::thread thread_;
};

// Opts #{stream => Credit} of a call or eval (streams.cpp): true and `credit` set if present.
bool stream_credit(PyObject* opts, uint64_t& credit);

class Runtime {
 public:
  Runtime(Options opts, Output& out);
  ~Runtime();

  // Main thread, before the loop: starts Python, imports the erlang package, starts the contexts.
  // Returns false (after printing why on stderr) if Python could not start. Leaves the GIL released.
  bool start();
  void write_hello();
  // Loop thread, at each frame: joins and frees the contexts whose threads have finished.
  void reap_contexts();
  // A context thread's very last step: it may now be joined and freed (any thread).
  void context_finished(uint64_t serial);

  // Loop thread: routes one frame payload (header + body) from Erlang.
  void dispatch(std::string payload);
  void protocol_error(uint32_t ctx, uint64_t id, const char* reason, const std::string& detail);
  // Appends a protocol_error frame {Reason, Detail} to `out` (no GIL needed).
  void protocol_error_frame(std::string& out, uint32_t ctx, uint64_t id, const char* reason,
                            std::string_view detail);

  // Context thread, GIL held: serves a request item; reply frames are appended to `out`.
  void handle(Context& ctx, Item& item, std::string& out);
  // Reply helpers, GIL held (typed ones need no GIL).
  void result_frame(std::string& out, uint32_t ctx, uint64_t id, PyObject* value);
  void error_frame_from_exception(std::string& out, uint32_t ctx, uint64_t id);
  void error_frame(std::string& out, uint32_t ctx, uint64_t id, std::string_view cls, std::string_view msg,
                   std::string_view tb);
  void ok_frame(std::string& out, uint32_t ctx, uint64_t id);  // result `ok` (no GIL needed)
  void requeue_frame(std::string& out, uint32_t ctx, uint64_t id);  // requeue `[]` (no GIL needed)

  // Writes a body with the port's codec: f(writer) gets an EtfWriter or MsgpackWriter, already
  // past the version byte, and returns false if a Python value failed to encode.
  template <class F>
  bool write_body(std::string& out, F&& f) {
    if (opts_.codec == CodecKind::Etf) {
      EtfWriter w(out);
      w.version();
      return f(w);
    }
    MsgpackWriter w(out);
    return f(w);
  }
  PyRef decode(std::string_view body, std::string& err);  // the cyclic GC paused for big bodies (bulk.hpp)

  // Python -> Erlang round trips (erlang.call, erlang.send), GIL held. Sends `frame` and waits for
  // the callback_reply `callback_id`. Returns false with a Python exception set if cancelled.
  bool round_trip(uint64_t callback_id, const std::string& frame, std::string& reply);
  uint64_t next_callback_id() { return next_callback_id_.fetch_add(1) + 1; }

  // The cancel watchdog (on_cancel) runs on the loop thread, from one libuv timer that main() owns:
  // main hands over how to (re)arm it, and the timer's callback calls check_stuck_cancels, which
  // returns the milliseconds until the next check is due (-1: none left, the timer stays idle).
  void set_watchdog_timer(std::function<void(uint64_t delay_ms)> arm) { arm_watchdog_ = std::move(arm); }
  int64_t check_stuck_cancels();

  // Output (PROTOCOL.md §3.5), GIL held: sends `text` (a str) as output frames on `stream`, in
  // pieces, each after waiting (GIL released) for the calling thread's window. False with a Python
  // exception set: CancelledError if its request was cancelled while it waited.
  bool write_output(int stream, PyObject* text);
  // Appends one output frame for `text` and counts it in the calling thread's window (never blocks).
  void output_frame(std::string& out, uint32_t ctx, uint64_t id, int stream, std::string_view text);
  // Whether the frame that starts at `start` in `out` (finished) is small enough to send.
  bool frame_fits(const std::string& out, size_t start) const {
    return out.size() - start - 4 <= opts_.max_out_frame;
  }
  size_t max_out_frame() const { return opts_.max_out_frame; }
  // Callback waiters registered (for tests, _erlang._pending).
  size_t waiter_count();
  // True in a child made by fork(): the protocol descriptors are closed there (main.cpp's atfork
  // handler), so nothing may be sent and no reply can come.
  static bool in_forked_child();
  Output& output() { return out_; }
  size_t env_count() { return envs_.env_count(); }
  Envs& envs() { return envs_; }
  StreamTable& streams() { return streams_; }
  // GIL held: erlang.CancelledError of the calling thread's interpreter (interp.hpp).
  PyObject* cancelled_error() const;
  // opsa (logging and tracing, ops_module.cpp): GIL jobs off the loop thread, and the codec.
  void post_control(std::function<void()> job) { control_->post(std::move(job)); }
  CodecKind codec() const { return opts_.codec; }
  // aio (§3.10, task_loops.cpp), GIL held: the globals of environment `env` in context `serial`
  // (created and announced as a request's would be), for a task submitted there; sets `key`.
  PyRef task_env(uint64_t serial, PyObject* env, std::string& key) { return env_for(serial, env, key); }
  // bulk (§3.12): the shared-memory regions (main owns them), before the loop starts.
  void set_shm(ShmDir* shm) { shm_ = shm; }
  ShmDir* shm() const { return shm_; }

 private:
  struct ThreadWaiter {
    std::mutex mutex;
    std::condition_variable cv;
    bool done = false;
    std::string reply;
  };
  struct Waiter {
    Context* ctx = nullptr;     // a context thread waits in its own queue
    ThreadWaiter* thread = nullptr;  // any other thread waits on its own condition variable
  };

  bool init_python();
  // The live context a request for `id` goes to (not one that is stopping), or nullptr.
  Context* find_context(uint32_t id);
  std::shared_ptr<Context> new_context(uint32_t id);
  void on_cancel(const Header& h);
  // Cancels request `id` in context `c` (queued: answered now; running: interrupted, watchdog armed).
  void cancel_in(const std::shared_ptr<Context>& c, uint64_t id);
  void on_callback_reply(Item item);
  void on_stats(const Header& h);
  void on_output_ack(const Header& h, std::string_view body);
  [[noreturn]] void exit_cancel_stuck(uint64_t id);
  // Blocks (GIL released) while the window of the calling thread's context (ctx 0: a thread outside
  // contexts) is full. False if the request being served is cancelled meanwhile.
  bool wait_output_window();
  bool write_startup_error();
  void on_env_drop(std::string_view body);
  // Context administration (context_admin.cpp).
  void on_context_create(const Header& h, std::string payload);
  void on_context_destroy(const Header& h);
  void on_drain();
  // opsb (PROTOCOL.md §3.13): record (record_frame.cpp), interrupt (interrupt.cpp); loop thread.
  void on_record(const Header& h, std::string payload);
  void on_interrupt(const Header& h);
  void serve_memory_limit(std::string& out, const Header& h, PyObject* body);  // context thread
  void serve_context_create(Context& ctx, std::string& out, const Header& h, PyObject* body);
  void start_owngil(Context& ctx, std::string& out, const Header& h);  // owngil (context_admin.cpp)
  void serve_context_init(std::string& out, const Header& h, PyObject* body, uint64_t serial);
  bool add_sys_paths(PyObject* paths);

  // GIL held. A new reference to the globals dict of environment `env` in the context `serial`,
  // created on first use (and announced with env_created if it is a pid's first); sets `key`. The
  // request holds its own reference: env_drop may remove the environment while the request waits
  // with the GIL released.
  PyRef env_for(uint64_t serial, PyObject* env, std::string& key);
  PyObject* compiled(PyObject* code, bool eval_mode);
  PyObject* resolve(PyObject* module, PyObject* function, PyObject* env);
  void serve_call(std::string& out, const Header& h, PyObject* body, bool is_cast, uint64_t serial);
  void serve_eval(std::string& out, const Header& h, PyObject* body, uint64_t serial);
  void serve_exec(std::string& out, const Header& h, PyObject* body, uint64_t serial);
  void announce_env(uint32_t ctx, PyObject* pid);
  // Object references (ref_ops.cpp).
  void ref_result_frame(std::string& out, const Header& h, PyObject* obj, uint64_t serial, const std::string& key);
  void serve_ref_op(std::string& out, const Header& h, PyObject* body, uint64_t serial);
  // Streams (streams.cpp, PROTOCOL.md §3.9).
  void stream_open(std::string& out, const Header& h, PyObject* result, uint64_t serial, const std::string& key,
                   uint64_t credit);
  void serve_stream_next(std::string& out, const Header& h, PyObject* body, uint64_t serial);
  void stream_pull(std::string& out, const Header& h, uint64_t serial, PyObject* it, uint64_t credit);
  void stream_end_frame(std::string& out, const Header& h);
  // Cooperative scheduling (schedule.cpp, PROTOCOL.md §3.17).
  bool is_schedule_marker(PyObject* value) const;
  void schedule_result(std::string& out, const Header& h, PyObject* marker, PyObject* env, uint64_t serial);
  void serve_continue(std::string& out, const Header& h, uint64_t serial);
  bool continuation_pending(uint64_t serial, uint64_t id);  // any thread
 public:
  // GIL held: frees the kept call of a continuation that will not run (cancelled while queued).
  void drop_continuation(uint64_t serial, uint64_t id);

 private:
  // A schedule_inline continuation waiting in its context's queue: the call, as Python objects, and
  // the caller's globals it resolves '__main__' in. Keyed by (context serial, request id), guarded by
  // continuations_mutex_ (taken after the GIL). Bounded: one per request whose continuation is queued.
  struct Continuation {
    PyRef env, module, func, args, kwargs;
  };
  std::mutex continuations_mutex_;
  std::map<std::pair<uint64_t, uint64_t>, Continuation> continuations_;

  Options opts_;
  Output& out_;
  // Loop thread only (after start). A destroyed context moves from contexts_ to destroying_ (by
  // serial) until its thread has finished; cancel jobs may hold it a little longer (shared_ptr).
  std::map<uint32_t, std::shared_ptr<Context>> contexts_;
  std::unordered_map<uint64_t, std::shared_ptr<Context>> destroying_;
  uint64_t next_serial_ = 0;
  bool draining_ = false;  // drain received: requests are answered requeue (§3.7)
  std::mutex finished_mutex_;  // guards finished_: serials of context threads that have finished
  std::vector<uint64_t> finished_;
  std::atomic<bool> finished_pending_{false};  // finished_ is not empty (checked without the lock)
  std::unique_ptr<ControlThread> control_;

  // Cancels whose request may hold the GIL: each is checked once, cancel_stuck_ms after it arrived
  // (in arrival order, so the front is due first). Loop thread only. Bounded: one entry per
  // (context, request) cancelled while it was that context's running request, for cancel_stuck_ms;
  // past kMaxStuckChecks (a cancel storm over requests that do finish) new ones are not checked.
  struct StuckCheck {
    std::shared_ptr<Context> ctx;  // held: the context may be destroyed meanwhile
    uint64_t id;
    std::shared_ptr<std::atomic<bool>> delivered;
    Clock::time_point due;
  };
  static constexpr size_t kMaxStuckChecks = 65536;
  // Cancels of running requests not yet delivered by the control thread (on_cancel), under
  // cancel_mutex_; cancel_delivered_ is set once the batch has been delivered.
  std::mutex cancel_mutex_;
  std::vector<std::pair<std::shared_ptr<Context>, uint64_t>> cancel_batch_;  // contexts held, as above
  std::set<std::pair<uint64_t, uint64_t>> cancel_batched_;  // (context serial, request id)
  std::shared_ptr<std::atomic<bool>> cancel_delivered_;
  std::deque<StuckCheck> stuck_checks_;
  std::set<std::pair<uint64_t, uint64_t>> stuck_armed_;  // (context serial, request id)
  std::function<void(uint64_t)> arm_watchdog_;

  // The output window of threads outside contexts (ctx 0): unacknowledged bytes, under out0_mutex_.
  std::mutex out0_mutex_;
  std::condition_variable out0_cv_;
  size_t out0_unacked_ = 0;

  std::mutex waiters_mutex_;
  std::unordered_map<uint64_t, Waiter> waiters_;
  std::atomic<uint64_t> next_callback_id_{0};

  // Python state. The objects cached from an interpreter (builtins, the erlang module, compile_block,
  // format_exception, the code caches, CancelledError) live in its Interp (interp.hpp): main_ for the
  // main interpreter, set once in init_python and read-only after; an owngil context's in its own.
  // The code caches are dicts, locked per object on free-threaded builds and read with strong
  // references (dict_get_ref). envs_ and streams_ are guarded by their own mutexes.
  Envs envs_;
  StreamTable streams_;
  std::shared_ptr<Interp> main_;
  PyRef crash_file_;  // the Python file faulthandler writes to (opened first thing at start-up)
  ShmDir* shm_ = nullptr;  // bulk (§3.12); its own lock guards it (shm.hpp)
  AttachedMutex sys_path_mutex_;  // add_sys_paths: one read-modify-write of sys.path at a time
  bool gil_at_start_ = true;  // sys._is_gil_enabled() once start-up imports were done (hello)
};

}  // namespace ep
