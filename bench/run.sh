#!/bin/sh
# The benchmark: erlang_python against a bare echo port on the same machine. From the repository root:
#
#   bench/run.sh                 full run (under ~3 minutes)
#   BENCH_QUICK=1 bench/run.sh   ~30 s smoke run (CI)
#
# It builds the application with `rebar3 compile` if it is missing or older than its sources (skip with
# BENCH_NO_BUILD=1, or measure an application built elsewhere with BENCH_APP_DIR=.../erlang_python, the
# directory holding its ebin/ and priv/), builds the echo port into _build/bench/echo_port, then runs
# bench/py_bench.erl, which prints one table and writes it to bench/results/latest.txt. Other knobs
# (BENCH_CALLERS, BENCH_NUM_PORTS, BENCH_CONTEXTS, BENCH_CODEC, BENCH_SPIN_US, BENCH_ECHO_SPIN_US, BENCH_OUT,
# BENCH_ERL_FLAGS) are described at the top of bench/py_bench.erl.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

ebin=${BENCH_APP_DIR:-_build/default/lib/erlang_python}/ebin
out=_build/bench

if [ "${BENCH_NO_BUILD:-0}" != 1 ] && [ -z "${BENCH_APP_DIR:-}" ]; then
  stale=
  if [ ! -x erl/priv/erlang_python_port ] || [ ! -f "$ebin/py.beam" ]; then
    stale=1
  elif [ -n "$(find erl/src port pylib -newer "$ebin/py.beam" -type f 2>/dev/null | head -n 1)" ]; then
    stale=1
  fi
  if [ -n "$stale" ]; then
    echo "bench: rebar3 compile" >&2
    if ! rebar3 compile >&2; then
      echo "bench: rebar3 compile failed; measuring the echo baseline only" >&2
    fi
  fi
fi

mkdir -p "$out/ebin" bench/results
if [ ! -x "$out/echo_port" ] || [ bench/echo_port.cpp -nt "$out/echo_port" ]; then
  echo "bench: building $out/echo_port" >&2
  g++ -O2 -std=c++20 -Wall -Wextra -o "$out/echo_port" bench/echo_port.cpp
fi
erlc -Wall -o "$out/ebin" bench/py_bench.erl

# Log reports go to stderr so that stdout carries only the table.
# shellcheck disable=SC2086  # BENCH_ERL_FLAGS is a list of flags
exec env BENCH_ROOT="$root" erl -noshell \
  -kernel logger '[{handler,default,logger_std_h,#{config=>#{type=>standard_error}}}]' \
  ${BENCH_ERL_FLAGS:-} -pa "$ebin" -pa "$out/ebin" -s py_bench main
