#!/usr/bin/env bash
# Builds the port with ASan+UBSan (gcc, -Db_sanitize=address,undefined) into _build/asan and runs the
# whole Common Test suite (ETF codec) against it: the app is told to spawn that executable
# (EP_TEST_PORT -> py_ct_helper -> the port_executable env key).
#   tools/sanitize.sh
# Python keeps memory until exit by design, so leak checks are off; every UBSan finding is fatal.
# PYTHONMALLOC=malloc: Python objects come from malloc too, so ASan sees a use after free of one.
# Reports go to _build/asan/reports/: any file there fails the stage, even if every test passed.
# Ends with Common Test's summary and one line "sanitize: N passed, N failed" (a report counts as a
# failure).
set -uo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)
build=_build/asan
mkdir -p _build
pyconf=${PYTHON_CONFIG:-/usr/bin/python3-config}
[ -x "$pyconf" ] || pyconf=$(command -v python3-config)
if [ ! -f "$build/build.ninja" ]; then
  meson setup "$build" -Dtests=false -Dpython_config="$pyconf" --buildtype=debugoptimized \
    -Db_sanitize=address,undefined -Db_lundef=false >"$build.setup.log" 2>&1 \
    || { cat "$build.setup.log"; echo "sanitize: 0 passed, 1 failed"; exit 1; }
fi
meson compile -C "$build" >"$build.compile.log" 2>&1 || { tail -n 30 "$build.compile.log"; echo "sanitize: 0 passed, 1 failed"; exit 1; }

# The canary: a port whose start-up overflows a buffer must leave a report, or this stage is blind.
canary="$top/$build/canary"
rm -rf "$canary" && mkdir -p "$canary"
ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:halt_on_error=1:handle_segv=0:log_path=$canary/asan" \
  timeout 60 "$build/erlang_python_port" --pylib tests/sanitize/canary --contexts 1 </dev/null >/dev/null 2>&1
if ! grep -qs 'heap-buffer-overflow' "$canary"/asan.*; then
  echo "sanitize: the canary overflow left no ASan report in $canary: the stage cannot see findings"
  echo "sanitize: 0 passed, 1 failed"
  exit 1
fi

reports="$top/$build/reports"
rm -rf "$reports" && mkdir -p "$reports"
log="$top/$build/ct.txt"
# halt_on_error: the first finding ends the port (and so fails the test that ran it). Fatal signals
# are left to the port (faulthandler, its crash file): py_crash_SUITE kills it with one on purpose,
# and ASan checks memory accesses by instrumentation, not by its SIGSEGV handler.
ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:halt_on_error=1:handle_segv=0:handle_sigbus=0:handle_sigfpe=0:handle_abort=0:allow_user_segv_handler=1:log_path=$reports/asan" \
UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$reports/ubsan" \
EP_SANITIZE_RUN=1 PYTHONMALLOC=malloc EP_TEST_CODEC=etf EP_TEST_PORT="$top/$build/erlang_python_port" \
  rebar3 ct --dir tests/ct >"$log" 2>&1
grep -vE '^\s*$' "$log" | tail -n 8
tools/ct_failures.sh "$log"
ctp=$(grep -oE 'Passed [0-9]+ tests' "$log" | grep -oE '[0-9]+' | tail -n 1)
ctf=$(grep -oE 'Failed [0-9]+ tests' "$log" | grep -oE '[0-9]+' | tail -n 1)
all=$(grep -oE 'All [0-9]+ tests passed' "$log" | grep -oE '[0-9]+' | tail -n 1)
if [ -n "$all" ]; then p=$all; f=0
elif [ -n "$ctp$ctf" ]; then p=${ctp:-0}; f=${ctf:-0}
else p=0; f=1
fi
found=$(ls "$reports" | wc -l)
if [ "$found" -gt 0 ]; then
  echo "sanitizer reports ($found) in $reports:"
  for r in "$reports"/*; do echo "-- $r"; head -n 20 "$r"; done
  f=$((f + 1))
fi
echo "sanitize: $p passed, $f failed"
[ "$f" -eq 0 ]
