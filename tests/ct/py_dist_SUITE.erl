%% Distributed use (reference docs, "Distributed Python Execution"): the same py API over rpc against a
%% second node that this suite starts with `peer' (the application's code path and priv dir, the same
%% codec as the run). Each documented example, the error terms that cross the wire, pids that cross
%% both the distribution and the port, and what happens when the node goes away.
-module(py_dist_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1]).
-export([docs_remote_execution/1, docs_async_calls/1, docs_parallel_map/1, remote_errors/1,
	rpc_timeout_frees_remote_call/1, docs_node_status/1, python_sends_to_origin/1, pids_round_trip/1,
	remote_callback/1, remote_stream/1, remote_pool/1, docs_remote_ensure_venv/1,
	docs_supervised_remote_call/1, environment_per_rpc/1, refs_need_a_remote_owner/1,
	nodedown_after_stop/1]).

all() ->
	[docs_remote_execution, docs_async_calls, docs_parallel_map, remote_errors,
	 rpc_timeout_frees_remote_call, docs_node_status, python_sends_to_origin, pids_round_trip,
	 remote_callback, remote_stream, remote_pool, docs_remote_ensure_venv, docs_supervised_remote_call,
	 environment_per_rpc, refs_need_a_remote_owner, nodedown_after_stop].

init_per_suite(Config) ->
	Started = case node() of
		nonode@nohost ->
			_ = os:cmd("epmd -daemon"),
			{ok, _} = net_kernel:start([list_to_atom("py_dist_ct_" ++ os:getpid()), shortnames]),
			true;
		_ ->
			false
	end,
	%% Our own code path (the application and this suite's helpers), not OTP's.
	Lib = code:lib_dir(),
	Paths = [P || P <- code:get_path(), not lists:prefix(Lib, P), P =/= "."],
	%% Not start_link: init_per_suite runs in a process of its own, which ends.
	{ok, Peer, Node} = peer:start(#{name => peer:random_name(py_dist_worker),
		args => ["-setcookie", atom_to_list(erlang:get_cookie()) | lists:append([["-pa", P] || P <- Paths])]}),
	%% The peer inherits EP_TEST_CODEC: py_ct_helper starts it with the run's codec.
	ok = rpc:call(Node, py_ct_helper, start_app, [[{num_ports, 2}, {contexts_per_port, 2}]], 120000),
	[{peer, Peer}, {node, Node}, {started_dist, Started} | Config].

end_per_suite(Config) ->
	_ = (catch peer:stop(?config(peer, Config))),
	_ = ?config(started_dist, Config) andalso net_kernel:stop(),
	ok.

%% The docs' examples: call, eval, exec over rpc:call.
docs_remote_execution(Config) ->
	Node = ?config(node, Config),
	{ok, 4.0} = rpc:call(Node, py, call, [math, sqrt, [16]]),
	{ok, 1024} = rpc:call(Node, py, eval, [<<"2 ** 10">>]),
	ok = rpc:call(Node, py, exec, [<<"import json">>]),
	%% With locals (the Elixir example's shape: a map of atom keys).
	{ok, [1.0, 2.0, 3.0]} = rpc:call(Node, py, eval, [<<"[__import__('math').sqrt(x) for x in data]">>,
		#{data => [1, 4, 9]}]),
	%% The call ran on the peer's ports, not ours.
	{ok, RemotePid} = rpc:call(Node, py, eval, [<<"__import__('os').getpid()">>]),
	Remote = [P || #{os_pid := P} <- rpc:call(Node, py, stats, [])],
	true = lists:member(RemotePid, Remote).

%% rpc:yield with a deadline (the docs' rpc:yield/1 waits forever).
yield(Key) ->
	case rpc:nb_yield(Key, 30000) of
		{value, V} -> V;
		timeout -> ct:fail(rpc_yield_timeout)
	end.

%% rpc:async_call + rpc:yield, several in flight at once.
docs_async_calls(Config) ->
	Node = ?config(node, Config),
	Keys = [rpc:async_call(Node, py, call, [math, sqrt, [N * N]]) || N <- lists:seq(1, 8)],
	Results = [yield(Key) || Key <- Keys],
	Results = [{ok, float(N)} || N <- lists:seq(1, 8)].

%% The docs' map-reduce pattern over the nodes we have (the peer twice: two partitions).
docs_parallel_map(Config) ->
	Node = ?config(node, Config),
	Items = lists:seq(1, 10),
	{A, B} = lists:split(5, Items),
	Keys = [rpc:async_call(N, py, eval, [<<"[x * 2 for x in batch]">>, #{batch => Batch}])
		|| {N, Batch} <- [{Node, A}, {Node, B}]],
	Results = [yield(K) || K <- Keys],
	[2, 4, 6, 8, 10, 12, 14, 16, 18, 20] = lists:flatten([R || {ok, R} <- Results]).

%% Errors come back as the same terms as locally.
remote_errors(Config) ->
	Node = ?config(node, Config),
	{error, {'ZeroDivisionError', "division by zero"}} = rpc:call(Node, py, eval, [<<"1/0">>]),
	{error, {'NameError', "name 'undefined_name' is not defined"}} = rpc:call(Node, py, eval, [<<"undefined_name">>]),
	{error, timeout} = rpc:call(Node, py, eval, [<<"__import__('time').sleep(5)">>, #{}, 200]),
	{error, {'ModuleNotFoundError', "No module named 'no_such_module_opsc'"}} =
		rpc:call(Node, py, call, [no_such_module_opsc, f, []]).

%% An rpc that times out ({badrpc, timeout}) ends the remote caller; its Python request is cancelled and
%% the remote node has nothing left in flight.
rpc_timeout_frees_remote_call(Config) ->
	Node = ?config(node, Config),
	{badrpc, timeout} = rpc:call(Node, py, eval, [<<"__import__('erlang').sleep(30)">>], 300),
	ok = py_ct_helper:eventually(fun() -> rpc:call(Node, ets, info, [py_inflight, size]) =:= 0 end, 10000),
	{ok, 2} = rpc:call(Node, py, eval, [<<"1 + 1">>], 10000).

%% The docs' node status: execution mode, contexts, load, the limit.
docs_node_status(Config) ->
	Node = ?config(node, Config),
	Status = #{status => up,
		execution_mode => rpc:call(Node, py, execution_mode, []),
		contexts => rpc:call(Node, py_context_router, num_contexts, []),
		load => rpc:call(Node, py_semaphore, current, []),
		max_load => rpc:call(Node, py_semaphore, max_concurrent, [])},
	%% free_threaded where the node's ports run a free-threaded build with the GIL off (py:execution_mode/0).
	#{execution_mode := Mode, contexts := 4, load := 0, max_load := 1024} = Status,
	true = lists:member(Mode, [worker, free_threaded]).

%% erlang.send from the remote Python reaches a pid, and a registered name, on this node.
python_sends_to_origin(Config) ->
	Node = ?config(node, Config),
	{ok, true} = rpc:call(Node, py, eval, [<<"__import__('erlang').send(pid, ('hello', 42)) or True">>,
		#{pid => self()}]),
	receive {<<"hello">>, 42} -> ok after 5000 -> ct:fail(no_message) end,
	true = register(py_dist_sink, self()),
	try
		{ok, true} = rpc:call(Node, py, eval, [<<"__import__('erlang').send((name, node), 'hi') or True">>,
			#{name => py_dist_sink, node => node()}]),
		receive <<"hi">> -> ok after 5000 -> ct:fail(no_named_message) end
	after
		unregister(py_dist_sink)
	end.

%% Pids and references of this node pass through the remote Python unchanged.
pids_round_trip(Config) ->
	Node = ?config(node, Config),
	Ref = make_ref(),
	Self = self(),
	{ok, {Self, Ref}} = rpc:call(Node, py, eval, [<<"(p, r)">>, #{p => self(), r => Ref}]).

%% A function registered on the remote node is called by the remote Python; the Erlang fun runs there.
remote_callback(Config) ->
	Node = ?config(node, Config),
	ok = rpc:call(Node, py, register_function, [dist_add, fun([A, B]) -> {A + B, node()} end]),
	%% The node name is an atom, which reaches Python (and comes back) as a string.
	NodeName = atom_to_binary(Node),
	{ok, {5, NodeName}} = rpc:call(Node, py, eval, [<<"__import__('erlang').call('dist_add', 2, 3)">>]),
	ok = rpc:call(Node, py, unregister_function, [dist_add]).

%% Streams collect on the remote node.
remote_stream(Config) ->
	Node = ?config(node, Config),
	{ok, [0, 1, 4, 9, 16]} = rpc:call(Node, py, stream_eval, [<<"(x * x for x in range(5))">>]).

%% The docs' pool routing on a remote node: a pool started there, calls routed to it by name.
remote_pool(Config) ->
	Node = ?config(node, Config),
	{ok, [_, _]} = rpc:call(Node, py_context_router, start_pool, [io, 2]),
	{ok, 4.0} = rpc:call(Node, py, call, [io, math, sqrt, [16]]),
	ok = rpc:call(Node, py_context_router, stop_pool, [io]).

%% ensure_venv over rpc returns ok (the reference spec; the distributed guide's {ok, VenvPath} is the
%% docs contradicting themselves), and the remote default pool then runs in the venv. An empty
%% requirements file: no network needed.
docs_remote_ensure_venv(Config) ->
	Node = ?config(node, Config),
	Dir = string:trim(os:cmd("mktemp -d /tmp/py_dist_SUITE.XXXXXX")),
	try
		Req = filename:join(Dir, "requirements.txt"),
		ok = file:write_file(Req, <<"# no dependencies\n">>),
		Venv = list_to_binary(filename:join(Dir, "venv")),
		ok = rpc:call(Node, py, ensure_venv, [Venv, list_to_binary(Req)], 300000),
		{ok, #{<<"active">> := true, <<"venv_path">> := Venv}} = rpc:call(Node, py, venv_info, []),
		{ok, Venv} = rpc:call(Node, py, eval, [<<"__import__('sys').prefix">>]),
		ok = rpc:call(Node, py, deactivate_venv, [])
	after
		file:del_dir_r(Dir)
	end.

%% The docs' supervised pattern: rpc:call with a timeout, {badrpc, Reason} mapped to an error.
docs_supervised_remote_call(Config) ->
	Node = ?config(node, Config),
	Call = fun(M, F, A) ->
		case rpc:call(Node, py, call, [M, F, A], 30000) of
			{badrpc, Reason} -> {error, {remote_error, Reason}};
			Result -> Result
		end
	end,
	{ok, 3.0} = Call(math, sqrt, [9]),
	{error, {'ValueError', "math domain error"}} = Call(math, sqrt, [-1]).

%% Each rpc:call runs in a fresh process on the remote node, so it has a fresh process-bound
%% environment: names an rpc'd py:exec defines are not seen by the next rpc. Work that needs them runs
%% in one remote process (erpc:call with a fun, or a process spawned there).
environment_per_rpc(Config) ->
	Node = ?config(node, Config),
	ok = rpc:call(Node, py, exec, [<<"import json as dist_json">>]),
	{error, {'NameError', "name 'dist_json' is not defined"}} = rpc:call(Node, py, eval, [<<"dist_json.dumps(1)">>]),
	{ok, <<"1">>} = erpc:call(Node, fun() ->
		ok = py:exec(<<"import json as dist_json">>),
		py:eval(<<"dist_json.dumps(1)">>)
	end, 30000).

%% An object reference belongs to the process that made it: one returned by an rpc'd call is freed
%% when that rpc's process ends. Used within one remote process, it works.
refs_need_a_remote_owner(Config) ->
	Node = ?config(node, Config),
	{ok, Ref} = rpc:call(Node, py, call, [builtins, list, [[1, 2]], #{return => ref}]),
	%% The rpc's process has ended; its environment (and the object) goes when the owner sees it
	%% down and the port serves the env_drop: soon, not necessarily before the next rpc arrives.
	ok = py_ct_helper:eventually(fun() ->
		case rpc:call(Node, py, to_term, [Ref]) of
			{error, {'KeyError', _}} -> true;
			{ok, [1, 2]} -> false
		end
	end, 5000),
	{ok, [1, 2]} = erpc:call(Node, fun() ->
		{ok, R} = py:call(builtins, list, [[1, 2]], #{return => ref}),
		py:to_term(R)
	end, 30000).

%% When the node stops, rpc gives {badrpc, nodedown} and its Python processes are gone with it.
nodedown_after_stop(Config) ->
	Node = ?config(node, Config),
	OsPids = [P || #{os_pid := P} <- rpc:call(Node, py, stats, [])],
	[_, _] = OsPids,
	ok = peer:stop(?config(peer, Config)),
	{badrpc, nodedown} = rpc:call(Node, py, call, [math, sqrt, [16]]),
	ok = py_ct_helper:eventually(fun() -> not lists:any(fun py_ct_helper:os_alive/1, OsPids) end, 10000).
