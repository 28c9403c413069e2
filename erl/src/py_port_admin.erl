%% One administrative request to a port (record, interrupt: PROTOCOL.md §3.13), from the calling
%% process: the frame goes out under an id of the context machinery's range (never cancelled; a late
%% answer is logged and dropped by py_port:orphan_final), and the caller waits for its one final frame.
-module(py_port_admin).

-export([request/5]).
-export([context_id/1]).

%% The ids of the context machinery (py_request, py_port): below the callers' request ids.
-define(CTRL_BASE, (1 bsl 44)).
-define(RESULT, 65).
-define(ERROR, 66).
-define(PROTOCOL_ERROR, 70).

%% Kind is the frame's kind byte, Ctx its ctx field. {ok, Value} for a result, {error, Reason} for an
%% error ({Class, Message}), a protocol error, a timeout, or a slot that is down.
-spec request(pos_integer(), non_neg_integer(), 25..27, term(), timeout()) -> {ok, term()} | {error, term()}.
request(Slot, Ctx, Kind, Body, Timeout) ->
	case py_port:info(Slot) of
		#{status := St, port := Port, codec := Codec} when St =:= up; St =:= condemned ->
			Id = ?CTRL_BASE + erlang:unique_integer([positive]),
			true = ets:insert(py_inflight, {Id, self(), Slot}),
			Frame = [<<Kind, 0, 0:16, Ctx:32, Id:64>> | py_codec:encode(Codec, Body)],
			try port_command(Port, Frame) of
				true -> wait(Id, Codec, Timeout)
			catch error:badarg ->
				_ = ets:delete(py_inflight, Id),
				{error, {not_running, port_closed}}
			end;
		undefined ->
			{error, not_started};
		#{} ->
			{error, {not_running, down}}
	end.

wait(Id, Codec, Timeout) ->
	receive
		{py_frame, Id, port_exited, _, Reason} -> {error, {port_exited, Reason}};
		{py_frame, Id, Kind, _, Body} -> reply(Kind, py_codec:decode(Codec, Body))
	after Timeout ->
		case ets:take(py_inflight, Id) of
			[_] -> {error, timeout};
			[] -> wait(Id, Codec, 1000)  %% the owner took it: the answer is on its way
		end
	end.

reply(?RESULT, Value) -> {ok, Value};
reply(?ERROR, {Class, Message, _}) -> {error, {py_errors:class(Class), unicode:characters_to_list(Message)}};
reply(?PROTOCOL_ERROR, {Reason, Detail}) -> {error, {protocol_error, Reason, Detail}};
reply(Kind, Term) -> {error, {protocol_error, bad_reply, {Kind, Term}}}.

%% The slot and port context id of a context process (a default-pool one names an index into the
%% contexts of its slot's current hello).
-spec context_id(pid()) -> {ok, pos_integer(), pos_integer()} | {error, term()}.
context_id(Ctx) ->
	case py_context:place(Ctx) of
		{ok, #{slot := Slot, ctx := {index, I}}} ->
			case py_port:info(Slot) of
				#{contexts := Contexts} -> {ok, Slot, element(I rem tuple_size(Contexts) + 1, Contexts)};
				_ -> {error, {not_running, down}}
			end;
		{ok, #{slot := Slot, ctx := CtxId, generation := Gen}} ->
			case py_port:info(Slot) of
				#{generation := Gen} -> {ok, Slot, CtxId};
				_ -> {error, {context_down, Ctx}}
			end;
		{error, _} = E ->
			E
	end.
