// Environments and object references (PROTOCOL.md §3.1, §3.6, §3.8).
//
// An environment is the Python globals dict of one Env (a pid, a reference, or undefined) in one
// context. It is created on first use as a copy of the context's base (what context_init's preload
// left, or nothing) plus __builtins__, __name__ and erlang. Objects kept by `call ... #{return => ref}`
// belong to the same (context, Env) pair. Contexts are named here by their serial (unique for the life
// of the port), so a context id that is destroyed and created again never sees the old one's state.
//
// Bounds: one environment per (context, Env) that sent a request; they go with env_drop (the owner
// sends it when the pid exits, or for a reference when the user drops it) and with the context. The
// objects of an Env are bounded by what its owner keeps; they go with release, env_drop and the context.
//
// Locking: every method needs the GIL (attached thread state: Python references are created and
// dropped). The maps are guarded by mutex_ ("the envs mutex", an AttachedMutex taken after the GIL,
// never held across a call into Python), which is what keeps them consistent on free-threaded builds,
// where the GIL does not serialise context threads. What a lookup returns is a strong reference, taken
// under the mutex: an env_drop on the control thread may remove the entry right after. Python objects
// that leave the maps are dropped after mutex_ is released: their finalizers may run Python code.
#pragma once

#include <Python.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include "attached_mutex.hpp"
#include "interp.hpp"
#include "py_ref.hpp"

namespace ep {

// What an Env term is. The key is the term's ETF bytes ("" for undefined, which no term encodes to).
enum class EnvKind { Default, Pid, Ref };

// GIL held. Sets `key` and `kind` for a decoded Env; false with TypeError set if it is none of them.
bool env_key(PyObject* env, std::string& key, EnvKind& kind);

class Envs {
 public:
  // GIL held, once, before use: what every environment of the main interpreter gets (an owngil
  // context's environments get its sub-interpreter's own, interp.hpp).
  void init(PyObject* builtins, PyObject* erlang_module, PyObject* main_name);

  // GIL held. A new reference to the globals of (ctx, key), created on first use. `announce` is set
  // when the caller must send env_created: a pid's first environment in this port.
  PyRef get(uint64_t ctx, const std::string& key, EnvKind kind, bool& announce);
  // GIL held. Sets (base non-null) or clears the base later environments of ctx copy.
  void set_base(uint64_t ctx, PyRef base);
  // GIL held. A fresh dict with __builtins__, __name__ = '__main__' and erlang.
  PyRef fresh();

  // GIL held. Keeps `obj` for (ctx, key); returns its ObjId (positive, unique in the port),
  // or 0 if that environment is gone (env_drop while the call ran).
  uint64_t keep(uint64_t ctx, const std::string& key, PyObject* obj);
  // GIL held. A new reference to the object, or empty (no exception set) if there is none.
  PyRef object(uint64_t ctx, const std::string& key, uint64_t obj_id);
  // GIL held. Drops the object; false if there was none.
  bool release(uint64_t ctx, const std::string& key, uint64_t obj_id);

  // GIL held. env_drop: the environments and objects of `key` in every context.
  void drop_key(const std::string& key);
  // GIL held. The context is gone: its base, environments and objects.
  void drop_context(uint64_t ctx);

  // Any thread (the envs mutex only). Environments of pids and references (not the defaults), and
  // objects kept.
  size_t env_count();
  size_t object_count();

 private:
  struct Env {
    PyRef globals;
    std::unordered_map<uint64_t, PyRef> objects;
  };
  struct PerContext {
    // The interpreter the context runs in (interp.hpp): its objects are freed there (drop_key runs
    // on the control thread, attached to the main interpreter).
    std::shared_ptr<Interp> interp;
    PyRef base;
    std::unordered_map<std::string, Env> envs;  // "" is the context's default environment
  };
  // GIL held, envs mutex not held: frees what left the maps (objects first, then the globals,
  // cleared to break the cycles functions make with their globals).
  static void free_envs(std::unordered_map<std::string, Env>& envs);
  static void free_env(Env& env);
  // The interpreter has ended and its objects with it: forget them without a decref.
  static void abandon_env(Env& env);
  // The context's entry (created on first use, remembering the calling thread's interpreter).
  PerContext& context_locked(uint64_t ctx);
  // What a new environment gets in the calling thread's interpreter.
  void seeds(PyObject*& builtins, PyObject*& erlang, PyObject*& main_name) const;

  PyRef builtins_, erlang_, main_name_;
  AttachedMutex mutex_;  // the envs mutex: guards ctxs_, announced_, counts
  std::unordered_map<uint64_t, PerContext> ctxs_;
  std::unordered_set<std::string> announced_;  // pids whose env_created went out (until env_drop)
  size_t envs_ = 0;  // non-default environments in ctxs_
  size_t objects_ = 0;
  std::atomic<uint64_t> next_obj_{0};
};

}  // namespace ep
