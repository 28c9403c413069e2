%% Review 4 of owngil (issue 8): adversarial cases around the life of a sub-interpreter: a destroy
%% while its Python code has a non-daemon thread running or a request in flight, py:interrupt racing
%% a destroy, erlang.Pid/Ref made in one context sent to another through Erlang.
%% Skipped with the reason where the port does not offer owngil (as py_owngil_SUITE).
-module(py_review4_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_testcase/2, end_per_testcase/2]).
-export([destroy_with_running_thread/1, destroy_with_request_in_flight/1, interrupt_races_destroy/1,
	pid_and_ref_cross_contexts/1]).

all() ->
	[destroy_with_running_thread, destroy_with_request_in_flight, interrupt_races_destroy,
	 pid_and_ref_cross_contexts].

init_per_testcase(_Case, Config) ->
	ok = py_ct_helper:start_app([{num_ports, 1}, {contexts_per_port, 2}]),
	case py:subinterp_supported() of
		true -> Config;
		false ->
			py_ct_helper:stop_app(),
			{skip, "owngil is not offered by this port"}
	end.

end_per_testcase(_Case, _Config) ->
	py_ct_helper:stop_app().

new() ->
	{ok, Ctx} = py_context:new(#{mode => owngil}),
	Ctx.

alive(OsPid) ->
	?assertEqual(OsPid, py_ct_helper:os_pid(1)),
	{ok, 2} = py:eval(<<"1+1">>),
	Ctx = new(),
	{ok, 3} = py:eval(Ctx, <<"1+2">>),
	ok = py_context:stop(Ctx).

%% A non-daemon thread still running (and allocating) when the context is destroyed: the interpreter
%% waits for it, the port does not abort.
destroy_with_running_thread(_) ->
	OsPid = py_ct_helper:os_pid(1),
	Ctx = new(),
	ok = py:exec(Ctx, <<"import threading, time\n"
		"def work():\n    end = time.time() + 0.5\n    while time.time() < end:\n        [str(i) for i in range(100)]\n"
		"t = threading.Thread(target=work)\nt.start()\n">>),
	ok = py_context:stop(Ctx),
	alive(OsPid).

%% A destroy while a request (and a callback into Erlang) is in flight.
destroy_with_request_in_flight(_) ->
	OsPid = py_ct_helper:os_pid(1),
	lists:foreach(fun(_) ->
		Ctx = new(),
		Self = self(),
		spawn(fun() -> Self ! {done, catch py_context:eval(Ctx, <<"__import__('erlang').sleep(0.2) or 1">>, #{}, 5000)} end),
		timer:sleep(50),
		_ = (catch py_context:stop(Ctx)),
		receive {done, _} -> ok after 10000 -> ct:fail(no_answer) end
	end, lists:seq(1, 5)),
	alive(OsPid).

%% py:interrupt sent again and again while the context is destroyed.
interrupt_races_destroy(_) ->
	OsPid = py_ct_helper:os_pid(1),
	lists:foreach(fun(_) ->
		Ctx = new(),
		Self = self(),
		spawn(fun() -> Self ! {done, catch py_context:eval(Ctx, <<"while True:\n    pass\n">>, #{}, 5000)} end),
		timer:sleep(50),
		Pinger = spawn(fun Loop() -> _ = (catch py:interrupt(Ctx)), timer:sleep(1), Loop() end),
		_ = (catch py_context:stop(Ctx)),
		exit(Pinger, kill),
		receive {done, _} -> ok after 10000 -> ct:fail(no_answer) end
	end, lists:seq(1, 5)),
	alive(OsPid).

%% erlang.Pid and erlang.Ref made in one owngil context go to another (and to the main interpreter)
%% through Erlang: they convert there.
pid_and_ref_cross_contexts(_) ->
	A = new(),
	B = new(),
	Me = self(),
	R = make_ref(),
	ok = py:exec(A, <<"def keep(p, r):\n    global kp, kr\n    kp, kr = p, r\n    return (p, r)\n">>),
	{ok, {Me, R}} = py:call(A, '__main__', keep, [Me, R]),
	{ok, {Me, R}} = py:eval(A, <<"(kp, kr)">>),
	{ok, P2} = py:eval(A, <<"kp">>),
	{ok, true} = py:eval(B, <<"isinstance(p, __import__('erlang').Pid) and p == p">>, #{p => P2}),
	{ok, true} = py:eval(<<"isinstance(p, __import__('erlang').Pid)">>, #{p => P2}),
	ok = py_context:stop(A),
	{ok, {Me, R}} = py:eval(B, <<"(p, r)">>, #{p => Me, r => R}),
	ok = py_context:stop(B).
