%% Recording, dump and replay (protocol/RECORDING.md, PROTOCOL.md §3.13), end to end: a real pool
%% records, the port's own dump and replay subcommands read the files.
-module(py_record_SUITE).
-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_testcase/2, end_per_testcase/2]).
-export([record_from_app_env/1, replay_reports_a_difference/1, crash_recording/1,
	run_time_start_stop/1, start_errors/1, size_cap/1, not_a_recording/1, shm_frames_not_replayable/1,
	torn_tail/1]).

all() ->
	[record_from_app_env, replay_reports_a_difference, crash_recording, run_time_start_stop, start_errors,
	 size_cap, not_a_recording, shm_frames_not_replayable, torn_tail].

init_per_testcase(_, Config) ->
	Dir = filename:join(?config(priv_dir, Config), "rec"),
	ok = filelib:ensure_path(Dir),
	[{rec_dir, Dir} | Config].

end_per_testcase(_, _Config) ->
	py_ct_helper:stop_app(),
	ok.

start(Config, Extra) ->
	ok = py_ct_helper:start_app([{num_ports, 1}, {record, #{dir => ?config(rec_dir, Config), max_bytes => 1 bsl 20}}
		| Extra]).

%% The recording of slot 1's current OS process.
current_file() ->
	#{generation := Gen} = py_port:info(1),
	py_record:file(1, Gen).

%% Runs the port program with Args: {ExitStatus, Output}.
port_tool(Args) ->
	py_ct_helper:run_exe(py_record:executable(), Args).

has(Bin, Part) ->
	py_ct_helper:has(Bin, Part).

record_from_app_env(Config) ->
	start(Config, []),
	File = current_file(),
	{ok, 4.0} = py:call(math, sqrt, [16]),
	{error, {'ZeroDivisionError', _}} = py:eval(<<"1/0">>),
	ok = py:register_function(rec_add, fun([X, Y]) -> X + Y end),
	{ok, 3} = py:eval(<<"erlang.call('rec_add', 1, 2)">>),
	{ok, _} = py:eval(<<"repr(object())">>),  %% an address: normalised by replay
	py_ct_helper:stop_app(),
	{0, Dump} = port_tool(["dump", File]),
	ct:log("~ts", [Dump]),
	%% The hello's keys print in the map's order (a `gil' key, PROTOCOL.md §4.1, came before this one).
	{match, _} = re:run(Dump, <<"P->E hello ctx=0 id=0 #\\{[^\n]*protocol => 2[,}]">>),
	true = has(Dump, <<"E->P call ctx=1">>),
	true = has(Dump, <<"math,sqrt,[16],#{}}">>),
	true = has(Dump, <<"result ctx=1">>),
	true = has(Dump, <<" 4.0\n">>),
	true = has(Dump, <<"P->E callback ctx=1">>),
	true = has(Dump, <<"<<\"rec_add\">>,[1,2]}">>),
	true = has(Dump, <<"E->P callback_reply">>),
	true = has(Dump, <<"ended: the port's input closed (normal exit)">>),
	{0, Replay} = port_tool(["replay", File]),
	ct:log("~ts", [Replay]),
	true = has(Replay, <<"replay: all frames match">>).

%% The replayed port reads a file whose content changed since the recording: a readable diff, status 1.
replay_reports_a_difference(Config) ->
	start(Config, []),
	File = current_file(),
	Data = filename:join(?config(rec_dir, Config), "data.txt"),
	ok = file:write_file(Data, <<"before">>),
	{ok, <<"before">>} = py:eval(<<"open(p).read()">>, #{p => list_to_binary(Data)}),
	py_ct_helper:stop_app(),
	ok = file:write_file(Data, <<"after">>),
	{1, Replay} = port_tool(["replay", File]),
	ct:log("~ts", [Replay]),
	true = has(Replay, <<"~ #">>),
	true = has(Replay, <<"    recorded: <<\"before\">>\n    replayed: <<\"after\">>">>),
	true = has(Replay, <<"replay: 1 differences">>).

%% A port that segfaults while recording leaves a readable file up to the crash, and replay
%% reproduces the crash.
crash_recording(Config) ->
	start(Config, []),
	File = current_file(),
	{ok, 2} = py:eval(<<"1 + 1">>),
	{error, {port_exited, #{signal := sigsegv}}} = py:eval(<<"import ctypes; ctypes.string_at(0)">>),
	py_ct_helper:stop_app(),
	{0, Dump} = port_tool(["dump", File]),
	ct:log("~ts", [Dump]),
	true = has(Dump, <<"ctypes.string_at(0)">>),
	true = has(Dump, <<"no end record: the recorded port died after the last record (crash or kill)">>),
	{0, Replay} = port_tool(["replay", File]),
	ct:log("~ts", [Replay]),
	true = has(Replay, <<"signal 11">>),
	true = has(Replay, <<"replay: all frames match (the crash was reproduced)">>).

run_time_start_stop(Config) ->
	ok = py_ct_helper:start_app([{num_ports, 1}]),
	undefined = py_record:file(1, 1),
	File = filename:join(?config(rec_dir, Config), "runtime.eprec"),
	ok = py:record(start, #{path => File}),
	%% A fresh process: its environment is created (and announced) inside the recording.
	Self = self(),
	spawn(fun() -> Self ! {r, py:call(math, pow, [2, 10])} end),
	{ok, 1024.0} = receive {r, R} -> R after 10000 -> error(no_reply) end,
	ok = py:record(stop, #{}),
	ok = py:record(stop, #{slot => 1}),  %% none runs: still ok
	{0, Dump} = port_tool(["dump", File]),
	ct:log("~ts", [Dump]),
	true = has(Dump, <<"math,pow,[2,10],#{}}">>),
	true = has(Dump, <<"ended: recording stopped">>),
	nomatch = binary:match(Dump, <<"hello">>),
	{0, Replay} = port_tool(["replay", File]),
	ct:log("~ts", [Replay]),
	true = has(Replay, <<"replay: all frames match">>).

start_errors(_Config) ->
	ok = py_ct_helper:start_app([{num_ports, 1}]),
	{error, {'OSError', "cannot open /nonexistent-dir/x.eprec: No such file or directory"}} =
		py:record(start, #{path => "/nonexistent-dir/x.eprec"}),
	{error, {protocol_error, bad_shape, <<"expected {start, Path, MaxBytes} or stop">>}} =
		py_port_admin:request(1, 0, 25, {start, 1, 2}, 5000),
	{error, not_started} = py:record(stop, #{slot => 7}),
	{ok, 2} = py:eval(<<"1 + 1">>).

size_cap(Config) ->
	File = filename:join(?config(rec_dir, Config), "cap.eprec"),
	ok = py_ct_helper:start_app([{num_ports, 1}]),
	ok = py:record(start, #{path => File, max_bytes => 2000}),
	_ = [{ok, _} = py:call(math, sqrt, [N]) || N <- lists:seq(1, 50)],
	{ok, #{size := Size}} = file_size(File),
	?assert(Size =< 2000 + 16),
	{0, Dump} = port_tool(["dump", File]),
	true = has(Dump, <<"truncated (cap)">>),
	true = has(Dump, <<"ended: the size cap was reached">>),
	{0, Replay} = port_tool(["replay", File]),
	ct:log("~ts", [Replay]),
	true = has(Replay, <<"replay: all frames match">>),
	{ok, 2} = py:eval(<<"1 + 1">>).

file_size(F) ->
	case file:read_file_info(F) of
		{ok, I} -> {ok, #{size => element(2, I)}};
		E -> E
	end.

not_a_recording(Config) ->
	File = filename:join(?config(rec_dir, Config), "junk"),
	ok = file:write_file(File, <<"this is not a recording at all">>),
	{2, D} = port_tool(["dump", File]),
	true = has(D, <<"not a recording (no EPREC1 header)">>),
	{2, R} = port_tool(["replay", File]),
	true = has(R, <<"not a recording">>),
	{2, U} = port_tool(["replay"]),
	true = has(U, <<"usage: erlang_python_port replay FILE">>),
	{2, M} = port_tool(["dump", filename:join(?config(rec_dir, Config), "missing")]),
	true = has(M, <<"cannot read">>).

%% The bulk helper's shared-memory frames (header flag 0x02): their bodies are not in the file.
shm_frames_not_replayable(Config) ->
	File = filename:join(?config(rec_dir, Config), "shm.eprec"),
	Body = term_to_binary({shm_descriptor, 1, 2}),
	Frame = <<2, 16#02, 0:16, 1:32, 99:64, Body/binary>>,
	ok = file:write_file(File, [file_header(0), record($E, 5, Frame)]),
	{0, D} = port_tool(["dump", File]),
	true = has(D, <<"eval ctx=1 id=99 shm(flag 0x02): body in shared memory, not in the recording">>),
	{3, R} = port_tool(["replay", File]),
	true = has(R, <<"uses the shared-memory transport (flag 0x02)">>).

%% A record cut by the writer's death: the records before it are read, the tail is reported.
torn_tail(Config) ->
	File = filename:join(?config(rec_dir, Config), "torn.eprec"),
	Frame = <<65, 0, 0:16, 1:32, 7:64, (term_to_binary(ok))/binary>>,
	ok = file:write_file(File, [file_header(0), record($P, 1, Frame), <<$P, 0, 0, 0, 100:32, 2:64, "part">>]),
	{0, D} = port_tool(["dump", File]),
	true = has(D, <<"#1 +0.000000s P->E result ctx=1 id=7 ok">>),
	true = has(D, <<"the last record is incomplete">>).

file_header(Codec) ->
	<<"EPREC1\r\n", 1:16, Codec, 0:40, 0:64, 0:64>>.

record(Type, T, Payload) ->
	<<Type, 0:24, (byte_size(Payload)):32, T:64, Payload/binary>>.
