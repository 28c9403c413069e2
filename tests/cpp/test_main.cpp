// doctest entry point for the C++ tests: starts the embedded Python once, readies erlang.Pid/Term,
// and keeps the GIL on the main thread, where every test runs.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <Python.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "erlang_types.hpp"

#if defined(__SANITIZE_ADDRESS__)
// Under -Db_sanitize=address: CPython keeps some allocations until exit by design (interned strings,
// static types), which LeakSanitizer would report. Reference leaks of the codecs are tested directly.
extern "C" const char* __lsan_default_suppressions() { return "leak:libpython\n"; }
#endif

int main(int argc, char** argv) {
  // The isolated configuration ignores PYTHONMALLOC; sanitizer runs want PYTHONMALLOC=malloc (or
  // malloc_debug) so that ASan sees every Python allocation, so honour that one variable here.
  PyPreConfig preconfig;
  PyPreConfig_InitIsolatedConfig(&preconfig);
  if (const char* m = std::getenv("PYTHONMALLOC")) {
    if (std::strcmp(m, "malloc") == 0) preconfig.allocator = PYMEM_ALLOCATOR_MALLOC;
    if (std::strcmp(m, "malloc_debug") == 0) preconfig.allocator = PYMEM_ALLOCATOR_MALLOC_DEBUG;
  }
  PyStatus pre = Py_PreInitialize(&preconfig);
  if (PyStatus_Exception(pre)) {
    std::fprintf(stderr, "Python failed to start: %s\n", pre.err_msg ? pre.err_msg : "?");
    return 3;
  }
  PyConfig config;
  PyConfig_InitIsolatedConfig(&config);  // no PYTHON* environment or user site-packages
#ifdef EP_PYTHON_HOME
  PyConfig_SetBytesString(&config, &config.home, EP_PYTHON_HOME);
#endif
  PyStatus status = Py_InitializeFromConfig(&config);
  PyConfig_Clear(&config);
  if (PyStatus_Exception(status)) {
    std::fprintf(stderr, "Python failed to start: %s\n", status.err_msg ? status.err_msg : "?");
    return 3;
  }
  if (!ep::erlang_types_ready()) {
    PyErr_Print();
    return 3;
  }
  doctest::Context context(argc, argv);
  int rc = context.run();
  if (Py_FinalizeEx() < 0 && rc == 0) rc = 1;
  return rc;
}
