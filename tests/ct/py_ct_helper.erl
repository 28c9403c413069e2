%% Helpers shared by the Common Test suites of erlang_python.
-module(py_ct_helper).

-export([start_app/1]).
-export([stop_app/0]).
-export([on/3]).
-export([on/4]).
-export([spawn_on/3]).
-export([spawn_routed/2]).
-export([os_pid/1]).
-export([generation/1]).
-export([os_alive/1]).
-export([vm_ports/0]).
-export([env_count/1]).
-export([eventually/2]).
-export([capture_stdout/1]).
-export([capture_log/0]).
-export([stop_capture_log/0]).
-export([log/2]).
-export([raw_request/5]).
-export([raw_frame/5]).
-export([elapsed_ms/1]).
-export([run_exe/2]).
-export([has/2]).

%% Starts erlang_python with the given application env (on top of its defaults).
%% EP_TEST_CODEC=msgpack runs every suite over the msgpack codec (unless a suite sets its own);
%% EP_TEST_PORT=Path runs them against another port executable (tools/test.sh: the sanitizer build).
start_app(Env0) ->
	Env1 = case os:getenv("EP_TEST_CODEC") of
		Codec when Codec =:= "etf"; Codec =:= "msgpack" ->
			[{codec, list_to_atom(Codec)} || not lists:keymember(codec, 1, Env0)] ++ Env0;
		_ ->
			Env0
	end,
	Env = case os:getenv("EP_TEST_PORT") of
		Exe when is_list(Exe), Exe =/= "" ->
			[{port_executable, Exe} || not lists:keymember(port_executable, 1, Env1)] ++ Env1;
		_ ->
			Env1
	end,
	_ = application:stop(erlang_python),
	_ = application:load(erlang_python),
	_ = [application:unset_env(erlang_python, K) || {K, _} <- application:get_all_env(erlang_python)],
	_ = [ok = application:set_env(erlang_python, K, V) || {K, V} <- Env],
	{ok, _} = application:ensure_all_started(erlang_python),
	ok.

stop_app() ->
	_ = application:stop(erlang_python),
	ok.

%% Runs Fun in a process routed to {Slot, CtxIndex} and returns its result.
on(Slot, CtxIndex, Fun) ->
	on(Slot, CtxIndex, Fun, 60000).

on(Slot, CtxIndex, Fun, Timeout) ->
	{Pid, MRef} = spawn_on(Slot, CtxIndex, Fun),
	receive
		{Pid, result, Result} ->
			erlang:demonitor(MRef, [flush]),
			Result;
		{'DOWN', MRef, process, Pid, Reason} ->
			error({routed_process_died, Reason})
	after Timeout ->
		error(timeout)
	end.

%% Starts Fun in a process routed to {Slot, CtxIndex}; it sends {Pid, result, Result} to the caller.
spawn_on(Slot, CtxIndex, Fun) ->
	Self = self(),
	spawn_routed({Slot, CtxIndex}, fun() -> Self ! {self(), result, Fun()} end).

%% Spawns (and monitors) a process bound to Target ({Slot, CtxIndex}) that runs Fun.
spawn_routed(Target, Fun) ->
	spawn_monitor(fun() ->
		ok = py_router:bind(Target),
		Fun()
	end).

os_pid(Slot) ->
	#{os_pid := OsPid, status := up} = py_port:info(Slot),
	OsPid.

generation(Slot) ->
	#{generation := Gen} = py_port:info(Slot),
	Gen.

%% Whether the OS process lives (a zombie does not count).
os_alive(OsPid) ->
	case file:read_file("/proc/" ++ integer_to_list(OsPid) ++ "/stat") of
		{ok, Stat} ->
			[_, Rest] = binary:split(Stat, <<") ">>),
			binary:first(Rest) =/= $Z;
		{error, _} ->
			false
	end.

%% The OS pids of every erlang_python_port started by this VM (their --crash-file names our os pid).
vm_ports() ->
	Pattern = "erlang_python\\." ++ os:getpid() ++ "\\.",
	Out = os:cmd("pgrep -f '" ++ Pattern ++ "'"),
	[list_to_integer(L) || L <- string:lexemes(Out, "\n"), L =/= ""].

%% Number of process-bound environments in the port of Slot (asked without creating one).
env_count(Slot) ->
	{ok, N} = py_request:run(eval, {slot, Slot, 0},
		{undefined, <<"__import__('_erlang')._env_count()">>, #{}}, 10000, true),
	N.

%% Polls Fun (every 20 ms) until it returns true; for conditions no message announces.
eventually(Fun, Timeout) when Timeout =< 0 ->
	Fun() orelse error(condition_never_held);
eventually(Fun, Timeout) ->
	case Fun() of
		true -> ok;
		false -> timer:sleep(20), eventually(Fun, Timeout - 20)
	end.

%% Runs Fun with a group leader that records what is written to standard_io; returns
%% {Result, Text}.
capture_stdout(Fun) ->
	Old = group_leader(),
	Self = self(),
	GL = spawn_link(fun() -> io_server(Self, []) end),
	true = group_leader(GL, self()),
	try Fun() of
		Result ->
			GL ! {dump, self()},
			receive {captured, GL, Text} -> {Result, Text} end
	after
		true = group_leader(Old, self())
	end.

io_server(Owner, Acc) ->
	receive
		{io_request, From, ReplyAs, {put_chars, _Enc, Chars}} ->
			From ! {io_reply, ReplyAs, ok},
			io_server(Owner, [Acc, Chars]);
		{io_request, From, ReplyAs, {put_chars, _Enc, M, F, A}} ->
			From ! {io_reply, ReplyAs, ok},
			io_server(Owner, [Acc, apply(M, F, A)]);
		{io_request, From, ReplyAs, _} ->
			From ! {io_reply, ReplyAs, {error, enotsup}},
			io_server(Owner, Acc);
		{dump, Owner} ->
			Owner ! {captured, self(), unicode:characters_to_binary(Acc)}
	end.

%% Forwards every log event of erlang_python's owner to the calling process as {log, Level, Text}.
capture_log() ->
	ok = logger:add_handler(py_ct_capture, ?MODULE, #{config => #{pid => self()}, level => all}).

stop_capture_log() ->
	_ = logger:remove_handler(py_ct_capture),
	ok.

%% logger handler callback.
log(#{level := Level, msg := Msg}, #{config := #{pid := Pid}}) ->
	Text = case Msg of
		{string, S} -> S;
		{report, R} -> io_lib:format("~tp", [R]);
		{Format, Args} -> io_lib:format(Format, Args)
	end,
	Pid ! {log, Level, unicode:characters_to_binary(Text)},
	ok.

%% Writes a frame straight to the port of Slot, with the reply (if any) routed to the caller as
%% {py_frame, Id, Kind, Ctx, Body}. Returns Id.
raw_request(Slot, Kind, Ctx, Flags, Body) ->
	Id = (1 bsl 48) + erlang:unique_integer([positive]),
	true = ets:insert(py_inflight, {Id, self(), Slot}),
	#{port := Port} = py_port:info(Slot),
	true = port_command(Port, raw_frame(Kind, Flags, Ctx, Id, Body)),
	Id.

raw_frame(Kind, Flags, Ctx, Id, Body) ->
	[<<Kind, Flags, 0:16, Ctx:32, Id:64>>, Body].

elapsed_ms(T0) ->
	erlang:monotonic_time(millisecond) - T0.

%% Runs an executable (the port program as a tool: dump, replay, bad arguments) to its end:
%% {ExitStatus, Output} with stderr included; fails the case after 60 s.
run_exe(Exe, Args) ->
	P = open_port({spawn_executable, Exe}, [{args, Args}, exit_status, binary, stderr_to_stdout, use_stdio]),
	collect_exe(P, <<>>).

collect_exe(P, Acc) ->
	receive
		{P, {data, D}} -> collect_exe(P, <<Acc/binary, D/binary>>);
		{P, {exit_status, S}} -> {S, Acc}
	after 60000 ->
		catch port_close(P),
		ct:fail({no_exit, Acc})
	end.

%% true if Part occurs in Bin, else fails the case showing both.
has(Bin, Part) ->
	case binary:match(Bin, Part) of
		nomatch -> ct:fail({missing, Part, Bin});
		_ -> true
	end.
