// Streams (PROTOCOL.md §3.9). Context thread, GIL held.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <list>
#include <mutex>
#include <string>
#include <thread>

#include "runtime.hpp"

namespace ep {

namespace {
// Items per stream_chunk frame at most: small items are cheap (one frame, one write for many).
constexpr Py_ssize_t kChunkItems = 64;
// A batch is sent at once when the generator took this long for an item (a slow producer: latency
// matters more than the write); else when it is full, or by the flusher when its first item is this old.
constexpr auto kSlowItem = std::chrono::microseconds(50);
constexpr auto kBatchAge = std::chrono::milliseconds(1);

// Steps an async iterator as a plain one: each item is one __anext__() run to completion on a private
// event loop (there is no asyncio loop in the port); closing it runs aclose() there.
constexpr const char* kAsyncAdapter = R"(
def _sync_iter(agen):
    import asyncio
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                item = loop.run_until_complete(agen.__anext__())
            except StopAsyncIteration:
                return
            yield item
    finally:
        try:
            loop.run_until_complete(agen.aclose())
        finally:
            loop.close()
)";

// Sends the batch of a pull whose generator is blocked (in time.sleep, I/O, erlang.call: anything that
// releases the GIL) once its first item is kBatchAge old, so batching never holds an item back while
// the generator waits for the next. One thread for the port, started with the first stream, never
// stopped (it lives as long as the process; it is deliberately never destroyed).
//
// Bounds: one entry per pull in progress (one per context at most). Locking: the GIL, then mutex_
// (the flusher mutex), never the other way round; the batches themselves are GIL-protected.
class Flusher {
 public:
  struct Pending {
    std::function<void()> flush;  // GIL held: sends the batch and disarms (does not release the GIL)
    std::chrono::steady_clock::time_point due;
    bool armed = false;
  };
  static Flusher& get() {
    static Flusher* f = new Flusher();  // never freed: see above
    return *f;
  }
  // GIL held: the pull's batch got its first item; send it at `due` unless the pull does first.
  void arm(Pending& p, std::chrono::steady_clock::time_point due) {
    std::lock_guard<std::mutex> lock(mutex_);
    p.due = due;
    if (!p.armed) {
      p.armed = true;
      pending_.push_back(&p);
    }
    cv_.notify_one();
  }
  // GIL held: the pull sent its batch itself, or is returning.
  void disarm(Pending& p) {
    std::lock_guard<std::mutex> lock(mutex_);
    disarm_locked(p);
  }

 private:
  Flusher() : thread_([this] { run(); }) { thread_.detach(); }
  void disarm_locked(Pending& p) {
    if (!p.armed) return;
    p.armed = false;
    pending_.remove(&p);
  }
  void run() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      if (pending_.empty()) {
        cv_.wait(lock);
        continue;
      }
      auto due = pending_.front()->due;
      for (Pending* p : pending_) due = std::min(due, p->due);
      if (std::chrono::steady_clock::now() < due) {
        cv_.wait_until(lock, due);
        continue;
      }
      // The lock order: GIL first. The pull may send, disarm or return meanwhile: look again.
      lock.unlock();
      {
        GilGuard gil;
        std::lock_guard<std::mutex> relock(mutex_);
        auto now = std::chrono::steady_clock::now();
        for (auto it = pending_.begin(); it != pending_.end();) {
          Pending* p = *it++;
          if (p->due <= now) {
            disarm_locked(*p);
            p->flush();
          }
        }
      }
      lock.lock();
    }
  }
  std::mutex mutex_;  // the flusher mutex: guards pending_ and each entry's due/armed
  std::condition_variable cv_;
  std::list<Pending*> pending_;
  std::thread thread_;
};

PyObject* async_adapter() {
  // Lives for the port's life. Atomic, not GIL-protected: two context threads may build it at once
  // on a free-threaded build; the first published wins and the other drops its copy.
  static std::atomic<PyObject*> cached{nullptr};
  if (PyObject* fn = cached.load(std::memory_order_acquire)) return fn;
  PyRef globals(PyDict_New());
  if (!globals || PyDict_SetItemString(globals.get(), "__builtins__", PyEval_GetBuiltins()) != 0) return nullptr;
  PyRef done(PyRun_String(kAsyncAdapter, Py_file_input, globals.get(), globals.get()));
  if (!done) return nullptr;
  PyRef fn = PyRef::borrow(PyDict_GetItemString(globals.get(), "_sync_iter"));
  if (!fn) return nullptr;
  PyObject* expected = nullptr;
  if (cached.compare_exchange_strong(expected, fn.get(), std::memory_order_acq_rel)) return fn.release();
  return expected;
}
}  // namespace

bool stream_credit(PyObject* opts, uint64_t& credit) {
  PyObject* c = opts ? PyDict_GetItemString(opts, "stream") : nullptr;  // borrowed
  if (!c || !PyLong_Check(c)) return false;
  unsigned long long v = PyLong_AsUnsignedLongLong(c);
  if (PyErr_Occurred()) {
    PyErr_Clear();
    return false;
  }
  credit = v;
  return true;
}

void Runtime::stream_open(std::string& out, const Header& h, PyObject* result, uint64_t serial,
                          const std::string& key, uint64_t credit) {
  PyRef it;
  if (PyObject_HasAttrString(result, "__anext__")) {
    PyObject* adapter = async_adapter();
    if (adapter) it = PyRef(PyObject_CallOneArg(adapter, result));
  } else {
    it = PyRef(PyObject_GetIter(result));
  }
  if (!it) {
    error_frame_from_exception(out, h.ctx, h.id);
    return;
  }
  uint64_t obj_id = envs_.keep(serial, key, it.get());
  if (obj_id == 0) {
    error_frame(out, h.ctx, h.id, "RuntimeError", "the environment was dropped while the call ran", "");
    return;
  }
  streams_.add(serial, h.id, StreamTable::Entry{key, obj_id});
  stream_pull(out, h, serial, it.get(), credit);
}

void Runtime::serve_stream_next(std::string& out, const Header& h, PyObject* body, uint64_t serial) {
  uint64_t credit = 0;
  if (!PyLong_Check(body) || (credit = PyLong_AsUnsignedLongLong(body), PyErr_Occurred())) {
    PyErr_Clear();
    protocol_error_frame(out, h.ctx, h.id, "bad_body", "stream_next body must be a non-negative integer");
    return;
  }
  StreamTable::Entry e;
  // Not a stream (any more): it ended with its final frame already, which the Erlang side has or
  // will get; nothing is sent, so a stream never gets two.
  if (!streams_.find(serial, h.id, e)) return;
  PyRef it = envs_.object(serial, e.key, e.obj_id);
  if (!it) {
    // env_drop freed the iterator (its owner exited): the stream is over.
    streams_.remove(serial, h.id);
    if (credit == 0) stream_end_frame(out, h);
    else error_frame(out, h.ctx, h.id, "KeyError", "the stream's environment was dropped", "");
    return;
  }
  if (credit == 0) {
    // Close: a generator gets GeneratorExit at its yield (its finally blocks run now).
    streams_.remove(serial, h.id);
    PyRef close(PyObject_GetAttrString(it.get(), "close"));
    if (close) {
      PyRef r(PyObject_CallNoArgs(close.get()));
    }
    PyErr_Clear();
    envs_.release(serial, e.key, e.obj_id);
    stream_end_frame(out, h);
    return;
  }
  stream_pull(out, h, serial, it.get(), credit);
}

void Runtime::stream_end_frame(std::string& out, const Header& h) {
  size_t start = begin_frame(out, Header{static_cast<uint8_t>(Kind::StreamEnd), 0, 0, h.ctx, h.id});
  write_body(out, [](auto& w) {
    w.list(0);
    return true;
  });
  finish_frame(out, start);
}

void Runtime::stream_pull(std::string& out, const Header& h, uint64_t serial, PyObject* it, uint64_t credit) {
  using namespace std::chrono;
  PyRef batch(PyList_New(0));
  auto end_stream = [&] {
    StreamTable::Entry e;
    if (streams_.find(serial, h.id, e)) {
      streams_.remove(serial, h.id);
      envs_.release(serial, e.key, e.obj_id);
    }
  };
  // Encodes the batch as one stream_chunk frame into `frame`, GIL held. False with a Python exception
  // set if an item has no Erlang form or the frame would be too long (the batch is kept then).
  auto encode = [&](std::string& frame) -> bool {
    size_t start = begin_frame(frame, Header{static_cast<uint8_t>(Kind::StreamChunk), 0, 0, h.ctx, h.id});
    if (!write_body(frame, [&](auto& w) { return w.python(batch.get()); })) return false;
    finish_frame(frame, start);
    if (!frame_fits(frame, start)) {
      PyErr_Format(PyExc_OverflowError, "stream chunk of %zu bytes exceeds the largest frame the port may send",
                   frame.size() - start - 4);
      return false;
    }
    batch = PyRef(PyList_New(0));
    return true;
  };
  Flusher& flusher = Flusher::get();
  Flusher::Pending pending;
  // owngil (interp.hpp): the flusher thread runs in the main interpreter and may not touch a
  // sub-interpreter's batch, so there every item is sent as it comes (no batching).
  const bool batching = current_interp().is_main;
  // From the flusher thread (GIL held there, and kept across the write: nothing of this pull can be
  // encoded meanwhile, so the frames stay in order). A failure is left for the pull to report.
  pending.flush = [&] {
    std::string frame;
    if (PyList_GET_SIZE(batch.get()) == 0) return;
    if (encode(frame)) out_.write(frame);
    else PyErr_Clear();
  };
  // From the pull: sends the batch now (GIL released for the write). If an item cannot be sent, the
  // items before it are, one a frame, and it returns false with that item's exception set.
  auto flush = [&]() -> bool {
    flusher.disarm(pending);
    if (PyList_GET_SIZE(batch.get()) == 0) return true;
    std::string frame;
    if (encode(frame)) {
      GilRelease unlocked;
      out_.write(frame);
      return true;
    }
    PyErr_Clear();
    PyRef items = std::move(batch);
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(items.get()); ++k) {
      batch = PyRef(PyList_New(0));
      if (PyList_Append(batch.get(), PyList_GET_ITEM(items.get(), k)) != 0) return false;
      frame.clear();
      if (!encode(frame)) return false;
      GilRelease unlocked;
      out_.write(frame);
    }
    return true;  // not reached for a batch that failed: one of its items fails alone
  };
  auto fail = [&] {
    flusher.disarm(pending);
    end_stream();
    error_frame_from_exception(out, h.ctx, h.id);
  };
  // Bounded by the credit.
  for (uint64_t i = 0; i < credit; ++i) {
    auto before = steady_clock::now();
    PyRef item(PyIter_Next(it));
    if (!item) {
      if (PyErr_Occurred()) {
        // The items before the exception go first, then the error ends the stream.
        std::string error;
        error_frame_from_exception(error, h.ctx, h.id);
        if (!flush()) PyErr_Clear();
        flusher.disarm(pending);
        end_stream();
        out += error;
        return;
      }
      if (!flush()) return fail();
      end_stream();
      stream_end_frame(out, h);
      return;
    }
    if (PyList_Append(batch.get(), item.get()) != 0) return fail();
    auto now = steady_clock::now();
    if (!batching || PyList_GET_SIZE(batch.get()) >= kChunkItems || now - before >= kSlowItem) {
      if (!flush()) return fail();
    } else if (PyList_GET_SIZE(batch.get()) == 1) {
      flusher.arm(pending, now + kBatchAge);
    }
  }
  if (!flush()) fail();
  flusher.disarm(pending);
}

}  // namespace ep
