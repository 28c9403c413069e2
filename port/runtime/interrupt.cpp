// py:interrupt (PROTOCOL.md §3.13): the `interrupt` frame cancels whatever request its context is
// serving, through the cancel machinery (erlang.CancelledError raised in the context thread, waits
// woken), and marks it so that its final error frame carries the class `erlang.Interrupted`.
#include "runtime.hpp"

namespace ep {

bool Context::interrupt_running() {
  uint64_t id;
  {
    // Under the active mutex, as cancel_running reads the stack: the control thread's GIL does not
    // stop this context's thread on a free-threaded build, which may push or pop (its entries live
    // on that thread's stack) meanwhile.
    std::lock_guard<AttachedMutex> active(active_mutex_);
    if (active_.empty()) return false;
    // The outermost request: the call made on this context (a nested one belongs to its callback).
    ActiveRequest* ar = active_.front();
    ar->interrupted.store(true);
    id = ar->id;
  }
  // By id: if the request ended in between, nothing else is hit (ids are never reused).
  cancel_running(id);
  return true;
}

// On the context's own thread (its error frame): only that thread changes the stack.
bool Context::is_interrupted(uint64_t id) const {
  for (ActiveRequest* ar : active_)
    if (ar->id == id) return ar->interrupted.load();
  return false;
}

void Runtime::on_interrupt(const Header& h) {
  auto it = contexts_.find(h.ctx);
  if (it == contexts_.end()) {
    protocol_error(h.ctx, h.id, "unknown_context", "no context " + std::to_string(h.ctx));
    return;
  }
  std::shared_ptr<Context> c = it->second;  // held: the context may be destroyed meanwhile
  // On the control thread, with the GIL (attached, on a free-threaded build): the stack is read under
  // the active mutex and the cancel goes by id, so an interrupt never reaches the next request
  // (Context::serve clears a pending asynchronous exception of a cancelled request as it ends).
  control_->post([this, c, h] {
    bool running;
    {
      GilGuard gil;
      running = false;
      run_in(c->interp(), [&] { running = c->interrupt_running(); });  // owngil: in its interpreter
    }
    std::string out;
    size_t start = begin_frame(out, Header{static_cast<uint8_t>(Kind::Result), 0, 0, h.ctx, h.id});
    write_body(out, [&](auto& w) {
      w.atom(running ? "ok" : "not_running");
      return true;
    });
    finish_frame(out, start);
    out_.write(out);
  });
}

}  // namespace ep
