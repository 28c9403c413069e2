%% The Erlang-side async task API (issue 9): run Python coroutines on an asyncio event loop in the port.
%%
%% Scope: py_event_loop:run/3,4, create_task/3,4, await/1,2, spawn_task/3,4, get_loop/0 (the shared loop,
%% number 0), and the loop's worker process (a gen_server, one per loop, started by
%% py_event_loop_pool). py_event_loop_pool offers the same calls on N loops with process affinity.
%%
%% How a task runs (PROTOCOL.md §3.10): the caller submits it itself, with one `eval' on its own context
%% in its own environment (so functions `py:exec' defined there are found as '__main__'), which calls
%% the function. A plain result comes back in that reply; a coroutine becomes an asyncio Task on the
%% port's background ErlangEventLoop number Index, and its outcome comes to the loop's worker as the
%% task's own final frame (a task id the caller registers in py_inflight for the worker; the owner
%% routes it without decoding), which hands each caller `{async_result, Ref, {ok, R} | {error, E}}'.
%% The worker decodes and forwards (Python cannot write atoms) and monitors callers: when one dies, its
%% tasks are cancelled. Every wait has a deadline: await's timeout (default 5000 ms) cancels the task.
%%
%% The port side of a task never waits for Erlang: a task that calls `erlang.call' blocks its loop
%% until the answer (use `await erlang.async_call(...)'), and such callbacks run in a fresh process,
%% not in the caller (the loop thread serves no request).
%%
%% Errors are py's: {error, {Class, Message}} for a Python exception (a coroutine that raises, a
%% missing module or function, ModuleNotFoundError / AttributeError), {error, timeout}.
-module(py_event_loop).
-behaviour(gen_server).

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

%% Used by py_event_loop_pool.
-export([submit/6]).
-export([run_on/5]).
-export([spawn_on/5]).
-export([gather/2]).
-export([start_link/1]).
-export([worker_name/1]).

%% gen_server.
-export([init/1]).
-export([handle_call/3]).
-export([handle_cast/2]).
-export([handle_info/2]).

-export_type([loop/0]).

%% A loop handle: {py_event_loop, Index}.
-type loop() :: {py_event_loop, non_neg_integer()}.

-define(DEFAULT_TIMEOUT, 5000).
%% Process dictionary key of a caller: {?WATCHED, Index} => the pid of loop Index's worker once that
%% worker monitors it (at most one per loop). Nothing is kept per task: a result taken with a plain receive leaves nothing.
-define(WATCHED, py_event_loop_watched).
-define(SUBMIT, <<"__import__('erlang._tasks')._tasks.submit(globals(), i, w, o, r, m, f, a, k, y)">>).
%% Task ids share the callers' request id range (py_request), so the owner routes their final frames.
-define(REQ_BASE, (1 bsl 48)).
-define(RESULT, 65).
-define(TASKS_MODULE, <<"erlang._tasks">>).

%% API.

%% Runs Module.Func(*Args) on the shared loop and waits (default timeout 5000 ms).
-spec run(py:py_module(), py:py_func(), py:py_args()) -> py:py_result().
run(Module, Func, Args) ->
	run(Module, Func, Args, #{}).

%% Opts: timeout (ms or infinity, default 5000), kwargs (default #{}).
-spec run(py:py_module(), py:py_func(), py:py_args(), #{timeout => timeout(), kwargs => py:py_kwargs()}) ->
	py:py_result().
run(Module, Func, Args, Opts) when is_map(Opts) ->
	run_on(0, Module, Func, Args, Opts).

%% Submits Module.Func(*Args) and returns at once; the result comes as {async_result, Ref, Result}.
-spec create_task(py:py_module(), py:py_func(), py:py_args()) -> reference().
create_task(Module, Func, Args) ->
	create_task(Module, Func, Args, #{}).

-spec create_task(py:py_module(), py:py_func(), py:py_args(), py:py_kwargs()) -> reference().
create_task(Module, Func, Args, Kwargs) ->
	submit(0, Module, Func, Args, Kwargs, ?DEFAULT_TIMEOUT).

%% The result of a task this process created (default timeout 5000 ms). A timeout cancels the task.
-spec await(reference()) -> py:py_result().
await(Ref) ->
	await(Ref, ?DEFAULT_TIMEOUT).

-spec await(reference(), timeout()) -> py:py_result().
await(Ref, Timeout) when is_reference(Ref) ->
	receive
		{async_result, Ref, Result} ->
			Result
	after Timeout ->
		%% To this process's own place: the port the task was submitted to, when this process made it.
		py_request:cast(route(), {undefined, ?TASKS_MODULE, <<"cancel">>, [Ref], #{}}, 5000),
		%% A result that crossed the cancel is taken out of the mailbox.
		receive {async_result, Ref, _} -> ok after 0 -> ok end,
		{error, timeout}
	end.

%% Fire and forget: the result (or error) is dropped.
-spec spawn_task(py:py_module(), py:py_func(), py:py_args()) -> ok.
spawn_task(Module, Func, Args) ->
	spawn_task(Module, Func, Args, #{}).

-spec spawn_task(py:py_module(), py:py_func(), py:py_args(), py:py_kwargs()) -> ok.
spawn_task(Module, Func, Args, Kwargs) ->
	spawn_on(0, Module, Func, Args, Kwargs).

%% The shared loop.
-spec get_loop() -> {ok, loop()}.
get_loop() ->
	{ok, {py_event_loop, 0}}.

%% Used by py_event_loop_pool.

%% Submits a task to loop Index; returns its Ref. Errors at submission (a missing function, a sync
%% function that raised, no port) are delivered as the task's result, so the caller handles one shape.
-spec submit(non_neg_integer(), py:py_module(), py:py_func(), py:py_args(), py:py_kwargs(), timeout()) ->
	reference().
submit(Index, Module, Func, Args, Kwargs, Timeout) ->
	Ref = make_ref(),
	Route = route(),
	case whereis(worker_name(Index)) of
		undefined ->
			task_done(Ref, {error, event_loop_not_started});
		Worker ->
			ok = watch(Index, Worker, Route),
			%% The task's final frame comes with its own id, routed by the owner to the worker
			%% (py_inflight, as any request's); a caller bound to an explicit context has no slot here
			%% and gets its outcome through erlang.send instead (TaskId 0).
			TaskId = case Route of
				{slot, Slot, _} ->
					Id = ?REQ_BASE + erlang:unique_integer([positive]),
					true = ets:insert(py_inflight, {Id, Worker, Slot}),
					Id;
				_ ->
					0
			end,
			Locals = #{i => Index, w => Worker, o => self(), r => Ref, m => name(Module), f => name(Func),
				a => Args, k => Kwargs, y => TaskId},
			case py_request:run(eval, Route, {py_request:env_owner(), ?SUBMIT, Locals}, Timeout, true) of
				{ok, <<"pending">>} -> ok;
				{ok, {<<"done">>, Value}} -> forget(TaskId), task_done(Ref, {ok, Value});
				{error, _} = Error -> forget(TaskId), task_done(Ref, Error)
			end
	end,
	Ref.

-spec start_link(non_neg_integer()) -> {ok, pid()} | {error, term()}.
start_link(Index) ->
	gen_server:start_link({local, worker_name(Index)}, ?MODULE, Index, []).

%% The registered name of loop Index's worker (Index < 256: py_event_loop_pool bounds the pool).
-spec worker_name(non_neg_integer()) -> atom().
worker_name(Index) ->
	list_to_atom("py_event_loop_" ++ integer_to_list(Index)).

%% Runs on loop Index (run/4's options).
-spec run_on(non_neg_integer(), py:py_module(), py:py_func(), py:py_args(), map()) -> py:py_result().
run_on(Index, Module, Func, Args, Opts) ->
	Timeout = maps:get(timeout, Opts, ?DEFAULT_TIMEOUT),
	Ref = submit(Index, Module, Func, Args, maps:get(kwargs, Opts, #{}), Timeout),
	await(Ref, Timeout).

%% Fire and forget on loop Index.
-spec spawn_on(non_neg_integer(), py:py_module(), py:py_func(), py:py_args(), py:py_kwargs()) -> ok.
spawn_on(Index, Module, Func, Args, Kwargs) ->
	case whereis(worker_name(Index)) of
		undefined ->
			ok;
		Worker ->
			Locals = #{i => Index, w => Worker, o => none, r => none, m => name(Module), f => name(Func),
				a => Args, k => Kwargs, y => 0},
			_ = py_request:run(eval, route(), {py_request:env_owner(), ?SUBMIT, Locals}, ?DEFAULT_TIMEOUT, true),
			ok
	end.

%% py:async_gather/2: every call submitted first (they run concurrently), then awaited in order.
-spec gather([{py:py_module(), py:py_func(), py:py_args()}], timeout()) -> py:py_result().
gather(Calls, Timeout) ->
	%% Checked before any is submitted: a bad item starts nothing.
	_ = [error(badarg, [Calls, Timeout]) || Call <- Calls, not is_call(Call)],
	Refs = [py_event_loop_pool:create_task(M, F, A) || {M, F, A} <- Calls],
	Results = [await(Ref, Timeout) || Ref <- Refs],
	case [{I, Reason} || {I, {error, Reason}} <- lists:zip(lists:seq(1, length(Results)), Results)] of
		[] -> {ok, [R || {ok, R} <- Results]};
		Errors -> {error, {gather_failed, Errors}}
	end.

%% Internal.

is_call({M, F, A}) -> (is_atom(M) orelse is_binary(M) orelse is_list(M))
	andalso (is_atom(F) orelse is_binary(F) orelse is_list(F)) andalso is_list(A);
is_call(_) -> false.

%% No final frame will come for a task that did not become pending.
forget(0) -> ok;
forget(TaskId) -> true = ets:delete(py_inflight, TaskId), ok.

task_done(Ref, Result) ->
	self() ! {async_result, Ref, Result},
	ok.

%% The caller's own place, fixed now so that cancels go to the same port.
route() ->
	case py_router:pick(self()) of
		{error, _} -> self();
		{ctx, Pid} -> {ctx, Pid};
		{Slot, CtxIndex} -> {slot, Slot, CtxIndex}
	end.

%% Keyed by the worker's pid, not just `asked': a worker that restarted (or a new application under a
%% long-lived caller) has no monitor of the caller, which must ask again.
watch(Index, Worker, Route) ->
	case get({?WATCHED, Index}) of
		Worker -> ok;
		_ ->
			gen_server:cast(Worker, {watch, self(), Route}),
			_ = put({?WATCHED, Index}, Worker),
			ok
	end.

name(N) when is_atom(N) -> atom_to_binary(N, utf8);
name(N) when is_list(N) -> unicode:characters_to_binary(N);
name(N) when is_binary(N) -> N.

%% gen_server: the loop's worker. State: the loop's index, the callers it monitors (pid => route),
%% bounded by the live processes that submitted to this loop, and the application's codec.

-spec init(non_neg_integer()) -> {ok, {non_neg_integer(), #{pid() => term()}, etf | msgpack}}.
init(Index) ->
	{ok, {Index, #{}, application:get_env(erlang_python, codec, etf)}}.

-spec handle_call(term(), gen_server:from(), State) -> {reply, term(), State}.
handle_call(_Request, _From, State) ->
	{reply, {error, unknown_call}, State}.

-spec handle_cast(term(), State) -> {noreply, State}.
handle_cast({watch, Pid, Route}, {Index, Callers, Codec}) when not is_map_key(Pid, Callers) ->
	_ = erlang:monitor(process, Pid),
	{noreply, {Index, Callers#{Pid => Route}, Codec}};
handle_cast(_Msg, State) ->
	{noreply, State}.

-spec handle_info(term(), State) -> {noreply, State}.
handle_info({py_frame, _Id, ?RESULT, _Ctx, Body}, State = {_, _, Codec}) ->
	%% A task's final frame, routed here by its id: decoded here, not by the owner that routed it.
	_ = try py_codec:decode(Codec, Body) of
		Outcome -> deliver(Outcome)
	catch
		_:_ -> ok  % not a task's outcome: nobody to tell
	end,
	{noreply, State};
handle_info({py_frame, _Id, _Kind, _Ctx, _Body}, State) ->
	%% port_exited (fail_inflight) or a malformed answer: the task is gone with its port; its caller's
	%% await ends at its deadline.
	{noreply, State};
handle_info(Batch, State) when is_list(Batch) ->
	%% Outcomes sent by the port (callers without a task id): a list of deliver/1's tuples.
	lists:foreach(fun deliver/1, Batch),
	{noreply, State};
handle_info({'DOWN', _, process, Pid, _}, {Index, Callers, Codec}) ->
	case maps:take(Pid, Callers) of
		{Route, Rest} ->
			%% Its tasks are cancelled in the port; a cast, so this process never waits for a port.
			py_request:cast(Route, {undefined, ?TASKS_MODULE, <<"cancel_owner">>, [Index, Pid], #{}}, 5000),
			{noreply, {Index, Rest, Codec}};
		error ->
			{noreply, {Index, Callers, Codec}}
	end;
handle_info(_Msg, State) ->
	{noreply, State}.

%% {Owner, Ref, <<"ok">>, Value} | {Owner, Ref, <<"error">>, {Class, Msg, Tb}} | {_, _, <<"dropped">>, _}
%% (a task cancelled from Erlang: its caller no longer waits).
deliver({Owner, Ref, <<"ok">>, Value}) when is_pid(Owner) ->
	Owner ! {async_result, Ref, {ok, Value}};
deliver({Owner, Ref, <<"error">>, {Class, Message, _Tb}}) when is_pid(Owner) ->
	Owner ! {async_result, Ref, {error, {py_errors:class(Class), unicode:characters_to_list(Message)}}};
deliver(_) ->
	ok.
