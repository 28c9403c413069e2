%% The port's command line: a value that is not a whole number in its range is refused with the usage
%% text and exit status 2 (kExitUsage), instead of being read as 0 or as its leading digits; values in
%% range start the port (it sends its hello frame).
-module(py_port_args_SUITE).
-include_lib("common_test/include/ct.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1]).
-export([bad_numbers_refused/1, usage_names_every_option/1, good_numbers_accepted/1]).

all() -> [bad_numbers_refused, usage_names_every_option, good_numbers_accepted].

init_per_suite(Config) ->
	application:load(erlang_python),
	case os:getenv("EP_TEST_PORT") of
		Exe when is_list(Exe), Exe =/= "" -> [{exe, Exe} | Config];
		_ -> [{exe, filename:join(code:priv_dir(erlang_python), "erlang_python_port")} | Config]
	end.

end_per_suite(_Config) -> ok.

bad_numbers_refused(Config) ->
	Bad = [["--contexts", "0"], ["--contexts", "2x"], ["--contexts", "1025"], ["--contexts", ""],
	       ["--shm-keep", "abc"], ["--shm-keep", "-1"], ["--record-max", "0"], ["--record-max", "12k"],
	       ["--memory-limit", "-5"], ["--memory-limit", "1e9"], ["--spin-us", " 1"],
	       ["--pipe-size", "99999999999999999999999"], ["--max-out-frame", "10"],
	       ["--shm-regions", "0"], ["--cancel-stuck-ms", "0"], ["--no-such-option", "1"], ["--contexts"]],
	lists:foreach(fun(Args) ->
		case run(?config(exe, Config), Args) of
			{2, Out} -> true = has(Out, <<"usage: erlang_python_port">>);
			Other -> ct:fail({accepted, Args, Other})
		end
	end, Bad).

usage_names_every_option(Config) ->
	{2, Out} = run(?config(exe, Config), ["--bogus"]),
	lists:foreach(fun(Opt) -> true = has(Out, Opt) end,
		[<<"--memory-limit BYTES">>, <<"--shm-keep BYTES">>, <<"--record-max BYTES">>,
		 <<"--pipe-size BYTES">>, <<"--max-contexts N">>]).

%% In range: the port starts and says hello (its first frame), then exits when its stdin closes.
good_numbers_accepted(Config) ->
	Pylib = filename:join(code:priv_dir(erlang_python), "pylib"),
	P = open_port({spawn_executable, ?config(exe, Config)},
		[{args, ["--pylib", Pylib, "--contexts", "3", "--shm-keep", "0", "--memory-limit", "0",
		         "--record-max", "4096", "--spin-us", "0", "--max-contexts", "65536"]},
		 {packet, 4}, binary, exit_status, use_stdio]),
	receive
		{P, {data, Hello}} when byte_size(Hello) > 0 -> ok;
		{P, {exit_status, S}} -> ct:fail({exited, S})
	after 30000 -> ct:fail(no_hello)
	end,
	port_close(P).

run(Exe, Args) ->
	py_ct_helper:run_exe(Exe, Args).

has(Bin, Part) ->
	py_ct_helper:has(Bin, Part).
