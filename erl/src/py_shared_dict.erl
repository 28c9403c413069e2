%% SharedDicts: dictionaries shared between Erlang processes and Python code, owned by the Erlang
%% process that created them and destroyed when it exits.
%%
%% Scope: py:shared_dict_* delegates here, and so do the owner's builtins `_sd_*` that
%% pylib/erlang/_shared_dict.py calls. A SharedDict is a reference (Python sees an `erlang.Term` and
%% passes it back). Entries live in the ordered_set ETS table `py_shared_dicts`, owned by
%% erlang_python_sup: {{d, SD}, Owner} marks a live dictionary, {{k, SD, Key}, Value} holds an entry.
%% Reads and writes go straight to ETS; this gen_server only creates dictionaries and monitors owners.
%%
%% Values are stored as Erlang terms, not pickled as in the NIF library. A value set from Erlang is
%% first put in the shape it would have after a trip through Python (as_python/1: atom keys become
%% binaries, {bytes, B} a binary, ...), so Erlang reads back what the docs show for a pickled value:
%% `#{host => <<"h">>}` comes back as `#{<<"host">> => <<"h">>}`. Python sees values by the usual rules.
%% After destroy/1 every other operation raises badarg, as documented.
-module(py_shared_dict).
-behaviour(gen_server).

%% API.
-export([start_link/0]).
-export([init_tab/0]).
-export([new/0]).
-export([get/2]).
-export([get/3]).
-export([lookup/2]).
-export([set/3]).
-export([del/2]).
-export([take/2]).
-export([keys/1]).
-export([destroy/1]).
-export([as_python/1]).

%% gen_server.
-export([init/1]).
-export([handle_call/3]).
-export([handle_cast/2]).
-export([handle_info/2]).

-export_type([shared_dict/0]).

-type shared_dict() :: reference().

-define(TAB, py_shared_dicts).

%% API.

-spec start_link() -> {ok, pid()}.
start_link() ->
	gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% Creates the table; called once by erlang_python_sup:init/1, whose process then owns it.
-spec init_tab() -> ok.
init_tab() ->
	?TAB = ets:new(?TAB, [ordered_set, public, named_table, {read_concurrency, true},
		{write_concurrency, true}]),
	ok.

%% A new, empty SharedDict owned by the calling process.
-spec new() -> {ok, shared_dict()}.
new() ->
	gen_server:call(?MODULE, {new, self()}).

%% The value under Key, or undefined.
-spec get(shared_dict(), term()) -> term().
get(SD, Key) ->
	get(SD, Key, undefined).

-spec get(shared_dict(), term(), term()) -> term().
get(SD, Key, Default) ->
	case lookup(SD, Key) of
		{ok, Value} -> Value;
		none -> Default
	end.

%% {ok, Value} or none (the shape of the `_sd_get` builtin). Raises error(badarg) for a
%% destroyed (or unknown) SharedDict, like every other operation but destroy/1.
-spec lookup(shared_dict(), term()) -> {ok, term()} | none.
lookup(SD, Key) ->
	alive(SD),
	case ets:lookup(?TAB, {k, SD, Key}) of
		[{_, Value}] -> {ok, Value};
		[] -> none
	end.

-spec set(shared_dict(), term(), term()) -> ok.
set(SD, Key, Value) ->
	alive(SD),
	true = ets:insert(?TAB, {{k, SD, Key}, Value}),
	%% A destroy between the check and the insert would leave this entry behind.
	case ets:member(?TAB, {d, SD}) of
		true ->
			ok;
		false ->
			true = ets:delete(?TAB, {k, SD, Key}),
			error(badarg)
	end.

%% Removes Key; ok whether or not it was there.
-spec del(shared_dict(), term()) -> ok.
del(SD, Key) ->
	_ = take(SD, Key),
	ok.

%% Removes Key and tells whether it was there (the `_sd_del` builtin).
-spec take(shared_dict(), term()) -> boolean().
take(SD, Key) ->
	alive(SD),
	ets:take(?TAB, {k, SD, Key}) =/= [].

-spec keys(shared_dict()) -> [term()].
keys(SD) ->
	alive(SD),
	ets:select(?TAB, [{{{k, SD, '$1'}, '_'}, [], ['$1']}]).

%% Frees the SharedDict; idempotent.
-spec destroy(shared_dict()) -> ok.
destroy(SD) ->
	case ets:take(?TAB, {d, SD}) of
		[{_, Owner}] -> gen_server:cast(?MODULE, {destroyed, SD, Owner});
		[] -> ok
	end,
	_ = ets:select_delete(?TAB, [{{{k, SD, '_'}, '_'}, [], [true]}]),
	ok.

%% The term Erlang gets back for Term after it went to Python and back (PROTOCOL.md §2).
-spec as_python(term()) -> term().
as_python(T) when T =:= true; T =:= false; T =:= none; T =:= nan; T =:= infinity; T =:= neg_infinity -> T;
as_python(T) when T =:= nil; T =:= undefined -> none;
as_python(T) when is_atom(T) -> atom_to_binary(T, utf8);
as_python(T) when is_integer(T), (T > 9223372036854775807 orelse T < -9223372036854775808) ->
	integer_to_list(T);
as_python({bytes, B}) when is_binary(B) -> B;
as_python(T) when is_list(T) -> [as_python(E) || E <- T];
as_python(T) when is_tuple(T) -> list_to_tuple([as_python(E) || E <- tuple_to_list(T)]);
as_python(T) when is_map(T) -> maps:from_list([{as_python(K), as_python(V)} || {K, V} <- maps:to_list(T)]);
as_python(T) -> T.

%% gen_server.

%% State: #{Owner => {MonitorRef, [SD]}}. After a restart the owners are monitored again from the table.
-spec init([]) -> {ok, map()}.
init([]) ->
	Owners = ets:select(?TAB, [{{{d, '$1'}, '$2'}, [], [{{'$1', '$2'}}]}]),
	{ok, lists:foldl(fun({SD, Owner}, Acc) -> watch(Owner, SD, Acc) end, #{}, Owners)}.

-spec handle_call({new, pid()}, gen_server:from(), map()) -> {reply, {ok, shared_dict()}, map()}.
handle_call({new, Owner}, _From, Owners) ->
	SD = make_ref(),
	true = ets:insert(?TAB, {{d, SD}, Owner}),
	{reply, {ok, SD}, watch(Owner, SD, Owners)}.

-spec handle_cast({destroyed, shared_dict(), pid()}, map()) -> {noreply, map()}.
handle_cast({destroyed, SD, Owner}, Owners) ->
	case Owners of
		#{Owner := {MRef, SDs}} ->
			case lists:delete(SD, SDs) of
				[] ->
					true = erlang:demonitor(MRef, [flush]),
					{noreply, maps:remove(Owner, Owners)};
				Rest ->
					{noreply, Owners#{Owner := {MRef, Rest}}}
			end;
		#{} ->
			{noreply, Owners}
	end.

-spec handle_info({'DOWN', reference(), process, pid(), term()}, map()) -> {noreply, map()}.
handle_info({'DOWN', MRef, process, Owner, _}, Owners) ->
	case maps:take(Owner, Owners) of
		{{MRef, SDs}, Rest} ->
			_ = [destroy_entries(SD) || SD <- SDs],
			{noreply, Rest};
		_ ->
			{noreply, Owners}
	end.

%% Internal.

alive(SD) ->
	case ets:member(?TAB, {d, SD}) of
		true -> ok;
		false -> error(badarg)
	end.

watch(Owner, SD, Owners) ->
	case Owners of
		#{Owner := {MRef, SDs}} -> Owners#{Owner := {MRef, [SD | SDs]}};
		#{} -> Owners#{Owner => {erlang:monitor(process, Owner), [SD]}}
	end.

destroy_entries(SD) ->
	true = ets:delete(?TAB, {d, SD}),
	_ = ets:select_delete(?TAB, [{{{k, SD, '_'}, '_'}, [], [true]}]),
	ok.
