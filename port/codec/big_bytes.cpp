#include "big_bytes.hpp"

#include <sys/mman.h>

#include <cstdint>
#include <cstring>

namespace ep {

namespace {
constexpr uintptr_t kHuge = uintptr_t{2} << 20;  // the x86-64 / arm64 (4 KiB base) PMD size
}

PyObject* big_bytes(const char* data, size_t n) {
  if (n < kBigBytes) return PyBytes_FromStringAndSize(data, static_cast<Py_ssize_t>(n));
  PyObject* b = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(n));
  if (!b) return nullptr;
  char* dst = PyBytes_AS_STRING(b);
#ifdef MADV_HUGEPAGE
  const uintptr_t from = (reinterpret_cast<uintptr_t>(dst) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t to = (reinterpret_cast<uintptr_t>(dst) + n) & ~(kHuge - 1);
  // Advice only: refused (EINVAL without THP, memory that is not anonymous) it changes nothing.
  if (to > from) (void)madvise(reinterpret_cast<void*>(from), to - from, MADV_HUGEPAGE);
#endif
  PyThreadState* saved = PyEval_SaveThread();
  std::memcpy(dst, data, n);
  PyEval_RestoreThread(saved);
  return b;
}

}  // namespace ep
