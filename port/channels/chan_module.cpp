// The built-in `_erlang_chan` module (multi-phase init): what erlang.channel needs from the port's
// channel table (channels.hpp), and the loop thread's handling of chan_open/chan_data/chan_ctl
// (PROTOCOL.md §3.11).
//
// Python objects hold a channel's id, never a pointer: every call looks it up, so a channel dropped
// meanwhile (its owner died) is simply gone and reads as closed. Blocking waits release the GIL; on a
// context thread they wait in Context::wait, so the request's cancel (its caller's deadline) ends
// them with erlang.CancelledError.
#include "chan_module.hpp"

#include <structmember.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "channels.hpp"
#include "context.hpp"
#include "erlang_types.hpp"
#include "frame.hpp"
#include "runtime.hpp"

namespace ep {

namespace {

Runtime* g_rt = nullptr;  // the port's runtime (C++ object, one per process)

using chan::Chan;
using chan::Type;

constexpr uint8_t kChanOpen = 20, kChanData = 21, kChanCtl = 22;
constexpr uint8_t kChanConsumed = 80, kChanClosed = 81, kChanBytes = 82;

struct ModState {
  PyObject* channel_closed;       // erlang.channel.ChannelClosed
  PyObject* byte_channel_closed;  // erlang.channel.ByteChannelClosed (a ChannelClosed)
  PyObject* buffer_type;          // _erlang_chan.BufferBase
};

ModState* state_of(PyObject* module) { return static_cast<ModState*>(PyModule_GetState(module)); }

PyObject* closed_error(PyObject* m, const Chan* c) {
  ModState* st = state_of(m);
  return c && c->type == Type::Bytes ? st->byte_channel_closed : st->channel_closed;
}

bool get_id(PyObject* arg, uint64_t& id) {
  id = PyLong_AsUnsignedLongLong(arg);
  return !(id == static_cast<uint64_t>(-1) && PyErr_Occurred());
}

// Writes frames (GIL released: the output lock may wait behind a large frame of another thread).
void send_frames(const std::string& frames) {
  GilRelease unlocked;
  g_rt->output().write(frames);
}

void consumed_frame(std::string& out, uint64_t id, size_t n) {
  size_t start = begin_frame(out, Header{kChanConsumed, 0, 0, 0, id});
  g_rt->write_body(out, [&](auto& w) {
    w.integer(static_cast<int64_t>(n));
    return true;
  });
  finish_frame(out, start);
}

void closed_frame(std::string& out, uint64_t id) {
  size_t start = begin_frame(out, Header{kChanClosed, 0, 0, 0, id});
  g_rt->write_body(out, [&](auto& w) {
    w.list(0);
    return true;
  });
  finish_frame(out, start);
}

// GIL held, chan lock held in `lock`: waits (GIL released) until the channel changes. On a context
// thread the wait is the context's own (a cancel ends it: false with CancelledError set); elsewhere
// on the channel's condition variable (bounded by data, EOF, drop, or the port's exit). Returns with
// the lock held again.
bool wait_change(Chan& c, std::unique_lock<std::mutex>& lock) {
  const uint64_t seen = c.seq.load(std::memory_order_acquire);
  Context* ctx = Context::current_thread_context();
  if (ctx) {
    c.ctx_waiters.push_back(ctx);
    lock.unlock();
    std::function<bool()> ready = [&c, seen] { return c.seq.load(std::memory_order_acquire) != seen; };
    std::string unused;
    Context::WaitEnd end = ctx->wait(0, nullptr, unused, &ready);
    lock.lock();
    auto it = std::find(c.ctx_waiters.begin(), c.ctx_waiters.end(), ctx);
    if (it != c.ctx_waiters.end()) c.ctx_waiters.erase(it);
    if (end == Context::WaitEnd::Cancelled) {
      PyErr_SetString(g_rt->cancelled_error(), "request cancelled while waiting on a channel");
      return false;
    }
    return true;
  }
  lock.unlock();
  {
    GilRelease unlocked;  // the GIL is never taken back while the chan lock is held
    std::unique_lock<std::mutex> relock(c.mutex);
    c.cv.wait(relock, [&] { return c.seq.load(std::memory_order_acquire) != seen; });
  }
  lock.lock();
  return true;
}

// --- channels and byte channels -----------------------------------------------------------------

// lookup(ref, type) -> id of the channel of this port whose handle is `ref`.
PyObject* m_lookup(PyObject* m, PyObject* const* args, Py_ssize_t nargs) {
  std::string_view key;
  if (nargs != 2 || !opaque_bytes(args[0], key)) {
    PyErr_SetString(PyExc_TypeError, "expected the handle (an erlang.Ref) made by py_channel/py_byte_channel/py_buffer");
    return nullptr;
  }
  long want = PyLong_AsLong(args[1]);
  if (want == -1 && PyErr_Occurred()) return nullptr;
  auto c = chan::table().find_key(key);
  if (!c) {
    PyErr_SetString(closed_error(m, nullptr),
                    "no open channel or buffer of this port has this handle: it was closed or freed (its owner "
                    "exited), or it lives in another port (a channel stays in the port it was created in)");
    return nullptr;
  }
  if (static_cast<long>(c->type) != want) {
    static const char* names[] = {"?", "a Channel", "a ByteChannel", "a PyBuffer"};
    PyErr_Format(PyExc_TypeError, "this handle is %s, not %s", names[static_cast<int>(c->type)],
                 names[want >= 1 && want <= 3 ? want : 0]);
    return nullptr;
  }
  return PyLong_FromUnsignedLongLong(c->id);
}

// The next message's value (a term, or bytes for a byte channel), the sentinel `empty` if there is
// none and `block` is false; raises the closed exception at EOF once the queue is drained.
PyObject* receive(PyObject* m, uint64_t id, bool block, PyObject* empty) {
  auto c = chan::table().find(id);
  if (!c) {
    PyErr_SetString(closed_error(m, nullptr), "channel closed");
    return nullptr;
  }
  std::string payload;
  std::string ack;
  {
    std::unique_lock<std::mutex> lock(c->mutex);
    for (;;) {
      if (!c->queue.empty()) break;
      if (c->eof) {
        lock.unlock();
        // The (empty) entry stays until its owner drops it: a reader that comes late still finds the
        // channel and ends its iteration, rather than failing to open it.
        PyErr_SetString(closed_error(m, c.get()), "channel closed");
        return nullptr;
      }
      if (!block) return Py_NewRef(empty);
      if (!wait_change(*c, lock)) return nullptr;
    }
    payload = std::move(c->queue.front());
    c->queue.pop_front();
    size_t n = payload.size() - kHeaderSize;
    c->queued_bytes -= n;
    c->unacked += n;
    size_t batch = c->max_size ? std::min<size_t>(chan::kAckBatch, std::max<size_t>(c->max_size / 4, 1))
                               : chan::kAckBatch;
    if (c->unacked >= batch || c->queue.empty()) {
      consumed_frame(ack, id, c->unacked);
      c->unacked = 0;
    }
  }
  if (!ack.empty()) send_frames(ack);
  std::string_view body = std::string_view(payload).substr(kHeaderSize);
  if (c->type == Type::Bytes) return PyBytes_FromStringAndSize(body.data(), static_cast<Py_ssize_t>(body.size()));
  std::string err;
  PyRef v = g_rt->decode(body, err);
  if (!v && !PyErr_Occurred()) PyErr_Format(PyExc_ValueError, "undecodable channel message: %s", err.c_str());
  return v.release();
}

PyObject* m_receive(PyObject* m, PyObject* arg) {
  uint64_t id;
  if (!get_id(arg, id)) return nullptr;
  return receive(m, id, true, Py_None);
}

// try_receive(id, empty): the message, or `empty` when there is none.
PyObject* m_try_receive(PyObject* m, PyObject* const* args, Py_ssize_t nargs) {
  uint64_t id;
  if (nargs != 2 || !get_id(args[0], id)) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "try_receive(id, empty)");
    return nullptr;
  }
  return receive(m, id, false, args[1]);
}

// waiter(id) -> an eventfd that becomes readable (once) when the channel has data, is closed or
// freed. unwait(id, fd) unregisters and closes it.
PyObject* m_waiter(PyObject*, PyObject* arg) {
  uint64_t id;
  if (!get_id(arg, id)) return nullptr;
  int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) return PyErr_SetFromErrno(PyExc_OSError);
  auto c = chan::table().find(id);
  bool now = true;
  if (c) {
    std::lock_guard<std::mutex> lock(c->mutex);
    now = !c->queue.empty() || c->eof || (c->type == Type::Buffer && c->write_pos > c->read_pos);
    if (!now) c->fd_waiters.push_back(fd);
  }
  if (now) {
    uint64_t one = 1;
    ssize_t w = ::write(fd, &one, sizeof one);
    (void)w;
  }
  return PyLong_FromLong(fd);
}

PyObject* m_unwait(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  uint64_t id;
  if (nargs != 2 || !get_id(args[0], id)) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "unwait(id, fd)");
    return nullptr;
  }
  long fd = PyLong_AsLong(args[1]);
  if (fd == -1 && PyErr_Occurred()) return nullptr;
  if (auto c = chan::table().find(id)) {
    std::lock_guard<std::mutex> lock(c->mutex);
    auto it = std::find(c->fd_waiters.begin(), c->fd_waiters.end(), static_cast<int>(fd));
    if (it != c->fd_waiters.end()) c->fd_waiters.erase(it);
  }
  ::close(static_cast<int>(fd));
  Py_RETURN_NONE;
}

// close(id): Python closes a channel or byte channel: queued messages are discarded, every reader
// wakes with the closed exception, and the Erlang side learns it (chan_closed: sends answer
// {error, closed}). Idempotent.
PyObject* m_close(PyObject*, PyObject* arg) {
  uint64_t id;
  if (!get_id(arg, id)) return nullptr;
  auto c = chan::table().find(id);
  if (!c) Py_RETURN_NONE;
  {
    std::lock_guard<std::mutex> lock(c->mutex);
    c->eof = true;
    c->py_closed = true;
    c->queue.clear();
    c->queued_bytes = 0;
    c->notify_locked();
  }
  // The entry stays until its owner drops it, so later readers see the closed channel.
  std::string out;
  closed_frame(out, id);
  send_frames(out);
  Py_RETURN_NONE;
}

// send_bytes(id, data): a byte channel's Python -> Erlang direction. Blocks (GIL released,
// cancellable) while the Erlang side has max_size (or 16 MiB) unconsumed.
PyObject* m_send_bytes(PyObject* m, PyObject* const* args, Py_ssize_t nargs) {
  uint64_t id;
  if (nargs != 2 || !get_id(args[0], id)) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "send_bytes(id, data)");
    return nullptr;
  }
  Py_buffer view;
  if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) != 0) return nullptr;
  struct Release {
    Py_buffer* v;
    ~Release() { PyBuffer_Release(v); }
  } release{&view};
  const size_t n = static_cast<size_t>(view.len);
  if (n + kHeaderSize > g_rt->max_out_frame()) {
    PyErr_Format(PyExc_OverflowError, "%zu bytes exceed the largest frame the port may send", n);
    return nullptr;
  }
  if (Runtime::in_forked_child()) {
    PyErr_SetString(PyExc_RuntimeError, "Erlang cannot be reached from a forked child process");
    return nullptr;
  }
  auto c = chan::table().find(id);
  if (!c || c->type != Type::Bytes) {
    PyErr_SetString(state_of(m)->byte_channel_closed, "byte channel closed");
    return nullptr;
  }
  {
    std::unique_lock<std::mutex> lock(c->mutex);
    const size_t window = c->max_size ? c->max_size : chan::kDefaultReverseWindow;
    for (;;) {
      if (c->dropped || c->py_closed) {
        PyErr_SetString(closed_error(m, c.get()), "byte channel closed");
        return nullptr;
      }
      if (c->reverse_unconsumed == 0 || c->reverse_unconsumed + n <= window) break;
      if (!wait_change(*c, lock)) return nullptr;
    }
    c->reverse_unconsumed += n;
  }
  std::string frame;
  frame.reserve(n + 4 + kHeaderSize);
  size_t start = begin_frame(frame, Header{kChanBytes, 0, 0, 0, id});
  frame.append(static_cast<const char*>(view.buf), n);
  finish_frame(frame, start);
  send_frames(frame);
  Py_RETURN_NONE;
}

// info(id) -> (queued messages, queued bytes, closed) as the port sees them.
PyObject* m_info(PyObject*, PyObject* arg) {
  uint64_t id;
  if (!get_id(arg, id)) return nullptr;
  auto c = chan::table().find(id);
  if (!c) return Py_BuildValue("(nnO)", Py_ssize_t{0}, Py_ssize_t{0}, Py_True);
  std::lock_guard<std::mutex> lock(c->mutex);
  return Py_BuildValue("(nnO)", static_cast<Py_ssize_t>(c->queue.size()), static_cast<Py_ssize_t>(c->queued_bytes),
                       c->eof ? Py_True : Py_False);
}

PyObject* m_count(PyObject*, PyObject*) { return PyLong_FromSize_t(chan::table().size()); }

// --- buffers ------------------------------------------------------------------------------------

std::shared_ptr<Chan> buffer_of(uint64_t id) {
  auto c = chan::table().find(id);
  if (!c || c->type != Type::Buffer) {
    PyErr_SetString(PyExc_ValueError, "buffer freed (its owner exited) or not a buffer of this port");
    return nullptr;
  }
  return c;
}

bool at_end(const Chan& c) { return c.eof || (c.content_length && c.write_pos >= c.content_length); }

// Bytes [from, to) of the block snapshot `b` (its written bytes never change: no lock needed).
PyObject* bytes_of(const std::shared_ptr<chan::Block>& b, size_t from, size_t to) {
  if (!b || to <= from) return PyBytes_FromStringAndSize("", 0);
  return PyBytes_FromStringAndSize(b->data + from, static_cast<Py_ssize_t>(to - from));
}

// buf_read(id, size, block): size < 0 reads to the end (waits for EOF when blocking).
PyObject* m_buf_read(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  uint64_t id;
  if (nargs != 3 || !get_id(args[0], id)) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "buf_read(id, size, block)");
    return nullptr;
  }
  Py_ssize_t size = PyLong_AsSsize_t(args[1]);
  if (size == -1 && PyErr_Occurred()) return nullptr;
  const bool block = PyObject_IsTrue(args[2]);
  auto c = buffer_of(id);
  if (!c) return nullptr;
  std::shared_ptr<chan::Block> b;
  size_t from, to;
  {
    std::unique_lock<std::mutex> lock(c->mutex);
    for (;;) {
      if (!c->block) {
        PyErr_SetString(PyExc_ValueError, "buffer freed (its owner exited)");
        return nullptr;
      }
      size_t avail = c->write_pos - c->read_pos;
      if (!block || at_end(*c) || (size >= 0 && avail > 0) || size == 0) break;
      if (!wait_change(*c, lock)) return nullptr;
    }
    size_t avail = c->write_pos - c->read_pos;
    size_t n = size < 0 ? avail : std::min(avail, static_cast<size_t>(size));
    b = c->block;
    from = c->read_pos;
    to = from + n;
    c->read_pos = to;
  }
  return bytes_of(b, from, to);
}

// buf_readline(id, limit): up to and including the next b'\n', at most `limit` bytes (< 0: none);
// blocks until a line, the limit or EOF.
PyObject* m_buf_readline(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  uint64_t id;
  if (nargs != 2 || !get_id(args[0], id)) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "buf_readline(id, limit)");
    return nullptr;
  }
  Py_ssize_t limit = PyLong_AsSsize_t(args[1]);
  if (limit == -1 && PyErr_Occurred()) return nullptr;
  auto c = buffer_of(id);
  if (!c) return nullptr;
  std::shared_ptr<chan::Block> b;
  size_t from, to;
  {
    std::unique_lock<std::mutex> lock(c->mutex);
    size_t scanned = c->read_pos;  // bytes before this hold no newline (rescans only new data)
    for (;;) {
      if (!c->block) {
        PyErr_SetString(PyExc_ValueError, "buffer freed (its owner exited)");
        return nullptr;
      }
      from = c->read_pos;
      scanned = std::max(scanned, from);
      size_t end = c->write_pos;
      if (limit >= 0) end = std::min(end, from + static_cast<size_t>(limit));
      const char* nl = scanned < end ? static_cast<const char*>(std::memchr(c->block->data + scanned, '\n', end - scanned))
                                     : nullptr;
      if (nl) {
        to = static_cast<size_t>(nl - c->block->data) + 1;
        break;
      }
      if (at_end(*c) || (limit >= 0 && end - from >= static_cast<size_t>(limit))) {
        to = end;
        break;
      }
      scanned = end;
      if (!wait_change(*c, lock)) return nullptr;
    }
    b = c->block;
    c->read_pos = to;
  }
  return bytes_of(b, from, to);
}

// buf_state(id) -> (read_pos, write_pos, eof, content_length); eof counts a reached content length.
PyObject* m_buf_state(PyObject*, PyObject* arg) {
  uint64_t id;
  if (!get_id(arg, id)) return nullptr;
  auto c = buffer_of(id);
  if (!c) return nullptr;
  std::lock_guard<std::mutex> lock(c->mutex);
  return Py_BuildValue("(nnOK)", static_cast<Py_ssize_t>(c->read_pos), static_cast<Py_ssize_t>(c->write_pos),
                       at_end(*c) ? Py_True : Py_False, static_cast<unsigned long long>(c->content_length));
}

// buf_seek(id, offset, whence) -> the new position. Only within written data; SEEK_END needs EOF.
PyObject* m_buf_seek(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  uint64_t id;
  if (nargs != 3 || !get_id(args[0], id)) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "buf_seek(id, offset, whence)");
    return nullptr;
  }
  long long off = PyLong_AsLongLong(args[1]);
  if (off == -1 && PyErr_Occurred()) return nullptr;
  long whence = PyLong_AsLong(args[2]);
  if (whence == -1 && PyErr_Occurred()) return nullptr;
  auto c = buffer_of(id);
  if (!c) return nullptr;
  std::lock_guard<std::mutex> lock(c->mutex);
  long long base;
  switch (whence) {
    case 0: base = 0; break;
    case 1: base = static_cast<long long>(c->read_pos); break;
    case 2:
      if (!at_end(*c)) {
        PyErr_SetString(PyExc_ValueError, "SEEK_END needs the end of the data: the buffer is not closed yet");
        return nullptr;
      }
      base = static_cast<long long>(c->write_pos);
      break;
    default:
      PyErr_Format(PyExc_ValueError, "invalid whence (%ld, should be 0, 1 or 2)", whence);
      return nullptr;
  }
  long long pos = base + off;
  if (pos < 0 || pos > static_cast<long long>(c->write_pos)) {
    PyErr_Format(PyExc_ValueError, "cannot seek to %lld: only 0..%zu is written", pos, c->write_pos);
    return nullptr;
  }
  c->read_pos = static_cast<size_t>(pos);
  return PyLong_FromLongLong(pos);
}

// buf_find(id, sub, start, end): lowest index of `sub` in the written bytes [start, end), or -1.
// Never blocks (it searches what is written now).
PyObject* m_buf_find(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  uint64_t id;
  if (nargs != 4 || !get_id(args[0], id)) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "buf_find(id, sub, start, end)");
    return nullptr;
  }
  Py_buffer sub;
  if (PyObject_GetBuffer(args[1], &sub, PyBUF_SIMPLE) != 0) return nullptr;
  std::string needle(static_cast<const char*>(sub.buf), static_cast<size_t>(sub.len));
  PyBuffer_Release(&sub);
  Py_ssize_t start = PyLong_AsSsize_t(args[2]);
  if (start == -1 && PyErr_Occurred()) return nullptr;
  Py_ssize_t end = args[3] == Py_None ? PY_SSIZE_T_MAX : PyLong_AsSsize_t(args[3]);
  if (end == -1 && PyErr_Occurred()) return nullptr;
  auto c = buffer_of(id);
  if (!c) return nullptr;
  std::shared_ptr<chan::Block> b;
  size_t hi;
  {
    std::lock_guard<std::mutex> lock(c->mutex);
    b = c->block;
    hi = c->write_pos;
  }
  if (!b) return PyLong_FromLong(-1);
  size_t lo = start < 0 ? 0 : static_cast<size_t>(start);
  if (end >= 0) hi = std::min(hi, static_cast<size_t>(end));
  if (lo > hi || needle.size() > hi - lo) return PyLong_FromLong(-1);
  const void* hit;
  {
    GilRelease unlocked;  // a long search need not hold up other threads; the block is immutable here
    hit = needle.size() == 1 ? std::memchr(b->data + lo, needle[0], hi - lo)
                             : memmem(b->data + lo, hi - lo, needle.data(), needle.size());
  }
  return PyLong_FromSsize_t(hit ? static_cast<const char*>(hit) - b->data : -1);
}

// The buffer protocol of PyBuffer: a read-only view of every byte written so far (zero-copy). The
// view keeps the block alive; later writes are not in it.
struct BufferObject {
  PyObject_HEAD
  unsigned long long id;
};

int buffer_getbuffer(PyObject* self, Py_buffer* view, int flags) {
  if (flags & PyBUF_WRITABLE) {
    PyErr_SetString(PyExc_BufferError, "a PyBuffer is read-only");
    view->obj = nullptr;
    return -1;
  }
  auto c = chan::table().find(reinterpret_cast<BufferObject*>(self)->id);
  std::shared_ptr<chan::Block> b;
  size_t len = 0;
  if (c && c->type == Type::Buffer) {
    std::lock_guard<std::mutex> lock(c->mutex);
    b = c->block;
    len = c->write_pos;
  }
  if (!b) {
    PyErr_SetString(PyExc_BufferError, "buffer freed (its owner exited)");
    view->obj = nullptr;
    return -1;
  }
  auto* keep = new std::shared_ptr<chan::Block>(std::move(b));
  if (PyBuffer_FillInfo(view, self, (*keep)->data, static_cast<Py_ssize_t>(len), 1, flags) != 0) {
    delete keep;
    return -1;
  }
  view->internal = keep;
  return 0;
}

void buffer_releasebuffer(PyObject*, Py_buffer* view) {
  delete static_cast<std::shared_ptr<chan::Block>*>(view->internal);
  view->internal = nullptr;
}

PyMemberDef buffer_members[] = {
    {"_id", T_ULONGLONG, offsetof(BufferObject, id), 0, "the buffer's channel id"},
    {nullptr, 0, 0, 0, nullptr},
};

PyType_Slot buffer_slots[] = {
    {Py_bf_getbuffer, reinterpret_cast<void*>(buffer_getbuffer)},
    {Py_bf_releasebuffer, reinterpret_cast<void*>(buffer_releasebuffer)},
    {Py_tp_members, buffer_members},
    {Py_tp_doc, const_cast<char*>("Base of erlang.PyBuffer: the buffer protocol over the port's buffer.")},
    {0, nullptr},
};

PyType_Spec buffer_spec = {
    "_erlang_chan.BufferBase", sizeof(BufferObject), 0, Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE, buffer_slots,
};

#define FASTCALL(f) reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(f)), METH_FASTCALL

PyMethodDef methods[] = {
    {"lookup", FASTCALL(m_lookup), "lookup(ref, type) -> id of the channel/buffer whose handle is ref"},
    {"receive", m_receive, METH_O, "receive(id): next message, blocking (GIL released)"},
    {"try_receive", FASTCALL(m_try_receive), "try_receive(id, empty): next message or empty"},
    {"waiter", m_waiter, METH_O, "waiter(id) -> eventfd readable once data, EOF or drop"},
    {"unwait", FASTCALL(m_unwait), "unwait(id, fd): unregister and close a waiter fd"},
    {"close", m_close, METH_O, "close(id): close from Python"},
    {"send_bytes", FASTCALL(m_send_bytes), "send_bytes(id, data): bytes to Erlang (byte channels)"},
    {"info", m_info, METH_O, "info(id) -> (messages, bytes, closed) queued in the port"},
    {"_count", m_count, METH_NOARGS, "channels and buffers alive in this port (tests)"},
    {"buf_read", FASTCALL(m_buf_read), "buf_read(id, size, block)"},
    {"buf_readline", FASTCALL(m_buf_readline), "buf_readline(id, limit)"},
    {"buf_state", m_buf_state, METH_O, "buf_state(id) -> (read_pos, write_pos, eof, content_length)"},
    {"buf_seek", FASTCALL(m_buf_seek), "buf_seek(id, offset, whence)"},
    {"buf_find", FASTCALL(m_buf_find), "buf_find(id, sub, start, end)"},
    {nullptr, nullptr, 0, nullptr},
};

int exec_module(PyObject* m) {
  ModState* st = state_of(m);
  st->channel_closed = PyErr_NewExceptionWithDoc("erlang.channel.ChannelClosed",
                                                 "The channel was closed (and drained), or freed.", nullptr, nullptr);
  if (!st->channel_closed) return -1;
  st->byte_channel_closed = PyErr_NewExceptionWithDoc(
      "erlang.channel.ByteChannelClosed", "The byte channel was closed (and drained), or freed.", st->channel_closed,
      nullptr);
  if (!st->byte_channel_closed) return -1;
  st->buffer_type = PyType_FromModuleAndSpec(m, &buffer_spec, nullptr);
  if (!st->buffer_type) return -1;
  if (PyModule_AddObjectRef(m, "ChannelClosed", st->channel_closed) ||
      PyModule_AddObjectRef(m, "ByteChannelClosed", st->byte_channel_closed) ||
      PyModule_AddObjectRef(m, "BufferBase", st->buffer_type))
    return -1;
  return 0;
}

int traverse(PyObject* m, visitproc visit, void* arg) {
  ModState* st = state_of(m);
  Py_VISIT(st->channel_closed);
  Py_VISIT(st->byte_channel_closed);
  Py_VISIT(st->buffer_type);
  return 0;
}

int clear(PyObject* m) {
  ModState* st = state_of(m);
  Py_CLEAR(st->channel_closed);
  Py_CLEAR(st->byte_channel_closed);
  Py_CLEAR(st->buffer_type);
  return 0;
}

PyModuleDef_Slot slots[] = {
    {Py_mod_exec, reinterpret_cast<void*>(exec_module)},
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
#if PY_VERSION_HEX >= 0x030D0000
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, nullptr},
};

PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_erlang_chan", "Channels, byte channels and buffers of erlang_python_port.",
    sizeof(ModState), methods, slots, traverse, clear, nullptr,
};

// A py_buffer handle passed to Python (an argument, a map value) arrives as an erlang.PyBuffer, as the
// reference docs show (environ['wsgi.input'].read()). Only while this port has buffers; a failure to
// build one leaves the plain erlang.Ref.
PyRef buffer_for_ref(std::string_view key) {
  if (chan::table().buffers() == 0) return PyRef();
  auto c = chan::table().find_key(key);
  if (!c || c->type != Type::Buffer) return PyRef();
  PyRef mod(PyImport_ImportModule("erlang.channel"));
  PyRef cls(mod ? PyObject_GetAttrString(mod.get(), "PyBuffer") : nullptr);
  PyRef id(PyLong_FromUnsignedLongLong(c->id));
  PyRef obj(cls && id ? PyObject_CallMethod(cls.get(), "_from_id", "O", id.get()) : nullptr);
  if (!obj) PyErr_Clear();
  return obj;
}

}  // namespace

void chan_module_bind(Runtime* rt) {
  g_rt = rt;
  set_ref_hook(&buffer_for_ref);
}

extern "C" PyObject* chan_module_init() { return PyModuleDef_Init(&module_def); }

bool chan_is_kind(uint8_t kind) { return kind == kChanOpen || kind == kChanData || kind == kChanCtl; }

void chan_dispatch(const Header& h, std::string payload) {
  std::string_view body = std::string_view(payload).substr(kHeaderSize);
  if (h.kind == kChanData) {
    chan::table().data(h.id, std::move(payload));
    return;
  }
  std::string_view bin;
  bool etf = !body.empty() && static_cast<unsigned char>(body[0]) == 131;
  auto be64 = [&](size_t at) {
    uint64_t x = 0;
    for (size_t i = 0; i < 8; ++i) x = (x << 8) | static_cast<unsigned char>(bin[at + i]);
    return x;
  };
  if (!chan::parse_binary_body(etf, body, bin)) {
    g_rt->protocol_error(h.ctx, h.id, "bad_body", "chan_open/chan_ctl body must be one binary");
    return;
  }
  if (h.kind == kChanOpen) {
    // <<Type:8, MaxSize:64, Hint:64, Key/binary>>
    if (bin.size() < 18 || bin[0] < 1 || bin[0] > 3) {
      g_rt->protocol_error(h.ctx, h.id, "bad_body", "chan_open: <<Type:8, MaxSize:64, Hint:64, Key/binary>>");
      return;
    }
    chan::table().open(h.id, static_cast<Type>(bin[0]), be64(1), be64(9), std::string(bin.substr(17)));
    return;
  }
  // chan_ctl: <<Op:8, Arg:64>>
  if (bin.size() != 9 || bin[0] < 1 || bin[0] > 3) {
    g_rt->protocol_error(h.ctx, h.id, "bad_body", "chan_ctl: <<Op:8, Arg:64>>");
    return;
  }
  chan::table().ctl(h.id, static_cast<chan::CtlOp>(bin[0]), be64(1));
}

}  // namespace ep
