%% One request, from the calling process: pick the port and context, write the frame, wait for the
%% answer, serve the callbacks that come meanwhile, cancel on timeout.
%%
%% Scope: everything between py's API functions and the wire. The caller does the work here, not the
%% owner (py_port): it encodes, port_commands, and decodes what the owner forwards to it
%% ({py_frame, Id, Kind, Ctx, Body}). While it waits it runs the Erlang functions that Python calls
%% (`erlang.call`) in its own process, so `self()` in them is the caller, and nested py calls from
%% them go to the same context, which keeps serving while it waits for the callback's reply.
%%
%% Timeouts: the caller takes its entry out of py_inflight. If it got it, nobody will forward the
%% answer any more: it sends the cancel frame itself and asks the owner to watch the grace period. If it
%% did not, the owner already took it and the answer is in the mailbox or on its way: it returns that.
-module(py_request).

%% API.
-export([run/5]).
-export([cast/3]).
-export([any_info/0]).

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
					logger:warning("erlang_python: py:cast not sent: ~tp", [Why]);
				Frame ->
					try port_command(Port, Frame) of
						true -> ok
					catch error:badarg when Retry ->
						cast(Slot, CtxIndex, Body, Deadline, false, Gen);
					error:badarg ->
						logger:warning("erlang_python: py:cast dropped, port ~b is down", [Slot])
					end
			end;
		{error, Why} ->
			logger:warning("erlang_python: py:cast dropped, port ~b is not ready: ~tp", [Slot, Why])
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
				exit:{timeout, _} -> {error, timeout};
				exit:{Why, _} -> {error, {not_running, Why}}
			end;
		undefined ->
			{error, not_started}
	end.

%% Internal: waiting.

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
frame(?PROTOCOL_ERROR, _, {improper_list, _}, _) ->
	%% An improper list in the request (ETF; py_msgpack refuses it before sending): the caller's
	%% argument, reported as the msgpack encoder reports it (PROTOCOL.md §2).
	{error, {badarg, improper_list}};
frame(?PROTOCOL_ERROR, _, {Reason, Detail}, _) ->
	{error, {protocol_error, Reason, Detail}};
frame(Kind, Ctx, Term, Req) when Kind =:= ?CALLBACK; Kind =:= ?OUTPUT ->
	ok = interim(Kind, Ctx, Term, Req),
	wait(Req);
frame(port_exited, _, Reason, _) ->
	{error, {port_exited, Reason}};
frame(Kind, _, Term, Req) ->
	abandon(Req, Kind, {unexpected, Term}).

%% A callback (run it here, reply on the port) or an output frame (print it) of the request.
interim(?CALLBACK, Ctx, {CbId, Name, Args}, #req{codec = Codec, port = Port}) ->
	_ = catch port_command(Port, py_callback:reply_frame(Name, Args, Ctx, CbId, Codec)),
	ok;
interim(?OUTPUT, _, {Stream, Text}, _) ->
	Device = case Stream of
		2 -> standard_error;
		_ -> standard_io
	end,
	_ = catch io:put_chars(Device, Text),
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
give_up(#req{id = Id, ctx = Ctx, port = Port, codec = Codec, owner = Owner, generation = Gen}) ->
	case ets:take(py_inflight, Id) of
		[_] ->
			_ = catch port_command(Port, py_codec:frame(cancel, Ctx, Id, Codec, [])),
			ok = py_port:cancel_watch(Owner, Id, Gen),
			flush(Id),
			Pending = case get(?CANCEL_PENDING) of undefined -> []; L -> L end,
			_ = put(?CANCEL_PENDING, [{Owner, Id, Gen} | Pending]),
			true;
		[] ->
			false
	end.

%% The owner took the entry before we did: the final frame (or port_exited) is on its way. Callback
%% and output frames sent before it are still served.
late(Req = #req{id = Id}) ->
	receive
		{py_frame, Id, Kind, Ctx, Body} ->
			case decode(Kind, Body, Req) of
				{ok, Term} when Kind =:= ?CALLBACK; Kind =:= ?OUTPUT ->
					ok = interim(Kind, Ctx, Term, Req),
					late(Req);
				{ok, Term} ->
					frame(Kind, Ctx, Term, Req);
				{error, Why} ->
					{error, {protocol_error, bad_reply, {Kind, Why}}}
			end
	after ?LATE_REPLY_MS ->
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

%% Callback and output frames routed to us before we took our entry.
flush(Id) ->
	receive
		{py_frame, Id, _, _, _} -> flush(Id)
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
