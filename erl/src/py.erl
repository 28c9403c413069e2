%% The public API of erlang_python: call Python from Erlang.
%%
%% Python runs in erlang_python_port OS processes (py_port); each hosts a few contexts (a thread with
%% its namespaces). A calling process is always routed to the same port and context (py_router), and
%% has its own Python globals there (its process-bound environment): what `py:exec` defines in a
%% process, later `py:eval`/`py:call('__main__', ...)` from that process see, and no other process
%% does. The environment is freed when the process exits.
%%
%% Contexts: every call shape also takes a context first (a py_context pid: py:context/0,1,
%% py_context:new/1, a pool member), e.g. py:call(Ctx, M, F, A) or py:eval(Ctx, Code); the call runs in
%% that context, in the calling process's environment there. A pool name first (an atom) with the
%% arguments as a list, py:call(io, M, F, A) / py:call(io, M, F, A, Kwargs), runs on a context of that
%% pool. How the overloads are told apart:
%%   call/4  (Pid, M, F, Args)        4th a list, 1st a pid
%%           (Pool, M, F, Args)       4th a list, 1st an atom
%%           (M, F, Args, Kwargs)     4th a map
%%   call/5  (Pid, M, F, Args, Kwargs) / (Pool, M, F, Args, Kwargs): 4th a list, 5th a map
%%           (M, F, Args, Kwargs, Timeout): 3rd a list, 4th a map
%%   eval/2, eval/3, exec/2, spawn_call/4, cast/4: a pid first is a context.
%% py:call/3,4,5 of a module (or function) registered with register_pool/2 go to that pool.
%%
%% Results are {ok, Value} or {error, Reason}:
%%   {error, {ClassAtom, MessageString}}   a Python exception, e.g. {'NameError', "name 'x' is not defined"}
%%                                         (ClassAtom is a binary for a class name that is not an atom yet)
%%   {error, timeout}                      the timeout passed; the request was cancelled in Python
%%   {error, {port_exited, Map}}           the Python process died (Map: exit_status, signal, traceback, reason)
%%   {error, {protocol_error, Reason, Detail}}  the port could not read the request
%%   {error, {context_down, Ctx}}          Ctx is not a running context (stopped, or its port died)
%%   {error, {pool_not_started, Pool}}     a call routed to a pool that is not running
-module(py).

%% Calls.
-export([call/3]).
-export([call/4]).
-export([call/5]).
-export([eval/1]).
-export([eval/2]).
-export([eval/3]).
-export([exec/1]).
-export([exec/2]).
-export([spawn_call/3]).
-export([spawn_call/4]).
-export([await/1]).
-export([await/2]).
-export([cast/3]).
-export([cast/4]).
-export([cast/5]).
-export([spawn_call/5]).

%% Streams from Python iterators (py_stream).
-export([stream/3]).
-export([stream/4]).
-export([stream_eval/1]).
-export([stream_eval/2]).
-export([stream_start/3]).
-export([stream_start/4]).
-export([stream_cancel/1]).

%% Async calls on the asyncio event loops (issue 9; py_event_loop, py_event_loop_pool).
-export([async_call/3]).
-export([async_call/4]).
-export([async_await/1]).
-export([async_await/2]).
-export([async_gather/1]).
-export([async_gather/2]).

%% Contexts and pools.
-export([context/0]).
-export([context/1]).
-export([start_contexts/0]).
-export([start_contexts/1]).
-export([stop_contexts/0]).
-export([contexts_started/0]).
-export([get_local_env/1]).
-export([register_pool/2]).
-export([unregister_pool/1]).
-export([parallel/1]).

%% Python object references.
-export([call_method/3]).
-export([getattr/2]).
-export([to_term/1]).
-export([is_ref/1]).

%% Callbacks (Python -> Erlang).
-export([register_function/2]).
-export([register_function/3]).
-export([unregister_function/1]).

%% Shared state.
-export([state_store/2]).
-export([state_fetch/1]).
-export([state_remove/1]).
-export([state_keys/0]).
-export([state_clear/0]).
-export([state_incr/1]).
-export([state_incr/2]).
-export([state_decr/1]).
-export([state_decr/2]).

%% SharedDict.
-export([shared_dict_new/0]).
-export([shared_dict_get/2]).
-export([shared_dict_get/3]).
-export([shared_dict_set/3]).
-export([shared_dict_del/2]).
-export([shared_dict_keys/1]).
-export([shared_dict_destroy/1]).

%% Information and housekeeping.
-export([version/0]).
-export([execution_mode/0]).
-export([subinterp_supported/0]).
%% Execution modes (issue 8, py_modes).
-export([execution_info/0]).
-export([num_contexts/0]).
-export([stats/0]).
-export([memory_stats/0]).
-export([gc/0]).
-export([gc/1]).
-export([tracemalloc_start/0]).
-export([tracemalloc_start/1]).
-export([tracemalloc_stop/0]).

%% Venvs and the sandbox (opsc: py_venv, py_pool_ports).
-export([ensure_venv/2]).
-export([ensure_venv/3]).
-export([activate_venv/1]).
-export([deactivate_venv/0]).
-export([venv_info/0]).
-export([is_sandboxed/0]).
%% Errors (issue 12, the Elixir wrapper's Py.Error): the traceback of the caller's last Python exception.
-export([last_traceback/0]).
%% Logging, tracing, telemetry and per-pool stats (opsa: py_ops, py_stats, py_telemetry).
-export([configure_logging/0]).
-export([configure_logging/1]).
-export([enable_tracing/0]).
-export([disable_tracing/0]).
-export([get_traces/0]).
-export([clear_traces/0]).
-export([pool_stats/0]).
%% Operations (opsb): interrupts, recording (wrappers at the end of this file).
-export([interrupt/1]).
-export([record/2]).

-export_type([py_module/0]).
-export_type([py_func/0]).
-export_type([py_args/0]).
-export_type([py_kwargs/0]).
-export_type([py_code/0]).
-export_type([py_result/0]).
-export_type([py_ref/0]).

-type py_module() :: atom() | binary() | string().
-type py_func() :: atom() | binary() | string().
-type py_args() :: [term()].
-type py_kwargs() :: #{atom() | binary() => term()}.
-type py_code() :: binary() | string().
-type py_result() :: {ok, term()} | {error, term()}.
-type py_ref() :: reference().

%% Process dictionary key of a pending spawn_call: {?SPAWN_CALL, Ref} => its holder.
-define(SPAWN_CALL, py_spawn_call).

%% Calls.

%% Module.Function(*Args).
-spec call(py_module(), py_func(), py_args()) -> py_result().
call(Module, Function, Args) ->
	call(Module, Function, Args, #{}, default_timeout()).

%% Module.Function(*Args, **Kwargs); or Module.Function(*Args) on a context or a pool.
-spec call(py_module(), py_func(), py_args(), py_kwargs()) -> py_result();
	(pid() | py_context_router:pool_name(), py_module(), py_func(), py_args()) -> py_result().
call(Ctx, Module, Function, Args) when is_pid(Ctx); is_atom(Ctx) andalso is_list(Args) ->
	call(Ctx, Module, Function, Args, #{});
call(Module, Function, Args, Kwargs) ->
	call(Module, Function, Args, Kwargs, default_timeout()).

-spec call(py_module(), py_func(), py_args(), py_kwargs(), timeout()) -> py_result();
	(pid() | py_context_router:pool_name(), py_module(), py_func(), py_args(), py_kwargs()) -> py_result().
call(Ctx, Module, Function, Args, Kwargs) when is_list(Args), is_map(Kwargs), is_pid(Ctx) orelse is_atom(Ctx) ->
	case ctx_route(Ctx) of
		{error, _} = Error -> Error;
		Route -> limited(fun() -> py_request:run(call, Route,
			py_ref:call_body(py_request:env_owner(), name(Module), name(Function), Args, Kwargs), default_timeout(), true) end)
	end;
call(Module, Function, Args, Kwargs, Timeout) when is_list(Args), is_map(Kwargs),
		(is_integer(Timeout) andalso Timeout >= 0) orelse Timeout =:= infinity ->
	Body = py_ref:call_body(py_request:env_owner(), name(Module), name(Function), Args, Kwargs),
	case route(Module, Function) of
		{error, _} = Error -> Error;
		Route -> limited(fun() -> py_request:run(call, Route, Body, Timeout, true) end)
	end.

%% The value of Code: an expression, or statements followed by an expression (its value), or
%% statements only (none). Runs in the calling process's environment.
-spec eval(py_code()) -> py_result().
eval(Code) ->
	eval(Code, #{}, default_timeout()).

%% Locals (atom or binary keys) are local names while Code runs.
-spec eval(py_code(), map()) -> py_result();
	(pid(), py_code()) -> py_result().
eval(Ctx, Code) when is_pid(Ctx) ->
	eval(Ctx, Code, #{});
eval(Code, Locals) ->
	eval(Code, Locals, default_timeout()).

-spec eval(py_code(), map(), timeout()) -> py_result();
	(pid(), py_code(), map()) -> py_result().
eval(Ctx, Code, Locals) when is_pid(Ctx), is_map(Locals) ->
	limited(fun() -> py_request:run(eval, {ctx, Ctx}, {py_request:env_owner(), code(Code), Locals}, default_timeout(), true) end);
eval(Code, Locals, Timeout) when is_map(Locals),
		(is_integer(Timeout) andalso Timeout >= 0) orelse Timeout =:= infinity ->
	limited(fun() -> py_request:run(eval, self(), {py_request:env_owner(), code(Code), Locals}, Timeout, true) end).

%% Runs statements in the calling process's environment.
-spec exec(py_code()) -> ok | {error, term()}.
exec(Code) ->
	exec(Code, default_timeout()).

-spec exec(py_code(), timeout()) -> ok | {error, term()};
	(pid(), py_code()) -> ok | {error, term()}.
exec(Ctx, Code) when is_pid(Ctx) ->
	limited(fun() -> py_request:run(exec, {ctx, Ctx}, {py_request:env_owner(), code(Code)}, default_timeout(), true) end);
exec(Code, Timeout) when is_integer(Timeout), Timeout >= 0; Timeout =:= infinity ->
	limited(fun() -> py_request:run(exec, self(), {py_request:env_owner(), code(Code)}, Timeout, true) end).

%% Streams (py_stream, PROTOCOL.md §3.9). The iterator Module.Function(*Args, **Kwargs) returns (or
%% the one Code evaluates to), run where py:call/py:eval would run it, in the caller's environment.

%% Every item the iterator yields, as {ok, List}; errors as py:call reports them. Within the
%% default timeout (the whole stream), after which it is cancelled.
-spec stream(py_module(), py_func(), py_args()) -> py_result().
stream(Module, Function, Args) ->
	stream(Module, Function, Args, #{}).

-spec stream(py_module(), py_func(), py_args(), py_kwargs()) -> py_result().
stream(Module, Function, Args, Kwargs) when is_list(Args), is_map(Kwargs) ->
	case stream_call(Module, Function, Args, Kwargs) of
		{error, _} = Error -> Error;
		Call -> limited(fun() -> py_stream:collect(call, Call, default_timeout()) end)
	end.

-spec stream_eval(py_code()) -> py_result().
stream_eval(Code) ->
	stream_eval(Code, #{}).

-spec stream_eval(py_code(), map()) -> py_result().
stream_eval(Code, Locals) when is_map(Locals) ->
	Body = {py_request:env_owner(), code(Code), Locals},
	limited(fun() -> py_stream:collect(eval, {self(), Body}, default_timeout()) end).

%% Starts the stream and returns at once; the owner (#{owner => Pid}, default the caller) gets
%% {py_stream, Ref, {data, Value}} per item, then {py_stream, Ref, done} or
%% {py_stream, Ref, {error, Reason}}. The port runs only a bounded number of items ahead of what the
%% owner has taken (README "Streams").
-spec stream_start(py_module(), py_func(), py_args()) -> {ok, reference()} | {error, term()}.
stream_start(Module, Function, Args) ->
	stream_start(Module, Function, Args, #{}).

-spec stream_start(py_module(), py_func(), py_args(), #{owner => pid(), kwargs => py_kwargs()}) ->
	{ok, reference()} | {error, term()}.
stream_start(Module, Function, Args, Opts) when is_list(Args), is_map(Opts) ->
	Owner = maps:get(owner, Opts, self()),
	case stream_call(Module, Function, Args, maps:get(kwargs, Opts, #{})) of
		{error, _} = Error -> Error;
		{Route, Body} -> py_stream:start(call, Route, Body, Owner)
	end.

%% Stops the stream (its generator is closed in Python); no further event of Ref arrives after it
%% returns. ok also for a stream that has ended.
-spec stream_cancel(reference()) -> ok.
stream_cancel(Ref) when is_reference(Ref) ->
	py_stream:cancel(Ref).

stream_call(Module, Function, Args, Kwargs) ->
	case route(Module, Function) of
		{error, _} = Error -> Error;
		Route -> {Route, {py_request:env_owner(), name(Module), name(Function), Args, Kwargs}}
	end.

%% Starts the call in another process and returns at once; py:await/1,2 collects the result. The
%% call uses the caller's context and environment; Erlang functions Python calls back meanwhile run in
%% that other process (nested py calls from them still use the caller's environment).
%%
%% Two processes per call: a holder, monitored by the caller (the Ref), keeps the result until an
%% await collects it, and a worker runs the request. Nothing is ever sent to the caller unasked: an
%% await that timed out leaves no message behind, and a later await still collects the result. When
%% the caller exits, the holder kills the worker and its request is cancelled like a dead caller's.
-spec spawn_call(py_module(), py_func(), py_args()) -> py_ref().
spawn_call(Module, Function, Args) ->
	spawn_call(Module, Function, Args, #{}).

-spec spawn_call(py_module(), py_func(), py_args(), py_kwargs()) -> py_ref();
	(pid(), py_module(), py_func(), py_args()) -> py_ref().
spawn_call(Ctx, Module, Function, Args) when is_pid(Ctx) ->
	spawn_call(Ctx, Module, Function, Args, #{});
spawn_call(Module, Function, Args, Kwargs) when is_list(Args), is_map(Kwargs) ->
	%% The caller's place and environment, resolved here: the spawned process has its own dictionary.
	Route = case route(Module, Function) of
		Caller when Caller =:= self() ->
			case py_router:pick(Caller) of
				{error, _} -> Caller;
				{ctx, Pid} -> {ctx, Pid};
				{Slot, CtxIndex} -> {slot, Slot, CtxIndex}
			end;
		Other ->
			Other
	end,
	spawn_routed(Route, Module, Function, Args, Kwargs).

%% On context Ctx.
-spec spawn_call(pid(), py_module(), py_func(), py_args(), py_kwargs()) -> py_ref().
spawn_call(Ctx, Module, Function, Args, Kwargs) when is_pid(Ctx), is_list(Args), is_map(Kwargs) ->
	spawn_routed({ctx, Ctx}, Module, Function, Args, Kwargs).

spawn_routed(Route, Module, Function, Args, Kwargs) ->
	Caller = self(),
	Env = py_request:env_owner(),
	Body = py_ref:call_body(Env, name(Module), name(Function), Args, Kwargs),
	%% A spawn_call from inside a callback is nested in that callback's request (PROTOCOL.md §3.4).
	Nested = py_request:nested_marker(),
	Holder = spawn(fun() -> spawn_call_holder(Caller, Env, Route, Nested, Body) end),
	Ref = erlang:monitor(process, Holder),
	_ = put({?SPAWN_CALL, Ref}, Holder),
	Ref.

-spec await(py_ref()) -> py_result().
await(Ref) ->
	await(Ref, infinity).

%% {error, timeout} leaves the call running and nothing in the mailbox: a later await can still
%% collect it. A result that is there already is returned even with a zero timeout. A Ref that is
%% not a pending spawn_call of this process (already collected) is badarg.
-spec await(py_ref(), timeout()) -> py_result().
await(Ref, Timeout) ->
	Holder = case get({?SPAWN_CALL, Ref}) of
		undefined -> error(badarg, [Ref, Timeout]);
		H -> H
	end,
	%% The holder answers a collect at once, with the result or `pending`, and sends a pending result
	%% to the same alias when it comes. The alias dies with this await: a result that misses it is
	%% dropped, and the holder keeps it until it hears it was taken.
	Reply = erlang:alias(),
	Holder ! {collect, Reply},
	receive
		{py_async, Reply, Result} ->
			collected(Ref, Holder, Reply, Result);
		{py_pending, Reply} ->
			receive
				{py_async, Reply, Result} ->
					collected(Ref, Holder, Reply, Result);
				{'DOWN', Ref, process, _, Reason} ->
					_ = erlang:unalias(Reply),
					_ = erase({?SPAWN_CALL, Ref}),
					{error, {spawn_call_failed, Reason}}
			after Timeout ->
				_ = erlang:unalias(Reply),
				%% A result sent before the alias went is here already.
				receive
					{py_async, Reply, Result} -> collected(Ref, Holder, Reply, Result)
				after 0 ->
					{error, timeout}
				end
			end;
		{'DOWN', Ref, process, _, Reason} ->
			_ = erlang:unalias(Reply),
			_ = erase({?SPAWN_CALL, Ref}),
			{error, {spawn_call_failed, Reason}}
	end.

collected(Ref, Holder, Reply, Result) ->
	_ = erlang:unalias(Reply),
	Holder ! {taken, Reply},
	true = erlang:demonitor(Ref, [flush]),
	_ = erase({?SPAWN_CALL, Ref}),
	Result.

%% The holder of one spawn_call. Bounded: it lives until its result is taken or its caller exits.
spawn_call_holder(Caller, Env, Route, Nested, Body) ->
	CallerMon = erlang:monitor(process, Caller),
	Tag = make_ref(),
	Self = self(),
	{Worker, WorkerMon} = spawn_monitor(fun() ->
		%% The worker stands in for the caller: its place (so callbacks' nested calls go there too),
		%% its environment and its callback nesting.
		_ = case Route of
			{slot, Slot, CtxIndex} -> ok = py_router:bind({Slot, CtxIndex});
			_ -> ok
		end,
		ok = py_request:act_for(Env),
		ok = py_request:set_nested_marker(Nested),
		Result = case Route of
			{error, _} = Error -> Error;
			_ -> py_request:run(call, Route, Body, infinity, true)
		end,
		Self ! {Tag, Result}
	end),
	spawn_call_pending(Tag, Worker, WorkerMon, Caller, CallerMon, none).

%% Waiting for the worker; Reply is the alias of the await in progress, if any.
spawn_call_pending(Tag, Worker, WorkerMon, Caller, CallerMon, Reply) ->
	receive
		{Tag, Result} ->
			erlang:demonitor(WorkerMon, [flush]),
			spawn_call_done(Result, CallerMon, Reply);
		{'DOWN', WorkerMon, process, Worker, Reason} ->
			spawn_call_done({error, {spawn_call_failed, Reason}}, CallerMon, Reply);
		{collect, NewReply} ->
			NewReply ! {py_pending, NewReply},
			spawn_call_pending(Tag, Worker, WorkerMon, Caller, CallerMon, NewReply);
		{'DOWN', CallerMon, process, Caller, _} ->
			exit(Worker, kill),
			%% A kill always ends it; the bound is only for the rule that every wait has one.
			receive {'DOWN', WorkerMon, process, Worker, _} -> ok after 5000 -> ok end,
			%% Its request was the caller's; nobody will read the answer.
			ok = py_port:forget_caller(Worker)
	end.

spawn_call_done(Result, CallerMon, none) ->
	spawn_call_hold(Result, CallerMon, none);
spawn_call_done(Result, CallerMon, Reply) ->
	Reply ! {py_async, Reply, Result},
	spawn_call_hold(Result, CallerMon, Reply).

spawn_call_hold(Result, CallerMon, Sent) ->
	receive
		{collect, Reply} ->
			Reply ! {py_async, Reply, Result},
			spawn_call_hold(Result, CallerMon, Reply);
		{taken, Sent} ->
			ok;
		{'DOWN', CallerMon, process, _, _} ->
			ok
	end.

%% Module.Function(*Args) without waiting for, or getting, a result.
-spec cast(py_module(), py_func(), py_args()) -> ok.
cast(Module, Function, Args) ->
	cast(Module, Function, Args, #{}).

-spec cast(py_module(), py_func(), py_args(), py_kwargs()) -> ok;
	(pid(), py_module(), py_func(), py_args()) -> ok.
cast(Ctx, Module, Function, Args) when is_pid(Ctx) ->
	cast(Ctx, Module, Function, Args, #{});
cast(Module, Function, Args, Kwargs) when is_list(Args), is_map(Kwargs) ->
	case route(Module, Function) of
		{error, Why} -> logger:warning("erlang_python: py:cast dropped: ~tp", [Why]);
		Route -> py_request:cast(Route, {py_request:env_owner(), name(Module), name(Function), Args, Kwargs}, 5000)
	end.

%% On context Ctx.
-spec cast(pid(), py_module(), py_func(), py_args(), py_kwargs()) -> ok.
cast(Ctx, Module, Function, Args, Kwargs) when is_pid(Ctx), is_list(Args), is_map(Kwargs) ->
	py_request:cast({ctx, Ctx}, {py_request:env_owner(), name(Module), name(Function), Args, Kwargs}, 5000).

%% Contexts and pools.

%% The calling process's context: its binding (py_context_router:bind_context/1), else its own place
%% in the default pool (the one py:call/3 from it uses).
-spec context() -> pid().
context() ->
	py_context_router:get_context().

%% Context N (1-based) of the default pool.
-spec context(pos_integer()) -> pid().
context(N) ->
	py_context_router:get_context(N).

%% The default pool (started with the application): its contexts.
-spec start_contexts() -> {ok, [pid()]} | {error, term()}.
start_contexts() ->
	py_context_router:start().

-spec start_contexts(map()) -> {ok, [pid()]} | {error, term()}.
start_contexts(Opts) ->
	py_context_router:start(Opts).

-spec stop_contexts() -> ok.
stop_contexts() ->
	py_context_router:stop().

-spec contexts_started() -> boolean().
contexts_started() ->
	py_context_router:is_started().

%% An explicit environment of the calling process in context Ctx (made on first use, kept in the
%% process dictionary, freed when the process exits), for py_context:call/7, eval/5, exec/3.
-spec get_local_env(pid()) -> reference().
get_local_env(Ctx) when is_pid(Ctx) ->
	case get({py_local_env, Ctx}) of
		Env when is_reference(Env) ->
			Env;
		undefined ->
			case py_context:create_local_env(Ctx) of
				{ok, Env} ->
					_ = put({py_local_env, Ctx}, Env),
					Env;
				{error, Why} ->
					error(Why)
			end
	end.

%% Routes Module:* (Module) or Module:Func ({Module, Func}) to Pool.
-spec register_pool(py_context_router:pool_name(), atom() | {atom(), atom()}) -> ok.
register_pool(Pool, {Module, Func}) ->
	py_context_router:register_pool(Pool, Module, Func);
register_pool(Pool, Module) ->
	py_context_router:register_pool(Pool, Module).

-spec unregister_pool(atom() | {atom(), atom()}) -> ok.
unregister_pool({Module, Func}) ->
	py_context_router:unregister_pool(Module, Func);
unregister_pool(Module) ->
	py_context_router:unregister_pool(Module).

%% Runs the calls at the same time, spread over the contexts of the pool (ports first, so calls on
%% different ports really run in parallel), at most one per context at once. {ok, Results}: one
%% {ok, Value} or {error, Reason} per call, in the order of Calls. The calls run outside the caller's
%% process-bound environment.
-spec parallel([{py_module(), py_func(), py_args()}]) -> {ok, [py_result()]} | {error, term()}.
parallel(Calls) when is_list(Calls) ->
	py_parallel:run([parallel_call(Call) || Call <- Calls], default_timeout()).

%% Python object references (a call with #{return => ref} in its kwargs returns one).

%% Ref.Method(*Args), in the context that holds the object.
-spec call_method(py_ref:ref(), atom() | binary(), py_args()) -> py_result().
call_method(Ref, Method, Args) ->
	limited(fun() -> py_ref:call_method(Ref, Method, Args, #{}, default_timeout()) end).

%% Ref.Name.
-spec getattr(py_ref:ref(), atom() | binary()) -> py_result().
getattr(Ref, Name) ->
	limited(fun() -> py_ref:getattr(Ref, Name, default_timeout()) end).

%% The object as a term (what the call would have returned without return => ref).
-spec to_term(py_ref:ref()) -> py_result().
to_term(Ref) ->
	limited(fun() -> py_ref:to_term(Ref, default_timeout()) end).

-spec is_ref(term()) -> boolean().
is_ref(Term) ->
	py_ref:is_ref(Term).

%% Callbacks.

%% Makes Fun callable from Python as `erlang.Name(...)`; Fun gets the list of the arguments. Names
%% starting with `_` are reserved: {error, {reserved_name, Name}}.
-spec register_function(atom() | binary(), fun((list()) -> term())) -> ok | {error, {reserved_name, binary()}}.
register_function(Name, Fun) ->
	py_callback:register_function(Name, Fun).

%% Makes Module:Function(Args) callable from Python as `erlang.Name(...)`.
-spec register_function(atom() | binary(), module(), atom()) -> ok | {error, {reserved_name, binary()}}.
register_function(Name, Module, Function) ->
	py_callback:register_function(Name, Module, Function).

-spec unregister_function(atom() | binary()) -> ok.
unregister_function(Name) ->
	py_callback:unregister_function(Name).

%% Shared state.

-spec state_store(term(), term()) -> ok.
state_store(Key, Value) -> py_state:store(Key, Value).

-spec state_fetch(term()) -> {ok, term()} | {error, not_found}.
state_fetch(Key) -> py_state:fetch(Key).

-spec state_remove(term()) -> ok.
state_remove(Key) -> py_state:remove(Key).

-spec state_keys() -> [term()].
state_keys() -> py_state:keys().

-spec state_clear() -> ok.
state_clear() -> py_state:clear().

-spec state_incr(term()) -> integer().
state_incr(Key) -> py_state:incr(Key).

-spec state_incr(term(), integer()) -> integer().
state_incr(Key, N) -> py_state:incr(Key, N).

-spec state_decr(term()) -> integer().
state_decr(Key) -> py_state:decr(Key).

-spec state_decr(term(), integer()) -> integer().
state_decr(Key, N) -> py_state:decr(Key, N).

%% SharedDict.

-spec shared_dict_new() -> {ok, py_shared_dict:shared_dict()}.
shared_dict_new() -> py_shared_dict:new().

-spec shared_dict_get(py_shared_dict:shared_dict(), term()) -> term().
shared_dict_get(SD, Key) -> py_shared_dict:get(SD, Key).

-spec shared_dict_get(py_shared_dict:shared_dict(), term(), term()) -> term().
shared_dict_get(SD, Key, Default) -> py_shared_dict:get(SD, Key, Default).

-spec shared_dict_set(py_shared_dict:shared_dict(), term(), term()) -> ok.
shared_dict_set(SD, Key, Value) -> py_shared_dict:set(SD, Key, py_shared_dict:as_python(Value)).

-spec shared_dict_del(py_shared_dict:shared_dict(), term()) -> ok.
shared_dict_del(SD, Key) -> py_shared_dict:del(SD, Key).

-spec shared_dict_keys(py_shared_dict:shared_dict()) -> [term()].
shared_dict_keys(SD) -> py_shared_dict:keys(SD).

-spec shared_dict_destroy(py_shared_dict:shared_dict()) -> ok.
shared_dict_destroy(SD) -> py_shared_dict:destroy(SD).

%% Information and housekeeping.

%% The Python version, from the port's hello (no round trip).
-spec version() -> {ok, binary()} | {error, term()}.
version() ->
	case py_request:any_info() of
		{ok, #{python := Version}} -> {ok, Version};
		{error, _} = Error -> Error
	end.

%% Execution modes (py_modes): free_threaded on a free-threaded build with the GIL off, else the
%% context_mode application env.
-spec execution_mode() -> py_modes:mode().
execution_mode() ->
	py_modes:execution_mode().

-spec subinterp_supported() -> boolean().
subinterp_supported() ->
	py_modes:subinterp_supported().

-spec num_contexts() -> non_neg_integer().
num_contexts() ->
	py_router:num_contexts().

%% One map per port: slot, status, os_pid, contexts, codec, python, build, generation, and its counters
%% (py_stats: requests, errors, timeouts, restarts, latency_us => #{p50, p99}, log_dropped,
%% spans_dropped).
-spec stats() -> [map()].
stats() ->
	[maps:merge(py_stats:slot_stats(Slot), stats(py_port:info(Slot))) || Slot <- py_pool_ports:all_slots()].

stats(undefined) ->
	#{status => down};
stats(Info) ->
	Base = maps:with([slot, status, os_pid, codec, python, build, generation], Info),
	case Info of
		#{contexts := Contexts} -> Base#{contexts => tuple_to_list(Contexts)};
		#{} -> Base
	end.

%% The garbage collector's statistics of the Python process that serves the caller.
-spec memory_stats() -> {ok, map()} | {error, term()}.
memory_stats() ->
	Code = <<"(__import__('gc').get_stats(), __import__('gc').get_count(), __import__('gc').get_threshold(),"
		" __import__('tracemalloc').get_traced_memory() if __import__('tracemalloc').is_tracing() else None)">>,
	case system_eval(Code) of
		{ok, {Stats, Count, Threshold, Traced}} ->
			Base = #{gc_stats => Stats, gc_count => Count, gc_threshold => Threshold},
			case Traced of
				{Current, Peak} -> {ok, Base#{traced_memory_current => Current, traced_memory_peak => Peak}};
				none -> {ok, Base}
			end;
		{error, _} = Error ->
			Error
	end.

%% A full collection in the Python process that serves the caller; {ok, ObjectsCollected}.
-spec gc() -> {ok, non_neg_integer()} | {error, term()}.
gc() ->
	system_eval(<<"__import__('gc').collect()">>).

-spec gc(0..2) -> {ok, non_neg_integer()} | {error, term()}.
gc(Generation) when is_integer(Generation), Generation >= 0, Generation =< 2 ->
	system_eval(iolist_to_binary(["__import__('gc').collect(", integer_to_binary(Generation), ")"])).

-spec tracemalloc_start() -> ok | {error, term()}.
tracemalloc_start() ->
	tracemalloc_start(1).

-spec tracemalloc_start(pos_integer()) -> ok | {error, term()}.
tracemalloc_start(Frames) when is_integer(Frames), Frames > 0 ->
	ok_or_error(system_eval(iolist_to_binary(["__import__('tracemalloc').start(",
		integer_to_binary(Frames), ")"]))).

-spec tracemalloc_stop() -> ok | {error, term()}.
tracemalloc_stop() ->
	ok_or_error(system_eval(<<"__import__('tracemalloc').stop()">>)).

%% Logging, tracing, telemetry and per-pool stats (opsa).

%% Python logging to the Erlang logger (domain [python]); see py_ops.
-spec configure_logging() -> ok | {error, term()}.
configure_logging() -> py_ops:configure_logging().

-spec configure_logging(#{level => debug | info | warning | error | critical, format => binary() | string()}) ->
	ok | {error, term()}.
configure_logging(Opts) -> py_ops:configure_logging(Opts).

-spec enable_tracing() -> ok.
enable_tracing() -> py_ops:enable_tracing().

-spec disable_tracing() -> ok.
disable_tracing() -> py_ops:disable_tracing().

-spec get_traces() -> {ok, [py_ops:span()]}.
get_traces() -> py_ops:get_traces().

-spec clear_traces() -> ok.
clear_traces() -> py_ops:clear_traces().

%% Request counters per pool: default, each named pool, explicit (contexts of no pool).
-spec pool_stats() -> #{atom() => map()}.
pool_stats() -> py_stats:pool_stats().

%% Internal.

%% The route of a call of Module:Function by the calling process: its own place, unless a pool is
%% registered for it.
route(Module, Function) ->
	case py_context_router:route(Module, Function) of
		default -> self();
		Pool -> ctx_route(Pool)
	end.

ctx_route(Ctx) when is_pid(Ctx) ->
	{ctx, Ctx};
ctx_route(default) ->
	self();
ctx_route(Pool) when is_atom(Pool) ->
	case py_context_router:pool_context(Pool) of
		{ok, Ctx} -> {ctx, Ctx};
		{error, _} = Error -> Error
	end.

%% Every call/eval/exec holds a py_semaphore slot while it runs; when none is free it fails at once.
limited(Fun) ->
	py_semaphore:run(Fun).

parallel_call({Module, Function, Args}) when is_list(Args) ->
	{name(Module), name(Function), Args};
parallel_call(Call) ->
	error(badarg, [Call]).

%% An eval outside any process-bound environment (it creates none), on the caller's port.
system_eval(Code) ->
	py_request:run(eval, self(), {undefined, Code, #{}}, default_timeout(), true).

ok_or_error({ok, _}) -> ok;
ok_or_error({error, _} = Error) -> Error.

name(Name) when is_atom(Name); is_binary(Name) -> Name;
name(Name) when is_list(Name) -> unicode:characters_to_binary(Name).

code(Code) when is_binary(Code) -> Code;
code(Code) when is_list(Code) ->
	case unicode:characters_to_binary(Code) of
		Bin when is_binary(Bin) -> Bin;
		_ -> error(badarg, [Code])
	end.

default_timeout() ->
	case py_router:config() of
		#{default_timeout := Timeout} -> Timeout;
		undefined -> infinity
	end.

%% Venvs and the sandbox (opsc). README "Virtual environments", "Sandbox".

%% Creates the venv at Path if missing, installs DepsFile (requirements.txt or pyproject.toml) with
%% pip or uv as OS processes (outside the ports and any call timeout), and activates it in the default
%% pool's ports.
-spec ensure_venv(file:filename_all(), file:filename_all()) -> ok | {error, term()}.
ensure_venv(Path, DepsFile) ->
	py_venv:ensure(Path, DepsFile).

%% Options: {installer, pip | uv}, force, {extras, [Name]}, {python, Exe}, {timeout, Ms},
%% {activate, false}.
-spec ensure_venv(file:filename_all(), file:filename_all(), [py_venv:ensure_opt()]) -> ok | {error, term()}.
ensure_venv(Path, DepsFile, Opts) ->
	py_venv:ensure(Path, DepsFile, Opts).

%% Puts the venv's site-packages first in sys.path of every port of the default pool (now and after
%% restarts).
-spec activate_venv(file:filename_all()) -> ok | {error, term()}.
activate_venv(Path) ->
	py_venv:activate(Path).

-spec deactivate_venv() -> ok | {error, term()}.
deactivate_venv() ->
	py_venv:deactivate().

%% {ok, none} or {ok, #{<<"active">> := true, <<"venv_path">> := Path, <<"site_packages">> := Dir, ...}}
%% of the port that serves the caller.
-spec venv_info() -> {ok, map() | none} | {error, term()}.
venv_info() ->
	py_venv:info().

%% Whether the port that serves the caller runs with the audit-hook sandbox (the application env
%% `sandbox', or a pool's `sandbox' option).
-spec is_sandboxed() -> {ok, boolean()} | {error, term()}.
is_sandboxed() ->
	py_request:run(eval, self(), {undefined, <<"__import__('erlang').is_sandboxed()">>, #{}}, default_timeout(), true).

%% Errors (issue 12).

%% The formatted traceback of the calling process's last request that ended with a Python exception
%% (undefined if none did); py_traceback keeps one per process.
-spec last_traceback() -> binary() | undefined.
last_traceback() ->
	py_traceback:last().
%% ---------------------------------------------------------------------------------------------
%% Operations (opsb): interrupts and recording. py_interrupt, py_record.

-spec interrupt(pid()) -> ok | not_running | {error, term()}.
interrupt(Ctx) ->
	py_interrupt:interrupt(Ctx).

%% record(start, #{path := File, slot => 1, max_bytes => 64 MiB}) records port `slot` from now on;
%% record(stop, #{slot => 1}) ends it. protocol/RECORDING.md.
-spec record(start | stop, map()) -> ok | {error, term()}.
record(start, Opts) when is_map(Opts) ->
	py_record:start(maps:get(slot, Opts, 1), Opts);
record(stop, Opts) when is_map(Opts) ->
	py_record:stop(maps:get(slot, Opts, 1)).

%% Execution modes (issue 8): per port of the default pool, its Python, build and GIL state now.
-spec execution_info() -> [map()].
execution_info() ->
	py_modes:execution_info().
%% Async calls (issue 9): thin wrappers over py_event_loop_pool / py_event_loop.

%% Module.Func(*Args) as a task on the caller's event loop (a coroutine function's coroutine runs
%% there; a plain function's result is at once); the result comes as {async_result, Ref, Result}.
-spec async_call(py_module(), py_func(), py_args()) -> py_ref().
async_call(Module, Function, Args) ->
	py_event_loop_pool:create_task(Module, Function, Args).

-spec async_call(py_module(), py_func(), py_args(), py_kwargs()) -> py_ref().
async_call(Module, Function, Args, Kwargs) ->
	py_event_loop_pool:create_task(Module, Function, Args, Kwargs).

%% The result of an async_call (default timeout 5000 ms; a timeout cancels the task).
-spec async_await(py_ref()) -> py_result().
async_await(Ref) ->
	py_event_loop:await(Ref).

-spec async_await(py_ref(), timeout()) -> py_result().
async_await(Ref, Timeout) ->
	py_event_loop:await(Ref, Timeout).

%% Runs the calls concurrently: {ok, [R1, ...]} in input order, or {error, {gather_failed, [{Index,
%% Reason}]}} (1-based indexes) when any failed. Timeout (default 5000 ms) applies to each call.
-spec async_gather([{py_module(), py_func(), py_args()}]) -> py_result().
async_gather(Calls) ->
	async_gather(Calls, 5000).

-spec async_gather([{py_module(), py_func(), py_args()}], timeout()) -> py_result().
async_gather(Calls, Timeout) ->
	py_event_loop:gather(Calls, Timeout).
