#!/usr/bin/env escript
%%! -pa _build/default/lib/erlang_python/ebin
%% 10 Erlang processes each call a Python function that takes 100 ms; together they take about
%% 0.1 s, not 1 s. Run from the repository root: escript examples/concurrency.escript
%%
%% A context runs one request at a time, so the example starts a named pool of 10 contexts (the
%% default pool has num_ports x 2) and gives each process its own member (py:call(workers, ...)
%% would pick a member by a hash of the caller's pid, and two callers may share one).
%% slow_work.work sleeps, which releases the GIL: 10 contexts of one port process sleep at once.
main(_) ->
	ok = logger:set_primary_config(level, notice),
	{ok, _} = application:ensure_all_started(erlang_python),
	ok = py_import:add_path(filename:absname(filename:join(filename:dirname(escript:script_name()), "python"))),
	{ok, Contexts} = py_context_router:start_pool(workers, 10),
	[{ok, 0} = py:call(C, slow_work, work, [0]) || C <- Contexts],   % imports the module in each port
	Parent = self(),
	T0 = erlang:monotonic_time(millisecond),
	Pids = [spawn_link(fun() -> Parent ! {self(), N, py:call(Ctx, slow_work, work, [N])} end)
		|| {N, Ctx} <- lists:zip(lists:seq(1, 10), Contexts)],
	Results = [receive {Pid, N, {ok, R}} -> {N, R} after 10000 -> error({no_reply, N}) end
		|| {Pid, N} <- lists:zip(Pids, lists:seq(1, 10))],
	Elapsed = erlang:monotonic_time(millisecond) - T0,
	io:format("10 processes x slow_work.work (100 ms each): ~w~n", [Results]),
	io:format("finished in ~.2f s (one after another: 1.00 s)~n", [Elapsed / 1000]),
	Results = [{N, N * N} || N <- lists:seq(1, 10)],
	%% Loose bound: a loaded 2-core machine may add a few hundred ms, never the 1 s of serial calls.
	true = Elapsed < 700 orelse begin io:format("too slow: ~p ms~n", [Elapsed]), halt(1) end,
	ok = py_context_router:stop_pool(workers),
	ok = application:stop(erlang_python).
