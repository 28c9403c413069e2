// Native asyncio tasks (issue 9, PROTOCOL.md §3.10): the loops' submission queues, the outcome
// frames, and the built-in `_erlang_loop` module the loop threads use (erlang/_tasks.py). See
// task_loops.hpp for the design, the bounds and the locks.
#include "task_loops.hpp"

#include <sys/eventfd.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "codec.hpp"
#include "py_ref.hpp"
#include "runtime.hpp"

namespace ep {

namespace {

Runtime* g_rt = nullptr;  // the port's runtime (C++ object, one per process)

constexpr int kMaxLoops = 256;
constexpr size_t kDefaultLimit = 100000;
// Outcome bytes per task_result frame: past this a batch goes out as several frames, so that the
// Erlang side never gets one huge frame to route.
constexpr size_t kFrameChunk = 256 * 1024;

// Cuts `s` to at most `max` bytes without splitting a UTF-8 sequence.
std::string_view utf8_prefix(std::string_view s, size_t max) {
  if (s.size() <= max) return s;
  size_t n = max;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  return s.substr(0, n);
}

enum class EntryType : uint8_t { Submit, Cancel, OwnerGone };

// A queued frame, bytes only (no Python object outside the loop thread).
struct Entry {
  EntryType type;
  uint64_t serial;   // Submit: the context whose namespaces it uses
  std::string data;  // Submit: the body; Cancel: the task's reference; OwnerGone: the Env key
};

struct Loop {
  std::mutex mutex;  // the task loop mutex: guards everything below but efd
  std::deque<Entry> queue;
  bool wake_pending = false;  // the eventfd was written and the loop thread has not drained since
  size_t in_flight = 0;       // accepted submissions whose outcome has not been handed back
  std::unordered_map<std::string, uint32_t> owners;  // Env key -> its tasks taken by the loop thread
  bool failed = false;        // the loop thread could not be started
  std::string failure;
  int efd = -1;  // set once at creation, closed never (a loop lives as long as the port)
};

std::mutex table_mutex;  // guards `loops` (the slots; a Loop, once made, is never freed)
std::array<std::unique_ptr<Loop>, kMaxLoops> loops;
std::atomic<size_t> limit{kDefaultLimit};

Loop* find_loop(uint64_t index) {
  if (index >= kMaxLoops) return nullptr;
  std::lock_guard<std::mutex> lock(table_mutex);
  return loops[index].get();
}

// --- outcome items: <<Len:32, ETF>> where ETF is {Ref, {ok, Value}} or {Ref, {error, {Class, Msg}}}.

size_t item_begin(std::string& out) {
  size_t at = out.size();
  out.append(4, '\0');
  return at;
}

void item_end(std::string& out, size_t at) {
  std::string len;
  put_be(len, out.size() - at - 4, 4);
  out.replace(at, 4, len);
}

// Starts the item {Ref, {Tag, _}}: the caller writes Tag's value, then item_end(out, at).
size_t outcome_begin(std::string& out, std::string_view ref, std::string_view tag) {
  size_t at = item_begin(out);
  EtfWriter w(out);
  w.version();
  w.tuple(2);
  w.opaque(ref);
  w.tuple(2);
  w.atom(tag);
  return at;
}

void error_item(std::string& out, std::string_view ref, std::string_view cls, std::string_view msg) {
  if (ref.empty()) return;  // fire and forget: nobody to tell
  size_t at = outcome_begin(out, ref, "error");
  EtfWriter w(out);
  w.tuple(2);
  w.str(cls);
  w.str(msg);
  item_end(out, at);
}

// GIL held. Appends {Ref, {ok, Value}}; a value with no Erlang form, or too big for a frame, becomes a
// TypeError outcome instead.
void value_item(std::string& out, std::string_view ref, PyObject* value) {
  size_t at = outcome_begin(out, ref, "ok");
  EtfWriter w(out);
  bool ok = w.python(value);
  if (ok && out.size() - at + kHeaderSize + 64 <= g_rt->max_out_frame()) {
    item_end(out, at);
    return;
  }
  std::string detail = std::string("task result of type '") + Py_TYPE(value)->tp_name + "' has no Erlang form";
  if (ok) detail += " (too large for a frame)";
  PyErr_Clear();
  out.resize(at);
  error_item(out, ref, "TypeError", detail);
}

// Wraps items (back to back) in task_result frames, at most about kFrameChunk bytes each.
class Frames {
 public:
  std::string& items() { return items_; }
  // Closes the current frame if it is full enough.
  void maybe_cut() {
    if (items_.size() >= kFrameChunk) cut();
  }
  // All frames, ready to write.
  std::string take() {
    cut();
    return std::move(frames_);
  }

 private:
  void cut() {
    if (items_.empty()) return;
    size_t start = begin_frame(frames_, Header{kKindTaskResult, 0, 0, 0, 0});
    frames_ += items_;
    finish_frame(frames_, start);
    items_.clear();
  }
  std::string items_;
  std::string frames_;
};

void write_frames(const std::string& frames) {
  if (!frames.empty()) g_rt->output().write(frames);
}

// The task's reference and the codec term of a task_submit body <<RefLen:16, Ref, Term>>.
bool split_submit(std::string_view body, std::string_view& ref, std::string_view& term) {
  if (body.size() < 2) return false;
  size_t n = (static_cast<uint8_t>(body[0]) << 8) | static_cast<uint8_t>(body[1]);
  if (body.size() < 2 + n) return false;  // n 0: fire and forget (spawn_task)
  ref = body.substr(2, n);
  term = body.substr(2 + n);
  return true;
}

// Queues `e` on `loop` and wakes its thread unless a wake-up is already pending.
void push(Loop& loop, Entry e, bool count) {
  bool wake;
  {
    std::lock_guard<std::mutex> lock(loop.mutex);
    if (count) ++loop.in_flight;
    loop.queue.push_back(std::move(e));
    wake = !loop.wake_pending;
    loop.wake_pending = true;
  }
  if (wake) {
    uint64_t one = 1;
    while (::write(loop.efd, &one, sizeof one) < 0 && errno == EINTR) {
    }
  }
}

// Control thread, GIL taken here: starts the Python side of loop `index` (erlang._tasks.start), which
// attaches to the eventfd. If that fails, what is queued is answered with the error, and so is every
// later submission to this loop.
void start_loop(uint64_t index) {
  std::string failure;
  {
    GilGuard gil;
    PyRef mod(PyImport_ImportModule("erlang._tasks"));
    PyRef r = mod ? PyRef(PyObject_CallMethod(mod.get(), "start", "K", static_cast<unsigned long long>(index)))
                  : PyRef();
    if (!r) {
      failure = "event loop " + std::to_string(index) + " could not start";
      PyErr_Print();  // stderr: the Erlang side logs it
    }
  }
  if (failure.empty()) return;
  Loop* loop = find_loop(index);
  std::deque<Entry> queued;
  {
    std::lock_guard<std::mutex> lock(loop->mutex);
    loop->failed = true;
    loop->failure = failure;
    queued.swap(loop->queue);
  }
  Frames frames;
  size_t failed = 0;
  for (const Entry& e : queued) {
    std::string_view ref, term;
    if (e.type != EntryType::Submit) continue;
    ++failed;
    if (split_submit(e.data, ref, term)) error_item(frames.items(), ref, "RuntimeError", failure);
  }
  {
    std::lock_guard<std::mutex> lock(loop->mutex);
    loop->in_flight -= failed;
  }
  write_frames(frames.take());
}

// --- the module

bool loop_arg(PyObject* arg, uint64_t& index, Loop*& loop) {
  index = PyLong_AsUnsignedLongLong(arg);
  if (index == static_cast<uint64_t>(-1) && PyErr_Occurred()) return false;
  loop = find_loop(index);
  if (!loop) {
    PyErr_Format(PyExc_ValueError, "no task loop %llu", static_cast<unsigned long long>(index));
    return false;
  }
  return true;
}

// attach(index) -> fd: the eventfd the loop thread watches (readable: take() has work).
PyObject* mod_attach(PyObject*, PyObject* arg) {
  uint64_t index;
  Loop* loop;
  if (!loop_arg(arg, index, loop)) return nullptr;
  return PyLong_FromLong(loop->efd);
}

// GIL held: one queued submission as the tuple the loop thread runs, or an error item in `errs`.
PyRef submission(Loop& loop, const Entry& e, std::string& errs) {
  std::string_view ref, term;
  if (!split_submit(e.data, ref, term)) return PyRef();  // checked at dispatch
  std::string err;
  PyRef body = g_rt->decode(term, err);
  if (!body || !PyTuple_Check(body.get()) || PyTuple_GET_SIZE(body.get()) != 5) {
    PyErr_Clear();
    error_item(errs, ref, "TypeError", "task_submit body must be {Env, Module, Function, Args, Kwargs}");
    return PyRef();
  }
  PyObject* env = PyTuple_GET_ITEM(body.get(), 0);
  std::string key;
  PyRef globals;
  if (e.serial == 0) {
    error_item(errs, ref, "RuntimeError", "no such context for the task's namespace");
    return PyRef();
  }
  {
    // Counted before env_for announces a new environment: the env_drop that announcement makes
    // possible finds the owner here.
    EnvKind kind;
    if (!env_key(env, key, kind)) {
      PyErr_Clear();
      error_item(errs, ref, "TypeError", "task environment must be a pid, a reference or undefined");
      return PyRef();
    }
    if (!key.empty()) {
      std::lock_guard<std::mutex> lock(loop.mutex);
      ++loop.owners[key];
    }
  }
  globals = g_rt->task_env(e.serial, env, key);
  if (!globals) {
    PyErr_Clear();
    std::lock_guard<std::mutex> lock(loop.mutex);
    auto it = loop.owners.find(key);
    if (it != loop.owners.end() && --it->second == 0) loop.owners.erase(it);
    error_item(errs, ref, "RuntimeError", "the task's environment is gone");
    return PyRef();
  }
  PyRef ref_bytes(PyBytes_FromStringAndSize(ref.data(), static_cast<Py_ssize_t>(ref.size())));
  PyRef key_bytes(PyBytes_FromStringAndSize(key.data(), static_cast<Py_ssize_t>(key.size())));
  if (!ref_bytes || !key_bytes) return PyRef();
  PyRef zero(PyLong_FromLong(0));
  if (!zero) return PyRef();
  return PyRef(PyTuple_Pack(8, zero.get(), ref_bytes.get(), key_bytes.get(), globals.get(),
                            PyTuple_GET_ITEM(body.get(), 1), PyTuple_GET_ITEM(body.get(), 2),
                            PyTuple_GET_ITEM(body.get(), 3), PyTuple_GET_ITEM(body.get(), 4)));
}

// take(index) -> list: everything queued for the loop, in arrival order: (0, ref, owner_key, globals,
// module, function, args, kwargs) submissions, (1, ref) cancels, (2, owner_key) owners gone.
PyObject* mod_take(PyObject*, PyObject* arg) {
  uint64_t index;
  Loop* loop;
  if (!loop_arg(arg, index, loop)) return nullptr;
  // The eventfd is read before the queue is taken: a submission that comes in between is in this
  // batch and the next one writes the eventfd again (wake_pending is cleared with the take).
  uint64_t count;
  while (::read(loop->efd, &count, sizeof count) < 0 && errno == EINTR) {
  }
  std::deque<Entry> batch;
  {
    std::lock_guard<std::mutex> lock(loop->mutex);
    batch.swap(loop->queue);
    loop->wake_pending = false;
  }
  PyRef list(PyList_New(0));
  if (!list) return nullptr;
  std::string errs;
  size_t failed = 0;
  for (const Entry& e : batch) {
    PyRef item;
    if (e.type == EntryType::Submit) {
      item = submission(*loop, e, errs);
      if (!item) {
        if (PyErr_Occurred()) return nullptr;
        ++failed;
        continue;
      }
    } else {
      PyRef bytes(PyBytes_FromStringAndSize(e.data.data(), static_cast<Py_ssize_t>(e.data.size())));
      if (!bytes) return nullptr;
      item = PyRef(Py_BuildValue("(iO)", e.type == EntryType::Cancel ? 1 : 2, bytes.get()));
    }
    if (!item || PyList_Append(list.get(), item.get()) < 0) return nullptr;
  }
  if (failed) {
    {
      std::lock_guard<std::mutex> lock(loop->mutex);
      loop->in_flight -= failed;
    }
    Frames frames;
    frames.items() = std::move(errs);
    std::string out = frames.take();
    GilRelease unlocked;
    write_frames(out);
  }
  return list.release();
}

// GIL held: the UTF-8 of str `s` into `out`. A str that is not valid UTF-8 (a lone surrogate, e.g. a
// file name decoded with surrogateescape) is written with backslash escapes instead of failing: a
// failure here would lose every outcome of the batch. False only on memory errors (set).
bool utf8_of(PyObject* s, std::string& out) {
  Py_ssize_t n = 0;
  if (const char* p = PyUnicode_AsUTF8AndSize(s, &n)) {
    out.assign(p, static_cast<size_t>(n));
    return true;
  }
  if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) return false;
  PyErr_Clear();
  PyRef b(PyUnicode_AsEncodedString(s, "utf-8", "backslashreplace"));
  if (!b) return false;
  out.assign(PyBytes_AS_STRING(b.get()), static_cast<size_t>(PyBytes_GET_SIZE(b.get())));
  return true;
}

// done(index, outcomes): hands back finished tasks, each (ref, owner_key, ok, value): ref None for a
// task nobody awaits (spawn_task: counted, not sent); ok False with value (class, message) for an
// error. The outcomes go out together, in as few task_result frames as fit.
PyObject* mod_done(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  uint64_t index;
  Loop* loop;
  if (nargs != 2 || !PyList_Check(args[1])) {
    PyErr_SetString(PyExc_TypeError, "done(index, outcomes: list)");
    return nullptr;
  }
  if (!loop_arg(args[0], index, loop)) return nullptr;
  Frames frames;
  std::vector<std::string> keys;
  Py_ssize_t n = PyList_GET_SIZE(args[1]);
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* o = PyList_GET_ITEM(args[1], i);
    if (!PyTuple_Check(o) || PyTuple_GET_SIZE(o) != 4 || !PyBytes_Check(PyTuple_GET_ITEM(o, 1))) {
      PyErr_SetString(PyExc_TypeError, "an outcome is (ref, owner_key, ok, value)");
      return nullptr;
    }
    PyObject* ref = PyTuple_GET_ITEM(o, 0);
    PyObject* key = PyTuple_GET_ITEM(o, 1);
    keys.emplace_back(PyBytes_AS_STRING(key), static_cast<size_t>(PyBytes_GET_SIZE(key)));
    if (ref == Py_None) continue;
    if (!PyBytes_Check(ref)) {
      PyErr_SetString(PyExc_TypeError, "an outcome's ref is bytes or None");
      return nullptr;
    }
    std::string_view r(PyBytes_AS_STRING(ref), static_cast<size_t>(PyBytes_GET_SIZE(ref)));
    PyObject* value = PyTuple_GET_ITEM(o, 3);
    if (PyObject_IsTrue(PyTuple_GET_ITEM(o, 2))) {
      value_item(frames.items(), r, value);
    } else {
      std::string cls = "Exception";
      std::string msg;
      if (PyTuple_Check(value) && PyTuple_GET_SIZE(value) == 2 && PyUnicode_Check(PyTuple_GET_ITEM(value, 0)) &&
          PyUnicode_Check(PyTuple_GET_ITEM(value, 1))) {
        if (!utf8_of(PyTuple_GET_ITEM(value, 0), cls) || !utf8_of(PyTuple_GET_ITEM(value, 1), msg)) return nullptr;
      }
      std::string_view m(msg);
      if (m.size() > 64 * 1024) m = utf8_prefix(m, 64 * 1024);
      error_item(frames.items(), r, cls, m);
    }
    frames.maybe_cut();
  }
  {
    std::lock_guard<std::mutex> lock(loop->mutex);
    loop->in_flight -= std::min(loop->in_flight, keys.size());
    for (const std::string& k : keys) {
      if (k.empty()) continue;
      auto it = loop->owners.find(k);
      if (it != loop->owners.end() && --it->second == 0) loop->owners.erase(it);
    }
  }
  std::string out = frames.take();
  {
    GilRelease unlocked;
    write_frames(out);
  }
  Py_RETURN_NONE;
}

// in_flight() -> int: tasks accepted and not yet done, over every loop (tests, stats).
PyObject* mod_in_flight(PyObject*, PyObject*) {
  size_t total = 0;
  for (int i = 0; i < kMaxLoops; ++i) {
    Loop* loop = find_loop(static_cast<uint64_t>(i));
    if (!loop) continue;
    std::lock_guard<std::mutex> lock(loop->mutex);
    total += loop->in_flight;
  }
  return PyLong_FromSize_t(total);
}

// _set_limit(n) -> previous: the per-loop bound on tasks in flight (tests).
PyObject* mod_set_limit(PyObject*, PyObject* arg) {
  size_t n = PyLong_AsSize_t(arg);
  if (n == static_cast<size_t>(-1) && PyErr_Occurred()) return nullptr;
  return PyLong_FromSize_t(limit.exchange(n));
}

PyMethodDef methods[] = {
    {"attach", mod_attach, METH_O, "attach(index) -> fd: the eventfd that says loop index has work"},
    {"take", mod_take, METH_O, "take(index) -> list: the submissions, cancels and owners gone queued for the loop"},
    {"done", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(mod_done)), METH_FASTCALL,
     "done(index, outcomes): send finished tasks' outcomes to Erlang"},
    {"in_flight", mod_in_flight, METH_NOARGS, "tasks in flight over every loop"},
    {"_set_limit", mod_set_limit, METH_O, "_set_limit(n) -> previous per-loop bound (tests)"},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef_Slot slots[] = {
#if PY_VERSION_HEX >= 0x030C0000
    // The task loops are one set per port, served by the main interpreter's loop threads: another
    // interpreter must not take their queues.
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
#if PY_VERSION_HEX >= 0x030D0000
    // Free-threaded builds: the queues are guarded by their task loop mutexes, not by the GIL.
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, nullptr},
};

PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_erlang_loop", "Native asyncio task queues of erlang_python_port (issue 9).",
    0, methods, slots, nullptr, nullptr, nullptr,
};

}  // namespace

void task_loops_bind(Runtime* rt) { g_rt = rt; }

extern "C" PyObject* task_loop_module_init() { return PyModuleDef_Init(&module_def); }

void task_loops_dispatch(const Header& h, std::string payload, uint64_t serial, bool foreign_interp) {
  std::string_view body = std::string_view(payload).substr(kHeaderSize);
  if (h.id >= kMaxLoops) {
    g_rt->protocol_error(h.ctx, h.id, "bad_loop", "loop index must be 0..255");
    return;
  }
  if (h.kind == kKindTaskCancel) {
    Loop* loop = find_loop(h.id);
    if (!loop || body.empty()) return;  // never started, or nothing to cancel: nothing runs
    push(*loop, Entry{EntryType::Cancel, 0, std::string(body)}, false);
    return;
  }
  std::string_view ref, term;
  if (!split_submit(body, ref, term)) {
    g_rt->protocol_error(h.ctx, h.id, "bad_body", "task_submit body is <<RefLen:16, Ref, Term>>");
    return;
  }
  if (foreign_interp) {
    Frames frames;
    error_item(frames.items(), ref, "RuntimeError",
               "asyncio tasks run in the main interpreter: not in an owngil context's namespace");
    write_frames(frames.take());
    return;
  }
  bool created = false;
  Loop* loop;
  {
    std::lock_guard<std::mutex> lock(table_mutex);
    auto& slot = loops[h.id];
    if (!slot) {
      auto made = std::make_unique<Loop>();
      made->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
      if (made->efd < 0) {
        Frames frames;
        error_item(frames.items(), ref, "OSError", std::string("eventfd: ") + std::strerror(errno));
        write_frames(frames.take());
        return;
      }
      slot = std::move(made);
      created = true;
    }
    loop = slot.get();
  }
  std::string refusal;
  {
    std::lock_guard<std::mutex> lock(loop->mutex);
    if (loop->failed) refusal = loop->failure;
    else if (loop->in_flight >= limit.load())
      refusal = "too many tasks in flight on event loop " + std::to_string(h.id) + " (limit " +
                std::to_string(limit.load()) + ")";
  }
  if (!refusal.empty()) {
    // Answered here, never queued: the bound holds whatever the loop thread is doing.
    Frames frames;
    error_item(frames.items(), ref, "RuntimeError", refusal);
    write_frames(frames.take());
    return;
  }
  push(*loop, Entry{EntryType::Submit, serial, std::string(body)}, true);
  if (created) {
    uint64_t index = h.id;
    g_rt->post_control([index] { start_loop(index); });
  }
}

void task_loops_owner_gone(const std::string& key) {
  if (key.empty()) return;
  for (int i = 0; i < kMaxLoops; ++i) {
    Loop* loop = find_loop(static_cast<uint64_t>(i));
    if (!loop) continue;
    bool has;
    {
      std::lock_guard<std::mutex> lock(loop->mutex);
      has = loop->owners.count(key) > 0;
    }
    if (has) push(*loop, Entry{EntryType::OwnerGone, 0, key}, false);
  }
}

}  // namespace ep
