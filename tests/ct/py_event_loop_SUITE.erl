%% The asyncio task API (issue 9, PROTOCOL.md §3.10): py_event_loop:run/3,4, create_task/3,4, await/1,2,
%% spawn_task/3,4, get_loop/0, the {async_result, Ref, Result} messages, py_event_loop_pool (affinity,
%% get_stats, event_loop_pool_size), py:async_call/await/gather, per-process namespaces, errors (a
%% coroutine that raises, a missing module or function, a timeout), cancellation by timeout and by the
%% caller's death, the task bound, erlang.async_call in a task, and a cancel waking erlang.run's loop.
-module(py_event_loop_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1, end_per_testcase/2]).
-export([run_sync/1, run_coroutine/1, run_kwargs_and_timeout_opts/1, create_task_await/1,
	async_result_message/1, coroutine_raises/1, missing_module/1, missing_function/1,
	timeout_cancels_task/1, spawn_task_fire_and_forget/1, get_loop/1, exec_env_reuse/1,
	namespace_state_and_dict_keys/1, process_isolation/1, owner_death_cancels/1, pool_api/1,
	pool_affinity_order/1, async_call_await/1, async_gather/1, async_gather_failed/1,
	tasks_run_concurrently/1, erlang_async_call_in_task/1, task_bound/1,
	cancel_wakes_erlang_run/1, no_worker/1, unconvertible_result/1, explicit_context_send_path/1,
	outcomes_batched_per_frame/1, big_outcomes/1, many_submitters/1, bound_frees_on_cancel/1,
	bad_task_frames/1, channel_receive_cancelled/1, await_infinity_port_death/1]).

all() ->
	[run_sync, run_coroutine, run_kwargs_and_timeout_opts, create_task_await, async_result_message,
	 coroutine_raises, missing_module, missing_function, timeout_cancels_task, spawn_task_fire_and_forget,
	 get_loop, exec_env_reuse, namespace_state_and_dict_keys, process_isolation, owner_death_cancels,
	 pool_api, pool_affinity_order, async_call_await, async_gather, async_gather_failed,
	 tasks_run_concurrently, erlang_async_call_in_task, task_bound, cancel_wakes_erlang_run, no_worker,
	 unconvertible_result, explicit_context_send_path, outcomes_batched_per_frame, big_outcomes,
	 many_submitters, bound_frees_on_cancel, bad_task_frames, channel_receive_cancelled,
	 %% Last: it kills the port.
	 await_infinity_port_death].

init_per_suite(Config) ->
	ok = py_ct_helper:start_app([{num_ports, 1}, {contexts_per_port, 2}, {event_loop_pool_size, 4}]),
	Config.

end_per_suite(_Config) ->
	py_ct_helper:stop_app().

%% No task is left in flight in the port after a case, nor any record of one.
end_per_testcase(_, _Config) ->
	ok = py_ct_helper:eventually(fun() -> tasks_in_flight() =:= 0 end, 5000),
	{ok, #{<<"awaited">> := 0}} = py:call(<<"erlang._tasks">>, stats, []),
	%% Every task's entry ended with its outcome, its await's timeout or its port.
	ok = py_ct_helper:eventually(fun() -> ets:info(py_tasks, size) =:= 0 end, 5000),
	ok = py_ct_helper:eventually(fun() -> ets:info(py_inflight, size) =:= 0 end, 5000).

tasks_in_flight() ->
	{ok, #{<<"tasks">> := N}} = py:call(<<"erlang._tasks">>, stats, []),
	N.

%% The docs' examples.

run_sync(_) ->
	{ok, 4.0} = py_event_loop:run(math, sqrt, [16.0]),
	{ok, 4.0} = py_event_loop:run(<<"math">>, <<"sqrt">>, [16.0]).

run_coroutine(_) ->
	{ok, <<"x">>} = py_event_loop:run(asyncio, sleep, [0.01, <<"x">>]),
	nothing_left().

run_kwargs_and_timeout_opts(_) ->
	ok = py:exec(<<"import asyncio\nasync def greet(name, greeting='hi'):\n"
		"    await asyncio.sleep(0.01)\n    return f'{greeting} {name}'">>),
	{ok, <<"yo bob">>} = py_event_loop:run('__main__', greet, [<<"bob">>],
		#{timeout => 2000, kwargs => #{greeting => <<"yo">>}}),
	{ok, <<"hi ann">>} = py_event_loop:run('__main__', greet, [<<"ann">>], #{}).

create_task_await(_) ->
	Ref = py_event_loop:create_task(asyncio, sleep, [0.05, 1]),
	true = is_reference(Ref),
	{ok, 1} = py_event_loop:await(Ref, 5000),
	Ref2 = py_event_loop:create_task(asyncio, sleep, [0.01, 2], #{}),
	{ok, 2} = py_event_loop:await(Ref2),
	Ref3 = py_event_loop:create_task(asyncio, sleep, [0.01, 3]),
	{ok, 3} = py_event_loop:await(Ref3, infinity),
	nothing_left().

async_result_message(_) ->
	Ref = py_event_loop:create_task(asyncio, sleep, [0.01, 7]),
	receive {async_result, Ref, {ok, 7}} -> ok after 5000 -> ct:fail(no_async_result) end,
	SyncRef = py_event_loop:create_task(math, sqrt, [2.25]),
	receive {async_result, SyncRef, {ok, 1.5}} -> ok after 5000 -> ct:fail(no_sync_async_result) end,
	ErrRef = py_event_loop:create_task(no_such_module_xyz, f, []),
	receive {async_result, ErrRef, {error, {'ModuleNotFoundError', _}}} -> ok
	after 5000 -> ct:fail(no_error_async_result)
	end.

coroutine_raises(_) ->
	ok = py:exec(<<"import asyncio\nasync def boom():\n    await asyncio.sleep(0)\n"
		"    raise ValueError('bad input')">>),
	{error, {'ValueError', "bad input"}} = py_event_loop:run('__main__', boom, []),
	Ref = py_event_loop:create_task('__main__', boom, []),
	{error, {'ValueError', "bad input"}} = py_event_loop:await(Ref),
	%% A sync function that raises: the error at once.
	{error, {'ZeroDivisionError', _}} = py_event_loop:run(operator, truediv, [1, 0]).

missing_module(_) ->
	{error, {'ModuleNotFoundError', "No module named 'no_such_module_xyz'"}} =
		py_event_loop:run(no_such_module_xyz, f, []).

missing_function(_) ->
	{error, {'AttributeError', Msg}} = py_event_loop:run(math, no_such_function, []),
	?assertNotEqual(nomatch, string:find(Msg, "no_such_function")),
	{error, {'AttributeError', _}} = py_event_loop:run('__main__', never_defined_here, []).

%% The timeout cancels the task: asyncio.CancelledError in the coroutine, {error, timeout} at once,
%% and no message later.
timeout_cancels_task(_) ->
	ok = py:exec(<<"import asyncio\nstate = {}\nasync def slow():\n    try:\n"
		"        await asyncio.sleep(30)\n    except asyncio.CancelledError:\n"
		"        state['cancelled'] = True\n        raise">>),
	T0 = erlang:monotonic_time(millisecond),
	{error, timeout} = py_event_loop:run('__main__', slow, [], #{timeout => 200}),
	?assert(erlang:monotonic_time(millisecond) - T0 < 3000),
	ok = py_ct_helper:eventually(fun() -> py:eval(<<"state.get('cancelled', False)">>) =:= {ok, true} end, 5000),
	Ref = py_event_loop:create_task('__main__', slow, []),
	{error, timeout} = py_event_loop:await(Ref, 50),
	receive {async_result, Ref, _} = Late -> ct:fail({late, Late}) after 300 -> ok end.

spawn_task_fire_and_forget(_) ->
	ok = py:exec(<<"import asyncio\ndone = []\nasync def mark(k):\n    await asyncio.sleep(0.01)\n"
		"    done.append(k)\nasync def fail():\n    raise RuntimeError('ignored')">>),
	ok = py_event_loop:spawn_task('__main__', mark, [<<"a">>]),
	ok = py_event_loop:spawn_task('__main__', mark, [<<"b">>], #{}),
	ok = py_event_loop:spawn_task('__main__', fail, []),
	ok = py_event_loop:spawn_task(no_such_module_xyz, f, []),
	ok = py_ct_helper:eventually(fun() -> py:eval(<<"sorted(done)">>) =:= {ok, [<<"a">>, <<"b">>]} end, 5000),
	nothing_left().

get_loop(_) ->
	{ok, Loop} = py_event_loop:get_loop(),
	{ok, Loop} = py_event_loop:get_loop().

%% §11.2: functions py:exec defines in a context are found by the loop (module '__main__').
exec_env_reuse(_) ->
	Ctx = py:context(),
	ok = py:exec(Ctx, <<"import asyncio\nasync def process_data(items):\n"
		"    await asyncio.sleep(0.001)\n    return [x * 2 for x in items]">>),
	{ok, [2, 4, 6]} = py_event_loop:run('__main__', process_data, [[1, 2, 3]]),
	Ref = py_event_loop:create_task('__main__', process_data, [[4, 5, 6]]),
	{ok, [8, 10, 12]} = py_event_loop:await(Ref),
	ok = py_event_loop:spawn_task('__main__', process_data, [[7, 8, 9]]).

namespace_state_and_dict_keys(_) ->
	ok = py:exec(<<"counter = 0\nasync def bump():\n    global counter\n    counter += 1\n"
		"    return {'result': 42, 'call_number': counter}">>),
	{ok, #{<<"result">> := 42, <<"call_number">> := 1}} = py_event_loop:run('__main__', bump, []),
	{ok, #{<<"result">> := 42, <<"call_number">> := 2}} = py_event_loop:run('__main__', bump, []).

process_isolation(_) ->
	Parent = self(),
	Pids = [spawn(fun() ->
		ok = py:exec(iolist_to_binary(["my_id = ", integer_to_list(N), "\nasync def get_id():\n    return my_id"])),
		Parent ! {self(), py_event_loop:run('__main__', get_id, [])}
	end) || N <- lists:seq(1, 5)],
	Results = [receive {P, R} -> R after 10000 -> timeout end || P <- Pids],
	[{ok, 1}, {ok, 2}, {ok, 3}, {ok, 4}, {ok, 5}] = Results.

%% The caller dies with a task in flight: the task is cancelled in Python.
owner_death_cancels(_) ->
	_ = py:state_remove(aio_owner_cancelled),
	Parent = self(),
	{Pid, MRef} = spawn_monitor(fun() ->
		%% Local imports: the dead process's environment (its globals) is freed meanwhile.
		ok = py:exec(<<"async def hold():\n    import asyncio, erlang\n    try:\n        await asyncio.sleep(30)\n"
			"    except asyncio.CancelledError:\n        erlang.state_set('aio_owner_cancelled', True)\n"
			"        raise">>),
		_ = py_event_loop:create_task('__main__', hold, []),
		Parent ! {self(), submitted},
		receive stop -> ok end
	end),
	receive {Pid, submitted} -> ok after 5000 -> ct:fail(not_submitted) end,
	ok = py_ct_helper:eventually(fun() -> tasks_in_flight() =:= 1 end, 5000),
	exit(Pid, kill),
	receive {'DOWN', MRef, process, Pid, _} -> ok after 5000 -> ct:fail(no_down) end,
	ok = py_ct_helper:eventually(fun() -> py:state_fetch(<<"aio_owner_cancelled">>) =:= {ok, true} end, 5000),
	ok = py_ct_helper:eventually(fun() -> tasks_in_flight() =:= 0 end, 5000).

pool_api(_) ->
	#{num_loops := 4, supported := true} = py_event_loop_pool:get_stats(),
	{ok, Loop} = py_event_loop_pool:get_loop(),
	{ok, Loop} = py_event_loop_pool:get_loop(),
	Ref = py_event_loop_pool:create_task(math, sqrt, [16.0]),
	{ok, 4.0} = py_event_loop_pool:await(Ref),
	{ok, 4.0} = py_event_loop_pool:run(math, sqrt, [16.0]),
	{ok, 5} = py_event_loop_pool:run(asyncio, sleep, [0.01, 5], #{timeout => 2000}),
	Ref2 = py_event_loop_pool:create_task(asyncio, sleep, [0.01, 6], #{}),
	{ok, 6} = py_event_loop_pool:await(Ref2, 2000),
	ok = py_event_loop_pool:spawn_task(asyncio, sleep, [0.01]),
	ok = py_event_loop_pool:spawn_task(asyncio, sleep, [0.01], #{}),
	%% Different processes may get different loops; each always its own.
	Loops = lists:usort([begin
		Parent = self(),
		P = spawn(fun() -> {ok, L1} = py_event_loop_pool:get_loop(), {ok, L1} = py_event_loop_pool:get_loop(),
			Parent ! {self(), L1} end),
		receive {P, L} -> L after 5000 -> ct:fail(no_loop) end
	end || _ <- lists:seq(1, 40)]),
	?assert(length(Loops) > 1 andalso length(Loops) =< 4).

%% One process's tasks start in the order it submitted them (one loop).
pool_affinity_order(_) ->
	ok = py:exec(<<"import asyncio\norder = []\nasync def rec(i):\n    order.append(i)\n"
		"    await asyncio.sleep(0.01 * (20 - i))\n    return i">>),
	Refs = [py_event_loop_pool:create_task('__main__', rec, [I]) || I <- lists:seq(1, 20)],
	Results = [py_event_loop_pool:await(R, 5000) || R <- Refs],
	Results = [{ok, I} || I <- lists:seq(1, 20)],
	{ok, Order} = py:eval(<<"order">>),
	Order = lists:seq(1, 20).

async_call_await(_) ->
	Ref = py:async_call(math, sqrt, [16.0]),
	{ok, 4.0} = py:async_await(Ref),
	Ref2 = py:async_call(asyncio, sleep, [0.01], #{result => <<"r">>}),
	{ok, <<"r">>} = py:async_await(Ref2, 2000),
	ok = py:exec(<<"import asyncio\nasync def never():\n    await asyncio.sleep(30)">>),
	{error, timeout} = py:async_await(py:async_call('__main__', never, []), 100).

async_gather(_) ->
	{ok, [2.0, 3.0, <<"s">>]} = py:async_gather([{math, sqrt, [4.0]}, {math, sqrt, [9.0]},
		{asyncio, sleep, [0.02, <<"s">>]}]),
	{ok, []} = py:async_gather([]),
	{ok, [1]} = py:async_gather([{asyncio, sleep, [0.01, 1]}], 2000).

async_gather_failed(_) ->
	{error, {gather_failed, [{2, {'ModuleNotFoundError', _}}, {3, {'ValueError', _}}]}} =
		py:async_gather([{math, sqrt, [4.0]}, {no_such_module_xyz, f, []}, {math, sqrt, [-1.0]}]),
	ok = py:exec(<<"import asyncio\nasync def never2():\n    await asyncio.sleep(30)">>),
	{error, {gather_failed, [{1, timeout}]}} = py:async_gather([{'__main__', never2, []}], 100),
	%% A malformed item is badarg, and nothing was started.
	{'EXIT', {badarg, _}} = catch py:async_gather([{math, sqrt, [4.0]}, not_a_call]),
	nothing_left().

%% 200 tasks sleeping 0.2 s each finish together, far sooner than in sequence (40 s).
tasks_run_concurrently(_) ->
	T0 = erlang:monotonic_time(millisecond),
	Refs = [py_event_loop:create_task(asyncio, sleep, [0.2, I]) || I <- lists:seq(1, 200)],
	Results = [py_event_loop:await(R, 20000) || R <- Refs],
	Results = [{ok, I} || I <- lists:seq(1, 200)],
	?assert(erlang:monotonic_time(millisecond) - T0 < 10000).

%% `await erlang.async_call(...)` in a task: the Erlang function's result, an error as ErlangError.
erlang_async_call_in_task(_) ->
	ok = py:register_function(aio_double, fun([X]) -> X * 2 end),
	ok = py:exec(<<"import erlang, asyncio\nasync def use_cb(x):\n"
		"    a, b = await asyncio.gather(erlang.async_call('aio_double', x), erlang.async_call('aio_double', 1))\n"
		"    return a + b\nasync def bad_cb():\n    return await erlang.async_call('aio_not_registered', 1)">>),
	{ok, 44} = py_event_loop:run('__main__', use_cb, [21]),
	{error, {'ErlangError', _}} = py_event_loop:run('__main__', bad_cb, []),
	ok = py:unregister_function(aio_double).

%% At most `limit` tasks in flight per loop: the next submit fails with RuntimeError.
task_bound(_) ->
	{ok, Old} = py:call(<<"erlang._tasks">>, '_set_limit', [2]),
	try
		ok = py:exec(<<"import asyncio\nasync def park():\n    await asyncio.sleep(30)">>),
		R1 = py_event_loop:create_task('__main__', park, []),
		R2 = py_event_loop:create_task('__main__', park, []),
		{error, {'RuntimeError', Msg}} = py_event_loop:run('__main__', park, []),
		?assertNotEqual(nomatch, string:find(Msg, "too many tasks")),
		{error, timeout} = py_event_loop:await(R1, 10),
		{error, timeout} = py_event_loop:await(R2, 10)
	after
		{ok, 2} = py:call(<<"erlang._tasks">>, '_set_limit', [Old])
	end.

%% A py:call whose function runs erlang.run(...) is cancelled by its timeout at once: the cancel wakes
%% the loop (its self-pipe, PROTOCOL.md §3.10); the port is not restarted and the context is free.
cancel_wakes_erlang_run(_) ->
	Pid = py_ct_helper:os_pid(1),
	ok = py:exec(<<"import asyncio, erlang\nasync def long_sleep():\n    await asyncio.sleep(30)\n"
		"def blocking_run():\n    return erlang.run(long_sleep())">>),
	{error, timeout} = py:call('__main__', blocking_run, [], #{}, 200),
	T0 = erlang:monotonic_time(millisecond),
	{ok, 2} = py:eval(<<"1 + 1">>),
	?assert(erlang:monotonic_time(millisecond) - T0 < 1500),
	Pid = py_ct_helper:os_pid(1).

%% A loop outside the pool (the pool is smaller, or the application is not running): the task's
%% result is the error, at once; spawn_task is still ok.
no_worker(_) ->
	Ref = py_event_loop:submit(200, math, sqrt, [4.0], #{}, 1000),
	{error, event_loop_not_started} = py_event_loop:await(Ref, 1000),
	ok = py_event_loop:spawn_on(200, math, sqrt, [4.0], #{}).

%% A coroutine's result with no Erlang form: the task's error is TypeError (the frame was not sent).
unconvertible_result(_) ->
	ok = py:exec(<<"async def mkset():\n    return {1, 2}">>),
	{error, {'TypeError', Msg}} = py_event_loop:run('__main__', mkset, []),
	?assertNotEqual(nomatch, string:find(Msg, "set")).

%% A process bound to an explicit context (py_context:new): its tasks use that context's namespace
%% (PROTOCOL.md §3.10), with the same results, errors and cancellation.
explicit_context_send_path(_) ->
	{ok, Ctx} = py_context:new(#{}),
	try
		ok = py_context_router:bind_context(Ctx),
		ok = py:exec(Ctx, <<"import asyncio\nasync def twice(x):\n    await asyncio.sleep(0.01)\n    return x * 2\n"
			"async def mkset():\n    return {1}\nasync def slow():\n    await asyncio.sleep(30)">>),
		{ok, 42} = py_event_loop:run('__main__', twice, [21]),
		{error, {'TypeError', _}} = py_event_loop:run('__main__', mkset, []),
		{error, timeout} = py_event_loop:run('__main__', slow, [], #{timeout => 100}),
		Refs = [py_event_loop:create_task('__main__', twice, [I]) || I <- lists:seq(1, 50)],
		Results = [py_event_loop:await(R, 5000) || R <- Refs],
		Results = [{ok, 2 * I} || I <- lists:seq(1, 50)],
		ok = py_ct_helper:eventually(fun() -> tasks_in_flight() =:= 0 end, 5000)
	after
		py_context_router:unbind_context(),
		py_context:stop(Ctx)
	end.

%% The native path (PROTOCOL.md §3.10): tasks that end together come back several to a task_result
%% frame (the owner's receives are traced: fewer frames than outcomes).
outcomes_batched_per_frame(_) ->
	#{owner := Owner, port := Port} = py_port:info(1),
	N = 200,
	1 = erlang:trace(Owner, true, ['receive']),
	Refs = try
		Rs = [py_event_loop:create_task(asyncio, sleep, [0.2, I]) || I <- lists:seq(1, N)],
		[{ok, I} = py_event_loop:await(R, 10000) || {I, R} <- lists:zip(lists:seq(1, N), Rs)],
		Rs
	after
		erlang:trace(Owner, false, ['receive'])
	end,
	N = length(Refs),
	Frames = count_task_frames(Owner, Port, 0),
	ct:pal("~b outcomes in ~b task_result frames", [N, Frames]),
	?assert(Frames >= 1),
	?assert(Frames =< N div 4).

count_task_frames(Owner, Port, K) ->
	receive
		{trace, Owner, 'receive', {Port, {data, <<76, _/binary>>}}} -> count_task_frames(Owner, Port, K + 1);
		{trace, Owner, 'receive', _} -> count_task_frames(Owner, Port, K)
	after 500 ->
		K
	end.

%% Outcomes past the owner's inline limit (64 KiB, decoded in a process of their own) and past one
%% frame's worth (256 KiB: the batch is cut into several frames) arrive whole.
big_outcomes(_) ->
	ok = py:exec(<<"import asyncio\nasync def blob(n, c):\n    await asyncio.sleep(0.05)\n    return c * n">>),
	{ok, B1} = py_event_loop:run('__main__', blob, [200000, <<"a">>], #{timeout => 10000}),
	200000 = byte_size(B1),
	Refs = [py_event_loop:create_task('__main__', blob, [100000, <<I>>]) || I <- lists:seq($a, $j)],
	Results = [py_event_loop:await(R, 10000) || R <- Refs],
	Results = [{ok, binary:copy(<<I>>, 100000)} || I <- lists:seq($a, $j)].

%% 20 processes, 50 tasks each, on the shared loop and the pool: every caller gets its own results.
many_submitters(_) ->
	ok = py:exec(<<"import asyncio\nasync def echo(x):\n    await asyncio.sleep(0)\n    return x">>),
	Parent = self(),
	Pids = [spawn_link(fun() ->
		Mine = [{P, I} || I <- lists:seq(1, 50)],
		Refs = [case I rem 2 of
			0 -> py_event_loop:create_task(asyncio, sleep, [0, X]);
			1 -> py_event_loop_pool:create_task(asyncio, sleep, [0, X])
		end || X = {_, I} <- [{term_to_binary(Q), J} || {Q, J} <- Mine]],
		Got = [py_event_loop:await(R, 10000) || R <- Refs],
		Parent ! {self(), Got =:= [{ok, {term_to_binary(Q), J}} || {Q, J} <- Mine]}
	end) || P <- lists:seq(1, 20)],
	[receive {Pid, Ok} -> true = Ok after 20000 -> ct:fail(submitter_stalled) end || Pid <- Pids].

%% The bound (PROTOCOL.md §3.10) is answered by the port's I/O thread, and a task that ends (here:
%% cancelled by its await's timeout) frees its place.
bound_frees_on_cancel(_) ->
	{ok, Old} = py:call(<<"erlang._tasks">>, '_set_limit', [1]),
	try
		ok = py:exec(<<"import asyncio\nasync def park1():\n    await asyncio.sleep(30)">>),
		R1 = py_event_loop:create_task('__main__', park1, []),
		{error, {'RuntimeError', Msg}} = py_event_loop:run(math, sqrt, [4.0]),
		?assertNotEqual(nomatch, string:find(Msg, "limit 1")),
		{error, timeout} = py_event_loop:await(R1, 10),
		ok = py_ct_helper:eventually(fun() -> tasks_in_flight() =:= 0 end, 5000),
		{ok, 2.0} = py_event_loop:run(math, sqrt, [4.0])
	after
		{ok, 1} = py:call(<<"erlang._tasks">>, '_set_limit', [Old])
	end.

%% Malformed task frames are protocol errors the port answers without stopping; a cancel of a task
%% nobody knows is ignored.
bad_task_frames(_) ->
	#{port := Port, contexts := Ctxs} = py_port:info(1),
	Ctx = element(1, Ctxs),
	true = ets:insert(py_inflight, [{300, self(), 1}, {5, self(), 1}]),
	try
		true = port_command(Port, <<16, 0, 0:16, Ctx:32, 300:64, 0:16>>),
		receive {py_frame, 300, 70, _, B1} -> {bad_loop, _} = py_codec:decode(codec(), B1)
		after 5000 -> ct:fail(no_bad_loop)
		end,
		true = port_command(Port, <<16, 0, 0:16, Ctx:32, 5:64, 0, 10, 1, 2>>),
		receive {py_frame, 5, 70, _, B2} -> {bad_body, _} = py_codec:decode(codec(), B2)
		after 5000 -> ct:fail(no_bad_body)
		end,
		true = port_command(Port, <<17, 0, 0:16, 0:32, 0:64, "not a ref">>),
		{ok, 4.0} = py_event_loop:run(math, sqrt, [16.0])
	after
		ets:delete(py_inflight, 300),
		ets:delete(py_inflight, 5)
	end.

%% A task waiting in a channel's async_receive is cancelled by its await's timeout (CancelledError at
%% the await), and so is an erlang.run(async_receive) inside a py:call by the call's timeout: the
%% port is not restarted (its cancel grace passes) and the contexts are free at once.
channel_receive_cancelled(_) ->
	Pid = py_ct_helper:os_pid(1),
	{ok, Ch} = py_channel:new(),
	ok = py:exec(<<"import asyncio, erlang\nfrom erlang.channel import Channel\nchan_state = {}\n"
		"async def wait_msg(ch, key):\n    try:\n        return await Channel(ch).async_receive()\n"
		"    except asyncio.CancelledError:\n        chan_state[key] = True\n        raise\n"
		"def run_wait(ch):\n    return erlang.run(wait_msg(ch, 'call'))">>),
	{error, timeout} = py_event_loop:run('__main__', wait_msg, [Ch, <<"task">>], #{timeout => 200}),
	ok = py_ct_helper:eventually(fun() -> py:eval(<<"chan_state.get('task', False)">>) =:= {ok, true} end, 5000),
	{error, timeout} = py:call('__main__', run_wait, [Ch], #{}, 200),
	T0 = erlang:monotonic_time(millisecond),
	{ok, 2} = py:eval(<<"1 + 1">>),
	?assert(erlang:monotonic_time(millisecond) - T0 < 1500),
	ok = py_ct_helper:eventually(fun() -> py:eval(<<"chan_state.get('call', False)">>) =:= {ok, true} end, 5000),
	%% The channel still works for a reader that waits for its message.
	Ref = py_event_loop:create_task('__main__', wait_msg, [Ch, <<"third">>]),
	ok = py_channel:send(Ch, <<"hello">>),
	{ok, <<"hello">>} = py_event_loop:await(Ref, 5000),
	timer:sleep(2500),  % past the cancel grace (2000 ms): a cancel that was not honoured kills the port
	Pid = py_ct_helper:os_pid(1),
	ok = py_channel:close(Ch).

%% await(Ref, infinity) ends when the port dies: {error, {port_exited, Reason}}, and the task's entry
%% is gone.
await_infinity_port_death(_) ->
	Parent = self(),
	{Pid, MRef} = spawn_monitor(fun() ->
		Ref = py_event_loop:create_task(asyncio, sleep, [30]),
		Parent ! {self(), submitted},
		Parent ! {self(), py_event_loop:await(Ref, infinity)}
	end),
	receive {Pid, submitted} -> ok after 5000 -> ct:fail(not_submitted) end,
	ok = py_ct_helper:eventually(fun() -> tasks_in_flight() =:= 1 end, 5000),
	OsPid = py_ct_helper:os_pid(1),
	_ = os:cmd("kill -9 " ++ integer_to_list(OsPid)),
	receive {Pid, {error, {port_exited, #{}}}} -> ok; {Pid, Other} -> ct:fail({unexpected, Other})
	after 20000 -> ct:fail(await_did_not_end)
	end,
	receive {'DOWN', MRef, process, Pid, _} -> ok after 5000 -> ct:fail(no_down) end,
	0 = ets:info(py_tasks, size),
	ok = py_ct_helper:eventually(fun() ->
		case py_port:info(1) of #{status := up, os_pid := New} -> New =/= OsPid; _ -> false end
	end, 20000).

%% Internal.

codec() ->
	application:get_env(erlang_python, codec, etf).

nothing_left() ->
	receive {async_result, _, _} = M -> ct:fail({unexpected, M}) after 100 -> ok end.
