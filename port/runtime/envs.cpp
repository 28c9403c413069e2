#include "envs.hpp"

#include <utility>
#include <vector>

#include "erlang_types.hpp"

namespace ep {

namespace {
// ETF tags of references: NEWER_REFERENCE_EXT, NEW_REFERENCE_EXT, REFERENCE_EXT.
bool is_reference_tag(unsigned char tag) { return tag == 90 || tag == 114 || tag == 101; }
}  // namespace

bool env_key(PyObject* env, std::string& key, EnvKind& kind) {
  if (env == Py_None) {
    key.clear();
    kind = EnvKind::Default;
    return true;
  }
  std::string_view bytes;
  if (opaque_bytes(env, bytes) && !bytes.empty()) {
    // Keyed by the term's bytes whatever Python type the codec made of it (Pid, Term, a Ref type).
    if (Py_TYPE(env) == pid_type()) {
      key.assign(bytes);
      kind = EnvKind::Pid;
      return true;
    }
    if (is_reference_tag(static_cast<unsigned char>(bytes[0]))) {
      key.assign(bytes);
      kind = EnvKind::Ref;
      return true;
    }
  }
  PyErr_SetString(PyExc_TypeError, "environment key must be a pid, a reference or undefined");
  return false;
}

void Envs::init(PyObject* builtins, PyObject* erlang_module, PyObject* main_name) {
  builtins_ = PyRef::borrow(builtins);
  erlang_ = PyRef::borrow(erlang_module);
  main_name_ = PyRef::borrow(main_name);
}

void Envs::seeds(PyObject*& builtins, PyObject*& erlang, PyObject*& main_name) const {
  Interp* in = find_current_interp();
  if (in && !in->is_main) {
    builtins = in->builtins.get();
    erlang = in->erlang_module.get();
    main_name = in->main_str.get();
    return;
  }
  builtins = builtins_.get();
  erlang = erlang_.get();
  main_name = main_name_.get();
}

Envs::PerContext& Envs::context_locked(uint64_t ctx) {
  PerContext& pc = ctxs_[ctx];
  if (!pc.interp) {
    Interp* in = find_current_interp();
    if (in) pc.interp = in->shared_from_this();
  }
  return pc;
}

PyRef Envs::fresh() {
  PyObject *builtins, *erlang, *main_name;
  seeds(builtins, erlang, main_name);
  PyRef env(PyDict_New());
  if (!env || PyDict_SetItemString(env.get(), "__builtins__", builtins) ||
      PyDict_SetItemString(env.get(), "__name__", main_name) || PyDict_SetItemString(env.get(), "erlang", erlang))
    return PyRef();
  return env;
}

PyRef Envs::get(uint64_t ctx, const std::string& key, EnvKind kind, bool& announce) {
  announce = false;
  PyRef base;
  {
    std::lock_guard<AttachedMutex> lock(mutex_);
    PerContext& pc = context_locked(ctx);
    auto it = pc.envs.find(key);
    if (it != pc.envs.end()) return PyRef::borrow(it->second.globals.get());
    base = PyRef::borrow(pc.base.get());
  }
  // Built without the envs mutex (copying runs Python); dict.copy() semantics: the preload's names are
  // the environment's own, the objects they name are shared.
  PyRef env;
  if (base) {
    PyObject *builtins, *erlang, *main_name;
    seeds(builtins, erlang, main_name);
    env = PyRef(PyDict_Copy(base.get()));
    if (env && (PyDict_SetItemString(env.get(), "__builtins__", builtins) ||
                PyDict_SetItemString(env.get(), "__name__", main_name) ||
                PyDict_SetItemString(env.get(), "erlang", erlang)))
      env = PyRef();
  } else {
    env = fresh();
  }
  if (!env) return env;
  std::lock_guard<AttachedMutex> lock(mutex_);
  auto [it, inserted] = context_locked(ctx).envs.try_emplace(key);
  if (!inserted) return PyRef::borrow(it->second.globals.get());  // another thread made it meanwhile
  it->second.globals = PyRef::borrow(env.get());
  if (kind != EnvKind::Default) ++envs_;
  if (kind == EnvKind::Pid) announce = announced_.insert(key).second;
  return env;
}

void Envs::set_base(uint64_t ctx, PyRef base) {
  PyRef old;
  {
    std::lock_guard<AttachedMutex> lock(mutex_);
    old = std::exchange(context_locked(ctx).base, std::move(base));
  }
}

uint64_t Envs::keep(uint64_t ctx, const std::string& key, PyObject* obj) {
  uint64_t id = next_obj_.fetch_add(1) + 1;
  std::lock_guard<AttachedMutex> lock(mutex_);
  auto c = ctxs_.find(ctx);
  if (c == ctxs_.end()) return 0;
  // The call that made the object ran in this environment; env_drop may have freed it meanwhile.
  auto e = c->second.envs.find(key);
  if (e == c->second.envs.end()) return 0;
  e->second.objects.emplace(id, PyRef::borrow(obj));
  ++objects_;
  return id;
}

PyRef Envs::object(uint64_t ctx, const std::string& key, uint64_t obj_id) {
  std::lock_guard<AttachedMutex> lock(mutex_);
  auto c = ctxs_.find(ctx);
  if (c == ctxs_.end()) return {};
  auto e = c->second.envs.find(key);
  if (e == c->second.envs.end()) return {};
  auto o = e->second.objects.find(obj_id);
  if (o == e->second.objects.end()) return {};
  return PyRef::borrow(o->second.get());
}

bool Envs::release(uint64_t ctx, const std::string& key, uint64_t obj_id) {
  PyRef gone;
  std::lock_guard<AttachedMutex> lock(mutex_);
  auto c = ctxs_.find(ctx);
  if (c == ctxs_.end()) return false;
  auto e = c->second.envs.find(key);
  if (e == c->second.envs.end()) return false;
  auto o = e->second.objects.find(obj_id);
  if (o == e->second.objects.end()) return false;
  gone = std::move(o->second);
  e->second.objects.erase(o);
  --objects_;
  // `gone` is declared before `lock`, so it is dropped after the mutex is released.
  return true;
}

void Envs::free_env(Env& env) {
  env.objects.clear();
  if (env.globals) PyDict_Clear(env.globals.get());
  env.globals = PyRef();
}

void Envs::abandon_env(Env& env) {
  for (auto& [id, obj] : env.objects) (void)obj.release();
  env.objects.clear();
  (void)env.globals.release();
}

void Envs::free_envs(std::unordered_map<std::string, Env>& envs) {
  for (auto& [key, env] : envs) free_env(env);
  envs.clear();
}

void Envs::drop_key(const std::string& key) {
  std::vector<std::pair<std::shared_ptr<Interp>, Env>> gone;
  {
    std::lock_guard<AttachedMutex> lock(mutex_);
    announced_.erase(key);
    for (auto& [ctx, pc] : ctxs_) {
      auto it = pc.envs.find(key);
      if (it == pc.envs.end()) continue;
      objects_ -= it->second.objects.size();
      if (!key.empty()) --envs_;
      gone.emplace_back(pc.interp, std::move(it->second));
      pc.envs.erase(it);
    }
  }
  // Each in its own interpreter (an owngil context's: attached to it for the time of the free).
  // Not a structured binding: clang 14 (the fuzz and sanitizer builds) cannot capture one.
  for (auto& g : gone) {
    Env& env = g.second;
    if (!run_in(g.first, [&env] { free_env(env); })) abandon_env(env);
  }
}

void Envs::drop_context(uint64_t ctx) {
  PerContext gone;
  {
    std::lock_guard<AttachedMutex> lock(mutex_);
    auto it = ctxs_.find(ctx);
    if (it == ctxs_.end()) return;
    gone = std::move(it->second);
    ctxs_.erase(it);
    for (auto& [key, env] : gone.envs) {
      objects_ -= env.objects.size();
      if (!key.empty()) --envs_;
    }
  }
  free_envs(gone.envs);
  if (gone.base) PyDict_Clear(gone.base.get());
}

size_t Envs::env_count() {
  std::lock_guard<AttachedMutex> lock(mutex_);
  return envs_;
}

size_t Envs::object_count() {
  std::lock_guard<AttachedMutex> lock(mutex_);
  return objects_;
}

}  // namespace ep
