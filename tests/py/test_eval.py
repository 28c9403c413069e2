# compile_block: splitting an eval block into statements to exec and a trailing expression to eval.

import pytest

from erlang._eval import compile_block


@pytest.fixture(autouse=True)
def clear_cache() -> None:
    compile_block.cache_clear()


def run(source: str, namespace: dict[str, object] | None = None) -> object:
    """What the port does with the two code objects."""
    namespace = {} if namespace is None else namespace
    exec_code, eval_code = compile_block(source)
    exec(exec_code, namespace)
    return None if eval_code is None else eval(eval_code, namespace)


def test_single_expression() -> None:
    exec_code, eval_code = compile_block("1 + 2")
    assert eval_code is not None
    assert eval(eval_code) == 3
    assert exec_code.co_filename == eval_code.co_filename == "<string>"


def test_statements_then_expression() -> None:
    namespace: dict[str, object] = {}
    assert run("x = 10\ny = x * 2\nx + y", namespace) == 30
    assert namespace["y"] == 20


def test_statements_only() -> None:
    namespace: dict[str, object] = {}
    exec_code, eval_code = compile_block("def f(a):\n    return a + 1\nz = f(1)")
    assert eval_code is None
    exec(exec_code, namespace)
    assert namespace["z"] == 2


def test_trailing_expression_runs_once() -> None:
    namespace: dict[str, object] = {"hits": []}
    assert run("hits.append(1)\nhits.append(2) or len(hits)", namespace) == 2
    assert namespace["hits"] == [1, 2]


def test_empty_and_comment_only_blocks() -> None:
    assert run("") is None
    assert run("# nothing\n") is None


def test_semicolons_and_compound_last_statement() -> None:
    assert run("a = 1; a + 1") == 2
    assert run("for i in range(3):\n    pass") is None
    assert run("if True:\n    5") is None  # the last statement is an `if`, not an expression


def test_line_numbers_are_kept() -> None:
    with pytest.raises(ZeroDivisionError) as info:
        run("x = 1\n\n1 / 0")
    tb = info.value.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != "<string>":
        tb = tb.tb_next
    assert tb is not None and tb.tb_lineno == 3


@pytest.mark.parametrize("source", ["x = ", "def f(:\n  pass\n1", "return 5", "1 +\n2"])
def test_syntax_error_propagates(source: str) -> None:
    with pytest.raises(SyntaxError) as info:
        compile_block(source)
    assert info.value.filename == "<string>"


def test_syntax_errors_are_not_cached() -> None:
    for _ in range(2):
        with pytest.raises(SyntaxError):
            compile_block("x = ")
    assert compile_block.cache_info().currsize == 0


def test_cached_by_source() -> None:
    first = compile_block("x = 1\nx")
    assert compile_block("x = 1\nx") is first
    assert compile_block("x = 2\nx") is not first
    info = compile_block.cache_info()
    assert (info.hits, info.misses, info.maxsize) == (1, 2, 256)


def test_future_flags_of_the_caller_do_not_leak() -> None:
    # This test module has no `from __future__ import annotations`; the compiled block must not get
    # any flags from erlang._eval either, so annotations are evaluated eagerly.
    namespace: dict[str, object] = {}
    run("def f(a: int) -> str: pass\nann = f.__annotations__", namespace)
    assert namespace["ann"] == {"a": int, "return": str}
