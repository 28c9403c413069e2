%% Bulk bodies through shared memory (PROTOCOL.md §3.12; py_shm, port/io/shm.cpp): byte-for-byte
%% round trips around the threshold, concurrency, crashes, stale files, nested binaries, callbacks,
%% the settings, and malformed descriptors. Both codecs (EP_TEST_CODEC).
-module(py_shm_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("kernel/include/file.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1, init_per_testcase/2, end_per_testcase/2]).
-export([files_private/1, round_trip_around_threshold/1, big_round_trips/1, concurrent_callers/1,
	nested_binaries/1, callback_big_args/1, timeout_keeps_region_until_done/1,
	crash_mid_transfer/1, stale_dir_removed/1, vm_kill_leaves_nothing/1, threshold_setting/1,
	shm_off/1, malformed_descriptor/1, bad_release/1, pipe_size_setting/1, stream_big_items/1,
	killed_caller_frees_regions/1, dir_not_ours/1]).
%% bulk2: callback replies through request regions.
-export([callback_reply_through_shm/1, callback_reply_from_thread/1, callback_reply_pool_empty/1,
	callback_reply_bad_descriptor/1, callback_reply_trimmed_past_keep/1, dead_reader_frees_reply_region/1,
	buffer_not_returnable/1]).

-define(T, 65536).     %% the suite's threshold: small, so cases stay fast
-define(REGIONS, 2).

all() ->
	[files_private, round_trip_around_threshold, big_round_trips, concurrent_callers, nested_binaries,
	 callback_big_args, timeout_keeps_region_until_done, crash_mid_transfer, stale_dir_removed,
	 vm_kill_leaves_nothing, threshold_setting, shm_off, malformed_descriptor, bad_release,
	 pipe_size_setting, stream_big_items, killed_caller_frees_regions, dir_not_ours,
	 callback_reply_through_shm, callback_reply_from_thread, callback_reply_pool_empty,
	 callback_reply_bad_descriptor, callback_reply_trimmed_past_keep, dead_reader_frees_reply_region,
	 buffer_not_returnable].

init_per_suite(Config) ->
	Base = filename:join(?config(priv_dir, Config), "shm"),
	ok = filelib:ensure_dir(filename:join(Base, "x")),
	[{base, Base} | Config].

end_per_suite(_Config) ->
	py_ct_helper:stop_app().

init_per_testcase(Case, Config) when Case =:= threshold_setting; Case =:= shm_off; Case =:= pipe_size_setting;
		Case =:= dir_not_ours; Case =:= callback_reply_trimmed_past_keep;
		Case =:= stale_dir_removed; Case =:= vm_kill_leaves_nothing ->
	Config;
init_per_testcase(_Case, Config) ->
	ok = start(Config, []),
	Config.

end_per_testcase(_Case, _Config) ->
	py_ct_helper:stop_app().

start(Config, Extra) ->
	py_ct_helper:start_app([{num_ports, 1}, {contexts_per_port, 2}, {shm_dir, ?config(base, Config)},
		{shm_threshold, ?T}, {shm_regions, ?REGIONS}, {default_timeout, 60000}] ++ Extra).

codec() ->
	maps:get(codec, py_port:info(1)).

vm_dir(Config) ->
	py_shm:vm_dir(?config(base, Config), os:getpid()).

port_files(Config, OsPid) ->
	Prefix = "p" ++ integer_to_list(OsPid) ++ ".",
	case file:list_dir(vm_dir(Config)) of
		{ok, Names} -> lists:sort([N || N <- Names, lists:prefix(Prefix, N)]);
		{error, _} -> []
	end.

%% The body size py:eval(<<"b">>, #{b => {bytes, Bin}}) sends, for a binary of N bytes.
eval_body_size(N) ->
	Body = {self(), <<"b">>, #{b => {bytes, binary:copy(<<0>>, N)}}},
	iolist_size(py_codec:encode(codec(), Body)).

%% Picks N so that Fun(N), a body size growing with N by one byte per byte (the envelope changes only
%% at msgpack's length classes), is exactly Size.
len_for(Fun, Size) ->
	hd([N || N <- lists:seq(Size - 64, Size), Fun(N) =:= Size]).

bin_len_for_body(Size) ->
	len_for(fun eval_body_size/1, Size).

%% The reply body of a Python bytes of N bytes: ETF 131,109,Len:32; msgpack bin8/16/32.
reply_body_size(N) ->
	case codec() of
		etf -> N + 6;
		msgpack when N < 256 -> N + 2;
		msgpack when N < 65536 -> N + 3;
		msgpack -> N + 5
	end.

delta(Before) ->
	After = py_shm:stats(),
	#{requests => maps:get(requests, After) - maps:get(requests, Before),
	  replies => maps:get(replies, After) - maps:get(replies, Before)}.

%% The files exist, are 0600 in a 0700 directory, R per direction, named by the port's pid.
files_private(Config) ->
	OsPid = py_ct_helper:os_pid(1),
	{ok, #file_info{mode = DirMode}} = file:read_file_info(vm_dir(Config)),
	8#700 = DirMode band 8#777,
	Files = port_files(Config, OsPid),
	Expected = lists:sort([lists:flatten(io_lib:format("p~b.~s~b", [OsPid, D, K])) || D <- ["e", "o"],
		K <- lists:seq(0, ?REGIONS - 1)]),
	Expected = Files,
	[8#600 = M band 8#777 || F <- Files,
		{ok, #file_info{mode = M}} <- [file:read_file_info(filename:join(vm_dir(Config), F))]],
	?REGIONS = py_shm:free_regions(OsPid).

%% Just below the threshold the body takes the pipe, at and above it shared memory, in both
%% directions; every answer equals what was sent, byte for byte.
round_trip_around_threshold(_Config) ->
	Sizes = [{?T - 1, false}, {?T, true}, {?T + 1, true}],
	[begin
		N = bin_len_for_body(Size),
		Bin = crypto:strong_rand_bytes(N),
		Before = py_shm:stats(),
		{ok, Bin} = py:eval(<<"b">>, #{b => {bytes, Bin}}),
		#{requests := Req} = delta(Before),
		{Size, Req} = {Size, case Shm of true -> 1; false -> 0 end}
	end || {Size, Shm} <- Sizes],
	%% Replies: a result of exactly T - 1, T, T + 1 body bytes.
	[begin
		N = len_for(fun reply_body_size/1, Size),
		Before = py_shm:stats(),
		{ok, Bin} = py:eval(<<"bytes(range(256)) * (n // 256) + bytes(range(n % 256))">>, #{n => N}),
		N = byte_size(Bin),
		Bin = iolist_to_binary([lists:duplicate(N div 256, lists:seq(0, 255)), lists:seq(0, N rem 256 - 1)]),
		#{replies := Rep} = delta(Before),
		{Size, Rep} = {Size, case Shm of true -> 1; false -> 0 end}
	end || {Size, Shm} <- Sizes],
	?REGIONS = py_shm:free_regions(py_ct_helper:os_pid(1)).

%% Several sizes, call and exec too; the regions are reused (the files do not multiply) and all come
%% back to the pool.
big_round_trips(Config) ->
	OsPid = py_ct_helper:os_pid(1),
	[begin
		Bin = crypto:strong_rand_bytes(Size),
		{ok, Bin} = py:eval(<<"b">>, #{b => {bytes, Bin}}),
		{ok, Size} = py:call(builtins, len, [{bytes, Bin}]),
		ok = py:exec(<<"import hashlib">>),
		Md5 = crypto:hash(md5, Bin),
		{ok, Md5} = py:eval(<<"hashlib.md5(b).digest()">>, #{b => {bytes, Bin}})
	end || Size <- [100000, 1 bsl 20, 5 bsl 20, 1 bsl 20]],
	4 = length(port_files(Config, OsPid)),
	?REGIONS = py_shm:free_regions(OsPid).

%% Many callers at once, more than there are regions: each gets its own data back (those that found
%% no free region used the pipe) and every region is back in the pool afterwards.
concurrent_callers(_Config) ->
	Self = self(),
	Before = py_shm:stats(),
	Pids = [spawn_link(fun() ->
		R = [begin
			Bin = crypto:strong_rand_bytes(?T + rand:uniform(400000)),
			{ok, Bin} =:= py:eval(<<"b">>, #{b => {bytes, Bin}})
		end || _ <- lists:seq(1, 4)],
		Self ! {self(), lists:all(fun(X) -> X end, R)}
	end) || _ <- lists:seq(1, 12)],
	[receive {P, true} -> ok after 120000 -> error({caller_stuck, P}) end || P <- Pids],
	#{requests := Req, replies := Rep} = delta(Before),
	true = Req > 0 andalso Rep > 0,
	true = Req =< 48 andalso Rep =< 48,
	ok = reply_regions_all_free().

%% Results with big binaries inside terms: lists, tuples, maps, next to small values of every kind,
%% including shapes the fast reader leaves to binary_to_term (big integers, many small terms).
nested_binaries(_Config) ->
	A = crypto:strong_rand_bytes(200000),
	B = crypto:strong_rand_bytes(?T),
	Code = <<"{'a': [a, (b, 1, -2, 2.5, True, None)], 'small': b'xy', 's': 'text', 'n': 2**70, "
		"'many': list(range(5000)), 'e': [], 'b': b}">>,
	{ok, M} = py:eval(Code, #{a => {bytes, A}, b => {bytes, B}}),
	#{<<"a">> := [A, {B, 1, -2, 2.5, true, none}], <<"small">> := <<"xy">>, <<"s">> := <<"text">>,
	  <<"many">> := Many, <<"e">> := [], <<"b">> := B} = M,
	Many = lists:seq(0, 4999),
	1180591620717411303424 = case maps:get(<<"n">>, M) of
		I when is_integer(I) -> I;
		Digits -> list_to_integer(Digits)
	end,
	{ok, [[A, A], {B}]} = py:eval(<<"[[a, a], (b,)]">>, #{a => {bytes, A}, b => {bytes, B}}),
	%% A big argument nested the same way arrives intact.
	{ok, true} = py:eval(<<"x['k'][1][0] == a and x['k'][0] == 7">>,
		#{x => #{k => [7, {{bytes, A}}]}, a => {bytes, A}}).

%% A callback with a big argument (a callback frame through a reply region) and a big result of
%% the callback back into Python.
callback_big_args(_Config) ->
	ok = py:register_function(shm_len_md5, fun([Bin]) -> [byte_size(Bin), crypto:hash(md5, Bin)] end),
	ok = py:register_function(shm_echo, fun([Bin]) -> {bytes, Bin} end),
	Bin = crypto:strong_rand_bytes(3 bsl 20),
	Md5 = crypto:hash(md5, Bin),
	Before = py_shm:stats(),
	{ok, [Size, Md5]} = py:eval(<<"erlang.call('shm_len_md5', b)">>, #{b => {bytes, Bin}}),
	Size = byte_size(Bin),
	#{replies := Rep} = delta(Before),
	true = Rep >= 1,
	ok = py:exec(<<"import hashlib">>),
	{ok, Md5} = py:eval(<<"hashlib.md5(erlang.call('shm_echo', b)).digest()">>, #{b => {bytes, Bin}}),
	%% A nested request (made by the callback, on the same context) with a big argument: the nested
	%% and shm flags together.
	ok = py:register_function(shm_nested, fun([]) ->
		{ok, Md5} = py:eval(<<"__import__('hashlib').md5(b).digest()">>, #{b => {bytes, Bin}}),
		{ok, Bin} = py:eval(<<"b">>, #{b => {bytes, Bin}}),
		ok
	end),
	Before1 = py_shm:stats(),
	{ok, <<"ok">>} = py:eval(<<"erlang.call('shm_nested')">>),
	#{requests := 2, replies := 1} = delta(Before1).

%% A caller that stops waiting cannot know when the port is done with its request region: it stays
%% out of the pool until the request's late final frame, then comes back.
timeout_keeps_region_until_done(_Config) ->
	OsPid = py_ct_helper:os_pid(1),
	Bin = crypto:strong_rand_bytes(2 * ?T),
	{error, timeout} = py:eval(<<"__import__('time').sleep(0.5) or len(b)">>, #{b => {bytes, Bin}}, 100),
	ok = py_ct_helper:eventually(fun() -> py_shm:free_regions(OsPid) =:= ?REGIONS end, 10000),
	{ok, Bin} = py:eval(<<"b">>, #{b => {bytes, Bin}}),
	%% A request that shrugs off its cancel and still answers with a big result: nobody waits for that
	%% reply, and the owner hands its region back.
	ok = py:exec(<<"import time\n"
		"def stubborn(b):\n"
		"    try:\n"
		"        time.sleep(0.5)\n"
		"    except BaseException:\n"
		"        pass\n"
		"    return b * 2\n">>),
	{error, timeout} = py:eval(<<"stubborn(b)">>, #{b => {bytes, Bin}}, 100),
	timer:sleep(700),
	ok = py_ct_helper:eventually(fun() -> py_shm:free_regions(OsPid) =:= ?REGIONS end, 10000),
	ok = reply_regions_all_free().

%% The port dies while it holds a big body: the caller gets the usual crash error, and the dead port's
%% files are gone; the next port has its own.
crash_mid_transfer(Config) ->
	OsPid = py_ct_helper:os_pid(1),
	4 = length(port_files(Config, OsPid)),
	Bin = crypto:strong_rand_bytes(4 * ?T),
	{error, {port_exited, #{exit_status := 3, reason := crashed}}} =
		py:eval(<<"__import__('os')._exit(3) if len(b) else 0">>, #{b => {bytes, Bin}}),
	[] = port_files(Config, OsPid),
	{ok, Bin} = py:eval(<<"b">>, #{b => {bytes, Bin}}),
	NewPid = py_ct_helper:os_pid(1),
	true = NewPid =/= OsPid,
	4 = length(port_files(Config, NewPid)),
	%% Killed from outside while replying with a big body.
	Self = self(),
	spawn(fun() -> Self ! {done, py:eval(<<"__import__('time').sleep(0.2) or b * 8">>, #{b => {bytes, Bin}})} end),
	timer:sleep(100),
	_ = os:cmd("kill -9 " ++ integer_to_list(NewPid)),
	receive {done, {error, {port_exited, _}}} -> ok after 30000 -> error(no_crash_error) end,
	[] = port_files(Config, NewPid).

%% A directory left by a VM that is gone is removed at start-up; one of a live VM is not.
stale_dir_removed(Config) ->
	Base = ?config(base, Config),
	Dead = filename:join(Base, "erlang_python.999999999"),
	ok = filelib:ensure_dir(filename:join(Dead, "x")),
	ok = file:write_file(filename:join(Dead, "p123.e0"), <<"stale">>),
	Live = filename:join(Base, "erlang_python.1"),  %% pid 1 always runs
	ok = filelib:ensure_dir(filename:join(Live, "x")),
	%% A symlink under a dead VM's name is not followed: what it points to stays.
	Target = filename:join(?config(priv_dir, Config), "not_shm"),
	ok = filelib:ensure_dir(filename:join(Target, "x")),
	ok = file:write_file(filename:join(Target, "keep"), <<"mine">>),
	Link = filename:join(Base, "erlang_python.999999998"),
	_ = file:delete(Link),
	ok = file:make_symlink(Target, Link),
	ok = start(Config, []),
	false = filelib:is_dir(Dead),
	true = filelib:is_dir(Live),
	ok = file:del_dir(Live),
	{ok, <<"mine">>} = file:read_file(filename:join(Target, "keep")),
	ok = file:delete(Link),
	%% And our own directory goes with the application.
	Mine = vm_dir(Config),
	true = filelib:is_dir(Mine),
	ok = py_ct_helper:stop_app(),
	false = filelib:is_dir(Mine).

%% kill -9 of a whole VM leaves its directory (nobody could delete it); the next start removes it.
vm_kill_leaves_nothing(Config) ->
	Base = ?config(base, Config),
	Erl = os:find_executable("erl"),
	Ebin = filename:dirname(code:which(py)),
	Eval = lists:flatten(io_lib:format(
		"application:load(erlang_python), application:set_env(erlang_python, shm_dir, ~p), "
		"application:set_env(erlang_python, num_ports, 1), "
		"{ok, _} = application:ensure_all_started(erlang_python), "
		"{ok, _} = py:eval(<<\"b\">>, #{b => {bytes, binary:copy(<<1>>, 3000000)}}), "
		"io:format(\"vm ~~s~~n\", [os:getpid()]), receive after infinity -> ok end.", [Base])),
	Vm = open_port({spawn_executable, Erl}, [{args, ["-noshell", "-pa", Ebin, "-eval", Eval]},
		{line, 1024}, exit_status, use_stdio]),
	VmPid = receive
		{Vm, {data, {eol, "vm " ++ P}}} -> P;
		{Vm, {exit_status, S}} -> error({vm_exited, S})
	after 60000 -> error(vm_not_ready)
	end,
	Dir = py_shm:vm_dir(Base, VmPid),
	{ok, Files} = file:list_dir(Dir),
	8 = length(Files),
	_ = os:cmd("kill -9 " ++ VmPid),
	receive {Vm, {exit_status, _}} -> ok after 10000 -> error(vm_not_dead) end,
	true = filelib:is_dir(Dir),
	ok = py_ct_helper:eventually(fun() -> not filelib:is_dir("/proc/" ++ VmPid) end, 10000),
	ok = start(Config, []),
	false = filelib:is_dir(Dir).

%% shm_threshold decides: over a huge threshold nothing goes through shared memory.
threshold_setting(Config) ->
	ok = start(Config, [{shm_threshold, 1 bsl 30}]),
	Bin = crypto:strong_rand_bytes(2 bsl 20),
	Before = py_shm:stats(),
	{ok, Bin} = py:eval(<<"b">>, #{b => {bytes, Bin}}),
	#{requests := 0, replies := 0} = delta(Before),
	ok = py_ct_helper:stop_app(),
	ok = start(Config, [{shm_threshold, 1000}]),
	Small = crypto:strong_rand_bytes(2000),
	Before1 = py_shm:stats(),
	{ok, Small} = py:eval(<<"b">>, #{b => {bytes, Small}}),
	#{requests := 1, replies := 1} = delta(Before1),
	%% Without the descriptor cache (open and close every time) the same holds.
	ok = py_ct_helper:stop_app(),
	ok = start(Config, [{shm_threshold, 1000}, {shm_fd_cache, 0}]),
	_ = erase(py_shm_fds),
	Before2 = py_shm:stats(),
	[{ok, Small} = py:eval(<<"b">>, #{b => {bytes, Small}}) || _ <- [1, 2, 3]],
	#{requests := 3, replies := 3} = delta(Before2),
	undefined = get(py_shm_fds).

%% shm => false: no directory, no port options, everything on the pipe.
shm_off(Config) ->
	ok = start(Config, [{shm, false}]),
	disabled = py_shm:config(),
	[] = py_shm:port_args(),
	false = filelib:is_dir(vm_dir(Config)),
	Bin = crypto:strong_rand_bytes(2 bsl 20),
	{ok, Bin} = py:eval(<<"b">>, #{b => {bytes, Bin}}),
	%% A port without shared memory refuses the flag.
	Ctx = element(1, maps:get(contexts, py_port:info(1))),
	Id = py_ct_helper:raw_request(1, 2, Ctx, 2, <<0:32, 0:64, 0:64>>),
	receive
		{py_frame, Id, 70, _, Body} -> {bad_flags, _} = py_codec:decode(codec(), Body)
	after 10000 -> error(no_bad_flags)
	end.

%% A descriptor naming a region that does not exist, a range outside the file, or a body that is no
%% descriptor: protocol_error bad_shm, and the port goes on. The flag on another kind: bad_flags.
malformed_descriptor(_Config) ->
	Ctx = element(1, maps:get(contexts, py_port:info(1))),
	Cases = [<<99:32, 0:64, 10:64>>, <<0:32, 0:64, (1 bsl 40):64>>, <<0:32, (1 bsl 62):64, (1 bsl 62):64>>,
		<<0:32, 0:64>>, <<>>],
	[begin
		Id = py_ct_helper:raw_request(1, 2, Ctx, 2, Desc),
		receive
			{py_frame, Id, 70, _, Body} -> {bad_shm, _} = py_codec:decode(codec(), Body)
		after 10000 -> error({no_answer, Desc})
		end
	end || Desc <- Cases],
	Id2 = py_ct_helper:raw_request(1, 10, 0, 2, py_codec:encode(codec(), [])),
	receive
		{py_frame, Id2, 70, _, Body2} -> {bad_flags, _} = py_codec:decode(codec(), Body2)
	after 10000 -> error(no_bad_flags)
	end,
	{ok, 2} = py:eval(<<"1+1">>).

%% shm_release of a region not in use is a protocol_error (id 0: the owner logs it); the port goes on.
bad_release(_Config) ->
	ok = py_ct_helper:capture_log(),
	#{port := Port} = py_port:info(1),
	true = port_command(Port, [<<24, 0, 0:16, 0:32, 0:64>> | py_codec:encode(codec(), 1)]),
	true = port_command(Port, [<<24, 0, 0:16, 0:32, 0:64>> | py_codec:encode(codec(), <<"x">>)]),
	ok = await_logs("bad_shm", 2, erlang:monotonic_time(millisecond) + 10000),
	ok = py_ct_helper:stop_capture_log(),
	Bin = crypto:strong_rand_bytes(2 * ?T),
	{ok, Bin} = py:eval(<<"b">>, #{b => {bytes, Bin}}).

await_logs(_, 0, _) ->
	ok;
await_logs(Pattern, N, Deadline) ->
	receive
		{log, _, Text} ->
			case re:run(Text, Pattern, [{capture, none}]) of
				match -> await_logs(Pattern, N - 1, Deadline);
				nomatch -> await_logs(Pattern, N, Deadline)
			end
	after max(0, Deadline - erlang:monotonic_time(millisecond)) ->
		error({log_missing, Pattern, N})
	end.

%% pipe_size reaches the port: its protocol pipes have that size (F_GETPIPE_SZ, seen from Python
%% through /proc/self/fd); 0 leaves the kernel's default.
pipe_size_setting(Config) ->
	Def = <<"import os, fcntl\n"
		"def pipe_sizes():\n"
		"    out = []\n"
		"    for f in os.listdir('/proc/self/fd'):\n"
		"        try:\n"
		"            if os.readlink('/proc/self/fd/' + f).startswith('pipe:'):\n"
		"                out.append(fcntl.fcntl(int(f), 1032))\n"
		"        except OSError:\n"
		"            pass\n"
		"    return out\n">>,
	Code = <<"pipe_sizes()">>,
	ok = start(Config, [{pipe_size, 262144}]),
	ok = py:exec(Def),
	{ok, Sizes} = py:eval(Code),
	true = lists:member(262144, Sizes),
	ok = py_ct_helper:stop_app(),
	ok = start(Config, [{pipe_size, 0}]),
	ok = py:exec(Def),
	{ok, Default} = py:eval(Code),
	false = lists:member(262144, Default).

%% Stream chunks with big items come through reply regions too (a chunk is one frame of items), in
%% order, and every region comes back.
stream_big_items(_Config) ->
	Before = py_shm:stats(),
	{ok, Items} = py:stream_eval(<<"(bytes([i]) * (3 * 65536) for i in range(6))">>),
	6 = length(Items),
	[{I, true} = {I, Item =:= binary:copy(<<I>>, 3 * 65536)} || {I, Item} <- lists:zip(lists:seq(0, 5), Items)],
	#{replies := Rep} = delta(Before),
	true = Rep >= 1,
	ok = reply_regions_all_free().

%% Every reply region is free again. Raw requests (whose replies nobody reads, so their regions stay
%% taken) hold all of them but one; a big reply must then still come through shared memory. With all
%% of them held, it takes the pipe (the bound). The held ones are handed back by hand. Request regions
%% are all in the pool too.
reply_regions_all_free() ->
	Held = hold_reply_regions(?REGIONS - 1),
	Before = py_shm:stats(),
	{ok, Big} = py:eval(<<"bytes(200000)">>),
	200000 = byte_size(Big),
	#{replies := 1} = delta(Before),
	Held1 = Held ++ hold_reply_regions(1),
	Before1 = py_shm:stats(),
	{ok, Big} = py:eval(<<"bytes(200000)">>),
	#{replies := 0} = delta(Before1),
	#{port := Port} = py_port:info(1),
	[true = port_command(Port, [<<24, 0, 0:16, 0:32, 0:64>> | py_codec:encode(codec(), K)]) || K <- Held1],
	?REGIONS = py_shm:free_regions(py_ct_helper:os_pid(1)),
	ok.

hold_reply_regions(N) ->
	Ctx = element(1, maps:get(contexts, py_port:info(1))),
	[begin
		Id = py_ct_helper:raw_request(1, 2, Ctx, 0, py_codec:encode(codec(), {undefined, <<"bytes(200000)">>, #{}})),
		receive
			{py_frame, Id, 65, _, {py_shm, <<K:32, _:128>>}} -> K;
			{py_frame, Id, Kind, _, Other} -> error({not_through_shm, Kind, Other})
		after 10000 -> error(no_reply)
		end
	end || _ <- lists:seq(1, N)].

%% A caller killed while its request (big argument, big result to come) runs: the owner cancels it
%% through the caller's monitor, and the request region and the reply region both come back.
killed_caller_frees_regions(_Config) ->
	OsPid = py_ct_helper:os_pid(1),
	Bin = crypto:strong_rand_bytes(3 * ?T),
	{Pid, MRef} = spawn_monitor(fun() ->
		py:eval(<<"__import__('time').sleep(0.3) or b * 2">>, #{b => {bytes, Bin}})
	end),
	ok = py_ct_helper:eventually(fun() -> py_shm:free_regions(OsPid) < ?REGIONS end, 5000),
	exit(Pid, kill),
	receive {'DOWN', MRef, process, Pid, killed} -> ok after 5000 -> error(not_killed) end,
	%% Killed while writing: the port never saw it, reclaim/1 (which a caller runs when the pool is
	%% empty) gives it back. Killed after sending: the owner does, at the cancelled request's final frame.
	ok = py_ct_helper:eventually(fun() ->
		_ = py_shm:reclaim(OsPid),
		py_shm:free_regions(OsPid) =:= ?REGIONS
	end, 10000),
	ok = reply_regions_all_free(),
	%% Killed while writing, for certain: every region taken, one of them by a dead process. A caller
	%% that finds the pool empty gets that one back and uses it.
	Dead = spawn(fun() -> ok end),
	DRef = erlang:monitor(process, Dead),
	receive {'DOWN', DRef, process, Dead, _} -> ok end,
	Ks = [K || [K] <- ets:match(py_shm_free, {{OsPid, '$1'}})],
	?REGIONS = length(Ks),
	[[_] = ets:take(py_shm_free, {OsPid, K}) || K <- Ks],
	[DeadK | LiveKs] = Ks,
	true = ets:insert(py_shm_held, {1, {OsPid, DeadK, 10}, Dead, writing}),
	[true = ets:insert(py_shm_held, {1 + K + 1, {OsPid, K, 10}, self(), writing}) || K <- LiveKs],
	Before = py_shm:stats(),
	{ok, Bin} = py:eval(<<"b">>, #{b => {bytes, Bin}}),
	#{requests := 1} = delta(Before),
	0 = py_shm:reclaim(OsPid),  %% the live holder's stay
	[ok = py_shm:done(1 + K + 1, {OsPid, K, 10}) || K <- LiveKs],
	?REGIONS = py_shm:free_regions(OsPid).

%% Something else already under this VM's directory name (here a symlink to a directory with a file):
%% not used, not touched; shared memory is off and everything takes the pipe.
dir_not_ours(Config) ->
	Target = filename:join(?config(priv_dir, Config), "not_ours"),
	ok = filelib:ensure_dir(filename:join(Target, "x")),
	ok = file:write_file(filename:join(Target, "keep"), <<"mine">>),
	Link = vm_dir(Config),
	ok = file:make_symlink(Target, Link),
	try
		ok = start(Config, []),
		disabled = py_shm:config(),
		Bin = crypto:strong_rand_bytes(2 * ?T),
		{ok, Bin} = py:eval(<<"b">>, #{b => {bytes, Bin}}),
		{ok, <<"mine">>} = file:read_file(filename:join(Target, "keep")),
		{ok, ["keep"]} = file:list_dir(Target)
	after
		file:delete(Link)
	end.

%% ---- bulk2: callback replies through request regions (PROTOCOL.md §3.12) -------------------------

%% A big value returned by an Erlang function to erlang.call goes through a request region, arrives
%% byte for byte, and the region comes back (shm_consumed): more replies than regions in a row, and the
%% pool is full again after each.
callback_reply_through_shm(_Config) ->
	OsPid = py_ct_helper:os_pid(1),
	Bin = crypto:strong_rand_bytes(3 * ?T),
	ok = py:register_function(shm_big_reply, fun([N]) -> {bytes, binary:part(Bin, 0, N)} end),
	ok = py:exec(<<"import hashlib">>),
	[begin
		N = byte_size(Bin) - I,
		Before = py_shm:stats(),
		{ok, Md5} = py:eval(<<"hashlib.md5(erlang.call('shm_big_reply', n)).digest()">>, #{n => N}),
		Md5 = crypto:hash(md5, binary:part(Bin, 0, N)),
		#{requests := 1} = delta(Before),
		ok = py_ct_helper:eventually(fun() -> py_shm:free_regions(OsPid) =:= ?REGIONS end, 5000)
	end || I <- lists:seq(0, 2 * ?REGIONS + 1)],
	%% Below the threshold: the pipe, as before.
	Before1 = py_shm:stats(),
	{ok, 100} = py:eval(<<"len(erlang.call('shm_big_reply', 100))">>),
	#{requests := 0} = delta(Before1),
	[] = ets:match_object(py_shm_held, {{callback, '_', '_'}, '_', '_', '_'}).

%% From a Python thread outside any context (id 0: a fresh process runs the function, and the port's
%% thread waits on its own condition variable): the same.
callback_reply_from_thread(_Config) ->
	OsPid = py_ct_helper:os_pid(1),
	Bin = crypto:strong_rand_bytes(2 * ?T),
	ok = py:register_function(shm_thread_reply, fun([]) -> {bytes, Bin} end),
	Before = py_shm:stats(),
	ok = py:exec(<<"import threading, hashlib\n"
		"out = []\n"
		"t = threading.Thread(target=lambda: out.append(hashlib.md5(erlang.call('shm_thread_reply')).digest()))\n"
		"t.start()\n"
		"t.join(30)\n">>),
	{ok, [Md5]} = py:eval(<<"out">>),
	Md5 = crypto:hash(md5, Bin),
	#{requests := 1} = delta(Before),
	ok = py_ct_helper:eventually(fun() -> py_shm:free_regions(OsPid) =:= ?REGIONS end, 5000).

%% Every request region in use: the reply takes the pipe, intact, and nothing is held for it.
callback_reply_pool_empty(_Config) ->
	OsPid = py_ct_helper:os_pid(1),
	Bin = crypto:strong_rand_bytes(2 * ?T),
	ok = py:register_function(shm_pool_reply, fun([]) -> {bytes, Bin} end),
	Taken = [K || [K] <- ets:match(py_shm_free, {{OsPid, '$1'}})],
	?REGIONS = length(Taken),
	[[_] = ets:take(py_shm_free, {OsPid, K}) || K <- Taken],
	try
		Before = py_shm:stats(),
		{ok, Md5} = py:eval(<<"__import__('hashlib').md5(erlang.call('shm_pool_reply')).digest()">>),
		Md5 = crypto:hash(md5, Bin),
		#{requests := 0} = delta(Before),
		[] = ets:match_object(py_shm_held, {{callback, '_', '_'}, '_', '_', '_'})
	after
		true = ets:insert(py_shm_free, [{{OsPid, K}} || K <- Taken])
	end.

%% A callback_reply whose descriptor names no region, or a range outside its region: the waiting
%% erlang.call raises ErlangError (it does not hang), the owner logs the port's bad_shm, and a region
%% that was named comes back with shm_consumed (here none was held: the owner ignores it). Then the
%% port goes on.
callback_reply_bad_descriptor(_Config) ->
	ok = py_ct_helper:capture_log(),
	Ctx = element(1, maps:get(contexts, py_port:info(1))),
	#{port := Port} = py_port:info(1),
	Code = <<"try:\n"
		"    erlang.call('anything')\n"
		"    r = 'no error'\n"
		"except erlang.ErlangError as e:\n"
		"    r = str(e)\n"
		"r">>,
	[begin
		Id = py_ct_helper:raw_request(1, 2, Ctx, 0, py_codec:encode(codec(), {undefined, Code, #{}})),
		CbId = receive
			{py_frame, Id, 67, _, CbBody} -> element(1, py_codec:decode(codec(), CbBody))
		after 10000 -> error(no_callback)
		end,
		true = port_command(Port, [<<6, 2, 0:16, Ctx:32, CbId:64>>, Desc]),
		receive
			{py_frame, Id, 65, _, RBody} ->
				R = py_codec:decode(codec(), RBody),
				{match, _} = re:run(R, "shared memory cannot be read");
			{py_frame, Id, Kind, _, Other} -> error({unexpected, Kind, Other})
		after 10000 -> error({no_answer, Desc})
		end
	end || Desc <- [<<99:32, 0:64, 10:64>>, <<0:32, 0:64, (1 bsl 40):64>>, <<0:32>>]],
	ok = await_logs("bad_shm", 3, erlang:monotonic_time(millisecond) + 10000),
	ok = py_ct_helper:stop_capture_log(),
	{ok, 2} = py:eval(<<"1+1">>).

%% A callback reply that made its region grow past shm_keep: the port cuts the file back to 0 before
%% it hands the region back (the owner touches no file).
callback_reply_trimmed_past_keep(Config) ->
	ok = start(Config, [{shm_keep, 2 * ?T}]),
	OsPid = py_ct_helper:os_pid(1),
	Bin = crypto:strong_rand_bytes(4 * ?T),
	ok = py:register_function(shm_keep_reply, fun([]) -> {bytes, Bin} end),
	Before = py_shm:stats(),
	{ok, true} = py:eval(<<"len(erlang.call('shm_keep_reply')) == n">>, #{n => byte_size(Bin)}),
	#{requests := 1} = delta(Before),
	ok = py_ct_helper:eventually(fun() -> py_shm:free_regions(OsPid) =:= ?REGIONS end, 5000),
	Sizes = [filelib:file_size(filename:join(vm_dir(Config), F)) || F <- port_files(Config, OsPid),
		lists:member($e, lists:nthtail(length(integer_to_list(OsPid)) + 2, F))],
	?REGIONS = length(Sizes),
	[0 = S || S <- Sizes].
%% A process killed with a reply region's frame unread in its mailbox: the owner, which watches the
%% readers of reply regions, hands the region back (before, it stayed in use until the port exited).
dead_reader_frees_reply_region(_Config) ->
	Ctx = element(1, maps:get(contexts, py_port:info(1))),
	Self = self(),
	Body = py_codec:encode(codec(), {undefined, <<"bytes(200000)">>, #{}}),
	Readers = [spawn(fun() ->
		Id = py_ct_helper:raw_request(1, 2, Ctx, 0, Body),
		Self ! {sent, self(), Id},
		receive never -> ok end
	end) || _ <- lists:seq(1, ?REGIONS)],
	[receive {sent, R, _} -> ok after 10000 -> error(not_sent) end || R <- Readers],
	%% Every reply region is now in the mailbox of a reader that will never read it.
	ok = py_ct_helper:eventually(fun() ->
		lists:all(fun(R) -> element(2, process_info(R, message_queue_len)) =:= 1 end, Readers)
	end, 10000),
	Before = py_shm:stats(),
	{ok, Big} = py:eval(<<"bytes(200000)">>),
	200000 = byte_size(Big),
	#{replies := 0} = delta(Before),  %% none free: the pipe
	[exit(R, kill) || R <- Readers],
	ok = py_ct_helper:eventually(fun() -> ets:info(py_shm_out, size) =:= 0 end, 10000),
	ok = py_ct_helper:eventually(fun() ->
		Before1 = py_shm:stats(),
		{ok, Big} = py:eval(<<"bytes(200000)">>),
		maps:get(replies, delta(Before1)) =:= 1
	end, 10000),
	ok = reply_regions_all_free().

%% A PyBuffer is not returned to Erlang (decided, README): it is a stream another process may still be
%% writing, whose Erlang handle the caller holds already; a silent snapshot would hide that it can be
%% incomplete. memoryview(buf) returns what it holds now, as a binary (through a reply region when big).
buffer_not_returnable(_Config) ->
	Data = crypto:strong_rand_bytes(3 * ?T),
	{ok, B} = py_buffer:new(byte_size(Data)),
	ok = py_buffer:write(B, Data),
	{error, {'TypeError', Msg}} = py:eval(<<"buf">>, #{buf => B}),
	{match, _} = re:run(Msg, "PyBuffer"),
	Before = py_shm:stats(),
	{ok, Data} = py:eval(<<"memoryview(buf)">>, #{buf => B}),
	#{replies := 1} = delta(Before).

%% ---- bulk2: end ----------------------------------------------------------------------------------
