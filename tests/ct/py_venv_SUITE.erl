%% Virtual environments: py:ensure_venv/2,3 with a real package from PyPI (idna) installed into a
%% temporary venv, a pool started with that venv that sees it while the default pool does not,
%% py:activate_venv/1, py:deactivate_venv/0, py:venv_info/0 with the documented shapes, and every error
%% term. The cases run in order and build on the venv the first one makes; without network the first
%% case fails (loudly, never skipped), and so do those that need its venv.
-module(py_venv_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1, init_per_testcase/2, end_per_testcase/2]).
-export([ensure_installs_from_pypi/1, second_ensure_is_up_to_date/1, pool_with_venv_sees_it/1,
	pool_venv_survives_port_restart/1, activate_venv_docs_example/1, activated_venv_survives_restart/1,
	deactivate_restores_sys_path/1, activate_errors/1, ensure_option_errors/1, ensure_install_failure/1,
	ensure_timeout_kills_installer/1, caller_death_kills_installer/1, force_recreates/1,
	install_outside_call_timeout/1, pyproject_editable_with_extras/1, pool_option_errors/1,
	stop_pool_stops_its_ports/1, app_env_venv_at_start/1, uv_installer/1, concurrent_ensures_serialise/1,
	command_flood_meets_deadline/1, last_line_without_newline/1, activation_within_ensure_deadline/1]).

all() ->
	[ensure_installs_from_pypi, second_ensure_is_up_to_date, pool_with_venv_sees_it,
	 pool_venv_survives_port_restart, activate_venv_docs_example, activated_venv_survives_restart,
	 deactivate_restores_sys_path, activate_errors, ensure_option_errors, ensure_install_failure,
	 ensure_timeout_kills_installer, caller_death_kills_installer, force_recreates,
	 install_outside_call_timeout, pyproject_editable_with_extras, pool_option_errors,
	 stop_pool_stops_its_ports, app_env_venv_at_start, uv_installer, concurrent_ensures_serialise,
	 command_flood_meets_deadline, last_line_without_newline, activation_within_ensure_deadline].

%% A tiny pure-Python package; pinned, so every run installs the same thing.
-define(PACKAGE, "idna==3.7").
-define(INSTALL_TIMEOUT, 300000).

init_per_suite(Config) ->
	ok = py_ct_helper:start_app([{num_ports, 2}, {contexts_per_port, 2}]),
	%% One directory for the whole run (the cases share the venv), removed at the end.
	Root = filename:join(string:trim(os:cmd("mktemp -d /tmp/py_venv_SUITE.XXXXXX")), "work"),
	ok = filelib:ensure_dir(filename:join(Root, "x")),
	Req = filename:join(Root, "requirements.txt"),
	ok = file:write_file(Req, ?PACKAGE "\n"),
	[{root, Root}, {venv, filename:join(Root, "venv")}, {req, Req} | Config].

end_per_suite(Config) ->
	py_ct_helper:stop_app(),
	_ = file:del_dir_r(filename:dirname(?config(root, Config))),
	ok.

init_per_testcase(_Case, Config) ->
	Config.

end_per_testcase(_Case, _Config) ->
	_ = py_context_router:stop_pool(ml),
	_ = py:deactivate_venv(),
	py_ct_helper:stop_capture_log(),
	ok.

%% ensure_venv creates the venv with the ports' own Python, installs the requirements with pip (an OS
%% process outside the ports) and reports its progress in the logs.
ensure_installs_from_pypi(Config) ->
	Venv = ?config(venv, Config),
	ok = py_ct_helper:capture_log(),
	Result = py:ensure_venv(Venv, ?config(req, Config), [{installer, pip}, {activate, false},
		{timeout, ?INSTALL_TIMEOUT}]),
	Result =:= ok orelse ct:fail("ensure_venv from PyPI failed (this suite needs network): ~tp", [Result]),
	Logs = logs(),
	true = filelib:is_regular(filename:join(Venv, "pyvenv.cfg")),
	[_ | _] = filelib:wildcard(filename:join(Venv, "lib/python*/site-packages/idna/__init__.py")),
	true = has_log(<<"venv: creating">>, Logs),
	true = has_log(<<"venv: installing">>, Logs),
	true = has_log(<<"ready in">>, Logs),
	%% Not activated: the default pool does not see it.
	{ok, none} = py:venv_info().

%% A second ensure with the same requirements installs nothing (and needs no network).
second_ensure_is_up_to_date(Config) ->
	ok = py_ct_helper:capture_log(),
	ok = py:ensure_venv(?config(venv, Config), ?config(req, Config), [{activate, false}]),
	Logs = logs(),
	true = has_log(<<"is up to date with">>, Logs),
	false = has_log(<<"venv: installing">>, Logs),
	false = has_log(<<"venv: creating">>, Logs).

%% A pool started with the venv imports idna from it; the default pool does not see the venv.
pool_with_venv_sees_it(Config) ->
	Venv = list_to_binary(?config(venv, Config)),
	{ok, [_, _] = Members} = py_context_router:start_pool(ml, 2, #{venv => Venv}),
	{ok, <<"xn--eckwd4c7c.xn--zckzah">>} = py:call(ml, idna, encode, [<<"ドメイン.テスト"/utf8>>]),
	Origin = <<"(lambda s: s.origin if s else None)(__import__('importlib.util').util.find_spec('idna'))">>,
	[begin
		{ok, O} = py:eval(M, Origin),
		true = is_under(O, Venv)
	 end || M <- Members],
	%% The default pool: not found, or found elsewhere (a system-wide idna), never in the venv.
	{ok, D} = py:eval(Origin),
	false = is_under(D, Venv),
	{ok, none} = py:venv_info(),
	%% The pool's Python looks like the venv's (sys.prefix), and venv_info says so.
	{ok, #{<<"active">> := true, <<"venv_path">> := Venv, <<"site_packages">> := SP,
		<<"sys_prefix">> := Venv}} = py_venv:info(ml),
	true = is_under(SP, Venv),
	{ok, Venv} = py:eval(hd(Members), <<"__import__('sys').prefix">>),
	%% Its ports are its own: not the default pool's slots.
	Own = py_pool_ports:slots(ml),
	[] = [S || S <- Own, S =< py_router:num_slots()],
	true = length(py:stats()) =:= py_router:num_slots() + length(Own).

%% A port of the pool that dies comes back with the venv (its members are recreated there).
pool_venv_survives_port_restart(Config) ->
	Venv = list_to_binary(?config(venv, Config)),
	{ok, _} = py_context_router:start_pool(ml, 1, #{venv => Venv}),
	[Slot] = py_pool_ports:slots(ml),
	Gen = py_ct_helper:generation(Slot),
	_ = os:cmd("kill -9 " ++ integer_to_list(py_ct_helper:os_pid(Slot))),
	ok = py_ct_helper:eventually(fun() ->
		case py_port:info(Slot) of
			#{status := up, generation := G} when G > Gen -> true;
			_ -> false
		end
	end, 20000),
	ok = py_ct_helper:eventually(fun() -> py_context_router:pool_started(ml) end, 20000),
	{ok, <<"xn--eckwd4c7c.xn--zckzah">>} = py:call(ml, idna, encode, [<<"ドメイン.テスト"/utf8>>], #{}),
	{ok, #{<<"venv_path">> := Venv}} = py_venv:info(ml).

%% The docs' example: activate_venv/1 (binary or string path), then venv_info/0 matches
%% {ok, #{<<"active">> := true, <<"venv_path">> := Path}}, and packages are importable in the default
%% pool (every port of it).
activate_venv_docs_example(Config) ->
	Venv = ?config(venv, Config),
	ok = py:activate_venv(list_to_binary(Venv)),
	Path = list_to_binary(Venv),
	{ok, #{<<"active">> := true, <<"venv_path">> := Path}} = py:venv_info(),
	[{ok, <<"xn--eckwd4c7c.xn--zckzah">>} = py_ct_helper:on(Slot, Ctx, fun() ->
		py:call(idna, encode, [<<"ドメイン.テスト"/utf8>>]) end)
	 || Slot <- [1, 2], Ctx <- [0, 1]],
	%% A string path works the same; activating the active venv again is ok.
	ok = py:activate_venv(Venv),
	ok = py:deactivate_venv().

%% The activation is remembered: a default port that restarts has the venv again.
activated_venv_survives_restart(Config) ->
	Venv = list_to_binary(?config(venv, Config)),
	ok = py:activate_venv(Venv),
	Gen = py_ct_helper:generation(2),
	_ = os:cmd("kill -9 " ++ integer_to_list(py_ct_helper:os_pid(2))),
	ok = py_ct_helper:eventually(fun() ->
		case py_port:info(2) of
			#{status := up, generation := G} when G > Gen -> true;
			_ -> false
		end
	end, 20000),
	{ok, #{<<"venv_path">> := Venv}} = py_ct_helper:on(2, 0, fun() -> py:venv_info() end),
	{ok, _} = py_ct_helper:on(2, 0, fun() -> py:call(idna, encode, [<<"a.b">>]) end).

%% deactivate_venv/0 takes the venv's entries out of sys.path and restores sys.prefix; ok when none is
%% active.
deactivate_restores_sys_path(Config) ->
	Venv = list_to_binary(?config(venv, Config)),
	{ok, Before} = py:eval(<<"list(__import__('sys').path)">>),
	{ok, Prefix} = py:eval(<<"__import__('sys').prefix">>),
	ok = py:activate_venv(Venv),
	{ok, During} = py:eval(<<"list(__import__('sys').path)">>),
	true = lists:any(fun(P) -> is_under(P, Venv) end, During),
	%% Right after the port's pylib entry: the venv comes before the system's site-packages.
	true = is_under(lists:nth(2, During), Venv),
	ok = py:deactivate_venv(),
	{ok, Before} = py:eval(<<"list(__import__('sys').path)">>),
	{ok, Prefix} = py:eval(<<"__import__('sys').prefix">>),
	{ok, none} = py:venv_info(),
	ok = py:deactivate_venv().

%% Every error of activate_venv/1, and nothing changes on error.
activate_errors(Config) ->
	Root = ?config(root, Config),
	{error, {not_a_venv, <<"/nonexistent/venv">>}} = py:activate_venv("/nonexistent/venv"),
	Old = filename:join(Root, "old"),
	ok = filelib:ensure_dir(filename:join(Old, "x")),
	ok = file:write_file(filename:join(Old, "pyvenv.cfg"), <<"home = /usr/bin\nversion = 2.7.18\n">>),
	{ok, Full} = py:eval(<<"__import__('platform').python_version()">>),
	[Maj, Min | _] = binary:split(Full, <<".">>, [global]),
	Ours = <<Maj/binary, ".", Min/binary>>,
	{error, {python_version_mismatch, <<"2.7.18">>, Ours}} = py:activate_venv(Old),
	Empty = filename:join(Root, "empty"),
	ok = filelib:ensure_dir(filename:join(Empty, "x")),
	ok = file:write_file(filename:join(Empty, "pyvenv.cfg"), <<"version = ", Ours/binary, ".0\n">>),
	EmptyBin = list_to_binary(Empty),
	{error, {no_site_packages, EmptyBin, Ours}} = py:activate_venv(Empty),
	{ok, none} = py:venv_info().

%% Every error of ensure_venv/3's arguments, before anything is created.
ensure_option_errors(Config) ->
	Root = ?config(root, Config),
	Req = ?config(req, Config),
	V = filename:join(Root, "never"),
	{error, {bad_option, bogus}} = py:ensure_venv(V, Req, [bogus]),
	{error, {bad_option, {installer, conda}}} = py:ensure_venv(V, Req, [{installer, conda}]),
	{error, {bad_option, {timeout, 0}}} = py:ensure_venv(V, Req, [{timeout, 0}]),
	Missing = list_to_binary(filename:join(Root, "missing.txt")),
	{error, {no_such_file, Missing}} = py:ensure_venv(V, Missing),
	ReqBin = list_to_binary(Req),
	{error, {extras_need_pyproject, ReqBin}} = py:ensure_venv(V, Req, [{extras, ["dev"]}]),
	{error, {python_not_found, <<"/nonexistent/python3">>}} =
		py:ensure_venv(V, Req, [{python, "/nonexistent/python3"}, {activate, false}]),
	case os:find_executable("uv") of
		false -> {error, {installer_not_found, uv}} = py:ensure_venv(V, Req, [{installer, uv}]);
		_ -> ok
	end,
	%% A directory that holds something else is never written over.
	Other = filename:join(Root, "other"),
	ok = filelib:ensure_dir(filename:join(Other, "x")),
	ok = file:write_file(filename:join(Other, "keep.txt"), <<"mine">>),
	OtherBin = list_to_binary(Other),
	{error, {not_a_venv, OtherBin}} = py:ensure_venv(Other, Req, [force]),
	{ok, <<"mine">>} = file:read_file(filename:join(Other, "keep.txt")),
	false = filelib:is_dir(V).

%% pip failing (a package that does not exist) is {error, {install_failed, Status, Output}}, and
%% ensure_venv tries again next time (nothing is recorded as installed).
ensure_install_failure(Config) ->
	Root = ?config(root, Config),
	Bad = filename:join(Root, "bad-requirements.txt"),
	ok = file:write_file(Bad, <<"opsc-this-package-does-not-exist==0.0.1\n">>),
	{error, {install_failed, Status, Output}} =
		py:ensure_venv(?config(venv, Config), Bad, [{activate, false}, {timeout, ?INSTALL_TIMEOUT}]),
	true = is_integer(Status) andalso Status =/= 0,
	true = binary:match(Output, <<"opsc-this-package-does-not-exist">>) =/= nomatch,
	%% The good requirements are still what the marker names.
	ok = py:ensure_venv(?config(venv, Config), ?config(req, Config), [{activate, false}]).

%% The deadline ends the OS process: {error, {timeout, Step}}, and nothing of it runs on.
ensure_timeout_kills_installer(Config) ->
	V = filename:join(?config(root, Config), "slow"),
	T0 = erlang:monotonic_time(millisecond),
	{error, {timeout, venv_create_failed}} = py:ensure_venv(V, ?config(req, Config), [{timeout, 300}, {activate, false}]),
	true = py_ct_helper:elapsed_ms(T0) < 10000,
	ok = py_ct_helper:eventually(fun() -> procs_naming(V) =:= [] end, 5000).

%% A caller that dies mid-install takes the installer's processes with it.
caller_death_kills_installer(Config) ->
	V = filename:join(?config(root, Config), "orphan"),
	Req = ?config(req, Config),
	{Pid, MRef} = spawn_monitor(fun() -> py:ensure_venv(V, Req, [{activate, false}]) end),
	ok = py_ct_helper:eventually(fun() -> procs_naming(V) =/= [] end, 10000),
	exit(Pid, kill),
	receive {'DOWN', MRef, process, Pid, killed} -> ok after 5000 -> ct:fail(no_down) end,
	ok = py_ct_helper:eventually(fun() -> procs_naming(V) =:= [] end, 5000).

%% force recreates the venv from scratch (then installs again).
force_recreates(Config) ->
	Venv = ?config(venv, Config),
	Stray = filename:join(Venv, "stray.txt"),
	ok = file:write_file(Stray, <<"x">>),
	ok = py_ct_helper:capture_log(),
	ok = py:ensure_venv(Venv, ?config(req, Config), [force, {activate, false}, {timeout, ?INSTALL_TIMEOUT}]),
	false = filelib:is_regular(Stray),
	Logs = logs(),
	true = has_log(<<"(force)">>, Logs),
	true = has_log(<<"venv: installing">>, Logs),
	[_ | _] = filelib:wildcard(filename:join(Venv, "lib/python*/site-packages/idna/__init__.py")).

%% The install is not a Python call: a default_timeout far below its length and a max_concurrent of 1
%% held by a running call do not touch it.
install_outside_call_timeout(Config) ->
	ok = py_ct_helper:start_app([{num_ports, 2}, {contexts_per_port, 2}, {default_timeout, 200},
		{max_concurrent, 1}]),
	try
		Self = self(),
		Busy = spawn(fun() -> Self ! {busy, py:eval(<<"__import__('time').sleep(2) or 1">>, #{}, infinity)} end),
		V = filename:join(?config(root, Config), "budget"),
		T0 = erlang:monotonic_time(millisecond),
		ok = py:ensure_venv(V, ?config(req, Config), [{activate, false}, {timeout, ?INSTALL_TIMEOUT}]),
		true = py_ct_helper:elapsed_ms(T0) > 200,
		receive {busy, _} -> ok after 10000 -> ct:fail({busy_call_stuck, Busy}) end
	after
		ok = py_ct_helper:start_app([{num_ports, 2}, {contexts_per_port, 2}])
	end.

%% A pyproject.toml is installed editable (pip install -e Dir[extras]); the .pth hook of the editable
%% install is processed, so the pool imports the project from its source directory.
pyproject_editable_with_extras(Config) ->
	Root = ?config(root, Config),
	Proj = filename:join(Root, "proj"),
	ok = filelib:ensure_dir(filename:join([Proj, "opsc_demo", "x"])),
	ok = file:write_file(filename:join([Proj, "opsc_demo", "__init__.py"]), <<"ANSWER = 42\n">>),
	Toml = filename:join(Proj, "pyproject.toml"),
	ok = file:write_file(Toml, <<"[build-system]\nrequires = [\"setuptools>=64\"]\n"
		"build-backend = \"setuptools.build_meta\"\n\n[project]\nname = \"opsc-demo\"\nversion = \"0.1.0\"\n"
		"[project.optional-dependencies]\nnet = [\"", ?PACKAGE, "\"]\n\n[tool.setuptools]\npackages = [\"opsc_demo\"]\n">>),
	V = filename:join(Root, "projvenv"),
	Result = py:ensure_venv(V, Toml, [{extras, ["net"]}, {activate, false}, {timeout, ?INSTALL_TIMEOUT}]),
	Result =:= ok orelse ct:fail("editable install failed: ~tp", [Result]),
	{ok, _} = py_context_router:start_pool(ml, 1, #{venv => V}),
	{ok, 42} = py:eval(py_context_router:get_context(ml), <<"__import__('opsc_demo').ANSWER">>),
	{ok, File} = py:eval(py_context_router:get_context(ml), <<"__import__('opsc_demo').__file__">>),
	true = is_under(File, list_to_binary(Proj)),
	%% The extra came along.
	{ok, _} = py:call(ml, idna, encode, [<<"a.b">>]).

%% Errors of start_pool/3 with options.
pool_option_errors(Config) ->
	{error, {not_a_venv, <<"/nonexistent/v">>}} = py_context_router:start_pool(ml, 1, #{venv => "/nonexistent/v"}),
	{error, {bad_option, {bogus, 1}}} = py_context_router:start_pool(ml, 1, #{bogus => 1}),
	{error, {bad_option, {sandbox, maybe}}} = py_context_router:start_pool(ml, 1, #{sandbox => maybe}),
	{error, {bad_option, {ports, 0}}} = py_context_router:start_pool(ml, 1, #{ports => 0}),
	{error, {bad_option, default, _}} = py_context_router:start_pool(default, 1, #{venv => ?config(venv, Config)}),
	case py:subinterp_supported() of
		false ->
			{error, {mode_not_supported, owngil, _}} =
				py_context_router:start_pool(ml, 1, #{mode => owngil, venv => ?config(venv, Config)});
		true ->
			%% Its ports run this Python, which offers owngil: the venv reaches the context's
			%% sub-interpreter (its erlang package activates it there too).
			{ok, [Og]} = py_context_router:start_pool(ml, 1, #{mode => owngil, venv => ?config(venv, Config)}),
			{ok, <<"subinterp">>} = py:eval(Og, <<"__import__('erlang').detect_mode().value">>),
			{ok, _} = py:call(Og, idna, encode, [<<"a.b">>]),
			ok = py_context_router:stop_pool(ml)
	end,
	{ok, _} = py_context_router:start_pool(ml, 1, #{venv => ?config(venv, Config)}),
	{error, {already_started, ml}} = py_context_router:start_pool(ml, 1, #{venv => ?config(venv, Config)}),
	false = py_context_router:pool_started(nothing).

%% Stopping the pool stops its ports (their OS processes end), and a new pool gets new slots.
stop_pool_stops_its_ports(Config) ->
	{ok, _} = py_context_router:start_pool(ml, 3, #{venv => ?config(venv, Config), ports => 2}),
	[S1, S2] = Slots = py_pool_ports:slots(ml),
	OsPids = [py_ct_helper:os_pid(S) || S <- Slots],
	3 = length(py_context_router:contexts(ml)),
	ok = py_context_router:stop_pool(ml),
	[] = py_pool_ports:slots(ml),
	undefined = py_port:info(S1),
	undefined = py_port:info(S2),
	ok = py_ct_helper:eventually(fun() -> not lists:any(fun py_ct_helper:os_alive/1, OsPids) end, 5000),
	{ok, _} = py_context_router:start_pool(ml, 1, #{venv => ?config(venv, Config)}),
	%% The stopped pool's slots are reused (py_pool_ports:release/1), the lowest first.
	[S3] = py_pool_ports:slots(ml),
	S3 = min(S1, S2).

%% The application env `venv` is the default pool's venv at start.
app_env_venv_at_start(Config) ->
	Venv = list_to_binary(?config(venv, Config)),
	ok = py_ct_helper:start_app([{num_ports, 2}, {contexts_per_port, 1}, {venv, ?config(venv, Config)}]),
	try
		{ok, #{<<"venv_path">> := Venv}} = py:venv_info(),
		[{ok, _} = py_ct_helper:on(S, 0, fun() -> py:call(idna, encode, [<<"a.b">>]) end) || S <- [1, 2]],
		ok = py:deactivate_venv(),
		{ok, none} = py:venv_info()
	after
		ok = py_ct_helper:start_app([{num_ports, 2}, {contexts_per_port, 2}])
	end.

%% {installer, uv}: uv (installed from PyPI into a tool venv of its own, put on the PATH) creates the
%% venv (its pyvenv.cfg says version_info, not version) and installs into it; without the option uv is
%% picked when it is on the PATH.
uv_installer(Config) ->
	Root = ?config(root, Config),
	Tool = filename:join(Root, "uvtool"),
	ok = py:ensure_venv(Tool, ?config(req, Config), [{installer, pip}, {activate, false}]),
	{ok, _} = py_venv_cmd:run(filename:join([Tool, "bin", "python"]),
		["-m", "pip", "install", "--disable-pip-version-check", "uv"], install_failed,
		#{deadline => erlang:monotonic_time(millisecond) + ?INSTALL_TIMEOUT, env => []}),
	OldPath = os:getenv("PATH"),
	true = os:putenv("PATH", filename:join(Tool, "bin") ++ ":" ++ OldPath),
	try
		Uv = os:find_executable("uv"),
		true = lists:prefix(Tool, Uv),
		V = filename:join(Root, "uvvenv"),
		ok = py_ct_helper:capture_log(),
		ok = py:ensure_venv(V, ?config(req, Config), [{installer, uv}, {activate, false}, {timeout, ?INSTALL_TIMEOUT}]),
		Logs = logs(),
		true = has_log(list_to_binary(Uv), Logs),
		{ok, Cfg} = file:read_file(filename:join(V, "pyvenv.cfg")),
		true = binary:match(Cfg, <<"version_info">>) =/= nomatch,
		{ok, _} = py_context_router:start_pool(ml, 1, #{venv => V}),
		{ok, <<"xn--eckwd4c7c.xn--zckzah">>} = py:call(ml, idna, encode, [<<"ドメイン.テスト"/utf8>>]),
		%% Auto-detection: uv is on the PATH.
		ok = py_context_router:stop_pool(ml),
		_ = logs(),
		ok = py:ensure_venv(filename:join(Root, "uvauto"), ?config(req, Config), [{activate, false}]),
		true = has_log(list_to_binary(Uv), logs())
	after
		true = os:putenv("PATH", OldPath)
	end.

%% Two ensures of one venv at once: one creates and installs, the other waits for it and finds the venv
%% up to date.
concurrent_ensures_serialise(Config) ->
	V = filename:join(?config(root, Config), "twice"),
	Req = ?config(req, Config),
	ok = py_ct_helper:capture_log(),
	Self = self(),
	Pids = [spawn(fun() -> Self ! {done, self(), py:ensure_venv(V, Req, [{installer, pip}, {activate, false},
		{timeout, ?INSTALL_TIMEOUT}])} end) || _ <- [1, 2]],
	[receive {done, P, R} -> ok = R after ?INSTALL_TIMEOUT -> ct:fail(ensure_stuck) end || P <- Pids],
	Logs = logs(),
	1 = length([L || L <- Logs, binary:match(L, <<"venv: creating">>) =/= nomatch]),
	1 = length([L || L <- Logs, binary:match(L, <<"venv: installing">>) =/= nomatch]),
	true = has_log(<<"is up to date with">>, Logs).

%% Internal.

logs() ->
	logs([]).

logs(Acc) ->
	receive {log, _Level, Text} -> logs([Text | Acc])
	after 0 -> lists:reverse(Acc)
	end.

has_log(Needle, Logs) ->
	lists:any(fun(T) -> binary:match(T, Needle) =/= nomatch end, Logs).

is_under(none, _) -> false;
is_under(Path, Dir) when is_binary(Path) ->
	Prefix = <<Dir/binary, "/">>,
	binary:longest_common_prefix([Path, Prefix]) =:= byte_size(Prefix).

%% The OS processes whose command line names Path (pip, python -m venv), other than pgrep itself.
procs_naming(Path) ->
	Out = os:cmd("pgrep -f -- '" ++ Path ++ "'"),
	[L || L <- string:lexemes(Out, "\n"), L =/= ""].

%% A command that writes faster than its output is read still ends at its deadline (a receive's
%% `after' never fires while messages keep coming), is killed, and leaves none of its output in the
%% caller's mailbox; its whole process group is gone. The flood is bounded (a million lines), so a
%% regression fails instead of filling the memory; the sleep keeps the command alive after it.
command_flood_meets_deadline(Config) ->
	PgidFile = filename:join(?config(root, Config), "flood.pgid"),
	T0 = erlang:monotonic_time(millisecond),
	{error, {timeout, flood}} = py_venv_cmd:run("/bin/sh",
		["-c", "echo $$ > \"$0\"; yes | head -n 1000000; sleep 60", PgidFile], flood, #{deadline => T0 + 300}),
	Ms = erlang:monotonic_time(millisecond) - T0,
	ct:pal("returned after ~b ms", [Ms]),
	?assert(Ms < 3000),
	timer:sleep(100),
	{messages, Left} = process_info(self(), messages),
	?assertEqual([], [M || M = {P, _} <- Left, is_port(P)]),
	{ok, Pgid} = file:read_file(PgidFile),
	InGroup = fun() -> string:trim(os:cmd("pgrep -g " ++ integer_to_list(binary_to_integer(string:trim(Pgid))))) end,
	ok = py_ct_helper:eventually(fun() -> InGroup() =:= "" end, 5000).

%% The command's last line is in its output (and in an installer error) even without a newline after
%% it; a line longer than the kept length, newline or not, is cut to it.
last_line_without_newline(_Config) ->
	T0 = erlang:monotonic_time(millisecond),
	{error, {fails, 3, <<"first\nERROR: no such package">>}} = py_venv_cmd:run("/bin/sh",
		["-c", "echo first; printf 'ERROR: no such package'; exit 3"], fails, #{deadline => T0 + 30000}),
	{ok, <<"only">>} = py_venv_cmd:run("/bin/sh", ["-c", "printf only"], quiet, #{deadline => T0 + 30000}),
	{ok, Long} = py_venv_cmd:run("/bin/sh", ["-c", "head -c 3000000 /dev/zero | tr '\\0' x"], long,
		#{deadline => T0 + 30000}),
	1024 = byte_size(Long),
	?assertEqual(<<>>, binary:replace(Long, <<"x">>, <<>>, [global])).

%% ensure_venv's timeout covers its activation too: with the venv up to date and the port that checks
%% it busy, the ensure ends at its own deadline (the activation used to get 30 s of its own after it).
activation_within_ensure_deadline(Config) ->
	Venv = ?config(venv, Config),
	ok = py:ensure_venv(Venv, ?config(req, Config), [{activate, false}]),
	Self = self(),
	Busy = spawn(fun() -> Self ! {busy_done, py_ct_helper:on(1, 0, fun() -> py:eval(<<"__import__('time').sleep(6)">>) end)} end),
	timer:sleep(1000),  %% the sleep has started (it has 5 s more to go)
	T0 = erlang:monotonic_time(millisecond),
	{error, _} = Result = py:ensure_venv(Venv, ?config(req, Config), [{timeout, 1500}]),
	Ms = erlang:monotonic_time(millisecond) - T0,
	ct:log("~p after ~b ms", [Result, Ms]),
	?assert(Ms < 4500),
	receive {busy_done, _} -> ok after 20000 -> ct:fail({busy_never_done, Busy}) end,
	{ok, none} = py:venv_info().
