%% Which port and which context serve a request.
%%
%% Scope: the layout (ports x contexts per port) and the pick of a slot and context index for a routing
%% key. A process always goes to the same slot and context, so its process-bound environment (the
%% globals its py:exec calls fill) is always the one its later py:eval and py:call see.
%%
%% A calling process gets its place on its first request, round-robin over all contexts, ports first
%% (1/ctx0, 2/ctx0, ..., 1/ctx1, ...), and keeps it in its process dictionary: consecutive callers land
%% on different ports, so two CPU-bound callers on two cores really run in parallel (a hash of the pid
%% put them on the same port half the time). bind/1 pins a process to a place. Any other routing key
%% is hashed.
%%
%% The layout is written once by erlang_python_sup and read from persistent_term on every request. A
%% cached place is checked against it, so a place cached before an application restart with another
%% layout is replaced instead of naming a slot or context that no longer exists.
%%
%% A place can also be an explicit context ({ctx, Pid}, py_context_router:bind_context/1). A process
%% that is not bound (bind/1, bind_ctx/1) and finds its slot condemned (py_port: about to be killed)
%% moves to another slot (move/1): its environment dies with the condemned port anyway.
-module(py_router).

%% API.
-export([set_config/1]).
-export([erase_config/0]).
-export([config/0]).
-export([pick/1]).
-export([bind/1]).
-export([unbind/0]).
-export([bind_ctx/1]).
-export([bound/0]).
-export([move/1]).
-export([num_slots/0]).
-export([num_contexts/0]).

-export_type([config/0]).

-type config() :: #{num_ports := pos_integer(), contexts_per_port := pos_integer(),
	default_timeout := timeout(), _ => _}.

-define(KEY, {?MODULE, config}).
%% Process dictionary key of a calling process's place: {Slot, ContextIndex} or {ctx, Pid}.
-define(PLACE, py_router_place).
%% Set (to true) while the place was chosen by the process (bind/1, bind_ctx/1), not given to it.
-define(BOUND, py_router_bound).

%% API.

-spec set_config(config()) -> ok.
set_config(Config) ->
	persistent_term:put(?KEY, Config#{next => atomics:new(1, [])}).

-spec erase_config() -> ok.
erase_config() ->
	_ = persistent_term:erase(?KEY),
	ok.

%% The layout, or undefined when the application is not running.
-spec config() -> config() | undefined.
config() ->
	persistent_term:get(?KEY, undefined).

%% {Slot, ContextIndex}: Slot in 1..num_ports, ContextIndex in 0..contexts_per_port-1. For the
%% calling process itself: its place (assigned on first use); for any other key: a hash.
-spec pick(term()) -> {pos_integer(), non_neg_integer()} | {ctx, pid()} | {error, not_started}.
pick(Key) when Key =:= self() ->
	case persistent_term:get(?KEY, undefined) of
		#{num_ports := Ports, contexts_per_port := PerPort} = Config ->
			case get(?PLACE) of
				{Slot, CtxIndex} = Place when Slot =< Ports, CtxIndex < PerPort ->
					Place;
				{ctx, _} = Place ->
					Place;
				_ ->
					%% None yet, or one cached under another layout (an application restart).
					Place = next_place(Config),
					_ = put(?PLACE, Place),
					Place
			end;
		undefined ->
			{error, not_started}
	end;
pick(Key) ->
	case persistent_term:get(?KEY, undefined) of
		#{num_ports := Ports, contexts_per_port := PerPort} ->
			N = erlang:phash2(Key, Ports * PerPort),
			{N div PerPort + 1, N rem PerPort};
		undefined ->
			{error, not_started}
	end.

next_place(#{num_ports := Ports, contexts_per_port := PerPort, next := Next}) ->
	N = (atomics:add_get(Next, 1, 1) - 1) rem (Ports * PerPort),
	{N rem Ports + 1, N div Ports}.

%% The calling process's slot Slot is condemned: gives it the next round-robin place on a slot that
%% is not (at most one turn of the ring: bounded by the number of contexts). Stays on Slot when every
%% slot is condemned or down.
-spec move(pos_integer()) -> {pos_integer(), non_neg_integer()} | {error, not_started}.
move(Slot) ->
	case persistent_term:get(?KEY, undefined) of
		#{num_ports := Ports, contexts_per_port := PerPort} = Config ->
			Place = move(Config, Slot, Ports * PerPort),
			_ = put(?PLACE, Place),
			Place;
		undefined ->
			{error, not_started}
	end.

move(Config, Slot, 0) ->
	{Slot, element(2, next_place(Config))};
move(Config, Slot, Tries) ->
	{S, _} = Place = next_place(Config),
	case S =/= Slot andalso py_port:info(S) of
		#{status := up} -> Place;
		_ -> move(Config, Slot, Tries - 1)
	end.

%% Pins the calling process to {Slot, ContextIndex} (its environment is the one of that port).
-spec bind({pos_integer(), non_neg_integer()}) -> ok.
bind({Slot, CtxIndex} = Place) when is_integer(Slot), Slot > 0, is_integer(CtxIndex), CtxIndex >= 0 ->
	_ = put(?PLACE, Place),
	_ = put(?BOUND, true),
	ok.

%% Pins the calling process to an explicit context (a py_context pid).
-spec bind_ctx(pid()) -> ok.
bind_ctx(Pid) when is_pid(Pid) ->
	_ = put(?PLACE, {ctx, Pid}),
	_ = put(?BOUND, true),
	ok.

%% Whether the calling process chose its place (bind/1, bind_ctx/1).
-spec bound() -> boolean().
bound() ->
	get(?BOUND) =:= true.

%% Forgets the calling process's place; its next request gets a new one.
-spec unbind() -> ok.
unbind() ->
	_ = erase(?PLACE),
	_ = erase(?BOUND),
	ok.

-spec num_slots() -> non_neg_integer().
num_slots() ->
	case config() of
		#{num_ports := Ports} -> Ports;
		undefined -> 0
	end.

-spec num_contexts() -> non_neg_integer().
num_contexts() ->
	case config() of
		#{num_ports := Ports, contexts_per_port := PerPort} -> Ports * PerPort;
		undefined -> 0
	end.
