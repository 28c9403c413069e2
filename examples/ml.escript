#!/usr/bin/env escript
%%! -pa _build/default/lib/erlang_python/ebin
%% Machine learning with real PyPI packages: the script makes a venv and pip-installs scikit-learn
%% into it (once, ~100 MB; later runs reuse it), trains a classifier on the digits dataset scikit-learn
%% ships (nothing is downloaded at run time), and serves predictions from a pool of contexts to many
%% concurrent Erlang processes, printing accuracy and requests/s. Run from the repository root:
%%   escript examples/ml.escript
%% EP_ML_VENV chooses the venv directory (default _build/examples/ml-venv); EP_PYTHON the interpreter
%% that makes it (default: the one beside the python3-config the port was built with; it must be the
%% CPython the port embeds, same minor version).
-define(CLIENTS, 40).

main(_) ->
	ok = logger:set_primary_config(level, notice),
	Venv = filename:absname(os:getenv("EP_ML_VENV", "_build/examples/ml-venv")),
	SitePackages = ensure_venv(Venv),
	ok = application:set_env(erlang_python, paths, [SitePackages, examples_python()]),
	{ok, _} = application:ensure_all_started(erlang_python),
	{ok, PortVersion} = py:version(),
	check_same_python(PortVersion, SitePackages),
	{ok, SkVersion} = py:eval(<<"__import__('sklearn').__version__">>),
	io:format("Python ~s in the port; scikit-learn ~s from ~s~n", [PortVersion, SkVersion, SitePackages]),

	%% A pool of contexts spread over the port processes; each port trains the model once.
	PoolSize = 2 * erlang:system_info(schedulers),
	{ok, Contexts} = py_context_router:start_pool(ml, PoolSize),
	T0 = erlang:monotonic_time(millisecond),
	[{ok, TrainRows} | _] = [py_context:call(C, ml_model, warm_up, [], #{}, 120000) || C <- Contexts],
	io:format("trained LogisticRegression on ~p rows of load_digits() in every port (~p ms)~n",
		[TrainRows, erlang:monotonic_time(millisecond) - T0]),
	{ok, {Rows, Labels}} = py:call(ml, ml_model, test_set, []),

	%% ?CLIENTS processes share the held-out rows and ask for one prediction per request.
	Parent = self(),
	Work = lists:zip(Rows, Labels),
	Shares = split(Work, ?CLIENTS),
	T1 = erlang:monotonic_time(microsecond),
	Pids = [spawn_link(fun() -> Parent ! {self(), [{predict(Row), Label} || {Row, Label} <- Share]} end)
		|| Share <- Shares],
	Answers = lists:append([receive {Pid, A} -> A after 120000 -> error(client_timeout) end || Pid <- Pids]),
	Seconds = (erlang:monotonic_time(microsecond) - T1) / 1.0e6,
	Correct = length([ok || {P, L} <- Answers, P =:= L]),
	Accuracy = Correct / length(Answers),
	io:format("~p requests from ~p concurrent Erlang processes over a pool of ~p contexts: ~.1f requests/s~n",
		[length(Answers), length(Pids), PoolSize, length(Answers) / Seconds]),
	io:format("accuracy on the held-out set: ~.3f (~p/~p)~n", [Accuracy, Correct, length(Answers)]),
	true = length(Answers) =:= length(Rows),
	true = Accuracy > 0.9 orelse begin io:format("accuracy too low~n"), halt(1) end,
	ok = py_context_router:stop_pool(ml),
	ok = application:stop(erlang_python).

%% Compiled packages only load into the interpreter they were built for: site-packages names it
%% (lib/python3.X/site-packages).
check_same_python(PortVersion, SitePackages) ->
	[Major, Minor | _] = string:split(binary_to_list(PortVersion), ".", all),
	case string:find(SitePackages, "/python" ++ Major ++ "." ++ Minor ++ "/") of
		nomatch ->
			io:format("the venv ~s is not for the port's Python ~s: set EP_PYTHON to python~s.~s~n",
				[SitePackages, PortVersion, Major, Minor]),
			halt(1);
		_ -> ok
	end.

predict(Row) ->
	{ok, Digit} = py:call(ml, ml_model, predict, [Row]),
	Digit.

split(List, N) ->
	Size = max(1, (length(List) + N - 1) div N),
	chunks(List, Size).

chunks([], _) -> [];
chunks(List, Size) when length(List) =< Size -> [List];
chunks(List, Size) -> {H, T} = lists:split(Size, List), [H | chunks(T, Size)].

examples_python() ->
	filename:absname(filename:join(filename:dirname(escript:script_name()), "python")).

%% The venv's site-packages, creating the venv and installing scikit-learn if it is missing.
ensure_venv(Venv) ->
	Python = filename:join([Venv, "bin", "python"]),
	case filelib:is_file(Python) andalso run(Python, ["-c", "import sklearn"]) of
		{0, _} -> ok;
		_ ->
			Base = base_python(),
			io:format("creating ~s with ~s and installing scikit-learn (once)...~n", [Venv, Base]),
			{0, _} = run(Base, ["-m", "venv", Venv]),
			{0, _} = run(filename:join([Venv, "bin", "pip"]), ["install", "--quiet", "--disable-pip-version-check", "scikit-learn"])
	end,
	{0, Out} = run(Python, ["-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]),
	string:trim(Out).

%% EP_PYTHON, or the interpreter beside the python3-config the port was built with
%% (erl/priv/python_config: /usr/bin/python3-config -> /usr/bin/python3), or python3.
base_python() ->
	Root = filename:dirname(filename:dirname(filename:absname(escript:script_name()))),
	Beside = case file:read_file(filename:join([Root, "erl", "priv", "python_config"])) of
		{ok, Conf} -> string:replace(string:trim(binary_to_list(Conf)), "-config", "", trailing);
		_ -> ""
	end,
	case {os:getenv("EP_PYTHON"), filelib:is_regular(lists:flatten(Beside))} of
		{false, true} -> lists:flatten(Beside);
		{false, false} -> os:find_executable("python3");
		{Python, _} -> os:find_executable(Python)
	end.

%% Runs a program without a shell; returns {ExitStatus, Output}. Bounded by the program itself
%% (pip has its own network timeouts).
run(Program, Args) ->
	Port = open_port({spawn_executable, Program}, [{args, Args}, exit_status, stderr_to_stdout, binary]),
	collect(Port, []).

collect(Port, Acc) ->
	receive
		{Port, {data, D}} -> collect(Port, [D | Acc]);
		{Port, {exit_status, S}} ->
			Out = iolist_to_binary(lists:reverse(Acc)),
			S =/= 0 andalso io:format("~s", [Out]),
			{S, binary_to_list(Out)}
	after 900000 -> error(subprocess_timeout)
	end.
