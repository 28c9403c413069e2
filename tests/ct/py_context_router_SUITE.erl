%% The context router: the default pool by index and by the caller's place, bindings, named pools,
%% the pool registry and its priority, and routing around condemned ports and across restarts.
-module(py_context_router_SUITE).

-include_lib("common_test/include/ct.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1, init_per_testcase/2, end_per_testcase/2]).
-export([router_usage_example/1, index_order/1, context_is_callers_place/1, bind_default_context/1,
	bind_explicit_context/1, start_stop_default_pool/1, named_pool_lifecycle/1, registry_priority/1,
	registered_calls_route_to_pool/1, registered_pool_not_started/1, pool_binding/1,
	pool_member_restarts_after_port_death/1, cached_place_survives_app_restart/1,
	condemned_slot_is_skipped/1, started_request_never_rerun/1, queued_work_requeued_on_successor/1,
	requeue_moves_free_caller/1, requeue_waits_for_successor/1, requeue_on_explicit_context/1,
	all_slots_condemned_waits/1, cast_leaves_condemned_slot/1]).

-define(ENV, [{num_ports, 2}, {contexts_per_port, 2}, {cancel_grace_ms, 1000}]).

all() ->
	[router_usage_example, index_order, context_is_callers_place, bind_default_context,
	 bind_explicit_context, start_stop_default_pool, named_pool_lifecycle, registry_priority,
	 registered_calls_route_to_pool, registered_pool_not_started, pool_binding,
	 pool_member_restarts_after_port_death, cached_place_survives_app_restart, condemned_slot_is_skipped,
	 started_request_never_rerun, requeue_moves_free_caller, requeue_waits_for_successor,
	 requeue_on_explicit_context, all_slots_condemned_waits, cast_leaves_condemned_slot,
	 queued_work_requeued_on_successor].

init_per_suite(Config) ->
	ok = py_ct_helper:start_app(?ENV),
	Config.

end_per_suite(_Config) ->
	py_ct_helper:stop_app().

init_per_testcase(_Case, Config) ->
	case whereis(erlang_python_sup) of
		undefined -> ok = py_ct_helper:start_app(?ENV);
		_ -> ok
	end,
	ok = py_ct_helper:eventually(fun() ->
		lists:all(fun(S) -> case py_port:info(S) of #{status := up} -> true; _ -> false end end, [1, 2])
	end, 30000),
	Config.

end_per_testcase(_Case, _Config) ->
	_ = [py_context_router:unregister_pool(M, F) || {{M, F}, _} <- py_context_router:list_pool_registrations(),
		F =/= '_'],
	_ = [py_context_router:unregister_pool(M) || {{M, '_'}, _} <- py_context_router:list_pool_registrations()],
	_ = [py_context_router:stop_pool(P) || P <- [io, cpu]],
	ok = py_context_router:unbind_context(),
	ok.

%% The usage example of the py_context_router docs, verbatim.
router_usage_example(_) ->
	{ok, Contexts} = py_context_router:start(),
	4 = length(Contexts),
	Ctx = py_context_router:get_context(),
	{ok, Result} = py_context:call(Ctx, math, sqrt, [16], #{}),
	4.0 = Result,
	Ctx2 = py_context_router:get_context(2),
	ok = py_context_router:bind_context(Ctx2),
	Ctx2 = py_context_router:get_context(),   %% Returns bound context
	ok = py_context_router:unbind_context().

%% Context N (1-based) is slot (N-1) rem Ports + 1, index (N-1) div Ports: py_router's round-robin
%% order; contexts/0 lists them in that order.
index_order(_) ->
	4 = py_context_router:num_contexts(),
	4 = py:num_contexts(),
	Contexts = [py:context(N) || N <- lists:seq(1, 4)],
	Contexts = py_context_router:contexts(),
	4 = length(lists:usort(Contexts)),
	[{1, 0}, {2, 0}, {1, 1}, {2, 1}] =
		[begin {ok, #{slot := S, ctx := {index, I}}} = py_context:place(C), {S, I} end || C <- Contexts],
	{'EXIT', {{no_context, 5}, _}} = catch py:context(5),
	%% Each is its own thread.
	Threads = [element(2, {ok, _} = py:call(C, threading, get_ident, [])) || C <- Contexts],
	4 = length(lists:usort(Threads)).

%% py:context/0 is the caller's own place: py:call/3 and py:call(py:context(), ...) share the context
%% and the environment.
context_is_callers_place(_) ->
	Self = self(),
	[spawn(fun() ->
		ok = py:exec(<<"z = 1">>),
		Ctx = py:context(),
		Ctx = py:context(),
		R1 = py:eval(Ctx, <<"z">>),
		{ok, T} = py:call(threading, get_ident, []),
		R2 = py:call(Ctx, threading, get_ident, []),
		Self ! {done, R1, R2 =:= {ok, T}}
	end) || _ <- lists:seq(1, 4)],
	[{{ok, 1}, true}] = lists:usort([receive {done, A, B} -> {A, B} after 10000 -> error(timeout) end
		|| _ <- lists:seq(1, 4)]).

%% bind_context/1 with a default-pool context: plain calls of the process run there until unbind.
bind_default_context(_) ->
	Ctx3 = py:context(3),
	ok = py_context_router:bind_context(Ctx3),
	Ctx3 = py:context(),
	ok = py:exec(<<"b = 1">>),
	{ok, 1} = py:eval(Ctx3, <<"b">>),
	{ok, T} = py:call(Ctx3, threading, get_ident, []),
	{ok, T} = py:call(threading, get_ident, []),
	true = py_router:bound(),
	ok = py_context_router:unbind_context(),
	false = py_router:bound().

%% bind_context/1 with an explicit context: py:eval/1, py:exec/1, py:call/3 go to it.
bind_explicit_context(_) ->
	{ok, E} = py_context:new(#{}),
	{ok, T} = py:call(E, threading, get_ident, []),
	ok = py_context_router:bind_context(E),
	E = py:context(),
	{ok, T} = py:call(threading, get_ident, []),
	{ok, T} = py:eval(<<"__import__('threading').get_ident()">>),
	ok = py:exec(<<"q = 2">>),
	{ok, 2} = py:eval(E, <<"q">>),
	ok = py_context_router:unbind_context(),
	{ok, T2} = py:call(threading, get_ident, []),
	true = T2 =/= T,
	ok = py_context:stop(E),
	{error, {context_down, E}} = py_context_router:bind_context(E).

%% The default pool starts with the application; start returns it; stop ends its processes (plain
%% calls go on, they never needed them) and start brings them back.
start_stop_default_pool(_) ->
	true = py:contexts_started(),
	true = py_context_router:is_started(),
	{ok, Contexts} = py:start_contexts(),
	Contexts = py_context_router:contexts(),
	{ok, Contexts} = py:start_contexts(#{contexts => 4}),
	{error, {num_contexts_fixed, 4, _}} = py_context_router:start(#{contexts => 3}),
	{error, {mode_not_supported, owngil, _}} = py:start_contexts(#{mode => owngil}),
	ok = py:stop_contexts(),
	false = py:contexts_started(),
	[] = py_context_router:contexts(),
	false = lists:any(fun erlang:is_process_alive/1, Contexts),
	{'EXIT', {{no_context, 1}, _}} = catch py:context(1),
	{error, {context_down, _}} = py:eval(hd(Contexts), <<"1">>),
	{ok, 4.0} = py:call(math, sqrt, [16]),
	ok = py:stop_contexts(),
	{ok, Contexts2} = py:start_contexts(),
	4 = length(Contexts2),
	true = py:contexts_started(),
	{ok, 2} = py:eval(py:context(1), <<"1+1">>).

%% start_pool/2,3, pool_started/1, contexts/1, num_contexts/1, get_context/1, stop_pool/1.
named_pool_lifecycle(_) ->
	false = py_context_router:pool_started(io),
	0 = py_context_router:num_contexts(io),
	{'EXIT', {{pool_not_started, io}, _}} = catch py_context_router:get_context(io),
	{ok, Pids} = py_context_router:start_pool(io, 3, worker),
	3 = length(lists:usort(Pids)),
	true = py_context_router:pool_started(io),
	3 = py_context_router:num_contexts(io),
	Pids = py_context_router:contexts(io),
	Mine = py_context_router:get_context(io),
	true = lists:member(Mine, Pids),
	Mine = py_context_router:get_context(io),
	{ok, 4.0} = py:call(Mine, math, sqrt, [16]),
	{error, {already_started, io}} = py_context_router:start_pool(io, 2),
	case py:subinterp_supported() of
		false -> {error, {mode_not_supported, owngil, _}} = py_context_router:start_pool(cpu, 2, owngil);
		true -> {error, {bad_mode, auto}} = py_context_router:start_pool(cpu, 2, auto)
	end,
	false = py_context_router:pool_started(cpu),
	{ok, Cpu} = py_context_router:start_pool(cpu, 2),
	2 = length(Cpu),
	[] = [P || P <- Cpu, lists:member(P, py_context_sup:which_contexts())],
	ok = py_context_router:stop_pool(io),
	false = py_context_router:pool_started(io),
	[] = py_context_router:contexts(io),
	false = lists:any(fun erlang:is_process_alive/1, Pids),
	{ok, Again} = py_context_router:start_pool(io, 2),
	2 = length(Again),
	ok = py_context_router:stop_pool(io),
	ok = py_context_router:stop_pool(cpu).

%% The docs' priority example: {M, F} beats {M, '_'} beats default.
registry_priority(_) ->
	ok = py_context_router:init_pool_registry(),
	ok = py_context_router:init_pool_registry(),
	default = py_context_router:lookup_pool(math, sqrt),
	ok = py:register_pool(io, json),
	ok = py:register_pool(default, {json, dumps}),
	io = py_context_router:lookup_pool(json, loads),
	default = py_context_router:lookup_pool(json, dumps),
	default = py_context_router:lookup_pool(math, sqrt),
	ok = py_context_router:register_pool(io, requests),
	ok = py_context_router:register_pool(io, aiohttp, get),
	io = py_context_router:lookup_pool(aiohttp, get),
	default = py_context_router:lookup_pool(aiohttp, post),
	[{{aiohttp, get}, io}, {{json, '_'}, io}, {{json, dumps}, default}, {{requests, '_'}, io}] =
		py_context_router:list_pool_registrations(),
	ok = py:unregister_pool({json, dumps}),
	io = py_context_router:lookup_pool(json, dumps),
	ok = py:unregister_pool(json),
	default = py_context_router:lookup_pool(json, dumps),
	ok = py_context_router:unregister_pool(aiohttp, get),
	ok = py_context_router:unregister_pool(requests),
	[] = py_context_router:list_pool_registrations().

%% After register_pool, py:call/3,4,5 and py:spawn_call of the module run on the pool's context (the
%% caller's member); py:call(io, ...) and py:call(default, ...) name the pool; unregistering returns
%% the module to the default pool.
registered_calls_route_to_pool(_) ->
	{ok, _} = py_context_router:start_pool(io, 2),
	IoCtx = py_context_router:get_context(io),
	{ok, IoThread} = py_context:call(IoCtx, threading, get_ident, []),
	{ok, DefaultThread} = py:call(py:context(), threading, get_ident, []),
	true = IoThread =/= DefaultThread,
	ok = py:register_pool(io, threading),
	{ok, IoThread} = py:call(threading, get_ident, []),
	{ok, IoThread} = py:call(threading, get_ident, [], #{}),
	{ok, IoThread} = py:call(threading, get_ident, [], #{}, 5000),
	{ok, IoThread} = py:await(py:spawn_call(threading, get_ident, [])),
	{ok, IoThread} = py:call(io, threading, get_ident, []),
	{ok, <<"[1]">>} = py:call(io, json, dumps, [[1]]),
	{ok, <<"{\n \"a\": 1\n}">>} = py:call(io, json, dumps, [#{a => 1}], #{indent => 1}),
	{ok, 4.0} = py:call(default, math, sqrt, [16]),
	{ok, DefaultThread} = py:call(default, threading, get_ident, []),
	%% Only the registered module moves.
	{ok, 4.0} = py:call(math, sqrt, [16]),
	ok = py:unregister_pool(threading),
	{ok, DefaultThread} = py:call(threading, get_ident, []).

%% A call routed to a pool that is not running is a clear error.
registered_pool_not_started(_) ->
	ok = py:register_pool(nopool, {os, getpid}),
	{error, {pool_not_started, nopool}} = py:call(os, getpid, []),
	{error, {pool_not_started, nopool}} = py:call(nopool, os, getpid, []),
	{error, {pool_not_started, nopool}} = py:await(py:spawn_call(os, getpid, [])),
	ok = py:unregister_pool({os, getpid}),
	{ok, _} = py:call(os, getpid, []).

%% bind_context/2 binds a pool's context for the process; unbind_context/1 ends it.
pool_binding(_) ->
	{ok, [P1, P2]} = py_context_router:start_pool(io, 2),
	Other = case py_context_router:get_context(io) of P1 -> P2; P2 -> P1 end,
	ok = py_context_router:bind_context(io, Other),
	Other = py_context_router:get_context(io),
	ok = py:register_pool(io, threading),
	{ok, T} = py:call(Other, threading, get_ident, []),
	{ok, T} = py:call(threading, get_ident, []),
	ok = py_context_router:unbind_context(io),
	true = py_context_router:get_context(io) =/= Other.

%% A member whose port died is replaced: the pool keeps its size, the new member is served.
pool_member_restarts_after_port_death(_) ->
	{ok, [M1, M2]} = py_context_router:start_pool(io, 2),
	MRef = erlang:monitor(process, M1),
	{error, {port_exited, _}} = py:eval(M1, <<"__import__('os')._exit(3)">>),
	receive {'DOWN', MRef, process, M1, {shutdown, {port_exited, _}}} -> ok after 10000 -> error(no_exit) end,
	ok = py_ct_helper:eventually(fun() ->
		py_context_router:pool_started(io) andalso not lists:member(M1, py_context_router:contexts(io))
	end, 30000),
	[New] = py_context_router:contexts(io) -- [M2],
	{ok, 2} = py:eval(New, <<"1+1">>).

%% A place cached by a process under one layout stays usable after an application restart with
%% another: it is checked against the current layout and replaced.
cached_place_survives_app_restart(_) ->
	{ok, 2} = py:eval(<<"1+1">>),
	%% The place a long-lived process got from a 2 x 2 layout.
	_ = put(py_router_place, {2, 1}),
	{2, 1} = py_router:pick(self()),
	ok = py_ct_helper:start_app([{num_ports, 1}, {contexts_per_port, 1}]),
	{ok, 2} = py:eval(<<"1+1">>),
	{1, 0} = py_router:pick(self()),
	ok = py_ct_helper:start_app(?ENV).

%% A condemned slot gets no new work at once: a process that did not choose its place moves to
%% another slot; a bound one waits for the slot's next OS process (here: until its timeout); an
%% explicit context there is gone. (The slot's publication is faked, the owner is untouched.)
condemned_slot_is_skipped(_) ->
	{ok, E} = py_context:new(#{}),
	{ok, #{slot := ESlot}} = py_context:place(E),
	Info = py_port:info(ESlot),
	Self = self(),
	Free = spawn(fun() ->
		_ = put(py_router_place, {ESlot, 0}),
		receive go -> ok end,
		R = py:eval(<<"1+1">>, #{}, 5000),
		Self ! {free, R, py_router:pick(self())}
	end),
	Bound = spawn(fun() ->
		ok = py_router:bind({ESlot, 0}),
		receive go -> ok end,
		Self ! {bound, py:eval(<<"1+1">>, #{}, 300)}
	end),
	ok = persistent_term:put({py_port, ESlot}, Info#{status => condemned}),
	try
		Free ! go,
		Bound ! go,
		{ok, 2} = receive {free, R, _} -> R after 10000 -> error(no_free) end,
		{error, timeout} = receive {bound, B} -> B after 10000 -> error(no_bound) end,
		{error, {context_down, E}} = py:eval(E, <<"1">>)
	after
		ok = persistent_term:put({py_port, ESlot}, Info)
	end,
	{ok, 1} = py:eval(E, <<"1">>).

%% With every slot condemned a free caller has nowhere to move: it waits (one turn of the ring, then
%% the next generation) and its deadline ends the wait.
all_slots_condemned_waits(_) ->
	Infos = [py_port:info(S) || S <- [1, 2]],
	Self = self(),
	try
		_ = [persistent_term:put({py_port, S}, I#{status => condemned}) || I = #{slot := S} <- Infos],
		spawn(fun() ->
			_ = put(py_router_place, {1, 0}),
			T0 = erlang:monotonic_time(millisecond),
			Self ! {done, py:eval(<<"1">>, #{}, 300), py_ct_helper:elapsed_ms(T0)}
		end),
		{{error, timeout}, Ms} = receive {done, R, T} -> {R, T} after 10000 -> error(no_answer) end,
		true = Ms >= 250
	after
		_ = [persistent_term:put({py_port, S}, I) || I = #{slot := S} <- Infos]
	end.

%% A cast of a free caller whose slot is condemned goes to another slot.
cast_leaves_condemned_slot(_) ->
	Info = py_port:info(1),
	Self = self(),
	try
		ok = persistent_term:put({py_port, 1}, Info#{status => condemned}),
		spawn(fun() ->
			_ = put(py_router_place, {1, 0}),
			ok = py:cast(erlang, send, [Self, <<"cast">>]),
			Self ! {place, py_router:pick(self())}
		end),
		receive <<"cast">> -> ok after 10000 -> error(no_cast) end,
		{2, _} = receive {place, P} -> P after 10000 -> error(no_place) end
	after
		ok = persistent_term:put({py_port, 1}, Info)
	end.

%% A request Python started is never run twice: killed with its port (a cancel grace expired on the
%% same port), it fails with port_exited, and its side effect happened once.
started_request_never_rerun(_) ->
	Self = self(),
	Gen = py_ct_helper:generation(1),
	Runner = spawn(fun() ->
		ok = py_router:bind({1, 1}),
		Self ! {runner, py:eval(<<"(erlang.send(p, 'ran'), __import__('time').sleep(30))">>, #{p => Self}, 20000)}
	end),
	receive <<"ran">> -> ok after 10000 -> error(not_started) end,
	{error, timeout} = py_ct_helper:on(1, 0, fun() -> py:call(time, sleep, [30], #{}, 100) end),
	{error, {port_exited, #{reason := cancel_grace_expired}}} =
		receive {runner, R} -> R after 20000 -> error(no_runner) end,
	ok = py_ct_helper:eventually(fun() -> maps:get(generation, py_port:info(1), 0) > Gen end, 30000),
	receive <<"ran">> -> error(ran_twice) after 500 -> ok end,
	_ = Runner.

%% NEEDS-PORT-V2 (§3.7). Work queued behind a request that ignores its cancel is not lost when the
%% port is killed: the port hands it back, and it runs on the successor (a bound caller) or on another
%% port (a caller that did not choose its place), within its deadline.
queued_work_requeued_on_successor(_) ->
	Self = self(),
	Gen = py_ct_helper:generation(1),
	{error, timeout} = py_ct_helper:on(1, 0, fun() -> py:call(time, sleep, [30], #{}, 100) end),
	Bound = spawn(fun() ->
		ok = py_router:bind({1, 0}),
		R = py:eval(<<"2">>, #{}, 20000),
		Self ! {bound, R, py_ct_helper:generation(1)}
	end),
	Free = spawn(fun() ->
		_ = put(py_router_place, {1, 0}),
		R = py:eval(<<"3">>, #{}, 20000),
		Self ! {free, R, py_router:pick(self())}
	end),
	{ok, 2} = receive {bound, B, G1} when G1 > Gen -> B after 20000 -> error(no_bound) end,
	{ok, 3} = receive {free, F, _} -> F after 20000 -> error(no_free) end,
	_ = {Bound, Free}.

%% The requeue cases below play the owner's part: they take a caller's py_inflight entry, as the owner
%% does for a final frame, and hand it a `requeue' frame (PROTOCOL.md §3.7), so the caller's side is
%% tested against any port. (The original request still runs; its answer finds no entry.)

%% A requeued request of a caller that did not choose its place, whose slot is condemned, is sent
%% again on another slot.
requeue_moves_free_caller(_) ->
	Info = py_port:info(1),
	Self = self(),
	Caller = spawn(fun() ->
		_ = put(py_router_place, {1, 0}),
		R = py:eval(<<"__import__('time').sleep(0.3) or 7">>, #{}, 10000),
		Self ! {done, R, py_router:pick(self())}
	end),
	try
		Id = inflight_of(Caller),
		ok = persistent_term:put({py_port, 1}, Info#{status => condemned}),
		ok = hand_back(Id, Caller, Info),
		%% The slot stays condemned until the caller is done.
		{{ok, 7}, {2, _}} = receive {done, R, P} -> {R, P} after 10000 -> error(no_answer) end
	after
		ok = persistent_term:put({py_port, 1}, Info)
	end.

%% A bound caller's requeued request waits for the slot's next OS process and runs there, within its
%% deadline.
requeue_waits_for_successor(_) ->
	Info = #{generation := Gen, os_pid := OsPid} = py_port:info(1),
	Self = self(),
	Caller = spawn(fun() ->
		ok = py_router:bind({1, 0}),
		R = py:eval(<<"__import__('time').sleep(0.3) or 8">>, #{}, 20000),
		Self ! {done, R, py_ct_helper:generation(1)}
	end),
	ok = hand_back(inflight_of(Caller), Caller, Info),
	%% Still the same OS process: the caller waits for the next one.
	receive {done, Early, _} -> error({answered_on_old_port, Early}) after 600 -> ok end,
	_ = os:cmd("kill -9 " ++ integer_to_list(OsPid)),
	{{ok, 8}, G} = receive {done, R, G0} -> {R, G0} after 20000 -> error(no_answer) end,
	true = G > Gen.

%% A requeued request on an explicit context (whose state dies with its port) is context_down.
requeue_on_explicit_context(_) ->
	{ok, E} = py_context:new(#{}),
	{ok, #{slot := Slot}} = py_context:place(E),
	Self = self(),
	Caller = spawn(fun() -> Self ! {done, py:eval(E, <<"__import__('time').sleep(0.3) or 9">>)} end),
	ok = hand_back(inflight_of(Caller), Caller, py_port:info(Slot)),
	{error, {context_down, E}} = receive {done, R} -> R after 10000 -> error(no_answer) end.

%% The id of Pid's request in flight, once it has one.
inflight_of(Pid) ->
	ok = py_ct_helper:eventually(fun() ->
		ets:select(py_inflight, [{{'_', Pid, '_'}, [], [true]}]) =/= []
	end, 10000),
	[Id] = ets:select(py_inflight, [{{'$1', Pid, '_'}, [], ['$1']}]),
	Id.

hand_back(Id, Pid, #{codec := Codec}) ->
	[_] = ets:take(py_inflight, Id),
	Pid ! {py_frame, Id, 75, 0, iolist_to_binary(py_codec:encode(Codec, []))},
	ok.
