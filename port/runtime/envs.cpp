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

PyRef Envs::fresh() {
  PyRef env(PyDict_New());
  if (!env || PyDict_SetItemString(env.get(), "__builtins__", builtins_.get()) ||
      PyDict_SetItemString(env.get(), "__name__", main_name_.get()) ||
      PyDict_SetItemString(env.get(), "erlang", erlang_.get()))
    return PyRef();
  return env;
}

PyRef Envs::get(uint64_t ctx, const std::string& key, EnvKind kind, bool& announce) {
  announce = false;
  PyRef base;
  {
    std::lock_guard<AttachedMutex> lock(mutex_);
    PerContext& pc = ctxs_[ctx];
    auto it = pc.envs.find(key);
    if (it != pc.envs.end()) return PyRef::borrow(it->second.globals.get());
    base = PyRef::borrow(pc.base.get());
  }
  // Built without the envs mutex (copying runs Python); dict.copy() semantics: the preload's names are
  // the environment's own, the objects they name are shared.
  PyRef env;
  if (base) {
    env = PyRef(PyDict_Copy(base.get()));
    if (env && (PyDict_SetItemString(env.get(), "__builtins__", builtins_.get()) ||
                PyDict_SetItemString(env.get(), "__name__", main_name_.get()) ||
                PyDict_SetItemString(env.get(), "erlang", erlang_.get())))
      env = PyRef();
  } else {
    env = fresh();
  }
  if (!env) return env;
  std::lock_guard<AttachedMutex> lock(mutex_);
  auto [it, inserted] = ctxs_[ctx].envs.try_emplace(key);
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
    old = std::exchange(ctxs_[ctx].base, std::move(base));
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

void Envs::free_envs(std::unordered_map<std::string, Env>& envs) {
  for (auto& [key, env] : envs) free_env(env);
  envs.clear();
}

void Envs::drop_key(const std::string& key) {
  std::vector<Env> gone;
  {
    std::lock_guard<AttachedMutex> lock(mutex_);
    announced_.erase(key);
    for (auto& [ctx, pc] : ctxs_) {
      auto it = pc.envs.find(key);
      if (it == pc.envs.end()) continue;
      objects_ -= it->second.objects.size();
      if (!key.empty()) --envs_;
      gone.push_back(std::move(it->second));
      pc.envs.erase(it);
    }
  }
  for (Env& env : gone) free_env(env);
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
