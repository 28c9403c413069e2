// Memory caps per context thread (opsb, PROTOCOL.md §3.13 `memory_limit`).
//
// A wrapper around CPython's raw allocator (PYMEM_DOMAIN_RAW: every block over 512 bytes, since pymalloc
// hands those to it, and the buffers of lists, dicts, bytes, ...) and its arena allocator (the 1 MiB
// arenas small objects live in) counts, per context thread, the bytes that thread allocated and has not
// freed itself. An allocation that would take a context with a limit past it fails: Python raises
// MemoryError in that request only, and its error frame says `erlang.MemoryLimit` (runtime.cpp). The
// count is thread-local (no lock, no atomics; only its own thread touches it); memory the context's
// objects hold that another thread frees keeps counting against it (shared objects are rare; the
// count never goes below 0). Cost when no limit is set: one thread-local read per raw allocation.
#pragma once

#include <cstdint>

namespace ep::mem {

// Before Py_InitializeFromConfig (main thread): wraps the allocators. default_limit (0: none) applies
// to every context thread that sets none of its own (--memory-limit).
void install(int64_t default_limit);
// Context thread: this thread's limit from now on (0: none). Its count so far is kept.
void set_limit(int64_t limit);
// Context thread: whether an allocation was refused since the last call (and clears that), with the
// numbers for the error message.
bool take_refusal(int64_t& limit, int64_t& used, int64_t& requested);
// This thread's count (for tests and stats).
int64_t used();

}  // namespace ep::mem
