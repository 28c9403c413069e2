%% Python -> Erlang: registered functions, reentrancy, threads, erlang.send, erlang.sleep.
-module(py_callback_SUITE).

-include_lib("common_test/include/ct.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1]).
-export([import_syntax/1, attribute_syntax/1, explicit_call/1, module_function/1, self_is_caller/1,
	args_and_result_conversion/1, tuple_result_unpacks/1, exception_in_fun/1, throw_and_exit_in_fun/1,
	unknown_name/1, unregister_fn/1, reentrant_docs_example/1, nested_10_levels/1, nested_50_levels/1,
	concurrent_reentrant_callers/1, callback_from_thread/1, callback_from_thread_pool/1,
	erlang_sleep_holds_context/1, send_to_self/1, send_to_registered_name/1, send_to_name_node/1,
	send_to_dead_pid/1, send_to_unknown_name/1, cast_send_example/1, whereis_name/1,
	unconvertible_callback_args/1, unconvertible_callback_result/1]).

%% Used by module_function.
-export([mf_callback/1]).

all() ->
	[import_syntax, attribute_syntax, explicit_call, module_function, self_is_caller,
	 args_and_result_conversion, tuple_result_unpacks, exception_in_fun, throw_and_exit_in_fun,
	 unknown_name, unregister_fn, reentrant_docs_example, nested_10_levels, nested_50_levels,
	 concurrent_reentrant_callers, callback_from_thread, callback_from_thread_pool,
	 erlang_sleep_holds_context, send_to_self, send_to_registered_name, send_to_name_node,
	 send_to_dead_pid, send_to_unknown_name, cast_send_example, whereis_name,
	 unconvertible_callback_args, unconvertible_callback_result].

init_per_suite(Config) ->
	ok = py_ct_helper:start_app([{num_ports, 2}, {contexts_per_port, 2}]),
	ok = py:register_function(my_func, fun([X, Y]) -> X + Y end),
	Config.

end_per_suite(_Config) ->
	py_ct_helper:stop_app().

mf_callback([A, B]) ->
	{mf, A * B}.

%% The docs' import syntax: `from erlang import my_func`.
import_syntax(_) ->
	ok = py:exec(<<"from erlang import my_func\nresult = my_func(10, 20)">>),
	{ok, 30} = py:eval(<<"result">>).

%% The attribute syntax; `erlang` is available in eval without an import.
attribute_syntax(_) ->
	{ok, 3} = py:eval(<<"erlang.my_func(1, 2)">>),
	{ok, 7} = py:eval(<<"import erlang\nerlang.my_func(3, 4)">>).

%% The explicit syntax `erlang.call('my_func', ...)`, also through __import__.
explicit_call(_) ->
	{ok, 11} = py:eval(<<"erlang.call('my_func', 5, 6)">>),
	{ok, 2} = py:eval(<<"__import__('erlang').call('my_func', 1, 1)">>).

%% register_function/3 calls Module:Function(Args); tuples come back as tuples.
module_function(_) ->
	ok = py:register_function(mf, ?MODULE, mf_callback),
	{ok, {<<"mf">>, 12}} = py:eval(<<"erlang.mf(3, 4)">>).

%% The function runs in the calling process: self() there is the caller.
self_is_caller(_) ->
	ok = py:register_function(whoami, fun([]) -> self() end),
	{ok, P} = py:eval(<<"erlang.whoami()">>),
	true = P =:= self(),
	Self = self(),
	ok = py:register_function(put_in_dict, fun([V]) -> put(from_python, V), ok end),
	{ok, <<"ok">>} = py:eval(<<"erlang.put_in_dict('stored')">>),
	<<"stored">> = get(from_python),
	Self = self().

%% Arguments arrive converted (str -> binary, dict -> map) and the result goes back converted.
args_and_result_conversion(_) ->
	ok = py:register_function(echo, fun(Args) -> Args end),
	{ok, [1, <<"a">>, [1, 2], #{<<"k">> := 2.5}, none, {true, false}]} =
		py:eval(<<"erlang.echo(1, 'a', [1, 2], {'k': 2.5}, None, (True, False))">>),
	ok = py:register_function(give, fun([]) -> #{atom_key => [hello, 1.5, {<<"x">>}]} end),
	{ok, true} = py:eval(<<"erlang.give() == {'atom_key': ['hello', 1.5, ('x',)]}">>).

%% The docs' run_command example: a tuple result unpacks in Python.
tuple_result_unpacks(_) ->
	ok = py:register_function(run_command, fun([Cmd, Args]) -> {0, <<Cmd/binary, " ", (length(Args) + $0)>>} end),
	{ok, {0, <<"ls 2">>}} = py:eval(<<"status, output = erlang.run_command('ls', ['-l', '/'])\n(status, output)">>).

%% An exception in the function raises erlang.ErlangError (a RuntimeError) in Python; nothing dies.
exception_in_fun(_) ->
	ok = py:register_function(bad, fun([]) -> error(boom_reason) end),
	{error, {'ErlangError', Msg}} = py:eval(<<"erlang.bad()">>),
	true = string:find(Msg, "boom_reason") =/= nomatch,
	{ok, <<"caught">>} = py:eval(<<"try:\n    erlang.bad()\n    r = 'not raised'\nexcept RuntimeError as e:\n"
		"    r = 'caught' if 'boom_reason' in str(e) else str(e)\nr">>),
	{ok, true} = py:eval(<<"issubclass(erlang.ErlangError, RuntimeError)">>),
	{ok, 3} = py:eval(<<"erlang.my_func(1, 2)">>).

%% throw and exit in the function raise too, and their text names the class.
throw_and_exit_in_fun(_) ->
	ok = py:register_function(thrower, fun([]) -> throw(thrown_value) end),
	ok = py:register_function(exiter, fun([]) -> exit(exit_value) end),
	{error, {'ErlangError', M1}} = py:eval(<<"erlang.thrower()">>),
	true = string:find(M1, "thrown_value") =/= nomatch,
	{error, {'ErlangError', M2}} = py:eval(<<"erlang.exiter()">>),
	true = string:find(M2, "exit_value") =/= nomatch,
	true = is_process_alive(self()).

%% An unknown name gives a clear ErlangError.
unknown_name(_) ->
	{error, {'ErlangError', Msg}} = py:eval(<<"erlang.call('never_registered_fn', 1)">>),
	true = string:find(Msg, "no Erlang function registered as 'never_registered_fn'") =/= nomatch.

%% After unregister_function the name is unknown again: no attribute of erlang any more, and
%% erlang.call of it raises ErlangError.
unregister_fn(_) ->
	ok = py:register_function(temp_fn, fun([]) -> 1 end),
	{ok, 1} = py:eval(<<"erlang.temp_fn()">>),
	ok = py:unregister_function(temp_fn),
	{error, {'AttributeError', _}} = py:eval(<<"erlang.temp_fn()">>),
	{error, {'ErlangError', Msg}} = py:eval(<<"erlang.call('temp_fn')">>),
	true = string:find(Msg, "no Erlang function registered as 'temp_fn'") =/= nomatch.

%% The docs' reentrancy example: Python -> Erlang -> Python -> back, {ok, 21}.
reentrant_docs_example(_) ->
	ok = py:register_function(double_via_python, fun([X]) ->
		{ok, R} = py:call('__main__', double, [X]),
		R
	end),
	ok = py:exec(<<"def double(x):\n    return x * 2\n\n"
		"def process(x):\n    from erlang import call\n    result = call('double_via_python', x)\n"
		"    return result + 1\n">>),
	{ok, 21} = py:call('__main__', process, [10]).

%% The docs' 10-level nesting example.
nested_10_levels(_) ->
	ok = register_level(),
	{ok, 10} = py:call('__main__', start, [10]).

%% 50 levels nest the same way.
nested_50_levels(_) ->
	ok = register_level(),
	{ok, 50} = py:call('__main__', start, [50]).

%% 20 processes nesting 8 levels at the same time on 4 contexts all finish right.
concurrent_reentrant_callers(_) ->
	ok = py:register_function(level, fun level/1),
	Self = self(),
	Pids = [spawn_link(fun() ->
		ok = define_levels(),
		Self ! {self(), py:call('__main__', start, [8 + I rem 3])}
	end) || I <- lists:seq(1, 20)],
	Results = [receive {P, R} -> R after 60000 -> error(timeout) end || P <- Pids],
	Results = [{ok, 8 + I rem 3} || I <- lists:seq(1, 20)].

%% A threading.Thread calls Erlang (three calls in a row, the docs' add_one example).
callback_from_thread(_) ->
	ok = py:register_function(add_one, fun([X]) -> X + 1 end),
	{ok, 3} = py:eval(<<"import threading\nout = []\n"
		"def work():\n    v = 0\n    for _ in range(3):\n        v = erlang.add_one(v)\n    out.append(v)\n"
		"t = threading.Thread(target=work)\nt.start()\nt.join()\nout[0]">>).

%% A ThreadPoolExecutor's workers call Erlang concurrently.
callback_from_thread_pool(_) ->
	ok = py:register_function(double_it, fun([X]) -> X * 2 end),
	{ok, [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]} = py:eval(<<"from concurrent.futures import ThreadPoolExecutor\n"
		"with ThreadPoolExecutor(max_workers=4) as ex:\n    res = list(ex.map(erlang.double_it, range(10)))\nres">>).

%% While a request waits in erlang.sleep, its context serves no other (not nested) request: one
%% request at a time per context (PROTOCOL.md §3.4); the other runs once the sleep is over.
erlang_sleep_holds_context(_) ->
	Self = self(),
	{A, _} = py_ct_helper:spawn_on(1, 0, fun() ->
		R = py:eval(<<"erlang.send(p, 'sleeping') or erlang.sleep(1.0) or 'woke'">>, #{p => Self}),
		{R, erlang:monotonic_time(millisecond)}
	end),
	receive <<"sleeping">> -> ok after 10000 -> error(not_sleeping) end,
	T0 = erlang:monotonic_time(millisecond),
	{ok, 2} = py_ct_helper:on(1, 0, fun() -> py:eval(<<"1+1">>) end),
	true = py_ct_helper:elapsed_ms(T0) >= 500,
	receive
		{A, result, {{ok, <<"woke">>}, _}} -> ok
	after 10000 ->
		error(no_wake)
	end.

%% erlang.send to a pid delivers the converted message.
send_to_self(_) ->
	{ok, none} = py:eval(<<"erlang.send(p, ('hello', 1, [2.5]))">>, #{p => self()}),
	receive {<<"hello">>, 1, [2.5]} -> ok after 5000 -> error(no_message) end.

%% erlang.send to a registered name (a str).
send_to_registered_name(_) ->
	true = register(py_cb_suite_target, self()),
	{ok, none} = py:eval(<<"erlang.send('py_cb_suite_target', 42)">>),
	receive 42 -> ok after 5000 -> error(no_message) end,
	true = unregister(py_cb_suite_target).

%% erlang.send to (name, node).
send_to_name_node(_) ->
	true = register(py_cb_suite_target2, self()),
	{ok, none} = py:eval(<<"erlang.send(('py_cb_suite_target2', n), 7)">>, #{n => node()}),
	receive 7 -> ok after 5000 -> error(no_message) end,
	true = unregister(py_cb_suite_target2).

%% erlang.send to a process that exited raises erlang.ProcessError.
send_to_dead_pid(_) ->
	{Pid, MRef} = spawn_monitor(fun() -> ok end),
	receive {'DOWN', MRef, process, Pid, _} -> ok end,
	{error, {'ProcessError', _}} = py:eval(<<"erlang.send(p, 1)">>, #{p => Pid}),
	{ok, <<"caught">>} = py:eval(<<"try:\n    erlang.send(p, 1)\n    r = 'sent'\n"
		"except erlang.ProcessError:\n    r = 'caught'\nr">>, #{p => Pid}).

%% erlang.send to a name nobody registered raises erlang.ProcessError.
send_to_unknown_name(_) ->
	{error, {'ProcessError', _}} = py:eval(<<"erlang.send('nobody_has_this_name_xyz', 1)">>).

%% The docs' cast example: the message arrives with atoms turned into binaries.
cast_send_example(_) ->
	ok = py:cast(erlang, send, [self(), {done, <<"task1">>}]),
	receive {<<"done">>, <<"task1">>} -> ok after 5000 -> error(no_message) end.

%% erlang.whereis gives the registered pid, or None.
whereis_name(_) ->
	true = register(py_cb_suite_where, self()),
	{ok, P} = py:eval(<<"erlang.whereis('py_cb_suite_where')">>),
	true = P =:= self(),
	{ok, none} = py:eval(<<"erlang.whereis('nobody_has_this_name_xyz')">>),
	true = unregister(py_cb_suite_where).

%% Internal.

register_level() ->
	ok = py:register_function(level, fun level/1),
	define_levels().

define_levels() ->
	py:exec(<<"def next_level(n, max):\n    from erlang import call\n    return call('level', n, max)\n\n"
		"def start(max):\n    from erlang import call\n    return call('level', 1, max)\n">>).

level([N, Max]) when N >= Max ->
	N;
level([N, Max]) ->
	{ok, Result} = py:call('__main__', next_level, [N + 1, Max]),
	Result.

%% Arguments Python cannot convert never leave the port: erlang.call raises TypeError naming the type,
%% the Erlang function is not run, and the context goes on serving.
unconvertible_callback_args(_) ->
	Self = self(),
	ok = py:register_function(must_not_run, fun(_) -> Self ! ran, ok end),
	{error, {'TypeError', Msg}} = py:eval(<<"erlang.call('must_not_run', {1, 2})">>),
	true = string:find(Msg, "'set'") =/= nomatch,
	receive ran -> error(callback_ran) after 0 -> ok end,
	{ok, 3} = py:eval(<<"erlang.my_func(1, 2)">>).

%% A result the port cannot turn into Python (an improper list) raises ErlangError in Python, which
%% code there can catch; nothing crashes.
unconvertible_callback_result(_) ->
	ok = py:register_function(improper, fun([]) -> [1 | 2] end),
	{error, {'ErlangError', Msg}} = py:eval(<<"erlang.improper()">>),
	true = string:find(Msg, "improper list") =/= nomatch,
	{ok, <<"caught">>} = py:eval(<<"try:\n    erlang.improper()\n    r = 'no'\nexcept erlang.ErlangError:\n"
		"    r = 'caught'\nr">>),
	{ok, 3} = py:eval(<<"erlang.my_func(1, 2)">>).
