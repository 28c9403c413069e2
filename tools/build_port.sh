#!/bin/sh
# Builds erlang_python_port with Meson and installs it, with the Python package, into priv/.
#   PYTHON_CONFIG=/path/to/python3.X-config  chooses the CPython to embed (default: the system's).
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
mkdir -p erl/priv
cp "$build/erlang_python_port" erl/priv/erlang_python_port.tmp && mv erl/priv/erlang_python_port.tmp erl/priv/erlang_python_port
rm -rf erl/priv/pylib && cp -r pylib erl/priv/pylib
find erl/priv/pylib -name __pycache__ -prune -exec rm -rf {} + 2>/dev/null || true
echo "$pyconf" > erl/priv/python_config
