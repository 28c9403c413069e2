%% The top supervisor of erlang_python.
%%
%% Its init creates the application's public ETS tables, so they belong to this process and outlive
%% any crash below it: py_inflight ({ReqId, CallerPid, Slot}: who waits for which request),
%% py_callbacks (the Erlang functions registered for Python), py_state (the shared state) and
%% py_shared_dicts, py_contexts (where each context process lives, pool membership: py_context) and
%% py_pool_registry (py_context_router). It also computes the pool layout from the application env and
%% publishes it (py_router). Children, in start order: py_shared_dict, py_port_sup with one py_port per
%% slot, py_context_sup (explicit contexts), py_context_pool_sup (the default pool's context processes
%% and the named pools), py_semaphore (its
%% reaper); they are independent (one_for_one).
%%
%% Application env (all optional):
%%   num_ports          port OS processes                  default erlang:system_info(schedulers)
%%   contexts_per_port  contexts (threads) in each port    default 2
%%   num_contexts       total contexts; if set, contexts_per_port = ceil(num_contexts / num_ports)
%%   codec              etf | msgpack                      default etf
%%   cancel_grace_ms    how long a cancelled request may run on before its port is killed; 2000
%%   default_timeout    timeout of py:call/3,4, py:eval/1,2, py:exec/1; default infinity
%%   spin_us            the port's busy-poll window (0: the port's default)
%%   max_frame          the largest frame the port accepts, bytes (0: the port's default, 1 GiB)
%%   context_mode       what py:execution_mode/0 reports; default worker
%%   max_concurrent     Python operations in flight before py calls are refused (py_semaphore); 1024
%%   imports, paths     the py_import registry at start: [{Module, Func}], [Path]
%%   start_timeout      how long a port may take to say hello, every start, ms; default 60000
%%   max_state_entries  the most keys the shared state (py_state) holds; default infinity
%%   venv               a venv the default pool's ports start with (py_venv); default none
%%   sandbox            true: the default pool's ports run the audit-hook sandbox; default false
%%   max_traces         spans py:get_traces/0 keeps (the oldest go first); default 10000 (opsa)
%%   telemetry_interval_ms  how often each port's queue depth event is sent; default 1000, 0 never (opsa)
%%   shm, shm_dir, shm_threshold, shm_regions, shm_keep   big bodies through shared memory (py_shm)
%%   pipe_size          F_SETPIPE_SZ of the protocol pipes, bytes (0: the kernel's); default 1 MiB
-module(erlang_python_sup).
-behaviour(supervisor).

%% API.
-export([start_link/0]).
-export([layout/0]).

%% supervisor.
-export([init/1]).

%% API.

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
	supervisor:start_link({local, ?MODULE}, ?MODULE, []).

%% The pool layout and port options the application env asks for.
-spec layout() -> map().
layout() ->
	Env = fun(Key, Default) -> application:get_env(erlang_python, Key, Default) end,
	NumPorts = Env(num_ports, erlang:system_info(schedulers)),
	true = is_integer(NumPorts) andalso NumPorts > 0,
	PerPort = case Env(num_contexts, undefined) of
		undefined -> Env(contexts_per_port, 2);
		Total when is_integer(Total), Total > 0 -> (Total + NumPorts - 1) div NumPorts
	end,
	true = is_integer(PerPort) andalso PerPort > 0,
	Codec = Env(codec, etf),
	true = lists:member(Codec, [etf, msgpack]),
	#{num_ports => NumPorts,
	  contexts_per_port => PerPort,
	  default_timeout => Env(default_timeout, infinity),
	  port_opts => #{codec => Codec,
		contexts => PerPort,
		cancel_grace_ms => Env(cancel_grace_ms, 2000),
		spin_us => Env(spin_us, 0),
		max_frame => Env(max_frame, 0),
		start_timeout => Env(start_timeout, 60000)}}.

%% supervisor.

-spec init([]) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init([]) ->
	py_inflight = ets:new(py_inflight, [set, public, named_table,
		{write_concurrency, true}, {read_concurrency, true}]),
	ok = py_callback:init_tab(),
	ok = py_state:init_tab(),
	ok = py_stream:init_tab(),
	ok = py_shared_dict:init_tab(),
	py_contexts = ets:new(py_contexts, [set, public, named_table,
		{write_concurrency, true}, {read_concurrency, true}]),
	py_pool_registry = ets:new(py_pool_registry, [set, public, named_table, {read_concurrency, true}]),
	ok = py_context_router:init_pool_registry(),
	ok = py_semaphore:init(),
	ok = py_shm:setup(),  %% bulk (PROTOCOL.md §3.12): its tables, this VM's directory, stale ones gone
	ok = py_import:init(),
	%% opsa: logging/tracing configuration and span table, stats counters, telemetry lookup.
	ok = py_ops:init(),
	ok = py_stats:init(),
	_ = py_telemetry:refresh(),
	ok = py_chan:init_tab(),  %% chan: channels, byte channels, buffers
	ok = py_event_loop:init_tab(),  %% aio: asyncio tasks awaited (PROTOCOL.md §3.10)
	Layout = #{num_ports := NumPorts, port_opts := PortOpts} = layout(),
	ok = py_router:set_config(Layout),
	Children = [
		#{id => py_shared_dict, start => {py_shared_dict, start_link, []}, type => worker},
		%% opsa: Python log records and spans (before the ports, which forward them to it).
		#{id => py_ops_sink, start => {py_ops_sink, start_link, []}, type => worker},
		#{id => py_port_sup, start => {py_port_sup, start_link, [NumPorts, PortOpts]},
			type => supervisor, shutdown => infinity},
		#{id => py_context_sup, start => {py_context_sup, start_link, []},
			type => supervisor, shutdown => infinity},
		#{id => py_context_pool_sup, start => {py_context_pool_sup, start_link, []},
			type => supervisor, shutdown => infinity},
		%% Its restart (it re-monitors from the table) restarts nothing else.
		#{id => py_semaphore, start => {py_semaphore, start_link, []}, type => worker},
		%% chan: watches channel owners and ports (its tables are ours, it re-monitors from them).
		#{id => py_chan, start => {py_chan, start_link, []}, type => worker}
	],
	%% one_for_one: only what depends on a process restarts with it. The ports do not depend on
	%% py_shared_dict (they read its table, which this supervisor owns, and it monitors the owners
	%% again from that table when it restarts), so its crash costs nobody an environment. A child
	%% added here that depends on another one goes under its own rest_for_one supervisor with it.
	{ok, {#{strategy => one_for_one, intensity => 5, period => 10}, Children}}.
