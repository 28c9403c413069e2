%% Every Erlang code sample in docs/ runs, and prints what the page says (py_docs_check). One case per
%% page; every_page_is_listed fails when a page is added without its case. The Elixir samples are
%% checked by elixir/test/docs_test.exs.
-module(py_docs_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1, init_per_testcase/2, end_per_testcase/2]).
-export([every_page_is_listed/1, checker_catches_a_wrong_result/1, commands_exist/1]).
-export([getting_started/1, types/1, contexts_and_pools/1, callbacks_and_messaging/1, streaming/1,
	errors_and_timeouts/1, protocol/1, migration/1, examples/1, operations/1, channels/1, index/1]).
-export([execution_modes/1, asyncio/1, venvs_and_sandbox/1]).

-define(PAGES, [{index, "README.md"}, {getting_started, "getting-started.md"}, {types, "types.md"},
	{contexts_and_pools, "contexts-and-pools.md"}, {callbacks_and_messaging, "callbacks-and-messaging.md"},
	{streaming, "streaming.md"}, {errors_and_timeouts, "errors-and-timeouts.md"}, {protocol, "protocol.md"},
	{migration, "migration.md"}, {examples, "examples.md"}, {operations, "operations.md"}, {channels, "channels.md"},
	{execution_modes, "execution-modes.md"}, {asyncio, "asyncio.md"}, {venvs_and_sandbox, "venvs-and-sandbox.md"}]).

all() ->
	[every_page_is_listed, checker_catches_a_wrong_result, commands_exist] ++ [Case || {Case, _} <- ?PAGES].

init_per_suite(Config) ->
	%% Sets the application env (the codec under test); each page then starts the application itself.
	ok = py_ct_helper:start_app([]),
	ok = py_ct_helper:stop_app(),
	[{root, root()} | Config].

end_per_suite(_Config) ->
	py_ct_helper:stop_app().

init_per_testcase(_Case, Config) ->
	ok = py_ct_helper:stop_app(),
	Config.

end_per_testcase(_Case, _Config) ->
	_ = (catch py_import:clear_paths()),
	_ = (catch py_preload:clear_code()),
	ok.

getting_started(Config) -> page(Config, getting_started).
types(Config) -> page(Config, types).
contexts_and_pools(Config) -> page(Config, contexts_and_pools).
callbacks_and_messaging(Config) -> page(Config, callbacks_and_messaging).
streaming(Config) -> page(Config, streaming).
errors_and_timeouts(Config) -> page(Config, errors_and_timeouts).
protocol(Config) -> page(Config, protocol).
migration(Config) -> page(Config, migration).
examples(Config) -> page(Config, examples).
operations(Config) -> page(Config, operations).
channels(Config) -> page(Config, channels).
index(Config) -> page(Config, index).
execution_modes(Config) -> page(Config, execution_modes).
asyncio(Config) -> page(Config, asyncio).
venvs_and_sandbox(Config) -> page(Config, venvs_and_sandbox).

page(Config, Case) ->
	{Case, File} = lists:keyfind(Case, 1, ?PAGES),
	Path = filename:join([?config(root, Config), "docs", File]),
	case py_docs_check:run_page(Path) of
		ok -> ok;
		{error, Failures} -> ct:fail({File, Failures})
	end.

every_page_is_listed(Config) ->
	Pages = lists:sort([filename:basename(F) || F <- filelib:wildcard(filename:join([?config(root, Config), "docs", "*.md"]))]),
	?assertEqual(lists:sort([F || {_, F} <- ?PAGES]), Pages).

%% The checker itself: a wrong printed value, a crash, and a pattern are told apart.
checker_catches_a_wrong_result(_) ->
	ok = application:set_env(erlang_python, num_ports, 1),
	{ok, _} = application:ensure_all_started(erlang_python),
	Tmp = filename:join("/tmp", "py_docs_check_" ++ os:getpid() ++ ".md"),
	Page = <<"```erlang\n1> py:eval(<<\"1 + 1\">>).\n{ok,3}\n2> X = 5.\n5\n3> {X, py:eval(<<\"2\">>)}.\n{5, {ok, _}}\n"
		"4> undefined_fun().\n```\n```erlang\nnot valid erlang (\n```\n">>,
	ok = file:write_file(Tmp, Page),
	try
		{error, Failures} = py_docs_check:run_page(Tmp),
		?assertMatch([{2, "py:eval(<<\"1 + 1\">>).", {printed, {ok, 2}, expected, "{ok,3}"}},
			{8, "undefined_fun().", {error, _, _}}, {11, fragment, does_not_parse}], Failures)
	after
		ok = file:delete(Tmp),
		ok = application:unset_env(erlang_python, num_ports)
	end.

%% Every `escript examples/...`, `tools/...` or `elixir/...` path a page names exists.
commands_exist(Config) ->
	Root = ?config(root, Config),
	Missing = [{filename:basename(F), P} ||
		F <- filelib:wildcard(filename:join([Root, "docs", "*.md"])),
		{ok, Md} <- [file:read_file(F)],
		{match, Ps} <- [re:run(Md, <<"(?:^|[\\s`(])((?:examples|tools|elixir|protocol)/[A-Za-z0-9_./-]+[A-Za-z0-9_])">>,
			[global, multiline, {capture, all_but_first, list}])],
		[P] <- Ps,
		not filelib:is_file(filename:join(Root, P))],
	?assertEqual([], Missing).

%% The repository root: the first directory above this suite's source with docs/ and rebar.config.
root() ->
	up(filename:dirname(filename:absname(?FILE))).

up("/") -> error(no_repository_root);
up(Dir) ->
	case filelib:is_dir(filename:join(Dir, "docs")) andalso filelib:is_file(filename:join(Dir, "rebar.config")) of
		true -> Dir;
		false -> up(filename:dirname(Dir))
	end.
