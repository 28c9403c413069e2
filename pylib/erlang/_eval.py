# Compiling the code of an `eval` request (PROTOCOL.md §3.1).
#
# Scope: `compile_block(source)`, which the port calls for `eval` code that is not a single expression.
# `eval` returns the value of its code: for statements followed by an expression, that expression's value;
# for statements only, None. So the block is split: everything but a trailing expression statement is
# compiled for `exec`, the trailing expression (if any) for `eval`. The port execs the first code object in
# the environment's globals and then evals the second in the same namespaces.
#
# Compiling is cached by source text: the same snippet sent many times is parsed once.

import ast
import functools
from types import CodeType

FILENAME = "<string>"


@functools.lru_cache(maxsize=256)
def compile_block(source: str) -> tuple[CodeType, CodeType | None]:
    """`(exec_code, eval_code)` for `source`.

    `eval_code` is None when the block does not end in an expression. A SyntaxError propagates unchanged
    (and is not cached).
    """
    module = ast.parse(source, filename=FILENAME, mode="exec")
    last = module.body[-1] if module.body else None
    if isinstance(last, ast.Expr):
        module.body.pop()
        exec_code = compile(module, FILENAME, "exec", dont_inherit=True)
        eval_code = compile(ast.Expression(body=last.value), FILENAME, "eval", dont_inherit=True)
        return exec_code, eval_code
    return compile(module, FILENAME, "exec", dont_inherit=True), None
