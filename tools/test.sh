#!/usr/bin/env bash
# Runs every suite: doctest (C++), pytest (pylib), Common Test (Erlang, against the real port, over
# both codecs), the libFuzzer harnesses for a bounded time (EP_FUZZ_SECONDS in all, default 90: 30 s
# per harness; 0 skips them) and the Common Test suites again against an ASan+UBSan build of the port (ETF;
# EP_SANITIZE=0 skips it).
# The Common Test suites also run (ETF) against the ports for CPython 3.13 and 3.13t (tools/pythons.sh;
# skipped with a note where those Pythons are not installed).
# Ends with one line "N passed, N failed" summing them all (each fuzz harness counts as one test).
set -uo pipefail
cd "$(dirname "$0")/.."
log=_build/test-logs
mkdir -p "$log"
passed=0
failed=0
add() { passed=$((passed + ${1:-0})); failed=$((failed + ${2:-0})); }

rebar3 compile >"$log/compile.txt" 2>&1 || { cat "$log/compile.txt"; echo "0 passed, 1 failed"; exit 1; }
pyconf=$(cat erl/priv/python_config)
build=_build/meson-$(echo "$pyconf" | tr '/' '_')

# --- modes: the ports for the extra Pythons (3.13, 3.13t; tools/pythons.sh) build in the background
# while the stages below run: their Meson dirs and erl/priv/ports/ belong to no other stage.
tools/pythons.sh build >"$log/pythons-build.txt" 2>&1 &
pythons_build=$!
# --- end modes

echo "== C++ (doctest)"
"$build/cpp_tests" 2>&1 | tee "$log/cpp.txt" | tail -n 4
line=$(grep -E '^\[doctest\] test cases:' "$log/cpp.txt" | tail -n 1)
if [ -n "$line" ]; then
  add "$(echo "$line" | sed -E 's/.*\| *([0-9]+) passed.*/\1/')" "$(echo "$line" | sed -E 's/.*\| *([0-9]+) failed.*/\1/')"
else
  add 0 1
fi

echo "== Python (pytest)"
python3 -m pytest -q tests/py 2>&1 | tee "$log/pytest.txt" | tail -n 3
line=$(grep -E '[0-9]+ (passed|failed)' "$log/pytest.txt" | tail -n 1)
p=$(echo "$line" | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+' || echo 0)
f=$(echo "$line" | grep -oE '[0-9]+ (failed|errors?)' | awk '{s+=$1} END {print s+0}')
[ -n "$line" ] || f=1
add "${p:-0}" "${f:-0}"

# Common Test runs twice: over the default ETF codec, then over msgpack (EP_TEST_CODEC), which must
# carry the same messages.
for codec in etf msgpack; do
  echo "== Erlang (Common Test, $codec codec)"
  EP_TEST_CODEC=$codec rebar3 ct --dir tests/ct 2>&1 | tee "$log/ct-$codec.txt" | grep -vE '^\s*$' | tail -n 15
  tools/ct_failures.sh "$log/ct-$codec.txt"
  ctp=$(grep -oE 'Passed [0-9]+ tests' "$log/ct-$codec.txt" | grep -oE '[0-9]+' | tail -n 1)
  ctf=$(grep -oE 'Failed [0-9]+ tests' "$log/ct-$codec.txt" | grep -oE '[0-9]+' | tail -n 1)
  all=$(grep -oE 'All [0-9]+ tests passed' "$log/ct-$codec.txt" | grep -oE '[0-9]+' | tail -n 1)
  if [ -n "$all" ]; then add "$all" 0
  elif [ -n "$ctp$ctf" ]; then add "${ctp:-0}" "${ctf:-0}"
  else add 0 1
  fi
done

# --- issue 12 (elx): ExUnit (elixir/, doctests included), the docs' code samples (their Erlang
# blocks run in tests/ct/py_docs_SUITE above, their Elixir blocks in elixir/test/docs_test.exs) and the
# examples (each escript counts as one test). The ML example runs beside ExUnit (its first run is mostly
# pip downloading into the venv it caches under _build/examples/); the timing-sensitive examples run
# one after another afterwards.
echo "== Elixir (ExUnit) and the ML example beside it"
timeout 900 escript examples/ml.escript >"$log/example-ml.txt" 2>&1 &
ml_pid=$!
# MIX_HOME under _build: mix needs no hex and no home directory (CI may run without HOME).
(cd elixir && EP_SKIP_REBAR=1 MIX_HOME="${MIX_HOME:-$PWD/../_build/mix_home}" mix test) 2>&1 | tee "$log/exunit.txt" | tail -n 4
line=$(grep -E '^[0-9]+ (doctests?, )?([0-9]+ tests?, )?[0-9]+ failures?' "$log/exunit.txt" | tail -n 1)
if [ -n "$line" ]; then
  ex_total=$(echo "$line" | grep -oE '[0-9]+ (doctests?|tests?)' | awk '{s+=$1} END {print s+0}')
  ex_failed=$(echo "$line" | grep -oE '[0-9]+ failures?' | grep -oE '[0-9]+')
  add $((ex_total - ex_failed)) "$ex_failed"
else
  add 0 1
fi
echo "== Examples"
for ex in examples/*.escript; do
  name=$(basename "$ex" .escript)
  [ "$name" = ml ] && continue
  if timeout 300 escript "$ex" >"$log/example-$name.txt" 2>&1; then
    echo "example $name: ok"; add 1 0
  else
    echo "example $name: FAILED"; tail -n 20 "$log/example-$name.txt"; add 0 1
  fi
done
# the reference docs' command for the Elixir example
if timeout 300 elixir --erl "-pa _build/default/lib/erlang_python/ebin" examples/elixir_example.exs >"$log/example-elixir.txt" 2>&1; then
  echo "example elixir_example: ok"; add 1 0
else
  echo "example elixir_example: FAILED"; tail -n 20 "$log/example-elixir.txt"; add 0 1
fi
if wait "$ml_pid"; then
  echo "example ml: ok ($(grep -E 'requests/s|accuracy' "$log/example-ml.txt" | tr '\n' ' '))"; add 1 0
else
  echo "example ml: FAILED"; tail -n 20 "$log/example-ml.txt"; add 0 1
fi
# --- end issue 12
# --- modes: every Common Test suite again (ETF) against each extra Python's port. Not in parallel with
# the CT runs above: rebar3 ct in one project shares _build/test and the CT log directory.
echo "== Erlang (Common Test, etf codec) against the 3.13 and 3.13t ports"
if wait "$pythons_build"; then
  tools/pythons.sh ct 2>&1 | tee "$log/pythons.txt" | grep -E '^(==|skip|pythons:)|Failed|passed|^   \| '
  line=$(grep -E '^pythons: [0-9]+ passed, [0-9]+ failed' "$log/pythons.txt" | tail -n 1)
  if [ -n "$line" ]; then
    add "$(echo "$line" | sed -E 's/^pythons: ([0-9]+) passed.*/\1/')" "$(echo "$line" | sed -E 's/.* ([0-9]+) failed.*/\1/')"
  else
    add 0 1
  fi
else
  cat "$log/pythons-build.txt"; add 0 1
fi
# --- end modes

fuzz_secs=${EP_FUZZ_SECONDS:-90}
if [ "$fuzz_secs" != 0 ]; then
  echo "== Fuzz (libFuzzer, ${fuzz_secs} s over 3 harnesses)"
  tools/fuzz.sh "$fuzz_secs" 2>&1 | tee "$log/fuzz.txt" | tail -n 4
  line=$(grep -E '^fuzz: [0-9]+ passed, [0-9]+ failed' "$log/fuzz.txt" | tail -n 1)
  if [ -n "$line" ]; then
    add "$(echo "$line" | sed -E 's/^fuzz: ([0-9]+) passed.*/\1/')" "$(echo "$line" | sed -E 's/.* ([0-9]+) failed.*/\1/')"
  else
    add 0 1
  fi
fi

if [ "${EP_SANITIZE:-1}" != 0 ]; then
  echo "== Erlang (Common Test, etf codec) against the ASan+UBSan port"
  tools/sanitize.sh 2>&1 | tee "$log/sanitize.txt" | grep -vE '^\s*$' | tail -n 6
  line=$(grep -E '^sanitize: [0-9]+ passed, [0-9]+ failed' "$log/sanitize.txt" | tail -n 1)
  if [ -n "$line" ]; then
    add "$(echo "$line" | sed -E 's/^sanitize: ([0-9]+) passed.*/\1/')" "$(echo "$line" | sed -E 's/.* ([0-9]+) failed.*/\1/')"
  else
    add 0 1
  fi
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
