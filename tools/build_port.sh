#!/bin/sh
# Builds erlang_python_port with Meson and installs it, with the Python package, into priv/.
#   PYTHON_CONFIG=/path/to/python3.X-config  chooses the CPython to embed (default: the system's).
#   EP_PORT_NAME=NAME  installs it as erl/priv/ports/NAME/ instead of the default port (see below).
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
pyconf=${PYTHON_CONFIG:-}
if [ -z "$pyconf" ]; then
  if [ -x /usr/bin/python3-config ]; then pyconf=/usr/bin/python3-config; else pyconf=$(command -v python3-config); fi
fi
build=_build/meson-$(echo "$pyconf" | tr '/' '_')
if [ ! -f "$build/build.ninja" ]; then
  meson setup "$build" --buildtype=release -Dpython_config="$pyconf" >/dev/null
fi
meson compile -C "$build" >/dev/null || meson compile -C "$build"
# --- modes (a port per Python): EP_PORT_NAME=NAME installs this build as
# erl/priv/ports/NAME/erlang_python_port (a pool's `python` option names it) and leaves the default
# port, pylib and python_config alone. tools/pythons.sh builds 3.13 and 3.13t this way.
if [ -n "${EP_PORT_NAME:-}" ]; then
  case "$EP_PORT_NAME" in *[!A-Za-z0-9._-]*|.*) echo "bad EP_PORT_NAME: $EP_PORT_NAME" >&2; exit 2;; esac
  mkdir -p "erl/priv/ports/$EP_PORT_NAME"
  cp "$build/erlang_python_port" "erl/priv/ports/$EP_PORT_NAME/erlang_python_port.tmp"
  mv "erl/priv/ports/$EP_PORT_NAME/erlang_python_port.tmp" "erl/priv/ports/$EP_PORT_NAME/erlang_python_port"
  echo "$pyconf" > "erl/priv/ports/$EP_PORT_NAME/python_config"
  exit 0
fi
# --- end modes
mkdir -p erl/priv
cp "$build/erlang_python_port" erl/priv/erlang_python_port.tmp && mv erl/priv/erlang_python_port.tmp erl/priv/erlang_python_port
# pylib is installed atomically: a port that (re)starts during a rebuild sees the old tree or the new
# one, never a half-copied one. The copy goes to a fresh directory, a symlink to it is renamed over
# erl/priv/pylib (rename(2) is atomic), then the previous tree is removed.
stage=$(mktemp -d erl/priv/.pylib.XXXXXX)
cp -r pylib/. "$stage"
find "$stage" -name __pycache__ -prune -exec rm -rf {} + 2>/dev/null || true
chmod 755 "$stage"
old=$(readlink erl/priv/pylib 2>/dev/null || true)
if [ -d erl/priv/pylib ] && [ ! -L erl/priv/pylib ]; then
  # a plain directory from an older build: moved aside once (not atomic this one time)
  mv erl/priv/pylib "erl/priv/.pylib.legacy.$$"
  old=".pylib.legacy.$$"
fi
ln -s "$(basename "$stage")" erl/priv/.pylib.link.$$
mv -T erl/priv/.pylib.link.$$ erl/priv/pylib
if [ -n "$old" ] && [ "$old" != "$(basename "$stage")" ]; then rm -rf "erl/priv/$old"; fi
echo "$pyconf" > erl/priv/python_config
