%% Buffers (py_buffer, erlang.PyBuffer; PROTOCOL.md §3.11): the reference docs' examples (Quick
%% Start, HTTP body, chunked transfer from another process, async I/O), the file interface (read,
%% readline, readlines, iteration, seek/tell and their limits, find, memoryview), blocking reads while
%% another process writes, content-length EOF, the write bounds, closing and the owner's death.
-module(py_buffer_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([suite/0, all/0, init_per_suite/1, end_per_suite/1, init_per_testcase/2, end_per_testcase/2]).
-export([docs_quick_start/1, docs_http_body/1, docs_chunked_transfer/1, docs_async_io/1, file_api/1,
	readlines_hint/1, seek_limits/1, find_and_memoryview/1, view_survives_growth/1, nonblocking/1,
	read_waits_for_writer/1, content_length/1, write_errors/1, owner_death/1, big_body/1,
	cancel_blocked_read/1]).

suite() ->
	[{timetrap, {minutes, 3}}].

all() ->
	[docs_quick_start, docs_http_body, docs_chunked_transfer, docs_async_io, file_api, readlines_hint,
	 seek_limits, find_and_memoryview, view_survives_growth, nonblocking, read_waits_for_writer,
	 content_length, write_errors, owner_death, big_body, cancel_blocked_read].

init_per_suite(Config) ->
	ok = py_ct_helper:start_app([{num_ports, 1}, {contexts_per_port, 2}, {cancel_grace_ms, 1000}]),
	ok = py_import:add_path(?config(data_dir, Config)),
	Config.

end_per_suite(_Config) ->
	py_ct_helper:stop_app().

init_per_testcase(_, Config) ->
	Config.

end_per_testcase(_, _Config) ->
	ok.

call(F, A) ->
	py:call(buffer_helpers, F, A).

closed_buffer(Data) ->
	{ok, Buf} = py_buffer:new(),
	ok = py_buffer:write(Buf, Data),
	ok = py_buffer:close(Buf),
	Buf.

%% Quick Start: chunked and known-length buffers, write, close, passed inside a map.
docs_quick_start(_) ->
	{ok, Buf} = py_buffer:new(),
	{ok, Buf2} = py_buffer:new(4096),
	ok = py_buffer:write(Buf, <<"chunk1">>),
	ok = py_buffer:write(Buf, <<"chunk2">>),
	ok = py_buffer:close(Buf),
	{ok, <<"chunk1chunk2">>} = py:call(buffer_helpers, handle_request, [#{<<"input">> => Buf}]),
	#{size := 12, max_size := 0, closed := true} = py_buffer:info(Buf),
	#{max_size := 4096, closed := false} = py_buffer:info(Buf2),
	{ok, _} = py_buffer:new(undefined),
	%% A buffer handle decodes as erlang.PyBuffer wherever it is (a channel handle stays an erlang.Ref).
	{ok, [<<"PyBuffer">>, <<"PyBuffer">>, <<"Ref">>]} = py:eval(
		<<"[type(b).__name__, type(m['k'][0]).__name__, type(c).__name__]">>,
		#{b => Buf, m => #{k => [Buf2]}, c => make_ref()}).

%% "HTTP Request Body Handling".
docs_http_body(_) ->
	Body = <<"{\"a\": [1, 2, 3]}">>,
	{ok, Buf} = py_buffer:new(byte_size(Body)),
	ok = py_buffer:write(Buf, Body),
	ok = py_buffer:close(Buf),
	Environ = #{<<"method">> => <<"POST">>, <<"path">> => <<"/api/data">>,
		<<"content_type">> => <<"application/json">>, <<"content_length">> => byte_size(Body),
		<<"body">> => Buf},
	{ok, #{<<"a">> := [1, 2, 3]}} = py:call(buffer_helpers, process_body_async, [Environ]).

%% "Chunked Transfer": another process writes with delays while Python reads line by line.
docs_chunked_transfer(_) ->
	{ok, Buf} = py_buffer:new(),
	Chunks = [<<"alpha\nbe">>, <<"ta\n">>, <<"gamma\n">>, <<"delta">>],
	_ = spawn_link(fun() ->
		lists:foreach(fun(Chunk) -> ok = py_buffer:write(Buf, Chunk), timer:sleep(10) end, Chunks),
		ok = py_buffer:close(Buf)
	end),
	{ok, [<<"alpha\n">>, <<"beta\n">>, <<"gamma\n">>, <<"delta">>]} = call(lines, [Buf]).

%% "Async I/O Integration": read_nonblock/readable_amount/at_eof while a writer is still going.
docs_async_io(_) ->
	{ok, Buf} = py_buffer:new(),
	_ = spawn_link(fun() ->
		[begin ok = py_buffer:write(Buf, P), timer:sleep(5) end || P <- [<<"{\"k\"">>, <<": ">>, <<"\"v\"}">>]],
		ok = py_buffer:close(Buf)
	end),
	{ok, #{<<"k">> := <<"v">>}} = py:call(buffer_helpers, process_body_async, [#{<<"body">> => Buf}]).

file_api(_) ->
	Buf = closed_buffer(<<"line1\nline2\nabcdefgh\n">>),
	{ok, [<<"line1\n">>, <<"lin">>, 9, [<<"e2\n">>, <<"abcdefgh\n">>], <<"line1">>, 7, 18, <<"gh\n">>, true,
		[true, false, true, false], true, <<"ValueError">>]} = call(file_api, [Buf]).

readlines_hint(_) ->
	Buf = closed_buffer(<<"aa\nbb\ncc\ndd\n">>),
	{ok, [<<"aa\n">>, <<"bb\n">>]} = call(readlines_hint, [Buf, 4]).

%% Seek only within written data; SEEK_END needs the end; whence must be 0, 1 or 2.
seek_limits(_) ->
	{ok, Buf} = py_buffer:new(),
	ok = py_buffer:write(Buf, <<"0123456789">>),
	{ok, [<<"cannot seek to -1">>, <<"cannot seek to 1000000">>,
		<<"SEEK_END needs the end of the data">>, <<"invalid whence (7, should be 0, 1 or 2)">>]} =
		call(seek_errors, [Buf]).

find_and_memoryview(_) ->
	Buf = closed_buffer(<<"head\r\nxaax--boundary\r\npart">>),
	{ok, [5, 10, -1, -1, [true, 1, 26], $h, <<"head\r\nxaax">>, <<"TypeError">>, 26]} =
		call(find_and_view, [Buf]).

%% A memoryview taken before the buffer grows stays valid (and shows what was written then).
view_survives_growth(_) ->
	{ok, Buf} = py_buffer:new(),
	ok = py_buffer:write(Buf, <<"abcdefgh">>),
	Self = self(),
	_ = spawn_link(fun() ->
		timer:sleep(300),
		ok = py_buffer:write(Buf, binary:copy(<<"z">>, 200000)),  %% past 64 KiB: a new block
		ok = py_buffer:close(Buf),
		Self ! written
	end),
	{ok, [<<"abcd">>, <<"abcdefgh">>, <<"abcdefgh">>, 200004, 200008]} = call(view_survives_growth, [Buf]),
	receive written -> ok after 5000 -> error(writer) end.

nonblocking(_) ->
	{ok, Buf} = py_buffer:new(),
	ok = py_buffer:write(Buf, <<"abcde">>),
	{ok, [5, <<"ab">>, <<"cde">>, <<>>, false, 0]} = call(nonblock, [Buf]),
	ok = py_buffer:close(Buf),
	{ok, [0, <<>>, <<>>, <<>>, true, 0]} = call(nonblock, [Buf]).

%% read() blocks (GIL released: the other context answers meanwhile) until the writer closes.
read_waits_for_writer(_) ->
	{ok, Buf} = py_buffer:new(),
	Self = self(),
	_ = spawn_link(fun() -> Self ! {read, py:call(buffer_helpers, read_all, [Buf])} end),
	timer:sleep(200),
	{ok, 3} = py:eval(<<"1 + 2">>),
	ok = py_buffer:write(Buf, <<"late ">>),
	ok = py_buffer:write(Buf, <<"data">>),
	receive {read, _} = Early -> error({read_before_close, Early}) after 200 -> ok end,
	ok = py_buffer:close(Buf),
	{ok, <<"late data">>} = receive {read, R} -> R after 10000 -> error(no_read) end,
	%% The read position is the buffer's: at the end now; seek(0) reads it again.
	{ok, []} = call(read_chunks, [Buf, 2]),
	{ok, 0} = py:eval(<<"__import__('erlang').PyBuffer(b).seek(0)">>, #{b => Buf}),
	{ok, [<<"la">>, <<"te">>, <<" d">>, <<"at">>, <<"a">>]} = call(read_chunks, [Buf, 2]).

%% A known content length: read() ends when that many bytes came, before close; more is refused.
content_length(_) ->
	{ok, Buf} = py_buffer:new(6),
	ok = py_buffer:write(Buf, <<"abc">>),
	ok = py_buffer:write(Buf, <<"def">>),
	{ok, <<"abcdef">>} = call(content_length_eof, [Buf]),
	{error, too_large} = py_buffer:write(Buf, <<"g">>).

write_errors(_) ->
	Buf = closed_buffer(<<"x">>),
	{error, closed} = py_buffer:write(Buf, <<"y">>),
	{error, closed} = py_buffer:write(make_ref(), <<"y">>),
	{error, {badarg, -1}} = py_buffer:new(-1),
	{ok, Ch} = py_channel:new(),
	{error, closed} = py_buffer:write(Ch, <<"y">>),
	{ok, Msg} = call(wrong_type, [Ch]),
	?assertNotEqual(nomatch, string:find(Msg, "a Channel, not a PyBuffer")).

%% The owner's death frees the buffer: a blocked reader ends with an error, writes are refused.
owner_death(_) ->
	Self = self(),
	Owner = spawn(fun() ->
		{ok, Buf} = py_buffer:new(),
		ok = py_buffer:write(Buf, <<"partial">>),
		Self ! {buf, Buf},
		receive stop -> ok end
	end),
	Buf = receive {buf, B} -> B after 5000 -> error(no_buffer) end,
	_ = spawn_link(fun() -> Self ! {read, py:call(buffer_helpers, read_all, [Buf])} end),
	timer:sleep(200),
	exit(Owner, kill),
	{error, {_, Msg}} = receive {read, R} -> R after 10000 -> error(reader_stuck) end,
	?assertNotEqual(nomatch, string:find(Msg, "freed")),
	{error, closed} = py_buffer:write(Buf, <<"more">>).

%% 32 MiB in 1 MiB writes from another process, read as it comes.
big_body(_) ->
	{ok, Buf} = py_buffer:new(),
	Chunk = crypto:strong_rand_bytes(1 bsl 20),
	_ = spawn_link(fun() ->
		[ok = py_buffer:write(Buf, Chunk) || _ <- lists:seq(1, 32)],
		ok = py_buffer:close(Buf)
	end),
	{ok, Body} = call(read_all, [Buf]),
	?assertEqual(binary:copy(Chunk, 32), Body).

%% A read blocked past the caller's timeout is cancelled (the port is not restarted).
cancel_blocked_read(_) ->
	OsPid = py_ct_helper:os_pid(1),
	{ok, Buf} = py_buffer:new(),
	{error, timeout} = py:call(buffer_helpers, read_all, [Buf], #{}, 300),
	timer:sleep(1500),
	?assertEqual(OsPid, py_ct_helper:os_pid(1)).
