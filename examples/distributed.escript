#!/usr/bin/env escript
%%! -pa _build/default/lib/erlang_python/ebin
%% Two nodes on this machine: this one starts a second with peer, and calls Python there with
%% rpc:call (the same py API; the other node runs its own port processes). Python on the other node
%% also sends a message back to a process here. Run from the repository root:
%%   escript examples/distributed.escript
main(_) ->
	ok = logger:set_primary_config(level, warning),
	StartedEpmd = ensure_epmd(),
	{ok, _} = net_kernel:start([list_to_atom("ep_main_" ++ os:getpid()), shortnames]),
	Ebin = filename:absname("_build/default/lib/erlang_python/ebin"),
	{ok, Peer, Node} = peer:start_link(#{name => list_to_atom("ep_worker_" ++ os:getpid()),
		args => ["-pa", Ebin, "-kernel", "logger_level", "notice"], wait_boot => 30000}),
	io:format("this node ~p, the other node ~p~n", [node(), Node]),
	{ok, _} = application:ensure_all_started(erlang_python),
	{ok, _} = rpc:call(Node, application, ensure_all_started, [erlang_python], 60000),

	show("rpc:call(Node, py, call, [math, sqrt, [16]])", rpc:call(Node, py, call, [math, sqrt, [16]])),
	show("rpc:call(Node, py, eval, [<<\"2 ** 10\">>])", rpc:call(Node, py, eval, [<<"2 ** 10">>])),
	{ok, Here} = py:call(os, getpid, []),
	{ok, There} = rpc:call(Node, py, call, [os, getpid, []]),
	io:format("Python here runs in OS process ~p, on the other node in ~p~n", [Here, There]),
	true = Here =/= There,

	%% Concurrent remote calls: rpc:async_call and rpc:yield.
	Keys = [rpc:async_call(Node, py, call, [math, factorial, [N]]) || N <- [5, 10, 20]],
	show("[rpc:yield(K) || K <- [rpc:async_call(Node, py, call, [math, factorial, [N]]) || N <- [5, 10, 20]]]",
		[rpc:yield(K) || K <- Keys]),

	%% Python on the other node sends to a pid of this node.
	ok = rpc:call(Node, py, exec, [<<"import erlang">>]),
	{ok, none} = rpc:call(Node, py, eval, [<<"erlang.send(pid, ('from', node))">>, #{pid => self(), node => Node}]),
	receive
		{<<"from">>, Remote} = Msg -> show("message from Python on the other node", Msg), Remote = atom_to_binary(Node)
	after 10000 -> io:format("no message~n"), halt(1)
	end,

	%% A remote Python error is a plain {error, ...} term here.
	show("rpc:call(Node, py, eval, [<<\"1/0\">>])", rpc:call(Node, py, eval, [<<"1/0">>])),
	{ok, 4.0} = rpc:call(Node, py, call, [math, sqrt, [16]]),
	ok = peer:stop(Peer),
	ok = net_kernel:stop(),
	ok = application:stop(erlang_python),
	StartedEpmd andalso stop_epmd(3),
	ok.

show(Call, Result) -> io:format("~s~n    -> ~tp~n", [Call, Result]).

%% Distribution needs epmd; start it if it is not running (and stop it again at the end).
ensure_epmd() ->
	case erl_epmd:names() of
		{ok, _} -> false;
		{error, _} ->
			Epmd = os:find_executable("epmd"),
			_ = os:cmd(Epmd ++ " -daemon"),
			wait_epmd(50),
			true
	end.

%% epmd refuses -kill while any node is registered, so this cannot disturb other nodes. The peer's erl
%% may have started a second epmd beside ours; a few rounds end both.
stop_epmd(0) -> ok;
stop_epmd(N) ->
	_ = os:cmd(os:find_executable("epmd") ++ " -kill"),
	timer:sleep(200),
	case erl_epmd:names() of
		{ok, []} -> stop_epmd(N - 1);
		_ -> ok
	end.

wait_epmd(0) -> io:format("epmd did not start~n"), halt(1);
wait_epmd(N) ->
	case erl_epmd:names() of
		{ok, _} -> ok;
		{error, _} -> timer:sleep(100), wait_epmd(N - 1)
	end.
