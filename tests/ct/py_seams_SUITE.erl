%% Review (rv2) of the places where the opsa, opsb, bulk, modes and aio branches met: each case is a
%% behaviour that only breaks when two of those features are used together.
-module(py_seams_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1]).
-export([big_task_result_through_pipe/1]).

all() ->
	[big_task_result_through_pipe].

init_per_suite(Config) ->
	Base = filename:join(?config(priv_dir, Config), "shm"),
	ok = filelib:ensure_path(Base),
	%% Shared memory on, with a low threshold so that a modest body takes a region.
	ok = py_ct_helper:start_app([{num_ports, 1}, {contexts_per_port, 2}, {shm_dir, Base},
		{shm_threshold, 64 bsl 10}, {shm_regions, 2}]),
	Config.

end_per_suite(_Config) ->
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
