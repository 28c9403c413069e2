%% The public API of erlang_python: call Python from Erlang.
%%
%% Python runs in erlang_python_port OS processes (py_port); each hosts a few contexts (a thread with
%% its namespaces). A calling process is always routed to the same port and context (py_router), and
%% has its own Python globals there (its process-bound environment): what `py:exec` defines in a
%% process, later `py:eval`/`py:call('__main__', ...)` from that process see, and no other process
%% does. The environment is freed when the process exits.
%%
%% Results are {ok, Value} or {error, Reason}:
%%   {error, {ClassAtom, MessageString}}   a Python exception, e.g. {'NameError', "name 'x' is not defined"}
%%                                         (ClassAtom is a binary for a class name that is not an atom yet)
%%   {error, timeout}                      the timeout passed; the request was cancelled in Python
%%   {error, {port_exited, Map}}           the Python process died (Map: exit_status, signal, traceback, reason)
%%   {error, {protocol_error, Reason, Detail}}  the port could not read the request
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
-export([num_contexts/0]).
-export([stats/0]).
-export([memory_stats/0]).
-export([gc/0]).
-export([gc/1]).
-export([tracemalloc_start/0]).
-export([tracemalloc_start/1]).
-export([tracemalloc_stop/0]).

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

%% Module.Function(*Args, **Kwargs).
-spec call(py_module(), py_func(), py_args(), py_kwargs()) -> py_result().
call(Module, Function, Args, Kwargs) ->
	call(Module, Function, Args, Kwargs, default_timeout()).

-spec call(py_module(), py_func(), py_args(), py_kwargs(), timeout()) -> py_result().
call(Module, Function, Args, Kwargs, Timeout) when is_list(Args), is_map(Kwargs),
		(is_integer(Timeout) andalso Timeout >= 0) orelse Timeout =:= infinity ->
	Body = {py_request:env_owner(), name(Module), name(Function), Args, Kwargs},
	py_request:run(call, self(), Body, Timeout, true).

%% The value of Code: an expression, or statements followed by an expression (its value), or
%% statements only (none). Runs in the calling process's environment.
-spec eval(py_code()) -> py_result().
eval(Code) ->
	eval(Code, #{}, default_timeout()).

%% Locals (atom or binary keys) are local names while Code runs.
-spec eval(py_code(), map()) -> py_result().
eval(Code, Locals) ->
	eval(Code, Locals, default_timeout()).

-spec eval(py_code(), map(), timeout()) -> py_result().
eval(Code, Locals, Timeout) when is_map(Locals),
		(is_integer(Timeout) andalso Timeout >= 0) orelse Timeout =:= infinity ->
	py_request:run(eval, self(), {py_request:env_owner(), code(Code), Locals}, Timeout, true).

%% Runs statements in the calling process's environment.
-spec exec(py_code()) -> ok | {error, term()}.
exec(Code) ->
	exec(Code, default_timeout()).

-spec exec(py_code(), timeout()) -> ok | {error, term()}.
exec(Code, Timeout) when is_integer(Timeout), Timeout >= 0; Timeout =:= infinity ->
	py_request:run(exec, self(), {py_request:env_owner(), code(Code)}, Timeout, true).

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

-spec spawn_call(py_module(), py_func(), py_args(), py_kwargs()) -> py_ref().
spawn_call(Module, Function, Args, Kwargs) when is_list(Args), is_map(Kwargs) ->
	Caller = self(),
	Env = py_request:env_owner(),
	Body = {Env, name(Module), name(Function), Args, Kwargs},
	%% The caller's place and environment, resolved here: the worker has its own dictionary.
	Place = py_router:pick(Caller),
	Holder = spawn(fun() -> spawn_call_holder(Caller, Env, Place, Body) end),
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
spawn_call_holder(Caller, Env, Place, Body) ->
	CallerMon = erlang:monitor(process, Caller),
	Tag = make_ref(),
	Self = self(),
	{Worker, WorkerMon} = spawn_monitor(fun() ->
		Route = case Place of
			{error, _} -> self();
			{Slot, CtxIndex} -> ok = py_router:bind(Place), {slot, Slot, CtxIndex}
		end,
		ok = py_request:act_for(Env),
		Self ! {Tag, py_request:run(call, Route, Body, infinity, true)}
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
			receive {'DOWN', WorkerMon, process, Worker, _} -> ok end,
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

-spec cast(py_module(), py_func(), py_args(), py_kwargs()) -> ok.
cast(Module, Function, Args, Kwargs) when is_list(Args), is_map(Kwargs) ->
	py_request:cast(self(), {py_request:env_owner(), name(Module), name(Function), Args, Kwargs}, 5000).

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

%% Mirrors the context_mode application env (worker is the only mode the port offers so far).
-spec execution_mode() -> worker | owngil.
execution_mode() ->
	application:get_env(erlang_python, context_mode, worker).

-spec subinterp_supported() -> boolean().
subinterp_supported() ->
	false.

-spec num_contexts() -> non_neg_integer().
num_contexts() ->
	py_router:num_contexts().

%% One map per port: slot, status, os_pid, contexts, codec, python, build, generation.
-spec stats() -> [map()].
stats() ->
	[stats(py_port:info(Slot)) || Slot <- lists:seq(1, py_router:num_slots())].

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

%% Internal.

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
