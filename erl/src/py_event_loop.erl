%% The Erlang-side async task API (issue 9): run Python coroutines on an asyncio event loop in the port.
%%
%% Scope: py_event_loop:run/3,4, create_task/3,4, await/1,2, spawn_task/3,4, get_loop/0 (the shared loop,
%% number 0); the task table and the routing of task outcomes (route_outcomes/1, called by py_port).
%% py_event_loop_pool offers the same calls on N loops with process affinity.
%%
%% How a task runs (PROTOCOL.md §3.10): the caller writes one `task_submit' frame itself to its own
%% port, naming its own context (whose environment of the caller's is the task's namespace: functions
%% `py:exec' defined there are found as '__main__') and the loop. No request occupies a context: the
%% port's I/O thread queues it for the loop thread, which calls the function and runs a coroutine as
%% an asyncio Task. Outcomes come back batched in `task_result' frames; the port owner hands each to
%% route_outcomes/1, which takes the task's entry from py_tasks (Ref => caller) and sends the caller
%% `{async_result, Ref, {ok, R} | {error, E}}' itself: no process between the owner and the caller.
%%
%% Every wait has a deadline: await's timeout (default 5000 ms) takes the task's entry and cancels the
%% task (asyncio.CancelledError in the coroutine); nothing is delivered for it afterwards. A caller's
%% death cancels its tasks in the port (its environment is dropped, PROTOCOL.md §3.1). When the port
%% dies, every task in flight on it ends with {error, {port_exited, Reason}} (await with infinity too).
%%
%% The port side of a task never waits for Erlang: a task that calls `erlang.call' blocks its loop
%% until the answer (use `await erlang.async_call(...)'), and such callbacks run in a fresh process,
%% not in the caller (the loop thread serves no request).
%%
%% Bounds: py_tasks holds one entry per task awaited (removed by its outcome, its await's timeout or
%% its port's death); the port admits at most 100,000 tasks in flight per loop and answers a
%% submission past that with {error, {'RuntimeError', "too many tasks in flight ..."}}.
%%
%% Errors are py's: {error, {Class, Message}} for a Python exception (a coroutine that raises, a
%% missing module or function, ModuleNotFoundError / AttributeError), {error, timeout}.
-module(py_event_loop).

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

%% Used by py_event_loop_pool, erlang_python_sup and py_port.
-export([submit/6]).
-export([run_on/5]).
-export([spawn_on/5]).
-export([gather/2]).
-export([init_tab/0]).
-export([route_outcomes/1]).
-export([port_exited/2]).

-export_type([loop/0]).

%% A loop handle: {py_event_loop, Index}.
-type loop() :: {py_event_loop, non_neg_integer()}.

-define(DEFAULT_TIMEOUT, 5000).
%% The task table: {Ref, Caller, Slot, LoopIndex}, one per task whose outcome a caller awaits.
-define(TAB, py_tasks).
-define(TASK_SUBMIT, 16).
-define(TASK_CANCEL, 17).
%% Outcomes bigger than this are decoded in a short-lived process, not in the port owner.
-define(BIG_OUTCOME, 65536).
%% How long an await that lost the race with the owner waits for the outcome on its way.
-define(LATE_MS, 5000).

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
		case ets:take(?TAB, Ref) of
			[{_, _, Slot, Index}] ->
				%% Nobody will deliver it now; the port cancels the task.
				ok = cancel(Slot, Index, Ref),
				{error, timeout};
			[] ->
				%% The owner took it (or the port died): the outcome is on its way.
				receive {async_result, Ref, Result} -> Result after ?LATE_MS -> {error, timeout} end
		end
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

%% Submits a task to loop Index; returns its Ref. Errors at submission (no such loop, no port, a
%% term the codec cannot encode) are delivered as the task's result, so the caller handles one shape.
-spec submit(non_neg_integer(), py:py_module(), py:py_func(), py:py_args(), py:py_kwargs(), timeout()) ->
	reference().
submit(Index, Module, Func, Args, Kwargs, Timeout) ->
	Ref = make_ref(),
	case send_task(Index, Ref, Module, Func, Args, Kwargs, Timeout) of
		ok -> ok;
		{error, _} = Error -> self() ! {async_result, Ref, Error}
	end,
	Ref.

%% Runs on loop Index (run/4's options).
-spec run_on(non_neg_integer(), py:py_module(), py:py_func(), py:py_args(), map()) -> py:py_result().
run_on(Index, Module, Func, Args, Opts) ->
	Timeout = maps:get(timeout, Opts, ?DEFAULT_TIMEOUT),
	Ref = submit(Index, Module, Func, Args, maps:get(kwargs, Opts, #{}), Timeout),
	await(Ref, Timeout).

%% Fire and forget on loop Index.
-spec spawn_on(non_neg_integer(), py:py_module(), py:py_func(), py:py_args(), py:py_kwargs()) -> ok.
spawn_on(Index, Module, Func, Args, Kwargs) ->
	_ = send_task(Index, none, Module, Func, Args, Kwargs, ?DEFAULT_TIMEOUT),
	ok.

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

%% erlang_python_sup, at start: the task table (public: callers insert and take their own entries).
-spec init_tab() -> ok.
init_tab() ->
	?TAB = ets:new(?TAB, [set, public, named_table, {write_concurrency, true}, {read_concurrency, true}]),
	ok.

%% py_port, for a task_result frame's body (PROTOCOL.md §3.10): each outcome goes to the caller whose
%% entry it is; one nobody awaits (timed out, spawn_task's) is dropped. Small outcomes are decoded
%% here (one binary_to_term, the same order of work as the message copy); big ones in a process of
%% their own, so the owner never decodes much.
-spec route_outcomes(binary()) -> ok.
route_outcomes(<<Len:32, Item:Len/binary, Rest/binary>>) ->
	_ = case Len > ?BIG_OUTCOME of
		true -> spawn(fun() -> deliver(Item) end);
		false -> deliver(Item)
	end,
	route_outcomes(Rest);
route_outcomes(<<>>) ->
	ok.

%% py_port, when the OS process of Slot is gone: every task awaited there ends with the reason.
-spec port_exited(pos_integer(), term()) -> ok.
port_exited(Slot, Reason) ->
	case ets:whereis(?TAB) of
		undefined ->
			ok;
		_ ->
			Refs = ets:select(?TAB, [{{'$1', '_', Slot, '_'}, [], ['$1']}]),
			_ = [case ets:take(?TAB, Ref) of
				[{_, Pid, _, _}] -> Pid ! {async_result, Ref, {error, {port_exited, Reason}}};
				[] -> ok
			end || Ref <- Refs],
			ok
	end.

%% Internal.

%% Writes the task_submit frame: ctx = the caller's context, id = the loop, body
%% <<RefLen:16, Ref, Term>> (Ref: the reference's ETF bytes, none for fire-and-forget; Term in the
%% port's codec: {Env, Module, Function, Args, Kwargs}).
send_task(Index, Ref, Module, Func, Args, Kwargs, Timeout) ->
	case Index < py_event_loop_pool:size() andalso ets:whereis(?TAB) =/= undefined of
		false ->
			{error, event_loop_not_started};
		true ->
			case py_request:target(self(), Timeout) of
				{ok, #{port := Port, codec := Codec}, Slot, Ctx} ->
					RefBin = ref_bytes(Ref),
					case encode(Codec, {py_request:env_owner(), name(Module), name(Func), Args, Kwargs}) of
						{ok, Term} ->
							Frame = [<<?TASK_SUBMIT, 0, 0:16, Ctx:32, Index:64, (byte_size(RefBin)):16>>,
								RefBin | Term],
							_ = is_reference(Ref) andalso ets:insert(?TAB, {Ref, self(), Slot, Index}),
							try port_command(Port, Frame) of
								true -> ok
							catch error:badarg ->
								%% Its port closed under us: the sweep (port_exited/2) may have answered.
								case is_reference(Ref) andalso ets:take(?TAB, Ref) of
									[_] -> {error, {port_exited, #{exit_status => undefined, signal => undefined,
										traceback => <<>>, reason => crashed}}};
									_ -> ok
								end
							end;
						{error, _} = Error ->
							Error
					end;
				{error, _} = Error ->
					Error
			end
	end.

encode(Codec, Term) ->
	try {ok, py_codec:encode(Codec, Term)}
	catch error:Why -> {error, {badarg, Why}}
	end.

ref_bytes(none) -> <<>>;
ref_bytes(Ref) -> <<131, Bytes/binary>> = term_to_binary(Ref), Bytes.

cancel(Slot, Index, Ref) ->
	case py_port:info(Slot) of
		#{status := Status, port := Port} when Status =/= down ->
			_ = catch port_command(Port, [<<?TASK_CANCEL, 0, 0:16, 0:32, Index:64>>, ref_bytes(Ref)]),
			ok;
		_ ->
			ok
	end.

deliver(Item) ->
	try binary_to_term(Item, [safe]) of
		{Ref, Result} when is_reference(Ref) ->
			case ets:take(?TAB, Ref) of
				[{_, Pid, _, _}] -> Pid ! {async_result, Ref, result(Result)};
				[] -> ok
			end;
		_ ->
			ok
	catch
		error:badarg -> ok  % not an outcome the port can write: nobody to tell
	end.

%% Python class names are atoms when such atoms exist (py:call's convention), messages strings.
result({error, {Class, Message}}) when is_binary(Class), is_binary(Message) ->
	{error, {py_errors:class(Class), unicode:characters_to_list(Message)}};
result(Result) ->
	Result.

is_call({M, F, A}) -> (is_atom(M) orelse is_binary(M) orelse is_list(M))
	andalso (is_atom(F) orelse is_binary(F) orelse is_list(F)) andalso is_list(A);
is_call(_) -> false.

name(N) when is_atom(N) -> atom_to_binary(N, utf8);
name(N) when is_list(N) -> unicode:characters_to_binary(N);
name(N) when is_binary(N) -> N.
