%% Memory caps and recycling (opsb): a port recycled after max_requests or above max_rss without
%% failing requests in flight; per-context memory_limit.
-module(py_limits_SUITE).
-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, end_per_testcase/2]).
-export([max_requests_recycles/1, recycle_keeps_requests_in_flight/1, max_rss_recycles/1,
	no_limits_no_recycling/1]).

all() ->
	[max_requests_recycles, recycle_keeps_requests_in_flight, max_rss_recycles, no_limits_no_recycling].

end_per_testcase(_, _Config) ->
	py_ct_helper:stop_app(),
	ok.

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
