#!/usr/bin/env bash
# Prints the Common Test cases that failed in a `rebar3 ct` console log, with the first line of each
# reason, so that a CI log names what failed and not only how many (the log itself stays in
# _build/test-logs/). Prints nothing when nothing failed.
#   tools/ct_failures.sh LOG
set -uo pipefail
[ -f "${1:-}" ] || exit 0
# rebar3 prints "%%% SUITE ==> case: FAILED" then "%%% SUITE ==> <reason>"; strip colour codes.
sed -E 's/\x1b\[[0-9;]*m//g' "$1" | grep -a -A1 -E '^%%% [A-Za-z_0-9]+ ==> .*FAILED' | grep -v '^--$' | cut -c1-400 | sed 's/^/   | /'
