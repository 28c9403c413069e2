#!/usr/bin/env bash
# Builds the libFuzzer harnesses (tests/fuzz: the frame reader and both body decoders) with clang,
# ASan and UBSan into _build/fuzz, and runs each from its seed corpus (tests/fuzz/corpus/<harness>)
# for a bounded time:
#   tools/fuzz.sh [SECONDS]     SECONDS in all (default 180), split evenly over the three harnesses,
#                               which run one after another (tools/fuzz.sh 3600: 20 minutes each)
# New inputs the fuzzer finds go to _build/fuzz/corpus/<harness> (not committed); a crash leaves its
# input in _build/fuzz/artifacts/ and fails that harness. Ends with one line
#   fuzz: N passed, N failed (S s per harness, T s in all)
# and exits non-zero if any harness failed. A crash found here gets fixed with its input added to
# tests/fuzz/corpus/<harness>/ and a doctest (tests/cpp).
set -uo pipefail
cd "$(dirname "$0")/.."
total=${1:-180}
case "$total" in ''|*[!0-9]*) echo "usage: tools/fuzz.sh [SECONDS]" >&2; exit 2 ;; esac
harnesses="frame etf msgpack"
secs=$((total / 3))
[ "$secs" -ge 1 ] || secs=1
build=_build/fuzz
mkdir -p _build
cxx=$(command -v clang++ || command -v clang++-14 || true)
cc=$(command -v clang || command -v clang-14 || true)
if [ -z "$cxx" ]; then echo "fuzz: clang++ not found (tools/setup.sh installs clang-14 and libfuzzer-14-dev)"; echo "fuzz: 0 passed, 1 failed"; exit 1; fi
pyconf=${PYTHON_CONFIG:-/usr/bin/python3-config}
[ -x "$pyconf" ] || pyconf=$(command -v python3-config)
if [ ! -f "$build/build.ninja" ]; then
  CXX=$cxx CC=$cc meson setup "$build" -Dfuzz=true -Dtests=false -Dpython_config="$pyconf" \
    --buildtype=debugoptimized -Db_sanitize=address,undefined -Db_lundef=false >"$build.setup.log" 2>&1 \
    || { cat "$build.setup.log"; echo "fuzz: 0 passed, 1 failed"; exit 1; }
fi
meson compile -C "$build" >"$build.compile.log" 2>&1 || { tail -n 30 "$build.compile.log"; echo "fuzz: 0 passed, 1 failed"; exit 1; }

# Python keeps memory until exit by design: no leak checks. Any UBSan finding is fatal.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:symbolize=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
passed=0
failed=0
mkdir -p "$build/artifacts"
for h in $harnesses; do
  mkdir -p "$build/corpus/$h"
  log="$build/fuzz_$h.log"
  # -malloc_limit_mb: an input of at most 64 KiB must not make anything allocate 256 MiB at once;
  # -rss_limit_mb leaves room for what ASan and libFuzzer themselves hold in long runs (about 660 MiB
  # after 5 minutes of fuzz_etf here).
  "$build/fuzz_$h" -max_total_time="$secs" -timeout=10 -rss_limit_mb=3072 -malloc_limit_mb=256 -max_len=65536 \
    -print_final_stats=1 -artifact_prefix="$build/artifacts/$h-" \
    "$build/corpus/$h" "tests/fuzz/corpus/$h" >"$log" 2>&1
  rc=$?
  runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -n 1)
  if [ "$rc" -eq 0 ]; then
    passed=$((passed + 1))
    echo "fuzz_$h: ok, ${runs:-?} runs in ${secs}s"
  else
    failed=$((failed + 1))
    echo "fuzz_$h: FAILED (exit $rc), see $log; input in $build/artifacts/"
    grep -E 'ERROR|SUMMARY|invariant|runtime error' "$log" | head -n 5
  fi
done
echo "fuzz: $passed passed, $failed failed (${secs} s per harness, $((secs * 3)) s in all)"
[ "$failed" -eq 0 ]
