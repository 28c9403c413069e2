%% Where Python's log records and spans go (PROTOCOL.md §3.14): one process for the node.
%%
%% Why a process and not the owner: logger:log runs the handlers' filters and formatters in the calling
%% process, and decoding a record costs as much as a small reply; the owner (py_port) routes for every
%% caller of its port, so it only forwards the frame here ({ops_frame, ...}, one send) and goes on.
%% The sink decodes it, logs it (domain [python], py_logger, py_meta) or stores the span, and
%% acknowledges the frames to their port with ops_ack, in batches: once its mailbox is empty, or every
%% ?ACK_BATCH frames. The port writes a log/span frame only while fewer than its window (1024) are
%% unacknowledged, and drops (and counts) the rest, so this mailbox holds at most window x ports frames
%% however slow logging is. A dropped count the port reports on a later frame is logged as a warning and
%% counted (py_ops:counters/0, py:stats/0).
%%
%% The span table (py_traces) is bounded by max_traces: past it the oldest span is deleted per insert.
-module(py_ops_sink).
-behaviour(gen_server).

%% API.
-export([start_link/0]).
-export([forward/5]).
-export([sync/0]).

%% gen_server.
-export([init/1]).
-export([handle_call/3]).
-export([handle_cast/2]).
-export([handle_info/2]).

-define(LOG, 74).
-define(SPAN, 88).
-define(OPS_ACK, 29).
-define(ACK_BATCH, 64).
%% Python levelno of the reference docs' levels; anything between rounds down.
-define(LEVEL(No), if No >= 50 -> critical; No >= 40 -> error; No >= 30 -> warning; No >= 20 -> info;
	true -> debug end).

-record(state, {
	%% Frames taken but not acknowledged yet, per port: {Codec, Slot, Count}. Bounded by the ports.
	acks = #{} :: #{port() => {py_codec:codec(), pos_integer(), pos_integer()}},
	pending = 0 :: non_neg_integer(),
	max_traces :: pos_integer()
}).

%% API.

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
	gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% Called by py_port for a log or span frame (id 0): one message. Without a sink (it is restarting)
%% the frame is acknowledged unread, so the port's window does not stay full.
-spec forward(pos_integer(), port(), py_codec:codec(), 74 | 88, binary()) -> ok.
forward(Slot, Port, Codec, Kind, Body) ->
	try
		?MODULE ! {ops_frame, Slot, Port, Codec, Kind, Body},
		ok
	catch error:badarg ->
		_ = catch port_command(Port, ack_frame(Codec, 1)),
		ok
	end.

%% Returns once every frame forwarded before it is logged or stored.
-spec sync() -> ok.
sync() ->
	try gen_server:call(?MODULE, sync, 5000)
	catch exit:_ -> ok
	end.

%% gen_server.

-spec init([]) -> {ok, #state{}}.
init([]) ->
	%% A sink that restarted lost the frames in its predecessor's mailbox: every up port forgets its
	%% unacknowledged count (ops_ack 0), or that much of its window would be gone for good.
	_ = [catch port_command(Port, ack_frame(Codec, 0))
		|| Slot <- py_ops:slots(),
			#{status := St, port := Port, codec := Codec} <- [py_port:info(Slot)], St =/= down],
	ok = schedule_depth(),
	{ok, #state{max_traces = py_ops:max_traces()}}.

-spec handle_call(sync, gen_server:from(), #state{}) -> {reply, ok, #state{}, 0}.
handle_call(sync, _From, State) ->
	{reply, ok, State, 0}.

-spec handle_cast(term(), #state{}) -> {noreply, #state{}}.
handle_cast(_, State) ->
	{noreply, State}.

-spec handle_info(term(), #state{}) -> {noreply, #state{}} | {noreply, #state{}, 0}.
handle_info({ops_frame, Slot, Port, Codec, Kind, Body}, State) ->
	try
		handle_frame(Slot, Codec, Kind, py_codec:decode(Codec, Body), State)
	catch Class:Reason ->
		logger:warning("erlang_python: port ~b sent a ~b frame the log sink cannot read: ~tp",
			[Slot, Kind, {Class, Reason}], #{domain => [erlang_python]})
	end,
	acked(Port, Codec, Slot, State);
handle_info(depth_tick, State) ->
	ok = queue_depth(),
	ok = schedule_depth(),
	{noreply, State, 0};
handle_info(timeout, State) ->
	%% The mailbox is empty: acknowledge what was taken.
	{noreply, flush_acks(State)};
handle_info(_, State) ->
	{noreply, State, 0}.

%% Internal.

%% The [erlang_python, queue, depth] event of every port that is up, each telemetry_interval_ms
%% (default 1000; 0: never): requests in flight on it (py_inflight entries) and the owner's mailbox.
%% Measured only when the event goes somewhere.
schedule_depth() ->
	case application:get_env(erlang_python, telemetry_interval_ms, 1000) of
		Ms when is_integer(Ms), Ms > 0 -> _ = erlang:send_after(Ms, self(), depth_tick), ok;
		_ -> ok
	end.

queue_depth() ->
	case py_telemetry:enabled() of
		true ->
			_ = [py_telemetry:execute([erlang_python, queue, depth],
				#{inflight => ets:select_count(py_inflight, [{{'_', '_', Slot}, [], [true]}]),
				  owner_queue => case process_info(Owner, message_queue_len) of
					{message_queue_len, N} -> N;
					undefined -> 0
				  end},
				#{slot => Slot})
				|| Slot <- py_ops:slots(),
					#{status := up, owner := Owner} <- [py_port:info(Slot)]],
			ok;
		false ->
			ok
	end.

handle_frame(Slot, _Codec, ?LOG, {LevelNo, Logger, Message, Meta, Dropped}, _State) when is_integer(LevelNo) ->
	ok = report_dropped(Slot, log_dropped, "log records", Dropped),
	Level = ?LEVEL(LevelNo),
	%% logger:allow first: a level the node does not log costs no metadata map.
	_ = logger:allow(Level, ?MODULE) andalso
		logger:log(Level, "~ts", [Message], #{domain => [python], py_logger => Logger, py_meta => Meta,
			port => Slot}),
	py_ops:count(log_records, 1);
handle_frame(Slot, _Codec, ?SPAN, {Name, SpanId, ParentId, Start, End, Status, Attrs, EndAttrs, Events, Dropped},
		State) ->
	ok = report_dropped(Slot, spans_dropped, "spans", Dropped),
	Span = #{name => Name, span_id => SpanId,
		parent_id => case ParentId of none -> undefined; _ -> ParentId end,
		start_time => Start, end_time => End, duration_us => max(0, End - Start),
		status => case Status of <<"error">> -> error; _ -> ok end,
		attributes => Attrs, end_attrs => EndAttrs,
		events => [#{name => N, attrs => A, time => T} || {N, A, T} <- Events]},
	true = ets:insert(py_traces, {erlang:unique_integer([monotonic]), Span}),
	ok = py_ops:count(spans, 1),
	evict(State#state.max_traces);
handle_frame(Slot, _Codec, Kind, Term, _State) ->
	logger:warning("erlang_python: port ~b sent an unexpected ~b frame: ~tp", [Slot, Kind, Term],
		#{domain => [erlang_python]}).

%% Past the cap the oldest spans go (one per insert, so the table never exceeds it by more than one).
evict(Max) ->
	case ets:info(py_traces, size) > Max of
		true ->
			_ = ets:delete(py_traces, ets:first(py_traces)),
			py_ops:count(spans_evicted, 1);
		false ->
			ok
	end.

report_dropped(_, _, _, 0) ->
	ok;
report_dropped(Slot, Counter, What, N) when is_integer(N), N > 0 ->
	ok = py_ops:count(Counter, N),
	ok = py_stats:count_slot(Slot, Counter, N),
	logger:warning("erlang_python: port ~b dropped ~b Python ~s: the Erlang side was ~s behind",
		[Slot, N, What, "a window of 1024 frames"], #{domain => [erlang_python], port => Slot});
report_dropped(_, _, _, _) ->
	ok.

acked(Port, Codec, Slot, State = #state{acks = Acks, pending = Pending}) ->
	State1 = State#state{acks = maps:update_with(Port, fun({C, S, N}) -> {C, S, N + 1} end, {Codec, Slot, 1}, Acks),
		pending = Pending + 1},
	case Pending + 1 >= ?ACK_BATCH of
		true -> {noreply, flush_acks(State1), 0};
		false -> {noreply, State1, 0}
	end.

flush_acks(State = #state{acks = Acks}) ->
	_ = [catch port_command(Port, ack_frame(Codec, N)) || {Port, {Codec, _Slot, N}} <- maps:to_list(Acks)],
	State#state{acks = #{}, pending = 0}.

ack_frame(Codec, N) ->
	[<<?OPS_ACK, 0, 0:16, 0:32, 0:64>> | py_codec:encode(Codec, N)].
