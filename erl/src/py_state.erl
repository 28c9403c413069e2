%% The shared state: a global key-value store in ETS, visible to every Erlang process and every Python
%% context of every port.
%%
%% Scope: the Erlang API (py:state_* delegates here). Python reaches the same table through the owner's
%% builtin callbacks `_state_*` (py_callback). Keys coming from Python are binaries (a Python str), so
%% `py_state:store(<<"k">>, V)` is what Python's `state_get('k')` reads.
%%
%% The table `py_state` belongs to erlang_python_sup (created by init_tab/0 in its init), so it outlives
%% any worker crash. It is public with write_concurrency; the counters use ets:update_counter/4 with a
%% default object and are atomic however many processes and Python threads count on one key.
-module(py_state).

%% API.
-export([init_tab/0]).
-export([store/2]).
-export([fetch/1]).
-export([remove/1]).
-export([keys/0]).
-export([clear/0]).
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

-spec store(term(), term()) -> ok.
store(Key, Value) ->
	true = ets:insert(?TAB, {Key, Value}),
	ok.

-spec fetch(term()) -> {ok, term()} | {error, not_found}.
fetch(Key) ->
	case ets:lookup(?TAB, Key) of
		[{_, Value}] -> {ok, Value};
		[] -> {error, not_found}
	end.

-spec remove(term()) -> ok.
remove(Key) ->
	true = ets:delete(?TAB, Key),
	ok.

-spec keys() -> [term()].
keys() ->
	ets:select(?TAB, [{{'$1', '_'}, [], ['$1']}]).

-spec clear() -> ok.
clear() ->
	true = ets:delete_all_objects(?TAB),
	ok.

%% Adds 1 to the counter under Key (a missing key counts from 0) and returns the new value.
-spec incr(term()) -> integer().
incr(Key) ->
	incr(Key, 1).

-spec incr(term(), integer()) -> integer().
incr(Key, N) when is_integer(N) ->
	ets:update_counter(?TAB, Key, N, {Key, 0}).

-spec decr(term()) -> integer().
decr(Key) ->
	decr(Key, 1).

-spec decr(term(), integer()) -> integer().
decr(Key, N) when is_integer(N) ->
	ets:update_counter(?TAB, Key, -N, {Key, 0}).
