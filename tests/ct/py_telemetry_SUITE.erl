%% Telemetry events (py_telemetry: through a `telemetry' module when the node has one, else debug
%% logger events) and the counters of py:stats/0 and py:pool_stats/0 (py_stats). The node has no
%% telemetry application, so this suite compiles a fake `telemetry' module that forwards every event.
-module(py_telemetry_SUITE).

-include_lib("common_test/include/ct.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1, init_per_testcase/2, end_per_testcase/2]).
-export([log/2]).
-export([request_start_stop/1, request_exception_python_error/1, request_exception_timeout/1,
	named_pool_meta_and_stats/1, port_exit_restart_start/1, queue_depth/1, logger_fallback/1,
	logger_fallback_silent_without_debug/1, port_counters/1, percentiles/1]).

all() ->
	[request_start_stop, request_exception_python_error, request_exception_timeout,
	 named_pool_meta_and_stats, port_exit_restart_start, queue_depth, port_counters, percentiles,
	 logger_fallback, logger_fallback_silent_without_debug].

-define(FAKE, <<"
-module(telemetry).
-export([execute/3]).
execute(Event, Measurements, Meta) ->
    case persistent_term:get(fake_telemetry_pid, undefined) of
        undefined -> ok;
        Pid -> Pid ! {telemetry, Event, Measurements, Meta}, ok
    end.
">>).

init_per_suite(Config) ->
	Dir = filename:join(?config(priv_dir, Config), "fake_telemetry"),
	ok = filelib:ensure_dir(filename:join(Dir, "x")),
	Src = filename:join(Dir, "telemetry.erl"),
	ok = file:write_file(Src, ?FAKE),
	{ok, telemetry} = compile:file(Src, [{outdir, Dir}]),
	true = code:add_patha(Dir),
	non_existing =/= code:which(telemetry) orelse error(fake_not_found),
	ok = py_ct_helper:start_app([{num_ports, 2}, {contexts_per_port, 2}, {telemetry_interval_ms, 100}]),
	telemetry = py_telemetry:mode(),
	[{fake_dir, Dir} | Config].

end_per_suite(Config) ->
	_ = persistent_term:erase(fake_telemetry_pid),
	_ = code:purge(telemetry), _ = code:delete(telemetry), _ = code:purge(telemetry),
	_ = code:del_path(?config(fake_dir, Config)),
	_ = py_telemetry:refresh(),
	py_ct_helper:stop_app().

init_per_testcase(_, Config) ->
	ok = persistent_term:put(fake_telemetry_pid, self()),
	Config.

end_per_testcase(_, _Config) ->
	_ = persistent_term:erase(fake_telemetry_pid),
	flush(),
	ok.

%% logger handler of logger_fallback.
log(#{level := Level, msg := Msg, meta := #{domain := [erlang_python, telemetry]}}, #{config := #{pid := Pid}}) ->
	Pid ! {logged, Level, Msg},
	ok;
log(_, _) ->
	ok.

%% A py:call is a start event and a stop event with its duration (native units), kind, slot and pool.
request_start_stop(_) ->
	{ok, 4.0} = py:call(math, sqrt, [16]),
	{[erlang_python, request, start], #{monotonic_time := T0, system_time := _}, #{kind := call, slot := Slot}} =
		event([erlang_python, request, start]),
	{[erlang_python, request, stop], #{duration := D, monotonic_time := T1},
	 #{kind := call, slot := Slot, pool := default}} = event([erlang_python, request, stop]),
	true = is_integer(D) andalso D >= 0 andalso T1 >= T0,
	ok = py:exec(<<"x = 1">>),
	{_, _, #{kind := exec}} = event([erlang_python, request, stop]),
	{ok, 1} = py:eval(<<"x">>),
	{_, _, #{kind := eval}} = event([erlang_python, request, stop]).

%% A call that returns {error, Reason} ends with an exception event carrying Reason.
request_exception_python_error(_) ->
	{error, {'ZeroDivisionError', _}} = py:eval(<<"1/0">>),
	{_, #{duration := _}, #{kind := eval, reason := {'ZeroDivisionError', "division by zero"}}} =
		event([erlang_python, request, exception]),
	no_event([erlang_python, request, stop]).

request_exception_timeout(_) ->
	{error, timeout} = py:eval(<<"__import__('time').sleep(0.5)">>, #{}, 50),
	{_, #{duration := D}, #{reason := timeout}} = event([erlang_python, request, exception]),
	true = erlang:convert_time_unit(D, native, millisecond) >= 40.

%% Requests on a named pool carry its name; py:pool_stats/0 counts them per pool.
named_pool_meta_and_stats(_) ->
	{ok, _} = py_context_router:start_pool(tele_pool, 1),
	Before = maps:get(tele_pool, py:pool_stats(), #{requests => 0, errors => 0}),
	{ok, 2.0} = py:call(tele_pool, math, sqrt, [4]),
	{error, _} = py:call(tele_pool, math, sqrt, [-1]),
	{_, _, #{pool := tele_pool}} = event([erlang_python, request, stop]),
	{_, _, #{pool := tele_pool, reason := {'ValueError', _}}} = event([erlang_python, request, exception]),
	#{tele_pool := #{requests := R, errors := E, timeouts := 0, latency_us := #{p50 := P50, p99 := P99}}} =
		py:pool_stats(),
	2 = R - maps:get(requests, Before),
	1 = E - maps:get(errors, Before),
	true = P50 =< P99,
	#{default := #{requests := DR}} = py:pool_stats(),
	true = DR > 0,
	ok = py_context_router:stop_pool(tele_pool).

%% A port killed from outside: exit (with the signal), restart (with its delay), start (its start-up
%% time), and one more restart in its py:stats/0 entry.
port_exit_restart_start(_) ->
	[#{restarts := R0} | _] = py:stats(),
	OsPid = py_ct_helper:os_pid(1),
	Gen = py_ct_helper:generation(1),
	_ = os:cmd("kill -9 " ++ integer_to_list(OsPid)),
	{_, #{uptime_ms := Up}, #{slot := 1, os_pid := OsPid, signal := sigkill, reason := crashed}} =
		event([erlang_python, port, exit]),
	true = is_integer(Up) andalso Up >= 0,
	{_, #{delay_ms := 0}, #{slot := 1}} = event([erlang_python, port, restart]),
	NewGen = Gen + 1,
	{_, #{duration := D}, #{slot := 1, generation := NewGen, os_pid := NewPid}} = event([erlang_python, port, start]),
	true = D > 0 andalso NewPid =/= OsPid,
	[#{restarts := R1} | _] = py:stats(),
	1 = R1 - R0.

%% Every telemetry_interval_ms (100 here) each port reports requests in flight and the owner's mailbox.
queue_depth(_) ->
	{_, #{inflight := I, owner_queue := Q}, #{slot := _}} = event([erlang_python, queue, depth]),
	true = is_integer(I) andalso is_integer(Q),
	Self = self(),
	_ = spawn(fun() ->
		{ok, 1} = py_ct_helper:on(1, 0, fun() -> Self ! started, py:eval(<<"__import__('time').sleep(1) or 1">>) end),
		Self ! busy_done
	end),
	receive started -> ok after 5000 -> error(not_started) end,
	ok = wait_depth(1, 50),
	receive busy_done -> ok after 10000 -> error(busy_not_done) end.

wait_depth(_, 0) ->
	error(no_depth_with_inflight);
wait_depth(Slot, N) ->
	case event([erlang_python, queue, depth]) of
		{_, #{inflight := I}, #{slot := Slot}} when I >= 1 -> ok;
		_ -> wait_depth(Slot, N - 1)
	end.

%% py:stats/0 per port: requests, errors, timeouts counted on the port that served them; latency.
port_counters(_) ->
	[#{requests := R0, errors := E0, timeouts := T0} | _] = py:stats(),
	ok = py_ct_helper:on(1, 0, fun() ->
		{ok, _} = py:call(math, sqrt, [1]),
		{ok, _} = py:call(math, sqrt, [2]),
		{error, _} = py:call(math, sqrt, [-1]),
		{error, timeout} = py:eval(<<"__import__('time').sleep(0.3)">>, #{}, 20),
		ok
	end),
	[#{slot := 1, requests := R1, errors := E1, timeouts := T1, latency_us := #{p50 := P50, p99 := P99},
	   log_dropped := _, spans_dropped := _, restarts := _} | _] = py:stats(),
	4 = R1 - R0,
	1 = E1 - E0,
	1 = T1 - T0,
	true = P50 > 0 andalso P50 =< P99.

%% The histogram: 4 buckets per octave; a percentile is the upper edge of the bucket of its rank.
percentiles(_) ->
	0 = py_stats:bucket(0),
	4 = py_stats:bucket(1),
	8 = py_stats:bucket(3),
	40 = py_stats:bucket(1023),
	123 = py_stats:bucket(1 bsl 40),
	Empty = erlang:make_tuple(124, 0),
	0 = py_stats:percentile(0.5, Empty),
	%% 99 requests of 10 µs, one of 10 ms: p50 and p99 at 10 µs's bucket, p100 at 10 ms's.
	B = setelement(py_stats:bucket(10_000) + 1, setelement(py_stats:bucket(10) + 1, Empty, 99), 1),
	P50 = py_stats:percentile(0.5, B),
	P50 = py_stats:percentile(0.99, B),
	true = P50 >= 10 andalso P50 =< 12,
	P100 = py_stats:percentile(1.0, B),
	true = P100 >= 10_000 andalso P100 =< 12_000.

%% Without telemetry in the node the events are debug logger events (domain [erlang_python, telemetry]).
logger_fallback(Config) ->
	ok = without_telemetry(Config),
	logger = py_telemetry:mode(),
	#{level := Old} = logger:get_primary_config(),
	ok = logger:set_primary_config(level, all),
	ok = logger:add_handler(py_telemetry_ct, ?MODULE, #{config => #{pid => self()}, level => all}),
	try
		{ok, 4.0} = py:call(math, sqrt, [16]),
		Stop = fun Loop() ->
			receive
				{logged, debug, {report, #{event := [erlang_python, request, stop]} = R}} -> R;
				{logged, _, _} -> Loop()
			after 5000 -> error(no_logger_event)
			end
		end(),
		#{measurements := #{duration := _}, metadata := #{kind := call, pool := default}} = Stop,
		no_event([erlang_python, request, stop])
	after
		_ = logger:remove_handler(py_telemetry_ct),
		ok = logger:set_primary_config(level, Old),
		ok = with_telemetry(Config)
	end.

%% ... and nothing at all is built when debug is not logged.
logger_fallback_silent_without_debug(Config) ->
	ok = without_telemetry(Config),
	#{level := Old} = logger:get_primary_config(),
	ok = logger:set_primary_config(level, notice),
	try
		false = py_telemetry:enabled(),
		{ok, 4.0} = py:call(math, sqrt, [16])
	after
		ok = logger:set_primary_config(level, Old),
		ok = with_telemetry(Config)
	end.

%% Helpers.

without_telemetry(Config) ->
	%% The path goes first: the running application calls telemetry:execute/3 all the time (the queue
	%% depth events), and a call between the delete and the path's removal autoloads the module again.
	true = code:del_path(?config(fake_dir, Config)),
	_ = code:purge(telemetry), _ = code:delete(telemetry), _ = code:purge(telemetry),
	logger = py_telemetry:refresh(),
	ok.

with_telemetry(Config) ->
	true = code:add_patha(?config(fake_dir, Config)),
	telemetry = py_telemetry:refresh(),
	ok.

event(Name) ->
	receive
		{telemetry, Name, M, Meta} -> {Name, M, Meta}
	after 5000 ->
		error({no_event, Name})
	end.

no_event(Name) ->
	receive
		{telemetry, Name, _, _} = E -> error({unexpected, E})
	after 100 ->
		ok
	end.

flush() ->
	receive {telemetry, _, _, _} -> flush() after 0 -> ok end.
