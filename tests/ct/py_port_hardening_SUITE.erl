%% Port hardening (issue 7, port side), tested on the port program itself: each case opens its own
%% erlang_python_port and speaks raw frames (PROTOCOL.md), so it sees exactly what the port sends.
%% The codec is EP_TEST_CODEC's (etf by default), like every suite.
-module(py_port_hardening_SUITE).

-include_lib("common_test/include/ct.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1, init_per_testcase/2, end_per_testcase/2]).
-export([cancel_storm_bounded_threads/1, stuck_cancel_requeues_then_exits/1,
	output_window_blocks_until_acked/1, cancel_unblocks_blocked_writer/1,
	thread_outside_context_bounded/1, oversized_reply_refused/1, fork_child_releases_pipes/1,
	sleep_bad_and_huge_lengths/1, deep_term_small_stack/1, startup_failure_crash_file/1,
	cancelled_callback_leaves_nothing/1, bad_output_ack/1, thread_callbacks_stress/1,
	stats_counts_contexts_when_asked/1, unacked_output_forgiven_at_final/1,
	output_ack_reaches_destroying_context/1, cancel_any_reaches_destroying_context/1,
	stuck_cancel_requeues_destroying_context/1, reused_context_id_keeps_acks_and_cancels_apart/1,
	cast_output_counts_until_acked/1]).

-define(KIND_EVAL, 2).
-define(KIND_CANCEL, 5).
-define(KIND_CALLBACK_REPLY, 6).
-define(KIND_CONTEXT_CREATE, 7).
-define(KIND_CONTEXT_DESTROY, 8).
-define(KIND_OUTPUT_ACK, 12).
-define(KIND_HELLO, 64).
-define(KIND_RESULT, 65).
-define(KIND_ERROR, 66).
-define(KIND_CALLBACK, 67).
-define(KIND_OUTPUT, 69).
-define(KIND_PROTOCOL_ERROR, 70).
-define(KIND_REQUEUE, 75).
-define(WINDOW, 65536).

all() ->
	[cancel_storm_bounded_threads, stuck_cancel_requeues_then_exits, output_window_blocks_until_acked,
	 cancel_unblocks_blocked_writer, thread_outside_context_bounded, oversized_reply_refused,
	 fork_child_releases_pipes, sleep_bad_and_huge_lengths, deep_term_small_stack,
	 startup_failure_crash_file, cancelled_callback_leaves_nothing, bad_output_ack,
	 thread_callbacks_stress, stats_counts_contexts_when_asked, unacked_output_forgiven_at_final,
	 output_ack_reaches_destroying_context, cancel_any_reaches_destroying_context,
	 stuck_cancel_requeues_destroying_context, reused_context_id_keeps_acks_and_cancels_apart,
	 cast_output_counts_until_acked].

init_per_suite(Config) ->
	{module, py_codec} = code:ensure_loaded(py_codec),
	_ = py_codec:protocol_atoms(),
	Codec = case os:getenv("EP_TEST_CODEC") of "msgpack" -> msgpack; _ -> etf end,
	[{codec, Codec} | Config].

end_per_suite(_Config) ->
	ok.

init_per_testcase(_Case, Config) ->
	Config.

end_per_testcase(_Case, Config) ->
	case get(hardening_port) of
		undefined -> ok;
		{Port, OsPid} ->
			catch port_close(Port),
			_ = os:cmd("kill -9 " ++ integer_to_list(OsPid) ++ " 2>/dev/null"),
			erase(hardening_port)
	end,
	_ = [os:cmd("kill -9 " ++ integer_to_list(P) ++ " 2>/dev/null") || P <- proplists:get_value(kill, Config, [])],
	ok.

%% 1. Thousands of cancels of a running request start no thread each: the port's thread count
%% stays where it was (one watchdog timer on the loop, not a thread per cancel).
cancel_storm_bounded_threads(Config) ->
	{Port, OsPid} = start(Config, ["--contexts", "1"]),
	Code = <<"import time, erlang\n"
		"t = time.monotonic() + 3\nn = 0\n"
		"while time.monotonic() < t:\n"
		"    try:\n        while time.monotonic() < t:\n            pass\n"
		"    except erlang.CancelledError:\n        n += 1\n"
		"n">>,
	send(Port, ?KIND_EVAL, 1, 7, eval_body(Code), Config),
	timer:sleep(300),
	Base = threads(OsPid),
	Counts = [begin
		_ = [send(Port, ?KIND_CANCEL, 1, 7, [], Config) || _ <- lists:seq(1, 200)],
		threads(OsPid)
	end || _ <- lists:seq(1, 25)],
	ct:pal("threads: base ~p, during 5000 cancels ~p", [Base, Counts]),
	true = lists:max(Counts) =< Base + 2,
	{result, N} = final(Port, 7, Config, 10000),
	true = is_integer(N) andalso N >= 1,
	{result, 2} = eval(Port, <<"1+1">>, Config).

%% 1. A cancelled request that keeps the GIL (one long C call) makes the port dump its threads to the
%% crash file, answer `requeue` for every request still queued, and exit with status 5.
stuck_cancel_requeues_then_exits(Config) ->
	Crash = crash_path("stuck"),
	{Port, _} = start(Config, ["--contexts", "1", "--cancel-stuck-ms", "200", "--crash-file", Crash]),
	send(Port, ?KIND_EVAL, 1, 1, eval_body(<<"sum(range(10**11))">>), Config),
	timer:sleep(500),
	send(Port, ?KIND_EVAL, 1, 2, eval_body(<<"1">>), Config),
	send(Port, 3, 1, 3, {undefined, <<"x = 1">>}, Config),
	send(Port, 4, 1, 4, {undefined, <<"math">>, <<"sqrt">>, [4], #{}}, Config),
	send(Port, ?KIND_CANCEL, 1, 1, [], Config),
	{Frames, Status} = until_exit(Port, 10000),
	5 = Status,
	Requeued = [{Ctx, Id} || {?KIND_REQUEUE, Ctx, Id, Body} <- Frames, decode(Body, Config) =:= []],
	[{1, 2}, {1, 3}, {1, 4}] = Requeued,
	[] = [F || F = {K, _, _, _} <- Frames, K =/= ?KIND_REQUEUE],
	{ok, Dump} = file:read_file(Crash),
	true = binary:match(Dump, <<"<string>">>) =/= nomatch,
	ok = file:delete(Crash).

%% 3. With no acks, output stops at the window (the printer blocks, no result); acks let it go on,
%% and every byte arrives, exactly once and in order.
output_window_blocks_until_acked(Config) ->
	{Port, _} = start(Config, ["--contexts", "1", "--output-window", integer_to_list(?WINDOW)]),
	Lines = 50000,
	Expected = iolist_to_binary([[integer_to_binary(I), $\n] || I <- lists:seq(0, Lines - 1)]),
	send(Port, ?KIND_EVAL, 1, 9, eval_body(<<"for i in range(50000): print(i)\n7">>), Config),
	{Held, none} = collect_output(Port, Config, 1000, 9),
	HeldBytes = text_bytes(Held),
	ct:pal("held back at ~p bytes of ~p", [HeldBytes, byte_size(Expected)]),
	true = HeldBytes >= ?WINDOW andalso HeldBytes =< ?WINDOW + 64,
	ok = ack_all(Port, Held, Config),
	{Rest, {result, 7}} = ack_until_final(Port, 9, Config, 30000),
	Expected = iolist_to_binary([T || {_, _, _, T} <- Held ++ Rest]),
	[] = [F || F = {Ctx, Id, _, _} <- Held ++ Rest, {Ctx, Id} =/= {1, 9}].

%% 3. A writer blocked on the window is released by its request's cancel: the write raises
%% erlang.CancelledError, which ends the request; the context then serves the next request.
cancel_unblocks_blocked_writer(Config) ->
	{Port, _} = start(Config, ["--contexts", "1", "--output-window", integer_to_list(?WINDOW)]),
	send(Port, ?KIND_EVAL, 1, 11, eval_body(<<"while True: print('x' * 100)">>), Config),
	{Held, none} = collect_output(Port, Config, 1000, 11),
	true = text_bytes(Held) >= ?WINDOW,
	send(Port, ?KIND_CANCEL, 1, 11, [], Config),
	{error, {<<"CancelledError">>, Msg, _}} = final(Port, 11, Config, 5000),
	true = binary:match(Msg, <<"output">>) =/= nomatch,
	{result, 2} = eval(Port, <<"1+1">>, Config).

%% 3. Output of a thread outside any context (ctx 0) is bounded by the same window, and acks on
%% ctx 0 release it.
thread_outside_context_bounded(Config) ->
	{Port, _} = start(Config, ["--contexts", "1", "--output-window", integer_to_list(?WINDOW)]),
	Code = <<"import threading\n"
		"def spam():\n    for i in range(100000):\n        print(i)\n"
		"threading.Thread(target=spam, daemon=True).start()\n">>,
	send(Port, ?KIND_EVAL, 1, 13, eval_body(Code), Config),
	{Before, {?KIND_RESULT, none}} = collect_output(Port, Config, 5000, 13),
	{After, none} = collect_output(Port, Config, 1000, 0),
	Held = Before ++ After,
	HeldBytes = text_bytes(Held),
	true = HeldBytes >= ?WINDOW andalso HeldBytes =< ?WINDOW + 64,
	[] = [F || F = {Ctx, Id, _, _} <- Held, {Ctx, Id} =/= {0, 0}],
	ok = ack_all(Port, Held, Config),
	{More, none} = collect_output(Port, Config, 1000, 0),
	true = text_bytes(More) >= ?WINDOW,
	%% Unacked again: bounded again.
	true = text_bytes(More) =< 2 * ?WINDOW + 64.

%% 2. A reply bigger than the largest frame the port may send is refused with an error reply (the
%% stream stays in step); big errors are cut to fit, big output goes in pieces, and an erlang.call
%% whose frame would be too big raises OverflowError in Python.
oversized_reply_refused(Config) ->
	Max = 65536,
	{Port, _} = start(Config, ["--contexts", "1", "--max-out-frame", integer_to_list(Max)]),
	{error, {<<"OverflowError">>, Msg, _}} = eval(Port, <<"b'x' * 100000">>, Config),
	true = binary:match(Msg, <<"exceeds the largest frame the port may send (65536 bytes)">>) =/= nomatch,
	{result, 2} = eval(Port, <<"1+1">>, Config),
	Id = next_id(),
	send(Port, ?KIND_EVAL, 1, Id, eval_body(<<"raise ValueError('z' * 100000)">>), Config),
	{Frames, {error, {<<"ValueError">>, _, _}}} = until_final(Port, Id, Config, 5000),
	[] = Frames,
	Id2 = next_id(),
	send(Port, ?KIND_EVAL, 1, Id2, eval_body(<<"print('y' * 200000)\n3">>), Config),
	{Out, {result, 3}} = ack_until_final(Port, Id2, Config, 10000),
	true = length(Out) >= 4,
	<<_:200000/binary, "\n">> = iolist_to_binary([T || {_, _, _, T} <- Out]),
	%% Pieces are cut between characters, never inside one.
	Id3 = next_id(),
	send(Port, ?KIND_EVAL, 1, Id3, eval_body(<<"print('\\u00e9' * 100000, end='')\n4">>), Config),
	{Out3, {result, 4}} = ack_until_final(Port, Id3, Config, 10000),
	true = length(Out3) >= 4,
	[] = [T || {_, _, _, T} <- Out3, unicode:characters_to_binary(T) =/= T],
	Accents = binary:copy(<<16#c3, 16#a9>>, 100000),
	Accents = iolist_to_binary([T || {_, _, _, T} <- Out3]),
	{error, {<<"OverflowError">>, _, _}} = eval(Port, <<"__import__('erlang').call('f', 'x' * 100000)">>, Config),
	{result, 5} = eval(Port, <<"2+3">>, Config).

%% 2. A child made by os.fork() does not keep the protocol pipes: when the port exits, the VM sees
%% it at once although the child still sleeps.
fork_child_releases_pipes(Config) ->
	{Port, _} = start(Config, ["--contexts", "1"]),
	Code = <<"import os, time\npid = os.fork()\n"
		"if pid == 0:\n    time.sleep(30)\n    os._exit(0)\n"
		"pid">>,
	{result, Child} = eval(Port, Code, Config),
	true = is_integer(Child) andalso Child > 0,
	try
		send(Port, ?KIND_EVAL, 1, next_id(), eval_body(<<"__import__('os')._exit(0)">>), Config),
		receive
			{Port, {exit_status, 0}} -> ok
		after 5000 ->
			error(port_exit_not_seen_while_child_lives)
		end,
		erase(hardening_port)
	after
		os:cmd("kill -9 " ++ integer_to_list(Child))
	end.

%% 2. erlang.sleep refuses inf, nan and negative lengths (ValueError) instead of returning at once,
%% and a huge finite one sleeps until the request is cancelled.
sleep_bad_and_huge_lengths(Config) ->
	{Port, _} = start(Config, ["--contexts", "1"]),
	{error, {<<"ValueError">>, _, _}} = eval(Port, <<"__import__('erlang').sleep(float('inf'))">>, Config),
	{error, {<<"ValueError">>, _, _}} = eval(Port, <<"__import__('erlang').sleep(float('nan'))">>, Config),
	{error, {<<"ValueError">>, _, _}} = eval(Port, <<"__import__('erlang').sleep(-1)">>, Config),
	{result, none} = eval(Port, <<"__import__('erlang').sleep(0.01)">>, Config),
	T0 = erlang:monotonic_time(millisecond),
	send(Port, ?KIND_EVAL, 1, 21, eval_body(<<"__import__('erlang').sleep(1e300)">>), Config),
	none = receive_frame(Port, 400),
	send(Port, ?KIND_CANCEL, 1, 21, [], Config),
	{error, {<<"CancelledError">>, _, _}} = final(Port, 21, Config, 5000),
	true = erlang:monotonic_time(millisecond) - T0 >= 400,
	{result, 2} = eval(Port, <<"1+1">>, Config).

%% 2. Under `ulimit -s 1024` a term nested 9,990 deep (within the decoder's limit) is answered, not
%% a crash: context threads have their own, explicit stack size.
deep_term_small_stack(Config) ->
	{Port, _} = start(Config, ["--contexts", "1"], "ulimit -s 1024 && "),
	%% Just inside the codecs' nesting limit (1000 levels, the body's tuple and map included): decoded
	%% and encoded back on the context thread's own stack, whatever ulimit -s says.
	Deep = lists:foldl(fun(_, Acc) -> [Acc] end, [], lists:seq(1, 990)),
	Id = next_id(),
	Depth = <<"d = 0\nwhile x:\n    x = x[0]\n    d += 1\nd">>,
	send(Port, ?KIND_EVAL, 1, Id, {undefined, Depth, #{<<"x">> => Deep}}, Config),
	{result, 990} = final(Port, Id, Config, 20000),
	Id2 = next_id(),
	send(Port, ?KIND_EVAL, 1, Id2, {undefined, <<"x">>, #{<<"x">> => Deep}}, Config),
	{result, Deep} = final(Port, Id2, Config, 20000),
	%% Far beyond it: refused as a bad body, and the port lives on.
	Deeper = lists:foldl(fun(_, Acc) -> [Acc] end, [], lists:seq(1, 9990)),
	Id3 = next_id(),
	send(Port, ?KIND_EVAL, 1, Id3, {undefined, <<"x">>, #{<<"x">> => Deeper}}, Config),
	{70, 1, Id3, Refusal} = receive_frame(Port, 20000),
	{bad_body, Why} = decode(Refusal, Config),
	true = binary:match(Why, <<"nested deeper than 1000 levels">>) =/= nomatch,
	{result, 2} = eval(Port, <<"1+1">>, Config).

%% 4. A start-up failure (the erlang package raises on import) ends with status 3 and the
%% traceback in the crash file.
startup_failure_crash_file(Config) ->
	Dir = filename:join(?config(priv_dir, Config), "broken_pylib"),
	ok = filelib:ensure_dir(filename:join([Dir, "erlang", "x"])),
	ok = file:write_file(filename:join([Dir, "erlang", "__init__.py"]),
		<<"raise RuntimeError('broken erlang package for the test')\n">>),
	Crash = crash_path("startup"),
	_ = file:delete(Crash),
	Port = open(Config, ["--contexts", "1", "--pylib", Dir, "--crash-file", Crash], ""),
	{[], 3} = until_exit(Port, 20000),
	{ok, Text} = file:read_file(Crash),
	ct:pal("crash file:~n~s", [Text]),
	true = binary:match(Text, <<"Traceback">>) =/= nomatch,
	true = binary:match(Text, <<"RuntimeError: broken erlang package for the test">>) =/= nomatch,
	ok = file:delete(Crash).

%% 2. A request cancelled while it waits for a callback leaves no waiter and no kept reply behind,
%% even when the reply comes after all.
cancelled_callback_leaves_nothing(Config) ->
	{Port, _} = start(Config, ["--contexts", "1"]),
	send(Port, ?KIND_EVAL, 1, 31, eval_body(<<"__import__('erlang').call('f')">>), Config),
	{?KIND_CALLBACK, 1, 31, CbBody} = receive_frame(Port, 5000),
	{Cb, <<"f">>, []} = decode(CbBody, Config),
	send(Port, ?KIND_CANCEL, 1, 31, [], Config),
	{error, {<<"CancelledError">>, _, _}} = final(Port, 31, Config, 5000),
	send(Port, ?KIND_CALLBACK_REPLY, 1, Cb, {ok, 1}, Config),
	%% A second request that waits on a callback of its own while the late reply is around.
	send(Port, ?KIND_EVAL, 1, 32, eval_body(<<"__import__('erlang').call('g')">>), Config),
	{?KIND_CALLBACK, 1, 32, CbBody2} = receive_frame(Port, 5000),
	{Cb2, <<"g">>, []} = decode(CbBody2, Config),
	send(Port, ?KIND_CALLBACK_REPLY, 1, Cb2, {ok, 2}, Config),
	{result, 2} = final(Port, 32, Config, 5000),
	{result, {0, 0}} = eval(Port, <<"__import__('_erlang')._pending()">>, Config).

%% 3. An output_ack whose body is not a byte count is a protocol error; the port goes on.
bad_output_ack(Config) ->
	{Port, _} = start(Config, ["--contexts", "1"]),
	send(Port, ?KIND_OUTPUT_ACK, 1, 77, <<"nope">>, Config),
	{?KIND_PROTOCOL_ERROR, 1, 77, Body} = receive_frame(Port, 5000),
	{bad_body, _} = decode(Body, Config),
	send(Port, ?KIND_OUTPUT_ACK, 1, 78, -5, Config),
	{?KIND_PROTOCOL_ERROR, 1, 78, _} = receive_frame(Port, 5000),
	send(Port, ?KIND_OUTPUT_ACK, 1, 79, 1 bsl 40, Config),
	{result, 2} = eval(Port, <<"1+1">>, Config).

%% 2. Threads outside contexts waiting on callbacks, answered as fast as they ask: each reply reaches
%% its own waiter (the waiter is woken under its lock, so it cannot be gone when it is notified; a
%% sanitizer build would report the use-after-free this used to allow).
thread_callbacks_stress(Config) ->
	{Port, _} = start(Config, ["--contexts", "1"]),
	Code = <<"import threading, erlang\nout = []\n"
		"def w(k):\n    s = 0\n    for i in range(200):\n        s += erlang.call('echo', k * 1000 + i)\n"
		"    out.append(s)\n"
		"ts = [threading.Thread(target=w, args=(k,)) for k in range(4)]\n"
		"for t in ts: t.start()\n"
		"for t in ts: t.join()\n"
		"sorted(out)">>,
	send(Port, ?KIND_EVAL, 1, 41, eval_body(Code), Config),
	Expected = [lists:sum([K * 1000 + I || I <- lists:seq(0, 199)]) || K <- lists:seq(0, 3)],
	{result, Expected} = answer_callbacks(Port, 41, Config, deadline(30000), 0),
	{result, {0, 0}} = eval(Port, <<"__import__('_erlang')._pending()">>, Config).

%% 2. stats counts the contexts as they are when it is asked (the count is taken on the loop thread,
%% which owns the context list), not later on the control thread, which read the list unguarded while
%% the loop changed it: here the control thread waits for the GIL while 50 contexts are created.
stats_counts_contexts_when_asked(Config) ->
	{Port, OsPid} = start(Config, ["--contexts", "1"]),
	send(Port, ?KIND_EVAL, 1, 51,
		eval_body(<<"import time\nt = time.monotonic() + 1\nwhile time.monotonic() < t:\n    pass\n1">>), Config),
	timer:sleep(200),
	send(Port, 10, 0, 52, [], Config),
	_ = [send(Port, 7, 100 + I, 600 + I, {worker}, Config) || I <- lists:seq(1, 50)],
	Replies = [receive_frame(Port, 10000) || _ <- lists:seq(1, 52)],
	[{?KIND_RESULT, 0, 52, Stats}] = [F || F = {_, _, 52, _} <- Replies],
	#{contexts := 1, envs := _, os_pid := OsPid} = decode(Stats, Config),
	50 = length([ok || {?KIND_RESULT, _, Id, B} <- Replies, Id > 600, decode(B, Config) =:= ok]),
	[{?KIND_RESULT, 1, 51, _}] = [F || F = {_, _, 51, _} <- Replies].

%% 3. A request's unacknowledged output is forgiven when its final frame goes out: a reader that went
%% away (here nobody acks A's output, as when its caller was killed) cannot keep the context's window
%% shut for the requests after it. A's late acks are then ignored: they cannot open the window for
%% another request's output, which its own acks release.
unacked_output_forgiven_at_final(Config) ->
	{Port, _} = start(Config, ["--contexts", "1", "--output-window", integer_to_list(?WINDOW)]),
	Over = integer_to_binary(?WINDOW + 99),  % + the newline, in one write: 100 bytes over the window
	send(Port, ?KIND_EVAL, 1, 61, eval_body(<<"import sys\nsys.stdout.write('a' * ", Over/binary, " + '\\n')\n1">>), Config),
	{HeldA, {?KIND_RESULT, 1}} = collect_output(Port, Config, 5000, 61),
	true = text_bytes(HeldA) =:= ?WINDOW + 100,
	send(Port, ?KIND_EVAL, 1, 62, eval_body(<<"print('b' * 999)\n2">>), Config),
	{HeldB, {?KIND_RESULT, 2}} = collect_output(Port, Config, 5000, 62),
	1000 = text_bytes(HeldB),
	send(Port, ?KIND_EVAL, 1, 63, eval_body(<<"import sys\nsys.stdout.write('c' * ", Over/binary, " + '\\n')\nprint('d' * 9)\n3">>), Config),
	{HeldC, none} = collect_output(Port, Config, 1000, 63),
	true = text_bytes(HeldC) =:= ?WINDOW + 100,
	ok = ack_all(Port, HeldA ++ HeldB, Config),
	{[], none} = collect_output(Port, Config, 1000, 63),
	ok = ack_all(Port, HeldC, Config),
	{[{1, 63, 1, <<"ddddddddd\n">>} = D], {?KIND_RESULT, 3}} = collect_output(Port, Config, 5000, 63),
	%% Exact: nothing is left counted (C's last frame was forgiven with it), and acks that come
	%% late (C's last, A's again) change nothing.
	ok = ack_all(Port, [D | HeldA], Config),
	{result, {0, 0}} = eval(Port, <<"__import__('_erlang')._output_unacked()">>, Config).

%% 3. A cast has no final frame: its output counts until the owner acks it (so casts cannot flood
%% the owner), and the ack takes it off exactly.
cast_output_counts_until_acked(Config) ->
	{Port, _} = start(Config, ["--contexts", "1", "--output-window", integer_to_list(?WINDOW)]),
	send(Port, 4, 1, 111, {undefined, <<"builtins">>, <<"print">>, [<<"cast">>], #{}}, Config),
	{?KIND_OUTPUT, 1, 111, B} = receive_frame(Port, 10000),
	{1, <<"cast\n">>} = decode(B, Config),
	{result, {5, 1}} = eval(Port, <<"__import__('_erlang')._output_unacked()">>, Config),
	send(Port, ?KIND_OUTPUT_ACK, 1, 111, 5, Config),
	{result, {0, 0}} = eval(Port, <<"__import__('_erlang')._output_unacked()">>, Config).

%% 3. Acks reach a context being destroyed: its last request, blocked on the window, goes on when its
%% output is acked, and the destroy is answered after it.
output_ack_reaches_destroying_context(Config) ->
	{Port, _} = start(Config, ["--contexts", "1", "--output-window", integer_to_list(?WINDOW)]),
	send(Port, ?KIND_CONTEXT_CREATE, 5, 71, {worker}, Config),
	{result, ok} = final(Port, 71, Config, 10000),
	Over = integer_to_binary(?WINDOW + 99),
	send(Port, ?KIND_EVAL, 5, 72, eval_body(<<"import sys\nsys.stdout.write('a' * ", Over/binary, " + '\\n')\nprint('end')\n5">>), Config),
	{Held, none} = collect_output(Port, Config, 1000, 72),
	true = text_bytes(Held) =:= ?WINDOW + 100,
	send(Port, ?KIND_CONTEXT_DESTROY, 5, 73, [], Config),
	{[], none} = collect_output(Port, Config, 500, 72),
	ok = ack_all(Port, Held, Config),
	{[{5, 72, 1, <<"end\n">>}], {?KIND_RESULT, 5}} = collect_output(Port, Config, 5000, 72),
	{result, ok} = final(Port, 73, Config, 5000).

%% 11. A cancel that names no context (ctx 0, the owner cancelling a dead caller's requests) reaches a
%% request running on a context being destroyed; the destroy is answered after it.
cancel_any_reaches_destroying_context(Config) ->
	{Port, _} = start(Config, ["--contexts", "1"]),
	send(Port, ?KIND_CONTEXT_CREATE, 5, 81, {worker}, Config),
	{result, ok} = final(Port, 81, Config, 10000),
	send(Port, ?KIND_EVAL, 5, 82,
		eval_body(<<"import time\nprint('started')\nwhile True:\n    time.sleep(0.01)">>), Config),
	{?KIND_OUTPUT, 5, 82, _} = receive_frame(Port, 10000),
	send(Port, ?KIND_CONTEXT_DESTROY, 5, 83, [], Config),
	send(Port, ?KIND_CANCEL, 0, 82, [], Config),
	{error, {<<"CancelledError">>, _, _}} = final(Port, 82, Config, 5000),
	{result, ok} = final(Port, 83, Config, 5000).

%% 11. When a stuck cancel makes the port exit, the requests queued on a context being destroyed are
%% answered requeue too (they never started). Without --crash-file: the exit path must not raise the
%% faulthandler signal nobody handles then (its default action killed the port before the requeues).
stuck_cancel_requeues_destroying_context(Config) ->
	{Port, _} = start(Config, ["--contexts", "1", "--cancel-stuck-ms", "200"]),
	send(Port, ?KIND_CONTEXT_CREATE, 5, 91, {worker}, Config),
	{result, ok} = final(Port, 91, Config, 10000),
	send(Port, ?KIND_EVAL, 5, 92, eval_body(<<"print('started')\nsum(range(10**11))">>), Config),
	{?KIND_OUTPUT, 5, 92, _} = receive_frame(Port, 10000),
	timer:sleep(500),  % into the sum (a cancel delivered before it would just end the request)
	send(Port, ?KIND_EVAL, 5, 93, eval_body(<<"1">>), Config),
	send(Port, ?KIND_CONTEXT_DESTROY, 5, 94, [], Config),
	send(Port, ?KIND_CANCEL, 5, 92, [], Config),
	{Frames, Status} = until_exit(Port, 10000),
	5 = Status,
	[{5, 93}] = [{Ctx, Id} || {?KIND_REQUEUE, Ctx, Id, Body} <- Frames, decode(Body, Config) =:= []],
	[] = [F || F = {K, _, _, _} <- Frames, K =/= ?KIND_REQUEUE].

%% 3, 11. A context id may be reused while the context that had it is still being destroyed: acks and
%% cancels for the old one's requests still reach it (request ids are unique), not the new one.
reused_context_id_keeps_acks_and_cancels_apart(Config) ->
	{Port, _} = start(Config, ["--contexts", "1", "--output-window", integer_to_list(?WINDOW)]),
	send(Port, ?KIND_CONTEXT_CREATE, 5, 101, {worker}, Config),
	{result, ok} = final(Port, 101, Config, 10000),
	Over = integer_to_binary(?WINDOW + 99),
	Code = <<"import sys, time\nsys.stdout.write('a' * ", Over/binary, " + '\\n')\nprint('end')\n"
		"while True:\n    time.sleep(0.01)">>,
	send(Port, ?KIND_EVAL, 5, 102, eval_body(Code), Config),
	{Held, none} = collect_output(Port, Config, 1000, 102),
	true = text_bytes(Held) =:= ?WINDOW + 100,
	send(Port, ?KIND_CONTEXT_DESTROY, 5, 103, [], Config),
	send(Port, ?KIND_CONTEXT_CREATE, 5, 104, {worker}, Config),
	{result, ok} = final(Port, 104, Config, 10000),
	ok = ack_all(Port, Held, Config),
	{[{5, 102, 1, <<"end\n">>}], none} = collect_output(Port, Config, 1000, 102),
	send(Port, ?KIND_CANCEL, 5, 102, [], Config),
	{error, {<<"CancelledError">>, _, _}} = final(Port, 102, Config, 5000),
	{result, ok} = final(Port, 103, Config, 5000),
	send(Port, ?KIND_EVAL, 5, 105, eval_body(<<"6">>), Config),
	{result, 6} = final(Port, 105, Config, 5000).

answer_callbacks(Port, Id, Config, Deadline, N) ->
	case receive_frame(Port, left(Deadline)) of
		{?KIND_CALLBACK, 0, 0, B} ->
			{Cb, <<"echo">>, [V]} = decode(B, Config),
			send(Port, ?KIND_CALLBACK_REPLY, 0, Cb, {ok, V}, Config),
			answer_callbacks(Port, Id, Config, Deadline, N + 1);
		{?KIND_RESULT, 1, Id, B} ->
			800 = N,
			{result, decode(B, Config)};
		Other ->
			error({unexpected, Other})
	end.

%% Internal.

%% Opens a port (remembered for end_per_testcase) and waits for its hello.
start(Config, Args) ->
	start(Config, Args, "").

start(Config, Args, ShellPrefix) ->
	Port = open(Config, Args, ShellPrefix),
	{?KIND_HELLO, 0, 0, Hello} = receive_frame(Port, 20000),
	#{os_pid := OsPid} = decode(Hello, Config),
	put(hardening_port, {Port, OsPid}),
	{Port, OsPid}.

open(Config, Args, ShellPrefix) ->
	Priv = code:priv_dir(erlang_python),
	%% EP_TEST_PORT_EXE runs the suite against another build (to see a case fail without its fix).
	Exe = case os:getenv("EP_TEST_PORT_EXE") of
		false -> filename:join(Priv, "erlang_python_port");
		Other -> Other
	end,
	Pylib = case lists:member("--pylib", Args) of
		true -> [];
		false -> ["--pylib", filename:join(Priv, "pylib")]
	end,
	All = ["--codec", atom_to_list(?config(codec, Config))] ++ Pylib ++ Args,
	Opts = [{packet, 4}, binary, exit_status, use_stdio],
	case ShellPrefix of
		"" -> open_port({spawn_executable, Exe}, [{args, All} | Opts]);
		_ -> open_port({spawn_executable, "/bin/sh"},
			[{args, ["-c", ShellPrefix ++ "exec \"$0\" \"$@\"", Exe | All]} | Opts])
	end.

send(Port, Kind, Ctx, Id, Body, _Config) when is_binary(Body) ->
	true = port_command(Port, [<<Kind, 0, 0:16, Ctx:32, Id:64>>, Body]),
	ok;
send(Port, Kind, Ctx, Id, Term, Config) ->
	send(Port, Kind, Ctx, Id, iolist_to_binary(py_codec:encode(?config(codec, Config), Term)), Config).

eval_body(Code) -> {undefined, Code, #{}}.

eval(Port, Code, Config) ->
	Id = next_id(),
	send(Port, ?KIND_EVAL, 1, Id, eval_body(Code), Config),
	final(Port, Id, Config, 10000).

next_id() -> erlang:unique_integer([positive]) + 1000.

decode(Body, Config) -> py_codec:decode(?config(codec, Config), Body).

receive_frame(Port, Timeout) ->
	receive
		{Port, {data, <<Kind, 0, 0:16, Ctx:32, Id:64, Body/binary>>}} -> {Kind, Ctx, Id, Body};
		{Port, {exit_status, S}} -> error({port_exited, S})
	after Timeout ->
		none
	end.

%% The final frame of request Id (other frames must not come).
final(Port, Id, Config, Timeout) ->
	case until_final(Port, Id, Config, Timeout) of
		{[], Final} -> Final;
		{Other, _} -> error({unexpected_frames, Other})
	end.

%% {FramesBefore, Final} for request Id, Final = {result, V} | {error, {C, M, Tb}}.
until_final(Port, Id, Config, Timeout) ->
	until_final(Port, Id, Config, deadline(Timeout), []).

until_final(Port, Id, Config, Deadline, Acc) ->
	case receive_frame(Port, left(Deadline)) of
		{?KIND_RESULT, _, Id, B} -> {lists:reverse(Acc), {result, decode(B, Config)}};
		{?KIND_ERROR, _, Id, B} -> {lists:reverse(Acc), {error, decode(B, Config)}};
		none -> error({no_final_frame, Id, lists:reverse(Acc)});
		F -> until_final(Port, Id, Config, Deadline, [F | Acc])
	end.

%% Output frames {Ctx, Id, Stream, Text} until Quiet ms pass without one. The second element is
%% none, or the final frame of request FinalId if it came.
collect_output(Port, Config, Quiet, FinalId) ->
	collect_output(Port, Config, Quiet, FinalId, []).

collect_output(Port, Config, Quiet, FinalId, Acc) ->
	case receive_frame(Port, Quiet) of
		none -> {lists:reverse(Acc), none};
		{?KIND_OUTPUT, Ctx, Id, B} ->
			{Stream, Text} = decode(B, Config),
			collect_output(Port, Config, Quiet, FinalId, [{Ctx, Id, Stream, Text} | Acc]);
		{K, _, FinalId, B} when K =:= ?KIND_RESULT orelse K =:= ?KIND_ERROR ->
			{lists:reverse(Acc), {K, decode(B, Config)}};
		F -> error({unexpected_frame, F})
	end.

%% Acks every output frame as it comes, until request Id's final frame.
ack_until_final(Port, Id, Config, Timeout) ->
	ack_until_final(Port, Id, Config, deadline(Timeout), []).

ack_until_final(Port, Id, Config, Deadline, Acc) ->
	case receive_frame(Port, left(Deadline)) of
		{?KIND_OUTPUT, Ctx, OId, B} ->
			{Stream, Text} = decode(B, Config),
			send(Port, ?KIND_OUTPUT_ACK, Ctx, OId, byte_size(Text), Config),
			ack_until_final(Port, Id, Config, Deadline, [{Ctx, OId, Stream, Text} | Acc]);
		{?KIND_RESULT, _, Id, B} -> {lists:reverse(Acc), {result, decode(B, Config)}};
		{?KIND_ERROR, _, Id, B} -> {lists:reverse(Acc), {error, decode(B, Config)}};
		none -> error({no_final_frame, Id});
		F -> error({unexpected_frame, F})
	end.

ack_all(Port, Frames, Config) ->
	_ = [send(Port, ?KIND_OUTPUT_ACK, Ctx, Id, byte_size(T), Config) || {Ctx, Id, _, T} <- Frames],
	ok.

text_bytes(Frames) -> lists:sum([byte_size(T) || {_, _, _, T} <- Frames]).

%% Every frame until the port exits: {Frames, ExitStatus}.
until_exit(Port, Timeout) ->
	until_exit(Port, deadline(Timeout), []).

until_exit(Port, Deadline, Acc) ->
	receive
		{Port, {data, <<Kind, 0, 0:16, Ctx:32, Id:64, Body/binary>>}} ->
			until_exit(Port, Deadline, [{Kind, Ctx, Id, Body} | Acc]);
		{Port, {exit_status, S}} ->
			erase(hardening_port),
			{lists:reverse(Acc), S}
	after left(Deadline) ->
		error({port_did_not_exit, lists:reverse(Acc)})
	end.

threads(OsPid) ->
	{ok, Names} = file:list_dir("/proc/" ++ integer_to_list(OsPid) ++ "/task"),
	length(Names).

crash_path(Tag) ->
	Dir = case os:getenv("TMPDIR") of false -> "/tmp"; "" -> "/tmp"; D -> D end,
	filename:join(Dir, "ep_hardening." ++ os:getpid() ++ "." ++ Tag ++ ".crash").

deadline(Timeout) -> erlang:monotonic_time(millisecond) + Timeout.

left(Deadline) -> max(0, Deadline - erlang:monotonic_time(millisecond)).
