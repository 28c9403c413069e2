%% Per-port and per-pool request counters and latency histograms, and the telemetry of requests and
%% ports.
%%
%% No process: each group (a port slot, or a pool) is one `counters' array (write_concurrency) found
%% in persistent_term, bumped by the calling process as its request ends. Layout: (unused), errors
%% (a request that returned {error, _} other than a timeout), timeouts, restarts (ports only),
%% log_dropped, spans_dropped (what the port reported dropping, py_ops_sink), then ?BUCKETS latency
%% buckets: bucket I holds latencies L (µs) with floor(4 * log2(L + 1)) = I, so each bucket is about
%% 19% wide and the percentiles are read from the counts (the upper edge of the bucket that holds the
%% rank). A group's array is made on its first use (an ets:insert_new in py_stats decides the race,
%% persistent_term caches the winner); groups are the slots and the pools, a fixed handful.
-module(py_stats).

%% API.
-export([init/0]).
-export([request_start/2]).
-export([request_stop/5]).
-export([count_slot/3]).
-export([port_up/4]).
-export([port_exit/4]).
-export([port_restart/2]).
-export([slot_stats/1]).
-export([reset_slot/1]).
-export([pool_stats/0]).
-export([percentile/2]).
-export([bucket/1]).

-define(UNUSED, 1).  %% was requests: now the sum of the buckets
-define(ERRORS, 2).
-define(TIMEOUTS, 3).
-define(RESTARTS, 4).
-define(LOG_DROPPED, 5).
-define(SPANS_DROPPED, 6).
-define(FIRST_BUCKET, 7).
-define(BUCKETS, 124).  %% 4 per octave up to 2^31 µs (about 36 minutes); longer goes in the last
-define(SIZE, (?FIRST_BUCKET + ?BUCKETS - 1)).

%% API.

%% Called by erlang_python_sup as the application starts: the counters start from zero (the groups of a
%% previous run are forgotten) and the group table belongs to the supervisor.
-spec init() -> ok.
init() ->
	_ = [persistent_term:erase(K) || {{?MODULE, _} = K, _} <- persistent_term:get()],
	py_stats = ets:new(py_stats, [set, public, named_table, {read_concurrency, true}]),
	ok.

%% Before a request is sent: its start time (native units) and whether its events go anywhere (asked
%% once per request), and the start event.
-spec request_start(atom(), pos_integer()) -> {integer(), boolean()}.
request_start(Kind, Slot) ->
	T = erlang:monotonic_time(),
	%% Nothing is built for an event that goes nowhere.
	On = py_telemetry:enabled(),
	_ = On andalso py_telemetry:execute([erlang_python, request, start],
		#{monotonic_time => T, system_time => erlang:system_time()}, #{kind => Kind, slot => Slot}),
	{T, On}.

%% After it: counts it in its slot's and its pool's groups, sends the stop (or exception) event, and
%% returns Result. Chooser: the context pid the request went to, or anything else (the default pool).
-spec request_stop({integer(), boolean()}, atom(), pos_integer(), term(), Result) -> Result.
request_stop({T0, On}, Kind, Slot, Chooser, Result) ->
	T1 = erlang:monotonic_time(),
	Duration = T1 - T0,
	Us = erlang:convert_time_unit(Duration, native, microsecond),
	Pool = pool(Chooser),
	Outcome = outcome(Result),
	Bucket = ?FIRST_BUCKET + bucket(Us),
	ok = bump(group({slot, Slot}), Outcome, Bucket),
	ok = bump(group({pool, Pool}), Outcome, Bucket),
	_ = On andalso stop_event(Result, Duration, T1, #{kind => Kind, slot => Slot, pool => Pool}),
	Result.

stop_event({error, Reason}, Duration, T1, Meta) ->
	py_telemetry:execute([erlang_python, request, exception], #{duration => Duration, monotonic_time => T1},
		Meta#{reason => Reason});
stop_event(_, Duration, T1, Meta) ->
	py_telemetry:execute([erlang_python, request, stop], #{duration => Duration, monotonic_time => T1}, Meta).

%% Adds N to counter log_dropped or spans_dropped of Slot.
-spec count_slot(pos_integer(), log_dropped | spans_dropped, non_neg_integer()) -> ok.
count_slot(Slot, log_dropped, N) -> counters:add(group({slot, Slot}), ?LOG_DROPPED, N);
count_slot(Slot, spans_dropped, N) -> counters:add(group({slot, Slot}), ?SPANS_DROPPED, N).

%% py_port: the OS process of Slot is up (StartedAtMs: when it was spawned, monotonic ms).
-spec port_up(pos_integer(), non_neg_integer() | undefined, non_neg_integer(), integer()) -> ok.
port_up(Slot, OsPid, Generation, StartedAtMs) ->
	Ms = erlang:monotonic_time(millisecond) - StartedAtMs,
	py_telemetry:execute([erlang_python, port, start],
		#{duration => erlang:convert_time_unit(Ms, millisecond, native)},
		#{slot => Slot, os_pid => OsPid, generation => Generation}).

%% py_port: the OS process of Slot died (Reason: py_port's exit_reason()).
-spec port_exit(pos_integer(), non_neg_integer() | undefined, non_neg_integer(), map()) -> ok.
port_exit(Slot, OsPid, UptimeMs, Reason) ->
	py_telemetry:execute([erlang_python, port, exit], #{uptime_ms => UptimeMs},
		(maps:with([exit_status, signal, reason], Reason))#{slot => Slot, os_pid => OsPid}).

%% py_port: Slot will be started again in DelayMs.
-spec port_restart(pos_integer(), non_neg_integer()) -> ok.
port_restart(Slot, DelayMs) ->
	counters:add(group({slot, Slot}), ?RESTARTS, 1),
	py_telemetry:execute([erlang_python, port, restart], #{delay_ms => DelayMs}, #{slot => Slot}).

%% The counters of port slot Slot.
-spec slot_stats(pos_integer()) -> map().
slot_stats(Slot) ->
	(summary(group({slot, Slot})))#{restarts => counters:get(group({slot, Slot}), ?RESTARTS),
		log_dropped => counters:get(group({slot, Slot}), ?LOG_DROPPED),
		spans_dropped => counters:get(group({slot, Slot}), ?SPANS_DROPPED)}.

%% Zeroes the counters of Slot (py_pool_ports: a stopped pool's slot given to a new pool).
-spec reset_slot(pos_integer()) -> ok.
reset_slot(Slot) ->
	Ref = group({slot, Slot}),
	lists:foreach(fun(I) -> counters:put(Ref, I, 0) end, lists:seq(1, ?SIZE)).

%% The counters of every pool that has served a request: default (py:call/eval/exec without a
%% context, and the default pool's contexts), each named pool, and explicit (contexts of no pool).
-spec pool_stats() -> #{atom() => map()}.
pool_stats() ->
	maps:from_list([{Pool, summary(Ref)} || {{pool, Pool}, Ref} <- ets:tab2list(py_stats)]).

%% The latency (µs) below which fraction P of the requests counted in Buckets (a tuple) fall: the upper
%% edge of the bucket that holds that rank; 0 when there are none.
-spec percentile(float(), tuple()) -> non_neg_integer().
percentile(P, Buckets) ->
	Total = lists:sum(tuple_to_list(Buckets)),
	case Total of
		0 -> 0;
		_ -> rank(max(1, ceil(P * Total)), Buckets, 1, 0)
	end.

%% The bucket of a latency in µs (0-based).
-spec bucket(non_neg_integer()) -> non_neg_integer().
bucket(Us) ->
	min(?BUCKETS - 1, trunc(4 * math:log2(Us + 1))).

%% Internal.

outcome(ok) -> ok;
outcome({ok, _}) -> ok;
outcome({error, timeout}) -> timeout;
outcome({error, _}) -> error;
outcome(_) -> ok.

%% requests is the sum of the buckets (one counter add per request, not two).
bump(Ref, Outcome, Bucket) ->
	_ = case Outcome of
		ok -> ok;
		error -> counters:add(Ref, ?ERRORS, 1);
		timeout -> counters:add(Ref, ?TIMEOUTS, 1)
	end,
	counters:add(Ref, Bucket, 1).

pool(Chooser) when is_pid(Chooser) ->
	try ets:lookup_element(py_contexts, Chooser, 5) of
		undefined -> explicit;
		Pool -> Pool
	catch error:badarg -> explicit
	end;
pool(_) ->
	default.

group(Key) ->
	case persistent_term:get({?MODULE, Key}, undefined) of
		undefined -> new_group(Key);
		Ref -> Ref
	end.

new_group(Key) ->
	_ = ets:insert_new(py_stats, {Key, counters:new(?SIZE, [write_concurrency])}),
	[{_, Ref}] = ets:lookup(py_stats, Key),
	ok = persistent_term:put({?MODULE, Key}, Ref),
	Ref.

summary(Ref) ->
	Buckets = list_to_tuple([counters:get(Ref, I) || I <- lists:seq(?FIRST_BUCKET, ?SIZE)]),
	#{requests => lists:sum(tuple_to_list(Buckets)), errors => counters:get(Ref, ?ERRORS),
	  timeouts => counters:get(Ref, ?TIMEOUTS),
	  latency_us => #{p50 => percentile(0.5, Buckets), p99 => percentile(0.99, Buckets)}}.

rank(Want, Buckets, I, Seen) when I =< tuple_size(Buckets) ->
	Seen1 = Seen + element(I, Buckets),
	case Seen1 >= Want of
		true -> upper_edge(I - 1);
		false -> rank(Want, Buckets, I + 1, Seen1)
	end;
rank(_, Buckets, _, _) ->
	upper_edge(tuple_size(Buckets) - 1).

%% The largest latency (µs) of bucket I: L with 4 * log2(L + 1) < I + 1.
upper_edge(I) ->
	max(0, ceil(math:pow(2, (I + 1) / 4)) - 2).
