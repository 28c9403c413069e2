defmodule Py.Context do
  @moduledoc """
  Explicit Python contexts: a thread of a port process with its own namespaces, whose process
  (a `:py_context` gen_server) is its identity and lifetime. Calls on a context write their request
  straight to the port; the context process is never a relay.

  Put one in a supervision tree:

      children = [
        {Py.Context, name: MyApp.Python}
      ]

  and call it with `Py.call(:m, :f, args, kwargs, context: MyApp.Python)` or with the functions
  here. When its port dies the context process exits `{:shutdown, {:port_exited, reason}}` and
  its supervisor starts a new one (with fresh Python state).

      iex> {:ok, ctx} = Py.Context.start_link()
      iex> Py.Context.exec(ctx, "counter = 41")
      :ok
      iex> Py.Context.eval(ctx, "counter + 1")
      {:ok, 42}
      iex> Py.Context.stop(ctx)
      :ok
  """

  @type t :: pid()

  @doc """
  Starts a context linked to the caller. Options: `:name` (registers the context process),
  `:id` (any term, for the context's identity; default a new reference), `:mode` (`:worker`, the
  only mode offered so far).
  """
  @spec start_link(keyword()) :: {:ok, t()} | {:error, term()}
  def start_link(opts \\ []) do
    id = Keyword.get_lazy(opts, :id, &make_ref/0)

    with {:ok, pid} <- :py_context.start_link(id, Keyword.get(opts, :mode, :worker)) do
      register(pid, Keyword.get(opts, :name))
    end
  end

  @doc "A child spec for `start_link/1`; `:id` in `opts` (or `:name`) is the child id."
  @spec child_spec(keyword()) :: Supervisor.child_spec()
  def child_spec(opts) do
    %{
      id: Keyword.get(opts, :id, Keyword.get(opts, :name, __MODULE__)),
      start: {__MODULE__, :start_link, [opts]},
      type: :worker,
      restart: :permanent,
      shutdown: 10_000
    }
  end

  @doc "A context under the application's own supervisor (not linked to the caller)."
  @spec new(keyword()) :: {:ok, t()} | {:error, term()}
  def new(opts \\ []), do: :py_context.new(%{mode: Keyword.get(opts, :mode, :worker)})

  @doc "Destroys the context: its environments and objects are freed and its process ends."
  @spec stop(t() | atom()) :: :ok
  def stop(ctx), do: :py_context.stop(resolve(ctx))

  @doc "`Py.call/5` on this context."
  @spec call(t() | atom(), Py.name(), Py.name(), list(), Py.kwargs(), keyword()) :: Py.result()
  def call(ctx, module, function, args, kwargs \\ [], opts \\ []),
    do: Py.call(module, function, args, kwargs, Keyword.put(opts, :context, ctx))

  @doc "`Py.eval/3` on this context."
  @spec eval(t() | atom(), String.t(), Py.kwargs(), keyword()) :: Py.result()
  def eval(ctx, code, locals \\ [], opts \\ []),
    do: Py.eval(code, locals, Keyword.put(opts, :context, ctx))

  @doc "`Py.exec/2` on this context."
  @spec exec(t() | atom(), String.t()) :: :ok | {:error, term()}
  def exec(ctx, code), do: Py.exec(code, context: ctx)

  defp register(pid, nil), do: {:ok, pid}

  defp register(pid, name) when is_atom(name) do
    Process.register(pid, name)
    {:ok, pid}
  rescue
    ArgumentError ->
      :ok = :py_context.stop(pid)
      {:error, {:already_registered, name}}
  end

  defp resolve(pid) when is_pid(pid), do: pid

  defp resolve(name) when is_atom(name),
    do: Process.whereis(name) || raise(ArgumentError, "no context #{inspect(name)}")
end
