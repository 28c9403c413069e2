defmodule Py.Pool do
  @moduledoc """
  A named pool of explicit contexts (`:py_context_router.start_pool/2`), owned by a process you can
  put in a supervision tree. Calls name the pool (`Py.call(m, f, args, kwargs, pool: :ml)` or
  `Py.Pool.call/6`); a caller always lands on the same member (a hash of its pid). Modules listed
  in `:register` are routed to the pool by plain `Py.call/5` too (`:py.register_pool/2`).

      children = [
        {Py.Pool, name: :ml, size: 4, register: [:sklearn]}
      ]

  The owner creates the pool when it starts and destroys it when it stops (it traps exits, so a
  supervisor's shutdown runs that); if the `erlang_python` application goes down, the owner exits and
  its supervisor starts it (and the pool) again. An owner killed with `:kill` cannot clean up: its
  pool stays until `:py_context_router.stop_pool/1`, and a new owner of the same name then fails to
  start with the pool's `already_started` error.

      iex> {:ok, owner} = Py.Pool.start_link(name: :doc_pool, size: 2)
      iex> length(Py.Pool.contexts(:doc_pool))
      2
      iex> Py.Pool.call(:doc_pool, :operator, :mul, [6, 7])
      {:ok, 42}
      iex> GenServer.stop(owner)
      :ok
      iex> Py.Pool.contexts(:doc_pool)
      []
  """
  use GenServer

  @doc """
  Starts the pool's owner, linked to the caller. Options: `:name` (the pool name, an atom;
  required), `:size` (number of contexts, default 1), `:register` (modules, or `{module, function}`
  pairs, routed to the pool).
  """
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts) do
    name = Keyword.fetch!(opts, :name)

    unless is_atom(name) and name not in [nil, :default],
      do: raise(ArgumentError, "invalid pool name #{inspect(name)}")

    GenServer.start_link(__MODULE__, opts)
  end

  @doc "A child spec for `start_link/1`; the pool name is the child id."
  @spec child_spec(keyword()) :: Supervisor.child_spec()
  def child_spec(opts) do
    %{
      id: {__MODULE__, Keyword.fetch!(opts, :name)},
      start: {__MODULE__, :start_link, [opts]},
      shutdown: 10_000
    }
  end

  @doc "`Py.call/5` on the pool."
  @spec call(atom(), Py.name(), Py.name(), list(), Py.kwargs(), keyword()) :: Py.result()
  def call(pool, module, function, args, kwargs \\ [], opts \\ []),
    do: Py.call(module, function, args, kwargs, Keyword.put(opts, :pool, pool))

  @doc "The pool's context pids (empty when it is not running)."
  @spec contexts(atom()) :: [pid()]
  def contexts(pool), do: :py_context_router.contexts(pool)

  @impl true
  def init(opts) do
    Process.flag(:trap_exit, true)
    name = Keyword.fetch!(opts, :name)
    register = Keyword.get(opts, :register, [])

    case :py_context_router.start_pool(name, Keyword.get(opts, :size, 1)) do
      {:ok, _contexts} ->
        Enum.each(register, &(:ok = :py.register_pool(name, &1)))
        app_sup = Process.whereis(:erlang_python_sup)
        if app_sup, do: Process.monitor(app_sup)
        {:ok, %{name: name, register: register}}

      {:error, reason} ->
        {:stop, reason}
    end
  end

  @impl true
  def handle_info({:DOWN, _ref, :process, _pid, _reason}, state),
    do: {:stop, {:shutdown, :erlang_python_down}, state}

  def handle_info({:EXIT, _pid, reason}, state), do: {:stop, reason, state}
  def handle_info(_other, state), do: {:noreply, state}

  @impl true
  def terminate(_reason, %{name: name, register: register}) do
    Enum.each(register, &:py.unregister_pool/1)
    :py_context_router.stop_pool(name)
  end
end
