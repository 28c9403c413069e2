// A context: one dedicated OS thread that serves the requests addressed to one context id.
//
// Calls never hop threads (numpy/torch keep thread-local state). A context runs one request at a time
// (PROTOCOL.md §3.4): while that request waits inside Python (erlang.call, erlang.send, erlang.sleep) the
// thread serves, nested on its own stack, only the requests that carry the nested flag (made by a
// callback of a request on this context): that lets Python -> Erlang -> Python nest to any depth without
// deadlock, and no unrelated request delays the waiting one. Every other request stays queued.
//
// Life: created by the runtime (start-up or context_create), destroyed by context_destroy: the thread
// finishes what is queued, frees the context's environments, answers the destroy and exits; the runtime
// (loop thread) then joins it and drops the object. Nothing else keeps a raw pointer past that point:
// waiters exist only while this thread serves a request, and cancel jobs hold a shared_ptr.
//
// Locking (no GIL is relied on: free-threaded builds have none): the queue, early replies and output
// counts are guarded by mutex_; the stack of requests being served (active_) and each entry's
// `waiting` are changed by this context's thread only, under active_mutex_ (the active mutex), and read
// under it by the control thread (cancel_running). Order: GIL/attached, then active_mutex_, then
// mutex_; mutex_ is never held while taking the active mutex.
#pragma once

#include <Python.h>
#include <pthread.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "attached_mutex.hpp"
#include "frame.hpp"
#include "interp.hpp"

namespace ep {

class Runtime;

// The error a request py:interrupt cancelled ends with (PROTOCOL.md §3.13): a dotted class name no
// Python exception has.
inline constexpr std::string_view kInterruptedClass = "erlang.Interrupted";
inline constexpr std::string_view kInterruptedMessage = "request interrupted by py:interrupt";

// One frame routed to a context: a request, a callback reply, or an internal stop.
struct Item {
  Header h;
  std::string frame;  // header + body
  std::string_view body() const { return std::string_view(frame).substr(kHeaderSize); }
};

inline bool is_request_kind(uint8_t kind) {
  auto k = static_cast<Kind>(kind);
  return k == Kind::Call || k == Kind::Eval || k == Kind::Exec || k == Kind::Cast;
}

// What a cancel can remove from a queue or refuse at its start: requests and the continuations of
// requests (schedule_inline, PROTOCOL.md §3.17). Continuations are not requeued by a drain: their
// request has started.
inline bool is_cancellable_kind(uint8_t kind) {
  return is_request_kind(kind) || static_cast<Kind>(kind) == Kind::Continue;
}

// What a context serves while its request waits (§3.4): callback replies and nested requests.
inline bool servable_while_waiting(const Header& h) {
  auto k = static_cast<Kind>(h.kind);
  if (k == Kind::CallbackReply) return true;
  return (h.flags & kFlagNested) &&
         (k == Kind::Call || k == Kind::Eval || k == Kind::Exec || k == Kind::RefOp || k == Kind::Continue);
}

// A request being served on a context thread.
struct ActiveRequest {
  uint64_t id = 0;
  bool waiting = false;  // in Context::wait / wait_output_window (the active mutex: mark_waiting)
  std::atomic<bool> cancelled{false};
  std::atomic<bool> interrupted{false};  // cancelled by py:interrupt (interrupt.cpp): its own error term
};

using Clock = std::chrono::steady_clock;

class Context {
 public:
  // `serial` names the context for the port's life (ids may be reused after a destroy).
  Context(Runtime& rt, uint32_t id, uint64_t serial, int spin_us);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  uint32_t id() const { return id_; }
  uint64_t serial() const { return serial_; }
  // Starts the thread; false (errno-style failure logged) if the OS refused a thread.
  bool start();
  // Any thread. False (item not taken) once the thread has left its loop: the caller answers.
  bool push(Item item);
  // Removes every call/eval/exec/cast still waiting in the queue (not started) and returns them in
  // queue order; callback replies and other items stay. Any thread; locks mutex_. Used for requeue
  // (PROTOCOL.md §3.7): by drain, and before the port exits with status 5.
  std::vector<Item> take_queued();
  // Loop thread: if request `id` is still queued, removes it and returns true (the caller replies).
  // If it was just popped and has not started, remembers it so that it is refused when it starts.
  bool cancel_queued(uint64_t id);
  // GIL held (control thread): interrupts request `id` if it is running or waiting.
  void cancel_running(uint64_t id);
  // opsb (interrupt.cpp), GIL held. interrupt_running: cancels the outermost request being served and
  // marks it interrupted; false if none is. is_interrupted: request `id` on this thread's stack was.
  bool interrupt_running();
  bool is_interrupted(uint64_t id) const;
  // Any thread: finish what is queued, then free the context and end the thread. `destroy_id`, if not
  // 0, is the context_destroy request answered `ok` once the environments are freed. `abandon`: the
  // context never came up (refused mode): queued requests are answered unknown_context instead.
  void request_stop(uint64_t destroy_id = 0, bool abandon = false);
  bool stopping() const { return stopping_.load(std::memory_order_acquire); }
  void join();

  // Output flow control (PROTOCOL.md §3.5): bytes of this context's output frames not yet
  // acknowledged, in total and per request id (the id the frames carry), guarded by mutex_.
  // output_sent: this context's thread, before the frame is written. output_acked: loop thread, on
  // output_ack; false (nothing changed) if no output of that id is outstanding here (acked already,
  // forgiven, or never sent); wakes a writer blocked in wait_output_window. output_forgive: this
  // context's thread, as request `id`'s final frame goes out: its unacknowledged bytes leave the
  // count and later acks for it are ignored, so a reader that went away (caller killed) cannot keep
  // the window shut for the requests after it.
  void output_sent(uint64_t id, size_t bytes);
  bool output_acked(uint64_t id, size_t bytes);
  void output_forgive(uint64_t id);
  // Context thread, GIL held on entry and exit (released while blocked): returns true once no more
  // than `window` bytes are unacknowledged, false if the request being served is cancelled first.
  bool wait_output_window(size_t window);
  // For tests (_erlang._output_unacked): unacknowledged output bytes, and the ids they belong to.
  std::pair<size_t, size_t> output_unacked();
  // For tests (_erlang._pending): replies kept for outer waits.
  size_t early_reply_count();

  // The context serving the calling thread, or nullptr for any other thread.
  static Context* current_thread_context();
  // Context thread, GIL held: the innermost request being served, or nullptr (only this thread
  // changes the stack, so it reads it without the active mutex).
  ActiveRequest* current_request() const { return active_.empty() ? nullptr : active_.back(); }
  // Any thread: id of the innermost request being served (0 if none). Lock-free, for the watchdog.
  uint64_t running_id() const { return running_id_.load(std::memory_order_acquire); }

  // asyncio (issue 9, PROTOCOL.md §3.10): the self-pipe of an event loop running on this context's
  // thread; cancel_running writes a byte to it after raising CancelledError, so a loop asleep in
  // epoll_wait wakes and the exception is raised at once. -1: none. An atomic: set by the context's
  // thread, read by the control thread; no lock. Returns the previous fd.
  int set_loop_wake_fd(int fd) { return loop_wake_fd_.exchange(fd); }

  // owngil (interp.hpp, PROTOCOL.md §3.16): the sub-interpreter this context runs in, or null (the
  // main interpreter). Set by this context's thread as it serves its context_create, before the ok;
  // read by the control thread to attach there (interp_mutex_). `home`: this thread's main-interpreter
  // thread state, kept detached meanwhile, attached again as the thread ends the sub-interpreter.
  std::shared_ptr<Interp> interp() const;
  void set_interp(std::shared_ptr<Interp> in, PyThreadState* home);
  // Context thread: serve_context_create asked for owngil; the runtime makes the sub-interpreter once
  // the create's body (a main-interpreter object) is dropped.
  bool owngil_requested = false;

  enum class WaitEnd { Reply, Deadline, Cancelled, Ready };
  // Context thread, GIL held on entry and exit (released while idle). Waits for the callback reply
  // `callback_id` (0: none, only the deadline), serving requests meanwhile.
  // chan (PROTOCOL.md §3.11): it also ends (Ready) once `ready` returns true. `ready` is called under
  // mutex_ and may read only atomics; whoever makes it true calls wake() afterwards.
  WaitEnd wait(uint64_t callback_id, const Clock::time_point* deadline, std::string& reply,
               const std::function<bool()>* ready = nullptr);
  // chan: any thread. Wakes this context's thread if it sleeps in wait(), so it re-checks `ready`.
  void wake();

 private:
  void run();
  // GIL held: serves one request and returns with the GIL held; frames to send are appended to `out`.
  void serve(Item& item, std::string& out);
  bool take_cancelled_id(uint64_t id);
  // Context thread: sets me->waiting under the active mutex; returns whether it was cancelled.
  bool mark_waiting(ActiveRequest* me, bool waiting);
  // Context thread, attached, leaving a wait: a cancel the wait did not see is raised asynchronously.
  void leave_wait(ActiveRequest* me, bool cancel_seen);
  bool take_queued_continue(uint64_t id);  // removes request id's queued Continue item, if any
  void popped(const Item& item);  // under mutex_: note the request about to start

  static void* thread_main(void* self);
  // Takes the first item servable while waiting (under mutex_).
  bool take_servable(Item& item);
  // The thread's last steps, GIL held: free the environments, answer the destroy.
  void finish(std::string& out);

  Runtime& rt_;
  const uint32_t id_;
  const uint64_t serial_;
  const int spin_us_;
  // A pthread, not a std::thread: it gets an explicit stack size (kContextStackSize), so a small
  // `ulimit -s` cannot make deep terms crash the port.
  pthread_t thread_{};
  bool joinable_ = false;
  unsigned long thread_ident_ = 0;
  std::atomic<int> loop_wake_fd_{-1};  // asyncio: see set_loop_wake_fd

  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Item> queue_;
  std::atomic<size_t> queued_{0};  // mirrors queue_.size() for lock-free spinning
  bool sleeping_ = false;
  bool stop_ = false;
  // Replies for outer waits, arrived while an inner wait ran. Only ids in waiting_ids_ (the callback
  // ids this thread's wait() calls are waiting for, innermost last) are kept, and a wait removes its
  // own on return, so both hold at most one entry per nesting level: a reply that comes after its
  // waiter was cancelled is dropped, never kept forever.
  std::unordered_map<uint64_t, std::string> early_replies_;
  std::vector<uint64_t> waiting_ids_;
  // Under mutex_. output_unacked_ is always the sum of unacked_by_id_. Bounded: one entry per id with
  // output not yet acknowledged: requests on this thread's stack (each forgiven when its final frame
  // goes out), and casts and id 0 (no final frame; the owner acks that output once it has logged it).
  size_t output_unacked_ = 0;
  std::unordered_map<uint64_t, size_t> unacked_by_id_;
  bool exited_ = false;        // the thread left its loop: push refuses items
  bool abandoned_ = false;     // see request_stop
  uint64_t destroy_id_ = 0;
  std::atomic<bool> stopping_{false};
  // A request popped from the queue but not yet started (its thread waits for the GIL) is in neither
  // the queue nor active_: a cancel arriving then is remembered here, and serve() refuses it. Only
  // that window records ids, so the list stays (nearly) empty and serve() skips the lock when it is.
  std::atomic<uint64_t> starting_id_{0};
  std::deque<uint64_t> cancelled_ids_;
  std::atomic<size_t> cancelled_count_{0};  // mirrors cancelled_ids_.size()

  mutable std::mutex interp_mutex_;  // guards interp_ (owngil)
  std::shared_ptr<Interp> interp_;
  PyThreadState* home_ts_ = nullptr;  // this thread only

  AttachedMutex active_mutex_;          // the active mutex (see Locking above)
  std::vector<ActiveRequest*> active_;  // changed by this thread under active_mutex_
  std::atomic<uint64_t> running_id_{0};  // mirrors active_.back()->id
};

}  // namespace ep
