%% The import and path registry applied to every Python interpreter.
%%
%% Scope: the registry (which modules and functions to import, which directories to put in
%% sys.path, in the order they were registered), applying a new entry at once to every running port,
%% and the body of the context_init frame (PROTOCOL.md §3.6) that gives every context that starts
%% later (a new context, a port that said hello after a restart) the registered paths, imports and
%% the preload code (py_preload).
%%
%% Storage: the public ETS table py_import, owned by the application's top supervisor, with rows
%% {{import, Module, Func | all}, Seq} and {{path, Path}, Seq}; Seq (monotonic) keeps insertion order.
%% Every value is stored as a binary.
%%
%% In worker mode every context of a port shares one interpreter (one sys.path, one sys.modules), so
%% an entry is applied with one request per running port, outside any process-bound environment.
-module(py_import).

%% API.
-export([init/0]).
-export([ensure_imported/1]).
-export([ensure_imported/2]).
-export([is_imported/1]).
-export([is_imported/2]).
-export([all_imports/0]).
-export([import_list/0]).
-export([clear_imports/0]).
-export([add_path/1]).
-export([add_paths/1]).
-export([all_paths/0]).
-export([is_path_added/1]).
-export([clear_paths/0]).
-export([context_init_body/0]).

-export_type([py_module/0]).
-export_type([py_func/0]).

-type py_module() :: atom() | binary() | string().
-type py_func() :: atom() | binary() | string().

-define(TAB, py_import).
%% How long applying an entry to the running ports may take (a port whose first context is busy
%% with a long request answers when it is free).
-define(APPLY_TIMEOUT, 30000).

%% Imports Module (and looks Func up, unless func is None); the names come as locals.
-define(IMPORT_CODE, <<"import importlib\n"
	"_m = importlib.import_module(module)\n"
	"if func is not None:\n"
	"    getattr(_m, func)\n">>).
%% Puts the registered paths first in sys.path, in order, each once (what context_init does for a
%% new context). No comprehension: the locals are not visible inside one.
-define(PATHS_CODE, <<"import sys\n"
	"_rest = []\n"
	"for _x in sys.path:\n"
	"    if _x not in paths:\n"
	"        _rest.append(_x)\n"
	"sys.path[:] = paths + _rest\n">>).

%% API.

%% Creates the registry and loads the imports and paths application env into it. Called by the
%% application's top supervisor; does nothing if the registry exists already.
-spec init() -> ok.
init() ->
	case ets:whereis(?TAB) of
		undefined ->
			_ = ets:new(?TAB, [set, public, named_table, {read_concurrency, true}]),
			_ = [register_import(import_entry(Entry)) || Entry <- application:get_env(erlang_python, imports, [])],
			_ = [register_path(path(P)) || P <- application:get_env(erlang_python, paths, [])],
			ok;
		_ ->
			ok
	end.

%% Imports Module in every running port now and in every context that starts later.
-spec ensure_imported(py_module()) -> ok | {error, term()}.
ensure_imported(Module) ->
	ensure(name(Module), all).

%% Imports Module and looks Func up in it, now in every running port and later in every new context.
-spec ensure_imported(py_module(), py_func()) -> ok | {error, term()}.
ensure_imported(Module, Func) ->
	ensure(name(Module), func(Func)).

%% Whether Module is registered (on its own or with a function).
-spec is_imported(py_module()) -> boolean().
is_imported(Module) ->
	Mod = name(Module),
	ets:select_count(?TAB, [{{{import, Mod, '_'}, '_'}, [], [true]}]) > 0.

-spec is_imported(py_module(), py_func()) -> boolean().
is_imported(Module, Func) ->
	ets:member(?TAB, {import, name(Module), func(Func)}).

%% Every registered import in registration order: {Module, all} for a module, {Module, Func} for a
%% function.
-spec all_imports() -> [{binary(), binary() | all}].
all_imports() ->
	[{Mod, Func} || {import, Mod, Func} <- ordered(import)].

%% The imports by module: the registered functions in registration order; [] for a module
%% registered without functions.
-spec import_list() -> {ok, #{binary() => [binary()]}} | {error, term()}.
import_list() ->
	{ok, lists:foldl(fun
		({Mod, all}, Acc) -> maps:merge(#{Mod => []}, Acc);
		({Mod, Func}, Acc) -> maps:update_with(Mod, fun(Fs) -> Fs ++ [Func] end, [Func], Acc)
	end, #{}, all_imports())}.

%% Forgets every import; ports already running keep what they imported.
-spec clear_imports() -> ok.
clear_imports() ->
	_ = ets:match_delete(?TAB, {{import, '_', '_'}, '_'}),
	ok.

%% Puts Path in sys.path of every running port now and of every context that starts later.
-spec add_path(string() | binary() | atom()) -> ok.
add_path(Path) ->
	add_paths([Path]).

%% Adds the paths in order: the first one comes first in sys.path (all registered paths come before
%% the interpreter's own, in registration order).
-spec add_paths([string() | binary() | atom()]) -> ok.
add_paths(Paths) when is_list(Paths) ->
	_ = [register_path(path(P)) || P <- Paths],
	%% A port that cannot be reached now gets the paths with its next context_init.
	_ = apply_running(?PATHS_CODE, #{paths => all_paths()}),
	ok.

%% The registered paths, in the order they were added.
-spec all_paths() -> [binary()].
all_paths() ->
	[P || {path, P} <- ordered(path)].

-spec is_path_added(string() | binary() | atom()) -> boolean().
is_path_added(Path) ->
	ets:member(?TAB, {path, path(Path)}).

%% Forgets every path; ports already running keep their sys.path.
-spec clear_paths() -> ok.
clear_paths() ->
	_ = ets:match_delete(?TAB, {{path, '_'}, '_'}),
	ok.

%% The body of a context_init frame (PROTOCOL.md §3.6): the registered paths, the registered imports
%% and the preload code, for a context that starts (or a port that said hello).
-spec context_init_body() -> {[binary()], [{binary(), binary() | all}], binary() | undefined}.
context_init_body() ->
	case ets:whereis(?TAB) of
		undefined -> {[], [], py_preload:get_code()};
		_ -> {all_paths(), all_imports(), py_preload:get_code()}
	end.

%% Internal.

ensure(<<"__main__">>, _) ->
	{error, main_not_cacheable};
ensure(Mod, Func) ->
	Key = {import, Mod, Func},
	%% Registered first, so a port that restarts meanwhile gets it from context_init; taken back if
	%% the import fails (a failing entry would fail every later context start).
	New = register_import(Key),
	Locals = #{module => Mod, func => case Func of all -> none; F -> F end},
	case apply_running(?IMPORT_CODE, Locals) of
		ok ->
			ok;
		{error, _} = Error ->
			_ = New andalso ets:delete(?TAB, Key),
			Error
	end.

register_import(Key = {import, _, _}) ->
	ets:insert_new(?TAB, {Key, erlang:unique_integer([monotonic])}).

register_path(Path) ->
	ets:insert_new(?TAB, {{path, Path}, erlang:unique_integer([monotonic])}).

%% The keys of one kind in registration order.
ordered(Kind) ->
	Rows = case Kind of
		import -> ets:match_object(?TAB, {{import, '_', '_'}, '_'});
		path -> ets:match_object(?TAB, {{path, '_'}, '_'})
	end,
	[Key || {Key, _} <- lists:keysort(2, Rows)].

%% Runs Code (with Locals) once in every port that is up, all at once; the first error, if any.
%% Context index 0 of each: every context of a port shares its interpreter.
apply_running(Code, Locals) ->
	Slots = [Slot || Slot <- py_pool_ports:all_slots(), is_up(py_port:info(Slot))],
	Results = py_request:eval_on_slots(Slots, {undefined, Code, Locals}, ?APPLY_TIMEOUT, true),
	case [E || {error, _} = E <- Results] of
		[] -> ok;
		[First | _] -> First
	end.

is_up(#{status := up}) -> true;
is_up(_) -> false.

import_entry({Module, Func}) -> {import, name(Module), func(Func)};
import_entry(Module) -> {import, name(Module), all}.

name(Name) when is_atom(Name) -> atom_to_binary(Name, utf8);
name(Name) when is_binary(Name) -> Name;
name(Name) when is_list(Name) -> unicode:characters_to_binary(Name).

%% The atom all means the module itself (as in all_imports/0).
func(all) -> all;
func(Func) -> name(Func).

path(Path) -> name(Path).
