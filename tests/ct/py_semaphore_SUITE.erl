%% py_semaphore: the limit on Python operations in flight, the overload error of py:call/eval/exec,
%% and that a slot comes back on every path, a killed caller's included.
-module(py_semaphore_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1, init_per_testcase/2, end_per_testcase/2]).
-export([docs_status_calls/1, default_limit_allows_100_callers/1, app_env_max_concurrent/1,
	init_is_idempotent/1, set_max_concurrent_takes_effect/1, overload_term_exact/1,
	overload_returns_at_once/1, acquire_timeout/1, acquire_waits_for_release/1,
	release_without_acquire/1, release_after_python_exception/1, release_after_erlang_exception/1,
	release_after_timeout/1, killed_caller_frees_slot/1, killed_holder_frees_slot/1,
	reaper_restart_keeps_reaping/1, nested_call_holds_two_slots/1, race_never_admits_over_max/1,
	call_during_callback_overloaded_when_full/1, reaper_monitors_bounded_by_live_processes/1]).

all() ->
	[docs_status_calls, default_limit_allows_100_callers, app_env_max_concurrent, init_is_idempotent,
	 set_max_concurrent_takes_effect, overload_term_exact, overload_returns_at_once, acquire_timeout,
	 acquire_waits_for_release, release_without_acquire, release_after_python_exception,
	 release_after_erlang_exception, release_after_timeout, killed_caller_frees_slot,
	 killed_holder_frees_slot, reaper_restart_keeps_reaping, nested_call_holds_two_slots,
	 race_never_admits_over_max, call_during_callback_overloaded_when_full,
	 reaper_monitors_bounded_by_live_processes].

init_per_suite(Config) ->
	ok = py_ct_helper:start_app([{num_ports, 2}, {contexts_per_port, 2}]),
	Config.

end_per_suite(_Config) ->
	py_ct_helper:stop_app().

init_per_testcase(_Case, Config) ->
	ok = py_semaphore:set_max_concurrent(py_semaphore:default_max()),
	0 = py_semaphore:current(),
	Config.

end_per_testcase(_Case, _Config) ->
	ok = py_semaphore:set_max_concurrent(py_semaphore:default_max()),
	ok.

%% The docs' calls: max_concurrent/0 is the limit, current/0 is 0 at rest, set_max_concurrent/1 changes it.
docs_status_calls(_) ->
	1024 = py_semaphore:max_concurrent(),
	0 = py_semaphore:current(),
	ok = py_semaphore:set_max_concurrent(50),
	50 = py_semaphore:max_concurrent().

%% The default limit does not refuse 100 concurrent callers (the docs' schedulers * 2 + 1 would on 2
%% cores): every call of 100 processes that start together succeeds.
default_limit_allows_100_callers(_) ->
	Self = self(),
	Pids = [spawn_link(fun() ->
		receive go -> ok after 10000 -> ok end,
		Self ! {self(), [py:eval(<<"__import__('time').sleep(0.01) or 1">>) || _ <- lists:seq(1, 5)]}
	end) || _ <- lists:seq(1, 100)],
	_ = [P ! go || P <- Pids],
	Results = [receive {P, R} -> R after 60000 -> error(timeout) end || P <- Pids],
	[] = [R || Rs <- Results, R <- Rs, R =/= {ok, 1}],
	0 = py_semaphore:current().

%% The max_concurrent application env sets the limit when the application starts.
app_env_max_concurrent(_) ->
	try
		ok = py_ct_helper:start_app([{num_ports, 1}, {contexts_per_port, 1}, {max_concurrent, 17}]),
		17 = py_semaphore:max_concurrent(),
		{ok, 2} = py:eval(<<"1+1">>)
	after
		ok = py_ct_helper:start_app([{num_ports, 2}, {contexts_per_port, 2}])
	end,
	1024 = py_semaphore:max_concurrent().

%% init/0 again keeps the table and the slots held in it.
init_is_idempotent(_) ->
	{Pid, MRef} = hold_slot(),
	1 = py_semaphore:current(),
	ok = py_semaphore:init(),
	1 = py_semaphore:current(),
	release_holder(Pid, MRef),
	0 = py_semaphore:current().

%% A lower limit refuses the next acquire; raising it admits it.
set_max_concurrent_takes_effect(_) ->
	ok = py_semaphore:set_max_concurrent(1),
	ok = py_semaphore:acquire(0),
	1 = py_semaphore:current(),
	{error, max_concurrent} = py_semaphore:acquire(0),
	ok = py_semaphore:set_max_concurrent(2),
	ok = py_semaphore:acquire(0),
	2 = py_semaphore:current(),
	ok = py_semaphore:release(),
	ok = py_semaphore:release(),
	0 = py_semaphore:current().

%% With every slot held by others, py:call, py:eval and py:exec return exactly
%% {error, {overloaded, Current, Max}}; once a slot is free they run again.
overload_term_exact(_) ->
	ok = py_semaphore:set_max_concurrent(3),
	Holders = [hold_slot() || _ <- lists:seq(1, 3)],
	3 = py_semaphore:current(),
	{error, {overloaded, 3, 3}} = py:call(math, sqrt, [16]),
	{error, {overloaded, 3, 3}} = py:call(math, sqrt, [16], #{}),
	{error, {overloaded, 3, 3}} = py:call(math, sqrt, [16], #{}, 5000),
	{error, {overloaded, 3, 3}} = py:eval(<<"1+1">>),
	{error, {overloaded, 3, 3}} = py:eval(<<"x">>, #{x => 1}, 5000),
	{error, {overloaded, 3, 3}} = py:exec(<<"x = 1">>),
	3 = py_semaphore:current(),
	[{P, M} | Rest] = Holders,
	release_holder(P, M),
	{ok, 4.0} = py:call(math, sqrt, [16]),
	_ = [release_holder(P1, M1) || {P1, M1} <- Rest],
	0 = py_semaphore:current().

%% The overload error comes at once, it does not wait for a slot: even when a slot frees 2 s later.
overload_returns_at_once(_) ->
	ok = py_semaphore:set_max_concurrent(1),
	{Pid, MRef} = hold_slot(),
	T0 = erlang:monotonic_time(millisecond),
	{error, {overloaded, 1, 1}} = py:eval(<<"1+1">>),
	Elapsed = py_ct_helper:elapsed_ms(T0),
	?assert(Elapsed < 500, Elapsed),
	release_holder(Pid, MRef).

%% acquire/1 on a full semaphore gives up after its timeout with {error, max_concurrent}.
acquire_timeout(_) ->
	ok = py_semaphore:set_max_concurrent(1),
	{Pid, MRef} = hold_slot(),
	T0 = erlang:monotonic_time(millisecond),
	{error, max_concurrent} = py_semaphore:acquire(200),
	Elapsed = py_ct_helper:elapsed_ms(T0),
	?assert(Elapsed >= 200 andalso Elapsed < 3000, Elapsed),
	1 = py_semaphore:current(),
	release_holder(Pid, MRef).

%% acquire/1 backs off and gets the slot that frees while it waits.
acquire_waits_for_release(_) ->
	ok = py_semaphore:set_max_concurrent(1),
	{Pid, MRef} = hold_slot(),
	_ = timer:apply_after(100, erlang, send, [Pid, release]),
	ok = py_semaphore:acquire(10000),
	receive {'DOWN', MRef, process, Pid, _} -> ok after 5000 -> error(holder_stuck) end,
	1 = py_semaphore:current(),
	ok = py_semaphore:release(),
	0 = py_semaphore:current().

%% release/0 in a process that holds nothing changes nothing (a stray release cannot free another's slot).
release_without_acquire(_) ->
	{Pid, MRef} = hold_slot(),
	ok = py_semaphore:release(),
	ok = py_semaphore:release(),
	1 = py_semaphore:current(),
	release_holder(Pid, MRef).

%% A Python exception ends the call; its slot is back.
release_after_python_exception(_) ->
	{error, {'ZeroDivisionError', _}} = py:eval(<<"1/0">>),
	{error, {'NameError', _}} = py:exec(<<"undefined_name">>),
	{error, {'ModuleNotFoundError', _}} = py:call(no_such_module, f, []),
	0 = py_semaphore:current().

%% An Erlang exception inside the guarded call (code that is not valid Unicode) gives the slot back.
release_after_erlang_exception(_) ->
	{'EXIT', {badarg, _}} = (catch py:eval([16#110000])),
	{'EXIT', {badarg, _}} = (catch py:exec([16#110000])),
	0 = py_semaphore:current().

%% A call that times out gives its slot back when it returns.
release_after_timeout(_) ->
	{error, timeout} = py:eval(<<"__import__('time').sleep(0.5)">>, #{}, 50),
	0 = py_semaphore:current(),
	%% The same process's next call waits for the cancelled one, then runs.
	{ok, 2} = py:eval(<<"1+1">>).

%% A caller killed while its call runs (no `after` runs on kill) does not keep its slot.
killed_caller_frees_slot(_) ->
	Self = self(),
	{Pid, MRef} = spawn_monitor(fun() ->
		Self ! {started, self()},
		py:eval(<<"__import__('time').sleep(1)">>)
	end),
	receive {started, Pid} -> ok after 5000 -> error(no_start) end,
	ok = py_ct_helper:eventually(fun() -> py_semaphore:current() =:= 1 end, 5000),
	exit(Pid, kill),
	receive {'DOWN', MRef, process, Pid, killed} -> ok after 5000 -> error(not_killed) end,
	ok = py_ct_helper:eventually(fun() -> py_semaphore:current() =:= 0 end, 5000).

%% The same for slots taken with acquire/1 directly, several per process.
killed_holder_frees_slot(_) ->
	Self = self(),
	{Pid, MRef} = spawn_monitor(fun() ->
		ok = py_semaphore:acquire(0),
		ok = py_semaphore:acquire(0),
		Self ! {holding, self()},
		receive never -> ok end
	end),
	receive {holding, Pid} -> ok after 5000 -> error(no_hold) end,
	2 = py_semaphore:current(),
	exit(Pid, kill),
	receive {'DOWN', MRef, process, Pid, killed} -> ok after 5000 -> error(not_killed) end,
	ok = py_ct_helper:eventually(fun() -> py_semaphore:current() =:= 0 end, 5000).

%% The reaper restarted by its supervisor monitors the holders it finds in the table, and processes
%% that held a slot under the old reaper tell the new one.
reaper_restart_keeps_reaping(_) ->
	Self = self(),
	Old = whereis(py_semaphore),
	%% A process that has used the old reaper, and will take a slot again under the new one.
	{Later, LaterRef} = spawn_monitor(fun() ->
		ok = py_semaphore:acquire(0),
		ok = py_semaphore:release(),
		Self ! {used, self()},
		receive again -> ok = py_semaphore:acquire(0), Self ! {holding, self()} end,
		receive never -> ok end
	end),
	receive {used, Later} -> ok after 5000 -> error(no_use) end,
	{Holder, HolderRef} = hold_slot(),
	exit(Old, kill),
	ok = py_ct_helper:eventually(fun() ->
		case whereis(py_semaphore) of
			New when is_pid(New), New =/= Old -> true;
			_ -> false
		end
	end, 5000),
	Later ! again,
	receive {holding, Later} -> ok after 5000 -> error(no_hold) end,
	2 = py_semaphore:current(),
	exit(Holder, kill),
	exit(Later, kill),
	receive {'DOWN', HolderRef, process, Holder, _} -> ok after 5000 -> error(not_killed) end,
	receive {'DOWN', LaterRef, process, Later, _} -> ok after 5000 -> error(not_killed) end,
	ok = py_ct_helper:eventually(fun() -> py_semaphore:current() =:= 0 end, 5000).

%% A py call made by an Erlang function that Python calls back holds its own slot beside the outer
%% call's; both are back afterwards.
nested_call_holds_two_slots(_) ->
	ok = py:register_function(sem_count, fun([]) -> py_semaphore:current() end),
	ok = py:register_function(sem_inner, fun([]) -> py:eval(<<"erlang.call('sem_count')">>) end),
	%% The outer eval calls sem_inner, whose eval calls sem_count: two evals in flight. (The inner
	%% result crosses Python, so its atoms come back as binaries.)
	{ok, {<<"ok">>, 2}} = py:eval(<<"erlang.call('sem_inner')">>),
	0 = py_semaphore:current().

%% A nested call when the outer one took the last slot is refused like any other, and Python sees
%% the callback's error.
call_during_callback_overloaded_when_full(_) ->
	ok = py_semaphore:set_max_concurrent(1),
	ok = py:register_function(sem_full, fun([]) -> py:eval(<<"2">>) end),
	{ok, {<<"error">>, {<<"overloaded">>, 1, 1}}} = py:eval(<<"erlang.call('sem_full')">>),
	0 = py_semaphore:current().

%% Many processes acquiring at once: never more than Max get a slot at the same time, at least one does.
race_never_admits_over_max(_) ->
	Max = 5,
	ok = py_semaphore:set_max_concurrent(Max),
	Self = self(),
	Pids = [spawn_link(fun() ->
		receive go -> ok after 10000 -> ok end,
		R = py_semaphore:acquire(0),
		Self ! {self(), R},
		receive done -> ok after 10000 -> ok end,
		_ = py_semaphore:release()
	end) || _ <- lists:seq(1, 60)],
	_ = [P ! go || P <- Pids],
	Results = [receive {P, R} -> R after 10000 -> error(timeout) end || P <- Pids],
	Admitted = length([ok || ok <- Results]),
	?assert(Admitted >= 1 andalso Admitted =< Max, Admitted),
	Admitted = py_semaphore:current(),
	_ = [P ! done || P <- Pids],
	ok = py_ct_helper:eventually(fun() -> py_semaphore:current() =:= 0 end, 5000).

%% The reaper monitors a process once, however many calls it makes, and forgets it when it exits:
%% its monitors are bounded by the live processes that have held a slot.
reaper_monitors_bounded_by_live_processes(_) ->
	Reaper = whereis(py_semaphore),
	Monitors = fun() -> {monitors, Ms} = process_info(Reaper, monitors), length(Ms) end,
	Base = Monitors(),
	Self = self(),
	Pids = [spawn(fun() ->
		_ = [{ok, 2} = py:eval(<<"1+1">>) || _ <- lists:seq(1, 5)],
		Self ! {done, self()},
		receive exit -> ok after 10000 -> ok end
	end) || _ <- lists:seq(1, 20)],
	_ = [receive {done, P} -> ok after 10000 -> error(no_done) end || P <- Pids],
	ok = py_ct_helper:eventually(fun() -> Monitors() =:= Base + 20 end, 5000),
	_ = [P ! exit || P <- Pids],
	ok = py_ct_helper:eventually(fun() -> Monitors() =:= Base end, 5000).

%% Internal.

%% A process that holds one slot until it gets `release` (then gives it back and exits).
hold_slot() ->
	Self = self(),
	{Pid, MRef} = spawn_monitor(fun() ->
		ok = py_semaphore:acquire(0),
		Self ! {holding, self()},
		receive release -> ok = py_semaphore:release() after 60000 -> ok end
	end),
	receive {holding, Pid} -> {Pid, MRef} after 5000 -> error(no_hold) end.

release_holder(Pid, MRef) ->
	Pid ! release,
	receive {'DOWN', MRef, process, Pid, normal} -> ok after 5000 -> error(holder_stuck) end.
