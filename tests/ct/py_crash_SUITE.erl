%% Crash isolation: a dying Python process fails what was in flight with a reason, is restarted, and
%% never takes the node or other ports with it. No port outlives the application.
-module(py_crash_SUITE).

-include_lib("common_test/include/ct.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1, init_per_testcase/2, end_per_testcase/2]).
-export([os_exit_status/1, segfault_signal_and_traceback/1, inflight_requests_fail_together/1,
	external_kill/1, repeated_crashes_recover/1, crash_spares_other_port/1,
	env_state_gone_after_crash/1, stop_leaves_no_port/1, vm_death_takes_ports/1]).

all() ->
	[os_exit_status, segfault_signal_and_traceback, inflight_requests_fail_together, external_kill,
	 repeated_crashes_recover, crash_spares_other_port, env_state_gone_after_crash, stop_leaves_no_port,
	 vm_death_takes_ports].

init_per_suite(Config) ->
	Config.

end_per_suite(_Config) ->
	py_ct_helper:stop_app().

init_per_testcase(_Case, Config) ->
	case whereis(erlang_python_sup) of
		undefined -> ok = py_ct_helper:start_app([{num_ports, 2}, {contexts_per_port, 2}]);
		_ -> ok
	end,
	[{owners, [maps:get(owner, py_port:info(S)) || S <- [1, 2]]} | Config].

end_per_testcase(stop_leaves_no_port, _Config) ->
	ok;
end_per_testcase(_Case, Config) ->
	%% The owners survive every crash of their OS process.
	Owners = ?config(owners, Config),
	Owners = [maps:get(owner, py_port:info(S)) || S <- [1, 2]],
	ok.

%% os._exit(3) fails the request with the exit status; the next call gets a new port.
os_exit_status(_) ->
	{Slot, _} = py_router:pick(self()),
	OsPid = py_ct_helper:os_pid(Slot),
	{error, {port_exited, #{exit_status := 3, signal := undefined, reason := crashed}}} =
		py:eval(<<"__import__('os')._exit(3)">>),
	{ok, 2} = py:eval(<<"1+1">>),
	true = py_ct_helper:os_pid(Slot) =/= OsPid,
	false = py_ct_helper:os_alive(OsPid).

%% A segfault is reported as sigsegv with faulthandler's traceback from the crash file.
segfault_signal_and_traceback(_) ->
	{error, {port_exited, #{signal := sigsegv, exit_status := 139, traceback := Tb, reason := crashed}}} =
		py:eval(<<"__import__('ctypes').string_at(0)">>),
	true = byte_size(Tb) > 0,
	true = binary:match(Tb, [<<"Segmentation fault">>, <<"Fatal Python error">>]) =/= nomatch,
	{ok, 2} = py:eval(<<"1+1">>).

%% Requests running in the other context of the crashing port fail with the same reason.
inflight_requests_fail_together(_) ->
	Self = self(),
	Sleeper = fun() ->
		py:eval(<<"__import__('erlang').send(p, 'sleeping') or __import__('time').sleep(30)">>, #{p => Self})
	end,
	{S1, _} = py_ct_helper:spawn_on(1, 1, Sleeper),
	receive <<"sleeping">> -> ok after 10000 -> error(not_sleeping) end,
	T0 = erlang:monotonic_time(millisecond),
	{error, {port_exited, #{exit_status := 7}}} = py_ct_helper:on(1, 0, fun() ->
		py:eval(<<"__import__('os')._exit(7)">>)
	end),
	receive {S1, result, {error, {port_exited, #{exit_status := 7}}}} -> ok after 10000 -> error(not_failed) end,
	true = py_ct_helper:elapsed_ms(T0) < 5000,
	{ok, 2} = py_ct_helper:on(1, 1, fun() -> py:eval(<<"1+1">>) end).

%% A port killed from outside (kill -9) fails its requests with sigkill and is restarted.
external_kill(_) ->
	Self = self(),
	OsPid = py_ct_helper:os_pid(2),
	{S, _} = py_ct_helper:spawn_on(2, 0, fun() ->
		py:eval(<<"__import__('erlang').send(p, 'sleeping') or __import__('time').sleep(30)">>, #{p => Self})
	end),
	receive <<"sleeping">> -> ok after 10000 -> error(not_sleeping) end,
	_ = os:cmd("kill -9 " ++ integer_to_list(OsPid)),
	receive
		{S, result, {error, {port_exited, #{signal := sigkill, reason := crashed}}}} -> ok
	after 10000 ->
		error(not_failed)
	end,
	{ok, 2} = py_ct_helper:on(2, 0, fun() -> py:eval(<<"1+1">>) end).

%% Crashing a freshly restarted port again and again (backoff) still ends with a working port.
repeated_crashes_recover(_) ->
	{Slot, _} = py_router:pick(self()),
	Gen = py_ct_helper:generation(Slot),
	_ = [{error, {port_exited, #{exit_status := 5}}} = py:eval(<<"__import__('os')._exit(5)">>)
		|| _ <- lists:seq(1, 4)],
	{ok, 2} = py:eval(<<"1+1">>),
	true = py_ct_helper:generation(Slot) >= Gen + 4.

%% A crash of one port leaves the other port's OS process and its environments alone.
crash_spares_other_port(_) ->
	Other = py_ct_helper:os_pid(2),
	ok = py_ct_helper:on(2, 0, fun() -> py:exec(<<"kept = 'yes'">>) end),
	{error, {port_exited, _}} = py_ct_helper:on(1, 0, fun() -> py:eval(<<"__import__('os')._exit(1)">>) end),
	Other = py_ct_helper:os_pid(2),
	true = is_process_alive(whereis(erlang_python_sup)).

%% A process's environment lives in its port: after a crash it starts empty.
env_state_gone_after_crash(_) ->
	{Slot, _} = py_router:pick(self()),
	ok = py:exec(<<"before_crash = 1">>),
	{ok, 1} = py:eval(<<"before_crash">>),
	{error, {port_exited, _}} = py:eval(<<"__import__('os')._exit(9)">>),
	{error, {'NameError', _}} = py:eval(<<"before_crash">>),
	%% the new port knows only the environment this last eval created
	1 = py_ct_helper:env_count(Slot).

%% After application:stop no erlang_python_port process of this VM remains.
stop_leaves_no_port(_) ->
	%% both ports up (one may still be in its restart backoff after the crashes above)
	_ = [{ok, 2} = py_ct_helper:on(S, 0, fun() -> py:eval(<<"1+1">>) end) || S <- [1, 2]],
	OsPids = [P || #{os_pid := P} <- py:stats()],
	2 = length(OsPids),
	true = lists:all(fun py_ct_helper:os_alive/1, OsPids),
	ok = application:stop(erlang_python),
	[] = [P || P <- OsPids, py_ct_helper:os_alive(P)],
	[] = py_ct_helper:vm_ports(),
	undefined = py_port:info(1),
	{error, not_started} = py:eval(<<"1+1">>).

%% No orphans when the VM itself is killed (no application:stop, no port_close): a separate VM starts
%% the application, prints its ports' OS pids and is killed with SIGKILL; its ports die with it
%% (stdin EOF, and PR_SET_PDEATHSIG when their parent goes).
vm_death_takes_ports(_) ->
	Erl = os:find_executable("erl"),
	Ebin = filename:dirname(code:which(py)),
	Eval = "{ok, _} = application:ensure_all_started(erlang_python), "
		"[io:format(\"port ~b~n\", [P]) || #{os_pid := P} <- py:stats()], "
		"io:format(\"ready~n\"), receive after infinity -> ok end.",
	Vm = open_port({spawn_executable, Erl}, [{args, ["-noshell", "-pa", Ebin, "-eval", Eval]},
		{line, 1024}, exit_status, use_stdio]),
	{os_pid, VmOsPid} = erlang:port_info(Vm, os_pid),
	PortPids = read_port_pids(Vm, []),
	2 = length(PortPids),
	true = lists:all(fun py_ct_helper:os_alive/1, PortPids),
	_ = os:cmd("kill -9 " ++ integer_to_list(VmOsPid)),
	receive {Vm, {exit_status, _}} -> ok after 10000 -> error(vm_not_dead) end,
	ok = py_ct_helper:eventually(fun() -> not lists:any(fun py_ct_helper:os_alive/1, PortPids) end, 5000).

read_port_pids(Vm, Acc) ->
	receive
		{Vm, {data, {eol, "port " ++ N}}} -> read_port_pids(Vm, [list_to_integer(N) | Acc]);
		{Vm, {data, {eol, "ready"}}} -> Acc;
		{Vm, {data, _}} -> read_port_pids(Vm, Acc);
		{Vm, {exit_status, S}} -> error({vm_exited, S})
	after 30000 ->
		error(vm_not_ready)
	end.
