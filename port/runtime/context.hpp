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
// Locking: the GIL is taken before mutex_, never the other way round. The stack of requests being
// served (active_) is touched only with the GIL held; the queue only under mutex_.
#pragma once

#include <Python.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "frame.hpp"

namespace ep {

class Runtime;

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

// What a context serves while its request waits (§3.4): callback replies and nested requests.
inline bool servable_while_waiting(const Header& h) {
  auto k = static_cast<Kind>(h.kind);
  if (k == Kind::CallbackReply) return true;
  return (h.flags & kFlagNested) && (k == Kind::Call || k == Kind::Eval || k == Kind::Exec);
}

// A request being served on a context thread.
struct ActiveRequest {
  uint64_t id = 0;
  bool waiting = false;  // in Context::wait, GIL released (GIL-protected)
  std::atomic<bool> cancelled{false};
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
  void start();
  // Any thread. False (item not taken) once the thread has left its loop: the caller answers.
  bool push(Item item);
  // Any thread: the not-started call/eval/exec/cast items, removed from the queue in order (drain,
  // and the exit-5 path). Callback replies and other items stay.
  std::vector<Item> take_queued();
  // Loop thread: if request `id` is still queued, removes it and returns true (the caller replies).
  // If it was just popped and has not started, remembers it so that it is refused when it starts.
  bool cancel_queued(uint64_t id);
  // GIL held (control thread): interrupts request `id` if it is running or waiting.
  void cancel_running(uint64_t id);
  // Any thread: finish what is queued, then free the context and end the thread. `destroy_id`, if not
  // 0, is the context_destroy request answered `ok` once the environments are freed. `abandon`: the
  // context never came up (refused mode): queued requests are answered unknown_context instead.
  void request_stop(uint64_t destroy_id = 0, bool abandon = false);
  bool stopping() const { return stopping_.load(std::memory_order_acquire); }
  void join();

  // The context serving the calling thread, or nullptr for any other thread.
  static Context* current_thread_context();
  // Context thread, GIL held: the innermost request being served, or nullptr.
  ActiveRequest* current_request() const { return active_.empty() ? nullptr : active_.back(); }
  // Any thread: id of the innermost request being served (0 if none). Lock-free, for the watchdog.
  uint64_t running_id() const { return running_id_.load(std::memory_order_acquire); }

  enum class WaitEnd { Reply, Deadline, Cancelled };
  // Context thread, GIL held on entry and exit (released while idle). Waits for the callback reply
  // `callback_id` (0: none, only the deadline), serving requests meanwhile.
  WaitEnd wait(uint64_t callback_id, const Clock::time_point* deadline, std::string& reply);

 private:
  void run();
  // GIL held: serves one request and returns with the GIL held; frames to send are appended to `out`.
  void serve(Item& item, std::string& out);
  bool take_cancelled_id(uint64_t id);
  void popped(const Item& item);  // under mutex_: note the request about to start

  // Takes the first item servable while waiting (under mutex_).
  bool take_servable(Item& item);
  // The thread's last steps, GIL held: free the environments, answer the destroy.
  void finish(std::string& out);

  Runtime& rt_;
  const uint32_t id_;
  const uint64_t serial_;
  const int spin_us_;
  std::thread thread_;
  unsigned long thread_ident_ = 0;

  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Item> queue_;
  std::atomic<size_t> queued_{0};  // mirrors queue_.size() for lock-free spinning
  bool sleeping_ = false;
  bool stop_ = false;
  bool exited_ = false;        // the thread left its loop: push refuses items
  bool abandoned_ = false;     // see request_stop
  uint64_t destroy_id_ = 0;
  std::atomic<bool> stopping_{false};
  std::unordered_map<uint64_t, std::string> early_replies_;  // replies for outer waits
  // A request popped from the queue but not yet started (its thread waits for the GIL) is in neither
  // the queue nor active_: a cancel arriving then is remembered here, and serve() refuses it. Only
  // that window records ids, so the list stays (nearly) empty and serve() skips the lock when it is.
  std::atomic<uint64_t> starting_id_{0};
  std::deque<uint64_t> cancelled_ids_;
  std::atomic<size_t> cancelled_count_{0};  // mirrors cancelled_ids_.size()

  std::vector<ActiveRequest*> active_;  // GIL-protected
  std::atomic<uint64_t> running_id_{0};  // mirrors active_.back()->id
};

}  // namespace ep
