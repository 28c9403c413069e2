%% Named pools with port OS processes of their own: a pool started with a venv, with another sandbox
%% setting than the default pool's ports, or with a Python of its own (py_context_router:start_pool/3
%% with an options map, or the pool_pythons application env).
%%
%% Why ports of their own: sys.path and the sandbox's audit hook belong to a port's interpreter, which
%% all its contexts share. A pool whose members live on the default pool's ports would see (and change)
%% what those see; so such a pool gets `ports' slots beyond the default pool's (numbered after them,
%% never reused), started with its venv and sandbox (py_venv:port_env/1, PROTOCOL.md §3.15), and its
%% members are explicit contexts created only there (py_context picks among slots/1).
%%
%% A Python per pool (issue 8): `python' is a NAME, the port built for that CPython in
%% erl/priv/ports/NAME/erlang_python_port (`EP_PORT_NAME=NAME PYTHON_CONFIG=... sh tools/build_port.sh';
%% tools/pythons.sh builds python3.13 and python3.13t), or an absolute path to a port executable. The
%% pool's python is its `python' option, else the pool_pythons application env (#{Pool => Python}).
%%
%% Lifetime: the pool's port owners are children of the pool's own supervisor (py_context_pool_sup
%% puts child_specs/1 before the members), so they start before the members, restart like any port
%% (with backoff), and stop with the pool. The pool's slots and port options are the row
%% {{pool_ports, Pool}, Slots, PortOpts} of py_contexts while the pool exists.
-module(py_pool_ports).

%% API.
-export([start_pool/3]).
-export([child_specs/1]).
-export([slots/1]).
-export([all_slots/0]).
-export([slot_of/1]).
-export([release/1]).
-export([python_of/2]).
-export([executable/1]).

-export_type([pool_opts/0]).
-export_type([python/0]).

-type python() :: atom() | string() | binary().
-type pool_opts() :: #{mode => py_context:context_mode(), venv => file:filename_all(), sandbox => boolean(),
	ports => pos_integer(), python => python()}.

-define(TAB, py_contexts).
-define(KEY(Pool), {pool_ports, Pool}).

%% API.

%% Starts named pool Pool of Size contexts. Options: mode (worker); venv (a venv directory: the pool's
%% Python sees its packages, the default pool does not); sandbox (true | false; default the application
%% env `sandbox'); ports (how many OS processes the pool's contexts are spread over; default
%% min(Size, num_ports)). A pool gets ports of its own when it names a venv or ports, or a sandbox setting
%% other than the default ports'; otherwise it lives on the default pool's ports like start_pool/3 with a
%% mode.
-spec start_pool(atom(), pos_integer(), pool_opts()) -> {ok, [pid()]} | {error, term()}.
start_pool(default, _Size, _Opts) ->
	{error, {bad_option, default,
		"the default pool is the ports' own contexts: use py:activate_venv/1 and the sandbox application env"}};
start_pool(Pool, Size, Opts) when is_atom(Pool), is_integer(Size), Size > 0, is_map(Opts) ->
	Opts1 = case python_of(Pool, Opts) of
		undefined -> Opts;
		Python -> Opts#{python => Python}
	end,
	case validate(maps:to_list(Opts1), Size, #{}) of
		{ok, #{own := false, mode := Mode}} ->
			py_context_router:start_pool(Pool, Size, Mode);
		{ok, #{mode := Mode} = V} ->
			case ets:member(?TAB, {pool, Pool}) of
				true ->
					{error, {already_started, Pool}};
				false ->
					start_own(Pool, Size, Mode, V)
			end;
		{error, _} = Error ->
			Error
	end.

%% The port owners of Pool's own slots, for its supervisor ([] for a pool on the default ports).
-spec child_specs(atom()) -> [supervisor:child_spec()].
child_specs(Pool) ->
	case lookup(Pool) of
		{Slots, PortOpts} -> [py_port:child_spec(Slot, PortOpts) || Slot <- Slots];
		none -> []
	end.

%% Pool's own slots ([] for the default pool and pools on its ports).
-spec slots(atom() | undefined) -> [pos_integer()].
slots(Pool) ->
	case lookup(Pool) of
		{Slots, _} -> Slots;
		none -> []
	end.

%% The first of Pool's own slots, or none (the pool uses the default ports).
-spec slot_of(atom() | undefined) -> {ok, pos_integer()} | none.
slot_of(Pool) ->
	case slots(Pool) of
		[Slot | _] -> {ok, Slot};
		[] -> none
	end.

%% The python a pool asks for: Opts's python, else the pool_pythons application env, else undefined.
-spec python_of(atom(), map()) -> python() | undefined.
python_of(Pool, Opts) ->
	case maps:find(python, Opts) of
		{ok, P} -> P;
		error -> maps:get(Pool, application:get_env(erlang_python, pool_pythons, #{}), undefined)
	end.

%% The port executable for a python, if it is built.
-spec executable(python()) -> {ok, file:filename()} | {error, {python_not_built, python(), file:filename()}}.
executable(Python) ->
	Name = case Python of
		A when is_atom(A) -> atom_to_list(A);
		B when is_binary(B) -> binary_to_list(B);
		L when is_list(L) -> L
	end,
	Exe = case filename:pathtype(Name) of
		absolute -> Name;
		_ -> filename:join([code:priv_dir(erlang_python), "ports", Name, "erlang_python_port"])
	end,
	%% A name is one path component: "../x" is neither a name nor an absolute path.
	IsName = filename:pathtype(Name) =:= absolute orelse not lists:member($/, Name),
	case IsName andalso filelib:is_regular(Exe) of
		true -> {ok, Exe};
		false -> {error, {python_not_built, Python, Exe}}
	end.

%% Every slot: the default pool's, then the pools' own.
-spec all_slots() -> [pos_integer()].
all_slots() ->
	Own = try ets:select(?TAB, [{{?KEY('_'), '$1', '_'}, [], ['$1']}])
		catch error:badarg -> []
		end,
	lists:seq(1, py_router:num_slots()) ++ lists:sort(lists:append(Own)).

%% Internal.

start_own(_Pool, _Size, Mode, _) when Mode =/= worker, Mode =/= owngil ->
	{error, {mode_not_supported, Mode, "a pool with ports of its own runs worker or owngil contexts"}};
start_own(Pool, Size, Mode, #{venv := Venv, sandbox := Sandbox, ports := NumPorts} = V) ->
	case py_router:config() of
		undefined ->
			{error, not_started};
		_ ->
			Slots = take_slots(NumPorts),
			#{port_opts := Base} = erlang_python_sup:layout(),
			%% One start-up context per port (the members are explicit contexts): index 0 serves
			%% py_import's registry updates.
			PortOpts0 = Base#{contexts => 1, venv => Venv, sandbox => Sandbox},
			PortOpts = case V of
				#{port_executable := Exe} -> PortOpts0#{port_executable => Exe};
				_ -> PortOpts0
			end,
			%% insert_new: of two starts of Pool at once, only the first owns the row; the other must
			%% neither replace it (the first pool's supervisor reads it) nor delete it on its way out.
			case ets:insert_new(?TAB, {?KEY(Pool), Slots, PortOpts}) andalso
					py_context_pool_sup:start_pool(Pool, Size, Mode) of
				false ->
					free(Slots),
					{error, {already_started, Pool}};
				{ok, _} ->
					logger:notice("erlang_python: pool ~p: ~b contexts on ports ~w of its own (venv ~ts, sandbox ~p, port ~ts)",
						[Pool, Size, Slots, case Venv of none -> <<"none">>; _ -> Venv end, Sandbox,
						 maps:get(port_executable, PortOpts, <<"default">>)],
						#{domain => [erlang_python]}),
					{ok, py_context_router:contexts(Pool)};
				{error, Why} ->
					ok = release(Pool),
					%% The pool's supervisor registered the pool before its members failed (the row
					%% is ours: insert_new above), so a later start is not taken for a second one.
					_ = ets:delete(?TAB, {pool, Pool}),
					%% owngil on ports whose Python does not offer it: the members' own error, not the
					%% supervisor's wrapping of it.
					case mode_refusal(Why) of
						none -> {error, Why};
						Refusal -> {error, Refusal}
					end
			end
	end.

mode_refusal({mode_not_supported, _, _} = R) -> R;
mode_refusal(T) when is_tuple(T) -> mode_refusal(tuple_to_list(T));
mode_refusal([H | T]) ->
	case mode_refusal(H) of
		none -> mode_refusal(T);
		R -> R
	end;
mode_refusal(_) -> none.

%% Pool's slots go back to be reused by the next pool with ports of its own (py_context_pool_sup calls
%% this once the pool's port owners have stopped). Reuse bounds what a node that starts and stops such
%% pools for ever accumulates per slot number (a persistent_term key, py_stats counters, a ctx-id row)
%% by the most slots in use at once.
-spec release(atom()) -> ok.
release(Pool) ->
	case catch ets:take(?TAB, ?KEY(Pool)) of
		[{_, Slots, _}] -> free(Slots);
		_ -> ok
	end.

free(Slots) ->
	true = ets:insert(?TAB, [{{free_pool_slot, Slot}} || Slot <- Slots]),
	ok.

%% N slots: free ones first (lowest first; ets:take decides between two pools starting at once), then
%% new numbers after the last ever given. A reused slot's counters start again from zero; its ctx-id row
%% is kept, so context ids are still never reused on a slot.
take_slots(N) ->
	Free = lists:sort(ets:select(?TAB, [{{{free_pool_slot, '$1'}}, [], ['$1']}])),
	Reused = take_free(Free, N, []),
	lists:foreach(fun py_stats:reset_slot/1, Reused),
	case N - length(Reused) of
		0 ->
			Reused;
		Fresh ->
			Last = ets:update_counter(?TAB, next_pool_slot, {2, Fresh}, {next_pool_slot, py_router:num_slots()}),
			Reused ++ lists:seq(Last - Fresh + 1, Last)
	end.

take_free(_, 0, Acc) ->
	lists:reverse(Acc);
take_free([], _, Acc) ->
	lists:reverse(Acc);
take_free([Slot | Rest], N, Acc) ->
	case ets:take(?TAB, {free_pool_slot, Slot}) of
		[_] -> take_free(Rest, N - 1, [Slot | Acc]);
		[] -> take_free(Rest, N, Acc)
	end.

validate([], Size, Acc) ->
	Default = application:get_env(erlang_python, sandbox, false),
	Sandbox = maps:get(sandbox, Acc, Default),
	Own = maps:is_key(venv, Acc) orelse maps:is_key(ports, Acc) orelse maps:is_key(port_executable, Acc)
		orelse Sandbox =/= Default,
	{ok, Acc#{own => Own, mode => maps:get(mode, Acc, worker), sandbox => Sandbox,
		venv => maps:get(venv, Acc, none),
		ports => maps:get(ports, Acc, max(1, min(Size, py_router:num_slots())))}};
validate([{mode, Mode} | Rest], Size, Acc) when is_atom(Mode) ->
	validate(Rest, Size, Acc#{mode => Mode});
validate([{sandbox, B} | Rest], Size, Acc) when is_boolean(B) ->
	validate(Rest, Size, Acc#{sandbox => B});
validate([{ports, N} | Rest], Size, Acc) when is_integer(N), N > 0 ->
	validate(Rest, Size, Acc#{ports => N});
validate([{python, Python} | Rest], Size, Acc) when is_atom(Python); is_binary(Python); is_list(Python) ->
	case executable(Python) of
		{ok, Exe} -> validate(Rest, Size, Acc#{port_executable => Exe});
		{error, _} = Error -> Error
	end;
validate([{venv, Path} | Rest], Size, Acc) when is_binary(Path); is_list(Path) ->
	case py_venv:check(Path) of
		{ok, Abs} -> validate(Rest, Size, Acc#{venv => Abs});
		{error, _} = Error -> Error
	end;
validate([Bad | _], _, _) ->
	{error, {bad_option, Bad}}.

lookup(Pool) ->
	try ets:lookup(?TAB, ?KEY(Pool)) of
		[{_, Slots, PortOpts}] -> {Slots, PortOpts};
		[] -> none
	catch error:badarg ->
		none
	end.
