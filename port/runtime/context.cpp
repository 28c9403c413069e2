#include "context.hpp"
#include "bulk.hpp"

#include <pythread.h>

#include <sys/socket.h>

#include <algorithm>
#include <cstring>

#include "log.hpp"
#include "runtime.hpp"

namespace ep {

namespace {
thread_local Context* tl_context = nullptr;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}
}  // namespace

Context::Context(Runtime& rt, uint32_t id, uint64_t serial, int spin_us)
    : rt_(rt), id_(id), serial_(serial), spin_us_(spin_us) {}

Context::~Context() {
  if (joinable_) pthread_detach(thread_);
}

Context* Context::current_thread_context() { return tl_context; }

std::shared_ptr<Interp> Context::interp() const {
  std::lock_guard<std::mutex> lock(interp_mutex_);
  return interp_;
}

void Context::set_interp(std::shared_ptr<Interp> in, PyThreadState* home) {
  home_ts_ = home;
  std::lock_guard<std::mutex> lock(interp_mutex_);
  interp_ = std::move(in);
}

void* Context::thread_main(void* self) {
  static_cast<Context*>(self)->run();
  return nullptr;
}

bool Context::start() {
  pthread_attr_t attr;
  if (pthread_attr_init(&attr) != 0) return false;
  int rc = pthread_attr_setstacksize(&attr, kContextStackSize);
  if (rc == 0) rc = pthread_create(&thread_, &attr, &Context::thread_main, this);
  pthread_attr_destroy(&attr);
  if (rc != 0) {
    EP_LOG("cannot start the thread of context %u: %s", id_, std::strerror(rc));
    return false;
  }
  joinable_ = true;
  return true;
}

bool Context::push(Item item) {
  bool wake;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (exited_) return false;
    queue_.push_back(std::move(item));
    queued_.fetch_add(1, std::memory_order_release);
    wake = sleeping_;
  }
  if (wake) cv_.notify_one();
  return true;
}

std::vector<Item> Context::take_queued() {
  std::vector<Item> taken;
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto it = queue_.begin(); it != queue_.end();) {
    if (is_request_kind(it->h.kind)) {
      taken.push_back(std::move(*it));
      it = queue_.erase(it);
    } else {
      ++it;
    }
  }
  queued_.store(queue_.size(), std::memory_order_release);
  return taken;
}

bool Context::take_servable(Item& item) {
  // Bounded by the queue, which the Erlang side bounds (its callers wait for their replies).
  for (auto it = queue_.begin(); it != queue_.end(); ++it) {
    if (!servable_while_waiting(it->h)) continue;
    item = std::move(*it);
    queue_.erase(it);
    queued_.fetch_sub(1, std::memory_order_relaxed);
    popped(item);
    return true;
  }
  return false;
}

bool Context::cancel_queued(uint64_t id) {
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto it = queue_.begin(); it != queue_.end(); ++it) {
    if (it->h.id == id && is_cancellable_kind(it->h.kind)) {
      queue_.erase(it);
      queued_.fetch_sub(1, std::memory_order_relaxed);
      return true;
    }
  }
  // Popped but not started: its thread may be waiting for the GIL, so the control thread's
  // cancel_running could miss it. Refuse it when it starts. (A running request is left to
  // cancel_running, which finds it on the active stack.)
  if (starting_id_.load() == id) {
    cancelled_ids_.push_back(id);
    if (cancelled_ids_.size() > 64) cancelled_ids_.pop_front();  // leftovers of lost races only
    cancelled_count_.store(cancelled_ids_.size());
  }
  return false;
}

void Context::popped(const Item& item) {
  if (is_cancellable_kind(item.h.kind)) starting_id_.store(item.h.id);
}

bool Context::take_cancelled_id(uint64_t id) {
  // The request is starting: from here on (GIL held until it is on the active stack) a cancel finds
  // it through cancel_running.
  starting_id_.store(0);
  if (cancelled_count_.load() == 0) return false;
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto it = cancelled_ids_.begin(); it != cancelled_ids_.end(); ++it) {
    if (*it == id) {
      cancelled_ids_.erase(it);
      cancelled_count_.store(cancelled_ids_.size());
      return true;
    }
  }
  return false;
}

void Context::cancel_running(uint64_t id) {
  // Under the active mutex: the stack cannot change, and the request cannot leave a wait unseen
  // (mark_waiting), between the decision and the delivery.
  std::unique_lock<AttachedMutex> active(active_mutex_);
  for (size_t i = 0; i < active_.size(); ++i) {
    ActiveRequest* ar = active_[i];
    if (ar->id != id) continue;
    ar->cancelled.store(true);
    if (ar->waiting || i + 1 < active_.size()) {
      // Blocked in wait() (itself or under a nested request): wake it, it checks the flag.
      std::lock_guard<std::mutex> lock(mutex_);
      cv_.notify_all();
    } else {
      // Running Python code: raise CancelledError in that thread at its next bytecode boundary.
      PyThreadState_SetAsyncExc(thread_ident_, rt_.cancelled_error());
      // asyncio (issue 9): a loop asleep in epoll_wait runs no bytecode; wake it (its self-pipe).
      int fd = loop_wake_fd_.load();
      if (fd >= 0) (void)::send(fd, "\0", 1, MSG_DONTWAIT | MSG_NOSIGNAL);
    }
    return;
  }
  // Not running: between two steps of a schedule_inline chain (PROTOCOL.md §3.17) the request's
  // continuation is queued, or popped and about to start. Without this the cancel would be lost
  // whenever it is delivered between two steps.
  bool removed = take_queued_continue(id);
  if (!removed) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (starting_id_.load() == id) {
      cancelled_ids_.push_back(id);  // serve() refuses it (and drops its continuation)
      if (cancelled_ids_.size() > 64) cancelled_ids_.pop_front();
      cancelled_count_.store(cancelled_ids_.size());
    }
  }
  active.unlock();  // what follows runs Python finalizers and may block on the pipe
  if (removed) {
    rt_.drop_continuation(serial_, id);
    std::string out;
    rt_.error_frame(out, id_, id, "CancelledError", "request cancelled between two scheduled steps", "");
    rt_.output().write(out);
  }
}

bool Context::mark_waiting(ActiveRequest* me, bool waiting) {
  std::lock_guard<AttachedMutex> active(active_mutex_);
  me->waiting = waiting;
  return me->cancelled.load();
}

void Context::leave_wait(ActiveRequest* me, bool cancel_seen) {
  // A cancel that came while this request was marked waiting only woke cv_; if the wait ended for
  // another reason (reply, deadline) it would be lost: deliver it as cancel_running would have.
  bool cancelled = mark_waiting(me, false);
  if (cancelled && !cancel_seen) {
    PyThreadState_SetAsyncExc(thread_ident_, rt_.cancelled_error());
  } else if (cancel_seen) {
    // The wait reports the cancel itself (its caller raises CancelledError). A cancel delivered just
    // before the wait began (the request still ran bytecode, so cancel_running raised it
    // asynchronously) is still pending: raised again inside the handler of the first, it would replace
    // what the handler does (CPython 3.13 checks for it at more points than 3.11 did).
    PyThreadState_SetAsyncExc(thread_ident_, nullptr);
  }
}

bool Context::take_queued_continue(uint64_t id) {
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto it = queue_.begin(); it != queue_.end(); ++it) {
    if (it->h.id == id && static_cast<Kind>(it->h.kind) == Kind::Continue) {
      queue_.erase(it);
      queued_.fetch_sub(1, std::memory_order_relaxed);
      return true;
    }
  }
  return false;
}

void Context::request_stop(uint64_t destroy_id, bool abandon) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
    if (destroy_id) destroy_id_ = destroy_id;
    if (abandon) abandoned_ = true;
    stopping_.store(true, std::memory_order_release);
  }
  cv_.notify_all();
}

void Context::join() {
  if (joinable_) {
    pthread_join(thread_, nullptr);
    joinable_ = false;
  }
}

void Context::output_sent(uint64_t id, size_t bytes) {
  std::lock_guard<std::mutex> lock(mutex_);
  output_unacked_ += bytes;
  unacked_by_id_[id] += bytes;
}

bool Context::output_acked(uint64_t id, size_t bytes) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = unacked_by_id_.find(id);
  if (it == unacked_by_id_.end()) return false;
  size_t n = std::min(bytes, it->second);  // an over-ack cannot open the window further
  output_unacked_ -= n;
  it->second -= n;
  if (it->second == 0) unacked_by_id_.erase(it);
  cv_.notify_all();  // under the lock: the waiter may otherwise return and we touch nothing after
  return true;
}

void Context::output_forgive(uint64_t id) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = unacked_by_id_.find(id);
  if (it == unacked_by_id_.end()) return;
  output_unacked_ -= it->second;
  unacked_by_id_.erase(it);
}

bool Context::wait_output_window(size_t window) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (output_unacked_ <= window) return true;
  }
  ActiveRequest* me = current_request();
  if (me && me->cancelled.load()) return false;
  // Marked waiting: a cancel now wakes cv_ (cancel_running) instead of raising asynchronously, and
  // this wait sees the flag.
  if (me) mark_waiting(me, true);
  bool open;
  {
    GilRelease unlocked;
    std::unique_lock<std::mutex> lock(mutex_);
    // Bounded by the Erlang side's acks, or by the request's cancel (its deadline).
    cv_.wait(lock, [&] { return output_unacked_ <= window || (me && me->cancelled.load()); });
    open = !(me && me->cancelled.load());
  }
  if (me) leave_wait(me, !open);
  return open;
}

std::pair<size_t, size_t> Context::output_unacked() {
  std::lock_guard<std::mutex> lock(mutex_);
  return {output_unacked_, unacked_by_id_.size()};
}

size_t Context::early_reply_count() {
  std::lock_guard<std::mutex> lock(mutex_);
  return early_replies_.size();
}

void Context::run() {
  PyGILState_STATE gil = PyGILState_Ensure();
  thread_ident_ = PyThread_get_thread_ident();
  tl_context = this;
  PyThreadState* ts = PyEval_SaveThread();
  std::string out;
  bool abandoned = false;
  // Whether this thread still holds the GIL from the last item. It keeps it only when that item left
  // nothing to write (a cast, a step of a schedule_inline chain) and more is queued: releasing it to
  // retake it at once would starve a thread waiting for it (CPython only forces a switch when nobody
  // took the GIL for a whole switch interval, and each retake counts as a switch), and the control
  // thread's cancels would never get in between the steps of a chain.
  bool holding = false;
  // Bound on a hold: C code (a cast of a builtin) never reaches CPython's eval breaker, so a thread
  // waiting for the GIL would otherwise wait until the queue is empty. A hold ends after two switch
  // intervals (the default 5 ms each): a waiter then has seen one whole interval without a switch and
  // asked for the GIL, so the release hands it over (FORCE_SWITCHING) before this thread retakes it.
  constexpr auto kMaxHold = std::chrono::milliseconds(10);
  Clock::time_point hold_since{};
  for (;;) {
    Item item;
    bool got = false;
    if (holding) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!queue_.empty() && !abandoned_) {
        item = std::move(queue_.front());
        queue_.pop_front();
        queued_.fetch_sub(1, std::memory_order_relaxed);
        popped(item);
        abandoned = false;
        got = true;
      }
    }
    if (!got && holding) {
      ts = PyEval_SaveThread();
      holding = false;
    }
    if (!got) {
      // Spin briefly before sleeping: waking an idle core costs tens of microseconds here.
      if (queued_.load(std::memory_order_acquire) == 0 && spin_us_ > 0) {
        auto until = Clock::now() + std::chrono::microseconds(spin_us_);
        while (queued_.load(std::memory_order_acquire) == 0 && Clock::now() < until) cpu_relax();
      }
      std::unique_lock<std::mutex> lock(mutex_);
      while (queue_.empty() && !stop_) {
        sleeping_ = true;
        cv_.wait(lock);
        sleeping_ = false;
      }
      if (queue_.empty()) {  // stop_ with nothing left
        exited_ = true;
        break;
      }
      item = std::move(queue_.front());
      queue_.pop_front();
      queued_.fetch_sub(1, std::memory_order_relaxed);
      popped(item);
      abandoned = abandoned_;
    }
    if (static_cast<Kind>(item.h.kind) == Kind::CallbackReply) continue;  // its waiter was cancelled
    if (abandoned) {
      // The context never came up: nothing queued for it runs.
      starting_id_.store(0);
      rt_.protocol_error(id_, item.h.id, "unknown_context", "no context " + std::to_string(id_));
      continue;
    }
    if (!holding) PyEval_RestoreThread(ts);
    serve(item, out);
    if (out.empty() && queued_.load(std::memory_order_acquire) > 0) {
      auto now = Clock::now();
      if (!holding) hold_since = now;
      if (now - hold_since < kMaxHold) {
        holding = true;
        continue;
      }
    }
    ts = PyEval_SaveThread();
    holding = false;
    if (!out.empty()) {
      rt_.output().write(out);
      shrink_reply(out);  // bulk: not the largest reply's size forever
    }
  }
  if (!holding) PyEval_RestoreThread(ts);
  finish(out);
  if (std::shared_ptr<Interp> in = interp()) {
    // owngil: the environments went in finish(); the sub-interpreter ends on this thread, which is
    // then attached to its main-interpreter thread state again.
    PyThreadState* home = home_ts_;
    set_interp(nullptr, nullptr);
    end_owngil_interp(in, home);
  }
  tl_context = nullptr;
  PyGILState_Release(gil);  // deletes this thread's Python thread state
  if (!out.empty()) rt_.output().write(out);
  // Last: from here on the runtime may join this thread and free the object.
  rt_.context_finished(serial_);
}

void Context::finish(std::string& out) {
  rt_.streams().drop_context(serial_);  // its iterators go with the environments below
  rt_.envs().drop_context(serial_);
  if (PyErr_Occurred()) PyErr_Clear();
  uint64_t destroy_id;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    destroy_id = destroy_id_;
  }
  if (destroy_id) rt_.ok_frame(out, id_, destroy_id);
}

void Context::serve(Item& item, std::string& out) {
  ActiveRequest ar;
  ar.id = item.h.id;
  {
    // On the stack before starting_id_ is cleared (take_cancelled_id): a cancel arriving from here
    // on is found by cancel_running, one before it by cancel_queued. No GIL orders the two for us.
    std::lock_guard<AttachedMutex> active(active_mutex_);
    active_.push_back(&ar);
  }
  running_id_.store(ar.id, std::memory_order_release);
  if (take_cancelled_id(item.h.id) || ar.cancelled.load()) {
    if (static_cast<Kind>(item.h.kind) == Kind::Continue) rt_.drop_continuation(serial_, item.h.id);
    // py:interrupt found it on the stack before it started (interrupt_running marks it first): an
    // interrupt all the same, reported as one (as error_frame_from_exception does once it runs).
    if (ar.interrupted.load())
      rt_.error_frame(out, id_, item.h.id, kInterruptedClass, kInterruptedMessage, "");
    else
      rt_.error_frame(out, id_, item.h.id, "CancelledError", "request cancelled before it started", "");
  } else {
    rt_.handle(*this, item, out);
  }
  // Its final frame is in `out`, which this thread writes next (before any other output of this
  // context, which only this thread counts). A cast has none: the owner acks its output.
  if (static_cast<Kind>(item.h.kind) != Kind::Cast) output_forgive(item.h.id);
  bool cancelled;
  {
    // Off the stack first (no cancel can target it after this), then read the flag.
    std::lock_guard<AttachedMutex> active(active_mutex_);
    active_.pop_back();
    cancelled = ar.cancelled.load();
  }
  running_id_.store(active_.empty() ? 0 : active_.back()->id, std::memory_order_release);
  if (cancelled) {
    // A cancel that arrived as the request finished must not hit the next one.
    PyThreadState_SetAsyncExc(thread_ident_, nullptr);
    PyErr_Clear();
    // Delivered after this step queued its schedule_inline continuation (schedule.cpp checks the flag
    // before it queues) but before the step left the active stack: code that ran in between (the
    // marker's finalizers, a GC pass) let the control thread in. cancel_running then only set the
    // flag, so the chain stops here; otherwise its next step would run as if never cancelled.
    if (out.empty() && take_queued_continue(item.h.id)) {
      rt_.drop_continuation(serial_, item.h.id);
      rt_.error_frame(out, id_, item.h.id, "CancelledError", "request cancelled", "");
    }
  }
}

// chan (PROTOCOL.md §3.11): under mutex_, so a wake() after `ready` turned true is never lost.
void Context::wake() {
  std::lock_guard<std::mutex> lock(mutex_);
  cv_.notify_all();
}

Context::WaitEnd Context::wait(uint64_t callback_id, const Clock::time_point* deadline, std::string& reply,
                               const std::function<bool()>* ready) {
  ActiveRequest* me = current_request();
  if (me) mark_waiting(me, true);
  if (callback_id != 0) {
    std::lock_guard<std::mutex> lock(mutex_);
    waiting_ids_.push_back(callback_id);
  }
  PyThreadState* ts = PyEval_SaveThread();
  WaitEnd end = WaitEnd::Deadline;
  std::string out;
  for (;;) {
    Item item;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      bool have = false;
      for (;;) {
        if (callback_id != 0) {
          auto it = early_replies_.find(callback_id);
          if (it != early_replies_.end()) {
            reply = std::move(it->second);
            early_replies_.erase(it);
            end = WaitEnd::Reply;
            break;
          }
        }
        if (me && me->cancelled.load()) {
          end = WaitEnd::Cancelled;
          break;
        }
        if (ready && (*ready)()) {  // chan: a channel or buffer this thread waits on changed
          end = WaitEnd::Ready;
          break;
        }
        // Only callback replies and nested requests; the rest waits until this request is done.
        if (take_servable(item)) {
          have = true;
          break;
        }
        if (deadline && Clock::now() >= *deadline) {
          end = WaitEnd::Deadline;
          break;
        }
        sleeping_ = true;
        if (deadline) cv_.wait_until(lock, *deadline);
        else cv_.wait(lock);
        sleeping_ = false;
      }
      if (!have) break;
    }
    if (static_cast<Kind>(item.h.kind) == Kind::CallbackReply) {
      std::string body(item.body());
      if (item.h.id == callback_id) {
        reply = std::move(body);
        end = WaitEnd::Reply;
        break;
      }
      std::lock_guard<std::mutex> lock(mutex_);
      // An outer wait's reply; one for a wait that has ended (cancelled) is dropped.
      if (std::find(waiting_ids_.begin(), waiting_ids_.end(), item.h.id) != waiting_ids_.end())
        early_replies_[item.h.id] = std::move(body);
      continue;
    }
    // A nested request (made by a callback of a request on this context): serve it here. This request
    // stays marked waiting: a cancel of it wakes cv_ (and the nested one is above it on the stack).
    PyEval_RestoreThread(ts);
    serve(item, out);
    ts = PyEval_SaveThread();
    if (!out.empty()) {
      rt_.output().write(out);
      shrink_reply(out);  // bulk: not the largest reply's size forever
    }
  }
  if (callback_id != 0) {
    std::lock_guard<std::mutex> lock(mutex_);
    waiting_ids_.pop_back();  // ours: waits nest, so they end innermost first
    early_replies_.erase(callback_id);
  }
  PyEval_RestoreThread(ts);
  if (me) leave_wait(me, end == WaitEnd::Cancelled);
  return end;
}

}  // namespace ep
