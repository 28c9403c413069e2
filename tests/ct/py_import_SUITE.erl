%% py_import: the import and path registry, its documented examples and return shapes, applying an
%% entry at once to every running port, the app env at start, and the context_init body that gives
%% the registry to every context started later.
-module(py_import_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1, init_per_testcase/2, end_per_testcase/2]).
-export([docs_import_list_example/1, docs_all_imports_example/1, docs_is_imported_example/1,
	main_not_cacheable/1, failed_import_not_registered/1, ensure_imported_applies_to_every_port/1,
	names_normalised_to_binaries/1, clear_imports_keeps_running_ports/1, docs_path_examples/1,
	add_path_then_call_module/1, paths_order_in_sys_path/1, clear_paths_keeps_running_ports/1,
	app_env_loaded_at_start/1, context_init_body_reflects_registry/1,
	restarted_port_gets_registry/1]).

all() ->
	[docs_import_list_example, docs_all_imports_example, docs_is_imported_example, main_not_cacheable,
	 failed_import_not_registered, ensure_imported_applies_to_every_port, names_normalised_to_binaries,
	 clear_imports_keeps_running_ports, docs_path_examples, add_path_then_call_module,
	 paths_order_in_sys_path, clear_paths_keeps_running_ports, app_env_loaded_at_start,
	 context_init_body_reflects_registry, restarted_port_gets_registry].

init_per_suite(Config) ->
	ok = py_ct_helper:start_app([{num_ports, 2}, {contexts_per_port, 2}]),
	Config.

end_per_suite(_Config) ->
	py_ct_helper:stop_app().

init_per_testcase(_Case, Config) ->
	ok = py_import:clear_imports(),
	ok = py_import:clear_paths(),
	Config.

end_per_testcase(_Case, _Config) ->
	ok = py_import:clear_imports(),
	ok = py_import:clear_paths(),
	ok = py_preload:clear_code(),
	ok.

%% The docs' import_list/0 example: modules as binary keys, functions in registration order, [] for a
%% module registered alone.
docs_import_list_example(_) ->
	ok = py_import:ensure_imported(json),
	ok = py_import:ensure_imported(json, dumps),
	ok = py_import:ensure_imported(json, loads),
	ok = py_import:ensure_imported(math),
	{ok, List} = py_import:import_list(),
	List = #{<<"json">> => [<<"dumps">>, <<"loads">>], <<"math">> => []}.

%% The docs' all_imports/0 example: {Module, all} for a module, {Module, Func} for a function, in
%% registration order.
docs_all_imports_example(_) ->
	ok = py_import:ensure_imported(json),
	ok = py_import:ensure_imported(math, sqrt),
	[{<<"json">>, all}, {<<"math">>, <<"sqrt">>}] = py_import:all_imports(),
	ok = py_import:ensure_imported(json, dumps),
	[{<<"json">>, all}, {<<"math">>, <<"sqrt">>}, {<<"json">>, <<"dumps">>}] = py_import:all_imports().

%% The docs' is_imported/1,2 examples.
docs_is_imported_example(_) ->
	ok = py_import:ensure_imported(json),
	ok = py_import:ensure_imported(json, dumps),
	true = py_import:is_imported(json),
	true = py_import:is_imported(json, dumps),
	false = py_import:is_imported(unknown_module),
	false = py_import:is_imported(json, loads),
	%% A module registered only through one of its functions counts as imported.
	ok = py_import:ensure_imported(math, sqrt),
	true = py_import:is_imported(math),
	false = py_import:is_imported(math, all).

%% __main__ is never cached: {error, main_not_cacheable} in every spelling, and nothing registered.
main_not_cacheable(_) ->
	{error, main_not_cacheable} = py_import:ensure_imported('__main__'),
	{error, main_not_cacheable} = py_import:ensure_imported(<<"__main__">>),
	{error, main_not_cacheable} = py_import:ensure_imported("__main__", f),
	[] = py_import:all_imports(),
	false = py_import:is_imported('__main__').

%% An import that fails in the running ports returns the Python error and is not registered (it
%% would fail every later context start).
failed_import_not_registered(_) ->
	{error, {'ModuleNotFoundError', "No module named 'no_such_module_hx2'"}} =
		py_import:ensure_imported(no_such_module_hx2),
	{error, {'AttributeError', _}} = py_import:ensure_imported(json, no_such_function_hx2),
	[] = py_import:all_imports(),
	false = py_import:is_imported(no_such_module_hx2),
	%% An entry already registered stays when it is ensured again.
	ok = py_import:ensure_imported(json),
	ok = py_import:ensure_imported(json),
	[{<<"json">>, all}] = py_import:all_imports().

%% ensure_imported imports at once in every running port (each is one interpreter).
ensure_imported_applies_to_every_port(_) ->
	Check = <<"[m in __import__('sys').modules for m in ('colorsys', 'wave')]">>,
	[{ok, [false, false]}, {ok, [false, false]}] = on_every_slot(Check),
	ok = py_import:ensure_imported(colorsys),
	ok = py_import:ensure_imported(wave, open),
	[{ok, [true, true]}, {ok, [true, true]}] = on_every_slot(Check).

%% Atoms, strings and binaries name the same entry; everything is stored as binaries.
names_normalised_to_binaries(_) ->
	ok = py_import:ensure_imported(json, dumps),
	ok = py_import:ensure_imported("json", "dumps"),
	ok = py_import:ensure_imported(<<"json">>, <<"dumps">>),
	[{<<"json">>, <<"dumps">>}] = py_import:all_imports(),
	true = py_import:is_imported("json", <<"dumps">>),
	ok = py_import:add_path('/tmp/hx2_atom_path'),
	ok = py_import:add_path("/tmp/hx2_atom_path"),
	[<<"/tmp/hx2_atom_path">>] = py_import:all_paths().

%% clear_imports empties the registry; running ports keep what they imported.
clear_imports_keeps_running_ports(_) ->
	ok = py_import:ensure_imported(tabnanny),
	ok = py_import:clear_imports(),
	[] = py_import:all_imports(),
	{ok, Empty} = py_import:import_list(),
	0 = map_size(Empty),
	false = py_import:is_imported(tabnanny),
	[{ok, true}, {ok, true}] = on_every_slot(<<"'tabnanny' in __import__('sys').modules">>).

%% The docs' path examples: insertion order, binaries, is_path_added in any spelling, clear_paths.
docs_path_examples(_) ->
	ok = py_import:add_path("/path/to/modules"),
	[<<"/path/to/modules">>] = py_import:all_paths(),
	true = py_import:is_path_added("/path/to/modules"),
	true = py_import:is_path_added(<<"/path/to/modules">>),
	true = py_import:is_path_added('/path/to/modules'),
	false = py_import:is_path_added("/path/to/other"),
	ok = py_import:add_path("/path/to/my/modules"),
	ok = py_import:add_paths(["/path/to/lib1", "/path/to/lib2"]),
	[<<"/path/to/modules">>, <<"/path/to/my/modules">>, <<"/path/to/lib1">>, <<"/path/to/lib2">>] =
		py_import:all_paths(),
	ok = py_import:clear_paths(),
	[] = py_import:all_paths(),
	false = py_import:is_path_added("/path/to/modules").

%% The docs' example: add_path, then py:call(mymodule, myfunc, []) works, from every port.
add_path_then_call_module(Config) ->
	Dir = module_dir(Config, "add_path"),
	ok = file:write_file(filename:join(Dir, "hx2_mymodule.py"), <<"def myfunc():\n    return 'from my module'\n">>),
	{error, {'ModuleNotFoundError', _}} = py:call(hx2_mymodule, myfunc, []),
	ok = py_import:add_path(Dir),
	[{ok, <<"from my module">>}, {ok, <<"from my module">>}] =
		[py_ct_helper:on(Slot, 0, fun() -> py:call(hx2_mymodule, myfunc, []) end) || Slot <- [1, 2]].

%% Registered paths come first in sys.path, in registration order, each once.
paths_order_in_sys_path(Config) ->
	[A, B, C] = [list_to_binary(module_dir(Config, N)) || N <- ["p1", "p2", "p3"]],
	ok = py_import:add_paths([A, B]),
	ok = py_import:add_path(C),
	ok = py_import:add_path(A),
	[A, B, C] = py_import:all_paths(),
	Check = <<"(lambda p: (p[:3], len(p) - len(set(p))))(__import__('sys').path)">>,
	[{ok, {[A, B, C], 0}}, {ok, {[A, B, C], 0}}] = on_every_slot(Check).

%% clear_paths empties the registry; running ports keep their sys.path.
clear_paths_keeps_running_ports(Config) ->
	Dir = list_to_binary(module_dir(Config, "kept")),
	ok = py_import:add_path(Dir),
	ok = py_import:clear_paths(),
	[] = py_import:all_paths(),
	[{ok, true}, {ok, true}] = on_every_slot(<<"d in __import__('sys').path">>, #{d => Dir}).

%% The imports and paths application env fill the registry when the application starts (init/0
%% again adds nothing).
app_env_loaded_at_start(_) ->
	try
		ok = py_ct_helper:start_app([{num_ports, 1}, {contexts_per_port, 1},
			{imports, [{json, dumps}, {json, loads}, {os, getcwd}, colorsys]},
			{paths, ["/path/to/my/modules", "/another/path"]}]),
		Imports = [{<<"json">>, <<"dumps">>}, {<<"json">>, <<"loads">>}, {<<"os">>, <<"getcwd">>},
			{<<"colorsys">>, all}],
		Paths = [<<"/path/to/my/modules">>, <<"/another/path">>],
		Imports = py_import:all_imports(),
		Paths = py_import:all_paths(),
		ok = py_import:init(),
		Imports = py_import:all_imports(),
		Paths = py_import:all_paths()
	after
		ok = py_ct_helper:start_app([{num_ports, 2}, {contexts_per_port, 2}])
	end,
	[] = py_import:all_imports().

%% The context_init body carries the registry (paths, imports in order) and the preload code.
context_init_body_reflects_registry(_) ->
	{[], [], undefined} = py_import:context_init_body(),
	ok = py_import:add_paths(["/tmp/hx2_a", "/tmp/hx2_b"]),
	ok = py_import:ensure_imported(json),
	ok = py_import:ensure_imported(math, sqrt),
	ok = py_preload:set_code(<<"X = 1">>),
	{[<<"/tmp/hx2_a">>, <<"/tmp/hx2_b">>], [{<<"json">>, all}, {<<"math">>, <<"sqrt">>}], <<"X = 1">>} =
		py_import:context_init_body().

%% A port that
%% restarts gets the registered paths and imports in its new interpreter.
restarted_port_gets_registry(Config) ->
	Dir = module_dir(Config, "restart"),
	ok = file:write_file(filename:join(Dir, "hx2_restarted.py"), <<"def f():\n    return 7\n">>),
	ok = py_import:add_path(Dir),
	ok = py_import:ensure_imported(colorsys),
	Gen = py_ct_helper:generation(1),
	OsPid = py_ct_helper:os_pid(1),
	_ = os:cmd("kill -9 " ++ integer_to_list(OsPid)),
	ok = py_ct_helper:eventually(fun() ->
		case py_port:info(1) of
			#{status := up, generation := G} -> G > Gen;
			_ -> false
		end
	end, 10000),
	{ok, 7} = py_ct_helper:on(1, 0, fun() -> py:call(hx2_restarted, f, []) end),
	{ok, true} = eval_on(1, <<"'colorsys' in __import__('sys').modules">>, #{}).

%% Internal.

on_every_slot(Code) ->
	on_every_slot(Code, #{}).

on_every_slot(Code, Locals) ->
	[eval_on(Slot, Code, Locals) || Slot <- lists:seq(1, py_router:num_slots())].

%% An eval on Slot outside any process-bound environment.
eval_on(Slot, Code, Locals) ->
	py_request:run(eval, {slot, Slot, 0}, {undefined, Code, Locals}, 10000, true).

module_dir(Config, Name) ->
	Dir = filename:join(?config(priv_dir, Config), "py_import_" ++ Name),
	ok = filelib:ensure_path(Dir),
	Dir.
