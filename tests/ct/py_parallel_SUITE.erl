%% py:parallel/1: results in order with errors in place, the calls really running at the same time
%% on different contexts and ports, at most one per context, and the workers stopping with the caller.
-module(py_parallel_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1, init_per_testcase/2, end_per_testcase/2]).
-export([docs_example/1, errors_in_place/1, empty_list/1, bad_call_spec/1, more_calls_than_contexts/1,
	calls_run_at_once/1, spread_over_ports/1, at_most_one_call_per_context/1, calls_hold_semaphore_slots/1,
	workers_stop_with_caller/1, no_messages_left_behind/1]).

-define(PORTS, 2).
-define(PER_PORT, 2).
-define(CONTEXTS, (?PORTS * ?PER_PORT)).

all() ->
	[docs_example, errors_in_place, empty_list, bad_call_spec, more_calls_than_contexts, calls_run_at_once,
	 spread_over_ports, at_most_one_call_per_context, calls_hold_semaphore_slots, workers_stop_with_caller,
	 no_messages_left_behind].

init_per_suite(Config) ->
	ok = py_ct_helper:start_app([{num_ports, ?PORTS}, {contexts_per_port, ?PER_PORT}]),
	Config.

end_per_suite(_Config) ->
	py_ct_helper:stop_app().

init_per_testcase(_Case, Config) ->
	Config.

end_per_testcase(_Case, _Config) ->
	ok = py_semaphore:set_max_concurrent(py_semaphore:default_max()),
	ok.

%% The docs' example: one {ok, Value} per call, in order.
docs_example(_) ->
	{ok, [{ok, 4.0}, {ok, 5.0}, {ok, 6.0}]} = py:parallel([{math, sqrt, [16]}, {math, sqrt, [25]}, {math, sqrt, [36]}]).

%% A failing call gives its error in its place; the others are unaffected.
errors_in_place(_) ->
	{ok, [{error, {'ValueError', "math domain error"}}, {ok, 3},
		{error, {'ModuleNotFoundError', "No module named 'no_such_module_hx2'"}}, {ok, <<"ab">>}]} =
		py:parallel([{math, sqrt, [-1]}, {operator, add, [1, 2]}, {no_such_module_hx2, f, []},
			{"operator", <<"concat">>, [<<"a">>, <<"b">>]}]).

empty_list(_) ->
	{ok, []} = py:parallel([]).

%% A malformed entry is refused before anything runs.
bad_call_spec(_) ->
	{'EXIT', {badarg, _}} = (catch py:parallel([{math, sqrt, [4]}, {math, sqrt, not_a_list}])),
	{'EXIT', {badarg, _}} = (catch py:parallel([nope])),
	ok.

%% More calls than contexts: every one runs, results in order.
more_calls_than_contexts(_) ->
	N = 5 * ?CONTEXTS + 3,
	Expected = [{ok, I * 2} || I <- lists:seq(1, N)],
	{ok, Expected} = py:parallel([{operator, mul, [I, 2]} || I <- lists:seq(1, N)]).

%% As many calls as contexts all run at the same time: each waits (in an Erlang callback) until all
%% of them have arrived, which would time out if any two ran one after the other.
calls_run_at_once(_) ->
	Barrier = barrier(?CONTEXTS),
	ok = py:register_function(hx2_barrier, fun([]) -> await_barrier(Barrier) end),
	Calls = [{builtins, eval, [<<"__import__('erlang').call('hx2_barrier')">>, #{}]} || _ <- lists:seq(1, ?CONTEXTS)],
	Expected = [{ok, true} || _ <- Calls],
	{ok, Expected} = py:parallel(Calls).

%% Calls at the same time land on every port (separate OS processes, so truly parallel Python).
spread_over_ports(_) ->
	Barrier = barrier(?CONTEXTS),
	ok = py:register_function(hx2_barrier2, fun([]) -> await_barrier(Barrier) end),
	Code = <<"(__import__('erlang').call('hx2_barrier2'), __import__('os').getpid())[1]">>,
	{ok, Results} = py:parallel([{builtins, eval, [Code, #{}]} || _ <- lists:seq(1, ?CONTEXTS)]),
	Pids = lists:usort([P || {ok, P} <- Results]),
	?CONTEXTS = length(Results),
	Ports = lists:usort([py_ct_helper:os_pid(S) || S <- lists:seq(1, ?PORTS)]),
	Ports = Pids.

%% Never more calls running than contexts, even with many more calls; and all contexts are used.
at_most_one_call_per_context(_) ->
	Counter = spawn_link(fun() -> counter(0, 0) end),
	ok = py:register_function(hx2_enter, fun([]) ->
		Counter ! {enter, self()},
		timer:sleep(30),
		Counter ! leave,
		true
	end),
	N = 4 * ?CONTEXTS,
	{ok, Results} = py:parallel([{builtins, eval, [<<"__import__('erlang').call('hx2_enter')">>, #{}]}
		|| _ <- lists:seq(1, N)]),
	N = length([ok || {ok, true} <- Results]),
	Counter ! {max, self()},
	Max = receive {max, M} -> M after 5000 -> error(no_counter) end,
	?assert(Max =< ?CONTEXTS, Max),
	?assert(Max >= 2, Max).

%% Each call holds a semaphore slot: with none free, every call reports the overload.
calls_hold_semaphore_slots(_) ->
	ok = py_semaphore:set_max_concurrent(1),
	Self = self(),
	{Holder, MRef} = spawn_monitor(fun() ->
		ok = py_semaphore:acquire(0),
		Self ! holding,
		receive release -> ok = py_semaphore:release() after 10000 -> ok end
	end),
	receive holding -> ok after 5000 -> error(no_hold) end,
	{ok, [{error, {overloaded, 1, 1}}, {error, {overloaded, 1, 1}}]} =
		py:parallel([{math, sqrt, [4]}, {math, sqrt, [9]}]),
	Holder ! release,
	receive {'DOWN', MRef, process, Holder, normal} -> ok after 5000 -> error(holder_stuck) end,
	ok = py_semaphore:set_max_concurrent(2),
	{ok, [{ok, 2.0}, {ok, 3.0}]} = py:parallel([{math, sqrt, [4]}, {math, sqrt, [9]}]),
	0 = py_semaphore:current().

%% When the caller dies, the workers finish the calls they are in and take no new one.
workers_stop_with_caller(_) ->
	Self = self(),
	ok = py:register_function(hx2_gate, fun([]) ->
		Self ! {arrived, self()},
		receive go -> true after 10000 -> false end
	end),
	{Caller, MRef} = spawn_monitor(fun() ->
		py:parallel([{builtins, eval, [<<"__import__('erlang').call('hx2_gate')">>, #{}]}
			|| _ <- lists:seq(1, 3 * ?CONTEXTS)])
	end),
	Workers = [receive {arrived, W} -> W after 10000 -> error(too_few_arrived) end
		|| _ <- lists:seq(1, ?CONTEXTS)],
	exit(Caller, kill),
	receive {'DOWN', MRef, process, Caller, killed} -> ok after 5000 -> error(not_killed) end,
	_ = [W ! go || W <- Workers],
	receive {arrived, Extra} -> error({call_started_after_caller_died, Extra}) after 1000 -> ok end,
	ok = py_ct_helper:eventually(fun() -> not lists:any(fun is_process_alive/1, Workers) end, 5000),
	0 = py_semaphore:current().

%% The caller's mailbox has nothing from the workers afterwards.
no_messages_left_behind(_) ->
	{ok, _} = py:parallel([{math, sqrt, [I]} || I <- lists:seq(1, 10)]),
	timer:sleep(100),
	{messages, []} = process_info(self(), messages).

%% Internal.

%% A barrier for N processes: each one's await returns true once all N are waiting.
barrier(N) ->
	spawn_link(fun() -> barrier_loop(N, []) end).

barrier_loop(0, Waiting) ->
	_ = [P ! {go, self()} || P <- Waiting],
	ok;
barrier_loop(N, Waiting) ->
	receive {arrive, P} -> barrier_loop(N - 1, [P | Waiting]) after 20000 -> ok end.

await_barrier(Barrier) ->
	Barrier ! {arrive, self()},
	receive {go, Barrier} -> true after 10000 -> false end.

counter(Now, Max) ->
	receive
		{enter, _} -> counter(Now + 1, max(Max, Now + 1));
		leave -> counter(Now - 1, Max);
		{max, From} -> From ! {max, Max}
	after 30000 ->
		ok
	end.
