%% py_preload: storing the preload code, and (cases, which need py_context and the port's
%% context_init) the documented acceptance examples: preloaded globals in new contexts, an isolated
%% copy per environment, clearing affecting only new contexts, a preload error failing the context.
-module(py_preload_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1, init_per_testcase/2, end_per_testcase/2]).
-export([set_get_clear_has/1, iolist_and_charlist_code/1, invalid_code_refused/1,
	running_contexts_unaffected/1, docs_basic_usage/1, docs_process_isolation/1,
	isolation_between_processes_of_one_context/1, docs_clear_affects_only_new_contexts/1,
	preload_error_fails_context/1, restarted_port_gets_preload/1]).

-define(DOCS_CODE, <<"
import json
import os

def shared_helper(x):
    return x * 2

CONFIG = {'debug': True, 'version': '1.0'}
">>).

all() ->
	[set_get_clear_has, iolist_and_charlist_code, invalid_code_refused, running_contexts_unaffected,
	 docs_basic_usage, docs_process_isolation, isolation_between_processes_of_one_context,
	 docs_clear_affects_only_new_contexts, preload_error_fails_context, restarted_port_gets_preload].

init_per_suite(Config) ->
	ok = py_ct_helper:start_app([{num_ports, 2}, {contexts_per_port, 2}]),
	Config.

end_per_suite(_Config) ->
	ok = py_preload:clear_code(),
	py_ct_helper:stop_app().

init_per_testcase(_Case, Config) ->
	ok = py_preload:clear_code(),
	Config.

end_per_testcase(_Case, _Config) ->
	ok = py_preload:clear_code(),
	ok.

%% set_code/get_code/clear_code/has_preload.
set_get_clear_has(_) ->
	false = py_preload:has_preload(),
	undefined = py_preload:get_code(),
	ok = py_preload:set_code(<<"X = 1">>),
	true = py_preload:has_preload(),
	<<"X = 1">> = py_preload:get_code(),
	ok = py_preload:set_code(<<"X = 2">>),
	<<"X = 2">> = py_preload:get_code(),
	ok = py_preload:clear_code(),
	false = py_preload:has_preload(),
	undefined = py_preload:get_code(),
	ok = py_preload:clear_code().

%% An iolist is taken as UTF-8 bytes; a charlist with code points beyond ASCII as characters; the
%% stored code is always a binary.
iolist_and_charlist_code(_) ->
	ok = py_preload:set_code(["import json\n", <<"X = 'é'"/utf8>>, $\n]),
	<<"import json\nX = 'é'\n"/utf8>> = py_preload:get_code(),
	ok = py_preload:set_code("Y = 'é'"),
	<<"Y = 'é'"/utf8>> = py_preload:get_code().

%% Code that is not text is refused.
invalid_code_refused(_) ->
	{'EXIT', {badarg, _}} = (catch py_preload:set_code([16#110000])),
	{'EXIT', {function_clause, _}} = (catch py_preload:set_code(42)),
	undefined = py_preload:get_code().

%% Setting the code changes no running context: a process's environment made now does not have it.
running_contexts_unaffected(_) ->
	ok = py_preload:set_code(<<"PRELOADED_HX2 = 42">>),
	[{error, {'NameError', _}}, {error, {'NameError', _}}] =
		[py_ct_helper:on(Slot, 0, fun() -> py:eval(<<"PRELOADED_HX2">>) end) || Slot <- [1, 2]].

%% The docs' basic usage: preloaded imports, functions and variables in a new context.
docs_basic_usage(_) ->
	with_contexts(fun() ->
		ok = py_preload:set_code(?DOCS_CODE),
		{ok, Ctx} = py_context:new(#{mode => worker}),
		{ok, <<"{\"a\": 1}">>} = py:eval(Ctx, <<"json.dumps({'a': 1})">>),
		{ok, 10} = py:eval(Ctx, <<"shared_helper(5)">>),
		{ok, true} = py:eval(Ctx, <<"CONFIG['debug']">>),
		stop(Ctx)
	end).

%% The docs' isolation example: each environment has its own copy of the preloaded globals.
docs_process_isolation(_) ->
	with_contexts(fun() ->
		ok = py_preload:set_code(<<"COUNTER = 0">>),
		{ok, Ctx1} = py_context:new(#{mode => worker}),
		{ok, Ctx2} = py_context:new(#{mode => worker}),
		ok = py:exec(Ctx1, <<"COUNTER = 100">>),
		{ok, 100} = py:eval(Ctx1, <<"COUNTER">>),
		{ok, 0} = py:eval(Ctx2, <<"COUNTER">>),
		stop(Ctx1),
		stop(Ctx2)
	end).

%% Two processes on one context: each gets a fresh copy of the base.
isolation_between_processes_of_one_context(_) ->
	with_contexts(fun() ->
		ok = py_preload:set_code(<<"COUNTER = 0\nITEMS = []">>),
		{ok, Ctx} = py_context:new(#{mode => worker}),
		ok = py:exec(Ctx, <<"COUNTER = 100\nITEMS.append(1)">>),
		{ok, {100, [1]}} = py:eval(Ctx, <<"(COUNTER, ITEMS)">>),
		Self = self(),
		Pid = spawn(fun() -> Self ! {other, py:eval(Ctx, <<"(COUNTER, ITEMS)">>)} end),
		%% ITEMS is copied with the globals dict (a shallow copy): the list object is shared, as the
		%% docs' "isolated copy" of globals means; COUNTER is the other process's own.
		receive {other, {ok, {0, _}}} -> ok after 10000 -> error({no_answer, Pid}) end,
		stop(Ctx)
	end).

%% The docs' clearing example: a context made before clear_code keeps the preload, one
%% made after does not have it.
docs_clear_affects_only_new_contexts(_) ->
	with_contexts(fun() ->
		ok = py_preload:set_code(<<"PRELOADED = 42">>),
		{ok, Ctx1} = py_context:new(#{mode => worker}),
		{ok, 42} = py:eval(Ctx1, <<"PRELOADED">>),
		ok = py_preload:clear_code(),
		{ok, 42} = py:eval(Ctx1, <<"PRELOADED">>),
		{ok, Ctx2} = py_context:new(#{mode => worker}),
		{error, _} = py:eval(Ctx2, <<"PRELOADED">>),
		stop(Ctx1),
		stop(Ctx2)
	end).

%% A preload that raises fails the context's start.
preload_error_fails_context(_) ->
	with_contexts(fun() ->
		ok = py_preload:set_code(<<"1/0">>),
		{error, _} = py_context:new(#{mode => worker})
	end).

%% The default pool's contexts of a
%% port that restarts start from the preload that is set then.
restarted_port_gets_preload(_) ->
	ok = py_preload:set_code(?DOCS_CODE),
	Gen = py_ct_helper:generation(1),
	_ = os:cmd("kill -9 " ++ integer_to_list(py_ct_helper:os_pid(1))),
	ok = py_ct_helper:eventually(fun() ->
		case py_port:info(1) of
			#{status := up, generation := G} -> G > Gen;
			_ -> false
		end
	end, 10000),
	{ok, 10} = py_ct_helper:on(1, 0, fun() -> py:eval(<<"shared_helper(5)">>) end),
	{ok, 10} = py_ct_helper:on(1, 1, fun() -> py:eval(<<"shared_helper(5)">>) end),
	%% The other port did not restart: its contexts have no preload.
	{error, {'NameError', _}} = py_ct_helper:on(2, 0, fun() -> py:eval(<<"shared_helper(5)">>) end).

%% Internal.

with_contexts(Fun) ->
	Fun().

stop(Ctx) ->
	_ = (catch py_context:stop(Ctx)),
	ok.
