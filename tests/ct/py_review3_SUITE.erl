%% Review of the native asyncio task path (issue 9, PROTOCOL.md §3.10): defects found by reading it
%% as an adversary, each reproduced against the real port. Every case ends with nothing in flight in
%% the port and no py_tasks entry left (end_per_testcase).
-module(py_review3_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1, end_per_testcase/2]).
-export([cancel_before_first_step/1, owner_death_before_first_step/1,
	undecodable_error_message/1, loop_survives_system_exit/1,
	spawn_task_outlives_its_caller/1, malformed_submissions_answered/1]).

all() ->
	[cancel_before_first_step, owner_death_before_first_step, undecodable_error_message,
	 loop_survives_system_exit, spawn_task_outlives_its_caller, malformed_submissions_answered].

init_per_suite(Config) ->
	ok = py_ct_helper:start_app([{num_ports, 1}, {contexts_per_port, 2}, {event_loop_pool_size, 2}]),
	Config.

end_per_suite(_Config) ->
	py_ct_helper:stop_app().

end_per_testcase(_, _Config) ->
	ok = py_ct_helper:eventually(fun() -> tasks_in_flight() =:= 0 end, 5000),
	ok = py_ct_helper:eventually(fun() -> ets:info(py_tasks, size) =:= 0 end, 5000).

tasks_in_flight() ->
	{ok, #{<<"tasks">> := N}} = py:call(<<"erlang._tasks">>, stats, []),
	N.

%% An await that times out at once cancels its task before the task's first step (on Python < 3.12
%% the first step is not eager: the cancel comes in the same batch as the submission). The task must
%% still hand back one outcome: it is what frees its place under the per-loop bound. It did not (the
%% CancelledError is thrown into the coroutine before its try), so each such task held a place for
%% ever: the count of tasks in flight never came back to 0, and a loop that had lost as many places as
%% its bound refused every submission.
cancel_before_first_step(_) ->
	_ = [{error, timeout} = py_event_loop:run(asyncio, sleep, [5.0], #{timeout => 0})
		|| _ <- lists:seq(1, 40)],
	ok = py_ct_helper:eventually(fun() -> tasks_in_flight() =:= 0 end, 5000),
	{ok, 1} = py_event_loop:run(asyncio, sleep, [0.01, 1], #{timeout => 5000}).

%% A caller that dies right after create_task: its task is cancelled (its environment is dropped) and
%% its py_tasks entry goes with the task's outcome, started or not.
owner_death_before_first_step(_) ->
	Self = self(),
	Pids = [spawn(fun() ->
		_ = py_event_loop:create_task(asyncio, sleep, [30.0]),
		_ = py_event_loop:create_task(asyncio, sleep, [30.0]),
		Self ! {submitted, self()}
	end) || _ <- lists:seq(1, 20)],
	_ = [receive {submitted, P} -> ok after 10000 -> error({not_submitted, P}) end || P <- Pids],
	ok = py_ct_helper:eventually(fun() -> ets:info(py_tasks, size) =:= 0 end, 10000),
	ok = py_ct_helper:eventually(fun() -> tasks_in_flight() =:= 0 end, 10000).

%% An exception whose message is not valid UTF-8 (a lone surrogate, e.g. from a file name decoded
%% with surrogateescape): its outcome made `_erlang_loop.done` raise, which lost every outcome of that
%% loop iteration (their callers timed out) and their places under the bound.
undecodable_error_message(_) ->
	ok = py:exec(<<"import asyncio\n"
		"async def bad_msg():\n    raise ValueError('caf\\udce9')\n"
		"def bad_msg_sync():\n    raise ValueError('x\\udcff')\n"
		"async def good_soon(x):\n    await asyncio.sleep(0.05)\n    return x\n">>),
	Good = [py_event_loop:create_task('__main__', good_soon, [I]) || I <- lists:seq(1, 5)],
	{error, {'ValueError', Msg}} = py_event_loop:run('__main__', bad_msg, [], #{timeout => 5000}),
	?assertMatch("caf" ++ _, Msg),
	{error, {'ValueError', _}} = py_event_loop:run('__main__', bad_msg_sync, [], #{timeout => 5000}),
	%% Outcomes of the same iterations are not lost.
	Bad = [py_event_loop:create_task('__main__', bad_msg, []) || _ <- lists:seq(1, 5)],
	_ = [{ok, I} = py_event_loop:await(R, 5000) || {I, R} <- lists:zip(lists:seq(1, 5), Good)],
	_ = [{error, {'ValueError', _}} = py_event_loop:await(R, 5000) || R <- Bad],
	ok.

%% A task that raises SystemExit or KeyboardInterrupt (a coroutine's, or a plain function's such as
%% sys.exit) is an error outcome like any other. It was re-raised (_run) or not caught (_submit), which
%% ended the loop's run_forever: the outcome never went out and every later task on that loop waited
%% for ever (each await timed out) until the port restarted.
loop_survives_system_exit(_) ->
	ok = py:exec(<<"import asyncio\n"
		"async def bye():\n    await asyncio.sleep(0)\n    raise SystemExit(3)\n"
		"async def bye_at_once():\n    raise SystemExit(4)\n"
		"async def interrupted():\n    await asyncio.sleep(0)\n    raise KeyboardInterrupt()\n">>),
	{error, {'SystemExit', _}} = py_event_loop:run('__main__', bye, [], #{timeout => 5000}),
	{ok, 4.0} = py_event_loop:run(math, sqrt, [16.0], #{timeout => 5000}),
	{error, {'SystemExit', _}} = py_event_loop:run('__main__', bye_at_once, [], #{timeout => 5000}),
	{error, {'SystemExit', _}} = py_event_loop:run(sys, exit, [1], #{timeout => 5000}),
	{error, {'KeyboardInterrupt', _}} = py_event_loop:run('__main__', interrupted, [], #{timeout => 5000}),
	%% The loop still runs tasks, coroutines included.
	{ok, 2} = py_event_loop:run(asyncio, sleep, [0.01, 2], #{timeout => 5000}),
	ok.

%% PROTOCOL.md §3.10 as corrected: a caller's death cancels the tasks it awaits, not its fire-and-
%% forget ones (spawn_task from a short-lived process is the docs' logging example): those run on.
%% (A function of the caller's own namespace, '__main__', is another matter: the namespace may be
%% dropped before the loop thread takes the submission; see the review's report.)
spawn_task_outlives_its_caller(_) ->
	Self = self(),
	ok = py:exec(<<"import asyncio, erlang, sys, types\n"
		"m = types.ModuleType('rv3_notify')\n"
		"async def tell_later(pid):\n    await asyncio.sleep(0.3)\n    erlang.send(pid, 'told')\n"
		"m.tell_later = tell_later\nsys.modules['rv3_notify'] = m\n">>),
	{Pid, MRef} = spawn_monitor(fun() ->
		{ok, 1} = py:eval(<<"1">>),  % an environment of its own, dropped when it exits
		ok = py_event_loop:spawn_task(rv3_notify, tell_later, [Self])
	end),
	receive {'DOWN', MRef, process, Pid, normal} -> ok after 10000 -> ct:fail(caller_stuck) end,
	receive <<"told">> -> ok after 10000 -> ct:fail(fire_and_forget_cancelled) end.

%% Wire errors in task frames the suites did not cover: each is answered (an outcome for the task's
%% reference, or protocol_error), none ends the port, and the loop goes on.
malformed_submissions_answered(_) ->
	#{port := Port, contexts := Ctxs, codec := Codec} = py_port:info(1),
	Ctx = element(1, Ctxs),
	OsPid = py_ct_helper:os_pid(1),
	Submit = fun(C, Term) ->
		Ref = make_ref(),
		<<131, RefBin/binary>> = term_to_binary(Ref),
		true = ets:insert(py_tasks, {Ref, self(), 1, 0}),
		true = port_command(Port, [<<16, 0, 0:16, C:32, 0:64, (byte_size(RefBin)):16>>, RefBin, Term]),
		receive {async_result, Ref, R} -> R after 5000 -> ets:delete(py_tasks, Ref), ct:fail({no_answer, Term}) end
	end,
	Enc = fun(T) -> py_codec:encode(Codec, T) end,
	{error, {'TypeError', "task_submit body must be" ++ _}} = Submit(Ctx, <<"not a term">>),
	{error, {'TypeError', "task_submit body must be" ++ _}} = Submit(Ctx, Enc({self(), <<"math">>, <<"sqrt">>, [4.0]})),
	{error, {'TypeError', "task environment" ++ _}} = Submit(Ctx, Enc({42, <<"math">>, <<"sqrt">>, [4.0], #{}})),
	{error, {'RuntimeError', "no such context" ++ _}} = Submit(999999, Enc({self(), <<"math">>, <<"sqrt">>, [4.0], #{}})),
	{error, {'TypeError', _}} = Submit(Ctx, Enc({self(), <<"math">>, <<"sqrt">>, 5, #{}})),
	{ok, 2.0} = Submit(Ctx, Enc({self(), <<"math">>, <<"sqrt">>, [4.0], #{}})),
	%% A cancel naming no loop: protocol_error bad_loop.
	true = ets:insert(py_inflight, {300, self(), 1}),
	try
		true = port_command(Port, <<17, 0, 0:16, 0:32, 300:64, "x">>),
		receive {py_frame, 300, 70, _, B} -> {bad_loop, _} = py_codec:decode(Codec, B)
		after 5000 -> ct:fail(no_bad_loop)
		end
	after
		ets:delete(py_inflight, 300)
	end,
	{ok, 4.0} = py_event_loop:run(math, sqrt, [16.0]),
	OsPid = py_ct_helper:os_pid(1).
