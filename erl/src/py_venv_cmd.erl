%% One OS command of the venv machinery (python -m venv, pip, uv), run outside the Python ports.
%%
%% Scope: spawning the command (no shell), logging its output line by line, keeping the last lines for
%% the error term, and making sure it ends: at its deadline, or when the calling process dies, its whole
%% process group is killed (the VM starts every port program as a session leader, so the group holds
%% pip's own children too).
%%
%% Bounds: the wait ends at the deadline; the output kept is the last ?TAIL_LINES lines of at most
%% ?LINE_BYTES bytes each; the watchdog process lives until the command ends or its caller dies.
-module(py_venv_cmd).

-export([run/4]).

-define(TAIL_LINES, 40).
-define(LINE_BYTES, 1024).

%% Runs Exe with Args. Opts: env ([{Name, Value | false}]), deadline (monotonic ms), step (an atom naming
%% the command in logs and errors), venv (the venv path, for the logs). {ok, Output} when it exits 0;
%% {error, {Step, ExitStatus, Output}} otherwise; {error, {timeout, Step}} at the deadline.
-spec run(file:filename_all(), [string() | binary()], atom(), map()) ->
	{ok, binary()} | {error, {atom(), integer(), binary()}} | {error, {timeout, atom()}}.
run(Exe, Args, Step, Opts) ->
	Deadline = maps:get(deadline, Opts),
	Meta = #{domain => [erlang_python, venv], venv => maps:get(venv, Opts, undefined), step => Step},
	logger:info("erlang_python: venv: running ~ts ~ts", [Exe, lists:join(" ", [to_list(A) || A <- Args])], Meta),
	Port = open_port({spawn_executable, Exe}, [{args, Args}, {env, maps:get(env, Opts, [])}, exit_status,
		stderr_to_stdout, binary, hide, in]),
	{os_pid, OsPid} = erlang:port_info(Port, os_pid),
	Caller = self(),
	Watchdog = spawn(fun() -> watchdog(Caller, OsPid) end),
	try
		collect(Port, OsPid, Step, Deadline, Meta, {0, []}, <<>>)
	after
		Watchdog ! {done, Caller}
	end.

%% The deadline is checked before each message: a receive's `after' never fires while output keeps
%% coming, so a command that writes faster than this loop reads would otherwise never time out.
collect(Port, OsPid, Step, Deadline, Meta, Tail, Partial) ->
	case remaining(Deadline) of
		0 -> timed_out(Port, OsPid, Step, Meta);
		Left -> collect(Port, OsPid, Step, Deadline, Meta, Tail, Partial, Left)
	end.

collect(Port, OsPid, Step, Deadline, Meta, Tail, Partial, Left) ->
	receive
		{Port, {data, Data}} ->
			%% Raw chunks, split here: the port's {line, N} mode drops a last line that has no newline
			%% after it, which is often the installer's error message.
			{Lines, Rest} = split_lines(<<Partial/binary, Data/binary>>),
			Tail1 = lists:foldl(fun(Line, T) ->
				logger:info("erlang_python: venv ~ts: ~ts", [Step, Line], Meta),
				keep(Line, T)
			end, Tail, Lines),
			%% A line longer than ?LINE_BYTES: only its first ?LINE_BYTES are kept (the rest of it is
			%% dropped as it comes), so a command that never writes a newline cannot grow this process.
			collect(Port, OsPid, Step, Deadline, Meta, Tail1, Rest);
		{Port, {exit_status, Status}} ->
			%% The last line, if the command ended without a newline after it, is output too.
			Tail1 = case Partial of
				<<>> -> Tail;
				_ -> logger:info("erlang_python: venv ~ts: ~ts", [Step, Partial], Meta), keep(Partial, Tail)
			end,
			exited(Step, Status, output(Tail1), Meta)
	after Left ->
		timed_out(Port, OsPid, Step, Meta)
	end.

exited(_Step, 0, Output, _Meta) ->
	{ok, Output};
exited(Step, Status, Output, Meta) ->
	logger:error("erlang_python: venv ~ts failed with exit status ~b:~n~ts", [Step, Status, Output], Meta),
	{error, {Step, Status, Output}}.

%% Kills the command and drops what it wrote that was not read: nothing of it stays in the caller's
%% mailbox (a closed port sends no more messages).
timed_out(Port, OsPid, Step, Meta) ->
	kill_group(OsPid),
	_ = catch port_close(Port),
	flush(Port),
	logger:error("erlang_python: venv ~ts did not finish in time; killed", [Step], Meta),
	{error, {timeout, Step}}.

flush(Port) ->
	receive
		{Port, _} -> flush(Port)
	after 0 ->
		ok
	end.

%% The complete lines of Bin, and what follows the last newline (at most ?LINE_BYTES of it; a line cut
%% there stays cut: the bytes after its first ?LINE_BYTES are dropped as they come, up to its newline).
split_lines(Bin) ->
	Parts = binary:split(Bin, <<"\n">>, [global]),
	{Lines, [Last]} = lists:split(length(Parts) - 1, Parts),
	{[cut(L) || L <- Lines], cut(Last)}.

%% The last ?TAIL_LINES lines, newest first, each cut to ?LINE_BYTES.
keep(Line, {N, Lines}) when N < ?TAIL_LINES ->
	{N + 1, [cut(Line) | Lines]};
keep(Line, {N, Lines}) ->
	{N, [cut(Line) | lists:droplast(Lines)]}.

cut(Line) when byte_size(Line) > ?LINE_BYTES -> binary:part(Line, 0, ?LINE_BYTES);
cut(Line) -> Line.

output({_, Lines}) ->
	iolist_to_binary(lists:join(<<"\n">>, lists:reverse(Lines))).

%% Kills the command's process group if its caller dies before it ends (the port closing would not stop
%% pip, which never reads its stdin).
watchdog(Caller, OsPid) ->
	MRef = erlang:monitor(process, Caller),
	receive
		{done, Caller} -> ok;
		{'DOWN', MRef, process, Caller, _} -> kill_group(OsPid)
	end.

%% SIGKILL to the process group OsPid leads, then to OsPid itself (in case it left the group). os:cmd
%% waits for kill(1) and leaves no message behind; its only arguments are integers. `-s KILL': dash's
%% kill (Debian's /bin/sh) refuses `-KILL --' ("Illegal number") and then kills nothing.
kill_group(OsPid) ->
	Pid = integer_to_list(OsPid),
	_ = os:cmd("kill -s KILL -- -" ++ Pid ++ " " ++ Pid ++ " 2>/dev/null"),
	ok.

to_list(B) when is_binary(B) -> unicode:characters_to_list(B);
to_list(L) -> L.

remaining(Deadline) ->
	max(0, Deadline - erlang:monotonic_time(millisecond)).
