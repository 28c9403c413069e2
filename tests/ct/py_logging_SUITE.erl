%% Python logging to the Erlang logger (py:configure_logging/0,1, erlang.ErlangHandler,
%% erlang.setup_logging; PROTOCOL.md §3.14): the documented examples, level mapping and metadata, level
%% filtering in the port, the error terms, the window that bounds what the owner may fall behind.
-module(py_logging_SUITE).

-include_lib("common_test/include/ct.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1, init_per_testcase/2, end_per_testcase/2]).
-export([log/2]).
-export([doc_quick_start/1, metadata_of_a_module_function/1, level_mapping/1, level_filtered_in_port/1,
	format_option/1, string_format/1, setup_logging_from_python/1, erlang_handler_on_own_logger/1,
	invalid_options/1, bad_python_format_keeps_old/1, config_reaches_restarted_port/1,
	window_drops_and_counts/1, window_bounds_bytes/1, python_does_not_wait/1, sink_restart_reopens_window/1, ops_ack_counts/1,
	thread_outside_requests/1, ops_ack_bad_body/1, ops_config_bad_body/1]).

all() ->
	[doc_quick_start, metadata_of_a_module_function, level_mapping, level_filtered_in_port, format_option,
	 string_format, setup_logging_from_python, erlang_handler_on_own_logger, invalid_options,
	 bad_python_format_keeps_old, config_reaches_restarted_port, window_drops_and_counts, window_bounds_bytes,
	 python_does_not_wait, sink_restart_reopens_window, ops_ack_counts, thread_outside_requests, ops_ack_bad_body, ops_config_bad_body].

init_per_suite(Config) ->
	ok = py_ct_helper:start_app([{num_ports, 2}, {contexts_per_port, 2}]),
	#{level := Old} = logger:get_primary_config(),
	ok = logger:set_primary_config(level, all),
	[{old_level, Old} | Config].

end_per_suite(Config) ->
	ok = logger:set_primary_config(level, ?config(old_level, Config)),
	py_ct_helper:stop_app().

init_per_testcase(_, Config) ->
	ok = logger:add_handler(py_logging_ct, ?MODULE, #{config => #{pid => self()}, level => all}),
	Config.

end_per_testcase(_, _Config) ->
	_ = logger:remove_handler(py_logging_ct),
	%% Back to the defaults for the next case: everything at debug, the default format.
	ok = py:configure_logging(),
	ok.

%% logger handler: Python's records (domain [python]) and our drop warnings to the test process.
log(#{level := Level, msg := Msg, meta := Meta}, #{config := #{pid := Pid}}) ->
	Text = case Msg of
		{string, S} -> unicode:characters_to_binary(S);
		{report, R} -> iolist_to_binary(io_lib:format("~tp", [R]));
		{F, A} -> unicode:characters_to_binary(io_lib:format(F, A))
	end,
	case maps:get(domain, Meta, []) of
		[python] -> Pid ! {py_log, Level, Text, Meta};
		[erlang_python] -> Pid ! {ep_log, Level, Text};
		_ -> ok
	end,
	ok.

%% The reference docs' example: after configure_logging(#{level => info}), logging.info and
%% logging.warning appear in the Erlang logger with domain [python].
doc_quick_start(_) ->
	ok = py:configure_logging(#{level => info}),
	ok = py:exec(<<"
import logging
logging.info('Hello from Python!')
logging.warning('Something needs attention')
">>),
	{info, <<"Hello from Python!">>, #{domain := [python], py_logger := <<"root">>}} = next_log(),
	{warning, <<"Something needs attention">>, #{domain := [python]}} = next_log(),
	%% The second example: py:eval of statements, the default configuration (debug).
	ok = py:configure_logging(),
	{ok, none} = py:eval(<<"import logging; logging.info('hello')">>),
	{info, <<"hello">>, _} = next_log(),
	no_more_logs().

%% py_meta carries the record's module, lineno and funcName, as in the docs' example.
metadata_of_a_module_function(Config) ->
	Dir = ?config(priv_dir, Config),
	ok = file:write_file(filename:join(Dir, "mymodule.py"), <<"
import logging

def my_function():
    logging.getLogger('mymodule').error('from my_function')
    return 42
">>),
	ok = py_import:add_path(Dir),
	{ok, 42} = py:call(mymodule, my_function, []),
	{error, <<"from my_function">>, Meta} = next_log(),
	#{domain := [python], py_logger := <<"mymodule">>,
	  py_meta := #{<<"module">> := <<"mymodule">>, <<"lineno">> := 5, <<"funcName">> := <<"my_function">>}} = Meta,
	no_more_logs().

%% DEBUG 10 -> debug, INFO 20 -> info, WARNING 30 -> warning, ERROR 40 -> error, CRITICAL 50 -> critical;
%% levels between round down.
level_mapping(_) ->
	ok = py:configure_logging(#{level => debug}),
	ok = py:exec(<<"
import logging
for n in (10, 20, 30, 40, 50, 25, 55):
    logging.log(n, 'level %d', n)
">>),
	[{debug, <<"level 10">>}, {info, <<"level 20">>}, {warning, <<"level 30">>}, {error, <<"level 40">>},
	 {critical, <<"level 50">>}, {info, <<"level 25">>}, {critical, <<"level 55">>}] =
		[begin {L, T, _} = next_log(), {L, T} end || _ <- lists:seq(1, 7)],
	no_more_logs().

%% Under level warning a debug or info record is never made in Python: nothing is encoded, no frame
%% is sent (the port's sent counter does not move), nothing reaches the logger.
level_filtered_in_port(_) ->
	ok = py:configure_logging(#{level => warning}),
	ok = py:exec(<<"import logging, _erlang_ops\nc = lambda: _erlang_ops.counters()['log_sent']">>),
	{ok, [A, B, C]} = py:eval(<<"[c(), ([logging.debug('d') for _ in range(50)], [logging.info('i') for _ in range(50)]) and c(), (logging.warning('w'), c())[1]]">>),
	A = B,
	C = A + 1,
	{warning, <<"w">>, _} = next_log(),
	no_more_logs().

%% format => Python format string of the message.
format_option(_) ->
	ok = py:configure_logging(#{level => info, format => <<"%(name)s - %(message)s">>}),
	ok = py:exec(<<"import logging; logging.getLogger('app.db').info('connected')">>),
	{info, <<"app.db - connected">>, #{py_logger := <<"app.db">>}} = next_log(),
	no_more_logs().

%% The format may be a string too; the level default is debug.
string_format(_) ->
	ok = py:configure_logging(#{format => "[%(levelname)s] %(message)s"}),
	ok = py:exec(<<"import logging; logging.debug('x')">>),
	{debug, <<"[DEBUG] x">>, _} = next_log(),
	no_more_logs().

%% erlang.setup_logging(level=20) and (level=10, format=...) from Python, as documented; one handler
%% however often it is called.
setup_logging_from_python(_) ->
	ok = py:exec(<<"
import erlang, logging
erlang.setup_logging(level=20)
logging.debug('hidden')
logging.info('shown')
erlang.setup_logging(level=10, format='%(name)s: %(message)s')
logging.getLogger('p').debug('now shown')
n = sum(isinstance(h, erlang.ErlangHandler) for h in logging.getLogger().handlers)
">>),
	{info, <<"shown">>, _} = next_log(),
	{debug, <<"p: now shown">>, _} = next_log(),
	{ok, 1} = py:eval(<<"n">>),
	{error, {'TypeError', "level must be an int (logging.INFO is 20), not str"}} =
		py:eval(<<"erlang.setup_logging(level='INFO')">>),
	no_more_logs().

%% erlang.ErlangHandler() is a logging.Handler to attach anywhere.
erlang_handler_on_own_logger(_) ->
	ok = py:exec(<<"
import erlang, logging
assert issubclass(erlang.ErlangHandler, logging.Handler)
logging.getLogger().handlers = [h for h in logging.getLogger().handlers if not isinstance(h, erlang.ErlangHandler)]
mine = logging.getLogger('mine')
mine.propagate = False
mine.setLevel(logging.INFO)
handler = erlang.ErlangHandler()
mine.addHandler(handler)
mine.info('via my handler')
">>),
	{info, <<"via my handler">>, #{py_logger := <<"mine">>}} = next_log(),
	ok = py:exec(<<"mine.removeHandler(handler); mine.propagate = True">>),
	no_more_logs().

%% The error terms of configure_logging/1; nothing changes after one.
invalid_options(_) ->
	{error, {invalid_option, level, verbose}} = py:configure_logging(#{level => verbose}),
	{error, {invalid_option, level, 20}} = py:configure_logging(#{level => 20}),
	{error, {invalid_option, format, 42}} = py:configure_logging(#{format => 42}),
	{error, {invalid_option, format, [16#110000]}} = py:configure_logging(#{format => [16#110000]}),
	{error, {unknown_option, colour}} = py:configure_logging(#{colour => red}),
	{error, {invalid_option, options, [{level, info}]}} = py:configure_logging([{level, info}]),
	ok = py:exec(<<"import logging; logging.debug('still debug')">>),
	{debug, <<"still debug">>, _} = next_log(),
	no_more_logs().

%% A format Python's logging refuses is its error; the previous configuration stays in force.
bad_python_format_keeps_old(_) ->
	ok = py:configure_logging(#{format => <<"old: %(message)s">>}),
	{error, {'ValueError', Msg}} = py:configure_logging(#{format => <<"%(message">>}),
	true = lists:prefix("Invalid format", Msg),
	ok = py:exec(<<"import logging; logging.info('kept')">>),
	{info, <<"old: kept">>, _} = next_log(),
	no_more_logs().

%% A port that restarts gets the configuration before it serves anything.
config_reaches_restarted_port(_) ->
	ok = py:configure_logging(#{level => error, format => <<"restarted: %(message)s">>}),
	Gen = py_ct_helper:generation(1),
	OsPid = py_ct_helper:os_pid(1),
	_ = os:cmd("kill -9 " ++ integer_to_list(OsPid)),
	ok = py_ct_helper:eventually(fun() ->
		case py_port:info(1) of #{status := up, generation := G} -> G > Gen; _ -> false end
	end, 30000),
	ok = py_ct_helper:on(1, 0, fun() ->
		py:exec(<<"import logging; logging.warning('below'); logging.error('first')">>)
	end),
	{error, <<"restarted: first">>, _} = next_log(),
	no_more_logs().

%% When the Erlang side falls behind (the sink is suspended) the port writes at most its window of
%% 1024 frames and drops the rest, counting them; the next record that goes out carries the count,
%% which is logged as a warning and added to py_ops:counters/0 and the port's py:stats/0 entry.
window_drops_and_counts(_) ->
	ok = py:configure_logging(#{level => info}),
	Slot = 1,
	Before = py_ops:counters(),
	[#{log_dropped := SlotBefore} | _] = py:stats(),
	ok = sys:suspend(py_ops_sink),
	{ok, #{<<"log_sent">> := S0, <<"log_dropped">> := D0, <<"window">> := 1024}} =
		py_ct_helper:on(Slot, 0, fun() -> py:eval(<<"__import__('_erlang_ops').counters()">>) end),
	{ok, #{<<"log_sent">> := S1, <<"log_dropped">> := D1, <<"unacked">> := Unacked}} = py_ct_helper:on(Slot, 0, fun() ->
		py:eval(<<"([__import__('logging').info('flood %d', i) for i in range(3000)], __import__('_erlang_ops').counters())[1]">>)
	end),
	Sent = S1 - S0,
	Dropped = D1 - D0,
	3000 = Sent + Dropped,
	true = Sent =< 1024 andalso Dropped >= 3000 - 1024,
	1024 = Unacked,
	%% The sink's mailbox holds what was sent, and no more.
	%% Only this port's frames count: the sink's own timer (depth_tick, each telemetry_interval_ms)
	%% keeps adding to a suspended mailbox while a loaded machine takes seconds over the flood.
	{messages, Msgs} = process_info(whereis(py_ops_sink), messages),
	Queued = length([M || {ops_frame, S, _, _, _, _} = M <- Msgs, S =:= Slot]),
	true = Queued =< 1024,
	ok = sys:resume(py_ops_sink),
	Flood = [next_log() || _ <- lists:seq(1, Sent)],
	true = lists:all(fun({info, <<"flood ", _/binary>>, _}) -> true; (_) -> false end, Flood),
	%% Acknowledged: the window is open again, and the next record reports the drops.
	ok = py_ct_helper:eventually(fun() ->
		{ok, U} = py_ct_helper:on(Slot, 0, fun() -> py:eval(<<"__import__('_erlang_ops').counters()['unacked']">>) end),
		U =:= 0
	end, 10000),
	ok = py_ct_helper:on(Slot, 0, fun() -> py:exec(<<"import logging; logging.info('after')">>) end),
	Warning = receive {ep_log, warning, W} -> W after 5000 -> error(no_drop_warning) end,
	Expected = iolist_to_binary(io_lib:format("port 1 dropped ~b Python log records", [Dropped])),
	{match, _} = re:run(Warning, Expected),
	{info, <<"after">>, _} = next_log(),
	#{log_dropped := AfterDropped} = py_ops:counters(),
	Dropped = AfterDropped - maps:get(log_dropped, Before),
	[#{log_dropped := SlotAfter} | _] = py:stats(),
	Dropped = SlotAfter - SlotBefore,
	no_more_logs().

%% The window bounds bytes too: big records stop going out once 8 MiB are unacknowledged, well before
%% 1024 frames (a frame is at most max_out_frame bytes: 1024 of them could be gigabytes).
window_bounds_bytes(_) ->
	ok = py:configure_logging(#{level => info}),
	Slot = 1,
	ok = sys:suspend(py_ops_sink),
	Counters = fun() ->
		{ok, C} = py_ct_helper:on(Slot, 0, fun() -> py:eval(<<"__import__('_erlang_ops').counters()">>) end),
		C
	end,
	#{<<"log_sent">> := S0, <<"log_dropped">> := D0, <<"window_bytes">> := WindowBytes} = Counters(),
	8388608 = WindowBytes,
	{ok, _} = py_ct_helper:on(Slot, 0, fun() ->
		py:eval(<<"[__import__('logging').info('big %d %s', i, 'x' * (1 << 20)) for i in range(40)] and None">>)
	end),
	#{<<"log_sent">> := S1, <<"log_dropped">> := D1, <<"unacked_bytes">> := Bytes, <<"unacked">> := Frames} = Counters(),
	Sent = S1 - S0,
	40 = Sent + (D1 - D0),
	ct:log("sent ~b, dropped ~b, unacked ~b frames, ~b bytes", [Sent, D1 - D0, Frames, Bytes]),
	true = Sent >= 1 andalso Sent =< 8,
	true = Bytes =< WindowBytes andalso Bytes > 0,
	Sent = Frames,
	ok = sys:resume(py_ops_sink),
	Big = [next_log() || _ <- lists:seq(1, Sent)],
	true = lists:all(fun({info, <<"big ", _/binary>>, _}) -> true; (_) -> false end, Big),
	ok = py_ct_helper:eventually(fun() ->
		maps:with([<<"unacked">>, <<"unacked_bytes">>], Counters()) =:= #{<<"unacked">> => 0, <<"unacked_bytes">> => 0}
	end, 10000),
	flush_logs().

%% Python never waits for Erlang to log: with the sink suspended (nothing is acknowledged, nothing
%% logged) 20000 records take about as long as without any handler, well within seconds.
python_does_not_wait(_) ->
	ok = py:configure_logging(#{level => info}),
	ok = sys:suspend(py_ops_sink),
	T0 = erlang:monotonic_time(millisecond),
	{ok, _} = py:eval(<<"[__import__('logging').info('x') for i in range(20000)] and None">>),
	Elapsed = py_ct_helper:elapsed_ms(T0),
	ok = sys:resume(py_ops_sink),
	ct:log("20000 records with the sink suspended: ~b ms", [Elapsed]),
	true = Elapsed < 10000,
	flush_logs().

%% A sink that dies with frames in its mailbox cannot acknowledge them; its successor tells every port
%% to forget them (ops_ack 0), so the window opens again instead of staying full for good.
sink_restart_reopens_window(_) ->
	ok = py:configure_logging(#{level => info}),
	ok = sys:suspend(py_ops_sink),
	Old = whereis(py_ops_sink),
	{ok, 1024} = py_ct_helper:on(1, 0, fun() ->
		py:eval(<<"([__import__('logging').info('lost') for i in range(2000)], __import__('_erlang_ops').counters()['unacked'])[1]">>)
	end),
	exit(Old, kill),
	ok = py_ct_helper:eventually(fun() -> is_pid(whereis(py_ops_sink)) andalso whereis(py_ops_sink) =/= Old end, 5000),
	ok = py_ct_helper:eventually(fun() ->
		{ok, U} = py_ct_helper:on(1, 0, fun() -> py:eval(<<"__import__('_erlang_ops').counters()['unacked']">>) end),
		U =:= 0
	end, 5000),
	ok = py_ct_helper:on(1, 0, fun() -> py:exec(<<"import logging; logging.info('after restart')">>) end),
	{info, <<"after restart">>, _} = next_log(),
	no_more_logs().

%% ops_ack Count gives back Count frames of the window (the larger integer encodings too); more than
%% are outstanding empties it.
ops_ack_counts(_) ->
	ok = py:configure_logging(#{level => info}),
	ok = sys:suspend(py_ops_sink),
	Unacked = fun() ->
		{ok, U} = py_ct_helper:on(1, 0, fun() -> py:eval(<<"__import__('_erlang_ops').counters()['unacked']">>) end),
		U
	end,
	try
		{ok, _} = py_ct_helper:on(1, 0, fun() -> py:eval(<<"[__import__('logging').info('x') for i in range(1100)] and None">>) end),
		1024 = Unacked(),
		Codec = application:get_env(erlang_python, codec, etf),
		#{port := Port} = py_port:info(1),
		Ack = fun(N) -> true = port_command(Port, [<<29, 0, 0:16, 0:32, 0:64>> | py_codec:encode(Codec, N)]) end,
		Ack(1000),
		ok = py_ct_helper:eventually(fun() -> Unacked() =:= 24 end, 5000),
		Ack(20),
		ok = py_ct_helper:eventually(fun() -> Unacked() =:= 4 end, 5000),
		Ack(70000),
		ok = py_ct_helper:eventually(fun() -> Unacked() =:= 0 end, 5000)
	after
		%% The sink acknowledges what it holds when it resumes: the count stays at 0 (never below).
		ok = sys:resume(py_ops_sink)
	end,
	flush_logs(),
	0 = Unacked().

%% A Python thread that serves no request logs too.
thread_outside_requests(_) ->
	ok = py:configure_logging(#{level => info}),
	ok = py:exec(<<"
import logging, threading
t = threading.Thread(target=lambda: logging.getLogger('bg').info('from a thread'))
t.start(); t.join()
">>),
	{info, <<"from a thread">>, #{py_logger := <<"bg">>}} = next_log(),
	no_more_logs().

%% ops_ack whose body is not a non-negative integer: protocol_error bad_body, and the port goes on.
ops_ack_bad_body(_) ->
	Codec = application:get_env(erlang_python, codec, etf),
	Id = py_ct_helper:raw_request(1, 29, 0, 0, py_codec:encode(Codec, <<"lots">>)),
	{protocol_error, bad_body, <<"ops_ack body must be a non-negative integer">>} = raw_reply(Id, Codec),
	Id2 = py_ct_helper:raw_request(1, 29, 0, 0, py_codec:encode(Codec, -1)),
	{protocol_error, bad_body, _} = raw_reply(Id2, Codec),
	{ok, 2} = py_ct_helper:on(1, 0, fun() -> py:eval(<<"1 + 1">>) end).

%% ops_config whose body is not a map: protocol_error bad_body.
ops_config_bad_body(_) ->
	Codec = application:get_env(erlang_python, codec, etf),
	Id = py_ct_helper:raw_request(1, 28, 0, 0, py_codec:encode(Codec, [1, 2])),
	{protocol_error, bad_body, _} = raw_reply(Id, Codec),
	{ok, 2} = py_ct_helper:on(1, 0, fun() -> py:eval(<<"1 + 1">>) end).

%% Helpers.

raw_reply(Id, Codec) ->
	receive
		{py_frame, Id, 70, _, Body} ->
			{Reason, Detail} = py_codec:decode(Codec, Body),
			{protocol_error, Reason, Detail}
	after 5000 ->
		error(no_reply)
	end.

next_log() ->
	receive
		{py_log, Level, Text, Meta} -> {Level, Text, Meta}
	after 5000 ->
		error(no_log_event)
	end.

no_more_logs() ->
	receive
		{py_log, Level, Text, _} -> error({unexpected_log, Level, Text})
	after 200 ->
		ok
	end.

flush_logs() ->
	receive
		{py_log, _, _, _} -> flush_logs();
		{ep_log, _, _} -> flush_logs()
	after 500 ->
		ok
	end.
