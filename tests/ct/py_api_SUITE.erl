%% The documented py API against the real port: call/eval/exec, async, conversions, errors.
-module(py_api_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1]).
-export([consecutive_callers_use_both_ports/1]).
-export([call_examples/1, call_kwargs/1, call_string_and_binary_names/1, call_with_timeout_arg/1,
	call_main_after_exec/1, eval_examples/1, eval_charlist_code/1, eval_locals_binary_keys/1,
	eval_lambda_default_capture/1, eval_statements/1, exec_returns_ok/1, exec_visible_to_eval/1,
	error_name_error/1, error_zero_division/1, error_syntax/1, error_module_not_found/1,
	error_attribute/1, error_type/1, error_unknown_class_stays_binary/1, error_exec/1,
	erlang_to_python_types/1, python_to_erlang_types/1, big_ints/1, floats_nan_inf/1,
	bytes_and_binaries/1, pid_round_trip/1, opaque_round_trip/1, unconvertible_result/1,
	improper_list_refused/1, large_binary_round_trip/1, spawn_call_await/1, await_timeout_then_result/1,
	spawn_call_error/1, spawn_call_uses_caller_env/1, cast_send/1, cast_kwargs/1, print_goes_to_caller/1,
	version/1, execution_mode/1, num_contexts/1, stats/1, memory_stats_and_gc/1, concurrent_callers/1]).

all() ->
	[consecutive_callers_use_both_ports,
	 call_examples, call_kwargs, call_string_and_binary_names, call_with_timeout_arg,
	 call_main_after_exec, eval_examples, eval_charlist_code, eval_locals_binary_keys,
	 eval_lambda_default_capture, eval_statements, exec_returns_ok, exec_visible_to_eval,
	 error_name_error, error_zero_division, error_syntax, error_module_not_found, error_attribute,
	 error_type, error_unknown_class_stays_binary, error_exec, erlang_to_python_types,
	 python_to_erlang_types, big_ints, floats_nan_inf, bytes_and_binaries, pid_round_trip,
	 opaque_round_trip, unconvertible_result, improper_list_refused, large_binary_round_trip,
	 spawn_call_await, await_timeout_then_result, spawn_call_error, spawn_call_uses_caller_env,
	 cast_send, cast_kwargs, print_goes_to_caller, version, execution_mode, num_contexts, stats,
	 memory_stats_and_gc, concurrent_callers].

init_per_suite(Config) ->
	ok = py_ct_helper:start_app([{num_ports, 2}, {contexts_per_port, 2}]),
	Config.

end_per_suite(_Config) ->
	py_ct_helper:stop_app().

%% The quick examples of the docs give exactly the documented results.
call_examples(_) ->
	{ok, 4.0} = py:call(math, sqrt, [16]),
	{ok, 120} = py:call(math, factorial, [5]),
	{ok, 3} = py:call(operator, add, [1, 2]),
	{ok, [1, 2, 3]} = py:call(builtins, sorted, [[3, 1, 2]]).

%% Kwargs (atom or binary keys) become keyword arguments.
call_kwargs(_) ->
	{ok, <<"{\"a\": 2, \"b\": 1}">>} = py:call(json, dumps, [#{<<"b">> => 1, <<"a">> => 2}], #{sort_keys => true}),
	{ok, <<"{\n  \"a\": 1\n}">>} = py:call(json, dumps, [#{<<"a">> => 1}], #{indent => 2}),
	{ok, 255} = py:call(builtins, int, [<<"ff">>], #{<<"base">> => 16}).

%% Module and function names may be atoms, binaries or strings.
call_string_and_binary_names(_) ->
	{ok, 3.0} = py:call("math", "sqrt", [9]),
	{ok, 3.0} = py:call(<<"math">>, <<"sqrt">>, [9]),
	{ok, <<"/a/b">>} = py:call('os.path', join, [<<"/a">>, <<"b">>]).

%% call/5 takes a timeout and answers normally within it.
call_with_timeout_arg(_) ->
	{ok, 4.0} = py:call(math, sqrt, [16], #{}, 5000).

%% A function defined with py:exec is callable as '__main__':F from the same process.
call_main_after_exec(_) ->
	ok = py:exec(<<"def add(a, b=10):\n    return a + b\n">>),
	{ok, 15} = py:call('__main__', add, [5]),
	{ok, 7} = py:call('__main__', add, [5], #{b => 2}).

%% The eval examples of the docs.
eval_examples(_) ->
	{ok, 45} = py:eval(<<"sum(range(10))">>),
	{ok, 25} = py:eval(<<"x * y">>, #{x => 5, y => 5}),
	{ok, 42} = py:eval(<<"21 * 2">>),
	{ok, 6} = py:eval(<<"2 + 4">>),
	{ok, 6} = py:eval(<<"a + b">>, #{a => 2, b => 4}, 5000).

%% Code may be a charlist, as in the docs' build check py:eval("1 + 1").
eval_charlist_code(_) ->
	{ok, 2} = py:eval("1 + 1"),
	{ok, <<"é"/utf8>>} = py:eval("'é'"),
	ok = py:exec("z = 3"),
	{ok, 3} = py:eval("z").

%% Locals keys may be binaries.
eval_locals_binary_keys(_) ->
	{ok, 3} = py:eval(<<"a + b">>, #{<<"a">> => 1, b => 2}).

%% The docs' lambda example: locals are captured with default arguments.
eval_lambda_default_capture(_) ->
	{ok, [2, 4, 6]} = py:eval(<<"list(map(lambda x, m=multiplier: x * m, items))">>,
		#{items => [1, 2, 3], multiplier => 2}).

%% Statements followed by an expression give that expression's value; statements only give none.
eval_statements(_) ->
	{ok, 10} = py:eval(<<"x = 5\nx * 2">>),
	{ok, 2} = py:eval(<<"import math; math.floor(2.5)">>),
	{ok, none} = py:eval(<<"import logging\nlogging.getLogger('t').debug('quiet')\ny = 1\n">>),
	{ok, [1, 2]} = py:eval(<<"def f():\n    return [1, 2]\nf()">>).

%% py:exec returns ok.
exec_returns_ok(_) ->
	ok = py:exec(<<"import math\nv = math.pi">>),
	ok = py:exec(<<"">>).

%% What py:exec defines, later py:eval in the same process sees.
exec_visible_to_eval(_) ->
	ok = py:exec(<<"counter = 0">>),
	ok = py:exec(<<"counter += 1">>),
	{ok, 1} = py:eval(<<"counter">>).

%% The NameError example, exact shape.
error_name_error(_) ->
	{error, {'NameError', "name 'undefined_name_xyz' is not defined"}} = py:eval(<<"undefined_name_xyz">>).

%% The ZeroDivisionError example, exact shape.
error_zero_division(_) ->
	{error, {'ZeroDivisionError', "division by zero"}} = py:eval(<<"1/0">>).

%% A syntax error is a SyntaxError with Python's message.
error_syntax(_) ->
	{error, {'SyntaxError', Msg}} = py:eval(<<"1 +* 2">>),
	true = is_list(Msg) andalso Msg =/= [],
	{error, {'SyntaxError', _}} = py:exec(<<"def broken(:\n">>).

%% Importing a missing module is ModuleNotFoundError naming it.
error_module_not_found(_) ->
	{error, {'ModuleNotFoundError', "No module named 'no_such_module_abc'"}} =
		py:call(no_such_module_abc, f, []).

%% A missing function is an AttributeError.
error_attribute(_) ->
	{error, {'AttributeError', "module 'math' has no attribute 'no_such_fn'"}} = py:call(math, no_such_fn, []).

%% Wrong arguments are a TypeError.
error_type(_) ->
	{error, {'TypeError', _}} = py:call(math, sqrt, [<<"x">>]),
	{error, {'TypeError', _}} = py:call(math, sqrt, [1, 2]).

%% A class name that is not an atom comes back as a binary: Python never mints atoms.
error_unknown_class_stays_binary(_) ->
	Class = <<"MyVeryOwnErrorClass", (integer_to_binary(erlang:unique_integer([positive])))/binary>>,
	ok = py:exec(<<"class ", Class/binary, "(Exception): pass">>),
	{error, {Class, "boom"}} = py:exec(<<"raise ", Class/binary, "('boom')">>),
	{'EXIT', {badarg, _}} = (catch binary_to_existing_atom(Class, utf8)),
	ok.

%% An exception in py:exec is an error tuple too.
error_exec(_) ->
	{error, {'ValueError', "bad value"}} = py:exec(<<"raise ValueError('bad value')">>).

%% Every row of the Erlang -> Python table (PROTOCOL.md §2).
erlang_to_python_types(_) ->
	Cases = [
		{1, <<"int">>}, {-5, <<"int">>}, {1 bsl 100, <<"int">>}, {1.5, <<"float">>},
		{<<"text">>, <<"str">>}, {<<255, 0>>, <<"bytes">>}, {{bytes, <<"abc">>}, <<"bytes">>},
		{true, <<"bool">>}, {false, <<"bool">>}, {none, <<"NoneType">>}, {nil, <<"NoneType">>},
		{undefined, <<"NoneType">>}, {nan, <<"float">>}, {infinity, <<"float">>},
		{neg_infinity, <<"float">>}, {hello, <<"str">>}, {[1, 2], <<"list">>}, {"abc", <<"list">>},
		{{1, 2}, <<"tuple">>}, {#{a => 1}, <<"dict">>}, {self(), <<"Pid">>}, {make_ref(), <<"Ref">>},
		{[], <<"list">>}, {{}, <<"tuple">>}
	],
	_ = [{{ok, Type}, V} = {py:eval(<<"type(v).__name__">>, #{v => V}), V} || {V, Type} <- Cases],
	{ok, true} = py:eval(<<"v == 2**100">>, #{v => 1 bsl 100}),
	{ok, true} = py:eval(<<"v == b'abc'">>, #{v => {bytes, <<"abc">>}}),
	{ok, true} = py:eval(<<"v == b'\\xff\\x00'">>, #{v => <<255, 0>>}),
	{ok, true} = py:eval(<<"v == 'hello'">>, #{v => hello}),
	{ok, true} = py:eval(<<"v == [97, 98, 99]">>, #{v => "abc"}),
	{ok, true} = py:eval(<<"v == {'a': 1, 'b': 'x'}">>, #{v => #{a => 1, <<"b">> => <<"x">>}}),
	{ok, true} = py:eval(<<"__import__('math').isnan(v)">>, #{v => nan}),
	{ok, true} = py:eval(<<"v == float('inf')">>, #{v => infinity}),
	{ok, true} = py:eval(<<"v == float('-inf')">>, #{v => neg_infinity}),
	{ok, true} = py:eval(<<"v == 'héllo ✓'"/utf8>>, #{v => <<"héllo ✓"/utf8>>}),
	%% A reference is an erlang.Ref: hashable, equal to itself sent again, back as the same ref.
	Ref = make_ref(),
	{ok, {Ref, 1, true, true}} = py:eval(<<"(v, {v: 1}[w], v == w, isinstance(v, erlang.Ref))">>,
		#{v => Ref, w => Ref}).

%% Every row of the Python -> Erlang table, with the docs' examples.
python_to_erlang_types(_) ->
	{ok, 3.14} = py:eval(<<"3.14">>),
	{ok, true} = py:eval(<<"True">>),
	{ok, false} = py:eval(<<"False">>),
	{ok, none} = py:eval(<<"None">>),
	{ok, <<"héllo"/utf8>>} = py:eval(<<"'héllo'"/utf8>>),
	{ok, <<72, 101, 108, 108, 111>>} = py:eval(<<"b'Hello'">>),
	{ok, <<1, 2>>} = py:eval(<<"bytearray(b'\\x01\\x02')">>),
	{ok, <<"ab">>} = py:eval(<<"memoryview(b'ab')">>),
	{ok, #{<<"a">> := 1, <<"b">> := 2}} = py:eval(<<"{'a': 1, 'b': 2}">>),
	{ok, #{<<"user">> := #{<<"name">> := <<"Alice">>, <<"age">> := 30}}} =
		py:eval(<<"{'user': {'name': 'Alice', 'age': 30}}">>),
	{ok, [{1, <<"a">>}, {2, <<"b">>}]} = py:eval(<<"[(1, 'a'), (2, 'b')]">>),
	{ok, #{<<"items">> := [1, 2, 3], <<"meta">> := {<<"ok">>, 200}}} =
		py:eval(<<"{'items': [1, 2, 3], 'meta': ('ok', 200)}">>),
	{ok, {}} = py:eval(<<"()">>),
	{ok, []} = py:eval(<<"[]">>),
	{ok, #{}} = py:eval(<<"{}">>),
	{ok, #{1 := <<"x">>}} = py:eval(<<"{1: 'x'}">>),
	{ok, [1, 2, 3]} = py:eval(<<"sorted(list({3, 1, 2}))">>),
	{ok, <<"2024-01-15T10:30:00">>} = py:eval(<<"__import__('datetime').datetime(2024, 1, 15, 10, 30).isoformat()">>),
	{ok, <<"3.14159265358979323846">>} = py:eval(<<"str(__import__('decimal').Decimal('3.14159265358979323846'))">>).

%% Integers: int64 range stays an integer, beyond it Python returns a charlist of digits.
big_ints(_) ->
	{ok, "123456789012345678901234567890"} = py:eval(<<"123456789012345678901234567890">>),
	{ok, 9223372036854775807} = py:eval(<<"2**63 - 1">>),
	{ok, -9223372036854775808} = py:eval(<<"-2**63">>),
	{ok, "9223372036854775808"} = py:eval(<<"2**63">>),
	{ok, "-18446744073709551616"} = py:eval(<<"-2**64">>),
	Big = 1 bsl 200,
	{ok, Digits} = py:eval(<<"v * 1">>, #{v => Big}),
	Big = list_to_integer(Digits).

%% nan/inf come back as the atoms and floats round-trip.
floats_nan_inf(_) ->
	{ok, nan} = py:eval(<<"float('nan')">>),
	{ok, infinity} = py:eval(<<"float('inf')">>),
	{ok, neg_infinity} = py:eval(<<"float('-inf')">>),
	{ok, [nan, infinity, neg_infinity]} = py:eval(<<"v">>, #{v => [nan, infinity, neg_infinity]}),
	{ok, 1.0e300} = py:eval(<<"v">>, #{v => 1.0e300}),
	{ok, -2.5e-300} = py:eval(<<"v">>, #{v => -2.5e-300}).

%% Non-UTF-8 binaries arrive as bytes, {bytes, B} explicitly; both come back as binaries.
bytes_and_binaries(_) ->
	{ok, <<255, 254>>} = py:eval(<<"b'\\xff\\xfe'">>),
	{ok, <<255, 254>>} = py:eval(<<"v">>, #{v => <<255, 254>>}),
	{ok, <<"abc">>} = py:eval(<<"v">>, #{v => {bytes, <<"abc">>}}),
	{ok, 3} = py:eval(<<"len(v)">>, #{v => {bytes, <<"abc">>}}),
	{ok, <<>>} = py:eval(<<"v">>, #{v => <<>>}).

%% A pid goes to Python as erlang.Pid and comes back as the same pid; Pids are hashable.
pid_round_trip(_) ->
	{ok, P} = py:eval(<<"p">>, #{p => self()}),
	true = P =:= self(),
	{ok, true} = py:eval(<<"p == q and hash(p) == hash(q) and len({p, q}) == 1">>, #{p => self(), q => self()}),
	Other = spawn(fun() -> ok end),
	{ok, false} = py:eval(<<"p == q">>, #{p => self(), q => Other}),
	{ok, #{<<"k">> := Pid}} = py:eval(<<"{'k': p}">>, #{p => self()}),
	true = Pid =:= self().

%% References, ports and funs are opaque in Python and round-trip.
opaque_round_trip(_) ->
	Ref = make_ref(),
	{ok, Ref} = py:eval(<<"r">>, #{r => Ref}),
	Fun = fun(X) -> X + 1 end,
	{ok, Fun2} = py:eval(<<"f">>, #{f => Fun}),
	2 = Fun2(1),
	Port = hd(erlang:ports()),
	{ok, Port} = py:eval(<<"p">>, #{p => Port}),
	Export = fun lists:reverse/1,
	{ok, Export} = py:eval(<<"f">>, #{f => Export}).

%% A result Python cannot convert is a TypeError naming the type.
unconvertible_result(_) ->
	{error, {'TypeError', Msg}} = py:eval(<<"{1,2}">>),
	true = string:find(Msg, "set") =/= nomatch,
	{error, {'TypeError', _}} = py:eval(<<"object()">>),
	%% and the context goes on serving
	{ok, 2} = py:eval(<<"1+1">>).

%% An improper list cannot be sent: {badarg, improper_list} in both codecs (ETF: the port refuses it,
%% msgpack: the encoder does), however deep it sits; the port goes on serving.
improper_list_refused(_) ->
	{error, {badarg, improper_list}} = py:eval(<<"v">>, #{v => [1 | 2]}),
	{error, {badarg, improper_list}} = py:call(operator, getitem, [[[a, [1, 2 | 3]]], 0]),
	{error, {badarg, improper_list}} = py:eval(<<"v">>, #{v => #{k => {[x | y]}}}),
	{ok, 2} = py:eval(<<"1+1">>).

%% 8 MB of bytes go to Python and back unchanged.
large_binary_round_trip(_) ->
	Bin = crypto:strong_rand_bytes(8 * 1024 * 1024),
	{ok, Bin} = py:eval(<<"v">>, #{v => Bin}),
	{ok, 8388608} = py:eval(<<"len(v)">>, #{v => Bin}).

%% spawn_call returns at once; await gets the result (here an int beyond int64: digits).
spawn_call_await(_) ->
	Ref = py:spawn_call(math, factorial, [100]),
	true = is_reference(Ref),
	{ok, Digits} = py:await(Ref),
	Expected = lists:foldl(fun(N, Acc) -> N * Acc end, 1, lists:seq(1, 100)),
	Expected = list_to_integer(Digits),
	Ref2 = py:spawn_call(json, dumps, [[1]], #{indent => 1}),
	{ok, <<"[\n 1\n]">>} = py:await(Ref2, 30000).

%% await/2 times out while the call runs, and a later await still collects it.
await_timeout_then_result(_) ->
	Ref = py:spawn_call(time, sleep, [0.5]),
	{error, timeout} = py:await(Ref, 10),
	{ok, none} = py:await(Ref, 10000).

%% A Python exception in a spawned call comes back through await.
spawn_call_error(_) ->
	Ref = py:spawn_call(math, sqrt, [-1]),
	{error, {'ValueError', "math domain error"}} = py:await(Ref).

%% The spawned call runs in the caller's environment.
spawn_call_uses_caller_env(_) ->
	ok = py:exec(<<"def triple(x):\n    return 3 * x\n">>),
	{ok, 21} = py:await(py:spawn_call('__main__', triple, [7])).

%% The docs' cast example: Python's erlang.send delivers the message (atoms arrive as binaries).
cast_send(_) ->
	ok = py:cast(erlang, send, [self(), {done, <<"task1">>}]),
	receive
		{<<"done">>, <<"task1">>} -> ok
	after 10000 ->
		error(no_message)
	end.

%% cast/4 passes kwargs.
cast_kwargs(_) ->
	ok = py:exec(<<"def notify(pid, value=0):\n    __import__('erlang').send(pid, ('got', value))\n">>),
	ok = py:cast('__main__', notify, [self()], #{value => 42}),
	receive
		{<<"got">>, 42} -> ok
	after 10000 ->
		error(no_message)
	end.

%% print() in Python reaches the caller's group leader, never the protocol stream.
print_goes_to_caller(_) ->
	{{ok, 7}, Text} = py_ct_helper:capture_stdout(fun() ->
		py:eval(<<"print('hello from python', 42)\n7">>)
	end),
	true = binary:match(Text, <<"hello from python 42\n">>) =/= nomatch,
	{ok, 8} = py:eval(<<"__import__('os').write(1, b'raw fd 1 write\\n') + 0 and 8">>).

%% version/0 comes from the hello and names the embedded Python.
version(_) ->
	{ok, Version} = py:version(),
	{ok, Version} = py:eval(<<"__import__('platform').python_version()">>),
	{match, _} = re:run(Version, "^3\\.[0-9]+\\.[0-9]+").

%% execution_mode/0 mirrors context_mode (default worker), free_threaded on a free-threaded build with
%% the GIL off (py_modes_SUITE); no sub-interpreters yet.
execution_mode(_) ->
	Expected = case py_port:info(1) of
		#{build := free_threaded, hello := #{gil := disabled}} -> free_threaded;
		_ -> worker
	end,
	Expected = py:execution_mode(),
	%% owngil where the port's hello lists it (a GIL build of CPython >= 3.12).
	#{hello := #{modes := Modes}} = py_port:info(1),
	Expected2 = lists:member(owngil, Modes),
	Expected2 = py:subinterp_supported().

%% num_contexts/0 is ports x contexts per port.
num_contexts(_) ->
	4 = py:num_contexts().

%% stats/0 has one map per port with its OS pid, contexts, codec and Python.
stats(_) ->
	Stats = py:stats(),
	2 = length(Stats),
	Codec = application:get_env(erlang_python, codec, etf),
	[#{os_pid := P1, contexts := [_, _], codec := Codec, python := <<"3.", _/binary>>, status := up,
	   generation := G1}, #{os_pid := P2}] = Stats,
	true = is_integer(P1) andalso is_integer(P2) andalso P1 =/= P2 andalso G1 >= 1,
	true = py_ct_helper:os_alive(P1).

%% memory_stats/0 and gc/0,1 return the documented shapes.
memory_stats_and_gc(_) ->
	{ok, #{gc_stats := [S0, _, _], gc_count := {C0, _, _}, gc_threshold := {T0, _, _}}} = py:memory_stats(),
	#{<<"collected">> := _, <<"collections">> := _, <<"uncollectable">> := _} = S0,
	true = is_integer(C0) andalso is_integer(T0),
	{ok, N} = py:gc(),
	true = is_integer(N) andalso N >= 0,
	{ok, _} = py:gc(0),
	{ok, _} = py:gc(2),
	ok = py:tracemalloc_start(),
	{ok, #{traced_memory_current := Cur, traced_memory_peak := Peak}} = py:memory_stats(),
	true = is_integer(Cur) andalso Peak >= Cur,
	ok = py:tracemalloc_stop().

%% 200 processes calling at once all get their own answers.
concurrent_callers(_) ->
	Self = self(),
	Pids = [spawn_link(fun() -> Self ! {self(), py:eval(<<"n * n">>, #{n => N})} end) || N <- lists:seq(1, 200)],
	Results = [receive {P, R} -> R end || P <- Pids],
	Expected = [{ok, N * N} || N <- lists:seq(1, 200)],
	Expected = Results.

%% A process gets its place on its first request, round-robin over the ports: two processes started
%% one after the other run in different OS processes, and each keeps its own on later calls.
consecutive_callers_use_both_ports(_) ->
	OsPidOf = fun() ->
		Self = self(),
		{Pid, MRef} = spawn_monitor(fun() ->
			{ok, A} = py:eval(<<"__import__('os').getpid()">>),
			{ok, B} = py:eval(<<"__import__('os').getpid()">>),
			Self ! {self(), A, B}
		end),
		receive {Pid, A, B} -> erlang:demonitor(MRef, [flush]), A = B, A end
	end,
	P1 = OsPidOf(),
	P2 = OsPidOf(),
	true = P1 =/= P2.
