%% py:last_traceback/0 (issue 12): the formatted traceback of the caller's last Python exception,
%% kept per process, which the Elixir wrapper's Py.Error carries.
-module(py_traceback_SUITE).

-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1]).
-export([undefined_before_any_error/1, traceback_of_eval_error/1, traceback_of_call_error/1,
	overwritten_by_next_error/1, kept_after_success/1, per_process/1, context_call/1,
	unconvertible_result/1, scheduled_callback_failure/1]).

all() ->
	[undefined_before_any_error, traceback_of_eval_error, traceback_of_call_error,
	 overwritten_by_next_error, kept_after_success, per_process, context_call, unconvertible_result,
	 scheduled_callback_failure].

init_per_suite(Config) ->
	ok = py_ct_helper:start_app([{num_ports, 1}, {contexts_per_port, 2}]),
	Config.

end_per_suite(_Config) ->
	py_ct_helper:stop_app().

undefined_before_any_error(_) ->
	Self = self(),
	spawn_link(fun() -> Self ! {tb, py:last_traceback()} end),
	receive {tb, Tb} -> ?assertEqual(undefined, Tb) after 5000 -> error(no_reply) end.

traceback_of_eval_error(_) ->
	{error, {'ZeroDivisionError', "division by zero"}} = py:eval(<<"1/0">>),
	Tb = py:last_traceback(),
	?assert(is_binary(Tb)),
	?assertMatch({match, _}, re:run(Tb, <<"^Traceback \\(most recent call last\\):">>)),
	?assertMatch({match, _}, re:run(Tb, <<"ZeroDivisionError: division by zero\\n?$">>)).

%% The traceback names the Python function the error was raised in.
traceback_of_call_error(_) ->
	ok = py:exec(<<"def inner(x):\n    return 10 // x\n\ndef outer(x):\n    return inner(x)\n">>),
	{error, {'ZeroDivisionError', _}} = py:call('__main__', outer, [0]),
	Tb = py:last_traceback(),
	?assertMatch({match, _}, re:run(Tb, <<"in outer">>)),
	?assertMatch({match, _}, re:run(Tb, <<"in inner">>)).

overwritten_by_next_error(_) ->
	{error, {'ZeroDivisionError', _}} = py:eval(<<"1/0">>),
	{error, {'NameError', _}} = py:eval(<<"undefined_name_xyz">>),
	?assertMatch({match, _}, re:run(py:last_traceback(), <<"NameError">>)),
	?assertEqual(nomatch, re:run(py:last_traceback(), <<"ZeroDivisionError">>)).

%% A successful call leaves the last traceback as it was (like sys.last_traceback).
kept_after_success(_) ->
	{error, {'KeyError', _}} = py:eval(<<"{}['k']">>),
	{ok, 2} = py:eval(<<"1 + 1">>),
	?assertMatch({match, _}, re:run(py:last_traceback(), <<"KeyError">>)).

per_process(_) ->
	{error, {'ZeroDivisionError', _}} = py:eval(<<"1/0">>),
	Self = self(),
	spawn_link(fun() ->
		{error, {'ValueError', _}} = py:eval(<<"int('x')">>),
		Self ! {tb, py:last_traceback()}
	end),
	receive {tb, Other} -> ?assertMatch({match, _}, re:run(Other, <<"ValueError">>)) after 10000 -> error(no_reply) end,
	?assertMatch({match, _}, re:run(py:last_traceback(), <<"ZeroDivisionError">>)).

context_call(_) ->
	{ok, Ctx} = py_context:new(#{mode => worker}),
	try
		{error, {'AttributeError', _}} = py:call(Ctx, math, no_such_function, []),
		?assertMatch({match, _}, re:run(py:last_traceback(), <<"AttributeError">>))
	after
		ok = py_context:stop(Ctx)
	end.

%% A result that cannot be converted is a TypeError too, with a traceback string.
unconvertible_result(_) ->
	ok = py_traceback:clear(),
	?assertEqual(undefined, py:last_traceback()),
	{error, {'TypeError', _}} = py:eval(<<"{1, 2}">>),
	?assert(is_binary(py:last_traceback())).

%% An erlang.schedule callback that fails is an Erlang failure (no Python exception, no traceback):
%% the traceback of an earlier Python error must not be passed off as its own (Py.Error carries it).
scheduled_callback_failure(_) ->
	ok = py_callback:register(<<"tb_crash">>, fun([_]) -> error(boom) end),
	try
		{error, {'ZeroDivisionError', _}} = py:eval(<<"1/0">>),
		{error, {'ErlangError', _}} = py:eval(<<"erlang.schedule('tb_crash', 1)">>),
		?assertEqual(undefined, py:last_traceback())
	after
		py_callback:unregister_function(<<"tb_crash">>)
	end.
