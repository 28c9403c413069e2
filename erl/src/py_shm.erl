%% Bulk bodies through shared memory (PROTOCOL.md §3.12), the Erlang side.
%%
%% Scope: the VM's private directory (made at start-up, after removing those of VMs that died), the
%% options the port is started with, the pool of request regions of each port, and reading and writing
%% region files from the calling process. No process of its own: the pool is an ETS table, so a caller
%% takes a region, writes its body there with one pwrite and gives the region back, without asking
%% anyone; the owner (py_port) only tells when a port comes up or goes.
%%
%% Files: <shm_dir>/erlang_python.<VM os pid>/ (0700), in it p<port os pid>.e<K> (request bodies, this
%% side writes) and p<port os pid>.o<K> (reply bodies, the port writes), made by the port with mode 0600.
%% Why files in a 0700 directory rather than memfds: the VM cannot mmap nor receive a descriptor, but it
%% can open a path with raw file I/O from any process; the directory keeps them private to the user, and
%% a name is what start-up needs to find and remove what a VM killed with -9 left behind.
%%
%% A request region is the caller's from take to the request's final frame (result, error,
%% protocol_error, requeue or port_exited): the port reads it only while decoding, before that frame.
%% It is registered under the request id (py_shm_held) as soon as it is taken; write/6 says how it
%% comes back in every case (the final frame, a late final frame when the caller stopped waiting, a
%% caller killed while writing). A caller that timed out after the owner had already forwarded the
%% final frame to it, or that died after sending without the owner monitoring it (an explicit
%% environment), leaves its region out of the pool until the port goes (rare, and bounded by the
%% regions). A request region that carries a callback reply (callback_reply_frame/5) is the
%% writer's until the port's shm_consumed (kind 83), which the owner turns into a return to the pool
%% (consumed/2). A reply region is the port's until shm_release (kind 24), sent by whoever reads the
%% frame, or by the owner when that reader died before reading it (reader_gone/3).
%% Bounded: `shm_regions' regions per direction per port; with all of them in
%% use a body goes down the pipe as before.
%%
%% Application env: shm (true | false, default true), shm_dir (default /dev/shm, else the OS temp dir),
%% shm_threshold (bytes, default 512 KiB: a body that long or longer uses a region; measured, below it
%% the pipe is as fast), shm_regions (per direction and port, default 4), shm_keep (a region that grew
%% past it is cut back to 0 when released, default 128 MiB), shm_fd_cache (region files a process keeps
%% open, default 8, see with_cached/4).
-module(py_shm).

-include_lib("kernel/include/file.hrl").

%% API.
-export([setup/0]).
-export([config/0]).
-export([teardown/0]).
-export([port_args/0]).
-export([port_up/1]).
-export([port_gone/1]).
-export([request_frame/7]).
-export([callback_reply_frame/5]).
-export([consumed/2]).
-export([forwarded/3]).
-export([reader_gone/3]).
-export([release/1]).
-export([done/2]).
-export([read_body/3]).
-export([orphan_final/4]).
-export([orphan/6]).
-export([vm_dir/2]).
-export([clean_stale/1]).
-export([free_regions/1]).
-export([reclaim/1]).
-export([protocol_atoms/0]).
-export([stats/0]).

-export_type([held/0]).

-define(SHM_FLAG, 2).
-define(SHM_RELEASE, 24).
-define(CALLBACK_REPLY, 6).
-define(CALLBACK, 67).
-define(REQUEUE, 75).
-define(DIR_PREFIX, "erlang_python.").

%% A request region in use: {PortOsPid, K, BytesWritten}, or none.
-type held() :: none | {non_neg_integer(), non_neg_integer(), non_neg_integer()}.

%% API.

%% At application start (erlang_python_sup:init/1, so the tables belong to the supervisor): removes
%% the directories of VMs that are gone, makes this VM's, and publishes the configuration.
-spec setup() -> ok.
setup() ->
	py_shm_free = ets:new(py_shm_free, [ordered_set, public, named_table, {write_concurrency, true}]),
	py_shm_held = ets:new(py_shm_held, [set, public, named_table, {write_concurrency, true}]),
	py_shm_ports = ets:new(py_shm_ports, [set, public, named_table, {read_concurrency, true}]),
	%% bulk2: reply regions forwarded to a reader that has not read them: {{PortOsPid, K}, Pid}.
	py_shm_out = ets:new(py_shm_out, [set, public, named_table, {write_concurrency, true}]),
	Env = fun(Key, Default) -> application:get_env(erlang_python, Key, Default) end,
	Config = case Env(shm, true) of
		true ->
			Base = Env(shm_dir, default_base()),
			ok = clean_stale(Base),
			Dir = vm_dir(Base, os:getpid()),
			case make_private_dir(Dir) of
				ok ->
					#{dir => Dir, threshold => Env(shm_threshold, 512 bsl 10), regions => Env(shm_regions, 4),
						keep => Env(shm_keep, 128 bsl 20), fd_cache => Env(shm_fd_cache, 8)};
				{error, Why} ->
					logger:warning("erlang_python: shared memory off, cannot make ~ts: ~tp", [Dir, Why]),
					disabled
			end;
		false ->
			disabled
	end,
	ok = persistent_term:put({?MODULE, counters}, counters:new(2, [write_concurrency])),
	ok = persistent_term:put(?MODULE, Config).

%% Bodies that went through shared memory since start-up: request bodies written, reply bodies read.
-spec stats() -> #{requests := non_neg_integer(), replies := non_neg_integer()}.
stats() ->
	C = persistent_term:get({?MODULE, counters}),
	#{requests => counters:get(C, 1), replies => counters:get(C, 2)}.

count(N) ->
	counters:add(persistent_term:get({?MODULE, counters}), N, 1).

-spec config() -> disabled | #{dir := file:filename(), threshold := pos_integer(),
	regions := pos_integer(), keep := non_neg_integer(), fd_cache := non_neg_integer()}.
config() ->
	persistent_term:get(?MODULE, disabled).

%% At application stop (every port is gone by then): this VM's directory is removed.
-spec teardown() -> ok.
teardown() ->
	case config() of
		#{dir := Dir} -> remove_dir(Dir);
		disabled -> ok
	end,
	_ = persistent_term:erase(?MODULE),
	ok.

%% The port's command-line options (py_port): shared memory, and pipe_size (F_SETPIPE_SZ of the
%% protocol pipes, bytes; 0 leaves the kernel's default; unset: the port's 1 MiB).
-spec port_args() -> [string()].
port_args() ->
	Pipe = case application:get_env(erlang_python, pipe_size) of
		{ok, P} when is_integer(P), P >= 0 -> ["--pipe-size", integer_to_list(P)];
		_ -> []
	end,
	Pipe ++ shm_args().

shm_args() ->
	case config() of
		disabled -> [];
		#{dir := Dir, threshold := T, regions := K, keep := Keep} ->
			["--shm-dir", Dir, "--shm-threshold", integer_to_list(T), "--shm-regions", integer_to_list(K),
			 "--shm-keep", integer_to_list(Keep)]
	end.

%% The port OsPid said hello: its request regions go into the pool if it made its files.
-spec port_up(non_neg_integer()) -> ok.
port_up(OsPid) ->
	case config() of
		#{regions := K} = C ->
			case filelib:is_regular(path(C, OsPid, e, 0)) of
				true ->
					true = ets:insert(py_shm_ports, {OsPid, K}),
					true = ets:insert(py_shm_free, [{{OsPid, I}} || I <- lists:seq(0, K - 1)]),
					ok;
				false ->
					ok
			end;
		disabled ->
			ok
	end.

%% The port OsPid is gone (py_port, before it fails what was in flight): its regions leave the pool and
%% its files are deleted, whatever state they were in.
-spec port_gone(non_neg_integer() | undefined) -> ok.
port_gone(undefined) ->
	ok;
port_gone(OsPid) ->
	case config() of
		#{dir := Dir} ->
			%% The tables may be gone already when the supervisor itself is going down.
			_ = catch ets:delete(py_shm_ports, OsPid),
			_ = catch ets:match_delete(py_shm_free, {{OsPid, '_'}}),
			_ = catch ets:match_delete(py_shm_held, {'_', {OsPid, '_', '_'}, '_', '_'}),
			_ = catch ets:match_delete(py_shm_out, {{OsPid, '_'}, '_'}),
			Prefix = "p" ++ integer_to_list(OsPid) ++ ".",
			_ = [file:delete(filename:join(Dir, F)) || F <- list_dir(Dir), lists:prefix(Prefix, F)],
			ok;
		disabled ->
			ok
	end.

%% The frame of request Kind, through a region when its body is at least the threshold long and a
%% region of the port is free: {Frame, Held}. Held is what the caller gives back (release/1) once it has
%% the request's final frame, or hands to done/2 when it stops waiting. Raises {badarg, _} as
%% py_codec:frame/6 does.
-spec request_frame(py_codec:kind(), 0..255, non_neg_integer(), pos_integer(), py_codec:codec(), term(),
	port()) -> {iodata(), held()}.
request_frame(Kind, Flags, Ctx, Id, Codec, Body, Port) ->
	case config() of
		#{threshold := T} = C ->
			Enc = encode(Codec, Body),
			Size = iolist_size(Enc),
			Header = fun(F) -> <<(py_codec:kind(Kind)), F, 0:16, Ctx:32, Id:64>> end,
			case Size >= T andalso port_pid(Port) of
				OsPid when is_integer(OsPid) ->
					case write(C, Port, OsPid, fun(_) -> Id end, Enc, Size) of
						{ok, K} ->
							ok = count(1),
							{[Header(Flags bor ?SHM_FLAG), desc(K, 0, Size)], {OsPid, K, Size}};
						none ->
							{[Header(Flags) | Enc], none}
					end;
				_ ->
					{[Header(Flags) | Enc], none}
			end;
		disabled ->
			{py_codec:frame(Kind, Flags, Ctx, Id, Codec, Body), none}
	end.

%% The callback_reply frame (kind 6) answering callback CbId of context Ctx with Reply, through a
%% request region of the port when its body is at least the threshold long and a region is free
%% (PROTOCOL.md §3.12): an Erlang function that returns 64 MiB to erlang.call does not push them down
%% the pipe. The port copies the body out as the frame arrives and hands the region back with
%% shm_consumed (P->E 83, consumed/2, in the owner); until then it is registered under
%% {callback, OsPid, K} in py_shm_held (a writer killed before it sent the frame leaves it to
%% reclaim/1, as a request's). Otherwise, or with every region in use, the frame takes the pipe.
%% Raises {badarg, _} as py_codec:frame/5 does.
-spec callback_reply_frame(non_neg_integer(), non_neg_integer(), py_codec:codec(), term(), port()) -> iodata().
callback_reply_frame(Ctx, CbId, Codec, Reply, Port) ->
	case config() of
		#{threshold := T} = C ->
			Enc = encode(Codec, Reply),
			Size = iolist_size(Enc),
			Header = fun(F) -> <<?CALLBACK_REPLY, F, 0:16, Ctx:32, CbId:64>> end,
			OsPid = Size >= T andalso port_pid(Port),
			case is_integer(OsPid) andalso write(C, Port, OsPid, fun(K) -> {callback, OsPid, K} end, Enc, Size) of
				{ok, K} ->
					ok = count(1),
					[Header(?SHM_FLAG), desc(K, 0, Size)];
				_ ->
					[Header(0) | Enc]
			end;
		disabled ->
			py_codec:frame(callback_reply, Ctx, CbId, Codec, Reply)
	end.

%% In the owner of port OsPid, as it forwards a frame whose body is in reply region K (Desc) to Pid,
%% which the owner monitors from then on: if Pid dies before it has read the body (read_body/3
%% removes the entry), reader_gone/3 hands the region back. Without it a region whose reader was
%% killed stayed in use until the port exited. One ETS insert per big body.
-spec forwarded(non_neg_integer() | undefined, binary(), pid()) -> ok.
forwarded(OsPid, <<K:32, _:128>>, Pid) when is_integer(OsPid) ->
	true = ets:insert(py_shm_out, {{OsPid, K}, Pid}),
	ok;
forwarded(_, _, _) ->
	ok.

%% In the owner, at the 'DOWN' of Pid: the reply regions forwarded to it and not read are handed back
%% to the port (shm_release). Bounded by the regions of the port (the table holds at most that many
%% entries per port); ets:take makes each release happen once.
-spec reader_gone(pid(), port() | undefined, py_codec:codec()) -> ok.
reader_gone(Pid, Port, Codec) ->
	OsPid = case is_port(Port) of true -> port_pid(Port); false -> undefined end,
	_ = [catch port_command(Port, release_frame(Codec, K))
		|| {{P, K}, _} <- ets:match_object(py_shm_out, {{OsPid, '_'}, Pid}), P =:= OsPid,
		   ets:take(py_shm_out, {P, K}) =/= []],
	ok.

%% In the owner of port OsPid, at its shm_consumed for request region K (the body of a callback_reply
%% was read): the region is back in the pool. Only ETS: the port cut the file back itself when it
%% grew past shm_keep. A region not held for a callback reply (a stale or repeated frame) is ignored.
-spec consumed(non_neg_integer() | undefined, term()) -> ok.
consumed(OsPid, K) when is_integer(OsPid), is_integer(K) ->
	_ = case ets:take(py_shm_held, {callback, OsPid, K}) of
		[{_, _, _, _}] -> ets:member(py_shm_ports, OsPid) andalso ets:insert(py_shm_free, {{OsPid, K}});
		[] -> false
	end,
	ok;
consumed(_, _) ->
	ok.

%% The request's final frame came (or its port is gone): its region is free again, cut back to 0 when
%% it grew past shm_keep.
-spec release(held()) -> ok.
release(none) ->
	ok;
release({OsPid, K, Size}) ->
	case config() of
		#{keep := Keep} = C when Size > Keep ->
			_ = with_file(path(C, OsPid, e, K), [read, write], fun(Fd) ->
				{ok, 0} = file:position(Fd, 0),
				file:truncate(Fd)
			end);
		_ ->
			ok
	end,
	%% Only into the pool of a port that is still there (port_gone may have run meanwhile).
	_ = ets:member(py_shm_ports, OsPid) andalso ets:insert(py_shm_free, {{OsPid, K}}),
	ok.

%% The caller has the final frame of request Id (or its port is gone): the request region is free.
%% A caller that stops waiting does not call this: the owner does at the late final frame
%% (orphan_final/4), when the port is done with the body.
-spec done(pos_integer(), held()) -> ok.
done(_, none) ->
	ok;
done(Id, _) ->
	case ets:take(py_shm_held, Id) of
		[{_, Held, _, _}] -> release(Held);
		[] -> ok
	end.

%% The body of a frame the port sent through a reply region (the owner forwards {py_shm, Desc}): read,
%% the region handed back (shm_release), decoded.
-spec read_body(py_codec:codec(), port(), binary()) -> term().
read_body(Codec, Port, <<K:32, Offset:64, Length:64>>) ->
	C = #{} = config(),
	OsPid = port_pid(Port),
	true = is_integer(OsPid),
	Read = with_cached(Port, path(C, OsPid, o, K), [read], fun(Fd) -> file:pread(Fd, Offset, Length) end),
	%% Read: the owner has nothing to hand back for us if we die now (reader_gone/3).
	_ = ets:delete(py_shm_out, {OsPid, K}),
	_ = catch port_command(Port, release_frame(Codec, K)),
	ok = count(2),
	case Read of
		{ok, Bin} when byte_size(Bin) =:= Length, Codec =:= etf -> etf_decode(Bin);
		{ok, Bin} when byte_size(Bin) =:= Length -> py_codec:decode(Codec, Bin);
		Other -> error({shm_read, Other})
	end.

%% binary_to_term copies every binary it makes (a 64 MiB one in slices, yielding between them: about
%% twice the time of the pread that read it). A bulk reply is mostly a few big binaries in a small term,
%% so that shape is read here with each binary of 64 bytes or more a sub-binary of the body just read
%% (no copy; the body is the term's anyway). Anything else (more than ?FAST_NODES terms, other tags)
%% falls back to binary_to_term(_, [safe]), which also reports what is malformed.
-define(FAST_NODES, 4096).
etf_decode(<<131, Rest/binary>> = Bin) ->
	try etf(Rest, ?FAST_NODES) of
		{Term, <<>>, _} -> Term;
		_ -> binary_to_term(Bin, [safe])
	catch
		throw:fallback -> binary_to_term(Bin, [safe]);
		error:_ -> binary_to_term(Bin, [safe])
	end;
etf_decode(Bin) ->
	binary_to_term(Bin, [safe]).

etf(_, 0) -> throw(fallback);
etf(<<109, N:32, B:N/binary, R/binary>>, Left) when N >= 64 -> {B, R, Left - 1};
etf(<<109, N:32, B:N/binary, R/binary>>, Left) -> {binary:copy(B), R, Left - 1};
etf(<<97, I, R/binary>>, Left) -> {I, R, Left - 1};
etf(<<98, I:32/signed, R/binary>>, Left) -> {I, R, Left - 1};
etf(<<70, F:64/float, R/binary>>, Left) -> {F, R, Left - 1};
etf(<<106, R/binary>>, Left) -> {[], R, Left - 1};
etf(<<119, N, A:N/binary, R/binary>>, Left) -> {binary_to_existing_atom(A, utf8), R, Left - 1};
etf(<<118, N:16, A:N/binary, R/binary>>, Left) -> {binary_to_existing_atom(A, utf8), R, Left - 1};
etf(<<104, N, R/binary>>, Left) -> etf_tuple(N, R, Left - 1, []);
etf(<<105, N:32, R/binary>>, Left) -> etf_tuple(N, R, Left - 1, []);
etf(<<108, N:32, R/binary>>, Left) -> etf_list(N, R, Left - 1, []);
etf(<<116, N:32, R/binary>>, Left) -> etf_map(N, R, Left - 1, []);
etf(_, _) -> throw(fallback).

etf_tuple(0, R, Left, Acc) -> {list_to_tuple(lists:reverse(Acc)), R, Left};
etf_tuple(N, R, Left, Acc) ->
	{E, R1, Left1} = etf(R, Left),
	etf_tuple(N - 1, R1, Left1, [E | Acc]).

%% Proper lists only (the tail must be NIL), as binary_to_term would give them.
etf_list(0, <<106, R/binary>>, Left, Acc) -> {lists:reverse(Acc), R, Left};
etf_list(0, _, _, _) -> throw(fallback);
etf_list(N, R, Left, Acc) ->
	{E, R1, Left1} = etf(R, Left),
	etf_list(N - 1, R1, Left1, [E | Acc]).

etf_map(0, R, Left, Acc) -> {maps:from_list(Acc), R, Left};
etf_map(N, R, Left, Acc) ->
	{K, R1, Left1} = etf(R, Left),
	{V, R2, Left2} = etf(R1, Left1),
	etf_map(N - 1, R2, Left2, [{K, V} | Acc]).

%% For the owner, at a final frame nobody waits for: the request's held region (a caller that timed
%% out) is free now, and a reply region it came in is handed back. Returns the body to log.
-spec orphan_final(pos_integer(), binary() | {py_shm, binary()}, port() | undefined, py_codec:codec()) -> binary().
orphan_final(Id, Body, Port, Codec) ->
	_ = case ets:take(py_shm_held, Id) of
		[{_, Held, _, _}] -> release(Held);
		[] -> ok
	end,
	case Body of
		{py_shm, <<K:32, _/binary>>} ->
			_ = catch port_command(Port, release_frame(Codec, K)),
			<<"(a body in shared memory)">>;
		{py_shm, _} ->
			<<"(a malformed shared-memory descriptor)">>;
		_ ->
			Body
	end.

%% A callback or stream_chunk in a reply region for a request nobody waits for (spawned by the owner,
%% which does not read bodies): read (so the region is handed back) and, for a callback, answered with
%% the error the owner gives any orphan callback.
-spec orphan(non_neg_integer(), non_neg_integer(), pos_integer(), {py_shm, binary()}, port(), py_codec:codec())
	-> ok.
orphan(Kind, Ctx, _Id, {py_shm, Desc}, Port, Codec) ->
	case catch read_body(Codec, Port, Desc) of
		{CbId, _, _} when Kind =:= ?CALLBACK ->
			Reply = {error, <<"error">>, <<"the Erlang caller of this request stopped waiting (timeout)">>},
			_ = catch port_command(Port, py_codec:frame(callback_reply, Ctx, CbId, Codec, Reply)),
			ok;
		_ ->
			ok
	end.

%% The directory of the VM with os pid OsPid under Base.
-spec vm_dir(file:filename(), string()) -> file:filename().
vm_dir(Base, OsPid) ->
	filename:join(Base, ?DIR_PREFIX ++ OsPid).

%% Removes the directories under Base of VMs that no longer run (a VM killed with -9 cannot clean up
%% after itself). A directory of another user cannot be removed, and is left alone.
-spec clean_stale(file:filename()) -> ok.
clean_stale(Base) ->
	Me = os:getpid(),
	_ = [remove_dir(Dir) || ?DIR_PREFIX ++ Pid <- list_dir(Base), Pid =/= Me, is_dead(Pid),
		Dir <- [filename:join(Base, ?DIR_PREFIX ++ Pid)], ours(Dir)],
	ok.

%% The atoms of §3.12 the port may write (binary_to_term(_, [safe]) needs them to exist).
-spec protocol_atoms() -> [atom()].
protocol_atoms() ->
	[bad_shm].

%% Request regions of port OsPid free in the pool (tests).
-spec free_regions(non_neg_integer()) -> non_neg_integer().
free_regions(OsPid) ->
	length(ets:match(py_shm_free, {{OsPid, '$1'}})).

%% Internal.

%% shm_release (kind 24, ctx 0, id 0): body the region.
release_frame(Codec, K) ->
	[<<?SHM_RELEASE, 0, 0:16, 0:32, 0:64>> | py_codec:encode(Codec, K)].

default_base() ->
	case filelib:is_dir("/dev/shm") of
		true -> "/dev/shm";
		false -> case os:getenv("TMPDIR") of false -> "/tmp"; T -> T end
	end.

%% 0700 before anything goes in: nobody else may even look inside.
make_private_dir(Dir) ->
	case file:make_dir(Dir) of
		ok ->
			file:change_mode(Dir, 8#700);
		{error, eexist} ->
			%% Left by an earlier VM with our pid: reused only if it is a real directory of ours (in a
			%% shared /dev/shm anybody may have put a symlink or their own directory under that name).
			case ours(Dir) of
				true ->
					ok = file:change_mode(Dir, 8#700),
					_ = [file:delete(filename:join(Dir, F)) || F <- list_dir(Dir)],
					ok;
				false ->
					{error, {not_ours, Dir}}
			end;
		Error ->
			Error
	end.

%% A directory (not a symlink to one) owned by this OS user.
ours(Dir) ->
	case {file:read_link_info(Dir), my_uid()} of
		{{ok, #file_info{type = directory, uid = Uid}}, Uid} -> true;
		_ -> false
	end.

my_uid() ->
	case file:read_file("/proc/self/status") of
		{ok, Status} ->
			case re:run(Status, "^Uid:\\s+(\\d+)", [multiline, {capture, all_but_first, list}]) of
				{match, [Uid]} -> list_to_integer(Uid);
				nomatch -> undefined
			end;
		{error, _} ->
			undefined
	end.

is_dead(Pid) ->
	lists:all(fun(C) -> C >= $0 andalso C =< $9 end, Pid) andalso Pid =/= []
		andalso not filelib:is_dir("/proc/" ++ Pid).

remove_dir(Dir) ->
	_ = [file:delete(filename:join(Dir, F)) || F <- list_dir(Dir)],
	_ = file:del_dir(Dir),
	ok.

list_dir(Dir) ->
	case file:list_dir(Dir) of
		{ok, Names} -> Names;
		{error, _} -> []
	end.

path(#{dir := Dir}, OsPid, Dir1, K) ->
	filename:join(Dir, lists:flatten(["p", integer_to_list(OsPid), ".", atom_to_list(Dir1), integer_to_list(K)])).

port_pid(Port) ->
	case erlang:port_info(Port, os_pid) of
		{os_pid, P} -> P;
		undefined -> undefined
	end.

%% The body as the codec writes it. ETF: the big binaries are referenced, not copied (the pwrite is
%% their one copy).
encode(etf, Term) -> erlang:term_to_iovec(Term, [{minor_version, 2}]);
encode(msgpack, Term) -> py_msgpack:encode(Term).

desc(K, Offset, Length) ->
	<<K:32, Offset:64, Length:64>>.

%% Takes a free region of port OsPid and writes Enc at its start: {ok, K}, or none (the pool is empty,
%% or the file is gone: the port just died).
%%
%% The region is registered under the request id (py_shm_held: {Id, Held, Pid, writing | sent}) as
%% soon as it is taken, so it is never lost: while `writing' it is only this process's (one killed
%% meanwhile leaves it to reclaim/1: the port never heard of it); once `sent' (set before the frame
%% goes out) whoever ends the request takes it back, exactly once: the caller at its final frame
%% (done/2), or the owner at a late one (orphan_final/4).
%% Key(K) is the entry's key: the request id, or {callback, OsPid, K} for a callback reply.
write(C, Port, OsPid, Key, Enc, Size) ->
	case take(OsPid) of
		none ->
			none;
		K ->
			Held = {OsPid, K, Size},
			Id = Key(K),
			true = ets:insert(py_shm_held, {Id, Held, self(), writing}),
			case with_cached(Port, path(C, OsPid, e, K), [read, write], fun(Fd) -> file:pwrite(Fd, 0, Enc) end) of
				ok ->
					true = ets:update_element(py_shm_held, Id, {4, sent}),
					{ok, K};
				_ ->
					true = ets:delete(py_shm_held, Id),
					release(Held),
					none
			end
	end.

%% Request regions of port OsPid taken by a process that died before it sent its frame: back to the
%% pool (the port never read them). Run when the pool is empty, and by tests. Bounded by the regions.
-spec reclaim(non_neg_integer()) -> non_neg_integer().
reclaim(OsPid) ->
	Dead = [Id || {Id, _, Pid, _} <- ets:match_object(py_shm_held, {'_', {OsPid, '_', '_'}, '_', writing}),
		not is_process_alive(Pid)],
	length([release(Held) || Id <- Dead, {_, Held, _, writing} <- ets:take(py_shm_held, Id)]).

%% The first free region of OsPid, taken atomically (ets:take: one caller gets it); when there is none,
%% those of callers that died while writing come back first.
take(OsPid) ->
	case take1(OsPid) of
		none ->
			case reclaim(OsPid) of
				0 -> none;
				_ -> take1(OsPid)
			end;
		K ->
			K
	end.

take1(OsPid) ->
	case ets:next(py_shm_free, {OsPid, -1}) of
		{OsPid, K} = Key ->
			case ets:take(py_shm_free, Key) of
				[_] -> K;
				[] -> take1(OsPid)
			end;
		_ ->
			none
	end.

%% Each file operation of a raw file is a trip to a dirty I/O scheduler (tens of microseconds; open,
%% write, close, open, read, close cost about 250 us a round trip here): a process keeps the region
%% files it used open, in its dictionary, at most shm_fd_cache of them (default 8: both directions of
%% one port with 4 regions; the oldest is closed; 0: open and close every time), keyed by the port
%% too, so a descriptor never outlives its port's files (a new port process is a new port() even if
%% an OS pid comes again). They close with the process: many long-lived processes that each moved a
%% bulk body hold that many descriptors (lower shm_fd_cache if that matters).
-define(FD_CACHE, py_shm_fds).
with_cached(Port, Path, Modes, Fun) ->
	case config() of
		#{fd_cache := Max} when Max > 0 -> with_cached(Port, Path, Modes, Fun, Max);
		_ -> with_file(Path, Modes, Fun)
	end.

with_cached(Port, Path, Modes, Fun, Max) ->
	%% Only this process's own entries: a callback helper or spawn_call process starts with a copy of
	%% its caller's dictionary, whose descriptors it may not use.
	Me = self(),
	Cache = case get(?FD_CACHE) of {Me, C} -> C; _ -> [] end,
	Key = {Port, Path, Modes},
	case lists:keyfind(Key, 1, Cache) of
		{_, Fd} ->
			case Fun(Fd) of
				{error, _} = Error -> ok = forget_fd(Key), Error;
				Result -> Result
			end;
		false ->
			case file:open(Path, [raw, binary | Modes]) of
				{ok, Fd} ->
					Keep = lists:sublist(Cache, Max - 1),
					_ = [file:close(F) || {_, F} <- lists:nthtail(length(Keep), Cache)],
					_ = put(?FD_CACHE, {Me, [{Key, Fd} | Keep]}),
					Fun(Fd);
				Error ->
					Error
			end
	end.

forget_fd(Key) ->
	{Me, Cache} = get(?FD_CACHE),
	{value, {_, Fd}, Rest} = lists:keytake(Key, 1, Cache),
	_ = file:close(Fd),
	_ = put(?FD_CACHE, {Me, Rest}),
	ok.

with_file(Path, Modes, Fun) ->
	case file:open(Path, [raw, binary | Modes]) of
		{ok, Fd} ->
			try Fun(Fd) after file:close(Fd) end;
		Error ->
			Error
	end.
