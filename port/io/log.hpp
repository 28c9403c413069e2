// One route for the port's own diagnostics: stderr (stdout carries frames), tagged [file:line].
#pragma once

#include <cstdio>

#define EP_LOG(fmt, ...) \
  std::fprintf(stderr, "erlang_python_port [%s:%d] " fmt "\n", __FILE__, __LINE__ __VA_OPT__(, ) __VA_ARGS__)
