%% A pool of asyncio event loops with process affinity (issue 9).
%%
%% Scope: the py_event_loop calls on N loops: a process's tasks always go to loop
%% erlang:phash2(self(), N) (so they start in the order it submitted them, on one loop), and
%% py_event_loop's own calls use loop 0. N is the `event_loop_pool_size' application key (default
%% erlang:system_info(schedulers), at most 256). Each loop is an ErlangEventLoop thread in every port
%% that runs tasks (started there on its first task); nothing runs for it on the Erlang side.
-module(py_event_loop_pool).

%% API.
-export([run/3]).
-export([run/4]).
-export([create_task/3]).
-export([create_task/4]).
-export([await/1]).
-export([await/2]).
-export([spawn_task/3]).
-export([spawn_task/4]).
-export([get_loop/0]).
-export([get_stats/0]).
-export([size/0]).

-define(MAX_LOOPS, 256).
-define(DEFAULT_TIMEOUT, 5000).

%% API.

-spec run(py:py_module(), py:py_func(), py:py_args()) -> py:py_result().
run(Module, Func, Args) ->
	run(Module, Func, Args, #{}).

-spec run(py:py_module(), py:py_func(), py:py_args(), #{timeout => timeout(), kwargs => py:py_kwargs()}) ->
	py:py_result().
run(Module, Func, Args, Opts) when is_map(Opts) ->
	py_event_loop:run_on(index(), Module, Func, Args, Opts).

-spec create_task(py:py_module(), py:py_func(), py:py_args()) -> reference().
create_task(Module, Func, Args) ->
	create_task(Module, Func, Args, #{}).

-spec create_task(py:py_module(), py:py_func(), py:py_args(), py:py_kwargs()) -> reference().
create_task(Module, Func, Args, Kwargs) ->
	py_event_loop:submit(index(), Module, Func, Args, Kwargs, ?DEFAULT_TIMEOUT).

-spec await(reference()) -> py:py_result().
await(Ref) ->
	py_event_loop:await(Ref).

-spec await(reference(), timeout()) -> py:py_result().
await(Ref, Timeout) ->
	py_event_loop:await(Ref, Timeout).

-spec spawn_task(py:py_module(), py:py_func(), py:py_args()) -> ok.
spawn_task(Module, Func, Args) ->
	spawn_task(Module, Func, Args, #{}).

-spec spawn_task(py:py_module(), py:py_func(), py:py_args(), py:py_kwargs()) -> ok.
spawn_task(Module, Func, Args, Kwargs) ->
	py_event_loop:spawn_on(index(), Module, Func, Args, Kwargs).

%% The calling process's loop (the same one every time).
-spec get_loop() -> {ok, py_event_loop:loop()}.
get_loop() ->
	{ok, {py_event_loop, index()}}.

-spec get_stats() -> #{num_loops := pos_integer(), supported := true}.
get_stats() ->
	#{num_loops => size(), supported => true}.

%% The number of loops.
-spec size() -> pos_integer().
size() ->
	case application:get_env(erlang_python, event_loop_pool_size, erlang:system_info(schedulers)) of
		N when is_integer(N), N > 0 -> min(N, ?MAX_LOOPS);
		_ -> erlang:system_info(schedulers)
	end.

%% Internal.

index() ->
	erlang:phash2(self(), size()).
