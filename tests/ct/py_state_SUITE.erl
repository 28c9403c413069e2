%% Shared state (py_state, erlang.state_*), SharedDict, and process-bound environments.
-module(py_state_SUITE).

-include_lib("common_test/include/ct.hrl").

-export([env_dropped_while_in_use/1, dead_caller_requests_cancelled/1]).
-export([all/0, init_per_suite/1, end_per_suite/1, init_per_testcase/2]).
-export([docs_example/1, py_api_delegates/1, fetch_missing/1, erlang_store_python_get/1,
	python_set_erlang_fetch/1, python_get_missing_is_none/1, python_delete_and_keys/1,
	python_counters/1, state_survives_owner_crash/1, concurrent_increments/1,
	shared_dict_erlang/1, shared_dict_python/1, shared_dict_destroy/1, shared_dict_owner_exit/1,
	env_isolated_between_processes/1, env_persists_across_calls/1, env_freed_on_exit/1,
	env_dropped_for_killed_process/1]).

all() ->
	[docs_example, py_api_delegates, fetch_missing, erlang_store_python_get, python_set_erlang_fetch,
	 python_get_missing_is_none, python_delete_and_keys, python_counters, state_survives_owner_crash,
	 concurrent_increments, shared_dict_erlang, shared_dict_python, shared_dict_destroy,
	 shared_dict_owner_exit, env_isolated_between_processes, env_persists_across_calls,
	 env_freed_on_exit, env_dropped_for_killed_process,
	 env_dropped_while_in_use, dead_caller_requests_cancelled].

init_per_suite(Config) ->
	ok = py_ct_helper:start_app([{num_ports, 2}, {contexts_per_port, 2}]),
	Config.

end_per_suite(_Config) ->
	py_ct_helper:stop_app().

init_per_testcase(_Case, Config) ->
	ok = py:state_clear(),
	Config.

%% The py_state examples of the docs.
docs_example(_) ->
	ok = py_state:store(<<"my_key">>, #{data => [1, 2, 3]}),
	{ok, #{data := [1, 2, 3]}} = py_state:fetch(<<"my_key">>),
	1 = py_state:incr(<<"counter">>),
	11 = py_state:incr(<<"counter">>, 10),
	10 = py_state:decr(<<"counter">>),
	5 = py_state:decr(<<"counter">>, 5).

%% py:state_* are the same store.
py_api_delegates(_) ->
	ok = py:state_store(<<"k">>, #{value => 42}),
	{ok, #{value := 42}} = py:state_fetch(<<"k">>),
	1 = py:state_incr(<<"n">>),
	11 = py:state_incr(<<"n">>, 10),
	10 = py:state_decr(<<"n">>),
	8 = py:state_decr(<<"n">>, 2),
	[<<"k">>, <<"n">>] = lists:sort(py:state_keys()),
	ok = py:state_remove(<<"k">>),
	{error, not_found} = py:state_fetch(<<"k">>),
	ok = py:state_clear(),
	[] = py:state_keys().

%% A missing key is {error, not_found}.
fetch_missing(_) ->
	{error, not_found} = py:state_fetch(<<"never_stored">>).

%% A value stored from Erlang is read by Python's state_get (atom keys become str).
erlang_store_python_get(_) ->
	ok = py:state_store(<<"config">>, #{api_key => <<"secret">>, retries => 3}),
	{ok, <<"secret">>} = py:eval(<<"from erlang import state_get\nstate_get('config')['api_key']">>),
	{ok, 3} = py:eval(<<"erlang.state_get('config')['retries']">>).

%% A value set from Python is fetched from Erlang under the binary key.
python_set_erlang_fetch(_) ->
	{ok, none} = py:eval(<<"erlang.state_set('my_key', {'data': [1, 2, 3]})">>),
	{ok, #{<<"data">> := [1, 2, 3]}} = py:state_fetch(<<"my_key">>),
	{ok, {1, 2}} = py:eval(<<"erlang.state_set('t', (1, 2)) or erlang.state_get('t')">>),
	{ok, none} = py:eval(<<"erlang.state_set('none_value', None) or erlang.state_get('none_value')">>),
	{ok, none} = py:state_fetch(<<"none_value">>).

%% state_get of a missing key is None.
python_get_missing_is_none(_) ->
	{ok, none} = py:eval(<<"erlang.state_get('missing_key')">>).

%% state_delete and state_keys from Python.
python_delete_and_keys(_) ->
	ok = py:state_store(<<"a">>, 1),
	ok = py:state_store(<<"b">>, 2),
	{ok, [<<"a">>, <<"b">>]} = py:eval(<<"sorted(erlang.state_keys())">>),
	{ok, none} = py:eval(<<"erlang.state_delete('a')">>),
	{error, not_found} = py:state_fetch(<<"a">>),
	{ok, none} = py:eval(<<"erlang.state_delete('never_there')">>),
	[<<"b">>] = py:state_keys().

%% The docs' Python counter example: 1, 11, 10; shared with Erlang's counters.
python_counters(_) ->
	{ok, [1, 11, 10, 5]} = py:eval(<<"from erlang import state_incr, state_decr\n"
		"[state_incr('requests'), state_incr('requests', 10), state_decr('requests'), state_decr('requests', 5)]">>),
	6 = py:state_incr(<<"requests">>),
	{ok, 6} = py:eval(<<"erlang.state_get('requests')">>).

%% The table belongs to the supervisor: killing a port owner keeps the state.
state_survives_owner_crash(_) ->
	ok = py:state_store(<<"durable">>, 1),
	#{owner := Owner} = py_port:info(1),
	MRef = erlang:monitor(process, Owner),
	exit(Owner, kill),
	receive {'DOWN', MRef, process, Owner, _} -> ok end,
	{ok, 1} = py:state_fetch(<<"durable">>),
	py_ct_helper:eventually(fun() ->
		case py_port:info(1) of
			#{status := up, owner := New} -> New =/= Owner;
			_ -> false
		end
	end, 30000),
	{ok, 1} = py_ct_helper:on(1, 0, fun() -> py:eval(<<"erlang.state_get('durable')">>) end).

%% 100 processes x 1000 increments, half from Erlang, half from Python loops: none lost.
concurrent_increments(_) ->
	Self = self(),
	Erl = [spawn_link(fun() ->
		_ = [py:state_incr(<<"ctr">>) || _ <- lists:seq(1, 1000)],
		Self ! {self(), done}
	end) || _ <- lists:seq(1, 50)],
	Py = [spawn_link(fun() ->
		{ok, none} = py:eval(<<"for _ in range(1000):\n    erlang.state_incr('ctr')\n">>, #{}, 300000),
		Self ! {self(), done}
	end) || _ <- lists:seq(1, 50)],
	_ = [receive {P, done} -> ok after 300000 -> error(timeout) end || P <- Erl ++ Py],
	{ok, 100000} = py:state_fetch(<<"ctr">>).

%% The SharedDict example of the docs, from Erlang.
shared_dict_erlang(_) ->
	{ok, SD} = py:shared_dict_new(),
	ok = py:shared_dict_set(SD, <<"config">>, #{host => <<"localhost">>, port => 8080}),
	%% the docs' round trip: stored as Python would give it back, so atom keys come back as binaries
	#{<<"host">> := <<"localhost">>, <<"port">> := 8080} = py:shared_dict_get(SD, <<"config">>),
	ok = py:shared_dict_set(SD, <<"shape">>, {ok, [nil, {bytes, <<1>>}, 1 bsl 70]}),
	{<<"ok">>, [none, <<1>>, "1180591620717411303424"]} = py:shared_dict_get(SD, <<"shape">>),
	ok = py:shared_dict_del(SD, <<"shape">>),
	undefined = py:shared_dict_get(SD, <<"missing">>),
	default_value = py:shared_dict_get(SD, <<"missing">>, default_value),
	[<<"config">>] = py:shared_dict_keys(SD),
	ok = py:shared_dict_del(SD, <<"config">>),
	ok = py:shared_dict_del(SD, <<"config">>),
	[] = py:shared_dict_keys(SD),
	ok = py:shared_dict_destroy(SD).

%% Python's SharedDict reads what Erlang set and writes what Erlang reads.
shared_dict_python(_) ->
	{ok, SD} = py:shared_dict_new(),
	ok = py:shared_dict_set(SD, <<"db">>, #{host => <<"localhost">>, port => 5432}),
	ok = py:exec(<<"from erlang import SharedDict\n"
		"def process_data(h):\n    sd = SharedDict(h)\n    cfg = sd['db']\n"
		"    sd['results'] = {'rows': 1000, 'host': cfg.get('host')}\n"
		"    missing = sd.get('nope', 'dflt')\n"
		"    try:\n        sd['nope']\n        raised = False\n    except KeyError:\n        raised = True\n"
		"    return ('db' in sd, 'nope' in sd, missing, raised, sorted(sd.keys()))\n">>),
	{ok, {true, false, <<"dflt">>, true, [<<"db">>, <<"results">>]}} =
		py:eval(<<"process_data(handle)">>, #{<<"handle">> => SD}),
	#{<<"rows">> := 1000, <<"host">> := <<"localhost">>} = py:shared_dict_get(SD, <<"results">>),
	{ok, <<"gone">>} = py:eval(<<"sd = erlang.SharedDict(h)\ndel sd['results']\n"
		"try:\n    del sd['results']\n    r = 'twice'\nexcept KeyError:\n    r = 'gone'\nr">>, #{h => SD}),
	undefined = py:shared_dict_get(SD, <<"results">>).

%% After destroy (from either side) every operation fails; destroy is idempotent.
shared_dict_destroy(_) ->
	{ok, SD} = py:shared_dict_new(),
	ok = py:shared_dict_set(SD, <<"k">>, 1),
	ok = py:shared_dict_destroy(SD),
	ok = py:shared_dict_destroy(SD),
	{'EXIT', {badarg, _}} = (catch py:shared_dict_get(SD, <<"k">>)),
	{'EXIT', {badarg, _}} = (catch py:shared_dict_set(SD, <<"k">>, 2)),
	{error, {'ErlangError', _}} = py:eval(<<"erlang.SharedDict(h)['k']">>, #{h => SD}),
	{ok, SD2} = py:shared_dict_new(),
	{ok, none} = py:eval(<<"erlang.SharedDict(h).destroy()">>, #{h => SD2}),
	{'EXIT', {badarg, _}} = (catch py:shared_dict_keys(SD2)),
	ok.

%% A SharedDict dies with the process that created it.
shared_dict_owner_exit(_) ->
	Self = self(),
	{Pid, MRef} = spawn_monitor(fun() ->
		{ok, SD} = py:shared_dict_new(),
		ok = py:shared_dict_set(SD, <<"k">>, 1),
		Self ! {sd, SD}
	end),
	SD = receive {sd, S} -> S end,
	receive {'DOWN', MRef, process, Pid, normal} -> ok end,
	py_ct_helper:eventually(fun() ->
		case catch py:shared_dict_get(SD, <<"k">>) of
			{'EXIT', {badarg, _}} -> true;
			_ -> false
		end
	end, 5000),
	[] = ets:select(py_shared_dicts, [{{{k, SD, '_'}, '_'}, [], [true]}]).

%% x set in one process is invisible to another process on the same context.
env_isolated_between_processes(_) ->
	ok = py_ct_helper:on(1, 0, fun() ->
		ok = py:exec(<<"counter = 0">>),
		ok = py:exec(<<"counter += 1">>),
		{ok, 1} = py:eval(<<"counter">>),
		ok
	end),
	{error, {'NameError', _}} = py_ct_helper:on(1, 0, fun() -> py:eval(<<"counter">>) end),
	{ok, 100} = py_ct_helper:on(1, 0, fun() ->
		ok = py:exec(<<"counter = 100">>),
		py:eval(<<"counter">>)
	end).

%% A process's variables persist across its calls (exec, eval, call '__main__').
env_persists_across_calls(_) ->
	ok = py:exec(<<"x = 1">>),
	{ok, 2} = py:eval(<<"x + 1">>),
	ok = py:exec(<<"x += 1\ndef get_x():\n    return x\n">>),
	{ok, 2} = py:eval(<<"x">>),
	{ok, 2} = py:call('__main__', get_x, []).

%% When the process exits its environment is freed in the port.
env_freed_on_exit(_) ->
	Before = py_ct_helper:env_count(2),
	Self = self(),
	{Pid, MRef} = py_ct_helper:spawn_on(2, 1, fun() ->
		ok = py:exec(<<"big = list(range(1000))">>),
		Self ! {created, self()},
		receive stop -> ok end
	end),
	receive {created, Pid} -> ok end,
	Before1 = Before + 1,
	Before1 = py_ct_helper:env_count(2),
	Pid ! stop,
	receive {'DOWN', MRef, process, Pid, _} -> ok end,
	py_ct_helper:eventually(fun() -> py_ct_helper:env_count(2) =:= Before end, 5000).

%% A killed process's environment is freed too.
env_dropped_for_killed_process(_) ->
	Before = py_ct_helper:env_count(1),
	Self = self(),
	{Pid, MRef} = py_ct_helper:spawn_on(1, 1, fun() ->
		ok = py:exec(<<"y = 1">>),
		Self ! {created, self()},
		receive never -> ok end
	end),
	receive {created, Pid} -> ok end,
	exit(Pid, kill),
	receive {'DOWN', MRef, process, Pid, killed} -> ok end,
	py_ct_helper:eventually(fun() -> py_ct_helper:env_count(1) =:= Before end, 5000).

%% The caller is killed while its request waits in erlang.sleep: the owner drops its environment,
%% then cancels the request (in that order). The request catches the CancelledError and evaluates its
%% last expression in the environment that was dropped meanwhile: the request holds its own reference,
%% so the port finishes it (its cancel watch clears), stays the same OS process and keeps serving.
env_dropped_while_in_use(_) ->
	Self = self(),
	Slot = 1,
	OsPid = py_ct_helper:os_pid(Slot),
	Before = py_ct_helper:env_count(Slot),
	{Pid, MRef} = py_ct_helper:spawn_on(Slot, 0, fun() ->
		py:eval(<<"e = erlang\ne.send(p, 'started')\ntry:\n    e.sleep(5)\nexcept BaseException:\n"
			"    pass\nlen(str(p))">>, #{p => Self})
	end),
	receive <<"started">> -> ok after 10000 -> error(not_started) end,
	exit(Pid, kill),
	receive {'DOWN', MRef, process, Pid, killed} -> ok end,
	ok = py_ct_helper:eventually(fun() ->
		py_port:pending_cancels(Slot) =:= [] andalso py_ct_helper:env_count(Slot) =< Before end, 4000),
	OsPid = py_ct_helper:os_pid(Slot),
	{ok, 2} = py_ct_helper:on(Slot, 0, fun() -> py:eval(<<"1+1">>) end).

%% A caller killed while Python waits on its callback: nobody will ever answer that callback, so the
%% owner cancels the dead caller's requests. The request ends (its cancel watch clears) without the
%% grace-period kill: same OS process, environment freed, and the context keeps serving.
dead_caller_requests_cancelled(_) ->
	Self = self(),
	ok = py:register_function(block_forever, fun([]) -> Self ! {blocked, self()}, receive after infinity -> ok end end),
	Slot = 1,
	OsPid = py_ct_helper:os_pid(Slot),
	Before = py_ct_helper:env_count(Slot),
	{Pid, MRef} = py_ct_helper:spawn_on(Slot, 0, fun() -> py:eval(<<"erlang.call('block_forever')">>) end),
	receive {blocked, Pid} -> ok after 10000 -> error(not_blocked) end,
	[_] = [Id || {Id, P, _} <- ets:tab2list(py_inflight), P =:= Pid],
	exit(Pid, kill),
	receive {'DOWN', MRef, process, Pid, killed} -> ok end,
	ok = py_ct_helper:eventually(fun() ->
		py_port:pending_cancels(Slot) =:= [] andalso py_ct_helper:env_count(Slot) =< Before end, 5000),
	[] = [Id || {Id, P, _} <- ets:tab2list(py_inflight), P =:= Pid],
	OsPid = py_ct_helper:os_pid(Slot),
	{ok, 2} = py_ct_helper:on(Slot, 0, fun() -> py:eval(<<"1+1">>) end).
