%% Contexts as first-class citizens: py_context processes (explicit and default-pool), every call shape
%% with a context first, process-bound environments in a context, explicit environments, lifecycle
%% (stop, linked owner, port death) and nesting.
%%
%% Cases marked PROTOCOL.md v2 assert what PROTOCOL.md §3.1/§3.4 promise of the port (reference
%% environments, one request at a time per context); they pass once the port implements it.
-module(py_context_SUITE).
-behaviour(gen_server).
%% Also the callback module of a user's supervisor of contexts (init({sup, ...})).

-include_lib("common_test/include/ct.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1, init_per_testcase/2, end_per_testcase/2]).
-export([new_call_eval_exec/1, call_shapes_with_context/1, spawn_call_and_cast_on_context/1,
	failure_isolation/1, owngil_and_bad_mode_refused/1, explicit_contexts_spread_over_ports/1,
	stop_destroys_the_context/1, start_link_dies_with_owner/1, port_death_ends_explicit_context/1,
	default_contexts_reattach_after_restart/1, process_bound_env_in_context/1, python_actor_gen_server/1,
	ml_pipeline_main_module/1, interp_id_and_subinterp/1, context_down_errors/1, killed_context_is_down/1,
	owner_crash_ends_explicit_contexts/1, user_supervisor_restarts_context/1,
	restarted_port_gets_registry_back/1,
	nested_flag_marks_callbacks/1, nested_python_erlang_python_on_context/1,
	local_env_reference/1, local_env_freed_when_owner_exits/1, one_request_at_a_time/1]).

%% The Python actor of the process-bound environments guide.
-export([start_actor/0]).
-export([init/1, handle_call/3, handle_cast/2]).

all() ->
	[new_call_eval_exec, call_shapes_with_context, spawn_call_and_cast_on_context, failure_isolation,
	 owngil_and_bad_mode_refused, explicit_contexts_spread_over_ports, stop_destroys_the_context,
	 start_link_dies_with_owner, port_death_ends_explicit_context, default_contexts_reattach_after_restart,
	 process_bound_env_in_context, python_actor_gen_server, ml_pipeline_main_module,
	 interp_id_and_subinterp, context_down_errors, killed_context_is_down,
	 owner_crash_ends_explicit_contexts, user_supervisor_restarts_context, nested_flag_marks_callbacks,
	 nested_python_erlang_python_on_context, local_env_reference, local_env_freed_when_owner_exits,
	 one_request_at_a_time, restarted_port_gets_registry_back].

init_per_suite(Config) ->
	ok = py_ct_helper:start_app([{num_ports, 2}, {contexts_per_port, 2}]),
	Config.

end_per_suite(_Config) ->
	py_ct_helper:stop_app().


init_per_testcase(_Case, Config) ->
	case whereis(erlang_python_sup) of
		undefined -> ok = py_ct_helper:start_app([{num_ports, 2}, {contexts_per_port, 2}]);
		_ -> ok
	end,
	%% A case may have killed a port: the next one starts with both up.
	ok = py_ct_helper:eventually(fun() ->
		lists:all(fun(S) -> case py_port:info(S) of #{status := up} -> true; _ -> false end end, [1, 2])
	end, 30000),
	Config.

end_per_testcase(_Case, _Config) ->
	_ = [py_context:stop(C) || C <- py_context_sup:which_contexts()],
	ok.

%% The reference docs' examples: new/1 with and without a mode, call/5 with binaries, exec, eval.
new_call_eval_exec(_) ->
	{ok, Ctx} = py_context:new(#{}),
	{ok, Ctx2} = py_context:new(#{mode => worker}),
	true = is_pid(Ctx) andalso Ctx =/= Ctx2,
	{ok, 4.0} = py_context:call(Ctx, math, sqrt, [16], #{}),
	{ok, 4.0} = py_context:call(Ctx, math, sqrt, [16]),
	{ok, 3.0} = py_context:call(Ctx, <<"math">>, <<"sqrt">>, [9], #{}),
	{ok, <<"[1, 2]">>} = py_context:call(Ctx, json, dumps, [[1, 2]], #{}, 5000),
	{ok, <<"{\"a\": 1}">>} = py_context:call(Ctx, json, dumps, [#{a => 1}], #{sort_keys => true}, 5000),
	ok = py_context:exec(Ctx, <<"import math\nr = math.floor(2.5)">>),
	{ok, 2} = py_context:eval(Ctx, <<"r">>),
	{ok, 5} = py_context:eval(Ctx, <<"r + n">>, #{n => 3}),
	{ok, 5} = py_context:eval(Ctx, "r + n", #{n => 3}, 5000),
	{error, timeout} = py_context:eval(Ctx, <<"__import__('erlang').sleep(5)">>, #{}, 100),
	{ok, 2} = py_context:eval(Ctx, <<"r">>).

%% py:call/eval/exec with a context first run in that context, in the caller's environment there.
call_shapes_with_context(_) ->
	{ok, Ctx} = py_context:new(#{}),
	{ok, 4.0} = py:call(Ctx, math, sqrt, [16]),
	{ok, <<"[1]">>} = py:call(Ctx, json, dumps, [[1]], #{}),
	{ok, <<"{\n  \"a\": 1\n}">>} = py:call(Ctx, json, dumps, [#{a => 1}], #{indent => 2}),
	ok = py:exec(Ctx, <<"x = 40">>),
	{ok, 42} = py:eval(Ctx, <<"x + 2">>),
	{ok, 43} = py:eval(Ctx, <<"x + y">>, #{y => 3}),
	ok = py:exec(Ctx, "def f(a):\n    return a * x\n"),
	{ok, 80} = py:call(Ctx, '__main__', f, [2]),
	%% The same code through a context's thread: a context is one thread.
	{ok, T1} = py:call(Ctx, threading, get_ident, []),
	{ok, T1} = py:eval(Ctx, <<"__import__('threading').get_ident()">>),
	{ok, Ctx2} = py_context:new(#{}),
	{ok, T2} = py:call(Ctx2, threading, get_ident, []),
	true = T1 =/= T2.

%% spawn_call/4,5 and cast/4,5 with a context first.
spawn_call_and_cast_on_context(_) ->
	{ok, Ctx} = py_context:new(#{}),
	{ok, T} = py:call(Ctx, threading, get_ident, []),
	{ok, T} = py:await(py:spawn_call(Ctx, threading, get_ident, [])),
	{ok, <<"[2]">>} = py:await(py:spawn_call(Ctx, json, dumps, [[2]], #{}), 5000),
	Self = self(),
	ok = py:cast(Ctx, erlang, send, [Self, {cast, 1}]),
	ok = py:cast(Ctx, erlang, send, [Self, {cast, 2}], #{}),
	receive {<<"cast">>, 1} -> ok after 5000 -> error(no_cast_1) end,
	receive {<<"cast">>, 2} -> ok after 5000 -> error(no_cast_2) end.

%% "Failures in Ctx1 don't affect Ctx2."
failure_isolation(_) ->
	{ok, Ctx1} = py_context:new(#{}),
	{ok, Ctx2} = py_context:new(#{}),
	ok = py:exec(Ctx2, <<"v = 7">>),
	{error, {'ZeroDivisionError', _}} = py:eval(Ctx1, <<"1/0">>),
	{error, {'NameError', _}} = py:eval(Ctx1, <<"undefined_name">>),
	{ok, 7} = py:eval(Ctx2, <<"v">>),
	{ok, 2} = py:eval(Ctx1, <<"1+1">>).

%% owngil where the port does not offer it (3.11, free-threaded builds) is a clear error; an unknown
%% mode always. (Where owngil is offered, py_owngil_SUITE tests it.)
owngil_and_bad_mode_refused(_) ->
	Before = py_context_sup:which_contexts(),
	case py:subinterp_supported() of
		false ->
			{error, {mode_not_supported, owngil, _}} = py_context:new(#{mode => owngil}),
			{error, {mode_not_supported, owngil, _}} = py_context:start_link(1, owngil);
		true ->
			ok
	end,
	{error, {bad_mode, auto}} = py_context:new(#{mode => auto}),
	Before = py_context_sup:which_contexts().

%% Each new context goes to the slot with the fewest: 4 contexts on 2 ports, 2 each, ids above the
%% startup contexts.
explicit_contexts_spread_over_ports(_) ->
	Ctxs = [element(2, {ok, _} = py_context:new(#{})) || _ <- lists:seq(1, 4)],
	Places = [element(2, py_context:place(C)) || C <- Ctxs],
	[2, 2] = [length([P || P = #{slot := S} <- Places, S =:= Slot]) || Slot <- [1, 2]],
	Startup = [lists:max(tuple_to_list(maps:get(contexts, py_port:info(S)))) || S <- [1, 2]],
	true = lists:all(fun(#{slot := S, ctx := Id}) -> Id > lists:nth(S, Startup) end, Places),
	4 = length(lists:usort([{S, Id} || #{slot := S, ctx := Id} <- Places])).

%% stop/1 destroys the Python context (the port no longer knows its id) and later calls get
%% {error, {context_down, Ctx}}; destroy/1 is the same.
stop_destroys_the_context(_) ->
	{ok, Ctx} = py_context:new(#{}),
	{ok, #{slot := Slot, ctx := Id}} = py_context:place(Ctx),
	{ok, 1} = py:eval(Ctx, <<"1">>),
	ok = py_context:stop(Ctx),
	false = is_process_alive(Ctx),
	{error, {context_down, Ctx}} = py:eval(Ctx, <<"1">>),
	{error, {context_down, Ctx}} = py_context:call(Ctx, math, sqrt, [4]),
	ok = py_context:stop(Ctx),
	unknown_context = raw_eval_error(Slot, Id),
	{ok, Ctx2} = py_context:new(#{}),
	ok = py_context:destroy(Ctx2),
	{error, {context_down, Ctx2}} = py:eval(Ctx2, <<"1">>).

%% start_link/2 links the context to its caller: when the caller dies, the context is destroyed.
start_link_dies_with_owner(_) ->
	Self = self(),
	{Owner, MRef} = spawn_monitor(fun() ->
		{ok, Ctx} = py_context:start_link(1, worker),
		{ok, 4.0} = py_context:call(Ctx, math, sqrt, [16], #{}),
		Self ! {ctx, Ctx},
		receive stop -> exit(crash) end
	end),
	Ctx = receive {ctx, C} -> C after 30000 -> error(no_ctx) end,
	{ok, #{slot := Slot, ctx := Id}} = py_context:place(Ctx),
	CMRef = erlang:monitor(process, Ctx),
	Owner ! stop,
	receive {'DOWN', MRef, process, Owner, crash} -> ok after 5000 -> error(owner_alive) end,
	receive {'DOWN', CMRef, process, Ctx, crash} -> ok after 5000 -> error(context_alive) end,
	{error, {context_down, Ctx}} = py:eval(Ctx, <<"1">>),
	unknown_context = raw_eval_error(Slot, Id).

%% When the OS process dies, an explicit context's state is gone: its in-flight caller gets
%% port_exited, the process exits {shutdown, {port_exited, Reason}}, later callers context_down. The
%% context supervisor does not restart it (temporary); a pool member is (py_context_router_SUITE).
port_death_ends_explicit_context(_) ->
	{ok, Ctx} = py_context:new(#{}),
	{ok, #{slot := Slot}} = py_context:place(Ctx),
	MRef = erlang:monitor(process, Ctx),
	{error, {port_exited, #{exit_status := 3}}} = py:eval(Ctx, <<"__import__('os')._exit(3)">>),
	receive
		{'DOWN', MRef, process, Ctx, {shutdown, {port_exited, #{exit_status := 3}}}} -> ok
	after 10000 ->
		error(context_did_not_exit)
	end,
	{error, {context_down, Ctx}} = py:eval(Ctx, <<"1">>),
	false = lists:member(Ctx, py_context_sup:which_contexts()),
	ok = py_ct_helper:eventually(fun() -> maps:get(status, py_port:info(Slot)) =:= up end, 30000),
	{ok, Ctx2} = py_context:new(#{}),
	{ok, 2} = py:eval(Ctx2, <<"1+1">>).

%% A default-pool context is one of the ports' own contexts: it follows its slot into the next OS
%% process (same pid, served again, its old state gone).
default_contexts_reattach_after_restart(_) ->
	Ctx = py:context(1),
	{ok, #{slot := 1, ctx := {index, 0}, generation := 0}} = py_context:place(Ctx),
	ok = py:exec(Ctx, <<"kept = 1">>),
	Gen = py_ct_helper:generation(1),
	{error, {port_exited, _}} = py:eval(Ctx, <<"__import__('os')._exit(3)">>),
	Ctx = py:context(1),
	true = is_process_alive(Ctx),
	{ok, 2} = py:eval(Ctx, <<"1+1">>),
	true = py_ct_helper:generation(1) > Gen,
	{error, {'NameError', _}} = py:eval(Ctx, <<"kept">>).

%% The guide's example: a process's namespace in a context is its own; a process spawned on the same
%% context sets its own `counter`; a third process does not see either.
process_bound_env_in_context(_) ->
	Ctx = py:context(1),
	ok = py:exec(Ctx, <<"counter = 0">>),
	ok = py:exec(Ctx, <<"counter += 1">>),
	{ok, 1} = py:eval(Ctx, <<"counter">>),
	Self = self(),
	spawn(fun() ->
		ok = py:exec(Ctx, <<"counter = 100">>),
		Self ! {other, py:eval(Ctx, <<"counter">>)}
	end),
	{ok, 100} = receive {other, R} -> R after 10000 -> error(no_reply) end,
	{ok, 1} = py:eval(Ctx, <<"counter">>),
	spawn(fun() -> Self ! {third, py:eval(Ctx, <<"counter">>)} end),
	{error, {'NameError', _}} = receive {third, R3} -> R3 after 10000 -> error(no_reply) end,
	%% "Different Erlang processes using the same context get isolated namespaces."
	[spawn(fun() -> Self ! {x, N, py:exec(Ctx, iolist_to_binary(["x = ", integer_to_list(N)])),
		py:eval(Ctx, <<"x">>)} end) || N <- [1, 2]],
	[{ok, {ok, 1}}, {ok, {ok, 2}}] = [receive {x, N, E, V} -> {E, V} after 10000 -> error(no_x) end
		|| N <- [1, 2]].

%% The Python-actor gen_server of the guide: init/1 defines a Counter in its context; handle_call
%% increments it: 1, 2; another actor starts at 1; a restarted actor starts fresh.
python_actor_gen_server(_) ->
	{ok, A} = start_actor(),
	{ok, 1} = gen_server:call(A, increment),
	{ok, 2} = gen_server:call(A, increment),
	{ok, B} = start_actor(),
	{ok, 1} = gen_server:call(B, increment),
	ok = gen_server:stop(A),
	{ok, A2} = start_actor(),
	{ok, 1} = gen_server:call(A2, increment),
	ok = gen_server:stop(A2),
	ok = gen_server:stop(B).

start_actor() ->
	gen_server:start(?MODULE, [], []).

init({sup, Children}) ->
	{ok, {#{strategy => one_for_one, intensity => 5, period => 10}, Children}};
init([]) ->
	Ctx = py:context(),
	ok = py:exec(Ctx, <<"class Counter:\n    def __init__(self):\n        self.value = 0\n"
		"    def increment(self):\n        self.value += 1\n        return self.value\n"
		"counter = Counter()\n">>),
	{ok, #{ctx => Ctx}}.

handle_call(increment, _From, State = #{ctx := Ctx}) ->
	{reply, py:eval(Ctx, <<"counter.increment()">>), State}.

handle_cast(_, State) ->
	{noreply, State}.

%% The ML-pipeline example: functions defined by exec are called through '__main__'; `global _model`
%% persists in the process's environment.
ml_pipeline_main_module(_) ->
	Ctx = py:context(),
	ok = py:exec(Ctx, <<"_model = None\ndef load_model(path):\n    global _model\n"
		"    _model = {'path': path}\n    return True\n"
		"def predict(x):\n    return [_model['path'], x * 2]\n">>),
	{ok, true} = py:call(Ctx, '__main__', load_model, [<<"/models/m.bin">>]),
	{ok, [<<"/models/m.bin">>, 42]} = py:call(Ctx, '__main__', predict, [21]).

interp_id_and_subinterp(_) ->
	{ok, Ctx} = py_context:new(#{}),
	{ok, 0} = py_context:get_interp_id(Ctx),
	false = py_context:is_subinterp(Ctx),
	{ok, 0} = py_context:get_interp_id(py:context(1)),
	ok = py_context:stop(Ctx),
	{error, {context_down, Ctx}} = py_context:get_interp_id(Ctx).

%% A pid that is not a context, and a stopped one, give context_down in every shape.
context_down_errors(_) ->
	Dead = spawn(fun() -> ok end),
	Down = {error, {context_down, Dead}},
	Down = py:call(Dead, math, sqrt, [4]),
	Down = py:call(Dead, math, sqrt, [4], #{}),
	Down = py:eval(Dead, <<"1">>),
	Down = py:eval(Dead, <<"1">>, #{}),
	Down = py:exec(Dead, <<"x = 1">>),
	Down = py:await(py:spawn_call(Dead, math, sqrt, [4]), 5000),
	Down = py_context:call(Dead, math, sqrt, [4]),
	Down = py_context:exec(Dead, <<"x = 1">>),
	{error, {context_down, Dead}} = py_context:create_local_env(Dead).

%% A context killed outright (no terminate/2) is down for its later callers too.
killed_context_is_down(_) ->
	{ok, Ctx} = py_context:new(#{}),
	{ok, 1} = py:eval(Ctx, <<"1">>),
	MRef = erlang:monitor(process, Ctx),
	exit(Ctx, kill),
	receive {'DOWN', MRef, process, Ctx, killed} -> ok after 5000 -> error(alive) end,
	{error, {context_down, Ctx}} = py:eval(Ctx, <<"1">>),
	{error, {context_down, Ctx}} = py_context:place(Ctx).

%% When a slot's owner itself crashes, its successor counts OS processes afresh: the explicit contexts
%% of the slot end ({port_exited, #{reason := owner_down}}); the default pool's go on.
owner_crash_ends_explicit_contexts(_) ->
	{ok, Ctx} = py_context:new(#{}),
	{ok, #{slot := Slot}} = py_context:place(Ctx),
	#{owner := Owner} = py_port:info(Slot),
	MRef = erlang:monitor(process, Ctx),
	exit(Owner, kill),
	receive
		{'DOWN', MRef, process, Ctx, {shutdown, {port_exited, #{reason := owner_down}}}} -> ok
	after 10000 ->
		error(context_did_not_exit)
	end,
	ok = py_ct_helper:eventually(fun() ->
		case py_port:info(Slot) of
			#{status := up, owner := O} -> O =/= Owner;
			_ -> false
		end
	end, 30000),
	{error, {context_down, Ctx}} = py:eval(Ctx, <<"1">>),
	{ok, 2} = py:eval(py:context(Slot), <<"1+1">>).

%% py_context:start_link/2 under a user's own supervisor: when the port dies, the context exits and
%% its supervisor starts a fresh one (a new pid, a new context, none of the old state).
user_supervisor_restarts_context(_) ->
	Child = #{id => ctx, start => {py_context, start_link, [1, worker]}, restart => permanent},
	{ok, Sup} = supervisor:start_link(?MODULE, {sup, [Child]}),
	try
		[{ctx, Ctx, worker, _}] = supervisor:which_children(Sup),
		ok = py:exec(Ctx, <<"st = 1">>),
		{error, {port_exited, _}} = py:eval(Ctx, <<"__import__('os')._exit(3)">>),
		ok = py_ct_helper:eventually(fun() ->
			case supervisor:which_children(Sup) of
				[{ctx, New, worker, _}] -> is_pid(New) andalso New =/= Ctx;
				_ -> false
			end
		end, 30000),
		[{ctx, Ctx2, worker, _}] = supervisor:which_children(Sup),
		{ok, 2} = py:eval(Ctx2, <<"1+1">>),
		{error, {'NameError', _}} = py:eval(Ctx2, <<"st">>),
		{error, {context_down, Ctx}} = py:eval(Ctx, <<"1">>)
	after
		unlink(Sup),
		exit(Sup, shutdown)
	end.

%% PROTOCOL.md §3.6: a restarted port gets the path registry back
%% (py_port sends context_init after its hello), and so does a new explicit context.
restarted_port_gets_registry_back(_) ->
	Dir = <<"/tmp/erlang_python_hx1_registry_path">>,
	ok = py_import:add_path(Dir),
	Check = <<"__import__('sys').path.count(d)">>,
	{ok, 1} = py:eval(Check, #{d => Dir}),
	Ctx = py:context(1),
	{error, {port_exited, _}} = py:eval(Ctx, <<"__import__('os')._exit(3)">>),
	{ok, 1} = py:eval(Ctx, Check, #{d => Dir}),
	{ok, E} = py_context:new(#{}),
	{ok, 1} = py:eval(E, Check, #{d => Dir}),
	ok = py_import:clear_paths().

%% The nested flag (PROTOCOL.md §3.4) is set exactly while the process runs a callback of a request on
%% the same {Slot, Ctx, Generation}.
nested_flag_marks_callbacks(_) ->
	{ok, Ctx} = py_context:new(#{}),
	{ok, #{slot := Slot, ctx := Id, generation := Gen}} = py_context:place(Ctx),
	0 = py_request:nested_flag(Slot, Id, Gen),
	ok = py:register_function(ctx_flags, fun([]) ->
		[py_request:nested_flag(Slot, Id, Gen), py_request:nested_flag(Slot, Id + 1, Gen),
		 py_request:nested_flag(Slot, Id, Gen + 1)]
	end),
	{ok, [1, 0, 0]} = py:eval(Ctx, <<"erlang.call('ctx_flags')">>),
	0 = py_request:nested_flag(Slot, Id, Gen),
	%% A spawn_call from inside the callback is nested too.
	ok = py:register_function(ctx_spawned, fun([]) ->
		py:await(py:spawn_call(Ctx, '__main__', inner, []), 10000)
	end),
	ok = py:exec(Ctx, <<"def inner():\n    return 'inner'\n">>),
	{ok, {<<"ok">>, <<"inner">>}} = py:eval(Ctx, <<"erlang.call('ctx_spawned')">>).

%% Python -> Erlang -> Python on the same explicit context, 5 deep: each nested request is served on
%% the waiting one's stack.
nested_python_erlang_python_on_context(_) ->
	{ok, Ctx} = py_context:new(#{}),
	ok = py:register_function(ctx_down_one, fun([N]) ->
		{ok, V} = py:eval(Ctx, <<"erlang.call('ctx_down_one', n - 1) + 1 if n > 0 else 0">>, #{n => N}),
		V
	end),
	{ok, 5} = py:eval(Ctx, <<"erlang.call('ctx_down_one', 5)">>).

%% PROTOCOL.md v2 (reference environments). An explicit environment: its own namespace in the context,
%% usable from any process, passed to call/7, eval/5, exec/3.
local_env_reference(_) ->
	{ok, Ctx} = py_context:new(#{}),
	{ok, Env1} = py_context:create_local_env(Ctx),
	{ok, Env2} = py_context:create_local_env(Ctx),
	true = is_reference(Env1) andalso Env1 =/= Env2,
	ok = py_context:exec(Ctx, <<"x = 1">>, Env1),
	ok = py_context:exec(Ctx, <<"x = 2">>, Env2),
	{ok, 1} = py_context:eval(Ctx, <<"x">>, #{}, 5000, Env1),
	{ok, 2} = py_context:eval(Ctx, <<"x">>, #{}, 5000, Env2),
	{error, {'NameError', _}} = py:eval(Ctx, <<"x">>),
	ok = py_context:exec(Ctx, <<"def g(a):\n    return a + x\n">>, Env1),
	{ok, 11} = py_context:call(Ctx, '__main__', g, [10], #{}, 5000, Env1),
	Self = self(),
	spawn(fun() -> Self ! {shared, py_context:eval(Ctx, <<"x">>, #{}, 5000, Env2)} end),
	{ok, 2} = receive {shared, R} -> R after 10000 -> error(no_reply) end,
	Env = py:get_local_env(Ctx),
	Env = py:get_local_env(Ctx),
	ok = py_context:exec(Ctx, <<"y = 3">>, Env),
	{ok, 3} = py_context:eval(Ctx, <<"y">>, #{}, 5000, Env).

%% PROTOCOL.md v2. The environment is freed (env_drop) when the process that made it exits.
local_env_freed_when_owner_exits(_) ->
	{ok, Ctx} = py_context:new(#{}),
	{ok, #{slot := Slot}} = py_context:place(Ctx),
	Before = py_ct_helper:env_count(Slot),
	Self = self(),
	{Pid, MRef} = spawn_monitor(fun() ->
		{ok, Env} = py_context:create_local_env(Ctx),
		ok = py_context:exec(Ctx, <<"big = 1">>, Env),
		Self ! {made, Env},
		receive stop -> ok end
	end),
	_Env = receive {made, E} -> E after 10000 -> error(no_env) end,
	ok = py_ct_helper:eventually(fun() -> py_ct_helper:env_count(Slot) =:= Before + 1 end, 5000),
	Pid ! stop,
	receive {'DOWN', MRef, process, Pid, _} -> ok after 5000 -> error(no_exit) end,
	ok = py_ct_helper:eventually(fun() -> py_ct_helper:env_count(Slot) =:= Before end, 5000).

%% PROTOCOL.md v2 (§3.4). While a request on a context waits for a callback (1 s in Erlang), an
%% unrelated request on that context waits in its queue: it is answered once the first is done, not on
%% its stack (where it would take a millisecond).
one_request_at_a_time(_) ->
	{ok, Ctx} = py_context:new(#{}),
	Self = self(),
	ok = py:register_function(ctx_slow, fun([]) -> Self ! in_callback, timer:sleep(1000), slow end),
	spawn(fun() -> Self ! {first, py:eval(Ctx, <<"erlang.call('ctx_slow')">>)} end),
	receive in_callback -> ok after 10000 -> error(no_callback) end,
	spawn(fun() ->
		T0 = erlang:monotonic_time(millisecond),
		R = py:eval(Ctx, <<"2">>),
		Self ! {second, R, py_ct_helper:elapsed_ms(T0)}
	end),
	{ok, <<"slow">>} = receive {first, R1} -> R1 after 10000 -> error(no_first) end,
	{{ok, 2}, Waited} = receive {second, R2, W} -> {R2, W} after 10000 -> error(no_second) end,
	true = Waited >= 500.

%% Internal.

%% Sends an eval straight to context Id of Slot and returns the protocol_error reason (an unknown
%% context's answer).
raw_eval_error(Slot, Id) ->
	#{codec := Codec} = py_port:info(Slot),
	ReqId = py_ct_helper:raw_request(Slot, 2, Id, 0, py_codec:encode(Codec, {undefined, <<"1">>, #{}})),
	receive
		{py_frame, ReqId, 70, _, Body} ->
			{Reason, _} = py_codec:decode(Codec, Body),
			Reason;
		{py_frame, ReqId, Kind, _, Body} ->
			{unexpected, Kind, py_codec:decode(Codec, Body)}
	after 10000 ->
		error(no_answer)
	end.
