%% Regression cases for the Erlang-side findings of the review of the contexts and hardening round
%% (one port, two contexts, so every request shares one OS process and one owner).
-module(py_review_SUITE).
-include_lib("common_test/include/ct.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1, init_per_testcase/2, end_per_testcase/2]).
-export([destroy_timeout_keeps_port/1, callee_with_local_env_dies/1, parallel_inside_callback/1,
	preload_output_and_callback/1, helper_does_not_carry_semaphore/1, no_stray_frame_after_timeout/1,
	control_ids_not_cancelled_on_down/1, create_timeout_destroys/1, down_scan_not_in_owner/1]).

-define(GRACE, 1000).

all() ->
	[destroy_timeout_keeps_port, callee_with_local_env_dies, parallel_inside_callback,
	 preload_output_and_callback, helper_does_not_carry_semaphore, no_stray_frame_after_timeout,
	 control_ids_not_cancelled_on_down, create_timeout_destroys, down_scan_not_in_owner].

init_per_suite(Config) ->
	ok = py_ct_helper:start_app([{num_ports, 1}, {contexts_per_port, 2}, {cancel_grace_ms, ?GRACE}]),
	Config.

end_per_suite(_Config) ->
	py_ct_helper:stop_app().

init_per_testcase(_Case, Config) ->
	{ok, 2} = py:eval(<<"1+1">>, #{}, 20000),
	Config.

end_per_testcase(_Case, _Config) ->
	ok.

os_pid() ->
	#{os_pid := P} = py_port:info(1),
	P.

%% Waits for the message Python sent with erlang.send(me, 'started') (a str arrives as a binary).
await_started() ->
	receive
		Started when Started =:= <<"started">>; Started =:= started -> ok
	after 20000 ->
		error(python_never_started)
	end.

await_down(MRef, Timeout) ->
	receive
		{'DOWN', MRef, process, _, Reason} -> Reason
	after Timeout ->
		error(no_down)
	end.

%% Review 2. The destroy of an explicit context whose process ends (terminate/2, 2 s bound) while a
%% call on it runs longer: the destroy times out, and is neither cancelled nor watched, so the port
%% lives and the call completes. It used to get a cancel the port cannot act on, and the port was
%% killed when its grace ran out.
destroy_timeout_keeps_port(_Config) ->
	{ok, Ctx} = py_context:new(#{}),
	Before = os_pid(),
	Self = self(),
	Caller = spawn(fun() -> Self ! {self(), py_context:eval(Ctx,
		<<"[erlang.send(me, 'started'), __import__('time').sleep(4)][1]">>, #{me => Self}, 30000)} end),
	ok = await_started(),
	MRef = erlang:monitor(process, Ctx),
	exit(Ctx, shutdown),
	_ = await_down(MRef, 10000),
	%% The destroy has timed out: nothing may be waiting for a cancel of it.
	[] = py_port:pending_cancels(1),
	R = receive {Caller, X} -> X after 30000 -> no_answer end,
	{ok, none} = R,
	%% Past the grace a cancel of the destroy would have had.
	timer:sleep(?GRACE + 500),
	Before = os_pid(),
	{ok, 2} = py:eval(<<"1+1">>, #{}, 5000).

%% Review 4. A caller with an explicit environment (the owner has no environment monitor for it)
%% dies while its request waits on its callback: the owner monitored it when it forwarded the
%% callback, cancels the request, and the context serves the next one.
callee_with_local_env_dies(_Config) ->
	{ok, Ctx} = py_context:new(#{}),
	{ok, Env} = py_context:create_local_env(Ctx),
	Self = self(),
	ok = py:register_function(rv_block, fun(_) -> Self ! {blocked, self()}, timer:sleep(infinity) end),
	P = spawn(fun() -> py_context:eval(Ctx, <<"erlang.call('rv_block')">>, #{}, infinity, Env) end),
	receive {blocked, P} -> ok after 20000 -> error(callback_never_ran) end,
	exit(P, kill),
	{ok, 2} = py_context:eval(Ctx, <<"1 + 1">>, #{}, 5000),
	ok = py_context:stop(Ctx).

%% Review 5. py:parallel from an Erlang function Python called: one of its calls lands on the
%% context that waits for the function, so it must carry the nested flag (it used to queue behind
%% the wait until the timeout).
parallel_inside_callback(_Config) ->
	ok = py:register_function(rv_par, fun(_) ->
		{ok, [{ok, A}, {ok, B}]} = py:parallel([{math, sqrt, [4]}, {math, sqrt, [9]}]),
		A + B
	end),
	{ok, 5.0} = py:eval(<<"erlang.call('rv_par')">>, #{}, 10000).

%% Review 6. A preload that prints more than the output window (256 KiB) and calls Erlang, run by
%% the owner's context_init after a restart: the output is logged (not taken for the answer, no
%% "context_init failed"), acknowledged also while the slot is starting (or the preload blocks for
%% good), the callback is answered, and the slot goes up only after both contexts ran it all.
preload_output_and_callback(_Config) ->
	ok = py:register_function(rv_pre, fun(_) -> 42 end),
	ok = py_preload:set_code(<<"import erlang\nprint('hello from preload')\n"
		"for i in range(8):\n    print('p' * 65536)\nX = erlang.call('rv_pre')\n">>),
	ok = py_ct_helper:capture_log(),
	try
		#{generation := G0} = py_port:info(1),
		_ = os:cmd("kill -9 " ++ integer_to_list(os_pid())),
		ok = py_ct_helper:eventually(fun() ->
			case py_port:info(1) of #{status := up, generation := G} -> G > G0; _ -> false end
		end, 30000),
		{ok, 42} = py_ct_helper:on(1, 0, fun() -> py:eval(<<"X">>, #{}, 5000) end, 10000),
		{ok, 42} = py_ct_helper:on(1, 1, fun() -> py:eval(<<"X">>, #{}, 5000) end, 10000),
		Logs = drain_logs([]),
		[] = [T || {_, T} <- Logs, binary:match(T, <<"context_init failed">>) =/= nomatch],
		[] = [T || {_, T} <- Logs, binary:match(T, <<"no request has">>) =/= nomatch],
		true = lists:any(fun({Level, T}) -> Level =:= notice andalso
			binary:match(T, <<"hello from preload">>) =/= nomatch end, Logs)
	after
		ok = py_ct_helper:stop_capture_log(),
		ok = py_preload:clear_code()
	end.

drain_logs(Acc) ->
	receive {log, Level, Text} -> drain_logs([{Level, Text} | Acc])
	after 0 -> lists:reverse(Acc)
	end.

%% Review 7. A callback with a deadline runs in a helper; the helper's nested py call takes its own
%% semaphore slot, watched by its own reaper, so the slot comes back when the deadline kills the
%% helper (the helper used to inherit the caller's semaphore keys, and the slot leaked).
helper_does_not_carry_semaphore(_Config) ->
	ok = py_ct_helper:eventually(fun() -> py_semaphore:current() =:= 0 end, 10000),
	ok = py:register_function(rv_nest, fun(_) -> py:eval(<<"erlang.sleep(5)">>, #{}, infinity) end),
	{error, timeout} = py:eval(<<"erlang.call('rv_nest')">>, #{}, 1000),
	ok = py_ct_helper:eventually(fun() -> py_semaphore:current() =:= 0 end, 10000).

%% Review 9. A caller that times out while its request floods output: once give_up returned, no
%% frame of the request may reach the caller any more (its cancel_watch is a call, ordered after
%% everything the owner forwarded), so nothing is left unread and unacknowledged in its mailbox;
%% and the context's window is not left full (the next request prints and answers).
no_stray_frame_after_timeout(_Config) ->
	Loop = fun Loop(0) -> ok;
		Loop(N) ->
			{error, timeout} = py:eval(<<"[print('s' * 4096) for i in range(100000)]">>, #{}, 50),
			%% A round trip with the owner: anything it forwarded before is in the mailbox now.
			_ = py_port:pending_cancels(1),
			{messages, Msgs} = erlang:process_info(self(), messages),
			[] = [M || M <- Msgs, element(1, M) =:= py_frame],
			Loop(N - 1)
	end,
	ok = Loop(20),
	{ok, none} = py:eval(<<"print('after')">>, #{}, 10000).

%% Review 2 and 4. The process that waits for a context request dies (a context process killed
%% during its context_init or destroy): its entries are taken, and the context request is not
%% cancelled (no grace timer, port alive).
control_ids_not_cancelled_on_down(_Config) ->
	{ok, Ctx} = py_context:new(#{}),
	#{slot := 1, ctx := CtxId, generation := Gen} = element(2, py_context:place(Ctx)),
	Before = os_pid(),
	Self = self(),
	Busy = spawn(fun() -> Self ! {self(), py_context:eval(Ctx,
		<<"[erlang.send(me, 'started'), __import__('time').sleep(3)][1]">>, #{me => Self}, 30000)} end),
	ok = await_started(),
	%% A process that asks for the destroy and is killed while it waits (queued behind the sleep).
	{Waiter, WMRef} = spawn_monitor(fun() ->
		py_request:control(context_destroy, 1, CtxId, Gen, [], 30000)
	end),
	ok = py_ct_helper:eventually(fun() ->
		ets:select_count(py_inflight, [{{'_', Waiter, '_'}, [], [true]}]) =:= 1 end, 5000),
	exit(Waiter, kill),
	_ = await_down(WMRef, 5000),
	%% The owner only monitors it if a callback went to it; forget_caller is the other way in.
	ok = py_port:forget_caller(Waiter),
	0 = ets:select_count(py_inflight, [{{'_', Waiter, '_'}, [], [true]}]),
	[] = py_port:pending_cancels(1),
	{ok, none} = receive {Busy, X} -> X after 30000 -> no_answer end,
	timer:sleep(?GRACE + 500),
	Before = os_pid(),
	ok = py_context:stop(Ctx).

%% Review 12. A context_create that times out is followed by a destroy, so the port does not keep the
%% context's thread: with no time to create, the port's count of contexts comes back to where it was.
create_timeout_destroys(_Config) ->
	Before = port_contexts(),
	ok = application:set_env(erlang_python, context_create_timeout, 0),
	try
		{error, {Failed, timeout}} = py_context:new(#{}),
		true = lists:member(Failed, [context_create_failed, context_init_failed])
	after
		ok = application:unset_env(erlang_python, context_create_timeout)
	end,
	ok = py_ct_helper:eventually(fun() -> port_contexts() =:= Before end, 10000),
	%% And it stays there (the create, answered late, is not left behind).
	timer:sleep(500),
	Before = port_contexts().

%% The number of running contexts the port reports (its stats request).
port_contexts() ->
	#{codec := Codec, port := Port} = py_port:info(1),
	Id = (1 bsl 48) + erlang:unique_integer([positive]),
	true = ets:insert(py_inflight, {Id, self(), 1}),
	true = port_command(Port, py_codec:frame(stats, 0, Id, Codec, [])),
	receive
		{py_frame, Id, 65, _, Body} ->
			#{contexts := N} = py_codec:decode(Codec, Body),
			N
	after 10000 ->
		error(no_stats)
	end.

%% Review 10. A process with an environment dies with a request in flight: its request is cancelled
%% (the call ends, no entry is left), and the owner did not scan py_inflight for it (traced: no
%% ets:select call in the owner process).
down_scan_not_in_owner(_Config) ->
	Self = self(),
	#{owner := Owner} = py_port:info(1),
	{P, PMRef} = spawn_monitor(fun() ->
		py:eval(<<"[erlang.send(me, 'started'), __import__('time').sleep(20)][1]">>, #{me => Self}, infinity)
	end),
	ok = await_started(),
	%% The owner monitors P once the port said env_created for it.
	ok = py_ct_helper:eventually(fun() ->
		lists:member(P, [M || {process, M} <- element(2, erlang:process_info(Owner, monitors))])
	end, 5000),
	1 = erlang:trace_pattern({ets, select, 2}, true, [global]),
	1 = erlang:trace(Owner, true, [call]),
	try
		exit(P, kill),
		_ = await_down(PMRef, 5000),
		ok = py_ct_helper:eventually(fun() ->
			ets:select_count(py_inflight, [{{'_', P, '_'}, [], [true]}]) =:= 0
				andalso py_port:pending_cancels(1) =:= []
		end, 10000)
	after
		_ = erlang:trace(Owner, false, [call]),
		_ = erlang:trace_pattern({ets, select, 2}, false, [global])
	end,
	%% The trace messages are sent before the calls return: a round trip with the owner orders them.
	_ = py_port:pending_cancels(1),
	receive {trace, Owner, call, {ets, select, Args}} -> error({owner_scanned, Args})
	after 0 -> ok
	end,
	{ok, 2} = py:eval(<<"1+1">>, #{}, 5000).
