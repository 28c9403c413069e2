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
%% Routing: a request goes to a place: a slot, a context there (an index into the contexts of the
%% port's hello, or an explicit context's id) and the port generation it must run in (0: whichever is
%% current; an explicit context lives and dies with one generation). A slot that is condemned (py_port
%% is about to kill it) gets no new work: a process that did not choose its place moves to another slot
%% (py_router:move/1), any other waits for the slot's next generation; an explicit context there is
%% gone ({error, {context_down, Pid}}). A request the port hands back with `requeue' never ran, so it is
%% sent again the same way, within its deadline (PROTOCOL.md §3.7).
%%
%% Nesting: a request made while this process runs a callback of a request on the same context and
%% generation carries the `nested' flag (PROTOCOL.md §3.4), see nested_flag/3.
%%
%% Timeouts: the caller takes its entry out of py_inflight. If it got it, nobody will forward the
%% answer any more: it sends the cancel frame itself and asks the owner to watch the grace period. If it
%% did not, the owner already took it and the answer is in the mailbox or on its way: it returns that.
-module(py_request).

%% API.
-export([run/5]).
-export([run_pinned/6]).
-export([eval_on_slots/4]).
-export([cast/3]).
-export([any_info/0]).
-export([control/6]).
-export([nested_flag/3]).
-export([nested_marker/0]).
-export([set_nested_marker/1]).
-export([env_owner/0]).
-export([act_for/1]).
-export([stream_open/4]).
-export([stream_reopen/2]).
-export([stream_id/1]).
-export([stream_pull/2]).
-export([stream_cancel_pull/1]).
-export([stream_frame/4]).
-export([stream_forget/1]).
%% aio (py_event_loop, PROTOCOL.md §3.10): where a task frame of the caller goes.
-export([target/2]).

-export_type([route/0]).
-export_type([stream/0]).

%% Request id ranges; the same values are in py_port.
-define(REQ_BASE, (1 bsl 48)).
-define(CAST_BASE, (1 bsl 56)).
%% Requests of the context machinery (context_create/init/destroy): their own range, below the callers'
%% ids. The port cannot end them early, so they are never cancelled (give_up/1, py_port).
-define(CTRL_BASE, (1 bsl 44)).

-define(RESULT, 65).
-define(ERROR, 66).
-define(CALLBACK, 67).
-define(OUTPUT, 69).
-define(PROTOCOL_ERROR, 70).
-define(REQUEUE, 75).
-define(SCHEDULE, 94).
-define(STREAM_CHUNK, 72).
-define(STREAM_END, 73).

%% Process dictionary key: the {Slot, Ctx, Generation} of the requests whose callbacks this process is
%% running, innermost first.
-define(NESTED, py_nested).

%% Process dictionary key: requests this process timed out on, whose cancel may still be under way.
-define(CANCEL_PENDING, py_cancel_pending).
%% Process dictionary key of a callback helper or spawn_call process: the process it acts for.
-define(ENV_OWNER, py_env_owner).
%% How long a caller that gave up waits for the owner to take note of its cancel (cancel_watch).
-define(CANCEL_WATCH_MS, 5000).

%% Logger metadata of what this module logs (the caller's pid is logger's own `pid`).
-define(LOG_META(Slot), #{domain => [erlang_python], port => Slot}).

%% How long a caller that lost the race with the owner waits for the answer that is on its way.
-define(LATE_REPLY_MS, 5000).

%% A routing key (the calling process), an explicit {Slot, ContextIndex}, or a context process.
-type route() :: term() | {slot, pos_integer(), non_neg_integer()} | {ctx, pid()}.

%% Where a request goes. ctx: an index into the hello's contexts, or an explicit context id. gen: the
%% generation it must run in, 0 for the current one. chooser: self_key (the calling process's own
%% place, which it may leave when its slot is condemned), fixed (a hashed key or an explicit slot), or
%% the pid of the explicit context (named in its context_down error).
-record(place, {
	slot :: pos_integer(),
	ctx :: {index, non_neg_integer()} | pos_integer(),
	gen = 0 :: non_neg_integer(),
	chooser :: self_key | fixed | pid()
}).

-record(req, {
	id :: pos_integer(),
	kind :: call | eval | exec | ref_op | context_create | context_init | context_destroy,
	port :: port(),
	slot :: pos_integer(),
	codec :: py_codec:codec(),
	owner :: pid(),
	generation :: non_neg_integer(),
	ctx :: non_neg_integer(),
	deadline :: integer() | infinity,
	shm = none :: py_shm:held()  %% bulk: the request region its body is in (PROTOCOL.md §3.12)
}).

%% API.

%% Runs one call/eval/exec request whose body is Body (it already holds the Env), routed by Route.
-spec run(call | eval | exec, route(), term(), timeout(), boolean()) -> term().
run(Kind, Route, Body, Timeout, Retry) ->
	Deadline = deadline(Timeout),
	case place(Route) of
		{error, _} = Error ->
			Error;
		Place = #place{slot = Slot, chooser = Chooser} ->
			%% opsa: per-port/per-pool counters and telemetry events of the request (py_stats).
			Started = py_stats:request_start(Kind, Slot),
			py_stats:request_stop(Started, Kind, Slot, Chooser, send(Kind, Place, Body, Deadline, Retry, 0))
	end.

%% Runs eval Body on context index 0 of each of Slots, all at once (every context of a port shares its
%% interpreter), and returns their results in the order of Slots. Each request has Timeout as its own
%% deadline, so each worker answers or dies; a worker that does neither within Timeout + 5 s is killed
%% ({error, timeout}); one that dies is {error, {apply_failed, Why}}. For changes every port must see
%% (py_import's registry, py_venv's activation).
-spec eval_on_slots([pos_integer()], term(), timeout(), boolean()) -> [term()].
eval_on_slots(Slots, Body, Timeout, Retry) ->
	Parent = self(),
	Tag = make_ref(),
	Workers = [spawn_monitor(fun() ->
		Parent ! {Tag, self(), run(eval, {slot, Slot, 0}, Body, Timeout, Retry)}
	end) || Slot <- Slots],
	[slot_result(Tag, W, Timeout) || W <- Workers].

slot_result(Tag, {Pid, MRef}, Timeout) ->
	receive
		{Tag, Pid, R} -> erlang:demonitor(MRef, [flush]), R;
		{'DOWN', MRef, process, Pid, Why} -> {error, {apply_failed, Why}}
	after Timeout + 5000 ->
		exit(Pid, kill),
		erlang:demonitor(MRef, [flush]),
		receive {Tag, Pid, _} -> ok after 0 -> ok end,
		{error, timeout}
	end.

%% Fire and forget: writes a cast frame, waits for nothing. Returns ok even when no port is up (the
%% cast is then dropped with a warning in the log).
-spec cast(route(), term(), timeout()) -> ok.
cast(Route, Body, ReadyTimeout) ->
	case place(Route) of
		{error, Why} ->
			logger:warning("erlang_python: py:cast dropped: ~tp", [Why]);
		Place ->
			cast(Place, Body, deadline(ReadyTimeout), true, 0)
	end.

%% The info of some slot that is up (waiting for slot 1 if none is).
-spec any_info() -> {ok, py_port:info()} | {error, term()}.
any_info() ->
	Infos = [py_port:info(S) || S <- lists:seq(1, py_router:num_slots())],
	case [I || I = #{status := up} <- Infos] of
		[Info | _] -> {ok, Info};
		[] -> ready(#place{slot = 1, ctx = {index, 0}, chooser = fixed}, 0, deadline(30000))
	end.

%% A request of the context machinery (py_context): Kind on context CtxId of Slot, which must still be
%% OS process Generation. {ok, Value} or {error, Reason}.
-spec control(context_create | context_init | context_destroy, pos_integer(), pos_integer(),
	pos_integer(), term(), timeout()) -> {ok, term()} | {error, term()}.
control(Kind, Slot, CtxId, Generation, Body, Timeout) ->
	Place = #place{slot = Slot, ctx = CtxId, gen = Generation, chooser = self()},
	send(Kind, Place, Body, deadline(Timeout), false, 0).

%% The header flags of a request to {Slot, Ctx, Generation}: nested (1) when this process is running a
%% callback of a request on that same context and generation (PROTOCOL.md §3.4), else 0. A process
%% dictionary read when it runs no callback.
-spec nested_flag(pos_integer(), non_neg_integer(), non_neg_integer()) -> 0 | 1.
nested_flag(Slot, Ctx, Generation) ->
	case get(?NESTED) of
		undefined -> 0;
		Stack ->
			case lists:member({Slot, Ctx, Generation}, Stack) of
				true -> 1;
				false -> 0
			end
	end.

%% The callbacks this process is running, for a process it starts to work on its behalf (py:spawn_call
%% from inside a callback is still nested in it).
-spec nested_marker() -> [{pos_integer(), non_neg_integer(), non_neg_integer()}] | undefined.
nested_marker() ->
	get(?NESTED).

-spec set_nested_marker([{pos_integer(), non_neg_integer(), non_neg_integer()}] | undefined) -> ok.
set_nested_marker(undefined) ->
	ok;
set_nested_marker(Stack) ->
	_ = put(?NESTED, Stack),
	ok.

%% Streams (PROTOCOL.md §3.9), for py_stream. A stream is one request id for its whole life: its
%% py_inflight entry stays while items come (stream_chunk is routed like a callback) and goes with its
%% one final frame (stream_end, error, protocol_error, or port_exited). The process that opens it
%% receives its frames and hands each to stream_frame/4.
-opaque stream() :: {py_stream_req, #req{}, call | eval, #place{}, term()}.

%% Sends the call/eval that starts a stream (its Body carries Opts #{stream => Credit}), without
%% waiting for anything but a ready port (until Deadline, monotonic ms or infinity).
-spec stream_open(call | eval, route(), term(), integer() | infinity) -> {ok, stream()} | {error, term()}.
stream_open(Kind, Route, Body, Deadline) ->
	case place(Route) of
		{error, _} = Error -> Error;
		Place -> stream_send(Kind, Place, Body, Deadline, 0)
	end.

%% The start was handed back by a condemned port (requeue, it never ran): send it again.
-spec stream_reopen(stream(), integer() | infinity) -> {ok, stream()} | {error, term()}.
stream_reopen({py_stream_req, _, _, #place{chooser = Pid}, _}, _) when is_pid(Pid) ->
	{error, {context_down, Pid}};
stream_reopen({py_stream_req, #req{generation = Gen}, Kind, Place, Body}, Deadline) ->
	stream_send(Kind, Place, Body, Deadline, Gen).

stream_send(Kind, Place, Body, Deadline, SeenGen) ->
	case ready(Place, SeenGen, Deadline) of
		{ok, Info} ->
			%% The stream's request lives until its final frame, however long its consumer takes.
			case issue(Kind, Info, Place#place.slot, ctx_id(Place, Info), Body, infinity, false) of
				{ok, Req} ->
					{ok, {py_stream_req, Req, Kind, Place, Body}};
				{closed, Req = #req{id = Id}} ->
					%% Its port is gone: port_exited is on its way if the owner swept the entry.
					_ = ets:delete(py_inflight, Id),
					flush(Req),
					{error, {port_exited, #{exit_status => undefined, signal => undefined,
						traceback => <<>>, reason => crashed}}};
				{error, _} = Error ->
					Error
			end;
		{moved, Place1} ->
			stream_send(Kind, Place1, Body, Deadline, 0);
		{error, _} = Error ->
			Error
	end.

-spec stream_id(stream()) -> pos_integer().
stream_id({py_stream_req, #req{id = Id}, _, _, _}) -> Id.

%% Grants Credit more items (0: close the stream; its generator gets GeneratorExit).
-spec stream_pull(stream(), non_neg_integer()) -> ok.
stream_pull({py_stream_req, #req{id = Id, ctx = Ctx, port = Port, codec = Codec}, _, _, _}, Credit) ->
	_ = catch port_command(Port, py_codec:frame(stream_next, Ctx, Id, Codec, Credit)),
	ok.

%% Interrupts a pull that is running (CancelledError in the generator); ignored by the port otherwise.
-spec stream_cancel_pull(stream()) -> ok.
stream_cancel_pull({py_stream_req, #req{id = Id, ctx = Ctx, port = Port, codec = Codec}, _, _, _}) ->
	_ = catch port_command(Port, py_codec:frame(cancel, Ctx, Id, Codec, [])),
	ok.

%% One frame of the stream ({py_frame, Id, Kind, Ctx, Body} received by its process): items, the
%% end, a final error as py:call reports it, requeue (the start never ran), or served (a callback
%% was run or output printed and acknowledged).
-spec stream_frame(stream(), term(), non_neg_integer(), term()) ->
	{chunk, [term()]} | done | requeue | served | {error, term()}.
stream_frame({py_stream_req, Req, _, _, _}, Kind, Ctx, Body) ->
	case decode(Kind, Body, Req) of
		{ok, Items} when Kind =:= ?STREAM_CHUNK, is_list(Items) -> {chunk, Items};
		{ok, _} when Kind =:= ?STREAM_END -> done;
		{ok, Term} when Kind =:= ?CALLBACK; Kind =:= ?OUTPUT ->
			ok = interim(Kind, Ctx, Term, Req, infinity),
			served;
		{ok, Term} when Kind =:= ?ERROR; Kind =:= ?PROTOCOL_ERROR; Kind =:= port_exited; Kind =:= ?REQUEUE ->
			frame(Kind, Ctx, Term, Req);
		{ok, Term} ->
			{error, {protocol_error, bad_reply, {Kind, Term}}};
		{error, Why} ->
			{error, {protocol_error, bad_reply, {Kind, Why}}}
	end.

%% Gives up on the stream's final frame: nothing more is routed to this process for it; frames
%% already here are dropped (output acknowledged, callbacks answered).
-spec stream_forget(stream()) -> ok.
stream_forget({py_stream_req, Req = #req{id = Id}, _, _, _}) ->
	_ = ets:delete(py_inflight, Id),
	flush(Req).

%% aio: the port (its published info), slot and context id a request routed by Route would go to
%% now, waiting until Timeout for the slot to be up (as a request would). For frames that are not
%% requests (py_event_loop's task_submit), which the caller writes itself.
-spec target(route(), timeout()) -> {ok, py_port:info(), pos_integer(), non_neg_integer()} | {error, term()}.
target(Route, Timeout) ->
	target_place(place(Route), deadline(Timeout)).

target_place({error, _} = Error, _Deadline) ->
	Error;
target_place(Place, Deadline) ->
	case ready(Place, 0, Deadline) of
		{ok, Info} -> {ok, Info, Place#place.slot, ctx_id(Place, Info)};
		{moved, Place1} -> target_place(Place1, Deadline);
		{error, _} = Error -> Error
	end.

%% Internal: sending.

place({slot, Slot, CtxIndex}) ->
	#place{slot = Slot, ctx = {index, CtxIndex}, chooser = fixed};
place({ctx, Pid}) ->
	context_place(Pid);
place(Key) ->
	case py_router:pick(Key) of
		{ctx, Pid} -> context_place(Pid);
		{error, _} = Error -> Error;
		{Slot, CtxIndex} when Key =:= self() -> #place{slot = Slot, ctx = {index, CtxIndex}, chooser = self_key};
		{Slot, CtxIndex} -> #place{slot = Slot, ctx = {index, CtxIndex}, chooser = fixed}
	end.

%% A context process's place (py_context registers it in py_contexts).
context_place(Pid) ->
	try ets:lookup(py_contexts, Pid) of
		[{_, Slot, Ctx, Gen, _Pool, _Mode}] when Gen =:= 0 ->
			#place{slot = Slot, ctx = Ctx, gen = Gen, chooser = Pid};
		[{_, Slot, Ctx, Gen, _Pool, _Mode}] ->
			%% An explicit context killed without running its terminate/2 left its entry behind.
			case is_process_alive(Pid) of
				true -> #place{slot = Slot, ctx = Ctx, gen = Gen, chooser = Pid};
				false -> ets:delete(py_contexts, Pid), {error, {context_down, Pid}}
			end;
		[] -> {error, {context_down, Pid}}
	catch error:badarg ->
		{error, not_started}
	end.

send(Kind, Place, Body, Deadline, Retry, SeenGen) ->
	ok = settle_cancels(Deadline),
	case ready(Place, SeenGen, Deadline) of
		{ok, Info} ->
			Slot = Place#place.slot,
			case issue(Kind, Info, Slot, ctx_id(Place, Info), Body, Deadline) of
				{ok, Req = #req{generation = Gen}} ->
					case shm_done(Req, wait(Req)) of
						requeue -> requeued(Kind, Place, Body, Deadline, Retry, Gen);
						{schedule, Next} -> scheduled(Next, Place, Body, Deadline, Req);
						Result -> ref_result(Body, Slot, Req, Result)
					end;
				{closed, Req} ->
					ok = py_shm:done(Req#req.id, Req#req.shm),
					port_closed(Req, Place, Body, Retry);
				{error, _} = Error ->
					Error
			end;
		{moved, Place1} ->
			send(Kind, Place1, Body, Deadline, Retry, 0);
		{error, _} = Error ->
			Error
	end.

%% Writes one request to context Ctx of the port Info describes, under a fresh id with its py_inflight
%% entry (the owner routes its frames to this process by it): {ok, Req}; {closed, Req} when the port
%% closed under us (the entry is still there: the caller decides); or the encoding error, with nothing
%% written. The one place a request frame is built and sent (send/6, stream_send/5, run_pinned/6).
issue(Kind, Info, Slot, Ctx, Body, Deadline) ->
	issue(Kind, Info, Slot, Ctx, Body, Deadline, true).

%% Shm: whether a big body may go through a shared-memory region (PROTOCOL.md §3.12); not for a
%% stream's start, whose final frame may be long in coming.
issue(Kind, Info = #{port := Port, codec := Codec, owner := Owner, generation := Gen}, Slot, Ctx, Body,
		Deadline, Shm) ->
	Id = request_id(Kind),
	case encode(Kind, flags(Kind, Info, Slot, Ctx, Gen), Ctx, Id, Codec, Body, Shm andalso shm_kind(Kind), Port) of
		{error, _} = Error ->
			Error;
		{Frame, Held} ->
			true = ets:insert(py_inflight, {Id, self(), Slot}),
			Req = #req{id = Id, kind = Kind, port = Port, slot = Slot, codec = Codec, owner = Owner,
				generation = Gen, ctx = Ctx, deadline = Deadline, shm = Held},
			try port_command(Port, Frame) of
				true -> {ok, Req}
			catch error:badarg ->
				{closed, Req}
			end
	end.

request_id(Kind) when Kind =:= context_create; Kind =:= context_init; Kind =:= context_destroy ->
	?CTRL_BASE + erlang:unique_integer([positive]);
request_id(_) ->
	?REQ_BASE + erlang:unique_integer([positive]).

%% The condemned port handed the request back unstarted: send it again where it may go now (another
%% slot, or the slot's next generation), within the same deadline. Each round needs a new generation or
%% a move, and the deadline bounds the rounds.
requeued(_Kind, #place{chooser = Pid}, _Body, _Deadline, _Retry, _Gen) when is_pid(Pid) ->
	{error, {context_down, Pid}};
requeued(Kind, Place, Body, Deadline, Retry, Gen) ->
	send(Kind, Place, Body, Deadline, Retry, Gen).

ctx_id(#place{ctx = {index, CtxIndex}}, #{contexts := Contexts}) ->
	element(CtxIndex rem tuple_size(Contexts) + 1, Contexts);
ctx_id(#place{ctx = CtxId}, _) ->
	CtxId.

%% Only ports that answered context_init know the nested flag (py_port publishes nested => true); an
%% older port refuses any flag. The flag is defined on call/eval/exec/ref_op only (PROTOCOL.md §1.1): a
%% cast nobody waits for is never nested.
flags(Kind, #{nested := true}, Slot, Ctx, Gen) when Kind =:= call; Kind =:= eval; Kind =:= exec;
		Kind =:= ref_op ->
	nested_flag(Slot, Ctx, Gen);
flags(_, _, _, _, _) ->
	0.

%% A call with #{return => ref} (py_ref:call_body/5) is answered {py_ref, ObjId, TypeName}: a
%% reference that remembers where the object lives (this slot, context and OS process).
ref_result({Env, _, _, _, _, #{return := ref}}, Slot, #req{ctx = Ctx, generation = Gen},
		{ok, {py_ref, ObjId, Type}}) ->
	{ok, py_ref:new(Slot, Ctx, Gen, Env, ObjId, Type)};
ref_result(_, _, _, Result) ->
	Result.

%% A request ended with a schedule marker (PROTOCOL.md §3.17): its Python frame is over and the context
%% free; the caller continues it within the same deadline. erlang.schedule(Name, *Args): the Erlang
%% function registered as Name gives the result (its failure is reported as an erlang.call failure
%% Python did not catch would be). erlang.schedule_py(M, F, A, K): a new call on the same place, in the
%% same environment; it may schedule again (the chain is bounded by the deadline, or, with none, by
%% the Python code: like a loop).
scheduled({callback, Name, Args}, _Place, _Body, Deadline, Req) when is_list(Args) ->
	case run_callback(fun() -> py_callback:reply(Name, Args) end, Deadline, Req) of
		{ok, {ok, Value}} -> {ok, Value};
		{ok, {error, _Class, Text}} ->
			%% No Python exception: an earlier one's traceback must not stand for it (py_traceback).
			ok = py_traceback:clear(),
			{error, {'ErlangError', text(Text)}};
		timeout -> {error, timeout}
	end;
scheduled({call, Module, Function, Args, Kwargs}, Place, Body, Deadline, _Req) when is_list(Args),
		is_map(Kwargs) ->
	case remaining(Deadline) of
		0 when Deadline =/= infinity -> {error, timeout};
		_ -> send(call, Place, {element(1, Body), Module, Function, Args, Kwargs}, Deadline, false, 0)
	end;
scheduled(Other, _, _, _, _) ->
	{error, {protocol_error, bad_reply, {schedule, Other}}}.

%% One request to context Ctx (an id, not an index) of the OS process Gen of Slot and nowhere else:
%% an object reference lives there. When that process is gone the object is too: {error, stale_ref},
%% and no retry.
-spec run_pinned(ref_op, pos_integer(), pos_integer(), pos_integer(), term(), timeout()) -> term().
run_pinned(Kind, Slot, Ctx, Gen, Body, Timeout) ->
	Deadline = deadline(Timeout),
	ok = settle_cancels(Deadline),
	case py_port:info(Slot) of
		#{status := up, generation := Gen} = Info ->
			case issue(Kind, Info, Slot, Ctx, Body, Deadline) of
				{ok, Req} ->
					case shm_done(Req, wait(Req)) of
						%% Its port is condemned: the object dies with it.
						requeue -> {error, stale_ref};
						Result -> Result
					end;
				{closed, Req = #req{id = Id}} ->
					ok = py_shm:done(Id, Req#req.shm),
					case ets:take(py_inflight, Id) of
						[_] -> {error, stale_ref};
						[] -> late(Req)
					end;
				{error, _} = Error ->
					Error
			end;
		_ ->
			{error, stale_ref}
	end.

%% The port closed under us: the OS process died and the owner has not published it yet. Wait for
%% the next generation and try once more.
port_closed(Req = #req{id = Id, kind = Kind, generation = Gen, deadline = Deadline}, Place, Body, Retry) ->
	Outcome = case ets:take(py_inflight, Id) of
		[_] -> {error, {port_exited, #{exit_status => undefined, signal => undefined,
			traceback => <<>>, reason => crashed}}};
		%% The owner's sweep got it first: its port_exited message is on the way.
		[] -> late(Req)
	end,
	case Retry of
		true when Place#place.gen =:= 0 -> send(Kind, Place, Body, Deadline, false, Gen);
		_ -> Outcome
	end.

encode(Kind, Flags, Ctx, Id, Codec, Body) ->
	try
		py_codec:frame(Kind, Flags, Ctx, Id, Codec, Body)
	catch error:{badarg, Why} ->
		{error, {badarg, Why}}
	end.

%% bulk (PROTOCOL.md §3.12): the frame and the request region its body took (none: the pipe).
encode(Kind, Flags, Ctx, Id, Codec, Body, true, Port) ->
	try
		py_shm:request_frame(Kind, Flags, Ctx, Id, Codec, Body, Port)
	catch error:{badarg, Why} ->
		{error, {badarg, Why}}
	end;
encode(Kind, Flags, Ctx, Id, Codec, Body, false, _) ->
	case encode(Kind, Flags, Ctx, Id, Codec, Body) of
		{error, _} = Error -> Error;
		Frame -> {Frame, none}
	end.

%% The kinds whose one final frame tells that the port is done with the body (§3.12).
shm_kind(Kind) ->
	Kind =:= call orelse Kind =:= eval orelse Kind =:= exec orelse Kind =:= ref_op.

%% bulk: the request ended. Its region is free again, unless the caller stopped waiting: the port may
%% still read it, and the owner frees it at that request's late final frame (py_shm:orphan_final/4).
shm_done(#req{shm = none}, Result) ->
	Result;
shm_done(_, {error, timeout} = Result) ->
	Result;
shm_done(#req{id = Id, shm = Held}, Result) ->
	ok = py_shm:done(Id, Held),
	Result.

cast(Place = #place{slot = Slot}, Body, Deadline, Retry, SeenGen) ->
	case ready(Place, SeenGen, Deadline) of
		{ok, Info = #{port := Port, codec := Codec, generation := Gen}} ->
			Ctx = ctx_id(Place, Info),
			Id = ?CAST_BASE + erlang:unique_integer([positive]),
			case encode(cast, flags(cast, Info, Slot, Ctx, Gen), Ctx, Id, Codec, Body) of
				{error, Why} ->
					logger:warning("erlang_python: py:cast not sent: ~tp", [Why], ?LOG_META(Slot));
				Frame ->
					try port_command(Port, Frame) of
						true -> ok
					catch error:badarg when Retry, Place#place.gen =:= 0 ->
						cast(Place, Body, Deadline, false, Gen);
					error:badarg ->
						logger:warning("erlang_python: py:cast dropped, port ~b is down", [Slot], ?LOG_META(Slot))
					end
			end;
		{moved, Place1} ->
			cast(Place1, Body, Deadline, Retry, 0);
		{error, Why} ->
			logger:warning("erlang_python: py:cast dropped, port ~b is not ready: ~tp", [Slot, Why], ?LOG_META(Slot))
	end.

%% The slot's info once it is up with a generation newer than SeenGen (for an explicit context: while
%% it is still its generation), or {moved, Place} when the caller's own slot is condemned and it may go
%% elsewhere.
ready(#place{slot = Slot, gen = 0, chooser = Chooser} = Place, SeenGen, Deadline) ->
	case py_port:info(Slot) of
		#{status := up, generation := Gen} = Info when Gen > SeenGen ->
			{ok, Info};
		#{status := condemned, owner := Owner, generation := Gen} ->
			case Chooser =:= self_key andalso not py_router:bound() andalso py_router:move(Slot) of
				{Slot1, CtxIndex} when is_integer(Slot1), Slot1 =/= Slot ->
					{moved, Place#place{slot = Slot1, ctx = {index, CtxIndex}}};
				_ ->
					wait_ready(Place, Owner, max(Gen, SeenGen), Deadline)
			end;
		#{owner := Owner} ->
			wait_ready(Place, Owner, SeenGen, Deadline);
		undefined ->
			{error, not_started}
	end;
ready(#place{slot = Slot, gen = Gen, chooser = Pid}, _SeenGen, _Deadline) ->
	case py_port:info(Slot) of
		#{status := up, generation := Gen} = Info -> {ok, Info};
		undefined -> {error, not_started};
		#{} -> {error, {context_down, Pid}}
	end.

wait_ready(Place, Owner, SeenGen, Deadline) ->
	try py_port:wait_ready(Owner, SeenGen, remaining(Deadline)) of
		%% Condemned while we waited: its next generation (or another slot).
		{ok, #{status := condemned, generation := Gen}} -> ready(Place, Gen, Deadline);
		{ok, Info} -> {ok, Info};
		{error, Why} -> {error, {not_running, Why}}
	catch
		exit:{timeout, _} -> not_ready(Place#place.slot);
		exit:{Why, _} -> {error, {not_running, Why}}
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
decode(_, {py_shm, Desc}, #req{codec = Codec, port = Port}) ->
	%% bulk (PROTOCOL.md §3.12): the body is in a reply region; read here, by the caller.
	try
		{ok, py_shm:read_body(Codec, Port, Desc)}
	catch _:Why ->
		{error, Why}
	end;
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
frame(?ERROR, _, {<<"erlang.MemoryLimit">>, Message, _}, _) ->
	%% The context's memory_limit refused an allocation (opsb, PROTOCOL.md §3.13).
	{error, {memory_limit, py_mem_limit:details(Message)}};
frame(?ERROR, _, {<<"erlang.Interrupted">>, _, _}, _) ->
	%% py:interrupt ended it (opsb, PROTOCOL.md §3.13).
	{error, interrupted};
frame(?ERROR, _, {Class, Message, Traceback}, _) ->
	%% issue 12 (elx): the traceback is kept for py:last_traceback/0.
	ok = py_traceback:record(Traceback),
	{error, {py_errors:class(Class), text(Message)}};
frame(?PROTOCOL_ERROR, _, {improper_list, _}, _) ->
	%% An improper list in the request (ETF; py_msgpack refuses it before sending): the caller's
	%% argument, reported as the msgpack encoder reports it (PROTOCOL.md §2).
	{error, {badarg, improper_list}};
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
frame(?REQUEUE, _, _, _) ->
	requeue;
frame(?SCHEDULE, _, Next, _) ->
	{schedule, Next};
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
interim(?CALLBACK, Ctx, {CbId, Name, Args}, Req = #req{codec = Codec, port = Port, slot = Slot,
		generation = Gen}, Deadline) ->
	%% The builtins are short ETS operations: never worth a helper.
	Within = case is_binary(Name) andalso py_callback:is_builtin(Name) of
		true -> infinity;
		false -> Deadline
	end,
	Reply = fun() ->
		in_callback({Slot, Ctx, Gen}, fun() -> py_callback:reply_frame(Name, Args, Ctx, CbId, Codec, Port) end)  % bulk: Port, for shm
	end,
	case run_callback(Reply, Within, Req) of
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
	Dict = [{?ENV_OWNER, env_owner()} | carried_dictionary(get())],
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

%% The caller's process dictionary, without the entries that describe the caller process itself: its
%% pending cancels, and the semaphore slots it holds and the reaper that watches them (a helper that
%% inherited them would take its own slots unwatched, and leak them when the deadline kills it).
-spec carried_dictionary([{term(), term()}]) -> [{term(), term()}].
carried_dictionary(Dict) ->
	[KV || {K, _} = KV <- Dict, not lists:member(K, ['$ancestors', '$initial_call', ?CANCEL_PENDING,
		py_semaphore_held, py_semaphore_watched])].

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

%% Runs a callback of a request on Marker ({Slot, Ctx, Generation}) with Marker on the nesting stack.
in_callback(Marker, Fun) ->
	Outer = get(?NESTED),
	_ = put(?NESTED, [Marker | case Outer of undefined -> []; _ -> Outer end]),
	try
		Fun()
	after
		case Outer of
			undefined -> erase(?NESTED);
			_ -> put(?NESTED, Outer)
		end
	end.

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
%%
%% The context machinery's requests are not cancelled: the port cannot end a context_create, init or
%% destroy early, so a cancel would only run out its grace and get the port killed. Their answer, when
%% it comes, finds no entry and is dropped (py_port:orphan_final).
%%
%% cancel_watch is a call: the owner's reply comes after every frame it forwarded for the id before
%% we took the entry, so flush/1 then finds them all (and acknowledges their output).
give_up(Req = #req{id = Id, kind = Kind}) when Kind =:= context_create; Kind =:= context_init;
		Kind =:= context_destroy ->
	case ets:take(py_inflight, Id) of
		[_] ->
			ok = py_port:sync(Req#req.owner, ?CANCEL_WATCH_MS),
			flush(Req),
			true;
		[] ->
			false
	end;
give_up(Req = #req{id = Id, ctx = Ctx, port = Port, codec = Codec, owner = Owner, generation = Gen}) ->
	case ets:take(py_inflight, Id) of
		[_] ->
			_ = catch port_command(Port, py_codec:frame(cancel, Ctx, Id, Codec, [])),
			ok = py_port:cancel_watch(Owner, Id, Gen, ?CANCEL_WATCH_MS),
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
