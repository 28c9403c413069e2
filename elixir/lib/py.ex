defmodule Py do
  @moduledoc """
  Call Python from Elixir. Python runs outside the VM, in the `erlang_python` application's port
  processes: a crash in Python kills one port process, never the node.

  This module is a thin, idiomatic layer over the Erlang API (`:py`, `:py_context`,
  `:py_context_router`), which stays usable as it is (`:py.call(:math, :sqrt, [16])`):

    * keyword lists (or maps) for keyword arguments and for the local names of `eval/3`;
    * options instead of overloads: `timeout:` (ms), `context:` (a context pid or a registered
      name, see `Py.Context`) and `pool:` (a named pool, see `Py.Pool`);
    * bang variants that return the value or raise `Py.Error` (class, message, traceback);
    * `stream/4`, a lazy `Stream` over a Python iterator;
    * `register_function/2` taking Elixir functions of any arity.

  Results are `{:ok, value}` or `{:error, reason}`, `reason` as `:py` documents it: a Python
  exception is `{class, message}` (`{:ZeroDivisionError, 'division by zero'}`; the message is a
  charlist), and also `:timeout`, `{:port_exited, info}`, `{:context_down, ctx}`, ...

  Each calling process has its own Python globals in each context it uses: what `exec/2` defines,
  later calls from the same process see, and no other process does.

      iex> Py.call(:math, :sqrt, [16])
      {:ok, 4.0}
      iex> Py.eval("x * y", x: 6, y: 7)
      {:ok, 42}
  """

  @typedoc "A Python module or function name."
  @type name :: atom() | String.t()
  @typedoc "Keyword arguments (or local names): a keyword list or a map with atom or string keys."
  @type kwargs :: keyword() | %{optional(atom() | String.t()) => term()}
  @typedoc """
  Where and how long a request runs:

    * `:timeout` - milliseconds (or `:infinity`); the default is the application's
      `default_timeout`. On expiry the call returns `{:error, :timeout}` and is cancelled in Python.
    * `:context` - a context pid or the registered name of one (`Py.Context`).
    * `:pool` - the name of a named pool (`Py.Pool`); one of its contexts runs the call.
  """
  @type opts :: [timeout: timeout(), context: pid() | atom(), pool: atom()]
  @type result :: {:ok, term()} | {:error, term()}

  # A stream's consumer waits at most this long for each item unless told otherwise (`:timeout`).
  @stream_item_timeout 60_000

  ## Calls

  @doc """
  Calls `module.function(*args, **kwargs)`.

      iex> Py.call(:json, :dumps, [%{foo: "bar"}], sort_keys: true)
      {:ok, "{\\"foo\\": \\"bar\\"}"}
      iex> Py.call(:math, :sqrt, [-1])
      {:error, {:ValueError, 'math domain error'}}
      iex> Py.call(:erlang, :sleep, [10], [], timeout: 50)
      {:error, :timeout}
  """
  @spec call(name(), name(), list(), kwargs(), opts()) :: result()
  def call(module, function, args, kwargs \\ [], opts \\ []) when is_list(args) do
    kwargs = to_map(kwargs, :kwargs)

    case target(opts) do
      {:default, :default} ->
        :py.call(module, function, args, kwargs)

      {:default, timeout} ->
        :py.call(module, function, args, kwargs, timeout)

      {{:context, ctx}, :default} ->
        :py.call(ctx, module, function, args, kwargs)

      {{:context, ctx}, timeout} ->
        :py_context.call(ctx, module, function, args, kwargs, timeout)

      {{:pool, pool}, :default} ->
        :py.call(pool, module, function, args, kwargs)

      {{:pool, pool}, timeout} ->
        on_pool(pool, &:py_context.call(&1, module, function, args, kwargs, timeout))

      {:error, _} = error ->
        error
    end
  end

  @doc """
  Like `call/5`, but returns the value or raises `Py.Error`.

      iex> Py.call!(:operator, :add, [1, 2])
      3
  """
  @spec call!(name(), name(), list(), kwargs(), opts()) :: term()
  def call!(module, function, args, kwargs \\ [], opts \\ []) do
    unwrap(call(module, function, args, kwargs, opts))
  end

  @doc """
  Evaluates `code`: an expression, or statements followed by an expression (its value), or
  statements only (`:none`). `locals` are local names while it runs. Options as in `call/5`.

      iex> Py.eval("2 ** 10")
      {:ok, 1024}
      iex> Py.eval("[n * 2 for n in xs]", xs: [1, 2, 3])
      {:ok, [2, 4, 6]}
      iex> Py.eval("undefined_name")
      {:error, {:NameError, 'name \\'undefined_name\\' is not defined'}}
  """
  @spec eval(String.t(), kwargs(), opts()) :: result()
  def eval(code, locals \\ [], opts \\ []) when is_binary(code) do
    locals = to_map(locals, :locals)

    case target(opts) do
      {:default, :default} -> :py.eval(code, locals)
      {:default, timeout} -> :py.eval(code, locals, timeout)
      {{:context, ctx}, :default} -> :py.eval(ctx, code, locals)
      {{:context, ctx}, timeout} -> :py_context.eval(ctx, code, locals, timeout)
      {{:pool, pool}, :default} -> on_pool(pool, &:py.eval(&1, code, locals))
      {{:pool, pool}, timeout} -> on_pool(pool, &:py_context.eval(&1, code, locals, timeout))
      {:error, _} = error -> error
    end
  end

  @doc """
  Like `eval/3`, but returns the value or raises `Py.Error`.

      iex> Py.eval!("sum(range(10))")
      45
  """
  @spec eval!(String.t(), kwargs(), opts()) :: term()
  def eval!(code, locals \\ [], opts \\ []), do: unwrap(eval(code, locals, opts))

  @doc """
  Runs statements in the calling process's environment. Options as in `call/5`, except that a
  `:timeout` on a context or pool is refused (`ArgumentError`): the Erlang side has no such form yet.

      iex> Py.exec("def double(n):\\n    return n * 2")
      :ok
      iex> Py.call(:__main__, :double, [21])
      {:ok, 42}
  """
  @spec exec(String.t(), opts()) :: :ok | {:error, term()}
  def exec(code, opts \\ []) when is_binary(code) do
    case target(opts) do
      {:default, :default} ->
        :py.exec(code)

      {:default, timeout} ->
        :py.exec(code, timeout)

      {{:context, ctx}, :default} ->
        :py.exec(ctx, code)

      {{:pool, pool}, :default} ->
        on_pool(pool, &:py.exec(&1, code))

      {{_, _}, _timeout} ->
        raise ArgumentError, "Py.exec/2: :timeout with :context or :pool is not supported"

      {:error, _} = error ->
        error
    end
  end

  @doc """
  Like `exec/2`, but returns `:ok` or raises `Py.Error`.

      iex> Py.exec!("import math\\nr = math.floor(2.5)")
      :ok
      iex> Py.eval!("r")
      2
  """
  @spec exec!(String.t(), opts()) :: :ok
  def exec!(code, opts \\ []) do
    case exec(code, opts) do
      :ok -> :ok
      {:error, reason} -> raise Py.Error.from_reason(reason)
    end
  end

  ## Streams

  @doc """
  A lazy `Stream` of the items the Python iterator `module.function(*args, **kwargs)` yields (a
  generator, any iterable, an async generator). Nothing runs until the stream is enumerated, in the
  enumerating process. Halting it early (`Enum.take/2`, `Stream.take_while/2`, an exception)
  cancels the iterator in Python (`:py.stream_cancel/1`: its `finally` blocks run); a Python
  exception raises `Py.Error`. The port runs only a bounded number of items ahead of the consumer.

  Options: `:kwargs`, and `:timeout`, the longest wait for each item in ms (default 60000;
  `:infinity` waits for ever), after which the stream is cancelled and `Py.Error` (`reason:
  :timeout`) raised.

      iex> Py.stream(:builtins, :range, [5]) |> Enum.map(&(&1 * &1))
      [0, 1, 4, 9, 16]
      iex> Py.stream(:itertools, :count, [10]) |> Enum.take(3)
      [10, 11, 12]
  """
  @spec stream(name(), name(), list(), kwargs: kwargs(), timeout: timeout()) :: Enumerable.t()
  def stream(module, function, args, opts \\ []) when is_list(args) do
    kwargs = opts |> Keyword.get(:kwargs, []) |> to_map(:kwargs)
    timeout = Keyword.get(opts, :timeout, @stream_item_timeout)

    Stream.resource(
      fn ->
        case :py.stream_start(module, function, args, %{kwargs: kwargs}) do
          {:ok, ref} -> {:running, ref}
          {:error, reason} -> raise Py.Error.from_reason(reason, traceback: false)
        end
      end,
      &next_item(&1, timeout),
      &close_stream/1
    )
  end

  # One item per step; each wait is bounded by the item timeout.
  defp next_item({:running, ref} = acc, timeout) do
    receive do
      {:py_stream, ^ref, {:data, value}} -> {[value], acc}
      {:py_stream, ^ref, :done} -> {:halt, {:ended, ref}}
      {:py_stream, ^ref, {:error, reason}} -> raise Py.Error.from_reason(reason, traceback: false)
    after
      timeout -> raise Py.Error.from_reason(:timeout)
    end
  end

  # Runs however the stream stops (end, halt, exception). Cancelling is a no-op for an ended stream;
  # events already in the mailbox are dropped so none outlives the stream.
  defp close_stream({state, ref}) do
    if state == :running, do: :ok = :py.stream_cancel(ref)
    flush_stream(ref)
  end

  defp flush_stream(ref) do
    receive do
      {:py_stream, ^ref, _} -> flush_stream(ref)
    after
      0 -> :ok
    end
  end

  ## Callbacks

  @doc """
  Makes `fun` callable from Python as `erlang.<name>(...)` (also `from erlang import name` and
  `erlang.call("name", ...)`). A function of arity 1 gets the list of the arguments, as with
  `:py.register_function/2`; a function of another arity gets them spread, so `&Kernel.+/2` works.
  Names starting with `_` are reserved: `{:error, {:reserved_name, name}}`.

      iex> Py.register_function(:add, &Kernel.+/2)
      :ok
      iex> Py.eval("erlang.add(1, 2)")
      {:ok, 3}
      iex> Py.register_function(:total, fn numbers -> Enum.sum(numbers) end)
      :ok
      iex> Py.eval("erlang.total(1, 2, 3)")
      {:ok, 6}
  """
  @spec register_function(name(), function()) :: :ok | {:error, {:reserved_name, binary()}}
  def register_function(name, fun) when is_function(fun, 1), do: :py.register_function(name, fun)

  def register_function(name, fun) when is_function(fun) do
    {:arity, arity} = Function.info(fun, :arity)
    :py.register_function(name, fn args when length(args) == arity -> apply(fun, args) end)
  end

  @doc """
  Makes `module.function/1` callable from Python as `erlang.<name>(...)`; it gets the list of the
  arguments.
  """
  @spec register_function(name(), module(), atom()) :: :ok | {:error, {:reserved_name, binary()}}
  def register_function(name, module, function), do: :py.register_function(name, module, function)

  @doc "Removes a function registered with `register_function/2,3`."
  @spec unregister_function(name()) :: :ok
  def unregister_function(name), do: :py.unregister_function(name)

  ## Async and batches

  @doc """
  Starts `call/4` in another process and returns a reference for `await/2`.

      iex> ref = Py.spawn_call(:math, :factorial, [10])
      iex> Py.await(ref)
      {:ok, 3628800}
  """
  @spec spawn_call(name(), name(), list(), kwargs()) :: reference()
  def spawn_call(module, function, args, kwargs \\ []) do
    :py.spawn_call(module, function, args, to_map(kwargs, :kwargs))
  end

  @doc "The result of a `spawn_call/4`; `{:error, :timeout}` leaves the call running."
  @spec await(reference(), timeout()) :: result()
  def await(ref, timeout \\ :infinity), do: :py.await(ref, timeout)

  @doc "Runs `call/4` without waiting for, or getting, a result."
  @spec cast(name(), name(), list(), kwargs()) :: :ok
  def cast(module, function, args, kwargs \\ []) do
    :py.cast(module, function, args, to_map(kwargs, :kwargs))
  end

  @doc """
  Runs `{module, function, args}` calls at the same time, at most one per context, and returns
  their results in order.

      iex> Py.parallel([{:math, :factorial, [5]}, {:math, :sqrt, [-1]}])
      {:ok, [{:ok, 120}, {:error, {:ValueError, 'math domain error'}}]}
  """
  @spec parallel([{name(), name(), list()}]) :: {:ok, [result()]} | {:error, term()}
  def parallel(calls) when is_list(calls), do: :py.parallel(calls)

  ## Contexts and objects

  @doc "The context the calling process's calls go to (`:py.context/0`)."
  @spec context() :: pid()
  def context, do: :py.context()

  @doc "Context `n` (1-based) of the default pool."
  @spec context(pos_integer()) :: pid()
  def context(n) when is_integer(n) and n > 0, do: :py.context(n)

  @doc """
  Calls a method of a Python object reference (a call with `return: :ref` in its kwargs returns one).

      iex> {:ok, ref} = Py.call(:builtins, :list, [[3, 1, 2]], return: :ref)
      iex> Py.call_method(ref, :sort, [])
      {:ok, :none}
      iex> Py.to_term(ref)
      {:ok, [1, 2, 3]}
  """
  @spec call_method(term(), name(), list()) :: result()
  def call_method(ref, method, args \\ []), do: :py.call_method(ref, method, args)

  @doc "An attribute of a Python object reference."
  @spec getattr(term(), name()) :: result()
  def getattr(ref, attribute), do: :py.getattr(ref, attribute)

  @doc "The referenced Python object converted to a term."
  @spec to_term(term()) :: result()
  def to_term(ref), do: :py.to_term(ref)

  @doc """
  The Python version the ports embed.

      iex> {:ok, version} = Py.version()
      iex> version =~ ~r/^3\\.\\d+/
      true
  """
  @spec version() :: {:ok, binary()} | {:error, term()}
  def version, do: :py.version()

  ## Internal

  defp unwrap({:ok, value}), do: value
  defp unwrap({:error, reason}), do: raise(Py.Error.from_reason(reason))

  # {target, timeout}: the target is :default, {:context, pid} or {:pool, name}.
  defp target(opts) do
    timeout =
      case Keyword.fetch(opts, :timeout) do
        :error -> :default
        {:ok, t} when t == :infinity or (is_integer(t) and t >= 0) -> t
        {:ok, t} -> raise ArgumentError, "invalid :timeout #{inspect(t)}"
      end

    case {Keyword.get(opts, :context), Keyword.get(opts, :pool)} do
      {nil, nil} -> {:default, timeout}
      {nil, pool} when is_atom(pool) -> {{:pool, pool}, timeout}
      {ctx, nil} when is_pid(ctx) -> {{:context, ctx}, timeout}
      {name, nil} when is_atom(name) -> registered_context(name, timeout)
      _ -> raise ArgumentError, "give :context (a pid or name) or :pool (a name), not both"
    end
  end

  defp registered_context(name, timeout) do
    case Process.whereis(name) do
      pid when is_pid(pid) -> {{:context, pid}, timeout}
      nil -> {:error, {:context_down, name}}
    end
  end

  defp on_pool(pool, fun) do
    case :py_context_router.pool_context(pool) do
      {:ok, ctx} -> fun.(ctx)
      {:error, _} = error -> error
    end
  end

  defp to_map(map, _what) when is_map(map), do: map

  defp to_map(list, what) when is_list(list) do
    if Keyword.keyword?(list) do
      Map.new(list)
    else
      raise ArgumentError, "#{what} must be a keyword list or a map, got: #{inspect(list)}"
    end
  end

  defp to_map(other, what),
    do: raise(ArgumentError, "#{what} must be a keyword list or a map, got: #{inspect(other)}")
end
