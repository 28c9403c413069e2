%% owngil contexts (issue 8, PROTOCOL.md §3.16): each runs in a sub-interpreter of its own, with its
%% own GIL, on its own thread of one port.
%%
%% Runs where the port offers owngil (a GIL build of CPython >= 3.12: the 3.13 stage of tools/test.sh,
%% EP_TEST_PORT=.../python3.13/erlang_python_port); elsewhere (3.11, and 3.13t where owngil is refused:
%% its worker contexts already run in parallel) every case is skipped with the reason, and
%% py_modes_SUITE:owngil_refused_clearly checks the refusal.
-module(py_owngil_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1, init_per_testcase/2, end_per_testcase/2]).
-export([reports_the_truth/1, calls_eval_exec_and_types/1, module_state_is_per_context/1,
	callbacks_reentrant_and_send/1, process_bound_envs_and_drop/1, preload_and_paths/1,
	timeout_cancels_and_context_goes_on/1, interrupt_reaches_the_context/1,
	single_phase_extension_is_import_error/1, create_destroy_cycles/1, start_link_and_pool/1,
	streams_from_owngil/1, two_contexts_run_at_once/1, asyncio_tasks_refused_in_owngil_namespace/1,
	erlang_run_inside_owngil/1]).

all() ->
	[reports_the_truth, calls_eval_exec_and_types, module_state_is_per_context, callbacks_reentrant_and_send,
	 process_bound_envs_and_drop, preload_and_paths, timeout_cancels_and_context_goes_on,
	 interrupt_reaches_the_context, single_phase_extension_is_import_error, create_destroy_cycles,
	 start_link_and_pool, streams_from_owngil, two_contexts_run_at_once,
	 asyncio_tasks_refused_in_owngil_namespace, erlang_run_inside_owngil].

init_per_suite(Config) ->
	Config.

end_per_suite(_Config) ->
	ok.

init_per_testcase(_Case, Config) ->
	ok = py_ct_helper:start_app([{num_ports, 1}, {contexts_per_port, 2}]),
	case py:subinterp_supported() of
		true ->
			Config;
		false ->
			#{hello := H} = py_port:info(1),
			py_ct_helper:stop_app(),
			{skip, lists:flatten(io_lib:format("owngil is not offered by this port: Python ~ts, build ~p, modes ~p",
				[maps:get(python, H, <<"?">>), maps:get(build, H, gil), maps:get(modes, H, [])]))}
	end.

end_per_testcase(_Case, _Config) ->
	_ = py_preload:clear_code(),
	py_ct_helper:stop_app().

new() ->
	{ok, Ctx} = py_context:new(#{mode => owngil}),
	Ctx.

%% The hello lists owngil; the context says it runs in a sub-interpreter, Python agrees.
reports_the_truth(_) ->
	#{hello := #{modes := Modes}} = py_port:info(1),
	?assert(lists:member(owngil, Modes)),
	Ctx = new(),
	{ok, #{mode := owngil}} = py_context:place(Ctx),
	?assert(py_context:is_subinterp(Ctx)),
	{ok, Id} = py_context:get_interp_id(Ctx),
	?assert(Id > 0),
	{ok, <<"subinterp">>} = py:eval(Ctx, <<"__import__('erlang').detect_mode().value">>),
	{ok, <<"shared_gil">>} = py:eval(<<"__import__('erlang').detect_mode().value">>),
	Ctx2 = new(),
	{ok, Id2} = py_context:get_interp_id(Ctx2),
	?assertNotEqual(Id, Id2),
	ok = py_context:stop(Ctx),
	ok = py_context:stop(Ctx2).

%% Requests of every kind, and the Erlang types made in the sub-interpreter's own Pid/Ref/Term types.
calls_eval_exec_and_types(_) ->
	Ctx = new(),
	{ok, 4.0} = py:call(Ctx, math, sqrt, [16]),
	{ok, 6} = py:eval(Ctx, <<"x * 2">>, #{x => 3}),
	ok = py:exec(Ctx, <<"def f(a):\n    return [a, a]\n">>),
	{ok, [1, 1]} = py:eval(Ctx, <<"f(1)">>),
	Me = self(),
	R = make_ref(),
	Port = hd(erlang:ports()),
	{ok, {Me, R, Port}} = py:eval(Ctx, <<"(p, r, t)">>, #{p => Me, r => R, t => Port}),
	{ok, [<<"Pid">>, <<"Ref">>, <<"Term">>]} =
		py:eval(Ctx, <<"[type(v).__name__ for v in (p, r, t)]">>, #{p => Me, r => R, t => Port}),
	%% The types are the sub-interpreter's own: the same names as erlang.Pid there.
	{ok, true} = py:eval(Ctx, <<"type(p) is __import__('erlang').Pid">>, #{p => Me}),
	{error, {'ZeroDivisionError', _}} = py:eval(Ctx, <<"1/0">>),
	{ok, 2} = py:eval(Ctx, <<"1+1">>),
	ok = py_context:stop(Ctx).

%% A global set by exec in one owngil context is not seen in another, nor in the main interpreter;
%% neither is a module attribute (the json module is each interpreter's own).
module_state_is_per_context(_) ->
	A = new(),
	B = new(),
	ok = py:exec(A, <<"import json\njson.owngil_mark = 1\nimport builtins\nbuiltins.owngil_global = 7\n">>),
	{ok, 1} = py:eval(A, <<"__import__('json').owngil_mark">>),
	{ok, 7} = py:eval(A, <<"owngil_global">>),
	{ok, false} = py:eval(B, <<"hasattr(__import__('json'), 'owngil_mark')">>),
	{error, {'NameError', _}} = py:eval(B, <<"owngil_global">>),
	{ok, false} = py:eval(<<"hasattr(__import__('json'), 'owngil_mark')">>),
	{ok, false} = py:eval(<<"hasattr(__import__('builtins'), 'owngil_global')">>),
	%% sys.modules differ: a module imported in A only is not loaded in B.
	ok = py:exec(A, <<"import fractions">>),
	{ok, true} = py:eval(A, <<"'fractions' in __import__('sys').modules">>),
	{ok, false} = py:eval(B, <<"'fractions' in __import__('sys').modules">>),
	ok = py_context:stop(A),
	ok = py_context:stop(B).

%% erlang.call from the sub-interpreter, re-entrant into the same context (Erlang calls Python on it
%% again from inside the callback), and erlang.send.
callbacks_reentrant_and_send(_) ->
	Ctx = new(),
	ok = py:register_function(og_add, fun([X, Y]) -> X + Y end),
	{ok, 5} = py:eval(Ctx, <<"__import__('erlang').call('og_add', 2, 3)">>),
	ok = py:register_function(og_back, fun([N]) -> {ok, V} = py:eval(Ctx, <<"n * 10">>, #{n => N}), V end),
	{ok, 70} = py:eval(Ctx, <<"__import__('erlang').call('og_back', 7)">>),
	%% Two levels: Python -> Erlang -> Python (same context) -> Erlang -> Python.
	ok = py:register_function(og_deep, fun([N]) ->
		{ok, V} = py:eval(Ctx, <<"__import__('erlang').call('og_back', n)">>, #{n => N}), V + 1 end),
	{ok, 31} = py:eval(Ctx, <<"__import__('erlang').call('og_deep', 3)">>),
	Me = self(),
	{ok, _} = py:eval(Ctx, <<"__import__('erlang').send(p, ('hello', 1))">>, #{p => Me}),
	receive {<<"hello">>, 1} -> ok after 5000 -> ct:fail(no_message) end,
	ok = py_context:stop(Ctx).

%% Each process has its own globals in the context; an environment goes when its process exits (the
%% env_drop runs on the control thread, attached to the sub-interpreter).
process_bound_envs_and_drop(_) ->
	Ctx = new(),
	Base = py_ct_helper:env_count(1),
	Parent = self(),
	Pids = [spawn(fun() ->
		ok = py:exec(Ctx, iolist_to_binary(["mine = ", integer_to_list(I)])),
		{ok, I} = py:eval(Ctx, <<"mine">>),
		Parent ! {set, self()},
		receive stop -> ok after 10000 -> ok end
	end) || I <- [1, 2, 3]],
	[receive {set, P} -> ok after 10000 -> ct:fail(no_set) end || P <- Pids],
	?assertEqual(Base + 3, py_ct_helper:env_count(1)),
	{error, {'NameError', _}} = py:eval(Ctx, <<"mine">>),  % this process's own environment: one more
	?assertEqual(Base + 4, py_ct_helper:env_count(1)),
	[P ! stop || P <- Pids],
	ok = py_ct_helper:eventually(fun() -> py_ct_helper:env_count(1) =:= Base + 1 end, 5000),
	%% An explicit environment, shared by two processes.
	{ok, Env} = py_context:create_local_env(Ctx),
	ok = py_context:exec(Ctx, <<"shared = 41">>, Env),
	Self = self(),
	spawn(fun() -> Self ! {got, py_context:eval(Ctx, <<"shared + 1">>, #{}, 5000, Env)} end),
	receive {got, {ok, 42}} -> ok after 5000 -> ct:fail(no_env) end,
	{ok, 2} = py:eval(Ctx, <<"1+1">>),
	ok = py_context:stop(Ctx).

%% The preload code and registered paths reach an owngil context as they reach a worker one.
preload_and_paths(Config) ->
	ok = py_preload:set_code(<<"PRELOADED = 'yes'\n">>),
	Dir = filename:join(?config(priv_dir, Config), "ogpath"),
	ok = filelib:ensure_dir(filename:join(Dir, "x")),
	ok = file:write_file(filename:join(Dir, "og_mod_here.py"), <<"VALUE = 12\n">>),
	_ = py_import:add_path(list_to_binary(Dir)),
	Ctx = new(),
	{ok, <<"yes">>} = py:eval(Ctx, <<"PRELOADED">>),
	{ok, 12} = py:eval(Ctx, <<"__import__('og_mod_here').VALUE">>),
	ok = py_context:stop(Ctx).

%% A timeout cancels the running request in the sub-interpreter (delivered with a thread state of
%% that interpreter); the context serves the next request. erlang.sleep too.
timeout_cancels_and_context_goes_on(_) ->
	Ctx = new(),
	T0 = erlang:monotonic_time(millisecond),
	{error, timeout} = py_context:eval(Ctx, <<"while True:\n    pass\n">>, #{}, 200),
	{error, timeout} = py_context:eval(Ctx, <<"__import__('erlang').sleep(30)">>, #{}, 200),
	?assert(erlang:monotonic_time(millisecond) - T0 < 5000),
	{ok, 3} = py:eval(Ctx, <<"1+2">>),
	%% The main interpreter is untouched and fine.
	{ok, 4.0} = py:call(math, sqrt, [16]),
	ok = py_context:stop(Ctx).

%% py:interrupt reaches a request running in the sub-interpreter.
interrupt_reaches_the_context(_) ->
	Ctx = new(),
	Self = self(),
	spawn(fun() -> Self ! {done, py_context:eval(Ctx, <<"while True:\n    pass\n">>, #{}, 20000)} end),
	timer:sleep(300),
	ok = py_ct_helper:eventually(fun() -> py:interrupt(Ctx) =:= ok end, 5000),
	receive {done, {error, _}} -> ok after 10000 -> ct:fail(not_interrupted) end,
	{ok, 1} = py:eval(Ctx, <<"1">>),
	ok = py_context:stop(Ctx).

%% A C extension without sub-interpreter support (single-phase init; _testsinglephase is not in this
%% build, _xxtestfuzz is one) is an ImportError in the owngil context, never a crash; the main
%% interpreter loads it.
single_phase_extension_is_import_error(_) ->
	Ctx = new(),
	{error, {'ImportError', Msg}} = py:eval(Ctx, <<"__import__('_xxtestfuzz')">>),
	ct:pal("~ts", [Msg]),
	{ok, 1} = py:eval(Ctx, <<"1">>),
	{ok, <<"_xxtestfuzz">>} = py:eval(<<"__import__('_xxtestfuzz').__name__">>),
	ok = py_context:stop(Ctx).

%% Sub-interpreters end with their contexts (the port stays up, no thread state is left behind).
create_destroy_cycles(_) ->
	OsPid = py_ct_helper:os_pid(1),
	lists:foreach(fun(I) ->
		Ctx = new(),
		{ok, I} = py:eval(Ctx, <<"i">>, #{i => I}),
		ok = py:exec(Ctx, <<"import threading\nt = threading.Thread(target=lambda: None)\nt.start()\nt.join()\n">>),
		ok = py_context:stop(Ctx)
	end, lists:seq(1, 6)),
	?assertEqual(OsPid, py_ct_helper:os_pid(1)),
	{ok, 2} = py:eval(<<"1+1">>).

%% start_link/2 and a named pool in owngil mode; the default pool stays worker.
start_link_and_pool(_) ->
	{ok, C} = py_context:start_link(og1, owngil),
	{ok, <<"subinterp">>} = py:eval(C, <<"__import__('erlang').detect_mode().value">>),
	unlink(C),
	ok = py_context:stop(C),
	{ok, Pids} = py_context_router:start_pool(og_pool, 2, owngil),
	2 = length(Pids),
	[{ok, <<"subinterp">>} = py:eval(P, <<"__import__('erlang').detect_mode().value">>) || P <- Pids],
	ok = py_context_router:stop_pool(og_pool),
	{error, {mode_not_supported, owngil, _}} = py:start_contexts(#{mode => owngil}).

%% A generator streamed from an owngil context: every item arrives, in order.
streams_from_owngil(_) ->
	Ctx = new(),
	ok = py:exec(Ctx, <<"def gen(n):\n    for i in range(n):\n        yield i\n">>),
	Body = {py_request:env_owner(), <<"__main__">>, <<"gen">>, [100], #{}},
	{ok, Items} = py_stream:collect(call, {{ctx, Ctx}, Body}, 10000),
	?assertEqual(lists:seq(0, 99), Items),
	ok = py_context:stop(Ctx).

%% Two owngil contexts of one port hold their GILs at the same time. A spins in pure Python (never
%% releasing its GIL: a switch interval of 100 s) until a byte in a shared file mapping turns 1; B sets
%% it. B can only run while A spins if their GILs differ. Control: the same with two worker contexts
%% (one interpreter, one GIL) times out. No timing margin is involved: on a loaded machine B is merely
%% late, and A waits up to 20 s.
two_contexts_run_at_once(Config) ->
	File = filename:join(?config(priv_dir, Config), "flag"),
	Define = <<"def wait_flag(path, limit):\n"
		"    import mmap, sys, time\n"
		"    with open(path, 'r+b') as f:\n"
		"        m = mmap.mmap(f.fileno(), 2)\n"
		"        old = sys.getswitchinterval()\n"
		"        sys.setswitchinterval(100.0)\n"
		"        try:\n"
		"            m[1] = 1\n"
		"            end = time.monotonic() + limit\n"
		"            while m[0] == 0:\n"
		"                if time.monotonic() > end:\n"
		"                    return False\n"
		"            return True\n"
		"        finally:\n"
		"            sys.setswitchinterval(old)\n"
		"            m.close()\n"
		"def set_flag(path):\n"
		"    import mmap\n"
		"    with open(path, 'r+b') as f:\n"
		"        m = mmap.mmap(f.fileno(), 2)\n"
		"        m[0] = 1\n"
		"        m.close()\n"
		"    return True\n"
		"import builtins\n"
		"builtins.og_wait_flag, builtins.og_set_flag = wait_flag, set_flag\n">>,
	Run = fun(A, B, Limit) ->
		ok = file:write_file(File, <<0, 0>>),
		ok = py:exec(A, Define),
		ok = py:exec(B, Define),
		Self = self(),
		spawn(fun() -> Self ! {waited, py_context:call(A, builtins, og_wait_flag, [list_to_binary(File), Limit], #{}, 60000)} end),
		ok = py_ct_helper:eventually(fun() -> case file:read_file(File) of {ok, <<_, 1>>} -> true; _ -> false end end, 20000),
		{ok, true} = py_context:call(B, builtins, og_set_flag, [list_to_binary(File)], #{}, 60000),
		receive {waited, W} -> W after 60000 -> ct:fail(wait_flag_lost) end
	end,
	A = new(),
	B = new(),
	?assertEqual({ok, true}, Run(A, B, 20.0)),
	ok = py_context:stop(A),
	ok = py_context:stop(B),
	{ok, WA} = py_context:new(#{mode => worker}),
	{ok, WB} = py_context:new(#{mode => worker}),
	?assertEqual({ok, false}, Run(WA, WB, 1.0)),
	ok = py_context:stop(WA),
	ok = py_context:stop(WB).

%% The asyncio task loops (PROTOCOL.md §3.10) live in the main interpreter: a process bound to an owngil
%% context gets a clear error for a task in that context's namespace (its objects belong to another
%% interpreter, which a loop thread must never touch), and the port and the context go on.
asyncio_tasks_refused_in_owngil_namespace(_) ->
	Ctx = new(),
	Self = self(),
	spawn_link(fun() ->
		ok = py_context_router:bind_context(Ctx),
		Self ! {task, py_event_loop:run(math, sqrt, [4.0])}
	end),
	receive
		{task, {error, {'RuntimeError', Msg}}} -> {match, _} = re:run(Msg, "owngil");
		{task, Other} -> ct:fail({not_refused, Other})
	after 20000 -> ct:fail(no_task_outcome)
	end,
	{ok, 2.0} = py_event_loop:run(math, sqrt, [4.0]),
	{ok, 3} = py:eval(Ctx, <<"1 + 2">>).

%% Inside an owngil context asyncio runs on the port's own loop class (erlang.run), erlang.sleep included.
erlang_run_inside_owngil(_) ->
	Ctx = new(),
	ok = py:exec(Ctx, <<"import erlang, asyncio\nasync def f():\n    await asyncio.sleep(0.01)\n"
		"    await erlang.sleep(0.01)\n    return 5\n">>),
	{ok, 5} = py:eval(Ctx, <<"erlang.run(f())">>).
