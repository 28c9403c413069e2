%% Recording a port's frames (protocol/RECORDING.md): from start-up for every port of the pool (app
%% env `record`), or at run time for one port (start/2, stop/1: the `record` frame, PROTOCOL.md
%% §3.13). `erlang_python_port dump FILE` prints a recording, `erlang_python_port replay FILE`
%% re-drives a fresh port with it and diffs the replies.
-module(py_record).

-export([port_args/2]).
-export([file/2]).
-export([start/2]).
-export([stop/1]).
-export([executable/0]).

-define(RECORD, 25).
-define(DEFAULT_MAX, (64 bsl 20)).
-define(TIMEOUT, 5000).

%% The port's command-line options for OS process Generation of Slot: none unless the app env has
%% `record`: a directory, or #{dir := Dir, max_bytes => Bytes} (default 64 MiB per file).
-spec port_args(pos_integer(), pos_integer()) -> [string()].
port_args(Slot, Generation) ->
	case config() of
		undefined -> [];
		{_, Max} -> ["--record", file(Slot, Generation), "--record-max", integer_to_list(Max)]
	end.

%% Where OS process Generation of Slot records (one file per OS process: a restart keeps the
%% recording of the one that crashed). undefined when recording is off.
-spec file(pos_integer(), pos_integer()) -> file:filename() | undefined.
file(Slot, Generation) ->
	case config() of
		undefined -> undefined;
		{Dir, _} -> filename:join(Dir, lists:flatten(io_lib:format("erlang_python.~s.~b.~b.eprec",
			[os:getpid(), Slot, Generation])))
	end.

config() ->
	case application:get_env(erlang_python, record, false) of
		false -> undefined;
		#{dir := Dir} = M -> {Dir, maps:get(max_bytes, M, ?DEFAULT_MAX)};
		Dir when is_list(Dir); is_binary(Dir) -> {Dir, ?DEFAULT_MAX}
	end.

%% Starts recording port Slot to Path from now on (a recording already running there stops first).
%% Opts: max_bytes (default 64 MiB; 0 no cap). {error, {'OSError', Message}} if the port cannot open
%% the file.
-spec start(pos_integer(), #{path := file:filename_all(), max_bytes => non_neg_integer()}) ->
	ok | {error, term()}.
start(Slot, #{path := Path} = Opts) ->
	Max = maps:get(max_bytes, Opts, ?DEFAULT_MAX),
	result(py_port_admin:request(Slot, 0, ?RECORD,
		{start, unicode:characters_to_binary(Path), Max}, ?TIMEOUT)).

%% Stops the recording of port Slot (ok also if none runs).
-spec stop(pos_integer()) -> ok | {error, term()}.
stop(Slot) ->
	result(py_port_admin:request(Slot, 0, ?RECORD, stop, ?TIMEOUT)).

result({ok, ok}) -> ok;
result({error, _} = E) -> E.

%% The port program (its dump and replay subcommands read recordings).
-spec executable() -> file:filename().
executable() ->
	application:get_env(erlang_python, port_executable,
		filename:join(code:priv_dir(erlang_python), "erlang_python_port")).
