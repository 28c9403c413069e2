# The port's standard streams: line-buffered writers forwarding through _erlang._write, and a stdin
# that refuses to be read.

import builtins
import io
import sys
import threading

import pytest

import erlang
from conftest import FakePort
from erlang._io import FLUSH_THRESHOLD, STDIN_UNAVAILABLE, ErlangStdin, ErlangWriter


@pytest.fixture
def out() -> ErlangWriter:
    return ErlangWriter(1, "<stdout>")


def test_complete_lines_are_forwarded_at_once(out: ErlangWriter, fake_erlang: FakePort) -> None:
    assert out.write("hello\n") == 6
    assert fake_erlang.writes == [(1, "hello\n")]


def test_partial_line_waits_for_newline(out: ErlangWriter, fake_erlang: FakePort) -> None:
    out.write("abc")
    out.write("def")
    assert fake_erlang.writes == []
    out.write("g\nhi")
    assert fake_erlang.writes == [(1, "abcdefg\n")]
    out.write("j\nk\nrest")
    assert fake_erlang.writes == [(1, "abcdefg\n"), (1, "hij\nk\n")]
    out.flush()
    assert fake_erlang.writes[-1] == (1, "rest")
    out.flush()
    assert len(fake_erlang.writes) == 3


def test_print_costs_one_write_per_line(out: ErlangWriter, fake_erlang: FakePort) -> None:
    print("a", 1, sep="=", file=out)
    print("b", file=out, end="")
    assert fake_erlang.writes == [(1, "a=1\n")]
    print(file=out, flush=True)
    assert fake_erlang.writes == [(1, "a=1\n"), (1, "b\n")]


def test_large_output_without_newline_is_forwarded(out: ErlangWriter, fake_erlang: FakePort) -> None:
    out.write("x" * FLUSH_THRESHOLD)
    assert fake_erlang.writes == []
    out.write("y")
    assert fake_erlang.writes == [(1, "x" * FLUSH_THRESHOLD + "y")]
    out.write("z")
    assert len(fake_erlang.writes) == 1


def test_large_tail_after_a_newline_is_forwarded(out: ErlangWriter, fake_erlang: FakePort) -> None:
    out.write("head\n" + "t" * FLUSH_THRESHOLD)
    assert fake_erlang.writes == [(1, "head\n" + "t" * FLUSH_THRESHOLD)]
    out.write("small\ntail")
    assert fake_erlang.writes[-1] == (1, "small\n")


def test_stderr_uses_stream_2(fake_erlang: FakePort) -> None:
    err = ErlangWriter(2, "<stderr>")
    err.write("oops\n")
    assert fake_erlang.writes == [(2, "oops\n")]


def test_non_ascii_text(out: ErlangWriter, fake_erlang: FakePort) -> None:
    out.write("héllo → 世界\n")
    assert fake_erlang.output(1) == "héllo → 世界\n"


def test_stream_properties(out: ErlangWriter) -> None:
    assert out.isatty() is False
    assert out.encoding == "utf-8"
    assert out.errors == "strict"
    assert out.name == "<stdout>"
    assert out.writable() and not out.readable() and not out.seekable()
    with pytest.raises(io.UnsupportedOperation):
        out.fileno()
    with pytest.raises(OSError):  # io.UnsupportedOperation is an OSError, the base read raises it
        out.read()


def test_write_rejects_bytes(out: ErlangWriter) -> None:
    with pytest.raises(TypeError, match="bytes"):
        out.write(b"raw")  # type: ignore[arg-type]


def test_close_forwards_the_rest_then_refuses(out: ErlangWriter, fake_erlang: FakePort) -> None:
    out.write("tail")
    out.close()
    assert fake_erlang.writes == [(1, "tail")]
    assert out.closed
    with pytest.raises(ValueError):
        out.write("more")
    out.flush()  # flushing a closed stream is harmless
    out.close()


def test_threads_never_split_a_line(out: ErlangWriter, fake_erlang: FakePort) -> None:
    threads, lines = 8, 500
    start = threading.Barrier(threads)

    def worker(n: int) -> None:
        start.wait()
        for i in range(lines):
            out.write(f"thread {n} line {i}\n")
            if i % 7 == 0:
                out.flush()

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    out.flush()
    chunks = [text for _, text in fake_erlang.writes]
    assert all(chunk.endswith("\n") for chunk in chunks)
    got = "".join(chunks).splitlines()
    assert sorted(got) == sorted(f"thread {n} line {i}" for n in range(threads) for i in range(lines))
    for n in range(threads):  # each thread's lines stay in its own order
        mine = [line for line in got if line.startswith(f"thread {n} ")]
        assert mine == [f"thread {n} line {i}" for i in range(lines)]


def test_reentrant_write_while_forwarding(fake_erlang: FakePort, monkeypatch: pytest.MonkeyPatch) -> None:
    # The port may report on the same stream while it forwards; that must not deadlock or lose text,
    # and the text still comes out in write order.
    err = ErlangWriter(2, "<stderr>")
    seen: list[str] = []

    def write_and_report(stream: int, text: str) -> None:
        seen.append(text)
        if text == "first\n":
            err.write("report\n")

    monkeypatch.setattr("erlang._io._write", write_and_report)
    err.write("first\npartial")
    err.flush()
    assert seen == ["first\n", "partialreport\n"]


@pytest.mark.parametrize(
    "read",
    [
        lambda s: s.read(),
        lambda s: s.read(1),
        lambda s: s.readline(),
        lambda s: s.readlines(),
        lambda s: next(iter(s)),
    ],
)
def test_stdin_reads_raise(read: object) -> None:
    stdin = ErlangStdin()
    with pytest.raises(RuntimeError, match="stdin is not available in erlang_python"):
        read(stdin)  # type: ignore[operator]
    assert str(RuntimeError(STDIN_UNAVAILABLE)) == (
        "stdin is not available in erlang_python (stdin carries the protocol)"
    )


def test_stdin_properties() -> None:
    stdin = ErlangStdin()
    assert stdin.isatty() is False and stdin.readable() is False and stdin.name == "<stdin>"
    with pytest.raises(io.UnsupportedOperation):
        stdin.fileno()


@pytest.fixture
def saved_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("stdout", "stderr", "stdin"):
        monkeypatch.setattr(sys, name, getattr(sys, name))


@pytest.mark.usefixtures("saved_streams")
def test_install_std_streams(fake_erlang: FakePort) -> None:
    originals = (sys.__stdout__, sys.__stderr__, sys.__stdin__)
    erlang._install_std_streams()
    assert isinstance(sys.stdout, ErlangWriter) and isinstance(sys.stderr, ErlangWriter)
    assert isinstance(sys.stdin, ErlangStdin)
    assert (sys.__stdout__, sys.__stderr__, sys.__stdin__) == originals
    print("to stdout")
    print("to stderr", file=sys.stderr)
    sys.stdout.write("unfinished")
    assert fake_erlang.writes == [(1, "to stdout\n"), (2, "to stderr\n")]
    with pytest.raises(RuntimeError, match="stdin carries the protocol"):
        input()
    # input() flushed the prompt-less stdout first, as it does for a real terminal.
    assert fake_erlang.writes[-1] == (1, "unfinished")


@pytest.mark.usefixtures("saved_streams")
def test_reinstalling_flushes_the_old_writers(fake_erlang: FakePort) -> None:
    erlang._install_std_streams()
    sys.stdout.write("pending")
    erlang._install_std_streams()
    assert fake_erlang.writes == [(1, "pending")]


@pytest.mark.usefixtures("saved_streams")
def test_input_prompt_goes_to_stdout(fake_erlang: FakePort) -> None:
    erlang._install_std_streams()
    with pytest.raises(RuntimeError):
        builtins.input("name? ")
    assert fake_erlang.output(1) == "name? "
