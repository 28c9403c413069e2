#!/usr/bin/env escript
%%! -pa _build/default/lib/erlang_python/ebin
%% A segfaulting C call (ctypes.string_at(0)) kills one port process, not the node: the caller gets
%% the crash report, other callers keep working, the port is restarted. Run from the repository root:
%%   escript examples/crash_isolation.escript
main(_) ->
	ok = logger:set_primary_config(level, notice),
	ok = application:set_env(erlang_python, num_ports, 2),
	{ok, _} = application:ensure_all_started(erlang_python),
	%% Contexts 1 and 2 of the default pool are on ports 1 and 2.
	{Crashing, Other} = {py:context(1), py:context(2)},
	{ok, Before} = py:call(Crashing, os, getpid, []),
	{ok, OtherPid} = py:call(Other, os, getpid, []),
	Parent = self(),
	%% A caller on the other port, busy while the first port crashes.
	spawn_link(fun() -> Parent ! {other, py:eval(Other, <<"__import__('time').sleep(0.5) or 'slept'">>)} end),
	timer:sleep(100),
	io:format("port OS processes ~p and ~p; calling ctypes.string_at(0) in ~p...~n", [Before, OtherPid, Before]),
	{error, {port_exited, Report}} = py:eval(Crashing, <<"__import__('ctypes').string_at(0)">>),
	io:format("~nthe caller got {error, {port_exited, Report}}:~n"),
	[io:format("  ~p => ~p~n", [K, V]) || {K, V} <- maps:to_list(maps:remove(traceback, Report))],
	io:format("  traceback =>~n~ts~n", [indent(maps:get(traceback, Report, <<>>))]),
	sigsegv = maps:get(signal, Report),
	true = binary:match(maps:get(traceback, Report), <<"string_at">>) =/= nomatch,
	receive {other, OtherResult} -> io:format("the caller on the other port got ~p~n", [OtherResult]) after 10000 -> OtherResult = none end,
	{ok, <<"slept">>} = OtherResult,
	{ok, OtherPid} = py:call(Other, os, getpid, []),
	%% The default pool outlives port restarts: context 1 now lives in the new port process.
	{ok, After} = py:call(Crashing, os, getpid, []),
	{ok, 4.0} = py:call(math, sqrt, [16]),
	io:format("the node is still up; port ~p was restarted as ~p; py:call(math, sqrt, [16]) -> {ok, 4.0}~n",
		[Before, After]),
	true = After =/= Before,
	ok = application:stop(erlang_python).

indent(Bin) ->
	[["    ", L, "\n"] || L <- binary:split(Bin, <<"\n">>, [global, trim_all])].
