%% A Python per pool (issue 8): a named pool on a port built for another CPython, beside the default
%% pool, in one node. Needs the port for python3.13t in erl/priv/ports/ (tools/pythons.sh build); the
%% cases that need it are skipped, with the reason, where it is not built.
-module(py_pool_python_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_testcase/2, end_per_testcase/2]).
-export([pool_runs_its_own_python/1, pool_python_from_app_env/1, unknown_python_refused/1,
	stop_pool_stops_its_port/1, pool_port_restarts_and_pool_recovers/1]).

-define(PY, 'python3.13t').

all() ->
	[unknown_python_refused, pool_runs_its_own_python, pool_python_from_app_env, stop_pool_stops_its_port,
	 pool_port_restarts_and_pool_recovers].

init_per_testcase(unknown_python_refused, Config) ->
	ok = py_ct_helper:start_app([{num_ports, 1}]),
	Config;
init_per_testcase(Case, Config) ->
	case {os:getenv("EP_SANITIZE_RUN"), py_pool_ports:executable(?PY)} of
		{"1", _} ->
			%% tools/sanitize.sh runs the suites against the ASan build of the default port; its
			%% environment (the sanitizer runtime) is not the 3.13t port's, which this suite starts.
			{skip, "a pool's own Python is not run under the sanitizer stage"};
		{_, {ok, _}} ->
			Extra = case Case of
				pool_python_from_app_env -> [{pool_pythons, #{ft_env => ?PY}}];
				_ -> []
			end,
			ok = py_ct_helper:start_app([{num_ports, 1} | Extra]),
			Config;
		%% A machine without the extra Pythons (a developer's, before tools/pythons.sh): tools/setup.sh
		%% installs them and builds their ports, so on CI these cases run.
		{_, {error, {python_not_built, _, Exe}}} ->
			{skip, lists:flatten(io_lib:format("~s not built (tools/pythons.sh build)", [Exe]))}
	end.

end_per_testcase(_Case, _Config) ->
	py_ct_helper:stop_app().

%% A pool with python => python3.13t answers from a 3.13 free-threaded interpreter in another OS
%% process, while the default pool keeps its own Python.
pool_runs_its_own_python(_Config) ->
	{ok, Members} = py_context_router:start_pool(ft, 2, #{python => ?PY}),
	?assertEqual(2, length(Members)),
	{ok, PoolVersion} = py:eval(hd(Members), <<"'%d.%d' % __import__('sys').version_info[:2]">>),
	?assertEqual(<<"3.13">>, PoolVersion),
	{ok, PoolBuild} = py:eval(hd(Members), <<"bool(__import__('sysconfig').get_config_var('Py_GIL_DISABLED'))">>),
	?assertEqual(true, PoolBuild),
	%% Both members are on the pool's one port.
	Pids = [begin {ok, P} = py:eval(M, <<"__import__('os').getpid()">>), P end || M <- Members],
	?assertMatch([P, P], Pids),
	{ok, DefaultPid} = py:eval(<<"__import__('os').getpid()">>),
	?assertNotEqual(hd(Pids), DefaultPid),
	%% Pool calls route to it by name.
	{ok, 4.0} = py:call(ft, math, sqrt, [16]),
	{ok, ViaPool} = py:call(ft, os, getpid, []),
	?assertEqual(hd(Pids), ViaPool).

%% The pool_pythons application env gives a pool its Python when start_pool does not.
pool_python_from_app_env(_Config) ->
	{ok, [M]} = py_context_router:start_pool(ft_env, 1),
	{ok, V} = py:eval(M, <<"'%d.%d' % __import__('sys').version_info[:2]">>),
	?assertEqual(<<"3.13">>, V),
	?assertMatch({ok, _}, py_pool_ports:slot_of(ft_env)).

%% A python with no port built for it is refused at start, with the path that was looked for.
unknown_python_refused(_Config) ->
	?assertMatch({error, {python_not_built, 'python9.9', _}},
		py_context_router:start_pool(nope, 1, #{python => 'python9.9'})),
	?assertMatch({error, {python_not_built, "../x", _}},
		py_context_router:start_pool(nope, 1, #{python => "../x"})),
	?assertEqual(none, py_pool_ports:slot_of(nope)),
	?assertEqual([], py_context_router:contexts(nope)).

%% stop_pool ends the pool's port OS process.
stop_pool_stops_its_port(_Config) ->
	{ok, _} = py_context_router:start_pool(ft, 1, #{python => ?PY}),
	{ok, Slot} = py_pool_ports:slot_of(ft),
	OsPid = py_ct_helper:os_pid(Slot),
	ok = py_context_router:stop_pool(ft),
	?assertEqual(none, py_pool_ports:slot_of(ft)),
	?assertEqual(undefined, py_port:info(Slot)),
	ok = py_ct_helper:eventually(fun() -> not py_ct_helper:os_alive(OsPid) end, 10000).

%% The pool's port is restarted like any port; the pool's members come back on it.
pool_port_restarts_and_pool_recovers(_Config) ->
	{ok, [M0]} = py_context_router:start_pool(ft, 1, #{python => ?PY}),
	{ok, Slot} = py_pool_ports:slot_of(ft),
	OsPid = py_ct_helper:os_pid(Slot),
	MRef = erlang:monitor(process, M0),
	os:cmd("kill -9 " ++ integer_to_list(OsPid)),
	receive {'DOWN', MRef, process, M0, _} -> ok after 10000 -> error(member_not_down) end,
	ok = py_ct_helper:eventually(fun() ->
		case py_context_router:contexts(ft) of
			[M1] when M1 =/= M0 -> py:eval(M1, <<"1">>) =:= {ok, 1};
			_ -> false
		end
	end, 30000),
	?assertNotEqual(OsPid, py_ct_helper:os_pid(Slot)),
	{ok, V} = py:call(ft, sys, getrecursionlimit, []),
	?assert(is_integer(V)).
