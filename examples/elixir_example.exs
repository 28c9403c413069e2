# Elixir and erlang_python, run as the reference docs run it (from the repository root, after
# rebar3 compile):
#   elixir --erl "-pa _build/default/lib/erlang_python/ebin" examples/elixir_example.exs
# Basic calls, data conversion, Elixir callbacks for Python, and parallel work with BEAM processes,
# first through :py as the reference docs show, then through the Py module of elixir/ (loaded from
# source here; in a project it is the :erlang_python_ex dependency).
Logger.configure(level: :warning)
{:ok, _} = Application.ensure_all_started(:erlang_python)

show = fn label, value -> IO.puts("#{label}\n    -> #{inspect(value)}") end

IO.puts("== :py, as in the reference docs")
{:ok, 4.0} = :py.call(:math, :sqrt, [16]) |> tap(&show.(":py.call(:math, :sqrt, [16])", &1))
{:ok, result} = :py.eval("2 + 2")
4 = result
{:ok, 100} = :py.eval("x * y", %{x: 10, y: 10}) |> tap(&show.(":py.eval(\"x * y\", %{x: 10, y: 10})", &1))
{:ok, json} = :py.call(:json, :dumps, [%{name: "Elixir"}], %{indent: 2})
show.(":py.call(:json, :dumps, [%{name: \"Elixir\"}], %{indent: 2})", json)

:py.register_function(:factorial, fn [n] -> Enum.reduce(1..n, 1, &*/2) end)
{:ok, 3628800} = :py.eval("__import__('erlang').call('factorial', 10)")
show.(":py.eval(\"__import__('erlang').call('factorial', 10)\")", 3628800)
:py.unregister_function(:factorial)

IO.puts("\n== data conversion")
{:ok, converted} = :py.eval("(v, type(v).__name__)", %{v: %{list: [1, 2.5, "three"], nothing: nil, tuple: {1, 2}}})
show.("an Elixir map through Python and back (nil is None, atoms become str)", converted)

IO.puts("\n== the Py module")
{:ok, _, _} = Kernel.ParallelCompiler.require(Path.wildcard(Path.join(__DIR__, "../elixir/lib/**/*.ex")))
show.("Py.call(:json, :dumps, [[1, 2]], indent: 1)", Py.call(:json, :dumps, [[1, 2]], indent: 1))
show.("Py.eval(\"a + b\", a: 1, b: 2)", Py.eval("a + b", a: 1, b: 2))

error =
  try do
    Py.eval!("{}['missing']")
  rescue
    e in Py.Error -> e
  end

show.("Py.eval!(\"{}['missing']\") raised", {error.class, error.message})
true = error.traceback =~ "KeyError"
show.("Py.stream(:builtins, :range, [5]) |> Enum.map(&(&1 * &1))", Py.stream(:builtins, :range, [5]) |> Enum.map(&(&1 * &1)))

IO.puts("\n== parallel work: Python calls an Elixir function that fans out to BEAM processes")
# Each item is a 100 ms Python call; run from BEAM processes on a pool of 10 contexts they take
# about 0.1 s together instead of 1 s.
{:ok, contexts} = :py_context_router.start_pool(:parallel_demo, 10)

Py.register_function(:parallel_map, fn [items] ->
  items
  |> Enum.zip(contexts)
  |> Enum.map(fn {item, ctx} ->
    Task.async(fn -> Py.eval!("__import__('time').sleep(0.1) or n * n", [n: item], context: ctx) end)
  end)
  |> Task.await_many(10_000)
end)

{micros, {:ok, squares}} = :timer.tc(fn -> Py.eval("erlang.parallel_map(list(range(10)))") end)
show.("Py.eval(\"erlang.parallel_map(list(range(10)))\")", squares)
IO.puts("    #{Float.round(micros / 1.0e6, 2)} s for 10 calls of 100 ms each")
^squares = Enum.map(0..9, &(&1 * &1))
if micros > 700_000, do: raise("not parallel: #{micros} us")
:ok = :py_context_router.stop_pool(:parallel_demo)
:ok = Application.stop(:erlang_python)
IO.puts("\ndone.")
