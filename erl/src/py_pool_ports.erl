%% Named pools with port OS processes of their own: a pool started with a venv, or with another sandbox
%% setting than the default pool's ports (py_context_router:start_pool/3 with an options map).
%%
%% Why ports of their own: sys.path and the sandbox's audit hook belong to a port's interpreter, which
%% all its contexts share. A pool whose members live on the default pool's ports would see (and change)
%% what those see; so such a pool gets `ports' slots beyond the default pool's (numbered after them,
%% never reused), started with its venv and sandbox (py_venv:port_env/1, PROTOCOL.md §3.15), and its
%% members are explicit contexts created only there (py_context picks among slots/1).
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

-export_type([pool_opts/0]).

-type pool_opts() :: #{mode => py_context:context_mode(), venv => file:filename_all(), sandbox => boolean(),
	ports => pos_integer()}.

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
	case validate(maps:to_list(Opts), Size, #{}) of
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

%% Every slot: the default pool's, then the pools' own.
-spec all_slots() -> [pos_integer()].
all_slots() ->
	Own = try ets:select(?TAB, [{{?KEY('_'), '$1', '_'}, [], ['$1']}])
		catch error:badarg -> []
		end,
	lists:seq(1, py_router:num_slots()) ++ lists:sort(lists:append(Own)).

%% Internal.

start_own(_Pool, _Size, Mode, _) when Mode =/= worker ->
	{error, {mode_not_supported, Mode, "a pool with ports of its own runs worker contexts"}};
start_own(Pool, Size, Mode, #{venv := Venv, sandbox := Sandbox, ports := NumPorts}) ->
	case py_router:config() of
		undefined ->
			{error, not_started};
		_ ->
			Last = ets:update_counter(?TAB, next_pool_slot, {2, NumPorts},
				{next_pool_slot, py_router:num_slots()}),
			Slots = lists:seq(Last - NumPorts + 1, Last),
			#{port_opts := Base} = erlang_python_sup:layout(),
			%% One start-up context per port (the members are explicit contexts): index 0 serves
			%% py_import's registry updates.
			PortOpts = Base#{contexts => 1, venv => Venv, sandbox => Sandbox},
			true = ets:insert(?TAB, {?KEY(Pool), Slots, PortOpts}),
			case py_context_pool_sup:start_pool(Pool, Size, Mode) of
				{ok, _} ->
					logger:notice("erlang_python: pool ~p: ~b contexts on ports ~w of its own (venv ~ts, sandbox ~p)",
						[Pool, Size, Slots, case Venv of none -> <<"none">>; _ -> Venv end, Sandbox],
						#{domain => [erlang_python]}),
					{ok, py_context_router:contexts(Pool)};
				{error, _} = Error ->
					_ = ets:delete(?TAB, ?KEY(Pool)),
					Error
			end
	end.

validate([], Size, Acc) ->
	Default = application:get_env(erlang_python, sandbox, false),
	Sandbox = maps:get(sandbox, Acc, Default),
	Own = maps:is_key(venv, Acc) orelse maps:is_key(ports, Acc) orelse Sandbox =/= Default,
	{ok, Acc#{own => Own, mode => maps:get(mode, Acc, worker), sandbox => Sandbox,
		venv => maps:get(venv, Acc, none),
		ports => maps:get(ports, Acc, max(1, min(Size, py_router:num_slots())))}};
validate([{mode, Mode} | Rest], Size, Acc) when is_atom(Mode) ->
	validate(Rest, Size, Acc#{mode => Mode});
validate([{sandbox, B} | Rest], Size, Acc) when is_boolean(B) ->
	validate(Rest, Size, Acc#{sandbox => B});
validate([{ports, N} | Rest], Size, Acc) when is_integer(N), N > 0 ->
	validate(Rest, Size, Acc#{ports => N});
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
