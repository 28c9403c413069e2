// Cooperative scheduling (PROTOCOL.md §3.17): a call or eval whose result is an
// erlang.ScheduleMarker ends its Python frame there and continues with the marker's call. `schedule`
// and `schedule_py` markers go to the waiting Erlang caller in a `schedule` frame (it runs the Erlang
// function, or sends the Python call as a new request); a `schedule_inline` marker stays in the port:
// its call is kept here and a `Continue` item with the request's id is queued behind the context's
// waiting requests, so they get their turn first. Context thread, GIL held, unless said otherwise.
#include <string>

#include "runtime.hpp"

namespace ep {

namespace {
bool attr_is(PyObject* s, const char* text) { return s && PyUnicode_Check(s) && PyUnicode_CompareWithASCIIString(s, text) == 0; }
}  // namespace

bool Runtime::is_schedule_marker(PyObject* value) const {
  PyObject* marker = current_interp().schedule_marker_type.get();
  return marker && reinterpret_cast<PyObject*>(Py_TYPE(value)) == marker;
}

void Runtime::schedule_result(std::string& out, const Header& h, PyObject* marker, PyObject* env, uint64_t serial) {
  PyRef kind(PyObject_GetAttrString(marker, "kind"));
  PyRef name(PyObject_GetAttrString(marker, "name"));
  PyRef args(PyObject_GetAttrString(marker, "args"));
  PyRef kwargs(PyObject_GetAttrString(marker, "kwargs"));
  PyRef arg_list(args ? PySequence_List(args.get()) : nullptr);
  if (!kind || !name || !arg_list || !kwargs || !PyDict_Check(kwargs.get())) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "malformed ScheduleMarker");
    error_frame_from_exception(out, h.ctx, h.id);
    return;
  }
  if (attr_is(kind.get(), "inline")) {
    PyObject* module = PyTuple_Check(name.get()) && PyTuple_GET_SIZE(name.get()) == 2 ? PyTuple_GET_ITEM(name.get(), 0) : nullptr;
    PyObject* func = module ? PyTuple_GET_ITEM(name.get(), 1) : nullptr;
    PyRef call_args(PyList_AsTuple(arg_list.get()));
    Context* c = Context::current_thread_context();
    if (!module || !PyUnicode_Check(module) || !PyUnicode_Check(func) || !call_args || !c) {
      if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "malformed ScheduleMarker");
      error_frame_from_exception(out, h.ctx, h.id);
      return;
    }
    ActiveRequest* running = c->current_request();
    if (running && running->cancelled.load()) {
      // Cancelled as this step returned (the pending async exception is cleared when the step
      // ends): the chain stops here instead of going on unseen.
      error_frame(out, h.ctx, h.id, "CancelledError", "request cancelled", "");
      return;
    }
    Continuation k;
    k.env = env ? PyRef::borrow(env) : PyRef();
    k.module = PyRef::borrow(module);
    k.func = PyRef::borrow(func);
    k.args = std::move(call_args);
    k.kwargs = std::move(kwargs);
    {
      std::lock_guard<std::mutex> lock(continuations_mutex_);
      continuations_[{serial, h.id}] = std::move(k);
    }
    // The item carries only the header: the call itself stays here, as Python objects. It keeps the
    // nested flag, so that the continuation of a nested request still runs on its waiter's stack.
    Item item;
    item.h = Header{static_cast<uint8_t>(Kind::Continue), h.flags, 0, h.ctx, h.id};
    item.frame.assign(kHeaderSize, '\0');
    if (!c->push(std::move(item))) {
      drop_continuation(serial, h.id);
      error_frame(out, h.ctx, h.id, "RuntimeError", "the context stopped before the continuation could run", "");
    }
    return;
  }
  const bool callback = attr_is(kind.get(), "erlang");
  if (!callback && !attr_is(kind.get(), "py")) {
    PyErr_SetString(PyExc_TypeError, "malformed ScheduleMarker");
    error_frame_from_exception(out, h.ctx, h.id);
    return;
  }
  // {callback, Name, Args} or {call, Module, Function, Args, Kwargs}: the request's final frame.
  size_t start = begin_frame(out, Header{static_cast<uint8_t>(Kind::Schedule), 0, 0, h.ctx, h.id});
  bool ok = write_body(out, [&](auto& w) {
    if (callback) {
      w.tuple(3);
      w.atom("callback");
      return w.python(name.get()) && w.python(arg_list.get());
    }
    if (!PyTuple_Check(name.get()) || PyTuple_GET_SIZE(name.get()) != 2) {
      PyErr_SetString(PyExc_TypeError, "malformed ScheduleMarker");
      return false;
    }
    w.tuple(5);
    w.atom("call");
    return w.python(PyTuple_GET_ITEM(name.get(), 0)) && w.python(PyTuple_GET_ITEM(name.get(), 1)) &&
           w.python(arg_list.get()) && w.python(kwargs.get());
  });
  if (!ok) {
    out.resize(start);
    error_frame_from_exception(out, h.ctx, h.id);
    return;
  }
  finish_frame(out, start);
  if (!frame_fits(out, start)) {
    size_t size = out.size() - start - 4;
    out.resize(start);
    error_frame(out, h.ctx, h.id, "OverflowError",
                "scheduled call of " + std::to_string(size) + " bytes exceeds the largest frame the port may send", "");
  }
}

void Runtime::serve_continue(std::string& out, const Header& h, uint64_t serial) {
  Continuation k;
  {
    std::lock_guard<std::mutex> lock(continuations_mutex_);
    auto it = continuations_.find({serial, h.id});
    if (it != continuations_.end()) {
      k = std::move(it->second);
      continuations_.erase(it);
    }
  }
  if (!k.module) {
    error_frame(out, h.ctx, h.id, "RuntimeError", "scheduled continuation not found", "");
    return;
  }
  PyRef func(resolve(k.module.get(), k.func.get(), k.env.get()));
  PyRef result;
  if (func) result = PyRef(PyObject_Call(func.get(), k.args.get(), PyDict_GET_SIZE(k.kwargs.get()) ? k.kwargs.get() : nullptr));
  if (!result) {
    error_frame_from_exception(out, h.ctx, h.id);
    return;
  }
  if (is_schedule_marker(result.get())) {
    schedule_result(out, h, result.get(), k.env.get(), serial);
    return;
  }
  result_frame(out, h.ctx, h.id, result.get());
}

void Runtime::drop_continuation(uint64_t serial, uint64_t id) {
  Continuation k;  // destroyed after the lock is released: its objects' finalizers may run Python
  std::lock_guard<std::mutex> lock(continuations_mutex_);
  auto it = continuations_.find({serial, id});
  if (it == continuations_.end()) return;
  k = std::move(it->second);
  continuations_.erase(it);
}

bool Runtime::continuation_pending(uint64_t serial, uint64_t id) {
  std::lock_guard<std::mutex> lock(continuations_mutex_);
  return continuations_.count({serial, id}) != 0;
}

}  // namespace ep
