%% Virtual environments: py:ensure_venv/2,3, py:activate_venv/1, py:deactivate_venv/0, py:venv_info/0.
%%
%% Scope: creating a venv and installing its dependencies (OS processes, py_venv_cmd: outside the ports,
%% outside any call's timeout and the py_semaphore budget, with progress in the logs and a deadline of
%% its own), activating one in the default pool's ports, and the start-up environment every port gets
%% (PROTOCOL.md §3.15: ERLANG_PYTHON_VENV, ERLANG_PYTHON_SANDBOX).
%%
%% Per port, not per context: sys.path belongs to the port's interpreter. activate_venv/1 acts at once
%% in every port of the default pool (so also in the explicit contexts and named pools that live there)
%% and is remembered for their restarts; a named pool started with its own venv
%% (py_context_router:start_pool/3 with #{venv => Path}, py_pool_ports) has ports of its own that start
%% with that venv and are never touched by activate_venv/1. The Python half is pylib/erlang/_venv.py.
%%
%% State: the active venv of the default pool is the row {venv_active, Path | none} of py_contexts
%% (owned by the application's top supervisor, so it goes with the application); before any
%% activate/deactivate the application env `venv` (a path, or undefined) decides.
-module(py_venv).

%% API.
-export([ensure/2]).
-export([ensure/3]).
-export([activate/1]).
-export([deactivate/0]).
-export([info/0]).
-export([info/1]).
-export([check/1]).
-export([port_env/1]).
-export([default_venv/0]).

-export_type([ensure_opt/0]).

-type ensure_opt() :: {installer, pip | uv} | force | {extras, [string() | binary()]}
	| {python, file:filename_all()} | {timeout, pos_integer()} | {activate, boolean()}.

-define(TAB, py_contexts).
-define(ROW, venv_active).
%% How long activating or deactivating may take in each port (a port whose first context is busy with a
%% long request answers when it is free), and checking a venv on one.
-define(APPLY_TIMEOUT, 30000).
%% The default bound of a whole ensure_venv (creating the venv and installing into it).
-define(ENSURE_TIMEOUT, 600000).
%% Where ensure remembers what it installed: a hash of the dependency file (and extras).
-define(MARKER, ".erlang_python_deps").

-define(ACTIVATE_CODE, <<"import erlang._venv as _v\n_v.result(_v.activate, path, keep)">>).
-define(DEACTIVATE_CODE, <<"import erlang._venv as _v\n_v.deactivate()">>).
-define(INFO_CODE, <<"import erlang._venv as _v\n_v.info()">>).
-define(CHECK_CODE, <<"import erlang._venv as _v\n_v.result(lambda p: _v.check(p)[0], path)">>).
-define(INTERPRETER_CODE, <<"import erlang._venv as _v\n_v.interpreter()">>).

%% API.

%% Creates the venv at Path if it does not exist, installs DepsFile into it (requirements.txt, or a
%% pyproject.toml: an editable install of its directory), and activates it in the default pool.
-spec ensure(file:filename_all(), file:filename_all()) -> ok | {error, term()}.
ensure(Path, DepsFile) ->
	ensure(Path, DepsFile, []).

%% Options: {installer, pip | uv} (default: uv when it is on the PATH, else pip); force (recreate the
%% venv); {extras, [Name]} (pyproject.toml only); {python, Exe} (the interpreter that creates the venv;
%% default the one the ports embed); {timeout, Ms} (the whole operation, default 10 minutes);
%% {activate, false} (create and install only, e.g. for a pool's venv).
%%
%% The install runs again only when the dependency file (or the extras) changed since the last
%% successful one; force recreates the venv from scratch.
-spec ensure(file:filename_all(), file:filename_all(), [ensure_opt()]) -> ok | {error, term()}.
ensure(Path0, DepsFile0, Opts) when is_list(Opts) ->
	case parse_opts(Opts, #{installer => auto, force => false, extras => [], python => default,
			timeout => ?ENSURE_TIMEOUT, activate => true}) of
		{ok, O = #{timeout := Timeout}} ->
			Deadline = erlang:monotonic_time(millisecond) + Timeout,
			Path = abs_path(Path0),
			DepsFile = abs_path(DepsFile0),
			%% One ensure per venv at a time on this node (a second one waits for the first, within its
			%% own timeout, then finds the venv up to date).
			Lock = {{?MODULE, Path}, self()},
			case global:trans(Lock, fun() -> ensure_locked(Path, DepsFile, O, Deadline) end, [node()],
					lock_retries(Timeout, 0, 0)) of
				aborted -> {error, {busy, Path}};
				Result -> Result
			end;
		{error, _} = Error ->
			Error
	end.

%% Activates the venv at Path in every port of the default pool, now and after their restarts. A
%% venv already active there is replaced. Errors: {not_a_venv, Path} (no pyvenv.cfg),
%% {python_version_mismatch, VenvVersion, PortVersion}, {no_site_packages, Path, PortVersion}.
-spec activate(file:filename_all()) -> ok | {error, term()}.
activate(Path0) ->
	activate(Path0, ?APPLY_TIMEOUT).

%% Timeout: for each step in every port (ensure passes what is left of its own deadline).
activate(Path0, Timeout) ->
	Path = abs_path(Path0),
	case check(Path, Timeout) of
		{ok, _} ->
			Previous = default_venv(),
			ok = set_default(Path),
			Keep = py_import:all_paths(),
			case apply_default(?ACTIVATE_CODE, #{path => Path, keep => Keep}, Timeout) of
				ok ->
					log(notice, "activated ~ts in the default pool", [Path], Path),
					ok;
				{error, _} = Error ->
					%% Back to what was there, everywhere.
					ok = set_default(Previous),
					_ = case Previous of
						none -> apply_default(?DEACTIVATE_CODE, #{});
						_ -> apply_default(?ACTIVATE_CODE, #{path => Previous, keep => Keep})
					end,
					Error
			end;
		{error, _} = Error ->
			Error
	end.

%% Deactivates the default pool's venv: its entries leave sys.path, sys.prefix and the environment
%% are restored (modules already imported from it stay imported). ok also when none is active.
-spec deactivate() -> ok | {error, term()}.
deactivate() ->
	case py_router:config() of
		undefined ->
			{error, not_started};
		_ ->
			Was = default_venv(),
			ok = set_default(none),
			case apply_default(?DEACTIVATE_CODE, #{}) of
				ok ->
					_ = Was =/= none andalso log(notice, "deactivated ~ts in the default pool", [Was], Was),
					ok;
				{error, _} = Error ->
					Error
			end
	end.

%% The venv of the port that serves the calling process: {ok, none}, or {ok, #{<<"active">> => true,
%% <<"venv_path">>, <<"site_packages">>, <<"python">>, <<"sys_prefix">>}} (binary keys, as the reference
%% docs match them).
-spec info() -> {ok, map() | none} | {error, term()}.
info() ->
	py_request:run(eval, self(), {undefined, ?INFO_CODE, #{}}, ?APPLY_TIMEOUT, true).

%% The same for a context (a py_context pid) or a named pool (one of its contexts).
-spec info(pid() | atom()) -> {ok, map() | none} | {error, term()}.
info(Ctx) when is_pid(Ctx) ->
	py_request:run(eval, {ctx, Ctx}, {undefined, ?INFO_CODE, #{}}, ?APPLY_TIMEOUT, true);
info(default) ->
	info();
info(Pool) when is_atom(Pool) ->
	case py_context_router:pool_context(Pool) of
		{ok, Ctx} -> info(Ctx);
		{error, _} = Error -> Error
	end.

%% Whether Path is a venv the ports' Python can use (checked by a port of the default pool):
%% {ok, AbsolutePath} or the error of activate/1.
-spec check(file:filename_all()) -> {ok, binary()} | {error, term()}.
check(Path0) ->
	check(Path0, ?APPLY_TIMEOUT).

check(Path0, Timeout) ->
	Path = abs_path(Path0),
	case py_request:run(eval, {slot, 1, 0}, {undefined, ?CHECK_CODE, #{path => Path}}, Timeout, true) of
		{ok, {<<"ok">>, Abs}} -> {ok, Abs};
		{ok, {<<"error">>, Reason, Detail}} -> {error, venv_error(Reason, Detail)};
		{error, _} = Error -> Error
	end.

%% The start-up environment of a port (py_port, every start of its OS process): the venv it activates
%% while importing `erlang` and whether it installs the sandbox. Opts are the port's options: a pool's
%% own ports carry venv (a path or none) and sandbox; the default pool's follow default_venv/0 and the
%% application env `sandbox`.
-spec port_env(map()) -> [{string(), string() | false}].
port_env(Opts) ->
	Venv = case maps:find(venv, Opts) of
		{ok, V} -> V;
		error -> default_venv()
	end,
	Sandbox = maps:get(sandbox, Opts, application:get_env(erlang_python, sandbox, false)),
	[{"ERLANG_PYTHON_VENV", case Venv of none -> false; _ -> unicode:characters_to_list(Venv) end},
	 {"ERLANG_PYTHON_SANDBOX", case Sandbox of true -> "1"; _ -> false end}].

%% The venv the default pool's ports run with (none: no venv).
-spec default_venv() -> binary() | none.
default_venv() ->
	try ets:lookup(?TAB, ?ROW) of
		[{_, Path}] -> Path;
		[] -> env_venv()
	catch error:badarg ->
		env_venv()
	end.

%% Internal: ensure.

ensure_locked(Path, DepsFile, O = #{force := Force}, Deadline) ->
	T0 = erlang:monotonic_time(millisecond),
	Result = maybe_chain([
		fun() -> deps_kind(DepsFile, O) end,
		fun(_) -> clear_if_forced(Path, Force) end,
		fun(_) -> create_if_missing(Path, O, Deadline) end,
		fun(_) -> install_if_changed(Path, DepsFile, O, Deadline) end,
		fun(_) ->
			case maps:get(activate, O) of
				%% Within the ensure's own deadline (its timeout covers the whole operation).
				true ->
					case Deadline - erlang:monotonic_time(millisecond) of
						Left when Left > 0 -> activate(Path, min(Left, ?APPLY_TIMEOUT));
						_ -> {error, {timeout, activate}}
					end;
				false -> ok
			end
		end
	]),
	_ = Result =:= ok andalso log(notice, "~ts ready in ~b ms", [Path, erlang:monotonic_time(millisecond) - T0], Path),
	Result.

%% How many times global:trans may retry the lock so that its sleeps (at most 250 ms, doubling up to
%% 8 s each: global's random_sleep/1) stay within Timeout; at least once.
lock_retries(Timeout, Times, Slept) ->
	Next = Slept + min(8000, (1 bsl (Times + 1)) * 1000 div 8),
	case Next > Timeout of
		true -> max(1, Times);
		false -> lock_retries(Timeout, Times + 1, Next)
	end.

%% Runs the steps in order, each given the previous one's value ({ok, V} or ok); stops at an error.
maybe_chain([First | Rest]) ->
	lists:foldl(fun
		(Step, {ok, V}) -> Step(V);
		(Step, ok) -> Step(ok);
		(_, Error) -> Error
	end, First(), Rest).

deps_kind(DepsFile, #{extras := Extras}) ->
	Kind = case filename:basename(DepsFile) of
		<<"pyproject.toml">> -> pyproject;
		_ -> requirements
	end,
	case filelib:is_regular(DepsFile) of
		false -> {error, {no_such_file, DepsFile}};
		true when Kind =:= requirements, Extras =/= [] -> {error, {extras_need_pyproject, DepsFile}};
		true -> {ok, Kind}
	end.

%% force: the old venv goes, but only a directory that is one (never an arbitrary tree).
clear_if_forced(_Path, false) ->
	ok;
clear_if_forced(Path, true) ->
	case is_venv(Path) of
		true ->
			log(notice, "removing ~ts (force)", [Path], Path),
			case file:del_dir_r(Path) of
				ok -> ok;
				{error, Why} -> {error, {venv_remove_failed, Path, Why}}
			end;
		false ->
			ok
	end.

create_if_missing(Path, O, Deadline) ->
	case is_venv(Path) of
		true ->
			ok;
		false ->
			case filelib:is_dir(Path) andalso file:list_dir(Path) of
				{ok, [_ | _]} ->
					%% Something else lives there: never written over.
					{error, {not_a_venv, Path}};
				_ ->
					case {installer(O), python(O)} of
						{{ok, Installer}, {ok, Python}} ->
							log(notice, "creating ~ts with ~ts (~ts)", [Path, Python, installer_name(Installer)], Path),
							{Exe, Args} = case Installer of
								pip -> {Python, ["-m", "venv", Path]};
								{uv, Uv} -> {Uv, ["venv", "--python", Python, Path]}
							end,
							case py_venv_cmd:run(Exe, Args, venv_create_failed, cmd_opts(Path, Deadline)) of
								{ok, _} -> ok;
								{error, _} = Error -> Error
							end;
						{{error, _} = Error, _} ->
							Error;
						{_, {error, _} = Error} ->
							Error
					end
			end
	end.

install_if_changed(Path, DepsFile, O = #{extras := Extras}, Deadline) ->
	{ok, Kind} = deps_kind(DepsFile, O),
	{ok, Content} = file:read_file(DepsFile),
	%% A change detector, not a security check: erlang:md5 needs no crypto application.
	Stamp = binary:encode_hex(erlang:md5(term_to_binary({Kind, Content, Extras}))),
	Marker = filename:join(Path, ?MARKER),
	case file:read_file(Marker) of
		{ok, Stamp} ->
			log(notice, "~ts is up to date with ~ts", [Path, DepsFile], Path),
			ok;
		_ ->
			case installer(O) of
				{ok, Installer} ->
					VenvPython = filename:join([Path, "bin", "python"]),
					Target = case Kind of
						requirements -> ["-r", DepsFile];
						pyproject -> ["-e", editable_target(DepsFile, Extras)]
					end,
					{Exe, Args} = case Installer of
						pip -> {VenvPython, ["-m", "pip", "install", "--disable-pip-version-check" | Target]};
						{uv, Uv} -> {Uv, ["pip", "install", "--python", VenvPython | Target]}
					end,
					log(notice, "installing ~ts into ~ts (~ts)", [DepsFile, Path, installer_name(Installer)], Path),
					case py_venv_cmd:run(Exe, Args, install_failed, cmd_opts(Path, Deadline)) of
						{ok, _} ->
							_ = file:write_file(Marker, Stamp),
							ok;
						{error, _} = Error ->
							Error
					end;
				{error, _} = Error ->
					Error
			end
	end.

%% pip/uv install -e Dir[extra1,extra2].
editable_target(DepsFile, []) ->
	filename:dirname(DepsFile);
editable_target(DepsFile, Extras) ->
	iolist_to_binary([filename:dirname(DepsFile), "[", lists:join(",", [bin(E) || E <- Extras]), "]"]).

cmd_opts(Path, Deadline) ->
	#{deadline => Deadline, venv => Path,
	  %% The command sees no venv or Python path of the VM's environment, and never prompts.
	  env => [{"VIRTUAL_ENV", false}, {"PYTHONPATH", false}, {"PYTHONHOME", false},
		{"PIP_DISABLE_PIP_VERSION_CHECK", "1"}, {"PIP_NO_INPUT", "1"}]}.

installer(#{installer := pip}) ->
	{ok, pip};
installer(#{installer := uv}) ->
	case os:find_executable("uv") of
		false -> {error, {installer_not_found, uv}};
		Uv -> {ok, {uv, Uv}}
	end;
installer(#{installer := auto}) ->
	case os:find_executable("uv") of
		false -> {ok, pip};
		Uv -> {ok, {uv, Uv}}
	end.

installer_name(pip) -> "pip";
installer_name({uv, Uv}) -> Uv.

%% The interpreter that creates the venv: the option, else the one the ports embed (same version, so
%% the venv's site-packages is the one the ports look for).
python(#{python := default}) ->
	case py_request:run(eval, {slot, 1, 0}, {undefined, ?INTERPRETER_CODE, #{}}, ?APPLY_TIMEOUT, true) of
		{ok, Exe} when is_binary(Exe) -> {ok, Exe};
		{error, not_started} -> {error, {python_not_found, "the application is not started: give {python, Exe}"}};
		{error, Why} -> {error, {python_not_found, Why}}
	end;
python(#{python := Exe0}) ->
	Exe = bin(Exe0),
	Found = case filename:pathtype(Exe) of
		absolute -> filelib:is_regular(Exe) andalso Exe;
		_ -> os:find_executable(binary_to_list(Exe))
	end,
	case Found of
		false -> {error, {python_not_found, Exe}};
		F -> {ok, bin(F)}
	end.

parse_opts([], Acc) ->
	{ok, Acc};
parse_opts([force | Rest], Acc) ->
	parse_opts(Rest, Acc#{force => true});
parse_opts([{installer, I} | Rest], Acc) when I =:= pip; I =:= uv ->
	parse_opts(Rest, Acc#{installer => I});
parse_opts([{extras, Extras} | Rest], Acc) when is_list(Extras) ->
	case lists:all(fun(E) -> is_binary(E) orelse io_lib:printable_unicode_list(E) orelse is_atom(E) end, Extras) of
		true -> parse_opts(Rest, Acc#{extras => [bin(E) || E <- Extras]});
		false -> {error, {bad_option, {extras, Extras}}}
	end;
parse_opts([{python, Exe} | Rest], Acc) when is_binary(Exe); is_list(Exe) ->
	parse_opts(Rest, Acc#{python => Exe});
parse_opts([{timeout, T} | Rest], Acc) when is_integer(T), T > 0 ->
	parse_opts(Rest, Acc#{timeout => T});
parse_opts([{activate, B} | Rest], Acc) when is_boolean(B) ->
	parse_opts(Rest, Acc#{activate => B});
parse_opts([Bad | _], _) ->
	{error, {bad_option, Bad}}.

is_venv(Path) ->
	filelib:is_regular(filename:join(Path, "pyvenv.cfg")).

%% Internal: activation.

set_default(Path) ->
	try
		true = ets:insert(?TAB, {?ROW, Path}),
		ok
	catch error:badarg ->
		ok
	end.

env_venv() ->
	case application:get_env(erlang_python, venv) of
		{ok, Path} when is_binary(Path); is_list(Path) -> abs_path(Path);
		_ -> none
	end.

%% Runs Code in every port of the default pool, all at once (waiting for a port that is restarting: it
%% would otherwise miss the change if it read its environment before it); the first error, if any.
%% Context index 0 of each: every context of a port shares its sys.path.
apply_default(Code, Locals) ->
	apply_default(Code, Locals, ?APPLY_TIMEOUT).

apply_default(Code, Locals, Timeout) ->
	case py_router:num_slots() of
		0 ->
			{error, not_started};
		N ->
			Results = py_request:eval_on_slots(lists:seq(1, N), {undefined, Code, Locals}, Timeout, true),
			case [E || E <- lists:map(fun outcome/1, Results), E =/= ok] of
				[] -> ok;
				[First | _] -> First
			end
	end.

outcome({ok, {<<"error">>, Reason, Detail}}) -> {error, venv_error(Reason, Detail)};
outcome({ok, _}) -> ok;
outcome(ok) -> ok;
outcome({error, _} = Error) -> Error.

venv_error(<<"not_a_venv">>, [Path]) -> {not_a_venv, Path};
venv_error(<<"python_version_mismatch">>, [Venv, Port]) -> {python_version_mismatch, Venv, Port};
venv_error(<<"no_site_packages">>, [Path, Version]) -> {no_site_packages, Path, Version};
venv_error(Reason, Detail) -> {venv_error, Reason, Detail}.

log(Level, Format, Args, Path) ->
	logger:log(Level, "erlang_python: venv: " ++ Format, Args, #{domain => [erlang_python, venv], venv => Path}).

abs_path(Path) ->
	bin(filename:absname(bin(Path))).

bin(B) when is_binary(B) -> B;
bin(A) when is_atom(A) -> atom_to_binary(A, utf8);
bin(L) when is_list(L) -> unicode:characters_to_binary(L).
