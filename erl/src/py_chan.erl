%% Channels, byte channels and buffers: the Erlang half shared by py_channel, py_byte_channel and
%% py_buffer (protocol/PROTOCOL.md §3.11).
%%
%% Scope: a handle is a reference; its row in py_chans names the port (slot, port(), codec) and the
%% channel id there, and holds its counters (atomics). The queue itself lives in the port. Every
%% operation runs in the calling process: send/write encode and port_command their frame directly
%% (no process in between), close and info read and write the counters. This gen_server only
%% watches: each owner (the creating process) and each port with channels is monitored; an owner's
%% death drops its channels (the port frees them), a port's death closes every channel in it.
%%
%% Backpressure: counter `sent' counts the body bytes written, `consumed' the bytes the port reported
%% read (chan_consumed, batched, applied by py_port as it routes). sent - consumed is the port's
%% queue, as exact as the last report; a send that would take it past max_size answers busy.
%%
%% Byte channels' Python -> Erlang bytes (chan_bytes) are put by py_port into py_chan_inbox
%% ({{Id, Seq}, Bin}); recv/2 takes them there and tells waiting receivers (py_chan_wait) when more
%% come. What recv consumes is reported back (chan_ctl consumed), which bounds the sender in Python.
-module(py_chan).
-behaviour(gen_server).

%% API.
-export([init_tab/0]).
-export([start_link/0]).
-export([new/4]).
-export([send_term/2]).
-export([send_raw/2]).
-export([write/2]).
-export([close/1]).
-export([info/1]).
-export([recv/2]).
-export([try_receive/1]).
-export([port_frame/4]).
-export([lookup/1]).

%% gen_server.
-export([init/1]).
-export([handle_call/3]).
-export([handle_cast/2]).
-export([handle_info/2]).

-export_type([handle/0]).
-export_type([type/0]).

-type handle() :: reference().
-type type() :: channel | byte_channel | buffer.

-define(CHANS, py_chans).
-define(INBOX, py_chan_inbox).
-define(WAIT, py_chan_wait).
-define(OWNED, py_chan_owned).  %% {Owner, Ref}: an owner's death finds its channels without a scan

%% Wire kinds (PROTOCOL.md §3.11).
-define(CHAN_OPEN, 20).
-define(CHAN_DATA, 21).
-define(CHAN_CTL, 22).
-define(CHAN_CONSUMED, 80).
-define(CHAN_CLOSED, 81).
-define(CHAN_BYTES, 82).
-define(CTL_CLOSE, 1).
-define(CTL_DROP, 2).
-define(CTL_CONSUMED, 3).

%% Counters.
-define(SENT, 1).
-define(CONSUMED, 2).
-define(CLOSED, 3).      %% 1: no more sends (Erlang closed it, Python closed it, or its port died)
-define(IN_UNACKED, 4).  %% bytes recv took from the inbox and has not reported yet
-define(WRITTEN, 5).     %% buffer bytes written
-define(PY_CLOSED, 6).   %% 1: Python closed it: recv ends once the inbox is drained
-define(NCOUNTERS, 6).

%% A chunked buffer may hold this much (a buffer keeps everything written, for seek).
-define(BUFFER_MAX, (1 bsl 30)).
%% recv reports consumption once this much is unreported, and whenever the inbox is drained.
-define(ACK_BATCH, 65536).

-record(ch, {
	ref :: reference(),
	id :: pos_integer(),
	type :: type(),
	slot :: pos_integer(),
	port :: port(),
	codec :: py_codec:codec(),
	counters :: atomics:atomics_ref(),
	max :: non_neg_integer(),  %% channels: max_size (0: unbounded); buffers: the content length (0: chunked)
	owner :: pid()
}).

%% API.

%% The tables, owned by the supervisor so that this server's restart keeps them.
-spec init_tab() -> ok.
init_tab() ->
	?CHANS = ets:new(?CHANS, [set, public, named_table, {keypos, #ch.ref}, {read_concurrency, true}]),
	py_chan_ids = ets:new(py_chan_ids, [set, public, named_table, {read_concurrency, true}]),
	?INBOX = ets:new(?INBOX, [ordered_set, public, named_table, {write_concurrency, true}]),
	?WAIT = ets:new(?WAIT, [bag, public, named_table, {write_concurrency, true}]),
	?OWNED = ets:new(?OWNED, [bag, public, named_table, {write_concurrency, true}]),
	ok.

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
	gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% A new channel of Type in the port of the caller's place (or Opts' context => Pid, slot => N),
%% owned by the caller. Max: max_size (channels) or the content length (buffers), 0 for none.
-spec new(type(), non_neg_integer(), non_neg_integer(), map()) -> {ok, handle()} | {error, term()}.
new(Type, Max, Hint, Opts) ->
	case slot(Opts) of
		{ok, Slot} ->
			case port_info(Slot) of
				{ok, #{port := Port, codec := Codec}} ->
					Ref = make_ref(),
					Id = erlang:unique_integer([positive]),
					Ch = #ch{ref = Ref, id = Id, type = Type, slot = Slot, port = Port, codec = Codec,
						counters = atomics:new(?NCOUNTERS, [{signed, true}]), max = Max, owner = self()},
					ok = gen_server:call(?MODULE, {register, Ch}),
					%% The bytes the port holds for the reference (both codecs write it with minor_version 2).
					<<131, Key/binary>> = term_to_binary(Ref, [{minor_version, 2}]),
					Body = <<(type_code(Type)), Max:64, Hint:64, Key/binary>>,
					case command(Port, ?CHAN_OPEN, Id, py_codec:encode(Codec, Body)) of
						true -> {ok, Ref};
						false -> forget(Ch), {error, {not_running, port_exited}}
					end;
				{error, _} = Error ->
					Error
			end;
		{error, _} = Error ->
			Error
	end.

%% A channel message: Term in the port's codec.
-spec send_term(handle(), term()) -> ok | busy | {error, closed}.
send_term(Ref, Term) ->
	case lookup(Ref) of
		#ch{type = channel, codec = Codec, counters = C, max = Max} = Ch ->
			%% Full already: busy without encoding the term.
			case Max > 0 andalso atomics:get(C, ?SENT) - atomics:get(C, ?CONSUMED) >= Max of
				true -> case atomics:get(C, ?CLOSED) of 1 -> {error, closed}; _ -> busy end;
				false -> push(Ch, py_codec:encode(Codec, Term))
			end;
		_ -> {error, closed}
	end.

%% A byte channel's chunk: the raw bytes are the frame's body.
-spec send_raw(handle(), iodata()) -> ok | busy | {error, closed}.
send_raw(Ref, Bytes) ->
	case lookup(Ref) of
		#ch{type = byte_channel} = Ch -> push(Ch, Bytes);
		_ -> {error, closed}
	end.

%% Appends to a buffer. Bounded by its content length, or 1 GiB when chunked.
-spec write(handle(), iodata()) -> ok | {error, closed | too_large}.
write(Ref, Data) ->
	case lookup(Ref) of
		#ch{type = buffer, counters = C, max = Len, port = Port, id = Id} = Ch ->
			case atomics:get(C, ?CLOSED) of
				1 -> {error, closed};
				_ ->
					Size = iolist_size(Data),
					Limit = case Len of 0 -> ?BUFFER_MAX; _ -> Len end,
					case atomics:add_get(C, ?WRITTEN, Size) > Limit of
						true -> atomics:sub(C, ?WRITTEN, Size), {error, too_large};
						false -> sent(Ch, command(Port, ?CHAN_DATA, Id, Data))
					end
			end;
		_ -> {error, closed}
	end.

%% Erlang's end of the data: readers get what is queued, then the closed exception / EOF.
-spec close(handle()) -> ok.
close(Ref) ->
	case lookup(Ref) of
		#ch{counters = C, port = Port, id = Id, codec = Codec} ->
			case atomics:compare_exchange(C, ?CLOSED, 0, 1) of
				ok -> _ = command(Port, ?CHAN_CTL, Id, py_codec:encode(Codec, <<?CTL_CLOSE, 0:64>>)), ok;
				_ -> ok
			end;
		undefined -> ok
	end.

-spec info(handle()) -> #{size := non_neg_integer(), max_size := non_neg_integer(), closed := boolean()}.
info(Ref) ->
	case lookup(Ref) of
		#ch{type = buffer, counters = C, max = Len} ->
			#{size => atomics:get(C, ?WRITTEN), max_size => Len, closed => atomics:get(C, ?CLOSED) =:= 1};
		#ch{counters = C, max = Max} ->
			#{size => max(0, atomics:get(C, ?SENT) - atomics:get(C, ?CONSUMED)), max_size => Max,
				closed => atomics:get(C, ?CLOSED) =:= 1};
		undefined ->
			#{size => 0, max_size => 0, closed => true}
	end.

%% Bytes Python sent on a byte channel (ByteChannel.send_bytes), waiting up to Timeout for some.
-spec recv(handle(), timeout()) -> {ok, binary()} | {error, closed | timeout}.
recv(Ref, Timeout) ->
	recv_loop(Ref, deadline(Timeout)).

-spec try_receive(handle()) -> {ok, binary()} | {error, empty | closed}.
try_receive(Ref) ->
	case lookup(Ref) of
		#ch{type = byte_channel} = Ch ->
			case take(Ch) of
				{ok, _} = Ok -> Ok;
				empty -> {error, empty_or_closed(Ch)}
			end;
		_ -> {error, closed}
	end.

%% py_port, for each chan_* frame the port writes (it only routes: a lookup and a counter or an insert).
-spec port_frame(80..83, non_neg_integer(), binary(), py_codec:codec()) -> ok.
port_frame(?CHAN_CONSUMED, Id, Body, Codec) ->
	case ets:lookup(py_chan_ids, Id) of
		[{_, _, C}] -> atomics:add(C, ?CONSUMED, py_codec:decode(Codec, Body));
		[] -> ok
	end;
port_frame(?CHAN_CLOSED, Id, _Body, _Codec) ->
	case ets:lookup(py_chan_ids, Id) of
		[{_, _, C}] ->
			atomics:put(C, ?CLOSED, 1),
			atomics:put(C, ?PY_CLOSED, 1),
			wake(Id);
		[] -> ok
	end;
port_frame(?CHAN_BYTES, Id, Body, _Codec) ->
	case ets:member(py_chan_ids, Id) of
		true ->
			true = ets:insert(?INBOX, {{Id, erlang:unique_integer([positive, monotonic])}, Body}),
			wake(Id);
		false -> ok
	end;
port_frame(_, _, _, _) ->
	ok.

-spec lookup(handle()) -> #ch{} | undefined.
lookup(Ref) when is_reference(Ref) ->
	try ets:lookup(?CHANS, Ref) of
		[Ch] -> Ch;
		[] -> undefined
	catch error:badarg -> undefined
	end;
lookup(_) ->
	undefined.

%% gen_server: monitors owners and ports. State: #{owners := #{pid() => MRef}, ports := #{port() => MRef}}.

-spec init([]) -> {ok, map()}.
init([]) ->
	%% After a restart: watch again what the table holds.
	State = ets:foldl(fun(Ch, S) -> watch(Ch, S) end, #{owners => #{}, ports => #{}}, ?CHANS),
	{ok, State}.

-spec handle_call(term(), gen_server:from(), map()) -> {reply, term(), map()}.
handle_call({register, Ch = #ch{ref = Ref, id = Id, counters = C, owner = Owner}}, _From, State) ->
	true = ets:insert(?CHANS, Ch),
	true = ets:insert(py_chan_ids, {Id, Ref, C}),
	true = ets:insert(?OWNED, {Owner, Ref}),
	{reply, ok, watch(Ch, State)};
handle_call(_, _From, State) ->
	{reply, {error, unknown_call}, State}.

-spec handle_cast(term(), map()) -> {noreply, map()}.
handle_cast(_, State) ->
	{noreply, State}.

-spec handle_info(term(), map()) -> {noreply, map()}.
handle_info({'DOWN', _MRef, process, Pid, _}, State = #{owners := Owners}) ->
	%% The owner died: its channels and buffers are freed in the port.
	Chans = [Ch || {_, Ref} <- ets:take(?OWNED, Pid), Ch <- ets:lookup(?CHANS, Ref)],
	_ = [begin
		atomics:put(C, ?CLOSED, 1),
		_ = command(Port, ?CHAN_CTL, Id, py_codec:encode(Codec, <<?CTL_DROP, 0:64>>)),
		forget(Ch)
	end || Ch = #ch{port = Port, id = Id, codec = Codec, counters = C} <- Chans],
	{noreply, State#{owners := maps:remove(Pid, Owners)}};
handle_info({'DOWN', _MRef, port, Port, _}, State = #{ports := Ports}) ->
	%% The port died: every channel in it is gone (a send answers {error, closed}). Rare: a scan.
	Chans = ets:match_object(?CHANS, #ch{port = Port, _ = '_'}),
	_ = [begin
		atomics:put(C, ?CLOSED, 1),
		atomics:put(C, ?PY_CLOSED, 1),
		forget(Ch)
	end || Ch = #ch{counters = C} <- Chans],
	{noreply, State#{ports := maps:remove(Port, Ports)}};
handle_info(_, State) ->
	{noreply, State}.

%% Internal.

%% One monitor per owner and per port, whatever the number of their channels.
watch(#ch{owner = Owner, port = Port}, State = #{owners := Owners, ports := Ports}) ->
	Owners1 = case Owners of
		#{Owner := _} -> Owners;
		_ -> Owners#{Owner => erlang:monitor(process, Owner)}
	end,
	Ports1 = case Ports of
		#{Port := _} -> Ports;
		_ -> Ports#{Port => erlang:monitor(port, Port)}
	end,
	State#{owners := Owners1, ports := Ports1}.

forget(#ch{ref = Ref, id = Id, owner = Owner}) ->
	true = ets:delete(?CHANS, Ref),
	true = ets:delete_object(?OWNED, {Owner, Ref}),
	true = ets:delete(py_chan_ids, Id),
	true = ets:match_delete(?INBOX, {{Id, '_'}, '_'}),
	wake(Id).

wake(Id) ->
	_ = [Pid ! {py_chan_ready, Id} || {_, Pid} <- ets:lookup(?WAIT, Id)],
	ok.

push(Ch = #ch{id = Id, port = Port, counters = C, max = Max}, Body) ->
	case atomics:get(C, ?CLOSED) of
		1 -> {error, closed};
		_ ->
			Size = iolist_size(Body),
			Sent = atomics:add_get(C, ?SENT, Size),
			Queued = Sent - atomics:get(C, ?CONSUMED),
			%% Busy when this message would take the queue past max_size, unless the queue is empty (a
			%% message bigger than max_size still goes, alone).
			case Max > 0 andalso Queued > Max andalso Queued > Size of
				true ->
					atomics:sub(C, ?SENT, Size),
					busy;
				false when Max > 0 ->
					%% Bounded: never suspended behind a full pipe either.
					case frame_nosuspend(Port, Id, Body) of
						true -> ok;
						false -> atomics:sub(C, ?SENT, Size), busy;
						closed -> sent(Ch, false)
					end;
				false ->
					sent(Ch, command(Port, ?CHAN_DATA, Id, Body))
			end
	end.

sent(_, true) -> ok;
sent(#ch{counters = C}, false) -> atomics:put(C, ?CLOSED, 1), {error, closed}.

frame_nosuspend(Port, Id, Body) ->
	try erlang:port_command(Port, [<<?CHAN_DATA, 0, 0:16, 0:32, Id:64>> | Body], [nosuspend])
	catch error:badarg -> closed
	end.

command(Port, Kind, Id, Body) ->
	try erlang:port_command(Port, [<<Kind, 0, 0:16, 0:32, Id:64>> | Body])
	catch error:badarg -> false
	end.

recv_loop(Ref, Deadline) ->
	case lookup(Ref) of
		#ch{type = byte_channel, id = Id} = Ch ->
			case take(Ch) of
				{ok, _} = Ok -> Ok;
				empty ->
					case empty_or_closed(Ch) of
						closed -> {error, closed};
						empty ->
							true = ets:insert(?WAIT, {Id, self()}),
							%% Checked again once registered: bytes that came in between woke nobody.
							Result = case take(Ch) of
								{ok, _} = Ok -> Ok;
								empty ->
									receive {py_chan_ready, Id} -> again
									after remaining(Deadline) -> {error, timeout}
									end
							end,
							true = ets:delete_object(?WAIT, {Id, self()}),
							flush_ready(Id),
							case Result of
								again -> recv_loop(Ref, Deadline);
								_ -> Result
							end
					end
			end;
		_ -> {error, closed}
	end.

flush_ready(Id) ->
	receive {py_chan_ready, Id} -> flush_ready(Id)
	after 0 -> ok
	end.

take(Ch = #ch{id = Id}) ->
	case ets:next(?INBOX, {Id, 0}) of
		{Id, _} = Key ->
			case ets:take(?INBOX, Key) of
				[{_, Bin}] -> ack_in(Ch, byte_size(Bin)), {ok, Bin};
				[] -> take(Ch)  %% another receiver took it first
			end;
		_ -> empty
	end.

ack_in(#ch{id = Id, counters = C, port = Port, codec = Codec}, Size) ->
	Unacked = atomics:add_get(C, ?IN_UNACKED, Size),
	Drained = case ets:next(?INBOX, {Id, 0}) of {Id, _} -> false; _ -> true end,
	case Unacked >= ?ACK_BATCH orelse Drained of
		true ->
			case atomics:exchange(C, ?IN_UNACKED, 0) of
				N when N > 0 -> _ = command(Port, ?CHAN_CTL, Id, py_codec:encode(Codec, <<?CTL_CONSUMED, N:64>>)), ok;
				_ -> ok
			end;
		false -> ok
	end.

empty_or_closed(#ch{counters = C}) ->
	case atomics:get(C, ?PY_CLOSED) of
		1 -> closed;
		_ -> empty
	end.

type_code(channel) -> 1;
type_code(byte_channel) -> 2;
type_code(buffer) -> 3.

%% The slot a new channel goes to: an explicit one, an explicit context's, or the caller's place.
slot(#{slot := Slot}) when is_integer(Slot), Slot > 0 ->
	case Slot =< py_router:num_slots() of
		true -> {ok, Slot};
		false -> {error, {bad_slot, Slot}}
	end;
slot(#{context := Pid}) when is_pid(Pid) ->
	try ets:lookup(py_contexts, Pid) of
		[{_, Slot, _Ctx, _Gen, _Pool, _Mode}] -> {ok, Slot};
		[] -> {error, {context_down, Pid}}
	catch error:badarg -> {error, not_started}
	end;
slot(_) ->
	case py_router:pick(self()) of
		{ctx, Pid} -> slot(#{context => Pid});
		{Slot, _} when is_integer(Slot) -> {ok, Slot};
		{error, _} = Error -> Error
	end.

port_info(Slot) ->
	case py_port:info(Slot) of
		#{status := up} = Info -> {ok, Info};
		#{owner := Owner} ->
			try py_port:wait_ready(Owner, 0, 5000) of
				{ok, #{status := up} = Info} -> {ok, Info};
				{ok, _} -> {error, {not_running, condemned}};
				{error, Why} -> {error, {not_running, Why}}
			catch exit:{Why, _} -> {error, {not_running, Why}}
			end;
		undefined -> {error, not_started}
	end.

deadline(infinity) -> infinity;
deadline(Ms) when is_integer(Ms), Ms >= 0 -> erlang:monotonic_time(millisecond) + Ms.

remaining(infinity) -> infinity;
remaining(Deadline) -> max(0, Deadline - erlang:monotonic_time(millisecond)).
