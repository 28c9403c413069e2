defmodule Py.DocsTest do
  @moduledoc """
  Runs the Elixir code samples of docs/*.md (the Erlang ones: tests/ct/py_docs_SUITE.erl).

  A fenced ```elixir block with `iex>` prompts is a session, checked like a doctest: `iex>` starts an
  expression, `...>` continues it, the lines after it up to the next prompt or a blank line are the
  expected result, compared with `===` after evaluating them, or matched as a pattern when they do not
  evaluate (`{:ok, _}`); `** (Module) message` expects that exception. All sessions of a page share
  their bindings (one iex session per page), in a fresh process. A block without prompts must parse;
  one that defines a module is compiled too.
  """
  use ExUnit.Case, async: false

  @docs Path.expand("../../docs", __DIR__)

  for page <- Path.wildcard(Path.join(@docs, "*.md")) |> Enum.sort() do
    @page page
    test "docs/#{Path.basename(page)}" do
      failures =
        Task.async(fn -> Py.DocsTest.run_page(@page) end)
        |> Task.await(300_000)

      assert failures == [], Enum.map_join(failures, "\n\n", &format/1)
    end
  end

  test "the checker reports a wrong result, a wrong exception and a block that does not parse" do
    path = Path.join(System.tmp_dir!(), "docs_check_#{System.unique_integer([:positive])}.md")

    File.write!(path, """
    ```elixir
    iex> Py.eval("1 + 1")
    {:ok, 3}
    iex> x = 5
    iex> {x, Py.eval("2")}
    {5, {:ok, _}}
    iex> Py.eval!("1/0")
    ** (Py.Error) KeyError: nope
    ```

    ```elixir
    this is not ( elixir
    ```
    """)

    try do
      assert [
               {2, ~s|Py.eval("1 + 1")|, {:expected, "{:ok, 3}", :got, {:ok, 2}}},
               {7, _, {:raised, _}},
               {12, :block, {:does_not_parse, _}}
             ] = Task.async(fn -> run_page(path) end) |> Task.await(60_000)
    after
      File.rm(path)
    end
  end

  defp format({line, code, why}), do: "line #{line}: #{code}\n  #{inspect(why)}"

  @doc false
  def run_page(path) do
    path
    |> File.read!()
    |> blocks()
    |> Enum.filter(fn {lang, _, _} -> lang == "elixir" end)
    |> Enum.reduce({[], []}, fn {_, line, lines}, {binding, failures} ->
      {binding, new} = run_block(lines, line, binding)
      {binding, failures ++ new}
    end)
    |> elem(1)
  end

  # {lang, first line number, [lines]} of each fenced block.
  defp blocks(md) do
    md
    |> String.split("\n")
    |> Enum.with_index(1)
    |> Enum.reduce({nil, []}, fn
      {"```" <> lang, n}, {nil, acc} when lang != "" -> {{String.trim(lang), n + 1, []}, acc}
      {"```", _}, {{lang, start, lines}, acc} -> {nil, [{lang, start, Enum.reverse(lines)} | acc]}
      {l, _}, {{lang, start, lines}, acc} -> {{lang, start, [l | lines]}, acc}
      {_, _}, {nil, acc} -> {nil, acc}
    end)
    |> elem(1)
    |> Enum.reverse()
  end

  defp run_block(lines, line, binding) do
    if Enum.any?(lines, &String.starts_with?(&1, "iex>")) do
      lines |> steps(line) |> Enum.reduce({binding, []}, &run_step/2)
    else
      code = Enum.join(lines, "\n")

      case Code.string_to_quoted(code) do
        {:ok, _} ->
          if code =~ ~r/^\s*defmodule /m, do: Code.compile_string(code)
          {binding, []}

        {:error, why} ->
          {binding, [{line, :block, {:does_not_parse, why}}]}
      end
    end
  end

  # [{line, code, expected}]
  defp steps(lines, first) do
    lines
    |> Enum.with_index(first)
    |> Enum.reduce([], fn
      {"iex> " <> code, n}, acc ->
        [{n, code, []} | acc]

      {"iex>" <> code, n}, acc ->
        [{n, code, []} | acc]

      {"...> " <> more, _}, [{n, code, []} | acc] ->
        [{n, code <> "\n" <> more, []} | acc]

      {"", _}, [{n, code, exp} | acc] ->
        [{n, code, [:stop | exp]} | acc]

      {l, _}, [{n, code, exp} | acc] ->
        if :stop in exp, do: [{n, code, exp} | acc], else: [{n, code, [l | exp]} | acc]

      {_, _}, [] ->
        []
    end)
    |> Enum.reverse()
    |> Enum.map(fn {n, code, exp} ->
      {n, code,
       exp |> Enum.reject(&(&1 == :stop)) |> Enum.reverse() |> Enum.join("\n") |> String.trim()}
    end)
  end

  defp run_step({n, code, expected}, {binding, failures}) do
    case check(code, expected, binding) do
      {:ok, binding} -> {binding, failures}
      {:error, why} -> {binding, failures ++ [{n, code, why}]}
    end
  end

  defp check(code, "** (" <> rest, binding) do
    [mod, message] = String.split(rest, ") ", parts: 2)

    try do
      Code.eval_string(code, binding)
      {:error, {:expected_raise, mod, :got_none}}
    rescue
      e ->
        if inspect(e.__struct__) == mod and Exception.message(e) == message,
          do: {:ok, binding},
          else: {:error, {:raised, e}}
    end
  end

  defp check(code, expected, binding) do
    {value, binding} = Code.eval_string(code, binding)

    cond do
      expected == "" -> {:ok, binding}
      same?(expected, value, binding) -> {:ok, binding}
      true -> {:error, {:expected, expected, :got, value}}
    end
  rescue
    e -> {:error, {:raised, e}}
  end

  defp same?(expected, value, binding) do
    try do
      {exp, _} = Code.eval_string(expected, binding)
      exp === value
    rescue
      CompileError ->
        {match, _} =
          Code.eval_string("match?(#{expected}, doc_value__)", [{:doc_value__, value} | binding])

        match
    end
  end
end
