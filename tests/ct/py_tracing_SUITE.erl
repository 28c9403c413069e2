%% Spans from Python (py:enable_tracing/0, disable_tracing/0, get_traces/0, clear_traces/0, erlang.Span,
%% @erlang.trace; PROTOCOL.md §3.14): the documented examples and span maps, errors, nesting per
%% thread, the cap on stored spans, and that a Span costs nothing and sends nothing while tracing is off.
-module(py_tracing_SUITE).

-include_lib("common_test/include/ct.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1, init_per_testcase/2, end_per_testcase/2]).
-export([readme_example/1, guide_example_span_map/1, span_events/1, exception_recorded/1, decorators/1,
	disabled_records_nothing/1, disable_keeps_collected/1, clear_traces/1, nesting_per_thread/1,
	unconvertible_attribute/1, bad_span_name/1, cap_keeps_newest/1, tracing_survives_restart/1,
	off_costs_nothing/1]).

all() ->
	[readme_example, guide_example_span_map, span_events, exception_recorded, decorators,
	 disabled_records_nothing, disable_keeps_collected, clear_traces, nesting_per_thread,
	 unconvertible_attribute, bad_span_name, cap_keeps_newest, tracing_survives_restart, off_costs_nothing].

init_per_suite(Config) ->
	ok = py_ct_helper:start_app([{num_ports, 2}, {contexts_per_port, 2}]),
	Config.

end_per_suite(_Config) ->
	py_ct_helper:stop_app().

init_per_testcase(cap_keeps_newest, Config) ->
	ok = py_ct_helper:start_app([{num_ports, 1}, {contexts_per_port, 1}, {max_traces, 50}]),
	init_per_testcase(any, Config);
init_per_testcase(_, Config) ->
	ok = py:clear_traces(),
	Config.

end_per_testcase(cap_keeps_newest, Config) ->
	ok = py_ct_helper:start_app([{num_ports, 2}, {contexts_per_port, 2}]),
	end_per_testcase(any, Config);
end_per_testcase(_, _Config) ->
	ok = py:disable_tracing(),
	ok = py:clear_traces().

%% The README's example: three spans, children first (they finish first), linked to their parent.
readme_example(_) ->
	ok = py:enable_tracing(),
	ok = py:exec(<<"
import erlang

with erlang.Span('process-request', user_id=123):
    with erlang.Span('query-database'):
        pass  # database work
    with erlang.Span('format-response'):
        pass  # formatting work
">>),
	{ok, Spans} = py:get_traces(),
	[#{name := <<"query-database">>, status := ok, duration_us := D1, parent_id := P},
	 #{name := <<"format-response">>, status := ok, parent_id := P},
	 #{name := <<"process-request">>, status := ok, span_id := P, parent_id := undefined,
	   attributes := #{<<"user_id">> := 123}}] = Spans,
	true = is_integer(D1) andalso D1 >= 0,
	ok = py:clear_traces(),
	ok = py:disable_tracing().

%% The guide's example and the documented span map: exactly these keys, with these types.
guide_example_span_map(_) ->
	ok = py:enable_tracing(),
	{ok, none} = py:eval(<<"
import erlang

def do_work():
    pass

with erlang.Span('process-request', user_id=123):
    do_work()
">>),
	{ok, [Span]} = py:get_traces(),
	[attributes, duration_us, end_attrs, end_time, events, name, parent_id, span_id, start_time, status] =
		lists:sort(maps:keys(Span)),
	#{name := <<"process-request">>, span_id := Id, parent_id := undefined, start_time := Start,
	  end_time := End, duration_us := Duration, status := ok, attributes := #{<<"user_id">> := 123},
	  end_attrs := #{}, events := []} = Span,
	true = is_integer(Id) andalso Id > 0 andalso Id < (1 bsl 63),
	Duration = End - Start,
	true = Start > 0,
	%% The last example of the guide.
	{ok, none} = py:eval(<<"
import erlang
with erlang.Span('work'):
    pass
">>),
	{ok, [_, #{name := <<"work">>}]} = py:get_traces().

%% span.event(name, **attrs) records a timed event inside the span; attributes of several types.
span_events(_) ->
	ok = py:enable_tracing(),
	ok = py:exec(<<"
import erlang
with erlang.Span('operation-name', key='value', count=42) as span:
    span.event('checkpoint', items_processed=10)
    with erlang.Span('sub-operation'):
        pass
    span.event('done')
">>),
	{ok, [#{name := <<"sub-operation">>}, Op]} = py:get_traces(),
	#{attributes := #{<<"key">> := <<"value">>, <<"count">> := 42}, start_time := S, end_time := E,
	  events := [#{name := <<"checkpoint">>, attrs := #{<<"items_processed">> := 10}, time := T1},
	             #{name := <<"done">>, attrs := #{}, time := T2}]} = Op,
	true = S =< T1 andalso T1 =< T2 andalso T2 =< E.

%% An exception leaving the block: status error, end_attrs exception => its message; it propagates.
exception_recorded(_) ->
	ok = py:enable_tracing(),
	ok = py:exec(<<"
import erlang

try:
    with erlang.Span('risky-operation'):
        raise ValueError('something went wrong')
except ValueError:
    pass
">>),
	{ok, [#{name := <<"risky-operation">>, status := error,
	        end_attrs := #{<<"exception">> := <<"something went wrong">>}}]} = py:get_traces(),
	%% Through a call: the span ends with the error, the caller gets the exception.
	ok = py:exec(<<"
def failing():
    with erlang.Span('failing'):
        return 1 / 0
">>),
	{error, {'ZeroDivisionError', "division by zero"}} = py:call('__main__', failing, []),
	{ok, Spans} = py:get_traces(),
	[#{status := error, end_attrs := #{<<"exception">> := <<"division by zero">>}}] =
		[S || S = #{name := <<"failing">>} <- Spans].

%% @erlang.trace() names the span after the function; @erlang.trace(name=...) as given; the return
%% value and exceptions pass through; coroutine functions too.
decorators(_) ->
	ok = py:enable_tracing(),
	ok = py:exec(<<"
import asyncio, erlang

@erlang.trace()
def my_function():
    return 42

@erlang.trace(name='custom-name')
def another_function():
    pass

@erlang.trace()
async def coro():
    return 'async'

r = (my_function(), another_function(), asyncio.run(coro()))
">>),
	{ok, {42, none, <<"async">>}} = py:eval(<<"r">>),
	{ok, [#{name := <<"my_function">>, status := ok}, #{name := <<"custom-name">>},
	      #{name := <<"coro">>}]} = py:get_traces().

%% Tracing is off by default and after disable_tracing(): a Span records nothing and sends nothing.
disabled_records_nothing(_) ->
	{ok, {Sent, Sent, false}} = py:eval(<<"
(lambda c: (c(), [erlang.Span('x').__enter__().__exit__(None, None, None) for _ in range(10)] and c(),
 __import__('_erlang_ops').tracing()))(lambda: __import__('_erlang_ops').counters()['span_sent'])
">>),
	ok = py:exec(<<"
import erlang
with erlang.Span('off') as s:
    s.event('e')
">>),
	{ok, []} = py:get_traces().

%% Spans collected before disable_tracing() stay until cleared.
disable_keeps_collected(_) ->
	ok = py:enable_tracing(),
	ok = py:exec(<<"import erlang\nwith erlang.Span('kept'):\n    pass">>),
	ok = py:disable_tracing(),
	ok = py:exec(<<"with erlang.Span('not-kept'):\n    pass">>),
	{ok, [#{name := <<"kept">>}]} = py:get_traces().

clear_traces(_) ->
	ok = py:enable_tracing(),
	ok = py:exec(<<"import erlang\nfor i in range(5):\n    with erlang.Span('s', i=i):\n        pass">>),
	{ok, [_, _, _, _, _]} = py:get_traces(),
	ok = py:clear_traces(),
	{ok, []} = py:get_traces().

%% Each thread has its own span stack: spans of two threads never become each other's children.
nesting_per_thread(_) ->
	ok = py:enable_tracing(),
	ok = py:exec(<<"
import erlang, threading
barrier = threading.Barrier(2)
def work(tag):
    with erlang.Span('outer-' + tag):
        barrier.wait(5)
        with erlang.Span('inner-' + tag):
            barrier.wait(5)
ts = [threading.Thread(target=work, args=(t,)) for t in 'ab']
[t.start() for t in ts]
[t.join() for t in ts]
">>),
	{ok, Spans} = py:get_traces(),
	4 = length(Spans),
	ById = maps:from_list([{Id, N} || #{span_id := Id, name := N} <- Spans]),
	[<<"outer-a">>] = [maps:get(P, ById) || #{name := <<"inner-a">>, parent_id := P} <- Spans],
	[<<"outer-b">>] = [maps:get(P, ById) || #{name := <<"inner-b">>, parent_id := P} <- Spans],
	[undefined, undefined] = [P || #{name := <<"outer-", _/binary>>, parent_id := P} <- Spans].

%% An attribute with no Erlang form arrives as its repr().
unconvertible_attribute(_) ->
	ok = py:enable_tracing(),
	ok = py:exec(<<"import erlang\nwith erlang.Span('s', tags={1, 2}, when=None, ok=True):\n    pass">>),
	{ok, [#{attributes := #{<<"tags">> := <<"{1, 2}">>, <<"when">> := none, <<"ok">> := true}}]} =
		py:get_traces().

bad_span_name(_) ->
	{error, {'TypeError', "span name must be a str, not int"}} = py:eval(<<"__import__('erlang').Span(1)">>).

%% max_traces bounds what is stored: past it the oldest spans go (and are counted), the newest stay.
cap_keeps_newest(_) ->
	#{spans_evicted := E0} = py_ops:counters(),
	ok = py:enable_tracing(),
	ok = py:exec(<<"import erlang\nfor i in range(120):\n    with erlang.Span('s', i=i):\n        pass">>),
	{ok, Spans} = py:get_traces(),
	50 = length(Spans),
	Is = [I || #{attributes := #{<<"i">> := I}} <- Spans],
	Is = lists:seq(70, 119),
	50 = ets:info(py_traces, size),
	#{spans_evicted := E1} = py_ops:counters(),
	70 = E1 - E0.

%% A restarted port gets tracing back before it serves.
tracing_survives_restart(_) ->
	ok = py:enable_tracing(),
	Gen = py_ct_helper:generation(2),
	_ = os:cmd("kill -9 " ++ integer_to_list(py_ct_helper:os_pid(2))),
	ok = py_ct_helper:eventually(fun() ->
		case py_port:info(2) of #{status := up, generation := G} -> G > Gen; _ -> false end
	end, 30000),
	ok = py_ct_helper:on(2, 0, fun() -> py:exec(<<"import erlang\nwith erlang.Span('after-restart'):\n    pass">>) end),
	{ok, [#{name := <<"after-restart">>}]} = py:get_traces().

%% While tracing is off a Span is one flag check: 10000 of them cost well under what 10000 recorded
%% spans do (measured in the same run), and nothing is sent.
off_costs_nothing(_) ->
	Code = <<"
import erlang, time, _erlang_ops
def loop(n):
    t = time.perf_counter()
    for _ in range(n):
        with erlang.Span('x'):
            pass
    return time.perf_counter() - t
">>,
	ok = py:exec(Code),
	{ok, Off} = py:eval(<<"loop(10000)">>),
	{ok, SentOff} = py:eval(<<"_erlang_ops.counters()['span_sent']">>),
	ok = py:enable_tracing(),
	{ok, On} = py:eval(<<"loop(1000) * 10">>),
	ok = py:disable_tracing(),
	ct:log("10000 spans: off ~.1f ms, on ~.1f ms", [Off * 1000, On * 1000]),
	{ok, SentAfter} = py:eval(<<"_erlang_ops.counters()['span_sent']">>),
	1000 = SentAfter - SentOff,
	true = Off < On,
	%% Under about 5 µs a span on a loaded 2-core machine (it is about 0.5 µs idle).
	true = Off < 0.05.
