%% A Python context as an Erlang process: its identity and lifetime.
%%
%% A context is one context thread in one port OS process: {Slot, CtxId} in OS process Generation. The
%% py_context process is not a relay: it registers its place in the public ETS table py_contexts
%% ({Pid, Slot, Ctx, Generation, Pool, Mode}), and a call on it (py_request, route {ctx, Pid}) reads
%% that entry and writes its frame to the port itself, like a plain py:call. The process only creates
%% the context, destroys it, and frees the explicit environments made in it.
%%
%% Two kinds:
%%   default pool (start_link_default/1): context N of the contexts the ports start with, N in 1..Total
%%     in py_router's round-robin order: slot (N-1) rem Ports + 1, index (N-1) div Ports. Registered with
%%     Ctx = {index, I} and Generation 0: it follows its slot through port restarts (py_port sends
%%     context_init to the new OS process's contexts), and py:call from a process whose place it is
%%     runs in the same context.
%%   explicit (new/1, start_link/2, pools): a context created for it (context_create on the slot with
%%     the fewest, then context_init), destroyed by stop/1 or when the process ends. Its Python state
%%     lives in one OS process: when that dies, this process exits {shutdown, {port_exited, Reason}}
%%     (in-flight callers get {error, {port_exited, _}}; later callers of the pid {error, {context_down,
%%     Pid}}) and a supervisor may start a fresh one.
%%
%% Environments: a call on a context runs in the calling process's environment in that context (the
%% process's pid as Env). create_local_env/1 makes an explicit one (a reference) for call/7, eval/5,
%% exec/3; it is freed (env_drop) when the process that created it exits.
-module(py_context).
-behaviour(gen_server).

%% API.
-export([new/1]).
-export([start_link/2]).
-export([start_link_member/3]).
-export([start_link_default/1]).
-export([stop/1]).
-export([destroy/1]).
-export([call/4]).
-export([call/5]).
-export([call/6]).
-export([call/7]).
-export([eval/2]).
-export([eval/3]).
-export([eval/4]).
-export([eval/5]).
-export([exec/2]).
-export([exec/3]).
-export([create_local_env/1]).
-export([get_interp_id/1]).
-export([is_subinterp/1]).
-export([place/1]).
-export([port_exited/3]).

%% gen_server.
-export([init/1]).
-export([handle_call/3]).
-export([handle_cast/2]).
-export([handle_info/2]).
-export([terminate/2]).

-export_type([context/0]).
-export_type([context_mode/0]).

-type context() :: pid().
-type context_mode() :: worker | owngil.

-define(TAB, py_contexts).
%% Bound of creating or destroying a context (each of its requests).
-define(CONTROL_TIMEOUT, 30000).
%% Bound of the context_destroy a context sends when it ends without stop/1.
-define(TERMINATE_TIMEOUT, 2000).

-record(s, {
	kind :: default | explicit,
	id :: term(),
	mode = worker :: context_mode(),
	pool :: atom() | undefined,
	slot :: pos_integer(),
	ctx :: {index, non_neg_integer()} | pos_integer(),
	gen = 0 :: non_neg_integer(),
	%% Explicit environments made here: monitor of the creating process => the Env reference.
	envs = #{} :: #{reference() => reference()},
	destroyed = false :: boolean()
}).

%% API.

%% A new explicit context under py_context_sup. Options: mode (worker | owngil; default: the
%% context_mode application env, itself worker by default).
-spec new(map()) -> {ok, context()} | {error, term()}.
new(Opts) when is_map(Opts) ->
	Mode = maps:get(mode, Opts, application:get_env(erlang_python, context_mode, worker)),
	case check_mode(Mode) of
		ok when is_map_key(venv, Opts); is_map_key(sandbox, Opts) ->
			%% sys.path and the audit hook belong to a port: a pool has ports of its own (py_pool_ports).
			{error, {bad_option, maps:with([venv, sandbox], Opts),
				"a venv or sandbox is per pool: py_context_router:start_pool(Name, 1, #{venv => ..., sandbox => ...})"}};
		ok -> py_mem_limit:apply_option(Opts, fun() -> py_context_sup:start_context(make_ref(), Mode) end);  %% opsb
		Error -> Error
	end.

%% An explicit context linked to the caller (for the caller's own supervisor).
-spec start_link(term(), context_mode()) -> {ok, pid()} | {error, term()}.
start_link(Id, Mode) ->
	case check_mode(Mode) of
		ok -> gen_server:start_link(?MODULE, {explicit, Id, Mode, undefined}, []);
		Error -> Error
	end.

%% Context Index of the named pool Pool (py_context_pool_sup).
-spec start_link_member(atom(), pos_integer(), context_mode()) -> {ok, pid()} | {error, term()}.
start_link_member(Pool, Index, Mode) ->
	case check_mode(Mode, Pool) of
		ok -> gen_server:start_link(?MODULE, {explicit, {Pool, Index}, Mode, Pool}, []);
		Error -> Error
	end.

%% Context N (1-based) of the default pool: one of the contexts the ports start with.
-spec start_link_default(pos_integer()) -> {ok, pid()} | {error, term()}.
start_link_default(N) ->
	gen_server:start_link(?MODULE, {default, N}, []).

%% Destroys the context (its queued work finishes first; its environments and objects are freed) and
%% ends the process. A default-pool context only ends its process (the port keeps its thread), and its
%% pool supervisor starts a new one for the same context.
-spec stop(context()) -> ok.
stop(Ctx) when is_pid(Ctx) ->
	try gen_server:call(Ctx, stop, ?CONTROL_TIMEOUT + 5000)
	catch exit:{noproc, _} -> ok;
		exit:{normal, _} -> ok;
		exit:{{shutdown, _}, _} -> ok
	end.

%% Alias for stop/1.
-spec destroy(context()) -> ok.
destroy(Ctx) ->
	stop(Ctx).

-spec call(context(), atom() | binary(), atom() | binary(), list()) -> {ok, term()} | {error, term()}.
call(Ctx, Module, Function, Args) ->
	call(Ctx, Module, Function, Args, #{}).

-spec call(context(), atom() | binary(), atom() | binary(), list(), map()) -> {ok, term()} | {error, term()}.
call(Ctx, Module, Function, Args, Kwargs) ->
	call(Ctx, Module, Function, Args, Kwargs, default_timeout()).

-spec call(context(), atom() | binary(), atom() | binary(), list(), map(), timeout())
	-> {ok, term()} | {error, term()}.
call(Ctx, Module, Function, Args, Kwargs, Timeout) ->
	call(Ctx, Module, Function, Args, Kwargs, Timeout, py_request:env_owner()).

%% With an explicit environment (create_local_env/1); the calling process's pid is its own one.
-spec call(context(), atom() | binary(), atom() | binary(), list(), map(), timeout(), reference() | pid())
	-> {ok, term()} | {error, term()}.
call(Ctx, Module, Function, Args, Kwargs, Timeout, Env) when is_pid(Ctx), is_list(Args), is_map(Kwargs) ->
	py_request:run(call, {ctx, Ctx}, {Env, name(Module), name(Function), Args, Kwargs}, Timeout, true).

-spec eval(context(), binary() | string()) -> {ok, term()} | {error, term()}.
eval(Ctx, Code) ->
	eval(Ctx, Code, #{}).

-spec eval(context(), binary() | string(), map()) -> {ok, term()} | {error, term()}.
eval(Ctx, Code, Locals) ->
	eval(Ctx, Code, Locals, default_timeout()).

-spec eval(context(), binary() | string(), map(), timeout()) -> {ok, term()} | {error, term()}.
eval(Ctx, Code, Locals, Timeout) ->
	eval(Ctx, Code, Locals, Timeout, py_request:env_owner()).

-spec eval(context(), binary() | string(), map(), timeout(), reference() | pid()) -> {ok, term()} | {error, term()}.
eval(Ctx, Code, Locals, Timeout, Env) when is_pid(Ctx), is_map(Locals) ->
	py_request:run(eval, {ctx, Ctx}, {Env, code(Code), Locals}, Timeout, true).

-spec exec(context(), binary() | string()) -> ok | {error, term()}.
exec(Ctx, Code) ->
	exec(Ctx, Code, py_request:env_owner()).

-spec exec(context(), binary() | string(), reference() | pid()) -> ok | {error, term()}.
exec(Ctx, Code, Env) when is_pid(Ctx) ->
	py_request:run(exec, {ctx, Ctx}, {Env, code(Code)}, default_timeout(), true).

%% A new environment in the context, owned by the calling process: it is freed when that process exits
%% (or the context ends). Pass it to call/7, eval/5, exec/3, from any process.
-spec create_local_env(context()) -> {ok, reference()} | {error, term()}.
create_local_env(Ctx) when is_pid(Ctx) ->
	try gen_server:call(Ctx, {create_local_env, self()}, ?CONTROL_TIMEOUT)
	catch exit:{_, _} -> {error, {context_down, Ctx}}
	end.

%% Worker contexts run in the port's main interpreter: 0. An owngil context's sub-interpreter says
%% its own id (CPython's, unique in its port while it lives).
-spec get_interp_id(context()) -> {ok, non_neg_integer()} | {error, term()}.
get_interp_id(Ctx) when is_pid(Ctx) ->
	case place(Ctx) of
		{ok, #{mode := owngil}} -> eval(Ctx, <<"__import__('erlang._mode', fromlist=['_'])._current_interp_id()">>);
		{ok, _} -> {ok, 0};
		Error -> Error
	end.

%% Whether the context runs in a sub-interpreter of its own (owngil). Both modes use process-bound
%% environments inside the context.
-spec is_subinterp(context()) -> boolean().
is_subinterp(Ctx) when is_pid(Ctx) ->
	case place(Ctx) of
		{ok, #{mode := owngil}} -> true;
		_ -> false
	end.

%% Where the context lives: #{slot, ctx, generation, pool, mode} (ctx {index, I} and generation 0 for
%% a default-pool context: the slot's current OS process).
-spec place(context()) -> {ok, map()} | {error, term()}.
place(Ctx) ->
	try ets:lookup(?TAB, Ctx) of
		[{_, Slot, C, Gen, Pool, Mode}] -> {ok, #{slot => Slot, ctx => C, generation => Gen, pool => Pool, mode => Mode}};
		[] -> {error, {context_down, Ctx}}
	catch error:badarg ->
		{error, not_started}
	end.

%% Called by py_port when OS process Generation of Slot died (all: a new owner starts, every explicit
%% context of the slot belonged to its predecessor): those explicit contexts end.
-spec port_exited(pos_integer(), pos_integer() | all, term()) -> ok.
port_exited(Slot, Generation, Reason) ->
	Gen = case Generation of all -> '_'; _ -> Generation end,
	Found = try ets:select(?TAB, [{{'_', Slot, '_', Gen, '_', '_'}, [], ['$_']}])
		catch error:badarg -> []
		end,
	_ = [Pid ! {py_port_exited, Slot, G, Reason} || {Pid, _, _, G, _, _} <- Found, G > 0],
	ok.

%% gen_server.

-spec init({explicit, term(), context_mode(), atom() | undefined} | {default, pos_integer()})
	-> {ok, #s{}} | {stop, term()}.
init({default, N}) ->
	%% So terminate/2 unregisters it when its supervisor stops it.
	process_flag(trap_exit, true),
	case py_router:config() of
		#{num_ports := Ports, contexts_per_port := PerPort} when N =< Ports * PerPort ->
			Slot = (N - 1) rem Ports + 1,
			Index = (N - 1) div Ports,
			true = ets:insert(?TAB, {self(), Slot, {index, Index}, 0, default, worker}),
			true = ets:insert(?TAB, {{member, default, N}, self()}),
			{ok, #s{kind = default, id = N, pool = default, slot = Slot, ctx = {index, Index}}};
		_ ->
			{stop, {no_such_context, N}}
	end;
init({explicit, Id, Mode, Pool}) ->
	process_flag(trap_exit, true),
	case create(Mode, Pool) of
		{ok, Slot, CtxId, Gen} ->
			true = ets:insert(?TAB, {self(), Slot, CtxId, Gen, Pool, Mode}),
			_ = case Id of
				{Pool, Index} when Pool =/= undefined -> ets:insert(?TAB, {{member, Pool, Index}, self()});
				_ -> true
			end,
			State = #s{kind = explicit, id = Id, mode = Mode, pool = Pool, slot = Slot, ctx = CtxId, gen = Gen},
			%% The port may have died between the create and the insert: py_port found nobody to tell.
			case py_port:info(Slot) of
				#{generation := Gen, status := St} when St =:= up; St =:= condemned ->
					{ok, State};
				_ ->
					_ = unregister_self(State),
					{stop, {shutdown, {port_exited, #{reason => crashed}}}}
			end;
		{error, Why} ->
			{stop, Why}
	end.

-spec handle_call(stop | {create_local_env, pid()}, gen_server:from(), #s{})
	-> {reply, term(), #s{}} | {stop, normal, ok, #s{}}.
handle_call(stop, _From, State) ->
	State1 = destroy_context(State, ?CONTROL_TIMEOUT),
	{stop, normal, ok, State1};
handle_call({create_local_env, Pid}, _From, State = #s{envs = Envs}) ->
	Env = make_ref(),
	MRef = erlang:monitor(process, Pid),
	{reply, {ok, Env}, State#s{envs = Envs#{MRef => Env}}}.

-spec handle_cast(term(), #s{}) -> {noreply, #s{}}.
handle_cast(_Msg, State) ->
	{noreply, State}.

-spec handle_info(term(), #s{}) -> {noreply, #s{}} | {stop, term(), #s{}}.
handle_info({py_port_exited, Slot, Gen, Reason}, State = #s{kind = explicit, slot = Slot, gen = Gen}) ->
	{stop, {shutdown, {port_exited, Reason}}, State#s{destroyed = true}};
handle_info({'DOWN', MRef, process, _, _}, State = #s{envs = Envs}) ->
	case maps:take(MRef, Envs) of
		{Env, Envs1} ->
			ok = drop_env(Env, State),
			{noreply, State#s{envs = Envs1}};
		error ->
			{noreply, State}
	end;
handle_info({'EXIT', _, Reason}, State) ->
	%% The process we are linked to (our supervisor, or start_link's caller) ended.
	{stop, Reason, State};
handle_info(_Msg, State) ->
	{noreply, State}.

-spec terminate(term(), #s{}) -> ok.
terminate(_Reason, State) ->
	_ = destroy_context(State, ?TERMINATE_TIMEOUT),
	ok.

%% Internal.

%% A pool with ports of its own (py_pool_ports: another Python) asks them: their context_create
%% refuses a mode their hello does not list (create/2 turns that into mode_not_supported).
check_mode(owngil, Pool) when Pool =/= undefined ->
	case py_pool_ports:slots(Pool) of
		[] -> check_mode(owngil);
		_ -> ok
	end;
check_mode(Mode, _Pool) ->
	check_mode(Mode).

%% owngil (issue 8): a sub-interpreter with its own GIL, offered by ports built for a GIL CPython >= 3.12
%% (their hello lists it, py_modes:subinterp_supported/0).
check_mode(worker) -> ok;
check_mode(owngil) ->
	case py_modes:subinterp_supported() of
		true -> ok;
		false -> {error, {mode_not_supported, owngil, py_modes:owngil_refusal()}}
	end;
check_mode(Mode) -> {error, {bad_mode, Mode}}.

%% Creates an explicit context on the slot with the fewest (of Pool's own slots, if it has some):
%% context_create, then context_init, both within context_create_timeout (application env, ms; default
%% ?CONTROL_TIMEOUT).
create(Mode, Pool) ->
	Deadline = erlang:monotonic_time(millisecond)
		+ application:get_env(erlang_python, context_create_timeout, ?CONTROL_TIMEOUT),
	case up_info(pick_slot(Pool), Deadline) of
		{ok, #{slot := Slot, generation := Gen, contexts := Startup} = Info} ->
			First = lists:max(tuple_to_list(Startup)),
			CtxId = ets:update_counter(?TAB, {next_ctx, Slot}, 1, {{next_ctx, Slot}, First}),
			case py_request:control(context_create, Slot, CtxId, Gen, {Mode}, remaining(Deadline)) of
				{ok, _} ->
					case init_context(Info, CtxId, remaining(Deadline)) of
						ok ->
							{ok, Slot, CtxId, Gen};
						{error, Why} ->
							_ = py_request:control(context_destroy, Slot, CtxId, Gen, [], ?TERMINATE_TIMEOUT),
							{error, {context_init_failed, Why}}
					end;
				{error, timeout} ->
					%% The port may still create it: a destroy queued behind the create frees its thread.
					_ = py_request:control(context_destroy, Slot, CtxId, Gen, [], ?TERMINATE_TIMEOUT),
					{error, {context_create_failed, timeout}};
				{error, {'ValueError', Text}} when Mode =:= owngil ->
					%% A pool's own port whose Python does not offer owngil (check_mode/2).
					{error, {mode_not_supported, owngil, Text}};
				{error, Why} ->
					{error, {context_create_failed, Why}}
			end;
		{error, _} = Error ->
			Error
	end.

%% context_init with the import registry, preload and paths; a port that predates it (nested =>
%% false in its info) has nothing to initialise.
init_context(#{slot := Slot, generation := Gen, nested := true}, CtxId, Timeout) ->
	case py_request:control(context_init, Slot, CtxId, Gen, py_import:context_init_body(), Timeout) of
		{ok, _} -> ok;
		{error, _} = Error -> Error
	end;
init_context(_, _, _) ->
	ok.

%% The slot with the fewest explicit contexts, among the slots that are up (any, when none is): the
%% default pool's slots, or the pool's own (py_pool_ports: a pool with a venv or sandbox of its own).
pick_slot(Pool) ->
	Slots = case py_pool_ports:slots(Pool) of
		[] -> lists:seq(1, max(1, py_router:num_slots()));
		Own -> Own
	end,
	Up = [S || S <- Slots, is_up(py_port:info(S))],
	Count = fun(S) -> ets:select_count(?TAB, [{{'_', S, '_', '$1', '_', '_'}, [{'>', '$1', 0}], [true]}]) end,
	{_, Slot} = lists:min([{Count(S), S} || S <- case Up of [] -> Slots; _ -> Up end]),
	Slot.

is_up(#{status := up}) -> true;
is_up(_) -> false.

up_info(Slot, Deadline) ->
	case py_port:info(Slot) of
		#{status := up} = Info ->
			{ok, Info};
		#{owner := Owner} ->
			try py_port:wait_ready(Owner, 0, remaining(Deadline))
			catch exit:{Why, _} -> {error, {not_running, Why}}
			end;
		undefined ->
			{error, not_started}
	end.

%% Unregisters; an explicit context whose port is still its own is destroyed there (bounded by
%% Timeout).
destroy_context(State = #s{destroyed = true}, _) ->
	State;
destroy_context(State = #s{kind = default}, _) ->
	_ = unregister_self(State),
	State#s{destroyed = true};
destroy_context(State = #s{slot = Slot, ctx = CtxId, gen = Gen}, Timeout) ->
	_ = unregister_self(State),
	_ = case py_port:info(Slot) of
		#{generation := Gen, status := up} ->
			py_request:control(context_destroy, Slot, CtxId, Gen, [], Timeout);
		_ ->
			ok
	end,
	State#s{destroyed = true}.

unregister_self(#s{pool = Pool, id = Id}) ->
	_ = (catch ets:delete(?TAB, self())),
	Key = case Id of
		{Pool, Index} when Pool =/= undefined -> {member, Pool, Index};
		N when is_integer(N), Pool =:= default -> {member, default, N};
		_ -> undefined
	end,
	_ = (catch ets:delete_object(?TAB, {Key, self()})),
	ok.

%% env_drop of an explicit environment, on the port that holds it (no answer comes).
drop_env(Env, #s{slot = Slot, gen = Gen}) ->
	_ = case py_port:info(Slot) of
		#{status := up, port := Port, codec := Codec, generation := G} when Gen =:= 0; G =:= Gen ->
			catch port_command(Port, py_codec:frame(env_drop, 0, 0, Codec, Env));
		_ ->
			ok
	end,
	ok.

default_timeout() ->
	case py_router:config() of
		#{default_timeout := Timeout} -> Timeout;
		undefined -> infinity
	end.

remaining(Deadline) ->
	max(0, Deadline - erlang:monotonic_time(millisecond)).

name(Name) when is_atom(Name); is_binary(Name) -> Name;
name(Name) when is_list(Name) -> unicode:characters_to_binary(Name).

code(Code) when is_binary(Code) -> Code;
code(Code) when is_list(Code) ->
	case unicode:characters_to_binary(Code) of
		Bin when is_binary(Bin) -> Bin;
		_ -> error(badarg, [Code])
	end.
