%% A Python per pool (issue 8): a named pool may run on port OS processes of its own, built for another
%% CPython (e.g. a 3.13t pool beside the default 3.11 pool), instead of on the default pool's ports.
%%
%% Scope: resolving a pool's `python` to a port executable, and starting/stopping the one py_port owner
%% (a slot of its own, under py_port_sup, restarted like any port) that the pool's contexts are created
%% on (py_context asks slot_of/1). The pool's members are explicit contexts on that port, so they get
%% the import registry, paths and preload through context_init like any explicit context.
%%
%% Where a python comes from: an atom or string NAME is erl/priv/ports/NAME/erlang_python_port (what
%% `EP_PORT_NAME=NAME PYTHON_CONFIG=... sh tools/build_port.sh` installs; tools/pythons.sh builds
%% python3.13 and python3.13t); an absolute path is a port executable itself. The pool's python is the
%% `python` option of py_context_router:start_pool/3, else the `pool_pythons` application env
%% (#{Pool => Python}), else none: the pool uses the default ports.
%%
%% Slots: pool ports get slot numbers from ?FIRST_SLOT up, never reused while the application runs, so
%% they never collide with the default pool's 1..num_ports (py_router routes only over those).
%% Bounds: one port per running pool with a python.
-module(py_pool_ports).

-export([python_of/2]).
-export([executable/1]).
-export([start/2]).
-export([stop/1]).
-export([slot_of/1]).

-define(TAB, py_contexts).
-define(FIRST_SLOT, 1001).

-type python() :: atom() | string() | binary().
-export_type([python/0]).

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

%% Starts the pool's port (synchronously: it has said hello when this returns) and returns its slot.
-spec start(atom(), python()) -> {ok, pos_integer()} | {error, term()}.
start(Pool, Python) ->
	case executable(Python) of
		{ok, Exe} ->
			#{port_opts := PortOpts} = py_router:config(),
			Slot = ets:update_counter(?TAB, pool_port_next_slot, 1, {pool_port_next_slot, ?FIRST_SLOT - 1}),
			Spec = py_port:child_spec(Slot, PortOpts#{contexts => 1, port_executable => Exe}),
			case supervisor:start_child(py_port_sup, Spec) of
				{ok, _} ->
					true = ets:insert(?TAB, {{pool_port, Pool}, Slot}),
					{ok, Slot};
				{error, Why} ->
					_ = supervisor:delete_child(py_port_sup, {py_port, Slot}),
					{error, {pool_port_failed, Why}}
			end;
		{error, _} = Error ->
			Error
	end.

%% Stops the pool's port, if it has one.
-spec stop(atom()) -> ok.
stop(Pool) ->
	case slot_of(Pool) of
		{ok, Slot} ->
			_ = (catch ets:delete(?TAB, {pool_port, Pool})),
			_ = supervisor:terminate_child(py_port_sup, {py_port, Slot}),
			_ = supervisor:delete_child(py_port_sup, {py_port, Slot}),
			ok;
		none ->
			ok
	end.

%% The slot of the pool's own port, or none (the pool uses the default ports).
-spec slot_of(atom() | undefined) -> {ok, pos_integer()} | none.
slot_of(undefined) ->
	none;
slot_of(Pool) ->
	try ets:lookup(?TAB, {pool_port, Pool}) of
		[{_, Slot}] -> {ok, Slot};
		[] -> none
	catch error:badarg -> none
	end.
