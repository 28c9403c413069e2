#!/usr/bin/env escript
%%! -pa _build/default/lib/erlang_python/ebin
%% Concurrent I/O-bound asyncio coroutines inside one py:call, against a local TCP server this
%% script starts in Erlang (each reply takes 200 ms). Run from the repository root:
%%   escript examples/asyncio_example.escript
main(_) ->
	ok = logger:set_primary_config(level, notice),
	{ok, _} = application:ensure_all_started(erlang_python),
	ok = py_import:add_path(filename:absname(filename:join(filename:dirname(escript:script_name()), "python"))),
	{ok, Listen} = gen_tcp:listen(0, [binary, {packet, line}, {active, false}, {reuseaddr, true}, {ip, {127, 0, 0, 1}}]),
	{ok, Port} = inet:port(Listen),
	Server = spawn_link(fun() -> accept(Listen) end),
	ok = gen_tcp:controlling_process(Listen, Server),
	N = 20,
	{ok, {Replies, Seconds}} = py:call(aio_fetch, run, [Port, N], #{}, 30000),
	io:format("~p coroutines against 127.0.0.1:~p (200 ms per reply):~n", [N, Port]),
	[io:format("  ~ts~n", [R]) || R <- lists:sublist(Replies, 3)],
	io:format("  ...~nall ~p replies in ~.2f s (one after another: ~.1f s)~n", [length(Replies), Seconds, N * 0.2]),
	N = length(Replies),
	true = lists:all(fun(R) -> binary:match(R, <<"reply to request">>) =/= nomatch end, Replies),
	true = Seconds < 2.0 orelse begin io:format("not concurrent~n"), halt(1) end,
	unlink(Server), exit(Server, kill),
	ok = application:stop(erlang_python).

%% One handler process per connection; every wait is bounded.
accept(Listen) ->
	{ok, Sock} = gen_tcp:accept(Listen),
	Handler = spawn(fun() -> receive go -> serve(Sock) after 5000 -> ok end end),
	ok = gen_tcp:controlling_process(Sock, Handler),
	Handler ! go,
	accept(Listen).

serve(Sock) ->
	case gen_tcp:recv(Sock, 0, 5000) of
		{ok, Line} ->
			timer:sleep(200),
			ok = gen_tcp:send(Sock, [<<"reply to ">>, Line]);
		{error, _} ->
			ok
	end,
	gen_tcp:close(Sock).
