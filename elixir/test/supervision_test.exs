defmodule Py.SupervisionTest do
  use ExUnit.Case, async: false

  test "a Py.Context under a supervisor: called by name, restarted with fresh state when killed" do
    sup =
      start_supervised!(%{
        id: :ctx_sup,
        type: :supervisor,
        start:
          {Supervisor, :start_link,
           [[{Py.Context, name: :sup_test_ctx}], [strategy: :one_for_one]]}
      })

    assert [{:sup_test_ctx, ctx, :worker, _}] = Supervisor.which_children(sup)
    assert :ok = Py.Context.exec(:sup_test_ctx, "state = 'kept'")
    assert {:ok, "kept"} = Py.Context.eval(:sup_test_ctx, "state")
    assert {:ok, 3} = Py.Context.call(:sup_test_ctx, :operator, :add, [1, 2])

    ref = Process.monitor(ctx)
    Process.exit(ctx, :kill)
    assert_receive {:DOWN, ^ref, :process, ^ctx, :killed}, 5000

    new = wait_for(fn -> Process.whereis(:sup_test_ctx) end)
    assert new != ctx
    assert {:error, {:NameError, _}} = Py.Context.eval(:sup_test_ctx, "state")
  end

  test "a second context with a taken name is refused and destroyed" do
    {:ok, ctx} = Py.Context.start_link(name: :taken_ctx_name)

    assert {:error, {:already_registered, :taken_ctx_name}} =
             Py.Context.start_link(name: :taken_ctx_name)

    assert :ok = Py.Context.stop(:taken_ctx_name)
    refute Process.alive?(ctx)
  end

  test "Py.Context.new/1 is supervised by the application" do
    {:ok, ctx} = Py.Context.new()
    assert {:ok, 1} = Py.Context.eval(ctx, "1")
    assert :ok = Py.Context.stop(ctx)
    assert {:error, {:context_down, ^ctx}} = Py.Context.eval(ctx, "1")
  end

  test "a Py.Pool under a supervisor: calls, registered routing, gone when its owner stops" do
    start_supervised!({Py.Pool, name: :sup_test_pool, size: 2, register: [:threading]})
    members = Py.Pool.contexts(:sup_test_pool)
    assert length(members) == 2

    pool_threads = for ctx <- members, do: Py.call!(:threading, :get_ident, [], [], context: ctx)

    # threading.* calls are registered to the pool: a plain Py.call lands on one of its threads.
    assert Py.call!(:threading, :get_ident, []) in pool_threads
    assert {:ok, 4} = Py.Pool.call(:sup_test_pool, :operator, :add, [2, 2])
    assert {:ok, 4} = Py.Pool.call(:sup_test_pool, :operator, :add, [2, 2], [], timeout: 5000)
    assert {:ok, 5} = Py.eval("n + 1", [n: 4], pool: :sup_test_pool)
    assert {:ok, 5} = Py.eval("n + 1", [n: 4], pool: :sup_test_pool, timeout: 5000)
    assert :ok = Py.exec("y = 1", pool: :sup_test_pool)

    :ok = stop_supervised({Py.Pool, :sup_test_pool})
    assert Py.Pool.contexts(:sup_test_pool) == []
    assert {:error, _} = Py.Pool.call(:sup_test_pool, :operator, :add, [2, 2], [], timeout: 5000)
    # the registration went with it
    refute Py.call!(:threading, :get_ident, []) in pool_threads
  end

  test "a pool that cannot start stops its owner with the reason" do
    Process.flag(:trap_exit, true)
    {:ok, owner} = Py.Pool.start_link(name: :dup_pool, size: 1)
    assert {:error, _reason} = Py.Pool.start_link(name: :dup_pool, size: 1)
    assert length(Py.Pool.contexts(:dup_pool)) == 1
    GenServer.stop(owner)
  end

  test "invalid pool names are refused" do
    assert_raise ArgumentError, fn -> Py.Pool.start_link(name: :default) end
    assert_raise ArgumentError, fn -> Py.Pool.start_link(name: "str") end
  end

  defp wait_for(fun, deadline \\ System.monotonic_time(:millisecond) + 5000) do
    case fun.() do
      nil ->
        if System.monotonic_time(:millisecond) > deadline, do: flunk("timed out")
        Process.sleep(10)
        wait_for(fun, deadline)

      value ->
        value
    end
  end
end
