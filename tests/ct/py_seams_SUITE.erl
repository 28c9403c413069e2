%% Review (rv2) of the places where the opsa, opsb, bulk, modes and aio branches met: each case is a
%% behaviour that only breaks when two of those features are used together.
-module(py_seams_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_testcase/2, end_per_testcase/2]).
-export([big_task_result_through_pipe/1, recording_of_shm_bodies_replays/1, own_ports_pool_started_twice/1,
	owner_death_cancels_after_port_restart/1, own_ports_slots_reused/1]).

all() ->
	[big_task_result_through_pipe, recording_of_shm_bodies_replays, own_ports_pool_started_twice,
	 owner_death_cancels_after_port_restart, own_ports_slots_reused].

init_per_testcase(Case, Config) ->
	Base = filename:join(?config(priv_dir, Config), "shm"),
	ok = filelib:ensure_path(Base),
	Rec = filename:join(?config(priv_dir, Config), "rec"),
	ok = filelib:ensure_path(Rec),
	Extra = case Case of
		recording_of_shm_bodies_replays -> [{record, #{dir => Rec, max_bytes => 64 bsl 20}}];
		_ -> []
	end,
	%% Shared memory on, with a low threshold so that a modest body takes a region.
	ok = py_ct_helper:start_app([{num_ports, 1}, {contexts_per_port, 2}, {shm_dir, Base},
		{shm_threshold, 64 bsl 10}, {shm_regions, 2}] ++ Extra),
	Config.

end_per_testcase(_, _Config) ->
	py_ct_helper:stop_app().

%% aio x bulk: a task's outcome is its own final `result` frame (ctx 0), which the owner routes raw to
%% the loop's worker. A body over the shm threshold must not go through a reply region: the worker
%% cannot read it (it has no port to release the region to), so the result was lost (the caller timed
%% out) and the region stayed in use for the port's life. Several in a row: more than the regions.
big_task_result_through_pipe(_) ->
	ok = py:exec(<<"import asyncio\nasync def big_rv2(n):\n    await asyncio.sleep(0)\n    return b'x' * n">>),
	N = 256 bsl 10,
	[begin
		{ok, Bin} = py_event_loop:run('__main__', big_rv2, [N], #{timeout => 10000}),
		?assertEqual(N, byte_size(Bin))
	 end || _ <- lists:seq(1, 4)],
	%% The ordinary path still uses the regions (and gives them back).
	{ok, Bin2} = py:eval(<<"b'y' * n">>, #{n => N}),
	?assertEqual(N, byte_size(Bin2)),
	#{replies := Replies} = py_shm:stats(),
	?assert(Replies >= 1),
	ok = py_ct_helper:eventually(fun() -> ets:info(py_inflight, size) =:= 0 end, 5000).

%% opsb x bulk: a recording keeps every body inline (PROTOCOL.md §3.12, record and replay), also a bytes
%% result the port wrote straight into a reply region (bulk.cpp), which Output::write sees already as a
%% descriptor: that one was recorded as a descriptor, and replay refused the whole recording. Replay
%% then runs without shared memory (its options are not passed on) and every frame matches.
recording_of_shm_bodies_replays(_) ->
	#{generation := Gen} = py_port:info(1),
	File = py_record:file(1, Gen),
	N = 256 bsl 10,
	{ok, Bytes} = py:eval(<<"b'b' * n">>, #{n => N}),        %% bytes: straight into a region
	?assertEqual(N, byte_size(Bytes)),
	{ok, Str} = py:eval(<<"'s' * n">>, #{n => N}),           %% str: diverted as Output writes it
	?assertEqual(N, byte_size(Str)),
	{ok, N} = py:call(builtins, len, [binary:copy(<<"r">>, N)]),  %% a request body in a region
	#{requests := Rq, replies := Rp} = py_shm:stats(),
	?assert(Rq >= 1 andalso Rp >= 2),
	py_ct_helper:stop_app(),
	{0, Dump} = port_tool(["dump", File]),
	nomatch = binary:match(Dump, <<"shm(flag 0x02)">>),
	{Status, Replay} = port_tool(["replay", File]),
	ct:log("~ts", [Replay]),
	?assertEqual(0, Status),
	?assertNotEqual(nomatch, binary:match(Replay, <<"replay: all frames match">>)).

port_tool(Args) ->
	P = open_port({spawn_executable, py_record:executable()},
		[{args, Args}, exit_status, binary, stderr_to_stdout, use_stdio]),
	collect(P, <<>>).

collect(P, Acc) ->
	receive
		{P, {data, D}} -> collect(P, <<Acc/binary, D/binary>>);
		{P, {exit_status, S}} -> {S, Acc}
	after 120000 ->
		error({port_tool_timeout, Acc})
	end.

%% Two processes start the same pool with ports of its own at once (py_pool_ports, merged from two
%% branches): one gets it, the other {error, {already_started, Pool}}, and the loser must not take the
%% winner's slots away (it deleted the pool's row on its way out: the pool lived on, but its slots were
%% gone from py:stats/0, and a member restarted after that would find no port of its pool).
own_ports_pool_started_twice(_) ->
	Self = self(),
	lists:foreach(fun(I) ->
		Pool = list_to_atom("rv2_twice_" ++ integer_to_list(I)),
		Go = make_ref(),
		Pids = [spawn_link(fun() ->
			receive Go -> ok after 5000 -> ok end,
			Self ! {self(), py_context_router:start_pool(Pool, 1, #{ports => 1})}
		end) || _ <- [1, 2]],
		_ = [P ! Go || P <- Pids],
		Results = [receive {P, R} -> R after 60000 -> ct:fail({no_start_result, P}) end || P <- Pids],
		ct:log("~p: ~p", [Pool, Results]),
		[{ok, [Member]}] = [R || {ok, _} = R <- Results],
		[{error, {already_started, Pool}}] = [R || {error, _} = R <- Results],
		[Slot] = py_pool_ports:slots(Pool),
		?assert(lists:member(Slot, py_pool_ports:all_slots())),
		{ok, 2} = py:eval(Member, <<"1 + 1">>),
		ok = py_context_router:stop_pool(Pool),
		[] = py_pool_ports:slots(Pool)
	end, lists:seq(1, 3)).

%% aio: a caller's tasks are cancelled when it dies, because the port drops its environment (the
%% owner monitors every pid with one). A caller that already had an environment before its first task
%% (py:exec), on a port that restarted since (a new OS process: new environments, new loops), is
%% still watched: its task is cancelled when it dies.
owner_death_cancels_after_port_restart(_) ->
	_ = py:state_remove(rv2_cancelled),
	Parent = self(),
	{Pid, MRef} = spawn_monitor(fun() ->
		{ok, 4.0} = py_event_loop:run(math, sqrt, [16.0]),
		Parent ! {self(), first},
		receive go -> ok after 10000 -> exit(no_go) end,
		%% In this process's own environment (where '__main__' tasks are looked up).
		ok = py:exec(<<"async def hold_rv2():\n    import asyncio, erlang\n    try:\n        await asyncio.sleep(30)\n"
		"    except asyncio.CancelledError:\n        erlang.state_set('rv2_cancelled', True)\n        raise">>),
		_ = py_event_loop:create_task('__main__', hold_rv2, []),
		Parent ! {self(), submitted},
		receive stop -> ok end
	end),
	receive {Pid, first} -> ok after 10000 -> ct:fail(no_first) end,
	OsPid = py_ct_helper:os_pid(1),
	_ = os:cmd("kill -9 " ++ integer_to_list(OsPid)),
	ok = py_ct_helper:eventually(fun() ->
		case py_port:info(1) of #{status := up, os_pid := New} -> New =/= OsPid; _ -> false end
	end, 20000),
	Pid ! go,
	receive {Pid, submitted} -> ok after 10000 -> ct:fail(not_submitted) end,
	ok = py_ct_helper:eventually(fun() -> tasks_in_flight() =:= 1 end, 5000),
	exit(Pid, kill),
	receive {'DOWN', MRef, process, Pid, _} -> ok after 5000 -> ct:fail(no_down) end,
	ok = py_ct_helper:eventually(fun() -> py:state_fetch(<<"rv2_cancelled">>) =:= {ok, true} end, 5000),
	ok = py_ct_helper:eventually(fun() -> tasks_in_flight() =:= 0 end, 5000).

tasks_in_flight() ->
	{ok, #{<<"tasks">> := N}} = py:call(<<"erlang._tasks">>, stats, []),
	N.

%% A stopped pool's slots are reused by the next pool with ports of its own, so a node that starts and
%% stops such pools for ever keeps a bounded set of slot numbers (each has a persistent_term key, stats
%% counters and a ctx-id row); a reused slot's counters start from zero.
own_ports_slots_reused(_) ->
	{ok, _} = py_context_router:start_pool(reuse_a, 2, #{ports => 2}),
	SlotsA = py_pool_ports:slots(reuse_a),
	2 = length(SlotsA),
	[First | _] = lists:sort(SlotsA),
	ok = py_context_router:stop_pool(reuse_a),
	Cycle = fun(I) ->
		Pool = list_to_atom("reuse_" ++ integer_to_list(I)),
		{ok, [Member]} = py_context_router:start_pool(Pool, 1, #{ports => 1}),
		[Slot] = py_pool_ports:slots(Pool),
		#{requests := 0} = py_stats:slot_stats(Slot),
		{ok, 2} = py:eval(Member, <<"1 + 1">>),
		#{requests := 1} = py_stats:slot_stats(Slot),
		ok = py_context_router:stop_pool(Pool),
		Slot
	end,
	Used = [Cycle(I) || I <- lists:seq(1, 5)],
	[First, First, First, First, First] = Used,
	%% Two at once: the other freed slot and then a new number.
	{ok, _} = py_context_router:start_pool(reuse_b, 1, #{ports => 1}),
	{ok, _} = py_context_router:start_pool(reuse_c, 2, #{ports => 2}),
	Together = lists:sort(py_pool_ports:slots(reuse_b) ++ py_pool_ports:slots(reuse_c)),
	3 = length(Together),
	true = lists:all(fun(S) -> lists:member(S, Together) end, SlotsA),
	ok = py_context_router:stop_pool(reuse_b),
	ok = py_context_router:stop_pool(reuse_c),
	AllSlots = py_pool_ports:all_slots(),
	?assertEqual(AllSlots, lists:usort(AllSlots)).
