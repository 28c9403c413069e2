%% One request, from the calling process: pick the port and context, write the frame, wait for the
%% answer, serve the callbacks that come meanwhile, cancel on timeout.
%%
%% Scope: everything between py's API functions and the wire. The caller does the work here, not the
%% owner (py_port): it encodes, port_commands, and decodes what the owner forwards to it
%% ({py_frame, Id, Kind, Ctx, Body}). While it waits it runs the Erlang functions that Python calls
%% (`erlang.call`): in its own process when it has no deadline (`self()` in them is the caller), in a
%% helper process killed at the deadline otherwise (run_callback/3). Nested py calls from them go to
%% the same context and environment, which keeps serving while it waits for the callback's reply.
%% Output frames are printed to the caller's group leader and acknowledged (PROTOCOL.md §3.5).
%%
%% Timeouts: the caller takes its entry out of py_inflight. If it got it, nobody will forward the
%% answer any more: it sends the cancel frame itself and asks the owner to watch the grace period. If it
%% did not, the owner already took it and the answer is in the mailbox or on its way: it returns that.
-module(py_request).

%% API.
-export([run/5]).
-export([cast/3]).
-export([any_info/0]).
-export([env_owner/0]).
-export([act_for/1]).

-export_type([route/0]).

%% Request id ranges; the same values are in py_port.
-define(REQ_BASE, (1 bsl 48)).
-define(CAST_BASE, (1 bsl 56)).

-define(RESULT, 65).
-define(ERROR, 66).
-define(CALLBACK, 67).
-define(OUTPUT, 69).
-define(PROTOCOL_ERROR, 70).

%% Process dictionary key: requests this process timed out on, whose cancel may still be under way.
-define(CANCEL_PENDING, py_cancel_pending).
%% Process dictionary key of a callback helper or spawn_call process: the process it acts for.
-define(ENV_OWNER, py_env_owner).

%% Logger metadata of what this module logs (the caller's pid is logger's own `pid`).
-define(LOG_META(Slot), #{domain => [erlang_python], port => Slot}).

%% How long a caller that lost the race with the owner waits for the answer that is on its way.
-define(LATE_REPLY_MS, 5000).

%% A routing key (the calling process) or an explicit {Slot, ContextIndex}.
-type route() :: term() | {slot, pos_integer(), non_neg_integer()}.

-record(req, {
	id :: pos_integer(),
	kind :: call | eval | exec,
	port :: port(),
	codec :: py_codec:codec(),
	owner :: pid(),
	generation :: non_neg_integer(),
	ctx :: non_neg_integer(),
	deadline :: integer() | infinity
}).

%% API.

%% Runs one call/eval/exec request whose body is Body (it already holds the Env), routed by Route.
-spec run(call | eval | exec, route(), term(), timeout(), boolean()) -> term().
run(Kind, Route, Body, Timeout, Retry) ->
	Deadline = deadline(Timeout),
	case target(Route) of
		{error, _} = Error ->
			Error;
		{Slot, CtxIndex} ->
			send(Kind, Slot, CtxIndex, Body, Deadline, Retry, 0)
	end.

%% Fire and forget: writes a cast frame, waits for nothing. Returns ok even when no port is up (the
%% cast is then dropped with a warning in the log).
-spec cast(route(), term(), timeout()) -> ok.
cast(Route, Body, ReadyTimeout) ->
	case target(Route) of
		{error, _} ->
			ok;
		{Slot, CtxIndex} ->
			cast(Slot, CtxIndex, Body, deadline(ReadyTimeout), true, 0)
	end.

%% The info of some slot that is up (waiting for slot 1 if none is).
-spec any_info() -> {ok, py_port:info()} | {error, term()}.
any_info() ->
	Infos = [py_port:info(S) || S <- lists:seq(1, py_router:num_slots())],
	case [I || I = #{status := up} <- Infos] of
		[Info | _] -> {ok, Info};
		[] -> ready(1, 0, deadline(30000))
	end.

%% Internal: sending.

target({slot, Slot, CtxIndex}) ->
	{Slot, CtxIndex};
target(Key) ->
	py_router:pick(Key).

send(Kind, Slot, CtxIndex, Body, Deadline, Retry, SeenGen) ->
	ok = settle_cancels(Deadline),
	case ready(Slot, SeenGen, Deadline) of
		{ok, #{port := Port, codec := Codec, owner := Owner, generation := Gen, contexts := Contexts}} ->
			Ctx = element(CtxIndex rem tuple_size(Contexts) + 1, Contexts),
			Id = ?REQ_BASE + erlang:unique_integer([positive]),
			case encode(Kind, Ctx, Id, Codec, Body) of
				{error, _} = Error ->
					Error;
				Frame ->
					true = ets:insert(py_inflight, {Id, self(), Slot}),
					Req = #req{id = Id, kind = Kind, port = Port, codec = Codec, owner = Owner,
						generation = Gen, ctx = Ctx, deadline = Deadline},
					try port_command(Port, Frame) of
						true -> wait(Req)
					catch error:badarg ->
						port_closed(Req, Slot, CtxIndex, Body, Retry)
					end
			end;
		{error, _} = Error ->
			Error
	end.

%% The port closed under us: the OS process died and the owner has not published it yet. Wait for
%% the next generation and try once more.
port_closed(Req = #req{id = Id, kind = Kind, generation = Gen, deadline = Deadline}, Slot, CtxIndex, Body,
		Retry) ->
	Outcome = case ets:take(py_inflight, Id) of
		[_] -> {error, {port_exited, #{exit_status => undefined, signal => undefined,
			traceback => <<>>, reason => crashed}}};
		%% The owner's sweep got it first: its port_exited message is on the way.
		[] -> late(Req)
	end,
	case Retry of
		true -> send(Kind, Slot, CtxIndex, Body, Deadline, false, Gen);
		false -> Outcome
	end.

encode(Kind, Ctx, Id, Codec, Body) ->
	try
		py_codec:frame(Kind, Ctx, Id, Codec, Body)
	catch error:{badarg, Why} ->
		{error, {badarg, Why}}
	end.

cast(Slot, CtxIndex, Body, Deadline, Retry, SeenGen) ->
	case ready(Slot, SeenGen, Deadline) of
		{ok, #{port := Port, codec := Codec, generation := Gen, contexts := Contexts}} ->
			Ctx = element(CtxIndex rem tuple_size(Contexts) + 1, Contexts),
			Id = ?CAST_BASE + erlang:unique_integer([positive]),
			case encode(cast, Ctx, Id, Codec, Body) of
				{error, Why} ->
					logger:warning("erlang_python: py:cast not sent: ~tp", [Why], ?LOG_META(Slot));
				Frame ->
					try port_command(Port, Frame) of
						true -> ok
					catch error:badarg when Retry ->
						cast(Slot, CtxIndex, Body, Deadline, false, Gen);
					error:badarg ->
						logger:warning("erlang_python: py:cast dropped, port ~b is down", [Slot], ?LOG_META(Slot))
					end
			end;
		{error, Why} ->
			logger:warning("erlang_python: py:cast dropped, port ~b is not ready: ~tp", [Slot, Why], ?LOG_META(Slot))
	end.

%% The slot's info once it is up with a generation newer than SeenGen.
ready(Slot, SeenGen, Deadline) ->
	case py_port:info(Slot) of
		#{status := up, generation := Gen} = Info when Gen > SeenGen ->
			{ok, Info};
		#{owner := Owner} ->
			try py_port:wait_ready(Owner, SeenGen, remaining(Deadline)) of
				{ok, Info} -> {ok, Info};
				{error, Why} -> {error, {not_running, Why}}
			catch
				exit:{timeout, _} -> not_ready(Slot);
				exit:{Why, _} -> {error, {not_running, Why}}
			end;
		undefined ->
			{error, not_started}
	end.

%% The deadline passed while the slot was down. If its last start failed (the port exited or never
%% said hello) the caller gets that reason, not a bare timeout.
not_ready(Slot) ->
	case py_port:info(Slot) of
		#{status := down, start_failure := Why} -> {error, {not_running, Why}};
		_ -> {error, timeout}
	end.

%% Internal: waiting.

%% Every frame for the request is taken from the mailbox here. The deadline holds however many
%% interim frames arrive: it is checked before each one is served (an output flood cannot push the
%% `after` out forever).
wait(Req = #req{id = Id}) ->
	receive
		{py_frame, Id, Kind, Ctx, Body} ->
			case decode(Kind, Body, Req) of
				{ok, Term} -> frame(Kind, Ctx, Term, Req);
				{error, Why} -> abandon(Req, Kind, Why)
			end
	after remaining(Req#req.deadline) ->
		timed_out(Req)
	end.

%% Frames are decoded here, by the caller; a body that does not decode (a port bug) ends the request.
decode(port_exited, Reason, _) ->
	{ok, Reason};
decode(_, Body, #req{codec = Codec}) ->
	try
		{ok, py_codec:decode(Codec, Body)}
	catch _:Why ->
		{error, Why}
	end.

frame(?RESULT, _, _, #req{kind = exec}) ->
	ok;
frame(?RESULT, _, Value, _) ->
	{ok, Value};
frame(?ERROR, _, {Class, Message, _Traceback}, _) ->
	{error, {py_errors:class(Class), text(Message)}};
frame(?PROTOCOL_ERROR, _, {Reason, Detail}, _) ->
	{error, {protocol_error, Reason, Detail}};
frame(Kind, Ctx, Term, Req = #req{deadline = Deadline}) when Kind =:= ?CALLBACK; Kind =:= ?OUTPUT ->
	case remaining(Deadline) of
		0 when Deadline =/= infinity ->
			expired(Kind, Ctx, Term, Req);
		_ ->
			ok = interim(Kind, Ctx, Term, Req, Deadline),
			wait(Req)
	end;
frame(port_exited, _, Reason, _) ->
	{error, {port_exited, Reason}};
frame(Kind, _, Term, Req) ->
	abandon(Req, Kind, {unexpected, Term}).

%% An interim frame that came when the deadline had passed: not served. If the owner already took
%% our entry the final frame is on its way and this frame belongs to the late path.
expired(Kind, Ctx, Term, Req) ->
	case give_up(Req) of
		true ->
			ok = drop(Kind, Ctx, Term, Req),
			{error, timeout};
		false ->
			late(Req, Kind, Ctx, Term)
	end.

%% A callback (run it, reply on the port) or an output frame (print it, then acknowledge it: the
%% port's output window, PROTOCOL.md §3.5) of the request. A callback may take until Deadline.
interim(?CALLBACK, Ctx, {CbId, Name, Args}, Req = #req{codec = Codec, port = Port}, Deadline) ->
	%% The builtins are short ETS operations: never worth a helper.
	Within = case is_binary(Name) andalso py_callback:is_builtin(Name) of
		true -> infinity;
		false -> Deadline
	end,
	case run_callback(fun() -> py_callback:reply_frame(Name, Args, Ctx, CbId, Codec) end, Within, Req) of
		{ok, Frame} -> _ = catch port_command(Port, Frame);
		timeout -> ok
	end,
	ok;
interim(?OUTPUT, Ctx, {Stream, Text}, Req, _) ->
	Device = case Stream of
		2 -> standard_error;
		_ -> standard_io
	end,
	_ = catch io:put_chars(Device, Text),
	ack_output(Ctx, Text, Req).

%% An interim frame nobody will serve (the caller gave up): output is acknowledged unprinted, so the
%% port's window does not stay full; a callback is answered with an error (the cancel that went out
%% ends its wait anyway).
drop(?OUTPUT, Ctx, {_, Text}, Req) ->
	ack_output(Ctx, Text, Req);
drop(?CALLBACK, Ctx, {CbId, _, _}, #req{port = Port, codec = Codec}) ->
	Reply = {error, <<"error">>, <<"the Erlang caller of this request stopped waiting (timeout)">>},
	_ = catch port_command(Port, py_codec:frame(callback_reply, Ctx, CbId, Codec, Reply)),
	ok;
drop(_, _, _, _) ->
	ok.

ack_output(Ctx, Text, #req{id = Id, port = Port, codec = Codec}) ->
	_ = catch port_command(Port, py_codec:frame(output_ack, Ctx, Id, Codec, text_size(Text))),
	ok.

text_size(Text) when is_binary(Text) -> byte_size(Text);
text_size(Text) -> try iolist_size(Text) catch error:badarg -> 0 end.

%% Runs a callback of the request. With no deadline it runs here, in the caller (self() in the
%% function is the caller; README "Callbacks"). With a deadline it runs in a linked helper process
%% that is killed when the deadline passes, so a slow function cannot hold the caller past it. The
%% helper carries the caller's identity where py relies on it: the group leader (spawn inherits it),
%% the process dictionary (the caller's place in py_router, so nested py calls go to the same context),
%% and the environment owner (env_owner/0), so nested py calls use the caller's environment.
run_callback(Fun, infinity, _Req) ->
	{ok, Fun()};
run_callback(Fun, Deadline, _Req) ->
	Caller = self(),
	Tag = make_ref(),
	Dict = [{?ENV_OWNER, env_owner()} | carried_dictionary()],
	Helper = spawn_link(fun() ->
		_ = [put(K, V) || {K, V} <- Dict],
		Caller ! {Tag, Fun()}
	end),
	receive
		{Tag, Result} ->
			ok = unlink_quietly(Helper),
			{ok, Result}
	after remaining(Deadline) ->
		ok = unlink_quietly(Helper),
		MRef = erlang:monitor(process, Helper),
		exit(Helper, kill),
		receive {'DOWN', MRef, process, Helper, _} -> ok end,
		receive {Tag, _} -> ok after 0 -> ok end,
		%% Nested requests the helper had in flight: nobody waits for them any more.
		ok = py_port:forget_caller(Helper),
		timeout
	end.

%% unlink/1, and the 'EXIT' message the link may already have left for a caller that traps exits.
unlink_quietly(Pid) ->
	true = unlink(Pid),
	receive {'EXIT', Pid, _} -> ok after 0 -> ok end.

%% The caller's process dictionary, without the entries that describe the caller process itself.
carried_dictionary() ->
	[KV || {K, _} = KV <- get(), not lists:member(K, ['$ancestors', '$initial_call', ?CANCEL_PENDING])].

%% The process whose environment py calls from this process use: itself, or, in a callback helper or
%% a spawn_call process, the process it acts for.
-spec env_owner() -> pid().
env_owner() ->
	case get(?ENV_OWNER) of
		undefined -> self();
		Pid -> Pid
	end.

%% Makes the calling process act for Owner: its py calls use Owner's environment.
-spec act_for(pid()) -> ok.
act_for(Owner) when is_pid(Owner) ->
	_ = put(?ENV_OWNER, Owner),
	ok.

timed_out(Req) ->
	case give_up(Req) of
		true -> {error, timeout};
		false -> late(Req)
	end.

%% The port sent what we cannot use: stop waiting (cancelling the request if it still runs).
abandon(Req, Kind, Why) ->
	_ = give_up(Req),
	{error, {protocol_error, bad_reply, {Kind, Why}}}.

%% Takes our entry back; if we got it, nobody forwards anything for the request any more, so we
%% cancel it and let the owner watch the grace period. false: the owner took it first.
give_up(Req = #req{id = Id, ctx = Ctx, port = Port, codec = Codec, owner = Owner, generation = Gen}) ->
	case ets:take(py_inflight, Id) of
		[_] ->
			_ = catch port_command(Port, py_codec:frame(cancel, Ctx, Id, Codec, [])),
			ok = py_port:cancel_watch(Owner, Id, Gen),
			flush(Req),
			Pending = case get(?CANCEL_PENDING) of undefined -> []; L -> L end,
			_ = put(?CANCEL_PENDING, [{Owner, Id, Gen} | Pending]),
			true;
		[] ->
			false
	end.

%% The owner took the entry before we did: the final frame (or port_exited) is on its way. Callback
%% and output frames sent before it are still served, within ?LATE_REPLY_MS (the owner forwards
%% nothing more for the id once it took the entry, so what is left to read is bounded).
late(Req) ->
	late_wait(Req#req{deadline = deadline(?LATE_REPLY_MS)}).

late(Req, Kind, Ctx, Term) ->
	Late = Req#req{deadline = deadline(?LATE_REPLY_MS)},
	ok = interim(Kind, Ctx, Term, Late, Late#req.deadline),
	late_wait(Late).

late_wait(Req = #req{id = Id, deadline = Deadline}) ->
	receive
		{py_frame, Id, Kind, Ctx, Body} ->
			case decode(Kind, Body, Req) of
				{ok, Term} when Kind =:= ?CALLBACK; Kind =:= ?OUTPUT ->
					ok = interim(Kind, Ctx, Term, Req, Deadline),
					late_wait(Req);
				{ok, Term} ->
					frame(Kind, Ctx, Term, Req);
				{error, Why} ->
					{error, {protocol_error, bad_reply, {Kind, Why}}}
			end
	after remaining(Deadline) ->
		flush(Req),
		{error, timeout}
	end.

%% This process gave up on requests that may still be running: wait until they are over (or their
%% port has died) before sending the next one, so it does not queue behind them. One process
%% dictionary read when there is nothing to wait for.
settle_cancels(Deadline) ->
	case get(?CANCEL_PENDING) of
		undefined ->
			ok;
		Pending ->
			_ = erase(?CANCEL_PENDING),
			_ = [py_port:await_cancel(Owner, Id, Gen, remaining(Deadline)) || {Owner, Id, Gen} <- Pending],
			ok
	end.

%% Callback and output frames routed to us before we took our entry: none is served, each output is
%% acknowledged (drop/4). Bounded: the owner forwards nothing for the id once the entry is gone.
flush(Req = #req{id = Id}) ->
	receive
		{py_frame, Id, Kind, Ctx, Body} ->
			_ = case decode(Kind, Body, Req) of
				{ok, Term} -> drop(Kind, Ctx, Term, Req);
				{error, _} -> ok
			end,
			flush(Req)
	after 0 ->
		ok
	end.

%% A Python str (UTF-8 binary) as the documented message string.
text(Bin) when is_binary(Bin) ->
	case unicode:characters_to_list(Bin) of
		List when is_list(List) -> List;
		_ -> binary_to_list(Bin)
	end;
text(Other) ->
	Other.

deadline(infinity) -> infinity;
deadline(Ms) when is_integer(Ms), Ms >= 0 -> erlang:monotonic_time(millisecond) + Ms.

remaining(infinity) -> infinity;
remaining(Deadline) -> max(0, Deadline - erlang:monotonic_time(millisecond)).
