%% Fault injection: kill -9, SIGSTOP (with and without timeouts on the stopped port's callers),
%% os._exit, a segfault, memory exhaustion under an rlimit and a closed stdin, each with 100 requests
%% in flight. Every caller is answered, the restart time is measured (ct:pal), and nothing is left
%% behind: VM ports, OS processes, port threads, py_inflight rows, the owner's monitors. Restart
%% backoff does not punish a port for deaths it did not cause.
-module(py_fault_SUITE).

-include_lib("common_test/include/ct.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1, init_per_testcase/2, end_per_testcase/2]).
-export([kill_9/1, sigstop_then_cont/1, sigstop_with_timeouts/1, os_exit/1, segfault/1,
	memory_rlimit/1, stdin_closed/1, backoff_spares_killed_ports/1, backoff_for_own_deaths/1]).

-define(N, 100).
-define(GRACE, 1000).
-define(SLOT, 1).
%% A wait inside the port (cancellable, releases the GIL): the 100 requests stay in flight.
-define(WAIT, <<"erlang.sleep(30)">>).
%% Held until the test sets the state key fault_go: one runs, the others queue behind it, all in
%% flight; once released they finish at once.
-define(HELD, <<"while erlang.state_get('fault_go') is None:\n    erlang.sleep(0.005)\n">>).

all() ->
	[kill_9, sigstop_then_cont, sigstop_with_timeouts, os_exit, segfault, memory_rlimit, stdin_closed,
	 backoff_spares_killed_ports, backoff_for_own_deaths].

init_per_suite(Config) ->
	ok = py_ct_helper:start_app([{num_ports, 2}, {contexts_per_port, 2}, {cancel_grace_ms, ?GRACE},
		{start_timeout, 10000}]),
	warm(?SLOT),
	[{threads, threads(py_ct_helper:os_pid(?SLOT))} | Config].

end_per_suite(_Config) ->
	py_ct_helper:stop_app().

init_per_testcase(Case, Config) ->
	warm(?SLOT),
	ok = py:state_remove(<<"fault_go">>),
	#{owner := Owner} = py_port:info(?SLOT),
	ok = py_ct_helper:eventually(fun() -> ets:info(py_inflight, size) =:= 0 end, 10000),
	[{name, atom_to_list(Case)}, {owner, Owner}, {vm_ports, length(erlang:ports())}, {monitors, monitors(Owner)} | Config].

end_per_testcase(_Case, _Config) ->
	ok.

%% kill -9 from outside: all 100 fail with sigkill.
kill_9(Config) ->
	fault(Config, ?WAIT, infinity, fun(OsPid) -> os_kill("-KILL", OsPid) end,
		fun({error, {port_exited, #{signal := sigkill, reason := crashed}}}) -> true end).

%% SIGSTOP, then SIGCONT: callers without a timeout just wait; once the port runs again every one
%% of them is answered, by the same OS process.
sigstop_then_cont(_Config) ->
	OsPid = py_ct_helper:os_pid(?SLOT),
	Callers = inflight(?SLOT, ?N, ?HELD, infinity, fun() ->
		os_kill("-STOP", OsPid),
		ok = py:state_store(<<"fault_go">>, true)
	end),
	timer:sleep(300),
	%% nobody is answered while the port is stopped
	{messages, []} = erlang:process_info(self(), messages),
	os_kill("-CONT", OsPid),
	Results = collect(Callers, 30000),
	[] = [R || R <- Results, R =/= {ok, none}],
	OsPid = py_ct_helper:os_pid(?SLOT).

%% SIGSTOP with 500 ms timeouts: every caller gets {error, timeout} at its deadline; the cancels go
%% unanswered, so after the grace the port is killed (a stopped process dies of SIGKILL) and
%% restarted.
sigstop_with_timeouts(Config) ->
	T0 = erlang:monotonic_time(millisecond),
	Check = fun({error, timeout}) -> true end,
	fault(Config, ?WAIT, 500, fun(OsPid) -> os_kill("-STOP", OsPid) end, Check),
	%% the deadlines held while the port was stopped
	true = py_ct_helper:elapsed_ms(T0) >= ?GRACE.

%% os._exit(1) in the other context: all 100 in flight fail with its exit status.
os_exit(Config) ->
	fault(Config, ?WAIT, infinity, fun(_) -> trigger(<<"__import__('os')._exit(1)">>) end,
		fun({error, {port_exited, #{exit_status := 1, reason := crashed}}}) -> true end).

%% A segfault: all fail with sigsegv and faulthandler's traceback.
segfault(Config) ->
	fault(Config, ?WAIT, infinity, fun(_) -> trigger(<<"__import__('ctypes').string_at(0)">>) end,
		fun({error, {port_exited, #{signal := sigsegv, traceback := Tb}}}) -> byte_size(Tb) > 0 end).

%% Memory exhaustion under an address-space rlimit: the allocating request gets MemoryError, the port
%% lives on and the 100 requests in flight all succeed.
memory_rlimit(_Config) ->
	OsPid = py_ct_helper:os_pid(?SLOT),
	Self = self(),
	Callers = inflight(?SLOT, ?N, ?HELD, infinity, fun() ->
		{P, _} = py_ct_helper:spawn_on(?SLOT, 1, fun() ->
			py:eval(<<"import resource\n"
				"soft, hard = resource.getrlimit(resource.RLIMIT_AS)\n"
				"vm = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()\n"
				"resource.setrlimit(resource.RLIMIT_AS, (vm + 64 * 2**20, hard))\n"
				"try:\n    block = bytearray(2**30)\nfinally:\n    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))\n">>,
				#{}, 30000)
		end),
		Self ! {trigger, P},
		%% the 100 go on once the allocation has failed
		receive {P, result, R} -> Self ! {P, result, R} after 30000 -> error(no_memory_error) end,
		ok = py:state_store(<<"fault_go">>, true)
	end),
	Results = collect(Callers, 30000),
	[] = [R || R <- Results, R =/= {ok, none}],
	receive {trigger, P} -> receive {P, result, {error, {'MemoryError', _}}} -> ok after 30000 -> error(no_memory_error) end
	after 5000 -> error(no_trigger)
	end,
	{ok, 2} = py:eval(<<"1+1">>, #{}, 10000),
	OsPid = py_ct_helper:os_pid(?SLOT).

%% The port's stdin closed under the owner (port_close from another process): the owner sees its
%% port close without an exit status, makes sure the OS process is gone and fails the 100.
stdin_closed(Config) ->
	#{port := Port} = py_port:info(?SLOT),
	fault(Config, ?WAIT, infinity, fun(_) -> true = port_close(Port) end,
		fun({error, {port_exited, #{}}}) -> true end).

%% Six kill -9 in a row, each right after the port's hello: the port did not cause them, so each
%% restart is immediate (the backoff for self-inflicted fast deaths would reach 1.6 s by the sixth).
backoff_spares_killed_ports(_Config) ->
	Times = [begin
		OsPid = py_ct_helper:os_pid(?SLOT),
		Gen = py_ct_helper:generation(?SLOT),
		T0 = erlang:monotonic_time(millisecond),
		os_kill("-KILL", OsPid),
		ok = await_up(?SLOT, Gen, 10000),
		py_ct_helper:elapsed_ms(T0)
	end || _ <- lists:seq(1, 6)],
	ct:pal("restart times after six kill -9 in a row: ~w ms", [Times]),
	true = lists:max(Times) < 1000,
	{ok, 2} = py_ct_helper:on(?SLOT, 0, fun() -> py:eval(<<"1+1">>, #{}, 10000) end).

%% The counterpart: a port that keeps exiting on its own right after its start is restarted with
%% growing delays (0, 0, 100, 200 ms for four such deaths in a row). On slot 2, which has no history
%% in this suite (and keeps this one for a minute).
backoff_for_own_deaths(_Config) ->
	Times = [begin
		Gen = py_ct_helper:generation(2),
		T0 = erlang:monotonic_time(millisecond),
		{error, {port_exited, #{exit_status := 4}}} =
			py_ct_helper:on(2, 0, fun() -> py:eval(<<"__import__('os')._exit(4)">>, #{}, 10000) end),
		ok = await_up(2, Gen, 10000),
		py_ct_helper:elapsed_ms(T0)
	end || _ <- lists:seq(1, 4)],
	ct:pal("restart times after four os._exit in a row: ~w ms", [Times]),
	true = lists:last(Times) >= 200.

%% Helpers.

%% 100 requests in flight on ?SLOT's first context, then Inject(OsPid); every caller's answer must
%% pass Check; then the slot is back, measured, and nothing leaked.
fault(Config, Code, Timeout, Inject, Check) ->
	OsPid = py_ct_helper:os_pid(?SLOT),
	Gen = py_ct_helper:generation(?SLOT),
	T0 = erlang:monotonic_time(millisecond),
	Callers = inflight(?SLOT, ?N, Code, Timeout, fun() -> Inject(OsPid) end),
	Results = collect(Callers, 30000),
	ok = await_up(?SLOT, Gen, 30000),
	Restart = py_ct_helper:elapsed_ms(T0),
	ct:pal("~s: 100 callers answered, slot up again ~b ms after the fault", [?config(name, Config), Restart]),
	Bad = [R || R <- Results, (try Check(R) catch _:_ -> false end) =/= true],
	[] = Bad,
	no_leaks(Config, OsPid).

%% Starts N callers routed to {Slot, 0}; once all N are in flight runs Inject. Returns the callers.
inflight(Slot, N, Code, Timeout, Inject) ->
	Callers = [element(1, py_ct_helper:spawn_on(Slot, 0, fun() -> py:eval(Code, #{}, Timeout) end))
		|| _ <- lists:seq(1, N)],
	ok = py_ct_helper:eventually(fun() -> inflight_count(Slot) >= N end, 10000),
	_ = Inject(),
	Callers.

inflight_count(Slot) ->
	ets:select_count(py_inflight, [{{'_', '_', Slot}, [], [true]}]).

collect(Callers, Timeout) ->
	Deadline = erlang:monotonic_time(millisecond) + Timeout,
	[receive
		{P, result, R} -> R
	after max(0, Deadline - erlang:monotonic_time(millisecond)) ->
		error({caller_not_answered, P})
	end || P <- Callers].

%% A request in the slot's other context.
trigger(Code) ->
	_ = py_ct_helper:spawn_on(?SLOT, 1, fun() -> py:eval(Code, #{}, 30000) end),
	ok.

await_up(Slot, Gen, Timeout) ->
	py_ct_helper:eventually(fun() ->
		case py_port:info(Slot) of
			#{status := up, generation := G} -> G > Gen;
			_ -> false
		end
	end, Timeout).

%% After a fault: the old OS process is gone, this VM runs exactly two ports, no request is left in
%% py_inflight, the VM has no more ports than before, the owner is the same and holds no more
%% monitors than before, and the new port runs as many threads as a fresh one.
no_leaks(Config, OldOsPid) ->
	ok = py_ct_helper:eventually(fun() -> not py_ct_helper:os_alive(OldOsPid) end, 5000),
	ok = py_ct_helper:eventually(fun() -> length(py_ct_helper:vm_ports()) =:= 2 end, 5000),
	ok = py_ct_helper:eventually(fun() -> ets:info(py_inflight, size) =:= 0 end, 5000),
	ok = py_ct_helper:eventually(fun() -> length(erlang:ports()) =< ?config(vm_ports, Config) end, 5000),
	Owner = ?config(owner, Config),
	#{owner := Owner} = py_port:info(?SLOT),
	ok = py_ct_helper:eventually(fun() -> monitors(Owner) =< ?config(monitors, Config) end, 5000),
	warm(?SLOT),
	Threads = ?config(threads, Config),
	Threads = threads(py_ct_helper:os_pid(?SLOT)),
	ok.

%% One request on each context of Slot.
warm(Slot) ->
	_ = [{ok, 2} = py_ct_helper:on(Slot, C, fun() -> py:eval(<<"1+1">>, #{}, 30000) end) || C <- [0, 1]],
	ok.

threads(OsPid) ->
	{ok, Tasks} = file:list_dir("/proc/" ++ integer_to_list(OsPid) ++ "/task"),
	length(Tasks).

monitors(Pid) ->
	{monitors, Ms} = erlang:process_info(Pid, monitors),
	length(Ms).

os_kill(Sig, OsPid) ->
	_ = os:cmd("kill " ++ Sig ++ " " ++ integer_to_list(OsPid)),
	ok.
