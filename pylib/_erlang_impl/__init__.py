# `_erlang_impl`: the module path the reference docs use for implementation details that user code may
# import (`from _erlang_impl._sandbox import is_sandboxed`). The code lives in the `erlang` package.
