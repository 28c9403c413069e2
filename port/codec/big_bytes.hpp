// bulk (issue 10): a bytes object for a big body, made as cheaply as the kernel allows.
//
// A 64 MiB bytes object is a fresh anonymous mapping (glibc and mimalloc map allocations that big of
// their own), and the copy into it used to fault it in 4 KiB at a time: 16384 faults, each zeroing a page,
// about as long as the copy itself (measured here: 40 ms for the copy into fresh pages, 11 ms into
// pages already there). Asking for transparent huge pages on the object's aligned interior before the
// copy touches it (MADV_HUGEPAGE; honoured when THP is "madvise" or "always", a no-op otherwise) makes
// that 32 faults of 2 MiB: the copy takes 18 ms. The copy then runs without the GIL (the object is
// ours alone until it is returned), so other threads run meanwhile.
#pragma once

#include <Python.h>

#include <cstddef>

namespace ep {

// Bodies at least this long get the treatment; smaller ones are PyBytes_FromStringAndSize (their
// allocation is usually reused heap memory, and the GIL round trip would cost more than it frees).
constexpr size_t kBigBytes = 4 << 20;

// GIL held. A new reference to bytes(data[0:n]), or nullptr with a Python error set.
PyObject* big_bytes(const char* data, size_t n);

}  // namespace ep
