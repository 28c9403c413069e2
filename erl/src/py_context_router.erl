%% Contexts by index, by pool and by binding; the pool registry.
%%
%% Scope: which context process a caller gets. The default pool is the contexts the ports start with
%% (py_context_pool_sup starts one py_context per context with the application), numbered 1..N in
%% py_router's round-robin order; named pools are sets of explicit contexts (start_pool/2,3). Nothing
%% here is in a request's path except lookup_pool/2, which py:call/3,4,5 consults only when some
%% registration exists (a persistent_term flag): an unregistered call pays one persistent_term read.
%%
%% Which context a process gets:
%%   get_context/0          its binding (bind_context/1), else its own place: the sticky round-robin
%%                          place py_router gives it on its first request (so py:call/3 from it and
%%                          py:call(py:context(), ...) run in the same context and environment);
%%   get_context(N)         context N of the default pool, 1-based;
%%   get_context(Pool)      its binding in Pool (bind_context/2), else a member chosen by a hash of
%%                          its pid (stable for the process).
%%
%% The default pool's size is the layout's (num_ports x contexts_per_port, application env): start/1
%% with another `contexts' is refused. stop/0 ends the default pool's context processes (get_context/0,1
%% then fail and is_started/0 is false); plain py:call/3 is not affected, it never needed them.
%%
%% Registry priority: a {Module, Func} registration, then a {Module, '_'} one, then default. Modules
%% and functions are matched as given (register atoms; calls naming them with binaries are not
%% looked up under the atom).
-module(py_context_router).

%% Default pool.
-export([start/0]).
-export([start/1]).
-export([stop/0]).
-export([is_started/0]).
-export([get_context/0]).
-export([get_context/1]).
-export([bind_context/1]).
-export([bind_context/2]).
-export([unbind_context/0]).
-export([unbind_context/1]).
-export([contexts/0]).
-export([contexts/1]).
-export([num_contexts/0]).
-export([num_contexts/1]).

%% Named pools.
-export([start_pool/2]).
-export([start_pool/3]).
-export([stop_pool/1]).
-export([pool_started/1]).
-export([pool_context/1]).

%% Registry.
-export([init_pool_registry/0]).
-export([register_pool/2]).
-export([register_pool/3]).
-export([unregister_pool/1]).
-export([unregister_pool/2]).
-export([lookup_pool/2]).
-export([list_pool_registrations/0]).
-export([route/2]).

-export_type([pool_name/0]).
-export_type([start_opts/0]).

-type pool_name() :: default | io | atom().
-type start_opts() :: #{contexts => pos_integer(), mode => py_context:context_mode()}.

-define(TAB, py_contexts).
-define(REGISTRY, py_pool_registry).
%% true while the registry has an entry.
-define(ANY, {?MODULE, registrations}).
%% Process dictionary key of a process's binding in a named pool.
-define(POOL_BINDING(Pool), {py_pool_binding, Pool}).

%% Default pool.

-spec start() -> {ok, [pid()]} | {error, term()}.
start() ->
	start(#{}).

%% The default pool is started with the application; this returns it (starting it again after stop/0).
-spec start(start_opts()) -> {ok, [pid()]} | {error, term()}.
start(Opts) when is_map(Opts) ->
	Total = py_router:num_contexts(),
	case {maps:get(contexts, Opts, Total), maps:get(mode, Opts, worker)} of
		{_, Mode} when Mode =/= worker ->
			{error, {mode_not_supported, Mode,
				"the default pool is the ports' start-up contexts, which are worker: start a named pool in owngil mode"}};
		{_, _} when Total =:= 0 ->
			{error, not_started};
		{N, _} when N =/= Total ->
			{error, {num_contexts_fixed, Total,
				"the default pool is the ports' contexts: set num_contexts in the application env"}};
		_ ->
			case is_started() of
				true ->
					{ok, contexts()};
				false ->
					case py_context_pool_sup:restart_pool(default) of
						{ok, _} -> {ok, contexts()};
						{error, {already_started, _}} -> {ok, contexts()};
						{error, _} = Error -> Error
					end
			end
	end.

%% Ends the default pool's context processes (the ports and their contexts stay).
-spec stop() -> ok.
stop() ->
	py_context_pool_sup:stop_pool(default).

-spec is_started() -> boolean().
is_started() ->
	pool_started(default).

-spec get_context() -> pid().
get_context() ->
	case py_router:pick(self()) of
		{ctx, Pid} ->
			Pid;
		{error, Why} ->
			error(Why);
		{Slot, CtxIndex} ->
			get_context(CtxIndex * py_router:num_slots() + Slot)
	end.

-spec get_context(pos_integer() | pool_name()) -> pid().
get_context(N) when is_integer(N), N > 0 ->
	case member(default, N) of
		{ok, Pid} -> Pid;
		error -> error({no_context, N})
	end;
get_context(default) ->
	get_context();
get_context(Pool) when is_atom(Pool) ->
	case pool_context(Pool) of
		{ok, Pid} -> Pid;
		{error, Why} -> error(Why)
	end.

%% The context of Pool for the calling process, as get_context/1 without raising.
-spec pool_context(pool_name()) -> {ok, pid()} | {error, term()}.
pool_context(default) ->
	try {ok, get_context()}
	catch error:Why -> {error, Why}
	end;
pool_context(Pool) ->
	case get(?POOL_BINDING(Pool)) of
		Pid when is_pid(Pid) ->
			{ok, Pid};
		undefined ->
			case pool_size(Pool) of
				0 ->
					{error, {pool_not_started, Pool}};
				Size ->
					case member(Pool, erlang:phash2(self(), Size) + 1) of
						{ok, Pid} -> {ok, Pid};
						%% Being restarted (its port died): any other member.
						error -> any_member(Pool)
					end
			end
	end.

%% From now on get_context/0, py:call/3,4,5, py:eval/1,2,3 and py:exec/1,2 of the calling process use
%% Ctx (a context of the default pool or an explicit one) until unbind_context/0.
-spec bind_context(pid()) -> ok | {error, term()}.
bind_context(Ctx) when is_pid(Ctx) ->
	case py_context:place(Ctx) of
		{ok, #{slot := Slot, ctx := {index, CtxIndex}, generation := 0}} ->
			py_router:bind({Slot, CtxIndex});
		{ok, #{}} ->
			py_router:bind_ctx(Ctx);
		{error, _} = Error ->
			Error
	end.

-spec bind_context(pool_name(), pid()) -> ok | {error, term()}.
bind_context(default, Ctx) ->
	bind_context(Ctx);
bind_context(Pool, Ctx) when is_atom(Pool), is_pid(Ctx) ->
	_ = put(?POOL_BINDING(Pool), Ctx),
	ok.

-spec unbind_context() -> ok.
unbind_context() ->
	py_router:unbind().

-spec unbind_context(pool_name()) -> ok.
unbind_context(default) ->
	unbind_context();
unbind_context(Pool) when is_atom(Pool) ->
	_ = erase(?POOL_BINDING(Pool)),
	ok.

-spec contexts() -> [pid()].
contexts() ->
	contexts(default).

%% The pool's running members, in index order.
-spec contexts(pool_name()) -> [pid()].
contexts(Pool) ->
	[Pid || I <- lists:seq(1, pool_size(Pool)), {ok, Pid} <- [member(Pool, I)]].

%% The default pool's size (the layout's number of contexts).
-spec num_contexts() -> non_neg_integer().
num_contexts() ->
	py_router:num_contexts().

-spec num_contexts(pool_name()) -> non_neg_integer().
num_contexts(default) ->
	num_contexts();
num_contexts(Pool) ->
	pool_size(Pool).

%% Named pools.

-spec start_pool(pool_name(), pos_integer()) -> {ok, [pid()]} | {error, term()}.
start_pool(Pool, Size) ->
	start_pool(Pool, Size, worker).

%% Size explicit contexts, spread over the ports (each on the slot with the fewest at its start). With
%% an options map (mode, venv, sandbox, ports, python) the pool may get ports of its own: py_pool_ports.
-spec start_pool(pool_name(), pos_integer(), py_context:context_mode() | py_pool_ports:pool_opts())
	-> {ok, [pid()]} | {error, term()}.
start_pool(Pool, Size, Opts) when is_map(Opts) ->
	py_pool_ports:start_pool(Pool, Size, Opts);
start_pool(default, Size, Mode) ->
	start(#{contexts => Size, mode => Mode});
start_pool(Pool, Size, Mode) when is_atom(Pool), is_integer(Size), Size > 0, is_atom(Mode) ->
	case py_pool_ports:python_of(Pool, #{}) of
		undefined when Mode =:= worker ->
			case py_context_pool_sup:start_pool(Pool, Size, worker) of
				{ok, _} -> {ok, contexts(Pool)};
				{error, _} = Error -> Error
			end;
		undefined when Mode =:= owngil ->
			%% owngil (issue 8): contexts of their own sub-interpreters, on the default pool's ports.
			case py_modes:subinterp_supported() of
				true ->
					case py_context_pool_sup:start_pool(Pool, Size, owngil) of
						{ok, _} -> {ok, contexts(Pool)};
						{error, _} = Error -> Error
					end;
				false ->
					{error, {mode_not_supported, owngil, py_modes:owngil_refusal()}}
			end;
		undefined ->
			{error, {bad_mode, Mode}};
		_ ->
			%% The pool_pythons application env names a Python for this pool: ports of its own.
			py_pool_ports:start_pool(Pool, Size, #{mode => Mode})
	end.

%% Destroys the pool's contexts.
-spec stop_pool(pool_name()) -> ok.
stop_pool(default) ->
	stop();
stop_pool(Pool) when is_atom(Pool) ->
	py_context_pool_sup:stop_pool(Pool).

%% Started, and every member is alive.
-spec pool_started(pool_name()) -> boolean().
pool_started(Pool) ->
	Size = pool_size(Pool),
	Members = contexts(Pool),
	Size > 0 andalso length(Members) =:= Size andalso lists:all(fun erlang:is_process_alive/1, Members).

%% Registry.

%% The registry table is created with the application (erlang_python_sup); this re-derives the
%% "any registration" flag from it. Safe to call any number of times.
-spec init_pool_registry() -> ok.
init_pool_registry() ->
	ok = update_flag().

%% Calls of Module:* go to Pool.
-spec register_pool(pool_name(), atom()) -> ok.
register_pool(Pool, Module) when is_atom(Pool), is_atom(Module) ->
	register_key(Pool, {Module, '_'}).

%% Calls of Module:Func go to Pool (before a registration of Module:*).
-spec register_pool(pool_name(), atom(), atom()) -> ok.
register_pool(Pool, Module, Func) when is_atom(Pool), is_atom(Module), is_atom(Func) ->
	register_key(Pool, {Module, Func}).

-spec unregister_pool(atom()) -> ok.
unregister_pool(Module) when is_atom(Module) ->
	unregister_key({Module, '_'}).

-spec unregister_pool(atom(), atom()) -> ok.
unregister_pool(Module, Func) when is_atom(Module), is_atom(Func) ->
	unregister_key({Module, Func}).

-spec lookup_pool(atom(), atom()) -> pool_name().
lookup_pool(Module, Func) ->
	try ets:lookup(?REGISTRY, {Module, Func}) of
		[{_, Pool}] ->
			Pool;
		[] ->
			case ets:lookup(?REGISTRY, {Module, '_'}) of
				[{_, Pool}] -> Pool;
				[] -> default
			end
	catch error:badarg ->
		default
	end.

-spec list_pool_registrations() -> [{{atom(), atom() | '_'}, pool_name()}].
list_pool_registrations() ->
	try lists:sort(ets:tab2list(?REGISTRY))
	catch error:badarg -> []
	end.

%% The pool a call of Module:Func goes to: default without a registry lookup when there is no
%% registration at all (the hot path: one persistent_term read).
-spec route(term(), term()) -> pool_name().
route(Module, Func) ->
	case persistent_term:get(?ANY, false) of
		false -> default;
		true -> lookup_pool(Module, Func)
	end.

%% Internal.

register_key(Pool, Key) ->
	true = ets:insert(?REGISTRY, {Key, Pool}),
	update_flag().

unregister_key(Key) ->
	_ = (catch ets:delete(?REGISTRY, Key)),
	update_flag().

update_flag() ->
	Any = case ets:info(?REGISTRY, size) of
		N when is_integer(N), N > 0 -> true;
		_ -> false
	end,
	case persistent_term:get(?ANY, false) of
		Any -> ok;
		_ -> persistent_term:put(?ANY, Any)
	end.

pool_size(Pool) ->
	try ets:lookup(?TAB, {pool, Pool}) of
		[{_, Size, _}] -> Size;
		[] -> 0
	catch error:badarg ->
		0
	end.

member(Pool, I) ->
	try ets:lookup(?TAB, {member, Pool, I}) of
		[{_, Pid}] -> {ok, Pid};
		[] -> error
	catch error:badarg ->
		error
	end.

any_member(Pool) ->
	case contexts(Pool) of
		[] -> {error, {pool_not_started, Pool}};
		Members -> {ok, lists:nth(erlang:phash2(self(), length(Members)) + 1, Members)}
	end.
