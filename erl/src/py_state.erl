%% The shared state: a global key-value store in ETS, visible to every Erlang process and every Python
%% context of every port.
%%
%% Scope: the Erlang API (py:state_* delegates here). Python reaches the same table through the owner's
%% builtin callbacks `_state_*` (py_callback). Keys coming from Python are binaries (a Python str), so
%% `py_state:store(<<"k">>, V)` is what Python's `state_get('k')` reads.
%%
%% The table `py_state` belongs to erlang_python_sup (created by init_tab/0 in its init), so it outlives
%% any worker crash. It is public with write_concurrency; the counters use ets:update_counter and are
%% atomic however many processes and Python threads count on one key. The number of keys is kept, as
%% atomically, in the row '$py_state_size$' (reserved), so max_state_entries is an exact bound.
-module(py_state).

%% API.
-export([init_tab/0]).
-export([store/2]).
-export([fetch/1]).
-export([remove/1]).
-export([keys/0]).
-export([clear/0]).
-export([size/0]).
-export([incr/1]).
-export([incr/2]).
-export([decr/1]).
-export([decr/2]).

-define(TAB, py_state).

%% API.

%% Creates the table; called once by erlang_python_sup:init/1, whose process then owns it.
-spec init_tab() -> ok.
init_tab() ->
	?TAB = ets:new(?TAB, [set, public, named_table, {write_concurrency, true}, {read_concurrency, true}]),
	ok.

%% The size counter's key (also refused as a binary, which is how Python spells it).
-define(SIZE_KEY, '$py_state_size$').
-define(RESERVED(K), (K =:= ?SIZE_KEY orelse K =:= <<"$py_state_size$">>)).

%% Stores Value under Key. A new key is refused with {error, full} once the table holds
%% max_state_entries keys (application env; default infinity): the table is bounded.
-spec store(term(), term()) -> ok | {error, full | reserved_key}.
store(Key, _) when ?RESERVED(Key) ->
	{error, reserved_key};
store(Key, Value) ->
	case ets:update_element(?TAB, Key, {2, Value}) of
		true -> ok;
		false -> add(Key, Value)
	end.

add(Key, Value) ->
	case reserve() of
		ok ->
			case ets:insert_new(?TAB, {Key, Value}) of
				true -> ok;
				%% Another process added it meanwhile: it is a replace after all.
				false -> release(), store(Key, Value)
			end;
		full ->
			{error, full}
	end.

-spec fetch(term()) -> {ok, term()} | {error, not_found | reserved_key}.
fetch(Key) when ?RESERVED(Key) ->
	{error, reserved_key};
fetch(Key) ->
	case ets:lookup(?TAB, Key) of
		[{_, Value}] -> {ok, Value};
		[] -> {error, not_found}
	end.

-spec remove(term()) -> ok | {error, reserved_key}.
remove(Key) when ?RESERVED(Key) ->
	{error, reserved_key};
remove(Key) ->
	case ets:take(?TAB, Key) of
		[_] -> release();
		[] -> ok
	end.

-spec keys() -> [term()].
keys() ->
	ets:select(?TAB, [{{'$1', '_'}, [{'=/=', '$1', ?SIZE_KEY}], ['$1']}]).

-spec clear() -> ok.
clear() ->
	true = ets:delete_all_objects(?TAB),
	ok.

%% The number of keys stored.
-spec size() -> non_neg_integer().
size() ->
	case ets:lookup(?TAB, ?SIZE_KEY) of
		[{_, N}] -> N;
		[] -> 0
	end.

%% Adds 1 to the counter under Key (a missing key counts from 0) and returns the new value. Creating
%% a counter when the table is full raises error(full); a reserved key raises badarg.
-spec incr(term()) -> integer().
incr(Key) ->
	incr(Key, 1).

-spec incr(term(), integer()) -> integer().
incr(Key, N) when is_integer(N), ?RESERVED(Key) ->
	error(badarg, [Key, N]);
incr(Key, N) when is_integer(N) ->
	try
		ets:update_counter(?TAB, Key, N)
	catch error:badarg ->
		case ets:member(?TAB, Key) of
			true ->
				error(badarg, [Key, N]);  % not a counter
			false ->
				ok = create_counter(Key),
				incr(Key, N)
		end
	end.

-spec decr(term()) -> integer().
decr(Key) ->
	decr(Key, 1).

-spec decr(term(), integer()) -> integer().
decr(Key, N) when is_integer(N) ->
	incr(Key, -N).

%% Internal.

create_counter(Key) ->
	case reserve() of
		ok ->
			_ = ets:insert_new(?TAB, {Key, 0}) orelse release(),
			ok;
		full ->
			error(full)
	end.

%% Takes one place in the table, atomically, or says it is full.
reserve() ->
	Max = application:get_env(erlang_python, max_state_entries, infinity),
	case ets:update_counter(?TAB, ?SIZE_KEY, 1, {?SIZE_KEY, 0}) of
		N when is_integer(Max), N > Max -> release(), full;
		_ -> ok
	end.

release() ->
	_ = ets:update_counter(?TAB, ?SIZE_KEY, -1, {?SIZE_KEY, 0}),
	ok.
