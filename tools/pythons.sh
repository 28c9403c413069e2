#!/usr/bin/env bash
# The extra CPythons of ../shared/pythons (issue 8, execution modes): 3.13 (GIL) and 3.13t
# (free-threaded), each with its own port build.
#   tools/pythons.sh install   unpacks them into /opt (../shared/pythons/install.sh; needs write access
#                              to /opt); prints "NAME PREFIX" per Python
#   tools/pythons.sh build     builds the port for each into erl/priv/ports/NAME/ (NAME: python3.13,
#                              python3.13t), beside the default port, which it leaves alone
#   tools/pythons.sh ct        runs the Common Test suites (ETF) against each; ends with
#                              "pythons: N passed, N failed"
# A Python that is not installed is skipped with a note (counted neither way).
set -uo pipefail
cd "$(dirname "$0")/.."
names="python3.13 python3.13t"
prefix=${EP_PYTHONS_PREFIX:-/opt}
installer=../shared/pythons/install.sh
[ -x "$installer" ] || installer=/work/shared/pythons/install.sh

config_of() { echo "$prefix/$1/bin/$1-config"; }

case "${1:-}" in
  install)
    if [ -x "$installer" ]; then "$installer" "$prefix"; else echo "no $installer: extra Pythons not installed"; fi
    ;;
  build)
    rc=0
    for n in $names; do
      conf=$(config_of "$n")
      if [ ! -x "$conf" ]; then echo "skip $n: $conf not found (tools/pythons.sh install)"; continue; fi
      echo "== port for $n"
      PYTHON_CONFIG=$conf EP_PORT_NAME=$n sh tools/build_port.sh || rc=1
    done
    exit $rc
    ;;
  ct)
    log=_build/test-logs
    mkdir -p "$log"
    passed=0
    failed=0
    for n in $names; do
      exe=$PWD/erl/priv/ports/$n/erlang_python_port
      if [ ! -x "$exe" ]; then echo "skip $n: $exe not built (tools/pythons.sh build)"; continue; fi
      echo "== Erlang (Common Test, etf codec) against the $n port"
      # docs/ describe the default build (py_docs_SUITE prints its execution mode, its memory caps):
      # every other suite runs against this port.
      suites=$(ls tests/ct/*_SUITE.erl | xargs -n1 basename | sed 's/\.erl$//' | grep -vx py_docs_SUITE | paste -sd, -)
      EP_TEST_CODEC=etf EP_TEST_PORT=$exe rebar3 ct --dir tests/ct --suite "$suites" 2>&1 | tee "$log/ct-$n.txt" | grep -vE '^\s*$' | tail -n 8
      tools/ct_failures.sh "$log/ct-$n.txt"
      p=$(grep -oE 'Passed [0-9]+ tests' "$log/ct-$n.txt" | grep -oE '[0-9]+' | tail -n 1)
      f=$(grep -oE 'Failed [0-9]+ tests' "$log/ct-$n.txt" | grep -oE '[0-9]+' | tail -n 1)
      all=$(grep -oE 'All [0-9]+ tests passed' "$log/ct-$n.txt" | grep -oE '[0-9]+' | tail -n 1)
      if [ -n "$all" ]; then passed=$((passed + all))
      elif [ -n "$p$f" ]; then passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0}))
      else failed=$((failed + 1))
      fi
    done
    echo "pythons: $passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    ;;
  *)
    echo "usage: tools/pythons.sh install | build | ct" >&2
    exit 2
    ;;
esac
