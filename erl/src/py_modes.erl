%% Execution modes (issue 8): what the port builds can give, and what they run in.
%%
%% Scope: py:execution_mode/0, py:execution_info/0 and py:subinterp_supported/0 (py.erl delegates
%% here). The facts come from each port's hello (PROTOCOL.md §4.1: build, gil, modes) and, for the GIL
%% state now, from the port itself: on a free-threaded build an extension module without free-threading
%% support turns the GIL back on when it is imported, after the hello.
%%
%% Choice where the reference docs contradict themselves (inventory-part1 §11 vs the migration guide):
%% execution_mode/0 answers free_threaded when the default pool's ports run a free-threaded build with
%% the GIL off (what the migration guide shows), else the configured context_mode (worker).
-module(py_modes).

-export([execution_mode/0]).
-export([execution_info/0]).
-export([subinterp_supported/0]).
-export([owngil_refusal/0]).

-type mode() :: worker | owngil | free_threaded.
-export_type([mode/0]).

%% free_threaded if every running port of the default pool runs a free-threaded build with the GIL
%% disabled now (asked: an extension imported since start-up may have turned it back on, and then this
%% says worker); otherwise the context_mode application env (default worker).
-spec execution_mode() -> mode().
execution_mode() ->
	case application:get_env(erlang_python, context_mode, worker) of
		worker ->
			Infos = execution_info(),
			case Infos =/= [] andalso lists:all(fun(#{build := B, gil := G}) -> B =:= free_threaded andalso G =:= disabled end, Infos) of
				true -> free_threaded;
				false -> worker
			end;
		Configured ->
			Configured
	end.

%% One map per running port of the default pool: slot, python, build, gil (asked now: enabled |
%% disabled | unknown if the port could not answer within 5 s) and gil_at_start (from the hello).
-spec execution_info() -> [#{slot := pos_integer(), python := binary(), build := atom(),
	gil := enabled | disabled | unknown, gil_at_start := enabled | disabled}].
execution_info() ->
	[#{slot => Slot, python => maps:get(python, H, <<>>), build => maps:get(build, H, gil),
	   gil => gil_now(Slot), gil_at_start => maps:get(gil, H, enabled)}
	 || #{status := up, slot := Slot, hello := H} <- infos()].

%% Whether owngil contexts can be created: every running port of the default pool lists owngil in its
%% hello modes (PROTOCOL.md §4.1: a GIL build of CPython >= 3.12; not 3.11, not free-threaded builds).
-spec subinterp_supported() -> boolean().
subinterp_supported() ->
	Modes = [maps:get(modes, H, []) || #{status := up, hello := H} <- infos()],
	Modes =/= [] andalso lists:all(fun(M) -> lists:member(owngil, M) end, Modes).

%% Why owngil is refused here: the text of {error, {mode_not_supported, owngil, Text}}.
-spec owngil_refusal() -> string().
owngil_refusal() ->
	Pythons = lists:usort([{maps:get(python, H, <<"?">>), maps:get(build, H, gil)}
		|| #{status := up, hello := H} <- infos()]),
	Seen = lists:join(", ", [io_lib:format("~ts (~s)", [V, B]) || {V, B} <- Pythons]),
	lists:flatten(["owngil needs ports built for a GIL CPython >= 3.12; the default pool runs ",
		case Seen of [] -> "no port"; _ -> Seen end]).

infos() ->
	[maps:put(slot, Slot, I) || Slot <- lists:seq(1, py_router:num_slots()), I <- [py_port:info(Slot)], is_map(I)].

gil_now(Slot) ->
	Code = <<"getattr(__import__('sys'), '_is_gil_enabled', lambda: True)()">>,
	case py_request:run(eval, {slot, Slot, 0}, {undefined, Code, #{}}, 5000, true) of
		{ok, true} -> enabled;
		{ok, false} -> disabled;
		_ -> unknown
	end.
