%% Streams from Python iterators (PROTOCOL.md §3.9): py:stream_start/3,4 (events to an owner),
%% py:stream_cancel/1, and the batch forms py:stream/3,4 and py:stream_eval/1,2 built on them.
%%
%% Scope: one small process per stream (streams are not the hot path). It opens the stream (a call or
%% eval with Opts #{stream => Credit}, routed to the caller's place and run in the caller's
%% environment), receives the stream's frames (py_port routes them by id), sends the owner
%% {py_stream, Ref, {data, V}} per item and then {py_stream, Ref, done} or {py_stream, Ref, {error, R}},
%% and grants the port more items only while the owner keeps up.
%%
%% Flow control: at most ?CREDIT * 3/2 items are granted and not yet received; more are granted only
%% when fewer than ?CREDIT / 2 are outstanding and the owner's mailbox holds fewer than ?WINDOW
%% messages (else the process polls it, backing off from 1 to ?POLL_MAX ms). So the owner's mailbox
%% holds at most ?WINDOW + 2 * ?CREDIT messages of a stream, and the port yields no further ahead.
%%
%% Cancellation: py:stream_cancel/1 or the owner's exit interrupts a running pull (CancelledError in
%% the generator) and closes the stream (GeneratorExit at its yield); the process waits for the
%% stream's final frame (bounded, ?CLOSE_MS) and ends. Nothing is sent to the owner after
%% stream_cancel/1 returns. The process's entry in py_streams (Ref => pid, for stream_cancel) goes
%% with it.
-module(py_stream).

%% API.
-export([init_tab/0]).
-export([start/4]).
-export([cancel/1]).
-export([collect/3]).

%% Items per grant, and the owner mailbox length under which more is granted.
-define(CREDIT, 64).
-define(WINDOW, 256).
-define(POLL_MAX, 50).
%% How long a closing stream waits for its final frame; how long a start waits for a ready port.
-define(CLOSE_MS, 5000).
-define(OPEN_MS, 30000).
-define(TAB, py_streams).

-record(st, {
	ref :: reference(),
	owner :: pid(),
	owner_mon :: reference(),
	stream :: py_request:stream(),
	id :: pos_integer(),
	outstanding :: non_neg_integer(),  %% items granted and not received yet
	received = 0 :: non_neg_integer(),
	backoff = 0 :: non_neg_integer()
}).

%% API.

%% The table of live streams (Ref => stream process); made once by the application's supervisor.
-spec init_tab() -> ok.
init_tab() ->
	?TAB = ets:new(?TAB, [set, public, named_table, {read_concurrency, true}]),
	ok.

%% Starts a stream whose events go to Owner. Kind/Body: the call or eval request body without its
%% Opts (py builds it, with the caller's environment); Route: the caller's place, resolved here.
-spec start(call | eval, py_request:route(), tuple(), pid()) -> {ok, reference()} | {error, term()}.
start(Kind, Route0, Body, Owner) when is_pid(Owner) ->
	Route = resolve(Route0),
	Env = py_request:env_owner(),
	Nested = py_request:nested_marker(),
	Ref = make_ref(),
	Tag = make_ref(),
	Caller = self(),
	{Pid, Mon} = spawn_monitor(fun() -> init(Caller, Tag, Kind, Route, Env, Nested, Body, Owner, Ref) end),
	%% Bounded: the process answers once its open is done (within ?OPEN_MS) or dies.
	receive
		{Tag, ok} ->
			erlang:demonitor(Mon, [flush]),
			{ok, Ref};
		{Tag, {error, _} = Error} ->
			erlang:demonitor(Mon, [flush]),
			Error;
		{'DOWN', Mon, process, Pid, Reason} ->
			{error, {stream_failed, Reason}}
	after ?OPEN_MS + ?CLOSE_MS ->
		exit(Pid, kill),
		erlang:demonitor(Mon, [flush]),
		{error, timeout}
	end.

%% Stops the stream: its generator is closed in Python. When this returns no further event of Ref
%% reaches the owner (events already sent may be in its mailbox). ok for a stream that has ended.
-spec cancel(reference()) -> ok.
cancel(Ref) when is_reference(Ref) ->
	case catch ets:lookup(?TAB, Ref) of
		[{_, Pid}] ->
			Mon = erlang:monitor(process, Pid),
			Pid ! {py_stream_cancel, Ref},
			%% Bounded by the process's own wait for the final frame (?CLOSE_MS).
			receive
				{'DOWN', Mon, process, Pid, _} -> ok
			after 2 * ?CLOSE_MS ->
				erlang:demonitor(Mon, [flush]),
				exit(Pid, kill),
				ok
			end;
		_ ->
			%% ended, or the application is not running (no table)
			ok
	end.

%% The whole stream as {ok, Items}, within Timeout; {error, timeout} cancels it and leaves nothing
%% in the caller's mailbox.
-spec collect(call | eval, {py_request:route(), tuple()}, timeout()) -> {ok, [term()]} | {error, term()}.
collect(Kind, {Route, Body}, Timeout) ->
	Deadline = case Timeout of
		infinity -> infinity;
		_ -> erlang:monotonic_time(millisecond) + Timeout
	end,
	case start(Kind, Route, Body, self()) of
		{ok, Ref} -> gather(Ref, Deadline, []);
		{error, _} = Error -> Error
	end.

gather(Ref, Deadline, Acc) ->
	receive
		{py_stream, Ref, {data, V}} -> gather(Ref, Deadline, [V | Acc]);
		{py_stream, Ref, done} -> {ok, lists:reverse(Acc)};
		{py_stream, Ref, {error, _} = Error} -> Error
	after remaining(Deadline) ->
		ok = cancel(Ref),
		flush_events(Ref),
		{error, timeout}
	end.

flush_events(Ref) ->
	receive
		{py_stream, Ref, _} -> flush_events(Ref)
	after 0 ->
		ok
	end.

%% Internal: the stream process.

%% The caller's own place, resolved in the caller (the stream process has its own dictionary).
resolve(Caller) when Caller =:= self() ->
	case py_router:pick(Caller) of
		{error, _} -> Caller;
		{ctx, Pid} -> {ctx, Pid};
		{Slot, CtxIndex} -> {slot, Slot, CtxIndex}
	end;
resolve(Route) ->
	Route.

init(Caller, Tag, Kind, Route, Env, Nested, Body, Owner, Ref) ->
	%% It stands in for the caller: its place, environment and callback nesting, so the callbacks of
	%% the generator (run here) make their nested calls as the caller's would.
	_ = case Route of
		{slot, Slot, CtxIndex} -> ok = py_router:bind({Slot, CtxIndex});
		_ -> ok
	end,
	ok = py_request:act_for(Env),
	ok = py_request:set_nested_marker(Nested),
	OwnerMon = erlang:monitor(process, Owner),
	Open = py_request:stream_open(Kind, Route, erlang:append_element(Body, #{stream => ?CREDIT}),
		erlang:monotonic_time(millisecond) + ?OPEN_MS),
	case Open of
		{ok, Stream} ->
			true = ets:insert(?TAB, {Ref, self()}),
			Caller ! {Tag, ok},
			St = #st{ref = Ref, owner = Owner, owner_mon = OwnerMon, stream = Stream,
				id = py_request:stream_id(Stream), outstanding = ?CREDIT},
			try
				loop(St)
			after
				ets:delete(?TAB, Ref)
			end;
		{error, _} = Error ->
			Caller ! {Tag, Error}
	end.

loop(St = #st{id = Id, ref = Ref, owner_mon = OwnerMon, outstanding = Out}) ->
	Poll = case Out =< ?CREDIT div 2 of
		true -> grant(St);
		false -> {wait, St}
	end,
	case Poll of
		{wait, St1} ->
			Timeout = case St1#st.outstanding =< ?CREDIT div 2 of
				true -> St1#st.backoff;  %% the owner is behind: look again soon
				false -> infinity        %% items are due: the frames, cancel or the owner's exit
			end,
			receive
				{py_frame, Id, Kind, Ctx, Body} ->
					frame(py_request:stream_frame(St1#st.stream, Kind, Ctx, Body), St1);
				{py_stream_cancel, Ref} ->
					close(St1);
				{'DOWN', OwnerMon, process, _, _} ->
					close(St1)
			after Timeout ->
				loop(St1)
			end
	end.

%% More credit when the owner's mailbox is short; else back off (1, 2, 4 ... ?POLL_MAX ms).
grant(St = #st{owner = Owner, stream = Stream, outstanding = Out, backoff = Backoff}) ->
	case erlang:process_info(Owner, message_queue_len) of
		{message_queue_len, N} when N < ?WINDOW ->
			ok = py_request:stream_pull(Stream, ?CREDIT),
			{wait, St#st{outstanding = Out + ?CREDIT, backoff = 0}};
		{message_queue_len, _} ->
			{wait, St#st{backoff = min(max(1, Backoff * 2), ?POLL_MAX)}};
		undefined ->
			%% Gone: its 'DOWN' is in the mailbox.
			{wait, St#st{backoff = ?POLL_MAX}}
	end.

frame({chunk, Items}, St = #st{owner = Owner, ref = Ref, outstanding = Out, received = R}) ->
	N = lists:foldl(fun(V, K) -> Owner ! {py_stream, Ref, {data, V}}, K + 1 end, 0, Items),
	loop(St#st{outstanding = max(0, Out - N), received = R + N});
frame(served, St) ->
	loop(St);
frame(done, #st{owner = Owner, ref = Ref}) ->
	Owner ! {py_stream, Ref, done},
	ok;
frame(requeue, St = #st{received = 0, stream = Stream}) ->
	%% The condemned port never started it: start it again elsewhere.
	case py_request:stream_reopen(Stream, erlang:monotonic_time(millisecond) + ?OPEN_MS) of
		{ok, Stream1} ->
			loop(St#st{stream = Stream1, id = py_request:stream_id(Stream1), outstanding = ?CREDIT});
		{error, _} = Error ->
			frame(Error, St)
	end;
frame({error, Reason}, #st{owner = Owner, ref = Ref}) ->
	Owner ! {py_stream, Ref, {error, Reason}},
	ok;
frame(Other, St) ->
	frame({error, {protocol_error, bad_reply, Other}}, St).

%% Cancel or the owner's exit: interrupt a running pull, close the generator, and wait for the one
%% final frame (what it carries is dropped: the owner is told nothing more).
close(St = #st{stream = Stream}) ->
	ok = py_request:stream_cancel_pull(Stream),
	ok = py_request:stream_pull(Stream, 0),
	drain(St, erlang:monotonic_time(millisecond) + ?CLOSE_MS).

drain(St = #st{id = Id, stream = Stream}, Deadline) ->
	receive
		{py_frame, Id, Kind, Ctx, Body} ->
			case py_request:stream_frame(Stream, Kind, Ctx, Body) of
				{chunk, _} -> drain(St, Deadline);
				served -> drain(St, Deadline);
				_Final -> ok
			end
	after remaining(Deadline) ->
		py_request:stream_forget(Stream)
	end.

remaining(infinity) -> infinity;
remaining(Deadline) -> max(0, Deadline - erlang:monotonic_time(millisecond)).
