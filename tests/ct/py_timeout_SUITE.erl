%% Timeouts cancel the Python work; a request that ignores the cancel costs its port after the grace.
-module(py_timeout_SUITE).

-include_lib("common_test/include/ct.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1]).
-export([docs_timeout_example/1, eval_timeout_cancels/1, call_sleep_timeout/1, erlang_sleep_is_cancelled/1,
	ignored_cancel_kills_port_after_grace/1, other_context_unaffected/1, queued_request_cancel/1,
	timeout_in_cast_free_port/1]).

-define(GRACE, 2000).

all() ->
	[docs_timeout_example, eval_timeout_cancels, call_sleep_timeout, erlang_sleep_is_cancelled,
	 ignored_cancel_kills_port_after_grace, other_context_unaffected, queued_request_cancel,
	 timeout_in_cast_free_port].

init_per_suite(Config) ->
	ok = py_ct_helper:start_app([{num_ports, 2}, {contexts_per_port, 2}, {cancel_grace_ms, ?GRACE}]),
	Config.

end_per_suite(_Config) ->
	py_ct_helper:stop_app().

%% The docs' timeout example: {error, timeout} within the timeout. sum(range(...)) is one C call
%% that holds the GIL and cannot be interrupted, so the port gives up on it (exit status 5, reported as
%% cancel_grace_expired). The same process's next call waits for that to settle instead of queueing
%% behind it, and is answered by the new port well within a second.
docs_timeout_example(_) ->
	T0 = erlang:monotonic_time(millisecond),
	{error, timeout} = py:eval(<<"sum(range(10**10))">>, #{}, 100),
	true = py_ct_helper:elapsed_ms(T0) < 1000,
	T1 = erlang:monotonic_time(millisecond),
	{ok, 2} = py:eval(<<"1+1">>),
	%% A free-threaded build has no GIL for the C call to be stuck behind: the port's own watchdog
	%% cannot tell it from Python code that catches the cancel, so cancel_grace_ms reaps it (modes).
	Bound = case py_port:info(1) of
		#{build := free_threaded} -> ?GRACE + 1500;
		_ -> 1500
	end,
	true = py_ct_helper:elapsed_ms(T1) < Bound.

%% A Python-level loop is interrupted by the cancel: {error, timeout} within the timeout, and the next
%% eval from the same process (same context) answers at once, on the same OS process, with no grace
%% timer left behind.
eval_timeout_cancels(_) ->
	{Slot, _} = py_router:pick(self()),
	OsPid = py_ct_helper:os_pid(Slot),
	T0 = erlang:monotonic_time(millisecond),
	{error, timeout} = py:eval(<<"while True:\n    pass\n">>, #{}, 100),
	true = py_ct_helper:elapsed_ms(T0) < 1000,
	T1 = erlang:monotonic_time(millisecond),
	{ok, 2} = py:eval(<<"1+1">>),
	true = py_ct_helper:elapsed_ms(T1) < 1000,
	OsPid = py_ct_helper:os_pid(Slot),
	[] = py_port:pending_cancels(Slot).

%% time.sleep(30) with 100 ms: {error, timeout} at once; the sleep ignores the cancel, so after the
%% grace the port is killed; the same process's next call waits for that and is served by the new port.
call_sleep_timeout(_) ->
	T0 = erlang:monotonic_time(millisecond),
	{error, timeout} = py:call(time, sleep, [30], #{}, 100),
	true = py_ct_helper:elapsed_ms(T0) < 1000,
	{ok, 2} = py:eval(<<"1+1">>),
	true = py_ct_helper:elapsed_ms(T0) < ?GRACE + 5000.

%% erlang.sleep ends with the cancel: the context answers the next request at once, no kill.
erlang_sleep_is_cancelled(_) ->
	{Slot, _} = py_router:pick(self()),
	OsPid = py_ct_helper:os_pid(Slot),
	{error, timeout} = py:eval(<<"__import__('erlang').sleep(30)">>, #{}, 100),
	T1 = erlang:monotonic_time(millisecond),
	{ok, 2} = py:eval(<<"1+1">>),
	true = py_ct_helper:elapsed_ms(T1) < 1000,
	OsPid = py_ct_helper:os_pid(Slot).

%% Code that swallows the CancelledError keeps running: after the grace the port is condemned and
%% killed. A request another process queued behind it never started, so the condemned port hands it
%% back and it is answered by the new port (PROTOCOL.md §3.7); a request running on the port's other
%% context fails with reason cancel_grace_expired and the traceback of where the stuck one was; the
%% process that timed out waits for the kill and is served by the new port.
ignored_cancel_kills_port_after_grace(_) ->
	{Slot, CtxIndex} = py_router:pick(self()),
	Other = (CtxIndex + 1) rem 2,
	OsPid = py_ct_helper:os_pid(Slot),
	Gen = py_ct_helper:generation(Slot),
	ok = py:exec(<<"import time\ndef stubborn():\n    while True:\n        try:\n"
		"            time.sleep(0.01)\n        except BaseException:\n            pass\n">>),
	T0 = erlang:monotonic_time(millisecond),
	{error, timeout} = py:call('__main__', stubborn, [], #{}, 100),
	{Running, _} = py_ct_helper:spawn_on(Slot, Other, fun() ->
		py:eval(<<"__import__('erlang').sleep(30)">>, #{}, 20000)
	end),
	{ok, 2} = py_ct_helper:on(Slot, CtxIndex, fun() -> py:eval(<<"1+1">>) end, 10000),
	true = py_ct_helper:elapsed_ms(T0) >= ?GRACE,
	receive
		{Running, result, {error, {port_exited, #{reason := cancel_grace_expired, signal := sigkill,
				exit_status := 137, traceback := Tb}}}} ->
			%% SIGUSR1 before the SIGKILL: faulthandler's dump shows where the request was stuck
			true = binary:match(Tb, <<"stubborn">>) =/= nomatch
	after 10000 ->
		error(running_request_not_failed)
	end,
	{ok, 2} = py:eval(<<"1+1">>),
	Elapsed = py_ct_helper:elapsed_ms(T0),
	true = Elapsed >= ?GRACE andalso Elapsed < ?GRACE + 3000,
	NewPid = py_ct_helper:os_pid(Slot),
	true = NewPid =/= OsPid,
	true = py_ct_helper:generation(Slot) > Gen,
	false = py_ct_helper:os_alive(OsPid).

%% While one context is stuck in a timed-out loop, the other context of the same port serves.
other_context_unaffected(_) ->
	Self = self(),
	{A, _} = py_ct_helper:spawn_on(1, 0, fun() ->
		py:eval(<<"__import__('erlang').send(p, 'started')\nwhile True:\n    pass\n">>, #{p => Self}, 1500)
	end),
	receive <<"started">> -> ok after 10000 -> error(not_started) end,
	Quick = py_ct_helper:on(1, 1, fun() ->
		T0 = erlang:monotonic_time(millisecond),
		Rs = [py:eval(<<"n + 1">>, #{n => N}) || N <- lists:seq(1, 20)],
		{Rs, py_ct_helper:elapsed_ms(T0)}
	end),
	{Results, Ms} = Quick,
	Results = [{ok, N + 1} || N <- lists:seq(1, 20)],
	true = Ms < 1000,
	receive {A, result, {error, timeout}} -> ok after 10000 -> error(no_timeout) end.

%% A request queued behind a running one times out, is dropped, and leaves no grace timer behind;
%% the port is not killed.
queued_request_cancel(_) ->
	Self = self(),
	OsPid = py_ct_helper:os_pid(2),
	{A, _} = py_ct_helper:spawn_on(2, 0, fun() ->
		R = py:eval(<<"__import__('erlang').send(p, 'started')\nwhile True:\n    pass\n">>, #{p => Self}, 1000),
		{R, py:eval(<<"1+1">>)}
	end),
	receive <<"started">> -> ok after 10000 -> error(not_started) end,
	{error, timeout} = py_ct_helper:on(2, 0, fun() -> py:eval(<<"1+1">>, #{}, 100) end),
	receive {A, result, {{error, timeout}, {ok, 2}}} -> ok after 10000 -> error(no_timeout) end,
	{ok, 2} = py_ct_helper:on(2, 0, fun() -> py:eval(<<"2*1">>) end),
	[] = py_port:pending_cancels(2),
	OsPid = py_ct_helper:os_pid(2).

%% A zero timeout still gets a clean {error, timeout} or the answer, never a crash or a stray message.
timeout_in_cast_free_port(_) ->
	R = py:eval(<<"1+1">>, #{}, 0),
	true = R =:= {error, timeout} orelse R =:= {ok, 2},
	{ok, 2} = py:eval(<<"1+1">>),
	receive Stray -> error({stray, Stray}) after 100 -> ok end.
