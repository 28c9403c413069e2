// Native asyncio tasks (issue 9, PROTOCOL.md §3.10): Erlang submits a task straight to a background
// event loop with a `task_submit` frame; no eval request occupies a context.
//
// The port's I/O thread (libuv) queues each submission or cancel on its loop's queue and wakes the
// loop thread with one eventfd write per batch (only when the queue was not already awaiting a
// drain). The loop thread (an ErlangEventLoop in Python, erlang/_tasks.py) reads the eventfd,
// takes the whole queue (`_erlang_loop.take`), runs the tasks, and hands back the outcomes of one
// loop iteration together (`_erlang_loop.done`), which go out as `task_result` frames holding
// several outcomes each. The Erlang side routes every outcome by its task reference to the caller.
//
// Bounds: per loop at most `limit` tasks in flight (accepted and not yet done; default 100,000,
// `_erlang_loop._set_limit`); a submission past it is answered at once, on the I/O thread, with a
// RuntimeError outcome and never queued. Cancels are queued for any started loop (unknown ones are
// dropped by the loop thread); the Erlang side sends one per await that timed out, after taking the
// task's entry, so at most one per task in flight. Owner-gone notes: one per env_drop of an owner with
// tasks taken. So the queue holds at most `limit` submissions plus about as many of those.
//
// Locking: each loop's queue, wake flag and in-flight count are guarded by that loop's
// `Loop::mutex` (the "task loop mutex"), never held across a call into Python or a write; the table
// of loops by `TaskLoops::table_mutex_`. No Python object is kept here: submissions are bytes until
// the loop thread decodes them with its own thread state.
#pragma once

#include <Python.h>

#include <cstdint>
#include <string>

#include "frame.hpp"

namespace ep {

class Runtime;

constexpr uint8_t kKindTaskSubmit = 16;  // E→P
constexpr uint8_t kKindTaskCancel = 17;  // E→P
constexpr uint8_t kKindTaskResult = 76;  // P→E

// Binds the module and the task loops to the runtime; call before Python starts.
void task_loops_bind(Runtime* rt);
// The init function registered with PyImport_AppendInittab (multi-phase): `_erlang_loop`.
extern "C" PyObject* task_loop_module_init();
// I/O thread, no GIL: a task_submit or task_cancel frame (payload = header + body). `serial` is the
// serial of the context h.ctx names (its namespaces), 0 if there is none; `foreign_interp`: that
// context runs in a sub-interpreter (owngil), whose objects the loops must not touch (refused).
void task_loops_dispatch(const Header& h, std::string payload, uint64_t serial, bool foreign_interp);
// Any thread, no GIL needed: the environment `key` (an Env's ETF bytes) was dropped (its owner
// exited): the tasks it owns are cancelled on every started loop.
void task_loops_owner_gone(const std::string& key);

}  // namespace ep
