%% py:interrupt/1 (PROTOCOL.md §3.13): ok | not_running; the interrupted call returns
%% {error, interrupted}; an interrupt never reaches the next request.
-module(py_interrupt_SUITE).
-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1]).
-export([busy_loop/1, erlang_sleep/1, idle_is_not_running/1, finally_runs/1, caught_and_replaced/1,
	default_pool_context/1, dead_context/1, race_with_the_end/1, nested_request/1]).

all() ->
	[busy_loop, erlang_sleep, idle_is_not_running, finally_runs, caught_and_replaced, default_pool_context,
	 dead_context, race_with_the_end, nested_request].

init_per_suite(Config) ->
	ok = py_ct_helper:start_app([{num_ports, 1}]),
	Config.

end_per_suite(_Config) ->
	py_ct_helper:stop_app().

%% Runs Fun in a new process; returns a function that waits for its result.
async(Fun) ->
	Self = self(),
	Ref = make_ref(),
	spawn_link(fun() -> Self ! {Ref, Fun()} end),
	fun() -> receive {Ref, R} -> R after 20000 -> error(no_result) end end.

%% Interrupts Ctx once its request runs (not_running until then); the first ok is the interrupt.
interrupt_when_running(Ctx) ->
	ok = py_ct_helper:eventually(fun() -> py:interrupt(Ctx) =:= ok end, 10000).

busy_loop(_Config) ->
	{ok, Ctx} = py_context:new(#{}),
	Wait = async(fun() -> py:eval(Ctx, <<"sum(1 for _ in iter(int, 1))">>) end),
	interrupt_when_running(Ctx),
	{error, interrupted} = Wait(),
	{ok, 2} = py:eval(Ctx, <<"1 + 1">>),
	ok = py_context:stop(Ctx).

erlang_sleep(_Config) ->
	{ok, Ctx} = py_context:new(#{}),
	T0 = erlang:monotonic_time(millisecond),
	Wait = async(fun() -> py:eval(Ctx, <<"erlang.sleep(30)">>) end),
	interrupt_when_running(Ctx),
	{error, interrupted} = Wait(),
	?assert(erlang:monotonic_time(millisecond) - T0 < 15000),
	{ok, 3} = py:eval(Ctx, <<"1 + 2">>),
	ok = py_context:stop(Ctx).

idle_is_not_running(_Config) ->
	{ok, Ctx} = py_context:new(#{}),
	not_running = py:interrupt(Ctx),
	{ok, 2} = py:eval(Ctx, <<"1 + 1">>),
	not_running = py:interrupt(Ctx),
	ok = py_context:stop(Ctx).

%% The interrupted code's finally blocks run (an exception, not a kill): its state shows it. (Not
%% `while True: pass`: CPython 3.11 compiles that loop without its finally handler.)
%% The loop is `while True:` on purpose: on CPython 3.13 an exception raised between bytecodes (our
%% interrupt, but also a signal handler's exception, without erlang_python at all) at the back edge of a
%% `while <condition>:` loop escapes the enclosing try/except/finally at module level; `while True:` and
%% `for` loops are not affected. README "Interrupts" says so.
finally_runs(_Config) ->
	finally_runs_checks().

finally_runs_checks() ->
	{ok, Ctx} = py_context:new(#{}),
	{ok, Env} = py_context:create_local_env(Ctx),
	ok = py_context:exec(Ctx, <<"done = False">>, Env),
	_ = py:state_remove(<<"finally_runs_inside">>),
	Wait = async(fun() ->
		py_context:exec(Ctx, <<"try:\n    erlang.state_set('finally_runs_inside', True)\n    n = 0\n"
			"    while True:\n        n += 1\nfinally:\n    done = True\n">>, Env)
	end),
	%% Only once the code is inside the try: an interrupt that lands before it (the request is running
	%% from the moment it is on the context's stack) has no finally to run.
	ok = py_ct_helper:eventually(fun() -> py:state_fetch(<<"finally_runs_inside">>) =:= {ok, true} end, 10000),
	interrupt_when_running(Ctx),
	{error, interrupted} = Wait(),
	{ok, true} = py_context:eval(Ctx, <<"done">>, #{}, 5000, Env),
	ok = py_context:stop(Ctx).

%% Code that catches the interrupt and raises something else reports that.
caught_and_replaced(_Config) ->
	{ok, Ctx} = py_context:new(#{}),
	_ = py:state_remove(<<"caught_and_replaced_inside">>),
	Code = <<"try:\n    erlang.state_set('caught_and_replaced_inside', True)\n    erlang.sleep(30)\n"
		"except BaseException:\n    raise ValueError('cleaned up')\n">>,
	Wait = async(fun() -> py:exec(Ctx, Code) end),
	%% Once inside the try (as finally_runs: an interrupt before it has no handler to run).
	ok = py_ct_helper:eventually(fun() -> py:state_fetch(<<"caught_and_replaced_inside">>) =:= {ok, true} end, 10000),
	interrupt_when_running(Ctx),
	{error, {'ValueError', "cleaned up"}} = Wait(),
	ok = py_context:stop(Ctx).

default_pool_context(_Config) ->
	Ctx = py:context(1),
	not_running = py:interrupt(Ctx),
	Wait = async(fun() -> py:eval(Ctx, <<"erlang.sleep(30)">>) end),
	interrupt_when_running(Ctx),
	{error, interrupted} = Wait(),
	{ok, 4} = py:eval(Ctx, <<"2 + 2">>).

dead_context(_Config) ->
	{ok, Ctx} = py_context:new(#{}),
	ok = py_context:stop(Ctx),
	{error, {context_down, Ctx}} = py:interrupt(Ctx).

%% Interrupts fired while short requests start and end back to back: every request returns its value
%% or {error, interrupted}, never anything else, and the requests after the storm all succeed (a
%% pending interrupt never reaches the next request).
race_with_the_end(_Config) ->
	{ok, Ctx} = py_context:new(#{}),
	Stop = atomics:new(1, []),
	Interrupter = async(fun() -> interrupt_loop(Ctx, Stop, 0, 0) end),
	Results = [py:eval(Ctx, <<"sum(range(2000))">>) || _ <- lists:seq(1, 300)],
	ok = atomics:put(Stop, 1, 1),
	{Oks, NotRunning} = Interrupter(),
	ct:log("interrupts: ~b ok, ~b not_running; results: ~p interrupted",
		[Oks, NotRunning, length([R || R = {error, interrupted} <- Results])]),
	[] = [R || R <- Results, R =/= {ok, 1999000}, R =/= {error, interrupted}],
	?assert(Oks + NotRunning > 0),
	[{ok, 1999000} = py:eval(Ctx, <<"sum(range(2000))">>) || _ <- lists:seq(1, 50)],
	ok = py_context:stop(Ctx).

interrupt_loop(Ctx, Stop, Oks, NotRunning) ->
	case atomics:get(Stop, 1) of
		1 -> {Oks, NotRunning};
		0 ->
			case py:interrupt(Ctx) of
				ok -> interrupt_loop(Ctx, Stop, Oks + 1, NotRunning);
				not_running -> interrupt_loop(Ctx, Stop, Oks, NotRunning + 1)
			end
	end.

%% The outermost request is the one interrupted: a request on the context waiting in a callback whose
%% Erlang function made a nested request ends with {error, interrupted} once the nested one is done.
nested_request(_Config) ->
	{ok, Ctx} = py_context:new(#{}),
	Self = self(),
	ok = py:register_function(intr_nested, fun([]) ->
		Self ! nested_running,
		py:eval(Ctx, <<"erlang.sleep(0.3) or 'inner'">>)
	end),
	Wait = async(fun() -> py:eval(Ctx, <<"erlang.call('intr_nested')">>) end),
	receive nested_running -> ok after 10000 -> error(no_nested) end,
	ok = py:interrupt(Ctx),
	{error, interrupted} = Wait(),
	{ok, 5} = py:eval(Ctx, <<"2 + 3">>),
	ok = py_context:stop(Ctx).
