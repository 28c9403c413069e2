%% The audit-hook sandbox: off by default (the port is an OS process of its own, and a forked child
%% closes the protocol pipes), on for the default pool with the application env `sandbox', on or off per
%% pool (a pool with another setting than the default ports gets ports of its own). Blocked operations
%% raise the documented RuntimeError with its exact three-line message; is_sandboxed() tells which.
-module(py_sandbox_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1, end_per_testcase/2]).
-export([default_is_off/1, default_pool_runs_subprocess_and_fork/1, sandboxed_pool_blocks/1,
	blocked_messages_exact/1, docs_is_sandboxed_check/1, docs_alternative_erlang_port/1,
	sandbox_survives_restart/1, app_env_sandboxes_default_pool/1, unsandboxed_pool_beside_sandboxed_default/1,
	hook_cannot_be_undone/1, context_options_refused/1]).

all() ->
	[default_is_off, default_pool_runs_subprocess_and_fork, sandboxed_pool_blocks, blocked_messages_exact,
	 docs_is_sandboxed_check, docs_alternative_erlang_port, sandbox_survives_restart,
	 app_env_sandboxes_default_pool, unsandboxed_pool_beside_sandboxed_default, hook_cannot_be_undone,
	 context_options_refused].

-define(TAIL, "fork()/exec() would corrupt the Erlang runtime.\nUse Erlang ports (open_port/2) for subprocess management.").

init_per_suite(Config) ->
	ok = py_ct_helper:start_app([{num_ports, 2}, {contexts_per_port, 2}]),
	Config.

end_per_suite(_Config) ->
	py_ct_helper:stop_app().

end_per_testcase(_Case, _Config) ->
	_ = py_context_router:stop_pool(sb),
	_ = py_context_router:stop_pool(free),
	ok.

%% Without configuration nothing is sandboxed, in Python's view either.
default_is_off(_) ->
	{ok, false} = py:is_sandboxed(),
	{ok, false} = py:eval(<<"__import__('_erlang_impl._sandbox', fromlist=['is_sandboxed']).is_sandboxed()">>),
	{ok, false} = py:eval(<<"__import__('erlang').is_sandboxed()">>).

%% The default pool runs subprocess and os.fork (the child never talks to Erlang: it exits at once).
default_pool_runs_subprocess_and_fork(_) ->
	{ok, <<"hi\n">>} = py:eval(<<"__import__('subprocess').run(['echo', 'hi'], capture_output=True, text=True).stdout">>),
	{ok, 7} = py:eval(<<"import os\npid = os.fork()\nif pid == 0:\n    os._exit(7)\n"
		"os.WEXITSTATUS(os.waitpid(pid, 0)[1])">>),
	{ok, 0} = py:eval(<<"__import__('os').system('true')">>).

%% A pool started with sandbox => true runs on ports of its own where they are blocked; the default
%% pool goes on running them.
sandboxed_pool_blocks(_) ->
	{ok, [Ctx]} = py_context_router:start_pool(sb, 1, #{sandbox => true}),
	[_] = py_pool_ports:slots(sb),
	{ok, true} = py:eval(Ctx, <<"__import__('erlang').is_sandboxed()">>),
	ok = is_blocked("subprocess.Popen", py:eval(Ctx, <<"import subprocess\nsubprocess.run(['ls'])">>)),
	ok = is_blocked("os.fork", py:eval(Ctx, <<"import os\nos.fork()">>)),
	%% Pool calls by name too.
	ok = is_blocked("subprocess.Popen", py:call(sb, subprocess, check_output, [[<<"true">>]])),
	{ok, <<"hi\n">>} = py:eval(<<"__import__('subprocess').run(['echo', 'hi'], capture_output=True, text=True).stdout">>),
	{ok, false} = py:is_sandboxed().

%% Every documented blocked operation, with its exact message (the audit event's name), and the
%% context goes on working after each.
blocked_messages_exact(_) ->
	{ok, [Ctx]} = py_context_router:start_pool(sb, 1, #{sandbox => true}),
	Cases = [
		{<<"__import__('subprocess').Popen(['true'])">>, "subprocess.Popen"},
		{<<"__import__('subprocess').run(['true'])">>, "subprocess.Popen"},
		{<<"__import__('subprocess').call(['true'])">>, "subprocess.Popen"},
		{<<"__import__('os').popen('true')">>, "subprocess.Popen"},
		{<<"import asyncio\nasync def f():\n    await asyncio.create_subprocess_exec('true')\nasyncio.run(f())">>, "subprocess.Popen"},
		{<<"import asyncio\nasync def f():\n    await asyncio.create_subprocess_shell('true')\nasyncio.run(f())">>, "subprocess.Popen"},
		{<<"__import__('os').fork()">>, "os.fork"},
		{<<"__import__('os').forkpty()">>, "os.forkpty"},
		{<<"__import__('os').system('true')">>, "os.system"},
		{<<"__import__('os').execv('/bin/true', ['true'])">>, "os.exec"},
		{<<"__import__('os').execvp('true', ['true'])">>, "os.exec"},
		%% os.spawn* is Python code around os.fork on POSIX: the fork is what is stopped.
		{<<"import os\nos.spawnv(os.P_WAIT, '/bin/true', ['true'])">>, "os.fork"},
		{<<"import os\nos.posix_spawn('/bin/true', ['true'], os.environ)">>, "os.posix_spawn"},
		{<<"import os\nos.posix_spawnp('true', ['true'], os.environ)">>, "os.posix_spawn"},
		{<<"import multiprocessing as m\nm.get_context('fork').Process(target=print).start()">>, "os.fork"},
		%% The spawn and forkserver start methods start their interpreter with
		%% _posixsubprocess.fork_exec, which raises no audit event.
		{<<"import multiprocessing as m\nm.get_context('spawn').Process(target=print).start()">>,
			"_posixsubprocess.fork_exec"},
		{<<"import multiprocessing.util as u, sys\nu.spawnv_passfds(sys.executable, [sys.executable, '-c', ''], [])">>,
			"_posixsubprocess.fork_exec"}
	],
	[{Code, Expected} = {Code, py:eval(Ctx, Code)} || {Code, What} <- Cases, Expected <- [blocked(What)]],
	{ok, 2} = py:eval(Ctx, <<"1 + 1">>).

%% The docs' check: from _erlang_impl._sandbox import is_sandboxed.
docs_is_sandboxed_check(_) ->
	{ok, [Ctx]} = py_context_router:start_pool(sb, 1, #{sandbox => true}),
	Code = <<"from _erlang_impl._sandbox import is_sandboxed\n"
		"msg = None\nif is_sandboxed():\n    msg = 'Running inside Erlang VM - subprocess operations blocked'\nmsg">>,
	{ok, <<"Running inside Erlang VM - subprocess operations blocked">>} = py:eval(Ctx, Code),
	{ok, none} = py:eval(Code).

%% The docs' recommended alternative works from a sandboxed pool: an Erlang function that runs the
%% command with open_port, called from Python.
docs_alternative_erlang_port(_) ->
	{ok, [Ctx]} = py_context_router:start_pool(sb, 1, #{sandbox => true}),
	ok = py:register_function(run_shell, fun([Cmd]) ->
		Port = open_port({spawn, binary_to_list(Cmd)}, [exit_status, binary, stderr_to_stdout]),
		collect_output(Port, [])
	end),
	try
		{ok, {0, <<"hello\n">>}} = py:eval(Ctx, <<"from erlang import run_shell\nrun_shell('echo hello')">>)
	after
		py:unregister_function(run_shell)
	end.

%% A sandboxed pool's port that dies comes back sandboxed.
sandbox_survives_restart(_) ->
	{ok, _} = py_context_router:start_pool(sb, 1, #{sandbox => true}),
	[Slot] = py_pool_ports:slots(sb),
	Gen = py_ct_helper:generation(Slot),
	_ = os:cmd("kill -9 " ++ integer_to_list(py_ct_helper:os_pid(Slot))),
	ok = py_ct_helper:eventually(fun() ->
		case py_port:info(Slot) of
			#{status := up, generation := G} when G > Gen -> true;
			_ -> false
		end
	end, 20000),
	ok = py_ct_helper:eventually(fun() -> py_context_router:pool_started(sb) end, 20000),
	ok = is_blocked("os.fork", py:call(sb, os, fork, [])).

%% {sandbox, true} in the application env sandboxes the default pool (every port, and explicit
%% contexts there); a pool that sets sandbox => true as well shares those ports.
app_env_sandboxes_default_pool(_) ->
	ok = py_ct_helper:start_app([{num_ports, 2}, {contexts_per_port, 1}, {sandbox, true}]),
	try
		[{ok, true} = py_ct_helper:on(S, 0, fun() -> py:is_sandboxed() end) || S <- [1, 2]],
		ok = is_blocked("subprocess.Popen", py:eval(<<"__import__('subprocess').run(['ls'])">>)),
		{ok, C} = py_context:new(#{}),
		ok = is_blocked("os.fork", py:eval(C, <<"__import__('os').fork()">>)),
		ok = py_context:stop(C),
		{ok, _} = py_context_router:start_pool(sb, 1, #{sandbox => true}),
		[] = py_pool_ports:slots(sb)
	after
		ok = py_ct_helper:start_app([{num_ports, 2}, {contexts_per_port, 2}])
	end.

%% With the default pool sandboxed, a pool with sandbox => false runs subprocess and fork on ports of
%% its own.
unsandboxed_pool_beside_sandboxed_default(_) ->
	ok = py_ct_helper:start_app([{num_ports, 2}, {contexts_per_port, 1}, {sandbox, true}]),
	try
		{ok, [Ctx]} = py_context_router:start_pool(free, 1, #{sandbox => false}),
		[_] = py_pool_ports:slots(free),
		{ok, false} = py:eval(Ctx, <<"__import__('erlang').is_sandboxed()">>),
		{ok, <<"hi\n">>} = py:eval(Ctx, <<"__import__('subprocess').run(['echo', 'hi'], capture_output=True, text=True).stdout">>),
		{ok, 3} = py:eval(Ctx, <<"import os\npid = os.fork()\nif pid == 0:\n    os._exit(3)\n"
			"os.WEXITSTATUS(os.waitpid(pid, 0)[1])">>),
		ok = is_blocked("subprocess.Popen", py:eval(<<"__import__('subprocess').run(['ls'])">>))
	after
		ok = py_ct_helper:start_app([{num_ports, 2}, {contexts_per_port, 2}])
	end.

%% A single explicit context cannot have a sandbox or venv of its own (they belong to a port): the
%% error says to use a pool.
context_options_refused(_) ->
	{error, {bad_option, #{sandbox := true}, _}} = py_context:new(#{sandbox => true}),
	{error, {bad_option, #{venv := "/v"}, _}} = py_context:new(#{venv => "/v"}),
	{ok, C} = py_context:new(#{}),
	ok = py_context:stop(C).

%% Python code cannot take the hook out: rebinding the module's set or is_sandboxed changes nothing.
hook_cannot_be_undone(_) ->
	{ok, [Ctx]} = py_context_router:start_pool(sb, 1, #{sandbox => true}),
	ok = py:exec(Ctx, <<"import erlang._sandbox as s\ns.BLOCKED_EVENTS = frozenset()\ns._installed = False">>),
	ok = is_blocked("os.fork", py:eval(Ctx, <<"__import__('os').fork()">>)).

%% ok when Result is the documented error of a blocked What.
is_blocked(What, Result) ->
	case blocked(What) of
		Result -> ok;
		Expected -> ct:fail({not_blocked, Expected, Result})
	end.

%% The documented error: RuntimeError with the three-line message naming the audit event.
blocked(What) ->
	{error, {'RuntimeError', What ++ " is blocked in Erlang VM context.\n" ?TAIL}}.

collect_output(Port, Acc) ->
	receive
		{Port, {data, Data}} -> collect_output(Port, [Data | Acc]);
		{Port, {exit_status, Status}} -> {Status, iolist_to_binary(lists:reverse(Acc))}
	after 30000 ->
		port_close(Port),
		{error, timeout}
	end.
