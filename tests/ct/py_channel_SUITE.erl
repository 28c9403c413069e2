%% Channels (py_channel, erlang.channel.Channel; PROTOCOL.md §3.11): the reference docs' examples,
%% blocking, non-blocking and async receive (a plain asyncio loop inside a py:call), several consumers
%% (contexts, threads, coroutines), concurrent senders, closing (from Erlang and from Python) waking
%% every reader, the owner's death and a port restart, cancellation of a blocked receive, a channel
%% used from the wrong port, and backpressure measured against the port's RSS.
%%
%% Two ports with two contexts each; every channel is made in slot 1 and read there.
-module(py_channel_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([suite/0, all/0, init_per_suite/1, end_per_suite/1, init_per_testcase/2, end_per_testcase/2]).
-export([docs_info_and_send/1, docs_request_response/1, docs_streaming_async/1, docs_worker_pool/1,
	blocking_receive_waits/1, try_receive/1, async_receive_waits/1, context_manager/1,
	close_wakes_every_reader/1, python_close/1, consumers_on_two_contexts/1, thread_consumers/1,
	concurrent_senders/1, cancel_blocked_receive/1, owner_death_frees/1, wrong_port/1, bad_args/1,
	backpressure_rss/1, port_restart_closes/1]).

suite() ->
	[{timetrap, {minutes, 3}}].

all() ->
	[docs_info_and_send, docs_request_response, docs_streaming_async, docs_worker_pool,
	 blocking_receive_waits, try_receive, async_receive_waits, context_manager, close_wakes_every_reader,
	 python_close, consumers_on_two_contexts, thread_consumers, concurrent_senders, cancel_blocked_receive,
	 owner_death_frees, wrong_port, bad_args, backpressure_rss, port_restart_closes].

init_per_suite(Config) ->
	ok = py_ct_helper:start_app([{num_ports, 2}, {contexts_per_port, 2}, {cancel_grace_ms, 1000}]),
	ok = py_import:add_path(?config(data_dir, Config)),
	Config.

end_per_suite(_Config) ->
	py_ct_helper:stop_app().

init_per_testcase(_, Config) ->
	ok = py_router:bind({1, 0}),
	Config.

%% The case's own channels live until its process exits (owner_death_frees checks the freeing).
end_per_testcase(_, _Config) ->
	ok.

count(Slot) ->
	{ok, N} = py_ct_helper:on(Slot, 1, fun() -> py:call(chan_helpers, count, []) end),
	N.

call(F, A) ->
	py:call(chan_helpers, F, A).

%% In a process of its own routed to {1, CtxIndex}; the result arrives as {Tag, Result}.
async(Tag, CtxIndex, F, A) ->
	Self = self(),
	py_ct_helper:spawn_routed({1, CtxIndex}, fun() -> Self ! {Tag, call(F, A)} end).

await(Tag) ->
	receive {Tag, R} -> R after 30000 -> error({no_result, Tag}) end.

%% The docs' API section: new/0,1, send/2, info/1 (size counts the encoded bytes queued in the port
%% and falls back to 0 once Python has read them), close/1.
docs_info_and_send(_) ->
	{ok, Ch} = py_channel:new(),
	?assert(is_reference(Ch)),
	{ok, Ch2} = py_channel:new(#{max_size => 10000}),
	#{size := 0, max_size := 10000, closed := false} = py_channel:info(Ch2),
	ok = py_channel:send(Ch, {request, self(), <<"data">>}),
	#{size := Size, max_size := 0, closed := false} = py_channel:info(Ch),
	?assertEqual(iolist_size(py_codec:encode(codec(), {request, self(), <<"data">>})), Size),
	{ok, {<<"request">>, Pid, <<"data">>}} = call(receive_one, [Ch]),
	?assertEqual(self(), Pid),
	ok = py_ct_helper:eventually(fun() -> maps:get(size, py_channel:info(Ch)) =:= 0 end, 5000),
	ok = py_channel:close(Ch),
	ok = py_channel:close(Ch),
	#{closed := true} = py_channel:info(Ch),
	{error, closed} = py_channel:send(Ch, 1),
	ok = py_channel:register_callbacks(),
	ok = py_channel:close(Ch2).

codec() ->
	#{codec := Codec} = py_port:info(1),
	Codec.

%% "Request-Response Pattern": Python replies to the pid in the message.
docs_request_response(_) ->
	{ok, Ch} = py_channel:new(),
	_ = async(handler, 1, handle_requests, [Ch]),
	ok = py_channel:send(Ch, {request, self(), <<"compute">>}),
	ok = py_channel:send(Ch, {request, self(), <<"more">>}),
	{<<"response">>, <<"COMPUTE">>} = receive {<<"response">>, _} = R1 -> R1 after 10000 -> error(no_reply) end,
	{<<"response">>, <<"MORE">>} = receive {<<"response">>, _} = R2 -> R2 after 10000 -> error(no_reply) end,
	ok = py_channel:close(Ch),
	{ok, 2} = await(handler).

%% "Streaming Data": async for in a plain asyncio loop ends at close.
docs_streaming_async(_) ->
	{ok, Ch} = py_channel:new(),
	_ = async(stream, 1, process_stream, [Ch]),
	timer:sleep(100),  %% the reader waits on its eventfd first
	lists:foreach(fun(I) -> ok = py_channel:send(Ch, I) end, lists:seq(1, 100)),
	ok = py_channel:close(Ch),
	?assertEqual({ok, [2 * I || I <- lists:seq(1, 100)]}, await(stream)).

%% "Worker Pool Pattern": 4 async workers on one channel; every item once, work shared.
docs_worker_pool(_) ->
	{ok, Ch} = py_channel:new(#{max_size => 100000}),
	_ = async(pool, 1, async_workers, [Ch, 4]),
	[ok = py_channel:send(Ch, {work, I}) || I <- lists:seq(1, 200)],
	ok = py_channel:close(Ch),
	{ok, [Items, Workers]} = await(pool),
	?assertEqual(lists:seq(1, 200), Items),
	?assert(Workers >= 1).

%% receive() blocks until a message arrives (sent 200 ms later by another process).
blocking_receive_waits(_) ->
	{ok, Ch} = py_channel:new(),
	T0 = erlang:monotonic_time(millisecond),
	_ = spawn(fun() -> timer:sleep(200), ok = py_channel:send(Ch, 42) end),
	{ok, 42} = call(receive_one, [Ch]),
	?assert(py_ct_helper:elapsed_ms(T0) >= 150).

try_receive(_) ->
	{ok, Ch} = py_channel:new(),
	{ok, none} = call(try_one, [Ch]),
	ok = py_channel:send(Ch, none),  %% a None message is not "empty"
	ok = py_channel:send(Ch, <<"x">>),
	{ok, none} = call(try_one, [Ch]),
	ok = py_channel:close(Ch),
	{ok, [<<"x">>, <<"closed">>]} = call(try_after_close, [Ch]),
	{ok, [<<"ChannelClosed">>, <<"erlang.channel">>]} = call(closed_name, []).

%% await async_receive() in a plain asyncio loop waits for data (event-driven: a send 200 ms later).
async_receive_waits(_) ->
	{ok, Ch} = py_channel:new(),
	_ = spawn(fun() -> timer:sleep(200), ok = py_channel:send(Ch, {a, 1}) end),
	T0 = erlang:monotonic_time(millisecond),
	{ok, {<<"a">>, 1}} = call(async_one, [Ch]),
	?assert(py_ct_helper:elapsed_ms(T0) >= 150).

%% with Channel(ref) as ch: closed on exit (Erlang's sends then answer {error, closed}).
context_manager(_) ->
	{ok, Ch} = py_channel:new(),
	ok = py_channel:send(Ch, 7),
	{ok, 7} = call(with_block, [Ch]),
	ok = py_ct_helper:eventually(fun() -> py_channel:send(Ch, 8) =:= {error, closed} end, 5000).

%% Erlang's close wakes a reader blocked in receive() on a context, a sync reader in a thread and an
%% async reader at once.
close_wakes_every_reader(_) ->
	{ok, Ch} = py_channel:new(),
	_ = async(ctx_reader, 1, drain, [Ch]),
	_ = async(readers, 0, blocked_readers, [Ch]),
	timer:sleep(300),
	ok = py_channel:close(Ch),
	{ok, []} = await(ctx_reader),
	{ok, [<<"closed">>, <<"closed">>]} = await(readers).

%% Channel.close() in Python: readers end, Erlang's next send answers {error, closed}.
python_close(_) ->
	{ok, Ch} = py_channel:new(),
	_ = async(reader, 1, drain, [Ch]),
	timer:sleep(200),
	{ok, true} = call(close_from_python, [Ch]),
	{ok, []} = await(reader),
	ok = py_ct_helper:eventually(fun() -> py_channel:send(Ch, 1) =:= {error, closed} end, 5000),
	#{closed := true} = py_channel:info(Ch).

%% Two consumers on two contexts of the port: each message is read exactly once.
consumers_on_two_contexts(_) ->
	{ok, Ch} = py_channel:new(),
	_ = async(c0, 0, drain, [Ch]),
	_ = async(c1, 1, drain, [Ch]),
	[ok = py_channel:send(Ch, I) || I <- lists:seq(1, 500)],
	ok = py_channel:close(Ch),
	{ok, A} = await(c0),
	{ok, B} = await(c1),
	?assertEqual(lists:seq(1, 500), lists:sort(A ++ B)).

thread_consumers(_) ->
	{ok, Ch} = py_channel:new(),
	_ = async(threads, 1, thread_consumers, [Ch, 4]),
	[ok = py_channel:send(Ch, I) || I <- lists:seq(1, 1000)],
	ok = py_channel:close(Ch),
	?assertEqual({ok, lists:seq(1, 1000)}, await(threads)).

%% Eight Erlang processes send at once (each writes its own frames: no relay).
concurrent_senders(_) ->
	{ok, Ch} = py_channel:new(),
	_ = async(reader, 1, drain, [Ch]),
	Self = self(),
	Pids = [spawn(fun() ->
		[ok = py_channel:send(Ch, {W, I}) || I <- lists:seq(1, 250)],
		Self ! {done, self()}
	end) || W <- lists:seq(1, 8)],
	[receive {done, P} -> ok after 30000 -> error(sender_stuck) end || P <- Pids],
	ok = py_channel:close(Ch),
	{ok, Got} = await(reader),
	?assertEqual(2000, length(Got)),
	%% Each sender's messages arrive in its order.
	[?assertEqual([{W, I} || I <- lists:seq(1, 250)], [M || {W1, _} = M <- Got, W1 =:= W])
		|| W <- lists:seq(1, 8)].

%% A receive blocked past the caller's timeout ends with erlang.CancelledError in Python; the port
%% is not restarted (the cancel reached the wait).
cancel_blocked_receive(_) ->
	OsPid = py_ct_helper:os_pid(1),
	{ok, Ch} = py_channel:new(),
	{error, timeout} = py:call(chan_helpers, receive_or_report, [Ch, self()], #{}, 300),
	<<"cancelled">> = receive M -> M after 5000 -> error(no_cancel) end,
	timer:sleep(1500),  %% past cancel_grace_ms
	?assertEqual(OsPid, py_ct_helper:os_pid(1)),
	{ok, 2} = py:eval(<<"1 + 1">>).

%% The owner's death closes its channel (a blocked reader ends) and frees it in the port.
owner_death_frees(_) ->
	Self = self(),
	Owner = spawn(fun() ->
		{ok, Ch} = py_channel:new(#{slot => 1}),
		ok = py_channel:send(Ch, first),
		Self ! {ch, Ch},
		receive stop -> ok end
	end),
	Ch = receive {ch, C} -> C after 5000 -> error(no_channel) end,
	Before = count(1),
	?assert(Before > 0),
	{ok, <<"first">>} = call(receive_one, [Ch]),
	_ = async(reader, 1, drain, [Ch]),
	timer:sleep(200),
	exit(Owner, kill),
	{ok, []} = await(reader),
	{error, closed} = py_channel:send(Ch, 1),
	#{closed := true} = py_channel:info(Ch),
	ok = py_ct_helper:eventually(fun() -> count(1) =:= Before - 1 end, 5000).

%% A channel lives in its port: read from the other port, Channel(ref) raises a clear error.
wrong_port(_) ->
	{ok, Ch} = py_channel:new(#{slot => 1}),
	Result = py_ct_helper:on(2, 0, fun() -> py:call(chan_helpers, receive_one, [Ch], #{}, 5000) end),
	{error, {_, Msg}} = Result,
	?assertNotEqual(nomatch, string:find(Msg, "another port")),
	%% And explicit placement: a channel made for slot 2 is read there.
	{ok, Ch2} = py_channel:new(#{slot => 2}),
	ok = py_channel:send(Ch2, here),
	{ok, <<"here">>} = py_ct_helper:on(2, 0, fun() -> py:call(chan_helpers, receive_one, [Ch2]) end).

bad_args(_) ->
	{error, {badarg, {max_size, -1}}} = py_channel:new(#{max_size => -1}),
	{error, {bad_slot, 99}} = py_channel:new(#{slot => 99}),
	{error, closed} = py_channel:send(make_ref(), x),
	{error, closed} = py_channel:send(not_a_channel, x),
	ok = py_channel:close(make_ref()),
	#{closed := true, size := 0} = py_channel:info(make_ref()),
	{ok, B} = py_byte_channel:new(),
	{error, closed} = py_channel:send(B, x),  %% a byte channel takes no terms
	{error, {_, Msg}} = call(receive_one, [B]),
	?assertNotEqual(nomatch, string:find(Msg, "ByteChannel")).

%% 200 MB pushed at a channel nobody reads (max_size 1 MiB): sends answer busy at once, the port
%% queues at most max_size plus one message, its RSS stays within max_size plus a constant. Then a
%% consumer drains exactly what was accepted and sends are ok again.
backpressure_rss(_) ->
	Max = 1 bsl 20,
	{ok, Ch} = py_channel:new(#{max_size => Max}),
	{ok, Rss0} = call(rss_kb, []),
	Bin = binary:copy(<<"x">>, 65536),
	T0 = erlang:monotonic_time(millisecond),
	{Ok, Busy} = lists:foldl(fun(_, {O, B}) ->
		case py_channel:send(Ch, Bin) of
			ok -> {O + 1, B};
			busy -> {O, B + 1}
		end
	end, {0, 0}, lists:seq(1, 3200)),
	Elapsed = py_ct_helper:elapsed_ms(T0),
	ct:log("ok ~b busy ~b in ~b ms", [Ok, Busy, Elapsed]),
	?assert(Busy > 3000),
	?assert(Ok * 65542 =< Max + 65542),
	#{size := Size} = py_channel:info(Ch),
	?assert(Size =< Max + 65542),
	{ok, Rss1} = call(rss_kb, []),
	ct:log("port RSS ~b KiB -> ~b KiB", [Rss0, Rss1]),
	?assert((Rss1 - Rss0) * 1024 < Max + (32 bsl 20)),
	ok = py_channel:close(Ch),
	{ok, Ok} = call(consume_count, [Ch]),
	{ok, Ch2} = py_channel:new(#{max_size => Max}),
	ok = py_channel:send(Ch2, Bin),
	_ = async(reader, 1, consume_count, [Ch2]),
	%% A steady consumer: busy clears as the port acknowledges what it read.
	Sent = send_until(Ch2, Bin, 200, 0, erlang:monotonic_time(millisecond) + 30000),
	ok = py_channel:close(Ch2),
	{ok, Got} = await(reader),
	?assertEqual(Sent + 1, Got).

send_until(_, _, 0, Sent, _) -> Sent;
send_until(Ch, Bin, N, Sent, Deadline) ->
	?assert(erlang:monotonic_time(millisecond) < Deadline),
	case py_channel:send(Ch, Bin) of
		ok -> send_until(Ch, Bin, N - 1, Sent + 1, Deadline);
		busy -> timer:sleep(1), send_until(Ch, Bin, N, Sent, Deadline)
	end.

%% kill -9 of the port: sends answer {error, closed} (nothing hangs), info says closed.
port_restart_closes(_) ->
	{ok, Ch} = py_channel:new(#{slot => 1}),
	ok = py_channel:send(Ch, 1),
	Gen = py_ct_helper:generation(1),
	OsPid = py_ct_helper:os_pid(1),
	_ = os:cmd("kill -9 " ++ integer_to_list(OsPid)),
	ok = py_ct_helper:eventually(fun() -> py_channel:send(Ch, 2) =:= {error, closed} end, 10000),
	#{closed := true} = py_channel:info(Ch),
	ok = py_ct_helper:eventually(fun() ->
		case py_port:info(1) of #{status := up, generation := G} -> G > Gen; _ -> false end
	end, 20000),
	{ok, Ch2} = py_channel:new(#{slot => 1}),
	ok = py_channel:send(Ch2, 3),
	{ok, 3} = call(receive_one, [Ch2]).
