#include "mem_limit.hpp"

#include <Python.h>
#include <malloc.h>

#include <cstdlib>
#include <cstring>

#include "context.hpp"

namespace ep::mem {

namespace {

// Trivially destructible: valid for the thread's whole life, TLS destructors included.
struct Budget {
  bool init;          // the limit was decided (a context thread found, or set_limit called)
  int64_t limit;      // 0: none
  int64_t used;       // bytes this thread allocated and freed not itself, clamped at 0
  bool refused;
  int64_t refused_used, refused_requested;
};
thread_local Budget tl_budget;

// The allocators we wrap, per domain (set once, before any thread but main runs); each wrapper gets
// its original as its ctx.
PyMemAllocatorEx g_orig[3];
PyObjectArenaAllocator g_arena;
int64_t g_default_limit = 0;
bool g_installed = false;

inline Budget* budget() {
  Budget& b = tl_budget;
  if (!b.init) {
    // The limit is decided once the thread is known to be a context's (its first allocations, in
    // PyGILState_Ensure, come before that).
    if (!Context::current_thread_context()) return nullptr;
    b.init = true;
    b.limit = g_default_limit;
  }
  return b.limit > 0 ? &b : nullptr;
}

inline bool refuse(Budget* b, size_t n, size_t freed) {
  if (!b) return false;
  int64_t after = b->used - static_cast<int64_t>(freed) + static_cast<int64_t>(n);
  if (after <= b->limit) return false;
  b->refused = true;
  b->refused_used = b->used;
  b->refused_requested = static_cast<int64_t>(n);
  return true;
}

inline void add(Budget* b, int64_t delta) {
  if (!b) return;
  b->used += delta;
  if (b->used < 0) b->used = 0;
}

inline PyMemAllocatorEx& orig(void* ctx) { return *static_cast<PyMemAllocatorEx*>(ctx); }

inline size_t usable(void* p) { return p ? malloc_usable_size(p) : 0; }

void* raw_malloc(void* ctx, size_t n) {
  Budget* b = budget();
  if (refuse(b, n, 0)) return nullptr;
  void* p = orig(ctx).malloc(orig(ctx).ctx, n);
  if (p) add(b, static_cast<int64_t>(usable(p)));
  return p;
}

void* raw_calloc(void* ctx, size_t nelem, size_t elsize) {
  Budget* b = budget();
  if (elsize && nelem > SIZE_MAX / elsize) return nullptr;
  if (refuse(b, nelem * elsize, 0)) return nullptr;
  void* p = orig(ctx).calloc(orig(ctx).ctx, nelem, elsize);
  if (p) add(b, static_cast<int64_t>(usable(p)));
  return p;
}

void* raw_realloc(void* ctx, void* ptr, size_t n) {
  Budget* b = budget();
  size_t old = b ? usable(ptr) : 0;
  if (refuse(b, n, old)) return nullptr;
  void* p = orig(ctx).realloc(orig(ctx).ctx, ptr, n);
  if (p && b) add(b, static_cast<int64_t>(usable(p)) - static_cast<int64_t>(old));
  return p;
}

void raw_free(void* ctx, void* ptr) {
  if (Budget* b = budget()) add(b, -static_cast<int64_t>(usable(ptr)));
  orig(ctx).free(orig(ctx).ctx, ptr);
}

void* arena_alloc(void*, size_t n) {
  Budget* b = budget();
  if (refuse(b, n, 0)) return nullptr;
  void* p = g_arena.alloc(g_arena.ctx, n);
  if (p) add(b, static_cast<int64_t>(n));
  return p;
}

void arena_free(void*, void* ptr, size_t n) {
  if (Budget* b = budget()) add(b, -static_cast<int64_t>(n));
  g_arena.free(g_arena.ctx, ptr, n);
}

}  // namespace

void install(int64_t default_limit) {
  g_default_limit = default_limit;
  // The debug allocators put headers before each block: malloc_usable_size would not apply.
  const char* m = std::getenv("PYTHONMALLOC");
  if (m && std::strstr(m, "debug")) return;
  // The raw domain is malloc. With PYTHONMALLOC=malloc (the sanitizer runs) the object and mem domains
  // are malloc too and bypass pymalloc's arenas: they are wrapped the same way.
  bool all_malloc = m && std::strcmp(m, "malloc") == 0;
  const PyMemAllocatorDomain domains[3] = {PYMEM_DOMAIN_RAW, PYMEM_DOMAIN_MEM, PYMEM_DOMAIN_OBJ};
  for (int i = 0; i < (all_malloc ? 3 : 1); ++i) {
    PyMem_GetAllocator(domains[i], &g_orig[i]);
    PyMemAllocatorEx wrapped{&g_orig[i], raw_malloc, raw_calloc, raw_realloc, raw_free};
    PyMem_SetAllocator(domains[i], &wrapped);
  }
  PyObject_GetArenaAllocator(&g_arena);
  PyObjectArenaAllocator arena{nullptr, arena_alloc, arena_free};
  PyObject_SetArenaAllocator(&arena);
  g_installed = true;
}

void set_limit(int64_t limit) {
  tl_budget.init = true;
  tl_budget.limit = g_installed ? limit : 0;
}

bool take_refusal(int64_t& limit, int64_t& used, int64_t& requested) {
  Budget& b = tl_budget;
  if (!b.refused) return false;
  b.refused = false;
  limit = b.limit;
  used = b.refused_used;
  requested = b.refused_requested;
  return true;
}

int64_t used() { return tl_budget.used; }

}  // namespace ep::mem
