%% A counting semaphore on the Python operations in flight: every py:call/eval/exec holds one slot
%% while it runs, and a call that finds every slot taken returns {error, {overloaded, Current, Max}}
%% at once instead of queueing (py:limited/1).
%%
%% Scope: the count, the limit, acquire/release, and making sure a process that dies cannot keep a
%% slot. No process is in the acquire/release path: both are plain ETS operations in the caller.
%%
%% How a slot is held: a row {{Pid, N}} in the ordered_set py_semaphore (N: the process's N-th slot
%% held at once, nested calls from callbacks take more). The count is the table's size. acquire
%% inserts its row first and then reads the size: if it is over the limit it deletes the row again
%% and fails. Any two acquirers see each other's row in at least one order, so at most Max succeed
%% together (a burst may refuse one more than necessary, never admit one too many).
%%
%% Why rows instead of a counter: a row names its owner, so a process killed while it holds a slot
%% (a `try ... after` does not run on kill) leaves a row the reaper (this module's gen_server, not in
%% the path) deletes when the process's monitor fires. A process asks the reaper to monitor it once,
%% with an asynchronous message, the first time it holds a slot; the reaper's monitors are bounded by
%% the live processes that ever held one.
-module(py_semaphore).
-behaviour(gen_server).

%% API.
-export([init/0]).
-export([acquire/1]).
-export([try_acquire/0]).
-export([run/1]).
-export([release/0]).
-export([current/0]).
-export([max_concurrent/0]).
-export([set_max_concurrent/1]).
-export([default_max/0]).
-export([start_link/0]).

%% gen_server.
-export([init/1]).
-export([handle_call/3]).
-export([handle_cast/2]).
-export([handle_info/2]).

-define(TAB, py_semaphore).
%% persistent_term key of the atomics that holds the limit (one put per init, reads are free).
-define(MAX_KEY, {?MODULE, max}).
%% Process dictionary: slots this process holds; the reaper that monitors it.
-define(HELD, py_semaphore_held).
-define(WATCHED, py_semaphore_watched).

%% The default limit. Not the reference docs' schedulers * 2 + 1: there a call occupies a dirty
%% scheduler, here it is a waiting Erlang process and a frame queued in a port that multiplexes many
%% requests, so the limit only bounds queued work (memory), and must not refuse ordinary concurrency
%% (100 concurrent callers on 2 cores).
-define(DEFAULT_MAX, 1024).

-define(BACKOFF_MIN_MS, 1).
-define(BACKOFF_MAX_MS, 50).

%% API.

%% Creates the table and sets the limit from the max_concurrent application env. Safe to call more
%% than once: an existing table is kept (with its slots). The table belongs to the caller (the
%% application's top supervisor).
-spec init() -> ok.
init() ->
	case ets:whereis(?TAB) of
		undefined ->
			_ = ets:new(?TAB, [ordered_set, public, named_table, {write_concurrency, true},
				%% A centralised size counter: the admission check reads it after each insert.
				{decentralized_counters, false}]),
			Max = application:get_env(erlang_python, max_concurrent, ?DEFAULT_MAX),
			ok = set_max_concurrent(Max);
		_ ->
			ok
	end.

%% Takes a slot, waiting with exponential backoff (1 ms doubling up to 50 ms) until one is free or
%% Timeout ms have passed.
-spec acquire(timeout()) -> ok | {error, max_concurrent}.
acquire(Timeout) when Timeout =:= infinity; is_integer(Timeout), Timeout >= 0 ->
	Deadline = case Timeout of
		infinity -> infinity;
		_ -> erlang:monotonic_time(millisecond) + Timeout
	end,
	acquire_loop(Deadline, ?BACKOFF_MIN_MS).

%% One attempt, no waiting: what py's call/eval/exec use. {overloaded, Current, Max}: Current slots
%% were held by others when it looked.
-spec try_acquire() -> ok | {overloaded, non_neg_integer(), pos_integer()} | not_started.
try_acquire() ->
	Self = self(),
	N = case get(?HELD) of
		undefined -> 1;
		Held -> Held + 1
	end,
	try
		_ = N =:= 1 andalso watch(Self),
		true = ets:insert(?TAB, {{Self, N}}),
		_ = put(?HELD, N),
		Size = ets:info(?TAB, size),
		Max = max_concurrent(),
		case Size =< Max of
			true ->
				ok;
			false ->
				true = ets:delete(?TAB, {Self, N}),
				_ = put(?HELD, N - 1),
				{overloaded, Size - 1, Max}
		end
	catch error:badarg ->
		%% No table: the application is not running.
		not_started
	end.

%% Runs Fun holding a slot, given back however Fun ends (a kill included: see the reaper); when no
%% slot is free, {error, {overloaded, Current, Max}} at once. The guard of py's call/eval/exec.
-spec run(fun(() -> Result)) -> Result | {error, {overloaded, non_neg_integer(), pos_integer()}}
	| {error, not_started}.
run(Fun) ->
	case try_acquire() of
		ok ->
			try Fun()
			after release()
			end;
		{overloaded, Current, Max} ->
			{error, {overloaded, Current, Max}};
		not_started ->
			{error, not_started}
	end.

%% Gives back the slot this process took last; ok (and nothing) if it holds none.
-spec release() -> ok.
release() ->
	case get(?HELD) of
		N when is_integer(N), N > 0 ->
			_ = put(?HELD, N - 1),
			_ = catch ets:delete(?TAB, {self(), N}),
			ok;
		_ ->
			ok
	end.

%% The slots held now (operations in flight).
-spec current() -> non_neg_integer().
current() ->
	case ets:info(?TAB, size) of
		undefined -> 0;
		Size -> Size
	end.

-spec max_concurrent() -> pos_integer().
max_concurrent() ->
	case persistent_term:get(?MAX_KEY, undefined) of
		undefined -> application:get_env(erlang_python, max_concurrent, ?DEFAULT_MAX);
		Ref -> atomics:get(Ref, 1)
	end.

%% Takes effect for the next acquire; slots already held are kept.
-spec set_max_concurrent(pos_integer()) -> ok.
set_max_concurrent(Max) when is_integer(Max), Max > 0 ->
	Ref = case persistent_term:get(?MAX_KEY, undefined) of
		undefined ->
			R = atomics:new(1, [{signed, false}]),
			ok = persistent_term:put(?MAX_KEY, R),
			R;
		R ->
			R
	end,
	atomics:put(Ref, 1, Max).

-spec default_max() -> pos_integer().
default_max() ->
	?DEFAULT_MAX.

%% The reaper.
-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
	gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% gen_server (the reaper: deletes the slots of processes that died holding them).

-spec init([]) -> {ok, #{pid() => reference()}}.
init([]) ->
	%% A reaper that restarts has lost its monitors: monitor every process that holds a slot now.
	Pids = lists:usort([Pid || {{Pid, _}} <- ets:tab2list(?TAB)]),
	{ok, lists:foldl(fun watch_pid/2, #{}, Pids)}.

-spec handle_call(term(), gen_server:from(), map()) -> {reply, {error, unknown_call}, map()}.
handle_call(_Request, _From, Watched) ->
	{reply, {error, unknown_call}, Watched}.

-spec handle_cast({watch, pid()}, map()) -> {noreply, map()}.
handle_cast({watch, Pid}, Watched) ->
	{noreply, watch_pid(Pid, Watched)}.

-spec handle_info(term(), map()) -> {noreply, map()}.
handle_info({'DOWN', MRef, process, Pid, _}, Watched) ->
	case maps:take(Pid, Watched) of
		{MRef, Watched1} ->
			%% A bound key prefix: ordered_set walks only this process's rows.
			_ = ets:select_delete(?TAB, [{{{Pid, '_'}}, [], [true]}]),
			{noreply, Watched1};
		_ ->
			{noreply, Watched}
	end;
handle_info(_Msg, Watched) ->
	{noreply, Watched}.

%% Internal.

acquire_loop(Deadline, Backoff) ->
	case try_acquire() of
		ok ->
			ok;
		_ ->
			Wait = case Deadline of
				infinity -> Backoff;
				_ -> min(Backoff, Deadline - erlang:monotonic_time(millisecond))
			end,
			case Wait > 0 of
				true ->
					timer:sleep(Wait),
					acquire_loop(Deadline, min(Backoff * 2, ?BACKOFF_MAX_MS));
				false ->
					{error, max_concurrent}
			end
	end.

%% Asks the reaper to monitor this process, once per reaper (one that restarted is asked again).
watch(Self) ->
	Reaper = whereis(?MODULE),
	case get(?WATCHED) of
		Reaper ->
			ok;
		_ ->
			_ = put(?WATCHED, Reaper),
			_ = is_pid(Reaper) andalso gen_server:cast(Reaper, {watch, Self}),
			ok
	end.

watch_pid(Pid, Watched) when is_map_key(Pid, Watched) ->
	Watched;
watch_pid(Pid, Watched) ->
	Watched#{Pid => erlang:monitor(process, Pid)}.
