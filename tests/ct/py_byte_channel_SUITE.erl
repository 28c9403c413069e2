%% Byte channels (py_byte_channel, erlang.ByteChannel; PROTOCOL.md §3.11): the reference docs'
%% examples, raw bytes both ways (no term encoding: any binary, UTF-8 or not, arrives as it is),
%% blocking, non-blocking and async receive on both sides, closing from either side, backpressure in
%% both directions, the owner's death and a port restart waking a blocked Erlang recv.
-module(py_byte_channel_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([suite/0, all/0, init_per_suite/1, end_per_suite/1, init_per_testcase/2, end_per_testcase/2]).
-export([docs_erlang_api/1, docs_python_api/1, docs_async/1, raw_bytes_exact/1, context_manager/1,
	recv_timeout/1, recv_waits/1, closed_after_drain/1, python_close/1, echo_concurrent/1,
	backpressure_to_python/1, backpressure_to_erlang/1, owner_death/1, port_restart_wakes_recv/1]).

suite() ->
	[{timetrap, {minutes, 3}}].

all() ->
	[docs_erlang_api, docs_python_api, docs_async, raw_bytes_exact, context_manager, recv_timeout,
	 recv_waits, closed_after_drain, python_close, echo_concurrent, backpressure_to_python,
	 backpressure_to_erlang, owner_death, port_restart_wakes_recv].

init_per_suite(Config) ->
	ok = py_ct_helper:start_app([{num_ports, 1}, {contexts_per_port, 2}]),
	ok = py_import:add_path(?config(data_dir, Config)),
	Config.

end_per_suite(_Config) ->
	py_ct_helper:stop_app().

init_per_testcase(_, Config) ->
	Config.

end_per_testcase(_, _Config) ->
	ok.

call(F, A) ->
	py:call(bytechan_helpers, F, A).

async(Tag, F, A) ->
	Self = self(),
	spawn_link(fun() -> Self ! {Tag, call(F, A)} end).

await(Tag) ->
	receive {Tag, R} -> R after 30000 -> error({no_result, Tag}) end.

%% The docs' Erlang API block: new, send, recv, try_receive ({error, empty} when nothing), close.
docs_erlang_api(_) ->
	{ok, Ch} = py_byte_channel:new(),
	ok = py_byte_channel:send(Ch, <<"HTTP/1.1 200 OK\r\n">>),
	ok = py_byte_channel:send(Ch, [<<"Body">>, "Bytes"]),  %% iodata
	_ = async(py, process_bytes, [Ch]),
	timer:sleep(100),
	ok = py_byte_channel:close(Ch),
	{ok, <<"response data">>} = py_byte_channel:recv(Ch),
	{ok, <<"+HTTP/1.1 200 OK\r\n">>} = py_byte_channel:recv(Ch, 5000),
	{ok, [<<"HTTP/1.1 200 OK\r\n">>, <<"BodyBytes">>]} = await(py),
	{error, closed} = py_byte_channel:try_receive(Ch),  %% Python closed it and it is drained
	{error, closed} = py_byte_channel:recv(Ch, 100),
	ok = py_byte_channel:register_callbacks(),
	#{closed := true} = py_byte_channel:info(Ch),
	{ok, Ch2} = py_byte_channel:new(#{max_size => 1000}),
	{error, empty} = py_byte_channel:try_receive(Ch2),
	#{size := 0, max_size := 1000, closed := false} = py_byte_channel:info(Ch2),
	ok = py_byte_channel:send(Ch2, <<"12345">>),
	#{size := 5} = py_byte_channel:info(Ch2),
	{ok, <<"12345">>} = call(try_one, [Ch2]),
	{ok, none} = call(try_one, [Ch2]),
	ok = py_ct_helper:eventually(fun() -> maps:get(size, py_byte_channel:info(Ch2)) =:= 0 end, 5000).

%% The docs' Python API block (blocking receive, iteration, send_bytes, close).
docs_python_api(_) ->
	{ok, Ch} = py_byte_channel:new(),
	_ = async(py, process_bytes, [Ch]),
	ok = py_byte_channel:send(Ch, <<"first">>),
	ok = py_byte_channel:send(Ch, <<"second">>),
	ok = py_byte_channel:close(Ch),
	{ok, [<<"first">>, <<"second">>]} = await(py),
	{ok, <<"response data">>} = py_byte_channel:recv(Ch, 5000),
	{ok, <<"+first">>} = py_byte_channel:recv(Ch, 5000).

docs_async(_) ->
	{ok, Ch} = py_byte_channel:new(),
	_ = async(py, process_bytes_async, [Ch]),
	timer:sleep(200),
	[ok = py_byte_channel:send(Ch, integer_to_binary(I)) || I <- lists:seq(1, 50)],
	ok = py_byte_channel:close(Ch),
	Expected = iolist_to_binary([integer_to_binary(I) || I <- lists:seq(1, 50)]),
	?assertEqual({ok, Expected}, await(py)).

%% Bytes that are not UTF-8, empty chunks and 4 MiB chunks pass unchanged (no term encoding).
raw_bytes_exact(_) ->
	{ok, Ch} = py_byte_channel:new(),
	_ = async(py, echo, [Ch]),
	Chunks = [<<255, 0, 254>>, <<>>, crypto:strong_rand_bytes(4 bsl 20), <<"plain">>],
	[ok = py_byte_channel:send(Ch, C) || C <- Chunks],
	ok = py_byte_channel:close(Ch),
	Back = [begin {ok, B} = py_byte_channel:recv(Ch, 10000), B end || _ <- Chunks],
	?assertEqual(Chunks, Back),
	?assertEqual({ok, lists:sum([byte_size(C) || C <- Chunks])}, await(py)).

context_manager(_) ->
	{ok, Ch} = py_byte_channel:new(),
	ok = py_byte_channel:send(Ch, <<"abc">>),
	ok = py_byte_channel:send(Ch, <<"de">>),
	ok = py_byte_channel:close(Ch),
	{ok, [3, 2]} = call(with_block, [Ch]).

recv_timeout(_) ->
	{ok, Ch} = py_byte_channel:new(),
	T0 = erlang:monotonic_time(millisecond),
	{error, timeout} = py_byte_channel:recv(Ch, 200),
	?assert(py_ct_helper:elapsed_ms(T0) >= 190),
	{error, timeout} = py_byte_channel:recv(Ch, 0),
	%% No stale wake-up message is left in the mailbox.
	receive M -> error({unexpected, M}) after 0 -> ok end.

%% recv/1 waits for Python's bytes (sent while it waits).
recv_waits(_) ->
	{ok, Ch} = py_byte_channel:new(),
	Self = self(),
	spawn_link(fun() -> Self ! {recv, py_byte_channel:recv(Ch)} end),
	timer:sleep(200),
	_ = async(py, echo, [Ch]),
	ok = py_byte_channel:send(Ch, <<"ping">>),
	{ok, <<"ping">>} = await(recv),
	ok = py_byte_channel:close(Ch),
	{ok, 4} = await(py).

closed_after_drain(_) ->
	{ok, Ch} = py_byte_channel:new(),
	ok = py_byte_channel:send(Ch, <<"only">>),
	ok = py_byte_channel:close(Ch),
	{error, closed} = py_byte_channel:send(Ch, <<"late">>),
	{ok, [<<"only">>, <<"ByteChannelClosed">>, true]} = call(closed_after_drain, [Ch]).

%% ByteChannel.close() in Python: Erlang's sends answer {error, closed}, and so does send_bytes.
python_close(_) ->
	{ok, Ch} = py_byte_channel:new(),
	{ok, <<"closed">>} = call(send_after_python_close, [Ch]),
	ok = py_ct_helper:eventually(fun() -> py_byte_channel:send(Ch, <<"x">>) =:= {error, closed} end, 5000),
	{error, closed} = py_byte_channel:recv(Ch, 1000).

%% Two Python echo consumers, two Erlang receivers, one channel: every chunk comes back once.
echo_concurrent(_) ->
	{ok, Ch} = py_byte_channel:new(),
	_ = async(py1, echo, [Ch]),
	_ = async(py2, echo, [Ch]),
	Self = self(),
	Receivers = [spawn_link(fun() -> Self ! {got, self(), recv_all(Ch, [])} end) || _ <- [1, 2]],
	Sent = [integer_to_binary(I) || I <- lists:seq(1, 400)],
	[ok = py_byte_channel:send(Ch, B) || B <- Sent],
	ok = py_byte_channel:close(Ch),
	{ok, N1} = await(py1),
	{ok, N2} = await(py2),
	?assertEqual(iolist_size(Sent), N1 + N2),
	Got = lists:append([receive {got, R, L} -> L after 30000 -> error(no_receiver) end || R <- Receivers]),
	?assertEqual(lists:sort(Sent), lists:sort(Got)).

recv_all(Ch, Acc) ->
	case py_byte_channel:recv(Ch, 1000) of
		{ok, B} -> recv_all(Ch, [B | Acc]);
		{error, timeout} -> Acc
	end.

%% Erlang -> Python: busy past max_size while nobody reads.
backpressure_to_python(_) ->
	{ok, Ch} = py_byte_channel:new(#{max_size => 100000}),
	Bin = binary:copy(<<"z">>, 10000),
	Results = [py_byte_channel:send(Ch, Bin) || _ <- lists:seq(1, 100)],
	Ok = length([ok || ok <- Results]),
	?assert(Ok =< 11),
	?assert(length([busy || busy <- Results]) >= 89),
	#{size := Size} = py_byte_channel:info(Ch),
	?assert(Size =< 110000).

%% Python -> Erlang: send_bytes blocks while Erlang has max_size unread, and goes on as Erlang reads.
backpressure_to_erlang(_) ->
	{ok, Ch} = py_byte_channel:new(#{max_size => 100000}),
	_ = async(py, send_many, [Ch, 50, 10000]),
	timer:sleep(500),
	Queued = ets:select_count(py_chan_inbox, [{{{'_', '_'}, '_'}, [], [true]}]),
	ct:log("queued in Erlang while nobody reads: ~b chunks", [Queued]),
	?assert(Queued =< 11),
	receive {py, R} -> error({sender_not_blocked, R}) after 0 -> ok end,
	Got = [begin {ok, B} = py_byte_channel:recv(Ch, 10000), byte_size(B) end || _ <- lists:seq(1, 50)],
	?assertEqual(500000, lists:sum(Got)),
	{ok, 50} = await(py).

%% The owner's death frees the channel: a blocked Python reader ends, Erlang's sends are refused.
owner_death(_) ->
	Self = self(),
	Owner = spawn(fun() ->
		{ok, Ch} = py_byte_channel:new(),
		Self ! {ch, Ch},
		receive stop -> ok end
	end),
	Ch = receive {ch, C} -> C after 5000 -> error(no_channel) end,
	_ = async(py, with_block, [Ch]),
	timer:sleep(200),
	exit(Owner, kill),
	{ok, []} = await(py),
	{error, closed} = py_byte_channel:send(Ch, <<"x">>),
	{error, closed} = py_byte_channel:recv(Ch, 100).

%% A recv blocked when the port dies answers {error, closed} (no hang, no timeout).
port_restart_wakes_recv(_) ->
	{ok, Ch} = py_byte_channel:new(),
	Self = self(),
	spawn_link(fun() -> Self ! {recv, py_byte_channel:recv(Ch, 20000)} end),
	timer:sleep(200),
	Gen = py_ct_helper:generation(1),
	_ = os:cmd("kill -9 " ++ integer_to_list(py_ct_helper:os_pid(1))),
	{error, closed} = await(recv),
	{error, closed} = py_byte_channel:send(Ch, <<"x">>),
	ok = py_ct_helper:eventually(fun() ->
		case py_port:info(1) of #{status := up, generation := G} -> G > Gen; _ -> false end
	end, 20000).
