// A context: one dedicated OS thread that serves the requests addressed to one context id.
//
// Calls never hop threads (numpy/torch keep thread-local state). While the thread waits inside Python
// (erlang.call, erlang.send, erlang.sleep) it keeps serving requests for its context, nested on its own
// stack: that is what lets Python -> Erlang -> Python nest to any depth without deadlock.
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

// A request being served on a context thread.
struct ActiveRequest {
  uint64_t id = 0;
  bool waiting = false;  // in Context::wait, GIL released (GIL-protected)
  std::atomic<bool> cancelled{false};
};

using Clock = std::chrono::steady_clock;

class Context {
 public:
  Context(Runtime& rt, uint32_t id, int spin_us);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  uint32_t id() const { return id_; }
  void start();
  // Any thread.
  void push(Item item);
  // Loop thread: if request `id` is still queued, removes it and returns true (the caller replies).
  // If it was just popped and has not started, remembers it so that it is refused when it starts.
  bool cancel_queued(uint64_t id);
  // GIL held (control thread): interrupts request `id` if it is running or waiting.
  void cancel_running(uint64_t id);
  void request_stop();
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

  Runtime& rt_;
  const uint32_t id_;
  const int spin_us_;
  std::thread thread_;
  unsigned long thread_ident_ = 0;

  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Item> queue_;
  std::atomic<size_t> queued_{0};  // mirrors queue_.size() for lock-free spinning
  bool sleeping_ = false;
  bool stop_ = false;
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
