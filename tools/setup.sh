#!/usr/bin/env bash
# One command for a fresh Debian machine: install what is needed, build, run the quick-start demo.
#   tools/setup.sh            (as root, or with sudo available)
#   PYTHON_CONFIG=/opt/python3.13/bin/python3.13-config tools/setup.sh   to embed another CPython
set -euo pipefail
cd "$(dirname "$0")/.."

# clang-14 + libfuzzer-14-dev: tools/fuzz.sh; erlang-proper(-dev: proper.hrl): the property suite (tests/ct).
pkgs="erlang-nox erlang-dev rebar3 libuv1-dev libmsgpack-cxx-dev doctest-dev meson ninja-build pkg-config g++ python3-dev python3-pytest clang-14 libfuzzer-14-dev erlang-proper erlang-proper-dev"
# --- issue 12 (elx): elixir/ (mix builds it offline, no hex) and python3-venv (examples/ml.escript's venv).
pkgs="$pkgs elixir python3-venv"
# --- end issue 12
missing=""
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "== installing:$missing"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq $missing >/dev/null
fi

echo "== building (rebar3 compile: the Erlang app and, through Meson, the port)"
rebar3 compile

# --- modes: CPython 3.13 and 3.13t from ../shared/pythons (into /opt) and a port for each
# (erl/priv/ports/python3.13{,t}/), for pools that run another Python and for tools/test.sh.
echo "== extra Pythons (3.13, 3.13t) and their ports"
if [ -w /opt ] || [ "$(id -u)" -eq 0 ]; then tools/pythons.sh install; else sudo tools/pythons.sh install; fi
tools/pythons.sh build
# --- end modes

echo "== quick start"
escript examples/quickstart.escript
