%% Supervises the context pools: the default pool (the contexts the ports start with, one py_context
%% each) and the named pools of py_context_router:start_pool/2,3 (explicit contexts).
%%
%% One module, two levels: the registered top supervisor (one_for_one) has one child per pool, each a
%% supervisor of that pool's members. Members are permanent: a member whose port died exits and is
%% started again (a fresh context, on the slot with the fewest), under the same index, so a pool keeps
%% its size. A pool's size and mode are in py_contexts as {{pool, Name}, Size, Mode} while it runs.
-module(py_context_pool_sup).
-behaviour(supervisor).

%% API.
-export([start_link/0]).
-export([start_pool/3]).
-export([stop_pool/1]).
-export([restart_pool/1]).

%% supervisor.
-export([init/1]).

-define(TAB, py_contexts).

%% API.

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
	supervisor:start_link({local, ?MODULE}, ?MODULE, top).

-spec start_pool(atom(), pos_integer(), py_context:context_mode()) -> {ok, pid()} | {error, term()}.
start_pool(Pool, Size, Mode) ->
	try supervisor:start_child(?MODULE, pool_spec(Pool, Size, Mode)) of
		{ok, Pid} -> {ok, Pid};
		{error, {already_started, _}} -> {error, {already_started, Pool}};
		{error, {{already_started, _}, _}} -> {error, {already_started, Pool}};
		{error, already_present} -> restart_pool(Pool);
		{error, _} = Error -> Error
	catch exit:{noproc, _} ->
		{error, not_started}
	end.

-spec stop_pool(atom()) -> ok.
stop_pool(Pool) ->
	_ = (catch supervisor:terminate_child(?MODULE, Pool)),
	%% The default pool's spec stays, for restart_pool/1.
	_ = Pool =/= default andalso (catch supervisor:delete_child(?MODULE, Pool)),
	_ = (catch ets:delete(?TAB, {pool, Pool})),
	%% A pool with ports of its own (py_pool_ports): its slots (their owners stopped above) are free
	%% for the next such pool.
	ok = py_pool_ports:release(Pool),
	ok.

%% Starts the default pool again after stop_pool(default) took it down (its child spec is kept).
-spec restart_pool(atom()) -> {ok, pid()} | {error, term()}.
restart_pool(Pool) ->
	case supervisor:restart_child(?MODULE, Pool) of
		{ok, Pid} -> {ok, Pid};
		{error, running} -> {error, {already_started, Pool}};
		{error, _} = Error -> Error
	end.

%% supervisor.

-spec init(top | {pool, atom(), pos_integer(), py_context:context_mode()})
	-> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init(top) ->
	Default = pool_spec(default, py_router:num_contexts(), worker),
	{ok, {#{strategy => one_for_one, intensity => 10, period => 10}, [Default]}};
init({pool, Pool, Size, Mode}) ->
	true = ets:insert(?TAB, {{pool, Pool}, Size, Mode}),
	Start = fun(I) when Pool =:= default -> {py_context, start_link_default, [I]};
		(I) -> {py_context, start_link_member, [Pool, I, Mode]}
	end,
	Members = [#{id => {Pool, I}, start => Start(I), restart => permanent, shutdown => 5000,
		type => worker, modules => [py_context]} || I <- lists:seq(1, Size)],
	%% A pool with ports of its own (py_pool_ports, venv/sandbox): their owners start first, so the
	%% members find them; they stop after the members. [] for a pool on the default ports.
	Ports = py_pool_ports:child_specs(Pool),
	%% A port death ends every member that lived in it at once: allow a restart of each, twice.
	{ok, {#{strategy => one_for_one, intensity => 2 * Size + 5 + length(Ports), period => 10}, Ports ++ Members}}.

%% Internal.

pool_spec(Pool, Size, Mode) ->
	#{id => Pool, start => {supervisor, start_link, [?MODULE, {pool, Pool, Size, Mode}]},
		restart => permanent, shutdown => infinity, type => supervisor, modules => [?MODULE]}.
