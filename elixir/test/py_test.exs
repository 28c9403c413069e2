defmodule PyTest do
  use ExUnit.Case, async: false

  describe "the reference docs' Elixir examples, as written" do
    test "Using from Elixir: call, eval, eval with locals, kwargs" do
      {:ok, _} = Application.ensure_all_started(:erlang_python)
      {:ok, 4.0} = :py.call(:math, :sqrt, [16])
      {:ok, result} = :py.eval("2 + 2")
      assert result == 4
      {:ok, 100} = :py.eval("x * y", %{x: 10, y: 10})
      {:ok, json} = :py.call(:json, :dumps, [%{name: "Elixir"}], %{indent: 2})
      assert json == "{\n  \"name\": \"Elixir\"\n}"
    end

    test "Register Elixir Functions for Python" do
      :py.register_function(:factorial, fn [n] ->
        Enum.reduce(1..n, 1, &*/2)
      end)

      {:ok, 3_628_800} = :py.eval("__import__('erlang').call('factorial', 10)")
      assert {:ok, 3_628_800} = :py.eval("erlang.factorial(10)")
      assert :ok = :py.exec("from erlang import factorial\nresult = factorial(10)")
      assert {:ok, 3_628_800} = :py.eval("result")
      :py.unregister_function(:factorial)
      assert {:error, {_, _}} = :py.eval("erlang.call('factorial', 10)")
    end
  end

  describe "call/eval/exec" do
    test "kwargs as a keyword list or a map (atom or string keys)" do
      assert {:ok, "[1, 2]"} = Py.call(:json, :dumps, [[1, 2]])
      assert {:ok, "{\n \"a\": 1\n}"} = Py.call(:json, :dumps, [%{a: 1}], indent: 1)
      assert {:ok, "{\n \"a\": 1\n}"} = Py.call(:json, :dumps, [%{a: 1}], %{"indent" => 1})
      assert {:ok, "{\n \"a\": 1\n}"} = Py.call("json", "dumps", [%{a: 1}], %{indent: 1})
    end

    test "locals as a keyword list or a map" do
      assert {:ok, 7} = Py.eval("a + b", a: 3, b: 4)
      assert {:ok, 7} = Py.eval("a + b", %{"a" => 3, "b" => 4})
    end

    test "an environment per process: what exec defines, the same process sees" do
      :ok = Py.exec("seen_here = 1")
      assert {:ok, 1} = Py.eval("seen_here")
      task = Task.async(fn -> Py.eval("seen_here") end)
      assert {:error, {:NameError, _}} = Task.await(task)
    end

    test "bad kwargs, locals or options raise ArgumentError before anything is sent" do
      assert_raise ArgumentError, ~r/kwargs must be a keyword list or a map/, fn ->
        Py.call(:m, :f, [], [1, 2])
      end

      assert_raise ArgumentError, ~r/locals must be/, fn -> Py.eval("1", :nope) end
      assert_raise ArgumentError, ~r/invalid :timeout/, fn -> Py.eval("1", [], timeout: -5) end

      assert_raise ArgumentError, ~r/not both/, fn ->
        Py.eval("1", [], context: self(), pool: :p)
      end

      assert_raise ArgumentError, ~r/not supported/, fn ->
        Py.exec("x = 1", context: Py.context(), timeout: 100)
      end
    end

    test "timeouts end the call and leave the process usable" do
      assert {:error, :timeout} = Py.eval("erlang.sleep(5)", [], timeout: 100)
      assert {:error, :timeout} = Py.exec("while True: pass", timeout: 100)
      assert {:ok, 2} = Py.eval("1 + 1")
    end

    test "on a context (pid or registered name), with and without a timeout" do
      ctx = Py.context(1)
      assert {:ok, 9} = Py.call(:operator, :mul, [3, 3], [], context: ctx)
      assert {:ok, 9} = Py.call(:operator, :mul, [3, 3], [], context: ctx, timeout: 5000)
      assert {:error, :timeout} = Py.call(:erlang, :sleep, [5], [], context: ctx, timeout: 100)
      assert {:ok, 5} = Py.eval("x + 1", [x: 4], context: ctx, timeout: 5000)

      assert {:error, {:context_down, :no_such_context}} =
               Py.eval("1", [], context: :no_such_context)
    end
  end

  describe "Py.Error" do
    test "carries the Python class, message and traceback" do
      :ok = Py.exec("def inner(x):\n    return {}[x]\n\ndef outer(x):\n    return inner(x)\n")

      error = assert_raise Py.Error, fn -> Py.call!(:__main__, :outer, ["key"]) end
      assert error.class == :KeyError
      assert error.message == "'key'"
      assert error.reason == {:KeyError, ~c"'key'"}
      assert error.traceback =~ "Traceback (most recent call last)"
      assert error.traceback =~ "in outer"
      assert error.traceback =~ "in inner"
      assert Exception.message(error) == "KeyError: 'key'"
    end

    test "eval!, exec! and a class name that is not an atom" do
      assert_raise Py.Error, "NameError: name 'nope' is not defined", fn -> Py.eval!("nope") end

      assert_raise Py.Error, "SyntaxError: invalid syntax (<string>, line 1)", fn ->
        Py.exec!("def (")
      end

      error =
        assert_raise Py.Error, fn ->
          Py.exec!(
            "class NoAtomForThisErrorXyz(Exception): pass\nraise NoAtomForThisErrorXyz('boom')"
          )
        end

      assert error.class == "NoAtomForThisErrorXyz"
      assert error.message == "boom"
    end

    test "a timeout: no class, no traceback" do
      error = assert_raise Py.Error, fn -> Py.eval!("erlang.sleep(5)", [], timeout: 100) end

      assert %Py.Error{class: nil, message: "timeout", traceback: nil, reason: :timeout} = error
    end

    test "other errors keep their reason" do
      error = Py.Error.from_reason({:context_down, :c})
      assert %Py.Error{class: nil, reason: {:context_down, :c}, traceback: nil} = error
      assert Exception.message(error) == "{:context_down, :c}"
    end

    test "a port that died: its crash report is the traceback" do
      info = %{
        exit_status: :undefined,
        signal: :sigsegv,
        traceback: "Fatal Python error: Segmentation fault",
        reason: :crashed
      }

      error = Py.Error.from_reason({:port_exited, info})
      assert %Py.Error{class: nil, traceback: "Fatal Python error: Segmentation fault"} = error
      assert Exception.message(error) =~ "Python port exited"

      assert %Py.Error{traceback: nil} =
               Py.Error.from_reason({:port_exited, %{info | traceback: ""}})
    end
  end

  describe "stream" do
    # The probe is erlang.send (a message), not a callback: a generator closed by a cancel runs its
    # finally outside any request that could call back into Erlang.
    setup do
      :ok =
        Py.exec("""
        import erlang, time
        def probed(pid, n):
            erlang.send(pid, "started")
            try:
                for i in range(n):
                    yield i
            finally:
                erlang.send(pid, "closed")

        def failing():
            yield 1
            raise ValueError("bad item")

        def slow():
            yield 1
            erlang.sleep(5)
            yield 2

        def words(text, upper=False):
            for w in text.split():
                yield w.upper() if upper else w
        """)
    end

    test "is lazy: nothing runs until it is enumerated" do
      stream = Py.stream(:__main__, :probed, [self(), 3])
      Process.sleep(50)
      refute_received "started"
      assert Enum.to_list(stream) == [0, 1, 2]
      assert_received "started"
      assert_receive "closed", 5000
    end

    test "halting it early cancels the generator (its finally runs) and leaves no message" do
      assert Py.stream(:__main__, :probed, [self(), 1_000_000]) |> Enum.take(3) == [0, 1, 2]
      assert_receive "closed", 5000
      Process.sleep(50)
      refute_received {:py_stream, _, _}
    end

    test "an exception in the consumer cancels the generator too" do
      stream =
        Py.stream(:__main__, :probed, [self(), 1_000_000])
        |> Stream.map(fn
          2 -> raise "consumer failed"
          v -> v
        end)

      assert_raise RuntimeError, "consumer failed", fn -> Enum.to_list(stream) end
      assert_receive "closed", 5000
    end

    test "kwargs" do
      assert ["A", "B"] =
               Py.stream(:__main__, :words, ["a b"], kwargs: [upper: true]) |> Enum.to_list()
    end

    test "a Python exception raises Py.Error" do
      error =
        assert_raise Py.Error, fn -> Py.stream(:__main__, :failing, []) |> Enum.to_list() end

      assert error.class == :ValueError
      assert error.message == "bad item"
      assert error.traceback == nil
      refute_received {:py_stream, _, _}
    end

    test "a missing function raises when enumerated" do
      assert_raise Py.Error, fn ->
        Py.stream(:__main__, :no_such_generator, []) |> Enum.to_list()
      end
    end

    test "the per-item timeout raises and cancels" do
      error =
        assert_raise Py.Error, fn ->
          Py.stream(:__main__, :slow, [], timeout: 200) |> Enum.to_list()
        end

      assert error.reason == :timeout
      assert {:ok, 1} = Py.eval("1")
      Process.sleep(50)
      refute_received {:py_stream, _, _}
    end

    test "composes with Stream functions" do
      assert Py.stream(:builtins, :range, [10])
             |> Stream.filter(&(rem(&1, 2) == 0))
             |> Stream.map(&(&1 * 10))
             |> Enum.take(2) ==
               [0, 20]
    end
  end

  describe "register_function" do
    test "any arity; an Elixir function can call Python again (nested)" do
      :ok = Py.register_function(:nothing, fn -> :nothing end)
      :ok = Py.register_function(:pow2, fn x -> Py.eval!("n ** 2", n: hd(x)) end)
      :ok = Py.register_function(:concat3, fn a, b, c -> a <> b <> c end)
      assert {:ok, "nothing"} = Py.eval("erlang.nothing()")
      assert {:ok, 49} = Py.eval("erlang.pow2(7)")
      assert {:ok, "abc"} = Py.eval("erlang.concat3('a', 'b', 'c')")
    after
      Enum.each([:nothing, :pow2, :concat3], &Py.unregister_function/1)
    end

    test "a wrong number of arguments is a Python error" do
      :ok = Py.register_function(:two, fn a, b -> a + b end)
      assert {:error, {_class, _message}} = Py.eval("erlang.two(1)")
    after
      Py.unregister_function(:two)
    end

    test "module and function" do
      :ok = Py.register_function(:erl_len, :erlang, :length)
      assert {:ok, 3} = Py.eval("erlang.erl_len(1, 2, 3)")
    after
      Py.unregister_function(:erl_len)
    end

    test "reserved names are refused" do
      assert {:error, {:reserved_name, "_x"}} = Py.register_function(:_x, fn -> 1 end)
    end
  end

  describe "async" do
    test "spawn_call, await, cast, parallel" do
      ref = Py.spawn_call(:operator, :add, [1, 2])
      assert {:ok, 3} = Py.await(ref, 5000)
      assert :ok = Py.cast(:erlang, :send, [self(), {:cast_done, "x"}])
      # atoms travel to Python as str, so the message comes back with a binary
      assert_receive {"cast_done", "x"}, 5000

      assert {:ok, [ok: 1, ok: 2]} =
               Py.parallel([{:operator, :abs, [-1]}, {:operator, :abs, [-2]}])
    end
  end
end
