%% Cooperative scheduling (PROTOCOL.md §3.17): erlang.schedule, schedule_py, schedule_inline and
%% consume_time_slice, with the reference docs' examples and their results, the context being free
%% between the steps of a chain, deadlines over a whole chain, cancellation of a queued inline
%% continuation, nesting, and the error cases.
-module(py_schedule_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1]).
-export([docs_schedule_callback/1, docs_schedule_py/1, docs_schedule_inline/1,
	docs_consume_time_slice/1, docs_process_batch/1, docs_must_return_marker/1,
	docs_marker_propagates/1, eval_returns_marker/1, schedule_without_name_yields/1,
	schedule_py_frees_context/1, schedule_inline_frees_context/1, deadline_covers_chain/1,
	inline_chain_cancelled/1, nested_inline_continuation/1, errors/1, time_slice_errors/1,
	marker_in_container_is_an_object/1, gil_shared_under_cast_flood/1]).

all() ->
	[docs_schedule_callback, docs_schedule_py, docs_schedule_inline, docs_consume_time_slice,
	 docs_process_batch, docs_must_return_marker, docs_marker_propagates, eval_returns_marker,
	 schedule_without_name_yields, schedule_py_frees_context, schedule_inline_frees_context,
	 deadline_covers_chain, inline_chain_cancelled, nested_inline_continuation, errors,
	 time_slice_errors, marker_in_container_is_an_object, gil_shared_under_cast_flood].

init_per_suite(Config) ->
	ok = py_ct_helper:start_app([{num_ports, 1}, {contexts_per_port, 2}]),
	ok = py_callback:register(<<"compute">>, fun([X]) -> X * 2 end),
	Config.

end_per_suite(_Config) ->
	ok = py_callback:unregister_function(<<"compute">>),
	py_ct_helper:stop_app().

%% The docs: "The result is transparent to the caller": {ok, 10} = py:call('__main__', 'handler', [5]).
docs_schedule_callback(_) ->
	ok = py:exec(<<"
import erlang

def handler(x):
    return erlang.schedule('compute', x)
">>),
	{ok, 10} = py:call('__main__', handler, [5]).

%% schedule_py('__main__', 'compute', [x], {'multiplier': 3}): compute(5, multiplier=3).
docs_schedule_py(_) ->
	ok = py:exec(<<"
import erlang

def compute(x, multiplier=2):
    return x * multiplier

def handler(x):
    return erlang.schedule_py('__main__', 'compute', [x], {'multiplier': 3})
">>),
	{ok, 15} = py:call('__main__', handler, [5]).

%% The docs' process_chunk: chunks of 100, continued inline; the results are those of every chunk
%% (the list is passed along as a Python object), and each chunk is its own step.
docs_schedule_inline(_) ->
	ok = py:exec(<<"
import erlang

steps = []

def transform(x):
    return x * x

def process_chunk(data, offset=0, results=None):
    steps.append(offset)
    if results is None:
        results = []

    chunk_end = min(offset + 100, len(data))
    for i in range(offset, chunk_end):
        results.append(transform(data[i]))

    if chunk_end < len(data):
        return erlang.schedule_inline(
            '__main__', 'process_chunk',
            args=[data, chunk_end, results]
        )

    return results
">>),
	{ok, Squares} = py:call('__main__', process_chunk, [lists:seq(0, 249)]),
	?assertEqual([X * X || X <- lists:seq(0, 249)], Squares),
	{ok, [0, 100, 200]} = py:eval(<<"steps">>).

%% The docs' long_computation: consume_time_slice(1) per item is exhausted after 100 items, and each
%% continuation (schedule_py: a new request) starts a fresh slice. As written, the example returns
%% only the results of its last step: with 1050 items, the items 1000..1049.
docs_consume_time_slice(_) ->
	ok = py:exec(<<"
import erlang

calls = 0

def process(x):
    return x + 1

def long_computation(items, start_idx=0):
    global calls
    calls += 1
    results = []
    for i in range(start_idx, len(items)):
        results.append(process(items[i]))

        if erlang.consume_time_slice(1):
            return erlang.schedule_py(
                '__main__', 'long_computation',
                [items], {'start_idx': i + 1}
            )

    return results
">>),
	{ok, Last} = py:call('__main__', long_computation, [lists:seq(0, 1049)]),
	?assertEqual([X + 1 || X <- lists:seq(1000, 1049)], Last),
	{ok, 11} = py:eval(<<"calls">>).

%% The docs' process_batch: batches continued with schedule_py, then 'done'.
docs_process_batch(_) ->
	ok = py:exec(<<"
import erlang

seen = []

def expensive_operation(item):
    seen.append(item)

def process_batch(items, batch_size=100, offset=0):
    end = min(offset + batch_size, len(items))
    for i in range(offset, end):
        expensive_operation(items[i])
    if end < len(items):
        return erlang.schedule_py(
            '__main__', 'process_batch',
            [items], {'batch_size': batch_size, 'offset': end}
        )
    return 'done'
">>),
	{ok, <<"done">>} = py:call('__main__', process_batch, [lists:seq(1, 350), 50]),
	{ok, 350} = py:eval(<<"len(seen)">>),
	{ok, true} = py:eval(<<"seen == list(range(1, 351))">>).

%% "Must return the marker": a marker made and dropped has no effect.
docs_must_return_marker(_) ->
	ok = py:exec(<<"
import erlang

def wrong():
    erlang.schedule('compute', 1)
    return 'oops'

def correct():
    return erlang.schedule('compute', 21)
">>),
	{ok, <<"oops">>} = py:call('__main__', wrong, []),
	{ok, 42} = py:call('__main__', correct, []).

%% "marker propagates up": a marker returned through a nested function's return works.
docs_marker_propagates(_) ->
	ok = py:exec(<<"
import erlang

def outer():
    def inner():
        return erlang.schedule('compute', 4)
    return inner()
">>),
	{ok, 8} = py:call('__main__', outer, []).

eval_returns_marker(_) ->
	{ok, 14} = py:eval(<<"erlang.schedule('compute', 7)">>),
	{ok, 6} = py:eval(<<"erlang.schedule_py('operator', 'mul', [2, 3])">>),
	{ok, 12} = py:eval(<<"erlang.schedule_inline('operator', 'mul', [3, 4])">>).

%% The migration guide's erlang.schedule() with no arguments: a yield point that returns None.
schedule_without_name_yields(_) ->
	{ok, none} = py:eval(<<"erlang.schedule()">>),
	{error, {'TypeError', _}} = py:eval(<<"erlang.schedule(None, 1)">>).

%% Between the steps of a schedule_py chain on one context, another process's request is served:
%% it is answered long before the chain ends.
schedule_py_frees_context(_) ->
	frees_context(<<"schedule_py">>).

schedule_inline_frees_context(_) ->
	frees_context(<<"schedule_inline">>).

frees_context(How) ->
	{ok, Ctx} = py_context:new(#{}),
	%% One environment for the test process and the chain's process.
	{ok, Env} = py_context:create_local_env(Ctx),
	try
		ok = py_context:exec(Ctx, <<"
import erlang, time

def step(n):
    time.sleep(0.2)
    if n == 0:
        return 'chain done'
    return erlang.", How/binary, "('__main__', 'step', [n - 1])
">>, Env),
		Self = self(),
		T0 = erlang:monotonic_time(millisecond),
		Chain = spawn_link(fun() ->
			Self ! {chain, py_context:call(Ctx, '__main__', step, [6], #{}, 30000, Env),
				erlang:monotonic_time(millisecond) - T0}
		end),
		timer:sleep(100),
		{ok, 2} = py_context:eval(Ctx, <<"1 + 1">>),
		QuickMs = erlang:monotonic_time(millisecond) - T0,
		receive
			{chain, Other, _} when element(1, Other) =/= ok ->
				ct:fail({chain_failed, Other});
			{chain, {ok, <<"chain done">>}, ChainMs} ->
				ct:pal("~s: quick request answered after ~b ms, chain done after ~b ms", [How, QuickMs, ChainMs]),
				%% The chain has 7 steps of 200 ms; the quick one waited for at most one step.
				?assert(ChainMs >= 1400),
				?assert(QuickMs < ChainMs - 400)
		after 30000 ->
			unlink(Chain),
			ct:fail(chain_timeout)
		end
	after
		ok = py_context:destroy(Ctx)
	end.

%% The caller's timeout covers the whole chain: an endless schedule_py chain ends with
%% {error, timeout}; the context then serves the next request.
deadline_covers_chain(_) ->
	ok = py:exec(<<"
import erlang, time

def forever(n):
    time.sleep(0.05)
    return erlang.schedule_py('__main__', 'forever', [n + 1])
">>),
	T0 = erlang:monotonic_time(millisecond),
	{error, timeout} = py:call('__main__', forever, [0], #{}, 500),
	Ms = erlang:monotonic_time(millisecond) - T0,
	?assert(Ms >= 450 andalso Ms < 5000),
	{ok, 2} = py:eval(<<"1 + 1">>).

%% An endless schedule_inline chain is cancelled by the caller's timeout like a request (its queued
%% continuation is removed, or the running step gets CancelledError): no port restart, and the next
%% request on the context is served.
inline_chain_cancelled(_) ->
	ok = py:exec(<<"
import erlang

spun = 0

def spin(n):
    global spun
    spun = n
    x = 0
    for i in range(20000):
        x += i
    return erlang.schedule_inline('__main__', 'spin', [n + 1])
">>),
	Gen = py_ct_helper:generation(1),
	{error, timeout} = py:call('__main__', spin, [0], #{}, 300),
	{ok, 2} = py:eval(<<"1 + 1">>),
	%% The chain has stopped: it makes no more steps (a lost cancel would go on until the port's
	%% cancel grace, 2 s, ran out, which the generation check alone would not see this early).
	{ok, Spun} = py:eval(<<"spun">>),
	?assert(Spun > 0),
	timer:sleep(500),
	{ok, Spun} = py:eval(<<"spun">>),
	{ok, 3} = py:eval(<<"1 + 2">>),
	?assertEqual(Gen, py_ct_helper:generation(1)).

%% A request made from a callback of a request on the same context is nested; its inline
%% continuation runs nested too (on the waiting request's stack), so nothing deadlocks.
nested_inline_continuation(_) ->
	Self = self(),
	ok = py:exec(<<"
import erlang

def count_down(n):
    if n == 0:
        return 'inner done'
    return erlang.schedule_inline('__main__', 'count_down', [n - 1])

def outer():
    return erlang.call('reenter')
">>),
	ok = py:register_function(reenter, fun([]) ->
		%% Runs in the caller's process (no deadline): the same environment and place.
		{ok, R} = py:call('__main__', count_down, [5]),
		Self ! reentered,
		R
	end),
	try
		{ok, <<"inner done">>} = py:call('__main__', outer, []),
		receive reentered -> ok after 1000 -> ct:fail(no_reentry) end
	after
		py:unregister_function(reenter)
	end.

errors(_) ->
	ok = py:exec(<<"
import erlang

class Opaque:
    pass

def unknown_callback():
    return erlang.schedule('not_registered_anywhere', 1)

def missing_function():
    return erlang.schedule_py('__main__', 'no_such_function', [])

def missing_inline():
    return erlang.schedule_inline('no_such_module_xyz', 'f', [])

def unconvertible():
    return erlang.schedule_py('__main__', 'missing_function', [Opaque()])

def raises(x):
    raise ValueError('bad ' + str(x))

def inline_raises():
    return erlang.schedule_inline('__main__', 'raises', [3])
">>),
	{error, {'ErlangError', Msg}} = py:call('__main__', unknown_callback, []),
	?assertNotEqual(nomatch, string:find(Msg, "not_registered_anywhere")),
	{error, {'AttributeError', _}} = py:call('__main__', missing_function, []),
	{error, {'ModuleNotFoundError', _}} = py:call('__main__', missing_inline, []),
	{error, {'TypeError', _}} = py:call('__main__', unconvertible, []),
	{error, {'ValueError', "bad 3"}} = py:call('__main__', inline_raises, []),
	{error, {'TypeError', _}} = py:eval(<<"erlang.schedule_py('m', 'f', 5)">>),
	{error, {'TypeError', _}} = py:eval(<<"erlang.schedule_py('m', 'f', [], {1: 2})">>),
	{error, {'TypeError', _}} = py:eval(<<"erlang.schedule_inline('', 'f')">>),
	%% The scheduled Erlang function raising.
	ok = py_callback:register(<<"crash">>, fun([_]) -> error(boom) end),
	{error, {'ErlangError', CrashMsg}} = py:eval(<<"erlang.schedule('crash', 1)">>),
	?assertNotEqual(nomatch, string:find(CrashMsg, "boom")),
	ok = py:unregister_function(<<"crash">>).

time_slice_errors(_) ->
	{error, {'ValueError', _}} = py:eval(<<"erlang.consume_time_slice(0)">>),
	{error, {'ValueError', _}} = py:eval(<<"erlang.consume_time_slice(101)">>),
	{error, {'TypeError', _}} = py:eval(<<"erlang.consume_time_slice(1.5)">>),
	{ok, [false, true, false]} = py:eval(<<"[erlang.consume_time_slice(60), erlang.consume_time_slice(40), erlang.consume_time_slice(1)]">>),
	%% A new request starts with a fresh slice.
	{ok, false} = py:eval(<<"erlang.consume_time_slice(99)">>).

%% Only the direct result is a marker: inside a container it is an object without an Erlang form.
marker_in_container_is_an_object(_) ->
	{error, {'TypeError', _}} = py:eval(<<"[erlang.schedule('compute', 1)]">>).

%% A context thread keeps the GIL from one item to the next (casts, inline steps) only for a bounded
%% time: a flood of casts of a C function (no bytecode runs, so CPython's eval breaker never hands the
%% GIL over) on one context does not keep another context's request waiting until the flood is over.
gil_shared_under_cast_flood(_) ->
	{ok, A} = py_context:new(#{}),
	{ok, B} = py_context:new(#{}),
	try
		{ok, 1} = py_context:eval(B, <<"1">>),
		T0 = erlang:monotonic_time(millisecond),
		[ok = py:cast(A, math, factorial, [20000]) || _ <- lists:seq(1, 200)],
		timer:sleep(50),
		{ok, 2} = py_context:eval(B, <<"1 + 1">>, #{}, 60000),
		QuickMs = erlang:monotonic_time(millisecond) - T0,
		%% Queued behind the casts: answered when the flood is over.
		{ok, 3} = py_context:eval(A, <<"1 + 2">>, #{}, 60000),
		FloodMs = erlang:monotonic_time(millisecond) - T0,
		ct:pal("other context answered after ~b ms; the flood took ~b ms", [QuickMs, FloodMs]),
		?assert(FloodMs >= 600),
		?assert(QuickMs < FloodMs div 2)
	after
		ok = py_context:destroy(A),
		ok = py_context:destroy(B)
	end.
