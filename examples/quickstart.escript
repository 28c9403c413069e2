#!/usr/bin/env escript
%%! -pa _build/default/lib/erlang_python/ebin
%% The reference docs' quick start, run for real: each call and what it returned.
main(_) ->
    {ok, _} = application:ensure_all_started(erlang_python),
    {ok, Version} = py:version(),
    io:format("Python ~s in ~p port process(es), mode ~p~n~n",
              [Version, length(py:stats()), py:execution_mode()]),
    show("py:call(math, sqrt, [16])", py:call(math, sqrt, [16])),
    show("py:call(json, dumps, [#{foo => bar}], #{indent => 2})",
         py:call(json, dumps, [#{foo => bar}], #{indent => 2})),
    show("py:eval(<<\"sum(range(10))\">>)", py:eval(<<"sum(range(10))">>)),
    show("py:eval(<<\"x * y\">>, #{x => 5, y => 5})", py:eval(<<"x * y">>, #{x => 5, y => 5})),
    show("py:exec(<<\"def double(n): return n * 2\">>)", py:exec(<<"def double(n): return n * 2">>)),
    show("py:call('__main__', double, [21])", py:call('__main__', double, [21])),
    Ref = py:spawn_call(math, factorial, [20]),
    show("py:await(py:spawn_call(math, factorial, [20]))", py:await(Ref)),
    show("py:cast(erlang, send, [self(), {done, <<\"task1\">>}])",
         py:cast(erlang, send, [self(), {done, <<"task1">>}])),
    receive Msg -> show("  ...and the message it sent", Msg) after 5000 -> show("  ...message", none) end,
    show("py:eval(<<\"x\">>)", py:eval(<<"x">>)),
    show("py:eval(<<\"1/0\">>)", py:eval(<<"1/0">>)),
    show("py:eval(<<\"sum(range(10**10))\">>, #{}, 100)", py:eval(<<"sum(range(10**10))">>, #{}, 100)),
    show("py:eval(<<\"1 + 1\">>)  (after the timeout)", py:eval(<<"1 + 1">>)),
    show("py:eval(<<\"123456789012345678901234567890\">>)", py:eval(<<"123456789012345678901234567890">>)),
    io:format("~s~n    -> ~w~n", ["py:eval(<<\"(float('nan'), float('inf'), b'\\\\xff')\">>)",
                                     py:eval(<<"(float('nan'), float('inf'), b'\\xff')">>)]),
    ok = py:register_function(add, fun([X, Y]) -> X + Y end),
    show("py:register_function(add, ...), py:eval(<<\"erlang.call('add', 1, 2)\">>)",
         py:eval(<<"erlang.call('add', 1, 2)">>)),
    ok = application:stop(erlang_python),
    io:format("~nstopped.~n").

show(Call, Result) -> io:format("~s~n    -> ~tp~n", [Call, Result]).
