%% Memory caps and recycling (opsb): a port recycled after max_requests or above max_rss without
%% failing requests in flight; per-context memory_limit.
-module(py_limits_SUITE).
-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, end_per_testcase/2]).
-export([max_requests_recycles/1, recycle_keeps_requests_in_flight/1, max_rss_recycles/1,
	no_limits_no_recycling/1, context_memory_limit/1, small_objects_count/1, pool_memory_limit/1,
	memory_limit_errors/1, memory_limit_cost/1]).

all() ->
	[max_requests_recycles, recycle_keeps_requests_in_flight, max_rss_recycles, no_limits_no_recycling,
	 context_memory_limit, small_objects_count, pool_memory_limit, memory_limit_errors, memory_limit_cost].

end_per_testcase(_, _Config) ->
	py_ct_helper:stop_app(),
	ok.

%% On a free-threaded build CPython allocates through mimalloc, which the port's allocator wrapper does
%% not count: memory_limit is not enforced there (README "Interrupts, memory caps, recycling"; max_rss
%% is the backstop). The cases that expect an enforced limit are skipped on such a build.
unless_free_threaded(Checks) ->
	case [B || #{build := B} <- py:execution_info(), B =:= free_threaded] of
		[] -> Checks();
		_ -> {skip, "memory_limit is not enforced on a free-threaded build (mimalloc is not counted)"}
	end.

gen() ->
	case py_port:info(1) of
		#{status := up, generation := G} -> G;
		_ -> undefined
	end.

max_requests_recycles(_Config) ->
	ok = py_ct_helper:start_app([{num_ports, 1}, {max_requests, 10}]),
	G1 = gen(),
	OsPid1 = py_ct_helper:os_pid(1),
	[{ok, 2.0} = py:call(math, sqrt, [4]) || _ <- lists:seq(1, 25)],
	ok = py_ct_helper:eventually(fun() -> is_integer(gen()) andalso gen() >= G1 + 2 end, 10000),
	?assertNotEqual(OsPid1, py_ct_helper:os_pid(1)),
	%% A recycle is not a death of the port's own making: no back-off, no error.
	{ok, 2.0} = py:call(math, sqrt, [4]).

%% 100 callers, 20 requests each, on a port recycled every 50 requests: every request succeeds (the
%% ones in flight finish, the queued ones come back with requeue and run on the next OS process).
recycle_keeps_requests_in_flight(_Config) ->
	ok = py_ct_helper:start_app([{num_ports, 1}, {max_requests, 50}]),
	G1 = gen(),
	Self = self(),
	Pids = [spawn_link(fun() ->
		Rs = [py:eval(<<"erlang.sleep(0.001) or x * 2">>, #{x => N}) || N <- lists:seq(1, 20)],
		Self ! {self(), Rs}
	end) || _ <- lists:seq(1, 100)],
	Results = [receive {P, Rs} -> Rs after 120000 -> error(timeout) end || P <- Pids],
	Expected = [{ok, N * 2} || N <- lists:seq(1, 20)],
	[] = [Rs || Rs <- Results, Rs =/= Expected],
	?assert(gen() >= G1 + 10).

max_rss_recycles(_Config) ->
	ok = py_ct_helper:start_app([{num_ports, 1}, {max_rss, 200 bsl 20}, {rss_check_ms, 50}]),
	G1 = gen(),
	ok = py:exec(<<"keep = []">>),
	{ok, 2} = py:eval(<<"1 + 1">>),
	G1 = gen(),  %% well under the cap: not recycled
	%% A slow request in flight while the port passes its cap: it still gets its answer.
	Self = self(),
	spawn_link(fun() -> Self ! {slow, py:eval(<<"erlang.sleep(0.5) or 'slow done'">>, #{}, 10000)} end),
	timer:sleep(50),
	ok = py:exec(<<"keep.append(bytearray(300 * 2**20))">>),
	{ok, <<"slow done">>} = receive {slow, R} -> R after 20000 -> error(no_slow) end,
	ok = py_ct_helper:eventually(fun() -> is_integer(gen()) andalso gen() > G1 end, 10000),
	{ok, 3} = py:eval(<<"1 + 2">>),
	%% The fresh OS process is small again.
	Rss = py_recycle:rss(py_ct_helper:os_pid(1)),
	?assert(Rss < 200 bsl 20).

no_limits_no_recycling(_Config) ->
	ok = py_ct_helper:start_app([{num_ports, 1}]),
	G1 = gen(),
	[{ok, 2.0} = py:call(math, sqrt, [4]) || _ <- lists:seq(1, 200)],
	G1 = gen(),
	?assert(is_integer(py_recycle:rss(py_ct_helper:os_pid(1)))),
	undefined = py_recycle:rss(undefined).

%% The over-limit request gets {error, {memory_limit, _}}; the context, its neighbours and the port
%% live on.
context_memory_limit(_Config) ->
	ok = py_ct_helper:start_app([{num_ports, 1}]),
	unless_free_threaded(fun context_memory_limit_checks/0).

context_memory_limit_checks() ->
	OsPid = py_ct_helper:os_pid(1),
	{ok, Ctx} = py_context:new(#{memory_limit => 50 bsl 20}),
	{ok, Free} = py_context:new(#{}),
	{ok, 10485760} = py:eval(Ctx, <<"len(bytearray(10 * 2**20))">>),
	{error, {memory_limit, #{limit := 52428800, used := Used, requested := 104857601, message := Msg}}} =
		py:eval(Ctx, <<"len(bytearray(100 * 2**20))">>),
	?assert(Used < 50 bsl 20),
	<<"memory limit of 52428800 bytes reached", _/binary>> = Msg,
	{error, {memory_limit, #{requested := 80000000}}} = py:eval(Ctx, <<"len(list(range(10**7)))">>),
	%% Code that catches MemoryError goes on: only that allocation failed.
	ok = py:exec(Ctx, <<"try:\n    b = bytearray(100 * 2**20)\nexcept MemoryError:\n    b = 'refused'\n">>),
	{ok, <<"refused">>} = py:eval(Ctx, <<"b">>),
	{ok, 104857600} = py:eval(Free, <<"len(bytearray(100 * 2**20))">>),
	{ok, 2} = py:eval(Ctx, <<"1 + 1">>),
	OsPid = py_ct_helper:os_pid(1),
	%% Memory kept across requests counts: 3 x 20 MiB kept passes 50 MiB at the third.
	ok = py:exec(Ctx, <<"keep = []">>),
	ok = py:exec(Ctx, <<"keep.append(bytearray(20 * 2**20))">>),
	ok = py:exec(Ctx, <<"keep.append(bytearray(20 * 2**20))">>),
	{error, {memory_limit, _}} = py:exec(Ctx, <<"keep.append(bytearray(20 * 2**20))">>),
	%% Freed memory is given back to the count.
	ok = py:exec(Ctx, <<"keep.clear()">>),
	ok = py:exec(Ctx, <<"keep.append(bytearray(40 * 2**20))">>),
	ok = py_context:stop(Ctx),
	ok = py_context:stop(Free).

%% Small objects live in pymalloc's arenas, which are counted too.
small_objects_count(_Config) ->
	ok = py_ct_helper:start_app([{num_ports, 1}]),
	unless_free_threaded(fun small_objects_count_checks/0).

small_objects_count_checks() ->
	{ok, Ctx} = py_context:new(#{memory_limit => 20 bsl 20}),
	{error, {memory_limit, _}} = py:eval(Ctx, <<"len([str(i) for i in range(10**6)])">>),
	{ok, 1000} = py:eval(Ctx, <<"len([str(i) for i in range(1000)])">>),
	ok = py_context:stop(Ctx).

%% The app env memory_limit applies to every context of the pool.
pool_memory_limit(_Config) ->
	ok = py_ct_helper:start_app([{num_ports, 1}, {memory_limit, 30 bsl 20}]),
	unless_free_threaded(fun pool_memory_limit_checks/0).

pool_memory_limit_checks() ->
	{error, {memory_limit, #{limit := 31457280}}} = py:eval(<<"len(bytearray(40 * 2**20))">>),
	{ok, 10485760} = py:eval(<<"len(bytearray(10 * 2**20))">>),
	{ok, Ctx} = py_context:new(#{}),
	{error, {memory_limit, _}} = py:eval(Ctx, <<"len(bytearray(40 * 2**20))">>),
	%% A context's own limit replaces the pool's; infinity lifts it.
	{ok, Big} = py_context:new(#{memory_limit => 100 bsl 20}),
	{ok, 41943040} = py:eval(Big, <<"len(bytearray(40 * 2**20))">>),
	ok = py_mem_limit:set(Ctx, infinity),
	{ok, 41943040} = py:eval(Ctx, <<"len(bytearray(40 * 2**20))">>),
	ok = py_context:stop(Ctx),
	ok = py_context:stop(Big).

memory_limit_errors(_Config) ->
	ok = py_ct_helper:start_app([{num_ports, 1}]),
	{error, {bad_memory_limit, -1}} = py_context:new(#{memory_limit => -1}),
	{error, {bad_memory_limit, 0}} = py_context:new(#{memory_limit => 0}),
	{error, {bad_memory_limit, lots}} = py_context:new(#{memory_limit => lots}),
	{ok, Ctx} = py_context:new(#{memory_limit => infinity}),
	{ok, 104857600} = py:eval(Ctx, <<"len(bytearray(100 * 2**20))">>),
	{ok, _, CtxId} = py_port_admin:context_id(Ctx),
	{error, {protocol_error, bad_body, <<"memory_limit body must be a non-negative integer">>}} =
		py_port_admin:request(1, CtxId, 27, lots, 5000),
	{error, {protocol_error, unknown_context, _}} = py_port_admin:request(1, 999, 27, 0, 5000),
	ok = py_context:stop(Ctx),
	{error, {context_down, Ctx}} = py_mem_limit:set(Ctx, 1000),
	%% A MemoryError that no limit caused stays a MemoryError.
	%% (Raised, not provoked: a failed 2**62-byte allocation would leave an ASan warning in the
	%% sanitizer stage.)
	{error, {'MemoryError', "plain"}} = py:exec(<<"raise MemoryError('plain')">>),
	#{message := <<"x">>} = py_mem_limit:details(<<"x">>).

%% What a limit costs on a plain call (logged for the README; timing on a shared machine is noisy, so
%% the assertion is only that both run).
memory_limit_cost(_Config) ->
	ok = py_ct_helper:start_app([{num_ports, 1}]),
	{ok, Limited} = py_context:new(#{memory_limit => 1 bsl 30}),
	{ok, Plain} = py_context:new(#{}),
	N = 5000,
	Time = fun(Ctx) ->
		_ = [py:call(Ctx, math, sqrt, [16]) || _ <- lists:seq(1, 500)],
		{T, _} = timer:tc(fun() -> [{ok, 4.0} = py:call(Ctx, math, sqrt, [16]) || _ <- lists:seq(1, N)] end),
		T / N
	end,
	Runs = [{Time(Plain), Time(Limited)} || _ <- lists:seq(1, 3)],
	ct:log("plain call, us per call (no limit, limit): ~p", [Runs]),
	ok = py_context:stop(Limited),
	ok = py_context:stop(Plain).
