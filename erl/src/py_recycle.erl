%% Recycling a port (opsb): after `max_requests` requests, or once its resident memory passes `max_rss`
%% bytes (checked every `rss_check_ms`), py_port condemns it (no new work goes there; queued requests
%% come back with requeue and run elsewhere, PROTOCOL.md §3.7), waits for the requests in flight to
%% finish (at most `recycle_drain_ms`), then kills it and starts a fresh OS process at once. Pure
%% helpers; the state machine is py_port's.
-module(py_recycle).

-export([config/0]).
-export([rss/1]).
-export([due/2]).

-type config() :: #{max_requests := pos_integer() | infinity, max_rss := pos_integer() | infinity,
	rss_check_ms := pos_integer(), drain_ms := non_neg_integer()}.
-export_type([config/0]).

%% Read at every start of a port OS process.
-spec config() -> config().
config() ->
	Env = fun(K, D) -> application:get_env(erlang_python, K, D) end,
	#{max_requests => Env(max_requests, infinity),
	  max_rss => Env(max_rss, infinity),
	  rss_check_ms => Env(rss_check_ms, 1000),
	  drain_ms => Env(recycle_drain_ms, 30000)}.

%% Whether Served requests reach the limit.
-spec due(non_neg_integer(), config()) -> boolean().
due(Served, #{max_requests := Max}) ->
	is_integer(Max) andalso Served >= Max.

%% The resident set size of OS process OsPid in bytes (VmRSS of /proc/PID/status), or undefined.
-spec rss(non_neg_integer() | undefined) -> non_neg_integer() | undefined.
rss(undefined) ->
	undefined;
rss(OsPid) ->
	case file:read_file("/proc/" ++ integer_to_list(OsPid) ++ "/status") of
		{ok, Status} ->
			case re:run(Status, <<"VmRSS:\\s+(\\d+) kB">>, [{capture, all_but_first, binary}]) of
				{match, [Kb]} -> binary_to_integer(Kb) * 1024;
				nomatch -> undefined
			end;
		{error, _} ->
			undefined
	end.
